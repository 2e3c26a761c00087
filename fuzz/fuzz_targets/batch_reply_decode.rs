//! `BatchReply::decode` on an arbitrary HTTP status, headers and body, for a small batch
//! request: it never panics, gives exactly one outcome per operation whatever the body, keeps
//! the regain-access estimate within its cap, and never lets the batch's access token or
//! `appsecret_proof` through into anything it decoded (they are scrubbed from Graph's text).
//!
//! Input layout, so that a raw reply body is a valid input behind a few bytes (the seeds in
//! `fuzz/seeds/batch_reply_decode` are built that way):
//!
//! ```text
//! [operations: 1 + byte % 50] [status: 2 bytes, big-endian] [headers: count byte, then per
//! header a name selector byte (0 x-business-use-case-usage, 1 x-app-usage, 2 content-type,
//! else a length byte and the name) and a length byte and the value] [body …]
//! ```
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use pagerelay::graph::{
    BatchReply, BatchRequest, EncodedBody, MAX_REGAIN_ACCESS, Operation, PageAuth, appsecret_proof,
    classify,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

/// The token of the batch. Seeds quote it in error messages, as Graph sometimes does.
const TOKEN: &str = "EAAGfuzzTOKEN0123456789";
const APP_SECRET: &str = "fuzz-app-secret";

struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let Some((first, rest)) = self.data.split_first() else {
            return 0;
        };
        self.data = rest;
        *first
    }

    fn bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte()).min(self.data.len());
        let (taken, rest) = self.data.split_at(len);
        self.data = rest;
        taken
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let operations = 1 + usize::from(input.byte()) % 50;
    let status = u16::from_be_bytes([input.byte(), input.byte()]);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    for _ in 0..input.byte() % 8 {
        let name = match input.byte() {
            0 => HeaderName::from_static("x-business-use-case-usage"),
            1 => HeaderName::from_static("x-app-usage"),
            2 => HeaderName::from_static("content-type"),
            _ => match HeaderName::from_bytes(input.bytes()) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        if let Ok(value) = HeaderValue::from_bytes(input.bytes()) {
            headers.append(name, value);
        }
    }
    let body = input.data;

    let token = SecretString::from(TOKEN);
    let secret = SecretString::from(APP_SECRET);
    let proof = appsecret_proof(&token, &secret);
    let auth = PageAuth::new(token, Some(&secret));
    let bodies: Vec<EncodedBody> = (0..operations)
        .map(|i| {
            let Value::Object(body) = json!({
                "recipient": {"id": format!("{}", 6_543_210_000_000_000u64 + i as u64)},
                "messaging_type": "UPDATE",
                "message": {"text": format!("message {i}")},
            }) else {
                unreachable!()
            };
            EncodedBody::new(&body)
        })
        .collect();
    let ops: Vec<Operation<'_>> = bodies.iter().map(Operation::send).collect();
    let request = BatchRequest::encode(&auth, &ops).expect("1 to 50 operations encode");

    let reply = BatchReply::decode(&request, status, &headers, body);
    let outcomes: Vec<_> = reply.outcomes().collect();
    assert_eq!(outcomes.len(), operations, "one outcome per operation");
    for outcome in outcomes {
        let _ = classify(outcome);
    }
    if let Some(wait) = reply.usage().regain_access() {
        assert!(wait <= MAX_REGAIN_ACCESS, "{wait:?}");
    }
    let _ = reply.usage().max_usage_percent();
    let shown = format!("{reply:?}");
    assert!(!shown.contains(TOKEN), "the token leaked: {shown}");
    assert!(
        !shown.contains(proof.expose_secret()),
        "the proof leaked: {shown}"
    );
});
