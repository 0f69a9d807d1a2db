//! Arrays shared between processes: a memfd holding a complete `.npy` image,
//! mapped `MAP_SHARED` by the supervisor and by every worker.

use std::fs::OpenOptions;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::AtomicI32;

use memmap2::{Advice, Mmap, MmapMut, MmapOptions};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::error::{Result, ShmError};
use crate::npy::{cast_elements, cast_elements_mut, encode_header, DType, Element, NpyHeader};

/// An array in shared memory, stored as a complete `.npy` image (header and
/// data) in a memfd.
///
/// The supervisor [`create`](SharedArray::create)s it; a worker that inherited
/// the descriptor [`open`](SharedArray::open)s [`worker_path`](SharedArray::worker_path)
/// (`/proc/self/fd/N`), and a Python worker can `numpy.load(path,
/// mmap_mode="r+")` the same path. Nothing is named in `/dev/shm`, so nothing
/// leaks: the memory is freed when the last process holding the descriptor or
/// a mapping exits.
///
/// The memfd is sealed against growing and shrinking, so no process can
/// truncate it under another's mapping.
///
/// # Cross-process contract
///
/// Several processes may write *disjoint* row blocks at the same time (see
/// [`rows_mut`](SharedArray::rows_mut)). No process may read a block while
/// another process writes it: the slices handed out here assume that nobody
/// else changes the memory while they are borrowed, and the supervisor
/// ensures it by handing each block to one task at a time and reading results
/// only after that task has reported back.
#[derive(Debug)]
pub struct SharedArray {
    header: NpyHeader,
    mapping: Mapping,
    fd: OwnedFd,
}

#[derive(Debug)]
enum Mapping {
    ReadWrite(MmapMut),
    ReadOnly(Mmap),
}

impl Mapping {
    fn bytes(&self) -> &[u8] {
        match self {
            Mapping::ReadWrite(map) => map,
            Mapping::ReadOnly(map) => map,
        }
    }
}

impl SharedArray {
    /// Creates a zero-filled shared array of `dtype` and `shape` in C order.
    ///
    /// `name` labels the memfd in `/proc/<pid>/fd` and `/proc/<pid>/maps`
    /// (as `/memfd:name`); it need not be unique. The descriptor is
    /// close-on-exec: the supervisor clears that flag only for the workers
    /// it starts.
    pub fn create(name: &str, dtype: DType, shape: &[usize]) -> Result<SharedArray> {
        dtype.ensure_supported()?;
        let header_bytes = encode_header(dtype, shape, false);
        let header = NpyHeader {
            dtype,
            fortran_order: false,
            shape: shape.to_vec(),
            data_offset: header_bytes.len(),
        };
        let total_len = header
            .data_len()?
            .checked_add(header.data_offset)
            .ok_or_else(|| ShmError::SizeOverflow {
                shape: shape.to_vec(),
                dtype: dtype.descr(),
            })?;
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(|errno| ShmError::io("memfd_create", errno))?;
        let file_len = i64::try_from(total_len).map_err(|_| ShmError::SizeOverflow {
            shape: shape.to_vec(),
            dtype: dtype.descr(),
        })?;
        nix::unistd::ftruncate(&fd, file_len)
            .map_err(|errno| ShmError::io("sizing the shared array (ftruncate)", errno))?;
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))
            .map_err(|errno| ShmError::io("sealing the shared array (F_ADD_SEALS)", errno))?;
        // SAFETY: the memfd was just sized to `total_len` and sealed against
        // shrinking, so every byte of the mapping stays backed and access can
        // never raise SIGBUS. Other processes may write it concurrently; the
        // cross-process contract on `SharedArray` rules out conflicting access.
        let mut map = unsafe { MmapOptions::new().len(total_len).map_mut(&fd) }
            .map_err(|err| ShmError::io("mapping the shared array (mmap)", err))?;
        map[..header_bytes.len()].copy_from_slice(&header_bytes);
        Ok(SharedArray {
            header,
            mapping: Mapping::ReadWrite(map),
            fd,
        })
    }

    /// Creates a shared `f64` array of `shape` holding `data` in C order.
    pub fn from_f64(name: &str, shape: &[usize], data: &[f64]) -> Result<SharedArray> {
        let mut array = SharedArray::create(name, f64::DTYPE, shape)?;
        let slice = array.as_mut_slice::<f64>()?;
        if slice.len() != data.len() {
            return Err(ShmError::ElementCount {
                shape: shape.to_vec(),
                expected: slice.len(),
                got: data.len(),
                action: "given",
            });
        }
        slice.copy_from_slice(data);
        Ok(array)
    }

    /// Opens a shared array by path, as a worker does with the path it was
    /// given (`/proc/self/fd/N`), mapping it read-only or read/write.
    ///
    /// The file must be a memfd sealed against shrinking, as
    /// [`create`](SharedArray::create) makes them; anything else could be
    /// truncated under the mapping and crash this process with SIGBUS, so it
    /// is refused with [`ShmError::NotSealed`]. Map regular files with
    /// [`crate::FileMap`] instead.
    pub fn open(path: &Path, writable: bool) -> Result<SharedArray> {
        SharedArray::open_sealed(path, writable).map_err(|err| err.in_file(path))
    }

    fn open_sealed(path: &Path, writable: bool) -> Result<SharedArray> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|err| ShmError::io("opening the shared array", err))?;
        let seals = fcntl(&file, FcntlArg::F_GET_SEALS).unwrap_or(0);
        if !SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
            return Err(ShmError::NotSealed);
        }
        let mapping = if writable {
            // SAFETY: the file is sealed against shrinking (checked above), so
            // the mapping stays backed and access never raises SIGBUS;
            // concurrent writers are bound by the contract on `SharedArray`.
            Mapping::ReadWrite(unsafe { MmapMut::map_mut(&file) }.map_err(map_error)?)
        } else {
            // SAFETY: as above, the shrink seal keeps every mapped byte backed.
            Mapping::ReadOnly(unsafe { Mmap::map(&file) }.map_err(map_error)?)
        };
        let bytes = mapping.bytes();
        let header = NpyHeader::parse(bytes)?;
        header.check_data_len(bytes.len().saturating_sub(header.data_offset) as u64)?;
        Ok(SharedArray {
            header,
            mapping,
            fd: file.into(),
        })
    }

    /// The parsed `.npy` header.
    pub fn header(&self) -> &NpyHeader {
        &self.header
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.header.dtype
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.header.shape
    }

    /// The number of rows: the first dimension, or 0 for a 0-d array, which
    /// has no rows.
    pub fn rows(&self) -> usize {
        self.header.shape.first().copied().unwrap_or(0)
    }

    /// The number of elements in one row: the product of all dimensions but
    /// the first (1 for a 1-D array).
    pub fn cols(&self) -> usize {
        // The header was validated: the product of nonzero dimensions fits.
        self.header.shape.iter().skip(1).product()
    }

    /// Whether this mapping may be written.
    pub fn is_writable(&self) -> bool {
        matches!(self.mapping, Mapping::ReadWrite(_))
    }

    /// The descriptor of the memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The descriptor number of the memfd.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The path through which a worker that inherited the descriptor opens the
    /// array: `/proc/self/fd/N`.
    pub fn worker_path(&self) -> String {
        format!("/proc/self/fd/{}", self.raw_fd())
    }

    /// The raw data bytes after the header, in the array's own order and byte
    /// order, whatever they are.
    pub fn data_bytes(&self) -> &[u8] {
        // The header was validated against the mapping's length.
        &self.mapping.bytes()[self.header.data_offset..]
            [..self.header.data_len().unwrap_or_default()]
    }

    /// All elements in C order. Fails unless `T` matches the dtype (in the
    /// host's byte order) and the array is in C order.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        self.check_view::<T>()?;
        cast_elements(self.data_bytes()).ok_or_else(|| self.misaligned::<T>())
    }

    /// All elements in C order, writable. Fails like
    /// [`as_slice`](SharedArray::as_slice), and when the array was opened
    /// read-only.
    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T]> {
        self.check_view::<T>()?;
        let misaligned = self.misaligned::<T>();
        let range = self.header.data_offset..self.header.data_offset + self.header.data_len()?;
        let Mapping::ReadWrite(map) = &mut self.mapping else {
            return Err(ShmError::ReadOnly);
        };
        cast_elements_mut(&mut map[range]).ok_or(misaligned)
    }

    /// All elements of a writable `i4` array as atomics, for workers that update the
    /// same cells concurrently (claiming them with compare-and-swap) instead of
    /// writing disjoint row blocks. Every process touching the array at the same time
    /// must go through atomics too; the `&mut self` borrow keeps this process's other
    /// views away while the atomic one lives.
    pub fn as_atomic_i32(&mut self) -> Result<&[AtomicI32]> {
        let cells: *mut [i32] = self.as_mut_slice::<i32>()?;
        // SAFETY: `AtomicI32` has the size and alignment of `i32` (std guarantees
        // it); `as_mut_slice` checked alignment, length and writability; the result
        // borrows `self` mutably, so no plain view through this mapping exists while
        // the atomic one is alive. Other mappings of the same memfd (in this process
        // or another) are outside what a borrow can see: the type's cross-process
        // contract says they must use atomics too while this view is in use.
        Ok(unsafe { &*(cells as *const [AtomicI32]) })
    }

    /// The elements of the rows in `rows`, in C order. Fails like
    /// [`as_slice`](SharedArray::as_slice), for a 0-d array, and when `rows`
    /// reaches past [`rows`](SharedArray::rows).
    pub fn rows_slice<T: Element>(&self, rows: Range<usize>) -> Result<&[T]> {
        let elements = self.row_elements(rows)?;
        Ok(&self.as_slice()?[elements])
    }

    /// The elements of the rows in `rows`, writable. Fails like
    /// [`rows_slice`](SharedArray::rows_slice), and when the array was opened
    /// read-only.
    ///
    /// Processes may write disjoint row blocks of the same array at the same
    /// time.
    pub fn rows_mut<T: Element>(&mut self, rows: Range<usize>) -> Result<&mut [T]> {
        let elements = self.row_elements(rows)?;
        Ok(&mut self.as_mut_slice()?[elements])
    }

    /// Maps the pages of the rows in `rows` into this process now, in one system call
    /// (`madvise(MADV_POPULATE_WRITE)` on a writable mapping, `MADV_POPULATE_READ` on a
    /// read-only one), instead of a page fault at each first touch. Pages no process
    /// has touched yet are allocated, zero-filled, here. The contents never change, so
    /// other processes' rows that share a page with `rows` are unaffected.
    ///
    /// The work is the same either way; doing it up front lets a caller time it apart
    /// from the computation that follows. Where the kernel refuses the advice with
    /// EINVAL (older than Linux 5.14, or a mapping it cannot populate), nothing happens
    /// here and the pages fault in on first touch.
    pub fn prefault_rows(&self, rows: Range<usize>) -> Result<()> {
        let elements = self.row_elements(rows)?;
        let element_size = self.header.dtype.size;
        let offset = self.header.data_offset + elements.start * element_size;
        let len = elements.len() * element_size;
        if len == 0 {
            return Ok(());
        }
        let advised = match &self.mapping {
            Mapping::ReadWrite(map) => map.advise_range(Advice::PopulateWrite, offset, len),
            Mapping::ReadOnly(map) => map.advise_range(Advice::PopulateRead, offset, len),
        };
        match advised {
            Err(err) if err.raw_os_error() == Some(nix::libc::EINVAL) => Ok(()),
            other => other.map_err(|err| ShmError::io("prefaulting pages (madvise)", err)),
        }
    }

    /// The element range of `rows`, checked against the shape.
    fn row_elements(&self, rows: Range<usize>) -> Result<Range<usize>> {
        if self.header.shape.is_empty() {
            return Err(ShmError::NoRows);
        }
        if rows.start > rows.end || rows.end > self.rows() {
            return Err(ShmError::OutOfRange {
                what: "rows",
                range: rows,
                len: self.rows(),
            });
        }
        // Both products are at most the element count, which fits.
        Ok(rows.start * self.cols()..rows.end * self.cols())
    }

    fn check_view<T: Element>(&self) -> Result<()> {
        if self.header.dtype != T::DTYPE {
            return Err(ShmError::DTypeMismatch {
                found: self.header.dtype.descr(),
                requested: T::DTYPE.descr(),
            });
        }
        if self.header.fortran_order && self.header.shape.len() > 1 {
            return Err(ShmError::FortranOrder {
                shape: self.header.shape.clone(),
            });
        }
        Ok(())
    }

    fn misaligned<T: Element>(&self) -> ShmError {
        ShmError::Misaligned {
            offset: self.header.data_offset,
            align: std::mem::align_of::<T>(),
        }
    }
}

fn map_error(err: std::io::Error) -> ShmError {
    ShmError::io("mapping the shared array (mmap)", err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_twin(array: &SharedArray, writable: bool) -> SharedArray {
        SharedArray::open(Path::new(&array.worker_path()), writable).unwrap()
    }

    #[test]
    fn atomic_views_claim_each_cell_once_across_mappings() {
        use std::sync::atomic::Ordering;
        let mut first = SharedArray::create("claims", i32::DTYPE, &[8]).unwrap();
        first.as_mut_slice::<i32>().unwrap().fill(-1);
        let mut second = open_twin(&first, true);
        let (a, b) = (
            first.as_atomic_i32().unwrap(),
            second.as_atomic_i32().unwrap(),
        );
        assert!(a[3]
            .compare_exchange(-1, 7, Ordering::AcqRel, Ordering::Acquire)
            .is_ok());
        assert_eq!(
            b[3].compare_exchange(-1, 9, Ordering::AcqRel, Ordering::Acquire),
            Err(7),
            "the other mapping sees the claim"
        );
        let mut floats = SharedArray::create("f", DType::F64_LE, &[2]).unwrap();
        assert!(
            floats.as_atomic_i32().is_err(),
            "only i4 arrays have an atomic view"
        );
    }

    #[test]
    fn prefault_allocates_the_rows_pages_and_keeps_their_contents() {
        // 8 MiB in rows of 4 KiB. Writing the header allocated its page (4 KiB, or
        // 2 MiB where shared memory gets huge pages); the second half is untouched.
        let created = SharedArray::create("prefault", DType::F64_LE, &[2048, 512]).unwrap();
        let mut writer = open_twin(&created, true);
        let allocated_kib =
            |array: &SharedArray| nix::sys::stat::fstat(array.fd()).unwrap().st_blocks * 512 / 1024;
        let before = allocated_kib(&created);
        assert!(before <= 2048, "{before} KiB allocated before prefaulting");

        writer.prefault_rows(1024..2048).unwrap();
        let after = allocated_kib(&created);
        assert!(after >= before + 4000, "{before} KiB -> {after} KiB");
        writer.rows_mut::<f64>(1500..1501).unwrap()[7] = 2.5;
        writer.prefault_rows(1400..1600).unwrap();
        assert_eq!(created.rows_slice::<f64>(1500..1501).unwrap()[7], 2.5);
        assert!(created
            .rows_slice::<f64>(1024..1500)
            .unwrap()
            .iter()
            .all(|&v| v == 0.0));

        let reader = open_twin(&created, false);
        reader.prefault_rows(0..2048).unwrap();
        assert_eq!(reader.rows_slice::<f64>(1500..1501).unwrap()[7], 2.5);
        assert!(
            reader.prefault_rows(2000..2049).is_err(),
            "past the last row"
        );
    }

    #[test]
    fn create_then_open_shares_data_both_ways() {
        let mut created = SharedArray::create("test", DType::F64_LE, &[4, 3]).unwrap();
        assert_eq!((created.rows(), created.cols()), (4, 3));
        assert!(created.as_slice::<f64>().unwrap().iter().all(|&v| v == 0.0));
        created
            .rows_mut::<f64>(1..2)
            .unwrap()
            .copy_from_slice(&[1.0, 2.0, 3.0]);

        let mut opened = open_twin(&created, true);
        assert_eq!(opened.header(), created.header());
        assert_eq!(opened.rows_slice::<f64>(1..2).unwrap(), &[1.0, 2.0, 3.0]);
        opened
            .rows_mut::<f64>(3..4)
            .unwrap()
            .copy_from_slice(&[7.0, 8.0, 9.0]);
        assert_eq!(created.rows_slice::<f64>(3..4).unwrap(), &[7.0, 8.0, 9.0]);
        assert_eq!(created.as_slice::<f64>().unwrap()[3..6], [1.0, 2.0, 3.0]);

        let read_only = open_twin(&created, false);
        assert!(!read_only.is_writable());
        assert_eq!(read_only.as_slice::<f64>().unwrap()[9..], [7.0, 8.0, 9.0]);
    }

    #[test]
    fn the_memfd_holds_a_complete_npy_image() {
        let array = SharedArray::from_f64("image", &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let bytes = std::fs::read(array.worker_path()).unwrap();
        let header = NpyHeader::parse(&bytes).unwrap();
        assert_eq!(header.shape, vec![2, 2]);
        assert_eq!(header.data_offset % 64, 0);
        assert_eq!(bytes.len(), header.data_offset + 32);
        assert_eq!(&bytes[header.data_offset + 24..], &4.0f64.to_ne_bytes());
        assert_eq!(array.data_bytes(), &bytes[header.data_offset..]);
    }

    #[test]
    fn descriptor_is_close_on_exec_and_sealed() {
        let array = SharedArray::create("flags", DType::F32_LE, &[8]).unwrap();
        let flags = fcntl(array.fd(), FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
        let file = std::fs::File::from(array.fd().try_clone_to_owned().unwrap());
        assert!(
            file.set_len(8).is_err(),
            "shrinking a sealed memfd must fail"
        );
        assert!(
            file.set_len(1 << 20).is_err(),
            "growing a sealed memfd must fail"
        );
        assert_eq!(array.as_slice::<f32>().unwrap().len(), 8);
    }

    #[test]
    fn empty_and_zero_dimensional_arrays_work() {
        let mut empty = SharedArray::create("empty", DType::F64_LE, &[0, 5]).unwrap();
        assert_eq!((empty.rows(), empty.cols()), (0, 5));
        assert_eq!(empty.as_mut_slice::<f64>().unwrap(), &mut [] as &mut [f64]);
        assert_eq!(empty.rows_slice::<f64>(0..0).unwrap(), &[] as &[f64]);
        assert_eq!(open_twin(&empty, false).shape(), &[0, 5]);

        let mut scalar = SharedArray::create("scalar", u8::DTYPE, &[]).unwrap();
        scalar.as_mut_slice::<u8>().unwrap()[0] = 42;
        assert_eq!(scalar.rows(), 0);
        assert!(matches!(
            scalar.rows_slice::<u8>(0..0),
            Err(ShmError::NoRows)
        ));
        assert_eq!(open_twin(&scalar, false).as_slice::<u8>().unwrap(), &[42]);
    }

    #[test]
    fn views_refuse_wrong_types_ranges_and_read_only_writes() {
        let mut array = SharedArray::create("checks", i32::DTYPE, &[3, 2]).unwrap();
        let err = array.as_slice::<f32>().unwrap_err();
        assert!(matches!(err, ShmError::DTypeMismatch { .. }), "{err:?}");
        assert!(
            err.to_string().contains("holds <i4 but was used as <f4"),
            "{err}"
        );
        assert!(matches!(
            array.as_mut_slice::<i64>(),
            Err(ShmError::DTypeMismatch { .. })
        ));

        let err = array.rows_slice::<i32>(2..4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rows 2..4 is out of range: there are only 3"
        );
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 2..1;
        assert!(matches!(
            array.rows_mut::<i32>(backwards),
            Err(ShmError::OutOfRange { .. })
        ));
        array
            .rows_mut::<i32>(2..3)
            .unwrap()
            .copy_from_slice(&[5, 6]);

        let mut read_only = open_twin(&array, false);
        assert_eq!(read_only.rows_slice::<i32>(1..3).unwrap(), &[0, 0, 5, 6]);
        assert!(matches!(
            read_only.as_mut_slice::<i32>(),
            Err(ShmError::ReadOnly)
        ));
        assert!(matches!(
            read_only.rows_mut::<i32>(0..1),
            Err(ShmError::ReadOnly)
        ));
    }

    #[test]
    fn open_refuses_unsealed_files_and_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.npy");
        crate::npy::write_npy(&path, &[2], &[1.0f64, 2.0]).unwrap();
        let err = SharedArray::open(&path, false).unwrap_err();
        let ShmError::File { error, .. } = &err else {
            panic!("expected a File error, got {err:?}");
        };
        assert!(matches!(**error, ShmError::NotSealed), "{err:?}");
        assert!(
            err.to_string()
                .contains("plain.npy: not a procpool shared array"),
            "{err}"
        );
        let missing = SharedArray::open(&dir.path().join("missing"), true).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("opening the shared array failed"),
            "{missing}"
        );
    }

    /// A memfd holding `image`, sealed against shrinking as `create` seals
    /// its own, and the path that opens it.
    fn sealed_memfd(image: &[u8]) -> (std::fs::File, String) {
        let fd =
            memfd_create("image", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        let file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut &file, image).unwrap();
        fcntl(&file, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).unwrap();
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        (file, path)
    }

    #[test]
    fn open_validates_the_image() {
        let mut image = encode_header(DType::F64_LE, &[100], false);
        image.extend_from_slice(&[0; 16]);
        let (_file, path) = sealed_memfd(&image);
        let err = SharedArray::open(Path::new(&path), false).unwrap_err();
        assert!(
            err.to_string()
                .contains("header promises 100 elements of <f8 (800 bytes)"),
            "{err}"
        );

        let (_file, path) = sealed_memfd(&[]);
        let err = SharedArray::open(Path::new(&path), true).unwrap_err();
        assert!(
            err.to_string().contains("the .npy header is cut short"),
            "{err}"
        );

        let (_file, path) = sealed_memfd(b"PK\x03\x04 a zip file, not an array");
        let err = SharedArray::open(Path::new(&path), true).unwrap_err();
        assert!(err.to_string().contains("not a .npy file"), "{err}");
    }

    #[test]
    fn fortran_arrays_are_only_raw_bytes() {
        let mut image = encode_header(DType::F64_LE, &[2, 2], true);
        image.extend_from_slice(&[0; 32]);
        let (_file, path) = sealed_memfd(&image);
        let array = SharedArray::open(Path::new(&path), false).unwrap();
        assert!(matches!(
            array.as_slice::<f64>(),
            Err(ShmError::FortranOrder { .. })
        ));
        assert_eq!(array.data_bytes().len(), 32);
    }

    #[test]
    fn misaligned_data_is_an_error_not_undefined_behaviour() {
        // A hand-built header of odd length puts the data at an odd offset.
        let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,)}";
        let mut image = b"\x93NUMPY\x01\x00".to_vec();
        image.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        image.extend_from_slice(dict.as_bytes());
        assert_eq!(image.len() % 2, 1);
        image.extend_from_slice(&[0; 16]);
        let (_file, path) = sealed_memfd(&image);
        let array = SharedArray::open(Path::new(&path), false).unwrap();
        let err = array.as_slice::<f64>().unwrap_err();
        assert!(
            matches!(err, ShmError::Misaligned { align: 8, .. }),
            "{err:?}"
        );
        assert_eq!(array.data_bytes().len(), 16);
    }

    #[test]
    fn create_refuses_unsupported_dtypes_and_wrong_lengths() {
        let half = DType {
            size: 2,
            ..DType::F32_LE
        };
        let err = SharedArray::create("half", half, &[4]).unwrap_err();
        assert!(err.to_string().contains("16-bit float"), "{err}");
        let err = SharedArray::from_f64("short", &[2, 2], &[1.0]).unwrap_err();
        assert!(
            err.to_string()
                .contains("holds 4 elements but 1 were given"),
            "{err}"
        );
        let err = SharedArray::create("huge", DType::F64_LE, &[usize::MAX / 4]).unwrap_err();
        assert!(matches!(err, ShmError::SizeOverflow { .. }), "{err:?}");
    }
}
