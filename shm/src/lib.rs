//! Memory that outlives a function call, for procpool: arrays shared between
//! the supervisor and its worker processes, the `.npy` format they are stored
//! in, and read-only maps of files for out-of-core work. This is the only
//! procpool crate that calls `mmap`.
//!
//! A shared array is a memfd holding a complete `.npy` image. The supervisor
//! creates it; each worker opens the path it is given (`/proc/self/fd/N`
//! through an inherited descriptor), so a Python worker can equally
//! `numpy.load(path, mmap_mode="r+")` it. Other processes may write that
//! memory at any moment, so nothing here lends a plain `&[T]` into it:
//! elements are copied in and out, updated through atomics, or multiplied in
//! place by the matrix kernel within one call.
//!
//! ```
//! # fn main() -> Result<(), procpool_shm::ShmError> {
//! use std::path::Path;
//! use procpool_shm::{Element, SharedArray};
//!
//! // Supervisor: a 2 x 3 matrix of f64, zero-filled.
//! let mut matrix = SharedArray::create("matrix", f64::DTYPE, &[2, 3])?;
//! matrix.write_rows(0..1, &[1.0, 2.0, 3.0])?;
//!
//! // Worker: open what the supervisor passed, write its own rows.
//! let mut view = SharedArray::open(Path::new(&matrix.worker_path()), true)?;
//! assert_eq!(view.read_rows::<f64>(0..1)?, [1.0, 2.0, 3.0]);
//! view.write_rows(1..2, &[4.0; 3])?;
//!
//! // Supervisor: the worker's writes are visible.
//! assert_eq!(matrix.to_vec::<f64>()?, [1.0, 2.0, 3.0, 4.0, 4.0, 4.0]);
//! # Ok(()) }
//! ```
//!
//! - [`npy`]: `.npy` headers ([`NpyHeader`], [`encode_header`]), element types
//!   ([`DType`], [`Element`], [`decode_f64`]), and whole files
//!   ([`read_npy_f64`], [`write_npy`], [`NpyWriter`]).
//! - [`SharedArray`]: memfd-backed arrays, their cross-process contract, and
//!   why they are read and written through copies.
//! - [`FileWindow`]: a safe read-only map of one byte range of a file, read
//!   only by decoding into the caller's buffer (the out-of-core worker's view).
//! - [`matmul_rows`]: a single-threaded SIMD dgemm of a row block of shared
//!   matrices, in place (the `gemm` crate's kernel; its raw-pointer interface
//!   is wrapped here so that `unsafe` stays in this crate).
//! - [`untrusted`]: untrusted text (a header, a worker's line) escaped and cut for
//!   a message, the one helper every procpool crate shows such text through.
//! - [`fault::segfault`]: a genuine invalid memory access, for crash tests.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod error;
pub mod fault;
mod matmul;
pub mod npy;
mod shared;
pub mod untrusted;
mod window;

pub use error::{Result, ShmError};
pub use matmul::matmul_rows;
pub use npy::{
    decode_f64, encode_header, read_npy_f64, write_npy, DType, Element, ElementKind, NpyHeader,
    NpyWriter,
};
pub use shared::SharedArray;
pub use window::FileWindow;
