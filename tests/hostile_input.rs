//! Hostile input, end to end: every body of the job-contract corpus (`tests/corpus/jobs`) and a
//! set of transport-level attacks — a 10 MB body, 100,000 levels of nesting, invalid UTF-8 inside
//! a string, wrong content types, a routing key naming another Page, an unknown Page, bad
//! `message_id`s, forged pagerelay headers — are published through RabbitMQ to a running
//! daemon. Each refused message becomes a dead letter whose `x-pagerelay-reason` is the precise
//! reason and whose `x-pagerelay-error-message` names the field first; each valid one (1,999
//! characters, 13 quick replies, unknown fields …) is delivered, exactly as published. None of
//! them crashes or stalls the daemon: valid jobs published after them are all delivered, on the
//! same Pages, and it stays ready.
//!
//! Every message carries an `x-hostile-case` header naming its case; a dead letter keeps its
//! original headers, so each letter is matched to its case by name.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use pagerelay::amqp::headers;
use pagerelay::job::{DeliveryMeta, Job, MAX_JOB_BYTES};
use pagerelay::sim::{PageConfig, SimConfig, Simulator};
use serde_json::{Value, json};

use support::daemon::{Daemon, DaemonConfig};
use support::{broker, jobs, wait_for};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/jobs");
const CASE_HEADER: &str = "x-hostile-case";

/// The Page of the corpus; the others are Pages the corpus names too.
const PAGE: &str = "104857600000001";
const OTHER_PAGE: &str = "104857600000002";
const PAGES: [&str; 4] = [
    PAGE,
    OTHER_PAGE,
    "7",
    "9999999999999999999999999999999999999999999999999999999999999999",
];

/// What must become of a case.
#[derive(Debug, Clone)]
enum Expect {
    /// Sent to Graph with exactly this Send API body.
    Delivered(Value),
    /// Dead-lettered with this reason; the error message starts with `<field>: `.
    Dead {
        reason: &'static str,
        field: String,
        /// A further piece the error message must contain.
        mentions: Option<String>,
    },
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
    expect: Expect,
}

impl Case {
    /// A case published as `pagerelay publish` would: JSON content type, persistent.
    fn new(name: impl Into<String>, routing_key: &str, body: Vec<u8>, expect: Expect) -> Case {
        Case {
            name: name.into(),
            routing_key: routing_key.to_string(),
            body,
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
            expect,
        }
    }

    fn with_properties(mut self, f: impl FnOnce(BasicProperties) -> BasicProperties) -> Case {
        self.properties = f(self.properties);
        self
    }

    fn with_header(mut self, key: &str, value: AMQPValue) -> Case {
        let mut table = self.properties.headers().clone().unwrap_or_default();
        table.insert(key.into(), value);
        self.properties = self.properties.with_headers(table);
        self
    }

    /// What gets published: the properties with the case's name in a header.
    fn message(&self) -> (String, Vec<u8>, BasicProperties) {
        let case = self
            .clone()
            .with_header(CASE_HEADER, jobs::header(&self.name));
        (self.routing_key.clone(), self.body.clone(), case.properties)
    }
}

fn dead(reason: &'static str, field: &str) -> Expect {
    Expect::Dead {
        reason,
        field: field.to_string(),
        mentions: None,
    }
}

fn dead_mentioning(reason: &'static str, field: &str, mentions: &str) -> Expect {
    Expect::Dead {
        reason,
        field: field.to_string(),
        mentions: Some(mentions.to_string()),
    }
}

/// The files of a corpus folder, sorted, as (file stem, bytes).
fn corpus(folder: &str) -> Vec<(String, Vec<u8>)> {
    let mut paths: Vec<_> = fs::read_dir(Path::new(CORPUS).join(folder))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// The routing key a publisher would use: the body's `page_id` when it is one, else a key that
/// names no Page (and so is not compared with it).
fn routing_key_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["page_id"].as_str().map(str::to_string))
        .filter(|p| pagerelay::config::is_page_id(p))
        .unwrap_or_else(|| "hostile-input".to_string())
}

/// What the daemon must do with a body the validator accepts: deliver it, unless it expired
/// (the corpus's `expires_at` values are fixed dates) or names a Page nobody configured.
fn expect_valid(name: &str, body: &[u8]) -> Expect {
    let job = Job::decode(body, &DeliveryMeta::default())
        .unwrap_or_else(|e| panic!("{name}: the valid corpus is valid: {e}"));
    if job.is_expired(Utc::now() + chrono::Duration::seconds(60)) {
        return dead("expired", "expires_at");
    }
    assert!(PAGES.contains(&job.page_id.as_str()), "{name}: Page");
    Expect::Delivered(on_the_wire(job.send_body()))
}

/// A send body as Graph receives it in a batch: each operation's body is url-encoded, nested
/// values as JSON strings, and Graph parses back only the parameters it knows (`recipient`,
/// `message`). An unknown top-level object arrives as the string it was sent as.
fn on_the_wire(body: &serde_json::Map<String, Value>) -> Value {
    let mut body = body.clone();
    for (key, value) in body.iter_mut() {
        if !["recipient", "message"].contains(&key.as_str())
            && (value.is_object() || value.is_array())
        {
            *value = Value::String(value.to_string());
        }
    }
    Value::Object(body)
}

/// The whole corpus, as published with the job's Page as routing key.
fn corpus_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (name, body) in corpus("valid") {
        let expect = expect_valid(&name, &body);
        cases.push(Case::new(
            format!("valid/{name}"),
            &routing_key_of(&body),
            body,
            expect,
        ));
    }
    for (name, body) in corpus("invalid") {
        let (field, _) = name.split_once("--").expect("<field>--<case>");
        let expect = dead("invalid", field);
        cases.push(Case::new(
            format!("invalid/{name}"),
            &routing_key_of(&body),
            body,
            expect,
        ));
    }
    for (name, body) in corpus("framing") {
        cases.push(Case::new(
            format!("framing/{name}"),
            "hostile-input",
            body,
            dead("invalid", "body"),
        ));
    }
    cases
}

/// A valid job for `page` with a distinct recipient, as JSON.
fn job(page: &str, recipient: u64, text: &str) -> Value {
    json!({
        "page_id": page,
        "job_id": format!("hostile-{recipient}"),
        "recipient": {"id": recipient.to_string()},
        "messaging_type": "UPDATE",
        "message": {"text": text},
    })
}

fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn send_body(value: &Value) -> Value {
    let mut body = value.as_object().unwrap().clone();
    for field in pagerelay::job::PAGERELAY_FIELDS {
        body.shift_remove(*field);
    }
    Value::Object(body)
}

/// Attacks on the transport and the framing that the corpus (bodies decoded with no delivery
/// context) cannot express.
fn transport_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let ok = job(PAGE, 7_000_001, "fine");

    // Size: 10 MB, and one byte over the limit.
    let mut huge = ok.clone();
    huge["message"]["text"] = Value::String("x".repeat(10 * 1024 * 1024));
    cases.push(Case::new(
        "size/10-mb-body",
        PAGE,
        bytes(&huge),
        dead_mentioning("invalid", "body", &format!("limit is {MAX_JOB_BYTES}")),
    ));
    let mut over = ok.clone();
    over["padding"] = Value::String(String::new());
    let room = MAX_JOB_BYTES + 1 - bytes(&over).len();
    over["padding"] = Value::String("p".repeat(room));
    assert_eq!(bytes(&over).len(), MAX_JOB_BYTES + 1);
    cases.push(Case::new(
        "size/limit-plus-one",
        PAGE,
        bytes(&over),
        dead_mentioning(
            "invalid",
            "body",
            &format!("{} bytes, limit is {MAX_JOB_BYTES}", MAX_JOB_BYTES + 1),
        ),
    ));

    // Boundary lengths in UTF-16 code units, the unit a platform may count: 1,000 emoji are
    // 2,000 units (the JSON Schema, counting code points, would let them through).
    cases.push(Case::new(
        "length/1000-emoji-text",
        PAGE,
        bytes(&job(PAGE, 7_000_004, &"🚚".repeat(1000))),
        dead_mentioning("invalid", "message.text", "2000 UTF-16 code units"),
    ));

    // Nesting far past any parser's recursion limit, in an unknown field of a valid job.
    let mut deep = br#"{"page_id":"104857600000001","recipient":{"id":"7000002"},"messaging_type":"UPDATE","message":{"text":"deep"},"x":"#.to_vec();
    deep.extend(std::iter::repeat_n(b'[', 100_000));
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.push(b'}');
    cases.push(Case::new(
        "nesting/100000-deep",
        PAGE,
        deep,
        dead_mentioning("invalid", "body", "recursion limit"),
    ));

    // Invalid UTF-8 inside a string value (the corpus has it at the top level).
    let mut latin1 = bytes(&job(PAGE, 7_000_003, "caf_"));
    let at = latin1.iter().position(|b| *b == b'_').unwrap();
    latin1[at] = 0xE9;
    cases.push(Case::new(
        "utf8/latin-1-byte-in-text",
        PAGE,
        latin1,
        dead_mentioning("invalid", "body", &format!("offset {at}")),
    ));

    // Content types: wrong ones are refused by name, harmless spellings of JSON pass.
    for (i, content_type) in [
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin1",
        "application/json; charset=utf-8; boundary=x",
        "",
    ]
    .into_iter()
    .enumerate()
    {
        cases.push(
            Case::new(
                format!("content-type/{content_type:?}"),
                PAGE,
                bytes(&job(PAGE, 7_000_100 + i as u64, "typed")),
                dead("invalid", "content_type"),
            )
            .with_properties(|p| p.with_content_type(content_type.into())),
        );
    }
    for (i, content_type) in ["APPLICATION/JSON", "application/json; charset=\"UTF-8\""]
        .into_iter()
        .enumerate()
    {
        let job = job(PAGE, 7_000_200 + i as u64, "typed");
        cases.push(
            Case::new(
                format!("content-type/{content_type:?}"),
                PAGE,
                bytes(&job),
                Expect::Delivered(send_body(&job)),
            )
            .with_properties(|p| p.with_content_type(content_type.into())),
        );
    }
    let untyped = job(PAGE, 7_000_210, "untyped");
    let mut case = Case::new(
        "content-type/none",
        PAGE,
        bytes(&untyped),
        Expect::Delivered(send_body(&untyped)),
    );
    case.properties = BasicProperties::default().with_delivery_mode(2);
    cases.push(case);

    // The routing key names another Page than the body.
    cases.push(Case::new(
        "routing/key-names-another-page",
        OTHER_PAGE,
        bytes(&job(PAGE, 7_000_300, "misrouted")),
        dead_mentioning("invalid", "page_id", OTHER_PAGE),
    ));
    // A Page nobody configured.
    let stranger = "104857600000099";
    cases.push(Case::new(
        "routing/unknown-page",
        stranger,
        bytes(&job(stranger, 7_000_301, "who?")),
        Expect::Dead {
            reason: "unknown_page",
            field: "Page".into(),
            mentions: Some(stranger.into()),
        },
    ));

    // The job id from `message_id`, when the body has none: the same rule as `job_id`.
    for (i, message_id) in ["line\nbreak", "caf\u{e9}", &"m".repeat(201)]
        .into_iter()
        .enumerate()
    {
        let mut anonymous = job(PAGE, 7_000_400 + i as u64, "anonymous");
        anonymous.as_object_mut().unwrap().shift_remove("job_id");
        cases.push(
            Case::new(
                format!("message-id/{}", i + 1),
                PAGE,
                bytes(&anonymous),
                dead("invalid", "message_id"),
            )
            .with_properties(|p| p.with_message_id(message_id.into())),
        );
    }

    // pagerelay's own headers, forged or garbled by a publisher: read leniently, never trusted
    // into a crash; the job is simply sent.
    let forged = job(PAGE, 7_000_500, "forged");
    cases.push(
        Case::new(
            "headers/garbled-pagerelay-state",
            PAGE,
            bytes(&forged),
            Expect::Delivered(send_body(&forged)),
        )
        .with_header(headers::ATTEMPTS, jobs::header("lots"))
        .with_header(headers::PARKED, AMQPValue::Boolean(true))
        .with_header(headers::FIRST_PARKED_AT, jobs::header("yesterday"))
        .with_header(
            headers::PARK_DUE,
            AMQPValue::FieldTable(FieldTable::default()),
        )
        .with_header(headers::REASON, jobs::header("permanent")),
    );

    // Duplicate keys: the last one wins, and it is what is checked and sent.
    let twice = r#"{"page_id":"104857600000001","recipient":{"id":"7000600"},"messaging_type":"UPDATE","message":{"text":"first"},"message":{"text":"second"}}"#;
    cases.push(Case::new(
        "json/duplicate-key-last-wins",
        PAGE,
        twice.as_bytes().to_vec(),
        Expect::Delivered(json!({
            "recipient": {"id": "7000600"},
            "messaging_type": "UPDATE",
            "message": {"text": "second"},
        })),
    ));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_dead_lettered_by_field_and_stalls_nothing() {
    let prefix = broker::unique_prefix("hostile");
    let mut sim = SimConfig {
        rps_limit: 100_000,
        ..SimConfig::default()
    };
    for page in PAGES {
        sim = sim.with_page(PageConfig::new(page, format!("token-{page}"), 1_000_000));
    }
    let sim = Simulator::start(sim).await.unwrap();
    let client = sim.client();
    // The corpus shares one job id across cases: without the duplicate guard, each is sent.
    let mut config = DaemonConfig::new(&prefix, &sim.base_url())
        .section("pipeline", "dedup_capacity = 0\nshutdown_grace = \"10s\"");
    for page in PAGES {
        config = config.page(page, 1_000_000);
    }
    let mut daemon = Daemon::start(config).await;
    let pid = daemon.pid().unwrap();
    let conn = broker::connect().await;
    let topology = daemon.topology();

    let cases: Vec<Case> = corpus_cases()
        .into_iter()
        .chain(transport_cases())
        .collect();
    let names: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    let messages: Vec<_> = cases.iter().map(Case::message).collect();
    jobs::publish_raw(&conn, &topology, &messages).await;

    // Then ordinary traffic on the same Pages: it must all go through.
    let after: Vec<Value> = (0..200)
        .map(|i| {
            jobs::text_job(
                PAGES[i % 2],
                &format!("{}", 8_000_000 + i),
                &format!("after-{i}"),
            )
        })
        .collect();
    jobs::publish(&conn, &topology, &after).await;

    let expected_dead = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::Dead { .. }))
        .count();
    let expected_delivered = cases.len() - expected_dead + after.len();
    let dead_queue = topology.dead_queue();
    wait_for("every case settled", Duration::from_secs(120), || async {
        let dead = jobs::depth(&conn, &dead_queue).await as usize;
        let delivered = client.stats().await.ok()?.totals.delivered as usize;
        // Settled when every message has an outcome; which outcome is checked below, case by
        // case, so that a mismatch is reported by name rather than as a timeout.
        (dead + delivered >= expected_dead + expected_delivered).then_some(())
    })
    .await;
    // Anything beyond the expected would show up now.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Still up and ready, never restarted.
    let (status, _) = daemon.readyz().await.expect("the daemon answers");
    assert_eq!(status, 200, "ready after the hostile input");
    assert_eq!(daemon.pid(), Some(pid));
    let consumed = daemon.metric("pagerelay_jobs_consumed_total", &[]).await;
    assert_eq!(consumed as usize, cases.len() + after.len());

    // Dead letters: one per refused case, with the precise reason and field.
    let letters = jobs::drain(&conn, &dead_queue).await;
    let mut by_case: BTreeMap<String, Vec<jobs::DeadLetter>> = BTreeMap::new();
    for letter in letters {
        let case = letter
            .header(CASE_HEADER)
            .unwrap_or_else(|| panic!("a dead letter of no case: {:?}", letter.properties));
        by_case.entry(case).or_default().push(letter);
    }
    let mut failures = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for case in &cases {
        let letters = by_case.remove(&case.name).unwrap_or_default();
        match &case.expect {
            Expect::Delivered(_) => {
                if !letters.is_empty() {
                    failures.push(format!(
                        "{}: dead-lettered ({}: {:?})",
                        case.name,
                        letters[0].reason(),
                        letters[0].header(headers::ERROR_MESSAGE)
                    ));
                }
            }
            Expect::Dead {
                reason,
                field,
                mentions,
            } => {
                let [letter] = letters.as_slice() else {
                    failures.push(format!("{}: {} dead letters", case.name, letters.len()));
                    continue;
                };
                *reasons.entry(letter.reason()).or_default() += 1;
                let message = letter.header(headers::ERROR_MESSAGE).unwrap_or_default();
                // `invalid` messages are `<field>: <rule>`; the others are sentences that start
                // with what they are about (`expires_at … passed`, `Page … is not …`).
                let field_first = if *reason == "invalid" {
                    message.starts_with(&format!("{field}: "))
                } else {
                    message.starts_with(&format!("{field} "))
                };
                if letter.reason() != *reason
                    || !field_first
                    || mentions
                        .as_ref()
                        .is_some_and(|m| !message.contains(m.as_str()))
                    || message.contains('\n')
                {
                    failures.push(format!(
                        "{}: expected {reason} naming {field:?}{}, got {} {message:?}",
                        case.name,
                        mentions
                            .as_ref()
                            .map(|m| format!(" and {m:?}"))
                            .unwrap_or_default(),
                        letter.reason()
                    ));
                }
                // The letter is the message as published: body and routing key intact.
                if letter.body != case.body || letter.routing_key != case.routing_key {
                    failures.push(format!(
                        "{}: the dead letter is not the original",
                        case.name
                    ));
                }
            }
        }
    }
    assert!(by_case.is_empty(), "letters of unknown cases: {by_case:?}");

    // Deliveries: exactly the valid cases' bodies, each once, and all the traffic after them.
    let deliveries = client.all_deliveries().await.unwrap();
    let (after_deliveries, mut case_deliveries): (Vec<_>, Vec<_>) = deliveries
        .into_iter()
        .partition(|d| jobs::job_id_of(&d.body).is_some_and(|id| id.starts_with("after-")));
    let mut after_ids: Vec<String> = after_deliveries
        .iter()
        .filter_map(|d| jobs::job_id_of(&d.body))
        .collect();
    after_ids.sort();
    after_ids.dedup();
    assert_eq!(
        (after_ids.len(), after_deliveries.len()),
        (after.len(), after.len()),
        "every job after the hostile ones delivered once"
    );
    for case in &cases {
        if let Expect::Delivered(body) = &case.expect {
            match case_deliveries.iter().position(|d| &d.body == body) {
                Some(i) => {
                    case_deliveries.swap_remove(i);
                }
                None => failures.push(format!("{}: not delivered as {body}", case.name)),
            }
        }
    }
    for extra in &case_deliveries {
        failures.push(format!("delivered but no case expects it: {}", extra.body));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "HOSTILE {} cases: {} delivered, {} dead-lettered {reasons:?}; then {} ordinary jobs \
         delivered; the daemon stayed up and ready",
        cases.len(),
        cases.len() - expected_dead,
        expected_dead,
        after.len()
    );
    assert!(daemon.stop().await.success());
    broker::delete_topology(&prefix).await;
}
