//! The `.npy` file format: headers, element types, and whole-file reading and
//! writing.
//!
//! A `.npy` file is the magic string `\x93NUMPY`, a version, a header length,
//! a Python dict literal such as
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`, and then the
//! raw elements. This module reads versions 1.0, 2.0 and 3.0 and writes 1.0
//! (2.0 when the header outgrows 65535 bytes), aligning the data to 64 bytes as
//! numpy does. See numpy's `numpy/lib/format.py` for the format itself.

mod dtype;
mod file;
mod literal;

use std::io::Read;

pub use dtype::{decode_f64, DType, Element, ElementKind};
pub(crate) use dtype::{decode_f64_raw, element_bytes};
pub use file::{read_npy_f64, write_npy, NpyWriter};

use crate::error::{Result, ShmError};
use crate::untrusted::quote;
use literal::Literal;

/// The first six bytes of every `.npy` file.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// numpy aligns the start of the data to this many bytes.
const DATA_ALIGN: usize = 64;

/// A parsed `.npy` header: what the data after it holds and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The element type.
    pub dtype: DType,
    /// `true` when the data is stored column-major (first index fastest).
    pub fortran_order: bool,
    /// The array's dimensions; empty for a 0-d array holding one element.
    pub shape: Vec<usize>,
    /// Byte offset of the first element from the start of the file.
    pub data_offset: usize,
}

impl NpyHeader {
    /// Parses the header at the start of `bytes`, which may run on into the
    /// data.
    ///
    /// Fails with [`ShmError::NotNpy`], [`ShmError::TruncatedHeader`],
    /// [`ShmError::UnsupportedVersion`], [`ShmError::MalformedHeader`] or
    /// [`ShmError::UnsupportedDtype`].
    pub fn parse(bytes: &[u8]) -> Result<NpyHeader> {
        let magic_len = MAGIC.len().min(bytes.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(ShmError::NotNpy {
                found: bytes[..magic_len].to_vec(),
            });
        }
        let truncated = |needed: usize| ShmError::TruncatedHeader {
            needed,
            available: bytes.len(),
        };
        let (&major, &minor) = match bytes {
            [_, _, _, _, _, _, major, minor, ..] => (major, minor),
            _ => return Err(truncated(MAGIC.len() + 4)),
        };
        let length_bytes = match (major, minor) {
            (1, 0) => 2,
            (2, 0) | (3, 0) => 4,
            _ => return Err(ShmError::UnsupportedVersion { major, minor }),
        };
        let prefix_len = MAGIC.len() + 2 + length_bytes;
        let Some(length_field) = bytes.get(MAGIC.len() + 2..prefix_len) else {
            return Err(truncated(prefix_len));
        };
        let data_offset = prefix_len.saturating_add(little_endian_len(length_field));
        let Some(dict_bytes) = bytes.get(prefix_len..data_offset) else {
            return Err(truncated(data_offset));
        };
        let dict_text = if major == 3 {
            std::str::from_utf8(dict_bytes)
                .map_err(|err| ShmError::MalformedHeader {
                    problem: format!("a version 3.0 header must be UTF-8: {err}"),
                    header: String::from_utf8_lossy(dict_bytes).into_owned(),
                })?
                .to_string()
        } else {
            // Versions 1.0 and 2.0 are latin-1, whose bytes are the first 256
            // Unicode code points.
            dict_bytes.iter().map(|&byte| char::from(byte)).collect()
        };
        parse_dict(&dict_text, data_offset)
    }

    /// Reads exactly the header from `reader`, leaving it at the first byte
    /// of the data.
    pub fn read_from(reader: &mut impl Read) -> Result<NpyHeader> {
        let mut bytes = Vec::new();
        read_up_to(reader, &mut bytes, MAGIC.len() as u64 + 2)?;
        let length_bytes = match bytes.as_slice() {
            [magic @ .., 1, 0] if magic == MAGIC => 2,
            [magic @ .., 2 | 3, 0] if magic == MAGIC => 4,
            // Not a header procpool can read: `parse` says why.
            _ => return NpyHeader::parse(&bytes),
        };
        read_up_to(reader, &mut bytes, length_bytes)?;
        let header_len = little_endian_len(&bytes[MAGIC.len() + 2..]);
        read_up_to(reader, &mut bytes, header_len as u64)?;
        NpyHeader::parse(&bytes)
    }

    /// This header's bytes as [`encode_header`] writes them.
    pub fn encode(&self) -> Vec<u8> {
        encode_header(self.dtype, &self.shape, self.fortran_order)
    }

    /// The number of elements: the product of the shape (1 for a 0-d array).
    ///
    /// Fails with [`ShmError::SizeOverflow`] when the array could not fit in
    /// memory, even if a zero dimension makes it empty.
    pub fn element_count(&self) -> Result<usize> {
        let overflow = || ShmError::SizeOverflow {
            shape: self.shape.clone(),
            dtype: self.dtype.descr(),
        };
        let nonzero_product = self
            .shape
            .iter()
            .filter(|&&dim| dim != 0)
            .try_fold(1usize, |product, &dim| product.checked_mul(dim))
            .ok_or_else(overflow)?;
        nonzero_product
            .checked_mul(self.dtype.size)
            .ok_or_else(overflow)?;
        let empty = self.shape.contains(&0);
        Ok(if empty { 0 } else { nonzero_product })
    }

    /// The number of data bytes after the header.
    pub fn data_len(&self) -> Result<usize> {
        // `element_count` already checked that this product fits.
        Ok(self.element_count()? * self.dtype.size)
    }

    /// Checks that `available` bytes of data (the file's length minus
    /// `data_offset`) hold everything this header promises. Extra bytes are
    /// allowed and ignored, as numpy does.
    pub fn check_data_len(&self, available: u64) -> Result<()> {
        let expected = self.data_len()? as u64;
        if available < expected {
            return Err(ShmError::DataTruncated {
                shape: self.shape.clone(),
                dtype: self.dtype.descr(),
                expected,
                available,
            });
        }
        Ok(())
    }
}

/// The header length field: a little-endian integer of two or four bytes.
fn little_endian_len(field: &[u8]) -> usize {
    field
        .iter()
        .rev()
        .fold(0, |len, &byte| len << 8 | usize::from(byte))
}

/// Appends up to `count` bytes from `reader` to `bytes`, stopping early only at
/// the end of the input.
fn read_up_to(reader: &mut impl Read, bytes: &mut Vec<u8>, count: u64) -> Result<()> {
    reader
        .take(count)
        .read_to_end(bytes)
        .map_err(|err| ShmError::io("reading the .npy header", err))?;
    Ok(())
}

/// Builds the header from the dict text found in a file.
fn parse_dict(text: &str, data_offset: usize) -> Result<NpyHeader> {
    let malformed = |problem: String| ShmError::MalformedHeader {
        problem,
        header: text.trim_end().to_string(),
    };
    let mut dtype = None;
    let mut fortran_order = None;
    let mut shape = None;
    for entry in literal::parse_dict(text).map_err(malformed)? {
        match (entry.key.as_str(), entry.value) {
            ("descr", Literal::Str(descr)) => dtype = Some(DType::parse(&descr)?),
            ("descr", Literal::List) => {
                return Err(ShmError::UnsupportedDtype {
                    descr: entry.text.to_string(),
                    what: "structured".to_string(),
                })
            }
            ("fortran_order", Literal::Bool(value)) => fortran_order = Some(value),
            ("shape", Literal::Tuple(dims)) => {
                let dims = dims
                    .into_iter()
                    .map(|dim| match dim {
                        Literal::Int(dim) => usize::try_from(dim).ok(),
                        _ => None,
                    })
                    .collect::<Option<Vec<usize>>>();
                shape = Some(dims.ok_or_else(|| {
                    malformed(format!(
                        "'shape' must be a tuple of sizes, not {}",
                        quote(entry.text)
                    ))
                })?);
            }
            (key @ ("descr" | "fortran_order" | "shape"), _) => {
                let wanted = match key {
                    "descr" => "a dtype string",
                    "fortran_order" => "True or False",
                    _ => "a tuple",
                };
                return Err(malformed(format!(
                    "'{key}' must be {wanted}, not {}",
                    quote(entry.text)
                )));
            }
            // numpy refuses any other key, so a file it cannot load is not read here.
            (key, _) => {
                return Err(malformed(format!(
                    "the key {} is not one of a .npy header's (descr, fortran_order, shape)",
                    quote(key)
                )))
            }
        }
    }
    let missing = |key: &str| malformed(format!("the key '{key}' is missing"));
    let header = NpyHeader {
        dtype: dtype.ok_or_else(|| missing("descr"))?,
        fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
        shape: shape.ok_or_else(|| missing("shape"))?,
        data_offset,
    };
    header.element_count()?;
    Ok(header)
}

/// Encodes a header as numpy does: version 1.0, or 2.0 when the dict
/// outgrows 65535 bytes; padded with spaces and ended by `\n` so that the data
/// starts at a multiple of 64 bytes.
pub fn encode_header(dtype: DType, shape: &[usize], fortran_order: bool) -> Vec<u8> {
    let shape_text = match shape {
        [dim] => format!("({dim},)"),
        dims => {
            let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
            format!("({})", dims.join(", "))
        }
    };
    let order = if fortran_order { "True" } else { "False" };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': {order}, 'shape': {shape_text}, }}",
        dtype.descr()
    );
    let mut bytes = Vec::new();
    bytes.extend_from_slice(MAGIC);
    for (version, length_bytes) in [(1u8, 2usize), (2, 4)] {
        let prefix_len = MAGIC.len() + 2 + length_bytes;
        // numpy pads with at least one space, and a full block when already aligned.
        let unpadded = prefix_len + dict.len() + 1;
        let header_len = dict.len() + 1 + DATA_ALIGN - unpadded % DATA_ALIGN;
        if version == 1 && header_len > usize::from(u16::MAX) {
            continue;
        }
        bytes.extend_from_slice(&[version, 0]);
        bytes.extend_from_slice(&header_len.to_le_bytes()[..length_bytes]);
        bytes.extend_from_slice(dict.as_bytes());
        bytes.resize(prefix_len + header_len - 1, b' ');
        bytes.push(b'\n');
        break;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every supported dtype, both byte orders.
    fn all_dtypes() -> Vec<DType> {
        [
            "<f8", ">f8", "<f4", ">f4", "<i8", ">i8", "<i4", ">i4", "|u1",
        ]
        .iter()
        .map(|descr| DType::parse(descr).unwrap())
        .collect()
    }

    /// A header with a hand-written dict, in the given version.
    fn handmade(version: u8, dict: &str) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[version, 0]);
        if version == 1 {
            bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        } else {
            bytes.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        }
        bytes.extend_from_slice(dict.as_bytes());
        bytes
    }

    #[test]
    fn headers_round_trip_for_every_dtype_order_and_shape() {
        for dtype in all_dtypes() {
            for fortran_order in [false, true] {
                for shape in [
                    vec![],
                    vec![0],
                    vec![5],
                    vec![3, 4],
                    vec![0, 7],
                    vec![2, 3, 4],
                ] {
                    let bytes = encode_header(dtype, &shape, fortran_order);
                    assert_eq!(bytes.len() % DATA_ALIGN, 0);
                    assert_eq!(bytes.last(), Some(&b'\n'));
                    assert_eq!(&bytes[6..8], &[1, 0]);
                    let header = NpyHeader::parse(&bytes).unwrap();
                    let expected = NpyHeader {
                        dtype,
                        fortran_order,
                        shape: shape.clone(),
                        data_offset: bytes.len(),
                    };
                    assert_eq!(header, expected);
                    assert_eq!(header.encode(), bytes);
                    let read = NpyHeader::read_from(&mut &bytes[..]).unwrap();
                    assert_eq!(read, expected);
                }
            }
        }
    }

    #[test]
    fn encodes_exactly_like_numpy() {
        // numpy 2.x: np.save(f, np.zeros((3, 4))) header bytes.
        let expected = "\u{93}NUMPY\u{1}\u{0}v\u{0}{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }";
        let bytes = encode_header(DType::F64_LE, &[3, 4], false);
        let latin1: String = bytes.iter().map(|&b| char::from(b)).collect();
        assert!(latin1.starts_with(expected), "{latin1:?}");
        assert_eq!(bytes.len(), 128);
        assert!(latin1[expected.len()..]
            .trim_end_matches('\n')
            .chars()
            .all(|c| c == ' '));
    }

    #[test]
    fn switches_to_version_2_for_huge_headers() {
        let shape = vec![1; 30_000];
        let bytes = encode_header(DType::F64_LE, &shape, false);
        assert_eq!(&bytes[6..8], &[2, 0]);
        assert_eq!(bytes.len() % DATA_ALIGN, 0);
        let header = NpyHeader::parse(&bytes).unwrap();
        assert_eq!(header.shape, shape);
        assert_eq!(header.data_offset, bytes.len());
        assert_eq!(NpyHeader::read_from(&mut &bytes[..]).unwrap(), header);
    }

    #[test]
    fn parses_hand_built_version_2_and_3_headers() {
        let dict = "{'shape': (2, 3), 'descr': '>i4', 'fortran_order': True,}\n";
        let v2 = handmade(2, dict);
        let header = NpyHeader::parse(&v2).unwrap();
        assert_eq!(header.dtype, DType::parse(">i4").unwrap());
        assert!(header.fortran_order);
        assert_eq!(header.shape, vec![2, 3]);
        assert_eq!(header.data_offset, 12 + dict.len());

        // Version 3.0 allows UTF-8, e.g. in a field name of an (unsupported)
        // structured dtype; in a key numpy does not know, it is refused, as numpy does.
        let extra = "{'descr': '<f4', 'fortran_order': False, 'shape': (), 'note': 'µ'}\n";
        let message = NpyHeader::parse(&handmade(3, extra))
            .unwrap_err()
            .to_string();
        assert!(message.contains("the key \"note\" is not one"), "{message}");
        assert!(message.contains("'note': 'µ'"), "{message}");
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (), }\n";
        let v3 = handmade(3, dict);
        let header = NpyHeader::parse(&v3).unwrap();
        assert_eq!(header.dtype, DType::F32_LE);
        assert_eq!(header.shape, Vec::<usize>::new());
        assert_eq!(header.element_count().unwrap(), 1);
        assert_eq!(header.data_offset, v3.len());
        let mut with_data = v3.clone();
        with_data.extend_from_slice(&[1, 2, 3, 4]);
        let mut reader = &with_data[..];
        assert_eq!(NpyHeader::read_from(&mut reader).unwrap(), header);
        assert_eq!(reader, &[1, 2, 3, 4], "read_from must stop at the data");
    }

    #[test]
    fn refuses_bad_magic() {
        for bytes in [&b"PK\x03\x04 zip file"[..], b"\x93NUMPZ\x01\x00", b"x"] {
            let err = NpyHeader::parse(bytes).unwrap_err();
            assert!(matches!(err, ShmError::NotNpy { .. }), "{err:?}");
            assert!(err.to_string().starts_with("not a .npy file"), "{err}");
            let err = NpyHeader::read_from(&mut &bytes[..]).unwrap_err();
            assert!(matches!(err, ShmError::NotNpy { .. }), "{err:?}");
        }
    }

    #[test]
    fn refuses_cut_headers_at_every_length() {
        let bytes = encode_header(DType::F64_LE, &[3, 4], false);
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            let err = NpyHeader::parse(cut).unwrap_err();
            assert!(
                matches!(err, ShmError::TruncatedHeader { available, .. } if available == len),
                "{len}: {err:?}"
            );
            assert!(err.to_string().contains("cut short"), "{err}");
            let err = NpyHeader::read_from(&mut &cut[..]).unwrap_err();
            assert!(
                matches!(err, ShmError::TruncatedHeader { .. }),
                "{len}: {err:?}"
            );
        }
    }

    #[test]
    fn refuses_unknown_versions() {
        let mut bytes = encode_header(DType::F64_LE, &[3], false);
        bytes[6] = 4;
        let err = NpyHeader::parse(&bytes).unwrap_err();
        assert!(matches!(
            err,
            ShmError::UnsupportedVersion { major: 4, minor: 0 }
        ));
        assert!(err.to_string().contains("version 4.0"), "{err}");
        assert!(matches!(
            NpyHeader::read_from(&mut &bytes[..]).unwrap_err(),
            ShmError::UnsupportedVersion { .. }
        ));
    }

    #[test]
    fn refuses_malformed_dicts() {
        for (dict, problem) in [
            (
                "{'descr': '<f8', 'fortran_order': False}",
                "'shape' is missing",
            ),
            (
                "{'descr': '<f8', 'shape': (3,)}",
                "'fortran_order' is missing",
            ),
            (
                "{'fortran_order': False, 'shape': (3,)}",
                "'descr' is missing",
            ),
            (
                "{'descr': '<f8', 'fortran_order': 0, 'shape': (3,)}",
                "must be True or False, not \"0\"",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': [3]}",
                "must be a tuple, not \"[3]\"",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': ('a',)}",
                "tuple of sizes",
            ),
            (
                "{'descr': 8, 'fortran_order': False, 'shape': (3,)}",
                "must be a dtype string",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3,)",
                "header ends",
            ),
            ("descr: <f8", "expected '{'"),
        ] {
            let err = NpyHeader::parse(&handmade(1, dict)).unwrap_err();
            assert!(
                matches!(err, ShmError::MalformedHeader { .. }),
                "{dict}: {err:?}"
            );
            let message = err.to_string();
            assert!(message.contains(problem), "{dict}: {message}");
            assert!(message.contains(dict.trim_end()), "{message}");
        }
        let err = NpyHeader::parse(&handmade(3, "{\u{0}\u{ff}")).unwrap_err();
        assert!(matches!(err, ShmError::MalformedHeader { .. }), "{err:?}");
    }

    #[test]
    fn refuses_object_structured_and_complex_dtypes() {
        for (descr, shown, what) in [
            ("'|O'", "'|O'", "Python object"),
            ("'<c16'", "'<c16'", "complex"),
            (
                "[('x', '<f8'), ('y', '<i4')]",
                "[('x', '<f8'), ('y', '<i4')]",
                "structured",
            ),
        ] {
            let dict = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (3,), }}");
            let err = NpyHeader::parse(&handmade(1, &dict)).unwrap_err();
            assert!(matches!(err, ShmError::UnsupportedDtype { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!("unsupported dtype {shown} ({what}); procpool reads f8, f4, i8, i4, u1")
            );
        }
    }

    #[test]
    fn sizes_are_checked_not_overflowed() {
        let huge = NpyHeader {
            dtype: DType::F64_LE,
            fortran_order: false,
            shape: vec![1 << 40, 1 << 30],
            data_offset: 128,
        };
        assert!(matches!(
            huge.element_count(),
            Err(ShmError::SizeOverflow { .. })
        ));
        assert!(matches!(
            huge.data_len(),
            Err(ShmError::SizeOverflow { .. })
        ));
        let bytes = encode_header(DType::F64_LE, &[0, 1 << 40, 1 << 30], false);
        assert!(matches!(
            NpyHeader::parse(&bytes),
            Err(ShmError::SizeOverflow { .. })
        ));
        let just_fits = NpyHeader {
            shape: vec![usize::MAX / 8],
            ..huge
        };
        assert_eq!(just_fits.data_len().unwrap(), usize::MAX / 8 * 8);
    }

    #[test]
    fn check_data_len_says_what_is_missing() {
        let header = NpyHeader::parse(&encode_header(DType::F64_LE, &[1000, 8], false)).unwrap();
        assert_eq!(header.data_len().unwrap(), 64_000);
        header.check_data_len(64_000).unwrap();
        header.check_data_len(64_001).unwrap();
        let err = header.check_data_len(32_000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "header promises 1000 rows × 8 cols of <f8 (64000 bytes) but the file holds 32000 \
             bytes of data; the file is truncated"
        );
    }
}
