//! `procpool run colmeans` and `procpool gen array` from the real binary: means against
//! numpy and against an independent pass in Rust, raw input, and every bad input the
//! workload must refuse with one line (exit 2) or report (exit 1), never a panic.

mod util;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use procpool_shm::{read_npy_f64, NpyHeader};
use serde_json::Value;
use util::{numpy_available, Output, Procpool};

/// `procpool run colmeans --json --quiet ARGS`, expected to succeed; its means.
fn means_of(dir: &Path, args: &[&str]) -> Vec<f64> {
    let mut all = vec!["run", "colmeans", "--json", "--quiet"];
    all.extend_from_slice(args);
    let output = Procpool::new(&all).in_dir(dir).run(0);
    let report = output.json();
    assert_eq!(report["tasks_ok"], report["tasks_total"], "{output}");
    assert!(report["tasks_total"].as_u64().unwrap() >= 1, "{output}");
    report["result"]["means"]
        .as_array()
        .unwrap_or_else(|| panic!("no result.means\n{output}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (c, (g, w)) in got.iter().zip(want).enumerate() {
        let scale = g.abs().max(w.abs()).max(f64::MIN_POSITIVE);
        assert!(
            (g - w).abs() <= 1e-12 * scale,
            "{what}: column {c}: {g} vs {w} (relative {:e})",
            (g - w).abs() / scale
        );
    }
}

/// Means by the test itself: the whole file through shm's reader, Kahan sums.
fn reference_means(path: &Path) -> Vec<f64> {
    let (shape, values) = read_npy_f64(path).unwrap();
    let cols = if shape.len() == 2 { shape[1] } else { 1 };
    let rows = values.len() / cols;
    (0..cols)
        .map(|c| {
            let (mut sum, mut comp) = (0.0f64, 0.0f64);
            for r in 0..rows {
                let y = values[r * cols + c] - comp;
                let t = sum + y;
                comp = (t - sum) - y;
                sum = t;
            }
            sum / rows as f64
        })
        .collect()
}

fn gen(dir: &Path, name: &str, extra: &[&str]) {
    let mut args = vec!["gen", "array"];
    args.extend_from_slice(extra);
    args.push(name);
    let output = Procpool::new(&args).in_dir(dir).run(0);
    assert_eq!(output.stderr, "", "no progress line off a terminal");
}

/// An error run: the exit code, and exactly one line on stderr, no panic.
fn refused(dir: &Path, args: &[&str], code: i32, needle: &str) -> Output {
    let mut all = vec!["run", "colmeans"];
    all.extend_from_slice(args);
    let output = Procpool::new(&all).in_dir(dir).run(code);
    assert!(!output.stderr.contains("panicked"), "{output}");
    assert!(
        output.stderr.contains(needle),
        "wanted {needle:?}\n{output}"
    );
    if code == 2 {
        assert_eq!(output.stderr.lines().count(), 1, "one line\n{output}");
        assert_eq!(output.stdout, "", "nothing ran\n{output}");
    }
    output
}

#[test]
fn means_match_numpy_for_every_dtype_byte_order_and_layout() {
    if !numpy_available("means_match_numpy_for_every_dtype_byte_order_and_layout") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import json, numpy as np
rng = np.random.default_rng(7)
expected = {}
base = rng.normal(size=(2503, 5)) * 1000 + np.arange(1, 6) * 37.5
for kind in ["f8", "f4", "i8", "i4"]:
    for order in "<>":
        for layout in "CF":
            a = base.astype(order + kind)
            if kind == "i8":
                a = a * 10**9
            a = np.asfortranarray(a) if layout == "F" else np.ascontiguousarray(a)
            name = f"{kind}{'le' if order == '<' else 'be'}{layout}.npy"
            np.save(name, a)
            expected[name] = a.astype(np.float64).mean(axis=0).tolist()
one = rng.normal(size=40001) + 3
np.save("one.npy", one)
expected["one.npy"] = [float(one.astype(np.float64).mean(axis=0))]
json.dump(expected, open("expected.json", "w"))
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("expected.json")).unwrap())
            .unwrap();
    let expected = expected.as_object().unwrap();
    assert_eq!(expected.len(), 17);
    for (name, want) in expected {
        let want: Vec<f64> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got = means_of(dir.path(), &["--file", name, "--chunk-rows", "300"]);
        assert_close(&got, &want, name);
    }
}

#[test]
fn means_match_an_independent_pass_and_out_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, args) in [
        ("c.npy", &["--rows", "30011", "--cols", "7"][..]),
        ("f.npy", &["--rows", "30011", "--cols", "7", "--fortran"]),
        (
            "be.npy",
            &["--rows", "5000", "--cols", "3", "--dtype", ">f4"],
        ),
        (
            "i8.npy",
            &[
                "--rows",
                "5000",
                "--cols",
                "9",
                "--dtype",
                "i8",
                "--fortran",
            ],
        ),
        (
            "i4.npy",
            &["--rows", "3", "--cols", "20000", "--dtype", ">i4"],
        ),
    ] {
        gen(d, name, args);
        let want = reference_means(&d.join(name));
        for chunk in ["1", "977", "100000"] {
            let got = means_of(
                d,
                &[
                    "--file",
                    name,
                    "--chunk-rows",
                    chunk,
                    "--out",
                    "m.npy",
                    "--check",
                ],
            );
            assert_close(&got, &want, &format!("{name} --chunk-rows {chunk}"));
            let written = read_npy_f64(&d.join("m.npy")).unwrap();
            assert!(
                written == (vec![got.len()], got),
                "{name}: --out differs from result.means"
            );
        }
    }
    // The same seed gives the same matrix in either order.
    assert_close(
        &reference_means(&d.join("c.npy")),
        &reference_means(&d.join("f.npy")),
        "C vs Fortran",
    );
    gen(d, "c2.npy", &["--rows", "30011", "--cols", "7"]);
    assert_eq!(
        std::fs::read(d.join("c.npy")).unwrap(),
        std::fs::read(d.join("c2.npy")).unwrap(),
        "gen is deterministic"
    );
}

/// The data of a .npy file without its header: a raw input.
fn strip_header(dir: &Path, npy: &str, raw: &str) {
    let bytes = std::fs::read(dir.join(npy)).unwrap();
    let header = NpyHeader::parse(&bytes).unwrap();
    std::fs::write(dir.join(raw), &bytes[header.data_offset..]).unwrap();
}

#[test]
fn raw_files_with_dtype_and_cols() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gen(
        d,
        "c.npy",
        &["--rows", "10007", "--cols", "6", "--dtype", ">i8"],
    );
    gen(
        d,
        "f.npy",
        &[
            "--rows",
            "10007",
            "--cols",
            "6",
            "--dtype",
            "f4",
            "--fortran",
        ],
    );
    strip_header(d, "c.npy", "c.bin");
    strip_header(d, "f.npy", "f.bin");
    let got = means_of(d, &["--file", "c.bin", "--dtype", ">i8", "--cols", "6"]);
    assert_close(&got, &reference_means(&d.join("c.npy")), "raw >i8");
    let got = means_of(
        d,
        &[
            "--file",
            "f.bin",
            "--dtype",
            "f4",
            "--cols",
            "6",
            "--fortran",
        ],
    );
    assert_close(&got, &reference_means(&d.join("f.npy")), "raw f4 Fortran");

    // 10007 rows × 6 cols × 8 bytes, plus 5 stray bytes.
    let mut bytes = std::fs::read(d.join("c.bin")).unwrap();
    bytes.extend_from_slice(b"extra");
    std::fs::write(d.join("odd.bin"), bytes).unwrap();
    refused(
        d,
        &["--file", "odd.bin", "--dtype", "f8", "--cols", "6"],
        2,
        "not a whole number of rows of 6 × <f8 (48 bytes each; 5 bytes left over)",
    );
}

#[test]
fn bad_inputs_are_refused_in_one_line_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gen(d, "a.npy", &["--rows", "1000", "--cols", "4"]);
    let bytes = std::fs::read(d.join("a.npy")).unwrap();
    std::fs::write(d.join("short.npy"), &bytes[..bytes.len() - 100]).unwrap();
    refused(d, &["--file", "short.npy"], 2, "the file is truncated");

    std::fs::create_dir(d.join("data.npy")).unwrap();
    refused(d, &["--file", "data.npy"], 2, "is a directory");
    refused(
        d,
        &["--file", "missing.npy"],
        2,
        "missing.npy: cannot read the input file",
    );

    for (descr, what) in [
        ("'<c16'", "complex"),
        ("'|O'", "Python object"),
        ("[('a', '<f8'), ('b', '<i4')]", "structured"),
    ] {
        let dict = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (2, 2), }}");
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        let padded = format!("{dict:<117}\n");
        file.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        file.extend_from_slice(padded.as_bytes());
        file.extend_from_slice(&[0u8; 64]);
        std::fs::write(d.join("odd.npy"), file).unwrap();
        refused(d, &["--file", "odd.npy"], 2, what);
    }

    gen(d, "empty.npy", &["--rows", "0", "--cols", "4"]);
    refused(d, &["--file", "empty.npy"], 2, "0 rows");
    refused(
        d,
        &["--file", "a.npy", "--chunk-rows", "0"],
        2,
        "--chunk-rows",
    );
    refused(
        d,
        &["--file", "a.npy", "--dtype", "f8", "--cols", "4"],
        2,
        "a.npy: is a .npy file (it starts with the .npy magic); drop --dtype and --cols",
    );
}

/// Runs colmeans on a file that is cut short while every worker holds a mapped tile,
/// with `extra` arguments; the run fails (exit 1).
fn truncated_mid_run(extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gen(d, "a.npy", &["--rows", "4000", "--cols", "64"]);
    let mut args = vec![
        "run",
        "colmeans",
        "--file",
        "a.npy",
        "--procs",
        "2",
        "--chunk-rows",
        "100",
        "--task-delay-ms",
        "150",
    ];
    args.extend_from_slice(extra);
    let running = Procpool::new(&args)
        .in_dir(d)
        .timeout(Duration::from_secs(60))
        .spawn();
    std::thread::sleep(Duration::from_millis(800));
    // Cut it to the header and a page: tiles mapped and waiting now fault (SIGBUS).
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("a.npy"))
        .unwrap();
    file.set_len(4096).unwrap();
    running.wait(1)
}

#[test]
fn a_file_truncated_mid_run_fails_the_run_not_the_supervisor() {
    let output = truncated_mid_run(&[]);
    assert!(!output.stderr.contains("panicked"), "{output}");
    assert!(output.stderr.contains("killed by SIGBUS"), "{output}");
    assert!(
        output
            .stderr
            .contains("changed size during the run (was 2048128 bytes, now 4096 bytes)"),
        "{output}"
    );
    assert!(
        output.stdout.contains("tasks: "),
        "the report is printed\n{output}"
    );
}

#[test]
fn a_tile_lost_to_sigbus_names_sigbus_as_the_cause() {
    // One attempt: the first tile to fail is one whose worker died of SIGBUS, not one
    // a fresh worker refused because the file is now too short.
    let output = truncated_mid_run(&["--max-attempts", "1"]);
    assert!(!output.stderr.contains("panicked"), "{output}");
    assert!(
        output
            .stderr
            .contains("cannot be read (the workers reading them died of SIGBUS)"),
        "{output}"
    );
}

#[test]
fn without_file_a_temporary_dataset_is_made_verified_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let output = Procpool::new([
        "run",
        "colmeans",
        "--gen-rows",
        "200000",
        "--gen-cols",
        "5",
        "--quiet",
    ])
    .env("TMPDIR", dir.path())
    .run(0);
    assert!(
        output.stdout.contains("means of 5 columns × 200000 rows"),
        "{output}"
    );
    assert!(output.stdout.contains("time: generate "), "{output}");
    assert!(output.stdout.contains("verify "), "{output}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// The generated dataset has no name from the moment it is created: the run reads it
/// through inherited descriptors, so even `kill -9` of the supervisor mid-run leaves
/// nothing in TMPDIR (and its workers follow it).
#[test]
fn the_temporary_dataset_never_has_a_name_even_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let running = Procpool::new([
        "run",
        "colmeans",
        "--gen-rows",
        "4000000",
        "--gen-cols",
        "8",
        "--chunk-rows",
        "20000",
        "--procs",
        "2",
    ])
    .env("TMPDIR", dir.path())
    .spawn();
    let workers = running.busy_workers(2);
    let listed: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(listed.is_empty(), "named while running: {listed:?}");
    running.signal(nix::sys::signal::Signal::SIGKILL);
    let output = running.finish();
    assert_eq!(output.code, None, "killed by a signal\n{output}");
    util::assert_no_orphans(&workers, Duration::from_secs(10));
    let listed: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(listed.is_empty(), "left behind: {listed:?}");
}
