//! One error type for the whole core: a stable string `code` (an errno name such as
//! `EIO`, or one of the project's own such as `EEXTENT_HOLE`) and a message that says
//! what happened and what to do. The binding turns it into a JS `Error` with `code`.

use nix::errno::Errno;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoError {
    pub code: String,
    pub message: String,
    /// The OS error number when the error came from a system call.
    pub errno: Option<i32>,
}

pub type Result<T> = std::result::Result<T, IoError>;

impl IoError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        IoError { code: code.to_string(), message: message.into(), errno: None }
    }

    /// A failed system call: the code is the errno's name, the message says what we were doing.
    pub fn sys(errno: Errno, context: impl fmt::Display) -> Self {
        IoError {
            code: format!("{:?}", errno),
            message: format!("{}: {}", context, errno.desc()),
            errno: Some(errno as i32),
        }
    }

    pub fn last(context: impl fmt::Display) -> Self {
        Self::sys(Errno::last(), context)
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for IoError {}

impl From<std::io::Error> for IoError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(n) => {
                let errno = Errno::from_raw(n);
                IoError { code: format!("{:?}", errno), message: errno.desc().to_string(), errno: Some(n) }
            }
            None => IoError::new("EIO", e.to_string()),
        }
    }
}
