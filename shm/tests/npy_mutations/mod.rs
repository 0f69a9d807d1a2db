//! Seeded mutations of numpy-written `.npy` files, for fuzz tests that must be
//! reproducible: the same seed gives the same mutants, and each mutant says how
//! it was made. Shared by `shm/tests/npy_fuzz.rs` (the reader) and the
//! workspace's `tests/npy_fuzz.rs` (the workloads that open files).
#![allow(dead_code)]

use std::ops::Range;

/// SplitMix64: small, fast, and the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One numpy-written seed file: an array of `0, 1, 2, ...` in C order, cast to
/// `descr`, stored in `fortran` order in `.npy` format `version`.
#[derive(Debug, Clone)]
pub struct Seed {
    pub descr: &'static str,
    pub fortran: bool,
    pub version: u8,
    pub shape: Vec<usize>,
}

/// Every dtype procpool reads, in both byte orders.
pub const DESCRS: [&str; 9] = [
    "<f8", ">f8", "<f4", ">f4", "<i8", ">i8", "<i4", ">i4", "|u1",
];

impl Seed {
    /// A file name that says what the seed is.
    pub fn file_name(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(usize::to_string).collect();
        let order = if self.fortran { "F" } else { "C" };
        let descr = self
            .descr
            .replace('<', "le-")
            .replace('>', "be-")
            .replace('|', "");
        format!("{descr}_{order}_v{}_{}.npy", self.version, dims.join("x"))
    }

    /// The seed's argument to [`SEED_SCRIPT`].
    pub fn script_arg(&self, dir: &std::path::Path) -> String {
        let dims: Vec<String> = self.shape.iter().map(usize::to_string).collect();
        format!(
            "{};{};{};{};{}",
            dir.join(self.file_name()).display(),
            self.descr,
            u8::from(self.fortran),
            self.version,
            dims.join("x")
        )
    }

    /// The values numpy stored, in C order, as `f64`.
    pub fn values(&self) -> Vec<f64> {
        (0..self.shape.iter().product::<usize>())
            .map(|i| i as f64)
            .collect()
    }
}

/// Writes one file per argument `PATH;DESCR;FORTRAN;VERSION;DIMS` with numpy
/// (`python3 -c SEED_SCRIPT ARGS...`), through numpy's own writer for the
/// requested format version.
pub const SEED_SCRIPT: &str = r#"
import sys, numpy as np
for arg in sys.argv[1:]:
    path, descr, fortran, version, dims = arg.split(";")
    shape = tuple(int(d) for d in dims.split("x") if d)
    a = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape).astype(descr)
    if fortran == "1":
        a = np.asfortranarray(a)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, a, version=(int(version), 0))
"#;

/// A mutated file and the mutations that made it, in order.
pub struct Mutant {
    pub bytes: Vec<u8>,
    pub how: Vec<String>,
}

/// Applies one to three random mutations to `seed`.
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Mutant {
    let mut mutant = Mutant {
        bytes: seed.to_vec(),
        how: Vec::new(),
    };
    for _ in 0..1 + rng.below(3) {
        let how = mutate_once(&mut mutant.bytes, rng);
        mutant.how.push(how);
    }
    mutant
}

const SHAPES: &[&str] = &[
    "()",
    "(0,)",
    "(3, 0)",
    "(0, 3)",
    "(0, 0)",
    "(1,)",
    "(4, 3)",
    "(3, 4)",
    "(2, 3, 4)",
    "(1, 1, 1, 1)",
    "(12,)",
    "(24, 1)",
    "(99999999999,)",
    "(4294967296, 4294967296)",
    "(18446744073709551615,)",
    "(18446744073709551616,)",
    "(0, 18446744073709551615, 18446744073709551615)",
    "(-1,)",
    "(-3, 4)",
    "(3.0, 4)",
    "('a',)",
    "(True,)",
    "(,)",
    "(3 4)",
    "(3,, 4)",
    "((3, 4),)",
    "[3, 4]",
    "(3,",
    "3",
    "(0x10,)",
    "(1_000,)",
    "(",
    "",
];

const DESCR_VALUES: &[&str] = &[
    "'<f8'",
    "'>f8'",
    "'<f4'",
    "'>i4'",
    "'<i8'",
    "'|u1'",
    "'u1'",
    "'=f8'",
    "'f'",
    "'<f'",
    "''",
    "'<'",
    "'<c16'",
    "'|O'",
    "'<U10'",
    "'|S3'",
    "'|b1'",
    "'<f2'",
    "'<u8'",
    "'<M8[ns]'",
    "'<f99999999999999999999999'",
    "'<f18446744073709551615'",
    "'\u{e9}f8'",
    "[('a', '<f8')]",
    "[]",
    "8",
    "None",
    "'<f8",
    "\"<f8\"",
];

const ORDER_VALUES: &[&str] = &[
    "True", "False", "0", "1", "None", "'True'", "true", "Tru", "",
];

const INTERESTING_BYTES: &[u8] = &[
    0, 0xff, 0x7f, 0x80, b'0', b'9', b'(', b')', b',', b' ', b'\'', b'"', b'{', b'}', b':', b'\n',
    b'\\', 0x93,
];

fn mutate_once(bytes: &mut Vec<u8>, rng: &mut Rng) -> String {
    let dict = dict_span(bytes);
    match rng.below(12) {
        0 => {
            let at = position(bytes, &dict, rng);
            let Some(byte) = bytes.get_mut(at) else {
                return "flip nothing (empty)".into();
            };
            let mask = 1u8 << rng.below(8);
            *byte ^= mask;
            format!("flip bit {mask:#04x} of byte {at}")
        }
        1 => {
            let at = position(bytes, &dict, rng);
            let value = *rng.pick(INTERESTING_BYTES);
            let Some(byte) = bytes.get_mut(at) else {
                return "set nothing (empty)".into();
            };
            *byte = value;
            format!("set byte {at} to {value:#04x}")
        }
        2 => {
            let len = match rng.below(3) {
                0 => rng.below(dict.end.min(bytes.len()) + 1),
                1 => rng.below(bytes.len() + 1),
                _ => bytes.len().saturating_sub(1 + rng.below(16)),
            };
            bytes.truncate(len);
            format!("truncate to {len} bytes")
        }
        3 => {
            let count = 1 + rng.below(64);
            let extra: Vec<u8> = (0..count).map(|_| rng.next_u64() as u8).collect();
            bytes.extend_from_slice(&extra);
            format!("append {count} random bytes")
        }
        4 => replace_value(bytes, &dict, b"shape", SHAPES, rng),
        5 => replace_value(bytes, &dict, b"descr", DESCR_VALUES, rng),
        6 => replace_value(bytes, &dict, b"fortran_order", ORDER_VALUES, rng),
        7 => {
            let width = length_width(bytes);
            let dict_len = dict.len();
            let value: u64 = match rng.below(6) {
                0 => 0,
                1 => dict_len.saturating_sub(1 + rng.below(8)) as u64,
                2 => (dict_len + 1 + rng.below(64)) as u64,
                3 => u64::from(u16::MAX),
                4 => u64::from(u32::MAX),
                _ => rng.next_u64(),
            };
            let field = value.to_le_bytes();
            for (index, byte) in field.iter().take(width).enumerate() {
                if let Some(slot) = bytes.get_mut(8 + index) {
                    *slot = *byte;
                }
            }
            format!("set the header length field to {value} (low {width} bytes)")
        }
        8 => {
            let at = rng.below(6);
            let value = rng.next_u64() as u8;
            if let Some(byte) = bytes.get_mut(at) {
                *byte = value;
            }
            format!("set magic byte {at} to {value:#04x}")
        }
        9 => {
            let (major, minor) = *rng.pick(&[
                (1u8, 0u8),
                (2, 0),
                (3, 0),
                (0, 0),
                (4, 0),
                (1, 1),
                (2, 1),
                (255, 255),
            ]);
            for (at, value) in [(6, major), (7, minor)] {
                if let Some(byte) = bytes.get_mut(at) {
                    *byte = value;
                }
            }
            format!("set the version to {major}.{minor}")
        }
        10 => {
            if dict.is_empty() {
                return "delete nothing (no header)".into();
            }
            let start = dict.start + rng.below(dict.len());
            let end = (start + 1 + rng.below(12)).min(dict.end);
            let fix = rng.below(4) != 0;
            splice(bytes, start..end, b"", fix);
            format!("delete header bytes {start}..{end} (length field fixed: {fix})")
        }
        _ => {
            let token = *rng.pick(&[
                "'shape': (2,), ",
                "'descr': '<i4', ",
                "'fortran_order': True, ",
                "}",
                "{",
                ", ",
                "'extra': [1, (2, 3)], ",
                "\\'",
                "\u{fffd}",
            ]);
            let at = if dict.is_empty() {
                0
            } else {
                dict.start + rng.below(dict.len())
            };
            let fix = rng.below(4) != 0;
            splice(bytes, at..at, token.as_bytes(), fix);
            format!("insert {token:?} at byte {at} (length field fixed: {fix})")
        }
    }
}

/// A byte to change: three times in four inside the header, where the parser is.
fn position(bytes: &[u8], dict: &Range<usize>, rng: &mut Rng) -> usize {
    if bytes.is_empty() {
        return 0;
    }
    let header_end = dict.end.min(bytes.len()).max(1);
    if rng.below(4) != 0 {
        rng.below(header_end)
    } else {
        rng.below(bytes.len())
    }
}

/// Bytes of the header length field: 2 for version 1.x, 4 otherwise.
fn length_width(bytes: &[u8]) -> usize {
    if bytes.get(6) == Some(&1) {
        2
    } else {
        4
    }
}

/// Where the header dict is, as far as its prefix says (clamped to the file).
fn dict_span(bytes: &[u8]) -> Range<usize> {
    let width = length_width(bytes);
    let start = 8 + width;
    if bytes.len() < start {
        return bytes.len()..bytes.len();
    }
    let len = bytes[8..start]
        .iter()
        .rev()
        .fold(0usize, |len, &byte| len << 8 | usize::from(byte));
    start..start.saturating_add(len).min(bytes.len())
}

/// Replaces `range` of `bytes` with `new`, and with `fix_length` rewrites the
/// header length field to the dict's new length (when the field can hold it).
fn splice(bytes: &mut Vec<u8>, range: Range<usize>, new: &[u8], fix_length: bool) {
    let dict = dict_span(bytes);
    let removed = range.len();
    bytes.splice(range, new.iter().copied());
    if fix_length && bytes.len() >= dict.start {
        let new_len = (dict.len() + new.len()).saturating_sub(removed) as u64;
        let width = length_width(bytes);
        if new_len < 1 << (8 * width) {
            bytes[8..8 + width].copy_from_slice(&new_len.to_le_bytes()[..width]);
        }
    }
}

/// Replaces the value of `'key':` in the dict with one of `values`.
fn replace_value(
    bytes: &mut Vec<u8>,
    dict: &Range<usize>,
    key: &[u8],
    values: &[&str],
    rng: &mut Rng,
) -> String {
    let key_name = String::from_utf8_lossy(key).into_owned();
    let Some(span) = value_span(bytes, dict, key) else {
        return format!("replace '{key_name}' (not found)");
    };
    let value = *rng.pick(values);
    let fix = rng.below(8) != 0;
    splice(bytes, span, value.as_bytes(), fix);
    format!("set '{key_name}' to {value} (length field fixed: {fix})")
}

/// The span of the value after `'key':` in the dict, to the end of its
/// bracket, quote or word.
fn value_span(bytes: &[u8], dict: &Range<usize>, key: &[u8]) -> Option<Range<usize>> {
    let text = &bytes[dict.clone()];
    let mut needle = vec![b'\''];
    needle.extend_from_slice(key);
    needle.extend_from_slice(b"':");
    let found = text.windows(needle.len()).position(|w| w == needle)?;
    let mut start = found + needle.len();
    while text.get(start) == Some(&b' ') {
        start += 1;
    }
    let end = match text.get(start)? {
        b'(' | b'[' => {
            let mut depth = 0;
            let mut end = text.len();
            for (offset, &byte) in text[start..].iter().enumerate() {
                match byte {
                    b'(' | b'[' => depth += 1,
                    b')' | b']' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = start + offset + 1;
                    break;
                }
            }
            end
        }
        b'\'' => text[start + 1..]
            .iter()
            .position(|&b| b == b'\'')
            .map_or(text.len(), |offset| start + offset + 2),
        _ => text[start..]
            .iter()
            .position(|&b| b == b',' || b == b'}')
            .map_or(text.len(), |offset| start + offset),
    };
    Some(dict.start + start..dict.start + end.max(start))
}
