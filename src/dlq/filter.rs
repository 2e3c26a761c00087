//! Which dead letters a `peek` shows or a `replay` moves: by Page, reason, error code, age and job
//! id. Parsing of the command-line values lives here too, so that the rules are tested once.
//!
//! Values of one kind are alternatives (`--page A --page B`: either Page); kinds combine
//! (`--page A --reason token_invalid`: both must hold). Ages are measured from the dead-lettering
//! time; a letter without one matches no age filter, because its age cannot be known.
//!
//! It does not read the queue or decide whether a matching letter may be replayed (see `guard`).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::letter::Letter;
use crate::amqp::headers::DeadLetterReason;

/// Why a filter value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error(
        "unknown reason {0:?}; expected one of {reasons}, `unknown`, or `broker:<reason>` \
         (e.g. broker:delivery_limit)",
        reasons = reason_names()
    )]
    Reason(String),
    #[error("bad error code {0:?}; expected CODE or CODE/SUBCODE, e.g. 190 or 100/2018001")]
    Code(String),
    #[error("bad duration {0:?}: {1}; e.g. 90s, 15m, 2h, 3d")]
    Duration(String, String),
    #[error("a Page id is digits, got {0:?}")]
    Page(String),
}

fn reason_names() -> String {
    DeadLetterReason::ALL
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `--reason` value: a pagerelay reason, `unknown`, or `broker:<reason>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonName(String);

impl ReasonName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ReasonName {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let known = DeadLetterReason::parse(s).is_some()
            || s == "unknown"
            || s.strip_prefix("broker:").is_some_and(|r| {
                !r.is_empty() && r.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
        if known {
            Ok(ReasonName(s.to_string()))
        } else {
            Err(FilterError::Reason(s.to_string()))
        }
    }
}

/// A `--code` value: a Graph error code, optionally with its subcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeFilter {
    pub code: i64,
    /// When absent, any subcode (or none) matches.
    pub subcode: Option<i64>,
}

impl FromStr for CodeFilter {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || FilterError::Code(s.to_string());
        let (code, subcode) = match s.trim().split_once('/') {
            Some((code, subcode)) => (code, Some(subcode.parse().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        Ok(CodeFilter {
            code: code.parse().map_err(|_| bad())?,
            subcode,
        })
    }
}

/// Parses an age such as `90s`, `15m`, `2h` or `3d`.
pub fn parse_age(s: &str) -> Result<Duration, FilterError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| FilterError::Duration(s.to_string(), e.to_string()))
}

/// Parses a `--page` value.
pub fn parse_page(s: &str) -> Result<String, FilterError> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_string())
    } else {
        Err(FilterError::Page(s.to_string()))
    }
}

/// What to select. The default selects everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub pages: Vec<String>,
    pub reasons: Vec<ReasonName>,
    pub codes: Vec<CodeFilter>,
    /// Dead-lettered at least this long ago.
    pub older_than: Option<Duration>,
    /// Dead-lettered at most this long ago.
    pub newer_than: Option<Duration>,
    /// The body's `job_id` or the `message_id`, of the letter or of a job in its bundle.
    pub job_ids: Vec<String>,
}

impl Filter {
    /// True when the filter selects every letter.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
            && self.reasons.is_empty()
            && self.codes.is_empty()
            && self.older_than.is_none()
            && self.newer_than.is_none()
            && self.job_ids.is_empty()
    }

    /// Whether `letter` is selected, with ages measured at `now`.
    pub fn matches(&self, letter: &Letter, now: DateTime<Utc>) -> bool {
        let page = letter.target_routing_key();
        let reason = letter.reason.label();
        let age = letter
            .dead_lettered_at
            .map(|at| (now - at).to_std().unwrap_or(Duration::ZERO));
        (self.pages.is_empty() || self.pages.iter().any(|p| p == page))
            && (self.reasons.is_empty() || self.reasons.iter().any(|r| r.as_str() == reason))
            && (self.codes.is_empty()
                || self.codes.iter().any(|c| {
                    letter.error.code == Some(c.code)
                        && c.subcode.is_none_or(|s| letter.error.subcode == Some(s))
                }))
            && self
                .older_than
                .is_none_or(|min| age.is_some_and(|age| age >= min))
            && self
                .newer_than
                .is_none_or(|max| age.is_some_and(|age| age <= max))
            && (self.job_ids.is_empty()
                || std::iter::once(letter)
                    .chain(letter.bundled())
                    .any(|job| self.job_ids.iter().any(|id| has_id(job, id))))
    }
}

fn has_id(letter: &Letter, id: &str) -> bool {
    letter.job_id.as_deref() == Some(id) || letter.message_id.as_deref() == Some(id)
}

#[cfg(test)]
mod tests {
    use super::super::letter::tests::{broker_letter, bundle_letter, pagerelay_letter};
    use super::*;
    use crate::amqp::headers::parse_time;

    #[test]
    fn reasons_are_checked_by_name() {
        for ok in [
            "token_invalid",
            "invalid",
            "unknown",
            "broker:delivery_limit",
        ] {
            assert_eq!(ok.parse::<ReasonName>().unwrap().as_str(), ok);
        }
        for bad in [
            "token-invalid",
            "broker:",
            "broker:Delivery",
            "",
            "TOKEN_INVALID",
        ] {
            let err = bad.parse::<ReasonName>().unwrap_err();
            assert!(err.to_string().contains("park_limit"), "{err}");
        }
    }

    #[test]
    fn codes_take_an_optional_subcode() {
        assert_eq!(
            "190".parse::<CodeFilter>(),
            Ok(CodeFilter {
                code: 190,
                subcode: None
            })
        );
        assert_eq!(
            " 100/2018001 ".parse::<CodeFilter>(),
            Ok(CodeFilter {
                code: 100,
                subcode: Some(2018001)
            })
        );
        for bad in ["", "abc", "190/", "/460", "1.5", "190/46x"] {
            assert_eq!(
                bad.parse::<CodeFilter>(),
                Err(FilterError::Code(bad.into()))
            );
        }
    }

    #[test]
    fn ages_and_pages_parse() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_age("1d 2h"), Ok(Duration::from_secs(93_600)));
        assert!(matches!(parse_age("soon"), Err(FilterError::Duration(..))));
        assert_eq!(parse_page(" 1001 "), Ok("1001".into()));
        assert_eq!(parse_page("10a1"), Err(FilterError::Page("10a1".into())));
    }

    #[test]
    fn an_empty_filter_selects_everything() {
        let filter = Filter::default();
        assert!(filter.is_empty());
        let now = Utc::now();
        assert!(filter.matches(&pagerelay_letter("invalid", "1", "a"), now));
        assert!(filter.matches(&broker_letter("2"), now));
    }

    #[test]
    fn kinds_combine_and_values_are_alternatives() {
        let now = parse_time("2026-11-22T12:00:00Z").unwrap();
        let a = pagerelay_letter("permanent", "1001", "j-a"); // 551, dead at 10:00
        let b = pagerelay_letter("token_invalid", "1002", "j-b");
        let filter = Filter {
            pages: vec!["1001".into(), "1002".into()],
            reasons: vec!["token_invalid".parse().unwrap()],
            ..Filter::default()
        };
        assert!(!filter.matches(&a, now));
        assert!(filter.matches(&b, now));

        let by_code = |s: &str| Filter {
            codes: vec![s.parse().unwrap()],
            ..Filter::default()
        };
        assert!(by_code("551").matches(&a, now));
        assert!(!by_code("551/1").matches(&a, now), "a subcode must agree");
        assert!(!by_code("190").matches(&a, now));

        let by_job = |s: &str| Filter {
            job_ids: vec![s.into()],
            ..Filter::default()
        };
        assert!(by_job("j-a").matches(&a, now));
        assert!(!by_job("j-b").matches(&a, now));
        // A bundle is found by any job in it, and only by those.
        let bundle = bundle_letter("1001", &["p-1", "p-2"], 0);
        assert!(by_job("p-2").matches(&bundle, now));
        assert!(!by_job("p-3").matches(&bundle, now));
        assert!(!by_job("p-2").matches(&bundle_letter("1001", &["p-1", "p-2"], 3), now));

        let broker = broker_letter("1003");
        let filter = Filter {
            reasons: vec!["broker:delivery_limit".parse().unwrap()],
            ..Filter::default()
        };
        assert!(filter.matches(&broker, now));
        assert!(!filter.matches(&a, now));
    }

    #[test]
    fn ages_count_from_the_dead_lettering() {
        let now = parse_time("2026-11-22T12:00:00Z").unwrap();
        let letter = pagerelay_letter("permanent", "1001", "j"); // dead at 10:00, 2 h ago
        let age = |older: Option<u64>, newer: Option<u64>| Filter {
            older_than: older.map(Duration::from_secs),
            newer_than: newer.map(Duration::from_secs),
            ..Filter::default()
        };
        assert!(age(Some(3600), None).matches(&letter, now));
        assert!(age(Some(7200), None).matches(&letter, now), "inclusive");
        assert!(!age(Some(7201), None).matches(&letter, now));
        assert!(age(None, Some(7200)).matches(&letter, now));
        assert!(!age(None, Some(3600)).matches(&letter, now));
        assert!(age(Some(3600), Some(10_800)).matches(&letter, now));

        let undated = Letter::new(b"{}".to_vec(), "1", lapin::BasicProperties::default());
        assert!(!age(Some(1), None).matches(&undated, now));
        assert!(!age(None, Some(1 << 40)).matches(&undated, now));
    }
}
