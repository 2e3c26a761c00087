//! The confirmed publisher: the only way pagerelay puts a message on the broker.
//!
//! A publish succeeds only when the broker confirmed it *and* routed it: RabbitMQ acks an
//! unroutable mandatory publish too, returning the message alongside the ack, so both are
//! checked. Callers ack the original delivery only after `publish` (or, for a publish sent with
//! [`Publisher::send`], [`PendingConfirm::confirmed`]) returns `Ok`; that ordering is the whole of
//! pagerelay's no-loss guarantee.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};

/// Publishes with confirms on a channel of its own.
#[derive(Debug, Clone)]
pub struct Publisher {
    channel: Channel,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused the publish (nack)")]
    Nacked,
    #[error("the publish was not routed to any queue ({code} {text}); is the topology declared?")]
    Unroutable { code: u16, text: String },
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
    #[error("name too long for AMQP: {0}")]
    Name(String),
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub async fn open(connection: &Connection, timeout: Duration) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel, timeout })
    }

    /// Publishes `body` and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let publish = async {
            let confirm = self
                .send_frame(exchange, routing_key, body, properties)
                .await?;
            Ok::<_, PublishError>(confirm.await?)
        };
        let confirmation = tokio::time::timeout(self.timeout, publish)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))??;
        check(confirmation)
    }

    /// Sends `body` and returns without waiting for the confirm, so that a caller can keep many
    /// publishes in flight while sending them in order (frames on one channel reach the broker in
    /// the order they were sent). The publish counts only once [`PendingConfirm::confirmed`]
    /// returns `Ok`.
    pub async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PendingConfirm, PublishError> {
        let confirm = tokio::time::timeout(
            self.timeout,
            self.send_frame(exchange, routing_key, body, properties),
        )
        .await
        .map_err(|_| PublishError::Timeout(self.timeout))??;
        Ok(PendingConfirm {
            confirm,
            timeout: self.timeout,
        })
    }

    async fn send_frame(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm, PublishError> {
        let exchange =
            ShortString::try_new(exchange).map_err(|_| PublishError::Name(exchange.to_string()))?;
        let routing_key = ShortString::try_new(routing_key)
            .map_err(|_| PublishError::Name(routing_key.to_string()))?;
        Ok(self
            .channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await?)
    }

    /// True while the channel can publish.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }
}

/// A publish that was sent and awaits its confirm; see [`Publisher::send`].
#[must_use = "a publish is not confirmed until `confirmed` returns Ok"]
pub struct PendingConfirm {
    confirm: PublisherConfirm,
    timeout: Duration,
}

impl PendingConfirm {
    /// Waits for the broker's confirm: `Ok` only when it was acked and routed.
    pub async fn confirmed(self) -> Result<(), PublishError> {
        let confirmation = tokio::time::timeout(self.timeout, self.confirm)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))??;
        check(confirmation)
    }
}

fn check(confirmation: Confirmation) -> Result<(), PublishError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable {
            code: returned.reply_code,
            text: returned.reply_text.to_string(),
        }),
        // Confirm mode is on, so the broker always answers; treat anything else as refused.
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked),
    }
}

/// The properties of a copy pagerelay republishes (a retry, a park, a dead letter, a replayed
/// job): the original's, with `headers` for its headers, persistent, with `expiration` for its
/// expiration, and with `job_id` as its `message_id` when it has none, so that a generated id
/// survives the round trip.
///
/// The copy never inherits the publisher's own per-message TTL: it would make the copy vanish
/// from a queue that has no dead-letter target, or dead-letter it behind pagerelay's back.
/// BasicProperties has setters but no unsetters, so the copy is built field by field, which also
/// spares a clone of the header table being replaced (a parked job's copy used to clone it twice).
pub fn copy_properties(
    original: &BasicProperties,
    headers: FieldTable,
    expiration: Option<ShortString>,
    job_id: Option<&str>,
) -> BasicProperties {
    let mut fresh = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(v) = expiration {
        fresh = fresh.with_expiration(v);
    }
    if let Some(v) = original.content_type() {
        fresh = fresh.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        fresh = fresh.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        fresh = fresh.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        fresh = fresh.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        fresh = fresh.with_reply_to(v.clone());
    }
    let message_id = original
        .message_id()
        .clone()
        .or_else(|| job_id.and_then(|id| ShortString::try_new(id).ok()));
    if let Some(v) = message_id {
        fresh = fresh.with_message_id(v);
    }
    if let Some(v) = original.timestamp() {
        fresh = fresh.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        fresh = fresh.with_type(v.clone());
    }
    if let Some(v) = original.user_id() {
        fresh = fresh.with_user_id(v.clone());
    }
    if let Some(v) = original.app_id() {
        fresh = fresh.with_app_id(v.clone());
    }
    if let Some(v) = original.cluster_id() {
        fresh = fresh.with_cluster_id(v.clone());
    }
    fresh
}

#[cfg(test)]
mod tests {
    use lapin::types::AMQPValue;

    use super::*;

    fn original() -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert("x-old".into(), AMQPValue::LongString("old".into()));
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_headers(headers)
            .with_delivery_mode(1)
            .with_priority(3)
            .with_correlation_id("corr".into())
            .with_reply_to("replies".into())
            .with_expiration("60000".into())
            .with_timestamp(1_795_000_000)
            .with_type("send".into())
            .with_user_id("guest".into())
            .with_app_id("publisher".into())
            .with_cluster_id("c1".into())
    }

    #[test]
    fn a_copy_keeps_every_property_but_the_headers_and_the_expiration() {
        let mut headers = FieldTable::default();
        headers.insert("x-new".into(), AMQPValue::LongString("new".into()));
        let copy = copy_properties(&original(), headers.clone(), None, Some("job-1"));

        assert_eq!(copy.headers(), &Some(headers));
        assert_eq!(
            copy.expiration(),
            &None,
            "the publisher's TTL is not inherited"
        );
        assert_eq!(copy.delivery_mode(), &Some(2), "persistent");
        assert_eq!(
            copy.message_id().as_ref().map(ShortString::as_str),
            Some("job-1"),
            "the job id, since the original had no message_id"
        );
        // Everything else as the publisher set it.
        let text = |v: &Option<ShortString>| v.as_ref().map(|v| v.as_str().to_owned());
        assert_eq!(
            text(copy.content_type()).as_deref(),
            Some("application/json")
        );
        assert_eq!(text(copy.content_encoding()).as_deref(), Some("identity"));
        assert_eq!(text(copy.correlation_id()).as_deref(), Some("corr"));
        assert_eq!(text(copy.reply_to()).as_deref(), Some("replies"));
        assert_eq!(text(copy.user_id()).as_deref(), Some("guest"));
        assert_eq!(copy.priority(), &Some(3));
        assert_eq!(
            copy.app_id().as_ref().map(ShortString::as_str),
            Some("publisher")
        );
        assert_eq!(copy.timestamp(), &Some(1_795_000_000));
        assert_eq!(
            copy.cluster_id().as_ref().map(ShortString::as_str),
            Some("c1")
        );
        assert_eq!(copy.kind().as_ref().map(ShortString::as_str), Some("send"));

        let timed = copy_properties(
            &original().with_message_id("own".into()),
            FieldTable::default(),
            Some("1500".into()),
            Some("job-1"),
        );
        assert_eq!(
            timed.expiration().as_ref().map(ShortString::as_str),
            Some("1500")
        );
        assert_eq!(
            timed.message_id().as_ref().map(ShortString::as_str),
            Some("own"),
            "the publisher's own message_id stays"
        );
    }
}
