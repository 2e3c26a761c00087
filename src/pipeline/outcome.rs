//! Settling a delivery: what happens to a job once pagerelay knows its fate.
//!
//! [`plan`] is a pure function from an [`Outcome`] to a [`Settlement`] — ack it, or republish a
//! copy (to a delay tier or the dead-letter exchange) with updated headers and then ack it, or
//! hand it back. [`settle`] carries a settlement out, acking the original only after the copy's
//! publish is confirmed. Every path through a delivery ends here, exactly once. The ack frames
//! themselves are `amqp::acks`'s: settling hands it the delivery tag.
//!
//! It does not classify Graph replies (see `graph::classify`), choose park delays (see
//! [`super::lane`]) or bundle parked jobs (see [`super::park`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{FieldTable, ShortString};

use super::Origin;
use crate::amqp::headers::{self, DeadLetterReason, ErrorContext, JobState};
use crate::amqp::publisher::copy_properties;
use crate::amqp::topology::{TIER_HEADER, tier_label};
use crate::amqp::{PublishError, Topology};
use crate::config::RetrySettings;
use crate::graph::StopReason;

/// Why a job was parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParkReason {
    /// The Page's budget is spent until the bucket refills.
    Budget,
    /// The Page is cooling down after a rate-limit reply.
    Cooldown,
    /// The Page's lane is full; the job waits its turn outside.
    LaneFull,
    /// The Graph API failed the Page's recent batches; its circuit is open.
    CircuitOpen,
    /// The Page is paused: its token or app secret proof was refused, or it is blocked.
    Paused(StopReason),
}

impl ParkReason {
    /// Every value of [`ParkReason::as_str`], for metrics that start at zero.
    pub const LABELS: [&'static str; 5] =
        ["budget", "cooldown", "lane_full", "circuit_open", "paused"];

    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::Budget => "budget",
            ParkReason::Cooldown => "cooldown",
            ParkReason::LaneFull => "lane_full",
            ParkReason::CircuitOpen => "circuit_open",
            ParkReason::Paused(_) => "paused",
        }
    }

    /// The dead-letter reason of a job parked for this reason longer than the cap.
    fn dead_letter_reason(self) -> DeadLetterReason {
        match self {
            ParkReason::Paused(StopReason::TokenInvalid) => DeadLetterReason::TokenInvalid,
            ParkReason::Paused(StopReason::AppSecretInvalid) => DeadLetterReason::AppsecretInvalid,
            ParkReason::Paused(StopReason::PageBlocked) => DeadLetterReason::PageBlocked,
            _ => DeadLetterReason::ParkLimit,
        }
    }
}

/// The fate of one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The Graph API accepted it.
    Delivered,
    /// This process delivered it before; the broker sent it again.
    Duplicate,
    /// A send attempt failed in a way worth retrying.
    Retry {
        error: ErrorContext,
        /// The error code was unknown: when attempts run out, the reason is `unknown_error`.
        unknown: bool,
    },
    /// Not sent now, for a reason of the Page's; comes back after `delay`. Attempts untouched.
    Park { reason: ParkReason, delay: Duration },
    /// Never to be sent again without an operator.
    DeadLetter {
        reason: DeadLetterReason,
        error: ErrorContext,
        /// A send attempt was made (and counts in the attempts header).
        attempted: bool,
    },
    /// Hand the delivery back to the broker (shutdown).
    Requeue,
}

/// How an outcome is carried out.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    Ack,
    /// Publish a copy, then ack the original.
    Republish(Box<Republish>),
    /// Nack with requeue.
    Requeue,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Republish {
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
}

/// What the settlement did, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Delivered,
    Duplicate,
    Retried,
    Parked(ParkReason),
    DeadLettered(DeadLetterReason),
    Requeued,
}

impl Settled {
    /// The `outcome` label of `pagerelay_operations_total`.
    pub fn label(self) -> &'static str {
        match self {
            Settled::Delivered => "delivered",
            Settled::Duplicate => "duplicate",
            Settled::Retried => "retried",
            Settled::Parked(_) => "parked",
            Settled::DeadLettered(_) => "dead_lettered",
            Settled::Requeued => "requeued",
        }
    }
}

/// What [`plan`] needs to know about the delivery.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub routing_key: &'a str,
    pub properties: &'a BasicProperties,
    pub state: &'a JobState,
    /// The Page and job id, once the job decoded.
    pub page_id: Option<&'a str>,
    pub job_id: Option<&'a str>,
}

impl<'a> Incoming<'a> {
    pub fn new<B>(
        delivery: &'a Delivery,
        state: &'a JobState,
        job: Option<&'a crate::job::Job<B>>,
    ) -> Self {
        Incoming {
            routing_key: delivery.routing_key.as_str(),
            properties: &delivery.properties,
            state,
            page_id: job.map(|j| j.page_id.as_str()),
            job_id: job.map(|j| j.job_id.as_str()),
        }
    }
}

/// The rest of what [`plan`] needs: where things go, the retry policy, the time, and a random
/// draw in [0, 1) for jitter (passed in so that tests are exact).
#[derive(Debug, Clone, Copy)]
pub struct PlanContext<'a> {
    pub topology: &'a Topology,
    pub retry: &'a RetrySettings,
    pub now: DateTime<Utc>,
    pub jitter_draw: f64,
}

/// Decides how `outcome` is carried out for `incoming`.
pub fn plan(
    outcome: &Outcome,
    incoming: Incoming<'_>,
    ctx: PlanContext<'_>,
) -> (Settlement, Settled) {
    match outcome {
        Outcome::Delivered => (Settlement::Ack, Settled::Delivered),
        Outcome::Duplicate => (Settlement::Ack, Settled::Duplicate),
        Outcome::Requeue => (Settlement::Requeue, Settled::Requeued),
        Outcome::DeadLetter {
            reason,
            error,
            attempted,
        } => {
            let mut state = incoming.state.clone();
            if *attempted {
                note_attempt(&mut state, ctx.now);
            }
            dead_letter(incoming, ctx, &state, *reason, error)
        }
        Outcome::Retry { error, unknown } => {
            let mut state = incoming.state.clone();
            note_attempt(&mut state, ctx.now);
            state.last_error = error.clone();
            if state.attempts >= ctx.retry.max_attempts {
                let reason = if *unknown {
                    DeadLetterReason::UnknownError
                } else {
                    DeadLetterReason::MaxAttempts
                };
                return dead_letter(incoming, ctx, &state, reason, error);
            }
            let tier = retry_tier(state.attempts, &ctx.retry.tiers);
            // Shorten by up to `jitter` so that a failed batch's jobs come back spread out.
            // The per-message TTL never exceeds the tier's, so it never holds up the queue by
            // more than the jitter.
            let expiration = tier.mul_f64(1.0 - ctx.retry.jitter * ctx.jitter_draw.clamp(0.0, 1.0));
            let republish = to_tier(incoming, ctx, &state, tier, Some(expiration), |_| {});
            (Settlement::Republish(Box::new(republish)), Settled::Retried)
        }
        Outcome::Park { reason, delay } => {
            let mut state = incoming.state.clone();
            let first = *state.first_parked_at.get_or_insert(ctx.now);
            let parked_for = (ctx.now - first).to_std().unwrap_or_default();
            if parked_for >= ctx.retry.max_parked {
                let error = ErrorContext {
                    message: Some(format!(
                        "parked for {} ({}), longer than retry.max_parked",
                        humantime::format_duration(Duration::from_secs(parked_for.as_secs())),
                        reason.as_str()
                    )),
                    ..state.last_error.clone()
                };
                return dead_letter(incoming, ctx, &state, reason.dead_letter_reason(), &error);
            }
            state.parked += 1;
            state.park_due_ms = Some(
                (ctx.now + chrono::Duration::from_std(*delay).unwrap_or(chrono::Duration::MAX))
                    .timestamp_millis(),
            );
            let tier = park_tier(*delay, &ctx.retry.tiers);
            let republish = to_tier(incoming, ctx, &state, tier, None, |h| {
                headers::set_str(h, headers::PARK_REASON, reason.as_str());
            });
            (
                Settlement::Republish(Box::new(republish)),
                Settled::Parked(*reason),
            )
        }
    }
}

/// The tier of the `attempts`-th retry: the first tier for the first retry, and so on, staying
/// on the last one.
pub fn retry_tier(attempts: u32, tiers: &[Duration]) -> Duration {
    let index = (attempts.max(1) as usize - 1).min(tiers.len() - 1);
    tiers[index]
}

/// The tier for a park of `delay`: the longest tier not longer than the delay (a job that comes
/// back early is parked again for the rest), or the shortest tier.
pub fn park_tier(delay: Duration, tiers: &[Duration]) -> Duration {
    tiers
        .iter()
        .copied()
        .rev()
        .find(|t| *t <= delay)
        .unwrap_or(tiers[0])
}

fn note_attempt(state: &mut JobState, now: DateTime<Utc>) {
    state.attempts += 1;
    state.first_attempt_at.get_or_insert(now);
}

fn dead_letter(
    incoming: Incoming<'_>,
    ctx: PlanContext<'_>,
    state: &JobState,
    reason: DeadLetterReason,
    error: &ErrorContext,
) -> (Settlement, Settled) {
    let mut table = base_headers(incoming, state);
    headers::write_error(&mut table, error);
    headers::set_str(&mut table, headers::REASON, reason.as_str());
    headers::set_time(&mut table, headers::DEAD_LETTERED_AT, Some(ctx.now));
    headers::remove(&mut table, headers::PARK_DUE);
    headers::remove(&mut table, TIER_HEADER);
    if let Some(page) = incoming.page_id {
        headers::set_str(&mut table, headers::PAGE_ID, page);
    }
    let republish = Republish {
        exchange: ctx.topology.dead_exchange(),
        routing_key: incoming.routing_key.to_string(),
        properties: properties(incoming, table, None),
    };
    (
        Settlement::Republish(Box::new(republish)),
        Settled::DeadLettered(reason),
    )
}

fn to_tier(
    incoming: Incoming<'_>,
    ctx: PlanContext<'_>,
    state: &JobState,
    tier: Duration,
    expiration: Option<Duration>,
    extra: impl FnOnce(&mut FieldTable),
) -> Republish {
    let mut table = base_headers(incoming, state);
    headers::set_str(&mut table, TIER_HEADER, &tier_label(tier));
    extra(&mut table);
    Republish {
        exchange: ctx.topology.delay_exchange(),
        // The Page id, so that the tier's dead-lettering returns the job to its own shard.
        routing_key: incoming.page_id.unwrap_or(incoming.routing_key).to_string(),
        properties: properties(incoming, table, expiration),
    }
}

fn base_headers(incoming: Incoming<'_>, state: &JobState) -> FieldTable {
    let mut table = incoming.properties.headers().clone().unwrap_or_default();
    state.write(&mut table);
    table
}

/// The copy's properties ([`copy_properties`]), with an expiration only when we set one: a
/// publisher's own expiration must not make a dead letter vanish.
fn properties(
    incoming: Incoming<'_>,
    table: FieldTable,
    expiration: Option<Duration>,
) -> BasicProperties {
    let expiration = expiration.map(|ttl| ShortString::from(ttl.as_millis().max(1).to_string()));
    copy_properties(incoming.properties, table, expiration, incoming.job_id)
}

/// Why a settlement could not be carried out. The delivery was handed back to the broker (or its
/// channel is gone, and the broker will redeliver it anyway): nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("publishing to {exchange} failed: {source}")]
    Publish {
        exchange: String,
        #[source]
        source: PublishError,
    },
    #[error("the delivery's channel is gone; the broker will redeliver it")]
    ChannelGone,
}

/// How often a failed republish is tried again before the delivery is handed back.
const PUBLISH_ATTEMPTS: u32 = 3;

/// Carries out `settlement` for `delivery`, which came through `origin`.
pub async fn settle(
    settlement: Settlement,
    delivery: &Delivery,
    origin: &Origin,
) -> Result<(), SettleError> {
    let tag = delivery.delivery_tag;
    let acks = &origin.acks;
    let settled = match settlement {
        Settlement::Ack => acks.ack(tag),
        Settlement::Requeue => acks.requeue(tag),
        Settlement::Republish(copy) => {
            match publish(&copy, &delivery.data, origin).await {
                Ok(()) => acks.ack(tag),
                Err(source) => {
                    // Hand it back so it is not stuck unacked on a live channel; the broker's
                    // delivery limit bounds how often this can repeat.
                    acks.requeue(tag);
                    return Err(SettleError::Publish {
                        exchange: copy.exchange,
                        source,
                    });
                }
            }
        }
    };
    if settled {
        Ok(())
    } else {
        Err(SettleError::ChannelGone)
    }
}

/// Publishes `body` as `copy` on `origin`'s connection, confirmed, trying again a few times
/// while the connection and the delivery's channel are up.
pub async fn publish(copy: &Republish, body: &[u8], origin: &Origin) -> Result<(), PublishError> {
    let publisher = &origin.publisher;
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let published = publisher
            .publish(
                &copy.exchange,
                &copy.routing_key,
                body,
                copy.properties.clone(),
            )
            .await;
        match published {
            Ok(()) => return Ok(()),
            Err(source) => {
                if attempt >= PUBLISH_ATTEMPTS || !publisher.is_open() || !origin.acks.is_open() {
                    return Err(source);
                }
                tokio::time::sleep(backoff).await;
                backoff *= 4;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::headers::{get_int, get_string};
    use crate::config::{LoadOptions, Settings};

    struct Fixture {
        topology: Topology,
        retry: RetrySettings,
        now: DateTime<Utc>,
    }

    fn fixture() -> Fixture {
        let settings = Settings::load(&LoadOptions::default()).unwrap();
        Fixture {
            topology: Topology::new(&settings.amqp, &settings.retry.tiers),
            retry: settings.retry,
            now: headers::parse_time("2026-11-22T12:00:00Z").unwrap(),
        }
    }

    impl Fixture {
        fn ctx(&self, jitter_draw: f64) -> PlanContext<'_> {
            PlanContext {
                topology: &self.topology,
                retry: &self.retry,
                now: self.now,
                jitter_draw,
            }
        }
    }

    fn props() -> BasicProperties {
        let mut table = FieldTable::default();
        headers::set_str(&mut table, "x-publisher", "orders");
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(table)
            .with_timestamp(1_795_000_000)
            .with_expiration("60000".into())
    }

    fn incoming<'a>(props: &'a BasicProperties, state: &'a JobState) -> Incoming<'a> {
        Incoming {
            routing_key: "1001",
            properties: props,
            state,
            page_id: Some("1001"),
            job_id: Some("job-1"),
        }
    }

    fn republished(s: Settlement) -> Republish {
        match s {
            Settlement::Republish(r) => *r,
            other => panic!("expected a republish, got {other:?}"),
        }
    }

    #[test]
    fn delivered_and_duplicates_are_acked() {
        let f = fixture();
        let (p, s) = (props(), JobState::default());
        assert_eq!(
            plan(&Outcome::Delivered, incoming(&p, &s), f.ctx(0.0)),
            (Settlement::Ack, Settled::Delivered)
        );
        assert_eq!(
            plan(&Outcome::Duplicate, incoming(&p, &s), f.ctx(0.0)),
            (Settlement::Ack, Settled::Duplicate)
        );
        assert_eq!(
            plan(&Outcome::Requeue, incoming(&p, &s), f.ctx(0.0)),
            (Settlement::Requeue, Settled::Requeued)
        );
    }

    #[test]
    fn a_retry_goes_to_the_tier_of_its_attempt_with_jitter() {
        let f = fixture();
        let p = props();
        let state = JobState {
            attempts: 1,
            ..JobState::default()
        };
        let outcome = Outcome::Retry {
            error: ErrorContext {
                code: Some(2),
                message: Some("temporary".into()),
                ..ErrorContext::default()
            },
            unknown: false,
        };
        let (settlement, settled) = plan(&outcome, incoming(&p, &state), f.ctx(0.5));
        assert_eq!(settled, Settled::Retried);
        let copy = republished(settlement);
        assert_eq!(copy.exchange, format!("{}.delay", f.topology.prefix()));
        assert_eq!(copy.routing_key, "1001");
        let h = copy.properties.headers().as_ref();
        // Second attempt failed: second tier (5 s), shortened by 0.2 × 0.5.
        assert_eq!(get_string(h, TIER_HEADER).as_deref(), Some("5s"));
        assert_eq!(
            copy.properties.expiration().as_ref().map(|e| e.as_str()),
            Some("4500")
        );
        assert_eq!(get_int(h, headers::ATTEMPTS), Some(2));
        assert_eq!(get_int(h, headers::ERROR_CODE), Some(2));
        assert_eq!(
            get_string(h, headers::FIRST_ATTEMPT_AT).as_deref(),
            Some("2026-11-22T12:00:00.000Z")
        );
        assert_eq!(get_string(h, "x-publisher").as_deref(), Some("orders"));
        assert_eq!(
            copy.properties.message_id().as_ref().map(|m| m.as_str()),
            Some("job-1")
        );
        assert_eq!(copy.properties.delivery_mode(), &Some(2));
        assert_eq!(copy.properties.timestamp(), &Some(1_795_000_000));
    }

    #[test]
    fn the_last_attempt_dead_letters_with_max_attempts_or_unknown_error() {
        let f = fixture();
        let p = props();
        let state = JobState {
            attempts: f.retry.max_attempts - 1,
            ..JobState::default()
        };
        for (unknown, reason) in [
            (false, DeadLetterReason::MaxAttempts),
            (true, DeadLetterReason::UnknownError),
        ] {
            let outcome = Outcome::Retry {
                error: ErrorContext {
                    code: Some(if unknown { 99999 } else { 2 }),
                    fbtrace_id: Some("trace".into()),
                    ..ErrorContext::default()
                },
                unknown,
            };
            let (settlement, settled) = plan(&outcome, incoming(&p, &state), f.ctx(0.0));
            assert_eq!(settled, Settled::DeadLettered(reason));
            let copy = republished(settlement);
            assert_eq!(copy.exchange, f.topology.dead_exchange());
            let h = copy.properties.headers().as_ref();
            assert_eq!(
                get_string(h, headers::REASON).as_deref(),
                Some(reason.as_str())
            );
            assert_eq!(
                get_int(h, headers::ATTEMPTS),
                Some(i64::from(f.retry.max_attempts))
            );
            assert_eq!(get_string(h, headers::FBTRACE_ID).as_deref(), Some("trace"));
            assert_eq!(get_string(h, headers::PAGE_ID).as_deref(), Some("1001"));
            assert_eq!(
                get_string(h, headers::DEAD_LETTERED_AT).as_deref(),
                Some("2026-11-22T12:00:00.000Z")
            );
            // The publisher's expiration must not make the dead letter vanish.
            assert_eq!(copy.properties.expiration(), &None);
            assert_eq!(
                copy.properties.content_type().as_ref().map(|c| c.as_str()),
                Some("application/json")
            );
        }
    }

    #[test]
    fn dead_letters_without_an_attempt_keep_the_attempt_count() {
        let f = fixture();
        let p = props();
        let state = JobState::default();
        let outcome = Outcome::DeadLetter {
            reason: DeadLetterReason::Invalid,
            error: ErrorContext {
                message: Some("message.text: 2001 characters, limit is 1999".into()),
                ..ErrorContext::default()
            },
            attempted: false,
        };
        let copy = republished(plan(&outcome, incoming(&p, &state), f.ctx(0.0)).0);
        let h = copy.properties.headers().as_ref();
        assert_eq!(get_int(h, headers::ATTEMPTS), Some(0));
        assert_eq!(get_string(h, headers::FIRST_ATTEMPT_AT), None);
        assert_eq!(
            get_string(h, headers::ERROR_MESSAGE).as_deref(),
            Some("message.text: 2001 characters, limit is 1999")
        );
        assert_eq!(copy.routing_key, "1001");
    }

    #[test]
    fn parking_leaves_attempts_alone_and_picks_the_longest_tier_that_fits() {
        let f = fixture();
        let p = props();
        let state = JobState {
            attempts: 2,
            ..JobState::default()
        };
        let outcome = Outcome::Park {
            reason: ParkReason::Cooldown,
            delay: Duration::from_secs(45),
        };
        let (settlement, settled) = plan(&outcome, incoming(&p, &state), f.ctx(0.9));
        assert_eq!(settled, Settled::Parked(ParkReason::Cooldown));
        let copy = republished(settlement);
        let h = copy.properties.headers().as_ref();
        assert_eq!(get_string(h, TIER_HEADER).as_deref(), Some("30s"));
        assert_eq!(get_int(h, headers::ATTEMPTS), Some(2));
        assert_eq!(get_int(h, headers::PARKED), Some(1));
        assert_eq!(
            get_string(h, headers::PARK_REASON).as_deref(),
            Some("cooldown")
        );
        assert_eq!(
            get_int(h, headers::PARK_DUE),
            Some(f.now.timestamp_millis() + 45_000)
        );
        assert_eq!(
            get_string(h, headers::FIRST_PARKED_AT).as_deref(),
            Some("2026-11-22T12:00:00.000Z")
        );
        // A park uses the tier's own TTL.
        assert_eq!(copy.properties.expiration(), &None);
    }

    #[test]
    fn parking_past_the_cap_dead_letters_with_the_pause_reason() {
        let f = fixture();
        let p = props();
        let state = JobState {
            parked: 40,
            first_parked_at: Some(f.now - chrono::Duration::hours(25)),
            ..JobState::default()
        };
        let cases = [
            (
                ParkReason::Paused(StopReason::TokenInvalid),
                DeadLetterReason::TokenInvalid,
            ),
            (ParkReason::Budget, DeadLetterReason::ParkLimit),
        ];
        for (reason, expected) in cases {
            let outcome = Outcome::Park {
                reason,
                delay: Duration::from_secs(30),
            };
            let (settlement, settled) = plan(&outcome, incoming(&p, &state), f.ctx(0.0));
            assert_eq!(settled, Settled::DeadLettered(expected));
            let copy = republished(settlement);
            let h = copy.properties.headers().as_ref();
            assert_eq!(
                get_string(h, headers::REASON).as_deref(),
                Some(expected.as_str())
            );
            assert!(
                get_string(h, headers::ERROR_MESSAGE)
                    .unwrap()
                    .starts_with("parked for 1day 1h")
            );
        }
    }

    #[test]
    fn tiers_are_chosen_as_documented() {
        let tiers = fixture().retry.tiers;
        let s = Duration::from_secs;
        assert_eq!(retry_tier(1, &tiers), s(1));
        assert_eq!(retry_tier(3, &tiers), s(30));
        assert_eq!(retry_tier(99, &tiers), s(3600));
        assert_eq!(park_tier(Duration::from_millis(300), &tiers), s(1));
        assert_eq!(park_tier(s(5), &tiers), s(5));
        assert_eq!(park_tier(s(29), &tiers), s(5));
        assert_eq!(park_tier(s(86_400), &tiers), s(3600));
    }

    #[test]
    fn park_labels_list_every_reason() {
        // A new variant fails to compile here, as a reminder to list it below.
        match ParkReason::Budget {
            ParkReason::Budget
            | ParkReason::Cooldown
            | ParkReason::LaneFull
            | ParkReason::CircuitOpen
            | ParkReason::Paused(_) => {}
        }
        let reasons = [
            ParkReason::Budget,
            ParkReason::Cooldown,
            ParkReason::LaneFull,
            ParkReason::CircuitOpen,
            ParkReason::Paused(StopReason::TokenInvalid),
            ParkReason::Paused(StopReason::AppSecretInvalid),
            ParkReason::Paused(StopReason::PageBlocked),
        ];
        let mut labels: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
        labels.dedup();
        assert_eq!(labels, ParkReason::LABELS);
    }
}
