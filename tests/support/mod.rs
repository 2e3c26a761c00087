//! Fixtures shared by the integration tests: the local broker and a unique topology prefix per
//! test (so tests run in parallel against one RabbitMQ without seeing each other's queues), the
//! Graph simulator over real HTTP, the `pagerelay` binary as a child process (the daemon, and the
//! command-line tools), job and dead-letter builders, and the fault suite's accounting of where
//! every job went.
//!
//! Each test binary compiles this module separately and uses a different part of it.
#![allow(dead_code)]

pub mod accounting;
pub mod broker;
pub mod cli;
pub mod daemon;
pub mod jobs;
pub mod scrape;
pub mod sim;

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wall-clock time in Unix milliseconds, the clock of the simulator's delivery record.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
