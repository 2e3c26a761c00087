//! Encoding: a Page's credentials and up to 50 Send API bodies become the form body of one Graph
//! batch call (DESIGN §3).
//!
//! Owns the request half of the wire format: the outer form fields (`access_token`, `batch`,
//! `include_headers`, `appsecret_proof`), the operation objects inside `batch`, and the form
//! encoding of each Send API body. It also owns `appsecret_proof` and keeps the token and the proof
//! out of every `Debug` rendering of its types.
//!
//! It does not validate Send API bodies (the job contract does that before anything reaches a
//! batch), choose which jobs share a batch or how they are chained (the batcher), or send anything
//! (the HTTP client).
//!
//! # Wire format
//!
//! ```text
//! access_token=…&appsecret_proof=…&include_headers=false&batch=<form-encoded JSON array>
//!
//! [{"method":"POST","relative_url":"me/messages",
//!   "body":"recipient=%7B%22id%22%3A%2212%22%7D&messaging_type=UPDATE&message=%7B…%7D"}, …]
//! ```
//!
//! A body field whose value is a string goes into the form as is; every other value (objects such
//! as `recipient` and `message`, arrays, numbers, booleans, `null`) goes in as its JSON text, which
//! is how Graph reads form parameters. Fields keep the order they have in the job.
//!
//! # Speed
//!
//! Encoding is on the hot path, and the obvious way (serialise each nested value, form-encode the
//! body, embed it in the operation JSON, form-encode the whole array) walks every byte four times.
//! Here the whole form body is written in one pass: nested values are written as JSON straight
//! into their doubly form-encoded form, by lookup tables built at compile time, and the fixed JSON
//! around them is encoded at compile time too. Property tests hold the result to the reference
//! encoders (`serde_json`, `form_urlencoded`) byte for byte.
//!
//! Each body is written once, into an [`EncodedBody`], when its job is decoded; a batch then
//! copies its bodies between the fixed parts.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde_json::{Map, Value};
use sha2::Sha256;

/// The most operations Graph accepts in one batch; it rejects the whole call beyond that.
pub const MAX_OPERATIONS: usize = 50;

// The configured batch size is validated against its own constant; the two must not drift apart.
const _: () = assert!(MAX_OPERATIONS == crate::config::MAX_BATCH_SIZE);

/// The lowercase hex HMAC-SHA256 of `token` keyed by `app_secret`, which Graph requires next to the
/// token when the app has "Require App Secret" set.
///
/// Returned as a [`SecretString`] because the proof stands in for the app secret on the wire: it
/// must stay out of logs like the token it was made from. [`PageAuth`] computes it once per token
/// so that encoding a batch never does.
pub fn appsecret_proof(token: &SecretString, app_secret: &SecretString) -> SecretString {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(token.expose_secret().as_bytes());
    SecretString::from(hex::encode(mac.finalize().into_bytes()))
}

// ===== impl PageAuth =====

/// A Page access token together with its `appsecret_proof`, computed once when the credentials are
/// loaded (and again only when they are reloaded), so the hot path never recomputes the HMAC.
///
/// Cloning is cheap (a reference count): every [`BatchRequest`] keeps a clone so that its reply
/// can be scrubbed of the token (see [`BatchReply::decode`](super::BatchReply::decode)).
///
/// `Debug` shows neither the token nor the proof.
#[derive(Clone)]
pub struct PageAuth(Arc<PageAuthInner>);

struct PageAuthInner {
    token: SecretString,
    proof: Option<SecretString>,
    /// The token and proof as an operation of a shared batch carries them in its `relative_url`
    /// (see [`Operation::with_auth`]), already encoded: a shared request repeats them for every
    /// operation, and encoding 200-character tokens byte by byte each time took six times as
    /// long as the rest of the request (`encode_shared_50` in `benches/graph.rs`).
    operation_query: SecretSlice<u8>,
}

impl PageAuth {
    /// Credentials for one Page. With `app_secret`, every batch also carries `appsecret_proof`.
    pub fn new(token: SecretString, app_secret: Option<&SecretString>) -> Self {
        let proof = app_secret.map(|secret| appsecret_proof(&token, secret));
        let mut query = FormWriter::with_capacity(0);
        encode_query_value(&mut query, token.expose_secret());
        if let Some(proof) = &proof {
            query.push(once::PROOF_PARAM);
            encode_query_value(&mut query, proof.expose_secret());
        }
        let operation_query = SecretSlice::from(query.into_vec());
        PageAuth(Arc::new(PageAuthInner {
            token,
            proof,
            operation_query,
        }))
    }

    /// The Page access token.
    pub fn token(&self) -> &SecretString {
        &self.0.token
    }

    /// The `appsecret_proof` of the token, when an app secret is configured.
    pub fn appsecret_proof(&self) -> Option<&SecretString> {
        self.0.proof.as_ref()
    }
}

impl fmt::Debug for PageAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageAuth")
            .field("token", &"[redacted]")
            .field(
                "appsecret_proof",
                &self.0.proof.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

// ===== impl EncodedBody =====

/// One Send API body, written once in the form a batch operation carries it: form-encoded as the
/// operation's `body`, and form-encoded again as part of the `batch` field.
///
/// A job is encoded as soon as it is decoded, and its parsed tree freed there and then: a job
/// then waits in its lane as one buffer rather than a tree of a dozen allocations, and the batch
/// that sends it copies the bytes instead of walking the tree.
///
/// `Debug` shows the length only: the body is message content.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedBody(Box<[u8]>);

impl EncodedBody {
    /// Encodes `body`: its fields in order, pagerelay's own already stripped.
    pub fn new(body: &Map<String, Value>) -> Self {
        // A ~300-byte job takes ~650 bytes; the spare room is given back below.
        let mut form = FormWriter::with_capacity(1024);
        // Allocated by the first number, if any: most bodies have none.
        let mut scratch = Vec::new();
        encode_body(&mut form, body, &mut scratch);
        EncodedBody(form.into_vec().into_boxed_slice())
    }

    /// The encoded length, in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for EncodedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedBody")
            .field("bytes", &self.0.len())
            .finish()
    }
}

// ===== impl Operation =====

/// One Send API call of a batch: the request body (pagerelay's own job fields already stripped;
/// unknown fields are forwarded untouched), optionally named and chained after an earlier
/// operation of the same batch.
#[derive(Debug, Clone, Copy)]
pub struct Operation<'a> {
    body: &'a EncodedBody,
    name: Option<&'a str>,
    depends_on: Option<&'a str>,
    auth: Option<&'a PageAuth>,
}

impl<'a> Operation<'a> {
    /// A send with this Send API body.
    pub fn send(body: &'a EncodedBody) -> Self {
        Operation {
            body,
            name: None,
            depends_on: None,
            auth: None,
        }
    }

    /// Sends the operation with its own Page's credentials, in its `relative_url`, instead of the
    /// batch's: how one batch carries the sends of several Pages. Graph still wants a token at
    /// the top level, which then only authenticates the call itself.
    #[must_use]
    pub fn with_auth(mut self, auth: &'a PageAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Names the operation so that a later one can depend on it.
    #[must_use]
    pub fn name(mut self, name: &'a str) -> Self {
        self.name = Some(name);
        self
    }

    /// Makes Graph run this operation only after the earlier operation called `name` finished.
    #[must_use]
    pub fn depends_on(mut self, name: &'a str) -> Self {
        self.depends_on = Some(name);
        self
    }
}

// ===== impl BatchRequest =====

/// Why a set of operations cannot become a batch. These are bugs in the caller (the batcher), not
/// properties of the jobs: no variant says anything about a job's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("a batch needs at least one operation")]
    Empty,
    #[error("a batch holds at most {MAX_OPERATIONS} operations, got {0}")]
    TooMany(usize),
    #[error("operation {index} has an empty name")]
    EmptyName { index: usize },
    #[error("operation {index} reuses the name {name:?} of operation {first}")]
    DuplicateName {
        index: usize,
        first: usize,
        name: String,
    },
    #[error("operation {index} depends on {name:?}, which names no earlier operation")]
    UnknownDependency { index: usize, name: String },
}

/// One encoded Graph batch call: its form body, with the credentials it carries and the number of
/// operations it holds.
///
/// Keep it until the reply arrives: [`BatchReply::decode`](super::BatchReply::decode) reads the
/// operation count and the secrets to scrub from it.
///
/// `Debug` shows the operation count and the size of the batch, never the token, the proof or the
/// message content.
#[derive(Clone)]
pub struct BatchRequest {
    auth: PageAuth,
    /// The credentials operations carry of their own, other than `auth`.
    item_auths: Vec<PageAuth>,
    /// The whole form body (see [`BatchRequest::encode`]).
    form: Bytes,
    operations: usize,
}

impl BatchRequest {
    /// Encodes `operations`, in order, as one batch sent with `auth`.
    ///
    /// When any operation is named or depends on another, every operation carries
    /// `"omit_response_on_success": false`; otherwise Graph answers a depended-upon success with
    /// `null`, and `null` could no longer mean "not executed".
    ///
    /// # Errors
    ///
    /// An empty batch, more than [`MAX_OPERATIONS`] operations, an empty or repeated name, or a
    /// `depends_on` that names no earlier operation. Requiring the dependency to come first also
    /// rules out cycles.
    pub fn encode(auth: &PageAuth, operations: &[Operation<'_>]) -> Result<Self, EncodeError> {
        match operations.len() {
            0 => return Err(EncodeError::Empty),
            n if n > MAX_OPERATIONS => return Err(EncodeError::TooMany(n)),
            _ => {}
        }
        let chained = operations
            .iter()
            .any(|op| op.name.is_some() || op.depends_on.is_some());
        if chained {
            check_chain(operations)?;
        }

        // The whole form body is written here, once, and shared by every `form_body()`.
        //
        // Each operation body is form-encoded, put in a JSON string, and the JSON array is
        // form-encoded again as the `batch` field. Form encoding leaves only `A-Za-z0-9*-._+%`,
        // none of which JSON escapes, so the body needs no JSON escaping in between: an
        // `EncodedBody` is already in its final form and is copied as it is. The JSON around the
        // bodies is encoded at compile time. An operation's own token and proof take ~300 bytes.
        let bodies: usize = operations.iter().map(|op| op.body.len()).sum();
        let mut form = FormWriter::with_capacity(512 + bodies + operations.len() * 384);
        form.push(b"access_token=");
        ONCE.encode(&mut form, auth.token().expose_secret().as_bytes());
        if let Some(proof) = auth.appsecret_proof() {
            form.push(b"&appsecret_proof=");
            ONCE.encode(&mut form, proof.expose_secret().as_bytes());
        }
        form.push(b"&include_headers=false&batch=");
        form.push(once::BATCH_START);
        for (index, op) in operations.iter().enumerate() {
            if index > 0 {
                form.push(once::COMMA);
            }
            match op.auth {
                Some(own) => {
                    form.push(once::OPERATION_START_OWN_AUTH);
                    form.push(own.0.operation_query.expose_secret());
                    form.push(once::OWN_AUTH_END);
                }
                None => form.push(once::OPERATION_START),
            }
            form.push(&op.body.0);
            form.push(once::BODY_END);
            if let Some(name) = op.name {
                form.push(once::NAME);
                ONCE.encode(&mut form, json_string(name).as_bytes());
            }
            if let Some(name) = op.depends_on {
                form.push(once::DEPENDS_ON);
                ONCE.encode(&mut form, json_string(name).as_bytes());
            }
            if chained {
                form.push(once::KEEP_RESPONSE);
            }
            form.push(once::OPERATION_END);
        }
        form.push(once::BATCH_END);

        let mut item_auths: Vec<PageAuth> = Vec::new();
        for own in operations.iter().filter_map(|op| op.auth) {
            if !Arc::ptr_eq(&own.0, &auth.0)
                && !item_auths.iter().any(|a| Arc::ptr_eq(&a.0, &own.0))
            {
                item_auths.push(own.clone());
            }
        }
        Ok(BatchRequest {
            auth: auth.clone(),
            item_auths,
            form: Bytes::from(form.into_vec()),
            operations: operations.len(),
        })
    }

    /// How many operations the batch holds: the reply must have exactly this many entries, and
    /// the limiter charges this many calls.
    pub fn operation_count(&self) -> usize {
        self.operations
    }

    /// The credentials the batch is sent with.
    pub fn auth(&self) -> &PageAuth {
        &self.auth
    }

    /// Every credential the request carries: the batch's, then the operations' own.
    pub fn auths(&self) -> impl Iterator<Item = &PageAuth> {
        std::iter::once(&self.auth).chain(&self.item_auths)
    }

    /// The `application/x-www-form-urlencoded` body of the batch call. Cheap: every call shares
    /// the body [`encode`](Self::encode) wrote.
    pub fn form_body(&self) -> FormBody {
        FormBody(self.form.clone())
    }
}

impl fmt::Debug for BatchRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchRequest")
            .field("auth", &self.auth)
            .field("operations", &self.operations)
            .field("form_bytes", &self.form.len())
            .finish()
    }
}

fn check_chain(operations: &[Operation<'_>]) -> Result<(), EncodeError> {
    for (index, op) in operations.iter().enumerate() {
        let earlier = &operations[..index];
        if let Some(name) = op.name {
            if name.is_empty() {
                return Err(EncodeError::EmptyName { index });
            }
            if let Some(first) = earlier.iter().position(|o| o.name == Some(name)) {
                return Err(EncodeError::DuplicateName {
                    index,
                    first,
                    name: name.to_owned(),
                });
            }
        }
        if let Some(name) = op.depends_on
            && !earlier.iter().any(|o| o.name == Some(name))
        {
            return Err(EncodeError::UnknownDependency {
                index,
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

/// Appends `body` as the form `key=value&…`, strings as they are and every other value as JSON
/// text, with the form itself form-encoded once more (see [`EncodedBody`]). `scratch`
/// holds the text of one number at a time.
fn encode_body(out: &mut FormWriter, body: &Map<String, Value>, scratch: &mut Vec<u8>) {
    for (index, (key, value)) in body.iter().enumerate() {
        if index > 0 {
            out.push(once::AMPERSAND);
        }
        TWICE.encode(out, key.as_bytes());
        out.push(once::EQUALS);
        match value {
            Value::String(text) => TWICE.encode(out, text.as_bytes()),
            nested => encode_json_twice(out, nested, scratch),
        }
    }
}

/// Appends the JSON text of `value`, form-encoded twice, as `serde_json::to_vec` followed by
/// [`TWICE`] would, but in one pass: writing the JSON first and encoding it afterwards took half
/// the time spent encoding a batch.
fn encode_json_twice(out: &mut FormWriter, value: &Value, scratch: &mut Vec<u8>) {
    match value {
        // Letters only: form encoding keeps them.
        Value::Null => out.push(b"null"),
        Value::Bool(true) => out.push(b"true"),
        Value::Bool(false) => out.push(b"false"),
        Value::Number(number) => {
            scratch.clear();
            serde_json::to_writer(&mut *scratch, number).expect("a number always serialises");
            TWICE.encode(out, scratch);
        }
        Value::String(text) => {
            out.push(twice::QUOTE);
            JSON_STRING_TWICE.encode(out, text.as_bytes());
            out.push(twice::QUOTE);
        }
        Value::Array(items) => {
            out.push(twice::ARRAY_START);
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(twice::COMMA);
                }
                encode_json_twice(out, item, scratch);
            }
            out.push(twice::ARRAY_END);
        }
        Value::Object(fields) => {
            out.push(twice::OBJECT_START);
            for (index, (key, item)) in fields.iter().enumerate() {
                out.push(if index > 0 {
                    twice::COMMA_QUOTE
                } else {
                    twice::QUOTE
                });
                JSON_STRING_TWICE.encode(out, key.as_bytes());
                out.push(twice::QUOTE_COLON);
                encode_json_twice(out, item, scratch);
            }
            out.push(twice::OBJECT_END);
        }
    }
}

/// A query parameter value inside `relative_url`: query-encoded, then (being part of the JSON
/// array, which JSON leaves alone once query-encoded) form-encoded once more.
fn encode_query_value(out: &mut FormWriter, value: &str) {
    for chunk in form_urlencoded::byte_serialize(value.as_bytes()) {
        ONCE.encode(out, chunk.as_bytes());
    }
}

fn json_string(text: &str) -> String {
    // `Value`'s `Display` is infallible and escapes exactly as JSON requires.
    Value::from(text).to_string()
}

// ===== form encoding =====

/// The encodings a byte can go through on its way into the `batch` field.
#[derive(Clone, Copy)]
enum Layers {
    /// Form-encoded once: the JSON of the `batch` array.
    Once,
    /// Form-encoded twice: an operation's form body inside the `batch` array.
    Twice,
    /// Escaped as JSON string content, then form-encoded twice: strings inside nested values.
    JsonStringTwice,
}

/// `byte` through `layers`: at most ten bytes (a control character escaped as `\u00XX`, its
/// backslash encoded twice as `%255C`).
const fn encode_byte(byte: u8, layers: Layers) -> ([u8; 10], usize) {
    let (json, json_len) = match layers {
        Layers::JsonStringTwice => json_escape(byte),
        Layers::Once | Layers::Twice => ([byte, 0, 0, 0, 0, 0], 1),
    };
    let mut out = [0; 10];
    let mut len = 0;
    let mut i = 0;
    while i < json_len {
        let (encoded, encoded_len) = form_encode(json[i], !matches!(layers, Layers::Once));
        let mut k = 0;
        while k < encoded_len {
            out[len] = encoded[k];
            len += 1;
            k += 1;
        }
        i += 1;
    }
    (out, len)
}

/// `byte` form-encoded (WHATWG URL, "urlencoded serializer": ASCII alphanumerics and `*-._` stay,
/// space becomes `+`, anything else `%XX`), once or twice.
const fn form_encode(byte: u8, twice: bool) -> ([u8; 5], usize) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let (hi, lo) = (HEX[(byte >> 4) as usize], HEX[(byte & 0xf) as usize]);
    if byte.is_ascii_alphanumeric() || matches!(byte, b'*' | b'-' | b'.' | b'_') {
        ([byte, 0, 0, 0, 0], 1)
    } else if byte == b' ' && twice {
        // `+`, encoded again.
        (*b"%2B\0\0", 3)
    } else if byte == b' ' {
        (*b"+\0\0\0\0", 1)
    } else if twice {
        // `%XX`, encoded again: the hex digits stay, the `%` becomes `%25`.
        ([b'%', b'2', b'5', hi, lo], 5)
    } else {
        ([b'%', hi, lo, 0, 0], 3)
    }
}

/// `byte` as the content of a JSON string, escaped exactly as `serde_json` escapes it. Bytes of
/// multi-byte UTF-8 characters stay as they are.
const fn json_escape(byte: u8) -> ([u8; 6], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'"' => (*b"\\\"\0\0\0\0", 2),
        b'\\' => (*b"\\\\\0\0\0\0", 2),
        0x08 => (*b"\\b\0\0\0\0", 2),
        0x0c => (*b"\\f\0\0\0\0", 2),
        b'\n' => (*b"\\n\0\0\0\0", 2),
        b'\r' => (*b"\\r\0\0\0\0", 2),
        b'\t' => (*b"\\t\0\0\0\0", 2),
        0x00..=0x1f => (
            [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(byte >> 4) as usize],
                HEX[(byte & 0xf) as usize],
            ],
            6,
        ),
        _ => ([byte, 0, 0, 0, 0, 0], 1),
    }
}

/// The length of `raw` through `layers`.
const fn encoded_len(raw: &[u8], layers: Layers) -> usize {
    let mut len = 0;
    let mut i = 0;
    while i < raw.len() {
        len += encode_byte(raw[i], layers).1;
        i += 1;
    }
    len
}

/// `raw` through `layers`, at compile time; `LEN` is its [`encoded_len`].
const fn encode_const<const LEN: usize>(raw: &[u8], layers: Layers) -> [u8; LEN] {
    let mut out = [0; LEN];
    let mut len = 0;
    let mut i = 0;
    while i < raw.len() {
        let (encoded, encoded_len) = encode_byte(raw[i], layers);
        let mut k = 0;
        while k < encoded_len {
            out[len] = encoded[k];
            len += 1;
            k += 1;
        }
        i += 1;
    }
    assert!(len == LEN, "LEN must be the encoded length");
    out
}

/// Declares byte-string constants holding a literal through `layers`, encoded at compile time.
macro_rules! encoded_tokens {
    ($layers:expr; $($(#[$doc:meta])* $name:ident = $raw:expr;)*) => {$(
        $(#[$doc])*
        pub(super) const $name: &[u8] = {
            const RAW: &[u8] = $raw;
            const ENCODED: [u8; encoded_len(RAW, $layers)] = encode_const(RAW, $layers);
            &ENCODED
        };
    )*};
}

/// The JSON of the `batch` array around the operation bodies, form-encoded once.
mod once {
    use super::{Layers, encode_const, encoded_len};

    encoded_tokens! { Layers::Once;
        BATCH_START = b"[";
        BATCH_END = b"]";
        COMMA = b",";
        /// A Send API call made with the batch's Page token.
        OPERATION_START = br#"{"method":"POST","relative_url":"me/messages","body":""#;
        /// A Send API call made with its own Page's token, which follows, query-encoded.
        OPERATION_START_OWN_AUTH = br#"{"method":"POST","relative_url":"me/messages?access_token="#;
        PROOF_PARAM = b"&appsecret_proof=";
        OWN_AUTH_END = br#"","body":""#;
        BODY_END = b"\"";
        NAME = br#","name":"#;
        DEPENDS_ON = br#","depends_on":"#;
        KEEP_RESPONSE = br#","omit_response_on_success":false"#;
        OPERATION_END = b"}";
        /// Between the fields of an operation body: part of the body, which is a JSON string.
        AMPERSAND = b"&";
        EQUALS = b"=";
    }
}

/// JSON punctuation inside an operation body, form-encoded twice.
mod twice {
    use super::{Layers, encode_const, encoded_len};

    encoded_tokens! { Layers::Twice;
        QUOTE = b"\"";
        QUOTE_COLON = b"\":";
        COMMA = b",";
        COMMA_QUOTE = b",\"";
        ARRAY_START = b"[";
        ARRAY_END = b"]";
        OBJECT_START = b"{";
        OBJECT_END = b"}";
    }
}

/// A byte-to-encoding lookup table for [`Layers`]. Entry `N - 1` of each row holds the length of
/// the encoding written at the start of the row.
struct FormEncoding<const N: usize> {
    rows: [[u8; N]; 256],
    max_len: usize,
}

/// Form encoding, as `form_urlencoded::byte_serialize` does it.
static ONCE: FormEncoding<4> = FormEncoding::build(Layers::Once);

/// Form encoding applied twice: `&` becomes `%2526`, space `%2B`.
static TWICE: FormEncoding<8> = FormEncoding::build(Layers::Twice);

/// The content of a JSON string (escaped as `serde_json` does), form-encoded twice: `"` becomes
/// `%255C%2522`.
static JSON_STRING_TWICE: FormEncoding<16> = FormEncoding::build(Layers::JsonStringTwice);

impl<const N: usize> FormEncoding<N> {
    const fn build(layers: Layers) -> Self {
        let mut rows = [[0; N]; 256];
        let mut max_len = 0;
        let mut index = 0;
        while index < 256 {
            let (encoded, len) = encode_byte(index as u8, layers);
            assert!(len < N, "a row must keep its last byte for the length");
            let mut i = 0;
            while i < len {
                rows[index][i] = encoded[i];
                i += 1;
            }
            rows[index][N - 1] = len as u8;
            if len > max_len {
                max_len = len;
            }
            index += 1;
        }
        FormEncoding { rows, max_len }
    }

    /// Appends `input`, encoded.
    ///
    /// Written for speed, as nearly every byte of a batch goes through here. Each byte copies its
    /// whole row into the writer's spare room and advances by the row's length, so the
    /// loop has no branch on the data to mispredict. A row's spare bytes land past the end of the
    /// encoding, where the next write overwrites them or [`FormWriter::into_vec`] cuts them off.
    fn encode(&self, out: &mut FormWriter, input: &[u8]) {
        // The worst case, plus a whole row copied at the last position.
        let buf = out.spare(self.max_len * input.len() + N);
        let mut len = 0;
        for &byte in input {
            let row = &self.rows[usize::from(byte)];
            buf[len..len + N].copy_from_slice(row);
            len += usize::from(row[N - 1]);
        }
        out.advance(len);
    }
}

/// The output of [`FormEncoding::encode`]: a buffer kept allocated and initialised beyond what
/// has been written, so that encoding can write by index without growing the buffer (and
/// initialising the room again) on every call.
struct FormWriter {
    buf: Vec<u8>,
    len: usize,
}

impl FormWriter {
    fn with_capacity(capacity: usize) -> Self {
        FormWriter {
            buf: vec![0; capacity],
            len: 0,
        }
    }

    /// At least `room` writable bytes past the end of what has been written.
    fn spare(&mut self, room: usize) -> &mut [u8] {
        let needed = self.len + room;
        if needed > self.buf.len() {
            self.buf.resize(needed.max(2 * self.buf.len()), 0);
        }
        &mut self.buf[self.len..]
    }

    /// Marks `written` more bytes of the spare room as written.
    fn advance(&mut self, written: usize) {
        self.len += written;
    }

    /// Appends `bytes` as they are.
    fn push(&mut self, bytes: &[u8]) {
        self.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.advance(bytes.len());
    }

    fn into_vec(mut self) -> Vec<u8> {
        self.buf.truncate(self.len);
        self.buf
    }
}

// ===== impl FormBody =====

/// The rendered body of a batch call: ASCII, ready for the HTTP client as it is. It contains the
/// access token, so `Debug` shows only its length.
#[derive(Clone)]
pub struct FormBody(Bytes);

impl FormBody {
    /// The `Content-Type` the body must be sent with.
    pub const CONTENT_TYPE: &'static str = "application/x-www-form-urlencoded";

    /// The body's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The body, for the HTTP client (`reqwest::Body` is `From<Bytes>`).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The body's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false` for a rendered batch; here because `len` is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for FormBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FormBody")
            .field("bytes", &self.0.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const TOKEN: &str = "EAAGtokenSECRET123";
    const APP_SECRET: &str = "app-secret-xyz";

    fn auth(with_secret: bool) -> PageAuth {
        let secret = SecretString::from(APP_SECRET);
        PageAuth::new(SecretString::from(TOKEN), with_secret.then_some(&secret))
    }

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn encoded(value: Value) -> EncodedBody {
        EncodedBody::new(&body(value))
    }

    /// Splits a form body into its pairs, in order.
    fn form_pairs(form: &[u8]) -> Vec<(String, String)> {
        form_urlencoded::parse(form)
            .map(|(k, v): (Cow<'_, str>, Cow<'_, str>)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    fn field<'p>(pairs: &'p [(String, String)], name: &str) -> Option<&'p str> {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The operations of a rendered batch call, decoded the way Graph decodes them.
    fn decoded_operations(form: &FormBody) -> Vec<Map<String, Value>> {
        let pairs = form_pairs(form.as_bytes());
        let batch: Value = serde_json::from_str(field(&pairs, "batch").expect("batch field"))
            .expect("batch is JSON");
        batch
            .as_array()
            .expect("batch is an array")
            .iter()
            .map(|op| body(op.clone()))
            .collect()
    }

    /// Decodes an operation's form body back into a Send API body, reading each value as a string
    /// when the original was one and as JSON text otherwise.
    fn decoded_body(op: &Map<String, Value>, original: &Map<String, Value>) -> Map<String, Value> {
        let form = op["body"].as_str().expect("body is a string");
        form_pairs(form.as_bytes())
            .into_iter()
            .map(|(key, raw)| {
                let value = match original.get(&key) {
                    Some(Value::String(_)) => Value::String(raw),
                    _ => serde_json::from_str(&raw).expect("non-string values are JSON text"),
                };
                (key, value)
            })
            .collect()
    }

    #[test]
    fn appsecret_proof_is_lowercase_hex_hmac_sha256() {
        // RFC 4231, test case 2.
        let proof = appsecret_proof(
            &SecretString::from("what do ya want for nothing?"),
            &SecretString::from("Jefe"),
        );
        assert_eq!(
            proof.expose_secret(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn page_auth_precomputes_the_proof_of_its_token() {
        let expected = appsecret_proof(&SecretString::from(TOKEN), &SecretString::from(APP_SECRET));
        let auth = auth(true);
        assert_eq!(
            auth.appsecret_proof().map(|p| p.expose_secret()),
            Some(expected.expose_secret())
        );
        assert!(self::auth(false).appsecret_proof().is_none());
    }

    #[test]
    fn encodes_the_outer_form_fields() {
        let job = encoded(json!({"recipient": {"id": "1"}, "message": {"text": "hi"}}));
        let request = BatchRequest::encode(&auth(true), &[Operation::send(&job)]).unwrap();
        let pairs = form_pairs(request.form_body().as_bytes());

        let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "access_token",
                "appsecret_proof",
                "include_headers",
                "batch"
            ]
        );
        assert_eq!(field(&pairs, "access_token"), Some(TOKEN));
        assert_eq!(
            field(&pairs, "appsecret_proof"),
            auth(true).appsecret_proof().map(|p| p.expose_secret())
        );
        assert_eq!(field(&pairs, "include_headers"), Some("false"));
        let batch: Value = serde_json::from_str(field(&pairs, "batch").unwrap()).unwrap();
        assert_eq!(batch.as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn operations_with_their_own_credentials_carry_them_in_the_relative_url() {
        let secret = SecretString::from(APP_SECRET);
        // A token with characters that need query encoding, to see both layers applied.
        let other = PageAuth::new(SecretString::from("EAAB+other/tok=en&x"), Some(&secret));
        let owner = auth(true);
        let job = body(json!({"recipient": {"id": "1"}, "message": {"text": "hi & bye"}}));
        let sent = EncodedBody::new(&job);
        let ops = [
            Operation::send(&sent),
            Operation::send(&sent).with_auth(&other),
            Operation::send(&sent).with_auth(&other),
        ];
        let request = BatchRequest::encode(&owner, &ops).unwrap();
        let pairs = form_pairs(request.form_body().as_bytes());
        assert_eq!(field(&pairs, "access_token"), Some(TOKEN));

        let decoded = decoded_operations(&request.form_body());
        assert_eq!(decoded[0]["relative_url"], "me/messages");
        for op in &decoded[1..] {
            let url = op["relative_url"].as_str().unwrap();
            let (path, query) = url.split_once('?').expect("a query");
            assert_eq!(path, "me/messages");
            let query = form_pairs(query.as_bytes());
            assert_eq!(field(&query, "access_token"), Some("EAAB+other/tok=en&x"));
            assert_eq!(
                field(&query, "appsecret_proof"),
                other.appsecret_proof().map(|p| p.expose_secret())
            );
            assert_eq!(decoded_body(op, &job), job);
        }
        // Both Pages' credentials are known to the request (the reply decoder scrubs them all),
        // each once.
        let tokens: Vec<&str> = request.auths().map(|a| a.token().expose_secret()).collect();
        assert_eq!(tokens, [TOKEN, "EAAB+other/tok=en&x"]);
    }

    #[test]
    fn omits_the_proof_without_an_app_secret() {
        let job = encoded(json!({"recipient": {"id": "1"}}));
        let request = BatchRequest::encode(&auth(false), &[Operation::send(&job)]).unwrap();
        let pairs = form_pairs(request.form_body().as_bytes());
        assert_eq!(field(&pairs, "appsecret_proof"), None);
        assert_eq!(field(&pairs, "access_token"), Some(TOKEN));
    }

    #[test]
    fn encodes_an_operation_exactly() {
        let job = encoded(json!({
            "recipient": {"id": "6543210987654321"},
            "messaging_type": "UPDATE",
            "message": {"text": "a&b=c d"},
            "notification_type": "NO_PUSH",
        }));
        let request = BatchRequest::encode(&auth(false), &[Operation::send(&job)]).unwrap();
        let pairs = form_pairs(request.form_body().as_bytes());
        assert_eq!(
            field(&pairs, "batch").unwrap(),
            concat!(
                r#"[{"method":"POST","relative_url":"me/messages","body":""#,
                "recipient=%7B%22id%22%3A%226543210987654321%22%7D",
                "&messaging_type=UPDATE",
                "&message=%7B%22text%22%3A%22a%26b%3Dc+d%22%7D",
                "&notification_type=NO_PUSH",
                r#""}]"#,
            )
        );
    }

    #[test]
    fn scalars_other_than_strings_are_json_text() {
        let job = encoded(json!({"n": 42, "flag": true, "nothing": null, "list": [1, "x"]}));
        let request = BatchRequest::encode(&auth(false), &[Operation::send(&job)]).unwrap();
        let ops = decoded_operations(&request.form_body());
        assert_eq!(
            ops[0]["body"],
            "n=42&flag=true&nothing=null&list=%5B1%2C%22x%22%5D"
        );
    }

    #[test]
    fn unchained_operations_do_not_carry_omit_response_on_success() {
        let job = encoded(json!({"recipient": {"id": "1"}}));
        let request = BatchRequest::encode(
            &auth(false),
            &[Operation::send(&job), Operation::send(&job)],
        )
        .unwrap();
        for op in decoded_operations(&request.form_body()) {
            assert_eq!(op.len(), 3, "{op:?}");
            assert_eq!(op["method"], "POST");
            assert_eq!(op["relative_url"], "me/messages");
        }
    }

    #[test]
    fn chaining_makes_every_operation_return_its_response() {
        let job = encoded(json!({"recipient": {"id": "1"}}));
        let ops = [
            Operation::send(&job).name("first"),
            Operation::send(&job).depends_on("first"),
            Operation::send(&job),
        ];
        let request = BatchRequest::encode(&auth(false), &ops).unwrap();
        let decoded = decoded_operations(&request.form_body());
        assert_eq!(decoded[0]["name"], "first");
        assert_eq!(decoded[1]["depends_on"], "first");
        for op in &decoded {
            assert_eq!(op["omit_response_on_success"], false, "{op:?}");
        }
    }

    #[test]
    fn names_are_json_escaped() {
        let job = encoded(json!({"recipient": {"id": "1"}}));
        let name = "a\"b\\c\nd é";
        let ops = [Operation::send(&job).name(name)];
        let request = BatchRequest::encode(&auth(false), &ops).unwrap();
        assert_eq!(decoded_operations(&request.form_body())[0]["name"], name);
    }

    #[test]
    fn rejects_empty_and_oversized_batches() {
        let job = encoded(json!({"recipient": {"id": "1"}}));
        assert_eq!(
            BatchRequest::encode(&auth(false), &[]).unwrap_err(),
            EncodeError::Empty
        );
        let full = vec![Operation::send(&job); MAX_OPERATIONS];
        assert!(BatchRequest::encode(&auth(false), &full).is_ok());
        let over = vec![Operation::send(&job); MAX_OPERATIONS + 1];
        assert_eq!(
            BatchRequest::encode(&auth(false), &over).unwrap_err(),
            EncodeError::TooMany(MAX_OPERATIONS + 1)
        );
    }

    #[test]
    fn rejects_broken_chains() {
        let job = encoded(json!({"recipient": {"id": "1"}}));
        let encode = |ops: &[Operation<'_>]| BatchRequest::encode(&auth(false), ops).unwrap_err();

        assert_eq!(
            encode(&[Operation::send(&job).name("")]),
            EncodeError::EmptyName { index: 0 }
        );
        assert_eq!(
            encode(&[
                Operation::send(&job).name("a"),
                Operation::send(&job).name("a")
            ]),
            EncodeError::DuplicateName {
                index: 1,
                first: 0,
                name: "a".into()
            }
        );
        // A dependency on a later operation would allow cycles.
        assert_eq!(
            encode(&[
                Operation::send(&job).depends_on("b"),
                Operation::send(&job).name("b")
            ]),
            EncodeError::UnknownDependency {
                index: 0,
                name: "b".into()
            }
        );
    }

    #[test]
    fn debug_never_shows_the_token_or_the_proof() {
        let auth = auth(true);
        let proof = auth.appsecret_proof().unwrap().expose_secret().to_owned();
        let job = encoded(json!({"recipient": {"id": "1"}}));
        let request = BatchRequest::encode(&auth, &[Operation::send(&job)]).unwrap();
        let form = request.form_body();
        assert!(String::from_utf8_lossy(form.as_bytes()).contains(TOKEN));

        for rendered in [
            format!("{auth:?}"),
            format!("{auth:#?}"),
            format!("{request:?}"),
            format!("{request:#?}"),
            format!("{form:?}"),
        ] {
            assert!(!rendered.contains(TOKEN), "{rendered}");
            assert!(!rendered.contains(&proof), "{rendered}");
        }
    }

    #[test]
    fn an_encoded_body_is_in_its_final_form_and_shows_only_its_length() {
        let job = encoded(
            json!({"recipient": {"id": "6543210987654321"}, "message": {"text": "secret plans"}}),
        );
        // Both layers of form encoding: `=` once more encoded, the JSON's quotes twice.
        assert_eq!(
            job.0.as_ref(),
            b"recipient%3D%257B%2522id%2522%253A%25226543210987654321%2522%257D\
              %26message%3D%257B%2522text%2522%253A%2522secret%2Bplans%2522%257D"
        );
        for rendered in [format!("{job:?}"), format!("{job:#?}")] {
            assert!(!rendered.contains("secret"), "{rendered}");
            assert!(!rendered.contains("6543210987654321"), "{rendered}");
            assert!(rendered.contains(&job.len().to_string()), "{rendered}");
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z &=%+?#\\n\\r\"\\\\{}\\[\\]:,é😀]{0,40}",
            // Every byte JSON escapes.
            "[\\x00-\\x1f\"\\\\\\x7f]{0,10}",
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        // Floats are left out: without serde_json's `float_roundtrip` a parsed float may differ
        // from the printed one in its last bit, which says nothing about the encoder.
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            text().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((text(), inner), 0..4)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    fn send_body() -> impl Strategy<Value = Map<String, Value>> {
        (
            text(),
            text(),
            prop::option::of(text()),
            prop::collection::vec((text(), json_value()), 0..4),
        )
            .prop_map(|(id, message, metadata, extra)| {
                let mut message = json!({ "text": message });
                if let Some(metadata) = metadata {
                    message["metadata"] = Value::from(metadata);
                }
                let mut map = Map::new();
                map.insert("recipient".into(), json!({ "id": id }));
                map.insert("messaging_type".into(), Value::from("UPDATE"));
                map.insert("message".into(), message);
                map.extend(extra);
                map
            })
    }

    proptest! {
        #[test]
        fn form_encoding_matches_the_reference_serializer(
            input in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let once: String = form_urlencoded::byte_serialize(&input).collect();
            let twice: String = form_urlencoded::byte_serialize(once.as_bytes()).collect();

            // Appending to something already written and from an empty buffer, as the encoder
            // does.
            let mut ours = FormWriter::with_capacity(0);
            ours.push(b"x");
            ONCE.encode(&mut ours, &input);
            TWICE.encode(&mut ours, &input);
            ONCE.encode(&mut ours, &input);
            prop_assert_eq!(
                String::from_utf8(ours.into_vec()).unwrap(),
                format!("x{once}{twice}{once}")
            );
        }

        #[test]
        fn json_is_written_as_serde_json_writes_it(value in json_value()) {
            let mut expected = FormWriter::with_capacity(0);
            TWICE.encode(&mut expected, &serde_json::to_vec(&value).unwrap());
            let mut ours = FormWriter::with_capacity(0);
            encode_json_twice(&mut ours, &value, &mut Vec::new());
            prop_assert_eq!(
                String::from_utf8(ours.into_vec()).unwrap(),
                String::from_utf8(expected.into_vec()).unwrap()
            );
        }

        #[test]
        fn any_send_body_survives_encoding(
            bodies in prop::collection::vec(send_body(), 1..=8),
            chained in any::<bool>(),
        ) {
            let names: Vec<String> = (0..bodies.len()).map(|i| format!("op{i}")).collect();
            let encoded: Vec<EncodedBody> = bodies.iter().map(EncodedBody::new).collect();
            let ops: Vec<Operation<'_>> = encoded
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let op = Operation::send(b);
                    match (chained, i) {
                        (false, _) => op,
                        (true, 0) => op.name(&names[0]),
                        (true, _) => op.name(&names[i]).depends_on(&names[i - 1]),
                    }
                })
                .collect();
            let request = BatchRequest::encode(&auth(true), &ops).unwrap();
            let form = request.form_body();

            let pairs = form_pairs(form.as_bytes());
            prop_assert_eq!(field(&pairs, "access_token"), Some(TOKEN));
            let decoded = decoded_operations(&form);
            prop_assert_eq!(decoded.len(), bodies.len());
            for (op, original) in decoded.iter().zip(&bodies) {
                // Compared as lists: the order of fields must survive too.
                let decoded: Vec<_> = decoded_body(op, original).into_iter().collect();
                let original: Vec<_> = original.clone().into_iter().collect();
                prop_assert_eq!(decoded, original);
                prop_assert_eq!(
                    op.get("omit_response_on_success"),
                    chained.then_some(&Value::Bool(false))
                );
            }
        }
    }
}
