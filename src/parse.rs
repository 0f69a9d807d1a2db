//! Value parsers for command-line options, shared by every subcommand's arguments.
//! A leaf: it uses nothing of this crate, so any module may use it.
//!
//! clap reads `-1` as a value of these options (the commands allow negative numbers),
//! so a negative number gets the option's own bound (`--procs ... must be at least
//! 1`), not "unexpected argument '-1'".

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

/// Seconds, as [`seconds`], and more than 0: a wait of nothing would fire at once.
pub fn positive_seconds(text: &str) -> Result<Duration, String> {
    match seconds(text)? {
        duration if duration.is_zero() => Err(format!("'{text}': must be more than 0 seconds")),
        duration => Ok(duration),
    }
}

/// A count written as an integer or in scientific notation (`1e9`), which must be exact.
pub fn count(text: &str) -> Result<u64, String> {
    whole::<u64>(0, u64::MAX)(text)
}

/// A whole number from `min` to `max` (an integer or in scientific notation, exact),
/// as a `T`. Out of range, it says the bound: `must be at least 1`, `must be between
/// 1 and 4096`.
pub fn whole<T>(min: u64, max: u64) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: TryFrom<u64>,
{
    move |text| {
        // The type's own maximum is no bound worth naming, unless a value passes it.
        let named_max = T::try_from(max.saturating_add(1)).is_ok() && max != u64::MAX;
        let out_of_range = |too_large: bool| match (named_max, too_large) {
            (true, _) => format!("must be between {min} and {max}"),
            (false, false) => format!("must be at least {min}"),
            (false, true) => format!("must be at most {max}"),
        };
        let value = match text.parse::<u64>() {
            Ok(value) => value,
            Err(_) => match text.parse::<f64>() {
                Ok(x) if x.fract() == 0.0 && (0.0..1.8e19).contains(&x) => x as u64,
                // A negative or too large number is out of range; -0.5 is not whole.
                Ok(x) if x.fract() == 0.0 || x.is_infinite() => return Err(out_of_range(x > 0.0)),
                _ => {
                    return Err(format!(
                        "'{text}' is not a whole number (e.g. 1000000 or 1e6)"
                    ))
                }
            },
        };
        if !(min..=max).contains(&value) {
            return Err(out_of_range(value > max));
        }
        T::try_from(value).map_err(|_| out_of_range(true))
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
        for bad in ["1.5", "-1", "1e20", "lots", "-0.5"] {
            assert!(count(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn out_of_range_says_the_bound() {
        let procs = whole::<u32>(1, 4096);
        assert_eq!(procs("8"), Ok(8));
        assert_eq!(procs("-1").unwrap_err(), "must be between 1 and 4096");
        assert_eq!(procs("5000").unwrap_err(), "must be between 1 and 4096");
        let rows = whole::<usize>(1, u64::MAX);
        assert_eq!(rows("-3").unwrap_err(), "must be at least 1");
        assert_eq!(rows("0").unwrap_err(), "must be at least 1");
        let small = whole::<u32>(1, u32::MAX.into());
        assert_eq!(small("1e10").unwrap_err(), "must be at most 4294967295");
        assert!(small("soon").unwrap_err().contains("not a whole number"));
    }

    #[test]
    fn zero_seconds_is_not_a_timeout() {
        assert!(positive_seconds("0").is_err());
        assert_eq!(positive_seconds("0.5"), Ok(Duration::from_millis(500)));
    }
}
