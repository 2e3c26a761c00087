//! Decoding: what Graph answered to one batch call, as one result per operation plus the
//! throttling headers (DESIGN §3).
//!
//! Owns the response half of the wire format: the outer status, the JSON array of per-operation
//! entries (`null` or `{code, headers?, body?}` with `body` a JSON string parsed a second time),
//! Graph error objects, and the `X-Business-Use-Case-Usage` / `X-App-Usage` headers. Decoding never
//! fails and never panics: a reply that is not what the batch asked for becomes a
//! [`BatchFailure`] for every operation, and a header that does not parse is set aside in
//! [`Usage::problems`] for the caller to log.
//!
//! It does not decide what a result means for a job ([`classify`](super::classify()) does) or how
//! long a Page cools down (the limiter reads [`Usage::regain_access`]).
//!
//! # Strict envelope, lenient content
//!
//! The array and each entry's `code` are the envelope: if they are wrong, nothing in the reply can
//! be trusted to belong to the right operation, so the whole batch fails. What sits inside an
//! entry's `body` and in the headers is Graph's content: a success whose body does not parse is
//! still a success (the message went out), and an error body that does not parse is an error
//! without a code.
//!
//! # Secrets
//!
//! Graph error messages may quote what the request carried, the access token included. Every text
//! of a decoded reply — error fields, receipts, usage entries — has the batch's token and proof
//! replaced by `[redacted]`, so replies can go to logs and dead-letter headers as they are.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use secrecy::ExposeSecret;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::batch::BatchRequest;
use super::classify::Outcome;

/// The name of the Business Use Case usage header, lowercase as [`HeaderMap`] stores it.
pub const BUSINESS_USE_CASE_USAGE: &str = "x-business-use-case-usage";
/// The name of the app usage header, lowercase as [`HeaderMap`] stores it.
pub const APP_USAGE: &str = "x-app-usage";

/// The longest wait [`Usage::regain_access`] reports. BUC limits are counted over a rolling 24 h,
/// so a longer estimate is a malformed header, not a reason to park a Page for days.
pub const MAX_REGAIN_ACCESS: Duration = Duration::from_secs(24 * 60 * 60);

const REDACTED: &str = "[redacted]";

// ===== impl BatchReply =====

/// The decoded reply to one [`BatchRequest`]: either one [`ItemResult`] per operation, in request
/// order, or one [`BatchFailure`] that applies to all of them; plus the throttling headers.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchReply {
    result: Result<Vec<ItemResult>, BatchFailure>,
    operations: usize,
    usage: Usage,
}

impl BatchReply {
    /// Decodes the reply Graph gave to `request`: its HTTP status, headers and body.
    ///
    /// A 2xx reply must be a JSON array with one entry per operation of `request`. Any reply
    /// whose body is a single Graph error object is a [`BatchFailure::Rejected`]; any other 2xx
    /// body is a [`BatchFailure::Malformed`], any other non-2xx reply a [`BatchFailure::Http`].
    /// Usage headers are read from the outer headers and from every entry's `headers` array,
    /// whatever the status.
    pub fn decode(
        request: &BatchRequest,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Self {
        let operations = request.operation_count();
        let scrub = Scrubber::for_request(request);
        let mut usage = Usage::from_headers(headers);
        let result = if status.is_success() {
            decode_items(body, operations, &scrub, &mut usage).map_err(|malformed| {
                // A lone error object is Graph refusing the whole call, whatever the status
                // says; its code is worth more than a blind retry.
                match GraphError::from_envelope(body, &scrub) {
                    Some(error) => BatchFailure::Rejected { status, error },
                    None => BatchFailure::Malformed(malformed),
                }
            })
        } else {
            Err(match GraphError::from_envelope(body, &scrub) {
                Some(error) => BatchFailure::Rejected { status, error },
                None => BatchFailure::Http { status },
            })
        };
        // Everything Graph wrote is scrubbed, not only its error texts: a reply that echoes the
        // token anywhere (a receipt, a usage header's business id) must not carry it into logs.
        for entry in &mut usage.business_use_cases {
            scrub.apply_in_place(&mut entry.business_id);
            if let Some(kind) = &mut entry.kind {
                scrub.apply_in_place(kind);
            }
        }
        BatchReply {
            result,
            operations,
            usage,
        }
    }

    /// The per-operation results, or why there are none.
    pub fn result(&self) -> Result<&[ItemResult], &BatchFailure> {
        self.result.as_deref()
    }

    /// One [`Outcome`] per operation, in request order, whatever happened: when the batch failed
    /// as a whole, every operation gets the same failure. Feed each to
    /// [`classify`](super::classify()).
    pub fn outcomes(&self) -> impl ExactSizeIterator<Item = Outcome<'_>> {
        (0..self.operations).map(move |index| match &self.result {
            Ok(items) => Outcome::Item(&items[index]),
            Err(failure) => Outcome::Batch(failure),
        })
    }

    /// The throttling headers of the reply and of its entries.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }
}

/// One non-null entry of the reply array: the envelope around an operation's result.
struct RawItem {
    code: u16,
    // Only present when `include_headers` is not `false`; read leniently (see `Usage`). Boxed,
    // like the error below, to keep entries small: moving them around was a fifth of the time
    // spent decoding a reply.
    headers: Option<Box<RawValue>>,
    body: Option<ItemBody>,
}

/// What an entry's `body` string holds, parsed while the reply array is read: serde_json hands
/// the unescaped string over in its scratch buffer, so the body is never copied into a `String`
/// of its own.
#[derive(Default)]
struct ItemBody {
    receipt: Receipt,
    /// The unscrubbed `error` object of an error body.
    error: Option<Box<Map<String, Value>>>,
}

impl ItemBody {
    /// Reads what it can: a body that is not a JSON object of the documented shape yields
    /// neither receipt nor error.
    fn parse(text: &str) -> Self {
        #[derive(Deserialize)]
        struct Raw {
            recipient_id: Option<String>,
            message_id: Option<String>,
            attachment_id: Option<String>,
            error: Option<Box<Map<String, Value>>>,
        }
        // A derived struct would also read a JSON array as its fields in order.
        if !text.trim_start().starts_with('{') {
            return ItemBody::default();
        }
        let Ok(raw) = serde_json::from_str::<Raw>(text) else {
            return ItemBody::default();
        };
        ItemBody {
            receipt: Receipt {
                recipient_id: raw.recipient_id,
                message_id: raw.message_id,
                attachment_id: raw.attachment_id,
            },
            error: raw.error,
        }
    }
}

impl<'de> Deserialize<'de> for ItemBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;

        impl Visitor<'_> for BodyVisitor {
            type Value = ItemBody;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON document in a string")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ItemBody, E> {
                Ok(ItemBody::parse(text))
            }
        }

        deserializer.deserialize_str(BodyVisitor)
    }
}

// By hand rather than derived: a derived `Deserialize` also accepts an array of field values
// (`[200, null, "{}"]`), and an entry that is not an object is a malformed reply.
impl<'de> Deserialize<'de> for RawItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            Code,
            Headers,
            Body,
            #[serde(other)]
            Other,
        }

        struct EntryVisitor;

        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = RawItem;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a batch entry object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawItem, A::Error> {
                let (mut code, mut headers, mut body) = (None, None, None);
                while let Some(field) = map.next_key()? {
                    match field {
                        Field::Code => code = Some(map.next_value()?),
                        Field::Headers => headers = map.next_value()?,
                        Field::Body => body = map.next_value()?,
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(RawItem {
                    code: code.ok_or_else(|| de::Error::missing_field("code"))?,
                    headers,
                    body,
                })
            }
        }

        deserializer.deserialize_map(EntryVisitor)
    }
}

fn decode_items(
    body: &[u8],
    expected: usize,
    scrub: &Scrubber<'_>,
    usage: &mut Usage,
) -> Result<Vec<ItemResult>, MalformedReply> {
    let raw: Vec<Option<RawItem>> =
        serde_json::from_slice(body).map_err(|e| MalformedReply::from_json_error(&e))?;
    if raw.len() != expected {
        return Err(MalformedReply::WrongLength {
            expected,
            got: raw.len(),
        });
    }
    raw.into_iter()
        .enumerate()
        .map(|(index, item)| {
            let Some(item) = item else {
                return Ok(ItemResult::NotExecuted);
            };
            let status = StatusCode::from_u16(item.code).map_err(|_| MalformedReply::BadCode {
                index,
                code: item.code,
            })?;
            if let Some(headers) = &item.headers {
                usage.add_item_headers(headers.get());
            }
            let body = item.body.unwrap_or_default();
            Ok(if status.is_success() {
                let mut receipt = body.receipt;
                for field in [
                    &mut receipt.recipient_id,
                    &mut receipt.message_id,
                    &mut receipt.attachment_id,
                ]
                .into_iter()
                .flatten()
                {
                    scrub.apply_in_place(field);
                }
                ItemResult::Success { status, receipt }
            } else {
                ItemResult::Error {
                    status,
                    error: body
                        .error
                        .map(|error| GraphError::from_object(&error, scrub))
                        .unwrap_or_default(),
                }
            })
        })
        .collect()
}

// ===== results and failures =====

/// What came back for one operation of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemResult {
    /// The entry was `null`: Graph did not run the operation (the batch ran out of time, or,
    /// in a chain, presumably the operation it depends on failed). Nothing was sent, so it is
    /// safe to send again.
    NotExecuted,
    /// A 2xx entry: the message was accepted.
    Success {
        status: StatusCode,
        receipt: Receipt,
    },
    /// Any other entry, with the Graph error from its body (all fields empty when the body held
    /// none).
    Error {
        status: StatusCode,
        error: GraphError,
    },
}

/// The Send API's answer to an accepted message. Every field is optional: Graph omits
/// `recipient_id` for some recipient kinds, and a success is a success even when its body cannot
/// be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    pub recipient_id: Option<String>,
    pub message_id: Option<String>,
    /// Present when the message uploaded a reusable attachment.
    pub attachment_id: Option<String>,
}

/// Why a batch produced no per-operation results. Every operation of the batch shares the
/// failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchFailure {
    /// The connection failed before a complete reply arrived. Built by the HTTP client.
    #[error("the connection to the Graph API failed")]
    Transport,
    /// No reply within the request timeout. Built by the HTTP client.
    #[error("the Graph API did not answer in time")]
    Timeout,
    /// A reply carrying one Graph error object instead of the batch's entries (normally with a
    /// non-2xx status).
    #[error("the batch was rejected with HTTP {status}: {error}")]
    Rejected {
        status: StatusCode,
        error: GraphError,
    },
    /// A non-2xx reply without a readable Graph error (a proxy page, an empty body…).
    #[error("the batch failed with HTTP {status}")]
    Http { status: StatusCode },
    /// A 2xx reply that is not the array the batch asked for.
    #[error("malformed batch reply: {0}")]
    Malformed(MalformedReply),
}

/// How a 2xx reply failed to be one entry per operation. Positions are given instead of the
/// offending text, which could quote anything the reply held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedReply {
    #[error("the body is not JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("the body is not an array of batch entries (line {line}, column {column})")]
    NotBatch { line: usize, column: usize },
    #[error("expected {expected} entries, got {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("entry {index} has the invalid HTTP code {code}")]
    BadCode { index: usize, code: u16 },
}

impl MalformedReply {
    fn from_json_error(error: &serde_json::Error) -> Self {
        let (line, column) = (error.line(), error.column());
        match error.classify() {
            serde_json::error::Category::Data => MalformedReply::NotBatch { line, column },
            _ => MalformedReply::NotJson { line, column },
        }
    }
}

// ===== impl GraphError =====

/// A Graph API error object (`{"error": {...}}`). Every field is optional because Graph does not
/// always send them all; numbers are accepted as JSON numbers or numeric strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphError {
    pub code: Option<i64>,
    /// `error_subcode`.
    pub subcode: Option<i64>,
    /// `type`, e.g. `OAuthException`.
    pub kind: Option<String>,
    pub message: Option<String>,
    pub fbtrace_id: Option<String>,
    /// A hint some errors carry; the classification does not rely on it.
    pub is_transient: Option<bool>,
    /// `error_user_title`.
    pub user_title: Option<String>,
    /// `error_user_msg`.
    pub user_msg: Option<String>,
}

impl GraphError {
    /// Reads `{"error": {...}}`; `None` when `body` is not such an object.
    fn from_envelope(body: &[u8], scrub: &Scrubber<'_>) -> Option<Self> {
        // Through `Value` rather than a derived struct, which would also accept `[{…}]`.
        let Value::Object(mut envelope) = serde_json::from_slice(body).ok()? else {
            return None;
        };
        let Value::Object(error) = envelope.remove("error")? else {
            return None;
        };
        Some(Self::from_object(&error, scrub))
    }

    /// Reads the object inside `{"error": …}`.
    fn from_object(error: &Map<String, Value>, scrub: &Scrubber<'_>) -> Self {
        let text = |key: &str| match error.get(key)? {
            Value::String(s) => Some(scrub.apply(s)),
            Value::Null => None,
            other => Some(scrub.apply(&other.to_string())),
        };
        GraphError {
            code: error.get("code").and_then(lenient_i64),
            subcode: error.get("error_subcode").and_then(lenient_i64),
            kind: text("type"),
            message: text("message"),
            fbtrace_id: text("fbtrace_id"),
            is_transient: error.get("is_transient").and_then(lenient_bool),
            user_title: text("error_user_title"),
            user_msg: text("error_user_msg"),
        }
    }
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.subcode) {
            (Some(code), Some(subcode)) => write!(f, "(#{code}/{subcode})")?,
            (Some(code), None) => write!(f, "(#{code})")?,
            (None, _) => f.write_str("(no code)")?,
        }
        if let Some(kind) = &self.kind {
            write!(f, " {kind}")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        if let Some(trace) = &self.fbtrace_id {
            write!(f, " [fbtrace_id {trace}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for GraphError {}

fn lenient_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn lenient_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Replaces the batch's secrets in text taken from a reply.
///
/// Every receipt field of every entry is checked against every secret of the request (one token
/// per Page of a shared request), so a text shorter than the shortest secret (a PSID or a message
/// id next to a Page token, in practice) is not searched at all.
struct Scrubber<'a> {
    /// Every token and proof of the request (a batch of several Pages carries several), longest
    /// first.
    secrets: Vec<&'a str>,
    shortest: usize,
}

impl<'a> Scrubber<'a> {
    fn for_request(request: &'a BatchRequest) -> Self {
        let mut secrets: Vec<&'a str> = request
            .auths()
            .flat_map(|auth| {
                [
                    Some(auth.token().expose_secret()),
                    auth.appsecret_proof().map(|p| p.expose_secret()),
                ]
            })
            .flatten()
            // An empty secret would match everywhere; it cannot leak anything either.
            .filter(|s| !s.is_empty())
            .collect();
        // Longest first: a token that contains another Page's token is redacted whole, not
        // left with the rest of it around a `[redacted]`.
        secrets.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Scrubber {
            shortest: secrets.last().map_or(usize::MAX, |s| s.len()),
            secrets,
        }
    }

    fn apply(&self, text: &str) -> String {
        let mut text = Cow::Borrowed(text);
        for secret in self.secrets.iter().copied() {
            if contains(&text, secret) {
                text = Cow::Owned(text.replace(secret, REDACTED));
            }
        }
        text.into_owned()
    }

    /// [`apply`](Self::apply) to a string owned already, allocating only when a secret is in it.
    fn apply_in_place(&self, text: &mut String) {
        if text.len() < self.shortest {
            return;
        }
        if self.secrets.iter().any(|secret| contains(text, secret)) {
            *text = self.apply(text);
        }
    }
}

/// `str::contains`, answered without a search when `secret` is longer than `text`.
///
/// The standard library's search, not `memchr::memmem`: a one-shot `memmem::find` sets up a
/// searcher per call, which on texts as short as a receipt's ids costs more than the search
/// (2,025 checks of a shared request's message ids against its 45 tokens: 75 µs, against 13 µs).
fn contains(text: &str, secret: &str) -> bool {
    secret.len() <= text.len() && text.contains(secret)
}

// ===== impl Usage =====

/// The throttling state Graph reported with a reply: `X-Business-Use-Case-Usage` entries (the
/// limits that govern Page tokens) and `X-App-Usage` (the app-wide platform limit), from the outer
/// headers and from any per-entry `headers` arrays.
///
/// Parsing is lenient: a header that is not the documented JSON is skipped and described in
/// [`problems`](Self::problems); a field that is missing or not a number is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub business_use_cases: Vec<BusinessUseCaseUsage>,
    pub app: Vec<AppUsage>,
    /// Headers that were present but unreadable, for the caller to log.
    pub problems: Vec<UsageHeaderError>,
}

/// One entry of `X-Business-Use-Case-Usage`. Percentages are of the limit for `kind`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BusinessUseCaseUsage {
    /// The key the entry was listed under: the business object (a Page, for Messenger).
    pub business_id: String,
    /// `type`: `messenger`, `pages`, …
    pub kind: Option<String>,
    pub call_count: Option<f64>,
    pub total_cputime: Option<f64>,
    pub total_time: Option<f64>,
    /// `estimated_time_to_regain_access`, sent in minutes, capped at [`MAX_REGAIN_ACCESS`].
    pub estimated_time_to_regain_access: Option<Duration>,
}

/// `X-App-Usage`: percentages of the app's platform limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppUsage {
    pub call_count: Option<f64>,
    pub total_cputime: Option<f64>,
    pub total_time: Option<f64>,
}

/// A usage header that could not be read. It never fails a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageHeaderError {
    #[error("{header} is not JSON")]
    NotJson { header: &'static str },
    #[error("{header} is JSON but not the documented object")]
    UnexpectedShape { header: &'static str },
}

#[derive(Clone, Copy)]
enum UsageHeader {
    BusinessUseCase,
    App,
}

impl UsageHeader {
    fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case(BUSINESS_USE_CASE_USAGE) {
            Some(UsageHeader::BusinessUseCase)
        } else if name.eq_ignore_ascii_case(APP_USAGE) {
            Some(UsageHeader::App)
        } else {
            None
        }
    }

    fn display_name(self) -> &'static str {
        match self {
            UsageHeader::BusinessUseCase => "X-Business-Use-Case-Usage",
            UsageHeader::App => "X-App-Usage",
        }
    }
}

impl Usage {
    /// Reads the usage headers of an HTTP response.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut usage = Usage::default();
        for (name, header) in [
            (BUSINESS_USE_CASE_USAGE, UsageHeader::BusinessUseCase),
            (APP_USAGE, UsageHeader::App),
        ] {
            for value in headers.get_all(name) {
                usage.add(header, value.as_bytes());
            }
        }
        usage
    }

    /// The longest wait any entry announced before calls are accepted again, or `None` when no
    /// entry announced a wait (an estimate of zero is not a wait).
    pub fn regain_access(&self) -> Option<Duration> {
        self.business_use_cases
            .iter()
            .filter_map(|entry| entry.estimated_time_to_regain_access)
            .max()
            .filter(|wait| !wait.is_zero())
    }

    /// The highest percentage of any limit in any header, or `None` when no header gave one.
    pub fn max_usage_percent(&self) -> Option<f64> {
        let business = self
            .business_use_cases
            .iter()
            .flat_map(|e| [e.call_count, e.total_cputime, e.total_time]);
        let app = self
            .app
            .iter()
            .flat_map(|e| [e.call_count, e.total_cputime, e.total_time]);
        business.chain(app).flatten().reduce(f64::max)
    }

    /// Whether the reply carried no usage header at all.
    pub fn is_empty(&self) -> bool {
        self.business_use_cases.is_empty() && self.app.is_empty() && self.problems.is_empty()
    }

    /// Reads the usage headers of a batch entry's `[{"name": …, "value": …}]` array (its JSON
    /// text); anything else is not a headers array and is ignored.
    fn add_item_headers(&mut self, json: &str) {
        #[derive(Deserialize)]
        struct Header<'a> {
            #[serde(borrow)]
            name: Cow<'a, str>,
            #[serde(borrow)]
            value: Cow<'a, str>,
        }
        // Every entry of a reply has such an array: read the documented shape without building
        // a JSON tree, and take the lenient path only for what does not fit it.
        if let Ok(headers) = serde_json::from_str::<Vec<Header<'_>>>(json) {
            for header in headers {
                if let Some(kind) = UsageHeader::from_name(&header.name) {
                    self.add(kind, header.value.as_bytes());
                }
            }
            return;
        }
        let Ok(Value::Array(headers)) = serde_json::from_str::<Value>(json) else {
            return;
        };
        for header in &headers {
            let name = header.get("name").and_then(Value::as_str);
            let value = header.get("value").and_then(Value::as_str);
            if let (Some(header), Some(value)) = (name.and_then(UsageHeader::from_name), value) {
                self.add(header, value.as_bytes());
            }
        }
    }

    fn add(&mut self, header: UsageHeader, value: &[u8]) {
        if !self.add_documented(header, value) {
            self.add_lenient(header, value);
        }
    }

    /// Reads whatever a usage header holds that can be read, and describes what cannot.
    fn add_lenient(&mut self, header: UsageHeader, value: &[u8]) {
        let header_name = header.display_name();
        let Ok(json) = serde_json::from_slice::<Value>(value) else {
            self.problems.push(UsageHeaderError::NotJson {
                header: header_name,
            });
            return;
        };
        let Value::Object(object) = json else {
            self.problems.push(UsageHeaderError::UnexpectedShape {
                header: header_name,
            });
            return;
        };
        match header {
            UsageHeader::App => self.app.push(AppUsage {
                call_count: percent(object.get("call_count")),
                total_cputime: percent(object.get("total_cputime")),
                total_time: percent(object.get("total_time")),
            }),
            UsageHeader::BusinessUseCase => {
                let mut unexpected = false;
                for (business_id, entries) in object {
                    // Documented as an array; a lone object is read as an array of one.
                    let entries = match entries {
                        Value::Array(entries) => entries,
                        single @ Value::Object(_) => vec![single],
                        _ => {
                            unexpected = true;
                            continue;
                        }
                    };
                    for entry in entries {
                        let Value::Object(entry) = entry else {
                            unexpected = true;
                            continue;
                        };
                        self.business_use_cases.push(BusinessUseCaseUsage {
                            business_id: business_id.clone(),
                            kind: entry.get("type").and_then(Value::as_str).map(str::to_owned),
                            call_count: percent(entry.get("call_count")),
                            total_cputime: percent(entry.get("total_cputime")),
                            total_time: percent(entry.get("total_time")),
                            estimated_time_to_regain_access: minutes(
                                entry.get("estimated_time_to_regain_access"),
                            ),
                        });
                    }
                }
                if unexpected {
                    self.problems.push(UsageHeaderError::UnexpectedShape {
                        header: header_name,
                    });
                }
            }
        }
    }

    /// Reads a usage header of the documented shape without building a JSON tree; false if it
    /// has another shape (which the lenient read then describes), with nothing added.
    fn add_documented(&mut self, header: UsageHeader, value: &[u8]) -> bool {
        match header {
            UsageHeader::App => {
                let Ok(Documented(app)) = serde_json::from_slice::<Documented>(value) else {
                    return false;
                };
                self.app.push(AppUsage {
                    call_count: figure(app.call_count),
                    total_cputime: figure(app.total_cputime),
                    total_time: figure(app.total_time),
                });
            }
            UsageHeader::BusinessUseCase => {
                let Ok(DocumentedBusinessUseCases(ids)) = serde_json::from_slice(value) else {
                    return false;
                };
                for (mut business_id, Entries(entries)) in ids {
                    let last = entries.len().saturating_sub(1);
                    for (index, Documented(entry)) in entries.into_iter().enumerate() {
                        self.business_use_cases.push(BusinessUseCaseUsage {
                            // Almost every id has one entry, which takes the id itself.
                            business_id: if index == last {
                                std::mem::take(&mut business_id)
                            } else {
                                business_id.clone()
                            },
                            kind: entry.kind,
                            call_count: figure(entry.call_count),
                            total_cputime: figure(entry.total_cputime),
                            total_time: figure(entry.total_time),
                            estimated_time_to_regain_access: figure(
                                entry.estimated_time_to_regain_access,
                            )
                            .map(minutes_to_duration),
                        });
                    }
                }
            }
        }
        true
    }
}

/// A non-negative finite number, sent as a JSON number or a numeric string.
fn lenient_f64(value: Option<&Value>) -> Option<f64> {
    let number = match value? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    usable(number)
}

fn usable(number: f64) -> Option<f64> {
    (number.is_finite() && number >= 0.0).then_some(number)
}

/// A usage figure in one of the documented forms, a JSON number or a numeric string; anything
/// else fails the typed read, which hands the header to the lenient one.
struct Figure(Option<f64>);

impl<'de> Deserialize<'de> for Figure {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FigureVisitor;

        impl Visitor<'_> for FigureVisitor {
            type Value = Figure;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a numeric string")
            }

            #[allow(clippy::cast_precision_loss)] // as serde_json's `Number::as_f64`
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Figure, E> {
                Ok(Figure(usable(v as f64)))
            }

            #[allow(clippy::cast_precision_loss)]
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Figure, E> {
                Ok(Figure(usable(v as f64)))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Figure, E> {
                Ok(Figure(usable(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Figure, E> {
                Ok(Figure(v.trim().parse().ok().and_then(usable)))
            }
        }

        deserializer.deserialize_any(FigureVisitor)
    }
}

fn figure(value: Option<Figure>) -> Option<f64> {
    value.and_then(|f| f.0)
}

/// The figures of `X-App-Usage`, or of one `X-Business-Use-Case-Usage` entry, as documented.
#[derive(Deserialize)]
struct DocumentedFigures {
    #[serde(rename = "type")]
    kind: Option<String>,
    call_count: Option<Figure>,
    total_cputime: Option<Figure>,
    total_time: Option<Figure>,
    estimated_time_to_regain_access: Option<Figure>,
}

/// [`DocumentedFigures`] read from a JSON object only: a derived read would also take an array
/// of field values, which the lenient read reports as the wrong shape.
struct Documented(DocumentedFigures);

impl<'de> Deserialize<'de> for Documented {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// The entries listed under one business id: an array of entries, or leniently one entry.
struct Entries(Vec<Documented>);

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Documented;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a usage object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Documented, A::Error> {
        DocumentedFigures::deserialize(de::value::MapAccessDeserializer::new(map)).map(Documented)
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrMany;

        impl<'de> Visitor<'de> for OneOrMany {
            type Value = Entries;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of usage objects, or one")
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entries, A::Error> {
                ObjectVisitor
                    .visit_map(map)
                    .map(|entry| Entries(vec![entry]))
            }
        }

        deserializer.deserialize_any(OneOrMany)
    }
}

/// `X-Business-Use-Case-Usage` as documented: business ids, each with its entries, in the
/// header's order and without repeats.
struct DocumentedBusinessUseCases(Vec<(String, Entries)>);

impl<'de> Deserialize<'de> for DocumentedBusinessUseCases {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BusinessVisitor;

        impl<'de> Visitor<'de> for BusinessVisitor {
            type Value = DocumentedBusinessUseCases;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of business ids")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut ids: Vec<(String, Entries)> = Vec::new();
                while let Some(id) = map.next_key::<String>()? {
                    ids.push((id, map.next_value()?));
                }
                // A repeated id replaces the first in a JSON object: the lenient read knows how.
                // Sorted, not compared pairwise: a shared request's header lists every Page of it.
                let mut sorted: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
                sorted.sort_unstable();
                if sorted.windows(2).any(|pair| pair[0] == pair[1]) {
                    return Err(de::Error::custom("repeated business id"));
                }
                Ok(DocumentedBusinessUseCases(ids))
            }
        }

        deserializer.deserialize_map(BusinessVisitor)
    }
}

fn percent(value: Option<&Value>) -> Option<f64> {
    lenient_f64(value)
}

fn minutes(value: Option<&Value>) -> Option<Duration> {
    lenient_f64(value).map(minutes_to_duration)
}

fn minutes_to_duration(minutes: f64) -> Duration {
    // `min` also turns an overflow to infinity into the cap, so the conversion cannot panic.
    Duration::from_secs_f64((minutes * 60.0).min(MAX_REGAIN_ACCESS.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;
    use secrecy::SecretString;
    use serde_json::json;

    use super::*;
    use crate::graph::{EncodedBody, Operation, PageAuth};

    const TOKEN: &str = "EAAGtokenSECRET123";

    fn request(operations: usize) -> BatchRequest {
        let body = EncodedBody::new(&Map::from_iter([(
            "recipient".to_owned(),
            json!({"id": "1"}),
        )]));
        let auth = PageAuth::new(
            SecretString::from(TOKEN),
            Some(&SecretString::from("app-secret")),
        );
        let ops = vec![Operation::send(&body); operations];
        BatchRequest::encode(&auth, &ops).unwrap()
    }

    fn decode(operations: usize, status: u16, body: &str) -> BatchReply {
        decode_with_headers(operations, status, HeaderMap::new(), body)
    }

    fn decode_with_headers(
        operations: usize,
        status: u16,
        headers: HeaderMap,
        body: &str,
    ) -> BatchReply {
        BatchReply::decode(
            &request(operations),
            StatusCode::from_u16(status).unwrap(),
            &headers,
            body.as_bytes(),
        )
    }

    fn item(code: u16, body: Value) -> Value {
        json!({"code": code, "body": body.to_string()})
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            // Header values are one line; the literals below are spread over several.
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            map.append(*name, HeaderValue::from_str(&value).unwrap());
        }
        map
    }

    #[test]
    fn decodes_successes_errors_and_nulls_in_order() {
        let body = json!([
            item(200, json!({"recipient_id": "42", "message_id": "m_1"})),
            null,
            item(
                400,
                json!({"error": {
                    "message": "(#100) No matching user found",
                    "type": "OAuthException",
                    "code": 100,
                    "error_subcode": 2018001,
                    "fbtrace_id": "AbC",
                    "is_transient": false,
                    "error_user_title": "t",
                    "error_user_msg": "m",
                }})
            ),
        ]);
        let reply = decode(3, 200, &body.to_string());
        let items = reply.result().unwrap();
        assert_eq!(
            items[0],
            ItemResult::Success {
                status: StatusCode::OK,
                receipt: Receipt {
                    recipient_id: Some("42".into()),
                    message_id: Some("m_1".into()),
                    attachment_id: None,
                },
            }
        );
        assert_eq!(items[1], ItemResult::NotExecuted);
        assert_eq!(
            items[2],
            ItemResult::Error {
                status: StatusCode::BAD_REQUEST,
                error: GraphError {
                    code: Some(100),
                    subcode: Some(2018001),
                    kind: Some("OAuthException".into()),
                    message: Some("(#100) No matching user found".into()),
                    fbtrace_id: Some("AbC".into()),
                    is_transient: Some(false),
                    user_title: Some("t".into()),
                    user_msg: Some("m".into()),
                },
            }
        );
        assert_eq!(reply.outcomes().len(), 3);
    }

    #[test]
    fn a_success_with_an_unreadable_body_is_still_a_success() {
        let body = json!([{"code": 200, "body": "not json"}, {"code": 201}]);
        let reply = decode(2, 200, &body.to_string());
        for item in reply.result().unwrap() {
            assert!(
                matches!(item, ItemResult::Success { receipt, .. } if *receipt == Receipt::default())
            );
        }
    }

    #[test]
    fn an_error_entry_without_an_error_object_has_no_code() {
        let body = json!([{"code": 500, "body": "<html>oops</html>"}]);
        let reply = decode(1, 200, &body.to_string());
        assert_eq!(
            reply.result().unwrap()[0],
            ItemResult::Error {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                error: GraphError::default(),
            }
        );
    }

    #[test]
    fn error_numbers_may_be_strings() {
        let body = json!([item(
            400,
            json!({"error": {"code": "613", "error_subcode": " 1996 ", "is_transient": "true"}})
        )]);
        let reply = decode(1, 200, &body.to_string());
        let ItemResult::Error { error, .. } = &reply.result().unwrap()[0] else {
            panic!("not an error: {reply:?}");
        };
        assert_eq!(error.code, Some(613));
        assert_eq!(error.subcode, Some(1996));
        assert_eq!(error.is_transient, Some(true));
    }

    #[test]
    fn a_short_reply_fails_the_whole_batch() {
        let body = json!([item(200, json!({}))]);
        assert_eq!(
            decode(2, 200, &body.to_string()).result(),
            Err(&BatchFailure::Malformed(MalformedReply::WrongLength {
                expected: 2,
                got: 1
            }))
        );
    }

    #[test]
    fn a_long_reply_fails_the_whole_batch() {
        let body = json!([null, null, null]);
        assert_eq!(
            decode(2, 200, &body.to_string()).result(),
            Err(&BatchFailure::Malformed(MalformedReply::WrongLength {
                expected: 2,
                got: 3
            }))
        );
    }

    #[test]
    fn a_non_json_body_fails_the_whole_batch() {
        for body in [
            "",
            "<html>502 Bad Gateway</html>",
            "[null",
            "[null] trailing",
        ] {
            let reply = decode(1, 200, body);
            assert!(
                matches!(
                    reply.result(),
                    Err(BatchFailure::Malformed(MalformedReply::NotJson { .. }))
                ),
                "{body:?}: {reply:?}"
            );
        }
    }

    #[test]
    fn json_that_is_not_a_batch_fails_the_whole_batch() {
        for body in [
            r#"{"error": "not an object"}"#,
            "[1]",
            "[[200]]",
            r#"[[200, null, "{}"]]"#,
            r#"[{"body": "{}"}]"#,
            r#"[{"code": "200"}]"#,
            r#"[{"code": 200, "body": {"inline": "object"}}]"#,
        ] {
            let reply = decode(1, 200, body);
            assert!(
                matches!(
                    reply.result(),
                    Err(BatchFailure::Malformed(MalformedReply::NotBatch { .. }))
                ),
                "{body}: {reply:?}"
            );
        }
    }

    #[test]
    fn a_2xx_graph_error_rejects_the_whole_batch() {
        let body = json!({"error": {"code": 190, "message": "Error validating access token"}});
        let reply = decode(2, 200, &body.to_string());
        let Err(BatchFailure::Rejected { status, error }) = reply.result() else {
            panic!("{reply:?}");
        };
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(error.code, Some(190));
        assert_eq!(reply.outcomes().len(), 2);
    }

    #[test]
    fn an_impossible_item_code_fails_the_whole_batch() {
        let reply = decode(2, 200, r#"[null, {"code": 42}]"#);
        assert_eq!(
            reply.result(),
            Err(&BatchFailure::Malformed(MalformedReply::BadCode {
                index: 1,
                code: 42
            }))
        );
    }

    #[test]
    fn a_failed_batch_gives_every_operation_the_failure() {
        let reply = decode(3, 503, "Service Unavailable");
        let failure = BatchFailure::Http {
            status: StatusCode::SERVICE_UNAVAILABLE,
        };
        assert_eq!(reply.result(), Err(&failure));
        let outcomes: Vec<_> = reply.outcomes().collect();
        assert_eq!(outcomes.len(), 3);
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Batch(f) if **f == failure))
        );
    }

    #[test]
    fn a_non_2xx_reply_with_a_graph_error_is_rejected_with_it() {
        let body = json!({"error": {"code": 190, "error_subcode": 463, "message": "expired"}});
        let reply = decode(2, 400, &body.to_string());
        let Err(BatchFailure::Rejected { status, error }) = reply.result() else {
            panic!("{reply:?}");
        };
        assert_eq!(*status, StatusCode::BAD_REQUEST);
        assert_eq!((error.code, error.subcode), (Some(190), Some(463)));
        assert_eq!(error.message.as_deref(), Some("expired"));
    }

    #[test]
    fn secrets_quoted_back_by_graph_are_redacted() {
        let proof = request(1)
            .auth()
            .appsecret_proof()
            .unwrap()
            .expose_secret()
            .to_owned();
        let message = format!("Malformed access token {TOKEN} with proof {proof}");
        let envelope = json!({"error": {"code": 190, "message": message, "error_user_msg": TOKEN}});

        let outer = decode(1, 400, &envelope.to_string());
        let inner = decode(1, 200, &json!([item(400, envelope)]).to_string());
        for reply in [outer, inner] {
            let rendered = format!("{reply:?}");
            assert!(!rendered.contains(TOKEN), "{rendered}");
            assert!(!rendered.contains(&proof), "{rendered}");
            assert!(
                rendered.contains("Malformed access token [redacted]"),
                "{rendered}"
            );
        }
    }

    /// Found by the fuzz target: a receipt (or a usage header) that echoes the token carried it
    /// into the decoded reply.
    #[test]
    fn secrets_anywhere_in_a_reply_are_redacted() {
        let receipt = json!({"recipient_id": format!("1{TOKEN}2"), "message_id": TOKEN});
        let mut headers = HeaderMap::new();
        headers.insert(
            BUSINESS_USE_CASE_USAGE,
            json!({TOKEN: [{"type": TOKEN, "call_count": 1}]})
                .to_string()
                .parse()
                .unwrap(),
        );
        let reply = decode_with_headers(1, 200, headers, &json!([item(200, receipt)]).to_string());
        let rendered = format!("{reply:?}");
        assert!(!rendered.contains(TOKEN), "{rendered}");
        let Ok([ItemResult::Success { receipt, .. }]) = reply.result() else {
            panic!("{rendered}");
        };
        assert_eq!(receipt.recipient_id.as_deref(), Some("1[redacted]2"));
        assert_eq!(reply.usage().business_use_cases[0].business_id, REDACTED);
    }

    #[test]
    fn every_pages_secrets_in_a_shared_request_are_redacted() {
        const OTHER: &str = "EAAGotherPAGEtoken456";
        let body = EncodedBody::new(&Map::from_iter([(
            "recipient".to_owned(),
            json!({"id": "1"}),
        )]));
        let secret = SecretString::from("app-secret");
        let owner = PageAuth::new(SecretString::from(TOKEN), Some(&secret));
        let other = PageAuth::new(SecretString::from(OTHER), Some(&secret));
        let ops = [
            Operation::send(&body),
            Operation::send(&body).with_auth(&other),
        ];
        let request = BatchRequest::encode(&owner, &ops).unwrap();
        let proof = other.appsecret_proof().unwrap().expose_secret().to_owned();
        let error =
            json!({"error": {"code": 190, "message": format!("token {OTHER} proof {proof}")}});
        let reply = BatchReply::decode(
            &request,
            StatusCode::OK,
            &HeaderMap::new(),
            json!([item(200, json!({"message_id": TOKEN})), item(400, error)])
                .to_string()
                .as_bytes(),
        );
        let rendered = format!("{reply:?}");
        for secret in [TOKEN, OTHER, proof.as_str()] {
            assert!(!rendered.contains(secret), "{secret} in {rendered}");
        }
    }

    /// One Page's token inside another's (possible with test tokens, harmless to allow): the
    /// longer is redacted whole, so no part of it survives around the shorter's redaction.
    #[test]
    fn a_token_inside_another_is_redacted_whole() {
        let longer = format!("{TOKEN}-and-more");
        let body = EncodedBody::new(&Map::from_iter([(
            "recipient".to_owned(),
            json!({"id": "1"}),
        )]));
        let owner = PageAuth::new(SecretString::from(TOKEN), None);
        let other = PageAuth::new(SecretString::from(longer.clone()), None);
        let ops = [
            Operation::send(&body),
            Operation::send(&body).with_auth(&other),
        ];
        let request = BatchRequest::encode(&owner, &ops).unwrap();
        let receipt = json!({"message_id": format!("m_{longer}"), "recipient_id": "1"});
        let reply = BatchReply::decode(
            &request,
            StatusCode::OK,
            &HeaderMap::new(),
            json!([item(200, receipt.clone()), item(200, receipt)])
                .to_string()
                .as_bytes(),
        );
        let Ok([ItemResult::Success { receipt, .. }, _]) = reply.result() else {
            panic!("{reply:?}");
        };
        assert_eq!(receipt.message_id.as_deref(), Some("m_[redacted]"));
        assert_eq!(receipt.recipient_id.as_deref(), Some("1"));
    }

    #[test]
    fn graph_error_display_names_code_subcode_and_trace() {
        let error = GraphError {
            code: Some(613),
            subcode: Some(1996),
            kind: Some("OAuthException".into()),
            message: Some("Calls to this api have exceeded the rate limit.".into()),
            fbtrace_id: Some("AbC".into()),
            ..GraphError::default()
        };
        assert_eq!(
            error.to_string(),
            "(#613/1996) OAuthException: Calls to this api have exceeded the rate limit. \
             [fbtrace_id AbC]"
        );
        assert_eq!(GraphError::default().to_string(), "(no code)");
    }

    #[test]
    fn reads_business_use_case_usage() {
        let headers = headers(&[(
            "x-business-use-case-usage",
            r#"{"104857600000001": [
                {"type": "messenger", "call_count": 98, "total_cputime": "12", "total_time": 40,
                 "estimated_time_to_regain_access": 7},
                {"type": "pages", "call_count": 10, "estimated_time_to_regain_access": 0}
            ], "2": [{"type": "pages", "estimated_time_to_regain_access": "2.5"}]}"#,
        )]);
        let reply = decode_with_headers(1, 200, headers, "[null]");
        let usage = reply.usage();
        assert_eq!(usage.business_use_cases.len(), 3);
        assert_eq!(
            usage.business_use_cases[0],
            BusinessUseCaseUsage {
                business_id: "104857600000001".into(),
                kind: Some("messenger".into()),
                call_count: Some(98.0),
                total_cputime: Some(12.0),
                total_time: Some(40.0),
                estimated_time_to_regain_access: Some(Duration::from_secs(7 * 60)),
            }
        );
        assert_eq!(usage.regain_access(), Some(Duration::from_secs(7 * 60)));
        assert_eq!(usage.max_usage_percent(), Some(98.0));
        assert!(usage.problems.is_empty());
    }

    #[test]
    fn reads_app_usage() {
        let headers = headers(&[(
            "x-app-usage",
            r#"{"call_count": 3, "total_cputime": 100, "total_time": "55"}"#,
        )]);
        let usage = Usage::from_headers(&headers);
        assert_eq!(
            usage.app,
            [AppUsage {
                call_count: Some(3.0),
                total_cputime: Some(100.0),
                total_time: Some(55.0),
            }]
        );
        assert_eq!(usage.max_usage_percent(), Some(100.0));
        assert_eq!(usage.regain_access(), None);
    }

    #[test]
    fn a_zero_estimate_is_not_a_wait() {
        let headers = headers(&[(
            "x-business-use-case-usage",
            r#"{"1": [{"type": "messenger", "call_count": 100, "estimated_time_to_regain_access": 0}]}"#,
        )]);
        assert_eq!(Usage::from_headers(&headers).regain_access(), None);
    }

    #[test]
    fn estimates_are_capped_and_nonsense_is_dropped() {
        let headers = headers(&[(
            "x-business-use-case-usage",
            r#"{"1": [{"estimated_time_to_regain_access": 1e300},
                      {"estimated_time_to_regain_access": -5, "call_count": "NaN"},
                      {"estimated_time_to_regain_access": "soon", "call_count": "inf"}]}"#,
        )]);
        let usage = Usage::from_headers(&headers);
        let estimates: Vec<_> = usage
            .business_use_cases
            .iter()
            .map(|e| e.estimated_time_to_regain_access)
            .collect();
        assert_eq!(estimates, [Some(MAX_REGAIN_ACCESS), None, None]);
        assert_eq!(usage.max_usage_percent(), None);
    }

    #[test]
    fn bad_usage_headers_are_set_aside_not_fatal() {
        let headers = headers(&[
            ("x-business-use-case-usage", "{not json"),
            (
                "x-business-use-case-usage",
                r#"{"1": 5, "2": [{"call_count": 9}]}"#,
            ),
            ("x-app-usage", "[1, 2]"),
        ]);
        let reply = decode_with_headers(1, 200, headers, "[null]");
        assert_eq!(reply.result(), Ok(&[ItemResult::NotExecuted][..]));
        let usage = reply.usage();
        assert_eq!(
            usage.problems,
            [
                UsageHeaderError::NotJson {
                    header: "X-Business-Use-Case-Usage"
                },
                UsageHeaderError::UnexpectedShape {
                    header: "X-Business-Use-Case-Usage"
                },
                UsageHeaderError::UnexpectedShape {
                    header: "X-App-Usage"
                },
            ]
        );
        // The readable part of a partly readable header still counts.
        assert_eq!(usage.max_usage_percent(), Some(9.0));
    }

    #[test]
    fn reads_usage_from_entry_headers() {
        let body = json!([{
            "code": 200,
            "headers": [
                {"name": "Content-Type", "value": "application/json"},
                {"name": "X-App-Usage", "value": "{\"call_count\": 61}"},
                {"name": "x-business-use-case-usage",
                 "value": "{\"1\": [{\"type\": \"messenger\", \"estimated_time_to_regain_access\": 3}]}"},
                {"name": "X-App-Usage"},
                "not an object",
            ],
            "body": "{}",
        }]);
        let reply = decode(1, 200, &body.to_string());
        assert!(matches!(
            reply.result().unwrap()[0],
            ItemResult::Success { .. }
        ));
        let usage = reply.usage();
        assert_eq!(usage.max_usage_percent(), Some(61.0));
        assert_eq!(usage.regain_access(), Some(Duration::from_secs(180)));
    }

    #[test]
    fn usage_is_read_from_failed_replies_too() {
        let headers = headers(&[(
            "x-business-use-case-usage",
            r#"{"1": [{"type": "messenger", "estimated_time_to_regain_access": 12}]}"#,
        )]);
        let body = json!({"error": {"code": 80006}}).to_string();
        let reply = decode_with_headers(1, 400, headers, &body);
        assert_eq!(
            reply.usage().regain_access(),
            Some(Duration::from_secs(720))
        );
    }

    fn entry() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            (100u16..=599).prop_map(|code| item(code, json!({"message_id": "m"}))),
            (100u16..=599, any::<String>())
                .prop_map(|(code, body)| json!({"code": code, "body": body})),
            (any::<i32>(), any::<i64>()).prop_map(|(code, sub)| item(
                400,
                json!({"error": {"code": code, "error_subcode": sub}})
            )),
            any::<String>().prop_map(Value::from),
            prop::collection::vec(any::<u16>(), 0..3).prop_map(|v| json!(v)),
        ]
    }

    /// Values of the shape Graph documents, with every field liable to be of the wrong type.
    fn usage_header() -> impl Strategy<Value = String> {
        let number = prop_oneof![
            any::<f64>().prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|n| json!(n.to_string())),
            "[0-9a-z .-]{0,6}".prop_map(Value::from),
            Just(Value::Null),
            Just(json!([1])),
        ];
        let field = prop_oneof![
            Just("type"),
            Just("call_count"),
            Just("total_cputime"),
            Just("total_time"),
            Just("estimated_time_to_regain_access"),
        ];
        let entry = prop::collection::vec((field, number.clone()), 0..5).prop_map(|fields| {
            Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        });
        let entries = prop_oneof![
            prop::collection::vec(entry.clone(), 0..3).prop_map(Value::Array),
            entry,
            number,
        ];
        prop_oneof![
            prop::collection::vec(("[0-9]{1,4}", entries), 0..3)
                .prop_map(|map| Value::Object(map.into_iter().collect()).to_string()),
            "\\PC{0,64}",
        ]
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            body in prop::collection::vec(any::<u8>(), 0..512),
            status in 100u16..=999,
            operations in 1usize..=50,
        ) {
            let reply = BatchReply::decode(
                &request(operations),
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                &body,
            );
            prop_assert_eq!(reply.outcomes().len(), operations);
        }

        #[test]
        fn decoding_arbitrary_entries_never_panics(
            entries in prop::collection::vec(entry(), 0..8),
            operations in 1usize..=8,
        ) {
            let well_formed = entries.len() == operations
                && entries.iter().all(|e| e.is_null() || e.is_object());
            let reply = decode(operations, 200, &Value::Array(entries).to_string());
            prop_assert_eq!(reply.result().is_ok(), well_formed);
            prop_assert_eq!(reply.outcomes().len(), operations);
        }

        #[test]
        fn reading_arbitrary_usage_headers_never_panics(
            buc in usage_header(),
            app in usage_header(),
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in [(BUSINESS_USE_CASE_USAGE, buc), (APP_USAGE, app)] {
                // Header values cannot hold control characters; whatever else Graph could send
                // is fair game.
                if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
                    headers.insert(name, value);
                }
            }
            let usage = Usage::from_headers(&headers);
            prop_assert!(usage.regain_access().is_none_or(|wait| wait <= MAX_REGAIN_ACCESS));
            prop_assert!(usage.max_usage_percent().is_none_or(|p| p.is_finite() && p >= 0.0));
        }
    }

    #[test]
    fn documented_and_lenient_reads_of_usage_headers_agree() {
        let values = [
            r#"{"call_count":28,"total_cputime":"25","total_time":" 25.5 "}"#,
            r#"{"call_count":-1,"total_time":"n/a","total_cputime":null,"extra":[1]}"#,
            r#"{"call_count":true}"#,
            r#"[1,2,3]"#,
            r#""x""#,
            r#"{"1":[{"type":"messenger","call_count":100,"estimated_time_to_regain_access":3}]}"#,
            r#"{"1":{"type":"pages","estimated_time_to_regain_access":"1e9"}}"#,
            r#"{"1":[],"2":[{"type":"messenger"},{"type":"pages","total_time":5}]}"#,
            r#"{"1":[{"type":7}]}"#,
            r#"{"1":[[1,2,3,4,5]]}"#,
            r#"{"1":[{"call_count":1}],"1":[{"call_count":2}]}"#,
            r#"{"2":[{"call_count":1}],"1":[],"3":{"type":"pages"},"2":[{"call_count":2}]}"#,
            r#"{"3":[{"call_count":1},{"call_count":4}],"1":[],"2":{"type":"pages"}}"#,
            r#"{"1":[{"call_count":1,"call_count":2}]}"#,
            r#"{"id\"q":[{"type":"messenger"}]}"#,
            r#"{"1":"messenger"}"#,
            "not json",
        ];
        for header in [UsageHeader::App, UsageHeader::BusinessUseCase] {
            for value in values {
                let mut lenient = Usage::default();
                lenient.add_lenient(header, value.as_bytes());
                let mut documented = Usage::default();
                if documented.add_documented(header, value.as_bytes()) {
                    assert_eq!(documented, lenient, "{} {value}", header.display_name());
                } else {
                    assert_eq!(
                        documented,
                        Usage::default(),
                        "nothing added on a miss: {value}"
                    );
                }
            }
        }
        // The documented forms take the typed read.
        let mut usage = Usage::default();
        assert!(usage.add_documented(UsageHeader::App, values[0].as_bytes()));
        assert!(usage.add_documented(UsageHeader::BusinessUseCase, values[5].as_bytes()));
        assert!(usage.add_documented(UsageHeader::BusinessUseCase, values[6].as_bytes()));
        assert_eq!(usage.regain_access(), Some(MAX_REGAIN_ACCESS));
    }
}
