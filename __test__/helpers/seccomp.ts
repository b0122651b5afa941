/**
 * Launchers that run a command with one system call refused, as a container's seccomp
 * profile refuses it: a seccomp filter makes the call fail with EPERM in that process
 * and its children only. Built with the system's C compiler on first use (once per
 * test process).
 *
 *   const [cmd, ...pre] = noIoUring()
 *   spawn(cmd, [...pre, process.execPath, ...args])
 *
 * - {@link noIoUring}: `io_uring_setup` refused (Docker's default profile does since
 *   2023). The whole machine's switch (`kernel.io_uring_disabled=2`) refuses io_uring
 *   the same way, but for every process: other test files running at the same time
 *   would find it off too.
 * - {@link noHugePageAdvice}: `madvise(…, MADV_HUGEPAGE)` refused, every other advice
 *   allowed (V8 and the C library advise memory all the time).
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
#include <string.h>
#include <sys/mman.h>
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

/* Another architecture's calls pass; then the call's number is loaded. */
#define THIS_ARCH_THEN_LOAD_NR \\
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)), \\
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0), \\
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW), \\
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))

/* argv[1]: what to refuse ("io_uring_setup" or "madvise-hugepage"); then the command. */
int main(int argc, char **argv) {
  struct sock_filter uring[] = {
    THIS_ARCH_THEN_LOAD_NR,
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  /* The advice is madvise's third argument; its low 32 bits (little-endian) come first. */
  struct sock_filter hugepage[] = {
    THIS_ARCH_THEN_LOAD_NR,
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MADV_HUGEPAGE, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog;
  if (argc < 3) { fprintf(stderr, "usage: refuse io_uring_setup|madvise-hugepage COMMAND [ARG...]\\n"); return 2; }
  if (strcmp(argv[1], "io_uring_setup") == 0) { prog.len = sizeof uring / sizeof uring[0]; prog.filter = uring; }
  else if (strcmp(argv[1], "madvise-hugepage") == 0) { prog.len = sizeof hugepage / sizeof hugepage[0]; prog.filter = hugepage; }
  else { fprintf(stderr, "refuse: unknown call %s\\n", argv[1]); return 2; }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) { perror("refuse: PR_SET_NO_NEW_PRIVS"); return 2; }
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) { perror("refuse: PR_SET_SECCOMP"); return 2; }
  execvp(argv[2], argv + 2);
  perror("refuse: exec");
  return 2;
}
`

let built: string | undefined

/** The launcher's path, built on first use with `cc`: `refuse CALL COMMAND [ARG...]`. */
function launcher(): string {
  if (built) return built
  const dir = mkdtempSync(join(tmpdir(), 'md-bitmap-refuse-'))
  writeFileSync(join(dir, 'refuse.c'), SOURCE)
  execFileSync('cc', ['-O2', '-o', join(dir, 'refuse'), join(dir, 'refuse.c')], { stdio: 'pipe' })
  built = join(dir, 'refuse')
  return built
}

/** A command prefix that runs the rest with `io_uring_setup` refused: `[...noIoUring(), node, ...args]`. */
export function noIoUring(): string[] {
  return [launcher(), 'io_uring_setup']
}

/** A command prefix that runs the rest with `madvise(…, MADV_HUGEPAGE)` refused. */
export function noHugePageAdvice(): string[] {
  return [launcher(), 'madvise-hugepage']
}
