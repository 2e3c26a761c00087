//! Classification: what the result of one operation means for its job (DESIGN §3, "Error
//! classification").
//!
//! Owns the error table — Graph error code and subcode to [`Decision`] — and nothing else: one
//! function, [`classify`], with the table as one `match` whose arms follow the rows of the design
//! table. Labels for metrics and dead-letter headers live on the decision types, so a row and its
//! name cannot drift apart.
//!
//! It does not carry a decision out: backoff, cooldown lengths, parking and dead-lettering belong
//! to the pipeline, which also counts attempts (a [`RetryKind::Unknown`] retry only changes the
//! reason given when they run out).

use http::StatusCode;

use super::reply::{BatchFailure, GraphError, ItemResult};

/// The result of one operation, as [`BatchReply::outcomes`](super::BatchReply::outcomes) yields
/// it; the HTTP client builds `Outcome::Batch(&BatchFailure::Timeout)` and
/// `Outcome::Batch(&BatchFailure::Transport)` itself when no reply arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome<'a> {
    /// The operation's own entry in a decoded reply.
    Item(&'a ItemResult),
    /// The batch failed as a whole; the failure applies to this operation.
    Batch(&'a BatchFailure),
}

/// What to do with a job after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Graph accepted the message: ack the job.
    Delivered,
    /// The Page is over a rate limit: cool the Page down and park the job without spending an
    /// attempt. Calls made while throttled still count, so the whole Page stops.
    Throttle,
    /// Send again after a backoff, spending an attempt.
    Retry(RetryKind),
    /// Dead-letter the job now.
    DeadLetter(DeadReason),
    /// The token or the Page is broken: pause the Page, keep its jobs parked, alert.
    StopPage(StopReason),
}

/// Why a retry is worth trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryKind {
    /// A failure Graph documents as temporary, or one where nothing was executed.
    Transient,
    /// A Graph error code the table does not know. Retried like a transient failure, but a job
    /// that runs out of attempts on it is dead-lettered as `unknown_error`, so that new codes
    /// show up as such instead of hiding among `max_attempts`.
    Unknown,
}

/// Why a job is dead-lettered at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// Sending it again would fail again.
    Permanent,
    /// It may have been delivered (1/1357046): sending it again could duplicate it.
    Ambiguous,
}

/// Why a Page stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The Page token is invalid, expired or revoked (190, 102).
    TokenInvalid,
    /// The `appsecret_proof` does not match: the app secret is misconfigured (100 with
    /// "Invalid appsecret_proof").
    AppSecretInvalid,
    /// The Page may not send: blocked, restricted or messaging disabled (10/1893063, 368, 10904).
    PageBlocked,
}

/// Decides what `outcome` means for its job.
///
/// A Graph error code decides by itself whatever the HTTP status around it; only errors without
/// a code fall back to the status (5xx and unreadable replies retry, 429 throttles).
pub fn classify(outcome: Outcome<'_>) -> Decision {
    use Decision::*;
    match outcome {
        Outcome::Item(ItemResult::Success { .. }) => Delivered,
        // Not executed: nothing was sent.
        Outcome::Item(ItemResult::NotExecuted) => Retry(RetryKind::Transient),
        Outcome::Item(ItemResult::Error { status, error })
        | Outcome::Batch(BatchFailure::Rejected { status, error }) => match error.code {
            Some(code) => error_table(code, error),
            None => by_status(*status),
        },
        Outcome::Batch(BatchFailure::Http { status }) => by_status(*status),
        // The reply could not be matched to the operations, or never came: retry everything.
        Outcome::Batch(
            BatchFailure::Transport | BatchFailure::Timeout | BatchFailure::Malformed(_),
        ) => Retry(RetryKind::Transient),
    }
}

/// The design table, one arm per row or exception. Exceptions come before the row they carve out
/// of, because the first matching arm wins.
fn error_table(code: i64, error: &GraphError) -> Decision {
    use DeadReason::*;
    use Decision::*;
    use StopReason::*;
    match (code, error.subcode) {
        // Ambiguous: 1/1357046 — Graph's own example delivered every message of the batch.
        (1, Some(1357046)) => DeadLetter(Ambiguous),

        // Retry with backoff.
        (1 | 2 | 1200 | 2018321, _) => Retry(RetryKind::Transient),

        // Throttle, except the two 613 subcodes that are about one recipient, not the Page.
        (613, Some(2018338 | 1893016)) => DeadLetter(Permanent),
        (613 | 4 | 17 | 32 | 80001 | 80006 | 341, _) => Throttle,

        // Page-wide stop.
        (100, _) if is_appsecret_proof_error(error) => StopPage(AppSecretInvalid),
        (190 | 102, _) => StopPage(TokenInvalid),
        (10, Some(1893063)) | (368 | 10904, _) => StopPage(PageBlocked),

        // Dead-letter at once.
        (100, _) => DeadLetter(Permanent),
        (10, Some(2018278 | 2534022 | 2018065 | 2018108)) => DeadLetter(Permanent),
        (200 | 230 | 551 | 2022 | 2018300 | 10303 | 10900 | 10903, _) => DeadLetter(Permanent),

        _ => Retry(RetryKind::Unknown),
    }
}

/// A wrong proof comes back as an ordinary invalid-parameter error (100); only the message tells
/// it apart from a bad job, and treating it as one would dead-letter every job of every Page.
fn is_appsecret_proof_error(error: &GraphError) -> bool {
    const NEEDLE: &str = "invalid appsecret_proof";
    error.message.as_deref().is_some_and(|message| {
        message
            .as_bytes()
            .windows(NEEDLE.len())
            .any(|window| window.eq_ignore_ascii_case(NEEDLE.as_bytes()))
    })
}

/// For failures without a Graph error code.
fn by_status(status: StatusCode) -> Decision {
    if status == StatusCode::TOO_MANY_REQUESTS {
        Decision::Throttle
    } else if status.is_server_error() {
        Decision::Retry(RetryKind::Transient)
    } else {
        Decision::Retry(RetryKind::Unknown)
    }
}

// ===== labels =====

impl Decision {
    /// The decision as a stable metric label: `delivered`, `throttle`, `retry`, `dead_letter` or
    /// `stop_page`.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Delivered => "delivered",
            Decision::Throttle => "throttle",
            Decision::Retry(_) => "retry",
            Decision::DeadLetter(_) => "dead_letter",
            Decision::StopPage(_) => "stop_page",
        }
    }

    /// The label of the decision's reason, for decisions that have one.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Decision::Delivered | Decision::Throttle => None,
            Decision::Retry(kind) => Some(kind.as_str()),
            Decision::DeadLetter(reason) => Some(reason.as_str()),
            Decision::StopPage(reason) => Some(reason.as_str()),
        }
    }
}

impl RetryKind {
    /// `transient` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryKind::Transient => "transient",
            RetryKind::Unknown => "unknown",
        }
    }

    /// The dead-letter reason (`x-pagerelay-reason`) for a job whose last attempt ended in this
    /// kind of retry and that has no attempts left.
    pub fn exhausted_reason(self) -> &'static str {
        match self {
            RetryKind::Transient => "max_attempts",
            RetryKind::Unknown => "unknown_error",
        }
    }
}

impl DeadReason {
    /// The dead-letter reason (`x-pagerelay-reason`): `permanent` or `ambiguous`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Permanent => "permanent",
            DeadReason::Ambiguous => "ambiguous",
        }
    }
}

impl StopReason {
    /// `token_invalid`, `appsecret_invalid` or `page_blocked`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::TokenInvalid => "token_invalid",
            StopReason::AppSecretInvalid => "appsecret_invalid",
            StopReason::PageBlocked => "page_blocked",
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;
    use crate::graph::{
        BatchReply, BatchRequest, EncodedBody, MalformedReply, Operation, PageAuth,
    };
    use Decision::*;

    const PERMANENT: Decision = DeadLetter(DeadReason::Permanent);
    const TRANSIENT: Decision = Retry(RetryKind::Transient);
    const UNKNOWN: Decision = Retry(RetryKind::Unknown);

    fn graph_error(code: i64, subcode: Option<i64>, message: &str) -> GraphError {
        GraphError {
            code: Some(code),
            subcode,
            message: Some(message.to_owned()),
            ..GraphError::default()
        }
    }

    /// The decision for an entry of a 2xx batch reply carrying this error.
    fn item(code: i64, subcode: Option<i64>) -> Decision {
        item_with_message(code, subcode, "")
    }

    fn item_with_message(code: i64, subcode: Option<i64>, message: &str) -> Decision {
        classify(Outcome::Item(&ItemResult::Error {
            status: StatusCode::BAD_REQUEST,
            error: graph_error(code, subcode, message),
        }))
    }

    fn batch(failure: BatchFailure) -> Decision {
        classify(Outcome::Batch(&failure))
    }

    #[test]
    fn throttle_rows() {
        assert_eq!(item(613, None), Throttle, "613");
        assert_eq!(item(613, Some(1996)), Throttle, "613/1996");
        assert_eq!(item(613, Some(2534040)), Throttle, "613/2534040");
        assert_eq!(item(4, None), Throttle, "4");
        assert_eq!(item(17, None), Throttle, "17");
        assert_eq!(item(32, None), Throttle, "32");
        assert_eq!(item(80001, None), Throttle, "80001");
        assert_eq!(item(80006, None), Throttle, "80006");
        assert_eq!(item(341, None), Throttle, "341");
    }

    #[test]
    fn retry_rows() {
        assert_eq!(item(1, None), TRANSIENT, "1");
        assert_eq!(item(1, Some(99)), TRANSIENT, "1/99");
        assert_eq!(item(2, None), TRANSIENT, "2");
        assert_eq!(item(1200, None), TRANSIENT, "1200");
        assert_eq!(item(2018321, None), TRANSIENT, "2018321");
    }

    #[test]
    fn retry_rows_without_a_graph_error() {
        assert_eq!(
            classify(Outcome::Item(&ItemResult::NotExecuted)),
            TRANSIENT,
            "item null"
        );
        assert_eq!(
            batch(BatchFailure::Http {
                status: StatusCode::INTERNAL_SERVER_ERROR
            }),
            TRANSIENT,
            "outer 500"
        );
        assert_eq!(
            batch(BatchFailure::Http {
                status: StatusCode::BAD_GATEWAY
            }),
            TRANSIENT,
            "outer 502"
        );
        assert_eq!(batch(BatchFailure::Timeout), TRANSIENT, "timeout");
        assert_eq!(
            batch(BatchFailure::Transport),
            TRANSIENT,
            "connection error"
        );
        assert_eq!(
            batch(BatchFailure::Malformed(MalformedReply::NotJson {
                line: 1,
                column: 1
            })),
            TRANSIENT,
            "non-JSON reply"
        );
        assert_eq!(
            batch(BatchFailure::Malformed(MalformedReply::WrongLength {
                expected: 2,
                got: 1
            })),
            TRANSIENT,
            "short reply"
        );
    }

    #[test]
    fn permanent_rows() {
        assert_eq!(item(100, None), PERMANENT, "100");
        assert_eq!(item(100, Some(2018001)), PERMANENT, "100/2018001");
        assert_eq!(item(100, Some(2018014)), PERMANENT, "100/2018014");
        assert_eq!(item(100, Some(2018109)), PERMANENT, "100/2018109");
        assert_eq!(item(100, Some(33)), PERMANENT, "100/33");
        assert_eq!(item(10, Some(2018278)), PERMANENT, "10/2018278");
        assert_eq!(item(10, Some(2534022)), PERMANENT, "10/2534022");
        assert_eq!(item(10, Some(2018065)), PERMANENT, "10/2018065");
        assert_eq!(item(10, Some(2018108)), PERMANENT, "10/2018108");
        assert_eq!(item(200, None), PERMANENT, "200");
        assert_eq!(item(200, Some(1545041)), PERMANENT, "200/1545041");
        assert_eq!(item(230, None), PERMANENT, "230");
        assert_eq!(item(551, None), PERMANENT, "551");
        assert_eq!(item(2022, None), PERMANENT, "2022");
        assert_eq!(item(2018300, None), PERMANENT, "2018300");
        assert_eq!(item(10303, None), PERMANENT, "10303");
        assert_eq!(item(10900, None), PERMANENT, "10900");
        assert_eq!(item(10903, None), PERMANENT, "10903");
        assert_eq!(item(613, Some(2018338)), PERMANENT, "613/2018338");
        assert_eq!(item(613, Some(1893016)), PERMANENT, "613/1893016");
    }

    #[test]
    fn page_stop_rows() {
        let token = StopPage(StopReason::TokenInvalid);
        let blocked = StopPage(StopReason::PageBlocked);
        assert_eq!(item(190, None), token, "190");
        assert_eq!(item(190, Some(458)), token, "190/458");
        assert_eq!(item(190, Some(460)), token, "190/460");
        assert_eq!(item(190, Some(463)), token, "190/463");
        assert_eq!(item(190, Some(467)), token, "190/467");
        assert_eq!(item(190, Some(492)), token, "190/492");
        assert_eq!(item(102, None), token, "102");
        assert_eq!(item(10, Some(1893063)), blocked, "10/1893063");
        assert_eq!(item(368, None), blocked, "368");
        assert_eq!(item(10904, None), blocked, "10904");
        assert_eq!(
            item_with_message(
                100,
                None,
                "Invalid appsecret_proof provided in the API argument"
            ),
            StopPage(StopReason::AppSecretInvalid),
            "100 invalid appsecret_proof"
        );
        assert_eq!(
            item_with_message(100, None, "(#100) INVALID APPSECRET_PROOF"),
            StopPage(StopReason::AppSecretInvalid),
            "100 invalid appsecret_proof, any case"
        );
    }

    #[test]
    fn ambiguous_row() {
        assert_eq!(
            item(1, Some(1357046)),
            DeadLetter(DeadReason::Ambiguous),
            "1/1357046"
        );
    }

    #[test]
    fn unknown_codes_retry_flagged_unknown() {
        assert_eq!(item(999_999, None), UNKNOWN, "unlisted code");
        assert_eq!(item(10, None), UNKNOWN, "10 without a listed subcode");
        assert_eq!(
            item(10, Some(2018336)),
            UNKNOWN,
            "10 with an unlisted subcode"
        );
        assert_eq!(item(-1, None), UNKNOWN, "negative code");
    }

    #[test]
    fn errors_without_a_code_fall_back_to_the_status() {
        let without_code = |status| {
            classify(Outcome::Item(&ItemResult::Error {
                status,
                error: GraphError::default(),
            }))
        };
        assert_eq!(without_code(StatusCode::INTERNAL_SERVER_ERROR), TRANSIENT);
        assert_eq!(without_code(StatusCode::TOO_MANY_REQUESTS), Throttle);
        assert_eq!(without_code(StatusCode::BAD_REQUEST), UNKNOWN);
        assert_eq!(
            batch(BatchFailure::Http {
                status: StatusCode::TOO_MANY_REQUESTS
            }),
            Throttle
        );
        assert_eq!(
            batch(BatchFailure::Http {
                status: StatusCode::NOT_FOUND
            }),
            UNKNOWN
        );
    }

    #[test]
    fn the_code_decides_whatever_the_status() {
        // Graph sends code 1 and 2 errors with HTTP 500, and rate limits with 400 or 403.
        let with_status = |status, code| {
            classify(Outcome::Item(&ItemResult::Error {
                status,
                error: graph_error(code, None, ""),
            }))
        };
        assert_eq!(
            with_status(StatusCode::INTERNAL_SERVER_ERROR, 100),
            PERMANENT
        );
        assert_eq!(with_status(StatusCode::FORBIDDEN, 613), Throttle);
        assert_eq!(with_status(StatusCode::BAD_REQUEST, 2), TRANSIENT);
    }

    #[test]
    fn a_rejected_batch_is_classified_by_its_error() {
        let rejected = |code, subcode| {
            batch(BatchFailure::Rejected {
                status: StatusCode::BAD_REQUEST,
                error: graph_error(code, subcode, ""),
            })
        };
        assert_eq!(rejected(190, Some(463)), StopPage(StopReason::TokenInvalid));
        assert_eq!(rejected(613, None), Throttle);
        assert_eq!(rejected(1, None), TRANSIENT);
        assert_eq!(
            batch(BatchFailure::Rejected {
                status: StatusCode::BAD_REQUEST,
                error: graph_error(100, None, "Invalid appsecret_proof provided"),
            }),
            StopPage(StopReason::AppSecretInvalid)
        );
    }

    /// From the bytes on the wire to the decisions, for replies that fail the whole batch.
    #[test]
    fn undecodable_and_failed_replies_retry_every_operation() {
        let body = EncodedBody::new(&Map::from_iter([(
            "recipient".to_owned(),
            json!({"id": "1"}),
        )]));
        let auth = PageAuth::new("token".to_owned().into(), None);
        let request = BatchRequest::encode(&auth, &[Operation::send(&body); 3]).unwrap();
        let short: &[u8] = br#"[null, {"code": 200, "body": "{}"}]"#;
        for (status, reply) in [
            (StatusCode::OK, short),
            (StatusCode::OK, b"<html>upstream error</html>"),
            (StatusCode::SERVICE_UNAVAILABLE, b"Service Unavailable"),
        ] {
            let reply = BatchReply::decode(&request, status, &http::HeaderMap::new(), reply);
            let decisions: Vec<Decision> = reply.outcomes().map(classify).collect();
            assert_eq!(decisions, [TRANSIENT; 3], "{reply:?}");
        }
    }

    #[test]
    fn a_2xx_item_is_delivered() {
        let success = ItemResult::Success {
            status: StatusCode::OK,
            receipt: Default::default(),
        };
        assert_eq!(classify(Outcome::Item(&success)), Delivered);
    }

    #[test]
    fn labels_are_stable() {
        assert_eq!(Delivered.label(), "delivered");
        assert_eq!(Throttle.label(), "throttle");
        assert_eq!(TRANSIENT.label(), "retry");
        assert_eq!(PERMANENT.label(), "dead_letter");
        assert_eq!(StopPage(StopReason::PageBlocked).label(), "stop_page");

        assert_eq!(Delivered.reason(), None);
        assert_eq!(Throttle.reason(), None);
        assert_eq!(TRANSIENT.reason(), Some("transient"));
        assert_eq!(UNKNOWN.reason(), Some("unknown"));
        assert_eq!(PERMANENT.reason(), Some("permanent"));
        assert_eq!(
            DeadLetter(DeadReason::Ambiguous).reason(),
            Some("ambiguous")
        );
        assert_eq!(
            StopPage(StopReason::TokenInvalid).reason(),
            Some("token_invalid")
        );
        assert_eq!(
            StopPage(StopReason::AppSecretInvalid).reason(),
            Some("appsecret_invalid")
        );
        assert_eq!(
            StopPage(StopReason::PageBlocked).reason(),
            Some("page_blocked")
        );

        assert_eq!(RetryKind::Transient.exhausted_reason(), "max_attempts");
        assert_eq!(RetryKind::Unknown.exhausted_reason(), "unknown_error");
    }
}
