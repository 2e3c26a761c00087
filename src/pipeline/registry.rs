//! The Page registry at run time: each Page's settings, limiter and health (cooldown, pause,
//! circuit, spent budget), shared by its lane, its in-flight batches and the admin endpoints.
//!
//! Settings and limiters are swapped whole on reload (`ArcSwap`), never mutated, so a batch in
//! flight keeps the token it was built with. [`Control`] is the small state machine that says
//! whether a Page may send now; it is pure and tested with explicit instants.
//!
//! It does not schedule anything (see [`super::lane`]) or talk to the Graph API.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::limiter::{BudgetPlan, Ceilings, PageLimiter};
use super::outcome::ParkReason;
use crate::config::{Audience, LimitSettings, PageSettings, RetrySettings, Settings};
use crate::graph::{PageAuth, StopReason};

/// One Page's settings as the pipeline uses them.
pub struct PageConfig {
    /// The token and its `appsecret_proof`, computed once per token.
    pub auth: PageAuth,
    pub audience: Audience,
    pub ceilings: Ceilings,
    /// A short fingerprint of the token, to notice rotations without keeping or logging it.
    /// Computed once: every settled batch reports to its Page's circuit with it.
    token_fingerprint: u64,
}

impl PageConfig {
    fn new(page: &PageSettings, limits: &LimitSettings, app_secret: Option<&SecretString>) -> Self {
        PageConfig {
            token_fingerprint: fingerprint(page.token()),
            auth: PageAuth::new(page.token().clone(), app_secret),
            audience: page.audience,
            ceilings: Ceilings {
                rps: page.rps.unwrap_or(limits.rps),
                rps_burst: limits.rps_burst,
                media_rps: page.media_rps.unwrap_or(limits.media_rps),
                media_burst: limits.media_burst,
            },
        }
    }
}

fn fingerprint(token: &SecretString) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.expose_secret().hash(&mut h);
    h.finish()
}

/// Whether a Page may send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Open,
    /// One small batch may go to find out whether the Page recovered.
    Probe,
    /// Nothing may go until `until`; jobs beyond the blocked lane capacity are parked.
    Blocked {
        reason: ParkReason,
        until: Instant,
    },
}

/// A Page's health: the state machine behind [`Admission`].
#[derive(Debug, Clone, Default)]
pub struct Control {
    cooldown_until: Option<Instant>,
    /// Consecutive rate-limit replies without an estimate, for the exponential cooldown.
    cooldown_step: u32,
    budget_until: Option<Instant>,
    pause: Option<Pause>,
    circuit: Circuit,
}

#[derive(Debug, Clone)]
struct Pause {
    reason: StopReason,
    since: Instant,
    probe_at: Instant,
    probing: bool,
    token_fingerprint: u64,
}

#[derive(Debug, Clone, Default)]
struct Circuit {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    delay: Duration,
}

/// What a finished batch tells the Page's health.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// At least one operation got a definite answer from the Graph API.
    Answered,
    /// The whole batch failed (5xx, transport, timeout, undecodable reply).
    BatchFailed,
    /// Neither: no operation was answered, yet the request did not fail (every entry `null`,
    /// not executed). Nothing was learned about the Page's health, but a probe that ends this
    /// way is over: without this signal it would stay "in flight" forever, and the Page's
    /// jobs would be parked behind a circuit that never probes again.
    Inconclusive,
    /// A rate-limit reply, with the platform's estimate when it gave one.
    Throttled { regain: Option<Duration> },
    /// The Page must stop: its token, app secret proof or standing was refused.
    Stop(StopReason),
}

impl Control {
    /// Whether the Page may send at `now`. The most severe block wins.
    pub fn admission(&self, now: Instant) -> Admission {
        if let Some(pause) = &self.pause {
            if pause.probing || now < pause.probe_at {
                return Admission::Blocked {
                    reason: ParkReason::Paused(pause.reason),
                    until: pause.probe_at.max(now),
                };
            }
            return Admission::Probe;
        }
        if let Some(until) = self.circuit.open_until {
            if self.circuit.probing || now < until {
                return Admission::Blocked {
                    reason: ParkReason::CircuitOpen,
                    until: until.max(now),
                };
            }
            return Admission::Probe;
        }
        if let Some(until) = self.cooldown_until.filter(|u| now < *u) {
            return Admission::Blocked {
                reason: ParkReason::Cooldown,
                until,
            };
        }
        if let Some(until) = self.budget_until.filter(|u| now < *u) {
            return Admission::Blocked {
                reason: ParkReason::Budget,
                until,
            };
        }
        Admission::Open
    }

    /// Marks a probe as sent, so that only one is in flight.
    pub fn probe_sent(&mut self) {
        if let Some(pause) = &mut self.pause {
            pause.probing = true;
        } else {
            self.circuit.probing = true;
        }
    }

    /// The budget is spent until `until`.
    pub fn budget_spent(&mut self, until: Instant) {
        self.budget_until = Some(until);
    }

    /// Applies what a batch told about the Page. Returns a description of a state change worth
    /// one log line, if there was one.
    pub fn apply(
        &mut self,
        signal: Signal,
        now: Instant,
        retry: &RetrySettings,
        token_fingerprint: u64,
    ) -> Option<String> {
        match signal {
            Signal::Answered => {
                self.cooldown_step = 0;
                let mut change = None;
                if self.circuit.open_until.is_some() {
                    change = Some("circuit closed: the Graph API answers again".to_string());
                }
                self.circuit = Circuit::default();
                if let Some(pause) = self.pause.take() {
                    change = Some(format!(
                        "resumed after a successful probe ({})",
                        pause.reason.as_str()
                    ));
                }
                change
            }
            Signal::Inconclusive => {
                self.circuit.probing = false;
                if let Some(pause) = &mut self.pause {
                    pause.probing = false;
                }
                None
            }
            Signal::BatchFailed => {
                self.circuit.failures += 1;
                let was_open = self.circuit.open_until.is_some();
                if was_open || self.circuit.failures >= retry.circuit_failures {
                    // Back off from the shortest cooldown to the longest, doubling per failed
                    // probe, so an outage costs a few calls per Page rather than one per second.
                    self.circuit.delay = if was_open {
                        (self.circuit.delay * 2).min(retry.cooldown_max)
                    } else {
                        retry.cooldown_min
                    };
                    self.circuit.open_until = Some(now + self.circuit.delay);
                    self.circuit.probing = false;
                    return (!was_open).then(|| {
                        format!(
                            "circuit open after {} failed batches; probing again in {}",
                            self.circuit.failures,
                            humantime::format_duration(self.circuit.delay)
                        )
                    });
                }
                None
            }
            Signal::Throttled { regain } => {
                let wait = match regain {
                    Some(estimate) if !estimate.is_zero() => estimate,
                    _ => {
                        let wait = retry
                            .cooldown_min
                            .saturating_mul(1u32 << self.cooldown_step.min(16))
                            .min(retry.cooldown_max);
                        self.cooldown_step += 1;
                        wait
                    }
                };
                let until = now + wait;
                let extended = self.cooldown_until.is_none_or(|u| u < until);
                if extended {
                    let was_cooling = self.cooldown_until.is_some_and(|u| u > now);
                    self.cooldown_until = Some(until);
                    if !was_cooling {
                        return Some(format!(
                            "rate limited: cooling down for {}",
                            humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
                        ));
                    }
                }
                None
            }
            Signal::Stop(reason) => {
                let probe_after = retry.cooldown_max;
                let change = match &self.pause {
                    Some(p) if p.reason == reason => None,
                    _ => Some(format!(
                        "paused: {}; its jobs are parked until the token changes or a probe in {} succeeds",
                        reason.as_str(),
                        humantime::format_duration(probe_after)
                    )),
                };
                let since = self.pause.as_ref().map_or(now, |p| p.since);
                self.pause = Some(Pause {
                    reason,
                    since,
                    probe_at: now + probe_after,
                    probing: false,
                    token_fingerprint,
                });
                change
            }
        }
    }

    /// A new token lifts a pause caused by the old one.
    fn token_changed(&mut self, fingerprint: u64) -> bool {
        if self
            .pause
            .as_ref()
            .is_some_and(|p| p.token_fingerprint != fingerprint)
        {
            self.pause = None;
            return true;
        }
        false
    }

    pub fn paused(&self) -> Option<StopReason> {
        self.pause.as_ref().map(|p| p.reason)
    }

    pub fn cooldown_remaining(&self, now: Instant) -> Duration {
        self.cooldown_until
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now))
    }

    pub fn circuit_open(&self) -> bool {
        self.circuit.open_until.is_some()
    }
}

/// One Page at run time.
pub struct PageState {
    pub id: Arc<str>,
    config: ArcSwap<PageConfig>,
    limiter: ArcSwap<PageLimiter>,
    control: Mutex<Control>,
    /// The audience the limiter was built for (the configured one, or the last read).
    audience: AtomicU64,
    /// Jobs in the Page's lane, for `/pages` and the lane depth gauge.
    pub lane_depth: AtomicUsize,
    /// Operations sent and jobs consumed, for the cardinality guard's ranking.
    pub volume: AtomicU64,
    /// The delivered-operations counter under the Page's current label, kept because every
    /// settled batch bumps it and a counter found by name costs a key, a hash and a lock.
    delivered: Mutex<Option<(Arc<str>, metrics::Counter)>>,
}

impl PageState {
    fn new(page: &PageSettings, settings: &Settings) -> Self {
        let config = PageConfig::new(page, &settings.limits, settings.graph.app_secret.as_ref());
        let audience = match page.audience {
            Audience::Fixed(n) => n,
            Audience::Auto => settings.limits.default_audience,
        };
        let limiter = PageLimiter::new(
            BudgetPlan::for_audience(audience, &settings.limits),
            config.ceilings,
            Default::default(),
        );
        PageState {
            id: Arc::from(page.id.as_str()),
            config: ArcSwap::from_pointee(config),
            limiter: ArcSwap::from_pointee(limiter),
            control: Mutex::new(Control::default()),
            audience: AtomicU64::new(audience),
            lane_depth: AtomicUsize::new(0),
            volume: AtomicU64::new(0),
            delivered: Mutex::new(None),
        }
    }

    /// The delivered-operations counter labelled `label`: the one kept, or a new one from
    /// `register` when the Page's label changed (the cardinality guard reranked).
    pub fn delivered_counter(
        &self,
        label: &Arc<str>,
        register: impl FnOnce() -> metrics::Counter,
    ) -> metrics::Counter {
        let mut kept = self.delivered.lock().expect("not poisoned");
        match &*kept {
            Some((kept_label, counter)) if kept_label == label => counter.clone(),
            _ => {
                let counter = register();
                *kept = Some((label.clone(), counter.clone()));
                counter
            }
        }
    }

    pub fn config(&self) -> Arc<PageConfig> {
        self.config.load_full()
    }

    pub fn limiter(&self) -> Arc<PageLimiter> {
        self.limiter.load_full()
    }

    pub fn audience(&self) -> u64 {
        self.audience.load(Ordering::Relaxed)
    }

    pub fn admission(&self, now: Instant) -> Admission {
        self.control.lock().expect("not poisoned").admission(now)
    }

    pub fn with_control<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        f(&mut self.control.lock().expect("not poisoned"))
    }

    /// Applies a batch's signal; logs a state change once.
    pub fn signal(&self, signal: Signal, retry: &RetrySettings) {
        let fingerprint = self.config().token_fingerprint;
        let change = self.with_control(|c| c.apply(signal, Instant::now(), retry, fingerprint));
        if let Some(change) = change {
            match signal {
                Signal::Stop(_) => tracing::error!(page = %self.id, "{change}"),
                _ => tracing::warn!(page = %self.id, "{change}"),
            }
        }
    }

    /// Sets the audience (from insights or a reload) and rebuilds the limiter if it changed.
    pub fn set_audience(&self, audience: u64, limits: &LimitSettings) {
        let previous = self.audience.swap(audience, Ordering::Relaxed);
        if previous != audience {
            let plan = BudgetPlan::for_audience(audience, limits);
            let current = self.limiter();
            self.limiter
                .store(Arc::new(current.rebuild(plan, current.ceilings())));
            tracing::info!(page = %self.id, audience, budget = plan.budget, "Page budget changed");
        }
    }

    fn reconfigure(&self, page: &PageSettings, settings: &Settings) {
        let config = PageConfig::new(page, &settings.limits, settings.graph.app_secret.as_ref());
        let fingerprint = config.token_fingerprint;
        let old = self.config();
        let audience = match page.audience {
            Audience::Fixed(n) => n,
            // Keep the last value read from insights.
            Audience::Auto if old.audience == Audience::Auto => self.audience(),
            Audience::Auto => settings.limits.default_audience,
        };
        let plan = BudgetPlan::for_audience(audience, &settings.limits);
        let current = self.limiter();
        if current.plan() != plan || current.ceilings() != config.ceilings {
            self.limiter
                .store(Arc::new(current.rebuild(plan, config.ceilings)));
        }
        self.audience.store(audience, Ordering::Relaxed);
        self.config.store(Arc::new(config));
        if self.with_control(|c| c.token_changed(fingerprint)) {
            tracing::warn!(page = %self.id, "resumed: its token changed");
        }
    }
}

/// All Pages, swapped whole on reload; lookups are lock-free.
#[derive(Default)]
pub struct Registry {
    pages: ArcSwap<foldhash::HashMap<Arc<str>, Arc<PageState>>>,
}

impl Registry {
    pub fn new(settings: &Settings) -> Self {
        let registry = Registry::default();
        registry.reload(settings);
        registry
    }

    pub fn get(&self, page_id: &str) -> Option<Arc<PageState>> {
        self.pages.load().get(page_id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<PageState>> {
        let mut pages: Vec<_> = self.pages.load().values().cloned().collect();
        pages.sort_by(|a, b| a.id.cmp(&b.id));
        pages
    }

    pub fn len(&self) -> usize {
        self.pages.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a new registry: new Pages appear, removed ones disappear (their jobs become
    /// `unknown_page`), and existing ones keep their limiter state and health while taking new
    /// tokens, audiences and ceilings.
    pub fn reload(&self, settings: &Settings) -> ReloadSummary {
        let current = self.pages.load();
        let mut next =
            foldhash::HashMap::with_capacity_and_hasher(settings.pages.len(), Default::default());
        let mut summary = ReloadSummary::default();
        for page in &settings.pages {
            let state = match current.get(page.id.as_str()) {
                Some(existing) => {
                    existing.reconfigure(page, settings);
                    summary.kept += 1;
                    existing.clone()
                }
                None => {
                    summary.added += 1;
                    Arc::new(PageState::new(page, settings))
                }
            };
            next.insert(state.id.clone(), state);
        }
        summary.removed = current.keys().filter(|id| !next.contains_key(*id)).count();
        self.pages.store(Arc::new(next));
        summary
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: usize,
    pub kept: usize,
    pub removed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadOptions;

    fn retry() -> RetrySettings {
        Settings::load(&LoadOptions::default()).unwrap().retry
    }

    #[test]
    fn the_delivered_counter_is_registered_once_per_label() {
        let settings = Settings::load(&LoadOptions::default()).unwrap();
        let page = PageSettings {
            id: "1001".into(),
            token: SecretString::from("token-1001"),
            token_source: crate::config::SecretSource::Env("T".into()),
            audience: Audience::Fixed(1000),
            rps: None,
            media_rps: None,
        };
        let state = PageState::new(&page, &settings);
        let registered = std::cell::Cell::new(0);
        let counter_for = |label: &str| {
            state
                .delivered_counter(&Arc::from(label), || {
                    registered.set(registered.get() + 1);
                    metrics::Counter::noop()
                })
                .increment(1);
            registered.get()
        };
        assert_eq!(counter_for("1001"), 1);
        assert_eq!(counter_for("1001"), 1, "kept");
        assert_eq!(
            counter_for("other"),
            2,
            "reranked out: a new label, a new counter"
        );
        assert_eq!(counter_for("other"), 2);
        assert_eq!(counter_for("1001"), 3, "and back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_cools_the_page_down_exponentially_or_as_estimated() {
        let retry = retry();
        let mut c = Control::default();
        let t0 = Instant::now();
        assert_eq!(c.admission(t0), Admission::Open);
        assert!(
            c.apply(Signal::Throttled { regain: None }, t0, &retry, 0)
                .is_some()
        );
        assert_eq!(
            c.admission(t0),
            Admission::Blocked {
                reason: ParkReason::Cooldown,
                until: t0 + Duration::from_secs(30)
            }
        );
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(c.admission(t1), Admission::Open);
        c.apply(Signal::Throttled { regain: None }, t1, &retry, 0);
        assert_eq!(c.cooldown_remaining(t1), Duration::from_secs(60));
        // The platform's estimate wins when it gives one.
        let t2 = t1 + Duration::from_secs(60);
        c.apply(
            Signal::Throttled {
                regain: Some(Duration::from_secs(300)),
            },
            t2,
            &retry,
            0,
        );
        assert_eq!(c.cooldown_remaining(t2), Duration::from_secs(300));
        // Success resets the exponential step.
        let t3 = t2 + Duration::from_secs(300);
        c.apply(Signal::Answered, t3, &retry, 0);
        c.apply(Signal::Throttled { regain: None }, t3, &retry, 0);
        assert_eq!(c.cooldown_remaining(t3), Duration::from_secs(30));
        // The cooldown never exceeds the maximum.
        let mut t = t3;
        for _ in 0..20 {
            t += Duration::from_secs(3600);
            c.apply(Signal::Throttled { regain: None }, t, &retry, 0);
        }
        assert_eq!(c.cooldown_remaining(t), retry.cooldown_max);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_batches_open_the_circuit_and_a_probe_closes_it() {
        let retry = retry();
        let mut c = Control::default();
        let t0 = Instant::now();
        assert!(c.apply(Signal::BatchFailed, t0, &retry, 0).is_none());
        assert!(c.apply(Signal::BatchFailed, t0, &retry, 0).is_none());
        assert!(
            c.apply(Signal::BatchFailed, t0, &retry, 0).is_some(),
            "third failure opens it"
        );
        assert_eq!(
            c.admission(t0),
            Admission::Blocked {
                reason: ParkReason::CircuitOpen,
                until: t0 + retry.cooldown_min
            }
        );
        let t1 = t0 + retry.cooldown_min;
        assert_eq!(c.admission(t1), Admission::Probe);
        c.probe_sent();
        assert!(
            matches!(c.admission(t1), Admission::Blocked { .. }),
            "one probe at a time"
        );
        // A failed probe doubles the wait.
        c.apply(Signal::BatchFailed, t1, &retry, 0);
        assert_eq!(
            c.admission(t1),
            Admission::Blocked {
                reason: ParkReason::CircuitOpen,
                until: t1 + retry.cooldown_min * 2
            }
        );
        let t2 = t1 + retry.cooldown_min * 2;
        assert_eq!(c.admission(t2), Admission::Probe);
        // A probe whose only entry came back `null` says nothing, but it is over: the next job
        // probes again instead of waiting behind a probe that will never answer.
        c.probe_sent();
        assert!(c.apply(Signal::Inconclusive, t2, &retry, 0).is_none());
        assert_eq!(c.admission(t2), Admission::Probe);
        c.probe_sent();
        assert!(c.apply(Signal::Answered, t2, &retry, 0).is_some());
        assert_eq!(c.admission(t2), Admission::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_pauses_until_the_token_changes() {
        let retry = retry();
        let mut c = Control::default();
        let t0 = Instant::now();
        assert!(
            c.apply(Signal::Stop(StopReason::TokenInvalid), t0, &retry, 7)
                .is_some()
        );
        assert!(
            c.apply(Signal::Stop(StopReason::TokenInvalid), t0, &retry, 7)
                .is_none(),
            "logged once"
        );
        assert_eq!(c.paused(), Some(StopReason::TokenInvalid));
        assert!(matches!(
            c.admission(t0),
            Admission::Blocked {
                reason: ParkReason::Paused(StopReason::TokenInvalid),
                ..
            }
        ));
        assert!(!c.token_changed(7), "same token: still paused");
        assert!(c.token_changed(8));
        assert_eq!(c.admission(t0), Admission::Open);
        // Without a new token, a probe after the longest cooldown.
        c.apply(Signal::Stop(StopReason::PageBlocked), t0, &retry, 8);
        assert_eq!(c.admission(t0 + retry.cooldown_max), Admission::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_blocks_until_the_refill() {
        let mut c = Control::default();
        let t0 = Instant::now();
        c.budget_spent(t0 + Duration::from_secs(5));
        assert_eq!(
            c.admission(t0),
            Admission::Blocked {
                reason: ParkReason::Budget,
                until: t0 + Duration::from_secs(5)
            }
        );
        assert_eq!(c.admission(t0 + Duration::from_secs(5)), Admission::Open);
    }
}
