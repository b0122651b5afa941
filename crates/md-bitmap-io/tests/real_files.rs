//! The core against real files on the filesystem the tests run on, and on /dev/shm
//! (tmpfs). Loop devices, other filesystems and device mode are covered by the
//! JavaScript suite, which can mount them.

use md_bitmap_io::{check, extents, Engine, MapSource, Mode, PageStore, Requested};
use nix::libc;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

struct TempDir(PathBuf);
impl TempDir {
    fn new(base: &str, tag: &str) -> TempDir {
        let p = PathBuf::from(base).join(format!("md-bitmap-io-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A zeroed heap page whose address is aligned for direct I/O.
struct Page {
    bytes: Vec<u8>,
    at: usize,
    len: usize,
}
impl Page {
    fn new(len: usize, align: usize) -> Page {
        let bytes = vec![0u8; len + align];
        let at = md_bitmap_io::align::offset_to_alignment(bytes.as_ptr() as usize, align);
        Page { bytes, at, len }
    }
}
impl std::ops::Deref for Page {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[self.at..self.at + self.len]
    }
}
impl std::ops::DerefMut for Page {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.at..self.at + self.len]
    }
}
impl AsRef<[u8]> for Page {
    fn as_ref(&self) -> &[u8] {
        self
    }
}
impl AsMut<[u8]> for Page {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// The engine `MD_BITMAP_IO_ENGINE` asks for (else the best available), its
/// completions reaped on a thread of its own, as a runtime without an event loop would.
fn engine() -> Arc<Engine> {
    static ENGINE: std::sync::OnceLock<Arc<Engine>> = std::sync::OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let e = Arc::new(Engine::from_env(false, false).unwrap());
            e.reap_on_own_thread();
            e
        })
        .clone()
}

/// One read into `page`, waited for.
fn read(store: &Arc<PageStore>, offset: u64, page: &mut Page) -> md_bitmap_io::Result<()> {
    let (tx, rx) = mpsc::channel();
    let target = Page::new(page.len, store.alignment().memory as usize);
    store.submit_read(offset, target, move |r, t| tx.send((r, t)).unwrap());
    let (r, t) = rx.recv().unwrap();
    page.copy_from_slice(&t);
    r
}

/// fdatasync, waited for.
fn sync(store: &Arc<PageStore>) -> md_bitmap_io::Result<()> {
    let (tx, rx) = mpsc::channel();
    store.submit_sync(move |r| tx.send(r).unwrap());
    rx.recv().unwrap()
}

/// One tracked write of a copy of `bytes` (in a buffer aligned for the store), waited for.
fn write(store: &Arc<PageStore>, offset: u64, bytes: &[u8]) -> md_bitmap_io::Result<()> {
    let mut page = Page::new(bytes.len(), store.alignment().memory as usize);
    page.copy_from_slice(bytes);
    let (tx, rx) = mpsc::channel();
    store.submit_write(offset, page, move |r, _| tx.send(r).unwrap());
    rx.recv().unwrap()
}

fn written_file(path: &Path, size: usize, byte: u8) {
    let mut f = File::create(path).unwrap();
    f.write_all(&vec![byte; size]).unwrap();
    f.sync_all().unwrap();
}

/// A store opened in place on a new file `f` of `pages` zeroed 4 KiB pages in a temp
/// dir tagged `tag` (a disk filesystem: the store is direct).
fn direct_store(tag: &str, pages: usize) -> (TempDir, PathBuf, Arc<PageStore>) {
    let d = TempDir::new(std::env::temp_dir().to_str().unwrap(), tag);
    let p = d.0.join("f");
    written_file(&p, pages * 4096, 0);
    let store = Arc::new(PageStore::open_with(&p, Requested::InPlace, false, &engine()).unwrap());
    assert_eq!(store.mode(), Mode::Direct);
    (d, p, store)
}

#[test]
fn a_written_file_is_wholly_mapped_and_accepted() {
    let d = TempDir::new(std::env::temp_dir().to_str().unwrap(), "written");
    let p = d.0.join("f");
    written_file(&p, 1 << 20, 0x5a);
    let m = extents(&p).unwrap();
    assert_eq!(m.source, MapSource::Fiemap);
    assert_eq!(m.file_size, 1 << 20);
    let covered: u64 = m.extents.iter().map(|e| e.length).sum();
    assert!(covered >= 1 << 20, "extents cover {covered} of {} bytes", 1 << 20);
    assert!(m.extents.last().unwrap().flags & md_bitmap_io::extents::FIEMAP_EXTENT_LAST != 0);
    let r = check(&p).unwrap();
    assert!(r.file_mode_ok(), "{:?}", r.problems);
}

#[test]
fn holes_and_unwritten_extents_are_named() {
    let d = TempDir::new(std::env::temp_dir().to_str().unwrap(), "holes");
    let sparse = d.0.join("sparse");
    let f = File::create(&sparse).unwrap();
    f.set_len(1 << 20).unwrap();
    f.write_all_at(&[1u8; 4096], 512 * 1024).unwrap();
    f.sync_all().unwrap();
    let r = check(&sparse).unwrap();
    let holes: Vec<_> = r.problems.iter().filter(|p| p.code == "EEXTENT_HOLE").collect();
    assert_eq!(holes.len(), 2, "{:?}", r.problems);
    assert_eq!(holes[0].offset, Some(0));
    assert!(!r.file_mode_ok());
    assert_eq!(PageStore::open_with(&sparse, Requested::InPlace, false, &engine()).err().unwrap().code, "EFILE_MODE_UNSUPPORTED");
    // A data member may have holes: the filesystem fills them on write.
    let data = std::sync::Arc::new(PageStore::open_with(&sparse, Requested::Plain, false, &engine()).unwrap());
    assert_eq!(data.size(), 1 << 20);
    let mut buf = Page::new(4096, data.alignment().memory as usize);
    read(&data, 512 * 1024, &mut buf).unwrap();
    assert!(buf.as_ref().iter().all(|&b| b == 1));
    buf.as_mut().fill(7);
    write(&data, 0, buf.as_ref()).unwrap();
    read(&data, 0, &mut buf).unwrap();
    assert!(buf.as_ref().iter().all(|&b| b == 7));
    data.close().unwrap();
    let dir = d.0.clone();
    assert_eq!(PageStore::open_with(&dir, Requested::Plain, false, &engine()).err().unwrap().code, "EINVAL");

    let unwritten = d.0.join("unwritten");
    let f = File::create(&unwritten).unwrap();
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) };
    assert_eq!(rc, 0, "fallocate");
    let r = check(&unwritten).unwrap();
    assert!(r.problems.iter().any(|p| p.code == "EEXTENT_UNWRITTEN"), "{:?}", r.problems);
    assert!(!r.file_mode_ok());
    // Written once, the same file is accepted.
    f.write_all_at(&vec![0u8; 1 << 20], 0).unwrap();
    f.sync_all().unwrap();
    assert!(check(&unwritten).unwrap().file_mode_ok());
}

#[test]
fn a_store_synced_after_every_write_writes_through_and_skips_the_fdatasync() {
    let (_d, p, store) = direct_store("through", 16);
    let dsync_direct = (libc::O_DSYNC | libc::O_DIRECT) as u32;
    assert!(open_flags_of(&p).iter().any(|f| f & dsync_direct == dsync_direct), "no O_DIRECT | O_DSYNC descriptor on the file: {:?}", open_flags_of(&p));
    let counts = |s: &Arc<PageStore>| s.write_through_counts().map(|c| (c.writes_through, c.syncs_skipped));
    let page = |b: u8| vec![b; 4096];
    // One write, then a sync: an fdatasync, and write-through on.
    write(&store, 0, &page(1)).unwrap();
    sync(&store).unwrap();
    assert_eq!(counts(&store), Some((0, 0)));
    // The next write goes O_DSYNC, and the sync after it needs no fdatasync.
    write(&store, 4096, &page(2)).unwrap();
    sync(&store).unwrap();
    assert_eq!(counts(&store), Some((1, 1)));
    // A second write before the sync: plain again, and the sync is an fdatasync.
    write(&store, 8192, &page(3)).unwrap();
    write(&store, 12288, &page(4)).unwrap();
    sync(&store).unwrap();
    assert_eq!(counts(&store), Some((2, 1)));
    // Back to one write per sync: the first is plain (not yet covered), the next ones through.
    write(&store, 16384, &page(5)).unwrap();
    sync(&store).unwrap();
    write(&store, 20480, &page(6)).unwrap();
    sync(&store).unwrap();
    assert_eq!(counts(&store), Some((3, 2)));
    let align = store.alignment().both() as usize;
    let mut back = Page::new(4096, align);
    for (i, b) in (1..=6u8).enumerate() {
        read(&store, i as u64 * 4096, &mut back).unwrap();
        assert!(back.iter().all(|&x| x == b), "page {i}");
    }
    store.close().unwrap();
    assert!(open_flags_of(&p).is_empty(), "close leaves a descriptor open on the file");
    // A store whose every write is O_DSYNC already has none.
    let dsync = Arc::new(PageStore::open_with(&p, Requested::InPlace, true, &engine()).unwrap());
    assert_eq!(counts(&dsync), None);
    dsync.close().unwrap();
}

#[test]
fn direct_store_round_trips_and_tracks_pending_writes() {
    // One page per write: concurrent writes to one page could land in any order.
    let (_d, p, store) = direct_store("store", 1000);
    let align = store.alignment().both() as usize;
    let (tx, rx) = mpsc::channel();
    for i in 0..1000u64 {
        let mut page = Page::new(4096, align);
        page.fill((i % 251) as u8 + 1);
        let tx = tx.clone();
        store.submit_write(i * 4096, page, move |r, _| tx.send(r).unwrap());
    }
    assert!(store.wait_idle(None));
    assert_eq!(store.pending().count(), 0);
    drop(tx);
    assert_eq!(rx.iter().filter(|r| r.is_ok()).count(), 1000);
    sync(&store).unwrap();
    let mut back = Page::new(4096, align);
    for i in 0..1000u64 {
        read(&store, i * 4096, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == (i % 251) as u8 + 1), "page {i}");
    }
    assert_eq!(write(&store, 1, &back[..512]).unwrap_err().code, "EALIGN");
    assert_eq!(write(&store, 1000 * 4096, &back).unwrap_err().code, "EOUT_OF_RANGE");
    assert!(store.pending().error().is_none(), "misuse must not become the sticky I/O error");
    store.close().unwrap();
    assert_eq!(write(&store, 0, &back).unwrap_err().code, "ECLOSED");
    // What the store wrote is what the file holds.
    let bytes = fs::read(&p).unwrap();
    assert!(bytes[4096 * 7..4096 * 8].iter().all(|&b| b == 8));
}

#[test]
fn tmpfs_cannot_be_mapped_and_falls_back_to_buffered() {
    if !Path::new("/dev/shm").is_dir() {
        panic!("/dev/shm (tmpfs) is needed for this test");
    }
    let d = TempDir::new("/dev/shm", "tmpfs");
    let p = d.0.join("f");
    written_file(&p, 64 * 1024, 3);
    assert_eq!(extents(&p).unwrap_err().code, "EFIEMAP_UNSUPPORTED");
    let r = check(&p).unwrap();
    assert!(r.file_mode_ok());
    assert!(!r.device_mode_ok());
    assert!(r.problems.iter().any(|p| p.code == "EFIEMAP_UNSUPPORTED"));
    let s = Arc::new(PageStore::open_with(&p, Requested::InPlace, false, &engine()).unwrap());
    assert_eq!(s.mode(), Mode::Buffered);
    assert!(s.reason().unwrap().contains("tmpfs"));
    write(&s, 100, b"hello").unwrap(); // buffered: no alignment needed
    let mut back = Page::new(5, 1);
    read(&s, 100, &mut back).unwrap();
    assert_eq!(&back[..], b"hello");
    assert_eq!(PageStore::open_with(&p, Requested::OnDevice, false, &engine()).err().unwrap().code, "EDEVICE_MODE_UNSUPPORTED");
}

#[test]
fn not_a_regular_file_is_refused() {
    assert_eq!(check(Path::new("/dev/null")).unwrap_err().code, "ENOT_REGULAR_FILE");
    assert_eq!(extents(Path::new("/nonexistent/x")).unwrap_err().code, "ENOENT");
}

/// The open flags (octal, from /proc/self/fdinfo) of every descriptor open on `path`.
fn open_flags_of(path: &Path) -> Vec<u32> {
    let target = fs::canonicalize(path).unwrap();
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            (fs::read_link(e.path()).ok()? == target).then(|| {
                let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", e.file_name().to_str().unwrap())).unwrap();
                let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim().to_string();
                u32::from_str_radix(&flags, 8).unwrap()
            })
        })
        .collect()
}

#[test]
fn dsync_stores_write_through_the_device_cache() {
    let d = TempDir::new(std::env::temp_dir().to_str().unwrap(), "dsync");
    let p = d.0.join("f");
    written_file(&p, 64 * 1024, 0);
    let plain = PageStore::open_with(&p, Requested::InPlace, false, &engine()).unwrap();
    // The file O_DIRECT, and again O_DIRECT | O_DSYNC for write-through (write_through.rs).
    let mut flags = open_flags_of(&p);
    flags.sort_by_key(|f| f & libc::O_DSYNC as u32);
    assert_eq!(flags.len(), 2, "flags {flags:?}");
    assert_eq!(flags[0] & libc::O_DSYNC as u32, 0);
    assert_ne!(flags[1] & libc::O_DSYNC as u32, 0);
    assert!(flags.iter().all(|f| f & libc::O_DIRECT as u32 != 0));
    plain.close().unwrap();
    let durable = PageStore::open_with(&p, Requested::InPlace, true, &engine()).unwrap();
    let flags = open_flags_of(&p);
    assert_eq!(flags.len(), 1);
    assert_ne!(flags[0] & libc::O_DSYNC as u32, 0, "flags {:o}", flags[0]);
    durable.close().unwrap();
}
