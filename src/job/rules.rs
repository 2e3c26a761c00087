//! The Send API half of the contract: the checks on `recipient`, `message`, `sender_action`,
//! `messaging_type`, `tag` and `notification_type`, made before anything is spent on a job.
//!
//! Owns the closed value sets and the limits (exported from [`crate::job`] so the JSON Schema test
//! can compare them with `schema/job.schema.json`) and the derived facts the pipeline needs: the
//! recipient key of the per-recipient ordering rule and whether the job counts against the media
//! ceiling.
//!
//! It does not own the pagerelay fields (`page_id`, `job_id`, `expires_at`) or the body's framing
//! (size, UTF-8, JSON); `job` checks those first. Fields it does not know are not its business:
//! they are forwarded untouched, so a new Send API field needs no pagerelay release. For the same
//! reason the items of `quick_replies` and the attachment `payload` are only checked to be objects;
//! their inner rules are left to the Graph API.

use serde_json::{Map, Value};

use super::error::{JobError, Quoted, Rule};

/// The keys that name a recipient; a recipient has exactly one.
pub const RECIPIENT_KEYS: &[&str] = &[
    "id",
    "user_ref",
    "comment_id",
    "post_id",
    "phone_number",
    "notification_messages_token",
    "one_time_notif_token",
];
/// Values of `messaging_type`.
pub const MESSAGING_TYPES: &[&str] = &["RESPONSE", "UPDATE", "MESSAGE_TAG", "UTILITY"];
/// Values of `tag`, which goes with `messaging_type: MESSAGE_TAG` and only with it.
pub const MESSAGE_TAGS: &[&str] = &[
    "ACCOUNT_UPDATE",
    "CONFIRMED_EVENT_UPDATE",
    "CUSTOMER_FEEDBACK",
    "HUMAN_AGENT",
    "POST_PURCHASE_UPDATE",
];
/// Values of `sender_action`.
pub const SENDER_ACTIONS: &[&str] = &["typing_on", "typing_off", "mark_seen"];
/// Values of `notification_type`.
pub const NOTIFICATION_TYPES: &[&str] = &["REGULAR", "SILENT_PUSH", "NO_PUSH"];
/// Values of `message.attachment.type`.
pub const ATTACHMENT_TYPES: &[&str] = &["audio", "file", "image", "template", "video"];
/// Attachment types charged to the Page's media ceiling (10 calls/s by default, see DESIGN §4).
pub const MEDIA_ATTACHMENT_TYPES: &[&str] = &["audio", "video"];
/// Top-level fields that would carry a credential. Publishers must not hold Page tokens at all.
pub const CREDENTIAL_FIELDS: &[&str] = &["access_token", "appsecret_proof"];

/// `message.text` must have fewer than 2000 characters.
pub const MAX_TEXT_CHARS: usize = 1999;
/// `message.metadata` must have fewer than 1000 characters.
pub const MAX_METADATA_CHARS: usize = 999;
/// `message.quick_replies` holds at most 13 items.
pub const MAX_QUICK_REPLIES: usize = 13;

/// What the pipeline needs to know about a valid Send API body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SendFacts {
    pub recipient: String,
    pub media: bool,
}

/// Refuses a job that carries a credential. Runs before every other check, so that such a job is
/// reported for what it is even when it is also wrong in other ways; the value is never read.
pub(super) fn reject_credentials(job: &Map<String, Value>) -> Result<(), JobError> {
    match CREDENTIAL_FIELDS.iter().find(|&&key| job.contains_key(key)) {
        Some(key) => Err(JobError::invalid(*key, Rule::Credential)),
        None => Ok(()),
    }
}

/// Checks the Send API fields of `body` (the job without the pagerelay fields).
///
/// A field that is present is checked even when its value is `null`: the JSON Schema sees a
/// present `null` too, and the two must agree.
pub(super) fn check(body: &Map<String, Value>) -> Result<SendFacts, JobError> {
    let recipient = recipient(body)?;
    let media = match (body.get("message"), body.get("sender_action")) {
        (Some(message), None) => self::message(message)?,
        (None, Some(action)) => {
            one_of("sender_action", action, SENDER_ACTIONS)?;
            false
        }
        (message, action) => {
            return Err(JobError::invalid(
                "message",
                Rule::ExactlyOne {
                    of: &["message", "sender_action"],
                    found: [("message", message), ("sender_action", action)]
                        .into_iter()
                        .filter_map(|(name, value)| value.map(|_| name))
                        .collect(),
                },
            ));
        }
    };
    messaging_type_and_tag(body)?;
    if let Some(value) = body.get("notification_type") {
        one_of("notification_type", value, NOTIFICATION_TYPES)?;
    }
    Ok(SendFacts { recipient, media })
}

/// Returns the recipient key, `<kind>:<value>`, e.g. `id:6543210987654321`.
fn recipient(body: &Map<String, Value>) -> Result<String, JobError> {
    let value = body
        .get("recipient")
        .ok_or_else(|| JobError::invalid("recipient", Rule::Required))?;
    let recipient = object("recipient", value)?;
    // The recipient is a closed set, unlike the rest of the body: the pipeline orders sends by
    // recipient, and a key it does not know might name a second addressee the ordering ignores.
    if let Some(key) = recipient
        .keys()
        .find(|key| !RECIPIENT_KEYS.contains(&key.as_str()))
    {
        return Err(JobError::invalid(
            "recipient",
            Rule::UnknownKey {
                key: Quoted::new(key),
                allowed: RECIPIENT_KEYS,
            },
        ));
    }
    // Every key is a known one by now, so one key is exactly one of them.
    let mut keys = recipient.iter();
    let (Some((kind, value)), None) = (keys.next(), keys.next()) else {
        return Err(JobError::invalid(
            "recipient",
            Rule::ExactlyOne {
                of: RECIPIENT_KEYS,
                found: RECIPIENT_KEYS
                    .iter()
                    .copied()
                    .filter(|key| recipient.contains_key(*key))
                    .collect(),
            },
        ));
    };
    let path = || format!("recipient.{kind}");
    let value = match value {
        Value::String(value) => value,
        // Numbers are refused on purpose: ids are 15 to 17 digits, past what a JavaScript
        // publisher's numbers hold exactly, and a rounded id is somebody else's.
        other => {
            return Err(JobError::wrong_type(
                path(),
                "a string (ids as JSON numbers lose digits)",
                other,
            ));
        }
    };
    if value.is_empty() {
        return Err(JobError::invalid(path(), Rule::Empty));
    }
    Ok(format!("{kind}:{value}"))
}

/// Checks `message`; returns whether it is a media attachment.
fn message(value: &Value) -> Result<bool, JobError> {
    let message = object("message", value)?;
    let media = match (message.get("text"), message.get("attachment")) {
        (Some(text), None) => {
            let text = string("message.text", text)?;
            if text.is_empty() {
                return Err(JobError::invalid("message.text", Rule::Empty));
            }
            max_chars("message.text", text, MAX_TEXT_CHARS)?;
            false
        }
        (None, Some(attachment)) => self::attachment(attachment)?,
        (text, attachment) => {
            return Err(JobError::invalid(
                "message",
                Rule::ExactlyOne {
                    of: &["text", "attachment"],
                    found: [("text", text), ("attachment", attachment)]
                        .into_iter()
                        .filter_map(|(name, value)| value.map(|_| name))
                        .collect(),
                },
            ));
        }
    };
    if let Some(metadata) = message.get("metadata") {
        let metadata = string("message.metadata", metadata)?;
        max_chars("message.metadata", metadata, MAX_METADATA_CHARS)?;
    }
    if let Some(replies) = message.get("quick_replies") {
        let Value::Array(replies) = replies else {
            return Err(JobError::wrong_type(
                "message.quick_replies",
                "an array",
                replies,
            ));
        };
        if replies.len() > MAX_QUICK_REPLIES {
            return Err(JobError::invalid(
                "message.quick_replies",
                Rule::TooMany {
                    count: replies.len(),
                    limit: MAX_QUICK_REPLIES,
                },
            ));
        }
        for (i, reply) in replies.iter().enumerate() {
            if !reply.is_object() {
                return Err(JobError::wrong_type(
                    format!("message.quick_replies[{i}]"),
                    "an object",
                    reply,
                ));
            }
        }
    }
    Ok(media)
}

/// Checks `message.attachment`; returns whether it is audio or video.
fn attachment(value: &Value) -> Result<bool, JobError> {
    let attachment = object("message.attachment", value)?;
    let kind = attachment
        .get("type")
        .ok_or_else(|| JobError::invalid("message.attachment.type", Rule::Required))?;
    let kind = one_of("message.attachment.type", kind, ATTACHMENT_TYPES)?;
    // A payload (url, attachment_id or template) is what the Graph API sends; without one the
    // call can only fail.
    let payload = attachment
        .get("payload")
        .ok_or_else(|| JobError::invalid("message.attachment.payload", Rule::Required))?;
    object("message.attachment.payload", payload)?;
    Ok(MEDIA_ATTACHMENT_TYPES.contains(&kind))
}

fn messaging_type_and_tag(body: &Map<String, Value>) -> Result<(), JobError> {
    let messaging_type = match body.get("messaging_type") {
        Some(value) => Some(one_of("messaging_type", value, MESSAGING_TYPES)?),
        None if body.contains_key("message") => {
            return Err(JobError::invalid(
                "messaging_type",
                Rule::RequiredWhen("message is present"),
            ));
        }
        None => None,
    };
    match (messaging_type, body.get("tag")) {
        (Some("MESSAGE_TAG"), Some(tag)) => one_of("tag", tag, MESSAGE_TAGS).map(drop),
        (Some("MESSAGE_TAG"), None) => Err(JobError::invalid(
            "tag",
            Rule::RequiredWhen("messaging_type is MESSAGE_TAG"),
        )),
        // The Graph API would ignore a stray tag or refuse the call; either way the publisher
        // meant something the job does not say.
        (_, Some(_)) => Err(JobError::invalid(
            "tag",
            Rule::OnlyWhen("messaging_type is MESSAGE_TAG"),
        )),
        (_, None) => Ok(()),
    }
}

// ===== helpers =====

fn object<'v>(path: &str, value: &'v Value) -> Result<&'v Map<String, Value>, JobError> {
    value
        .as_object()
        .ok_or_else(|| JobError::wrong_type(path, "an object", value))
}

fn string<'v>(path: &str, value: &'v Value) -> Result<&'v str, JobError> {
    value
        .as_str()
        .ok_or_else(|| JobError::wrong_type(path, "a string", value))
}

/// Checks that `value` is one of `allowed`, compared exactly (the Graph API's values are
/// case-sensitive), and returns it.
fn one_of<'v>(
    path: &str,
    value: &'v Value,
    allowed: &'static [&'static str],
) -> Result<&'v str, JobError> {
    let value = string(path, value)?;
    if allowed.contains(&value) {
        Ok(value)
    } else {
        Err(JobError::invalid(
            path,
            Rule::NotOneOf {
                value: Quoted::new(value),
                allowed,
            },
        ))
    }
}

/// Counts UTF-16 code units. Graph's limits are in "characters" without saying which unit
/// (notes/graph-api.md), and a platform that counts UTF-16 units — as the simulator does —
/// refuses 1,999 emoji that a count of code points lets through: counting units is the
/// conservative choice, the one that never lets a doomed job reach Graph. JSON Schema's
/// `maxLength` counts code points, so for text outside the Basic Multilingual Plane the schema
/// is the looser check (tests/job_contract.rs pins down that one difference).
fn max_chars(path: &str, value: &str, limit: usize) -> Result<(), JobError> {
    // Most texts are far below the limit in bytes, and a string never has more UTF-16 units
    // than UTF-8 bytes.
    if value.len() <= limit {
        return Ok(());
    }
    let units = value.encode_utf16().count();
    if units > limit {
        let chars = value.chars().count();
        return Err(JobError::invalid(
            path,
            Rule::TooLong {
                units,
                chars,
                limit,
            },
        ));
    }
    Ok(())
}
