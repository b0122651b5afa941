#!/usr/bin/env node
// Keeps the per-platform packages under npm/ in step with the root package: each one's
// version and engines are the root's. The platforms are package.json's napi.targets.
//
// The root's optionalDependencies on the platform packages are NOT kept in package.json:
// npm never records an unpublished package in package-lock.json, so listing them there
// breaks `npm ci` and makes every `npm install` rewrite the lockfile. scripts/release.js
// writes them into the packed root at exactly this version (as `napi prepublish` does);
// this script insists that package.json does not list them.
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
const { ROOT, TARGETS } = require('./platforms.js')

const args = new Set(process.argv.slice(2))
const check = args.has('--check')
const stage = args.has('--stage')

const rootFile = path.join(ROOT, 'package.json')
// Read afresh (npm version has just rewritten it), not platforms.js's cached copy.
const rootPkg = JSON.parse(fs.readFileSync(rootFile, 'utf8'))
const version = rootPkg.version
if (TARGETS.length === 0) throw new Error('version-sync: package.json has no napi.targets')

const problems = []
const fixable = []
const changed = []

/** Rewrites one "field": value pair in JSON text, keeping the file's own layout. */
function rewrite(text, field, value) {
  const re = new RegExp(`("${field}"\\s*:\\s*)(\\{[^{}]*\\}|"[^"]*")`)
  return text.replace(re, `$1${JSON.stringify(value)}`)
}

// Each platform package: right name, right version and engines, carrying the right binary.
for (const t of TARGETS) {
  const file = path.join(t.dir, 'package.json')
  if (!fs.existsSync(file)) {
    problems.push(`npm/${t.platform}/package.json is missing`)
    continue
  }
  let text = fs.readFileSync(file, 'utf8')
  const pkg = JSON.parse(text)
  if (pkg.name !== t.packageName) problems.push(`npm/${t.platform}: name is ${pkg.name}, want ${t.packageName}`)
  if (pkg.main !== t.binary) problems.push(`npm/${t.platform}: main is ${pkg.main}, want ${t.binary}`)
  for (const [field, want] of [['version', version], ['engines', rootPkg.engines]]) {
    if (JSON.stringify(pkg[field]) === JSON.stringify(want)) continue
    const msg = `npm/${t.platform}: ${field} ${JSON.stringify(pkg[field])}, root is ${JSON.stringify(want)}`
    problems.push(msg)
    fixable.push(msg)
    const next = rewrite(text, field, want)
    if (JSON.stringify(JSON.parse(next)[field]) !== JSON.stringify(want)) throw new Error(`version-sync: cannot rewrite ${field} in ${file}`)
    text = next
  }
  if (!check && text !== fs.readFileSync(file, 'utf8')) {
    fs.writeFileSync(file, text)
    changed.push(file)
  }
}

// The root lists no platform package: release.js adds them to the packed manifest.
const listed = Object.keys(rootPkg.optionalDependencies ?? {}).filter((n) => TARGETS.some((t) => t.packageName === n))
if (listed.length) {
  const msg = `package.json optionalDependencies lists ${listed.join(', ')}: scripts/release.js writes them at pack time`
  problems.push(msg)
  fixable.push(msg)
  if (!check) {
    const current = JSON.parse(fs.readFileSync(rootFile, 'utf8'))
    for (const n of listed) delete current.optionalDependencies[n]
    if (Object.keys(current.optionalDependencies).length === 0) delete current.optionalDependencies
    fs.writeFileSync(rootFile, JSON.stringify(current, null, 2) + '\n')
    changed.push(rootFile)
  }
}

if (check) {
  if (problems.length) {
    console.error(`version-sync: out of step with the root package (${version}):\n  - ${problems.join('\n  - ')}\nrun: node scripts/version-sync.js`)
    process.exit(1)
  }
  console.log(`version-sync: ${TARGETS.length} platform packages at ${version}`)
  process.exit(0)
}

const unfixable = problems.filter((p) => !fixable.includes(p))
if (unfixable.length) {
  console.error(`version-sync: fix by hand:\n  - ${unfixable.join('\n  - ')}`)
  process.exit(1)
}
console.log(changed.length ? `version-sync: ${version} written to ${changed.map((f) => path.relative(ROOT, f)).join(', ')}` : `version-sync: already in step at ${version}`)
if (stage && changed.length) {
  // Inside a git work tree (npm version commits there), stage what changed; elsewhere
  // (--no-git-tag-version outside git) there is nothing to stage.
  let inGit = false
  try {
    inGit = execFileSync('git', ['rev-parse', '--is-inside-work-tree'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() === 'true'
  } catch {
    inGit = false
  }
  if (inGit) execFileSync('git', ['add', '--', ...changed], { cwd: ROOT, stdio: 'inherit' })
}
