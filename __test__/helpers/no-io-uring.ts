/**
 * A launcher that runs a command with io_uring refused, as a container's seccomp
 * profile refuses it (Docker's default profile does since 2023): a seccomp filter
 * makes `io_uring_setup` fail with EPERM in that process and its children only. Built
 * with the system's C compiler on first use (once per test process).
 *
 *   spawn(noIoUring(), [process.execPath, ...args])
 *
 * The whole machine's switch (`kernel.io_uring_disabled=2`) refuses io_uring the same
 * way, but for every process: other test files running at the same time would find
 * it off too.
 */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const SOURCE = `
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "no seccomp architecture for this machine"
#endif

int main(int argc, char **argv) {
  struct sock_filter filter[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = { .len = sizeof filter / sizeof filter[0], .filter = filter };
  if (argc < 2) { fprintf(stderr, "usage: no-io-uring COMMAND [ARG...]\\n"); return 2; }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) { perror("no-io-uring: PR_SET_NO_NEW_PRIVS"); return 2; }
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) { perror("no-io-uring: PR_SET_SECCOMP"); return 2; }
  execvp(argv[1], argv + 1);
  perror("no-io-uring: exec");
  return 2;
}
`

let built: string | undefined

/** The launcher's path, built on first use with `cc`. */
export function noIoUring(): string {
  if (built) return built
  const dir = mkdtempSync(join(tmpdir(), 'md-bitmap-no-io-uring-'))
  writeFileSync(join(dir, 'no-io-uring.c'), SOURCE)
  execFileSync('cc', ['-O2', '-o', join(dir, 'no-io-uring'), join(dir, 'no-io-uring.c')], { stdio: 'pipe' })
  built = join(dir, 'no-io-uring')
  return built
}
