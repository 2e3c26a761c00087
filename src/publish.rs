//! `pagerelay publish`: publishes JSON-lines jobs to the jobs exchange, confirmed, with the Page
//! id as routing key — the tool the demo, the tests and scripts use to feed pagerelay.
//!
//! Lines are published as they are, valid or not: checking jobs is pagerelay's job (and
//! `pagerelay validate`'s), and a publisher of bad jobs should see them dead-lettered with a
//! reason. A line with no readable `page_id` is routed with the key `unrouted`.
//!
//! Confirms are awaited in a window, so a large file publishes at the broker's pace rather than
//! one round trip per job; the command fails if any publish is not confirmed.

use std::io::BufRead;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::types::{FieldTable, ShortString};

use crate::amqp::headers;
use crate::amqp::{PublishError, Publisher, Topology};

/// Publishes in flight at once.
const WINDOW: usize = 2_000;

/// What a publish run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishSummary {
    pub published: u64,
    pub skipped_blank: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishRunError {
    #[error("cannot read line {line}: {source}")]
    Read {
        line: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line} was not published: {source}")]
    Publish {
        line: u64,
        #[source]
        source: PublishError,
    },
}

/// The routing key and message id of one line: its `page_id` and `job_id`, when it is a JSON
/// object that has them.
pub fn routing_of(line: &str) -> (String, Option<String>) {
    let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    let text = |key: &str| match value.get(key)? {
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= 255 => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    (
        text("page_id").unwrap_or_else(|| "unrouted".to_string()),
        text("job_id"),
    )
}

/// Publishes every non-blank line of `input` to `topology`'s jobs exchange.
pub async fn publish_lines(
    input: impl BufRead,
    publisher: &Publisher,
    topology: &Topology,
) -> Result<PublishSummary, PublishRunError> {
    let exchange = topology.jobs_exchange();
    let mut summary = PublishSummary::default();
    let mut pending = FuturesUnordered::new();
    for (index, line) in input.lines().enumerate() {
        let number = index as u64 + 1;
        let line = line.map_err(|source| PublishRunError::Read {
            line: number,
            source,
        })?;
        if line.trim().is_empty() {
            summary.skipped_blank += 1;
            continue;
        }
        let (routing_key, job_id) = routing_of(&line);
        let mut table = FieldTable::default();
        headers::set_int(
            &mut table,
            headers::PUBLISHED_AT_MS,
            Utc::now().timestamp_millis(),
        );
        let mut properties = lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(Utc::now().timestamp().max(0) as u64)
            .with_headers(table);
        if let Some(id) = job_id.and_then(|j| ShortString::try_new(j).ok()) {
            properties = properties.with_message_id(id);
        }
        let exchange = exchange.as_str();
        pending.push(async move {
            let result = publisher
                .publish(exchange, &routing_key, line.as_bytes(), properties)
                .await;
            (number, result)
        });
        if pending.len() >= WINDOW {
            settle_one(&mut pending, &mut summary).await?;
        }
    }
    while !pending.is_empty() {
        settle_one(&mut pending, &mut summary).await?;
    }
    Ok(summary)
}

async fn settle_one<F>(
    pending: &mut FuturesUnordered<F>,
    summary: &mut PublishSummary,
) -> Result<(), PublishRunError>
where
    F: std::future::Future<Output = (u64, Result<(), PublishError>)>,
{
    if let Some((line, result)) = pending.next().await {
        result.map_err(|source| PublishRunError::Publish { line, source })?;
        summary.published += 1;
    }
    Ok(())
}

/// How long `publish` waits for the broker before giving up on a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_routed_by_page_id() {
        assert_eq!(
            routing_of(r#"{"page_id":"1001","job_id":"j-1","recipient":{"id":"1"}}"#),
            ("1001".to_string(), Some("j-1".to_string()))
        );
        assert_eq!(
            routing_of(r#"{"page_id":1001}"#),
            ("1001".to_string(), None)
        );
        assert_eq!(routing_of("not json"), ("unrouted".to_string(), None));
        assert_eq!(
            routing_of(r#"{"page_id":""}"#),
            ("unrouted".to_string(), None)
        );
        assert_eq!(routing_of(r#"[1,2]"#), ("unrouted".to_string(), None));
    }
}
