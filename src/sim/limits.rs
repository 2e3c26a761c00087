//! Per-Page rate limits: the rolling budget window (200 × audience calls), the per-second ceiling and
//! the media ceiling, and the usage figures reported in `X-Business-Use-Case-Usage`.
//!
//! All arithmetic takes the current time as an argument (microseconds since the simulator started),
//! so the window logic is tested here on an injected clock; the simulator passes real elapsed time.
//! This module does not know about HTTP, Pages' identities or time scaling: the caller hands it a
//! window length already divided by the time scale.
//!
//! # Accounting rules
//!
//! - Every operation that reaches the limiter counts as one call in every window that applies to it,
//!   **including calls that are rejected with 613**: the platform says calls made while throttled
//!   still count, so a client that keeps calling while throttled stays throttled.
//! - A call is admitted only if, before it is counted, every applicable window holds fewer calls than
//!   its limit. Hence no window of the configured length ever contains more admitted calls than the
//!   limit.
//! - Windows are rolling (sliding), not calendar-aligned. The per-second ceiling is a rolling one
//!   second window in real time.
//! - Calls are kept in buckets of a fixed grain (1 ms, or 1/8192 of the window if larger) and a bucket
//!   leaves the window when its *latest* call does. Bucketing therefore only ever holds a call longer
//!   (by less than one grain), never shorter: the bound above stays exact, and memory per Page is
//!   bounded by the number of buckets, not the number of calls.

use std::collections::VecDeque;

/// Microseconds in one second.
const SECOND_US: u64 = 1_000_000;
/// Upper bound on buckets per window.
const MAX_BUCKETS: u64 = 8192;
/// Smallest bucket grain.
const MIN_GRAIN_US: u64 = 1_000;

/// A rolling count of calls over the last `len` microseconds.
#[derive(Debug, Clone)]
pub(crate) struct RollingWindow {
    len: u64,
    grain: u64,
    buckets: VecDeque<Bucket>,
    total: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// `time / grain` of the calls in this bucket.
    slot: u64,
    /// Time of the latest call in the bucket; the bucket leaves the window at `last + len`.
    last: u64,
    count: u64,
}

impl RollingWindow {
    pub(crate) fn new(len_us: u64) -> Self {
        let len = len_us.max(1);
        RollingWindow {
            len,
            grain: (len / MAX_BUCKETS).max(MIN_GRAIN_US),
            buckets: VecDeque::new(),
            total: 0,
        }
    }

    /// Forgets calls that have left the window at `now`: a call at `t` is inside while
    /// `t + len > now`.
    pub(crate) fn expire(&mut self, now: u64) {
        while let Some(front) = self.buckets.front() {
            if front.last + self.len > now {
                break;
            }
            self.total -= front.count;
            self.buckets.pop_front();
        }
    }

    /// Calls counted in the window (call [`RollingWindow::expire`] first).
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Counts one call at `now`. Times must not go backwards (the limiter guarantees it).
    pub(crate) fn record(&mut self, now: u64) {
        let slot = now / self.grain;
        match self.buckets.back_mut() {
            Some(back) if back.slot == slot => {
                back.last = now;
                back.count += 1;
            }
            _ => self.buckets.push_back(Bucket {
                slot,
                last: now,
                count: 1,
            }),
        }
        self.total += 1;
    }

    /// Microseconds from `now` until the window holds fewer than `limit` calls, assuming no further
    /// calls; 0 if it already does. `None` when it never will (a limit of zero).
    pub(crate) fn wait_for_room(&self, now: u64, limit: u64) -> Option<u64> {
        if self.total < limit {
            return Some(0);
        }
        if limit == 0 {
            return None;
        }
        let must_leave = self.total - limit + 1;
        let mut left = 0;
        for bucket in &self.buckets {
            left += bucket.count;
            if left >= must_leave {
                return Some((bucket.last + self.len).saturating_sub(now));
            }
        }
        unreachable!("must_leave <= total, and total is the sum of the bucket counts")
    }
}

/// The limits in force for one Page at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Calls allowed per rolling budget window: 200 × audience.
    pub budget: u64,
    /// Calls allowed per rolling second.
    pub rps: u64,
    /// Audio and video sends allowed per rolling second.
    pub media_rps: u64,
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    Budget,
    PerSecond,
    Media,
}

/// The limiter's answer for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Admitted,
    /// Refused; `wait_us` is how long until a call would be admitted if no more calls came.
    Throttled {
        limit: Limit,
        wait_us: Option<u64>,
    },
}

/// Usage figures for the `X-Business-Use-Case-Usage` entry of a Page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Usage {
    /// Calls in the budget window as a percentage of the budget (may exceed 100: refused calls
    /// count too).
    pub call_count: u64,
    /// Calls in the last second as a percentage of the per-second ceiling. Reported as both
    /// `total_time` and `total_cputime`: the simulator has no CPU model, and the per-second ceiling
    /// is the "time"-like pressure.
    pub time: u64,
    /// Whole minutes (rounded up) until a call would be admitted; 0 when one would be now.
    pub regain_minutes: u64,
}

/// The three windows of one Page.
#[derive(Debug, Clone)]
pub(crate) struct PageLimiter {
    budget: RollingWindow,
    second: RollingWindow,
    media: RollingWindow,
    /// Latest time seen; calls may reach the lock slightly out of order, and the windows need
    /// monotonic time.
    latest: u64,
}

impl PageLimiter {
    /// `budget_window_us` is the real-time length of the budget window (24 h divided by the time
    /// scale).
    pub(crate) fn new(budget_window_us: u64) -> Self {
        PageLimiter {
            budget: RollingWindow::new(budget_window_us),
            second: RollingWindow::new(SECOND_US),
            media: RollingWindow::new(SECOND_US),
            latest: 0,
        }
    }

    fn advance(&mut self, now: u64) -> u64 {
        self.latest = self.latest.max(now);
        let now = self.latest;
        self.budget.expire(now);
        self.second.expire(now);
        self.media.expire(now);
        now
    }

    /// Decides one call at `now` and counts it, admitted or not.
    pub(crate) fn admit(&mut self, now: u64, media: bool, limits: Limits) -> Verdict {
        let now = self.advance(now);
        let refused_by = if self.budget.total() >= limits.budget {
            Some(Limit::Budget)
        } else if self.second.total() >= limits.rps {
            Some(Limit::PerSecond)
        } else if media && self.media.total() >= limits.media_rps {
            Some(Limit::Media)
        } else {
            None
        };
        self.budget.record(now);
        self.second.record(now);
        if media {
            self.media.record(now);
        }
        match refused_by {
            None => Verdict::Admitted,
            Some(limit) => Verdict::Throttled {
                limit,
                wait_us: self.wait_us(now, media, limits),
            },
        }
    }

    /// How long until a call of this kind would be admitted (no further calls assumed).
    fn wait_us(&self, now: u64, media: bool, limits: Limits) -> Option<u64> {
        let mut wait = self.budget.wait_for_room(now, limits.budget)?;
        wait = wait.max(self.second.wait_for_room(now, limits.rps)?);
        if media {
            wait = wait.max(self.media.wait_for_room(now, limits.media_rps)?);
        }
        Some(wait)
    }

    /// Whether a call at `now` would be admitted, without counting it.
    #[cfg(test)]
    pub(crate) fn would_admit(&self, now: u64, media: bool, limits: Limits) -> bool {
        let mut probe = self.clone();
        probe.advance(now);
        probe.wait_us(probe.latest, media, limits) == Some(0)
    }

    /// Current usage for the headers. `media` selects whether the media ceiling is part of the
    /// regain estimate (it is for the reply to a media send).
    pub(crate) fn usage(&mut self, now: u64, media: bool, limits: Limits) -> Usage {
        let now = self.advance(now);
        let wait = self.wait_us(now, media, limits);
        Usage {
            call_count: percent(self.budget.total(), limits.budget),
            time: percent(self.second.total(), limits.rps),
            regain_minutes: regain_minutes(wait, self.budget.len),
        }
    }

    /// Calls (admitted or refused) in the current budget window.
    pub(crate) fn calls_in_window(&mut self, now: u64) -> u64 {
        self.advance(now);
        self.budget.total()
    }
}

/// The `X-Business-Use-Case-Usage` value for these Pages: an object keyed by Page id, each with one
/// `messenger` entry. Page ids are digit strings (the registry checks), so they need no escaping.
pub(crate) fn business_use_case_usage(pages: &[(&str, Usage)]) -> String {
    let entries: Vec<String> = pages
        .iter()
        .map(|(id, u)| {
            format!(
                r#""{id}":[{{"type":"messenger","call_count":{},"total_cputime":{},"total_time":{},"estimated_time_to_regain_access":{}}}]"#,
                u.call_count, u.time, u.time, u.regain_minutes
            )
        })
        .collect();
    format!("{{{}}}", entries.join(","))
}

/// The `X-App-Usage` value. The simulator serves one app, whose usage it reports as the highest
/// of the Pages involved.
pub(crate) fn app_usage(u: Usage) -> String {
    format!(
        r#"{{"call_count":{},"total_cputime":{},"total_time":{}}}"#,
        u.call_count.min(100),
        u.time.min(100),
        u.time.min(100)
    )
}

fn percent(count: u64, limit: u64) -> u64 {
    if limit == 0 {
        return if count == 0 { 0 } else { 100 };
    }
    count.saturating_mul(100) / limit
}

/// Rounds a wait up to whole minutes; a wait that never ends (zero budget) is reported as one full
/// window.
pub(crate) fn regain_minutes(wait_us: Option<u64>, window_us: u64) -> u64 {
    let wait = wait_us.unwrap_or(window_us);
    wait.div_ceil(60 * SECOND_US)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY_US: u64 = 86_400 * SECOND_US;

    fn limits(budget: u64, rps: u64, media_rps: u64) -> Limits {
        Limits {
            budget,
            rps,
            media_rps,
        }
    }

    #[test]
    fn budget_refuses_at_the_limit_and_estimates_the_full_window() {
        let mut limiter = PageLimiter::new(DAY_US);
        let l = limits(200, 1000, 10);
        for i in 0..200 {
            assert_eq!(
                limiter.admit(i * 1000, false, l),
                Verdict::Admitted,
                "call {i}"
            );
        }
        let now = 200 * 1000;
        match limiter.admit(now, false, l) {
            Verdict::Throttled {
                limit: Limit::Budget,
                wait_us: Some(wait),
            } => {
                // The oldest call (t = 0) leaves at the end of the day, grain included.
                assert!(wait >= DAY_US - now && wait <= DAY_US - now + DAY_US / MAX_BUCKETS);
                assert_eq!(regain_minutes(Some(wait), DAY_US), 1440);
            }
            other => panic!("expected a budget refusal, got {other:?}"),
        }
        let usage = limiter.usage(now, false, l);
        assert_eq!(usage.call_count, 100);
        assert_eq!(usage.regain_minutes, 1440);
    }

    #[test]
    fn usage_headers_are_json_in_the_documented_shape() {
        let usage = Usage {
            call_count: 12,
            time: 40,
            regain_minutes: 3,
        };
        let buc: serde_json::Value = serde_json::from_str(&business_use_case_usage(&[
            ("1", usage),
            ("2", Usage::default()),
        ]))
        .unwrap();
        assert_eq!(
            buc["1"][0],
            serde_json::json!({"type":"messenger","call_count":12,"total_cputime":40,
                "total_time":40,"estimated_time_to_regain_access":3})
        );
        assert_eq!(buc["2"][0]["estimated_time_to_regain_access"], 0);
        let app: serde_json::Value = serde_json::from_str(&app_usage(usage)).unwrap();
        assert_eq!(
            app,
            serde_json::json!({"call_count":12,"total_cputime":40,"total_time":40})
        );
    }

    #[test]
    fn per_second_ceiling_is_a_rolling_second() {
        let mut limiter = PageLimiter::new(DAY_US);
        let l = limits(1_000_000, 3, 1);
        assert_eq!(limiter.admit(0, false, l), Verdict::Admitted);
        assert_eq!(limiter.admit(400_000, false, l), Verdict::Admitted);
        assert_eq!(limiter.admit(800_000, false, l), Verdict::Admitted);
        assert!(matches!(
            limiter.admit(900_000, false, l),
            Verdict::Throttled {
                limit: Limit::PerSecond,
                wait_us: Some(500_000)
            }
        ));
        // A calendar-second limiter would admit at 1.1 s (a new second); a rolling one must not.
        // The refused call at 0.9 s counts too, so room comes only when two calls have left: the
        // one at 0.4 s leaves at 1.4 s.
        assert!(!limiter.would_admit(1_100_000, false, l));
        assert!(!limiter.would_admit(1_399_999, false, l));
        assert!(limiter.would_admit(1_400_000, false, l));
        assert_eq!(limiter.usage(1_100_000, false, l).regain_minutes, 1);
    }

    #[test]
    fn media_ceiling_applies_only_to_media() {
        let mut limiter = PageLimiter::new(DAY_US);
        let l = limits(1000, 100, 2);
        assert_eq!(limiter.admit(0, true, l), Verdict::Admitted);
        assert_eq!(limiter.admit(1, true, l), Verdict::Admitted);
        assert!(matches!(
            limiter.admit(2, true, l),
            Verdict::Throttled {
                limit: Limit::Media,
                ..
            }
        ));
        assert_eq!(limiter.admit(3, false, l), Verdict::Admitted);
    }

    #[test]
    fn zero_budget_never_admits_and_reports_a_full_window() {
        let mut limiter = PageLimiter::new(60 * SECOND_US);
        let l = limits(0, 100, 10);
        assert_eq!(
            limiter.admit(0, false, l),
            Verdict::Throttled {
                limit: Limit::Budget,
                wait_us: None
            }
        );
        assert_eq!(limiter.usage(0, false, l).regain_minutes, 1);
    }

    #[test]
    fn out_of_order_times_are_treated_as_now() {
        let mut limiter = PageLimiter::new(10 * SECOND_US);
        let l = limits(2, 100, 10);
        assert_eq!(limiter.admit(5_000_000, false, l), Verdict::Admitted);
        // An earlier timestamp (a caller that read the clock before the lock) counts as 5 s.
        assert_eq!(limiter.admit(4_000_000, false, l), Verdict::Admitted);
        assert!(!limiter.would_admit(14_999_999, false, l));
        assert!(limiter.would_admit(15_000_000, false, l));
    }

    /// A reference model: every call with its exact time, checked by brute force.
    fn admitted_in_window(admitted: &[u64], end: u64, len: u64) -> usize {
        admitted
            .iter()
            .filter(|&&t| t <= end && t + len > end)
            .count()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// No rolling window of the configured length ever holds more admitted calls than the
        /// budget (or the ceiling), whatever the arrival pattern; every throttle's wait estimate
        /// is exact for this limiter; and after a quiet window plus one grain, calls are admitted
        /// again.
        #[test]
        fn windows_never_over_admit_and_always_recover(
            gaps in proptest::collection::vec((0u64..40_000, any::<bool>()), 1..400),
            window_ms in 50u64..3_000,
            budget in 1u64..60,
            rps in 1u64..40,
            media_rps in 1u64..10,
        ) {
            let window = window_ms * 1000;
            let l = limits(budget, rps, media_rps);
            let mut limiter = PageLimiter::new(window);
            let mut now = 0u64;
            let mut admitted = Vec::new();
            let mut admitted_media = Vec::new();
            for (gap, media) in gaps {
                now += gap;
                match limiter.admit(now, media, l) {
                    Verdict::Admitted => {
                        admitted.push(now);
                        if media {
                            admitted_media.push(now);
                        }
                    }
                    Verdict::Throttled { wait_us, .. } => {
                        let wait = wait_us.expect("limits are positive");
                        prop_assert!(wait > 0);
                        prop_assert!(limiter.would_admit(now + wait, media, l));
                        prop_assert!(!limiter.would_admit(now + wait - 1, media, l));
                    }
                }
            }
            for &t in &admitted {
                prop_assert!(admitted_in_window(&admitted, t, window) as u64 <= budget);
                prop_assert!(admitted_in_window(&admitted, t, SECOND_US) as u64 <= rps);
            }
            for &t in &admitted_media {
                prop_assert!(admitted_in_window(&admitted_media, t, SECOND_US) as u64 <= media_rps);
            }
            let grain = (window / MAX_BUCKETS).max(MIN_GRAIN_US);
            let quiet = now + window.max(SECOND_US) + grain;
            prop_assert!(limiter.would_admit(quiet, true, l));
        }
    }
}
