//! A procpool worker in Rust on `procpool_child::serve`: doubles numbers, echoes
//! anything else (so it answers the `noop` workload's `null` inputs with `null`).
//!
//! ```sh
//! cargo build --example rust_worker
//! procpool run noop --tasks 1000 --child target/debug/examples/rust_worker
//! ```

use serde_json::{json, Value};

fn main() {
    let result = procpool_child::serve(|task| {
        Ok(match &task.input {
            Value::Number(n) => match n.as_i64().and_then(|i| i.checked_mul(2)) {
                Some(doubled) => json!(doubled),
                None => json!(n.as_f64().map(|x| x * 2.0)),
            },
            other => other.clone(),
        })
    });
    if let Err(err) = result {
        // The supervisor went away mid-message; there is no one left to answer.
        eprintln!("rust_worker: lost the supervisor's pipes: {err}");
        std::process::exit(1);
    }
}
