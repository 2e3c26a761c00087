//! The delivery pipeline: consume → lane → limit → batch → send → settle.
//!
//! Its stages are submodules named for what they do. This module wires them together.

pub mod batcher;
pub mod dedup;
pub mod limiter;
pub mod outcome;
