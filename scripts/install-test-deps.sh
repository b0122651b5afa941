#!/usr/bin/env bash
# What the test suite needs beyond Node and Rust: filesystem tools for the loop-mounted
# filesystems, mdadm (the outside judge of the bitmap format), fio (the baseline of
# the I/O benchmark), and qemu-utils (qemu-nbd, qemu-io, qemu-img) plus nbd-server for
# the NBD members and the served mirror. Debian/Ubuntu only; needs root. Run by .ci/run; run it yourself
# once on a development machine to run every test instead of skipping some.
# nbdfuse (libnbd-bin) lets the discard spec put ext4 on the served export and fstrim it.
# nbdkit (its nozero and log filters) is the NBD server without WRITE_ZEROES of nbd-zeroes-fallback.spec.ts.
# chromium (Debian's, headless) is the browser of the API reference test, docs.spec.ts.
# musl-tools (musl-gcc) builds the musl program whose ELF interpreter native-load.spec.ts reads.
# gcc (cc) builds the seccomp launcher that refuses io_uring to io-engine.spec.ts's child.
set -euo pipefail
need=()
for pair in mkfs.ext4:e2fsprogs filefrag:e2fsprogs mkfs.xfs:xfsprogs mkfs.btrfs:btrfs-progs \
            mdadm:mdadm fio:fio losetup:mount fallocate:util-linux fsfreeze:util-linux lsattr:e2fsprogs \
            qemu-nbd:qemu-utils qemu-io:qemu-utils qemu-img:qemu-utils nbd-server:nbd-server \
            certtool:gnutls-bin psktool:gnutls-bin nbdinfo:libnbd-bin nbdcopy:libnbd-bin \
            nbdfuse:libnbd-bin nbdkit:nbdkit fstrim:util-linux chromium:chromium musl-gcc:musl-tools cc:gcc; do
  cmd=${pair%%:*} pkg=${pair##*:}
  PATH="$PATH:/sbin:/usr/sbin" command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "install-test-deps: everything is already installed"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-test-deps: missing ${need[*]}; run this script as root to install them" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
