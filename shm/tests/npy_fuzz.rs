//! A seeded mutation fuzzer over numpy-written `.npy` files: every dtype procpool
//! reads in both byte orders, C and Fortran order, format versions 1.0, 2.0 and
//! 3.0, and shapes with zero dimensions, from 0-D to 3-D. Each mutant (byte flips,
//! truncations, edits of the shape, descr, fortran_order, header length, magic
//! and version) goes through every reader in this crate: each must answer Ok or
//! an error, never panic, and the readers must agree on which.
//!
//! A failure names the seed file and the mutations that made the input, so it
//! can be replayed: the mutator is deterministic.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use procpool_shm::{
    read_npy_f64, DType, Element, ElementKind, FileWindow, NpyHeader, SharedArray, ShmError,
};

mod npy_mutations;
mod numpy;
use npy_mutations::{mutate, Rng, Seed, DESCRS, SEED_SCRIPT};
use numpy::{numpy_available, python};

/// Mutants per seed file: 270 seeds, so about 6,500 inputs in all (a few
/// seconds).
const MUTANTS_PER_SEED: usize = 24;

fn seeds() -> Vec<Seed> {
    let shapes: [&[usize]; 8] = [
        &[],
        &[0],
        &[5],
        &[3, 0],
        &[0, 3],
        &[4, 3],
        &[2, 3, 4],
        &[1, 1],
    ];
    let mut seeds = Vec::new();
    for descr in DESCRS {
        for version in [1, 2, 3] {
            for shape in shapes {
                for fortran in [false, true] {
                    // numpy writes fortran_order True only where the orders differ:
                    // two dimensions above 1, none 0 (mutants flip it elsewhere).
                    let orders_differ =
                        shape.iter().filter(|&&dim| dim > 1).count() >= 2 && !shape.contains(&0);
                    if fortran && !orders_differ {
                        continue;
                    }
                    seeds.push(Seed {
                        descr,
                        fortran,
                        version,
                        shape: shape.to_vec(),
                    });
                }
            }
        }
    }
    seeds
}

/// Writes the seeds with numpy into `dir`.
fn write_seeds(dir: &Path, seeds: &[Seed]) {
    let args: Vec<String> = seeds.iter().map(|seed| seed.script_arg(dir)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python(SEED_SCRIPT, &args);
}

#[test]
fn every_mutant_of_every_numpy_file_is_read_or_refused_never_a_panic() {
    if !numpy_available("every_mutant_of_every_numpy_file_is_read_or_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let seeds = seeds();
    write_seeds(dir.path(), &seeds);
    let input = dir.path().join("mutant.npy");
    let mut rng = Rng::new(0x6e70_795f_6675_7a7a);
    let (mut inputs, mut accepted) = (0, 0);
    for seed in &seeds {
        let original = std::fs::read(dir.path().join(seed.file_name())).unwrap();
        // The seeds themselves: read in full, with numpy's values.
        let checked = check(&original, &input);
        let (shape, values) = checked.unwrap_or_else(|err| panic!("{seed:?}: {err}"));
        assert_eq!((&shape, &values), (&seed.shape, &seed.values()), "{seed:?}");
        let header = NpyHeader::parse(&original).unwrap();
        assert_eq!(
            (header.fortran_order, &original[6..8]),
            (seed.fortran, &[seed.version, 0][..]),
            "numpy wrote {seed:?} as asked"
        );
        for _ in 0..MUTANTS_PER_SEED {
            let mutant = mutate(&original, &mut rng);
            let outcome = catch_unwind(AssertUnwindSafe(|| check(&mutant.bytes, &input)));
            match outcome {
                Ok(result) => accepted += usize::from(result.is_ok()),
                Err(_) => panic!(
                    "a reader panicked on {} mutated by {:?} ({} bytes)",
                    seed.file_name(),
                    mutant.how,
                    mutant.bytes.len()
                ),
            }
            inputs += 1;
        }
    }
    // The mutations reach past the first check: a good share of mutants still read.
    assert!(
        accepted > inputs / 20 && accepted < inputs * 19 / 20,
        "{accepted} of {inputs} mutants were accepted"
    );
}

/// Runs `bytes` through every reader, written to `path` where a reader takes a
/// file, and checks that they agree. Returns what `read_npy_f64` read.
fn check(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<f64>), ShmError> {
    let parsed = NpyHeader::parse(bytes);
    let streamed = NpyHeader::read_from(&mut &bytes[..]);
    assert_eq!(
        parsed.as_ref().ok(),
        streamed.as_ref().ok(),
        "parse and read_from disagree"
    );
    let complete = parsed.as_ref().ok().filter(|header| {
        let available = (bytes.len() as u64).saturating_sub(header.data_offset as u64);
        header.check_data_len(available).is_ok()
    });

    std::fs::write(path, bytes).unwrap();
    let read = read_npy_f64(path);
    assert_eq!(
        read.is_ok(),
        complete.is_some(),
        "read_npy_f64 said {read:?} of a header {parsed:?}"
    );
    if let (Ok((shape, values)), Some(header)) = (&read, complete) {
        assert_eq!(shape, &header.shape);
        assert_eq!(values.len(), header.element_count().unwrap());
    }

    check_shared_array(bytes, complete);
    if let Some(header) = complete {
        check_window(path, header, bytes.len() as u64, &read);
    }
    read
}

/// Opens `bytes` as a shared array, as a worker opens the supervisor's, read-only
/// and writable, and copies elements in and out.
fn check_shared_array(bytes: &[u8], complete: Option<&NpyHeader>) {
    let fd = memfd_create("fuzz", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
    let file = std::fs::File::from(fd);
    (&file).write_all(bytes).unwrap();
    fcntl(&file, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).unwrap();
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    for writable in [false, true] {
        let opened = SharedArray::open(Path::new(&path), writable);
        assert_eq!(
            opened.as_ref().ok().map(SharedArray::header),
            complete,
            "SharedArray::open (writable: {writable}) said {opened:?}"
        );
        let Ok(mut array) = opened else {
            continue;
        };
        let data_len = array.header().data_len().unwrap();
        assert_eq!(array.read_bytes().len(), data_len);
        let dtype = array.dtype();
        match (dtype.kind, dtype.size) {
            (ElementKind::Float, 8) => copy_round_trip::<f64>(&mut array),
            (ElementKind::Float, 4) => copy_round_trip::<f32>(&mut array),
            (ElementKind::Int, 8) => copy_round_trip::<i64>(&mut array),
            (ElementKind::Int, 4) => {
                copy_round_trip::<i32>(&mut array);
                let atomics = array.as_atomic_i32();
                assert_eq!(atomics.is_ok(), atomics_expected(&array, writable));
            }
            _ => copy_round_trip::<u8>(&mut array),
        }
    }
}

/// Whether the atomic view must be there: a writable, C-order array of native
/// `i4` whose data is aligned.
fn atomics_expected(array: &SharedArray, writable: bool) -> bool {
    let header = array.header();
    writable
        && header.dtype == i32::DTYPE
        && !(header.fortran_order && header.shape.len() > 1)
        && header.data_offset.is_multiple_of(4)
}

/// Copies every element out, a row and an element too, and writes them back
/// where the mapping is writable; only a foreign byte order or Fortran order may
/// refuse, and then every copy does.
fn copy_round_trip<T: Element + PartialEq + std::fmt::Debug>(array: &mut SharedArray) {
    let typed =
        array.dtype() == T::DTYPE && !(array.header().fortran_order && array.shape().len() > 1);
    let all = array.to_vec::<T>();
    assert_eq!(all.is_ok(), typed, "{all:?}");
    let Ok(all) = all else {
        assert!(array.get::<T>(0).is_err());
        return;
    };
    if let Some(&first) = all.first() {
        assert_eq!(array.get::<T>(0).unwrap(), first);
    }
    assert!(array.get::<T>(all.len()).is_err());
    if array.rows() > 0 {
        let row = array.read_rows::<T>(0..1).unwrap();
        assert_eq!(row, all[..row.len()]);
        assert!(array.read_rows::<T>(0..array.rows() + 1).is_err());
    }
    if array.is_writable() {
        array.write(0, &all).unwrap();
        assert_eq!(array.to_vec::<T>().unwrap(), all);
    } else {
        assert!(array.write(0, &all).is_err());
    }
}

/// Maps the data of a file whose header is complete, as the out-of-core worker
/// does, and decodes it: the same values `read_npy_f64` read (before any
/// reordering from Fortran order).
fn check_window(
    path: &Path,
    header: &NpyHeader,
    file_len: u64,
    read: &Result<(Vec<usize>, Vec<f64>), ShmError>,
) {
    let start = header.data_offset as u64;
    let data = start..start + header.data_len().unwrap() as u64;
    let window = FileWindow::open(path, data).unwrap();
    let mut values = vec![0.0; header.element_count().unwrap()];
    window
        .decode_f64(0..window.len(), header.dtype, &mut values)
        .unwrap();
    let (_, read_values) = read.as_ref().unwrap();
    if !(header.fortran_order && header.shape.len() > 1) {
        assert!(same_numbers(&values, read_values));
    }
    assert!(FileWindow::open(path, start..file_len + 1).is_err());
    let odd = DType {
        size: 3,
        ..DType::F64_LE
    };
    assert!(window
        .decode_f64(0..window.len(), odd, &mut values)
        .is_err());
}

/// Equal, NaNs included (bit flips in the data make them).
fn same_numbers(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}
