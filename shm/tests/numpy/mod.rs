//! Running numpy from a test: whether it is there, and a script through it.
//!
//! Where numpy cannot be imported the tests print a notice and pass, unless
//! `PROCPOOL_REQUIRE_NUMPY=1` (as in CI), which turns a missing numpy into a
//! failure.
#![allow(dead_code)]

use std::process::Command;

/// Whether python3 can import numpy; panics instead of skipping when
/// `PROCPOOL_REQUIRE_NUMPY=1`.
pub fn numpy_available(test: &str) -> bool {
    let imported = Command::new("python3")
        .args(["-c", "import numpy"])
        .status()
        .is_ok_and(|status| status.success());
    if imported {
        return true;
    }
    if std::env::var("PROCPOOL_REQUIRE_NUMPY").as_deref() == Ok("1") {
        panic!("PROCPOOL_REQUIRE_NUMPY=1 but python3 cannot import numpy: pip install numpy");
    }
    // Written to stderr directly, past the test harness's output capture, so
    // the skip shows in a normal `cargo test` run.
    let notice = format!(
        "SKIPPED {test}: python3 cannot import numpy (PROCPOOL_REQUIRE_NUMPY=1 fails instead)\n"
    );
    std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes()).ok();
    false
}

/// Runs `script` with `python3 -c`, passing `args`; panics with its stderr
/// unless it exits 0. Returns its stdout.
pub fn python(script: &str, args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python3 failed ({}):\n{stderr}",
        output.status
    );
    String::from_utf8(output.stdout).expect("python prints UTF-8")
}
