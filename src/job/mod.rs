//! The job contract: turning one AMQP delivery into a validated [`Job`], or a [`JobError`] that
//! names the field and the rule it breaks.
//!
//! Owns everything DESIGN §2 says about what publishers send: the framing of the body (at most
//! [`MAX_JOB_BYTES`], UTF-8, a JSON object, `content_type` JSON when set), the three pagerelay
//! fields (`page_id`, `job_id`, `expires_at`) and, through its `rules` module, the Send API
//! fields. The same contract ships as `schema/job.schema.json`; `tests/job_contract.rs` runs one
//! corpus through both and fails when they disagree, so change them together. It also owns
//! `pagerelay validate`'s line-by-line checking ([`validate_lines`]).
//!
//! It does not decide a job's fate. [`Job::decode`] is pure: the consumer dead-letters a refusal
//! with `reason=invalid`, and the pipeline asks [`Job::is_expired`] when it matters. Nor does it
//! encode the Graph batch: [`Job::send_body`] is the body as the publisher wrote it, minus the
//! pagerelay fields, and `graph` encodes it; the pipeline keeps only that encoding
//! ([`Job::map_body`]), so a job waiting to be sent holds no tree.
//!
//! # Decisions where the design is silent
//!
//! - A delivery without a `content_type` property is accepted, since some publishers never set
//!   one; when it is set it must be `application/json`, in any case, with at most a
//!   `charset=utf-8` parameter.
//! - Ids are strings only. `page_id` and `recipient.id` as JSON numbers are refused: Page ids and
//!   PSIDs have 15 to 17 digits, past what JavaScript numbers hold exactly, and a rounded id
//!   addresses somebody else.
//! - `job_id` is 1 to 200 characters of printable ASCII (space to `~`), since it becomes an AMQP
//!   `message_id` and a log field. An AMQP `message_id` that is used as the job id obeys the same
//!   rule (path `message_id`); an empty one counts as absent, as some clients send one.
//! - A generated job id is a fresh UUID v4 on every decode, so a redelivered job without either id
//!   gets a new one each time and the duplicate guard cannot recognise it. Publishers who want
//!   that guard set `job_id` or `message_id`.
//! - `expires_at` is an RFC 3339 date-time: `T` (or `t`) between date and time, seconds `00` to
//!   `59` (no leap seconds), and `Z` or a `±hh:mm` offset; the schema's pattern says the same. A
//!   job is expired from that instant on ([`Job::is_expired`]).
//! - `message.text` must not be empty (the Graph API refuses empty messages, so a call would be
//!   wasted); `message.attachment` needs a `payload` object for the same reason.
//! - `recipient` is a closed object: exactly one of its seven keys and nothing else, because the
//!   per-recipient ordering is keyed on it.
//! - A field that is present is checked even when it is `null`: `"tag": null` is a tag.
//! - The body is forwarded as parsed. Numbers survive exactly as 64-bit integers or doubles
//!   (serde_json's `float_roundtrip` is on); an integer beyond 64 bits becomes the nearest double.
//!   With a repeated key the last value wins, in the place of the first, and that value is both
//!   checked and forwarded.
//! - The first broken rule is reported, in this order: credentials, `page_id`, the routing key,
//!   `job_id`, `expires_at`, `recipient`, `message` / `sender_action`, `messaging_type`, `tag`,
//!   `notification_type`.

mod error;
mod lines;
mod rules;

#[cfg(test)]
mod tests;

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::de::value::SeqAccessDeserializer;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::is_page_id;

pub use self::error::{JobError, JsonKind, Quoted, Rule};
pub use self::lines::{ValidateSummary, validate_lines};
pub use self::rules::{
    ATTACHMENT_TYPES, CREDENTIAL_FIELDS, MAX_METADATA_CHARS, MAX_QUICK_REPLIES, MAX_TEXT_CHARS,
    MEDIA_ATTACHMENT_TYPES, MESSAGE_TAGS, MESSAGING_TYPES, NOTIFICATION_TYPES, RECIPIENT_KEYS,
    SENDER_ACTIONS,
};

/// The largest body accepted, in bytes. Checked before parsing, so an oversized delivery costs no
/// more than its length check.
pub const MAX_JOB_BYTES: usize = 256 * 1024;

/// The longest `job_id`, in characters (all ASCII, so also bytes; AMQP's `message_id` holds 255).
pub const MAX_JOB_ID_CHARS: usize = 200;

/// The fields pagerelay reads and strips; everything else is the Send API body.
pub const PAGERELAY_FIELDS: &[&str] = &["page_id", "job_id", "expires_at"];

/// What the AMQP delivery says about the job besides its body.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryMeta<'a> {
    /// The routing key the job was published with. When it is a Page id (all digits) it must be
    /// the job's `page_id`; anything else, including an empty key, is not compared.
    pub routing_key: &'a str,
    /// The `message_id` property: the job id when the body has none.
    pub message_id: Option<&'a str>,
    /// The `content_type` property; when set it must say JSON.
    pub content_type: Option<&'a str>,
}

/// A decoded, validated send job, carrying its Send API body as `B`: as parsed, from
/// [`Job::decode`], or in the form the next stage keeps it ([`Job::map_body`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Job<B = Map<String, Value>> {
    /// The sending Page.
    pub page_id: String,
    /// The body's `job_id`, else the delivery's `message_id`, else a generated UUID v4.
    pub job_id: String,
    /// Whether `job_id` was generated here (and so means nothing to the publisher).
    pub job_id_generated: bool,
    /// When the job stops being worth sending.
    pub expires_at: Option<DateTime<Utc>>,
    /// The key of the one-in-flight-message-per-recipient rule: the recipient kind and value,
    /// e.g. `id:6543210987654321` or `user_ref:abc`.
    pub recipient: String,
    /// Whether the job is an audio or video attachment, charged to the Page's media ceiling.
    pub media: bool,
    /// The Send API body: the job minus the pagerelay fields, unknown fields kept, in the
    /// publisher's order.
    body: B,
}

// ===== impl Job =====

impl Job {
    /// Decodes and validates one delivery.
    ///
    /// # Errors
    ///
    /// A [`JobError`] naming the first field (or `body`, `content_type`, `message_id`) that breaks
    /// the contract. Never panics, whatever the bytes.
    pub fn decode(body: &[u8], meta: &DeliveryMeta<'_>) -> Result<Job, JobError> {
        if body.len() > MAX_JOB_BYTES {
            return Err(JobError::TooLarge {
                size: body.len(),
                limit: MAX_JOB_BYTES,
            });
        }
        if let Some(content_type) = meta.content_type {
            check_content_type(content_type)?;
        }
        let text = std::str::from_utf8(body).map_err(|e| JobError::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        // serde_json's recursion limit (128 levels) turns deep nesting into an error here rather
        // than a stack overflow, and its messages give a position, never the input.
        let TopLevel {
            page_id,
            job_id,
            expires_at,
            body: job,
        } = match serde_json::from_str::<Parsed>(text) {
            Ok(Parsed::Object(top)) => top,
            Ok(Parsed::Other(found)) => return Err(JobError::NotAnObject { found }),
            Err(e) => {
                return Err(JobError::Syntax {
                    reason: e.to_string(),
                });
            }
        };

        rules::reject_credentials(&job)?;
        let page_id = page_id_of(page_id)?;
        if is_page_id(meta.routing_key) && meta.routing_key != page_id {
            return Err(JobError::invalid(
                "page_id",
                Rule::RoutingKeyMismatch {
                    page_id: Quoted::new(&page_id),
                    routing_key: Quoted::new(meta.routing_key),
                },
            ));
        }
        let (job_id, job_id_generated) = match job_id_of(job_id)? {
            Some(job_id) => (job_id, false),
            None => match meta.message_id.filter(|id| !id.is_empty()) {
                Some(message_id) => {
                    check_job_id("message_id", message_id)?;
                    (message_id.to_owned(), false)
                }
                None => (uuid::Uuid::new_v4().to_string(), true),
            },
        };
        let expires_at = expires_at_of(expires_at)?;
        let facts = rules::check(&job)?;
        Ok(Job {
            page_id,
            job_id,
            job_id_generated,
            expires_at,
            recipient: facts.recipient,
            media: facts.media,
            body: job,
        })
    }
}

impl<B> Job<B> {
    /// The Send API body to forward: the job minus `page_id`, `job_id` and `expires_at`, with
    /// every other field, known or not, in the order the publisher wrote them; in whatever form
    /// the job carries it.
    pub fn send_body(&self) -> &B {
        &self.body
    }

    /// The same job with its body turned into `f(body)`: how the pipeline swaps the parsed tree
    /// for the encoded bytes it sends.
    pub fn map_body<C>(self, f: impl FnOnce(B) -> C) -> Job<C> {
        Job {
            page_id: self.page_id,
            job_id: self.job_id,
            job_id_generated: self.job_id_generated,
            expires_at: self.expires_at,
            recipient: self.recipient,
            media: self.media,
            body: f(self.body),
        }
    }

    /// Whether the job must be dead-lettered as `expired` rather than sent at `now`. A job is
    /// expired from its `expires_at` instant on, as a token's `exp` is.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|expires_at| now >= expires_at)
    }
}

/// Accepts `application/json`, case-insensitively, with at most a `charset=utf-8` parameter.
fn check_content_type(content_type: &str) -> Result<(), JobError> {
    let mut parts = content_type.split(';').map(str::trim);
    let media_type = parts.next().unwrap_or_default();
    let charset_ok = |param: &str| {
        param.split_once('=').is_some_and(|(name, value)| {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            name.trim().eq_ignore_ascii_case("charset") && value.eq_ignore_ascii_case("utf-8")
        })
    };
    let ok = media_type.eq_ignore_ascii_case("application/json")
        && match (parts.next(), parts.next()) {
            (None, _) => true,
            (Some(param), None) => charset_ok(param),
            (Some(_), Some(_)) => false,
        };
    if ok {
        Ok(())
    } else {
        Err(JobError::ContentType {
            found: Quoted::new(content_type),
        })
    }
}

fn page_id_of(value: Option<Value>) -> Result<String, JobError> {
    match value {
        Some(Value::String(page_id)) if is_page_id(&page_id) => Ok(page_id),
        Some(Value::String(page_id)) => Err(JobError::invalid(
            "page_id",
            Rule::NotAPageId {
                value: Quoted::new(&page_id),
            },
        )),
        Some(other) => Err(JobError::wrong_type(
            "page_id",
            "a string of digits (ids as JSON numbers lose digits)",
            &other,
        )),
        None => Err(JobError::invalid("page_id", Rule::Required)),
    }
}

fn job_id_of(value: Option<Value>) -> Result<Option<String>, JobError> {
    match value {
        Some(Value::String(job_id)) => {
            check_job_id("job_id", &job_id)?;
            Ok(Some(job_id))
        }
        Some(other) => Err(JobError::wrong_type("job_id", "a string", &other)),
        None => Ok(None),
    }
}

/// Job ids end up in AMQP `message_id` (a short string), log fields and dead-letter headers:
/// printable ASCII keeps them intact in all three. The value itself is not quoted back, since it
/// is exactly what is broken.
fn check_job_id(path: &'static str, job_id: &str) -> Result<(), JobError> {
    if job_id.is_empty() {
        return Err(JobError::invalid(path, Rule::Empty));
    }
    // Bytes, not chars: every byte before the first offending one is a one-byte character, so
    // the byte position is the character position.
    if let Some(position) = job_id.bytes().position(|b| !(b' '..=b'~').contains(&b)) {
        return Err(JobError::invalid(
            path,
            Rule::NotPrintableAscii {
                position: position + 1,
            },
        ));
    }
    if job_id.len() > MAX_JOB_ID_CHARS {
        return Err(JobError::invalid(
            path,
            Rule::TooLong {
                units: job_id.len(),
                chars: job_id.len(),
                limit: MAX_JOB_ID_CHARS,
            },
        ));
    }
    Ok(())
}

fn expires_at_of(value: Option<Value>) -> Result<Option<DateTime<Utc>>, JobError> {
    match value {
        Some(Value::String(text)) => parse_rfc3339(&text).map(Some).ok_or_else(|| {
            JobError::invalid(
                "expires_at",
                Rule::NotRfc3339 {
                    value: Quoted::new(&text),
                },
            )
        }),
        Some(other) => Err(JobError::wrong_type("expires_at", "a string", &other)),
        None => Ok(None),
    }
}

/// RFC 3339 `date-time`, exactly: chrono alone also takes a space for the `T` and second 60, which
/// the schema (`format: date-time` plus a pattern) refuses, so the shape is checked here first and
/// chrono only checks the calendar.
fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range.clone())
            .filter(|d| d.iter().all(u8::is_ascii_digit))
            .map(|d| d.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let date_time_ok = b.len() >= 20
        && digits(0..4).is_some()
        && b[4] == b'-'
        && digits(5..7).is_some()
        && b[7] == b'-'
        && digits(8..10).is_some()
        && matches!(b[10], b'T' | b't')
        && digits(11..13).is_some_and(|h| h <= 23)
        && b[13] == b':'
        && digits(14..16).is_some_and(|m| m <= 59)
        && b[16] == b':'
        && digits(17..19).is_some_and(|s| s <= 59);
    if !date_time_ok {
        return None;
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        rest = &fraction[len..];
    }
    let offset_ok = match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let hours = [*h1, *h2];
            let minutes = [*m1, *m2];
            hours.iter().chain(&minutes).all(u8::is_ascii_digit)
                && (hours[0] - b'0') * 10 + (hours[1] - b'0') <= 23
                && (minutes[0] - b'0') * 10 + (minutes[1] - b'0') <= 59
        }
        _ => false,
    };
    if !offset_ok {
        return None;
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

// ===== reading the top-level object =====

/// The job's top-level object, read in one pass: the pagerelay fields go straight to their own
/// slots instead of into the body's map, whence they would have to be removed again (an ordered
/// map's removal shifts every later field). Everything else is read exactly as
/// `serde_json::Value` reads an object: a repeated key keeps its first position and its last
/// value.
struct TopLevel {
    page_id: Option<Value>,
    job_id: Option<Value>,
    expires_at: Option<Value>,
    body: Map<String, Value>,
}

/// What the body turned out to be. A body that is not an object is still read whole, so that a
/// syntax error anywhere in it is reported as one, as `serde_json::Value` would.
// Unboxed: it lives only between the parse and the destructuring after it, and a box would be
// one more allocation per job.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Object(TopLevel),
    Other(JsonKind),
}

impl<'de> Deserialize<'de> for Parsed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ParsedVisitor)
    }
}

struct ParsedVisitor;

impl<'de> Visitor<'de> for ParsedVisitor {
    type Value = Parsed;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        let mut top = TopLevel {
            page_id: None,
            job_id: None,
            expires_at: None,
            // Room for a typical job's fields, so that the map is not regrown field by field.
            body: Map::with_capacity(8),
        };
        while let Some(Key(key)) = map.next_key()? {
            let slot = match &*key {
                "page_id" => &mut top.page_id,
                "job_id" => &mut top.job_id,
                "expires_at" => &mut top.expires_at,
                _ => {
                    top.body.insert(key.into_owned(), map.next_value()?);
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(Parsed::Object(top))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Parsed, A::Error> {
        // Read as `Value` reads it, not skipped: skipping checks less (a number out of range,
        // for one, is only an error when it is parsed).
        Value::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(Parsed::Other(JsonKind::Array))
    }

    fn visit_unit<E>(self) -> Result<Parsed, E> {
        Ok(Parsed::Other(JsonKind::Null))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Parsed, E> {
        Ok(Parsed::Other(JsonKind::Bool))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Parsed, E> {
        Ok(Parsed::Other(JsonKind::Number))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Parsed, E> {
        Ok(Parsed::Other(JsonKind::Number))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Parsed, E> {
        Ok(Parsed::Other(JsonKind::Number))
    }

    fn visit_str<E>(self, _: &str) -> Result<Parsed, E> {
        Ok(Parsed::Other(JsonKind::String))
    }
}

/// An object key, borrowed from the body unless it holds an escape: only the keys that end up
/// in the body are copied.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(key)))
    }

    fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(key.to_owned())))
    }

    fn visit_string<E>(self, key: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(key)))
    }
}
