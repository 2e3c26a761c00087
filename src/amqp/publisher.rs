//! The confirmed publisher: the only way pagerelay puts a message on the broker.
//!
//! A publish succeeds only when the broker confirmed it *and* routed it: RabbitMQ acks an
//! unroutable mandatory publish too, returning the message alongside the ack, so both are
//! checked. Callers ack the original delivery only after `publish` returns `Ok`; that ordering
//! is the whole of pagerelay's no-loss guarantee.

use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection};

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
        let exchange =
            ShortString::try_new(exchange).map_err(|_| PublishError::Name(exchange.to_string()))?;
        let routing_key = ShortString::try_new(routing_key)
            .map_err(|_| PublishError::Name(routing_key.to_string()))?;
        let publish = async {
            let confirm = self
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
                .await?;
            confirm.await
        };
        let confirmation = tokio::time::timeout(self.timeout, publish)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))??;
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

    /// True while the channel can publish.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }
}
