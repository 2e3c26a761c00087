//! One dead letter as the operator tools see it: why it died, the last error, its Page and job,
//! and its replay history — read from the message's headers, its body and the broker's own
//! dead-lettering headers.
//!
//! Two writers put messages in `<prefix>.dead`:
//!
//! - pagerelay, which adds `x-pagerelay-reason` and the error context (see `amqp::headers`);
//! - the broker, when a jobs queue dead-letters a message itself (the delivery limit was
//!   exceeded, or a publisher's per-message TTL ran out). Such a message has no
//!   `x-pagerelay-reason`; its reason is the newest `x-death` entry's, shown as
//!   `broker:<reason>` (`broker:delivery_limit`).
//!
//! `x-pagerelay-reason` wins when both are present: pagerelay copies a job's headers onto its dead
//! letter, so a job that went through a delay tier carries the tier's `x-death` entries (reason
//! `expired`) that say nothing about why it died. For the same reason `x-first-death-reason` is
//! only a fallback: it records the *first* death ever, which for a parked job is a tier expiry.
//!
//! A park bundle (`x-pagerelay-bundle`, see `amqp::bundle`) reaches the queue whole; its jobs are
//! read as letters of their own, with the properties they were bundled with, so that an operator
//! sees what is inside and `--job-id` finds a job in one. The bundle stays the unit a replay moves.
//!
//! Reading is lenient like the rest of the header code: anything missing or malformed reads as
//! absent, never as an error, because a dead-letter queue is exactly where malformed messages end
//! up. It does not decide what to do with a letter (see `filter` and `replay`).

use std::fmt;

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use crate::amqp::bundle;
use crate::amqp::headers::{self, DeadLetterReason, ErrorContext};

/// The broker's dead-lettering history header: an array of tables, newest first.
pub const X_DEATH: &str = "x-death";
/// Set by the broker on the first dead-lettering of a message.
pub const X_FIRST_DEATH_REASON: &str = "x-first-death-reason";
/// Set by quorum queues on a redelivery: how many times the message was returned before.
pub const X_DELIVERY_COUNT: &str = "x-delivery-count";

/// Why a message is in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// pagerelay dead-lettered it (`x-pagerelay-reason`).
    Pagerelay(DeadLetterReason),
    /// An `x-pagerelay-reason` this version does not know (written by a newer pagerelay).
    OtherPagerelay(String),
    /// The broker dead-lettered it: the reason of its newest `x-death` entry
    /// (`delivery_limit`, `expired`, `rejected`, `maxlen`).
    Broker(String),
    /// Neither header: someone published it to the dead-letter exchange by hand.
    Unknown,
}

impl Reason {
    /// The name used in stats, peek output and `--reason` filters.
    pub fn label(&self) -> String {
        self.to_string()
    }

    /// The pagerelay reason, when pagerelay wrote one this version knows.
    pub fn pagerelay(&self) -> Option<DeadLetterReason> {
        match self {
            Reason::Pagerelay(reason) => Some(*reason),
            _ => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Pagerelay(reason) => f.write_str(reason.as_str()),
            Reason::OtherPagerelay(name) => f.write_str(name),
            Reason::Broker(name) => write!(f, "broker:{name}"),
            Reason::Unknown => f.write_str("unknown"),
        }
    }
}

/// A dead letter, read from one delivery of the dead-letter queue.
#[derive(Debug, Clone)]
pub struct Letter {
    pub body: Vec<u8>,
    /// The routing key it was dead-lettered with: the routing key it was published with.
    pub routing_key: String,
    pub properties: BasicProperties,
    pub reason: Reason,
    pub error: ErrorContext,
    pub attempts: Option<i64>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// `x-pagerelay-dead-lettered-at`, or for a broker dead letter the time of its newest
    /// `x-death` entry (whole seconds).
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// `x-pagerelay-page-id`, else the body's `page_id`.
    pub page_id: Option<String>,
    /// The AMQP `message_id` property.
    pub message_id: Option<String>,
    /// The body's `job_id`.
    pub job_id: Option<String>,
    /// How many times it was replayed before (`x-pagerelay-replay-count`).
    pub replay_count: i64,
    pub replayed_at: Option<DateTime<Utc>>,
    /// `x-delivery-count`: how many times the dead-letter queue handed it out and got it back
    /// (every `dlq stats`, `dlq peek` and `replay` pass counts once).
    pub delivery_count: Option<i64>,
    /// For a park bundle: what it holds.
    pub bundle: Option<Bundle>,
    json: Option<Value>,
}

/// A dead-lettered park bundle: the jobs its header declares, and what its body holds.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The `x-pagerelay-bundle` header's count.
    pub declared: usize,
    /// Its jobs, each read as a letter (never a bundle itself), or why the body cannot be read.
    pub jobs: Result<Vec<Letter>, bundle::BundleError>,
}

impl Letter {
    /// Reads a letter from a delivery's parts.
    pub fn new(body: Vec<u8>, routing_key: &str, properties: BasicProperties) -> Letter {
        let mut letter = Letter::read(body, routing_key, properties);
        letter.bundle =
            bundle::count(letter.properties.headers().as_ref()).map(|declared| Bundle {
                declared,
                jobs: bundle::decode(&letter.body, declared).map(|pieces| {
                    pieces
                        .into_iter()
                        // Not `new`: a piece marked as a bundle is still read as a job, so a crafted
                        // letter cannot nest without end.
                        .map(|piece| Letter::read(piece.body, routing_key, piece.properties))
                        .collect()
                }),
            });
        letter
    }

    /// Reads a letter from a delivery's parts, without looking inside a bundle.
    fn read(body: Vec<u8>, routing_key: &str, properties: BasicProperties) -> Letter {
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let table = properties.headers().clone().unwrap_or_default();
        let h = Some(&table);
        let time = |key: &str| headers::get_string(h, key).and_then(|s| headers::parse_time(&s));
        let broker_death = newest_death(&table);
        let reason = match headers::get_string(h, headers::REASON) {
            Some(name) => match DeadLetterReason::parse(&name) {
                Some(reason) => Reason::Pagerelay(reason),
                None => Reason::OtherPagerelay(name),
            },
            None => match broker_death
                .as_ref()
                .and_then(|d| d.reason.clone())
                .or_else(|| headers::get_string(h, X_FIRST_DEATH_REASON))
            {
                Some(name) => Reason::Broker(name),
                None => Reason::Unknown,
            },
        };
        let dead_lettered_at = match reason {
            Reason::Broker(_) => broker_death.and_then(|d| d.time),
            _ => time(headers::DEAD_LETTERED_AT),
        };
        let body_text = |key: &str| json.as_ref().and_then(|v| text_field(v, key));
        Letter {
            routing_key: routing_key.to_string(),
            reason,
            error: ErrorContext {
                code: headers::get_int(h, headers::ERROR_CODE),
                subcode: headers::get_int(h, headers::ERROR_SUBCODE),
                message: headers::get_string(h, headers::ERROR_MESSAGE),
                fbtrace_id: headers::get_string(h, headers::FBTRACE_ID),
            },
            attempts: headers::get_int(h, headers::ATTEMPTS),
            first_attempt_at: time(headers::FIRST_ATTEMPT_AT),
            dead_lettered_at,
            page_id: headers::get_string(h, headers::PAGE_ID)
                .filter(|p| !p.is_empty())
                .or_else(|| body_text("page_id")),
            message_id: properties.message_id().as_ref().map(|m| m.to_string()),
            job_id: body_text("job_id"),
            replay_count: headers::get_int(h, headers::REPLAY_COUNT)
                .unwrap_or(0)
                .max(0),
            replayed_at: time(headers::REPLAYED_AT),
            delivery_count: headers::get_int(h, X_DELIVERY_COUNT),
            bundle: None,
            json,
            body,
            properties,
        }
    }

    /// Reads a letter from a delivery.
    pub fn from_delivery(delivery: &lapin::message::Delivery) -> Letter {
        Letter::new(
            delivery.data.clone(),
            delivery.routing_key.as_str(),
            delivery.properties.clone(),
        )
    }

    /// Where a replay sends it: its Page id, else the routing key it was published with (which
    /// for a job is its Page id too, and keeps a job with no readable Page on the path it took).
    pub fn target_routing_key(&self) -> &str {
        self.page_id.as_deref().unwrap_or(&self.routing_key)
    }

    /// The job id: the body's `job_id`, else the `message_id` (the same rule the pipeline uses).
    pub fn job_id(&self) -> Option<&str> {
        self.job_id.as_deref().or(self.message_id.as_deref())
    }

    /// The body as JSON when it is JSON, else as a (lossy) string; `null` for a readable bundle,
    /// whose jobs are in [`bundled`](Self::bundled).
    pub fn job(&self) -> Value {
        match (&self.json, &self.bundle) {
            (Some(value), _) => value.clone(),
            (None, Some(Bundle { jobs: Ok(_), .. })) => Value::Null,
            (None, _) => Value::String(String::from_utf8_lossy(&self.body).into_owned()),
        }
    }

    /// The jobs inside a readable bundle; none for any other letter.
    pub fn bundled(&self) -> &[Letter] {
        match &self.bundle {
            Some(Bundle { jobs: Ok(jobs), .. }) => jobs,
            _ => &[],
        }
    }

    /// How many jobs the letter holds: one, or a park bundle's count — its members when its body
    /// can be read, else what its header declares (at least one: the letter itself is there).
    pub fn job_count(&self) -> usize {
        match &self.bundle {
            None => 1,
            Some(Bundle { jobs: Ok(jobs), .. }) => jobs.len(),
            Some(Bundle { declared, .. }) => (*declared).max(1),
        }
    }

    /// The letter as one line of `dlq peek` output. A bundle adds `bundle`: the declared count,
    /// and each job (its ids, Page, attempts and body) or why they cannot be read.
    pub fn to_json(&self) -> Value {
        let time = |t: Option<DateTime<Utc>>| t.map(headers::format_time);
        let mut line = json!({
            "message_id": self.message_id,
            "job_id": self.job_id(),
            "page_id": self.page_id,
            "routing_key": self.routing_key,
            "reason": self.reason.label(),
            "error_code": self.error.code,
            "error_subcode": self.error.subcode,
            "error_message": self.error.message,
            "fbtrace_id": self.error.fbtrace_id,
            "attempts": self.attempts,
            "first_attempt_at": time(self.first_attempt_at),
            "dead_lettered_at": time(self.dead_lettered_at),
            "replay_count": self.replay_count,
            "replayed_at": time(self.replayed_at),
            "delivery_count": self.delivery_count,
            "job": self.job(),
        });
        if let Some(bundle) = &self.bundle {
            line["bundle"] = match &bundle.jobs {
                Ok(jobs) => json!({
                    "jobs": bundle.declared,
                    "members": jobs.iter().map(|job| json!({
                        "message_id": job.message_id,
                        "job_id": job.job_id(),
                        "page_id": job.page_id,
                        "attempts": job.attempts,
                        "first_attempt_at": time(job.first_attempt_at),
                        "job": job.job(),
                    })).collect::<Vec<_>>(),
                }),
                Err(error) => json!({"jobs": bundle.declared, "unreadable": error.to_string()}),
            };
        }
        line
    }
}

/// The newest entry of `x-death`, as far as it can be read.
struct Death {
    reason: Option<String>,
    time: Option<DateTime<Utc>>,
}

fn newest_death(table: &FieldTable) -> Option<Death> {
    // RabbitMQ keeps x-death sorted newest first: an entry for a (queue, reason) pair seen before
    // has its count bumped and moves to the front.
    let AMQPValue::FieldArray(entries) = table.inner().get(X_DEATH)? else {
        return None;
    };
    let AMQPValue::FieldTable(entry) = entries.as_slice().first()? else {
        return None;
    };
    let entry = entry.inner();
    Some(Death {
        reason: entry.get("reason").and_then(headers::read_string),
        time: entry
            .get("time")
            .and_then(headers::read_int)
            .and_then(|secs| DateTime::from_timestamp(secs, 0)),
    })
}

/// A string field of a JSON object; numbers are accepted as their decimal text (a Page id
/// written as a number is still a Page id).
fn text_field(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use lapin::types::{FieldArray, LongString};

    use super::*;

    /// Headers as pagerelay writes them on a dead letter.
    pub(crate) fn pagerelay_letter(reason: &str, page: &str, job_id: &str) -> Letter {
        let mut table = FieldTable::default();
        headers::set_str(&mut table, headers::REASON, reason);
        headers::set_str(&mut table, headers::PAGE_ID, page);
        headers::set_int(&mut table, headers::ATTEMPTS, 1);
        headers::set_int(&mut table, headers::ERROR_CODE, 551);
        headers::set_str(&mut table, headers::ERROR_MESSAGE, "blocked");
        headers::set_str(&mut table, headers::FBTRACE_ID, "AbC");
        headers::set_str(
            &mut table,
            headers::DEAD_LETTERED_AT,
            "2026-11-22T10:00:00.000Z",
        );
        headers::set_str(
            &mut table,
            headers::FIRST_ATTEMPT_AT,
            "2026-11-22T09:59:59.000Z",
        );
        let body = json!({"page_id": page, "job_id": job_id, "recipient": {"id": "1"}});
        Letter::new(
            body.to_string().into_bytes(),
            page,
            BasicProperties::default()
                .with_message_id(job_id.into())
                .with_headers(table),
        )
    }

    pub(crate) fn death(queue: &str, reason: &str, time: u64) -> AMQPValue {
        let mut entry = FieldTable::default();
        entry.insert("queue".into(), AMQPValue::LongString(queue.into()));
        entry.insert("reason".into(), AMQPValue::LongString(reason.into()));
        entry.insert("count".into(), AMQPValue::LongLongInt(1));
        entry.insert("time".into(), AMQPValue::Timestamp(time));
        AMQPValue::FieldTable(entry)
    }

    /// A job the broker moved from a jobs queue after it went through a delay tier.
    pub(crate) fn broker_letter(page: &str) -> Letter {
        let mut table = FieldTable::default();
        table.insert(
            X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                death("relay.jobs", "delivery_limit", 1_795_000_000),
                death("relay.delay.1s", "expired", 1_794_000_000),
            ])),
        );
        table.insert(
            X_FIRST_DEATH_REASON.into(),
            AMQPValue::LongString(LongString::from("expired")),
        );
        headers::set_int(&mut table, headers::ATTEMPTS, 2);
        let body = json!({"page_id": page, "job_id": "b-1"});
        Letter::new(
            body.to_string().into_bytes(),
            page,
            BasicProperties::default().with_headers(table),
        )
    }

    #[test]
    fn reads_what_pagerelay_writes() {
        let letter = pagerelay_letter("permanent", "1001", "j-1");
        assert_eq!(
            letter.reason,
            Reason::Pagerelay(DeadLetterReason::Permanent)
        );
        assert_eq!(letter.error.code, Some(551));
        assert_eq!(letter.error.subcode, None);
        assert_eq!(letter.attempts, Some(1));
        assert_eq!(letter.page_id.as_deref(), Some("1001"));
        assert_eq!(letter.job_id(), Some("j-1"));
        assert_eq!(
            letter.dead_lettered_at,
            headers::parse_time("2026-11-22T10:00:00Z")
        );
        let line = letter.to_json();
        assert_eq!(line["reason"], "permanent");
        assert_eq!(line["fbtrace_id"], "AbC");
        assert_eq!(line["first_attempt_at"], "2026-11-22T09:59:59.000Z");
        assert_eq!(line["job"]["recipient"]["id"], "1");
        assert_eq!(line["replay_count"], 0);
    }

    #[test]
    fn broker_dead_letters_take_the_newest_death() {
        let letter = broker_letter("1001");
        // Not x-first-death-reason: that is the tier expiry of an earlier park.
        assert_eq!(letter.reason, Reason::Broker("delivery_limit".into()));
        assert_eq!(letter.reason.label(), "broker:delivery_limit");
        assert_eq!(
            letter.dead_lettered_at,
            DateTime::from_timestamp(1_795_000_000, 0)
        );
        assert_eq!(letter.page_id.as_deref(), Some("1001"));
        assert_eq!(letter.job_id(), Some("b-1"));
    }

    #[test]
    fn pagerelay_reason_wins_over_tier_deaths() {
        let mut letter = broker_letter("1001");
        let mut table = letter.properties.headers().clone().unwrap();
        headers::set_str(&mut table, headers::REASON, "token_invalid");
        letter = Letter::new(
            letter.body.clone(),
            "1001",
            letter.properties.clone().with_headers(table),
        );
        assert_eq!(
            letter.reason,
            Reason::Pagerelay(DeadLetterReason::TokenInvalid)
        );
        // No x-pagerelay-dead-lettered-at: the tier's death time is not the dead-lettering time.
        assert_eq!(letter.dead_lettered_at, None);
    }

    #[test]
    fn odd_messages_read_as_far_as_they_go() {
        let letter = Letter::new(
            b"{not json".to_vec(),
            "unrouted",
            BasicProperties::default(),
        );
        assert_eq!(letter.reason, Reason::Unknown);
        assert_eq!(letter.page_id, None);
        assert_eq!(letter.target_routing_key(), "unrouted");
        assert_eq!(letter.job(), Value::String("{not json".into()));

        let mut table = FieldTable::default();
        headers::set_str(&mut table, X_FIRST_DEATH_REASON, "rejected");
        headers::set_str(&mut table, headers::ATTEMPTS, "3");
        table.insert(X_DELIVERY_COUNT.into(), AMQPValue::LongInt(4));
        let letter = Letter::new(
            json!({"page_id": 1001}).to_string().into_bytes(),
            "x",
            BasicProperties::default()
                .with_headers(table)
                .with_message_id("m-1".into()),
        );
        assert_eq!(letter.reason.label(), "broker:rejected");
        assert_eq!(letter.attempts, Some(3));
        assert_eq!(letter.delivery_count, Some(4));
        assert_eq!(letter.page_id.as_deref(), Some("1001"));
        assert_eq!(letter.target_routing_key(), "1001");
        assert_eq!(letter.job_id(), Some("m-1"));

        let mut table = FieldTable::default();
        headers::set_str(&mut table, headers::REASON, "from_the_future");
        let letter = Letter::new(
            vec![0xff, 0xfe],
            "k",
            BasicProperties::default().with_headers(table),
        );
        assert_eq!(
            letter.reason,
            Reason::OtherPagerelay("from_the_future".into())
        );
        assert_eq!(letter.job(), Value::String("\u{fffd}\u{fffd}".into()));
    }

    /// A bundle dead-lettered whole, as the broker would after its delivery limit: the jobs
    /// `ids`, each with its own message id and attempts.
    pub(crate) fn bundle_letter(page: &str, ids: &[&str], cut: usize) -> Letter {
        let pieces: Vec<(BasicProperties, Vec<u8>)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut table = FieldTable::default();
                headers::set_int(&mut table, headers::ATTEMPTS, i as i64 + 1);
                let body = json!({"page_id": page, "job_id": id, "recipient": {"id": "7"}});
                (
                    BasicProperties::default()
                        .with_message_id((*id).into())
                        .with_headers(table),
                    body.to_string().into_bytes(),
                )
            })
            .collect();
        let mut body = bundle::encode(pieces.iter().map(|(p, b)| (p, b.as_slice())));
        body.truncate(body.len() - cut);
        let mut table = FieldTable::default();
        table.insert(
            X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![death(
                "relay.jobs",
                "delivery_limit",
                1_795_000_000,
            )])),
        );
        headers::set_str(&mut table, headers::PAGE_ID, page);
        Letter::new(body, page, bundle::properties(table, ids.len()))
    }

    #[test]
    fn a_bundle_shows_the_jobs_inside_it() {
        let letter = bundle_letter("1001", &["p-1", "p-2"], 0);
        assert_eq!(letter.reason.label(), "broker:delivery_limit");
        assert_eq!(letter.page_id.as_deref(), Some("1001"));
        let jobs: Vec<_> = letter.bundled().iter().map(Letter::job_id).collect();
        assert_eq!(jobs, [Some("p-1"), Some("p-2")]);
        assert_eq!(letter.job_count(), 2);

        let line = letter.to_json();
        assert_eq!(line["job"], Value::Null, "not the bundle's binary body");
        assert_eq!(line["bundle"]["jobs"], 2);
        let members = line["bundle"]["members"].as_array().unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[1]["job_id"], "p-2");
        assert_eq!(members[1]["message_id"], "p-2");
        assert_eq!(members[1]["page_id"], "1001");
        assert_eq!(members[1]["attempts"], 2);
        assert_eq!(members[1]["job"]["recipient"]["id"], "7");
        // The bundle's own fields are still its own.
        assert_eq!(line["reason"], "broker:delivery_limit");
        assert_eq!(line["job_id"], Value::Null);
    }

    #[test]
    fn an_unreadable_bundle_says_why_and_keeps_its_body() {
        let letter = bundle_letter("1001", &["p-1", "p-2"], 3);
        assert!(letter.bundled().is_empty());
        assert_eq!(letter.job_count(), 2, "as declared");
        let line = letter.to_json();
        assert_eq!(
            line["bundle"],
            json!({"jobs": 2, "unreadable": "piece 1 is cut short"})
        );
        assert!(
            line["job"].is_string(),
            "the raw body, as for any non-JSON letter"
        );

        // Ordinary letters have no `bundle` at all.
        let plain = pagerelay_letter("permanent", "1001", "j-1");
        assert_eq!(plain.job_count(), 1);
        assert!(plain.to_json().get("bundle").is_none());
    }

    #[test]
    fn a_bundle_inside_a_bundle_is_read_as_a_job() {
        let inner = bundle_letter("1001", &["p-1"], 0);
        let body = bundle::encode([(&inner.properties, inner.body.as_slice())]);
        let mut table = FieldTable::default();
        bundle::mark(&mut table, 1);
        let outer = Letter::new(body, "1001", BasicProperties::default().with_headers(table));
        let [piece] = outer.bundled() else {
            panic!("one piece: {:?}", outer.bundle)
        };
        assert!(piece.bundle.is_none(), "not opened again");
        assert!(piece.bundled().is_empty());
    }
}
