//! Whole `.npy` files on disk: reading any supported file as `f64`, and
//! writing files from memory or in a stream.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::dtype::element_bytes;
use super::{decode_f64, encode_header, DType, Element, NpyHeader};
use crate::error::{Result, ShmError};

/// Bytes read or converted at a time when streaming data.
const BLOCK_BYTES: usize = 1 << 20;

/// Reads a `.npy` file of any supported dtype, in either byte order and C or
/// Fortran order, into `f64`s in C (row-major) order. Returns the shape and
/// the values.
///
/// The whole array is loaded into memory; for files larger than memory, map
/// one chunk at a time with [`crate::FileWindow`].
pub fn read_npy_f64(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    read_f64_values(path).map_err(|err| err.in_file(path))
}

fn read_f64_values(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let file = File::open(path).map_err(|err| ShmError::io("opening the file", err))?;
    let file_len = file
        .metadata()
        .map_err(|err| ShmError::io("reading the file's size", err))?
        .len();
    let mut reader = BufReader::new(file);
    let header = NpyHeader::read_from(&mut reader)?;
    header.check_data_len(file_len.saturating_sub(header.data_offset as u64))?;
    let size = header.dtype.size;
    let mut values = vec![0.0; header.element_count()?];
    let mut raw = vec![0u8; (BLOCK_BYTES / size * size).min(header.data_len()?)];
    for block in values.chunks_mut(BLOCK_BYTES / size) {
        let raw = &mut raw[..block.len() * size];
        reader
            .read_exact(raw)
            .map_err(|err| ShmError::io("reading the array data", err))?;
        decode_f64(header.dtype, raw, block)?;
    }
    if header.fortran_order && header.shape.len() > 1 {
        values = fortran_to_c_order(&header.shape, &values);
    }
    Ok((header.shape, values))
}

/// Reorders the elements of an array of `shape` from column-major (first index
/// fastest) to row-major (last index fastest).
fn fortran_to_c_order(shape: &[usize], values: &[f64]) -> Vec<f64> {
    let mut strides = Vec::with_capacity(shape.len());
    let mut stride = 1;
    for &dim in shape {
        strides.push(stride);
        stride *= dim;
    }
    let mut index = vec![0; shape.len()];
    let mut source = 0;
    let mut reordered = Vec::with_capacity(values.len());
    for _ in 0..values.len() {
        reordered.push(values[source]);
        // Step the multi-index in C order, tracking its Fortran-order offset.
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            source += strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            source -= strides[axis] * shape[axis];
            index[axis] = 0;
        }
    }
    reordered
}

/// Writes `data` as a C-order `.npy` file of `shape`, in the host's byte order
/// (little-endian on every platform procpool runs on).
pub fn write_npy<T: Element>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    let mut writer = NpyWriter::create(path, T::DTYPE, shape)?;
    if data.len() != writer.expected {
        return Err(ShmError::ElementCount {
            shape: shape.to_vec(),
            expected: writer.expected,
            got: data.len(),
            action: "given",
        }
        .in_file(path));
    }
    writer.write_elements(data)?;
    writer.finish()
}

/// Writes a C-order `.npy` file a block at a time, so files larger than
/// memory can be generated.
///
/// ```
/// # fn main() -> Result<(), procpool_shm::ShmError> {
/// # let dir = tempfile::tempdir().unwrap();
/// use procpool_shm::{npy::NpyWriter, DType};
/// let path = dir.path().join("ramp.npy");
/// let mut writer = NpyWriter::create(&path, DType::F64_LE, &[1000, 4])?;
/// for row in 0..1000 {
///     writer.write_elements(&[row as f64; 4])?;
/// }
/// writer.finish()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NpyWriter {
    file: BufWriter<File>,
    path: PathBuf,
    dtype: DType,
    shape: Vec<usize>,
    expected: usize,
    written: usize,
}

impl NpyWriter {
    /// Creates (or truncates) the file at `path` and writes the header for an
    /// array of `dtype` and `shape`. `dtype` may be in either byte order;
    /// elements are converted as they are written.
    pub fn create(path: &Path, dtype: DType, shape: &[usize]) -> Result<NpyWriter> {
        NpyWriter::create_in_order(path, dtype, shape, false)
    }

    /// Like [`create`](NpyWriter::create), but with `fortran_order` the header
    /// says the data is column-major, and elements must then be written in
    /// that order (first index fastest: column after column for a matrix).
    pub fn create_in_order(
        path: &Path,
        dtype: DType,
        shape: &[usize],
        fortran_order: bool,
    ) -> Result<NpyWriter> {
        let file = File::create(path)
            .map_err(|err| ShmError::io("creating the file", err).in_file(path))?;
        NpyWriter::from_file(file, path, dtype, shape, fortran_order)
    }

    /// Like [`create_in_order`](NpyWriter::create_in_order), into `file`, already
    /// open for writing at its start (an unlinked temporary file, say); `path` only
    /// names it in errors.
    pub fn from_file(
        file: File,
        path: &Path,
        dtype: DType,
        shape: &[usize],
        fortran_order: bool,
    ) -> Result<NpyWriter> {
        let open = || -> Result<NpyWriter> {
            dtype.ensure_supported()?;
            let header = encode_header(dtype, shape, fortran_order);
            let expected = NpyHeader::parse(&header)?.element_count()?;
            let mut file = BufWriter::with_capacity(BLOCK_BYTES, file);
            file.write_all(&header)
                .map_err(|err| ShmError::io("writing the .npy header", err))?;
            Ok(NpyWriter {
                file,
                path: path.to_path_buf(),
                dtype,
                shape: shape.to_vec(),
                expected,
                written: 0,
            })
        };
        open().map_err(|err| err.in_file(path))
    }

    /// Appends `elements` in the file's order (C order unless created with
    /// `fortran_order`). Fails if `T` is not the kind and size of
    /// the file's dtype, or if the file would hold more elements than its
    /// shape.
    pub fn write_elements<T: Element>(&mut self, elements: &[T]) -> Result<()> {
        self.append(elements).map_err(|err| err.in_file(&self.path))
    }

    fn append<T: Element>(&mut self, elements: &[T]) -> Result<()> {
        if (T::DTYPE.kind, T::DTYPE.size) != (self.dtype.kind, self.dtype.size) {
            return Err(ShmError::DTypeMismatch {
                found: self.dtype.descr(),
                requested: T::DTYPE.descr(),
            });
        }
        let total = self.written.saturating_add(elements.len());
        if total > self.expected {
            return Err(ShmError::ElementCount {
                shape: self.shape.clone(),
                expected: self.expected,
                got: total,
                action: "written",
            });
        }
        let bytes = element_bytes(elements);
        let write_error = |err| ShmError::io("writing the array data", err);
        if self.dtype.big_endian == T::DTYPE.big_endian {
            self.file.write_all(bytes).map_err(write_error)?;
        } else {
            let size = self.dtype.size;
            for block in bytes.chunks(BLOCK_BYTES / size * size) {
                let mut swapped = block.to_vec();
                for element in swapped.chunks_exact_mut(size) {
                    element.reverse();
                }
                self.file.write_all(&swapped).map_err(write_error)?;
            }
        }
        self.written = total;
        Ok(())
    }

    /// Checks that every element of the shape was written, and flushes the
    /// file.
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.expected {
            return Err(ShmError::ElementCount {
                shape: self.shape,
                expected: self.expected,
                got: self.written,
                action: "written before finish",
            }
            .in_file(&self.path));
        }
        self.file
            .flush()
            .map_err(|err| ShmError::io("writing the array data", err).in_file(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a file by hand: `header` followed by `data`.
    fn write_raw(path: &Path, header: &[u8], data: &[u8]) {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn write_then_read_every_element_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        write_npy(&path, &[2, 3], &[1.5f64, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(
            read_npy_f64(&path).unwrap(),
            (vec![2, 3], vec![1.5, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        write_npy(&path, &[3], &[1.5f32, -2.0, 3.0]).unwrap();
        assert_eq!(
            read_npy_f64(&path).unwrap(),
            (vec![3], vec![1.5, -2.0, 3.0])
        );
        write_npy(&path, &[2], &[-1i64, 1 << 40]).unwrap();
        assert_eq!(
            read_npy_f64(&path).unwrap().1,
            vec![-1.0, (1u64 << 40) as f64]
        );
        write_npy(&path, &[1, 2], &[-7i32, 7]).unwrap();
        assert_eq!(read_npy_f64(&path).unwrap(), (vec![1, 2], vec![-7.0, 7.0]));
        write_npy(&path, &[], &[255u8]).unwrap();
        assert_eq!(read_npy_f64(&path).unwrap(), (vec![], vec![255.0]));
        write_npy::<f64>(&path, &[0, 5], &[]).unwrap();
        assert_eq!(read_npy_f64(&path).unwrap(), (vec![0, 5], vec![]));
    }

    #[test]
    fn streams_fortran_order_files_column_by_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.npy");
        let dtype = DType::parse(">i4").unwrap();
        let mut writer = NpyWriter::create_in_order(&path, dtype, &[2, 3], true).unwrap();
        for column in [[1i32, 4], [2, 5], [3, 6]] {
            writer.write_elements(&column).unwrap();
        }
        writer.finish().unwrap();
        let header = NpyHeader::read_from(&mut File::open(&path).unwrap()).unwrap();
        assert!(header.fortran_order);
        assert_eq!(header.dtype, dtype);
        assert_eq!(
            read_npy_f64(&path).unwrap(),
            (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
    }

    #[test]
    fn reads_big_endian_files_written_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.npy");
        let dtype = DType::parse(">f8").unwrap();
        let values = [1.0f64, -2.5, 1e300, 0.125];
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        write_raw(&path, &encode_header(dtype, &[2, 2], false), &data);
        assert_eq!(read_npy_f64(&path).unwrap(), (vec![2, 2], values.to_vec()));

        let dtype = DType::parse(">i4").unwrap();
        let data: Vec<u8> = [1i32, -2, 70000]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        write_raw(&path, &encode_header(dtype, &[3], false), &data);
        assert_eq!(read_npy_f64(&path).unwrap().1, vec![1.0, -2.0, 70000.0]);
    }

    #[test]
    fn reads_fortran_order_files_written_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fortran.npy");
        // The 2x3 matrix [[0, 1, 2], [3, 4, 5]] stored column by column.
        let columns: Vec<u8> = [0.0f32, 3.0, 1.0, 4.0, 2.0, 5.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        write_raw(
            &path,
            &encode_header(DType::F32_LE, &[2, 3], true),
            &columns,
        );
        assert_eq!(
            read_npy_f64(&path).unwrap(),
            (vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
        );

        // A 2x3x4 array whose value is its C-order index, stored in Fortran
        // order (first index fastest) and big-endian.
        let shape = [2, 3, 4];
        let mut data = Vec::new();
        for k in 0..4 {
            for j in 0..3 {
                for i in 0..2 {
                    let c_index = (i * 3 + j) * 4 + k;
                    data.extend_from_slice(&(c_index as i64).to_be_bytes());
                }
            }
        }
        let dtype = DType::parse(">i8").unwrap();
        write_raw(&path, &encode_header(dtype, &shape, true), &data);
        let (read_shape, values) = read_npy_f64(&path).unwrap();
        assert_eq!(read_shape, shape);
        assert_eq!(values, (0..24).map(f64::from).collect::<Vec<_>>());
    }

    #[test]
    fn reports_truncated_data_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("A.npy");
        write_raw(
            &path,
            &encode_header(DType::F64_LE, &[1000, 8], false),
            &[0; 32_000],
        );
        let err = read_npy_f64(&path).unwrap_err();
        let ShmError::File {
            path: err_path,
            error,
        } = &err
        else {
            panic!("expected a File error, got {err:?}");
        };
        assert_eq!(err_path, &path);
        assert!(matches!(
            **error,
            ShmError::DataTruncated {
                expected: 64_000,
                available: 32_000,
                ..
            }
        ));
        assert!(err
            .to_string()
            .starts_with(&format!("{}: header promises 1000 rows", path.display())));
    }

    #[test]
    fn names_the_file_of_an_unsupported_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("A.npy");
        let dict = "{'descr': '<c16', 'fortran_order': False, 'shape': (1,), }";
        let mut header = b"\x93NUMPY\x01\x00".to_vec();
        header.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        header.extend_from_slice(dict.as_bytes());
        write_raw(&path, &header, &[0; 16]);
        let err = read_npy_f64(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: unsupported dtype '<c16' (complex); procpool reads f8, f4, i8, i4, u1",
                path.display()
            )
        );
        let missing = read_npy_f64(&dir.path().join("missing.npy")).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("missing.npy: opening the file failed"),
            "{missing}"
        );
    }

    #[test]
    fn streaming_writer_converts_byte_order_and_checks_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream.npy");
        let mut writer = NpyWriter::create(&path, DType::parse(">f8").unwrap(), &[3, 2]).unwrap();
        writer.write_elements(&[1.0f64, 2.0]).unwrap();
        writer.write_elements(&[3.0f64, 4.0, 5.0, 6.0]).unwrap();
        let err = writer.write_elements(&[7.0f64]).unwrap_err();
        assert!(
            err.to_string()
                .contains("holds 6 elements but 7 were written"),
            "{err}"
        );
        let err = writer.write_elements(&[7.0f32]).unwrap_err();
        assert!(
            err.to_string().contains("holds >f8 but was used as <f4"),
            "{err}"
        );
        writer.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header = NpyHeader::parse(&bytes).unwrap();
        assert_eq!(header.dtype, DType::parse(">f8").unwrap());
        assert_eq!(
            &bytes[header.data_offset..header.data_offset + 8],
            &1.0f64.to_be_bytes()
        );
        assert_eq!(
            read_npy_f64(&path).unwrap().1,
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );

        let mut short = NpyWriter::create(&path, DType::F32_LE, &[4]).unwrap();
        short.write_elements(&[1.0f32]).unwrap();
        let err = short.finish().unwrap_err();
        assert!(err
            .to_string()
            .contains("holds 4 elements but 1 were written before finish"));

        let err = write_npy(&path, &[2, 2], &[1u8, 2, 3]).unwrap_err();
        assert!(
            err.to_string()
                .contains("holds 4 elements but 3 were given"),
            "{err}"
        );
        let half = DType {
            size: 2,
            ..DType::F32_LE
        };
        let err = NpyWriter::create(&path, half, &[1]).unwrap_err();
        assert!(err.to_string().contains("16-bit float"), "{err}");
    }

    #[test]
    fn fortran_reorder_handles_empty_and_one_dimensional_shapes() {
        assert_eq!(fortran_to_c_order(&[0, 3], &[]), Vec::<f64>::new());
        assert_eq!(
            fortran_to_c_order(&[3, 1], &[1.0, 2.0, 3.0]),
            vec![1.0, 2.0, 3.0]
        );
        assert_eq!(
            fortran_to_c_order(&[2, 2], &[1.0, 3.0, 2.0, 4.0]),
            vec![1.0, 2.0, 3.0, 4.0]
        );
    }
}
