//! `procpool run matmul` end to end: results against numpy for awkward shapes, dtypes,
//! byte orders and layouts; every start mode and the Python worker; clear usage errors
//! for bad inputs; the same C under `--chaos`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Runs the real binary in `dir` and returns what it did.
fn procpool(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_procpool"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("procpool runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a successful run and returns its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = procpool(dir, args);
    assert!(
        out.status.success(),
        "procpool {args:?} exited {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// True when python3 with numpy is here; otherwise says SKIPPED, or fails under
/// `PROCPOOL_REQUIRE_NUMPY=1` (CI installs numpy, so a skip there would hide a bug).
fn have_numpy(test: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        assert!(
            std::env::var("PROCPOOL_REQUIRE_NUMPY").as_deref() != Ok("1"),
            "{test}: python3 with numpy is required (PROCPOOL_REQUIRE_NUMPY=1)"
        );
        eprintln!("SKIPPED {test}: python3 with numpy not found");
    }
    found
}

/// Runs a Python script in `dir` and asserts it succeeded.
fn python(dir: &Path, script: &str) {
    let out = Command::new("python3")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A `.npy` image written by hand, so that broken files need no numpy.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    bytes
}

fn ones(shape: &[usize]) -> Vec<u8> {
    1.0f64.to_le_bytes().repeat(shape.iter().product())
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}

/// One product to compute: A is m×k, B is k×n, stored as `dtype` in `order`.
struct Case {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    dtype: &'static str,
    fortran: bool,
    block: usize,
    procs: usize,
    start: &'static str,
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    Case { name: "f8", m: 37, k: 53, n: 29, dtype: "<f8", fortran: false, block: 8, procs: 1, start: "spawn" },
    Case { name: "f4_fortran", m: 100, k: 7, n: 130, dtype: "<f4", fortran: true, block: 33, procs: 2, start: "fork" },
    Case { name: "i4", m: 61, k: 64, n: 3, dtype: "<i4", fortran: false, block: 10, procs: 8, start: "spawn" },
    Case { name: "f8_big_endian", m: 129, k: 257, n: 65, dtype: ">f8", fortran: false, block: 16, procs: 2, start: "spawn" },
    Case { name: "i4_big_endian_fortran", m: 1, k: 5, n: 1, dtype: ">i4", fortran: true, block: 4, procs: 8, start: "fork" },
    Case { name: "i8_tall", m: 300, k: 40, n: 20, dtype: "<i8", fortran: false, block: 7, procs: 2, start: "fork" },
];

/// Writes a_NAME.npy and b_NAME.npy for every case with numpy.
fn write_inputs(dir: &Path, cases: &[&Case]) {
    let mut script = String::from("import numpy as np\nrng = np.random.default_rng(7)\n");
    for case in cases {
        let order = if case.fortran { "F" } else { "C" };
        for (which, rows, cols) in [("a", case.m, case.k), ("b", case.k, case.n)] {
            script.push_str(&format!(
                "x = rng.integers(-9, 10, ({rows}, {cols})) if np.dtype('{dtype}').kind == 'i' \
                 else rng.standard_normal(({rows}, {cols}))\n\
                 np.save('{which}_{name}.npy', np.asarray(x, dtype='{dtype}', order='{order}'))\n",
                dtype = case.dtype,
                name = case.name,
            ));
        }
    }
    python(dir, &script);
}

/// Asserts that c_NAME.npy is A·B (in f8, C order) for every case, by numpy.
fn check_outputs(dir: &Path, cases: &[&Case]) {
    let names: Vec<String> = cases.iter().map(|c| format!("'{}'", c.name)).collect();
    python(
        dir,
        &format!(
            "import numpy as np\n\
             for name in [{}]:\n\
             \x20   a, b = np.load(f'a_{{name}}.npy'), np.load(f'b_{{name}}.npy')\n\
             \x20   c = np.load(f'c_{{name}}.npy')\n\
             \x20   want = a.astype('f8') @ b.astype('f8')\n\
             \x20   assert c.dtype == np.dtype('<f8') and c.flags.c_contiguous, (name, c.dtype)\n\
             \x20   assert c.shape == want.shape, (name, c.shape, want.shape)\n\
             \x20   scale = np.abs(a.astype('f8')) @ np.abs(b.astype('f8')) + 1\n\
             \x20   err = np.max(np.abs(c - want) / scale)\n\
             \x20   assert err < 1e-13, (name, err)\n",
            names.join(", ")
        ),
    );
}

fn run_case(dir: &Path, case: &Case, child: Option<&str>) {
    let (a, b, c) = (
        format!("a_{}.npy", case.name),
        format!("b_{}.npy", case.name),
        format!("c_{}.npy", case.name),
    );
    let (block, procs) = (case.block.to_string(), case.procs.to_string());
    let mut args = vec![
        "run", "matmul", "--a", &a, "--b", &b, "--out", &c, "--check", "--block", &block,
        "--procs", &procs, "--start", case.start, "--quiet",
    ];
    if let Some(child) = child {
        args.extend(["--child", child]);
    }
    let stdout = ok(dir, &args);
    let shape = format!("{}x{} · {}x{}", case.m, case.k, case.k, case.n);
    assert!(stdout.contains(&shape), "{}: {stdout}", case.name);
    assert!(stdout.contains("check passed"), "{}: {stdout}", case.name);
}

#[test]
fn awkward_shapes_dtypes_and_layouts_match_numpy() {
    if !have_numpy("awkward_shapes_dtypes_and_layouts_match_numpy") {
        return;
    }
    let dir = temp();
    let cases: Vec<&Case> = CASES.iter().collect();
    write_inputs(dir.path(), &cases);
    for case in &cases {
        run_case(dir.path(), case, None);
    }
    check_outputs(dir.path(), &cases);
}

#[test]
fn every_start_mode_and_pool_size_gives_the_same_bytes() {
    let dir = temp();
    let mut first: Option<Vec<u8>> = None;
    for (procs, start) in [("1", "spawn"), ("2", "fork"), ("8", "spawn"), ("8", "fork")] {
        let out = format!("c_{procs}_{start}.npy");
        ok(
            dir.path(),
            &[
                "run", "matmul", "--n", "203", "--block", "17", "--procs", procs, "--start", start,
                "--out", &out, "--check", "--quiet",
            ],
        );
        let bytes = std::fs::read(dir.path().join(&out)).expect("C was written");
        match &first {
            None => first = Some(bytes),
            Some(first) => assert!(*first == bytes, "{procs} {start} wrote a different C"),
        }
    }
}

#[test]
fn the_python_worker_computes_the_same_product() {
    if !have_numpy("the_python_worker_computes_the_same_product") {
        return;
    }
    let worker: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "examples",
        "python",
        "matmul_worker.py",
    ]
    .iter()
    .collect();
    let child = format!("python3 {}", worker.display());
    let dir = temp();
    let cases: Vec<&Case> = CASES.iter().filter(|c| c.start == "spawn").collect();
    write_inputs(dir.path(), &cases);
    for case in &cases {
        run_case(dir.path(), case, Some(&child));
    }
    check_outputs(dir.path(), &cases);
}

/// Asserts exit 2 with one clear line on stderr that contains each of `words`.
fn usage_error(dir: &Path, args: &[&str], words: &[&str]) {
    let out = procpool(dir, args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    for word in words {
        assert!(
            stderr.contains(word),
            "{args:?}: expected {word:?} in {stderr}"
        );
    }
}

#[test]
fn a_shape_mismatch_is_a_usage_error() {
    let dir = temp();
    std::fs::write(
        dir.path().join("a.npy"),
        npy("<f8", &[3, 4], &ones(&[3, 4])),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.npy"),
        npy("<f8", &[5, 2], &ones(&[5, 2])),
    )
    .unwrap();
    usage_error(
        dir.path(),
        &["run", "matmul", "--a", "a.npy", "--b", "b.npy"],
        &["cannot multiply A (3x4) by B (5x2)"],
    );
}

#[test]
fn broken_npy_files_are_usage_errors_naming_the_problem() {
    let dir = temp();
    let good = npy("<f8", &[3, 4], &ones(&[3, 4]));
    std::fs::write(
        dir.path().join("b.npy"),
        npy("<f8", &[4, 2], &ones(&[4, 2])),
    )
    .unwrap();
    let files: [(&str, Vec<u8>, &str); 8] = [
        ("cut_header.npy", good[..40].to_vec(), "header is cut short"),
        (
            "short_data.npy",
            good[..good.len() - 8].to_vec(),
            "truncated",
        ),
        ("object.npy", npy("|O", &[1, 2], &[0; 16]), "Python object"),
        ("complex.npy", npy("<c16", &[2, 2], &[0; 64]), "complex"),
        (
            "not_npy.npy",
            b"hello, not an array".to_vec(),
            "not a .npy file",
        ),
        ("empty.npy", Vec::new(), "empty.npy"),
        ("vector.npy", npy("<f8", &[4], &ones(&[4])), "2-D"),
        (
            "bad_header.npy",
            npy("<f8", &[3, 4], &[])[..20].to_vec(),
            "bad_header.npy",
        ),
    ];
    for (name, bytes, words) in &files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        usage_error(
            dir.path(),
            &["run", "matmul", "--a", name, "--b", "b.npy"],
            &[name, words],
        );
    }
    std::fs::create_dir(dir.path().join("folder.npy")).unwrap();
    usage_error(
        dir.path(),
        &["run", "matmul", "--a", "folder.npy", "--b", "b.npy"],
        &["folder.npy", "directory"],
    );
    usage_error(
        dir.path(),
        &["run", "matmul", "--a", "b.npy", "--b", "missing.npy"],
        &["missing.npy", "No such file"],
    );
}

/// Killing workers mid-run must not change a single byte of C: retried row blocks are
/// rewritten whole by the same deterministic kernel.
#[test]
fn chaos_kills_workers_and_c_stays_byte_identical() {
    let dir = temp();
    // About 2 s of compute on two cores, so --chaos 5 kills several workers mid-task.
    let size = [
        "run", "matmul", "--n", "3072", "--block", "32", "--procs", "2", "--json",
    ];
    ok(dir.path(), &[&size[..], &["--out", "calm.npy"]].concat());
    let stdout = ok(
        dir.path(),
        &[
            &size[..],
            &["--out", "chaos.npy", "--chaos", "5", "--check"],
        ]
        .concat(),
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["end"], "completed", "{report}");
    assert_eq!(report["tasks_ok"], report["tasks_total"], "{report}");
    assert!(report["chaos_kills"].as_u64() > Some(0), "{report}");
    assert!(report["retries"].as_u64() > Some(0), "{report}");
    assert_eq!(report["result"]["checked"], true, "{report}");
    let calm = std::fs::read(dir.path().join("calm.npy")).unwrap();
    let chaos = std::fs::read(dir.path().join("chaos.npy")).unwrap();
    assert_eq!(calm.len(), chaos.len());
    assert!(calm == chaos, "C differs after chaos");
}

/// The built-in worker says where its time went, per task; the run turns that into
/// the kernel's GFLOP/s per worker. A worker that answers bare row counts gets no
/// kernel figure rather than a made-up one.
#[test]
fn the_kernel_rate_comes_from_the_workers_own_timings() {
    let dir = temp();
    let stdout = ok(
        dir.path(),
        &[
            "run", "matmul", "--n", "256", "--block", "32", "--procs", "2", "--json",
        ],
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let result = &report["result"];
    let (kernel, prefault) = (
        result["kernel_s"].as_f64().expect("kernel_s"),
        result["prefault_s"].as_f64().expect("prefault_s"),
    );
    let wall = report["wall_s"].as_f64().unwrap();
    assert!(kernel > 0.0 && prefault >= 0.0, "{result}");
    // The tasks ran inside the pool's wall, on at most two workers at a time.
    assert!(kernel + prefault <= 2.0 * wall, "{report}");
    let rate = result["kernel_gflops_per_worker"].as_f64().unwrap();
    let expected = 2.0 * 256f64.powi(3) / kernel / 1e9;
    assert!((rate - expected).abs() <= 1e-9 * expected, "{result}");

    let counting_worker = "import json, sys\n\
        print(json.dumps({'type': 'ready'}), flush=True)\n\
        for line in sys.stdin:\n\
        \x20   m = json.loads(line)\n\
        \x20   if m['type'] == 'stop': break\n\
        \x20   rows = m['input']['hi'] - m['input']['lo']\n\
        \x20   print(json.dumps({'type': 'result', 'id': m['id'], 'output': rows}), flush=True)\n";
    std::fs::write(dir.path().join("count.py"), counting_worker).unwrap();
    let stdout = ok(
        dir.path(),
        &[
            "run",
            "matmul",
            "--n",
            "64",
            "--block",
            "16",
            "--json",
            "--child",
            "python3 count.py",
        ],
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["tasks_ok"], 4, "{report}");
    assert!(
        report["result"]["kernel_gflops_per_worker"].is_null(),
        "{report}"
    );
    assert!(report["result"]["kernel_s"].is_null(), "{report}");
}

#[test]
fn an_out_path_that_cannot_be_written_is_refused_before_any_work() {
    for (args, says) in [
        (
            vec!["run", "matmul", "--n", "64", "--out", "no/such/dir/c.npy"],
            "--out no/such/dir/c.npy: cannot create a file in no/such/dir",
        ),
        (
            vec![
                "run",
                "mandelbrot",
                "--width",
                "64",
                "--height",
                "64",
                "--out",
                ".",
            ],
            "--out . is a directory",
        ),
        (
            vec!["run", "colmeans", "--out", "no/such/dir/means.npy"],
            "cannot create a file in no/such/dir",
        ),
    ] {
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = procpool(dir.path(), &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{stderr}");
        assert!(stderr.contains(says), "{args:?}\n{stderr}");
        assert!(!stderr.contains("tasks:"), "no pool was started\n{stderr}");
    }
}
