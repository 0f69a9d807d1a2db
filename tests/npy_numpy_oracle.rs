//! numpy as the oracle for the `.npy` header reader: each case is a header dict
//! written as bytes into a file with data after it, which `numpy.load` and
//! `NpyHeader::parse` both read. The reader must never accept a header numpy refuses,
//! and where both accept they must agree on dtype, shape and order. The reader is
//! stricter than numpy in a few places, listed in `STRICTER_THAN_NUMPY`: Python
//! syntax that no numpy writes (comments, hex integers, implicit string
//! concatenation, ...), refused with a message rather than evaluated.

use std::process::Command;

use procpool_shm::NpyHeader;

mod util;
use util::numpy_available;

/// (case name, format version, the header's dict as it appears in the file).
const CASES: &[(&str, u8, &[u8])] = &[
    (
        "as numpy writes it",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
    ),
    (
        "version 3",
        3,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
    ),
    (
        "fortran, 2-d",
        1,
        b"{'descr': '<i4', 'fortran_order': True, 'shape': (2, 1), }",
    ),
    (
        "0-d",
        1,
        b"{'descr': '|u1', 'fortran_order': False, 'shape': (), }",
    ),
    (
        "double quotes",
        1,
        b"{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2,)}",
    ),
    (
        "no spaces",
        1,
        b"{'descr':'<f8','fortran_order':False,'shape':(2,)}",
    ),
    (
        "tabs, newlines, CR and form feed between tokens",
        1,
        b"{'descr':\t'<f8',\n'fortran_order': False,\r\n'shape':\x0c(2,)\r}",
    ),
    (
        "\\r escape in a key",
        1,
        b"{'desc\\r': '<f8', 'fortran_order': False, 'shape': (2,)}",
    ),
    (
        "\\x escape in a value",
        1,
        b"{'descr': '\\x3cf8', 'fortran_order': False, 'shape': (2,)}",
    ),
    (
        "octal escape in a key",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'sh\\141pe': (2,)}",
    ),
    (
        "\\u escape in a key",
        3,
        b"{'descr': '<f8', 'fortran_order': False, 'sh\\u0061pe': (2,)}",
    ),
    (
        "backslash-newline in a string",
        1,
        b"{'de\\\nscr': '<f8', 'fortran_order': False, 'shape': (2,)}",
    ),
    (
        "raw newline in a string",
        1,
        b"{'de\nscr': '<f8', 'fortran_order': False, 'shape': (2,)}",
    ),
    (
        "unknown escape keeps its backslash",
        1,
        b"{'descr': '<f8', 'fortran_order': False, '\\shape': (2,)}",
    ),
    (
        "latin-1 no-break space between tokens",
        1,
        b"{'descr':\xa0'<f8', 'fortran_order': False, 'shape': (2,)}",
    ),
    (
        "UTF-8 no-break space between tokens",
        3,
        b"{'descr':\xc2\xa0'<f8', 'fortran_order': False, 'shape': (2,)}",
    ),
    (
        "vertical tab between tokens",
        1,
        b"{'descr':\x0b'<f8', 'fortran_order': False, 'shape': (2,)}",
    ),
    (
        "an extra key",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), 'x': 1}",
    ),
    ("a missing key", 1, b"{'descr': '<f8', 'shape': (2,)}"),
    (
        "leading zero in a dimension",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (02,)}",
    ),
    (
        "underscore in a dimension",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (1_0,)}",
    ),
    (
        "trailing underscore",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (10_,)}",
    ),
    (
        "a float dimension",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (2.0,)}",
    ),
    (
        "shape not a tuple",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (2)}",
    ),
    (
        "parentheses grouping a value",
        1,
        b"{'descr': ('<f8'), 'fortran_order': (False), 'shape': ((2,))}",
    ),
    (
        "a list for shape",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': [2]}",
    ),
    (
        "fortran_order 0",
        1,
        b"{'descr': '<f8', 'fortran_order': 0, 'shape': (2,)}",
    ),
    (
        "a negative dimension",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (-2,)}",
    ),
    (
        "an unclosed dict",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,)",
    ),
    (
        "text after the dict",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,)} x",
    ),
    (
        "two commas",
        1,
        b"{'descr': '<f8',, 'fortran_order': False, 'shape': (2,)}",
    ),
    (
        "lowercase false",
        1,
        b"{'descr': '<f8', 'fortran_order': false, 'shape': (2,)}",
    ),
    (
        "a comment",
        1,
        b"{'descr': '<f8', # the dtype\n 'fortran_order': False, 'shape': (2,)}",
    ),
    (
        "a hex dimension",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (0x2,)}",
    ),
    (
        "a unary plus",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (+2,)}",
    ),
    (
        "a Python 2 long",
        1,
        b"{'descr': '<f8', 'fortran_order': False, 'shape': (2L,)}",
    ),
    (
        "implicit concatenation",
        1,
        b"{'descr': '<' 'f8', 'fortran_order': False, 'shape': (2,)}",
    ),
    (
        "a string prefix",
        1,
        b"{'descr': u'<f8', 'fortran_order': False, 'shape': (2,)}",
    ),
    (
        "a key twice",
        1,
        b"{'descr': '<i4', 'descr': '<f8', 'fortran_order': False, 'shape': (2,)}",
    ),
];

/// Cases numpy accepts and the reader refuses: Python syntax outside what any numpy
/// writes, evaluated by `ast.literal_eval` but not worth a Python evaluator here (the
/// `L` of a Python 2 long, which numpy 1.x under Python 2 wrote into shapes, is
/// filtered out by numpy before evaluation; such files are refused with a message).
const STRICTER_THAN_NUMPY: &[&str] = &[
    "a comment",
    "a hex dimension",
    "a unary plus",
    "a Python 2 long",
    "implicit concatenation",
    "a string prefix",
];

/// Reads each file named on the command line with numpy and prints one line per
/// file: `ok DESCR FORTRAN SHAPE...` or `refused`.
const ORACLE: &str = r#"
import sys, warnings
import numpy as np
warnings.simplefilter("ignore")
for path in sys.argv[1:]:
    try:
        a = np.load(path)
        print("ok", a.dtype.str, a.flags.f_contiguous and a.ndim > 1, *a.shape)
    except Exception:
        print("refused")
"#;

fn header_file(version: u8, dict: &[u8]) -> Vec<u8> {
    let mut file = b"\x93NUMPY".to_vec();
    file.extend_from_slice(&[version, 0]);
    let len = dict.len() + 1;
    if version == 1 {
        file.extend_from_slice(&u16::try_from(len).expect("a short header").to_le_bytes());
    } else {
        file.extend_from_slice(&u32::try_from(len).expect("a short header").to_le_bytes());
    }
    file.extend_from_slice(dict);
    file.push(b'\n');
    // More data than any case's shape needs: numpy reads what the shape asks for.
    file.extend_from_slice(&[0; 256]);
    file
}

#[test]
fn the_reader_refuses_what_numpy_refuses_and_agrees_on_what_both_read() {
    if !numpy_available("npy_numpy_oracle") {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let paths: Vec<_> = CASES
        .iter()
        .enumerate()
        .map(|(index, (_, version, dict))| {
            let path = dir.path().join(format!("case{index}.npy"));
            std::fs::write(&path, header_file(*version, dict)).expect("writing a case");
            path
        })
        .collect();
    let numpy = Command::new("python3")
        .args(["-c", ORACLE])
        .args(&paths)
        .output()
        .expect("running python3");
    assert!(
        numpy.status.success(),
        "{}",
        String::from_utf8_lossy(&numpy.stderr)
    );
    let verdicts = String::from_utf8(numpy.stdout).expect("numpy's output");
    let verdicts: Vec<&str> = verdicts.lines().collect();
    assert_eq!(verdicts.len(), CASES.len());

    let mut disagreements = Vec::new();
    for ((name, version, dict), numpy_verdict) in CASES.iter().zip(verdicts) {
        let ours = match NpyHeader::parse(&header_file(*version, dict)) {
            Ok(header) => {
                let shape: Vec<String> = header.shape.iter().map(usize::to_string).collect();
                let fortran = header.fortran_order && header.shape.len() > 1;
                let fortran = if fortran { "True" } else { "False" };
                format!("ok {} {fortran} {}", header.dtype.descr(), shape.join(" "))
            }
            Err(_) => "refused".to_string(),
        };
        let stricter = ours == "refused" && STRICTER_THAN_NUMPY.contains(name);
        if ours.trim_end() != numpy_verdict.trim_end() && !stricter {
            disagreements.push(format!(
                "{name}: numpy {numpy_verdict:?}, procpool {ours:?}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
