//! One batch request, start to finish: encode the lane's jobs, POST them, classify each result,
//! tell the Page's health what happened, settle every job, and report back to the lane.
//!
//! Each batch is its own task holding a global in-flight permit until every job in it is
//! settled, so the permit count is an exact measure of unsettled work.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tracing::Instrument;

use super::lane::LaneMsg;
use super::outcome::{Outcome, ParkReason};
use super::registry::{Admission, PageState, Signal};
use super::{Envelope, Shared};
use crate::amqp::headers::{DeadLetterReason, ErrorContext};
use crate::graph::Outcome as ItemOutcome;
use crate::graph::{
    BatchFailure, BatchRequest, DeadReason, Decision, GraphError, ItemResult, Operation, RetryKind,
    Sent, classify,
};
use crate::telemetry;

/// Sends `batch` for `page` and settles it.
// Envelopes stay boxed from the consumer to their settlement: they are large, and a batch is
// assembled by moving them out of a lane queue that holds hundreds.
#[allow(clippy::vec_box)]
pub async fn send(
    shared: Arc<Shared>,
    page: Arc<PageState>,
    batch: Vec<Box<Envelope>>,
    permit: OwnedSemaphorePermit,
    lane: UnboundedSender<LaneMsg>,
) {
    let span = tracing::info_span!(
        "batch",
        page = %page.id,
        size = batch.len(),
        outcome = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    send_inner(shared, page, batch, lane).instrument(span).await;
    drop(permit);
}

#[allow(clippy::vec_box)]
async fn send_inner(
    shared: Arc<Shared>,
    page: Arc<PageState>,
    batch: Vec<Box<Envelope>>,
    lane: UnboundedSender<LaneMsg>,
) {
    let size = batch.len();
    metrics::gauge!(telemetry::IN_FLIGHT_BATCHES).increment(1.0);
    metrics::gauge!(telemetry::IN_FLIGHT_OPERATIONS).increment(size as f64);
    let recipients: Vec<String> = batch.iter().map(|e| e.job.recipient.clone()).collect();
    let config = page.config();
    let started = Instant::now();

    let request = {
        let operations: Vec<Operation<'_>> = batch
            .iter()
            .map(|e| Operation::send(e.job.send_body()))
            .collect();
        BatchRequest::encode(&config.auth, &operations)
    };
    let results = match request {
        Ok(request) => {
            let sent = shared.graph.send(&request).await;
            decide(&sent, size)
        }
        // The lane never builds an empty or oversized batch; if it ever did, nothing was sent
        // and every job may simply be retried.
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the batch");
            decide(&Sent::Failed(BatchFailure::Transport), size)
        }
    };
    let elapsed = started.elapsed();
    metrics::histogram!(telemetry::GRAPH_DURATION).record(elapsed.as_secs_f64());
    metrics::histogram!(telemetry::BATCH_SIZE).record(size as f64);
    metrics::counter!(telemetry::GRAPH_REQUESTS, "result" => results.result).increment(1);

    // The Page's health first, so that parked jobs get the cooldown just decided.
    let retry = &shared.settings.retry;
    let answered = results.items.iter().any(|i| i.answered);
    let batch_failed = results.result != "ok"
        && results
            .items
            .iter()
            .all(|i| matches!(i.decision, Decision::Retry(_)));
    if answered {
        page.signal(Signal::Answered, retry);
    } else if batch_failed {
        page.signal(Signal::BatchFailed, retry);
    } else {
        page.signal(Signal::Inconclusive, retry);
    }
    if let Some(reason) = results.items.iter().find_map(|i| match i.decision {
        Decision::StopPage(r) => Some(r),
        _ => None,
    }) {
        page.signal(Signal::Stop(reason), retry);
    }
    if results
        .items
        .iter()
        .any(|i| i.decision == Decision::Throttle)
    {
        page.signal(
            Signal::Throttled {
                regain: results.regain,
            },
            retry,
        );
    }
    let cooldown = page
        .with_control(|c| c.cooldown_remaining(Instant::now()))
        .max(retry.tiers[0]);
    // Once a Page's circuit is open, a failed batch (the one that opened it, or a failed probe)
    // parks its jobs instead of spending their attempts: an outage of any length costs a job at
    // most the few attempts made before the circuit opened.
    let circuit_wait = match page.admission(Instant::now()) {
        Admission::Blocked {
            reason: ParkReason::CircuitOpen,
            until,
        } if batch_failed => Some(until.saturating_duration_since(Instant::now())),
        _ => None,
    };

    // The one batch line at warn: a request that failed as a whole (logged before settling, so
    // the first item's failure can be borrowed). Item-level errors are counted, not logged: the
    // dead letters and retries carry them.
    if results.result != "ok" {
        let failure = results.items.iter().find_map(|i| i.failure.as_deref());
        tracing::warn!(
            result = results.result,
            failure,
            duration_ms = elapsed.as_millis() as u64,
            "batch request failed"
        );
    }

    let mut counts = Counts::default();
    let settles = batch
        .into_iter()
        .zip(results.items)
        .map(|(envelope, item)| {
            counts.note(item.decision);
            if let Some(error) = &item.error
                && let Some(code) = error.code
            {
                let subcode = error.subcode.map_or_else(String::new, |s| s.to_string());
                metrics::counter!(
                    telemetry::GRAPH_ERRORS,
                    "code" => code.to_string(),
                    "subcode" => subcode,
                    "decision" => item.decision.label(),
                )
                .increment(1);
            }
            let outcome = match item.decision {
                Decision::Delivered => {
                    shared.dedup.record(&envelope.job.job_id);
                    Outcome::Delivered
                }
                Decision::Throttle => Outcome::Park {
                    reason: ParkReason::Cooldown,
                    delay: cooldown,
                },
                Decision::Retry(_) if circuit_wait.is_some() => Outcome::Park {
                    reason: ParkReason::CircuitOpen,
                    delay: circuit_wait.unwrap_or_default().max(retry.tiers[0]),
                },
                Decision::Retry(kind) => Outcome::Retry {
                    error: item.context(),
                    unknown: kind == RetryKind::Unknown,
                },
                Decision::DeadLetter(reason) => Outcome::DeadLetter {
                    reason: match reason {
                        DeadReason::Permanent => DeadLetterReason::Permanent,
                        DeadReason::Ambiguous => DeadLetterReason::Ambiguous,
                    },
                    error: item.context(),
                    attempted: true,
                },
                Decision::StopPage(reason) => Outcome::Park {
                    reason: ParkReason::Paused(reason),
                    delay: retry.paused_delay,
                },
            };
            let shared = &shared;
            async move { shared.settle_envelope(envelope, outcome).await }
        });
    futures_util::future::join_all(settles).await;

    let span = tracing::Span::current();
    span.record("outcome", counts.summary().as_str());
    span.record("duration_ms", elapsed.as_millis() as u64);
    tracing::debug!("batch settled");
    metrics::gauge!(telemetry::IN_FLIGHT_OPERATIONS).decrement(size as f64);
    metrics::gauge!(telemetry::IN_FLIGHT_BATCHES).decrement(1.0);
    let _ = lane.send(LaneMsg::Done { recipients });
}

/// One operation's decision and what the dead letter or retry should say about it.
struct Item {
    decision: Decision,
    error: Option<GraphError>,
    /// A whole-batch failure's description, when there is no Graph error.
    failure: Option<String>,
    /// The Graph API gave a definite answer for this operation.
    answered: bool,
}

impl Item {
    fn from_failure(decision: Decision, failure: &BatchFailure) -> Item {
        let error = match failure {
            BatchFailure::Rejected { error, .. } => Some(error.clone()),
            _ => None,
        };
        // A whole-batch failure is never a sign of health, even when it carries a Graph error
        // code (a 503 with code 2, say): it must not close the Page's circuit.
        Item {
            decision,
            answered: false,
            error,
            failure: Some(failure.to_string()),
        }
    }

    fn context(&self) -> ErrorContext {
        match &self.error {
            Some(e) => ErrorContext {
                code: e.code,
                subcode: e.subcode,
                message: e.message.clone().or_else(|| self.failure.clone()),
                fbtrace_id: e.fbtrace_id.clone(),
            },
            None => ErrorContext {
                message: self.failure.clone(),
                ..ErrorContext::default()
            },
        }
    }
}

struct Decided {
    items: Vec<Item>,
    /// The `result` label of the request metric.
    result: &'static str,
    regain: Option<Duration>,
}

fn decide(sent: &Sent, size: usize) -> Decided {
    match sent {
        Sent::Failed(failure) => Decided {
            items: (0..size)
                .map(|_| Item::from_failure(classify(ItemOutcome::Batch(failure)), failure))
                .collect(),
            result: match failure {
                BatchFailure::Timeout => "timeout",
                _ => "transport",
            },
            regain: None,
        },
        Sent::Reply(reply) => {
            let result = match reply.result() {
                Ok(_) => "ok",
                Err(BatchFailure::Malformed(_)) => "bad_reply",
                Err(_) => "http_error",
            };
            for problem in &reply.usage().problems {
                tracing::debug!(%problem, "unreadable usage header");
            }
            let items = reply
                .outcomes()
                .map(|outcome| {
                    let decision = classify(outcome);
                    match outcome {
                        ItemOutcome::Item(ItemResult::Error { error, .. }) => Item {
                            decision,
                            answered: true,
                            error: Some(error.clone()),
                            failure: None,
                        },
                        ItemOutcome::Item(ItemResult::Success { .. }) => Item {
                            decision,
                            answered: true,
                            error: None,
                            failure: None,
                        },
                        ItemOutcome::Item(ItemResult::NotExecuted) => Item {
                            decision,
                            answered: false,
                            error: None,
                            failure: Some("not executed (null batch entry)".to_string()),
                        },
                        ItemOutcome::Batch(failure) => Item::from_failure(decision, failure),
                    }
                })
                .collect();
            Decided {
                items,
                result,
                regain: reply.usage().regain_access(),
            }
        }
    }
}

/// Per-decision counts for the batch span.
#[derive(Default)]
struct Counts {
    delivered: usize,
    retried: usize,
    throttled: usize,
    dead: usize,
    stopped: usize,
}

impl Counts {
    fn note(&mut self, decision: Decision) {
        match decision {
            Decision::Delivered => self.delivered += 1,
            Decision::Retry(_) => self.retried += 1,
            Decision::Throttle => self.throttled += 1,
            Decision::DeadLetter(_) => self.dead += 1,
            Decision::StopPage(_) => self.stopped += 1,
        }
    }

    fn summary(&self) -> String {
        if self.retried + self.throttled + self.dead + self.stopped == 0 {
            return "delivered".to_string();
        }
        format!(
            "delivered={} retried={} throttled={} dead_lettered={} page_stopped={}",
            self.delivered, self.retried, self.throttled, self.dead, self.stopped
        )
    }
}
