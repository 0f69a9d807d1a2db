//! A read-only map of one byte range of a file, for a worker that processes a
//! chunk of an input far larger than memory and must leave it as it found it.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use memmap2::{Advice, MmapOptions, MmapRaw, UncheckedAdvice};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

use crate::error::{Result, ShmError};
use crate::npy::{decode_f64_raw, DType};

/// A read-only, shared map of bytes `start..end` of a file, whose contents are
/// only ever *copied out* (decoded into the caller's buffer), never lent.
///
/// The file is not this process's: anyone may write it, or truncate it, while
/// it is mapped. So `FileWindow` lends no reference into the mapping: every
/// read goes through [`decode_f64`](FileWindow::decode_f64), which reads each
/// element once, by value, through a raw pointer, into an `f64` buffer the
/// caller owns, and accepts every bit pattern. What remains of the hazard is
/// therefore not undefined behaviour but a crash, which is why the
/// constructor can be safe:
///
/// - **SIGBUS.** If the file is truncated after [`open`](FileWindow::open)
///   checked its length, reading a page past the new end raises SIGBUS, and
///   the process dies of it. That is the contract procpool is built around: a
///   worker that dies is reported, replaced, and its task retried then
///   quarantined; the supervisor never maps worker inputs, so it survives.
///   Do not use a `FileWindow` in a process that must not die of a file
///   someone else shrinks; read such files with [`crate::read_npy_f64`].
/// - **Concurrent writes** show up as torn or changed values in the decoded
///   numbers, not as broken invariants.
///
/// Pages are released chunk by chunk ([`release`](FileWindow::release),
/// `MADV_DONTNEED`), so the process's resident memory stays bounded by what
/// it holds between releases, whatever the window's size.
///
/// ```
/// # fn main() -> Result<(), procpool_shm::ShmError> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("big.npy");
/// # procpool_shm::npy::write_npy(&path, &[100, 4], &[1.5f64; 400])?;
/// use procpool_shm::{DType, FileWindow, NpyHeader};
/// let header = NpyHeader::read_from(&mut std::fs::File::open(&path).unwrap())?;
/// // Rows 10..20 of the 100 x 4 array: 40 elements.
/// let start = (header.data_offset + 10 * 4 * 8) as u64;
/// let window = FileWindow::open(&path, start..start + 40 * 8)?;
/// let mut values = [0.0; 40];
/// window.decode_f64(0..40 * 8, DType::F64_LE, &mut values)?;
/// window.release(0..window.len())?;
/// assert_eq!(values, [1.5; 40]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FileWindow {
    file: File,
    path: PathBuf,
    /// The file offset of the window's first byte.
    start: u64,
    /// `None` for an empty window (mmap refuses zero lengths).
    map: Option<MmapRaw>,
}

impl FileWindow {
    /// Maps bytes `range` of the regular file at `path` read-only.
    ///
    /// Fails, naming the file, if it cannot be opened, is not a regular file,
    /// or is shorter than `range.end` (say, because it was truncated after the
    /// work was planned): better a clear error than a SIGBUS.
    pub fn open(path: &Path, range: Range<u64>) -> Result<FileWindow> {
        let open = || -> Result<FileWindow> {
            let file = File::open(path).map_err(|err| ShmError::io("opening the file", err))?;
            let meta = file
                .metadata()
                .map_err(|err| ShmError::io("reading the file's size", err))?;
            if !meta.is_file() {
                return Err(ShmError::NotAFile);
            }
            if range.start > range.end || range.end > meta.len() {
                return Err(ShmError::FileShrank {
                    range: range.clone(),
                    len: meta.len(),
                });
            }
            let len =
                usize::try_from(range.end - range.start).map_err(|_| ShmError::OutOfRange {
                    what: "bytes",
                    range: 0..usize::MAX,
                    len: usize::MAX,
                })?;
            let map = if len == 0 {
                None
            } else {
                // Read-only and never lent (see the type), so a raw map needs no
                // promise from the caller. memmap2 aligns the offset to a page and
                // adjusts the pointer.
                let map = MmapOptions::new()
                    .offset(range.start)
                    .len(len)
                    .map_raw_read_only(&file)
                    .map_err(|err| ShmError::io("mapping the file (mmap)", err))?;
                Some(map)
            };
            Ok(FileWindow {
                file,
                path: path.to_path_buf(),
                start: range.start,
                map,
            })
        };
        open().map_err(|err| err.in_file(path))
    }

    /// The window's length in bytes.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |map| map.len())
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes the elements of `dtype` stored at `range` (relative to the
    /// window's start) into `out`, which must hold exactly
    /// `range.len() / dtype.size` elements. See [`crate::decode_f64`].
    pub fn decode_f64(&self, range: Range<usize>, dtype: DType, out: &mut [f64]) -> Result<()> {
        let (offset, len) = self.checked(range)?;
        let start = match &self.map {
            Some(map) => map.as_ptr().wrapping_add(offset),
            None => std::ptr::NonNull::<u8>::dangling().as_ptr(),
        };
        // SAFETY: `offset..offset + len` lies inside the mapping (`checked`), or is
        // empty for an empty window, where a dangling pointer is valid for reads of
        // zero bytes. The decode reads by value and lends nothing (see the type);
        // a truncated file makes it raise SIGBUS, which ends the process.
        unsafe { decode_f64_raw(dtype, start, len, out) }
    }

    /// Asks the kernel to start reading `range` in the background
    /// (`madvise(MADV_WILLNEED)`), so that it is in memory when it is reached.
    pub fn prefetch(&self, range: Range<usize>) -> Result<()> {
        let (offset, len) = self.checked(range)?;
        match &self.map {
            Some(map) if len > 0 => map
                .advise_range(Advice::WillNeed, offset, len)
                .map_err(|err| ShmError::io("prefetching pages (madvise)", err)),
            _ => Ok(()),
        }
    }

    /// Tells the kernel the window will be read front to back
    /// (`madvise(MADV_SEQUENTIAL)`): aggressive read-ahead, early reclaim.
    pub fn advise_sequential(&self) -> Result<()> {
        match &self.map {
            Some(map) => map
                .advise(Advice::Sequential)
                .map_err(|err| ShmError::io("advising sequential reads (madvise)", err)),
            None => Ok(()),
        }
    }

    /// Drops this process's pages of `range` (`madvise(MADV_DONTNEED)`), so
    /// they stop counting towards its resident memory. Whole pages are
    /// released, including pages `range` covers only in part; reading them
    /// again faults them back in from the file, so this is always correct,
    /// only slower if done too early.
    pub fn release(&self, range: Range<usize>) -> Result<()> {
        let (offset, len) = self.checked(range)?;
        match &self.map {
            // SAFETY: MADV_DONTNEED on a read-only shared file mapping only
            // drops page-table entries; later reads refault the same bytes
            // from the file, so even a decode running at the same time on
            // another thread reads the same bytes. No reference into the
            // mapping exists to be invalidated (see the type).
            Some(map) if len > 0 => {
                unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len) }
                    .map_err(|err| ShmError::io("releasing pages (madvise)", err))
            }
            _ => Ok(()),
        }
    }

    /// Asks the kernel to drop `range` from the page cache
    /// (`posix_fadvise(POSIX_FADV_DONTNEED)`) once this process is done with
    /// it. Unlike [`release`](FileWindow::release) this affects every process
    /// reading the file: clean cached pages are evicted, so a rerun reads from
    /// disk again. Useful when one pass over a huge file should not push
    /// everything else out of the cache; pages still mapped anywhere stay.
    pub fn drop_cache(&self, range: Range<usize>) -> Result<()> {
        let (offset, len) = self.checked(range)?;
        if len == 0 {
            return Ok(());
        }
        let file_offset = self.start + offset as u64;
        let (Ok(file_offset), Ok(len)) = (i64::try_from(file_offset), i64::try_from(len)) else {
            return Ok(());
        };
        posix_fadvise(
            self.file.as_fd(),
            file_offset,
            len,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(|err| {
            ShmError::io("dropping cached pages (posix_fadvise)", err).in_file(&self.path)
        })
    }

    /// `range` as offset and length, refused if it reaches past the window.
    fn checked(&self, range: Range<usize>) -> Result<(usize, usize)> {
        if range.start > range.end || range.end > self.len() {
            return Err(ShmError::OutOfRange {
                what: "bytes",
                range,
                len: self.len(),
            });
        }
        Ok((range.start, range.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::write_npy;

    fn vm_rss_file_kib() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn decodes_unaligned_windows_and_releases_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let values: Vec<f64> = (0..2_000_000).map(f64::from).collect();
        write_npy(&path, &[values.len()], &values).unwrap();
        let header = crate::NpyHeader::read_from(&mut File::open(&path).unwrap()).unwrap();
        // Elements 1_000_001.. — an offset that is not a page boundary.
        let first = 1_000_001;
        let start = (header.data_offset + first * 8) as u64;
        let window = FileWindow::open(&path, start..start + 8 * 900_000).unwrap();
        window.advise_sequential().unwrap();
        let before = vm_rss_file_kib();
        let mut out = vec![0.0; 900_000];
        window
            .decode_f64(0..window.len(), DType::F64_LE, &mut out)
            .unwrap();
        assert_eq!(out[0], first as f64);
        assert_eq!(out[899_999], (first + 899_999) as f64);
        let touched = vm_rss_file_kib();
        assert!(touched >= before + 6000, "{before} -> {touched} KiB");
        window.release(0..window.len()).unwrap();
        window.drop_cache(0..window.len()).unwrap();
        let after = vm_rss_file_kib();
        assert!(after < touched - 6000, "{touched} -> {after} KiB");
        // Still readable after the release.
        let mut one = [0.0];
        window.decode_f64(8..16, DType::F64_LE, &mut one).unwrap();
        assert_eq!(one[0], (first + 1) as f64);
    }

    #[test]
    fn refuses_ranges_past_the_end_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small");
        std::fs::write(&path, [0u8; 100]).unwrap();
        let err = FileWindow::open(&path, 50..101).unwrap_err().to_string();
        assert!(err.contains("small: the file is 100 bytes"), "{err}");
        assert!(err.contains("changed size"), "{err}");
        let empty = FileWindow::open(&path, 100..100).unwrap();
        assert!(empty.is_empty());
        empty.decode_f64(0..0, DType::F64_LE, &mut []).unwrap();
        empty.release(0..0).unwrap();
        let window = FileWindow::open(&path, 0..100).unwrap();
        assert!(window
            .decode_f64(96..104, DType::F64_LE, &mut [0.0])
            .is_err());
        let err = FileWindow::open(dir.path(), 0..0).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
