//! `pagerelay dlq peek`: the first N dead letters that match a filter, in queue order, each as
//! one JSON object — read by a full scan that leaves every message in place.
//!
//! The scan reads past the N it shows: on RabbitMQ 3.10 a scan that stopped early would hand
//! its part of the queue back to the *end* and rotate the queue (see `scan`).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::filter::Filter;
use super::letter::Letter;
use super::{DeadLetters, DlqError};

/// What a peek saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PeekSummary {
    /// Ready messages when the scan started.
    pub depth: u32,
    pub scanned: u64,
    /// Letters that matched the filter (shown or not).
    pub matched: u64,
    pub shown: u64,
}

impl DeadLetters<'_> {
    /// Calls `show` for the first `count` letters of the dead-letter queue that match `filter`
    /// (ages measured at `now`); every message stays where it was.
    pub async fn peek(
        &self,
        filter: &Filter,
        count: usize,
        now: DateTime<Utc>,
        mut show: impl FnMut(&Letter) -> std::io::Result<()>,
    ) -> Result<PeekSummary, DlqError> {
        let mut scan = self.scan().await?;
        let mut summary = PeekSummary {
            depth: scan.depth(),
            ..PeekSummary::default()
        };
        let result = async {
            while let Some(scanned) = scan.next().await? {
                summary.scanned += 1;
                let letter = Letter::from_delivery(&scanned.delivery);
                if filter.matches(&letter, now) {
                    summary.matched += 1;
                    if summary.shown < count as u64 {
                        show(&letter)?;
                        summary.shown += 1;
                    }
                }
            }
            Ok::<_, DlqError>(())
        }
        .await;
        scan.close().await;
        result.map(|()| summary)
    }
}
