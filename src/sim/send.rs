//! The Send API request as the simulator understands it: decoding an operation's body (a url-encoded
//! form whose nested values are JSON strings, or a JSON object for single sends) and validating it
//! the way the platform documents.
//!
//! This is the simulator's own reading of the platform's rules, written from the documentation and
//! deliberately independent of pagerelay's validator, so that the two can disagree and a test can
//! notice. It owns decoding and the rules; it does not authenticate, rate-limit or record.
//!
//! Rules enforced (every failure is code 100 and fails only its own operation):
//!
//! - `recipient`: a JSON object with exactly one of `id`, `user_ref`, `comment_id`, `post_id`,
//!   `phone_number`, `notification_messages_token`, `one_time_notif_token`, whose value is a
//!   non-empty string (or a number, for `id`).
//! - exactly one of `message` and `sender_action`; both → subcode 2018014. `sender_action` in
//!   `typing_on`, `typing_off`, `mark_seen`, `react`, `unreact`.
//! - with a `message`: `messaging_type` required, in `RESPONSE`, `UPDATE`, `MESSAGE_TAG`, `UTILITY`;
//!   `MESSAGE_TAG` requires `tag` in `ACCOUNT_UPDATE`, `CONFIRMED_EVENT_UPDATE`,
//!   `CUSTOMER_FEEDBACK`, `HUMAN_AGENT`, `POST_PURCHASE_UPDATE`. A `tag` with another messaging type
//!   is ignored, not refused (the documentation does not say it is refused).
//! - `message` is an object with exactly one of `text` and `attachment`; neither (or empty text) →
//!   subcode 2018034. `text` must be fewer than 2000 characters, counted in UTF-16 code units: the
//!   platform does not define its unit, and the simulator takes the stricter plausible one, so an
//!   emoji counts twice. `metadata` fewer than 1000 (same unit). `quick_replies` an array of at most
//!   13. `attachment.type` in `audio`, `file`, `image`, `template`, `video`.
//! - `notification_type`, when present, in `REGULAR`, `SILENT_PUSH`, `NO_PUSH`.
//!
//! Not modelled: PHP-style bracketed form keys (`recipient[id]=…`), attachment size and URL fetches,
//! quick reply field rules, the 24-hour window (except through a reserved recipient).

use serde_json::{Map, Value};

use super::error::GraphError;

/// The Send API fields of one call, auth fields removed.
pub(crate) type Fields = Map<String, Value>;

/// A decoded call: its Send API fields and the auth fields it carried, if any.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub fields: Fields,
    pub access_token: Option<String>,
    pub appsecret_proof: Option<String>,
}

/// Form keys whose values are JSON documents on the wire.
const JSON_FIELDS: [&str; 2] = ["recipient", "message"];

/// Decodes a url-encoded form body. `recipient` and `message` are parsed as JSON; a value that does
/// not parse stays a string, which validation then refuses with a useful message.
pub(crate) fn decode_form(body: &[u8]) -> Decoded {
    let mut decoded = Decoded::default();
    for (key, value) in form_urlencoded::parse(body) {
        match key.as_ref() {
            "access_token" => decoded.access_token = Some(value.into_owned()),
            "appsecret_proof" => decoded.appsecret_proof = Some(value.into_owned()),
            k => {
                let parsed = if JSON_FIELDS.contains(&k) {
                    serde_json::from_str(&value)
                        .unwrap_or_else(|_| Value::String(value.into_owned()))
                } else {
                    Value::String(value.into_owned())
                };
                decoded.fields.insert(key.into_owned(), parsed);
            }
        }
    }
    decoded
}

/// Decodes a JSON body (single sends). Nested values may also arrive as JSON strings, as some
/// clients send them; those are parsed like form values.
pub(crate) fn decode_json(mut object: Map<String, Value>) -> Decoded {
    let mut take_string = |key: &str| match object.remove(key) {
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
        None => None,
    };
    let access_token = take_string("access_token");
    let appsecret_proof = take_string("appsecret_proof");
    for key in JSON_FIELDS {
        if let Some(Value::String(s)) = object.get(key)
            && let Ok(parsed) = serde_json::from_str::<Value>(s)
        {
            object.insert(key.to_owned(), parsed);
        }
    }
    Decoded {
        fields: object,
        access_token,
        appsecret_proof,
    }
}

/// How the recipient was addressed; decides whether the reply carries a `recipient_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecipientKind {
    /// A PSID: the reply echoes it.
    Id,
    /// `user_ref` or `phone_number`: the platform omits `recipient_id`.
    Anonymous,
    /// Any other key: the reply carries the PSID the platform resolved (the simulator makes one up).
    Resolved,
}

/// What the executor needs to know about a valid call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Valid {
    pub recipient_kind: RecipientKind,
    /// The recipient's value as a string (the PSID for `id`).
    pub recipient_value: String,
    /// A sender action rather than a message: the reply has no `message_id`.
    pub sender_action: bool,
}

const RECIPIENT_KEYS: [&str; 7] = [
    "id",
    "user_ref",
    "comment_id",
    "post_id",
    "phone_number",
    "notification_messages_token",
    "one_time_notif_token",
];
const MESSAGING_TYPES: [&str; 4] = ["RESPONSE", "UPDATE", "MESSAGE_TAG", "UTILITY"];
const TAGS: [&str; 5] = [
    "ACCOUNT_UPDATE",
    "CONFIRMED_EVENT_UPDATE",
    "CUSTOMER_FEEDBACK",
    "HUMAN_AGENT",
    "POST_PURCHASE_UPDATE",
];
const SENDER_ACTIONS: [&str; 5] = ["typing_on", "typing_off", "mark_seen", "react", "unreact"];
const ATTACHMENT_TYPES: [&str; 5] = ["audio", "file", "image", "template", "video"];
const NOTIFICATION_TYPES: [&str; 3] = ["REGULAR", "SILENT_PUSH", "NO_PUSH"];
const MAX_TEXT: usize = 2000;
const MAX_METADATA: usize = 1000;
const MAX_QUICK_REPLIES: usize = 13;

/// Whether the call is an audio or video send, which the media ceiling also counts. Looked at before
/// validation (the limiter runs first), so it reads leniently.
pub(crate) fn is_media(fields: &Fields) -> bool {
    let kind = fields
        .get("message")
        .and_then(|m| m.get("attachment"))
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str);
    matches!(kind, Some("audio" | "video"))
}

/// Applies the Send API rules listed in the module docs.
pub(crate) fn validate(fields: &Fields) -> Result<Valid, GraphError> {
    let (recipient_kind, recipient_value) = validate_recipient(fields.get("recipient"))?;
    let message = fields.get("message");
    let sender_action = fields.get("sender_action");
    match (message, sender_action) {
        (Some(_), Some(_)) => return Err(GraphError::message_with_sender_action()),
        (None, None) => {
            return Err(GraphError::param(
                "(#100) Must send either message or sender_action",
            ));
        }
        (None, Some(action)) => {
            one_of("sender_action", action, &SENDER_ACTIONS)?;
            return Ok(Valid {
                recipient_kind,
                recipient_value,
                sender_action: true,
            });
        }
        (Some(message), None) => validate_message(fields, message)?,
    }
    if let Some(kind) = fields.get("notification_type") {
        one_of("notification_type", kind, &NOTIFICATION_TYPES)?;
    }
    Ok(Valid {
        recipient_kind,
        recipient_value,
        sender_action: false,
    })
}

fn validate_recipient(recipient: Option<&Value>) -> Result<(RecipientKind, String), GraphError> {
    let Some(recipient) = recipient else {
        return Err(GraphError::param(
            "(#100) The parameter recipient is required",
        ));
    };
    let Some(object) = recipient.as_object() else {
        return Err(GraphError::param(
            "(#100) Param recipient must be a JSON object",
        ));
    };
    let mut keys = object.keys();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(GraphError::param(format!(
            "(#100) Param recipient must have exactly one of {}",
            RECIPIENT_KEYS.join(", ")
        )));
    };
    if !RECIPIENT_KEYS.contains(&key.as_str()) {
        return Err(GraphError::param(format!(
            "(#100) Param recipient has an unknown key {key}; expected one of {}",
            RECIPIENT_KEYS.join(", ")
        )));
    }
    let value = match &object[key] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) if key == "id" => n.to_string(),
        _ => {
            return Err(GraphError::param(format!(
                "(#100) Param recipient[{key}] must be a non-empty string"
            )));
        }
    };
    let kind = match key.as_str() {
        "id" => RecipientKind::Id,
        "user_ref" | "phone_number" => RecipientKind::Anonymous,
        _ => RecipientKind::Resolved,
    };
    Ok((kind, value))
}

fn validate_message(fields: &Fields, message: &Value) -> Result<(), GraphError> {
    let Some(messaging_type) = fields.get("messaging_type") else {
        return Err(GraphError::param(
            "(#100) The parameter messaging_type is required",
        ));
    };
    one_of("messaging_type", messaging_type, &MESSAGING_TYPES)?;
    if messaging_type.as_str() == Some("MESSAGE_TAG") {
        let Some(tag) = fields.get("tag") else {
            return Err(GraphError::param(
                "(#100) The parameter tag is required when messaging_type is MESSAGE_TAG",
            ));
        };
        one_of("tag", tag, &TAGS)?;
    }
    let Some(message) = message.as_object() else {
        return Err(GraphError::param(
            "(#100) Param message must be a JSON object",
        ));
    };
    match (message.get("text"), message.get("attachment")) {
        (None, None) => return Err(GraphError::empty_message()),
        (Some(_), Some(_)) => {
            return Err(GraphError::param(
                "(#100) Only one of message[text] and message[attachment] can be specified",
            ));
        }
        (Some(text), None) => {
            let Some(text) = text.as_str() else {
                return Err(GraphError::param(
                    "(#100) Param message[text] must be a string",
                ));
            };
            if text.is_empty() {
                return Err(GraphError::empty_message());
            }
            max_len("message[text]", text, MAX_TEXT)?;
        }
        (None, Some(attachment)) => {
            let kind = attachment.get("type").and_then(Value::as_str);
            if !kind.is_some_and(|k| ATTACHMENT_TYPES.contains(&k)) {
                return Err(GraphError::param(format!(
                    "(#100) Param message[attachment][type] must be one of {{{}}}",
                    ATTACHMENT_TYPES.join(", ")
                )));
            }
        }
    }
    if let Some(metadata) = message.get("metadata") {
        let Some(metadata) = metadata.as_str() else {
            return Err(GraphError::param(
                "(#100) Param message[metadata] must be a string",
            ));
        };
        max_len("message[metadata]", metadata, MAX_METADATA)?;
    }
    if let Some(replies) = message.get("quick_replies") {
        match replies.as_array() {
            Some(list) if list.len() <= MAX_QUICK_REPLIES => {}
            Some(_) => {
                return Err(GraphError::param(format!(
                    "(#100) Param message[quick_replies] must have at most {MAX_QUICK_REPLIES} elements"
                )));
            }
            None => {
                return Err(GraphError::param(
                    "(#100) Param message[quick_replies] must be an array",
                ));
            }
        }
    }
    Ok(())
}

fn one_of(name: &str, value: &Value, allowed: &[&str]) -> Result<(), GraphError> {
    match value.as_str() {
        Some(v) if allowed.contains(&v) => Ok(()),
        _ => Err(GraphError::param(format!(
            "(#100) Param {name} must be one of {{{}}} - got {value}",
            allowed.join(", ")
        ))),
    }
}

/// "Fewer than `limit` characters", in UTF-16 code units (see the module docs).
fn max_len(name: &str, value: &str, limit: usize) -> Result<(), GraphError> {
    if value.encode_utf16().count() >= limit {
        return Err(GraphError::param(format!(
            "(#100) Length of param {name} must be less than {limit} characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Fields {
        value.as_object().unwrap().clone()
    }

    fn code_of(value: Value) -> (u32, Option<u32>) {
        let e = validate(&fields(value)).unwrap_err();
        (e.code, e.subcode)
    }

    #[test]
    fn form_bodies_decode_nested_json_and_split_out_auth() {
        let body = "recipient=%7B%22id%22%3A%2212%22%7D&messaging_type=UPDATE&message=%7B%22text%22%3A%22hi%22%7D&access_token=T&appsecret_proof=P";
        let decoded = decode_form(body.as_bytes());
        assert_eq!(decoded.access_token.as_deref(), Some("T"));
        assert_eq!(decoded.appsecret_proof.as_deref(), Some("P"));
        assert_eq!(
            Value::Object(decoded.fields.clone()),
            json!({"recipient":{"id":"12"},"messaging_type":"UPDATE","message":{"text":"hi"}})
        );
        let valid = validate(&decoded.fields).unwrap();
        assert_eq!(valid.recipient_kind, RecipientKind::Id);
        assert_eq!(valid.recipient_value, "12");
    }

    #[test]
    fn json_bodies_accept_stringified_nested_values() {
        let object = fields(
            json!({"recipient":"{\"user_ref\":\"u\"}","messaging_type":"RESPONSE",
            "message":{"text":"x"},"access_token":"T"}),
        );
        let decoded = decode_json(object);
        assert_eq!(decoded.access_token.as_deref(), Some("T"));
        let valid = validate(&decoded.fields).unwrap();
        assert_eq!(valid.recipient_kind, RecipientKind::Anonymous);
    }

    #[test]
    fn each_rule_is_enforced() {
        let ok = json!({"recipient":{"id":"1"},"messaging_type":"UPDATE","message":{"text":"hi"}});
        assert!(validate(&fields(ok)).is_ok());
        // recipient
        assert_eq!(
            code_of(json!({"messaging_type":"UPDATE","message":{"text":"hi"}})),
            (100, None)
        );
        assert_eq!(
            code_of(json!({"recipient":"1","messaging_type":"UPDATE","message":{"text":"hi"}})),
            (100, None)
        );
        assert_eq!(
            code_of(
                json!({"recipient":{"id":"1","user_ref":"u"},"messaging_type":"UPDATE","message":{"text":"hi"}})
            ),
            (100, None)
        );
        assert_eq!(
            code_of(
                json!({"recipient":{"psid":"1"},"messaging_type":"UPDATE","message":{"text":"hi"}})
            ),
            (100, None)
        );
        assert_eq!(
            code_of(json!({"recipient":{},"messaging_type":"UPDATE","message":{"text":"hi"}})),
            (100, None)
        );
        // message vs sender_action
        assert_eq!(
            code_of(
                json!({"recipient":{"id":"1"},"messaging_type":"UPDATE","message":{"text":"hi"},"sender_action":"typing_on"})
            ),
            (100, Some(2_018_014))
        );
        assert_eq!(code_of(json!({"recipient":{"id":"1"}})), (100, None));
        assert_eq!(
            code_of(json!({"recipient":{"id":"1"},"sender_action":"dance"})),
            (100, None)
        );
        assert!(
            validate(&fields(
                json!({"recipient":{"id":"1"},"sender_action":"mark_seen"})
            ))
            .unwrap()
            .sender_action
        );
        // messaging_type and tag
        assert_eq!(
            code_of(json!({"recipient":{"id":"1"},"message":{"text":"hi"}})),
            (100, None)
        );
        assert_eq!(
            code_of(
                json!({"recipient":{"id":"1"},"messaging_type":"PROMO","message":{"text":"hi"}})
            ),
            (100, None)
        );
        assert_eq!(
            code_of(
                json!({"recipient":{"id":"1"},"messaging_type":"MESSAGE_TAG","message":{"text":"hi"}})
            ),
            (100, None)
        );
        assert_eq!(
            code_of(
                json!({"recipient":{"id":"1"},"messaging_type":"MESSAGE_TAG","tag":"SALE","message":{"text":"hi"}})
            ),
            (100, None)
        );
        assert!(validate(&fields(json!({"recipient":{"id":"1"},"messaging_type":"MESSAGE_TAG","tag":"HUMAN_AGENT","message":{"text":"hi"}}))).is_ok());
        // message content
        assert_eq!(
            code_of(json!({"recipient":{"id":"1"},"messaging_type":"UPDATE","message":{}})),
            (100, Some(2_018_034))
        );
        assert_eq!(
            code_of(
                json!({"recipient":{"id":"1"},"messaging_type":"UPDATE","message":{"text":""}})
            ),
            (100, Some(2_018_034))
        );
        assert_eq!(
            code_of(
                json!({"recipient":{"id":"1"},"messaging_type":"UPDATE","message":{"text":"a","attachment":{"type":"image"}}})
            ),
            (100, None)
        );
        assert_eq!(
            code_of(
                json!({"recipient":{"id":"1"},"messaging_type":"UPDATE","message":{"attachment":{"type":"gif"}}})
            ),
            (100, None)
        );
        assert_eq!(
            code_of(
                json!({"recipient":{"id":"1"},"messaging_type":"UPDATE","message":{"text":"hi"},"notification_type":"LOUD"})
            ),
            (100, None)
        );
        let replies: Vec<Value> = (0..14)
            .map(|i| json!({"content_type":"text","title":i.to_string()}))
            .collect();
        assert_eq!(
            code_of(
                json!({"recipient":{"id":"1"},"messaging_type":"UPDATE","message":{"text":"hi","quick_replies":replies}})
            ),
            (100, None)
        );
        assert_eq!(
            code_of(
                json!({"recipient":{"id":"1"},"messaging_type":"UPDATE","message":{"text":"hi","metadata":"m".repeat(1000)}})
            ),
            (100, None)
        );
    }

    #[test]
    fn text_length_counts_utf16_units() {
        let send = |text: String| {
            validate(&fields(
                json!({"recipient":{"id":"1"},"messaging_type":"UPDATE","message":{"text":text}}),
            ))
        };
        assert!(send("a".repeat(1999)).is_ok());
        assert_eq!(send("a".repeat(2000)).unwrap_err().code, 100);
        // 1000 emoji are 1000 chars but 2000 UTF-16 units.
        assert!(send("😀".repeat(999)).is_ok());
        assert_eq!(send("😀".repeat(1000)).unwrap_err().code, 100);
    }

    #[test]
    fn media_is_audio_or_video() {
        let with = |kind: &str| fields(json!({"message":{"attachment":{"type":kind}}}));
        assert!(is_media(&with("video")));
        assert!(is_media(&with("audio")));
        assert!(!is_media(&with("image")));
        assert!(!is_media(&fields(json!({"message":{"text":"x"}}))));
    }
}
