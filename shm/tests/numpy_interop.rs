//! `.npy` files and shared arrays exchanged with real numpy.
//!
//! Each test runs `python3` with numpy. Where numpy cannot be imported the
//! tests print a notice and pass, unless `PROCPOOL_REQUIRE_NUMPY=1` (as in CI),
//! which turns a missing numpy into a failure.

use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use procpool_shm::{read_npy_f64, write_npy, DType, Element, NpyWriter, SharedArray};

mod numpy;
use numpy::{numpy_available, python};

/// The value at C-order index `index` of every test array, shared with the
/// Python side (`value(i, kind)` below): exact in every supported dtype.
fn value(index: usize, descr: &str) -> f64 {
    let index = index as f64;
    match &descr[1..2] {
        "f" => index * 0.5 - 3.0,
        "i" => index - 3.0,
        _ => index,
    }
}

const PY_VALUES: &str = r#"
import sys, numpy as np
def values(shape, descr):
    i = np.arange(int(np.prod(shape)), dtype=np.float64)
    kind = np.dtype(descr).kind
    v = i * 0.5 - 3 if kind == "f" else (i - 3 if kind == "i" else i)
    return v.reshape(shape).astype(descr)
def shape_of(text):
    return tuple(int(d) for d in text.split("x") if d)
"#;

const DESCRS: [&str; 9] = [
    "<f8", ">f8", "<f4", ">f4", "<i8", ">i8", "<i4", ">i4", "|u1",
];

#[test]
fn numpy_written_files_read_correctly() {
    if !numpy_available("numpy_written_files_read_correctly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shapes: [&[usize]; 6] = [&[3, 4], &[2, 3, 4], &[5], &[], &[0, 3], &[4, 1]];
    let mut cases = Vec::new();
    for descr in DESCRS {
        for fortran in [false, true] {
            for shape in shapes {
                for version in [1, 2, 3] {
                    let name = format!("case{}.npy", cases.len());
                    cases.push((dir.path().join(name), descr, fortran, shape, version));
                }
            }
        }
    }
    let specs: Vec<String> = cases
        .iter()
        .map(|(path, descr, fortran, shape, version)| {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            let order = if *fortran { "F" } else { "C" };
            format!(
                "{};{descr};{order};{};{version}",
                path.display(),
                dims.join("x")
            )
        })
        .collect();
    let script = format!(
        "{PY_VALUES}
for spec in sys.argv[1:]:
    path, descr, order, shape, version = spec.split(';')
    a = np.asarray(values(shape_of(shape), descr), order=order)
    with open(path, 'wb') as f:
        np.lib.format.write_array(f, a, version=(int(version), 0))
"
    );
    let args: Vec<&str> = specs.iter().map(String::as_str).collect();
    python(&script, &args);

    let mut fortran_files = 0;
    for (path, descr, fortran, shape, version) in &cases {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes[6], *version as u8, "{}", path.display());
        fortran_files += usize::from(
            procpool_shm::NpyHeader::parse(&bytes)
                .unwrap()
                .fortran_order,
        );
        let (read_shape, values) = read_npy_f64(path)
            .unwrap_or_else(|err| panic!("{descr} {shape:?} fortran={fortran}: {err}"));
        assert_eq!(read_shape, *shape, "{}", path.display());
        let count: usize = shape.iter().product();
        let expected: Vec<f64> = (0..count).map(|i| value(i, descr)).collect();
        assert_eq!(
            values, expected,
            "{descr} {shape:?} fortran={fortran} v{version}"
        );
    }
    assert!(
        fortran_files > 0,
        "numpy should have written some Fortran-order files"
    );
}

#[test]
fn files_written_here_load_in_numpy_and_match_numpy_save_byte_for_byte() {
    if !numpy_available("files_written_here_load_in_numpy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shape = [3usize, 4];
    let values: Vec<f64> = (0..12).map(|i| value(i, "<f8")).collect();
    let ints: Vec<f64> = (0..12).map(|i| value(i, "<i8")).collect();
    let path = |name: &str| dir.path().join(name).display().to_string();
    write_npy(dir.path().join("f8.npy").as_path(), &shape, &values).unwrap();
    let f32s: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    write_npy(dir.path().join("f4.npy").as_path(), &shape, &f32s).unwrap();
    let i64s: Vec<i64> = ints.iter().map(|&v| v as i64).collect();
    write_npy(dir.path().join("i8.npy").as_path(), &shape, &i64s).unwrap();
    let i32s: Vec<i32> = ints.iter().map(|&v| v as i32).collect();
    write_npy(dir.path().join("i4.npy").as_path(), &shape, &i32s).unwrap();
    let u8s: Vec<u8> = (0..12).collect();
    write_npy(dir.path().join("u1.npy").as_path(), &shape, &u8s).unwrap();
    let big = DType::parse(">f8").unwrap();
    let mut writer = NpyWriter::create(&dir.path().join("big.npy"), big, &shape).unwrap();
    for row in values.chunks(4) {
        writer.write_elements(row).unwrap();
    }
    writer.finish().unwrap();
    write_npy::<f64>(dir.path().join("empty.npy").as_path(), &[0, 4], &[]).unwrap();

    let script = format!(
        "{PY_VALUES}
import io
for spec in sys.argv[1:]:
    path, descr, shape = spec.split(';')
    a = np.load(path)
    want = values(shape_of(shape), descr)
    assert a.dtype == np.dtype(descr), (path, a.dtype, descr)
    assert a.shape == want.shape, (path, a.shape, want.shape)
    assert np.array_equal(a, want), (path, a, want)
    buffer = io.BytesIO()
    np.save(buffer, want)
    assert open(path, 'rb').read() == buffer.getvalue(), (path, 'differs from numpy.save')
    print('ok', path)
"
    );
    let specs = [
        format!("{};<f8;3x4", path("f8.npy")),
        format!("{};<f4;3x4", path("f4.npy")),
        format!("{};<i8;3x4", path("i8.npy")),
        format!("{};<i4;3x4", path("i4.npy")),
        format!("{};u1;3x4", path("u1.npy")),
        format!("{};>f8;3x4", path("big.npy")),
        format!("{};<f8;0x4", path("empty.npy")),
    ];
    let args: Vec<&str> = specs.iter().map(String::as_str).collect();
    let stdout = python(&script, &args);
    assert_eq!(
        stdout
            .lines()
            .filter(|line| line.starts_with("ok "))
            .count(),
        specs.len()
    );
}

#[test]
fn a_worker_inheriting_the_descriptor_maps_the_shared_array_in_numpy() {
    if !numpy_available("a_worker_inheriting_the_descriptor") {
        return;
    }
    let values: Vec<f64> = (0..12).map(|i| value(i, "<f8")).collect();
    let mut array = SharedArray::from_f64("interop", &[3, 4], &values).unwrap();
    array.write(2 * 4, &[100.0]).unwrap();
    // What the supervisor does for each worker it starts: let the worker
    // inherit the descriptor.
    fcntl(array.fd().as_fd(), FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    let script = format!(
        "{PY_VALUES}
a = np.load(sys.argv[1], mmap_mode='r+')
want = values((3, 4), '<f8')
want[2, 0] = 100.0
assert isinstance(a, np.memmap), type(a)
assert a.dtype == np.float64 and a.shape == (3, 4), (a.dtype, a.shape)
assert np.array_equal(a, want), a
a[1, :] = -1.0
a.flush()
"
    );
    python(&script, &[&array.worker_path()]);
    assert_eq!(array.read_rows::<f64>(1..2).unwrap(), [-1.0; 4]);
    assert_eq!(
        array.read_rows::<f64>(2..3).unwrap()[..2],
        [100.0, value(9, "<f8")]
    );
}

#[test]
fn numpy_reads_shared_arrays_of_every_element_type_through_proc() {
    if !numpy_available("numpy_reads_shared_arrays_of_every_element_type") {
        return;
    }
    fn filled<T: Element>(name: &str, fill: impl Fn(usize) -> T) -> SharedArray {
        let mut array = SharedArray::create(name, T::DTYPE, &[2, 3]).unwrap();
        let values: Vec<T> = (0..6).map(fill).collect();
        array.write(0, &values).unwrap();
        array
    }
    let arrays = [
        ("<f8", filled("f8", |i| value(i, "<f8"))),
        ("<f4", filled("f4", |i| value(i, "<f4") as f32)),
        ("<i8", filled("i8", |i| value(i, "<i8") as i64)),
        ("<i4", filled("i4", |i| value(i, "<i4") as i32)),
        ("|u1", filled("u1", |i| i as u8)),
    ];
    // The descriptors stay close-on-exec: Python reaches them through this
    // process's /proc entry instead of inheriting them.
    let specs: Vec<String> = arrays
        .iter()
        .map(|(descr, array)| {
            let path = format!("/proc/{}/fd/{}", std::process::id(), array.raw_fd());
            assert!(Path::new(&path).exists());
            format!("{path};{descr}")
        })
        .collect();
    let script = format!(
        "{PY_VALUES}
for spec in sys.argv[1:]:
    path, descr = spec.split(';')
    a = np.load(path)
    assert np.array_equal(a, values((2, 3), descr)) and a.dtype == np.dtype(descr), (descr, a)
    print('ok', descr)
"
    );
    let args: Vec<&str> = specs.iter().map(String::as_str).collect();
    let stdout = python(&script, &args);
    assert_eq!(stdout.lines().count(), arrays.len(), "{stdout}");
}
