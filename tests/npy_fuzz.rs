//! The workloads that open `.npy` files, run for real over numpy-written files and
//! seeded mutants of them: `run colmeans --file F.npy` and `run matmul --a A.npy
//! --b B.npy`. Each run must end with a result (exit 0) or one line of error
//! (exit 1 or 2): never a panic, never a signal. The seeds cover every dtype and
//! byte order, both layouts, format versions 1.0 to 3.0 and shapes with zero
//! dimensions; the reader itself is fuzzed far harder, without the binary, in
//! `shm/tests/npy_fuzz.rs`, whose mutator this shares.

use std::path::Path;
use std::process::Command;

mod util;
use util::{numpy_available, Output, Procpool};

#[path = "../shm/tests/npy_mutations/mod.rs"]
mod npy_mutations;
use npy_mutations::{mutate, Rng, Seed, SEED_SCRIPT};

/// Mutated inputs per workload, on top of the unmutated seeds: a few dozen runs of
/// the binary in all.
const COLMEANS_MUTANTS: usize = 40;
const MATMUL_MUTANTS: usize = 16;

fn seed(descr: &'static str, fortran: bool, version: u8, shape: &[usize]) -> Seed {
    Seed {
        descr,
        fortran,
        version,
        shape: shape.to_vec(),
    }
}

/// Writes `seeds` into `dir` with numpy.
fn write_seeds(dir: &Path, seeds: &[&Seed]) {
    let output = Command::new("python3")
        .arg("-c")
        .arg(SEED_SCRIPT)
        .args(seeds.iter().map(|seed| seed.script_arg(dir)))
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "numpy could not write the seeds:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `procpool ARGS` in `dir` and checks that it ended cleanly; returns the
/// output for more checks.
fn run_cleanly(dir: &Path, args: &[&str], what: &str) -> Output {
    let output = Procpool::new(args).in_dir(dir).spawn().finish();
    let context = format!("{what}: procpool {}\n{output}", args.join(" "));
    assert!(
        !output.stderr.contains("panicked at") && !output.stdout.contains("panicked at"),
        "a panic: {context}"
    );
    match output.code {
        Some(0) => {}
        Some(1 | 2) => {
            let lines: Vec<&str> = output.stderr.lines().collect();
            assert!(
                lines.len() == 1 && lines[0].starts_with("procpool: error: "),
                "not a one-line error: {context}"
            );
        }
        _ => panic!("neither a result nor an error (killed by a signal?): {context}"),
    }
    output
}

#[test]
fn colmeans_ends_every_numpy_file_and_mutant_with_a_result_or_one_line_error() {
    if !numpy_available("colmeans_ends_every_numpy_file_and_mutant") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // (seed, exit code, what stderr must say when refused)
    let cases = [
        // np.save('z.npy', np.zeros((3, 0))): a division by zero in colmeans once.
        (seed("<f8", false, 1, &[3, 0]), 2, "0 columns"),
        (seed("<f8", false, 2, &[0, 3]), 2, "0 rows"),
        (seed("<f4", false, 3, &[0]), 2, "0 rows"),
        (seed(">f4", false, 2, &[6]), 0, ""),
        (seed("<i8", true, 3, &[5, 4]), 0, ""),
        (seed(">i4", false, 1, &[5, 4]), 0, ""),
        (seed("|u1", false, 3, &[5, 4]), 0, ""),
        (seed(">f8", true, 1, &[5, 4]), 0, ""),
        (seed("<i4", true, 2, &[4, 3]), 0, ""),
        (seed(">i8", false, 2, &[1, 1]), 0, ""),
        (seed("<f8", false, 3, &[2, 3, 4]), 2, "needs a 2-D array"),
        (seed(">i4", false, 1, &[]), 2, "needs a 2-D array"),
    ];
    let seeds: Vec<&Seed> = cases.iter().map(|(seed, ..)| seed).collect();
    write_seeds(d, &seeds);
    for (seed, code, refusal) in &cases {
        let name = seed.file_name();
        let output = run_cleanly(d, &["run", "colmeans", "--file", &name], &name);
        assert_eq!(output.code, Some(*code), "{name}\n{output}");
        assert!(output.stderr.contains(refusal), "{name}\n{output}");
    }

    let mut rng = Rng::new(0xc01_3ea5);
    let mut ok = 0;
    for index in 0..COLMEANS_MUTANTS {
        let (seed, ..) = rng.pick(&cases);
        let mutant = mutate(&std::fs::read(d.join(seed.file_name())).unwrap(), &mut rng);
        let name = format!("mutant-{index}.npy");
        std::fs::write(d.join(&name), &mutant.bytes).unwrap();
        let what = format!("{} mutated by {:?}", seed.file_name(), mutant.how);
        let output = run_cleanly(d, &["run", "colmeans", "--file", &name], &what);
        ok += usize::from(output.code == Some(0));
    }
    assert!(
        ok < COLMEANS_MUTANTS,
        "every mutant ran: the mutations miss"
    );
}

#[test]
fn matmul_ends_every_numpy_pair_and_mutant_with_a_result_or_one_line_error() {
    if !numpy_available("matmul_ends_every_numpy_pair_and_mutant") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pairs = [
        (
            seed("<f8", false, 1, &[3, 4]),
            seed(">i4", true, 2, &[4, 2]),
        ),
        (
            seed("<f4", false, 3, &[3, 0]),
            seed("<f8", false, 1, &[0, 2]),
        ),
        (
            seed(">i8", false, 2, &[0, 3]),
            seed("|u1", false, 3, &[3, 2]),
        ),
        (
            seed(">f4", true, 1, &[5, 4]),
            seed("<i8", false, 3, &[4, 5]),
        ),
    ];
    let seeds: Vec<&Seed> = pairs.iter().flat_map(|(a, b)| [a, b]).collect();
    write_seeds(d, &seeds);
    for (a, b) in &pairs {
        let (a, b) = (a.file_name(), b.file_name());
        let args = ["run", "matmul", "--a", &a, "--b", &b, "--check"];
        let output = run_cleanly(d, &args, &format!("{a} · {b}"));
        assert_eq!(output.code, Some(0), "{a} · {b}\n{output}");
    }

    let mut rng = Rng::new(0x3a7_3a7);
    for index in 0..MATMUL_MUTANTS {
        let (a, b) = rng.pick(&pairs);
        // Mutate A or B, and keep the other as numpy wrote it.
        let (mutated, kept) = if index % 2 == 0 { (a, b) } else { (b, a) };
        let mutant = mutate(
            &std::fs::read(d.join(mutated.file_name())).unwrap(),
            &mut rng,
        );
        let name = format!("mutant-{index}.npy");
        std::fs::write(d.join(&name), &mutant.bytes).unwrap();
        let kept = kept.file_name();
        let (a_name, b_name) = if index % 2 == 0 {
            (name.as_str(), kept.as_str())
        } else {
            (kept.as_str(), name.as_str())
        };
        let what = format!("{} mutated by {:?}", mutated.file_name(), mutant.how);
        run_cleanly(
            d,
            &["run", "matmul", "--a", a_name, "--b", b_name, "--check"],
            &what,
        );
    }
}
