//! The one error type of this crate.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::untrusted::{excerpt, quote, EXCERPT_BYTES};

/// Everything that can go wrong in `procpool-shm`.
///
/// Each message says what was found and what to do about it. Errors about a
/// particular file arrive wrapped in [`ShmError::File`], whose message starts
/// with the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// An error about one file; `error` says what went wrong with it.
    #[error("{}: {error}", path.display())]
    File {
        /// The file the error is about.
        path: PathBuf,
        /// What went wrong.
        error: Box<ShmError>,
    },

    /// A system call or read/write failed.
    #[error("{action} failed: {error}")]
    Io {
        /// What was being done, e.g. "memfd_create".
        action: &'static str,
        /// The error the OS reported.
        error: std::io::Error,
    },

    /// The bytes do not start with the `.npy` magic string.
    #[error(
        "not a .npy file: it starts with {} instead of \"\\x93NUMPY\"; \
         save arrays with numpy.save or procpool's write_npy",
        quote(found)
    )]
    NotNpy {
        /// The first bytes found (up to six).
        found: Vec<u8>,
    },

    /// The header ends before its declared length.
    #[error(
        "the .npy header is cut short: it needs {needed} bytes but only {available} are there; \
         the file is truncated or still being written"
    )]
    TruncatedHeader {
        /// Bytes the header needs.
        needed: usize,
        /// Bytes that were there.
        available: usize,
    },

    /// A `.npy` format version other than 1.0, 2.0 or 3.0.
    #[error(
        "unsupported .npy format version {major}.{minor}; procpool reads versions 1.0, 2.0 and 3.0 \
         (rewrite the file with numpy.save)"
    )]
    UnsupportedVersion {
        /// Major version byte.
        major: u8,
        /// Minor version byte.
        minor: u8,
    },

    /// The header dictionary could not be parsed or lacks a key.
    #[error(
        "malformed .npy header ({problem}) in {}; \
         the file was not written by numpy, or is damaged: rewrite it with numpy.save",
        quote(header)
    )]
    MalformedHeader {
        /// What is wrong.
        problem: String,
        /// The header text as found.
        header: String,
    },

    /// A dtype procpool does not read.
    #[error(
        "unsupported dtype {} ({what}); procpool reads f8, f4, i8, i4, u1",
        excerpt(descr.as_bytes(), EXCERPT_BYTES)
    )]
    UnsupportedDtype {
        /// The dtype description as found, quoted when it was a string.
        descr: String,
        /// What kind of dtype that is, e.g. "complex".
        what: String,
    },

    /// The shape's byte size does not fit in memory addresses.
    #[error(
        "shape {shape:?} of {dtype} needs more bytes than this machine can address; \
         the header is damaged, or the array must be processed out of core in chunks"
    )]
    SizeOverflow {
        /// The shape.
        shape: Vec<usize>,
        /// The dtype description, e.g. "<f8".
        dtype: String,
    },

    /// The data after the header is shorter than the header promises.
    #[error(
        "header promises {} of {dtype} ({expected} bytes) but the file holds {available} bytes \
         of data; the file is truncated",
        describe_shape(shape)
    )]
    DataTruncated {
        /// The shape from the header.
        shape: Vec<usize>,
        /// The dtype description, e.g. "<f8".
        dtype: String,
        /// Data bytes the header promises.
        expected: u64,
        /// Data bytes present.
        available: u64,
    },

    /// An array was viewed or written as an element type it does not hold.
    #[error(
        "the array holds {found} but was used as {requested}; use the element type that \
         matches the array's dtype, or decode its bytes with decode_f64"
    )]
    DTypeMismatch {
        /// The dtype description of the array.
        found: String,
        /// The dtype description that was asked for.
        requested: String,
    },

    /// Typed elements or rows were asked of an array stored in Fortran order.
    #[error(
        "the array of shape {shape:?} is stored in Fortran (column-major) order, and typed \
         access needs C (row-major) order; save it with numpy.ascontiguousarray, or copy its \
         raw bytes with read_bytes"
    )]
    FortranOrder {
        /// The shape.
        shape: Vec<usize>,
    },

    /// Rows were asked of an array with no rows (0-d).
    #[error("a 0-dimensional array has no rows; read it whole with to_vec")]
    NoRows,

    /// A range reaches past the end of what it indexes.
    #[error("{what} {}..{} is out of range: there are only {len}", range.start, range.end)]
    OutOfRange {
        /// What the range counts, e.g. "rows" or "bytes".
        what: &'static str,
        /// The range asked for.
        range: Range<usize>,
        /// How many there are.
        len: usize,
    },

    /// A write was attempted through a read-only mapping.
    #[error("the shared array was opened read-only; open it with writable = true to write to it")]
    ReadOnly,

    /// The element data is not aligned for the element type.
    #[error(
        "the array data at byte offset {offset} is not aligned to {align} bytes for its element \
         type; rewrite the file with numpy.save (which aligns data to 64 bytes)"
    )]
    Misaligned {
        /// Byte offset of the data in the mapping.
        offset: usize,
        /// Alignment the element type needs.
        align: usize,
    },

    /// The number of elements given does not match the shape.
    #[error(
        "shape {shape:?} holds {expected} elements but {got} were {action}; \
         pass exactly one element per array cell"
    )]
    ElementCount {
        /// The shape.
        shape: Vec<usize>,
        /// Elements the shape holds.
        expected: usize,
        /// Elements given.
        got: usize,
        /// What happened to them, e.g. "written".
        action: &'static str,
    },

    /// A byte buffer to decode does not match the number of output elements.
    #[error(
        "cannot decode {bytes} bytes of {dtype} into {elements} elements; \
         pass {dtype_size} bytes per output element"
    )]
    DecodeLength {
        /// Bytes given.
        bytes: usize,
        /// Output elements given.
        elements: usize,
        /// The dtype description.
        dtype: String,
        /// Bytes per element of that dtype.
        dtype_size: usize,
    },

    /// Shared arrays whose shapes do not make a matrix product `C = A·B`.
    #[error(
        "cannot compute C = A·B with A of shape {a:?}, B of shape {b:?} and C of shape {c:?}: \
         A must be m×k, B k×n and C m×n"
    )]
    ProductShape {
        /// The shape of the left factor.
        a: Vec<usize>,
        /// The shape of the right factor.
        b: Vec<usize>,
        /// The shape of the product.
        c: Vec<usize>,
    },

    /// A path handed to `SharedArray::open` is not a sealed memfd.
    #[error(
        "not a procpool shared array: the file can shrink under the mapping (no F_SEAL_SHRINK seal); \
         open the /proc/self/fd path the supervisor passed in PROCPOOL_ARRAYS, or read regular \
         files with FileWindow or read_npy_f64"
    )]
    NotSealed,

    /// A path that should name a regular file names a directory, a device, ...
    #[error("not a regular file (a directory?); pass the path of a data file")]
    NotAFile,

    /// A file is shorter than a byte range planned from its earlier size.
    #[error(
        "the file is {len} bytes, too short for bytes {}..{} planned from its earlier size: \
         it changed size (was it truncated or rewritten?)",
        range.start, range.end
    )]
    FileShrank {
        /// The byte range asked for.
        range: Range<u64>,
        /// The file's length now.
        len: u64,
    },
}

/// Result alias for this crate.
pub type Result<T, E = ShmError> = std::result::Result<T, E>;

impl ShmError {
    /// Wraps `self` as an error about the file at `path`.
    pub(crate) fn in_file(self, path: &Path) -> ShmError {
        ShmError::File {
            path: path.to_path_buf(),
            error: Box::new(self),
        }
    }

    /// An I/O error raised while doing `action`.
    pub(crate) fn io(action: &'static str, error: impl Into<std::io::Error>) -> ShmError {
        ShmError::Io {
            action,
            error: error.into(),
        }
    }
}

/// "1000 rows × 8 cols", "5 elements", or "shape (2, 3, 4)" for messages.
fn describe_shape(shape: &[usize]) -> String {
    match shape {
        [] => "a single element".to_string(),
        [n] => format!("{n} elements"),
        [rows, cols] => format!("{rows} rows × {cols} cols"),
        _ => {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("shape ({})", dims.join(", "))
        }
    }
}
