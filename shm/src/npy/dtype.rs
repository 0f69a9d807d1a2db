//! Element types: the dtypes procpool reads, and the Rust types that hold them.

use std::fmt;

use crate::error::{Result, ShmError};

/// What an element's bits mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementKind {
    /// IEEE 754 float (numpy kind `f`).
    Float,
    /// Two's-complement signed integer (numpy kind `i`).
    Int,
    /// Unsigned integer (numpy kind `u`).
    UInt,
}

/// A numpy dtype of the kinds procpool reads: `f8`, `f4`, `i8`, `i4`, `u1`, in
/// either byte order.
///
/// The fields are public so a `DType` can be built directly; functions that
/// need to decode or encode elements refuse combinations outside that list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DType {
    /// What the bits mean.
    pub kind: ElementKind,
    /// Bytes per element.
    pub size: usize,
    /// Whether multi-byte elements are stored most significant byte first.
    /// Always `false` for one-byte elements.
    pub big_endian: bool,
}

impl DType {
    /// Little-endian 64-bit float, numpy `<f8`.
    pub const F64_LE: DType = DType::new(ElementKind::Float, 8, false);
    /// Little-endian 32-bit float, numpy `<f4`.
    pub const F32_LE: DType = DType::new(ElementKind::Float, 4, false);

    /// A dtype of `kind` and `size` bytes in the host's byte order.
    pub const fn native(kind: ElementKind, size: usize) -> DType {
        DType::new(kind, size, cfg!(target_endian = "big"))
    }

    /// `big_endian` is forced to `false` for one-byte elements, where byte order
    /// means nothing, so that `|u1`, `<u1` and `>u1` compare equal.
    const fn new(kind: ElementKind, size: usize, big_endian: bool) -> DType {
        DType {
            kind,
            size,
            big_endian: big_endian && size > 1,
        }
    }

    /// Parses a numpy type string such as `<f8`, `>i4`, `|u1` or `=f4`.
    ///
    /// A missing byte-order character, or `=`, means the host's order, as in
    /// numpy. Anything outside `f8, f4, i8, i4, u1` (object, complex, strings,
    /// booleans, half floats, datetimes, ...) is refused with a message naming
    /// what was found.
    pub fn parse(descr: &str) -> Result<DType> {
        let unsupported = |what: String| ShmError::UnsupportedDtype {
            descr: format!("'{descr}'"),
            what,
        };
        let (big_endian, code) = match descr.as_bytes().first() {
            Some(b'<') | Some(b'|') => (false, &descr[1..]),
            Some(b'>') => (true, &descr[1..]),
            Some(b'=') => (cfg!(target_endian = "big"), &descr[1..]),
            _ => (cfg!(target_endian = "big"), descr),
        };
        let mut chars = code.chars();
        let Some(kind_code) = chars.next() else {
            return Err(unsupported("empty type string".to_string()));
        };
        let size_text = chars.as_str();
        let kind = match kind_code {
            'f' => ElementKind::Float,
            'i' => ElementKind::Int,
            'u' => ElementKind::UInt,
            other => {
                let what = match other {
                    'c' => "complex",
                    'O' => "Python object",
                    'S' | 'a' => "byte string",
                    'U' => "unicode string",
                    'V' => "raw bytes or structured",
                    'b' | '?' => "boolean",
                    'M' => "datetime",
                    'm' => "timedelta",
                    _ => "unknown type code",
                };
                return Err(unsupported(what.to_string()));
            }
        };
        let size: usize = size_text.parse().map_err(|_| {
            unsupported(format!(
                "the size {size_text:?} after the type code is not a number"
            ))
        })?;
        match (kind, size) {
            (ElementKind::Float, 8 | 4) | (ElementKind::Int, 8 | 4) | (ElementKind::UInt, 1) => {
                Ok(DType::new(kind, size, big_endian))
            }
            _ => {
                let kind_name = match kind {
                    ElementKind::Float => "float",
                    ElementKind::Int => "signed integer",
                    ElementKind::UInt => "unsigned integer",
                };
                Err(unsupported(format!(
                    "{}-bit {kind_name}",
                    size.saturating_mul(8)
                )))
            }
        }
    }

    /// The numpy type string, e.g. `<f8`, `>i4`, `|u1`.
    pub fn descr(&self) -> String {
        let kind = match self.kind {
            ElementKind::Float => 'f',
            ElementKind::Int => 'i',
            ElementKind::UInt => 'u',
        };
        let order = match (self.size, self.big_endian) {
            (1, _) => '|',
            (_, true) => '>',
            (_, false) => '<',
        };
        format!("{order}{kind}{}", self.size)
    }

    /// Refuses kind/size combinations outside the supported list, with the
    /// same message [`DType::parse`] gives.
    pub(crate) fn ensure_supported(&self) -> Result<()> {
        DType::parse(&self.descr()).map(drop)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.descr())
    }
}

mod sealed {
    /// Implemented only for the primitive numbers below, which makes
    /// [`super::Element`]'s promises checkable in this file.
    pub trait Sealed {}
    impl Sealed for f64 {}
    impl Sealed for f32 {}
    impl Sealed for i64 {}
    impl Sealed for i32 {}
    impl Sealed for u8 {}
}

/// A Rust number type that can be an array element: `f64`, `f32`, `i64`,
/// `i32`, `u8`.
///
/// The trait is sealed. Every implementor is a primitive number with no
/// padding, whose size and alignment equal `DTYPE.size`, and for which every
/// bit pattern is a valid value; the byte views in this crate rely on that.
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The dtype of this type in the host's byte order.
    const DTYPE: DType;
}

impl Element for f64 {
    const DTYPE: DType = DType::native(ElementKind::Float, 8);
}
impl Element for f32 {
    const DTYPE: DType = DType::native(ElementKind::Float, 4);
}
impl Element for i64 {
    const DTYPE: DType = DType::native(ElementKind::Int, 8);
}
impl Element for i32 {
    const DTYPE: DType = DType::native(ElementKind::Int, 4);
}
impl Element for u8 {
    const DTYPE: DType = DType::native(ElementKind::UInt, 1);
}

/// Decodes `out.len()` elements of `dtype`, stored in `bytes` in the dtype's
/// byte order, into `f64`s.
///
/// `bytes` must hold exactly `out.len() * dtype.size` bytes. 64-bit integers
/// beyond ±2⁵³ round to the nearest `f64`.
pub fn decode_f64(dtype: DType, bytes: &[u8], out: &mut [f64]) -> Result<()> {
    // SAFETY: `bytes` is a live slice, readable for its whole length.
    unsafe { decode_f64_raw(dtype, bytes.as_ptr(), bytes.len(), out) }
}

/// [`decode_f64`] from `len` bytes at `bytes`, which may be memory that other
/// processes map and write (a file, a shared array): each element is read once,
/// by value, and no reference to the bytes is made, so a concurrent writer
/// changes the numbers decoded and nothing else.
///
/// # Safety
///
/// `bytes` must be valid for reads of `len` bytes for the length of the call.
pub(crate) unsafe fn decode_f64_raw(
    dtype: DType,
    bytes: *const u8,
    len: usize,
    out: &mut [f64],
) -> Result<()> {
    if out.len().checked_mul(dtype.size) != Some(len) {
        return Err(ShmError::DecodeLength {
            bytes: len,
            elements: out.len(),
            dtype: dtype.descr(),
            dtype_size: dtype.size,
        });
    }
    let big = dtype.big_endian;
    // SAFETY (each arm): `out.len()` elements of the arm's size are exactly the
    // `len` readable bytes at `bytes` (checked above; the caller's contract).
    unsafe {
        match (dtype.kind, dtype.size) {
            (ElementKind::Float, 8) if big => decode_each(bytes, out, f64::from_be_bytes),
            (ElementKind::Float, 8) => decode_each(bytes, out, f64::from_le_bytes),
            (ElementKind::Float, 4) if big => {
                decode_each(bytes, out, |b| f32::from_be_bytes(b).into())
            }
            (ElementKind::Float, 4) => decode_each(bytes, out, |b| f32::from_le_bytes(b).into()),
            (ElementKind::Int, 8) if big => {
                decode_each(bytes, out, |b| i64::from_be_bytes(b) as f64)
            }
            (ElementKind::Int, 8) => decode_each(bytes, out, |b| i64::from_le_bytes(b) as f64),
            (ElementKind::Int, 4) if big => {
                decode_each(bytes, out, |b| i32::from_be_bytes(b).into())
            }
            (ElementKind::Int, 4) => decode_each(bytes, out, |b| i32::from_le_bytes(b).into()),
            (ElementKind::UInt, 1) => decode_each(bytes, out, |[b]: [u8; 1]| b.into()),
            _ => return dtype.ensure_supported(),
        }
    }
    Ok(())
}

/// Applies `decode` to each `N`-byte element from `bytes`, writing into `out`.
///
/// # Safety
///
/// `bytes` must be valid for reads of `out.len() * N` bytes.
unsafe fn decode_each<const N: usize>(
    bytes: *const u8,
    out: &mut [f64],
    decode: impl Fn([u8; N]) -> f64,
) {
    for (index, slot) in out.iter_mut().enumerate() {
        // SAFETY: element `index` lies in the readable bytes (the contract); the
        // read is unaligned and by value.
        let raw = unsafe { bytes.add(index * N).cast::<[u8; N]>().read_unaligned() };
        *slot = decode(raw);
    }
}

/// The bytes of `elements`, in the host's byte order.
pub(crate) fn element_bytes<T: Element>(elements: &[T]) -> &[u8] {
    // SAFETY: `Element` is sealed to primitive numbers without padding, so every
    // byte of the slice is initialised; the pointer and byte length come from a
    // live slice, and `u8` has alignment 1.
    unsafe { std::slice::from_raw_parts(elements.as_ptr().cast(), std::mem::size_of_val(elements)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_descr_in_every_byte_order() {
        for (code, kind, size) in [
            ("f8", ElementKind::Float, 8),
            ("f4", ElementKind::Float, 4),
            ("i8", ElementKind::Int, 8),
            ("i4", ElementKind::Int, 4),
        ] {
            let little = DType::parse(&format!("<{code}")).unwrap();
            assert_eq!(
                (little.kind, little.size, little.big_endian),
                (kind, size, false)
            );
            let big = DType::parse(&format!(">{code}")).unwrap();
            assert_eq!((big.kind, big.size, big.big_endian), (kind, size, true));
            let native = DType::parse(&format!("={code}")).unwrap();
            assert_eq!(native, DType::native(kind, size));
            assert_eq!(DType::parse(code).unwrap(), native);
            assert_eq!(DType::parse(&little.descr()).unwrap(), little);
            assert_eq!(DType::parse(&big.descr()).unwrap(), big);
        }
        for descr in ["|u1", "<u1", ">u1", "=u1", "u1"] {
            assert_eq!(DType::parse(descr).unwrap(), u8::DTYPE, "{descr}");
        }
        assert_eq!(u8::DTYPE.descr(), "|u1");
        assert_eq!(DType::F64_LE.descr(), "<f8");
        assert_eq!(DType::F32_LE.to_string(), "<f4");
    }

    #[test]
    fn refuses_unsupported_dtypes_naming_them() {
        for (descr, what) in [
            ("<c16", "complex"),
            ("|O", "Python object"),
            ("<U10", "unicode string"),
            ("|S5", "byte string"),
            ("|b1", "boolean"),
            ("<f2", "16-bit float"),
            ("<f16", "128-bit float"),
            ("<i2", "16-bit signed integer"),
            ("<u8", "64-bit unsigned integer"),
            ("<M8[ns]", "datetime"),
            ("", "empty type string"),
            ("<fx", "not a number"),
        ] {
            let err = DType::parse(descr).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, ShmError::UnsupportedDtype { .. }),
                "{descr}: {err:?}"
            );
            assert!(message.contains(what), "{descr}: {message}");
            assert!(message.contains(&format!("'{descr}'")), "{message}");
            assert!(
                message.contains("procpool reads f8, f4, i8, i4, u1"),
                "{message}"
            );
        }
    }

    #[test]
    fn decodes_every_dtype_in_both_byte_orders() {
        let values = [-3.0f64, 0.0, 1.0, 250.0];
        for dtype in [
            DType::F64_LE,
            DType::F32_LE,
            DType::parse("<i8").unwrap(),
            DType::parse("<i4").unwrap(),
            DType::parse("|u1").unwrap(),
        ] {
            for big_endian in [false, true] {
                let dtype = DType::new(dtype.kind, dtype.size, big_endian);
                let mut bytes = Vec::new();
                for &v in &values {
                    let v = if dtype.kind == ElementKind::UInt {
                        v.abs()
                    } else {
                        v
                    };
                    let mut raw = match (dtype.kind, dtype.size) {
                        (ElementKind::Float, 8) => v.to_le_bytes().to_vec(),
                        (ElementKind::Float, 4) => (v as f32).to_le_bytes().to_vec(),
                        (ElementKind::Int, 8) => (v as i64).to_le_bytes().to_vec(),
                        (ElementKind::Int, 4) => (v as i32).to_le_bytes().to_vec(),
                        _ => vec![v as u8],
                    };
                    if big_endian {
                        raw.reverse();
                    }
                    bytes.extend(raw);
                }
                let mut out = [f64::NAN; 4];
                decode_f64(dtype, &bytes, &mut out).unwrap();
                let expected: Vec<f64> = values
                    .iter()
                    .map(|v| {
                        if dtype.kind == ElementKind::UInt {
                            v.abs()
                        } else {
                            *v
                        }
                    })
                    .collect();
                assert_eq!(out.to_vec(), expected, "{dtype}");
            }
        }
    }

    #[test]
    fn decode_refuses_wrong_lengths_and_unsupported_dtypes() {
        let mut out = [0.0; 2];
        let err = decode_f64(DType::F64_LE, &[0; 15], &mut out).unwrap_err();
        assert!(matches!(
            err,
            ShmError::DecodeLength {
                bytes: 15,
                elements: 2,
                ..
            }
        ));
        let half = DType::new(ElementKind::Float, 2, false);
        let err = decode_f64(half, &[0; 4], &mut out).unwrap_err();
        assert!(err.to_string().contains("16-bit float"), "{err}");
    }

    #[test]
    fn decodes_unaligned_bytes_and_lays_out_elements_in_host_order() {
        let values = [1.0f64, -2.0, 3.5];
        let bytes = element_bytes(&values);
        assert_eq!(bytes.len(), 24);
        assert_eq!(&bytes[8..16], &(-2.0f64).to_ne_bytes());
        // One byte in, the elements are misaligned for f64: decoding reads them anyway.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(bytes);
        let mut out = [0.0; 3];
        decode_f64(f64::DTYPE, &shifted[1..], &mut out).unwrap();
        assert_eq!(out, values);
    }
}
