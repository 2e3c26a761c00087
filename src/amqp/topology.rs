//! The broker topology, derived from one prefix: names, arguments and idempotent declaration.
//!
//! ```text
//! <prefix>.jobs  exchange   shards = 1: topic, bound with '#' to queue <prefix>.jobs
//!                           shards = N: x-consistent-hash over queues <prefix>.jobs.0 .. N-1
//! <prefix>.delay exchange   headers; pagerelay-delay-tier = <label> routes to <prefix>.delay.<label>,
//!                           a queue with x-message-ttl whose dead-letter exchange is <prefix>.jobs
//!                           (the routing key, the Page id, is kept, so a job returns to its shard)
//! <prefix>.dead  exchange   fanout to queue <prefix>.dead, and the broker-level dead-letter target
//!                           of the jobs queues
//! ```
//!
//! Every queue is a quorum queue with at-least-once dead-lettering, so a message the broker moves
//! (an expired delay, a delivery over the limit) is never dropped on the way. Jobs queues use
//! single-active-consumer even with one shard: replicas beyond the shard count are hot standbys,
//! and a Page's limits hold globally without a shared store.
//!
//! It does not publish or consume; see [`super::publisher`] and [`super::session`].

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::AmqpSettings;

/// The header that routes a message on the delay exchange to its tier queue.
///
/// Deliberately not an `x-` name: RabbitMQ's headers exchange ignores arguments that start with
/// `x-` when matching, so such a binding would match every message and copy it to every tier.
pub const TIER_HEADER: &str = "pagerelay-delay-tier";

/// The names and arguments of one deployment's topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    shards: u16,
    tiers: Vec<Duration>,
    delivery_limit: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "cannot declare {what} {name:?}: {source}; if it exists with other arguments, \
         see the README's section on changing the topology"
    )]
    Declare {
        what: &'static str,
        name: String,
        #[source]
        source: lapin::Error,
    },
    #[error("cannot open a channel to declare the topology: {0}")]
    Channel(#[source] lapin::Error),
    #[error(
        "the consistent-hash exchange is not available (shards = {shards}); enable the \
         rabbitmq_consistent_hash_exchange plugin: {source}"
    )]
    ConsistentHashMissing {
        shards: u16,
        #[source]
        source: lapin::Error,
    },
}

impl Topology {
    pub fn new(settings: &AmqpSettings, tiers: &[Duration]) -> Self {
        Topology {
            prefix: settings.prefix.clone(),
            shards: settings.shards,
            tiers: tiers.to_vec(),
            delivery_limit: settings.delivery_limit,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// Where publishers send jobs, routing key = Page id.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// The queues pagerelay consumes: one, or one per shard.
    pub fn job_queues(&self) -> Vec<String> {
        if self.shards == 1 {
            vec![format!("{}.jobs", self.prefix)]
        } else {
            (0..self.shards)
                .map(|i| format!("{}.jobs.{i}", self.prefix))
                .collect()
        }
    }

    pub fn delay_exchange(&self) -> String {
        format!("{}.delay", self.prefix)
    }

    /// The delay tiers, shortest first.
    pub fn tiers(&self) -> &[Duration] {
        &self.tiers
    }

    /// The queue of a delay tier: `<prefix>.delay.<label>`.
    pub fn tier_queue(&self, tier: Duration) -> String {
        format!("{}.delay.{}", self.prefix, tier_label(tier))
    }

    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Every queue name of the topology (jobs, tiers, dead letters).
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = self.job_queues();
        queues.extend(self.tiers.iter().map(|t| self.tier_queue(*t)));
        queues.push(self.dead_queue());
        queues
    }

    /// Declares the whole topology. Idempotent: declaring what exists with the same arguments is
    /// a no-op on the broker.
    ///
    /// Declares on a channel of its own, because a declaration that conflicts with an existing
    /// queue closes the channel it was made on.
    pub async fn declare(&self, connection: &lapin::Connection) -> Result<(), TopologyError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(TopologyError::Channel)?;
        let result = self.declare_on(&channel).await;
        if channel.status().connected() {
            let _ = channel.close(200, "topology declared".into()).await;
        }
        result
    }

    async fn declare_on(&self, ch: &Channel) -> Result<(), TopologyError> {
        // Dead letters first: the jobs queues name this exchange as their dead-letter target.
        exchange(ch, &self.dead_exchange(), ExchangeKind::Fanout).await?;
        queue(ch, &self.dead_queue(), quorum_args()).await?;
        bind(
            ch,
            &self.dead_queue(),
            &self.dead_exchange(),
            "",
            FieldTable::default(),
        )
        .await?;

        let jobs_kind = if self.shards == 1 {
            ExchangeKind::Topic
        } else {
            ExchangeKind::Custom("x-consistent-hash".to_string())
        };
        exchange(ch, &self.jobs_exchange(), jobs_kind)
            .await
            .map_err(|e| match e {
                TopologyError::Declare { source, .. }
                    if self.shards > 1 && is_command_invalid(&source) =>
                {
                    TopologyError::ConsistentHashMissing {
                        shards: self.shards,
                        source,
                    }
                }
                other => other,
            })?;
        for name in self.job_queues() {
            queue(ch, &name, self.job_queue_args()).await?;
            // Topic: '#' matches every Page id. Consistent hash: the binding key is the weight.
            let key = if self.shards == 1 { "#" } else { "1" };
            bind(ch, &name, &self.jobs_exchange(), key, FieldTable::default()).await?;
        }

        exchange(ch, &self.delay_exchange(), ExchangeKind::Headers).await?;
        for tier in &self.tiers {
            let name = self.tier_queue(*tier);
            queue(ch, &name, self.tier_queue_args(*tier)).await?;
            let mut args = FieldTable::default();
            args.insert("x-match".into(), AMQPValue::LongString("all".into()));
            args.insert(
                TIER_HEADER.into(),
                AMQPValue::LongString(tier_label(*tier).into()),
            );
            bind(ch, &name, &self.delay_exchange(), "", args).await?;
        }
        Ok(())
    }

    fn job_queue_args(&self) -> FieldTable {
        let mut args = quorum_args();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_exchange().into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args
    }

    fn tier_queue_args(&self, tier: Duration) -> FieldTable {
        let mut args = quorum_args();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(tier.as_millis().min(i64::MAX as u128) as i64),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.jobs_exchange().into()),
        );
        args
    }
}

/// A tier's name: the largest whole unit of its TTL (`500ms`, `5s`, `2m`, `1h`). Queues are named
/// by their TTL, so changing the tier list only adds queues; it never redeclares one with other
/// arguments.
pub fn tier_label(tier: Duration) -> String {
    let ms = tier.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Quorum queue with at-least-once dead-lettering (which needs `reject-publish` overflow).
fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

fn is_command_invalid(e: &lapin::Error) -> bool {
    e.to_string().contains("COMMAND_INVALID") || e.to_string().contains("invalid exchange type")
}

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind) -> Result<(), TopologyError> {
    ch.exchange_declare(
        short(name),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|source| TopologyError::Declare {
        what: "exchange",
        name: name.to_string(),
        source,
    })
}

async fn queue(ch: &Channel, name: &str, args: FieldTable) -> Result<(), TopologyError> {
    ch.queue_declare(short(name), QueueDeclareOptions::durable(), args)
        .await
        .map(drop)
        .map_err(|source| TopologyError::Declare {
            what: "queue",
            name: name.to_string(),
            source,
        })
}

async fn bind(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
    args: FieldTable,
) -> Result<(), TopologyError> {
    ch.queue_bind(
        short(queue),
        short(exchange),
        short(key),
        QueueBindOptions::default(),
        args,
    )
    .await
    .map_err(|source| TopologyError::Declare {
        what: "binding of queue",
        name: queue.to_string(),
        source,
    })
}

/// Names here are built from a validated prefix (at most 200 bytes) plus a short suffix, so they
/// always fit a short string.
fn short(name: &str) -> ShortString {
    ShortString::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LoadOptions, Settings};

    fn topology(prefix: &str, shards: u16) -> Topology {
        let mut settings = Settings::load(&LoadOptions::default()).unwrap();
        settings.amqp.prefix = prefix.to_string();
        settings.amqp.shards = shards;
        Topology::new(&settings.amqp, &settings.retry.tiers)
    }

    #[test]
    fn names_derive_from_the_prefix() {
        let t = topology("relay", 1);
        assert_eq!(t.jobs_exchange(), "relay.jobs");
        assert_eq!(t.job_queues(), ["relay.jobs"]);
        assert_eq!(t.delay_exchange(), "relay.delay");
        assert_eq!(t.dead_exchange(), "relay.dead");
        assert_eq!(t.dead_queue(), "relay.dead");
        assert_eq!(
            t.all_queues(),
            [
                "relay.jobs",
                "relay.delay.1s",
                "relay.delay.5s",
                "relay.delay.30s",
                "relay.delay.2m",
                "relay.delay.10m",
                "relay.delay.1h",
                "relay.dead"
            ]
        );
        assert_eq!(
            topology("relay", 3).job_queues(),
            ["relay.jobs.0", "relay.jobs.1", "relay.jobs.2"]
        );
    }

    #[test]
    fn tier_labels_use_the_largest_whole_unit() {
        assert_eq!(tier_label(Duration::from_millis(250)), "250ms");
        assert_eq!(tier_label(Duration::from_millis(1500)), "1500ms");
        assert_eq!(tier_label(Duration::from_secs(45)), "45s");
        assert_eq!(tier_label(Duration::from_secs(120)), "2m");
        assert_eq!(tier_label(Duration::from_secs(90)), "90s");
        assert_eq!(tier_label(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn job_queues_dead_letter_into_the_dead_exchange() {
        let t = topology("relay", 2);
        let args = t.job_queue_args();
        let inner = args.inner();
        assert_eq!(
            inner.get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("relay.dead".into()))
        );
        assert_eq!(
            inner.get("x-single-active-consumer"),
            Some(&AMQPValue::Boolean(true))
        );
        assert_eq!(
            inner.get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(20))
        );
        let tier = t.tier_queue_args(Duration::from_secs(30));
        assert_eq!(
            tier.inner().get("x-message-ttl"),
            Some(&AMQPValue::LongLongInt(30_000))
        );
        assert_eq!(
            tier.inner().get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("relay.jobs".into()))
        );
    }
}
