//! One batch request, start to finish: encode the parts the combiner packed (each one Page's jobs),
//! POST them, classify each result, tell each Page's health what happened, settle every job, and
//! report back to each lane.
//!
//! Each part holds a global in-flight permit from its lane until every job in it is settled, so
//! the permit count is an exact measure of unsettled work.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Instrument;

use super::batcher::Recipients;
use super::lane::{Inbox, LaneMsg};
use super::outcome::{Outcome, ParkReason};
use super::park::ParkJob;
use super::registry::{Admission, PageState, Signal};
use super::{Envelope, Shared};
use crate::amqp::headers::{DeadLetterReason, ErrorContext};
use crate::graph::Outcome as ItemOutcome;
use crate::graph::{
    BatchFailure, BatchRequest, DeadReason, Decision, GraphError, ItemResult, Operation, RetryKind,
    Sent, classify,
};
use crate::telemetry;

/// One Page's share of a batch request: the jobs its lane released, the global in-flight permit
/// they hold until settled, and the lane to report back to.
pub struct Part {
    pub page: Arc<PageState>,
    // Envelopes stay boxed from the consumer to their settlement: they are large, and a batch is
    // assembled by moving them out of a lane queue that holds hundreds.
    #[allow(clippy::vec_box)]
    pub batch: Vec<Box<Envelope>>,
    /// The batch's recipients as its lane knows them, handed back once it is settled.
    pub recipients: Recipients,
    pub permit: OwnedSemaphorePermit,
    pub lane: Arc<Inbox>,
    /// A probe of a Page whose circuit is open or that is paused: it goes in a request of its
    /// own, so that whatever is wrong with the Page (its token, say) touches no other Page.
    pub alone: bool,
}

/// Sends `parts` as one batch request and settles every part.
///
/// A request of one part goes with its Page's token. A request of several carries each
/// operation's own token in its `relative_url`, the first Page's token at the top level.
pub async fn send(shared: Arc<Shared>, parts: Vec<Part>) {
    let size: usize = parts.iter().map(|p| p.batch.len()).sum();
    let page_batches = parts.len();
    // Once per request rather than per part: a gauge is looked up by name on every update.
    metrics::gauge!(telemetry::IN_FLIGHT_BATCHES).increment(page_batches as f64);
    metrics::gauge!(telemetry::IN_FLIGHT_OPERATIONS).increment(size as f64);
    let started = Instant::now();
    let sent = {
        let configs: Vec<_> = parts.iter().map(|p| p.page.config()).collect();
        let operations: Vec<Operation<'_>> = parts
            .iter()
            .zip(&configs)
            .enumerate()
            .flat_map(|(i, (part, config))| {
                part.batch.iter().map(move |e| {
                    let op = Operation::send(e.job.send_body());
                    if i > 0 {
                        op.with_auth(&config.auth)
                    } else {
                        op
                    }
                })
            })
            .collect();
        match BatchRequest::encode(&configs[0].auth, &operations) {
            Ok(request) => shared.graph.send(&request).await,
            // The combiner never builds an empty or oversized batch; if it ever did, nothing
            // was sent and every job may simply be retried.
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the batch");
                Sent::Failed(BatchFailure::Transport)
            }
        }
    };
    let elapsed = started.elapsed();
    let decided = decide(&sent, size);
    shared.meters.graph_duration.record(elapsed.as_secs_f64());
    shared.meters.batch_size.record(size as f64);
    metrics::counter!(telemetry::GRAPH_REQUESTS, "result" => decided.result).increment(1);

    let Decided {
        items,
        result,
        regain,
        ..
    } = decided;
    let mut items = items.into_iter();
    let settles = parts.into_iter().enumerate().map(|(i, part)| {
        let mut mine: Vec<Item> = items.by_ref().take(part.batch.len()).collect();
        let mut bystander = false;
        if i > 0 && result != "ok" {
            // Refused as a whole for the top-level token's Page (revoked, throttled): that says
            // nothing about this Page, whose jobs are retried like any failed request's.
            for item in &mut mine {
                if matches!(item.decision, Decision::StopPage(_) | Decision::Throttle) {
                    bystander = true;
                    *item = Item {
                        decision: classify(ItemOutcome::Batch(&BatchFailure::Transport)),
                        error: None,
                        failure: Some(
                            "the batch request was refused for another Page's credentials".into(),
                        ),
                        answered: false,
                    };
                }
            }
        }
        let span = tracing::info_span!(
            "batch",
            page = %part.page.id,
            size = part.batch.len(),
            request_size = size,
            outcome = tracing::field::Empty,
            duration_ms = elapsed.as_millis() as u64,
        );
        let decided = Decided {
            items: mine,
            result,
            regain,
            bystander,
        };
        settle_part(shared.clone(), part, decided).instrument(span)
    });
    futures_util::future::join_all(settles).await;
    metrics::gauge!(telemetry::IN_FLIGHT_OPERATIONS).decrement(size as f64);
    metrics::gauge!(telemetry::IN_FLIGHT_BATCHES).decrement(page_batches as f64);
}

/// Tells the Page's health what its share of a request brought, settles its jobs, and reports
/// back to its lane.
async fn settle_part(shared: Arc<Shared>, part: Part, results: Decided) {
    let Part {
        page,
        batch,
        recipients,
        permit,
        lane,
        ..
    } = part;
    let size = batch.len();

    // The one batch line at warn, in each Page's span: a request that failed as a whole (as many
    // lines as before requests were shared: one per Page batch). Item-level errors are counted,
    // not logged: the dead letters and retries carry them.
    if results.result != "ok" {
        let failure = results.items.iter().find_map(|i| i.failure.as_deref());
        tracing::warn!(result = results.result, failure, "batch request failed");
    }

    // The Page's health first, so that parked jobs get the cooldown just decided.
    let retry = &shared.settings.retry;
    let answered = results.items.iter().any(|i| i.answered);
    // A bystander's request failed for another Page's credentials: counting that against this
    // Page's circuit would let one revoked token park every Page it shared requests with.
    let batch_failed = results.result != "ok"
        && !results.bystander
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

    let mut counts = Counts::default();
    let mut delivered = Vec::with_capacity(size);
    let mut others = Vec::new();
    for (envelope, item) in batch.into_iter().zip(results.items) {
        if item.decision == Decision::Delivered {
            delivered.push(envelope);
        } else {
            others.push((envelope, item));
        }
    }
    counts.delivered = delivered.len();
    shared.settle_delivered(&page, delivered);
    let mut parks = Vec::new();
    let mut settles = Vec::with_capacity(others.len());
    for (envelope, item) in others {
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
            Decision::Delivered => Outcome::Delivered,
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
        match outcome {
            Outcome::Park { reason, delay } => parks.push(ParkJob {
                envelope,
                reason,
                delay,
            }),
            outcome => settles.push(shared.settle_envelope(envelope, outcome)),
        }
    }
    // A throttled batch parks its jobs together: one message per tier, not one per job. Boxed,
    // and made only when there is something to park: inline, the park future would enlarge
    // every batch's task for the rare throttled one.
    let parked = async {
        if !parks.is_empty() {
            Box::pin(shared.park(parks)).await;
        }
    };
    futures_util::future::join(futures_util::future::join_all(settles), parked).await;

    tracing::Span::current().record("outcome", counts.summary().as_str());
    tracing::debug!("batch settled");
    lane.send(LaneMsg::Done { recipients });
    drop(permit);
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
    /// This part shared a request that was refused as a whole for another Page's credentials.
    bystander: bool,
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
            bystander: false,
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
                bystander: false,
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
