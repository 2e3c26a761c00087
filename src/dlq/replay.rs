//! `pagerelay replay`: moves the dead letters that match a filter back to the jobs exchange, one
//! confirmed publish at a time per letter, and leaves everything else where it was.
//!
//! One pass is one full scan of the dead-letter queue (see `scan`). For each letter, in queue
//! order:
//!
//! - not matching the filter: held unacked until the pass ends, then handed back, so it is kept
//!   in place and never delivered to this pass twice;
//! - matching, but refused by a guardrail (see `guard`) or beyond `--limit`: held the same way;
//! - otherwise: republished to `<prefix>.jobs` with its Page id as routing key and its headers
//!   rewritten by [`replay_properties`], and acked off the dead-letter queue **only after the
//!   broker confirmed the publish**.
//!
//! Publishes go out in queue order, paced by `--rate`, with up to [`WINDOW`] confirms awaited at
//! once; before the scan starts a new round, every ack owed to the current one is sent (see
//! `Scan::wants_new_round`). A failed publish or a lost connection stops the pass: nothing more is started, what is in
//! flight is settled, and the summary says what happened. On SIGINT (the `cancel` token) the pass
//! stops starting publishes the same way and settles what is in flight, so an interrupted replay
//! never leaves a letter both republished and still in the queue. After SIGKILL or a broker loss
//! the broker requeues every unacked delivery; the only letters that can then exist twice (in the
//! jobs queue and back in the dead-letter queue) are those whose confirm had arrived but whose ack
//! had not yet been sent — at most the publishes in flight. Running the same replay again
//! finishes the job; a duplicate send is then stopped by the daemon's duplicate guard when the
//! same daemon process delivered the first copy (see the README's Guarantees).
//!
//! It does not decide whether a letter may be replayed (`guard`) or which letters match
//! (`filter`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicAckOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Connection, ExchangeKind};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::filter::Filter;
use super::guard::{self, Guardrail, Overrides, PageCheck};
use super::letter::{Letter, X_DEATH, X_DELIVERY_COUNT, X_FIRST_DEATH_REASON};
use super::scan::Scan;
use super::{DeadLetters, DlqError};
use crate::amqp::headers;
use crate::amqp::publisher::{PendingConfirm, copy_properties};
use crate::amqp::topology::TIER_HEADER;
use crate::amqp::{PublishError, Publisher};

/// Republished letters whose confirms are awaited at once. Kept below the 32 commands a quorum
/// queue's channel-side client sends before it starts stashing acks (see
/// [`super::scan::SETTLE_GRACE`]): each confirm is followed by an ack, so the window bounds the
/// acks the dead-letter queue has yet to apply.
pub const WINDOW: usize = 16;

/// Headers a replayed job sheds: its attempts and parking so far, the dead letter's context, and
/// the broker's dead-lettering history.
///
/// The history must go, not only for tidiness: RabbitMQ drops a message whose `x-death` shows it
/// was dead-lettered *from* the queue it is being dead-lettered *into* with no rejection in
/// between (cycle detection). A replayed broker dead letter keeps an `x-death` entry for the jobs
/// queue; if pagerelay then parked or retried it, the delay tier's expiry back into the jobs queue
/// would be such a cycle, and the broker would silently drop the job (checked on 3.10.8).
pub const CLEARED_HEADERS: [&str; 22] = [
    headers::ATTEMPTS,
    headers::FIRST_ATTEMPT_AT,
    headers::PARKED,
    headers::FIRST_PARKED_AT,
    headers::PARK_REASON,
    headers::PARK_DUE,
    headers::REASON,
    headers::ERROR_CODE,
    headers::ERROR_SUBCODE,
    headers::ERROR_MESSAGE,
    headers::FBTRACE_ID,
    headers::DEAD_LETTERED_AT,
    headers::PAGE_ID,
    TIER_HEADER,
    X_DEATH,
    X_FIRST_DEATH_REASON,
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
    X_DELIVERY_COUNT,
];

/// What to replay and how.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayOptions {
    pub filter: Filter,
    /// Replay everything; required when the filter is empty, refused when it is not.
    pub all: bool,
    /// Move at most this many.
    pub limit: Option<u64>,
    /// Report what would move; move nothing.
    pub dry_run: bool,
    /// Publishes per second; `None` goes as fast as confirms allow.
    pub rate: Option<f64>,
    pub overrides: Overrides,
}

impl ReplayOptions {
    /// Checks the combination of options.
    pub fn validate(&self) -> Result<(), DlqError> {
        if self.filter.is_empty() && !self.all {
            return Err(DlqError::NoFilter);
        }
        if !self.filter.is_empty() && self.all {
            return Err(DlqError::AllWithFilter);
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(DlqError::Rate(rate));
        }
        Ok(())
    }
}

/// What a pass did with one matching letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Republished, confirmed and acked off the dead-letter queue.
    Moved,
    /// A dry run would have moved it.
    WouldMove,
    /// Kept: a guardrail refused it.
    Refused(Guardrail),
    /// Kept: `--limit` was reached.
    OverLimit,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Moved => "moved",
            Action::WouldMove => "would_move",
            Action::Refused(_) => "refused",
            Action::OverLimit => "over_limit",
        }
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    pub queue: String,
    pub exchange: String,
    pub dry_run: bool,
    /// Ready messages when the pass started.
    pub depth: u32,
    pub scanned: u64,
    pub matched: u64,
    /// Moved (confirmed and acked); in a dry run, how many would have moved.
    pub moved: u64,
    /// Left in the dead-letter queue: everything scanned and not moved.
    pub kept: u64,
    /// Matching letters refused by a guardrail, by guardrail.
    pub refused: BTreeMap<String, u64>,
    /// Matching letters left because `--limit` was reached.
    pub over_limit: u64,
    /// Republished and confirmed, but the dead letter could not be acked (the connection went):
    /// these are in the jobs queue *and* back in the dead-letter queue.
    pub not_removed: u64,
    /// Pages whose letters were refused, with the reason.
    pub refused_pages: BTreeMap<String, String>,
    /// Pages replayed despite a failed check, because of `--force`, with what the check said.
    pub forced_pages: BTreeMap<String, String>,
    /// The pass was stopped by a signal.
    pub interrupted: bool,
    /// Why the pass stopped early, if it did.
    pub error: Option<String>,
}

impl ReplaySummary {
    /// Matching letters refused by guardrails.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    /// The summary for a terminal.
    pub fn render(&self) -> String {
        let verb = if self.dry_run { "would move" } else { "moved" };
        let mut out = format!(
            "{}replay {} -> {}: scanned {}, matched {}, {verb} {}, kept {}",
            if self.dry_run { "dry run: " } else { "" },
            self.queue,
            self.exchange,
            self.scanned,
            self.matched,
            self.moved,
            self.kept
        );
        if self.refused_total() > 0 {
            let by: Vec<String> = self
                .refused
                .iter()
                .map(|(g, n)| format!("{g} {n}"))
                .collect();
            out.push_str(&format!(
                ", refused by guardrails {} ({})",
                self.refused_total(),
                by.join(", ")
            ));
        }
        if self.over_limit > 0 {
            out.push_str(&format!(", over --limit {}", self.over_limit));
        }
        out.push('\n');
        for (page, why) in &self.refused_pages {
            out.push_str(&format!("  refused Page {page}: {why}\n"));
        }
        for (page, why) in &self.forced_pages {
            out.push_str(&format!(
                "  warning: replayed Page {page} anyway (--force): {why}\n"
            ));
        }
        if self.not_removed > 0 {
            out.push_str(&format!(
                "  {} letters were republished but could not be removed from the dead-letter \
                 queue; they are in both queues\n",
                self.not_removed
            ));
        }
        if self.interrupted {
            out.push_str("  interrupted: run the same replay again to finish\n");
        }
        if let Some(error) = &self.error {
            out.push_str(&format!(
                "  stopped early: {error}; nothing was lost, run it again to finish\n"
            ));
        }
        out
    }
}

/// The properties a replayed letter is published with: the original ones, without the
/// attempt, parking, dead-letter and broker history headers ([`CLEARED_HEADERS`]) and without an
/// expiration, persistent, with the job id as `message_id` when it had none, and with the replay
/// provenance: `x-pagerelay-replayed-at`, `x-pagerelay-replay-count` (one more than before) and
/// `x-pagerelay-previous-reason`.
pub fn replay_properties(letter: &Letter, now: DateTime<Utc>) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(old) = letter.properties.headers() {
        for (key, value) in old.inner() {
            if !CLEARED_HEADERS.contains(&key.as_str()) {
                table.insert(key.clone(), value.clone());
            }
        }
    }
    headers::set_time(&mut table, headers::REPLAYED_AT, Some(now));
    headers::set_int(&mut table, headers::REPLAY_COUNT, letter.replay_count + 1);
    headers::set_str(&mut table, headers::PREVIOUS_REASON, &letter.reason.label());
    copy_properties(&letter.properties, table, None, letter.job_id())
}

impl DeadLetters<'_> {
    /// Runs one replay pass over the dead-letter queue. `pages` is what the daemon's admin
    /// endpoint said ([`PageCheck::fetch`]); `report` is called for every matching letter with
    /// what happened to it (for a moved letter, after its ack).
    ///
    /// Returns an error, having touched nothing, when the options are inconsistent, the Pages
    /// cannot be checked (and neither `--force` nor `--dry-run` was given), or the topology is
    /// missing. Once the pass has started it always returns a summary; a failure is in its
    /// `error`.
    pub async fn replay(
        &self,
        publish_timeout: Duration,
        options: &ReplayOptions,
        pages: &PageCheck,
        cancel: &CancellationToken,
        report: impl FnMut(&Letter, &Action),
    ) -> Result<ReplaySummary, DlqError> {
        options.validate()?;
        if let PageCheck::Unreachable { url, error } = pages
            && !options.overrides.force
            && !options.dry_run
        {
            return Err(DlqError::AdminUnreachable {
                url: url.clone(),
                error: error.clone(),
            });
        }
        let exchange = self.topology.jobs_exchange();
        check_exchange(self.connection, &exchange).await?;
        let publisher = if options.dry_run {
            None
        } else {
            Some(
                Publisher::open(self.connection, publish_timeout)
                    .await
                    .map_err(DlqError::Publisher)?,
            )
        };
        let mut scan = self.scan().await?;
        let mut pass = Pass {
            summary: ReplaySummary {
                queue: self.topology.dead_queue(),
                exchange,
                dry_run: options.dry_run,
                depth: scan.depth(),
                ..ReplaySummary::default()
            },
            inflight: FuturesUnordered::new(),
            acked: Vec::new(),
            report,
            halt: None,
        };
        let result = pass
            .run(&mut scan, publisher.as_ref(), options, pages, cancel)
            .await;
        // Whatever happened, settle what is in flight before handing the rest back: a confirmed
        // publish must get its ack, or its letter would exist twice.
        pass.drain().await;
        pass.record_acks(&mut scan);
        pass.summary.scanned = u64::from(scan.seen());
        scan.close().await;
        let mut summary = pass.summary;
        summary.kept = summary.scanned - if options.dry_run { 0 } else { summary.moved };
        summary.error = match result {
            Err(e) => Some(e.to_string()),
            Ok(()) => pass.halt,
        };
        Ok(summary)
    }
}

/// Fails early, with a message naming the exchange, when the jobs exchange does not exist.
async fn check_exchange(connection: &Connection, exchange: &str) -> Result<(), DlqError> {
    // A failed passive declare closes its channel, so it gets one of its own.
    let channel = connection
        .create_channel()
        .await
        .map_err(DlqError::Channel)?;
    let result = channel
        .exchange_declare(
            ShortString::from(exchange),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    if channel.status().connected() {
        let _ = channel.close(200, "checked".into()).await;
    }
    result.map_err(|source| DlqError::NoExchange {
        exchange: exchange.to_string(),
        source,
    })
}

/// How one republish ended.
struct Done {
    letter: Letter,
    /// The scan round the letter was delivered in.
    round: usize,
    outcome: Result<(), Failure>,
}

enum Failure {
    /// Not confirmed: the letter stays in the dead-letter queue (after a timeout it may also
    /// have reached the jobs queue).
    Publish(PublishError),
    /// Confirmed, but the ack could not be sent: the letter is in both queues.
    Ack(String),
}

async fn confirm_then_ack(
    pending: PendingConfirm,
    acker: Acker,
    round: usize,
    letter: Letter,
) -> Done {
    let outcome = match pending.confirmed().await {
        Err(e) => Err(Failure::Publish(e)),
        Ok(()) => match acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Ack("the dead-letter channel closed".to_string())),
            Err(e) => Err(Failure::Ack(e.to_string())),
        },
    };
    Done {
        letter,
        round,
        outcome,
    }
}

/// Spaces publishes `1 / rate` apart.
struct Pacer {
    interval: Option<Duration>,
    next: Instant,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Pacer {
        Pacer {
            interval: rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Instant::now(),
        }
    }

    /// When the next publish may start, if pacing applies.
    fn due(&self) -> Option<Instant> {
        self.interval.map(|_| self.next)
    }

    fn started(&mut self) {
        if let Some(interval) = self.interval {
            self.next = self.next.max(Instant::now()) + interval;
        }
    }
}

struct Pass<R> {
    summary: ReplaySummary,
    inflight: FuturesUnordered<BoxFuture<'static, Done>>,
    /// Rounds of the acks made since the scan was last told (see [`Pass::record_acks`]).
    acked: Vec<usize>,
    report: R,
    /// Set when a republish failed: nothing more is started.
    halt: Option<String>,
}

impl<R: FnMut(&Letter, &Action)> Pass<R> {
    async fn run(
        &mut self,
        scan: &mut Scan<'_>,
        publisher: Option<&Publisher>,
        options: &ReplayOptions,
        pages: &PageCheck,
        cancel: &CancellationToken,
    ) -> Result<(), DlqError> {
        let now = Utc::now();
        let mut pacer = Pacer::new(options.rate);
        let mut started = 0u64;
        while self.halt.is_none() {
            self.record_acks(scan);
            if scan.wants_new_round() {
                // Every ack of the round goes out before the round is stopped (see
                // `Scan::wants_new_round`); that may free room in it and make a new one
                // unnecessary.
                self.drain().await;
                self.record_acks(scan);
            }
            // Outside the select!: starting a round must not be cut short by a confirm.
            scan.ensure_round().await?;
            let scanned = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.summary.interrupted = true;
                    return Ok(());
                }
                Some(done) = self.inflight.next() => {
                    self.settle(done);
                    continue;
                }
                next = scan.next() => match next? {
                    Some(scanned) => scanned,
                    None => return Ok(()),
                },
            };
            let letter = Letter::from_delivery(&scanned.delivery);
            if !options.filter.matches(&letter, now) {
                continue;
            }
            self.summary.matched += 1;
            if let Some(guardrail) = guard::check(&letter, options.overrides, pages) {
                self.refuse(&letter, guardrail);
                continue;
            }
            if options.overrides.force {
                self.note_forced(&letter, options.overrides, pages);
            }
            if options.limit.is_some_and(|limit| started >= limit) {
                self.summary.over_limit += 1;
                (self.report)(&letter, &Action::OverLimit);
                continue;
            }
            let Some(publisher) = publisher else {
                started += 1;
                self.summary.moved += 1;
                (self.report)(&letter, &Action::WouldMove);
                continue;
            };
            if let Some(due) = pacer.due() {
                // Wait for the slot while still settling confirms, so acks are not held back.
                loop {
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => {
                            self.summary.interrupted = true;
                            return Ok(());
                        }
                        Some(done) = self.inflight.next() => self.settle(done),
                        _ = tokio::time::sleep_until(due) => break,
                    }
                }
                if self.halt.is_some() {
                    return Ok(());
                }
            }
            while self.inflight.len() >= WINDOW {
                self.settle_next().await;
            }
            let properties = replay_properties(&letter, Utc::now());
            let pending = match publisher
                .send(
                    &self.summary.exchange,
                    letter.target_routing_key(),
                    &letter.body,
                    properties,
                )
                .await
            {
                Ok(pending) => pending,
                Err(e) => {
                    self.halt = Some(format!("republishing to {}: {e}", self.summary.exchange));
                    return Ok(());
                }
            };
            started += 1;
            pacer.started();
            self.inflight.push(Box::pin(confirm_then_ack(
                pending,
                scanned.delivery.acker.clone(),
                scanned.round,
                letter,
            )));
        }
        Ok(())
    }

    fn refuse(&mut self, letter: &Letter, guardrail: Guardrail) {
        *self
            .summary
            .refused
            .entry(guardrail.as_str().to_string())
            .or_default() += 1;
        if matches!(
            guardrail,
            Guardrail::PagePaused(_) | Guardrail::PageUnknown | Guardrail::AdminUnreachable
        ) {
            self.summary
                .refused_pages
                .entry(letter.target_routing_key().to_string())
                .or_insert_with(|| guardrail.explain());
        }
        (self.report)(letter, &Action::Refused(guardrail));
    }

    /// Records what the Page check would have said without `--force`.
    fn note_forced(&mut self, letter: &Letter, overrides: Overrides, pages: &PageCheck) {
        let unforced = Overrides {
            force: false,
            ..overrides
        };
        if let Some(guardrail) = guard::check(letter, unforced, pages) {
            self.summary
                .forced_pages
                .entry(letter.target_routing_key().to_string())
                .or_insert_with(|| guardrail.explain());
        }
    }

    /// Tells the scan about the acks made since last time: a round holding fewer messages may
    /// receive more before the scan moves on to a new one.
    fn record_acks(&mut self, scan: &mut Scan<'_>) {
        for round in self.acked.drain(..) {
            scan.acked(round);
        }
    }

    fn settle(&mut self, done: Done) {
        match done.outcome {
            Ok(()) => {
                self.summary.moved += 1;
                self.acked.push(done.round);
                (self.report)(&done.letter, &Action::Moved);
            }
            Err(Failure::Publish(e)) => {
                self.halt.get_or_insert_with(|| {
                    format!("republishing to {}: {e}", self.summary.exchange)
                });
            }
            Err(Failure::Ack(e)) => {
                self.summary.not_removed += 1;
                self.halt
                    .get_or_insert_with(|| format!("removing a replayed dead letter: {e}"));
            }
        }
    }

    async fn settle_next(&mut self) {
        if let Some(done) = self.inflight.next().await {
            self.settle(done);
        }
    }

    async fn drain(&mut self) {
        while !self.inflight.is_empty() {
            self.settle_next().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldArray};

    use super::super::letter::tests::{broker_letter, death, pagerelay_letter};
    use super::*;
    use crate::amqp::headers::{get_int, get_string, parse_time};

    #[test]
    fn a_replayed_letter_starts_over_with_its_provenance() {
        let mut letter = pagerelay_letter("token_invalid", "1001", "j-1");
        let mut table = letter.properties.headers().clone().unwrap();
        headers::set_int(&mut table, headers::PARKED, 7);
        headers::set_str(&mut table, headers::FIRST_PARKED_AT, "2026-11-22T09:00:00Z");
        headers::set_str(&mut table, headers::PARK_REASON, "paused");
        headers::set_int(&mut table, headers::PARK_DUE, 1);
        headers::set_int(&mut table, headers::ERROR_SUBCODE, 460);
        headers::set_str(&mut table, TIER_HEADER, "1s");
        headers::set_int(&mut table, headers::PUBLISHED_AT_MS, 42);
        headers::set_str(&mut table, "x-tenant", "acme");
        table.insert(
            X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![death(
                "relay.delay.1s",
                "expired",
                1,
            )])),
        );
        table.insert(X_DELIVERY_COUNT.into(), AMQPValue::LongLongInt(3));
        letter = Letter::new(
            letter.body.clone(),
            "1001",
            letter
                .properties
                .clone()
                .with_headers(table)
                .with_expiration("5000".into())
                .with_content_type("application/json".into()),
        );
        let now = parse_time("2026-11-23T08:00:00Z").unwrap();
        let props = replay_properties(&letter, now);
        let h = props.headers().as_ref();
        for key in CLEARED_HEADERS {
            assert!(
                get_string(h, key).is_none() && get_int(h, key).is_none(),
                "{key}"
            );
        }
        assert!(!h.unwrap().contains_key(X_DEATH));
        assert_eq!(get_int(h, headers::REPLAY_COUNT), Some(1));
        assert_eq!(
            get_string(h, headers::REPLAYED_AT).as_deref(),
            Some("2026-11-23T08:00:00.000Z")
        );
        assert_eq!(
            get_string(h, headers::PREVIOUS_REASON).as_deref(),
            Some("token_invalid")
        );
        // What is not pagerelay's dead-letter state is kept.
        assert_eq!(get_string(h, "x-tenant").as_deref(), Some("acme"));
        assert_eq!(get_int(h, headers::PUBLISHED_AT_MS), Some(42));
        assert_eq!(props.expiration(), &None);
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(
            props.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(props.message_id().as_ref().map(|m| m.as_str()), Some("j-1"));
        // The job reads as never attempted and never parked.
        let state = headers::JobState::from_headers(h);
        assert_eq!(
            state,
            headers::JobState {
                published_at_ms: Some(42),
                ..headers::JobState::default()
            }
        );
    }

    #[test]
    fn replays_count_up_and_broker_letters_lose_their_history() {
        let letter = broker_letter("1001");
        let props = replay_properties(&letter, Utc::now());
        let h = props.headers().as_ref();
        assert!(!h.unwrap().contains_key(X_DEATH));
        assert!(!h.unwrap().contains_key(X_FIRST_DEATH_REASON));
        assert_eq!(
            get_string(h, headers::PREVIOUS_REASON).as_deref(),
            Some("broker:delivery_limit")
        );
        // No message_id before: the body's job_id becomes it.
        assert_eq!(props.message_id().as_ref().map(|m| m.as_str()), Some("b-1"));

        // A letter replayed twice before, dead again.
        let mut table = FieldTable::default();
        headers::set_str(&mut table, headers::REASON, "permanent");
        headers::set_int(&mut table, headers::REPLAY_COUNT, 2);
        headers::set_str(&mut table, headers::PREVIOUS_REASON, "token_invalid");
        let again = Letter::new(
            b"{}".to_vec(),
            "1001",
            BasicProperties::default().with_headers(table),
        );
        let h = replay_properties(&again, Utc::now()).headers().clone();
        assert_eq!(get_int(h.as_ref(), headers::REPLAY_COUNT), Some(3));
        assert_eq!(
            get_string(h.as_ref(), headers::PREVIOUS_REASON).as_deref(),
            Some("permanent")
        );
    }

    #[test]
    fn options_need_a_filter_or_all_but_not_both() {
        let mut options = ReplayOptions::default();
        assert!(matches!(options.validate(), Err(DlqError::NoFilter)));
        options.all = true;
        assert!(options.validate().is_ok());
        options.filter.pages.push("1001".into());
        assert!(matches!(options.validate(), Err(DlqError::AllWithFilter)));
        options.all = false;
        assert!(options.validate().is_ok());
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            options.rate = Some(rate);
            assert!(
                matches!(options.validate(), Err(DlqError::Rate(_))),
                "{rate}"
            );
        }
        options.rate = Some(0.5);
        assert!(options.validate().is_ok());
    }

    #[test]
    fn the_summary_reads_for_humans() {
        let mut summary = ReplaySummary {
            queue: "relay.dead".into(),
            exchange: "relay.jobs".into(),
            scanned: 40,
            matched: 30,
            moved: 10,
            kept: 30,
            over_limit: 15,
            ..ReplaySummary::default()
        };
        summary.refused.insert("invalid".into(), 5);
        summary
            .refused_pages
            .insert("1002".into(), Guardrail::PageUnknown.explain());
        let text = summary.render();
        assert!(
            text.starts_with(
                "replay relay.dead -> relay.jobs: scanned 40, matched 30, moved 10, kept 30, \
                 refused by guardrails 5 (invalid 5), over --limit 15\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("refused Page 1002: the daemon has no such Page"),
            "{text}"
        );
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["refused"]["invalid"], 5);
        assert_eq!(json["error"], serde_json::Value::Null);
    }
}
