//! The Graph API batch protocol, as pure functions: encoding up to 50 Send API calls into the form
//! body of one `POST {base_url}/{version}/`, decoding what comes back, and deciding what each
//! operation's result means for its job (DESIGN §3).
//!
//! ```text
//!  PageAuth + [Operation] ──BatchRequest::encode──▶ BatchRequest ──form_body()──▶ HTTP client
//!                                                                                     │
//!  (status, headers, body) ◀──────────────────────────────────────────────────────────┘
//!        │ BatchReply::decode(&request, …)
//!        ▼
//!  BatchReply ──outcomes()──▶ classify(outcome) ──▶ Decision      usage() ──▶ limiter
//! ```
//!
//! - `batch`: the request wire format ([`BatchRequest`], [`Operation`]) and the credentials it is
//!   sent with ([`PageAuth`], [`appsecret_proof`]).
//! - `reply`: the reply wire format ([`BatchReply`]): per-operation results, Graph error objects
//!   and the throttling headers ([`Usage`]).
//! - `classify`: the error table ([`classify()`], [`Decision`]).
//!
//! This module does no I/O and keeps no state. It does not send requests (the HTTP client does),
//! pick or chain the operations of a batch (the batcher), or act on decisions (the pipeline).
//! Access tokens and proofs never appear in the `Debug` or `Display` output of its types.

mod batch;
mod classify;
mod client;
mod reply;

pub use batch::{
    BatchRequest, EncodeError, EncodedBody, FormBody, MAX_OPERATIONS, Operation, PageAuth,
    appsecret_proof,
};
pub use classify::{DeadReason, Decision, Outcome, RetryKind, StopReason, classify};
pub use client::{AUDIENCE_METRIC, AudienceError, ClientError, GraphClient, Sent, newest_audience};
pub use reply::{
    APP_USAGE, AppUsage, BUSINESS_USE_CASE_USAGE, BatchFailure, BatchReply, BusinessUseCaseUsage,
    GraphError, ItemResult, MAX_REGAIN_ACCESS, MalformedReply, Receipt, Usage, UsageHeaderError,
};
