#!/usr/bin/env node
// Checks the prebuilt addons in npm/<platform>/ with binutils (readelf, objdump), for
// what a user's machine will ask of them:
// - the ELF machine is the platform's CPU, and the symbol table is stripped;
// - a glibc (gnu) binary needs no symbol version newer than GLIBC_<baseline> (objdump -T)
//   and only glibc's own libraries (readelf -d NEEDED);
// - a musl binary needs nothing but musl's libc.so, which is the musl loader itself, and
//   no glibc symbol version;
// - neither asks for a program interpreter (readelf -l): they are shared objects.
//
//   node scripts/check-binaries.js [platform...]   prints one line per binary; exit 1 on a failure
'use strict'
const fs = require('node:fs')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { TARGETS, GLIBC_BASELINE } = require('./platforms.js')

const MACHINE = { x64: 'Advanced Micro Devices X86-64', arm64: 'AArch64' }
const GLIBC_LIBS = /^(libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|libgcc_s\.so\.1|ld-linux-(x86-64|aarch64)\.so\.[12])$/

const tool = (cmd, args) => execFileSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20 })

function versionKey(v) {
  return v.split('.').map(Number).reduce((acc, n, i) => acc + n * 1000 ** (2 - i), 0)
}

/** What one binary asks of the machine that loads it, and what is wrong with it. */
function inspect(target, baseline) {
  const file = path.join(target.dir, target.binary)
  if (!fs.existsSync(file)) return { file, problems: [`${path.relative(process.cwd(), file)} is not built (npm run build:all)`] }
  const size = fs.statSync(file).size
  const header = tool('readelf', ['-h', file])
  const machine = /Machine:\s+(.+)/.exec(header)?.[1].trim()
  const type = /Type:\s+(\S+)/.exec(header)?.[1]
  const sections = tool('readelf', ['-S', '--wide', file])
  const stripped = !/\s\.symtab\s/.test(sections)
  const needed = [...tool('readelf', ['-d', file]).matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1])
  const interp = /Requesting program interpreter: ([^\]]+)\]/.exec(tool('readelf', ['-l', file]))?.[1] ?? null
  const glibcVersions = [...new Set([...tool('objdump', ['-T', file]).matchAll(/GLIBC_(\d+(?:\.\d+)+)/g)].map((m) => m[1]))]
  glibcVersions.sort((a, b) => versionKey(a) - versionKey(b))
  const newestGlibc = glibcVersions.at(-1) ?? null

  const problems = []
  if (machine !== MACHINE[target.arch]) problems.push(`machine is ${machine}, want ${MACHINE[target.arch]}`)
  if (type !== 'DYN') problems.push(`ELF type is ${type}, want DYN (a shared object)`)
  if (!stripped) problems.push('not stripped: it has a .symtab')
  if (interp) problems.push(`asks for a program interpreter (${interp})`)
  if (target.libc === 'gnu') {
    if (newestGlibc && versionKey(newestGlibc) > versionKey(baseline)) problems.push(`needs GLIBC_${newestGlibc}, newer than the baseline GLIBC_${baseline}`)
    const foreign = needed.filter((n) => !GLIBC_LIBS.test(n))
    if (foreign.length) problems.push(`needs libraries outside glibc: ${foreign.join(', ')}`)
  } else {
    if (glibcVersions.length) problems.push(`a musl binary with glibc symbol versions: ${glibcVersions.join(', ')}`)
    if (needed.join() !== 'libc.so') problems.push(`needs [${needed.join(', ')}], want only musl's libc.so`)
  }
  const requires = target.libc === 'gnu' ? `glibc ≥ ${newestGlibc ?? '(none)'}` : `musl (${needed.join(', ')})`
  return { file, size, machine, stripped, needed, newestGlibc, requires, problems }
}

/** Inspects every target's binary, prints one line each; true when none has a problem. */
function checkAll(targets = TARGETS, baseline = GLIBC_BASELINE) {
  let ok = true
  for (const t of targets) {
    const r = inspect(t, baseline)
    if (r.problems.length) {
      ok = false
      console.error(`check-binaries: ${t.platform}: FAIL: ${r.problems.join('; ')}`)
    } else {
      console.log(`check-binaries: ${t.platform}: ${t.binary} ${r.size} bytes, ${r.machine}, stripped, needs ${r.requires}; NEEDED ${r.needed.join(' ')}`)
    }
  }
  return ok
}

module.exports = { inspect, checkAll }

if (require.main === module) {
  const wanted = process.argv.slice(2)
  const targets = wanted.length ? TARGETS.filter((t) => wanted.includes(t.platform)) : TARGETS
  process.exit(checkAll(targets) ? 0 : 1)
}
