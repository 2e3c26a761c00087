//! The simulator's shared state and the execution of one Send API operation against it.
//!
//! One [`Shared`] lives behind an `Arc` for the simulator's lifetime. Request handlers read it
//! without any lock held across an `.await`: the Page directory is an atomically swapped snapshot,
//! the faults likewise, and the short locks (occurrence counts, one Page's limiter, the delivery
//! record) are taken once per request or once per operation and released before anything waits.
//!
//! [`Shared::execute`] is the pipeline every operation goes through, batched or not:
//! item token → addressed Page → limiter (counts the call) → validation → injected throttle →
//! transient fault → reserved recipient → delivered. It does not know about HTTP, batches or
//! dependencies.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::error::GraphError;
use super::faults::{
    self, Faults, OpDecision, Outage, OutageMode, RequestDecision, SplitMix64, TransientCode,
    reserved,
};
use super::limits::{Usage, Verdict};
use super::pages::{Directory, Page, Registry, proof_matches};
use super::record::{Record, Stored, Totals};
use super::send::{self, Decoded, RecipientKind, Valid};

/// Keys of the occurrence map are already hashes; hashing them again would be wasted work.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Occurrences = HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>;

/// Everything the handlers share.
pub(crate) struct Shared {
    pub seed: u64,
    pub app_secret: Option<String>,
    pub registry: Registry,
    pub faults: ArcSwap<Faults>,
    pub outage: Mutex<Option<Outage>>,
    /// How many times each content hash has been seen; see the `faults` module.
    occurrences: Mutex<Occurrences>,
    pub record: Record,
    pub totals: Totals,
    start: Instant,
    start_unix_us: u64,
    pub budget_window_us: u64,
    batch_seq: AtomicU64,
    /// Cancelled on shutdown: long sleeps (timeouts, latency) give up and abort their connection.
    pub cancel: CancellationToken,
}

/// What one operation came to.
pub(crate) struct Outcome {
    /// The item's (or single send's) HTTP status.
    pub status: u16,
    /// JSON body: the success object or an error envelope.
    pub body: String,
    /// The Page the operation was charged to, if it got that far.
    pub page: Option<Arc<Page>>,
    /// That Page's usage right after this operation, for per-item headers. For an injected
    /// throttle, `regain_minutes` is already raised to [`Outcome::regain_floor`].
    pub usage: Option<Usage>,
    /// Set when an injected throttle refused the operation: the `estimated_time_to_regain_access`
    /// the request's outer headers must report at least for this Page.
    pub regain_floor: Option<u64>,
    /// Whether the item counts as a success for `depends_on` (2xx).
    pub success: bool,
    /// Set when the operation counts as delivered.
    pub delivered: Option<Stored>,
}

/// Where an operation comes from: its target node, its own auth fields and its Send API fields.
#[derive(Debug)]
pub(crate) struct Call {
    /// `me` or a Page id, from `{node}/messages`.
    pub node: String,
    pub decoded: Decoded,
}

impl Shared {
    pub(crate) fn new(
        seed: u64,
        app_secret: Option<String>,
        registry: Registry,
        faults: Faults,
        budget_window_us: u64,
    ) -> Self {
        let start_unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Shared {
            seed,
            app_secret,
            registry,
            faults: ArcSwap::from_pointee(faults),
            outage: Mutex::new(None),
            occurrences: Mutex::new(Occurrences::default()),
            record: Record::default(),
            totals: Totals::default(),
            start: Instant::now(),
            start_unix_us,
            budget_window_us,
            batch_seq: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        }
    }

    /// Microseconds since the simulator started (monotonic).
    pub(crate) fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub(crate) fn start_unix_us(&self) -> u64 {
        self.start_unix_us
    }

    fn unix_second(&self, now_us: u64) -> u64 {
        (self.start_unix_us + now_us) / 1_000_000
    }

    pub(crate) fn next_batch_seq(&self) -> u64 {
        self.batch_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The outage in force, forgetting one that has ended by itself.
    pub(crate) fn outage_mode(&self) -> Option<OutageMode> {
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        let o = (*outage)?;
        if o.until_us.is_some_and(|until| until <= self.now_us()) {
            *outage = None;
            return None;
        }
        Some(o.mode)
    }

    /// Turns content hashes into decision hashes by counting occurrences, under one lock.
    fn occurrence_decisions(&self, contents: &[u64]) -> Vec<u64> {
        let mut seen = self.occurrences.lock().unwrap_or_else(|e| e.into_inner());
        contents
            .iter()
            .map(|&content| {
                let count = seen.entry(content).or_insert(0);
                let decision = faults::occurrence_hash(content, *count);
                *count += 1;
                decision
            })
            .collect()
    }

    /// The fate of a request whose content hashes to `content`.
    pub(crate) fn decide_request(&self, content: u64) -> RequestDecision {
        let decision = self.occurrence_decisions(&[content])[0];
        self.faults.load().decide_request(decision)
    }

    /// The fates of operations whose contents hash to `contents`.
    pub(crate) fn decide_ops(&self, contents: &[u64]) -> Vec<OpDecision> {
        let faults = self.faults.load();
        self.occurrence_decisions(contents)
            .into_iter()
            .map(|d| faults.decide_op(d))
            .collect()
    }

    /// Runs one operation. `caller` is the Page the request's own token authenticated (the batch's
    /// top-level token, or a single send's token); an item token in `call` overrides it.
    pub(crate) fn execute(
        &self,
        directory: &Directory,
        caller: &Arc<Page>,
        call: &Call,
        decision: &OpDecision,
        batch: u64,
    ) -> Outcome {
        let trace = faults::fbtrace_id(decision.entropy);
        let fail = |error: GraphError, page: Option<&Arc<Page>>| {
            if let Some(page) = page {
                page.lock().counters.on_error(error.code);
            }
            Totals::add(&self.totals.rejected, 1);
            Outcome {
                status: error.status,
                body: error.to_json(&trace),
                page: page.cloned(),
                usage: None,
                regain_floor: None,
                success: false,
                delivered: None,
            }
        };

        let page = match &call.decoded.access_token {
            None => caller,
            Some(token) => match directory.authenticate(token) {
                Err(error) => return fail(error, None),
                Ok(page) => {
                    if let Some(secret) = &self.app_secret {
                        let proof = call.decoded.appsecret_proof.as_deref().unwrap_or("");
                        if !proof_matches(secret, token, proof) {
                            return fail(GraphError::appsecret_proof_invalid(), Some(page));
                        }
                    }
                    page
                }
            },
        };
        if call.node != "me" {
            match directory.page(&call.node) {
                None => return fail(GraphError::unknown_object(&call.node), None),
                Some(target) if target.index != page.index => {
                    return fail(GraphError::wrong_page(&call.node), Some(page));
                }
                Some(_) => {}
            }
        }

        // Everything that does not need the Page's lock is worked out first, so the lock covers
        // only the limiter decision and the counters.
        let fields = &call.decoded.fields;
        let media = send::is_media(fields);
        let verdict_if_admitted = match send::validate(fields) {
            Err(error) => Err(error),
            Ok(valid) => Ok(self.reply_for(&valid, decision)),
        };
        let now = self.now_us();
        let second = self.unix_second(now);
        let limits = page.limits();
        let mut state = page.lock();
        let verdict = state.limiter.admit(now, media, limits);
        let mut usage = state.limiter.usage(now, media, limits);
        state.counters.on_call(second);
        let mut regain_floor = None;
        let (status, body, delivered, success) = match (verdict, verdict_if_admitted) {
            (Verdict::Throttled { .. }, _) => {
                state.counters.on_error(613);
                Totals::add(&self.totals.throttled, 1);
                Totals::add(&self.totals.rejected, 1);
                let error = GraphError::rate_limited();
                (error.status, error.to_json(&trace), false, false)
            }
            // An injected throttle: answered and counted exactly like the arm above (the limiter
            // has already counted the call in every window), only the regain estimate differs.
            (Verdict::Admitted, Ok(Reply::Throttled { regain_minutes })) => {
                state.counters.on_error(613);
                Totals::add(&self.totals.throttled, 1);
                Totals::add(&self.totals.rejected, 1);
                usage.regain_minutes = usage.regain_minutes.max(regain_minutes);
                regain_floor = Some(regain_minutes);
                let error = GraphError::rate_limited();
                (error.status, error.to_json(&trace), false, false)
            }
            (Verdict::Admitted, Err(error)) | (Verdict::Admitted, Ok(Reply::Error(error))) => {
                state.counters.on_error(error.code);
                Totals::add(&self.totals.rejected, 1);
                (error.status, error.to_json(&trace), false, false)
            }
            (Verdict::Admitted, Ok(Reply::Ambiguous(error))) => {
                state.counters.on_error(error.code);
                state.counters.on_delivered(second);
                Totals::add(&self.totals.rejected, 1);
                (error.status, error.to_json(&trace), true, false)
            }
            (Verdict::Admitted, Ok(Reply::Success(body))) => {
                state.counters.on_delivered(second);
                (200, body, true, true)
            }
        };
        drop(state);
        let delivered = delivered.then(|| {
            Totals::add(&self.totals.delivered, 1);
            Stored {
                at_us: now,
                batch,
                page: page.index,
                body: serde_json::to_string(fields)
                    .expect("JSON maps always serialise")
                    .into_boxed_str(),
            }
        });
        Outcome {
            status,
            body,
            page: Some(page.clone()),
            usage: Some(usage),
            regain_floor,
            success,
            delivered,
        }
    }

    /// The reply a valid, admitted operation gets: an injected throttle, a transient fault, a
    /// reserved recipient's error, or success.
    fn reply_for(&self, valid: &Valid, decision: &OpDecision) -> Reply {
        if let Some(regain_minutes) = decision.throttle {
            return Reply::Throttled { regain_minutes };
        }
        match decision.transient {
            Some(TransientCode::Code2) => return Reply::Error(GraphError::transient_2()),
            Some(TransientCode::Code1200) => return Reply::Error(GraphError::transient_1200()),
            None => {}
        }
        if valid.recipient_kind == RecipientKind::Id {
            let error = match valid.recipient_value.as_str() {
                reserved::USER_BLOCKED_551 => Some(GraphError::user_blocked_551()),
                reserved::NO_MATCHING_USER_2018001 => Some(GraphError::no_matching_user()),
                reserved::OUTSIDE_WINDOW_2018278 => Some(GraphError::outside_window()),
                reserved::NOT_AVAILABLE_1545041 => Some(GraphError::not_available_1545041()),
                reserved::ALWAYS_TRANSIENT_2 => Some(GraphError::transient_2()),
                reserved::UNKNOWN_CODE_99999 => Some(GraphError::unknown_code_99999()),
                reserved::AMBIGUOUS_1357046 => {
                    return Reply::Ambiguous(GraphError::ambiguous_1357046());
                }
                _ => None,
            };
            if let Some(error) = error {
                return Reply::Error(error);
            }
        }
        let recipient_id = match valid.recipient_kind {
            RecipientKind::Id => Some(valid.recipient_value.clone()),
            RecipientKind::Anonymous => None,
            RecipientKind::Resolved => Some(resolved_psid(self.seed, &valid.recipient_value)),
        };
        let mut body = serde_json::Map::new();
        if let Some(id) = recipient_id {
            body.insert("recipient_id".into(), json!(id));
        }
        if !valid.sender_action {
            body.insert("message_id".into(), json!(message_id(decision.entropy)));
        }
        Reply::Success(serde_json::Value::Object(body).to_string())
    }
}

/// The reply worked out before the limiter has its say.
enum Reply {
    Success(String),
    Error(GraphError),
    /// An injected 613 (`Faults::item_throttle_rate`), reporting at least this regain estimate.
    Throttled {
        regain_minutes: u64,
    },
    /// An error reply for an operation that is nevertheless delivered (1/1357046).
    Ambiguous(GraphError),
}

/// A message id in the platform's shape (`m_` and a long URL-safe token), reproducible from the
/// operation's decision.
fn message_id(entropy: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    format!(
        "m_{}",
        faults::encode_id(SplitMix64::new(entropy), ALPHABET, 43)
    )
}

/// The PSID the "platform" resolves a non-PSID recipient (comment, post, token) to: 16 digits,
/// stable per recipient value.
fn resolved_psid(seed: u64, value: &str) -> String {
    let h = faults::hash_parts(seed, &[b"psid", value.as_bytes()]);
    format!("{}{:015}", 1 + h % 9, (h >> 4) % 1_000_000_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_platform_shape() {
        let id = message_id(7);
        assert!(id.starts_with("m_") && id.len() == 45);
        assert_eq!(id, message_id(7));
        assert_ne!(id, message_id(8));
        let psid = resolved_psid(1, "comment_123");
        assert_eq!(psid.len(), 16);
        assert!(psid.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(psid, resolved_psid(1, "comment_123"));
    }
}
