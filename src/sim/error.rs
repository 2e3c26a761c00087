//! The Graph error objects the simulator replies with, and the catalogue of the ones it uses.
//!
//! This module owns the wording, `type`, `code`, `error_subcode`, HTTP status and `is_transient` flag
//! of every error the simulator can produce, in one place, so that a reader can compare them with
//! the platform's documentation. Messages follow the platform's "(#code) text" style; where the
//! research notes could not verify the platform's exact wording, the constructor says so. It does
//! not decide *when* an error happens: validation, authentication, limits and faults do.

use std::borrow::Cow;

use serde::Serialize;

/// One Graph error, before it is given a trace id and rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GraphError {
    /// HTTP status of the reply (or of the batch item).
    pub status: u16,
    pub code: u32,
    pub subcode: Option<u32>,
    /// The error `type`, e.g. `OAuthException`.
    pub kind: &'static str,
    pub message: Cow<'static, str>,
    /// `is_transient`, present only where the platform is known to send it.
    pub transient: Option<bool>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_subcode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_transient: Option<bool>,
    fbtrace_id: &'a str,
}

const OAUTH: &str = "OAuthException";
const METHOD: &str = "GraphMethodException";

impl GraphError {
    fn new(
        status: u16,
        code: u32,
        kind: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        GraphError {
            status,
            code,
            subcode: None,
            kind,
            message: message.into(),
            transient: None,
        }
    }

    fn subcode(mut self, subcode: u32) -> Self {
        self.subcode = Some(subcode);
        self
    }

    fn transient(mut self) -> Self {
        self.transient = Some(true);
        self
    }

    /// Renders `{"error":{...}}` with the given trace id.
    pub(crate) fn to_json(&self, fbtrace_id: &str) -> String {
        let envelope = Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind,
                code: self.code,
                error_subcode: self.subcode,
                is_transient: self.transient,
                fbtrace_id,
            },
        };
        serde_json::to_string(&envelope).expect("error envelopes always serialise")
    }

    // ---- whole-request errors ----

    /// More than 50 operations. The wording is recalled from the platform, not verified.
    pub(crate) fn batch_too_large() -> Self {
        GraphError::new(
            400,
            1,
            OAUTH,
            "(#1) Too many requests in batch message. Maximum batch size is 50",
        )
    }

    pub(crate) fn batch_missing() -> Self {
        GraphError::new(400, 100, OAUTH, "(#100) The parameter batch is required")
    }

    pub(crate) fn batch_malformed() -> Self {
        GraphError::new(
            400,
            100,
            OAUTH,
            "(#100) The parameter batch must be a JSON array of requests",
        )
    }

    pub(crate) fn unsupported_content_type(content_type: &str) -> Self {
        GraphError::new(
            400,
            100,
            OAUTH,
            format!(
                "(#100) Unsupported request body type {content_type} (the simulator accepts form-urlencoded and JSON)"
            ),
        )
    }

    pub(crate) fn server_error(status: u16) -> Self {
        let message = if status == 503 {
            "Service temporarily unavailable"
        } else {
            "An unexpected error has occurred. Please retry your request later."
        };
        GraphError::new(status, 2, OAUTH, message).transient()
    }

    pub(crate) fn unknown_path(path: &str) -> Self {
        GraphError::new(400, 2500, OAUTH, format!("Unknown path components: {path}"))
    }

    pub(crate) fn unsupported_method(method: &str, path: &str) -> Self {
        GraphError::new(
            400,
            100,
            METHOD,
            format!("Unsupported {} request. Object with ID '{path}' does not exist, cannot be loaded due to missing permissions, or does not support this operation", method.to_ascii_lowercase()),
        )
        .subcode(33)
    }

    // ---- authentication ----

    /// No token at all. The platform's code for this case may be 104 or 2500 depending on the
    /// endpoint; the simulator answers 190 so that every token problem is one class.
    pub(crate) fn token_missing() -> Self {
        GraphError::new(
            400,
            190,
            OAUTH,
            "An access token is required to request this resource.",
        )
    }

    pub(crate) fn token_invalid() -> Self {
        GraphError::new(
            400,
            190,
            OAUTH,
            "Invalid OAuth access token - Cannot parse access token",
        )
    }

    /// A token the simulator was told to revoke: subcode 460, "session invalidated".
    pub(crate) fn token_revoked() -> Self {
        GraphError::new(
            400,
            190,
            OAUTH,
            "Error validating access token: The session has been invalidated because the user changed their password or Facebook has changed the session for security reasons.",
        )
        .subcode(460)
    }

    pub(crate) fn appsecret_proof_invalid() -> Self {
        GraphError::new(
            400,
            100,
            METHOD,
            "Invalid appsecret_proof provided in the API argument",
        )
    }

    /// A Page token used on another Page's `/{page-id}/messages`. The simulator's choice (see the
    /// module docs of `sim`): a permission error, code 200, HTTP 403.
    pub(crate) fn wrong_page(page_id: &str) -> Self {
        GraphError::new(
            403,
            200,
            OAUTH,
            format!("(#200) Requires pages_messaging permission to manage the object {page_id}"),
        )
    }

    /// A node id that is no configured Page.
    pub(crate) fn unknown_object(id: &str) -> Self {
        GraphError::new(
            400,
            100,
            METHOD,
            format!("Unsupported post request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation"),
        )
        .subcode(33)
    }

    // ---- limits ----

    pub(crate) fn rate_limited() -> Self {
        GraphError::new(
            400,
            613,
            OAUTH,
            "(#613) Calls to this api have exceeded the rate limit.",
        )
        .subcode(2_534_040)
        .transient()
    }

    // ---- Send API validation ----

    pub(crate) fn param(message: impl Into<Cow<'static, str>>) -> Self {
        GraphError::new(400, 100, OAUTH, message)
    }

    pub(crate) fn message_with_sender_action() -> Self {
        GraphError::new(
            400,
            100,
            OAUTH,
            "(#100) Cannot send a message and a sender_action in the same request",
        )
        .subcode(2_018_014)
    }

    pub(crate) fn empty_message() -> Self {
        GraphError::new(
            400,
            100,
            OAUTH,
            "(#100) Message cannot be empty, must provide valid attachment or text",
        )
        .subcode(2_018_034)
    }

    pub(crate) fn unknown_insights_metric(metric: &str) -> Self {
        GraphError::new(
            400,
            100,
            OAUTH,
            format!("(#100) The value must be a valid insights metric: {metric}"),
        )
    }

    // ---- item faults and reserved recipients ----

    pub(crate) fn transient_2() -> Self {
        GraphError::new(
            500,
            2,
            OAUTH,
            "An unexpected error has occurred. Please retry your request later.",
        )
        .transient()
    }

    pub(crate) fn transient_1200() -> Self {
        GraphError::new(
            500,
            1200,
            OAUTH,
            "(#1200) Temporary send message failure. Please try again later",
        )
        .transient()
    }

    pub(crate) fn user_blocked_551() -> Self {
        GraphError::new(
            400,
            551,
            OAUTH,
            "(#551) This person isn't available right now.",
        )
    }

    pub(crate) fn no_matching_user() -> Self {
        GraphError::new(400, 100, OAUTH, "(#100) No matching user found").subcode(2_018_001)
    }

    pub(crate) fn outside_window() -> Self {
        GraphError::new(
            400,
            10,
            OAUTH,
            "(#10) This message is sent outside of allowed window.",
        )
        .subcode(2_018_278)
    }

    pub(crate) fn not_available_1545041() -> Self {
        GraphError::new(
            403,
            200,
            OAUTH,
            "(#200) Message Not Sent: This person isn't available right now.",
        )
        .subcode(1_545_041)
    }

    pub(crate) fn ambiguous_1357046() -> Self {
        GraphError::new(500, 1, OAUTH, "(#1) Received Invalid JSON reply.").subcode(1_357_046)
    }

    pub(crate) fn unknown_code_99999() -> Self {
        GraphError::new(
            400,
            99_999,
            OAUTH,
            "(#99999) An error code no client should recognise (graph-sim)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_graph_error_envelope() {
        let json: serde_json::Value =
            serde_json::from_str(&GraphError::rate_limited().to_json("AbC")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {
                "message": "(#613) Calls to this api have exceeded the rate limit.",
                "type": "OAuthException",
                "code": 613,
                "error_subcode": 2534040,
                "is_transient": true,
                "fbtrace_id": "AbC"
            }})
        );
        let json: serde_json::Value =
            serde_json::from_str(&GraphError::token_invalid().to_json("x")).unwrap();
        assert!(json["error"].get("error_subcode").is_none());
        assert!(json["error"].get("is_transient").is_none());
    }
}
