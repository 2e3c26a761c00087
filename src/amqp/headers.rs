//! The `x-pagerelay-*` headers: a job's delivery state between attempts, the context a dead
//! letter carries, and lenient readers for what the broker or other clients wrote.
//!
//! Header values written here are strings or 64-bit integers; readers accept any integer width
//! and numbers written as strings, because RabbitMQ and client libraries disagree on both.
//!
//! It does not decide when to retry, park or dead-letter (see `pipeline::outcome`).

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Send attempts made so far.
pub const ATTEMPTS: &str = "x-pagerelay-attempts";
/// When the first send attempt was made (RFC 3339).
pub const FIRST_ATTEMPT_AT: &str = "x-pagerelay-first-attempt-at";
/// How many times the job has been parked.
pub const PARKED: &str = "x-pagerelay-parked";
/// When the job was first parked (RFC 3339); bounds the total time parked.
pub const FIRST_PARKED_AT: &str = "x-pagerelay-first-parked-at";
/// Why the job was last parked (`budget`, `cooldown`, `paused`, `lane_full`, `circuit_open`).
pub const PARK_REASON: &str = "x-pagerelay-park-reason";
/// When a parked job is due back (Unix milliseconds).
pub const PARK_DUE: &str = "x-pagerelay-park-due";
/// Dead letters: why, and the context of the last failure.
pub const REASON: &str = "x-pagerelay-reason";
pub const ERROR_CODE: &str = "x-pagerelay-error-code";
pub const ERROR_SUBCODE: &str = "x-pagerelay-error-subcode";
pub const ERROR_MESSAGE: &str = "x-pagerelay-error-message";
pub const FBTRACE_ID: &str = "x-pagerelay-fbtrace-id";
pub const DEAD_LETTERED_AT: &str = "x-pagerelay-dead-lettered-at";
pub const PAGE_ID: &str = "x-pagerelay-page-id";
/// Replay provenance.
pub const REPLAYED_AT: &str = "x-pagerelay-replayed-at";
pub const REPLAY_COUNT: &str = "x-pagerelay-replay-count";
pub const PREVIOUS_REASON: &str = "x-pagerelay-previous-reason";
/// Publish time in Unix milliseconds, set by `pagerelay publish`; finer than the AMQP timestamp.
pub const PUBLISHED_AT_MS: &str = "x-pagerelay-published-at-ms";

/// Longest error message kept in a header; Graph messages are short, but a proxy's HTML error
/// page is not.
const MAX_MESSAGE_CHARS: usize = 1000;

/// Why a job was dead-lettered: the value of [`REASON`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadLetterReason {
    /// The job failed decoding or validation.
    Invalid,
    /// The job names a Page that is not in the registry.
    UnknownPage,
    /// `expires_at` passed before the job could be sent.
    Expired,
    /// The Graph API refused the message for good.
    Permanent,
    /// The Graph API may have delivered it (1/1357046): never resent blindly.
    Ambiguous,
    /// Transient failures used up every attempt.
    MaxAttempts,
    /// An error code pagerelay does not know failed every attempt.
    UnknownError,
    /// The Page's token was invalid for longer than the parking cap.
    TokenInvalid,
    /// The app secret proof was refused for longer than the parking cap.
    AppsecretInvalid,
    /// The Page was blocked (policy, messaging disabled) for longer than the parking cap.
    PageBlocked,
    /// The job stayed parked (budget, cooldown, outage) for longer than the parking cap.
    ParkLimit,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 11] = [
        DeadLetterReason::Invalid,
        DeadLetterReason::UnknownPage,
        DeadLetterReason::Expired,
        DeadLetterReason::Permanent,
        DeadLetterReason::Ambiguous,
        DeadLetterReason::MaxAttempts,
        DeadLetterReason::UnknownError,
        DeadLetterReason::TokenInvalid,
        DeadLetterReason::AppsecretInvalid,
        DeadLetterReason::PageBlocked,
        DeadLetterReason::ParkLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Invalid => "invalid",
            DeadLetterReason::UnknownPage => "unknown_page",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::Permanent => "permanent",
            DeadLetterReason::Ambiguous => "ambiguous",
            DeadLetterReason::MaxAttempts => "max_attempts",
            DeadLetterReason::UnknownError => "unknown_error",
            DeadLetterReason::TokenInvalid => "token_invalid",
            DeadLetterReason::AppsecretInvalid => "appsecret_invalid",
            DeadLetterReason::PageBlocked => "page_blocked",
            DeadLetterReason::ParkLimit => "park_limit",
        }
    }

    pub fn parse(s: &str) -> Option<DeadLetterReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Graph error as a dead letter records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorContext {
    pub code: Option<i64>,
    pub subcode: Option<i64>,
    pub message: Option<String>,
    pub fbtrace_id: Option<String>,
}

/// What pagerelay knows about a job from its headers: attempts and parking so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobState {
    pub attempts: u32,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub parked: u32,
    pub first_parked_at: Option<DateTime<Utc>>,
    pub park_due_ms: Option<i64>,
    pub published_at_ms: Option<i64>,
    /// The last failure, carried on retries so that a `max_attempts` dead letter can say what
    /// kept failing.
    pub last_error: ErrorContext,
}

impl JobState {
    /// Reads the state from a message's headers; anything missing or malformed reads as "none".
    pub fn from_headers(headers: Option<&FieldTable>) -> JobState {
        let Some(headers) = headers else {
            return JobState::default();
        };
        let h = headers.inner();
        let int = |k: &str| h.get(k).and_then(read_int);
        let text = |k: &str| h.get(k).and_then(read_string);
        let time = |k: &str| text(k).and_then(|s| parse_time(&s));
        JobState {
            attempts: int(ATTEMPTS).map_or(0, clamp_u32),
            first_attempt_at: time(FIRST_ATTEMPT_AT),
            parked: int(PARKED).map_or(0, clamp_u32),
            first_parked_at: time(FIRST_PARKED_AT),
            park_due_ms: int(PARK_DUE),
            published_at_ms: int(PUBLISHED_AT_MS),
            last_error: ErrorContext {
                code: int(ERROR_CODE),
                subcode: int(ERROR_SUBCODE),
                message: text(ERROR_MESSAGE),
                fbtrace_id: text(FBTRACE_ID),
            },
        }
    }

    /// Writes the attempt and parking state into `headers`, replacing earlier values.
    pub fn write(&self, headers: &mut FieldTable) {
        set_int(headers, ATTEMPTS, i64::from(self.attempts));
        set_time(headers, FIRST_ATTEMPT_AT, self.first_attempt_at);
        set_int(headers, PARKED, i64::from(self.parked));
        set_time(headers, FIRST_PARKED_AT, self.first_parked_at);
        match self.park_due_ms {
            Some(due) => set_int(headers, PARK_DUE, due),
            None => remove(headers, PARK_DUE),
        }
        write_error(headers, &self.last_error);
    }
}

/// Writes (or clears) the error context headers.
pub fn write_error(headers: &mut FieldTable, error: &ErrorContext) {
    match error.code {
        Some(code) => set_int(headers, ERROR_CODE, code),
        None => remove(headers, ERROR_CODE),
    }
    match error.subcode {
        Some(code) => set_int(headers, ERROR_SUBCODE, code),
        None => remove(headers, ERROR_SUBCODE),
    }
    match &error.message {
        Some(m) => set_str(headers, ERROR_MESSAGE, &truncate(m, MAX_MESSAGE_CHARS)),
        None => remove(headers, ERROR_MESSAGE),
    }
    match &error.fbtrace_id {
        Some(id) => set_str(headers, FBTRACE_ID, &truncate(id, 100)),
        None => remove(headers, FBTRACE_ID),
    }
}

pub fn set_str(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value)),
    );
}

pub fn set_int(headers: &mut FieldTable, key: &str, value: i64) {
    headers.insert(ShortString::from(key), AMQPValue::LongLongInt(value));
}

pub fn set_time(headers: &mut FieldTable, key: &str, value: Option<DateTime<Utc>>) {
    match value {
        Some(t) => set_str(headers, key, &format_time(t)),
        None => remove(headers, key),
    }
}

pub fn remove(headers: &mut FieldTable, key: &str) {
    // FieldTable has no remove; rebuild without the key (headers are a handful of entries).
    if headers.contains_key(key) {
        let mut kept = FieldTable::default();
        for (k, v) in headers.inner() {
            if k.as_str() != key {
                kept.insert(k.clone(), v.clone());
            }
        }
        *headers = kept;
    }
}

/// Reads an integer of any width, or a decimal string.
pub fn read_int(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// Reads a string header (long or short string); other types read as none.
pub fn read_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The value of a string header, if present.
pub fn get_string(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    headers?.inner().get(key).and_then(read_string)
}

/// The value of an integer header, if present.
pub fn get_int(headers: Option<&FieldTable>, key: &str) -> Option<i64> {
    headers?.inner().get(key).and_then(read_int)
}

pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn clamp_u32(v: i64) -> u32 {
    v.clamp(0, i64::from(u32::MAX)) as u32
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_state_round_trips_through_headers() {
        let state = JobState {
            attempts: 3,
            first_attempt_at: parse_time("2026-11-22T10:00:00.250Z"),
            parked: 2,
            first_parked_at: parse_time("2026-11-22T10:05:00Z"),
            park_due_ms: Some(1_795_000_000_000),
            published_at_ms: None,
            last_error: ErrorContext {
                code: Some(2),
                subcode: None,
                message: Some("temporary".into()),
                fbtrace_id: Some("AbC".into()),
            },
        };
        let mut headers = FieldTable::default();
        set_str(&mut headers, "x-other", "kept");
        state.write(&mut headers);
        assert_eq!(JobState::from_headers(Some(&headers)), state);
        assert_eq!(
            get_string(Some(&headers), "x-other").as_deref(),
            Some("kept")
        );

        // Clearing optional values removes their headers.
        let cleared = JobState {
            attempts: 3,
            ..JobState::default()
        };
        cleared.write(&mut headers);
        assert_eq!(JobState::from_headers(Some(&headers)), cleared);
        assert!(!headers.contains_key(ERROR_CODE));
        assert!(!headers.contains_key(PARK_DUE));
    }

    #[test]
    fn readers_are_lenient() {
        assert_eq!(read_int(&AMQPValue::LongInt(7)), Some(7));
        assert_eq!(read_int(&AMQPValue::ShortUInt(7)), Some(7));
        assert_eq!(read_int(&AMQPValue::LongString(" 42 ".into())), Some(42));
        assert_eq!(read_int(&AMQPValue::LongString("x".into())), None);
        assert_eq!(read_int(&AMQPValue::Boolean(true)), None);
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPTS.into(), AMQPValue::LongString("oops".into()));
        headers.insert(
            FIRST_ATTEMPT_AT.into(),
            AMQPValue::LongString("yesterday".into()),
        );
        assert_eq!(JobState::from_headers(Some(&headers)), JobState::default());
        assert_eq!(JobState::from_headers(None), JobState::default());
    }

    #[test]
    fn long_messages_are_truncated() {
        let mut headers = FieldTable::default();
        write_error(
            &mut headers,
            &ErrorContext {
                message: Some("é".repeat(5000)),
                ..ErrorContext::default()
            },
        );
        let kept = get_string(Some(&headers), ERROR_MESSAGE).unwrap();
        assert_eq!(kept.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn reasons_have_stable_names() {
        for reason in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(DeadLetterReason::MaxAttempts.as_str(), "max_attempts");
        assert_eq!(DeadLetterReason::parse("nope"), None);
    }
}
