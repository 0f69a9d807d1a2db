//! Whether the machine has room for what a run is about to make, checked before it
//! starts: a matrix or image in shared memory against the memory this process may
//! still use, a generated file against the free space of its file system. Past it,
//! the run is refused (exit 2) with what is needed and what is there, unless
//! `--force` says the user knows better (swap, memory that will be freed, a sparse
//! target).

use std::fs::File;

use anyhow::Result;

use crate::run::UsageError;

/// Memory this process may still take: the kernel's `MemAvailable`, lowered to what
/// its memory cgroups' limits leave (v1 or v2, its own cgroup's and every one above).
/// `None`: unknown.
pub fn memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())?
        * 1024;
    Some(match procpool_supervisor::cgroup::memory_left() {
        Some(left) => available.min(left),
        None => available,
    })
}

/// Free space, for an unprivileged writer, on the file system of `file`.
pub fn disk_available(file: &File) -> Option<u64> {
    let stats = nix::sys::statvfs::fstatvfs(file).ok()?;
    Some(stats.blocks_available() as u64 * stats.fragment_size() as u64)
}

/// Refuses to go on when `needed` bytes of `kind` ("memory", "disk space") are more
/// than `available`; `what` says what needs them.
pub fn ensure_room(
    what: &str,
    needed: u64,
    kind: &str,
    available: Option<u64>,
    force: bool,
) -> Result<()> {
    match available {
        // A usage error (exit 2): the size asked for, not the run, is what is wrong.
        Some(available) if needed > available && !force => Err(UsageError(format!(
            "{what} needs {} of {kind}, and {} is available; choose a smaller size, or pass \
             --force to try anyway",
            bytes_text(needed),
            bytes_text(available)
        ))
        .into()),
        _ => Ok(()),
    }
}

/// `1.5 GiB`, `894.1 TiB`: sizes for people, one decimal.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} bytes"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_much_is_refused_with_both_sizes_unless_forced() {
        let err = ensure_room(
            "matmul --n 200000",
            960 << 30,
            "memory",
            Some(20 << 30),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("needs 960.0 GiB of memory, and 20.0 GiB is available"),
            "{err}"
        );
        assert!(ensure_room("x", 960 << 30, "memory", Some(20 << 30), true).is_ok());
        assert!(ensure_room("x", 1 << 20, "memory", Some(20 << 30), false).is_ok());
        assert!(
            ensure_room("x", u64::MAX, "memory", None, false).is_ok(),
            "unknown: go on"
        );
    }

    #[test]
    fn this_machine_reports_some_memory_and_disk() {
        assert!(memory_available().is_some_and(|bytes| bytes > 0));
        let file = File::open("/proc/self/exe").unwrap();
        assert!(disk_available(&file).is_some());
        assert_eq!(bytes_text(512), "512 bytes");
        assert_eq!(bytes_text(3 << 19), "1.5 MiB");
    }
}
