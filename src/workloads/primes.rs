//! `primes`: count the primes below a limit with a segmented sieve of Eratosthenes.
//!
//! Tasks are ranges `[lo, hi)`; each worker sieves its range with the base primes up to
//! `sqrt(hi)`, one cache-sized segment at a time, and answers the count.

use anyhow::{ensure, Result};
use procpool_child::TaskId;
use procpool_supervisor::PoolReport;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Summary, TypedHandler, Workload};

/// Options of `procpool run primes`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Count primes below this number.
    #[arg(long, default_value = "1e10", value_parser = crate::parse::count)]
    pub limit: u64,
    /// Numbers per task; by default about 64 tasks per worker, at least 1 Mi numbers each.
    #[arg(long, value_parser = crate::parse::count)]
    pub range: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Input {
    lo: u64,
    hi: u64,
}

/// Ranges out, counts in.
pub struct Primes {
    limit: u64,
    range: u64,
    next_lo: u64,
    count: u64,
}

impl Workload for Primes {
    const NAME: &'static str = "primes";
    const ABOUT: &'static str =
        "Count primes below --limit with a segmented sieve, one range per task";
    type Args = Args;
    type Input = Input;
    /// The primes in the range.
    type Output = u64;

    fn plan(args: &Args, procs: usize) -> Result<Primes> {
        ensure!(
            args.limit <= 1 << 50,
            "--limit {} is too large; at most 2^50",
            args.limit
        );
        let range = match args.range {
            Some(range) => {
                ensure!(range > 0, "--range must be at least 1");
                range
            }
            None => (args.limit / (64 * procs as u64)).max(1 << 20),
        };
        Ok(Primes {
            limit: args.limit,
            range,
            next_lo: 0,
            count: 0,
        })
    }

    fn next_input(&mut self) -> Option<Result<Input>> {
        let lo = self.next_lo;
        if lo >= self.limit {
            return None;
        }
        let hi = lo.saturating_add(self.range).min(self.limit);
        self.next_lo = hi;
        Some(Ok(Input { lo, hi }))
    }

    fn reduce(&mut self, _id: TaskId, count: u64) -> Result<(), String> {
        // No range holds more primes than numbers, and no total more than the limit.
        let total = self
            .count
            .checked_add(count)
            .filter(|&total| count <= self.range && total <= self.limit)
            .ok_or_else(|| {
                format!(
                    "a count of {count} primes, more than a range of {} numbers holds",
                    self.range
                )
            })?;
        self.count = total;
        Ok(())
    }

    fn total_tasks(&self) -> Option<u64> {
        Some(self.limit.div_ceil(self.range))
    }

    fn summary(self, report: &PoolReport) -> Result<Summary> {
        let lost = report.tasks_total - report.tasks_ok;
        let headline = if lost == 0 {
            format!("{} primes below {}", self.count, self.limit)
        } else {
            format!(
                "{} primes in the ranges that finished; {lost} ranges failed, so the count below {} is incomplete",
                self.count, self.limit
            )
        };
        Ok(Summary::new(
            headline,
            json!({"limit": self.limit, "count": self.count, "complete": lost == 0}),
        ))
    }

    fn worker() -> Result<TypedHandler<Primes>, String> {
        Ok(Box::new(|Input { lo, hi }| Ok(count_primes(lo, hi))))
    }
}

/// The number of primes `p` with `lo <= p < hi`.
pub fn count_primes(lo: u64, hi: u64) -> u64 {
    if hi <= 2 || lo >= hi {
        return 0;
    }
    let base = small_primes(isqrt(hi - 1));
    // Sieve odd numbers only: index i of a segment starting at odd `start` is start + 2i.
    const SEGMENT: u64 = 1 << 18;
    let mut count = u64::from(lo <= 2 && 2 < hi);
    let mut marks = vec![false; SEGMENT as usize];
    let mut start = (lo.max(3)) | 1;
    while start < hi {
        let end = (start + 2 * SEGMENT).min(hi);
        let len = (end - start).div_ceil(2) as usize;
        let marks = &mut marks[..len];
        marks.fill(false);
        for &p in base.iter().skip(1) {
            let p2 = p * p;
            if p2 >= end {
                break;
            }
            // First odd multiple of p that is >= start and >= p*p.
            let mut first = start.div_ceil(p) * p;
            if first % 2 == 0 {
                first += p;
            }
            let mut i = ((first.max(p2) - start) / 2) as usize;
            while i < len {
                marks[i] = true;
                i += p as usize;
            }
        }
        count += marks.iter().filter(|&&composite| !composite).count() as u64;
        // 1 is odd and not a prime.
        if start == 1 {
            count -= 1;
        }
        start = end + end.is_multiple_of(2) as u64;
    }
    count
}

fn small_primes(limit: u64) -> Vec<u64> {
    let limit = limit as usize;
    let mut composite = vec![false; limit + 1];
    let mut primes = Vec::new();
    for n in 2..=limit {
        if !composite[n] {
            primes.push(n as u64);
            let mut m = n * n;
            while m <= limit {
                composite[m] = true;
                m += n;
            }
        }
    }
    primes
}

fn isqrt(n: u64) -> u64 {
    let mut r = (n as f64).sqrt() as u64;
    while r * r > n {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= n {
        r += 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(lo: u64, hi: u64) -> u64 {
        (lo..hi)
            .filter(|&n| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
            .count() as u64
    }

    #[test]
    fn matches_trial_division_on_awkward_ranges() {
        for (lo, hi) in [
            (0, 0),
            (0, 2),
            (0, 3),
            (2, 3),
            (3, 4),
            (0, 100),
            (1, 2),
            (90, 97),
            (97, 98),
            (1000, 5000),
            (524_280, 1_100_003),
        ] {
            assert_eq!(count_primes(lo, hi), naive(lo, hi), "[{lo}, {hi})");
        }
    }

    #[test]
    fn counts_no_range_can_hold_are_rejected_and_change_nothing() {
        let args = Args {
            limit: 1000,
            range: Some(100),
        };
        let mut primes = Primes::plan(&args, 1).unwrap();
        primes.reduce(0, 25).unwrap();
        for bad in [101, u64::MAX] {
            assert!(primes.reduce(1, bad).is_err(), "{bad}");
        }
        assert_eq!(primes.count, 25);
    }

    #[test]
    fn split_ranges_add_up_to_pi() {
        let total: u64 = (0..10)
            .map(|i| count_primes(i * 100_000, (i + 1) * 100_000))
            .sum();
        assert_eq!(total, 78_498);
        assert_eq!(count_primes(0, 10_000_000), 664_579);
    }
}
