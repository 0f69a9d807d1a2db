//! Memory that outlives a function call, for procpool: arrays shared between
//! the supervisor and its worker processes, the `.npy` format they are stored
//! in, read-only maps of files for out-of-core work, and plans for splitting
//! rows into chunks. This is the only procpool crate that calls `mmap`.
//!
//! A shared array is a memfd holding a complete `.npy` image. The supervisor
//! creates it; each worker opens the path it is given (`/proc/self/fd/N`
//! through an inherited descriptor), so a Python worker can equally
//! `numpy.load(path, mmap_mode="r+")` it:
//!
//! ```
//! # fn main() -> Result<(), procpool_shm::ShmError> {
//! use std::path::Path;
//! use procpool_shm::{Element, SharedArray};
//!
//! // Supervisor: a 2 x 3 matrix of f64, zero-filled.
//! let mut matrix = SharedArray::create("matrix", f64::DTYPE, &[2, 3])?;
//! matrix.rows_mut::<f64>(0..1)?.copy_from_slice(&[1.0, 2.0, 3.0]);
//!
//! // Worker: open what the supervisor passed, write its own rows.
//! let mut view = SharedArray::open(Path::new(&matrix.worker_path()), true)?;
//! assert_eq!(view.rows_slice::<f64>(0..1)?, &[1.0, 2.0, 3.0]);
//! view.rows_mut::<f64>(1..2)?.fill(4.0);
//!
//! // Supervisor: the worker's writes are visible.
//! assert_eq!(matrix.as_slice::<f64>()?, &[1.0, 2.0, 3.0, 4.0, 4.0, 4.0]);
//! # Ok(()) }
//! ```
//!
//! - [`npy`]: `.npy` headers ([`NpyHeader`], [`encode_header`]), element types
//!   ([`DType`], [`Element`], [`decode_f64`]), and whole files
//!   ([`read_npy_f64`], [`write_npy`], [`NpyWriter`]).
//! - [`SharedArray`]: memfd-backed arrays and their cross-process contract.
//! - [`FileMap`]: read-only file maps that release pages chunk by chunk.
//! - [`FileWindow`]: a safe read-only map of one byte range of a file, read
//!   only by decoding into the caller's buffer (the out-of-core worker's view).
//! - [`matmul_into`]: a safe, single-threaded SIMD dgemm over row-major slices
//!   (the `gemm` crate's kernel; its raw-pointer interface is wrapped here so that
//!   `unsafe` stays in this crate).
//! - [`fault::segfault`]: a genuine invalid memory access, for crash tests.
//! - [`chunks`]: [`row_chunks`](chunks::row_chunks) and
//!   [`even_split`](chunks::even_split).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod chunks;
mod error;
pub mod fault;
mod filemap;
mod matmul;
pub mod npy;
mod shared;
mod window;

pub use error::{Result, ShmError};
pub use filemap::FileMap;
pub use matmul::matmul_into;
pub use npy::{
    decode_f64, encode_header, read_npy_f64, write_npy, DType, Element, ElementKind, NpyHeader,
    NpyWriter,
};
pub use shared::SharedArray;
pub use window::FileWindow;
