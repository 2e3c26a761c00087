//! Seeded fault decisions: which batches fail, drop, stall or time out, which operations come back
//! `null`, with a transient error or throttled (613), and which recipients always fail.
//!
//! Every decision is a pure function of the simulator's seed, the content of the request or
//! operation, and how many times that exact content has been seen before. Nothing here draws from a
//! shared random stream, so the order in which concurrent requests reach the simulator does not change
//! any answer, and a retried operation (same content, next occurrence) gets a fresh draw and may
//! succeed. This module owns the knobs ([`Faults`]), the hashing and the derivation of decisions; it
//! does not apply them (the server and the executor do) and it does not count occurrences (the shared
//! state does, under one short lock per request).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Recipient ids (PSID-like digit strings) that always fail the same way, whatever the faults.
///
/// pagerelay's tests send to these to exercise each error path without configuring anything.
pub mod reserved {
    /// Code 551, no subcode: "This person isn't available right now" (user blocked the Page).
    pub const USER_BLOCKED_551: &str = "5510000000000551";
    /// Code 100, subcode 2018001: no matching user found.
    pub const NO_MATCHING_USER_2018001: &str = "1000000002018001";
    /// Code 10, subcode 2018278: message sent outside the allowed window.
    pub const OUTSIDE_WINDOW_2018278: &str = "1000000002018278";
    /// Code 200, subcode 1545041: message not sent, person not available.
    pub const NOT_AVAILABLE_1545041: &str = "2000000001545041";
    /// Code 2, `is_transient: true`, every time: a retry loop must give up on it eventually.
    pub const ALWAYS_TRANSIENT_2: &str = "2000000000000002";
    /// Code 1, subcode 1357046 ("Received Invalid JSON reply"). The simulator records the message as
    /// delivered anyway, as the platform's own example of this error describes: the reply is wrong,
    /// the delivery happened.
    pub const AMBIGUOUS_1357046: &str = "1000000001357046";
    /// Code 99999: a code no classification table knows.
    pub const UNKNOWN_CODE_99999: &str = "9999900000099999";

    /// Every reserved id, for tests that want to avoid them or loop over them.
    pub const ALL: [&str; 7] = [
        USER_BLOCKED_551,
        NO_MATCHING_USER_2018001,
        OUTSIDE_WINDOW_2018278,
        NOT_AVAILABLE_1545041,
        ALWAYS_TRANSIENT_2,
        AMBIGUOUS_1357046,
        UNKNOWN_CODE_99999,
    ];
}

/// Fault rates and delays, switchable at run time (`GET`/`PUT /_sim/faults`).
///
/// Rates are probabilities in `[0, 1]`. A `PUT` replaces the whole set: fields left out fall back
/// to their defaults, which are "no fault".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of batch (and single send) requests answered with HTTP 500 before anything runs.
    pub batch_500_rate: f64,
    /// Share answered with HTTP 503 before anything runs.
    pub batch_503_rate: f64,
    /// Share whose connection is aborted without any reply. Nothing in them runs: this models a
    /// request lost on the way in. (The lost-reply case is [`Faults::timeout_rate`].)
    pub drop_rate: f64,
    /// Share of the requests that are neither dropped nor failed whose operations all run and are
    /// recorded, but whose reply is held back for [`Faults::timeout_delay_ms`]: the client times
    /// out not knowing what happened.
    pub timeout_rate: f64,
    /// How long a timed-out request is held before the (late) reply is written.
    pub timeout_delay_ms: u64,
    /// Median added latency per request. With `latency_p99_ms` it defines a log-normal
    /// distribution; 0 means no added latency.
    pub latency_p50_ms: u64,
    /// 99th percentile added latency per request; must not be below the median. Samples are capped
    /// at four times this value so that a far tail cannot stall a test.
    pub latency_p99_ms: u64,
    /// Share of batch operations that come back `null` (not executed: not counted, not recorded).
    /// Single sends have no `null`, so this does not apply to them.
    pub item_null_rate: f64,
    /// Share of executed operations that fail with a transient error, half code 2 and half code
    /// 1200, both with `is_transient: true`. They count against the limits but are not delivered.
    pub item_transient_rate: f64,
    /// Share of operations answered with the rate-limit error (code 613, subcode 2534040,
    /// `OAuthException`, `is_transient: true`), exactly as if a real limit had refused them, while
    /// the real limits may be far from reached. Applies to batch items and single sends. Decided
    /// after authentication, the real limit checks and validation: an operation the real limits
    /// refuse, or that is invalid, gets that answer instead. An injected throttle takes precedence
    /// over the transient fault and over reserved recipients. Like a real 613, the call counts in
    /// every window of its Page (it reached the limiter), in `calls`, `throttled_613` and
    /// `rejected_by_code["613"]`, and is not delivered.
    pub item_throttle_rate: f64,
    /// The `estimated_time_to_regain_access` (minutes) reported in `X-Business-Use-Case-Usage`
    /// for the Page of an operation throttled by [`Faults::item_throttle_rate`]: in that item's
    /// own headers and in the outer headers of its request. If the real limits call for a longer
    /// wait, the real estimate is reported instead (the larger of the two wins). 0 is allowed.
    pub throttle_regain_minutes: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            batch_500_rate: 0.0,
            batch_503_rate: 0.0,
            drop_rate: 0.0,
            timeout_rate: 0.0,
            timeout_delay_ms: 30_000,
            latency_p50_ms: 0,
            latency_p99_ms: 0,
            item_null_rate: 0.0,
            item_transient_rate: 0.0,
            item_throttle_rate: 0.0,
            throttle_regain_minutes: 0,
        }
    }
}

/// A [`Faults`] value that cannot be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    #[error("{field} must be between 0 and 1, got {value}")]
    RateOutOfRange { field: &'static str, value: f64 },
    #[error("batch_500_rate + batch_503_rate + drop_rate must not exceed 1")]
    BatchRatesExceedOne,
    #[error("latency_p99_ms ({p99}) must be at least latency_p50_ms ({p50})")]
    LatencyOrder { p50: u64, p99: u64 },
    #[error("latency_p50_ms must be positive when latency_p99_ms is set")]
    LatencyMedianMissing,
}

impl Faults {
    /// Checks ranges; the server refuses a `PUT` that fails this and keeps the previous faults.
    pub fn validate(&self) -> Result<(), FaultsError> {
        let rates = [
            ("batch_500_rate", self.batch_500_rate),
            ("batch_503_rate", self.batch_503_rate),
            ("drop_rate", self.drop_rate),
            ("timeout_rate", self.timeout_rate),
            ("item_null_rate", self.item_null_rate),
            ("item_transient_rate", self.item_transient_rate),
            ("item_throttle_rate", self.item_throttle_rate),
        ];
        for (field, value) in rates {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultsError::RateOutOfRange { field, value });
            }
        }
        if self.batch_500_rate + self.batch_503_rate + self.drop_rate > 1.0 + 1e-9 {
            return Err(FaultsError::BatchRatesExceedOne);
        }
        if self.latency_p99_ms < self.latency_p50_ms {
            return Err(FaultsError::LatencyOrder {
                p50: self.latency_p50_ms,
                p99: self.latency_p99_ms,
            });
        }
        if self.latency_p50_ms == 0 && self.latency_p99_ms > 0 {
            return Err(FaultsError::LatencyMedianMissing);
        }
        Ok(())
    }
}

/// What happens to a whole request before and after its operations run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFate {
    /// Abort the connection; run nothing.
    Drop,
    /// Reply with this 5xx status; run nothing.
    Fail(u16),
    /// Run everything, then hold the reply for the timeout delay.
    TimeOut,
    /// Run everything, then reply after the sampled latency.
    Normal,
}

/// The decisions for one request, derived from its content and occurrence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestDecision {
    pub fate: RequestFate,
    /// Added latency before a normal reply.
    pub latency: Duration,
    /// Seeds the execution order of the request's operations and its `fbtrace_id`.
    pub entropy: u64,
}

/// How a transient item fault fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransientCode {
    Code2,
    Code1200,
}

/// The decisions for one operation, derived from its content and occurrence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpDecision {
    /// Reply `null` without running the operation.
    pub null: bool,
    /// Fail the operation (after it has been counted) with this transient error.
    pub transient: Option<TransientCode>,
    /// Refuse the operation (after it has been counted) with an injected 613, reporting this many
    /// minutes as `estimated_time_to_regain_access`. Takes precedence over `transient`.
    pub throttle: Option<u64>,
    /// Feeds the message id and `fbtrace_id`, so they are reproducible too.
    pub entropy: u64,
}

impl Faults {
    /// Derives a request's fate from `decision`, a hash of (seed, request content, occurrence).
    pub(crate) fn decide_request(&self, decision: u64) -> RequestDecision {
        let mut rng = SplitMix64::new(decision);
        let u = rng.unit();
        let fate = if u < self.drop_rate {
            RequestFate::Drop
        } else if u < self.drop_rate + self.batch_500_rate {
            RequestFate::Fail(500)
        } else if u < self.drop_rate + self.batch_500_rate + self.batch_503_rate {
            RequestFate::Fail(503)
        } else if rng.unit() < self.timeout_rate {
            RequestFate::TimeOut
        } else {
            RequestFate::Normal
        };
        let latency = self.sample_latency(&mut rng);
        RequestDecision {
            fate,
            latency,
            entropy: rng.next_u64(),
        }
    }

    /// Derives an operation's fate from `decision`, a hash of (seed, operation content, occurrence).
    pub(crate) fn decide_op(&self, decision: u64) -> OpDecision {
        let mut rng = SplitMix64::new(decision);
        let null = rng.unit() < self.item_null_rate;
        let transient = (rng.unit() < self.item_transient_rate).then(|| {
            if rng.next_u64() & 1 == 0 {
                TransientCode::Code2
            } else {
                TransientCode::Code1200
            }
        });
        let entropy = rng.next_u64();
        // Drawn after everything else, so that switching the throttle fault on or off does not
        // shift any other decision (or the message and trace ids) for the same seed.
        let throttle =
            (rng.unit() < self.item_throttle_rate).then_some(self.throttle_regain_minutes);
        OpDecision {
            null,
            transient,
            throttle,
            entropy,
        }
    }

    /// Log-normal latency with the configured median and 99th percentile: ln(X) ~ N(mu, sigma) with
    /// mu = ln(p50) and sigma = ln(p99 / p50) / z(0.99). Equal percentiles give a fixed delay.
    fn sample_latency(&self, rng: &mut SplitMix64) -> Duration {
        // Draw both variates unconditionally so that switching latency on or off does not shift the
        // entropy handed to the executor (and with it the execution order).
        let (u1, u2) = (rng.unit(), rng.unit());
        if self.latency_p50_ms == 0 {
            return Duration::ZERO;
        }
        const Z99: f64 = 2.326_347_874_040_841;
        let p50 = self.latency_p50_ms as f64;
        let p99 = self.latency_p99_ms as f64;
        let sigma = (p99 / p50).ln() / Z99;
        // Box-Muller; 1 - u1 is in (0, 1], so the logarithm is finite.
        let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let ms = (p50 * (sigma * z).exp()).min(4.0 * p99);
        Duration::from_micros((ms * 1000.0) as u64)
    }
}

/// How an outage fails requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutageMode {
    /// Every Graph request gets HTTP 503 with a code 2 error object.
    #[serde(rename = "503")]
    Http503,
    /// Every Graph request's connection is aborted without a reply.
    #[serde(rename = "drop")]
    Drop,
}

/// `POST /_sim/outage`: start (or replace) an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageRequest {
    /// How long it lasts; absent means until `DELETE /_sim/outage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default = "default_outage_mode")]
    pub mode: OutageMode,
}

fn default_outage_mode() -> OutageMode {
    OutageMode::Http503
}

/// `GET /_sim/outage` and the reply to `POST`: the outage in force, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutageView {
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutageMode>,
    /// Time left; absent for an open-ended outage (or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<u64>,
}

/// An outage in force: every Graph request fails until `until_us` (or until it is ended).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outage {
    pub mode: OutageMode,
    /// Simulator time (µs since start) when it ends by itself.
    pub until_us: Option<u64>,
}

impl Outage {
    pub(crate) fn view(outage: Option<Outage>, now_us: u64) -> OutageView {
        match outage {
            Some(o) if o.until_us.is_none_or(|until| until > now_us) => OutageView {
                active: true,
                mode: Some(o.mode),
                remaining_ms: o.until_us.map(|until| (until - now_us).div_ceil(1000)),
            },
            _ => OutageView {
                active: false,
                mode: None,
                remaining_ms: None,
            },
        }
    }
}

/// A stable 64-bit hash of `bytes` under `seed`.
///
/// Deliberately hand-written rather than `std`'s `DefaultHasher`, whose algorithm may change between
/// Rust releases: the same seed and the same requests must give the same answers from any build.
/// Not collision-resistant against an adversary, which a test simulator does not need.
pub(crate) fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = mix(seed ^ (bytes.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = step(h, u64::from_le_bytes(word));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = step(h, u64::from_le_bytes(word));
    }
    mix(h)
}

/// Hashes several byte strings as one sequence, with a separator so that ("ab","c") and
/// ("a","bc") differ.
pub(crate) fn hash_parts(seed: u64, parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .fold(mix(seed), |h, part| mix(h ^ hash_bytes(h, part)))
}

/// Combines a content hash with its occurrence number into the decision hash.
pub(crate) fn occurrence_hash(content: u64, occurrence: u64) -> u64 {
    mix(content ^ mix(occurrence.wrapping_add(0x632B_E59B_D9B4_E019)))
}

fn step(h: u64, word: u64) -> u64 {
    let x = (h ^ word).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 31)
}

/// SplitMix64's finaliser: a bijective avalanche mix.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A tiny deterministic generator (SplitMix64) for deriving several variates from one hash.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift: no modulo bias worth caring about here.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Renders `value` as `len` characters from `alphabet`; used for message and trace ids.
pub(crate) fn encode_id(mut rng: SplitMix64, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| char::from(alphabet[rng.below(alphabet.len())]))
        .collect()
}

pub(crate) const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A Graph-looking `fbtrace_id` derived from `entropy`.
pub(crate) fn fbtrace_id(entropy: u64) -> String {
    encode_id(SplitMix64::new(entropy ^ 0xFB7A_CE1D), BASE62, 11)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_content_sensitive() {
        // Pinned values: a change here changes every seeded answer, which must be deliberate.
        let a = hash_bytes(1, b"recipient=%7B%22id%22%3A%221%22%7D");
        assert_eq!(a, hash_bytes(1, b"recipient=%7B%22id%22%3A%221%22%7D"));
        assert_ne!(a, hash_bytes(2, b"recipient=%7B%22id%22%3A%221%22%7D"));
        assert_ne!(a, hash_bytes(1, b"recipient=%7B%22id%22%3A%222%22%7D"));
        assert_ne!(hash_bytes(0, b"abc"), hash_bytes(0, b"abc\0"));
        assert_ne!(hash_parts(0, &[b"ab", b"c"]), hash_parts(0, &[b"a", b"bc"]));
        assert_ne!(occurrence_hash(a, 0), occurrence_hash(a, 1));
    }

    #[test]
    fn op_rates_are_respected_statistically() {
        let faults = Faults {
            item_null_rate: 0.25,
            item_transient_rate: 0.5,
            ..Faults::default()
        };
        let n = 20_000u64;
        let (mut nulls, mut transients, mut code2) = (0, 0, 0);
        for i in 0..n {
            let d = faults.decide_op(mix(i));
            nulls += u64::from(d.null);
            if let Some(code) = d.transient {
                transients += 1;
                code2 += u64::from(code == TransientCode::Code2);
            }
        }
        let share = |k: u64| k as f64 / n as f64;
        assert!((share(nulls) - 0.25).abs() < 0.02, "nulls {nulls}");
        assert!(
            (share(transients) - 0.5).abs() < 0.02,
            "transients {transients}"
        );
        assert!((code2 as f64 / transients as f64 - 0.5).abs() < 0.03);
    }

    #[test]
    fn throttle_rate_is_respected_and_shifts_no_other_decision() {
        let base = Faults {
            item_null_rate: 0.25,
            item_transient_rate: 0.5,
            ..Faults::default()
        };
        let throttling = Faults {
            item_throttle_rate: 0.3,
            throttle_regain_minutes: 7,
            ..base.clone()
        };
        let n = 20_000u64;
        let mut throttled = 0u64;
        for i in 0..n {
            let (a, b) = (base.decide_op(mix(i)), throttling.decide_op(mix(i)));
            assert_eq!(a.throttle, None);
            assert_eq!(
                (a.null, a.transient, a.entropy),
                (b.null, b.transient, b.entropy)
            );
            if let Some(minutes) = b.throttle {
                assert_eq!(minutes, 7);
                throttled += 1;
            }
        }
        let share = throttled as f64 / n as f64;
        assert!((share - 0.3).abs() < 0.02, "throttled {throttled}");
        let all = Faults {
            item_throttle_rate: 1.0,
            ..Faults::default()
        };
        assert!((0..1000).all(|i| all.decide_op(mix(i)).throttle == Some(0)));
    }

    #[test]
    fn request_fates_split_by_rate() {
        let faults = Faults {
            drop_rate: 0.1,
            batch_500_rate: 0.2,
            batch_503_rate: 0.3,
            timeout_rate: 0.5,
            ..Faults::default()
        };
        let n = 20_000u64;
        let mut counts = [0u64; 4];
        for i in 0..n {
            let slot = match faults.decide_request(mix(i)).fate {
                RequestFate::Drop => 0,
                RequestFate::Fail(500) => 1,
                RequestFate::Fail(_) => 2,
                RequestFate::TimeOut | RequestFate::Normal => 3,
            };
            counts[slot] += 1;
        }
        let share = |k: u64| k as f64 / n as f64;
        assert!((share(counts[0]) - 0.1).abs() < 0.015);
        assert!((share(counts[1]) - 0.2).abs() < 0.015);
        assert!((share(counts[2]) - 0.3).abs() < 0.015);
    }

    #[test]
    fn latency_matches_the_configured_percentiles() {
        let faults = Faults {
            latency_p50_ms: 20,
            latency_p99_ms: 200,
            ..Faults::default()
        };
        let mut samples: Vec<Duration> = (0..20_000u64)
            .map(|i| faults.decide_request(mix(i)).latency)
            .collect();
        samples.sort();
        let p50 = samples[samples.len() / 2].as_secs_f64() * 1000.0;
        let p99 = samples[samples.len() * 99 / 100].as_secs_f64() * 1000.0;
        assert!((p50 - 20.0).abs() < 2.0, "p50 {p50}");
        assert!((p99 - 200.0).abs() < 30.0, "p99 {p99}");
        assert!(samples.last().unwrap() <= &Duration::from_millis(800));
    }

    #[test]
    fn fixed_latency_when_percentiles_are_equal() {
        let faults = Faults {
            latency_p50_ms: 7,
            latency_p99_ms: 7,
            ..Faults::default()
        };
        for i in 0..100 {
            let ms = faults.decide_request(mix(i)).latency.as_secs_f64() * 1000.0;
            assert!((ms - 7.0).abs() < 0.01, "{ms}");
        }
    }

    #[test]
    fn validation_rejects_bad_values() {
        let bad = Faults {
            item_null_rate: 1.5,
            ..Faults::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(FaultsError::RateOutOfRange {
                field: "item_null_rate",
                ..
            })
        ));
        let bad = Faults {
            latency_p50_ms: 10,
            latency_p99_ms: 5,
            ..Faults::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(FaultsError::LatencyOrder { .. })
        ));
        let bad = Faults {
            batch_500_rate: 0.6,
            batch_503_rate: 0.6,
            ..Faults::default()
        };
        assert_eq!(bad.validate(), Err(FaultsError::BatchRatesExceedOne));
        assert_eq!(Faults::default().validate(), Ok(()));
    }

    #[test]
    fn validation_checks_the_throttle_rate() {
        for value in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            let bad = Faults {
                item_throttle_rate: value,
                ..Faults::default()
            };
            assert!(
                matches!(
                    bad.validate(),
                    Err(FaultsError::RateOutOfRange {
                        field: "item_throttle_rate",
                        ..
                    })
                ),
                "{value} must be refused"
            );
        }
        for value in [0.0, 0.3, 1.0] {
            let good = Faults {
                item_throttle_rate: value,
                throttle_regain_minutes: 0,
                ..Faults::default()
            };
            assert_eq!(good.validate(), Ok(()), "{value} must be accepted");
        }
        let long_wait = Faults {
            item_throttle_rate: 0.5,
            throttle_regain_minutes: 1440,
            ..Faults::default()
        };
        assert_eq!(long_wait.validate(), Ok(()));
        // Missing fields in the admin JSON mean "no fault".
        let parsed: Faults = serde_json::from_str(r#"{"item_null_rate": 0.1}"#).unwrap();
        assert_eq!(
            (parsed.item_throttle_rate, parsed.throttle_regain_minutes),
            (0.0, 0)
        );
        let parsed: Faults =
            serde_json::from_str(r#"{"item_throttle_rate": 0.3, "throttle_regain_minutes": 5}"#)
                .unwrap();
        assert_eq!(
            (parsed.item_throttle_rate, parsed.throttle_regain_minutes),
            (0.3, 5)
        );
    }

    #[test]
    fn reserved_ids_look_like_psids_and_are_distinct() {
        let mut ids = reserved::ALL.to_vec();
        assert!(
            ids.iter()
                .all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit()))
        );
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), reserved::ALL.len());
    }
}
