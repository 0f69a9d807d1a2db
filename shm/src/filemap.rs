//! Read-only maps of files on disk, for out-of-core work that reads a chunk at
//! a time and keeps resident memory bounded.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use memmap2::{Advice, Mmap, UncheckedAdvice};

use crate::error::{Result, ShmError};

/// A read-only, shared map of a whole file.
///
/// Out-of-core work maps its input once, reads one chunk at a time through
/// [`bytes`](FileMap::bytes), and [`release`](FileMap::release)s each chunk
/// when done, so the pages this process holds stay bounded by the chunk size
/// however large the file is.
///
/// ```
/// # fn main() -> Result<(), procpool_shm::ShmError> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("big.npy");
/// # procpool_shm::npy::write_npy(&path, &[100, 4], &[1.0f64; 400])?;
/// use procpool_shm::{FileMap, NpyHeader};
/// // SAFETY: nobody truncates the input while the workload runs.
/// let map = unsafe { FileMap::open(&path)? };
/// let header = NpyHeader::parse(map.bytes())?;
/// let data = header.data_offset..header.data_offset + header.data_len()?;
/// map.advise_sequential(data.clone())?;
/// let total: usize = map.bytes()[data.clone()].iter().map(|&b| b as usize).sum();
/// map.release(data)?;
/// # assert!(total > 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FileMap {
    map: Mmap,
}

impl FileMap {
    /// Maps the whole file at `path` read-only. An empty file gives an empty
    /// map.
    ///
    /// # Safety
    ///
    /// The file must not be truncated while the map exists: touching a page
    /// past the new end raises SIGBUS, which kills the process. Changes to the
    /// file's contents by others show through [`bytes`](FileMap::bytes), so
    /// the caller also promises that nobody writes the file meanwhile.
    pub unsafe fn open(path: &Path) -> Result<FileMap> {
        let file =
            File::open(path).map_err(|err| ShmError::io("opening the file", err).in_file(path))?;
        // SAFETY: the caller promises that the file is neither truncated nor
        // written while the map exists (this function's contract).
        let map = unsafe { Mmap::map(&file) }
            .map_err(|err| ShmError::io("mapping the file (mmap)", err).in_file(path))?;
        Ok(FileMap { map })
    }

    /// The file's contents.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The file's length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops this process's pages for `range` (`madvise(MADV_DONTNEED)`), so
    /// they stop counting towards its resident memory; reading them again
    /// faults them back in from the file.
    ///
    /// Whole pages are released, including the pages that `range` covers only
    /// in part, so that a sequence of adjacent chunks releases everything.
    ///
    /// Only this process's mapping is affected. The kernel's page cache is
    /// left alone on purpose (no `posix_fadvise(POSIX_FADV_DONTNEED)`): it is
    /// shared with the other workers reading the same file, is reclaimed by
    /// the kernel under memory pressure anyway, and lets a second pass or a
    /// rerun read from memory rather than disk.
    pub fn release(&self, range: Range<usize>) -> Result<()> {
        let (offset, len) = self.checked(range)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: MADV_DONTNEED on a read-only shared file mapping only drops
        // page-table entries: later reads refault the same bytes from the file
        // (which the `open` contract keeps unchanged), so slices borrowed from
        // `bytes` stay valid. memmap2 rounds `offset` down to a page boundary
        // inside this mapping, and the kernel rounds the end up to one.
        unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len)
        }
        .map_err(|err| ShmError::io("releasing pages (madvise)", err))
    }

    /// Tells the kernel that `range` will be read sequentially
    /// (`madvise(MADV_SEQUENTIAL)`), so it reads ahead aggressively and drops
    /// pages behind the reader sooner.
    pub fn advise_sequential(&self, range: Range<usize>) -> Result<()> {
        let (offset, len) = self.checked(range)?;
        if len == 0 {
            return Ok(());
        }
        self.map
            .advise_range(Advice::Sequential, offset, len)
            .map_err(|err| ShmError::io("advising sequential reads (madvise)", err))
    }

    /// `range` as offset and length, refused if it reaches past the map.
    fn checked(&self, range: Range<usize>) -> Result<(usize, usize)> {
        if range.start > range.end || range.end > self.map.len() {
            return Err(ShmError::OutOfRange {
                what: "bytes",
                range,
                len: self.map.len(),
            });
        }
        Ok((range.start, range.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident kilobytes of the mapping that starts at `start`, read from
    /// /proc/self/smaps.
    fn resident_kib(start: *const u8) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let wanted = format!("{:x}-", start as usize);
        let mut lines = smaps
            .lines()
            .skip_while(|line| !line.starts_with(&wanted))
            .skip(1);
        let rss = lines.find(|line| line.starts_with("Rss:")).unwrap();
        rss.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn release_drops_resident_pages_and_data_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let contents: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        std::fs::write(&path, &contents).unwrap();
        // SAFETY: the file lives in this test's private temp dir; nobody truncates it.
        let map = unsafe { FileMap::open(&path) }.unwrap();
        assert_eq!(map.len(), contents.len());
        map.advise_sequential(0..map.len()).unwrap();
        let sum: u64 = map.bytes().iter().map(|&b| u64::from(b)).sum();
        assert_eq!(sum, contents.iter().map(|&b| u64::from(b)).sum());
        let before = resident_kib(map.bytes().as_ptr());
        assert!(
            before >= 8 << 10,
            "all 8 MiB should be resident, got {before} KiB"
        );

        // Release in unaligned chunks, as a chunked reader would.
        let chunk = 1_000_003;
        let mut start = 0;
        while start < map.len() {
            let end = (start + chunk).min(map.len());
            map.release(start..end).unwrap();
            start = end;
        }
        let after = resident_kib(map.bytes().as_ptr());
        assert!(
            after < 64,
            "pages should be released, still {after} KiB resident"
        );
        assert_eq!(map.bytes()[5_000_000], contents[5_000_000]);
    }

    #[test]
    fn empty_files_map_to_empty_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, b"").unwrap();
        // SAFETY: private temp file, never truncated.
        let map = unsafe { FileMap::open(&path) }.unwrap();
        assert!(map.is_empty());
        assert_eq!(map.bytes(), b"");
        map.release(0..0).unwrap();
        map.advise_sequential(0..0).unwrap();
    }

    #[test]
    fn ranges_are_checked_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small");
        std::fs::write(&path, b"0123456789").unwrap();
        // SAFETY: private temp file, never truncated.
        let map = unsafe { FileMap::open(&path) }.unwrap();
        let err = map.release(5..11).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bytes 5..11 is out of range: there are only 10"
        );
        assert!(map.advise_sequential(11..12).is_err());
        map.release(3..7).unwrap();
        assert_eq!(map.bytes(), b"0123456789");

        // SAFETY: the path does not exist, so nothing is mapped.
        let err = unsafe { FileMap::open(&dir.path().join("missing")) }.unwrap_err();
        assert!(
            err.to_string().contains("missing: opening the file failed"),
            "{err}"
        );
    }
}
