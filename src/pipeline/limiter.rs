//! Per-Page rate limits: three `governor` token buckets charged one token per operation.
//!
//! - **rps**: the per-second ceiling (default 250/s, burst 50 — one full batch).
//! - **media**: the ceiling for audio and video attachments (default 10/s).
//! - **budget**: the rolling budget of `calls_per_audience × audience × safety` per window
//!   (24 h on the platform).
//!
//! A GCRA bucket of capacity C refilling R per window admits at most C + R in any window, so
//! the budget is split into C = `burst_fraction` of it and R = the rest: no rolling window can
//! ever see more than the budget ([`BudgetPlan`] and its tests prove it on a fake clock).
//!
//! governor has no "peek" and no refund, so the order of checks matters: the rps bucket is
//! checked first (it refills in milliseconds, so a wasted cell costs nothing), the budget second
//! (a cell spent there is gone for a day). Quotas never change in place: a new audience or
//! ceiling builds a new limiter that starts as drained as the old one was ([`PageLimiter::rebuild`]).
//!
//! The limiter only answers "may these operations go now, and if not, when"; waiting and
//! parking are the lane's business.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::LimitSettings;

/// A governor clock that reads tokio's clock, so a test that pauses tokio's time drives the
/// limiters and the lanes' timers together.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.origin.elapsed())
    }
}

/// How a budget of calls per window becomes a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetPlan {
    /// The calls pagerelay allows itself per window (after the safety factor).
    pub budget: u64,
    /// The bucket's capacity: what may go out at once.
    pub burst: u32,
    /// The bucket refills one call per this period.
    pub period: Duration,
}

impl BudgetPlan {
    /// The plan for a Page with `audience` people under `limits`.
    pub fn for_audience(audience: u64, limits: &LimitSettings) -> BudgetPlan {
        let platform = u128::from(limits.calls_per_audience) * u128::from(audience);
        let budget = ((platform as f64) * limits.safety).floor().max(2.0) as u64;
        BudgetPlan::split(budget, limits.burst_fraction, limits.budget_window)
    }

    /// Splits `budget` calls per `window` into a burst and an even refill with
    /// burst + refill-per-window <= budget.
    pub fn split(budget: u64, burst_fraction: f64, window: Duration) -> BudgetPlan {
        let budget = budget.max(2);
        let burst = ((budget as f64) * burst_fraction).floor() as u64;
        // At least one cell of each, and the burst never takes the whole budget.
        let burst = burst.clamp(1, budget - 1).min(u64::from(u32::MAX));
        let refill = budget - burst;
        // Round the period up so that refill-per-window never exceeds `refill`.
        let period_nanos = window.as_nanos().div_ceil(u128::from(refill));
        let period = Duration::from_nanos(period_nanos.clamp(1, u128::from(u64::MAX)) as u64);
        BudgetPlan {
            budget,
            burst: burst as u32,
            period,
        }
    }

    fn quota(&self) -> Quota {
        Quota::with_period(self.period)
            .expect("period is at least one nanosecond")
            .allow_burst(NonZeroU32::new(self.burst).expect("burst is at least one"))
    }
}

/// The ceilings of one Page, after per-Page overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceilings {
    pub rps: NonZeroU32,
    pub rps_burst: NonZeroU32,
    pub media_rps: NonZeroU32,
    pub media_burst: NonZeroU32,
}

/// What a request for operations got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// These many operations (1..=requested) may go now; their tokens are spent.
    Granted(u32),
    /// The per-second ceiling has no room yet; ask again after this long.
    Wait(Duration),
    /// The budget is spent; the next call is possible after this long.
    BudgetSpent(Duration),
}

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// The three buckets of one Page.
pub struct PageLimiter<C: Clock<Instant = Nanos> = TokioClock> {
    plan: BudgetPlan,
    ceilings: Ceilings,
    rps: Bucket<C>,
    media: Bucket<C>,
    budget: Bucket<C>,
    clock: C,
    /// Budget tokens left after the last successful check, and when, to report the remaining
    /// budget without spending a token to look.
    last_budget: Mutex<(Nanos, u32)>,
}

impl<C: Clock<Instant = Nanos> + Clone> PageLimiter<C> {
    pub fn new(plan: BudgetPlan, ceilings: Ceilings, clock: C) -> Self {
        let rps_quota = Quota::per_second(ceilings.rps).allow_burst(ceilings.rps_burst);
        let media_quota = Quota::per_second(ceilings.media_rps).allow_burst(ceilings.media_burst);
        let now = clock.now();
        PageLimiter {
            rps: RateLimiter::direct_with_clock(rps_quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            media: RateLimiter::direct_with_clock(media_quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            budget: RateLimiter::direct_with_clock(plan.quota(), clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            last_budget: Mutex::new((now, plan.burst)),
            plan,
            ceilings,
            clock,
        }
    }

    pub fn plan(&self) -> BudgetPlan {
        self.plan
    }

    pub fn ceilings(&self) -> Ceilings {
        self.ceilings
    }

    /// Asks for up to `n` operations. Grants as many as the budget allows (at least one), or
    /// says how long to wait.
    pub fn acquire(&self, n: u32) -> Grant {
        // Size the request by what the budget holds before touching the rps bucket: asking the
        // rps bucket for a full batch that the budget then refuses would waste its cells and,
        // worse, hide a spent budget behind an endless "wait 200 ms".
        let (estimate, next_cell) = self.budget_estimate();
        if estimate == 0 {
            return Grant::BudgetSpent(next_cell);
        }
        let n = n
            .clamp(1, self.ceilings.rps_burst.get())
            .min(self.plan.burst)
            .min(estimate.min(u64::from(u32::MAX)) as u32);
        match self.rps.check_n(NonZeroU32::new(n).expect("n >= 1")) {
            Ok(Ok(_)) => {}
            Ok(Err(not_until)) => return Grant::Wait(not_until.wait_time_from(self.clock.now())),
            Err(_) => unreachable!("n is clamped to the rps burst"),
        }
        // The estimate lags the bucket by less than one cell, so this almost always succeeds
        // at once; halve if it was optimistic.
        let mut k = n;
        loop {
            match self.budget.check_n(NonZeroU32::new(k).expect("k >= 1")) {
                Ok(Ok(snapshot)) => {
                    *self.last_budget.lock().expect("not poisoned") =
                        (self.clock.now(), snapshot.remaining_burst_capacity());
                    return Grant::Granted(k);
                }
                Ok(Err(not_until)) if k == 1 => {
                    let now = self.clock.now();
                    let wait = not_until.wait_time_from(now);
                    self.note_empty(now, wait);
                    return Grant::BudgetSpent(wait);
                }
                Ok(Err(_)) | Err(_) => k /= 2,
            }
        }
    }

    /// Records an empty budget, dated so that the estimate turns to 1 exactly when the next
    /// cell arrives (`wait` from `now`).
    fn note_empty(&self, now: Nanos, wait: Duration) {
        let lag = self.plan.period.saturating_sub(wait);
        *self.last_budget.lock().expect("not poisoned") = (now.saturating_sub(Nanos::from(lag)), 0);
    }

    /// Asks for `m` media operations; on refusal says how long until they fit.
    pub fn acquire_media(&self, m: u32) -> Result<(), Duration> {
        if m == 0 {
            return Ok(());
        }
        let m = NonZeroU32::new(m.min(self.ceilings.media_burst.get())).expect("m >= 1");
        match self.media.check_n(m) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            Err(_) => unreachable!("m is clamped to the media burst"),
        }
    }

    /// The most media operations one batch may ever carry.
    pub fn media_burst(&self) -> u32 {
        self.ceilings.media_burst.get()
    }

    /// Budget tokens available now (an estimate from the last check plus the refill since).
    pub fn budget_remaining(&self) -> u64 {
        self.budget_estimate().0
    }

    /// The estimated budget level, and how long until the next cell refills.
    fn budget_estimate(&self) -> (u64, Duration) {
        let (at, left) = *self.last_budget.lock().expect("not poisoned");
        let elapsed: Duration = self.clock.now().duration_since(at).into();
        let period = self.plan.period.as_nanos().max(1);
        let refilled = elapsed.as_nanos() / period;
        let level = (u128::from(left) + refilled).min(u128::from(self.plan.burst)) as u64;
        let next = Duration::from_nanos((period - elapsed.as_nanos() % period) as u64);
        (level, next)
    }

    /// Empties the per-second bucket. A lane that starts for a Page does this, so the Page begins
    /// at its steady rate without a burst: the Page may just have moved here from a process
    /// (a shard failover) that was sending at the ceiling a moment ago, and the two together must
    /// not exceed the platform's per-second limit.
    pub fn drain_rps(&self) {
        drain(&self.rps, self.ceilings.rps_burst.get());
    }

    /// A limiter with a new plan or ceilings that starts as drained as this one is now, so that
    /// a change of quota never hands out an extra burst.
    pub fn rebuild(&self, plan: BudgetPlan, ceilings: Ceilings) -> Self {
        let next = PageLimiter::new(plan, ceilings, self.clock.clone());
        let keep = self.budget_remaining().min(u64::from(plan.burst)) as u32;
        drain(&next.budget, plan.burst - keep);
        *next.last_budget.lock().expect("not poisoned") = (self.clock.now(), keep);
        // The short buckets start empty: a reload costs at most one burst interval of sending.
        drain(&next.rps, ceilings.rps_burst.get());
        drain(&next.media, ceilings.media_burst.get());
        next
    }
}

fn drain<C: Clock<Instant = Nanos>>(bucket: &Bucket<C>, cells: u32) {
    if let Some(n) = NonZeroU32::new(cells) {
        let _ = bucket.check_n(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LoadOptions, Settings};
    use governor::clock::FakeRelativeClock;
    use std::collections::VecDeque;

    fn limits() -> LimitSettings {
        Settings::load(&LoadOptions::default()).unwrap().limits
    }

    fn ceilings(rps: u32, burst: u32) -> Ceilings {
        Ceilings {
            rps: NonZeroU32::new(rps).unwrap(),
            rps_burst: NonZeroU32::new(burst).unwrap(),
            media_rps: NonZeroU32::new(10).unwrap(),
            media_burst: NonZeroU32::new(10).unwrap(),
        }
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn the_budget_follows_the_platform_formula() {
        let plan = BudgetPlan::for_audience(1000, &limits());
        // 200 × 1000 × 0.95
        assert_eq!(plan.budget, 190_000);
        assert_eq!(plan.burst, 19_000);
        // The refill spreads the other 90 % over 24 h.
        assert_eq!(
            plan.period,
            Duration::from_nanos(DAY.as_nanos().div_ceil(171_000) as u64)
        );
        let tiny = BudgetPlan::for_audience(1, &limits());
        assert_eq!((tiny.budget, tiny.burst), (190, 19));
    }

    #[test]
    fn split_never_promises_more_than_the_budget() {
        for budget in [2, 3, 10, 99, 100, 1_000, 190_000, 123_456_789] {
            for fraction in [0.01, 0.1, 0.5, 0.99] {
                let plan = BudgetPlan::split(budget, fraction, DAY);
                let refill_per_window = DAY.as_nanos() / plan.period.as_nanos();
                assert!(
                    u128::from(plan.burst) + refill_per_window <= u128::from(budget),
                    "budget {budget}, fraction {fraction}: {plan:?}"
                );
                assert!(plan.burst >= 1);
            }
        }
    }

    /// Hammers one Page's budget for three simulated days, asking every ten seconds for as much
    /// as the rps bucket allows, and counts what was granted in every rolling 24 h window.
    #[test]
    fn no_rolling_window_ever_exceeds_the_budget() {
        let clock = FakeRelativeClock::default();
        let plan = BudgetPlan::split(1_000, 0.1, DAY);
        // rps high enough that the budget is the only limit.
        let limiter = PageLimiter::new(plan, ceilings(10_000, 50), clock.clone());
        let step = Duration::from_secs(10);
        let mut granted: VecDeque<(Duration, u64)> = VecDeque::new();
        let mut in_window = 0u64;
        let mut max_in_window = 0u64;
        let mut total = 0u64;
        let mut now = Duration::ZERO;
        while now < 3 * DAY {
            while let Grant::Granted(k) = limiter.acquire(50) {
                granted.push_back((now, u64::from(k)));
                in_window += u64::from(k);
                total += u64::from(k);
            }
            while let Some(&(at, k)) = granted.front() {
                if now - at >= DAY {
                    granted.pop_front();
                    in_window -= k;
                } else {
                    break;
                }
            }
            max_in_window = max_in_window.max(in_window);
            clock.advance(step);
            now += step;
        }
        assert!(max_in_window <= 1_000, "a window saw {max_in_window} calls");
        // And the limiter is not needlessly stingy: close to the budget per day.
        assert!(
            max_in_window >= 990,
            "only {max_in_window} in the busiest window"
        );
        // Three days hold one burst and three days of refill: 100 + 3 × 900.
        assert!(total >= 2_790, "only {total} calls in three days");
    }

    #[test]
    fn the_rps_ceiling_paces_batches() {
        let clock = FakeRelativeClock::default();
        let limiter = PageLimiter::new(
            BudgetPlan::split(1_000_000, 0.1, DAY),
            ceilings(250, 50),
            clock.clone(),
        );
        assert_eq!(limiter.acquire(50), Grant::Granted(50));
        // The burst is spent: the next 50 need 50/250 s = 200 ms.
        assert_eq!(limiter.acquire(50), Grant::Wait(Duration::from_millis(200)));
        clock.advance(Duration::from_millis(100));
        assert_eq!(limiter.acquire(50), Grant::Wait(Duration::from_millis(100)));
        assert_eq!(limiter.acquire(25), Grant::Granted(25));
        clock.advance(Duration::from_millis(100));
        assert_eq!(limiter.acquire(25), Grant::Granted(25));
    }

    #[test]
    fn a_closed_second_holds_at_most_rate_plus_burst() {
        let clock = FakeRelativeClock::default();
        let limiter = PageLimiter::new(
            BudgetPlan::split(1_000_000, 0.1, DAY),
            ceilings(250, 50),
            clock.clone(),
        );
        let mut per_ms = Vec::new();
        for _ in 0..=10_000 {
            per_ms.push(match limiter.acquire(50) {
                Grant::Granted(k) => k,
                _ => 0,
            });
            clock.advance(Duration::from_millis(1));
        }
        // Any window of 1 s (1001 instants, both ends included) sees at most 250 + 50.
        let busiest = per_ms
            .windows(1001)
            .map(|w| w.iter().sum::<u32>())
            .max()
            .unwrap();
        assert_eq!(busiest, 300);
        // Sustained, the rate is the ceiling: the burst plus 250 per second for 10 s.
        assert_eq!(per_ms.iter().sum::<u32>(), 50 + 2_500);
    }

    #[test]
    fn a_spent_budget_says_when_the_next_call_fits() {
        let clock = FakeRelativeClock::default();
        // Budget 20 per 100 s: burst 2, one refill every 100/18 s.
        let plan = BudgetPlan::split(20, 0.1, Duration::from_secs(100));
        let limiter = PageLimiter::new(plan, ceilings(250, 50), clock.clone());
        assert_eq!(limiter.acquire(50), Grant::Granted(2));
        assert_eq!(limiter.budget_remaining(), 0);
        clock.advance(Duration::from_millis(200)); // room in the rps bucket again
        let Grant::BudgetSpent(wait) = limiter.acquire(1) else {
            panic!("budget should be spent")
        };
        assert_eq!(wait, plan.period - Duration::from_millis(200));
        clock.advance(wait);
        assert_eq!(limiter.budget_remaining(), 1);
        assert_eq!(limiter.acquire(5), Grant::Granted(1));
    }

    #[test]
    fn a_spent_budget_is_reported_even_while_the_rps_bucket_is_busy() {
        let clock = FakeRelativeClock::default();
        let plan = BudgetPlan::split(20, 0.1, Duration::from_secs(100)); // burst 2
        let limiter = PageLimiter::new(plan, ceilings(250, 50), clock.clone());
        assert_eq!(limiter.acquire(50), Grant::Granted(2));
        // Only two rps cells were spent, and the budget, not the ceiling, is what stops us.
        assert!(matches!(limiter.acquire(50), Grant::BudgetSpent(_)));
        clock.advance(plan.period);
        assert_eq!(limiter.acquire(50), Grant::Granted(1));
    }

    #[test]
    fn partial_budget_grants_what_is_left() {
        let clock = FakeRelativeClock::default();
        let plan = BudgetPlan::split(300, 0.1, DAY); // burst 30
        let limiter = PageLimiter::new(plan, ceilings(1000, 50), clock.clone());
        assert_eq!(limiter.budget_remaining(), 30);
        assert_eq!(limiter.acquire(50), Grant::Granted(30));
        clock.advance(plan.period * 5); // also refills the rps bucket
        // Five cells refilled: a request for 8 gets those 5.
        assert_eq!(limiter.acquire(8), Grant::Granted(5));
        assert!(matches!(limiter.acquire(1), Grant::BudgetSpent(_)));
    }

    #[test]
    fn a_drained_rps_bucket_starts_at_the_steady_rate() {
        let clock = FakeRelativeClock::default();
        let limiter = PageLimiter::new(
            BudgetPlan::split(1_000_000, 0.1, DAY),
            ceilings(250, 50),
            clock.clone(),
        );
        limiter.drain_rps();
        assert_eq!(limiter.acquire(1), Grant::Wait(Duration::from_millis(4)));
        clock.advance(Duration::from_millis(40));
        assert_eq!(limiter.acquire(50), Grant::Wait(Duration::from_millis(160)));
        assert_eq!(limiter.acquire(10), Grant::Granted(10));
    }

    #[test]
    fn media_has_its_own_ceiling() {
        let clock = FakeRelativeClock::default();
        let limiter = PageLimiter::new(
            BudgetPlan::split(1_000_000, 0.1, DAY),
            ceilings(250, 50),
            clock.clone(),
        );
        assert_eq!(limiter.acquire_media(10), Ok(()));
        assert_eq!(limiter.acquire_media(1), Err(Duration::from_millis(100)));
        clock.advance(Duration::from_millis(100));
        assert_eq!(limiter.acquire_media(1), Ok(()));
        assert_eq!(limiter.acquire_media(0), Ok(()));
    }

    #[test]
    fn rebuilding_keeps_the_spent_budget_spent() {
        let clock = FakeRelativeClock::default();
        let plan = BudgetPlan::split(1_000, 0.1, DAY); // burst 100
        let limiter = PageLimiter::new(plan, ceilings(10_000, 50), clock.clone());
        assert_eq!(limiter.acquire(50), Grant::Granted(50));
        clock.advance(Duration::from_millis(10));
        assert_eq!(limiter.acquire(30), Grant::Granted(30));
        assert_eq!(limiter.budget_remaining(), 20);

        // A larger audience: the new bucket holds 200 but only the 20 left carry over.
        let bigger = BudgetPlan::split(2_000, 0.1, DAY);
        let rebuilt = limiter.rebuild(bigger, ceilings(10_000, 50));
        assert_eq!(rebuilt.budget_remaining(), 20);
        clock.advance(Duration::from_secs(1)); // the rps bucket starts drained
        assert_eq!(rebuilt.acquire(50), Grant::Granted(20));
        clock.advance(Duration::from_millis(10));
        assert!(matches!(rebuilt.acquire(1), Grant::BudgetSpent(_)));

        // A smaller audience caps what is left at the new burst.
        let smaller = BudgetPlan::split(50, 0.1, DAY); // burst 5
        let fresh = PageLimiter::new(plan, ceilings(10_000, 50), clock.clone());
        let rebuilt = fresh.rebuild(smaller, ceilings(10_000, 50));
        assert_eq!(rebuilt.budget_remaining(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let clock = TokioClock::new();
        let limiter = PageLimiter::new(
            BudgetPlan::split(1_000_000, 0.1, DAY),
            ceilings(250, 50),
            clock,
        );
        assert_eq!(limiter.acquire(50), Grant::Granted(50));
        assert_eq!(limiter.acquire(50), Grant::Wait(Duration::from_millis(200)));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(limiter.acquire(50), Grant::Granted(50));
    }
}
