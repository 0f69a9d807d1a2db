//! What a worker learns from its environment (`PROCPOOL_*` variables).

use std::collections::BTreeMap;

use std::path::Path;

use procpool_shm::{SharedArray, ShmError};
use serde::{Deserialize, Serialize};

/// Set to the protocol version in every worker's environment.
pub const ENV_PROTOCOL: &str = "PROCPOOL_PROTOCOL";
/// The worker's slot, `0..procs`.
pub const ENV_WORKER: &str = "PROCPOOL_WORKER";
/// The pool size.
pub const ENV_PROCS: &str = "PROCPOOL_PROCS";
/// JSON object: array name → [`ArraySpec`].
pub const ENV_ARRAYS: &str = "PROCPOOL_ARRAYS";

/// How a worker finds one shared array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArraySpec {
    /// A path that opens as a complete `.npy` file.
    pub path: String,
    /// numpy dtype string, e.g. `"<f8"`.
    pub dtype: String,
    /// The array's shape.
    pub shape: Vec<usize>,
    /// Whether this worker may write to it.
    pub writable: bool,
}

impl ArraySpec {
    /// Describes `array` to workers, which may write to it if `writable`.
    pub fn of(array: &SharedArray, writable: bool) -> ArraySpec {
        ArraySpec {
            path: array.worker_path(),
            dtype: array.dtype().descr(),
            shape: array.shape().to_vec(),
            writable,
        }
    }

    /// Maps the array this spec describes (what a worker does with it).
    pub fn open(&self) -> Result<SharedArray, ShmError> {
        SharedArray::open(Path::new(&self.path), self.writable)
    }
}

/// The worker's view of the pool, read from its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerEnv {
    /// This worker's slot, `0..procs`.
    pub index: usize,
    /// How many workers the pool has.
    pub procs: usize,
    /// The shared arrays of the workload, by name.
    pub arrays: BTreeMap<String, ArraySpec>,
}

/// A `PROCPOOL_*` variable that is present but unreadable.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?} is not valid: {reason}")]
pub struct EnvError {
    name: &'static str,
    value: String,
    reason: String,
}

impl WorkerEnv {
    /// Opens the shared array called `name`, or says which arrays there are.
    pub fn open_array(&self, name: &str) -> Result<SharedArray, String> {
        let spec = self.arrays.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.arrays.keys().map(String::as_str).collect();
            format!(
                "no shared array {name:?} in {ENV_ARRAYS} (it has {known:?}); is this worker run by procpool?"
            )
        })?;
        spec.open()
            .map_err(|err| format!("shared array {name:?}: {err}"))
    }

    /// Reads the worker environment; absent variables take their defaults (slot 0 of 1, no arrays).
    pub fn from_env() -> Result<WorkerEnv, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<WorkerEnv, EnvError> {
        let parse_usize = |name: &'static str, default: usize| match lookup(name) {
            None => Ok(default),
            Some(value) => value
                .parse()
                .map_err(|err: std::num::ParseIntError| EnvError {
                    name,
                    reason: err.to_string(),
                    value,
                }),
        };
        let arrays = match lookup(ENV_ARRAYS) {
            None => BTreeMap::new(),
            Some(value) => serde_json::from_str(&value).map_err(|err| EnvError {
                name: ENV_ARRAYS,
                reason: err.to_string(),
                value,
            })?,
        };
        Ok(WorkerEnv {
            index: parse_usize(ENV_WORKER, 0)?,
            procs: parse_usize(ENV_PROCS, 1)?,
            arrays,
        })
    }

    /// The environment variables that describe this view to a worker process.
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            (ENV_PROTOCOL, crate::PROTOCOL_VERSION.to_string()),
            (ENV_WORKER, self.index.to_string()),
            (ENV_PROCS, self.procs.to_string()),
        ];
        if !self.arrays.is_empty() {
            let arrays = serde_json::to_string(&self.arrays).expect("array specs always serialise");
            vars.push((ENV_ARRAYS, arrays));
        }
        vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_variables() {
        let mut arrays = BTreeMap::new();
        arrays.insert(
            "a".to_string(),
            ArraySpec {
                path: "/proc/self/fd/5".into(),
                dtype: "<f8".into(),
                shape: vec![2, 3],
                writable: false,
            },
        );
        let env = WorkerEnv {
            index: 3,
            procs: 8,
            arrays,
        };
        let vars: BTreeMap<_, _> = env.to_vars().into_iter().collect();
        assert_eq!(vars[ENV_PROTOCOL], "1");
        let back = WorkerEnv::from_lookup(|name| vars.get(name).cloned()).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn a_bad_variable_is_named_in_the_error() {
        let err = WorkerEnv::from_lookup(|name| (name == ENV_PROCS).then(|| "many".to_string()))
            .unwrap_err();
        assert!(
            err.to_string().starts_with("PROCPOOL_PROCS=\"many\""),
            "{err}"
        );
    }
}
