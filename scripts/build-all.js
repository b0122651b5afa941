#!/usr/bin/env node
// `npm run build:all`: builds the addon for every target in package.json napi.targets
// with cargo-zigbuild (zig as the linker: glibc targets against glibc 2.17, musl targets
// as cdylibs linked to musl's libc.so), release profile (LTO, stripped), into
// target/cross/, copies each into its platform package npm/<platform>/, then checks
// every binary (scripts/check-binaries.js). Needs scripts/install-platform-deps.sh.
//
//   node scripts/build-all.js                    every target
//   node scripts/build-all.js linux-arm64-gnu    only the named platforms
'use strict'
const fs = require('node:fs')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { ROOT, TARGETS, GLIBC_BASELINE, toolsPath } = require('./platforms.js')
const { checkAll } = require('./check-binaries.js')

const wanted = process.argv.slice(2)
const targets = wanted.length ? TARGETS.filter((t) => wanted.includes(t.platform)) : TARGETS
if (wanted.length && targets.length !== wanted.length) {
  console.error(`build-all: unknown platform in ${wanted.join(' ')}; known: ${TARGETS.map((t) => t.platform).join(' ')}`)
  process.exit(2)
}
const targetDir = path.join(ROOT, 'target', 'cross')
const env = { ...process.env, PATH: toolsPath() }
for (const t of targets) {
  const started = Date.now()
  const zigTarget = t.libc === 'gnu' ? `${t.triple}.${GLIBC_BASELINE}` : t.triple
  const flagsVar = `CARGO_TARGET_${t.triple.toUpperCase().replace(/-/g, '_')}_RUSTFLAGS`
  // musl targets link statically by default, which a cdylib cannot be.
  const targetEnv = t.libc === 'musl' ? { ...env, [flagsVar]: '-C target-feature=-crt-static' } : env
  execFileSync(
    'cargo',
    ['zigbuild', '--release', '--locked', '-p', 'md-bitmap-node', '--target', zigTarget, '--target-dir', targetDir],
    { cwd: ROOT, env: targetEnv, stdio: 'inherit' },
  )
  const built = path.join(targetDir, t.triple, 'release', 'libmd_bitmap_node.so')
  fs.copyFileSync(built, path.join(t.dir, t.binary))
  console.log(`build-all: ${t.triple} → npm/${t.platform}/${t.binary} (${((Date.now() - started) / 1000).toFixed(1)} s)`)
}
if (!checkAll(targets)) process.exit(1)
