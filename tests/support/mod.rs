//! Fixtures shared by the integration tests: the local broker and a unique topology prefix per
//! test, so that tests run in parallel against one RabbitMQ without seeing each other's queues.
//!
//! Each test binary compiles this module separately and uses a different part of it.
#![allow(dead_code)]

pub mod broker;
