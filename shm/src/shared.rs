//! Arrays shared between processes: a memfd holding a complete `.npy` image,
//! mapped `MAP_SHARED` by the supervisor and by every worker.

use std::fs::OpenOptions;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::AtomicI32;
use std::sync::Arc;

use memmap2::{Advice, MmapOptions, MmapRaw};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::error::{Result, ShmError};
use crate::npy::{element_bytes, encode_header, DType, Element, NpyHeader};

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
/// # Copies in, copies out
///
/// Other processes may write the memory at any moment, and Rust cannot see
/// them: a `&[T]` into it would promise the compiler that nothing changes the
/// elements while the borrow lives, a promise no process can keep for the
/// others. So this type lends no plain reference into the mapping, ever.
/// Elements are copied out ([`read`](SharedArray::read),
/// [`read_rows`](SharedArray::read_rows), [`get`](SharedArray::get),
/// [`to_vec`](SharedArray::to_vec)) and copied in
/// ([`write`](SharedArray::write), [`write_rows`](SharedArray::write_rows),
/// [`fill`](SharedArray::fill)) through raw pointers, each copy inside one
/// call. Every element type accepts every bit pattern, so a copy that races
/// with another process's write yields torn or stale numbers, never a broken
/// invariant. The two views that must not copy are narrow: the atomic view
/// ([`as_atomic_i32`](SharedArray::as_atomic_i32)), which is meant to be
/// shared, and the matrix product kernel ([`crate::matmul_rows`]), which
/// reads and writes the mapping through raw pointers for the length of one
/// call.
///
/// # Cross-process contract
///
/// Several processes may write *disjoint* row blocks at the same time (see
/// [`write_rows`](SharedArray::write_rows)). A process that reads a block
/// while another writes it gets a mix of old and new values, so the
/// supervisor hands each block to one task at a time and reads results only
/// after that task has reported back. Cells that several processes update at
/// the same time go through atomics in every one of them.
///
/// ```
/// # fn main() -> Result<(), procpool_shm::ShmError> {
/// use procpool_shm::{Element, SharedArray};
/// let mut array = SharedArray::create("doc", i32::DTYPE, &[2, 3])?;
/// array.write_rows(1..2, &[4, 5, 6])?;
/// array.write(0, &[1])?;
/// assert_eq!(array.to_vec::<i32>()?, [1, 0, 0, 4, 5, 6]);
/// assert_eq!(array.get::<i32>(4)?, 5);
/// assert!(array.read::<f64>(0..1).is_err(), "the array holds i4, not f8");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SharedArray {
    header: NpyHeader,
    /// The number of elements, from the validated header.
    elements: usize,
    /// The whole image, header included. Only raw pointers into it are formed.
    map: MmapRaw,
    writable: bool,
    /// Shared with whoever passes it on to workers (a pool), so that it stays open
    /// while any of them may still hand it over.
    fd: Arc<OwnedFd>,
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
        let elements = header.element_count()?;
        let overflow = || ShmError::SizeOverflow {
            shape: shape.to_vec(),
            dtype: dtype.descr(),
        };
        let total_len = header
            .data_len()?
            .checked_add(header.data_offset)
            .ok_or_else(overflow)?;
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(|errno| ShmError::io("memfd_create", errno))?;
        let file_len = i64::try_from(total_len).map_err(|_| overflow())?;
        nix::unistd::ftruncate(&fd, file_len)
            .map_err(|errno| ShmError::io("sizing the shared array (ftruncate)", errno))?;
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))
            .map_err(|errno| ShmError::io("sealing the shared array (F_ADD_SEALS)", errno))?;
        let map = MmapOptions::new()
            .len(total_len)
            .map_raw(&fd)
            .map_err(map_error)?;
        // SAFETY: the mapping is writable and `total_len` bytes long, at least the
        // header's length; the memfd is new, so no other process can touch it yet.
        unsafe {
            std::ptr::copy_nonoverlapping(
                header_bytes.as_ptr(),
                map.as_mut_ptr(),
                header_bytes.len(),
            );
        }
        Ok(SharedArray {
            header,
            elements,
            map,
            writable: true,
            fd: Arc::new(fd),
        })
    }

    /// Creates a shared `f64` array of `shape` holding `data` in C order.
    pub fn from_f64(name: &str, shape: &[usize], data: &[f64]) -> Result<SharedArray> {
        let mut array = SharedArray::create(name, f64::DTYPE, shape)?;
        if array.elements != data.len() {
            return Err(ShmError::ElementCount {
                shape: shape.to_vec(),
                expected: array.elements,
                got: data.len(),
                action: "given",
            });
        }
        array.write(0, data)?;
        Ok(array)
    }

    /// Opens a shared array by path, as a worker does with the path it was
    /// given (`/proc/self/fd/N`), mapping it read-only or read/write.
    ///
    /// The file must be a memfd sealed against shrinking, as
    /// [`create`](SharedArray::create) makes them; anything else could be
    /// truncated under the mapping and crash this process with SIGBUS, so it
    /// is refused with [`ShmError::NotSealed`]. Read regular files with
    /// [`crate::FileWindow`] or [`crate::read_npy_f64`] instead.
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
        // The header is read through the descriptor, not the mapping: what it
        // says is fixed here, whatever another process writes over it later.
        let header = NpyHeader::read_from(&mut &file)?;
        let elements = header.element_count()?;
        // The shrink seal (checked above) keeps every mapped byte backed, so
        // access through the mapping never raises SIGBUS.
        let map = if writable {
            MmapOptions::new().map_raw(&file)
        } else {
            MmapOptions::new().map_raw_read_only(&file)
        }
        .map_err(map_error)?;
        header.check_data_len((map.len() as u64).saturating_sub(header.data_offset as u64))?;
        Ok(SharedArray {
            header,
            elements,
            map,
            writable,
            fd: Arc::new(file.into()),
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
        self.writable
    }

    /// The descriptor of the memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A shared handle on the memfd, for a pool whose workers inherit it: the
    /// descriptor stays open while the array or the handle lives.
    pub fn shared_fd(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.fd)
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

    /// A copy of the raw data bytes after the header, in the array's own
    /// order and byte order, whatever they are (decode them with
    /// [`crate::decode_f64`]).
    pub fn read_bytes(&self) -> Vec<u8> {
        // The header was validated against the mapping's length.
        let len = self.elements * self.header.dtype.size;
        let mut bytes = vec![0; len];
        // SAFETY: the data, `len` bytes from `data_offset`, lies inside the mapping
        // (checked against its length when it was made); `bytes` is a fresh buffer
        // of `len` bytes. A concurrent writer elsewhere changes the bytes copied,
        // nothing else (see "Copies in, copies out" on the type).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.address(self.header.data_offset),
                bytes.as_mut_ptr(),
                len,
            );
        }
        bytes
    }

    /// A copy of the elements `elements` (indices in C order). Fails unless
    /// `T` matches the dtype (in the host's byte order) and the array is in C
    /// order, and when `elements` reaches past the end.
    pub fn read<T: Element>(&self, elements: Range<usize>) -> Result<Vec<T>> {
        let bytes = self.byte_range::<T>(elements)?;
        let count = bytes.len() / std::mem::size_of::<T>();
        let mut values = Vec::<T>::with_capacity(count);
        // SAFETY: `bytes` lies inside the mapping (`byte_range` checked it); the
        // vector's buffer holds `count` elements of `T`, exactly `bytes.len()`
        // bytes, and is not part of any mapping. The copy is bytewise, so the
        // mapping's alignment does not matter, and every bit pattern is a valid
        // `T` (the `Element` contract), so after it the `count` elements are
        // initialised.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.address(bytes.start),
                values.as_mut_ptr().cast::<u8>(),
                bytes.len(),
            );
            values.set_len(count);
        }
        Ok(values)
    }

    /// A copy of all elements in C order. Fails like [`read`](SharedArray::read).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.read(0..self.elements)
    }

    /// A copy of the elements of the rows in `rows`, in C order. Fails like
    /// [`read`](SharedArray::read), for a 0-d array, and when `rows` reaches
    /// past [`rows`](SharedArray::rows).
    pub fn read_rows<T: Element>(&self, rows: Range<usize>) -> Result<Vec<T>> {
        self.read(self.row_elements(rows)?)
    }

    /// Element `index` (in C order). Fails like [`read`](SharedArray::read).
    pub fn get<T: Element>(&self, index: usize) -> Result<T> {
        let bytes = self.byte_range::<T>(index..index.saturating_add(1))?;
        // SAFETY: `bytes` is one element of `T` inside the mapping (`byte_range`
        // checked it); the read is unaligned and by value, and every bit pattern
        // is a valid `T`.
        Ok(unsafe { self.address(bytes.start).cast::<T>().read_unaligned() })
    }

    /// Copies `values` into the elements from `first` on (in C order). Fails
    /// like [`read`](SharedArray::read), and when the array was opened
    /// read-only.
    pub fn write<T: Element>(&mut self, first: usize, values: &[T]) -> Result<()> {
        let bytes = self.writable_byte_range::<T>(first..first.saturating_add(values.len()))?;
        let source = element_bytes(values);
        // SAFETY: the mapping is writable and `bytes` lies inside it (both
        // checked above); `source` is exactly `bytes.len()` bytes and cannot lie in
        // any mapping of a shared array, since no safe code holds a plain
        // reference into one. The copy is bytewise, so alignment does not matter.
        unsafe {
            std::ptr::copy_nonoverlapping(source.as_ptr(), self.address(bytes.start), source.len());
        }
        Ok(())
    }

    /// Copies `values`, which must hold exactly the elements of the rows in
    /// `rows`, into those rows. Fails like [`read_rows`](SharedArray::read_rows),
    /// when the length is wrong, and when the array was opened read-only.
    ///
    /// Processes may write disjoint row blocks of the same array at the same
    /// time.
    pub fn write_rows<T: Element>(&mut self, rows: Range<usize>, values: &[T]) -> Result<()> {
        let elements = self.row_elements(rows.clone())?;
        if elements.len() != values.len() {
            return Err(ShmError::ElementCount {
                shape: vec![rows.len(), self.cols()],
                expected: elements.len(),
                got: values.len(),
                action: "given",
            });
        }
        self.write(elements.start, values)
    }

    /// Sets every element to `value`. Fails like [`write`](SharedArray::write).
    pub fn fill<T: Element>(&mut self, value: T) -> Result<()> {
        let bytes = self.writable_byte_range::<T>(0..self.elements)?;
        let first = self.address(bytes.start).cast::<T>();
        for index in 0..self.elements {
            // SAFETY: the mapping is writable and holds `elements` values of `T`
            // from `first` (checked above); the write is unaligned.
            unsafe { first.add(index).write_unaligned(value) };
        }
        Ok(())
    }

    /// All elements of a writable `i4` array as atomics, for workers that update the
    /// same cells concurrently (claiming them with compare-and-swap) instead of
    /// writing disjoint row blocks. Every process touching the array at the same time
    /// must go through atomics too; the `&mut self` borrow keeps this process's
    /// copies in and out of this mapping away while the atomic view lives.
    pub fn as_atomic_i32(&mut self) -> Result<&[AtomicI32]> {
        let bytes = self.writable_byte_range::<i32>(0..self.elements)?;
        let first = self.address(bytes.start);
        if !first.cast::<AtomicI32>().is_aligned() {
            return Err(self.misaligned::<i32>());
        }
        // SAFETY: the `elements` values from `first` lie inside the writable
        // mapping (checked above) and `first` is aligned for `AtomicI32`, which has
        // the size and alignment of `i32` (std guarantees it) and accepts every bit
        // pattern. Atomics may be written through a shared reference, so other
        // processes' atomic updates break nothing; the result borrows `self`
        // mutably, so this value makes no plain copies meanwhile. Other mappings of
        // the same memfd (in this process or another) are outside what a borrow can
        // see: the type's contract says they must use atomics too meanwhile.
        Ok(unsafe { std::slice::from_raw_parts(first.cast::<AtomicI32>(), self.elements) })
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
        let advice = if self.writable {
            Advice::PopulateWrite
        } else {
            Advice::PopulateRead
        };
        match self.map.advise_range(advice, offset, len) {
            Err(err) if err.raw_os_error() == Some(nix::libc::EINVAL) => Ok(()),
            other => other.map_err(|err| ShmError::io("prefaulting pages (madvise)", err)),
        }
    }

    /// For the matrix product kernel: the address of the first element of an
    /// `f64` array in C order, checked to be aligned. Only raw pointers may
    /// be made from it (see "Copies in, copies out" on the type).
    pub(crate) fn f64_elements(&self) -> Result<*mut f64> {
        let bytes = self.byte_range::<f64>(0..self.elements)?;
        let first = self.address(bytes.start).cast::<f64>();
        if !first.is_aligned() {
            return Err(self.misaligned::<f64>());
        }
        Ok(first)
    }

    /// The address of byte `offset` of the mapping, for raw access only.
    fn address(&self, offset: usize) -> *mut u8 {
        self.map.as_mut_ptr().wrapping_add(offset)
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

    /// The bytes in the mapping of `elements` viewed as `T`: checks that `T`
    /// is the dtype, that the array is in C order, and that `elements` lies
    /// inside it.
    fn byte_range<T: Element>(&self, elements: Range<usize>) -> Result<Range<usize>> {
        self.check_view::<T>()?;
        if elements.start > elements.end || elements.end > self.elements {
            return Err(ShmError::OutOfRange {
                what: "elements",
                range: elements,
                len: self.elements,
            });
        }
        // At most the data's length, which the validated header keeps in range.
        let offset = |index: usize| self.header.data_offset + index * std::mem::size_of::<T>();
        Ok(offset(elements.start)..offset(elements.end))
    }

    /// Like [`byte_range`](SharedArray::byte_range), for a write.
    fn writable_byte_range<T: Element>(&self, elements: Range<usize>) -> Result<Range<usize>> {
        let bytes = self.byte_range::<T>(elements)?;
        if !self.writable {
            return Err(ShmError::ReadOnly);
        }
        Ok(bytes)
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
        first.fill(-1i32).unwrap();
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
        assert_eq!(first.get::<i32>(3).unwrap(), 7);
        let mut floats = SharedArray::create("f", DType::F64_LE, &[2]).unwrap();
        assert!(
            floats.as_atomic_i32().is_err(),
            "only i4 arrays have an atomic view"
        );
        let mut read_only = open_twin(&first, false);
        assert!(
            matches!(read_only.as_atomic_i32(), Err(ShmError::ReadOnly)),
            "a compare-and-swap on a read-only mapping would fault"
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
        writer.write(1500 * 512 + 7, &[2.5f64]).unwrap();
        writer.prefault_rows(1400..1600).unwrap();
        assert_eq!(created.read_rows::<f64>(1500..1501).unwrap()[7], 2.5);
        assert!(created
            .read_rows::<f64>(1024..1500)
            .unwrap()
            .iter()
            .all(|&v| v == 0.0));

        let reader = open_twin(&created, false);
        reader.prefault_rows(0..2048).unwrap();
        assert_eq!(reader.get::<f64>(1500 * 512 + 7).unwrap(), 2.5);
        assert!(
            reader.prefault_rows(2000..2049).is_err(),
            "past the last row"
        );
    }

    #[test]
    fn create_then_open_shares_data_both_ways() {
        let mut created = SharedArray::create("test", DType::F64_LE, &[4, 3]).unwrap();
        assert_eq!((created.rows(), created.cols()), (4, 3));
        assert!(created.to_vec::<f64>().unwrap().iter().all(|&v| v == 0.0));
        created.write_rows(1..2, &[1.0, 2.0, 3.0]).unwrap();

        let mut opened = open_twin(&created, true);
        assert_eq!(opened.header(), created.header());
        assert_eq!(opened.read_rows::<f64>(1..2).unwrap(), [1.0, 2.0, 3.0]);
        opened.write_rows(3..4, &[7.0, 8.0, 9.0]).unwrap();
        assert_eq!(created.read_rows::<f64>(3..4).unwrap(), [7.0, 8.0, 9.0]);
        assert_eq!(created.read::<f64>(3..6).unwrap(), [1.0, 2.0, 3.0]);

        let read_only = open_twin(&created, false);
        assert!(!read_only.is_writable());
        assert_eq!(read_only.to_vec::<f64>().unwrap()[9..], [7.0, 8.0, 9.0]);
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
        assert_eq!(array.read_bytes(), &bytes[header.data_offset..]);
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
        assert_eq!(array.to_vec::<f32>().unwrap().len(), 8);
    }

    #[test]
    fn empty_and_zero_dimensional_arrays_work() {
        let mut empty = SharedArray::create("empty", DType::F64_LE, &[0, 5]).unwrap();
        assert_eq!((empty.rows(), empty.cols()), (0, 5));
        assert_eq!(empty.to_vec::<f64>().unwrap(), Vec::<f64>::new());
        empty.fill(1.0f64).unwrap();
        empty.write_rows::<f64>(0..0, &[]).unwrap();
        assert_eq!(empty.read_rows::<f64>(0..0).unwrap(), Vec::<f64>::new());
        assert!(empty.get::<f64>(0).is_err());
        assert_eq!(open_twin(&empty, false).shape(), &[0, 5]);

        let mut scalar = SharedArray::create("scalar", u8::DTYPE, &[]).unwrap();
        scalar.write(0, &[42u8]).unwrap();
        assert_eq!(scalar.rows(), 0);
        assert!(matches!(
            scalar.read_rows::<u8>(0..0),
            Err(ShmError::NoRows)
        ));
        assert_eq!(open_twin(&scalar, false).to_vec::<u8>().unwrap(), [42]);
    }

    #[test]
    fn copies_refuse_wrong_types_ranges_lengths_and_read_only_writes() {
        let mut array = SharedArray::create("checks", i32::DTYPE, &[3, 2]).unwrap();
        let err = array.to_vec::<f32>().unwrap_err();
        assert!(matches!(err, ShmError::DTypeMismatch { .. }), "{err:?}");
        assert!(
            err.to_string().contains("holds <i4 but was used as <f4"),
            "{err}"
        );
        assert!(matches!(
            array.write(0, &[1i64]),
            Err(ShmError::DTypeMismatch { .. })
        ));

        let err = array.read_rows::<i32>(2..4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rows 2..4 is out of range: there are only 3"
        );
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 2..1;
        assert!(matches!(
            array.write_rows::<i32>(backwards, &[]),
            Err(ShmError::OutOfRange { .. })
        ));
        let err = array.write(5, &[1i32, 2]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "elements 5..7 is out of range: there are only 6"
        );
        assert!(array.write(usize::MAX, &[1i32]).is_err(), "no overflow");
        assert!(array.get::<i32>(6).is_err());
        let err = array.write_rows(1..2, &[1i32, 2, 3]).unwrap_err();
        assert!(
            err.to_string()
                .contains("holds 2 elements but 3 were given"),
            "{err}"
        );
        array.write_rows(2..3, &[5i32, 6]).unwrap();

        let mut read_only = open_twin(&array, false);
        assert_eq!(read_only.read_rows::<i32>(1..3).unwrap(), [0, 0, 5, 6]);
        assert!(matches!(
            read_only.write(0, &[1i32]),
            Err(ShmError::ReadOnly)
        ));
        assert!(matches!(
            read_only.write_rows(0..1, &[1i32, 2]),
            Err(ShmError::ReadOnly)
        ));
        assert!(matches!(read_only.fill(0i32), Err(ShmError::ReadOnly)));
        assert_eq!(read_only.get::<i32>(5).unwrap(), 6, "nothing was written");
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
    fn the_header_is_fixed_when_opened_whatever_is_written_over_it() {
        let created = SharedArray::create("fixed", DType::F64_LE, &[4]).unwrap();
        let mut opened = open_twin(&created, true);
        // Another process scribbles over the header; this mapping keeps its shape.
        let file = std::fs::File::from(created.fd().try_clone_to_owned().unwrap());
        std::os::unix::fs::FileExt::write_all_at(&file, &[0xff; 64], 0).unwrap();
        assert_eq!(opened.shape(), &[4]);
        opened.write(3, &[1.5f64]).unwrap();
        assert_eq!(created.get::<f64>(3).unwrap(), 1.5);
        let err = SharedArray::open(Path::new(&created.worker_path()), false).unwrap_err();
        assert!(err.to_string().contains("not a .npy file"), "{err}");
    }

    #[test]
    fn fortran_arrays_are_only_raw_bytes() {
        let mut image = encode_header(DType::F64_LE, &[2, 2], true);
        image.extend_from_slice(&[0; 32]);
        let (_file, path) = sealed_memfd(&image);
        let array = SharedArray::open(Path::new(&path), false).unwrap();
        assert!(matches!(
            array.to_vec::<f64>(),
            Err(ShmError::FortranOrder { .. })
        ));
        assert_eq!(array.read_bytes().len(), 32);
    }

    #[test]
    fn misaligned_data_is_copied_but_has_no_atomic_or_kernel_view() {
        // A hand-built header of odd length puts the data at an odd offset.
        let dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (2,)}";
        let mut image = b"\x93NUMPY\x01\x00".to_vec();
        image.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        image.extend_from_slice(dict.as_bytes());
        assert_eq!(image.len() % 2, 1);
        image.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        let (_file, path) = sealed_memfd(&image);
        let mut array = SharedArray::open(Path::new(&path), true).unwrap();
        assert_eq!(array.to_vec::<i32>().unwrap(), [1, 2]);
        array.write(1, &[-3i32]).unwrap();
        assert_eq!(array.get::<i32>(1).unwrap(), -3);
        let err = array.as_atomic_i32().unwrap_err();
        assert!(
            matches!(err, ShmError::Misaligned { align: 4, .. }),
            "{err:?}"
        );
        assert_eq!(array.read_bytes().len(), 8);
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
