//! Logs and metrics: the `tracing` subscriber, the Prometheus recorder, every metric's name,
//! unit and help text in one place, and the cardinality guard for per-Page labels.
//!
//! Metric names follow Prometheus conventions: the `pagerelay_` prefix, base units, `_total`
//! counters and `_seconds` histograms with buckets (never summaries, which cannot be aggregated
//! across replicas). The modules that observe something record it with these names; nothing
//! else names a metric.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

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

// ===== metric names =====

/// Deliveries taken from the jobs queues.
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
/// Publish (AMQP timestamp) to delivered.
pub const END_TO_END: &str = "pagerelay_end_to_end_latency_seconds";
/// Time a batch waited for the per-second ceiling.
pub const LIMITER_WAIT: &str = "pagerelay_limiter_wait_seconds";
/// Per Page: the budget per window, what is left of the burst now, cooldown left, lane depth,
/// and whether it is paused (by `reason`).
pub const PAGE_BUDGET: &str = "pagerelay_page_budget_calls";
pub const PAGE_BUDGET_REMAINING: &str = "pagerelay_page_budget_remaining_calls";
pub const PAGE_COOLDOWN: &str = "pagerelay_page_cooldown_remaining_seconds";
pub const PAGE_LANE_DEPTH: &str = "pagerelay_page_lane_depth_jobs";
pub const PAGE_PAUSED: &str = "pagerelay_page_paused";
pub const PAGE_CIRCUIT_OPEN: &str = "pagerelay_page_circuit_open";
/// Pages with a lane, jobs held in lanes, and what is in flight to the Graph API.
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
/// Configuration reloads, by `result` (ok, failed).
pub const CONFIG_RELOADS: &str = "pagerelay_config_reloads_total";
/// Audience reads from insights, by `result` (ok, failed).
pub const AUDIENCE_REFRESHES: &str = "pagerelay_audience_refreshes_total";
/// Pages in the registry.
pub const PAGES: &str = "pagerelay_pages";

/// Histogram buckets, chosen for the values each holds.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 49.0, 50.0];

/// Installs the global Prometheus recorder and describes every metric. Call once per process,
/// before anything is recorded.
pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(GRAPH_DURATION.into()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(LIMITER_WAIT.into()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(END_TO_END.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(
        JOBS_CONSUMED,
        Unit::Count,
        "Deliveries taken from the jobs queues."
    );
    describe_counter!(
        OPERATIONS,
        Unit::Count,
        "Jobs settled, by outcome (delivered, retried, parked, dead_lettered, duplicate, requeued) and page."
    );
    describe_counter!(DEAD_LETTERS, Unit::Count, "Jobs dead-lettered, by reason.");
    describe_counter!(
        PARKED,
        Unit::Count,
        "Jobs parked in a delay tier, by reason."
    );
    describe_counter!(
        DUPLICATES,
        Unit::Count,
        "Redelivered jobs this process had delivered already, acked without sending."
    );
    describe_counter!(
        GRAPH_ERRORS,
        Unit::Count,
        "Graph API errors, by code, subcode and the decision taken."
    );
    describe_counter!(
        GRAPH_REQUESTS,
        Unit::Count,
        "Graph batch requests, by result (ok, http_error, transport, timeout, bad_reply)."
    );
    describe_histogram!(
        GRAPH_DURATION,
        Unit::Seconds,
        "Duration of Graph batch requests."
    );
    describe_histogram!(
        BATCH_SIZE,
        Unit::Count,
        "Operations per Graph batch request."
    );
    describe_histogram!(
        END_TO_END,
        Unit::Seconds,
        "From the job's publish time to its delivery."
    );
    describe_histogram!(
        LIMITER_WAIT,
        Unit::Seconds,
        "Time a batch waited for its Page's per-second ceiling."
    );
    describe_gauge!(
        PAGE_BUDGET,
        Unit::Count,
        "A Page's budget of calls per rolling window."
    );
    describe_gauge!(
        PAGE_BUDGET_REMAINING,
        Unit::Count,
        "Calls a Page may make at once now (the budget bucket's level)."
    );
    describe_gauge!(
        PAGE_COOLDOWN,
        Unit::Seconds,
        "Time left in a Page's rate-limit cooldown."
    );
    describe_gauge!(PAGE_LANE_DEPTH, Unit::Count, "Jobs held in a Page's lane.");
    describe_gauge!(
        PAGE_PAUSED,
        Unit::Count,
        "1 while a Page is paused, by reason."
    );
    describe_gauge!(
        PAGE_CIRCUIT_OPEN,
        Unit::Count,
        "1 while a Page's circuit is open."
    );
    describe_gauge!(LANES, Unit::Count, "Pages with a lane in memory.");
    describe_gauge!(
        IN_FLIGHT_OPERATIONS,
        Unit::Count,
        "Operations in Graph requests in flight."
    );
    describe_gauge!(
        IN_FLIGHT_BATCHES,
        Unit::Count,
        "Graph batch requests in flight."
    );
    describe_gauge!(
        AMQP_CONNECTED,
        Unit::Count,
        "1 while connected to the broker."
    );
    describe_counter!(
        AMQP_RECONNECTS,
        Unit::Count,
        "Broker connections lost and reopened."
    );
    describe_gauge!(AMQP_CONSUMERS, Unit::Count, "Consumers on the jobs queues.");
    describe_gauge!(
        READY,
        Unit::Count,
        "1 while connected, declared and consuming."
    );
    describe_counter!(
        SETTLE_FAILURES,
        Unit::Count,
        "Settlements that failed and handed the delivery back, by step (publish, ack)."
    );
    describe_counter!(
        CONFIG_RELOADS,
        Unit::Count,
        "Configuration reloads, by result."
    );
    describe_counter!(
        AUDIENCE_REFRESHES,
        Unit::Count,
        "Audience reads from the insights API, by result."
    );
    describe_gauge!(PAGES, Unit::Count, "Pages in the registry.");
    // Unlabelled series exist from the first scrape, at zero.
    metrics::counter!(JOBS_CONSUMED).absolute(0);
    metrics::counter!(DUPLICATES).absolute(0);
    metrics::counter!(AMQP_RECONNECTS).absolute(0);
}

// ===== per-Page labels =====

/// The label that Pages without their own series share.
pub const OTHER_PAGES: &str = "other";

/// The cardinality guard for per-Page labels: at most `limit` Pages get their own `page`
/// label; the rest share `page="other"`. Pages are admitted as they are first seen while there is
/// room, and [`PageLabels::rerank`] periodically gives the slots to the Pages with the most
/// volume, so the busiest Pages are always visible.
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

    /// Gives the slots to the `limit` Pages with the most volume.
    pub fn rerank<'a>(&self, volumes: impl IntoIterator<Item = (&'a Arc<str>, u64)>) {
        let mut ranked: Vec<(&Arc<str>, u64)> = volumes.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let next: HashSet<Arc<str>> = ranked
            .into_iter()
            .take(self.limit)
            .map(|(p, _)| p.clone())
            .collect();
        let _guard = self.admit.lock().expect("not poisoned");
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
}
