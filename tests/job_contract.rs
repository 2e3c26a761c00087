//! The validator and the JSON Schema are one contract: every job in `tests/corpus/jobs` gets the
//! same verdict from `Job::decode` and from `schema/job.schema.json` (draft 2020-12, formats
//! checked), refused jobs are refused for the field their file name says, the schema's closed sets
//! and limits equal the validator's constants, and randomly damaged corpus jobs still get the same
//! verdict from both.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use jsonschema::{Draft, Validator};
use pagerelay::job::{self, DeliveryMeta, Job};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const SCHEMA_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/job.schema.json");
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/jobs");

static SCHEMA_JSON: LazyLock<Value> = LazyLock::new(|| {
    let text = fs::read_to_string(SCHEMA_PATH).expect("schema/job.schema.json is readable");
    serde_json::from_str(&text).expect("the schema is JSON")
});

static SCHEMA: LazyLock<Validator> = LazyLock::new(|| {
    // `format` is only an annotation in 2020-12 unless asked for; the contract means it.
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .build(&SCHEMA_JSON)
        .expect("the schema is a valid 2020-12 schema")
});

/// The files of one corpus folder, sorted, as (file stem, bytes).
fn corpus(folder: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(CORPUS).join(folder);
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    paths.sort();
    let files: Vec<_> = paths
        .into_iter()
        .map(|path| {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            (stem, fs::read(&path).expect("corpus file is readable"))
        })
        .collect();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

fn decode(body: &[u8]) -> Result<Job, job::JobError> {
    Job::decode(body, &DeliveryMeta::default())
}

fn parse(name: &str, body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"))
}

fn schema_errors(instance: &Value) -> Vec<String> {
    SCHEMA
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

#[test]
fn valid_corpus_passes_both_and_forwards_everything_else() {
    let mut disagreements = Vec::new();
    for (name, body) in corpus("valid") {
        let value = parse(&name, &body);
        let schema = schema_errors(&value);
        if !schema.is_empty() {
            disagreements.push(format!("{name}: the schema refuses it: {schema:?}"));
        }
        match decode(&body) {
            Ok(job) => {
                let mut expected = value.as_object().unwrap().clone();
                for field in job::PAGERELAY_FIELDS {
                    expected.shift_remove(*field);
                }
                assert_eq!(
                    serde_json::to_string(job.send_body()).unwrap(),
                    serde_json::to_string(&expected).unwrap(),
                    "{name}: the send body is not the job minus the pagerelay fields"
                );
            }
            Err(e) => disagreements.push(format!("{name}: the validator refuses it: {e}")),
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[test]
fn invalid_corpus_fails_both_for_the_named_field() {
    let mut disagreements = Vec::new();
    for (name, body) in corpus("invalid") {
        let (field, _) = name
            .split_once("--")
            .unwrap_or_else(|| panic!("{name}: invalid cases are named <field>--<case>"));
        let value = parse(&name, &body);
        if SCHEMA.is_valid(&value) {
            disagreements.push(format!("{name}: the schema accepts it"));
        }
        match decode(&body) {
            Ok(_) => disagreements.push(format!("{name}: the validator accepts it")),
            Err(e) if e.field() != field => {
                disagreements.push(format!(
                    "{name}: refused for {}, not {field}: {e}",
                    e.field()
                ));
            }
            Err(e) => {
                let message = e.to_string();
                assert!(!message.contains('\n'), "{name}: {message}");
                assert!(message.len() < 300, "{name}: long message: {message}");
            }
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[test]
fn framing_corpus_is_refused_as_a_body() {
    for (name, body) in corpus("framing") {
        match decode(&body) {
            Ok(job) => panic!("{name}: accepted as {job:?}"),
            Err(e) => assert_eq!(e.field(), "body", "{name}: {e}"),
        }
    }
}

/// The one place the validator and the schema differ on purpose: pagerelay counts `message.text`
/// and `message.metadata` in UTF-16 code units (Graph leaves the unit open; units are the
/// stricter reading), `maxLength` counts code points. Only text outside the Basic Multilingual
/// Plane can tell them apart, and there the validator is the stricter, never the looser.
#[test]
fn astral_text_is_where_the_validator_is_stricter_than_the_schema() {
    let job = |field: &str, value: String| {
        let mut job = json!({
            "page_id": "104857600000001",
            "recipient": {"id": "6543210987654321"},
            "messaging_type": "UPDATE",
            "message": {"text": "hi"},
        });
        job["message"][field] = Value::from(value);
        job
    };
    for (field, limit) in [("text", 1999usize), ("metadata", 999)] {
        // At the limit in UTF-16 units: both accept.
        let fits = job(field, format!("{}x", "🚚".repeat(limit / 2)));
        assert!(schema_errors(&fits).is_empty(), "{field}");
        assert!(
            decode(&serde_json::to_vec(&fits).unwrap()).is_ok(),
            "{field}"
        );
        // Over it in units, under it in code points: only the validator refuses, by name.
        let chars = limit / 2 + 1;
        let over = job(field, "🚚".repeat(chars));
        assert!(schema_errors(&over).is_empty(), "{field}");
        let err = decode(&serde_json::to_vec(&over).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "message.{field}: {} UTF-16 code units ({chars} characters; emoji and other \
                 characters outside the Basic Multilingual Plane count twice), limit is {limit}",
                chars * 2
            )
        );
    }
}

#[test]
fn credentials_are_never_echoed() {
    for (name, body) in corpus("invalid") {
        let value = parse(&name, &body);
        let secrets: Vec<&str> = job::CREDENTIAL_FIELDS
            .iter()
            .filter_map(|field| value.get(*field).and_then(Value::as_str))
            .collect();
        if let Err(e) = decode(&body) {
            for secret in secrets {
                assert!(!e.to_string().contains(secret), "{name}: {e}");
            }
        }
    }
}

/// The corpus accepts every allowed value at least once, so an allowed value dropped from
/// either side shows up as a disagreement.
#[test]
fn valid_corpus_uses_every_allowed_value() {
    let jobs: Vec<Value> = corpus("valid")
        .iter()
        .map(|(name, body)| parse(name, body))
        .collect();
    let seen = |pointer: &str, value: &str| {
        jobs.iter()
            .any(|job| job.pointer(pointer).and_then(Value::as_str) == Some(value))
    };
    let sets: [(&str, &[&str]); 5] = [
        ("/messaging_type", job::MESSAGING_TYPES),
        ("/tag", job::MESSAGE_TAGS),
        ("/sender_action", job::SENDER_ACTIONS),
        ("/notification_type", job::NOTIFICATION_TYPES),
        ("/message/attachment/type", job::ATTACHMENT_TYPES),
    ];
    for (pointer, values) in sets {
        for value in values {
            assert!(
                seen(pointer, value),
                "no valid corpus job has {pointer} = {value}"
            );
        }
    }
    for key in job::RECIPIENT_KEYS {
        assert!(
            jobs.iter().any(|job| job["recipient"].get(key).is_some()),
            "no valid corpus job has recipient.{key}"
        );
    }
}

#[test]
fn schema_sets_and_limits_are_the_validators() {
    let schema = &*SCHEMA_JSON;
    let at = |pointer: &str| {
        schema
            .pointer(pointer)
            .unwrap_or_else(|| panic!("the schema has no {pointer}"))
    };
    let strings = |pointer: &str| -> Vec<String> {
        at(pointer)
            .as_array()
            .unwrap_or_else(|| panic!("{pointer} is not an array"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let sets: [(&str, &[&str]); 5] = [
        ("/properties/messaging_type/enum", job::MESSAGING_TYPES),
        ("/properties/tag/enum", job::MESSAGE_TAGS),
        ("/properties/sender_action/enum", job::SENDER_ACTIONS),
        (
            "/properties/notification_type/enum",
            job::NOTIFICATION_TYPES,
        ),
        (
            "/properties/message/properties/attachment/properties/type/enum",
            job::ATTACHMENT_TYPES,
        ),
    ];
    for (pointer, values) in sets {
        assert_eq!(strings(pointer), values, "{pointer}");
    }
    let recipient_keys: Vec<&String> = at("/properties/recipient/properties")
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(recipient_keys, job::RECIPIENT_KEYS);
    for field in job::CREDENTIAL_FIELDS {
        assert_eq!(
            at(&format!("/properties/{field}/not")),
            &json!({}),
            "{field}"
        );
    }
    let number = |pointer: &str| at(pointer).as_u64().unwrap() as usize;
    assert_eq!(
        number("/properties/message/properties/text/maxLength"),
        job::MAX_TEXT_CHARS
    );
    assert_eq!(
        number("/properties/message/properties/metadata/maxLength"),
        job::MAX_METADATA_CHARS
    );
    assert_eq!(
        number("/properties/message/properties/quick_replies/maxItems"),
        job::MAX_QUICK_REPLIES
    );
    assert_eq!(
        at("/properties/job_id/pattern"),
        &json!(format!("^[ -~]{{1,{}}}$", job::MAX_JOB_ID_CHARS))
    );
}

#[test]
fn every_schema_property_is_described() {
    fn walk(node: &Value, pointer: String, missing: &mut Vec<String>) {
        let Some(object) = node.as_object() else {
            return;
        };
        for (section, children) in [("properties", true), ("$defs", true)] {
            if let Some(Value::Object(map)) = object.get(section).filter(|_| children) {
                for (name, child) in map {
                    let child_pointer = format!("{pointer}/{section}/{name}");
                    if child.get("description").is_none() {
                        missing.push(child_pointer.clone());
                    }
                    walk(child, child_pointer, missing);
                }
            }
        }
    }
    let mut missing = Vec::new();
    assert!(SCHEMA_JSON.get("description").is_some());
    walk(&SCHEMA_JSON, String::new(), &mut missing);
    assert!(missing.is_empty(), "undocumented: {missing:?}");
}

// ===== damaged jobs =====

/// Paths into a job that the contract has rules about, plus an unknown one.
const PATHS: &[&[&str]] = &[
    &["page_id"],
    &["job_id"],
    &["expires_at"],
    &["recipient"],
    &["recipient", "id"],
    &["recipient", "user_ref"],
    &["messaging_type"],
    &["tag"],
    &["message"],
    &["message", "text"],
    &["message", "attachment"],
    &["message", "attachment", "type"],
    &["message", "attachment", "payload"],
    &["message", "metadata"],
    &["message", "quick_replies"],
    &["sender_action"],
    &["notification_type"],
    &["access_token"],
    &["something_new"],
];

/// Values chosen near the contract's edges: every allowed and some near-miss enum values,
/// strings around each length limit, ids, timestamps, and containers of the wrong shape.
fn edge_value() -> impl Strategy<Value = Value> {
    let words: Vec<&'static str> = [
        job::MESSAGING_TYPES,
        job::MESSAGE_TAGS,
        job::SENDER_ACTIONS,
        job::NOTIFICATION_TYPES,
        job::ATTACHMENT_TYPES,
        &[
            "update",
            "Typing_on",
            "sticker",
            "react",
            "LOUD",
            "human_agent",
            " UPDATE",
        ],
    ]
    .concat();
    let timestamps = [
        "2026-11-22T10:00:00Z",
        "2026-11-22T10:00:00+02:00",
        "2026-11-22t10:00:00.5z",
        "2026-11-22 10:00:00Z",
        "2026-02-29T10:00:00Z",
        "2028-02-29T10:00:00Z",
        "2016-12-31T23:59:60Z",
        "2026-11-22T10:00:00",
        "2026-11-22",
    ];
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(words).prop_map(Value::from),
        prop::sample::select(timestamps.to_vec()).prop_map(Value::from),
        (
            prop::sample::select(vec!["x", "é", "€", "\u{301}"]),
            0usize..4
        )
            .prop_flat_map(|(unit, band)| {
                let center = [0usize, 200, 999, 1999][band];
                (Just(unit), center.saturating_sub(2)..center + 3)
            })
            .prop_map(|(unit, n)| Value::from(unit.repeat(n))),
        "[0-9]{0,66}".prop_map(Value::from),
        "[ -~]{0,3}".prop_map(Value::from),
        "\\PC{0,8}|[\\x00-\\x1f\\x7f]{1,2}".prop_map(Value::from),
        (0usize..16).prop_map(|n| {
            Value::Array(vec![
                json!({"content_type": "text", "title": "t", "payload": "p"});
                n
            ])
        }),
        prop::collection::vec(
            (
                prop::sample::select(vec!["id", "user_ref", "post_id", "psid", "text", "type"]),
                prop_oneof![
                    Just(json!("1")),
                    Just(json!("")),
                    Just(json!(1)),
                    Just(json!("image")),
                    Just(json!({}))
                ],
            ),
            0..3,
        )
        .prop_map(|entries| Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
        )),
        Just(json!({"type": "video", "payload": {"url": "https://example.com/v.mp4"}})),
        Just(json!({"text": "hi"})),
        Just(json!([])),
    ]
}

#[derive(Debug, Clone)]
enum Damage {
    Remove(&'static [&'static str]),
    Set(&'static [&'static str], Value),
}

/// Strings of `unit` repeated around `limit` times: limit - 2 to limit + 2.
fn around(limit: usize) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["x", "é", "€", "\u{301}"]),
        limit.saturating_sub(2)..limit + 3,
    )
        .prop_map(|(unit, n)| Value::from(unit.repeat(n)))
}

/// One of `allowed` or a near miss.
fn word(
    allowed: &'static [&'static str],
    near_misses: &'static [&'static str],
) -> BoxedStrategy<Value> {
    prop::sample::select([allowed, near_misses].concat())
        .prop_map(Value::from)
        .boxed()
}

/// Values aimed at the rule that governs `path`.
fn aimed_at(path: &[&str]) -> BoxedStrategy<Value> {
    match *path.last().unwrap() {
        "page_id" => prop_oneof![
            "[0-9]{0,3}|[0-9]{63,66}".prop_map(Value::from),
            Just(json!(104857600000001u64)),
        ]
        .boxed(),
        "job_id" => "[ -~]{0,2}|[ -~]{199,201}|a[\\x00-\\x1f\\x7f-\\u{ff}]"
            .prop_map(Value::from)
            .boxed(),
        "expires_at" => prop::sample::select(vec![
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00+02:00",
            "2026-11-22t10:00:00.5z",
            "2026-11-22 10:00:00Z",
            "2026-02-29T10:00:00Z",
            "2028-02-29T10:00:00Z",
            "2016-12-31T23:59:60Z",
            "2026-11-22T10:00:00",
            "2026-11-22",
        ])
        .prop_map(Value::from)
        .boxed(),
        "recipient" => prop::collection::vec(
            (
                prop::sample::select(vec!["id", "user_ref", "one_time_notif_token", "psid"]),
                prop_oneof![Just(json!("1")), Just(json!("")), Just(json!(1))],
            ),
            0..3,
        )
        .prop_map(|entries| {
            Value::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        })
        .boxed(),
        "id" | "user_ref" => prop::sample::select(vec![json!("1"), json!(""), json!(1), Value::Null])
            .boxed(),
        "messaging_type" => word(job::MESSAGING_TYPES, &["update", "MESSAGE TAG"]),
        "tag" => word(job::MESSAGE_TAGS, &["human_agent", "SHIPPING_UPDATE"]),
        "sender_action" => word(job::SENDER_ACTIONS, &["TYPING_ON", "react"]),
        "notification_type" => word(job::NOTIFICATION_TYPES, &["regular", "LOUD"]),
        "type" => word(job::ATTACHMENT_TYPES, &["IMAGE", "sticker"]),
        "text" => prop_oneof![around(job::MAX_TEXT_CHARS), around(0)].boxed(),
        "metadata" => prop_oneof![around(job::MAX_METADATA_CHARS), around(0)].boxed(),
        "quick_replies" => (job::MAX_QUICK_REPLIES - 2..job::MAX_QUICK_REPLIES + 3)
            .prop_map(|n| {
                Value::Array(vec![json!({"content_type": "text", "title": "t", "payload": "p"}); n])
            })
            .boxed(),
        "attachment" => prop::sample::select(vec![
            json!({"type": "video", "payload": {"url": "https://example.com/v.mp4"}}),
            json!({"type": "image"}),
            json!({"payload": {}}),
        ])
        .boxed(),
        "payload" => prop::sample::select(vec![json!({}), json!("https://example.com/a.png")])
            .boxed(),
        "message" => prop::sample::select(vec![
            json!({"text": "hi"}),
            json!({"attachment": {"type": "audio", "payload": {"url": "https://example.com/a.mp3"}}}),
            json!({"text": "hi", "attachment": {"type": "file", "payload": {}}}),
            json!({}),
        ])
        .boxed(),
        _ => edge_value().boxed(),
    }
}

fn damage() -> impl Strategy<Value = Damage> {
    prop::sample::select(PATHS).prop_flat_map(|path| {
        prop_oneof![
            1 => Just(Damage::Remove(path)),
            3 => aimed_at(path).prop_map(move |value| Damage::Set(path, value)),
            1 => edge_value().prop_map(move |value| Damage::Set(path, value)),
        ]
    })
}

fn apply(job: &mut Value, damage: &Damage) {
    let (path, value) = match damage {
        Damage::Remove(path) => (*path, None),
        Damage::Set(path, value) => (*path, Some(value)),
    };
    let (last, parents) = path.split_last().unwrap();
    let mut node = job;
    for key in parents {
        match node.get_mut(*key) {
            Some(child) if child.is_object() => node = child,
            _ => return,
        }
    }
    let Some(object) = node.as_object_mut() else {
        return;
    };
    match value {
        None => {
            object.shift_remove(*last);
        }
        Some(value) => {
            object.insert((*last).to_owned(), value.clone());
        }
    }
}

/// Small valid corpus jobs: seeds for damage.
static SEEDS: LazyLock<Vec<Map<String, Value>>> = LazyLock::new(|| {
    corpus("valid")
        .into_iter()
        .filter(|(_, body)| body.len() < 2048)
        .map(|(name, body)| match parse(&name, &body) {
            Value::Object(job) => job,
            other => panic!("{name}: {other}"),
        })
        .collect()
});

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn damaged_jobs_get_the_same_verdict_from_both(
        seed in any::<prop::sample::Index>(),
        damages in prop::collection::vec(damage(), 1..4),
    ) {
        let mut job = Value::Object(seed.get(&SEEDS).clone());
        for damage in &damages {
            apply(&mut job, damage);
        }
        let body = serde_json::to_vec(&job).unwrap();
        let validator = decode(&body);
        let schema = schema_errors(&job);
        prop_assert_eq!(
            validator.is_ok(),
            schema.is_empty(),
            "job {}\nvalidator: {:?}\nschema: {:?}",
            job,
            validator.err().map(|e| e.to_string()),
            schema
        );
    }
}

/// The property above proves little if damage almost always breaks the job (or never does):
/// sample it and require a real mix of verdicts.
#[test]
fn damage_yields_both_verdicts() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRng, TestRunner};

    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(Config::default().rng_algorithm),
    );
    let strategy = (
        any::<prop::sample::Index>(),
        prop::collection::vec(damage(), 1..4),
    );
    let (mut valid, samples) = (0, 1000);
    for _ in 0..samples {
        let (seed, damages) = strategy.new_tree(&mut runner).unwrap().current();
        let mut job = Value::Object(seed.get(&SEEDS).clone());
        for damage in &damages {
            apply(&mut job, damage);
        }
        valid += usize::from(decode(&serde_json::to_vec(&job).unwrap()).is_ok());
    }
    assert!(
        (samples / 10..=samples * 9 / 10).contains(&valid),
        "{valid} of {samples} damaged jobs are valid"
    );
}
