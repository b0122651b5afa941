//! md-bitmap-io: the block I/O under md-bitmap. It knows nothing of bitmaps or
//! mirrors: it maps a file's extents, judges whether the file may be written in place
//! or straight on its device, and writes aligned pages with direct I/O while tracking
//! how many writes are in flight.

pub mod align;
pub mod allocated;
pub mod check;
pub mod device;
pub mod error;
pub mod extents;
pub mod fence;
pub mod huge_pages;
pub mod pending;
pub mod engine;
pub mod pool;
pub mod punch;
pub mod spin;
mod aio;
mod uring;
pub mod store;
pub mod write_through;

pub use allocated::{allocated_ranges, Allocated};
pub use align::{dio_alignment, AlignSource, DioAlignment};
pub use check::{check, CheckReport, Problem};
pub use error::{IoError, Result};
pub use extents::{extents, Extent, ExtentMap, MapSource};
pub use engine::{Engine, EngineKind};
pub use pending::Pending;
pub use punch::punch_hole;
pub use store::{Mode, PageStore, Requested};

pub mod lock;
pub use lock::{clear_immutable, FileLock};
