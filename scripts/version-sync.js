#!/usr/bin/env node
// Keeps the per-platform packages under npm/ in step with the root package: each one's
// version is the root's, and the root lists every one of them, at exactly that
// version, in optionalDependencies (npm then installs the one matching the user's
// os/cpu/libc and skips the rest), as does package-lock.json's record of the root.
// The platforms are package.json's napi.targets.
//
//   node scripts/version-sync.js           rewrite what differs
//   node scripts/version-sync.js --check   change nothing; exit 1 listing what differs
//   node scripts/version-sync.js --stage   rewrite, then `git add` the changed files
//
// `npm version <new>` runs it with --stage through the root's "version" script, so the
// version commit carries every package.json.
'use strict'
const fs = require('node:fs')
const path = require('node:path')
const { execFileSync } = require('node:child_process')

const root = path.join(__dirname, '..')
const args = new Set(process.argv.slice(2))
const check = args.has('--check')
const stage = args.has('--stage')

/** napi's platform name for a Rust target triple: x86_64-unknown-linux-gnu → linux-x64-gnu. */
function platformOf(triple) {
  const [arch, , os, abi] = triple.split('-')
  const cpu = { x86_64: 'x64', aarch64: 'arm64' }[arch]
  if (!cpu || os !== 'linux' || !['gnu', 'musl'].includes(abi)) {
    throw new Error(`version-sync: unsupported target ${triple} in package.json napi.targets`)
  }
  return `${os}-${cpu}-${abi}`
}

function readJson(file) {
  return JSON.parse(fs.readFileSync(file, 'utf8'))
}

const rootFile = path.join(root, 'package.json')
const rootPkg = readJson(rootFile)
const version = rootPkg.version
const binaryName = rootPkg.napi?.binaryName ?? rootPkg.name
const platforms = (rootPkg.napi?.targets ?? []).map(platformOf)
if (platforms.length === 0) throw new Error('version-sync: package.json has no napi.targets')

const problems = []
const changed = []

// Each platform package: right name, right version, carrying the right binary.
for (const platform of platforms) {
  const file = path.join(root, 'npm', platform, 'package.json')
  if (!fs.existsSync(file)) {
    problems.push(`npm/${platform}/package.json is missing`)
    continue
  }
  const text = fs.readFileSync(file, 'utf8')
  const pkg = JSON.parse(text)
  const wantName = `${rootPkg.name}-${platform}`
  const wantMain = `${binaryName}.${platform}.node`
  if (pkg.name !== wantName) problems.push(`npm/${platform}: name is ${pkg.name}, want ${wantName}`)
  if (pkg.main !== wantMain) problems.push(`npm/${platform}: main is ${pkg.main}, want ${wantMain}`)
  if (pkg.version !== version) {
    problems.push(`npm/${platform}: version ${pkg.version}, root is ${version}`)
    if (!check) {
      // Only the version field changes: the file keeps its own layout.
      const next = text.replace(/("version"\s*:\s*")[^"]*(")/, `$1${version}$2`)
      if (JSON.parse(next).version !== version) throw new Error(`version-sync: cannot rewrite the version in ${file}`)
      fs.writeFileSync(file, next)
      changed.push(file)
    }
  }
}

// The root's optionalDependencies: every platform package at exactly the root's version.
const want = Object.fromEntries(platforms.map((p) => [`${rootPkg.name}-${p}`, version]))
const have = rootPkg.optionalDependencies ?? {}
const managed = (name) => name.startsWith(`${rootPkg.name}-linux-`)
const stale = Object.keys(have).filter((n) => managed(n) && !(n in want))
const wrong = Object.entries(want).filter(([n, v]) => have[n] !== v)
if (stale.length || wrong.length) {
  for (const n of stale) problems.push(`optionalDependencies lists ${n}, which is not in napi.targets`)
  for (const [n, v] of wrong) problems.push(`optionalDependencies: ${n} is ${have[n] ?? 'missing'}, want ${v}`)
  if (!check) {
    const next = Object.fromEntries(Object.entries(have).filter(([n]) => !managed(n)))
    Object.assign(next, want)
    // Re-read right before writing: other scripts (npm version) may have just written it.
    const current = readJson(rootFile)
    current.optionalDependencies = next
    fs.writeFileSync(rootFile, JSON.stringify(current, null, 2) + '\n')
    changed.push(rootFile)
  }
}

// package-lock.json records the root's optionalDependencies too (npm version has just
// rewritten its version fields, not these).
const lockFile = path.join(root, 'package-lock.json')
if (fs.existsSync(lockFile)) {
  const lock = readJson(lockFile)
  const entry = lock.packages?.['']
  if (entry) {
    const lockHave = entry.optionalDependencies ?? {}
    const lockWrong = Object.entries(want).filter(([n, v]) => lockHave[n] !== v)
    const lockStale = Object.keys(lockHave).filter((n) => managed(n) && !(n in want))
    if (lockWrong.length || lockStale.length) {
      problems.push(`package-lock.json: the root's optionalDependencies differ (${[...lockWrong.map(([n]) => n), ...lockStale].join(', ')})`)
      if (!check) {
        const next = Object.fromEntries(Object.entries(lockHave).filter(([n]) => !managed(n)))
        Object.assign(next, want)
        entry.optionalDependencies = Object.fromEntries(Object.entries(next).sort(([a], [b]) => a.localeCompare(b)))
        fs.writeFileSync(lockFile, JSON.stringify(lock, null, 2) + '\n')
        changed.push(lockFile)
      }
    }
  }
}

if (check) {
  if (problems.length) {
    console.error(`version-sync: out of step with the root package (${version}):\n  - ${problems.join('\n  - ')}\nrun: node scripts/version-sync.js`)
    process.exit(1)
  }
  console.log(`version-sync: ${platforms.length} platform packages at ${version}, all listed in optionalDependencies`)
  process.exit(0)
}

const unfixable = problems.filter((p) => !/version|optionalDependencies/.test(p))
if (unfixable.length) {
  console.error(`version-sync: fix by hand:\n  - ${unfixable.join('\n  - ')}`)
  process.exit(1)
}
console.log(changed.length ? `version-sync: ${version} written to ${changed.map((f) => path.relative(root, f)).join(', ')}` : `version-sync: already in step at ${version}`)
if (stage && changed.length) {
  // Inside a git work tree (npm version commits there), stage what changed; elsewhere
  // (an unpacked tarball, --no-git-tag-version outside git) there is nothing to stage.
  let inGit = false
  try {
    inGit = execFileSync('git', ['rev-parse', '--is-inside-work-tree'], { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() === 'true'
  } catch {
    inGit = false
  }
  if (inGit) execFileSync('git', ['add', '--', ...changed], { cwd: root, stdio: 'inherit' })
}
