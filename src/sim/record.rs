//! The record of the truth: every operation that counts as delivered, in the order it was executed,
//! and the counters behind `GET /_sim/stats`.
//!
//! Tests assert on this record, never on the word of the client under test. It is append-only and
//! compact (about 40 bytes plus the message body's JSON per delivery, so a million deliveries of
//! ordinary messages fit in a few hundred MB); sequence numbers are positions in it, starting at 1.
//! This module stores and presents; it does not decide what counts as delivered (the executor does).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One delivered operation as stored.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    /// Microseconds since the simulator started, when the operation executed.
    pub at_us: u64,
    /// Sequence number of the batch request it came in; 0 for a single (unbatched) send.
    pub batch: u64,
    /// Index of the Page in the registry.
    pub page: u32,
    /// The Send API body as sent (auth fields removed), as compact JSON.
    pub body: Box<str>,
}

/// The append-only delivery log.
#[derive(Debug, Default)]
pub(crate) struct Record {
    entries: Mutex<Vec<Stored>>,
}

impl Record {
    /// Appends one request's deliveries in execution order, under a single short lock.
    pub(crate) fn append(&self, deliveries: Vec<Stored>) {
        if deliveries.is_empty() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.extend(deliveries);
    }

    /// Up to `limit` deliveries with sequence numbers above `after`, with their sequence numbers.
    /// Copies them out so that formatting happens outside the lock.
    pub(crate) fn read(&self, after: u64, limit: usize) -> Vec<(u64, Stored)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(entries.len());
        let end = start.saturating_add(limit).min(entries.len());
        entries[start..end]
            .iter()
            .enumerate()
            .map(|(i, stored)| ((start + i + 1) as u64, stored.clone()))
            .collect()
    }
}

/// One delivery as `GET /_sim/deliveries` shows it (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Position in the record, from 1; pass the last one seen as `after` to continue.
    pub seq: u64,
    /// Sequence number of the batch request; 0 for a single send.
    pub batch: u64,
    pub page_id: String,
    /// The `recipient` object as sent.
    pub recipient: Value,
    /// The whole Send API body as sent (recipient, messaging_type, message, tag, …), without
    /// `access_token` and `appsecret_proof`.
    pub body: Value,
    /// Milliseconds since the simulator started.
    pub at_ms: u64,
    /// Microseconds since the simulator started (for window arithmetic in tests).
    pub at_us: u64,
    /// Unix time in milliseconds.
    pub unix_ms: u64,
}

impl Delivery {
    pub(crate) fn from_stored(
        seq: u64,
        stored: &Stored,
        page_id: &str,
        start_unix_us: u64,
    ) -> Self {
        let body: Value =
            serde_json::from_str(&stored.body).expect("stored bodies are serialised JSON objects");
        Delivery {
            seq,
            batch: stored.batch,
            page_id: page_id.to_owned(),
            recipient: body.get("recipient").cloned().unwrap_or(Value::Null),
            body,
            at_ms: stored.at_us / 1000,
            at_us: stored.at_us,
            unix_ms: (start_unix_us + stored.at_us) / 1000,
        }
    }
}

/// Per-Page counters, kept under the Page's lock together with its limiter.
#[derive(Debug, Default)]
pub(crate) struct PageCounters {
    calls: u64,
    delivered: u64,
    rejected_by_code: BTreeMap<u32, u64>,
    /// The Unix second the "this second" counters belong to.
    second: u64,
    calls_this_second: u64,
    delivered_this_second: u64,
    peak_calls: u64,
    peak_delivered: u64,
}

impl PageCounters {
    fn roll(&mut self, unix_second: u64) {
        // Operations can reach the lock a hair out of order; an older second counts as the current.
        if unix_second > self.second {
            self.second = unix_second;
            self.calls_this_second = 0;
            self.delivered_this_second = 0;
        }
    }

    /// An operation reached the limiter (admitted or not).
    pub(crate) fn on_call(&mut self, unix_second: u64) {
        self.roll(unix_second);
        self.calls += 1;
        self.calls_this_second += 1;
        self.peak_calls = self.peak_calls.max(self.calls_this_second);
    }

    pub(crate) fn on_delivered(&mut self, unix_second: u64) {
        self.roll(unix_second);
        self.delivered += 1;
        self.delivered_this_second += 1;
        self.peak_delivered = self.peak_delivered.max(self.delivered_this_second);
    }

    /// An operation addressed to this Page came back with an error of this code.
    pub(crate) fn on_error(&mut self, code: u32) {
        *self.rejected_by_code.entry(code).or_default() += 1;
    }
}

/// Simulator-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub batches: AtomicU64,
    pub single_sends: AtomicU64,
    pub ops: AtomicU64,
    pub delivered: AtomicU64,
    pub rejected: AtomicU64,
    pub throttled: AtomicU64,
    pub nulls: AtomicU64,
    pub failed_requests: AtomicU64,
    pub dropped: AtomicU64,
    pub timed_out: AtomicU64,
}

impl Totals {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn view(&self) -> TotalStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TotalStats {
            batches: get(&self.batches),
            single_sends: get(&self.single_sends),
            ops: get(&self.ops),
            delivered: get(&self.delivered),
            rejected: get(&self.rejected),
            throttled_613: get(&self.throttled),
            nulls: get(&self.nulls),
            failed_requests: get(&self.failed_requests),
            dropped: get(&self.dropped),
            timed_out: get(&self.timed_out),
        }
    }
}

/// `GET /_sim/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub uptime_ms: u64,
    /// Length of the rolling budget window in real milliseconds (24 h divided by the time scale).
    pub budget_window_ms: u64,
    pub totals: TotalStats,
    /// Keyed by Page id.
    pub pages: BTreeMap<String, PageStats>,
}

/// Simulator-wide totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotalStats {
    /// Batch requests received (whatever became of them).
    pub batches: u64,
    /// Single (unbatched) send requests received.
    pub single_sends: u64,
    /// Operations received in batches plus single sends.
    pub ops: u64,
    /// Operations recorded as delivered.
    pub delivered: u64,
    /// Operations answered with an error object.
    pub rejected: u64,
    /// Operations refused with 613, by a real limit or by the injected throttle fault.
    pub throttled_613: u64,
    /// Operations answered `null` (fault or unexecuted dependency).
    pub nulls: u64,
    /// Requests answered with a whole-request 5xx (fault or outage).
    pub failed_requests: u64,
    /// Requests whose connection was aborted (fault or outage).
    pub dropped: u64,
    /// Requests whose reply was held back as a timeout.
    pub timed_out: u64,
}

/// Per-Page figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageStats {
    pub delivered: u64,
    /// Operations that reached the limiter (admitted or refused).
    pub calls: u64,
    /// Error replies for operations addressed to this Page, by code (e.g. `{"613": 12}`). The
    /// ambiguous 1/1357046 reply counts here and as delivered.
    pub rejected_by_code: BTreeMap<String, u64>,
    /// Most calls in one calendar (Unix) second, real time.
    pub peak_calls_per_second: u64,
    /// Most deliveries in one calendar second.
    pub peak_delivered_per_second: u64,
    /// Calls (admitted or refused) in the current rolling budget window.
    pub calls_in_window: u64,
    pub budget: u64,
    pub audience: u64,
}

impl PageCounters {
    pub(crate) fn view(&self, calls_in_window: u64, budget: u64, audience: u64) -> PageStats {
        PageStats {
            delivered: self.delivered,
            calls: self.calls,
            rejected_by_code: self
                .rejected_by_code
                .iter()
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            peak_calls_per_second: self.peak_calls,
            peak_delivered_per_second: self.peak_delivered,
            calls_in_window,
            budget,
            audience,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(at_us: u64) -> Stored {
        Stored {
            at_us,
            batch: 1,
            page: 0,
            body: r#"{"recipient":{"id":"1"},"message":{"text":"x"}}"#.into(),
        }
    }

    #[test]
    fn stored_deliveries_stay_compact() {
        // A million deliveries must fit: 40 bytes each plus the body text.
        assert!(std::mem::size_of::<Stored>() <= 40);
    }

    #[test]
    fn cursor_reads_continue_where_they_stopped() {
        let record = Record::default();
        record.append((0..5).map(stored).collect());
        let first: Vec<u64> = record.read(0, 2).iter().map(|(s, _)| *s).collect();
        assert_eq!(first, [1, 2]);
        let next: Vec<u64> = record.read(2, 10).iter().map(|(s, _)| *s).collect();
        assert_eq!(next, [3, 4, 5]);
        assert!(record.read(5, 10).is_empty());
        assert!(record.read(u64::MAX, 10).is_empty());
    }

    #[test]
    fn delivery_view_splits_out_the_recipient() {
        let d = Delivery::from_stored(3, &stored(2_500), "42", 1_000_000_000);
        assert_eq!(d.recipient, serde_json::json!({"id":"1"}));
        assert_eq!((d.at_ms, d.unix_ms), (2, 1_000_002));
    }

    #[test]
    fn peaks_are_per_calendar_second() {
        let mut c = PageCounters::default();
        for _ in 0..3 {
            c.on_call(10);
        }
        c.on_call(11);
        c.on_call(10); // late arrival: counts in second 11
        c.on_delivered(11);
        let v = c.view(0, 0, 0);
        assert_eq!(
            (
                v.calls,
                v.peak_calls_per_second,
                v.peak_delivered_per_second
            ),
            (5, 3, 1)
        );
    }
}
