//! The confirmed publisher: the only way pagerelay puts a message on the broker.
//!
//! A publish succeeds only when the broker confirmed it *and* routed it: RabbitMQ acks an
//! unroutable mandatory publish too, returning the message alongside the ack, so both are
//! checked. Callers ack the original delivery only after `publish` (or, for a publish sent with
//! [`Publisher::send`], [`PendingConfirm::confirmed`]) returns `Ok`; that ordering is the whole of
//! pagerelay's no-loss guarantee.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
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

/// `props` without an expiration. A copy pagerelay republishes (a dead letter, a replayed job)
/// must not inherit a publisher's per-message TTL: it would make the copy vanish from a queue
/// that has no dead-letter target, or dead-letter it behind pagerelay's back.
pub fn without_expiration(props: BasicProperties) -> BasicProperties {
    if props.expiration().is_none() {
        return props;
    }
    // BasicProperties has setters but no unsetters: rebuild without the expiration.
    let mut fresh = BasicProperties::default();
    if let Some(v) = props.content_type() {
        fresh = fresh.with_content_type(v.clone());
    }
    if let Some(v) = props.content_encoding() {
        fresh = fresh.with_content_encoding(v.clone());
    }
    if let Some(v) = props.headers() {
        fresh = fresh.with_headers(v.clone());
    }
    if let Some(v) = props.delivery_mode() {
        fresh = fresh.with_delivery_mode(*v);
    }
    if let Some(v) = props.priority() {
        fresh = fresh.with_priority(*v);
    }
    if let Some(v) = props.correlation_id() {
        fresh = fresh.with_correlation_id(v.clone());
    }
    if let Some(v) = props.reply_to() {
        fresh = fresh.with_reply_to(v.clone());
    }
    if let Some(v) = props.message_id() {
        fresh = fresh.with_message_id(v.clone());
    }
    if let Some(v) = props.timestamp() {
        fresh = fresh.with_timestamp(*v);
    }
    if let Some(v) = props.kind() {
        fresh = fresh.with_type(v.clone());
    }
    if let Some(v) = props.user_id() {
        fresh = fresh.with_user_id(v.clone());
    }
    if let Some(v) = props.app_id() {
        fresh = fresh.with_app_id(v.clone());
    }
    if let Some(v) = props.cluster_id() {
        fresh = fresh.with_cluster_id(v.clone());
    }
    fresh
}
