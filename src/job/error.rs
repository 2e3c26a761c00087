//! Why a job was refused: [`JobError`] and the [`Rule`] a field broke.
//!
//! Owns the wording of every refusal. Each one renders as a single line that starts with the field
//! path (`message.text: 2001 characters, limit is 1999`), because that line becomes the dead
//! letter's `x-pagerelay-error-message` and the verdict of `pagerelay validate`, and whoever reads
//! it has no job at hand to compare with. Values are quoted only when short and from fields that
//! cannot hold secrets or message content, and every quote is truncated ([`Quoted`]).
//!
//! It does not decide what is valid: the checks live in `job` (the pagerelay fields and the body
//! as a whole) and `job::rules` (the Send API fields).

use std::fmt;

use serde_json::Value;

/// Why a delivery could not become a [`Job`](super::Job). Every variant renders as one line that
/// names the field path first, then the rule; [`JobError::field`] returns the path alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The body is longer than [`MAX_JOB_BYTES`](super::MAX_JOB_BYTES).
    #[error("body: {size} bytes, limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The AMQP `content_type` property is set to something other than JSON.
    #[error("content_type: {found} is not application/json")]
    ContentType { found: Quoted },
    /// The body is not UTF-8.
    #[error("body: not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    /// The body is not JSON, or nests deeper than the parser allows.
    #[error("body: not JSON: {reason}")]
    Syntax { reason: String },
    /// The body is JSON but not an object.
    #[error("body: must be a JSON object, found {found}")]
    NotAnObject { found: JsonKind },
    /// A field of the job breaks a rule of the contract.
    #[error("{path}: {rule}")]
    Invalid { path: String, rule: Rule },
}

// ===== impl JobError =====

impl JobError {
    /// The field the error is about: `body`, `content_type`, `message_id` or a path into the job
    /// such as `message.attachment.type`. Stable enough to be a metric label.
    pub fn field(&self) -> &str {
        match self {
            JobError::TooLarge { .. }
            | JobError::NotUtf8 { .. }
            | JobError::Syntax { .. }
            | JobError::NotAnObject { .. } => "body",
            JobError::ContentType { .. } => "content_type",
            JobError::Invalid { path, .. } => path,
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, rule: Rule) -> Self {
        JobError::Invalid {
            path: path.into(),
            rule,
        }
    }

    pub(crate) fn wrong_type(
        path: impl Into<String>,
        expected: &'static str,
        found: &Value,
    ) -> Self {
        JobError::invalid(
            path,
            Rule::WrongType {
                expected,
                found: JsonKind::of(found),
            },
        )
    }
}

/// The rule a field broke. The `Display` form is the part of the message after `path: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// A field the contract always requires is absent.
    Required,
    /// A field is required because of another one; the text says which.
    RequiredWhen(&'static str),
    /// A field is present that only makes sense with another one; the text says which.
    OnlyWhen(&'static str),
    /// A field has the wrong JSON type.
    WrongType {
        expected: &'static str,
        found: JsonKind,
    },
    /// A string is empty.
    Empty,
    /// A string is longer than the limit. `units` counts UTF-16 code units, the stricter of the
    /// two units Graph could mean (its documents say "characters" and leave the unit open), so a
    /// character outside the Basic Multilingual Plane — most emoji — counts twice; `chars` counts
    /// Unicode scalar values, for the message.
    TooLong {
        units: usize,
        chars: usize,
        limit: usize,
    },
    /// An array has more items than the limit.
    TooMany { count: usize, limit: usize },
    /// A string is not one of the allowed values.
    NotOneOf {
        value: Quoted,
        allowed: &'static [&'static str],
    },
    /// Exactly one of several fields must be present; `found` lists the ones that are.
    ExactlyOne {
        of: &'static [&'static str],
        found: Vec<&'static str>,
    },
    /// An object has a key outside the closed set it allows.
    UnknownKey {
        key: Quoted,
        allowed: &'static [&'static str],
    },
    /// A Page id that is not 1 to 64 ASCII digits.
    NotAPageId { value: Quoted },
    /// A job id with a character outside printable ASCII; `position` counts from 1.
    NotPrintableAscii { position: usize },
    /// A timestamp that is not an RFC 3339 date-time.
    NotRfc3339 { value: Quoted },
    /// The body's Page id and the routing key name different Pages.
    RoutingKeyMismatch {
        page_id: Quoted,
        routing_key: Quoted,
    },
    /// A Page access token or its proof travels in the job.
    Credential,
}

// ===== impl Rule =====

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Required => f.write_str("required"),
            Rule::RequiredWhen(why) => write!(f, "required when {why}"),
            Rule::OnlyWhen(why) => write!(f, "allowed only when {why}"),
            Rule::WrongType { expected, found } => write!(f, "must be {expected}, found {found}"),
            Rule::Empty => f.write_str("must not be empty"),
            Rule::TooLong {
                units,
                chars,
                limit,
            } if units == chars => write!(f, "{chars} characters, limit is {limit}"),
            Rule::TooLong {
                units,
                chars,
                limit,
            } => write!(
                f,
                "{units} UTF-16 code units ({chars} characters; emoji and other characters \
                 outside the Basic Multilingual Plane count twice), limit is {limit}"
            ),
            Rule::TooMany { count, limit } => write!(f, "{count} items, limit is {limit}"),
            Rule::NotOneOf { value, allowed } => {
                write!(f, "{value} is not one of {}", allowed.join(", "))
            }
            Rule::ExactlyOne { of, found } => {
                write!(f, "exactly one of {} is required, found ", Alternatives(of))?;
                if found.is_empty() {
                    f.write_str("none")
                } else {
                    f.write_str(&found.join(" and "))
                }
            }
            Rule::UnknownKey { key, allowed } => {
                write!(
                    f,
                    "unknown key {key}, expected one of {}",
                    allowed.join(", ")
                )
            }
            Rule::NotAPageId { value } => write!(f, "{value} is not 1 to 64 ASCII digits"),
            Rule::NotPrintableAscii { position } => write!(
                f,
                "character {position} is not printable ASCII (space to '~')"
            ),
            Rule::NotRfc3339 { value } => write!(
                f,
                "{value} is not an RFC 3339 date-time like 2026-11-22T10:00:00Z"
            ),
            Rule::RoutingKeyMismatch {
                page_id,
                routing_key,
            } => write!(f, "{page_id} does not match the routing key {routing_key}"),
            Rule::Credential => f.write_str(
                "Page access tokens never travel in jobs; they live in pagerelay's configuration",
            ),
        }
    }
}

/// `a, b or c`.
struct Alternatives<'a>(&'a [&'a str]);

impl fmt::Display for Alternatives<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => Ok(()),
            [only] => f.write_str(only),
            [init @ .., last] => write!(f, "{} or {last}", init.join(", ")),
        }
    }
}

/// The JSON type of a value, worded for messages ("found an array").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

// ===== impl JsonKind =====

impl JsonKind {
    pub fn of(value: &Value) -> Self {
        match value {
            Value::Null => JsonKind::Null,
            Value::Bool(_) => JsonKind::Bool,
            Value::Number(_) => JsonKind::Number,
            Value::String(_) => JsonKind::String,
            Value::Array(_) => JsonKind::Array,
            Value::Object(_) => JsonKind::Object,
        }
    }
}

impl fmt::Display for JsonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsonKind::Null => "null",
            JsonKind::Bool => "a boolean",
            JsonKind::Number => "a number",
            JsonKind::String => "a string",
            JsonKind::Array => "an array",
            JsonKind::Object => "an object",
        })
    }
}

/// A value quoted for an error message: double quotes, control and non-ASCII characters escaped,
/// and cut after [`Quoted::MAX_CHARS`] characters with `…`, so a hostile or careless publisher
/// cannot make one dead-letter header carry a whole payload or break a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted(String);

// ===== impl Quoted =====

impl Quoted {
    /// How many characters of the value are kept.
    pub const MAX_CHARS: usize = 40;

    pub fn new(value: &str) -> Self {
        let mut quoted = String::with_capacity(value.len().min(Self::MAX_CHARS) + 4);
        quoted.push('"');
        for c in value.chars().take(Self::MAX_CHARS) {
            if c.is_ascii_graphic() || c == ' ' {
                if c == '"' || c == '\\' {
                    quoted.push('\\');
                }
                quoted.push(c);
            } else {
                quoted.extend(c.escape_default());
            }
        }
        if value.chars().nth(Self::MAX_CHARS).is_some() {
            quoted.push('…');
        }
        quoted.push('"');
        Quoted(quoted)
    }

    /// The quoted text, quotes included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_escapes_and_truncates() {
        assert_eq!(Quoted::new("UPDATE").as_str(), r#""UPDATE""#);
        assert_eq!(Quoted::new("a\"b\\c").as_str(), r#""a\"b\\c""#);
        assert_eq!(Quoted::new("a\nb\u{1b}").as_str(), r#""a\nb\u{1b}""#);
        assert_eq!(Quoted::new("é").as_str(), r#""\u{e9}""#);
        let long = "x".repeat(1000);
        let quoted = Quoted::new(&long);
        assert_eq!(quoted.as_str(), format!("\"{}…\"", "x".repeat(40)));
        let exact = "y".repeat(Quoted::MAX_CHARS);
        assert_eq!(Quoted::new(&exact).as_str(), format!("\"{exact}\""));
    }

    #[test]
    fn exactly_one_lists_the_alternatives_and_what_was_found() {
        let none = Rule::ExactlyOne {
            of: &["text", "attachment"],
            found: vec![],
        };
        assert_eq!(
            none.to_string(),
            "exactly one of text or attachment is required, found none"
        );
        let both = Rule::ExactlyOne {
            of: &["a", "b", "c"],
            found: vec!["a", "c"],
        };
        assert_eq!(
            both.to_string(),
            "exactly one of a, b or c is required, found a and c"
        );
    }

    #[test]
    fn field_names_the_path_for_every_variant() {
        let cases = [
            (
                JobError::TooLarge {
                    size: 300_000,
                    limit: 262_144,
                },
                "body",
            ),
            (
                JobError::ContentType {
                    found: Quoted::new("text/plain"),
                },
                "content_type",
            ),
            (JobError::NotUtf8 { offset: 3 }, "body"),
            (
                JobError::Syntax {
                    reason: "EOF".into(),
                },
                "body",
            ),
            (
                JobError::NotAnObject {
                    found: JsonKind::Array,
                },
                "body",
            ),
            (
                JobError::invalid("message.text", Rule::Empty),
                "message.text",
            ),
        ];
        for (error, field) in cases {
            assert_eq!(error.field(), field);
            assert!(
                error.to_string().starts_with(&format!("{field}: ")),
                "{error}"
            );
        }
    }
}
