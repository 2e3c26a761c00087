//! The consumer: takes deliveries from the session's jobs queues, decodes and validates them,
//! and routes each to its Page's lane — or settles it at once when there is nothing to send:
//! invalid (dead letter `invalid`), unknown Page (`unknown_page`), expired (`expired`), or
//! already delivered by this process (acked by the duplicate guard).
//!
//! A park bundle (see `amqp::bundle`) is split back into its jobs here, each accepted as if it
//! had come alone, sharing the bundle's delivery tag; a bundle that cannot be read is
//! dead-lettered whole as `invalid`. The prefetch window counts a bundle as one delivery, so
//! bundled jobs take room in a window of their own of the same size: a bundle that finds it full
//! waits (and the intake with it) until earlier bundles' jobs are settled.
//!
//! Routing never waits on a Page, so one Page's trouble never slows the intake of the others.

use std::sync::Arc;

use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::outcome::Outcome;
use super::{Envelope, Origin, QueuedJob, Shared, bundled_room};
use crate::amqp::bundle;
use crate::amqp::headers::{DeadLetterReason, JobState};
use crate::amqp::session::Deliveries;
use crate::graph::EncodedBody;
use crate::job::{DeliveryMeta, Job};

/// Why consuming stopped.
#[derive(Debug)]
pub enum ConsumeEnd {
    /// Shutdown was requested.
    Stopping,
    /// The connection or channel failed.
    Lost(lapin::Error),
    /// The broker cancelled the consumers (a queue was deleted, say).
    Cancelled,
}

/// Consumes until the connection fails, the broker cancels, or `stop` fires.
pub async fn consume(
    shared: &Arc<Shared>,
    origin: &Arc<Origin>,
    deliveries: &mut Deliveries,
    stop: &tokio_util::sync::CancellationToken,
) -> ConsumeEnd {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return ConsumeEnd::Stopping,
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => {
                    let Some(declared) = bundle::count(delivery.properties.headers().as_ref())
                    else {
                        accept(shared, origin, delivery);
                        continue;
                    };
                    // The prefetch window bounds messages, not jobs: a bundle waits until the
                    // jobs of earlier bundles have made room, and so does the intake behind it.
                    let room = u32::try_from(declared.clamp(1, bundled_room(&shared.settings)))
                        .unwrap_or(u32::MAX);
                    let room = tokio::select! {
                        biased;
                        // Not recorded with the acks: closing the channel hands it back.
                        _ = stop.cancelled() => return ConsumeEnd::Stopping,
                        room = shared.bundled_room.clone().acquire_many_owned(room) => {
                            room.expect("the bundle semaphore is never closed")
                        }
                    };
                    accept_bundle(shared, origin, delivery, declared, Arc::new(room));
                }
                Some(Err(e)) => return ConsumeEnd::Lost(e),
                None => return ConsumeEnd::Cancelled,
            },
        }
    }
}

/// Decides where one delivery (not a bundle) goes.
fn accept(shared: &Arc<Shared>, origin: &Arc<Origin>, delivery: Delivery) {
    shared.meters.jobs_consumed.increment(1);
    origin.acks.received(delivery.delivery_tag);
    accept_job(shared, origin, delivery, None);
}

/// Splits a park bundle into its jobs; the bundle is acknowledged once every job is settled.
/// Its jobs share `room` in the bundled-jobs window until the last of them is settled.
fn accept_bundle(
    shared: &Arc<Shared>,
    origin: &Arc<Origin>,
    delivery: Delivery,
    declared: usize,
    room: Arc<OwnedSemaphorePermit>,
) {
    let tag = delivery.delivery_tag;
    let pieces = match bundle::decode(&delivery.data, declared) {
        Ok(pieces) => pieces,
        Err(e) => {
            shared.meters.jobs_consumed.increment(1);
            origin.acks.received(tag);
            let state = JobState::from_headers(delivery.properties.headers().as_ref());
            let outcome = Shared::rejection(
                DeadLetterReason::Invalid,
                format!("not a readable park bundle: {e}"),
            );
            settle_now(shared, delivery, state, None, origin, outcome);
            return;
        }
    };
    shared.meters.jobs_consumed.increment(pieces.len() as u64);
    // A bundle's size is bounded by its body, far below u32::MAX pieces.
    origin
        .acks
        .received_shared(tag, u32::try_from(pieces.len()).unwrap_or(u32::MAX));
    for piece in pieces {
        let mut job = Delivery::mock(
            tag,
            delivery.exchange.clone(),
            delivery.routing_key.clone(),
            delivery.redelivered,
            piece.body,
        );
        job.properties = piece.properties;
        accept_job(shared, origin, job, Some(room.clone()));
    }
}

/// Decides where one job goes; its delivery is already recorded with the acks.
fn accept_job(
    shared: &Arc<Shared>,
    origin: &Arc<Origin>,
    delivery: Delivery,
    bundle: Option<Arc<OwnedSemaphorePermit>>,
) {
    let state = JobState::from_headers(delivery.properties.headers().as_ref());
    let meta = DeliveryMeta {
        routing_key: delivery.routing_key.as_str(),
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        content_type: delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
    };
    // Encoded here, where the tree was built and is still in cache; the tree is freed on the
    // thread that allocated it, and what waits in a lane is one buffer.
    let job = match Job::decode(&delivery.data, &meta) {
        Ok(job) => job.map_body(|body| EncodedBody::new(&body)),
        Err(e) => {
            let outcome = Shared::rejection(DeadLetterReason::Invalid, e.to_string());
            settle_now(shared, delivery, state, None, origin, outcome);
            return;
        }
    };
    let Some(page) = shared.registry.get(&job.page_id) else {
        let outcome = Shared::rejection(
            DeadLetterReason::UnknownPage,
            format!("Page {} is not in pagerelay's Page registry", job.page_id),
        );
        settle_now(shared, delivery, state, Some(job), origin, outcome);
        return;
    };
    if job.is_expired(Utc::now()) {
        let outcome = Shared::rejection(
            DeadLetterReason::Expired,
            format!(
                "expires_at {} passed before the job could be sent",
                job.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default()
            ),
        );
        settle_now(shared, delivery, state, Some(job), origin, outcome);
        return;
    }
    if shared.dedup.contains(&job.job_id) {
        settle_now(
            shared,
            delivery,
            state,
            Some(job),
            origin,
            Outcome::Duplicate,
        );
        return;
    }
    page.volume
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let envelope = Envelope {
        job,
        delivery,
        state,
        origin: origin.clone(),
        received: Instant::now(),
        bundle,
    };
    shared.lanes.route(shared, page, envelope);
}

fn settle_now(
    shared: &Arc<Shared>,
    delivery: Delivery,
    state: JobState,
    job: Option<QueuedJob>,
    origin: &Arc<Origin>,
    outcome: Outcome,
) {
    let shared = shared.clone();
    let origin = origin.clone();
    tokio::spawn(async move {
        shared
            .settle(&delivery, &state, job.as_ref(), &origin, outcome)
            .await;
    });
}
