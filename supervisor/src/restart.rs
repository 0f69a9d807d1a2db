//! Restart policy as data: OTP's intensity and period, with exponential backoff.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many unplanned worker deaths in a row the pool absorbs, and how fast it restarts.
///
/// The pool gives up when more than `intensity` restarts fall within `period` with no
/// task answered in between: deaths that a task was charged for are already bounded by
/// quarantine, so only restarts without progress mean the workers cannot work.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    /// At most this many restarts within `period` (OTP's `intensity`).
    pub intensity: u32,
    /// The sliding window for `intensity`.
    pub period: Duration,
    /// Delay before restarting a slot whose previous process died young.
    pub backoff_initial: Duration,
    /// The delay doubles with each young death of the same slot, up to this.
    pub backoff_max: Duration,
}

impl RestartPolicy {
    /// The default for a pool of `procs` workers: room for a few deaths per worker
    /// every ten seconds, so chaos testing and a flaky task survive while an executable
    /// that dies at once gives up within seconds.
    pub fn for_pool(procs: usize) -> RestartPolicy {
        RestartPolicy {
            intensity: (5 * procs).clamp(10, 1000) as u32,
            period: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// Counts restarts in the sliding window and says when the budget is spent.
#[derive(Debug)]
pub(crate) struct RestartBudget {
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    pub(crate) fn new() -> RestartBudget {
        RestartBudget {
            recent: VecDeque::new(),
        }
    }

    /// A task was answered: the workers make progress, so the restarts before it no
    /// longer count. Only restarts with no answer in between add up to give up.
    pub(crate) fn progress(&mut self) {
        self.recent.clear();
    }

    /// Records a restart at `now`; false when it would exceed the policy's intensity.
    pub(crate) fn allow(&mut self, policy: &RestartPolicy, now: Instant) -> bool {
        while let Some(&oldest) = self.recent.front() {
            if now.duration_since(oldest) > policy.period {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= policy.intensity as usize {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// The delay before the `young_deaths`-th consecutive restart of one slot, with up to
/// 50% jitter from `entropy` so that slots that died together do not restart in step.
pub(crate) fn backoff(policy: &RestartPolicy, young_deaths: u32, entropy: u64) -> Duration {
    if young_deaths == 0 {
        return Duration::ZERO;
    }
    let doubling = 1u32 << (young_deaths - 1).min(16);
    let base = policy
        .backoff_initial
        .saturating_mul(doubling)
        .min(policy.backoff_max);
    let jitter_permille = entropy % 500;
    base + base * jitter_permille as u32 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            intensity: 3,
            period: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
        }
    }

    #[test]
    fn intensity_caps_restarts_within_the_period() {
        let policy = policy();
        let mut budget = RestartBudget::new();
        let start = Instant::now();
        assert!(budget.allow(&policy, start));
        assert!(budget.allow(&policy, start + Duration::from_secs(1)));
        assert!(budget.allow(&policy, start + Duration::from_secs(2)));
        assert!(!budget.allow(&policy, start + Duration::from_secs(3)));
        // The first restart leaves the window after the period.
        assert!(budget.allow(&policy, start + Duration::from_secs(11)));
    }

    #[test]
    fn an_answer_between_restarts_resets_the_count() {
        let policy = policy();
        let mut budget = RestartBudget::new();
        let start = Instant::now();
        for second in 0..30 {
            assert!(budget.allow(&policy, start + Duration::from_millis(second)));
            if second % 3 == 2 {
                budget.progress();
            }
        }
        for _ in 0..3 {
            assert!(budget.allow(&policy, start));
        }
        assert!(
            !budget.allow(&policy, start),
            "four restarts with no progress"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let policy = policy();
        assert_eq!(backoff(&policy, 0, 7), Duration::ZERO);
        assert_eq!(backoff(&policy, 1, 0), Duration::from_millis(10));
        assert_eq!(backoff(&policy, 3, 0), Duration::from_millis(40));
        assert_eq!(backoff(&policy, 30, 0), Duration::from_millis(100));
        assert_eq!(backoff(&policy, 1, 499), Duration::from_micros(14_990));
    }
}
