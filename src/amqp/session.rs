//! One AMQP connection and what lives on it: the declared topology, the confirmed publisher and
//! the consumers of the jobs queues.
//!
//! A session is never repaired. When its connection or a channel dies, the supervisor drops it
//! and opens a new one with a higher generation number; deliveries of the old generation are
//! forgotten (their delivery tags mean nothing on a new channel, and the broker redelivers them).
//! It does not own the retry loop (see `pipeline::supervisor`).

use std::time::Duration;

use futures_util::stream::SelectAll;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use secrecy::ExposeSecret;

use super::{Publisher, Topology, TopologyError};
use crate::config::{AmqpSettings, redact_url};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("connecting to {url} timed out after {timeout:?}")]
    ConnectTimeout { url: String, timeout: Duration },
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("cannot open a channel: {0}")]
    Channel(#[source] lapin::Error),
    #[error("cannot consume {queue}: {source}")]
    Consume {
        queue: String,
        #[source]
        source: lapin::Error,
    },
}

/// A live connection with its publisher and (once [`Session::consume`] ran) its consumers.
pub struct Session {
    pub generation: u64,
    pub connection: Connection,
    pub publisher: Publisher,
}

/// The merged delivery stream of every jobs queue of a session.
pub type Deliveries = SelectAll<Consumer>;

/// Connects to the broker and nothing else: no declarations, no channels. `name` is shown in the
/// management UI's connection list.
///
/// Tools that only read or move messages (`pagerelay dlq`, `pagerelay replay`) use this instead of
/// [`Session::open`], so that a wrong prefix is reported as a missing queue instead of silently
/// declaring a second, empty topology.
pub async fn connect(settings: &AmqpSettings, name: &str) -> Result<Connection, SessionError> {
    let url = redact_url(settings.url.expose_secret());
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from(name.to_string()));
    // Connect has no timeout of its own; a black-holed broker address would hang forever.
    let timeout = settings.publish_timeout.max(Duration::from_secs(5));
    tokio::time::timeout(
        timeout,
        Connection::connect(settings.url.expose_secret(), properties),
    )
    .await
    .map_err(|_| SessionError::ConnectTimeout {
        url: url.clone(),
        timeout,
    })?
    .map_err(|source| SessionError::Connect { url, source })
}

impl Session {
    /// Connects, declares the topology and opens the publisher.
    pub async fn open(
        settings: &AmqpSettings,
        topology: &Topology,
        generation: u64,
        name: &str,
    ) -> Result<Session, SessionError> {
        let connection = connect(settings, &format!("{name} (generation {generation})")).await?;
        topology.declare(&connection).await?;
        let publisher = Publisher::open(&connection, settings.publish_timeout)
            .await
            .map_err(SessionError::Channel)?;
        Ok(Session {
            generation,
            connection,
            publisher,
        })
    }

    /// Starts one consumer per jobs queue on a fresh channel, each with `prefetch` unacked
    /// deliveries at most, and merges them.
    pub async fn consume(
        &self,
        topology: &Topology,
        prefetch: u16,
        consumer_tag: &str,
    ) -> Result<(Channel, Deliveries), SessionError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(SessionError::Channel)?;
        // Per consumer (global = false), set before consuming so the broker never pushes more.
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(SessionError::Channel)?;
        let mut merged = SelectAll::new();
        for (i, queue) in topology.job_queues().into_iter().enumerate() {
            let tag = ShortString::try_new(format!("{consumer_tag}-{i}"))
                .unwrap_or_else(|_| ShortString::from(format!("pagerelay-{i}")));
            let consumer = channel
                .basic_consume(
                    ShortString::from(queue.as_str()),
                    tag,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|source| SessionError::Consume { queue, source })?;
            merged.push(consumer);
        }
        Ok((channel, merged))
    }

    /// True while the connection is up.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Closes the connection politely; errors are irrelevant at that point.
    pub async fn close(&self) {
        let _ = self
            .connection
            .close(200, "pagerelay shutting down".into())
            .await;
    }
}
