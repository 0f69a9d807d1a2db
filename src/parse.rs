//! Value parsers for command-line options, shared by every subcommand's arguments.
//! A leaf: it uses nothing of this crate, so any module may use it.

use std::time::Duration;

/// Seconds, at most a million (11 days): any longer wait is a typo, and the pool adds
/// these durations to the clock.
pub fn seconds(text: &str) -> Result<Duration, String> {
    const MAX_SECONDS: f64 = 1e6;
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(0.0..=MAX_SECONDS).contains(&seconds) {
        return Err(format!(
            "'{text}' is not between 0 and {MAX_SECONDS} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A count written as an integer or in scientific notation (`1e9`), which must be exact.
pub fn count(text: &str) -> Result<u64, String> {
    if let Ok(n) = text.parse::<u64>() {
        return Ok(n);
    }
    match text.parse::<f64>() {
        Ok(x) if x >= 0.0 && x.fract() == 0.0 && x < 1.8e19 => Ok(x as u64),
        _ => Err(format!(
            "'{text}' is not a whole number (e.g. 1000000 or 1e6)"
        )),
    }
}

/// A size in bytes: a whole number (`1000000`, `1e9`) or one with a binary unit
/// (`64K`, `256M`, `1G`; `KiB`, `MiB`, `GiB` too); at least 1 KiB.
pub fn bytes(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    let number = lower.trim_end_matches("ib").trim_end_matches('b');
    let (digits, shift) = match number.strip_suffix(['k', 'm', 'g']) {
        Some(digits) if number.ends_with('k') => (digits, 10),
        Some(digits) if number.ends_with('m') => (digits, 20),
        Some(digits) => (digits, 30),
        None => (number, 0),
    };
    let bad = || format!("'{text}' is not a size of at least 1 KiB (e.g. 256M, 1G, 1000000)");
    let count = count(digits.trim()).map_err(|_| bad())?;
    let size = count.checked_mul(1u64 << shift).ok_or_else(bad)?;
    match usize::try_from(size) {
        Ok(size) if size >= 1024 => Ok(size),
        _ => Err(bad()),
    }
}

/// A positive, finite rate per second.
pub fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!("'{text}' is not a positive rate per second")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(bytes("256M"), Ok(256 << 20));
        assert_eq!(bytes("1GiB"), Ok(1 << 30));
        assert_eq!(bytes("64k"), Ok(64 << 10));
        assert_eq!(bytes("1e6"), Ok(1_000_000));
        for bad in ["", "12", "1.5G", "-1M", "lots", "1e30"] {
            assert!(bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_may_be_scientific_but_must_be_whole() {
        assert_eq!(count("1e9"), Ok(1_000_000_000));
        assert_eq!(count("42"), Ok(42));
        for bad in ["1.5", "-1", "1e20", "lots"] {
            assert!(count(bad).is_err(), "{bad}");
        }
    }
}
