//! `Job::decode` on arbitrary bytes, with an arbitrary routing key, content type and
//! `message_id`: it never panics, and what it answers keeps the contract's promises.
//!
//! Input layout, so that a plain JSON file is a valid input once a selector byte is put in
//! front of it (scripts/fuzz.sh seeds the corpus that way from `tests/corpus/jobs`):
//!
//! ```text
//! [selector] [custom strings, each a length byte and that many bytes, as selected] [body …]
//! selector bits 0-1: routing key   0 ""  1 "104857600000001"  2 "104857600000002"  3 custom
//!          bits 2-3: content type  0 none  1 "application/json"  2 "…; charset=utf-8"  3 custom
//!          bits 4-5: message_id    0 none  1 ""  2 "job-1"  3 custom
//! ```
//!
//! On success: the Page id is digits and agrees with a routing key that is a Page id; the job
//! id is 1 to 200 printable ASCII characters; the send body has none of the pagerelay fields;
//! and the job, written back out as JSON, decodes to the same job. On refusal: the message is
//! one line that starts with the field it names.
#![no_main]

use chrono::SecondsFormat;
use libfuzzer_sys::fuzz_target;
use pagerelay::job::{DeliveryMeta, Job, MAX_JOB_BYTES, MAX_JOB_ID_CHARS, PAGERELAY_FIELDS};
use serde_json::{Map, Value};

const PAGE: &str = "104857600000001";
const OTHER_PAGE: &str = "104857600000002";

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

    /// A length byte and that many bytes (fewer at the end of the input), as lossy UTF-8:
    /// AMQP short strings reach the decoder as Rust strings.
    fn string(&mut self) -> String {
        let len = usize::from(self.byte()).min(self.data.len());
        let (text, rest) = self.data.split_at(len);
        self.data = rest;
        String::from_utf8_lossy(text).into_owned()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let selector = input.byte();
    let routing_key = match selector & 0b11 {
        0 => String::new(),
        1 => PAGE.to_string(),
        2 => OTHER_PAGE.to_string(),
        _ => input.string(),
    };
    let content_type = match (selector >> 2) & 0b11 {
        0 => None,
        1 => Some("application/json".to_string()),
        2 => Some("application/json; charset=utf-8".to_string()),
        _ => Some(input.string()),
    };
    let message_id = match (selector >> 4) & 0b11 {
        0 => None,
        1 => Some(String::new()),
        2 => Some("job-1".to_string()),
        _ => Some(input.string()),
    };
    let body = input.data;
    let meta = DeliveryMeta {
        routing_key: &routing_key,
        message_id: message_id.as_deref(),
        content_type: content_type.as_deref(),
    };
    match Job::decode(body, &meta) {
        Ok(job) => check_accepted(&job, &meta, body),
        Err(error) => {
            let message = error.to_string();
            assert!(!message.contains('\n'), "a refusal is one line: {message:?}");
            assert!(
                message.starts_with(error.field()),
                "a refusal names its field first: {message:?}"
            );
        }
    }
});

fn check_accepted(job: &Job, meta: &DeliveryMeta<'_>, body: &[u8]) {
    assert!(body.len() <= MAX_JOB_BYTES);
    assert!(pagerelay::config::is_page_id(&job.page_id), "{job:?}");
    if pagerelay::config::is_page_id(meta.routing_key) {
        assert_eq!(job.page_id, meta.routing_key);
    }
    assert!(!job.job_id.is_empty() && job.job_id.len() <= MAX_JOB_ID_CHARS);
    assert!(
        job.job_id.bytes().all(|b| (b' '..=b'~').contains(&b)),
        "job id {:?}",
        job.job_id
    );
    for field in PAGERELAY_FIELDS {
        assert!(!job.send_body().contains_key(*field), "{field} forwarded");
    }

    // Written back out (the pagerelay fields first, then the send body), the job decodes to
    // itself: nothing in the send body depends on how the publisher spelled it.
    // (AutoSi writes as many fraction digits as the time has, so it reads back exactly.)
    let mut again = Map::new();
    again.insert("page_id".into(), Value::String(job.page_id.clone()));
    again.insert("job_id".into(), Value::String(job.job_id.clone()));
    // An offset can carry a four-digit year past 9999 or before 0000 in UTC, which RFC 3339
    // cannot write: such a time is left out, and not compared.
    let expires_at = job
        .expires_at
        .filter(|t| (0..=9999).contains(&chrono::Datelike::year(t)));
    if let Some(expires_at) = expires_at {
        again.insert(
            "expires_at".into(),
            Value::String(expires_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        );
    }
    for (key, value) in job.send_body() {
        again.insert(key.clone(), value.clone());
    }
    let text = serde_json::to_vec(&Value::Object(again)).expect("a JSON value serialises");
    if text.len() > MAX_JOB_BYTES {
        return;
    }
    let decoded = Job::decode(&text, &DeliveryMeta::default())
        .unwrap_or_else(|e| panic!("{job:?} written back out is refused: {e}"));
    assert_eq!(decoded.page_id, job.page_id);
    assert_eq!(decoded.job_id, job.job_id);
    assert_eq!(decoded.expires_at, expires_at);
    assert_eq!(decoded.recipient, job.recipient);
    assert_eq!(decoded.media, job.media);
    assert_eq!(decoded.send_body(), job.send_body());
}
