//! The delivery pipeline: consume → lane → limit → batch → send → settle.
//!
//! ```text
//! supervisor ── session (connection, topology, publisher) ── consumer
//!                                                               │ decode, validate, route
//!                       dead letter (invalid, unknown_page) ◀───┤
//!                                                               ▼
//!                                  lane (one per Page: FIFO, one in flight per recipient)
//!                                     │ admission (pause, circuit, cooldown, budget) → park
//!                                     │ limiter (rps, media, budget)
//!                                     ▼
//!                                  combiner (several Pages' batches, one request of ≤ 50)
//!                                     ▼
//!                                  dispatch (Graph batch) → classify → settle
//! ```
//!
//! Submodules are the stages; this module holds what they share ([`Shared`]) and the unit of
//! work that flows through them ([`Envelope`]). The stages are:
//! [`supervisor`] (connection lifecycle, signals), [`consumer`] (routing deliveries),
//! [`lane`] (per-Page scheduling), [`combiner`] (packing Pages' batches into requests),
//! [`dispatch`] (one batch request and its settlement),
//! [`outcome`] (settling one delivery), [`park`] (parking a lane's jobs, several to a
//! message), and the pure pieces [`batcher`], [`limiter`],
//! [`registry`], [`dedup`].

pub mod audience;
pub mod batcher;
pub mod combiner;
pub mod consumer;
pub mod dedup;
pub mod dispatch;
pub mod lane;
pub mod limiter;
pub mod outcome;
pub mod park;
pub mod registry;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::message::Delivery;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::admin::Health;
use crate::amqp::headers::{DeadLetterReason, JobState};
use crate::amqp::{Acks, Publisher, Topology};
use crate::config::Settings;
use crate::graph::{EncodedBody, GraphClient};
use crate::job::Job;
use crate::telemetry::{self, PageLabels};
use batcher::LaneItem;
use combiner::Combiner;
use dedup::DuplicateGuard;
use lane::Lanes;
use outcome::{Incoming, Outcome, PlanContext, Settled, Settlement};
use registry::{PageState, Registry};

pub use supervisor::{RunError, run};

/// What every stage shares. Settings other than the Page registry are fixed for the life of the
/// process; the registry is swapped on reload.
pub struct Shared {
    pub settings: Settings,
    pub topology: Topology,
    pub registry: Arc<Registry>,
    pub graph: GraphClient,
    pub dedup: DuplicateGuard,
    pub labels: PageLabels,
    pub health: Arc<Health>,
    /// Page batches in flight across all Pages (several may share one request).
    pub in_flight: Arc<Semaphore>,
    /// Jobs from park bundles in memory, at most the prefetch window: the window counts a
    /// bundle as one delivery.
    pub bundled_room: Arc<Semaphore>,
    pub lanes: Lanes,
    /// Packs the lanes' batches into Graph requests.
    pub combiner: Combiner,
    pub meters: Meters,
}

/// The per-job and per-request metrics without labels, registered once: updating a metric by
/// name looks it up (a hash and a lock) every time. Counters and histograms only: the exporter
/// drops a gauge that stays idle, and a handle held here would outlive it.
pub struct Meters {
    pub jobs_consumed: metrics::Counter,
    pub limiter_wait: metrics::Histogram,
    pub end_to_end: metrics::Histogram,
    pub graph_duration: metrics::Histogram,
    pub batch_size: metrics::Histogram,
    pub park_message_jobs: metrics::Histogram,
}

impl Meters {
    /// Registers them with the installed recorder (none installed: they go nowhere).
    pub fn register() -> Self {
        Meters {
            jobs_consumed: metrics::counter!(telemetry::JOBS_CONSUMED),
            limiter_wait: metrics::histogram!(telemetry::LIMITER_WAIT),
            end_to_end: metrics::histogram!(telemetry::END_TO_END),
            graph_duration: metrics::histogram!(telemetry::GRAPH_DURATION),
            batch_size: metrics::histogram!(telemetry::BATCH_SIZE),
            park_message_jobs: metrics::histogram!(telemetry::PARK_MESSAGE_JOBS),
        }
    }
}

/// The session a delivery came from. A delivery is settled through its own session only: its
/// delivery tag means nothing on any other channel.
pub struct Origin {
    pub generation: u64,
    /// Republishes go out on the delivery's own connection.
    pub publisher: Publisher,
    /// The acknowledgements of the delivery's channel.
    pub acks: Acks,
}

/// A job as the pipeline holds it: its body already in the form a batch sends.
pub type QueuedJob = Job<EncodedBody>;

/// A job taken from the broker, on its way through the pipeline.
pub struct Envelope {
    pub job: QueuedJob,
    pub delivery: Delivery,
    pub state: JobState,
    pub origin: Arc<Origin>,
    pub received: Instant,
    /// Set when it came in a park bundle: its delivery tag is shared with the other jobs of the
    /// bundle (handing it back alone would hand them all back), and so is the bundle's room in
    /// [`Shared::bundled_room`], freed when the last of them is dropped.
    pub bundle: Option<Arc<OwnedSemaphorePermit>>,
}

impl Envelope {
    pub fn is_bundled(&self) -> bool {
        self.bundle.is_some()
    }
}

impl LaneItem for Envelope {
    fn recipient(&self) -> &str {
        &self.job.recipient
    }

    fn is_media(&self) -> bool {
        self.job.media
    }
}

impl Shared {
    /// Settles one delivery and records what happened. Never fails: a settlement that cannot be
    /// carried out leaves the delivery to the broker, which redelivers it.
    pub async fn settle(
        &self,
        delivery: &Delivery,
        state: &JobState,
        job: Option<&QueuedJob>,
        origin: &Origin,
        outcome: Outcome,
    ) -> Settled {
        let incoming = Incoming::new(delivery, state, job);
        let (settlement, settled) = outcome::plan(&outcome, incoming, self.plan_context());
        self.carry_out(settlement, settled, delivery, state, job, origin)
            .await
    }

    /// What [`outcome::plan`] needs besides the delivery: where things go, the policy, the time.
    pub fn plan_context(&self) -> PlanContext<'_> {
        PlanContext {
            topology: &self.topology,
            retry: &self.settings.retry,
            now: Utc::now(),
            jitter_draw: rand::rng().random::<f64>(),
        }
    }

    /// Carries out a planned settlement and records it.
    async fn carry_out(
        &self,
        settlement: Settlement,
        settled: Settled,
        delivery: &Delivery,
        state: &JobState,
        job: Option<&QueuedJob>,
        origin: &Origin,
    ) -> Settled {
        if let Err(e) = outcome::settle(settlement, delivery, origin).await {
            settle_failed(&e, settled);
            return Settled::Requeued;
        }
        self.record(settled, job, state, delivery);
        settled
    }

    /// Settles the jobs of one Page that Graph accepted, in one pass: the common outcome, so
    /// it takes no future per job and updates each metric once per batch rather than per job.
    /// Same effect as [`Shared::settle`] with [`Outcome::Delivered`] for each.
    #[allow(clippy::vec_box)] // see dispatch::Part
    pub fn settle_delivered(&self, page: &PageState, envelopes: Vec<Box<Envelope>>) {
        if envelopes.is_empty() {
            return;
        }
        self.dedup
            .record_all(envelopes.iter().map(|e| e.job.job_id.as_str()));
        let latency = &self.meters.end_to_end;
        let now_ms = Utc::now().timestamp_millis();
        let mut acked = 0;
        for envelope in envelopes {
            if !envelope.origin.acks.ack(envelope.delivery.delivery_tag) {
                settle_failed(&outcome::SettleError::ChannelGone, Settled::Delivered);
                continue;
            }
            acked += 1;
            if let Some(ago) = published_ago(&envelope.state, &envelope.delivery, now_ms) {
                latency.record(ago.as_secs_f64());
            }
        }
        let label = self.labels.label(&page.id);
        page.delivered_counter(&label, || {
            metrics::counter!(telemetry::OPERATIONS, "outcome" => Settled::Delivered.label(), "page" => label.clone())
        })
        .increment(acked);
    }

    fn record(
        &self,
        settled: Settled,
        job: Option<&QueuedJob>,
        state: &JobState,
        delivery: &Delivery,
    ) {
        let page = match job.and_then(|j| self.registry.get(&j.page_id)) {
            Some(page) => self.labels.label(&page.id),
            None => Arc::from(telemetry::OTHER_PAGES),
        };
        metrics::counter!(telemetry::OPERATIONS, "outcome" => settled.label(), "page" => page)
            .increment(1);
        match settled {
            Settled::DeadLettered(reason) => {
                metrics::counter!(telemetry::DEAD_LETTERS, "reason" => reason.as_str())
                    .increment(1);
            }
            Settled::Parked(reason) => {
                metrics::counter!(telemetry::PARKED, "reason" => reason.as_str()).increment(1);
            }
            Settled::Duplicate => metrics::counter!(telemetry::DUPLICATES).increment(1),
            Settled::Delivered => {
                if let Some(latency) = published_ago(state, delivery, Utc::now().timestamp_millis())
                {
                    self.meters.end_to_end.record(latency.as_secs_f64());
                }
            }
            Settled::Retried | Settled::Requeued => {}
        }
    }

    /// Carries out a settlement planned for an envelope and records it.
    async fn carry_out_envelope(
        &self,
        envelope: &Envelope,
        settlement: Settlement,
        settled: Settled,
    ) -> Settled {
        self.carry_out(
            settlement,
            settled,
            &envelope.delivery,
            &envelope.state,
            Some(&envelope.job),
            &envelope.origin,
        )
        .await
    }

    /// Settles an envelope.
    pub async fn settle_envelope(&self, envelope: Box<Envelope>, outcome: Outcome) -> Settled {
        self.settle(
            &envelope.delivery,
            &envelope.state,
            Some(&envelope.job),
            &envelope.origin,
            outcome,
        )
        .await
    }

    /// A dead letter for a job that is never to be sent, without an attempt.
    pub fn rejection(reason: DeadLetterReason, message: impl Into<String>) -> Outcome {
        Outcome::DeadLetter {
            reason,
            error: crate::amqp::headers::ErrorContext {
                message: Some(message.into()),
                ..Default::default()
            },
            attempted: false,
        }
    }
}

/// The size of [`Shared::bundled_room`]: as many jobs as the prefetch window has deliveries, so
/// bundles never hold more jobs in memory than unbundled deliveries could.
pub fn bundled_room(settings: &Settings) -> usize {
    usize::from(settings.amqp.prefetch)
}

/// Counts and logs a settlement that could not be carried out (the delivery is the broker's
/// again).
fn settle_failed(e: &outcome::SettleError, settled: Settled) {
    let step = match e {
        outcome::SettleError::Publish { .. } => "publish",
        outcome::SettleError::ChannelGone => "channel_gone",
    };
    metrics::counter!(telemetry::SETTLE_FAILURES, "step" => step).increment(1);
    tracing::debug!(error = %e, outcome = settled.label(), "settlement handed back to the broker");
}

/// How long ago the job was published: from `pagerelay publish`'s millisecond header, else the
/// AMQP timestamp (seconds).
fn published_ago(state: &JobState, delivery: &Delivery, now_ms: i64) -> Option<Duration> {
    let published_ms = state.published_at_ms.or_else(|| {
        delivery
            .properties
            .timestamp()
            .and_then(|s| i64::try_from(s).ok())
            .map(|s| s.saturating_mul(1000))
    })?;
    u64::try_from(now_ms - published_ms)
        .ok()
        .map(Duration::from_millis)
}
