//! pagerelay delivers Messenger send jobs from RabbitMQ through rate-limited Graph API batches.
//!
//! # Layout
//!
//! The modules follow the data flow (see `DESIGN.md` in the repository's shared notes):
//!
//! - [`config`]: settings, layered from defaults, a TOML file and the environment, validated once.
//! - [`job`]: the job contract: decoding and validating one delivery into a [`job::Job`], and
//!   `pagerelay validate`'s offline checking of JSON Lines.
//! - [`telemetry`]: logging set-up.
//! - [`sim`]: `graph-sim`, a stand-in for the Graph API batch and Send API endpoints, used by tests,
//!   benchmarks and the demo; independent of the other modules by design.

pub mod config;
pub mod job;
pub mod sim;
pub mod telemetry;
pub mod amqp;
pub mod pipeline;
