//! Transparent huge pages for large I/O buffers.
//!
//! Why: a direct read or write hands the device the buffer's pages as they lie in
//! physical memory. Pages that follow each other there merge into one segment of the
//! request; pages scattered (or in descending order, as memory recycled by the
//! allocator often is) each take a segment of their own. On this project's virtio disk
//! (docs/benchmarks.md, "The disk's two speeds are the buffer's pages") 1 MiB O_DIRECT
//! reads into a buffer of scattered 4 KiB pages ran at 1,250–1,400 MB/s, into one page
//! of 2 MiB at 3,140–3,350 MB/s, every time: what had looked like the disk changing
//! speed from minute to minute was where each buffer's pages happened to lie.
//!
//! `advise_huge` asks the kernel for transparent huge pages over the whole, aligned
//! huge pages inside a range of the caller's private anonymous memory (a JavaScript
//! ArrayBuffer's backing store), then drops the pages the range held, so that its next
//! touch faults in huge pages (`MADV_HUGEPAGE`, then `MADV_DONTNEED`). The range's bytes
//! read as zero afterwards. Works under the `madvise` and `always` THP settings. It is a
//! hint and never an error: under `never`, where the kernel has no THP, or where a
//! sandbox refuses `madvise` (a seccomp profile), the memory is left as it was and
//! nothing changes but speed (mirror-buffer-pool.spec.ts runs a resync under a seccomp
//! filter refusing MADV_HUGEPAGE). The kernel may still back the range with small pages when
//! it finds no free 2 MiB.
//!
//! ```text
//!   [ptr, ptr+len) ──► whole 2 MiB-aligned pages inside it ──none──► (0, 0), untouched
//!                                │
//!                                ├─ MADV_HUGEPAGE refused (THP off, a sandbox) ──► (off, 0)
//!                                └─ advised ─ MADV_DONTNEED ──► (off, n): the next
//!                                   touch of each 2 MiB faults a huge page, zeroed
//! ```

use nix::libc;

/// The transparent huge page size this module aims at (x86-64, and arm64 with 4 KiB
/// pages). On other page sizes the advice covers 2 MiB multiples, harmlessly.
pub const HUGE_PAGE: usize = 2 << 20;

/// Advises the whole `HUGE_PAGE`-aligned pages inside `[ptr, ptr + len)` for huge
/// pages and drops their contents. Returns the offset of the first such page from `ptr`
/// and how many bytes were advised (0 if none fit, or the kernel refused the advice,
/// whatever its reason: a refusal leaves the memory as it was).
///
/// # Safety
/// `[ptr, ptr + len)` must be private anonymous memory owned by the caller, with no
/// I/O in flight into it, whose contents the caller no longer needs.
pub unsafe fn advise_huge(ptr: *mut u8, len: usize) -> (usize, usize) {
    let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
    let end = (ptr as usize + len) / HUGE_PAGE * HUGE_PAGE;
    if start >= end {
        return (0, 0);
    }
    let (at, n, off) = (start as *mut libc::c_void, end - start, start - ptr as usize);
    // Refused (EINVAL: no THP, or off; EPERM: a sandbox): the memory stays as it was.
    if libc::madvise(at, n, libc::MADV_HUGEPAGE) != 0 || libc::madvise(at, n, libc::MADV_DONTNEED) != 0 {
        return (off, 0);
    }
    (off, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the kernel will give huge pages to memory advised for them
    /// (`/sys/kernel/mm/transparent_hugepage/enabled` is `always` or `madvise`).
    fn huge_pages_available() -> bool {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").is_ok_and(|s| !s.contains("[never]"))
    }

    /// The kB of anonymous huge pages in the mapping holding `addr` (/proc/self/smaps).
    fn huge_kb_at(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-') && !r.ends_with(':')) {
                let (a, b) = range.split_once('-').unwrap();
                let (a, b) = (usize::from_str_radix(a, 16).unwrap_or(1), usize::from_str_radix(b, 16).unwrap_or(0));
                inside = a <= addr && addr < b;
            } else if inside {
                if let Some(v) = line.strip_prefix("AnonHugePages:") {
                    return v.trim().trim_end_matches("kB").trim().parse().unwrap();
                }
            }
        }
        0
    }

    #[test]
    fn advises_the_whole_huge_pages_inside_and_they_fault_in_huge() {
        // Touched memory, in small pages, as a reused heap allocation would be.
        let mut v = vec![0x5au8; 3 * HUGE_PAGE];
        let (ptr, len) = (v.as_mut_ptr(), v.len());
        let (off, n) = unsafe { advise_huge(ptr, len) };
        assert_eq!((ptr as usize + off) % HUGE_PAGE, 0, "the advised range starts on a huge page");
        assert!(off < HUGE_PAGE && off + n <= len);
        if !huge_pages_available() {
            assert_eq!(n, 0, "THP is off: nothing advised");
            return;
        }
        assert!(n >= HUGE_PAGE, "at least one whole huge page lies in 6 MiB: advised {n}");
        let range = &mut v[off..off + n];
        assert!(range.iter().all(|&b| b == 0), "the advised range reads as zero");
        range.fill(1);
        assert!(huge_kb_at(ptr as usize + off) >= (HUGE_PAGE / 1024) as u64, "the touched range is backed by huge pages");
        // Bytes outside the advised range keep their contents.
        assert!(v[..off].iter().all(|&b| b == 0x5a) && v[off + n..].iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn a_range_holding_no_whole_huge_page_is_left_alone() {
        let mut v = vec![7u8; HUGE_PAGE];
        let (ptr, len) = (v.as_mut_ptr(), v.len());
        let r = unsafe { advise_huge(ptr, len) };
        // A 2 MiB vector holds a whole aligned huge page only if it starts on one.
        if !(ptr as usize).is_multiple_of(HUGE_PAGE) {
            assert_eq!(r, (0, 0));
            assert!(v.iter().all(|&b| b == 7));
        }
    }
}
