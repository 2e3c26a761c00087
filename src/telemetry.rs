//! Logs and metrics: the `tracing` subscriber, the Prometheus recorder, every metric's name,
//! kind, unit, help text and buckets in one table ([`METRICS`]), and the cardinality guard for
//! per-Page labels.
//!
//! # Metrics
//!
//! Names follow Prometheus conventions: the `pagerelay_` prefix, base units in the name, `_total`
//! counters and `_seconds` histograms with buckets (never summaries, which cannot be aggregated
//! across replicas). The modules that observe something record it with these names; nothing
//! else names a metric. Series whose label values are known in advance (dead-letter and park
//! reasons, request results, reload results…) exist at zero from the first scrape: otherwise
//! `increase()` would miss the first event after a restart, and an alert could not tell "none"
//! from "not reported".
//!
//! # Per-Page labels
//!
//! Only per-Page series carry a `page` label, and [`PageLabels`] bounds its values: at most
//! `metrics.page_label_limit` Pages get their own, every other Page counts as `page="other"`.
//! Jobs for Pages outside the registry always count as `other`, so a publisher cannot create
//! series by inventing Page ids.
//!
//! Per-Page gauges are written on every upkeep tick, for the labelled Pages only, and the
//! recorder drops a gauge that nobody wrote for [`GAUGE_IDLE_TIMEOUT`]: a Page that loses its
//! slot, or leaves the registry, stops showing a stale cooldown or budget instead of keeping it
//! forever. (Gauges that change only on events are re-touched each tick for that reason:
//! [`touch_event_gauges`].) Counters are never dropped, because a dropped counter hides
//! increments from `rate()`; a Page that loses its slot keeps its frozen
//! `pagerelay_operations_total` series until restart. The ranking prefers Pages that hold a
//! slot already, so that only happens when the busiest Pages really change.
//!
//! # Logs
//!
//! Log volume follows events, not traffic: nothing is logged per message, and nothing per batch
//! at info level.
//!
//! - **info**: the process's life — starting, consuming, draining, reloads, budget changes;
//! - **warn / error**: state changes, once each (a Page paused, cooling down, its circuit
//!   opened; the broker lost), and each batch *request* that failed as a whole (HTTP error,
//!   transport, timeout): the only line per batch, so an outage logs once per request sent;
//! - **debug**: each settled batch, and the bookkeeping of lost connections and settlements.
//!
//! Each batch runs in an info-level `batch` span with `page` and `size`, and once it is settled
//! `outcome` and `duration_ms`; every event inside it (a Page's state change, a failed request,
//! the debug "batch settled") carries those fields in the JSON output, so the context of a
//! warning is never lost even though successful batches are silent at info.
//!
//! Access tokens, app secrets and `appsecret_proof`s are `SecretString`s: they are never
//! formatted into a log line, an error, a metric label or a dead letter.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tracing_subscriber::EnvFilter;

use crate::amqp::headers::DeadLetterReason;
use crate::config::LogFormat;
use crate::pipeline::outcome::ParkReason;

// ===== logs =====

/// Installs the global subscriber. Logs go to standard error so that commands which print
/// results (`validate`, `dlq peek`, `check-config`) keep standard output clean.
///
/// Returns an error only when a subscriber is already installed.
pub fn init_tracing(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    result.map_err(|e| TelemetryError::Tracing(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot install the log subscriber: {0}")]
    Tracing(String),
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(#[from] BuildError),
}

// ===== metrics =====

/// Jobs taken from the jobs queues (each job of a park bundle counts).
pub const JOBS_CONSUMED: &str = "pagerelay_jobs_consumed_total";
/// Jobs settled, by `outcome` (delivered, retried, parked, dead_lettered, duplicate, requeued)
/// and `page`.
pub const OPERATIONS: &str = "pagerelay_operations_total";
/// Dead letters written, by `reason`.
pub const DEAD_LETTERS: &str = "pagerelay_dead_letters_total";
/// Jobs parked, by `reason`.
pub const PARKED: &str = "pagerelay_parked_total";
/// Redelivered jobs the duplicate guard acked without sending.
pub const DUPLICATES: &str = "pagerelay_duplicate_guard_hits_total";
/// Graph errors, by `code`, `subcode` and the `decision` taken.
pub const GRAPH_ERRORS: &str = "pagerelay_graph_errors_total";
/// Batch requests, by `result` (ok, http_error, transport, timeout, bad_reply).
pub const GRAPH_REQUESTS: &str = "pagerelay_graph_requests_total";
/// Duration of a batch request.
pub const GRAPH_DURATION: &str = "pagerelay_graph_request_duration_seconds";
/// Operations per batch request.
pub const BATCH_SIZE: &str = "pagerelay_batch_size_operations";
/// Jobs per message published to a delay tier by parking (1 for a job parked alone).
pub const PARK_MESSAGE_JOBS: &str = "pagerelay_park_message_jobs";
/// Publish (AMQP timestamp) to delivered.
pub const END_TO_END: &str = "pagerelay_end_to_end_latency_seconds";
/// Time a batch waited for the per-second ceiling (zero when it did not wait).
pub const LIMITER_WAIT: &str = "pagerelay_limiter_wait_seconds";
/// Per Page: the budget per window, what is left of the burst now, cooldown left, lane depth,
/// and whether it is paused (by `reason`) or its circuit open.
pub const PAGE_BUDGET: &str = "pagerelay_page_budget_calls";
pub const PAGE_BUDGET_REMAINING: &str = "pagerelay_page_budget_remaining_calls";
pub const PAGE_COOLDOWN: &str = "pagerelay_page_cooldown_remaining_seconds";
pub const PAGE_LANE_DEPTH: &str = "pagerelay_page_lane_depth_jobs";
pub const PAGE_PAUSED: &str = "pagerelay_page_paused";
pub const PAGE_CIRCUIT_OPEN: &str = "pagerelay_page_circuit_open";
/// Pages with a lane, and what is in flight to the Graph API.
pub const LANES: &str = "pagerelay_lanes";
pub const IN_FLIGHT_OPERATIONS: &str = "pagerelay_in_flight_operations";
pub const IN_FLIGHT_BATCHES: &str = "pagerelay_in_flight_batches";
/// The broker connection: up or down, reconnects, consumers, readiness.
pub const AMQP_CONNECTED: &str = "pagerelay_amqp_connected";
pub const AMQP_RECONNECTS: &str = "pagerelay_amqp_reconnects_total";
pub const AMQP_CONSUMERS: &str = "pagerelay_amqp_consumers";
pub const READY: &str = "pagerelay_ready";
/// A settlement that could not be carried out (the delivery was handed back), by `step`.
pub const SETTLE_FAILURES: &str = "pagerelay_settle_failures_total";
/// Acknowledgement frames sent on the jobs channel, by `kind` (multiple, single, requeue).
pub const ACK_FRAMES: &str = "pagerelay_amqp_ack_frames_total";
/// Configuration reloads, by `result` (ok, failed).
pub const CONFIG_RELOADS: &str = "pagerelay_config_reloads_total";
/// Audience reads from insights, by `result` (ok, failed).
pub const AUDIENCE_REFRESHES: &str = "pagerelay_audience_refreshes_total";
/// Pages in the registry.
pub const PAGES: &str = "pagerelay_pages";

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric as the scrape describes it.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
    /// Upper bounds of the buckets (histograms only).
    pub buckets: &'static [f64],
}

const fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        unit: Unit::Count,
        help,
        buckets: &[],
    }
}

const fn gauge(name: &'static str, unit: Unit, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        unit,
        help,
        buckets: &[],
    }
}

const fn histogram(
    name: &'static str,
    unit: Unit,
    help: &'static str,
    buckets: &'static [f64],
) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        unit,
        help,
        buckets,
    }
}

/// Graph batch requests: a healthy one takes tens of milliseconds to a few seconds;
/// `graph.request_timeout` (30 s by default) caps them.
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Waits for the per-second ceiling: zero for most batches (the first bucket holds them),
/// a fraction of a second under load, longer only for Pages with a low `rps`.
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Publish to delivered: milliseconds on the straight path, the retry tiers' seconds to an hour
/// after failures, and up to `retry.max_parked` (24 h) for jobs parked on a spent budget.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];
/// Operations per batch, 1 to 50: probes and quiet Pages send 1, busy Pages fill the batch.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 49.0, 50.0];

/// Jobs per park message: 1 for a job parked alone, up to `retry.park_bundle` (10,000 at most).
const PARK_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 10000.0,
];

/// Every metric pagerelay records.
pub const METRICS: &[Metric] = &[
    counter(
        JOBS_CONSUMED,
        "Jobs taken from the jobs queues, retries and redeliveries included; each job of a park bundle counts.",
    ),
    counter(
        OPERATIONS,
        "Jobs settled, by outcome (delivered, retried, parked, dead_lettered, duplicate, requeued) and page (the busiest Pages; the rest as \"other\").",
    ),
    counter(DEAD_LETTERS, "Jobs dead-lettered, by reason."),
    counter(
        PARKED,
        "Jobs parked in a delay tier, by reason (budget, cooldown, lane_full, circuit_open, paused).",
    ),
    counter(
        DUPLICATES,
        "Redelivered jobs this process had delivered already, acked without sending.",
    ),
    counter(
        GRAPH_ERRORS,
        "Graph API errors per operation, by code, subcode (empty when none) and the decision taken.",
    ),
    counter(
        GRAPH_REQUESTS,
        "Graph batch requests, by result (ok, http_error, transport, timeout, bad_reply).",
    ),
    histogram(
        GRAPH_DURATION,
        Unit::Seconds,
        "Duration of Graph batch requests, in seconds.",
        REQUEST_BUCKETS,
    ),
    histogram(
        BATCH_SIZE,
        Unit::Count,
        "Operations per Graph batch request.",
        BATCH_BUCKETS,
    ),
    histogram(
        PARK_MESSAGE_JOBS,
        Unit::Count,
        "Jobs per message published to a delay tier by parking: a lane parks its Page's jobs together, up to retry.park_bundle to a message.",
        PARK_BUCKETS,
    ),
    histogram(
        END_TO_END,
        Unit::Seconds,
        "From the job's publish time to its delivery, in seconds.",
        LATENCY_BUCKETS,
    ),
    histogram(
        LIMITER_WAIT,
        Unit::Seconds,
        "Time each batch waited for its Page's per-second ceiling, in seconds (0 when it did not wait).",
        WAIT_BUCKETS,
    ),
    gauge(
        PAGE_BUDGET,
        Unit::Count,
        "A Page's budget of calls per rolling window (24 h), after the safety factor.",
    ),
    gauge(
        PAGE_BUDGET_REMAINING,
        Unit::Count,
        "Calls a Page may make at once now: its budget bucket's level, at most limits.burst_fraction of the budget.",
    ),
    gauge(
        PAGE_COOLDOWN,
        Unit::Seconds,
        "Time left in a Page's rate-limit cooldown, in seconds.",
    ),
    gauge(
        PAGE_LANE_DEPTH,
        Unit::Count,
        "Jobs held in a Page's lane (page=\"other\": all unlabelled Pages together).",
    ),
    gauge(
        PAGE_PAUSED,
        Unit::Count,
        "1 while a Page is paused, by reason (token_invalid, appsecret_invalid, page_blocked).",
    ),
    gauge(
        PAGE_CIRCUIT_OPEN,
        Unit::Count,
        "1 while a Page's circuit is open after failed batch requests.",
    ),
    gauge(LANES, Unit::Count, "Pages with a lane in memory."),
    gauge(
        IN_FLIGHT_OPERATIONS,
        Unit::Count,
        "Operations in Graph batch requests in flight, until settled.",
    ),
    gauge(
        IN_FLIGHT_BATCHES,
        Unit::Count,
        "Graph batch requests in flight, until settled.",
    ),
    gauge(
        AMQP_CONNECTED,
        Unit::Count,
        "1 while connected to the broker.",
    ),
    counter(
        AMQP_RECONNECTS,
        "Broker sessions lost (connection, channel or consumers) and reopened.",
    ),
    gauge(AMQP_CONSUMERS, Unit::Count, "Consumers on the jobs queues."),
    gauge(
        READY,
        Unit::Count,
        "1 while connected, declared and consuming (what /readyz reports).",
    ),
    counter(
        SETTLE_FAILURES,
        "Settlements that failed and handed the delivery back to the broker, by step (publish, ack, channel_gone).",
    ),
    counter(
        ACK_FRAMES,
        "Acknowledgement frames sent on the jobs channel, by kind (multiple: one ack covering a run of deliveries; single; requeue).",
    ),
    counter(
        CONFIG_RELOADS,
        "Page registry reloads (SIGHUP), by result (ok, failed).",
    ),
    counter(
        AUDIENCE_REFRESHES,
        "Audience reads from the insights API, by result (ok, failed).",
    ),
    gauge(PAGES, Unit::Count, "Pages in the registry."),
];

/// How long a gauge may go unwritten before it leaves the scrape. Upkeep writes every live
/// gauge every 2 s; this only drops the gauges of Pages that lost their label or left.
pub const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Label values known in advance, created at zero (see the module docs).
const GRAPH_REQUEST_RESULTS: [&str; 5] = ["ok", "http_error", "transport", "timeout", "bad_reply"];
const SETTLE_STEPS: [&str; 3] = ["publish", "ack", "channel_gone"];
const ACK_FRAME_KINDS: [&str; 3] = ["multiple", "single", "requeue"];
const RESULTS: [&str; 2] = ["ok", "failed"];

/// The exporter, configured: buckets for every histogram and the idle timeout for gauges.
pub fn builder() -> Result<PrometheusBuilder, BuildError> {
    let mut builder =
        PrometheusBuilder::new().idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT));
    for metric in METRICS.iter().filter(|m| m.kind == Kind::Histogram) {
        builder =
            builder.set_buckets_for_metric(Matcher::Full(metric.name.into()), metric.buckets)?;
    }
    Ok(builder)
}

/// Installs the global Prometheus recorder and describes every metric. Call once per process,
/// before anything is recorded.
pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    let handle = builder()?.install_recorder()?;
    describe();
    Ok(handle)
}

/// Describes every metric to the current recorder and creates the series known in advance at
/// zero. Descriptions given before a recorder is installed are lost, hence "after installing".
pub fn describe() {
    for metric in METRICS {
        match metric.kind {
            Kind::Counter => describe_counter!(metric.name, metric.unit, metric.help),
            Kind::Gauge => describe_gauge!(metric.name, metric.unit, metric.help),
            Kind::Histogram => describe_histogram!(metric.name, metric.unit, metric.help),
        }
    }
    for name in [JOBS_CONSUMED, DUPLICATES, AMQP_RECONNECTS] {
        metrics::counter!(name).absolute(0);
    }
    for reason in DeadLetterReason::ALL {
        metrics::counter!(DEAD_LETTERS, "reason" => reason.as_str()).absolute(0);
    }
    for reason in ParkReason::LABELS {
        metrics::counter!(PARKED, "reason" => reason).absolute(0);
    }
    for result in GRAPH_REQUEST_RESULTS {
        metrics::counter!(GRAPH_REQUESTS, "result" => result).absolute(0);
    }
    for step in SETTLE_STEPS {
        metrics::counter!(SETTLE_FAILURES, "step" => step).absolute(0);
    }
    for kind in ACK_FRAME_KINDS {
        metrics::counter!(ACK_FRAMES, "kind" => kind).absolute(0);
    }
    for result in RESULTS {
        metrics::counter!(CONFIG_RELOADS, "result" => result).absolute(0);
        metrics::counter!(AUDIENCE_REFRESHES, "result" => result).absolute(0);
    }
    // Not ready, not connected, nothing in flight: true until the pipeline says otherwise, and
    // `pagerelay_ready == 0` must be visible even if the broker is never reached.
    for name in [
        READY,
        AMQP_CONNECTED,
        AMQP_CONSUMERS,
        IN_FLIGHT_OPERATIONS,
        IN_FLIGHT_BATCHES,
        LANES,
        PAGES,
    ] {
        metrics::gauge!(name).set(0.0);
    }
}

/// Re-writes the gauges that change only on events (without changing them), so that the idle
/// timeout meant for departed Pages never drops them. Called by every upkeep tick.
pub fn touch_event_gauges() {
    for name in [
        READY,
        AMQP_CONNECTED,
        AMQP_CONSUMERS,
        IN_FLIGHT_OPERATIONS,
        IN_FLIGHT_BATCHES,
    ] {
        metrics::gauge!(name).increment(0.0);
    }
}

// ===== per-Page labels =====

/// The label that Pages without their own series share.
pub const OTHER_PAGES: &str = "other";

/// The cardinality guard for per-Page labels: at most `limit` Pages get their own `page`
/// label; the rest share `page="other"`. Pages are admitted as they are first seen while there is
/// room, and [`PageLabels::rerank`] periodically gives the slots to the Pages with the most
/// volume, so the busiest Pages stay visible.
pub struct PageLabels {
    limit: usize,
    labelled: ArcSwap<HashSet<Arc<str>>>,
    admit: Mutex<()>,
}

impl PageLabels {
    pub fn new(limit: usize) -> Self {
        PageLabels {
            limit,
            labelled: ArcSwap::from_pointee(HashSet::new()),
            admit: Mutex::new(()),
        }
    }

    /// The label for `page`.
    pub fn label(&self, page: &Arc<str>) -> Arc<str> {
        if self.labelled.load().contains(page) {
            return page.clone();
        }
        let _guard = self.admit.lock().expect("not poisoned");
        let current = self.labelled.load();
        if current.contains(page) {
            return page.clone();
        }
        if current.len() < self.limit {
            let mut next = HashSet::clone(&current);
            next.insert(page.clone());
            self.labelled.store(Arc::new(next));
            return page.clone();
        }
        Arc::from(OTHER_PAGES)
    }

    /// Gives the slots to the `limit` Pages with the most volume since the last ranking.
    ///
    /// Every change of slot leaves a frozen counter series behind (see the module docs), so the
    /// ranking churns as little as it can: a Page that holds a slot keeps it against any Page
    /// with no more volume than its own, and a Page with no volume at all is never promoted (at
    /// start-up, when every volume is zero, nothing changes). Pages missing from `volumes` —
    /// gone from the registry — lose their slot.
    pub fn rerank<'a>(&self, volumes: impl IntoIterator<Item = (&'a Arc<str>, u64)>) {
        let _guard = self.admit.lock().expect("not poisoned");
        let current = self.labelled.load();
        let mut ranked: Vec<(&Arc<str>, u64, bool)> = volumes
            .into_iter()
            .map(|(page, volume)| (page, volume, current.contains(page)))
            .filter(|(_, volume, holds)| *volume > 0 || *holds)
            .collect();
        // Most volume first; on equal volume, holders first; then by id, for a stable order.
        ranked.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| b.2.cmp(&a.2))
                .then_with(|| a.0.cmp(b.0))
        });
        let next: HashSet<Arc<str>> = ranked
            .into_iter()
            .take(self.limit)
            .map(|(page, _, _)| page.clone())
            .collect();
        self.labelled.store(Arc::new(next));
    }

    pub fn is_labelled(&self, page: &str) -> bool {
        self.labelled.load().contains(page)
    }
}

/// Reads and resets a volume counter (used by the ranking).
pub fn take_volume(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.swap(0, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_limit_pages_get_their_own_label() {
        let labels = PageLabels::new(3);
        let pages: Vec<Arc<str>> = (0..10).map(|i| Arc::from(format!("{i}"))).collect();
        let got: Vec<String> = pages.iter().map(|p| labels.label(p).to_string()).collect();
        assert_eq!(
            got,
            [
                "0", "1", "2", "other", "other", "other", "other", "other", "other", "other"
            ]
        );
        // The busiest Pages take the slots at the next ranking.
        let volumes: Vec<(&Arc<str>, u64)> = pages
            .iter()
            .enumerate()
            .map(|(i, p)| (p, i as u64))
            .collect();
        labels.rerank(volumes);
        assert_eq!(&*labels.label(&pages[9]), "9");
        assert_eq!(&*labels.label(&pages[7]), "7");
        assert_eq!(&*labels.label(&pages[0]), "other");
        assert!(labels.is_labelled("8"));
    }

    #[test]
    fn ranking_keeps_holders_on_ties_and_never_promotes_idle_pages() {
        let labels = PageLabels::new(2);
        let pages: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("{i}"))).collect();
        labels.label(&pages[2]);
        labels.label(&pages[3]);
        let held = |labels: &PageLabels| -> Vec<bool> {
            pages.iter().map(|p| labels.is_labelled(p)).collect()
        };

        // At start-up every volume is zero: nothing moves (no lexical "winners").
        labels.rerank(pages.iter().map(|p| (p, 0)));
        assert_eq!(held(&labels), [false, false, true, true]);

        // Page 0 outranks both holders; page 1 only ties with holder 3, which keeps its slot.
        labels.rerank(pages.iter().zip([5, 1, 0, 1]));
        assert_eq!(held(&labels), [true, false, false, true]);

        // A Page that left the registry loses its slot; an idle one is not promoted into it.
        labels.rerank(pages[..3].iter().map(|p| (p, 0)));
        assert_eq!(held(&labels), [true, false, false, false]);
        assert_eq!(
            &*labels.label(&pages[1]),
            "1",
            "a free slot is taken on first sight"
        );
        assert_eq!(&*labels.label(&pages[2]), OTHER_PAGES);
    }

    #[test]
    fn metrics_follow_the_naming_conventions() {
        let mut names = HashSet::new();
        for m in METRICS {
            assert!(names.insert(m.name), "{} is listed twice", m.name);
            assert!(m.name.starts_with("pagerelay_"), "{}", m.name);
            assert!(
                m.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{} is not snake_case",
                m.name
            );
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                m.name
            );
            if m.unit == Unit::Seconds {
                assert!(m.name.ends_with("_seconds"), "{}", m.name);
            }
            assert!(!m.help.is_empty() && m.help.ends_with('.'), "{}", m.name);
            if m.kind == Kind::Histogram {
                assert!(!m.buckets.is_empty(), "{} has no buckets", m.name);
                assert!(
                    m.buckets.windows(2).all(|w| w[0] < w[1]),
                    "{}: buckets must increase",
                    m.name
                );
            } else {
                assert!(m.buckets.is_empty(), "{}", m.name);
            }
        }
    }

    #[test]
    fn the_scrape_describes_every_metric_and_renders_histograms_with_buckets() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            for m in METRICS {
                match m.kind {
                    Kind::Counter => metrics::counter!(m.name).increment(1),
                    Kind::Gauge => metrics::gauge!(m.name).set(1.0),
                    Kind::Histogram => metrics::histogram!(m.name).record(1.0),
                }
            }
        });
        let text = handle.render();
        for m in METRICS {
            let kind = match m.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert!(
                text.contains(&format!("# HELP {} {}\n", m.name, m.help)),
                "{} has no help",
                m.name
            );
            assert!(
                text.contains(&format!("# TYPE {} {kind}\n", m.name)),
                "{} is not a {kind}",
                m.name
            );
            if m.kind == Kind::Histogram {
                let buckets = text
                    .lines()
                    .filter(|l| l.starts_with(&format!("{}_bucket{{", m.name)))
                    .count();
                assert_eq!(buckets, m.buckets.len() + 1, "{}: buckets and +Inf", m.name);
            }
        }
        // Known label values start at zero; so do the connection gauges.
        for series in [
            "pagerelay_dead_letters_total{reason=\"park_limit\"} 0",
            "pagerelay_parked_total{reason=\"circuit_open\"} 0",
            "pagerelay_graph_requests_total{result=\"bad_reply\"} 0",
            "pagerelay_settle_failures_total{step=\"channel_gone\"} 0",
            "pagerelay_config_reloads_total{result=\"failed\"} 0",
            "pagerelay_audience_refreshes_total{result=\"failed\"} 0",
        ] {
            assert!(text.lines().any(|l| l == series), "{series} missing");
        }
    }
}
