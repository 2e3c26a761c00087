//! pagerelay delivers Messenger send jobs from RabbitMQ through rate-limited Graph API batches.
//!
//! # Layout
//!
//! The modules follow the data flow (see `DESIGN.md` in the repository's shared notes):
//!
//! - [`config`]: settings, layered from defaults, a TOML file and the environment, validated once.
//! - [`graph`]: the Graph API batch protocol: request encoding, reply decoding, error
//!   classification.
//! - [`telemetry`]: logging set-up.

pub mod config;
pub mod graph;
pub mod telemetry;
