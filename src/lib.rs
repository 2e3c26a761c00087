//! pagerelay delivers Messenger send jobs from RabbitMQ through rate-limited Graph API batches.
//!
//! # Layout
//!
//! The modules follow the data flow (see `DESIGN.md` in the repository's shared notes):
//!
//! - [`config`]: settings, layered from defaults, a TOML file and the environment, validated once.
//! - [`job`]: the job contract: decoding and validating one delivery into a [`job::Job`], and
//!   `pagerelay validate`'s offline checking of JSON Lines.
//! - [`amqp`]: the broker: topology, headers, the confirmed publisher, connection sessions.
//! - [`pipeline`]: `pagerelay run`: per-Page lanes, limiters, batching, sending and settling.
//! - [`graph`]: the Graph API batch protocol: request encoding, reply decoding, error
//!   classification, and the HTTP client.
//! - [`admin`]: the admin HTTP listener: metrics, health, readiness, Pages.
//! - [`dlq`]: `pagerelay dlq stats`, `dlq peek` and `replay`: inspecting the dead-letter queue
//!   and moving its letters back.
//! - [`publish`]: `pagerelay publish`, feeding JSON-lines jobs to the broker.
//! - [`telemetry`]: logs, metric names and the per-Page label guard.
//! - [`sim`]: `graph-sim`, a stand-in for the Graph API batch and Send API endpoints, used by tests,
//!   benchmarks and the demo; independent of the other modules by design.

pub mod admin;
pub mod amqp;
pub mod config;
pub mod dlq;
pub mod graph;
pub mod job;
pub mod pipeline;
pub mod publish;
pub mod sim;
pub mod telemetry;
