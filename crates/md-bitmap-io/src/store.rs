//! A page store: positional reads and writes of whole aligned pages of one existing
//! file, in one of three modes.
//!
//! - `Direct`: the file opened O_DIRECT; each write goes to the file's own blocks
//!   through the filesystem, bypassing the page cache.
//! - `Buffered`: where direct I/O is refused or meaningless (tmpfs and other
//!   filesystems that cannot map their blocks): ordinary writes, made durable by
//!   `submit_sync()` (fdatasync). The mode says so, so callers can tell users.
//! - `Device`: the file's extents are mapped once (FIEMAP, else FIBMAP) and its pages
//!   are written straight on the block device under the filesystem at the physical
//!   addresses of its blocks, as Linux writes a swap file. The file is pinned immutable while
//!   in use so the filesystem cannot move its blocks, and its page cache (now stale) is
//!   dropped on close. A write can only land inside the mapped extents.
//!
//! A store never grows, shrinks or allocates: the file must already be whole. Its
//! reads, writes and fdatasyncs go through an I/O engine (`engine.rs`) and complete in
//! the engine's `reap()`.

use crate::align::{dio_alignment, AlignSource, DioAlignment};
use crate::check::{check_open, CheckReport};
use crate::device::logical_block_size;
use crate::error::{IoError, Result};
use crate::extents::{with_path, Extent};
use crate::fence::wait_for_writes_in_flight;
use crate::pending::Pending;
use crate::write_through::{SyncPlan, WriteThrough, WriteThroughCounts};
use crate::engine::{Done, Engine, EngineKind, Op, Route};
use nix::libc;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Direct,
    Buffered,
    Device,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Buffered => "buffered",
            Mode::Device => "device",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    /// A whole regular file written in place through its filesystem: refused if it has
    /// a hole or an unsafe extent (unwritten, shared, inline, ...), so a write never
    /// allocates. Direct I/O where the filesystem allows it, else buffered.
    InPlace,
    /// A whole regular file whose blocks are written on the block device under its
    /// filesystem, at their physical addresses (`Mode::Device`).
    OnDevice,
    /// Any regular file (holes allowed: the filesystem fills them on write) or a whole
    /// block device (opened exclusively). Direct I/O where the filesystem allows it.
    Plain,
}

struct DeviceTarget {
    path: PathBuf,
    /// The file's extents, sorted by logical offset, covering [0, size) with no gap.
    map: Vec<Extent>,
    /// Whether we set the immutable flag (and so must clear it on close).
    pinned_by_us: bool,
}

/// The open descriptors of a store. Taken (and so closed) by `close()`: a closed store
/// holds nothing open, so its filesystem can be unmounted and its device detached.
struct Fds {
    /// The file itself: read-write in file modes, read-only in device mode.
    file: File,
    /// The block device, opened O_DIRECT, in device mode.
    dev: Option<File>,
    /// The file again, O_DIRECT | O_DSYNC, for write-through (write_through.rs).
    through: Option<File>,
}

/// What opening found, before the store is assembled.
struct Opened {
    fds: Fds,
    device: Option<DeviceTarget>,
    mode: Mode,
    reason: Option<String>,
    size: u64,
    align: DioAlignment,
}

pub struct PageStore {
    path: PathBuf,
    /// I/O holds the read side while it uses the descriptors; close takes the write
    /// side, so it waits for reads and writes in progress before closing them.
    fds: RwLock<Option<Fds>>,
    /// Held shared by `begin` while it counts an operation (no I/O under it), and passed
    /// through exclusively by `begin_close`: after that pass, every operation that saw
    /// the store open is counted. Apart from `fds`, so that the pass never waits for
    /// I/O in progress (device-mode pieces hold `fds` while they run).
    counting: RwLock<()>,
    device: Option<DeviceTarget>,
    mode: Mode,
    /// Why the store is buffered, when it is.
    reason: Option<String>,
    size: u64,
    align: DioAlignment,
    pending: Pending,
    /// Reads and fdatasyncs in flight: never write-pending, but close waits for them,
    /// since the kernel may still be using the descriptor they name.
    others: Pending,
    engine: Arc<Engine>,
    /// Write-through for a caller that syncs after every write: with `Fds::through`.
    write_through: Option<WriteThrough>,
    /// Where reads and writes run: the engine's kernel queue, or its I/O threads for
    /// work that is more than one call (device mode) or would block the submitter
    /// (buffered I/O under AIO).
    route: Route,
    closed: AtomicBool,
    close_lock: Mutex<()>,
}

const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_IMMUTABLE_FL: libc::c_int = 0x10;

fn get_flags(f: &File) -> std::result::Result<libc::c_int, nix::errno::Errno> {
    let mut flags: libc::c_int = 0;
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) };
    if r < 0 { Err(nix::errno::Errno::last()) } else { Ok(flags) }
}

fn set_immutable(f: &File, on: bool) -> std::result::Result<(), nix::errno::Errno> {
    let flags = get_flags(f)?;
    let new = if on { flags | FS_IMMUTABLE_FL } else { flags & !FS_IMMUTABLE_FL };
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS as _, &new) };
    if r < 0 { Err(nix::errno::Errno::last()) } else { Ok(()) }
}

/// The same open file description's file opened again O_DIRECT | O_DSYNC (through
/// /proc, so it is the same inode whatever the path names now); None if refused.
fn reopen_dsync(f: &File) -> Option<File> {
    OpenOptions::new().write(true).custom_flags(libc::O_DIRECT | libc::O_DSYNC).open(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()
}

fn drop_page_cache(f: &File) {
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

impl PageStore {
    /// `dsync`: every write is durable when it completes (O_DSYNC: FUA or a cache flush
    /// per write), for metadata such as a bitmap that must be on stable storage before
    /// the writes it guards are issued. Without it, durability waits for `sync()`.
    /// I/O goes through `engine`, whose `reap()` must be called when its eventfd turns
    /// readable.
    pub fn open_with(path: &Path, requested: Requested, dsync: bool, engine: &Arc<Engine>) -> Result<PageStore> {
        let extra = if dsync { libc::O_DSYNC } else { 0 };
        let opened = match requested {
            Requested::InPlace => Self::open_in_place(path, extra),
            Requested::OnDevice => Self::open_on_device(path, extra),
            Requested::Plain => Self::open_plain(path, extra),
        }?;
        let route = match (engine.kind(), opened.mode) {
            (EngineKind::Threads, _) | (_, Mode::Device) | (EngineKind::Aio, Mode::Buffered) => Route::Pool,
            _ => Route::Kernel,
        };
        let Opened { mut fds, device, mode, reason, size, align } = opened;
        // A dead owner's writes still in flight land before this store reads or writes.
        wait_for_writes_in_flight(&fds.file);
        // Write-through (write_through.rs) where a write goes straight to the file's own
        // blocks and is not durable on its own already; off with MD_BITMAP_WRITE_THROUGH=0.
        if mode == Mode::Direct && !dsync && std::env::var("MD_BITMAP_WRITE_THROUGH").as_deref() != Ok("0") {
            fds.through = reopen_dsync(&fds.file);
        }
        let write_through = fds.through.as_ref().map(|_| WriteThrough::default());
        Ok(PageStore {
            path: path.to_path_buf(),
            fds: RwLock::new(Some(fds)),
            counting: RwLock::new(()),
            device,
            mode,
            reason,
            size,
            align,
            pending: Pending::new(),
            others: Pending::new(),
            engine: engine.clone(),
            write_through,
            route,
            closed: AtomicBool::new(false),
            close_lock: Mutex::new(()),
        })
    }

    fn open_in_place(path: &Path, extra: libc::c_int) -> Result<Opened> {
        let report = {
            let f = File::open(path).map_err(|e| with_path(e.into(), path))?;
            check_open(&f, path, None)?
        };
        if !report.file_mode_ok() {
            return Err(IoError::new(
                "EFILE_MODE_UNSUPPORTED",
                format!("{} cannot be written page by page in place: {}", path.display(), report.summary(false)),
            ));
        }
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true).custom_flags(extra | if direct { libc::O_DIRECT } else { 0 });
            o.open(path)
        };
        let unmappable = report.map.is_none();
        let (file, mode, reason) = if unmappable {
            (open(false), Mode::Buffered, Some(format!("the {} filesystem cannot map its blocks, so direct I/O would not reach stable storage; buffered writes with fdatasync", report.fs.name)))
        } else {
            match open(true) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
                    open(false),
                    Mode::Buffered,
                    Some(format!("the {} filesystem refuses O_DIRECT; buffered writes with fdatasync", report.fs.name)),
                ),
                r => (r, Mode::Direct, None),
            }
        };
        let file = file.map_err(|e| {
            let e: IoError = e.into();
            if e.code == "EPERM" {
                IoError { message: format!("{}: cannot open for writing: the file is immutable or append-only (a device-mode user that did not close may have left it so; `chattr -i` it)", path.display()), ..e }
            } else {
                with_path(e, path)
            }
        })?;
        let align = dio_alignment(&file);
        Ok(Opened { fds: Fds { file, dev: None, through: None }, device: None, mode, reason, size: report.file_size, align })
    }

    fn open_plain(path: &Path, extra: libc::c_int) -> Result<Opened> {
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::metadata(path).map_err(|e| with_path(e.into(), path))?;
        let block = meta.file_type().is_block_device();
        if !block && !meta.is_file() {
            return Err(IoError::new("EINVAL", format!("{} is neither a regular file nor a block device", path.display())));
        }
        // A block device is opened exclusively, as md does: no one mounts it under us.
        let excl = if block { libc::O_EXCL } else { 0 };
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true).custom_flags(extra | excl | if direct { libc::O_DIRECT } else { 0 });
            o.open(path)
        };
        let (file, mode, reason) = match open(true) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (open(false), Mode::Buffered, Some("the filesystem refuses O_DIRECT; buffered writes with fdatasync".to_string()))
            }
            r => (r, Mode::Direct, None),
        };
        let file = file.map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) if block => IoError::sys(
                nix::errno::Errno::EBUSY,
                format!(
                    "{} is in use: mounted, in an md array or an LVM volume, or open exclusively by another process; \
                     a process killed moments ago holds it until its writes in flight have landed, so retry once they have",
                    path.display()
                ),
            ),
            _ => with_path(e.into(), path),
        })?;
        let (size, align) = if block {
            let mut size: u64 = 0;
            // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
            const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
            let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
            if r < 0 {
                return Err(IoError::sys(nix::errno::Errno::last(), format!("BLKGETSIZE64 {}", path.display())));
            }
            let lbs = logical_block_size(&file).unwrap_or(4096);
            (size, DioAlignment { memory: lbs, offset: lbs, source: AlignSource::BlockDevice })
        } else {
            (meta.len(), dio_alignment(&file))
        };
        Ok(Opened { fds: Fds { file, dev: None, through: None }, device: None, mode, reason, size, align })
    }

    fn open_on_device(path: &Path, extra: libc::c_int) -> Result<Opened> {
        let file = File::open(path).map_err(|e| with_path(e.into(), path))?;
        // Pin first, map second: a map taken before pinning could be stale by the time
        // the pin holds.
        let was_immutable = get_flags(&file).map(|f| f & FS_IMMUTABLE_FL != 0).unwrap_or(false);
        if !was_immutable {
            set_immutable(&file, true).map_err(|e| IoError {
                code: "EDEVICE_PIN".into(),
                message: format!(
                    "{}: cannot pin the file against moves by setting its immutable flag ({}); device mode needs root (CAP_LINUX_IMMUTABLE) and a filesystem with that flag",
                    path.display(),
                    e.desc()
                ),
                errno: Some(e as i32),
            })?;
        }
        let unpin = |f: &File| {
            if !was_immutable {
                let _ = set_immutable(f, false);
            }
        };
        let fail = |f: &File, e: IoError| {
            unpin(f);
            e
        };
        let report = check_open(&file, path, None).map_err(|e| fail(&file, e))?;
        let Some(bdev) = report.device.clone().filter(|_| report.device_mode_ok()) else {
            return Err(fail(&file, device_refused(path, &report)));
        };
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | extra)
            .open(&bdev.path)
            .map_err(|e| {
                let mut e: IoError = e.into();
                e.message = format!(
                    "cannot open {}, the block device under {}, for direct writes: {}; device mode needs root and a device this process may write",
                    bdev.path.display(),
                    path.display(),
                    e.message
                );
                fail(&file, e)
            })?;
        let lbs = logical_block_size(&dev).unwrap_or(4096);
        // Now that the device's real block size is known, check alignment against it.
        let report = check_open(&file, path, Some(lbs)).map_err(|e| fail(&file, e))?;
        if !report.device_mode_ok() {
            return Err(fail(&file, device_refused(path, &report)));
        }
        drop_page_cache(&file);
        let mut map = report.map.clone().map(|m| m.extents).unwrap_or_default();
        map.sort_by_key(|e| e.logical);
        let device = DeviceTarget { path: bdev.path, map, pinned_by_us: !was_immutable };
        let align = DioAlignment { memory: lbs, offset: lbs, source: AlignSource::BlockDevice };
        Ok(Opened { fds: Fds { file, dev: Some(dev), through: None }, device: Some(device), mode: Mode::Device, reason: None, size: report.file_size, align })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn alignment(&self) -> DioAlignment {
        self.align
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn device_path(&self) -> Option<&Path> {
        self.device.as_ref().map(|d| d.path.as_path())
    }
    pub fn pending(&self) -> &Pending {
        &self.pending
    }

    fn closed_error(&self, what: &str) -> IoError {
        IoError::new("ECLOSED", format!("{what} on {}: the page store is closed", self.path.display()))
    }

    fn check_io(&self, what: &str, offset: u64, buf: &[u8]) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(self.closed_error(what));
        }
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(IoError::new(
                "EOUT_OF_RANGE",
                format!(
                    "{what} of {len} bytes at {offset} goes past the end of {} ({} bytes); a page store never grows a file",
                    self.path.display(),
                    self.size
                ),
            ));
        }
        if self.mode != Mode::Buffered {
            let (oa, ma) = (self.align.offset, self.align.memory);
            if !offset.is_multiple_of(oa) || !len.is_multiple_of(oa) || !(buf.as_ptr() as u64).is_multiple_of(ma) {
                return Err(IoError::new(
                    "EALIGN",
                    format!(
                        "{what} at {offset}, {len} bytes, buffer address {:#x}: {} I/O needs offsets and lengths in multiples of {oa} and buffers aligned to {ma}; allocate buffers with allocAligned()",
                        buf.as_ptr() as usize,
                        self.mode.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The engine kind this store's reads and writes use.
    pub fn engine(&self) -> EngineKind {
        match self.route {
            Route::Kernel => self.engine.kind(),
            Route::Pool => EngineKind::Threads,
        }
    }

    /// Whether this store's completions wait for the reap: its I/O goes to an io_uring
    /// ring that defers completion work (see [`Engine::deferred_completions`]).
    pub fn deferred_completions(&self) -> bool {
        self.route == Route::Kernel && self.engine.deferred_completions()
    }

    /// Why the store uses the engine it does, when not the best one.
    pub fn engine_reason(&self) -> Option<String> {
        match (self.route, self.engine.kind()) {
            (Route::Pool, EngineKind::Threads) | (Route::Kernel, _) => self.engine.reason().map(String::from),
            (Route::Pool, _) if self.mode == Mode::Device => {
                Some("device mode: a page may span extents, so its writes run on the I/O threads".into())
            }
            (Route::Pool, _) => Some("buffered I/O would block io_submit, so it runs on the I/O threads".into()),
        }
    }

    /// A write split over the extents it covers (device mode), blocking: for the I/O threads.
    fn write_pieces(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        let fds = self.fds.read().unwrap();
        let (Some(fds), Some(d)) = (fds.as_ref(), &self.device) else { return Err(std::io::Error::from_raw_os_error(libc::EBADF)) };
        let dev = fds.dev.as_ref().expect("device mode has a device");
        for (phys, at, n) in map_range(&d.map, self.size, offset, buf.len() as u64).map_err(std::io::Error::other)? {
            dev.write_all_at(&buf[at..at + n], phys)?;
        }
        Ok(())
    }

    /// A read split over the extents it covers (device mode), blocking: for the I/O threads.
    fn read_pieces(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let fds = self.fds.read().unwrap();
        let (Some(fds), Some(d)) = (fds.as_ref(), &self.device) else { return Err(std::io::Error::from_raw_os_error(libc::EBADF)) };
        let dev = fds.dev.as_ref().expect("device mode has a device");
        for (phys, at, n) in map_range(&d.map, self.size, offset, buf.len() as u64).map_err(std::io::Error::other)? {
            dev.read_exact_at(&mut buf[at..at + n], phys)?;
        }
        Ok(())
    }

    /// The descriptor I/O goes to, after counting the operation in `count`; an error if
    /// the store is closed. Counted under `counting`'s read lock, so `close` (which
    /// passes through its write lock after marking the store closed, then waits for the
    /// counts) cannot close the descriptor before the operation completes.
    /// `through`: the write-through descriptor (O_DSYNC), which a store that has one
    /// gives for writes only.
    fn begin(&self, what: &str, count: &Pending, through: bool) -> Result<RawFd> {
        let _counting = self.counting.read().unwrap();
        let fds = self.fds.read().unwrap();
        match fds.as_ref() {
            Some(fds) if !self.closed.load(Ordering::SeqCst) => {
                count.begin();
                let f = if through { fds.through.as_ref() } else { None };
                Ok(f.or(fds.dev.as_ref()).unwrap_or(&fds.file).as_raw_fd())
            }
            _ => Err(self.closed_error(what)),
        }
    }

    /// A failed I/O's error, its message led by what failed. Made only on failure: the
    /// description is not formatted for the I/Os that succeed.
    fn io_error(e: std::io::Error, what: std::fmt::Arguments) -> IoError {
        let mut e: IoError = e.into();
        e.message = format!("{what}: {}", e.message);
        e
    }

    /// Issues a tracked write through the engine: counted pending from now until the
    /// write completes, any I/O error kept as the sticky error, then `done` is called
    /// (in the engine's `reap()`) with the result and the buffer back.
    pub fn submit_write<B, F>(self: &Arc<Self>, offset: u64, buf: B, done: F)
    where
        B: AsRef<[u8]> + Send + 'static,
        F: FnOnce(Result<()>, B) + Send + 'static,
    {
        // A misuse (misaligned, out of range, closed) is the caller's error, not the
        // disk's: it is reported at once and never becomes the sticky write error.
        if let Err(e) = self.check_io("write", offset, buf.as_ref()) {
            return done(Err(e), buf);
        }
        let through = self.write_through.as_ref().is_some_and(|w| w.write());
        let fd = match self.begin("write", &self.pending, through) {
            Ok(fd) => fd,
            Err(e) => {
                if let Some(w) = &self.write_through {
                    w.completed();
                }
                return done(Err(e), buf);
            }
        };
        let (ptr, len) = (buf.as_ref().as_ptr(), buf.as_ref().len());
        let store = self.clone();
        let complete: Done = Box::new(move |r| {
            let r = r.map_err(|e| Self::io_error(e, format_args!("write of {len} bytes at {offset} to {}", store.path.display())));
            store.pending.end(r.as_ref().err());
            if let Some(w) = &store.write_through {
                w.completed();
            }
            done(r, buf)
        });
        if self.device.is_some() {
            let s = self.clone();
            // SAFETY: the buffer is owned by `complete`, which runs after this work.
            let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
            return self.engine.spawn(move || s.write_pieces(offset, bytes), complete);
        }
        self.engine.submit(Op::Write { fd, buf: ptr, len, offset }, self.route, complete);
    }

    /// A read through the engine (not write-pending); `done` gets the buffer back.
    /// In device mode the bytes come from the device at the file's physical offsets.
    pub fn submit_read<B, F>(self: &Arc<Self>, offset: u64, mut buf: B, done: F)
    where
        B: AsMut<[u8]> + Send + 'static,
        F: FnOnce(Result<()>, B) + Send + 'static,
    {
        let fd = match self.check_io("read", offset, buf.as_mut()).and_then(|()| self.begin("read", &self.others, false)) {
            Ok(fd) => fd,
            Err(e) => return done(Err(e), buf),
        };
        let (ptr, len) = (buf.as_mut().as_mut_ptr(), buf.as_mut().len());
        let store = self.clone();
        let complete: Done = Box::new(move |r| {
            store.others.end(None);
            done(r.map_err(|e| Self::io_error(e, format_args!("read of {len} bytes at {offset} from {}", store.path.display()))), buf)
        });
        if self.device.is_some() {
            let s = self.clone();
            let ptr = ptr as usize;
            // SAFETY: the buffer is owned by `complete`, which runs after this work.
            return self.engine.spawn(move || s.read_pieces(offset, unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) }), complete);
        }
        self.engine.submit(Op::Read { fd, buf: ptr, len, offset }, self.route, complete);
    }

    /// fdatasync through the engine (of the device in device mode, which flushes its
    /// volatile cache): makes completed writes durable. A failure is kept as the
    /// sticky error, since writes it covered may not be durable. Under write-through,
    /// `done` is called at once (with Ok) when every write is durable already.
    pub fn submit_sync<F>(self: &Arc<Self>, done: F)
    where
        F: FnOnce(Result<()>) + Send + 'static,
    {
        let plan = match &self.write_through {
            Some(w) if !self.closed.load(Ordering::SeqCst) => w.sync(|| self.pending.failed()),
            _ => SyncPlan::Flush { credit: None },
        };
        let credit = match plan {
            SyncPlan::Skip => return done(Ok(())),
            SyncPlan::Flush { credit } => credit,
        };
        let fd = match self.begin("sync", &self.others, false) {
            Ok(fd) => fd,
            Err(e) => return done(Err(e)),
        };
        let store = self.clone();
        let complete: Done = Box::new(move |r| {
            let r = r.map_err(|e| Self::io_error(e, format_args!("fdatasync {}", store.path.display())));
            match &r {
                Err(e) => store.pending.record_error(e),
                Ok(()) => {
                    if let Some(w) = &store.write_through {
                        w.synced(credit);
                    }
                }
            }
            store.others.end(None);
            done(r)
        });
        // AIO's fdatasync is not asynchronous on every filesystem: threads, there.
        let route = if self.engine.kind() == EngineKind::Uring { Route::Kernel } else { Route::Pool };
        self.engine.submit(Op::DataSync { fd }, route, complete);
    }

    /// Write-through's counts since open; None where the store has no write-through
    /// (not direct, dsync already, or MD_BITMAP_WRITE_THROUGH=0).
    pub fn write_through_counts(&self) -> Option<WriteThroughCounts> {
        self.write_through.as_ref().map(|w| w.counts())
    }

    pub fn wait_idle(&self, timeout: Option<Duration>) -> bool {
        self.pending.wait_idle(timeout)
    }

    /// Whether nothing is in flight: no write pending, no read or fdatasync.
    pub fn quiet(&self) -> bool {
        self.pending.count() == 0 && self.others.count() == 0
    }

    /// Waits for every pending write (and read and sync in flight), syncs, unpins a
    /// device-mode file and drops its stale page cache. Later I/O fails with ECLOSED.
    /// Returns the sticky write error, if any write ever failed, so it is never lost.
    /// Blocks: never call it on the thread that reaps the engine (there, call
    /// `begin_close`, wait for `quiet()` from the reap path, then `finish_close` on
    /// another thread).
    pub fn close(&self) -> Result<()> {
        self.begin_close();
        self.finish_close()
    }

    /// The first half of `close`, which does not wait for I/O in flight: from now on
    /// I/O fails with ECLOSED, and every submission that saw the store open has counted
    /// itself (so `quiet()` turning true means no more I/O will use the descriptors).
    pub fn begin_close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            // Every submission that saw the store open holds the read lock until it has
            // counted itself; passing through the write lock waits for them (and for
            // nothing else: it is never held across I/O).
            drop(self.counting.write().unwrap());
        }
    }

    /// The second half of `close`: waits for I/O in flight (none after `quiet()`),
    /// syncs and releases the file. Only the first call does so; a later one (or one
    /// concurrent with it, which waits for it) returns Ok.
    pub fn finish_close(&self) -> Result<()> {
        let _g = self.close_lock.lock().unwrap();
        if self.fds.read().unwrap().is_none() {
            return Ok(());
        }
        self.pending.wait_idle(None);
        self.others.wait_idle(None);
        let Some(fds) = self.fds.write().unwrap().take() else { return Ok(()) };
        let synced = nix::unistd::fdatasync(fds.dev.as_ref().unwrap_or(&fds.file));
        if let Some(d) = &self.device {
            if d.pinned_by_us {
                let _ = set_immutable(&fds.file, false);
            }
            drop_page_cache(&fds.file);
        }
        if let Some(e) = self.pending.error() {
            return Err(e);
        }
        synced.map_err(|e| IoError::sys(e, format!("fdatasync {} on close", self.path.display())))
    }
}

impl Drop for PageStore {
    fn drop(&mut self) {
        // A store dropped without close (a crash of the JS side, a forgotten close) must
        // not leave its file immutable.
        let _ = self.close();
    }
}

fn device_refused(path: &Path, report: &CheckReport) -> IoError {
    IoError::new(
        "EDEVICE_MODE_UNSUPPORTED",
        format!(
            "{} cannot be written on its device directly: {}; use file mode",
            path.display(),
            if report.device_mode_ok() { "no block device found".to_string() } else { report.summary(true) }
        ),
    )
}

/// Where a file range lives on the device: (device offset, offset in the range,
/// length) pieces. Fails unless the whole range is inside the mapped extents, so a
/// device-mode write cannot land anywhere the file does not own. `map` must be sorted
/// by logical offset.
fn map_range(map: &[Extent], size: u64, offset: u64, len: u64) -> Result<Vec<(u64, usize, usize)>> {
    let out_of_extents = || {
        IoError::new(
            "EOUT_OF_EXTENTS",
            format!("range {offset}+{len} is not wholly inside the file's mapped extents; refusing to write the device outside the file"),
        )
    };
    let end = offset.checked_add(len).ok_or_else(out_of_extents)?;
    if end > size {
        return Err(out_of_extents());
    }
    let mut pieces = Vec::new();
    let mut at = offset;
    let first = map.partition_point(|e| e.end() <= offset);
    for e in &map[first..] {
        if at >= end {
            break;
        }
        if e.logical > at {
            return Err(out_of_extents()); // a gap in the map
        }
        let n = e.end().min(end) - at;
        pieces.push((e.physical + (at - e.logical), (at - offset) as usize, n as usize));
        at += n;
    }
    if at < end {
        return Err(out_of_extents());
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, physical: u64, length: u64) -> Extent {
        Extent { logical, physical, length, flags: 0 }
    }

    #[test]
    fn maps_across_extent_boundaries() {
        let map = vec![ext(0, 1 << 20, 4096), ext(4096, 8 << 20, 8192)];
        let p = map_range(&map, 12288, 2048, 4096).unwrap();
        assert_eq!(p, vec![((1 << 20) + 2048, 0, 2048), (8 << 20, 2048, 2048)]);
    }

    #[test]
    fn never_maps_outside_the_extents() {
        let map = vec![ext(0, 1 << 20, 4096), ext(8192, 8 << 20, 4096)];
        // past the end, into a gap, and overflow
        assert_eq!(map_range(&map, 12288, 8192, 8192).unwrap_err().code, "EOUT_OF_EXTENTS");
        assert_eq!(map_range(&map, 12288, 0, 8192).unwrap_err().code, "EOUT_OF_EXTENTS");
        assert_eq!(map_range(&map, 12288, u64::MAX - 10, 4096).unwrap_err().code, "EOUT_OF_EXTENTS");
        // every mapped piece lies inside one extent
        for off in (0..12288).step_by(512) {
            if let Ok(pieces) = map_range(&map, 12288, off, 512) {
                for (phys, _, n) in pieces {
                    assert!(map.iter().any(|e| phys >= e.physical && phys + n as u64 <= e.physical + e.length));
                }
            }
        }
    }
}
