#!/usr/bin/env node
// Copies built addons from native/ into their per-platform packages under npm/, ready
// for `npm pack` / `npm publish` there: native/md-bitmap.linux-x64-gnu.node →
// npm/linux-x64-gnu/md-bitmap.linux-x64-gnu.node. Each release build machine builds
// (`npm run build:native`) and stages its own platform; this is the local, one-platform
// counterpart of `napi artifacts`, which insists on every configured target at once.
//
//   node scripts/stage-native.js            every addon found in native/
//   node scripts/stage-native.js --current  only this machine's platform (fails if not built)
'use strict'
const fs = require('node:fs')
const path = require('node:path')

const root = path.join(__dirname, '..')
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'))
const binaryName = pkg.napi?.binaryName ?? pkg.name
const nativeDir = path.join(root, 'native')

function currentPlatform() {
  const report = process.report?.getReport()
  const libc = process.platform === 'linux' ? (report?.header?.glibcVersionRuntime ? '-gnu' : '-musl') : ''
  return `${process.platform}-${process.arch}${libc}`
}

const prefix = `${binaryName}.`
const built = fs.existsSync(nativeDir)
  ? fs.readdirSync(nativeDir).filter((f) => f.startsWith(prefix) && f.endsWith('.node'))
  : []
let wanted = built
if (process.argv.includes('--current')) {
  const name = `${binaryName}.${currentPlatform()}.node`
  if (!built.includes(name)) {
    console.error(`stage-native: native/${name} is not built; run \`npm run build:native\` first`)
    process.exit(1)
  }
  wanted = [name]
}
if (wanted.length === 0) {
  console.error('stage-native: no addon in native/; run `npm run build:native` first')
  process.exit(1)
}
for (const file of wanted) {
  const platform = file.slice(prefix.length, -'.node'.length)
  const dir = path.join(root, 'npm', platform)
  const manifest = path.join(dir, 'package.json')
  if (!fs.existsSync(manifest)) {
    console.error(`stage-native: no package npm/${platform}/ for native/${file}`)
    process.exit(1)
  }
  const main = JSON.parse(fs.readFileSync(manifest, 'utf8')).main
  if (main !== file) {
    console.error(`stage-native: npm/${platform}/package.json main is ${main}, not ${file}`)
    process.exit(1)
  }
  fs.copyFileSync(path.join(nativeDir, file), path.join(dir, file))
  console.log(`stage-native: native/${file} → npm/${platform}/${file}`)
}
