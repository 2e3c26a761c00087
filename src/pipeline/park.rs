//! Parking: jobs that are not to be sent now go to a delay tier, several of a Page's at once.
//!
//! A lane that sheds its overflow, or a batch whose jobs met a rate limit or an open circuit,
//! hands its parked jobs here together. Each is planned on its own ([`outcome::plan`]: its
//! headers, its tier, or a dead letter once it has been parked too long), and the jobs bound for
//! the same tier on the same session travel as one [`bundle`] message: one confirmed publish
//! instead of one per job. Each job's delivery is acknowledged once the bundle's publish is
//! confirmed; if it fails, every job in it is handed back.
//!
//! It does not decide which jobs to park or for how long (see [`super::lane`] and
//! [`super::dispatch`]) and owns no wire format (see [`bundle`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::FieldTable;

use super::outcome::{self, Incoming, Outcome, ParkReason, Republish, Settled, Settlement};
use super::{Envelope, Shared, settle_failed};
use crate::amqp::bundle;
use crate::amqp::headers;
use crate::amqp::topology::TIER_HEADER;
use crate::telemetry;

/// The most body bytes one bundle carries, well under RabbitMQ's default 128 MiB message limit
/// and small enough that a bundle is never a slow message for the broker.
pub const MAX_BUNDLE_BYTES: usize = 4 << 20;

/// A job to park, and why and for how long.
pub struct ParkJob {
    pub envelope: Box<Envelope>,
    pub reason: ParkReason,
    pub delay: Duration,
}

/// Which jobs may share a message: those of one session (their tags mean nothing elsewhere),
/// bound for the same routing key and tier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub generation: u64,
    pub routing_key: String,
    pub tier: String,
}

/// Splits items (a key and a size each, in order) into messages: items of one key together, in
/// order, at most `max_jobs` and [`MAX_BUNDLE_BYTES`] to a message (an item larger than that
/// goes alone). Returns the items' indices, message by message, in the order of each message's
/// first item.
pub fn groups<K: Eq + Hash>(
    items: impl IntoIterator<Item = (K, usize)>,
    max_jobs: usize,
) -> Vec<Vec<usize>> {
    let max_jobs = max_jobs.max(1);
    // The message each key is filling.
    let mut open: HashMap<K, usize> = HashMap::new();
    let mut messages: Vec<(Vec<usize>, usize)> = Vec::new();
    for (index, (key, size)) in items.into_iter().enumerate() {
        let fits = |m: &(Vec<usize>, usize)| m.0.len() < max_jobs && m.1 + size <= MAX_BUNDLE_BYTES;
        match open.get(&key) {
            Some(&at) if fits(&messages[at]) => {
                messages[at].0.push(index);
                messages[at].1 += size;
            }
            _ => {
                open.insert(key, messages.len());
                messages.push((vec![index], size));
            }
        }
    }
    messages.into_iter().map(|(indices, _)| indices).collect()
}

/// A job planned for a delay tier.
struct Planned {
    envelope: Box<Envelope>,
    copy: Republish,
    settled: Settled,
}

impl Shared {
    /// Parks `jobs`, bundling those that may share a message, and settles every one of them.
    pub async fn park(&self, jobs: Vec<ParkJob>) {
        let mut planned = Vec::with_capacity(jobs.len());
        let mut alone = Vec::new();
        let ctx = self.plan_context();
        for ParkJob {
            envelope,
            reason,
            delay,
        } in jobs
        {
            let incoming = Incoming::new(&envelope.delivery, &envelope.state, Some(&envelope.job));
            match outcome::plan(&Outcome::Park { reason, delay }, incoming, ctx) {
                (Settlement::Republish(copy), settled @ Settled::Parked(_)) => {
                    planned.push(Planned {
                        envelope,
                        copy: *copy,
                        settled,
                    });
                }
                // Parked too long: its dead letter is a message of its own.
                (settlement, settled) => alone.push((envelope, settlement, settled)),
            }
        }
        let alone = alone
            .into_iter()
            .map(|(envelope, settlement, settled)| async move {
                self.carry_out_envelope(&envelope, settlement, settled)
                    .await
            });

        let keys = planned.iter().map(|p| {
            let key = GroupKey {
                generation: p.envelope.origin.generation,
                routing_key: p.copy.routing_key.clone(),
                tier: headers::get_string(p.copy.properties.headers().as_ref(), TIER_HEADER)
                    .unwrap_or_default(),
            };
            (key, p.envelope.delivery.data.len())
        });
        let messages = groups(keys, self.settings.retry.park_bundle);
        let mut slots: Vec<Option<Planned>> = planned.into_iter().map(Some).collect();
        let bundles = messages.into_iter().map(|indices| {
            let members: Vec<Planned> = indices
                .into_iter()
                .filter_map(|i| slots[i].take())
                .collect();
            self.publish_parks(members)
        });
        futures_util::future::join(
            futures_util::future::join_all(alone),
            futures_util::future::join_all(bundles),
        )
        .await;
    }

    /// Publishes one park message (the job itself when it is alone, else a bundle) and settles
    /// its jobs.
    async fn publish_parks(&self, mut members: Vec<Planned>) {
        self.meters.park_message_jobs.record(members.len() as f64);
        if members.len() == 1 {
            let Planned {
                envelope,
                copy,
                settled,
            } = members.pop().expect("one member");
            let settlement = Settlement::Republish(Box::new(copy));
            self.carry_out_envelope(&envelope, settlement, settled)
                .await;
            return;
        }
        let first = &members[0];
        let origin = first.envelope.origin.clone();
        let page = first.envelope.job.page_id.clone();
        let copy = Republish {
            exchange: first.copy.exchange.clone(),
            routing_key: first.copy.routing_key.clone(),
            properties: bundle_properties(first, members.len()),
        };
        let body = bundle::encode(
            members
                .iter()
                .map(|m| (&m.copy.properties, m.envelope.delivery.data.as_slice())),
        );
        match outcome::publish(&copy, &body, &origin).await {
            Ok(()) => {
                // Counted once per reason rather than per job: a bundle is one Page's.
                let mut parked = [0u64; ParkReason::LABELS.len()];
                for m in &members {
                    let e = &m.envelope;
                    if !e.origin.acks.ack(e.delivery.delivery_tag) {
                        settle_failed(&outcome::SettleError::ChannelGone, m.settled);
                    } else if let Settled::Parked(reason) = m.settled {
                        let at = ParkReason::LABELS
                            .iter()
                            .position(|l| *l == reason.as_str());
                        parked[at.unwrap_or(0)] += 1;
                    }
                }
                self.record_parked(&page, &parked);
            }
            Err(source) => {
                let error = outcome::SettleError::Publish {
                    exchange: copy.exchange,
                    source,
                };
                for m in &members {
                    m.envelope
                        .origin
                        .acks
                        .requeue(m.envelope.delivery.delivery_tag);
                    settle_failed(&error, m.settled);
                }
            }
        }
    }

    /// Records `parked[i]` jobs of `page` parked for reason `ParkReason::LABELS[i]`; the same
    /// metrics as [`Shared::record`] gives each job.
    fn record_parked(&self, page: &str, parked: &[u64]) {
        let label = match self.registry.get(page) {
            Some(page) => self.labels.label(&page.id),
            None => Arc::from(telemetry::OTHER_PAGES),
        };
        let total: u64 = parked.iter().sum();
        if total == 0 {
            return;
        }
        let outcome = Settled::Parked(ParkReason::Budget).label();
        metrics::counter!(telemetry::OPERATIONS, "outcome" => outcome, "page" => label)
            .increment(total);
        for (reason, n) in ParkReason::LABELS.iter().zip(parked) {
            if *n > 0 {
                metrics::counter!(telemetry::PARKED, "reason" => *reason).increment(*n);
            }
        }
    }
}

/// The bundle's own properties: what the tier's binding and the return to the Page's shard need
/// (the tier header, the routing key it is published with), its count, and persistence.
fn bundle_properties(first: &Planned, jobs: usize) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(tier) = headers::get_string(first.copy.properties.headers().as_ref(), TIER_HEADER) {
        headers::set_str(&mut table, TIER_HEADER, &tier);
    }
    headers::set_str(&mut table, headers::PAGE_ID, &first.envelope.job.page_id);
    bundle::properties(table, jobs)
}

/// Parks `jobs` in the background.
pub fn spawn(shared: &Arc<Shared>, jobs: Vec<ParkJob>) {
    if jobs.is_empty() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move { shared.park(jobs).await });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_of_one_key_share_a_message_up_to_the_limit() {
        let items = [
            ("a", 10),
            ("b", 10),
            ("a", 10),
            ("a", 10),
            ("b", 10),
            ("a", 10),
        ];
        assert_eq!(
            groups(items, 3),
            vec![vec![0, 2, 3], vec![1, 4], vec![5]],
            "a's fourth job starts a new message"
        );
        assert_eq!(
            groups(items, 1),
            (0..6).map(|i| vec![i]).collect::<Vec<_>>()
        );
        assert_eq!(groups(items, 0), groups(items, 1), "0 means 1");
        assert!(groups(Vec::<(u8, usize)>::new(), 10).is_empty());
    }

    #[test]
    fn a_message_stays_under_the_byte_limit() {
        let half = MAX_BUNDLE_BYTES / 2;
        let items = [
            (1, half),
            (1, half),
            (1, 1),
            (1, MAX_BUNDLE_BYTES * 2),
            (1, 1),
        ];
        assert_eq!(
            groups(items, 100),
            vec![vec![0, 1], vec![2], vec![3], vec![4]]
        );
    }

    #[test]
    fn a_key_is_its_session_routing_key_and_tier() {
        let key = |generation, routing_key: &str, tier: &str| GroupKey {
            generation,
            routing_key: routing_key.into(),
            tier: tier.into(),
        };
        let items = [
            (key(1, "p", "1m"), 1),
            (key(2, "p", "1m"), 1),
            (key(1, "q", "1m"), 1),
            (key(1, "p", "5m"), 1),
            (key(1, "p", "1m"), 1),
        ];
        assert_eq!(
            groups(items, 10),
            vec![vec![0, 4], vec![1], vec![2], vec![3]]
        );
    }
}
