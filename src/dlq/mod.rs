//! Dead-letter operations: `pagerelay dlq stats`, `pagerelay dlq peek` and `pagerelay replay`.
//!
//! Everything here works on `<prefix>.dead` through full *scans* ([`scan`]): consume the whole
//! queue with manual acks, never ack what stays, and close the channels so the broker requeues
//! it. Stats and peek ack nothing; a replay acks exactly the letters it
//! republished, each after the broker confirmed the republish. So no operation here can lose a
//! message, and none leaves one unacked once its connection is gone.
//!
//! - [`letter`]: reading one dead letter — pagerelay's headers, or the broker's `x-death` for a
//!   message the broker dead-lettered itself (`broker:delivery_limit`).
//! - [`filter`]: selecting letters by Page, reason, error code, age and job id.
//! - [`stats`] and [`peek`]: read-only reports.
//! - [`guard`]: the replay guardrails (invalid and ambiguous letters, paused or unknown Pages).
//! - [`replay`]: moving letters back to the jobs exchange.
//!
//! [`DeadLetters`] is the entry point: a connection and a topology, with `stats`, `peek` and
//! `replay` as methods. It does not connect (see `amqp::session::connect`), print, or handle
//! signals: the command line in `main.rs` does that.

pub mod filter;
pub mod guard;
pub mod letter;
pub mod peek;
pub mod replay;
pub mod scan;
pub mod stats;

pub use filter::{CodeFilter, Filter, FilterError, ReasonName};
pub use guard::{Guardrail, Overrides, PageCheck};
pub use letter::{Letter, Reason};
pub use peek::PeekSummary;
pub use replay::{Action, ReplayOptions, ReplaySummary};
pub use stats::Stats;

use lapin::Connection;

use crate::amqp::Topology;

/// The dead-letter queue of one deployment, as the operator tools see it.
pub struct DeadLetters<'a> {
    connection: &'a Connection,
    topology: &'a Topology,
    chunk: u16,
}

impl<'a> DeadLetters<'a> {
    pub fn new(connection: &'a Connection, topology: &'a Topology) -> Self {
        DeadLetters {
            connection,
            topology,
            chunk: scan::CHUNK,
        }
    }

    /// How many messages a scan holds before it hands them back and reads on (default
    /// [`scan::CHUNK`]); small values exercise the rounds in tests.
    pub fn with_chunk(mut self, chunk: u16) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    async fn scan(&self) -> Result<scan::Scan<'a>, DlqError> {
        scan::Scan::open(self.connection, &self.topology.dead_queue(), self.chunk).await
    }
}

/// Why a dead-letter operation could not run (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Connect(#[from] crate::amqp::SessionError),
    #[error("cannot open a channel: {0}")]
    Channel(#[source] lapin::Error),
    #[error(
        "the queue {queue:?} does not exist or cannot be read (is amqp.prefix right?): {source}"
    )]
    NoQueue {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error(
        "the exchange {exchange:?} does not exist (is amqp.prefix right? `pagerelay topology \
         declare` creates it): {source}"
    )]
    NoExchange {
        exchange: String,
        #[source]
        source: lapin::Error,
    },
    #[error(
        "cannot read {queue}: {source}; another `pagerelay dlq` or `pagerelay replay` may be \
         reading it (each needs the queue to itself)"
    )]
    Consume {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error(
        "{queue} has {consumers} other consumer(s): another `pagerelay dlq` or `pagerelay replay` \
         is probably reading it; try again when it is done"
    )]
    Busy { queue: String, consumers: u32 },
    #[error("lost the broker connection: {0}")]
    Lost(#[source] lapin::Error),
    #[error("the broker stopped the scan of {0} (was the queue deleted?)")]
    Cancelled(String),
    #[error("cannot open a confirmed publisher: {0}")]
    Publisher(#[source] lapin::Error),
    #[error(
        "a replay needs a filter (--page, --reason, --code, --older-than, --newer-than, \
         --job-id), or --all to replay every dead letter"
    )]
    NoFilter,
    #[error("--all replays every dead letter; it cannot be combined with filters")]
    AllWithFilter,
    #[error("--rate must be a positive number of messages per second, got {0}")]
    Rate(f64),
    #[error(
        "cannot reach the daemon's admin endpoint at {url} ({error}), so the replay cannot check \
         whether the Pages are paused; pass --admin URL to ask the right daemon, or --force to \
         replay without the check (--dry-run shows what would move)"
    )]
    AdminUnreachable { url: String, error: String },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}
