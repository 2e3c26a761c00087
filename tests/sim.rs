//! Black-box tests of graph-sim over real HTTP on loopback: every endpoint, authentication, each
//! Send API rule, each fault, both rate limits, the time-scaled budget window, `depends_on`
//! ordering, the delivery record, stats, determinism, and the binary.
//!
//! Requests are encoded here by hand (not with any pagerelay module), so the simulator's parsing is
//! exercised by an independent encoder.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pagerelay::sim::{
    Delivery, Faults, OutageMode, PageConfig, PageUpdate, SimConfig, Simulator, appsecret_proof,
    reserved,
};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};

const PAGE: &str = "104857600000001";
const TOKEN: &str = "page-one-token";
const PAGE2: &str = "104857600000002";
const TOKEN2: &str = "page-two-token";
const FORM: &str = "application/x-www-form-urlencoded";

// ------------------------------------------------------------------------------------------------
// Fixtures

fn config() -> SimConfig {
    SimConfig::default()
        .with_page(PageConfig::new(PAGE, TOKEN, 1000))
        .with_page(PageConfig::new(PAGE2, TOKEN2, 1000))
}

async fn start(config: SimConfig) -> Simulator {
    Simulator::start(config).await.expect("simulator starts")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// A Send API form body for a text message.
fn text_body(psid: &str, text: &str) -> String {
    send_body(&json!({
        "recipient": {"id": psid},
        "messaging_type": "UPDATE",
        "message": {"text": text},
    }))
}

/// Encodes any Send API body as a form: nested objects become JSON strings.
fn send_body(fields: &Value) -> String {
    let pairs: Vec<(String, String)> = fields
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect();
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn op(body: String) -> Value {
    json!({"method": "POST", "relative_url": "me/messages", "body": body})
}

fn text_op(psid: &str, text: &str) -> Value {
    op(text_body(psid, text))
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.text))
    }

    fn items(&self) -> Vec<Value> {
        assert_eq!(self.status, 200, "batch failed: {}", self.text);
        self.json()
            .as_array()
            .expect("a batch reply is an array")
            .clone()
    }

    fn header_json(&self, name: &str) -> Value {
        let value = self
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("missing header {name}"));
        serde_json::from_str(value.to_str().unwrap()).unwrap()
    }
}

/// The parsed `body` of a batch item (the body is a JSON string inside the JSON).
fn item_body(item: &Value) -> Value {
    serde_json::from_str(item["body"].as_str().expect("item body is a string")).unwrap()
}

fn item_error(item: &Value) -> (u64, Option<u64>) {
    let body = item_body(item);
    let error = &body["error"];
    assert!(error.is_object(), "expected an error item, got {item}");
    assert!(error["fbtrace_id"].is_string());
    (
        error["code"].as_u64().unwrap(),
        error["error_subcode"].as_u64(),
    )
}

async fn try_post(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: String,
) -> Result<Reply, reqwest::Error> {
    let response = client
        .post(url)
        .header(CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await?;
    Ok(Reply {
        status,
        headers,
        text,
    })
}

async fn post(client: &reqwest::Client, url: &str, content_type: &str, body: String) -> Reply {
    try_post(client, url, content_type, body)
        .await
        .expect("request succeeds at the HTTP level")
}

async fn get(client: &reqwest::Client, url: &str) -> Reply {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Reply {
        status,
        headers,
        text: response.text().await.unwrap(),
    }
}

/// Posts a batch with the top-level token and extra top-level fields.
async fn batch_with(sim: &Simulator, token: &str, ops: &[Value], extra: &[(&str, &str)]) -> Reply {
    let batch = Value::Array(ops.to_vec()).to_string();
    let mut fields = vec![("access_token", token), ("batch", batch.as_str())];
    fields.extend_from_slice(extra);
    post(
        &http(),
        &format!("{}/v21.0/", sim.base_url()),
        FORM,
        form(&fields),
    )
    .await
}

async fn batch(sim: &Simulator, ops: &[Value]) -> Reply {
    batch_with(sim, TOKEN, ops, &[]).await
}

async fn deliveries(sim: &Simulator) -> Vec<Delivery> {
    sim.client().all_deliveries().await.unwrap()
}

/// Texts in record order; independent operations of one batch are recorded in shuffled order, so
/// tests that do not care about order compare [`sorted_texts`].
fn texts(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| d.body["message"]["text"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn sorted_texts(deliveries: &[Delivery]) -> Vec<String> {
    let mut texts = texts(deliveries);
    texts.sort();
    texts
}

// ------------------------------------------------------------------------------------------------
// Endpoints

#[tokio::test]
async fn batch_replies_in_request_order_with_headers_and_bodies() {
    let sim = start(config()).await;
    let ops = [
        text_op("11", "one"),
        json!({"method": "POST", "relative_url": format!("v21.0/{PAGE}/messages"), "body": text_body("12", "two")}),
        json!({"method": "POST", "relative_url": format!("/{PAGE}/messages?access_token={TOKEN}"), "body": text_body("13", "three")}),
    ];
    let reply = batch(&sim, &ops).await;
    let items = reply.items();
    assert_eq!(items.len(), 3);
    for (item, psid) in items.iter().zip(["11", "12", "13"]) {
        assert_eq!(item["code"], 200);
        let body = item_body(item);
        assert_eq!(body["recipient_id"], psid);
        assert!(body["message_id"].as_str().unwrap().starts_with("m_"));
        let headers = item["headers"]
            .as_array()
            .expect("headers are included by default");
        let names: Vec<&str> = headers
            .iter()
            .map(|h| h["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"X-Business-Use-Case-Usage"), "{names:?}");
        assert!(names.contains(&"Content-Type"));
    }
    let buc = reply.header_json("x-business-use-case-usage");
    assert_eq!(buc[PAGE][0]["type"], "messenger");
    assert_eq!(buc[PAGE][0]["estimated_time_to_regain_access"], 0);
    assert!(reply.headers.contains_key("x-app-usage"));

    // No trailing slash, another version, and include_headers=false.
    let batch_json = Value::Array(vec![text_op("14", "four")]).to_string();
    let reply = post(
        &http(),
        &format!("{}/v3.1", sim.base_url()),
        FORM,
        form(&[
            ("access_token", TOKEN),
            ("include_headers", "false"),
            ("batch", &batch_json),
        ]),
    )
    .await;
    let items = reply.items();
    assert_eq!(items[0]["code"], 200);
    assert!(items[0].get("headers").is_none());

    // The same fields as JSON (as some clients send them) are accepted too.
    let reply = post(
        &http(),
        &format!("{}/v21.0/", sim.base_url()),
        "application/json",
        json!({"access_token": TOKEN, "batch": batch_json}).to_string(),
    )
    .await;
    assert_eq!(reply.items()[0]["code"], 200);

    // Not a version: an unknown path.
    let reply = post(
        &http(),
        &format!("{}/latest/", sim.base_url()),
        FORM,
        form(&[("access_token", TOKEN), ("batch", "[]")]),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], 2500);

    assert_eq!(deliveries(&sim).await.len(), 5);
    sim.shutdown().await;
}

#[tokio::test]
async fn single_sends_take_json_or_form_and_any_token_placement() {
    let sim = start(config()).await;
    let client = http();
    let base = sim.base_url();
    let message = json!({"recipient": {"id": "21"}, "messaging_type": "RESPONSE", "message": {"text": "json"}});

    let reply = post(
        &client,
        &format!("{base}/v21.0/me/messages?access_token={TOKEN}"),
        "application/json",
        message.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["recipient_id"], "21");
    assert!(reply.headers.contains_key("x-business-use-case-usage"));

    let mut body = text_body("22", "form");
    body.push_str(&format!("&access_token={TOKEN}"));
    let reply = post(
        &client,
        &format!("{base}/v21.0/{PAGE}/messages"),
        FORM,
        body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    let response = client
        .post(format!("{base}/v19.0/me/messages"))
        .bearer_auth(TOKEN2)
        .header(CONTENT_TYPE, "application/json")
        .body(json!({"recipient": {"user_ref": "ref-1"}, "messaging_type": "UPDATE", "message": {"text": "bearer"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert!(
        body.get("recipient_id").is_none(),
        "user_ref sends have no recipient_id"
    );

    // An invalid single send is an error response, not a batch item.
    let reply = post(
        &client,
        &format!("{base}/v21.0/me/messages?access_token={TOKEN}"),
        "application/json",
        json!({"recipient": {"id": "23"}, "message": {"text": "no type"}}).to_string(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], 100);

    let record = deliveries(&sim).await;
    assert_eq!(texts(&record), ["json", "form", "bearer"]);
    assert!(record.iter().all(|d| d.batch == 0));
    assert_eq!(record[2].page_id, PAGE2);
    sim.shutdown().await;
}

#[tokio::test]
async fn insights_report_the_current_audience_as_the_newest_value() {
    let sim = start(config()).await;
    sim.client()
        .update_page(
            PAGE,
            &PageUpdate {
                audience: Some(1234),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let client = http();
    let base = sim.base_url();
    let metric = "page_messages_total_messaging_connections";
    let reply = get(
        &client,
        &format!("{base}/v21.0/{PAGE}/insights?metric={metric}&access_token={TOKEN}"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let data = &reply.json()["data"][0];
    assert_eq!(data["name"], metric);
    assert_eq!(data["period"], "day");
    assert_eq!(data["id"], format!("{PAGE}/insights/{metric}/day"));
    let values = data["values"].as_array().unwrap();
    assert_eq!(values.last().unwrap()["value"], 1234);
    assert_eq!(values[0]["value"], 1000);
    assert!(
        values.last().unwrap()["end_time"]
            .as_str()
            .unwrap()
            .ends_with("+0000")
    );

    let reply = get(
        &client,
        &format!("{base}/v21.0/{PAGE}/insights/{metric}?access_token={TOKEN}"),
    )
    .await;
    assert_eq!(reply.json()["data"][0]["values"][1]["value"], 1234);

    let reply = get(
        &client,
        &format!("{base}/v21.0/{PAGE}/insights?metric=page_fans&access_token={TOKEN}"),
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()["error"]["code"].as_u64()),
        (400, Some(100))
    );
    let reply = get(
        &client,
        &format!("{base}/v21.0/{PAGE}/insights?metric={metric}&access_token={TOKEN2}"),
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()["error"]["code"].as_u64()),
        (403, Some(200))
    );
    let reply = get(
        &client,
        &format!("{base}/v21.0/{PAGE}/insights?metric={metric}"),
    )
    .await;
    assert_eq!(reply.json()["error"]["code"], 190);
    sim.shutdown().await;
}

// ------------------------------------------------------------------------------------------------
// Authentication

#[tokio::test]
async fn tokens_are_checked_per_batch_and_per_item() {
    let sim = start(config()).await;
    let ops = [text_op("31", "ok")];

    let reply = batch_with(&sim, "", &ops, &[]).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], 190);
    assert_eq!(reply.json()["error"]["type"], "OAuthException");
    let reply = batch_with(&sim, "no-such-token", &ops, &[]).await;
    assert_eq!(
        (reply.status, reply.json()["error"]["code"].as_u64()),
        (400, Some(190))
    );

    let ops = [
        text_op("32", "mine"),
        json!({"method": "POST", "relative_url": "me/messages?access_token=forged", "body": text_body("33", "forged")}),
        json!({"method": "POST", "relative_url": format!("{PAGE2}/messages"), "body": text_body("34", "not mine")}),
        json!({"method": "POST", "relative_url": format!("{PAGE2}/messages?access_token={TOKEN2}"), "body": text_body("35", "item token")}),
        json!({"method": "POST", "relative_url": "999/messages", "body": text_body("36", "no page")}),
    ];
    let items = batch(&sim, &ops).await.items();
    assert_eq!(items[0]["code"], 200);
    assert_eq!(item_error(&items[1]), (190, None));
    assert_eq!(items[2]["code"], 403);
    assert_eq!(item_error(&items[2]), (200, None));
    assert_eq!(items[3]["code"], 200);
    assert_eq!(item_error(&items[4]), (100, Some(33)));

    let record = deliveries(&sim).await;
    assert_eq!(sorted_texts(&record), ["item token", "mine"]);
    let item_token = record
        .iter()
        .find(|d| d.body["message"]["text"] == "item token")
        .unwrap();
    assert_eq!(item_token.page_id, PAGE2);
    sim.shutdown().await;
}

#[tokio::test]
async fn appsecret_proof_is_required_when_an_app_secret_is_configured() {
    let secret = "app-secret";
    let sim = start(config().with_app_secret(secret)).await;
    let ops = [text_op("41", "ok")];

    for proof in [
        None,
        Some("00ff"),
        Some(appsecret_proof(secret, TOKEN2).as_str()),
    ] {
        let extra: Vec<(&str, &str)> = proof.iter().map(|p| ("appsecret_proof", *p)).collect();
        let reply = batch_with(&sim, TOKEN, &ops, &extra).await;
        assert_eq!(reply.status, 400, "proof {proof:?}");
        let error = &reply.json()["error"];
        assert_eq!(error["code"], 100);
        assert_eq!(error["type"], "GraphMethodException");
        assert_eq!(
            error["message"],
            "Invalid appsecret_proof provided in the API argument"
        );
    }

    let good = appsecret_proof(secret, TOKEN);
    let item_proof = appsecret_proof(secret, TOKEN2);
    let ops = [
        text_op("42", "top-level token"),
        json!({"method": "POST", "relative_url": format!("{PAGE2}/messages?access_token={TOKEN2}"), "body": text_body("43", "item without proof")}),
        json!({"method": "POST", "relative_url": format!("{PAGE2}/messages?access_token={TOKEN2}&appsecret_proof={item_proof}"), "body": text_body("44", "item with proof")}),
    ];
    let items = batch_with(&sim, TOKEN, &ops, &[("appsecret_proof", &good)])
        .await
        .items();
    assert_eq!(items[0]["code"], 200);
    assert_eq!(item_error(&items[1]), (100, None));
    assert_eq!(
        item_body(&items[1])["error"]["type"],
        "GraphMethodException"
    );
    assert_eq!(items[2]["code"], 200);
    assert_eq!(
        sorted_texts(&deliveries(&sim).await),
        ["item with proof", "top-level token"]
    );
    sim.shutdown().await;
}

// ------------------------------------------------------------------------------------------------
// Validation and batch-level errors

#[tokio::test]
async fn send_api_rules_reject_single_items_and_the_rest_still_runs() {
    let sim = start(config()).await;
    let ops = [
        op(send_body(
            &json!({"recipient": {"id": "1", "user_ref": "u"}, "messaging_type": "UPDATE", "message": {"text": "x"}}),
        )),
        op(send_body(
            &json!({"recipient": {"id": "2"}, "messaging_type": "UPDATE", "message": {"text": "x"}, "sender_action": "typing_on"}),
        )),
        op(send_body(
            &json!({"recipient": {"id": "3"}, "message": {"text": "x"}}),
        )),
        op(send_body(
            &json!({"recipient": {"id": "4"}, "messaging_type": "MESSAGE_TAG", "message": {"text": "x"}}),
        )),
        op(send_body(
            &json!({"recipient": {"id": "5"}, "messaging_type": "UPDATE", "message": {"text": "a".repeat(2000)}}),
        )),
        op(send_body(
            &json!({"recipient": {"id": "6"}, "messaging_type": "UPDATE", "message": {}}),
        )),
        op(send_body(
            &json!({"recipient": {"id": "7"}, "messaging_type": "UPDATE", "message": {"attachment": {"type": "hologram", "payload": {}}}}),
        )),
        text_op("8", "valid"),
        op(send_body(
            &json!({"recipient": {"id": "9"}, "messaging_type": "UPDATE", "message": {"text": "a".repeat(1999)}}),
        )),
    ];
    let items = batch(&sim, &ops).await.items();
    let expected = [
        (100, None),
        (100, Some(2_018_014)),
        (100, None),
        (100, None),
        (100, None),
        (100, Some(2_018_034)),
        (100, None),
    ];
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(items[i]["code"], 400, "item {i}");
        assert_eq!(item_error(&items[i]), *want, "item {i}");
    }
    assert_eq!(items[7]["code"], 200);
    assert_eq!(items[8]["code"], 200);

    let record = deliveries(&sim).await;
    let recipients: Vec<&str> = record
        .iter()
        .map(|d| d.recipient["id"].as_str().unwrap())
        .collect();
    let mut sorted = recipients.clone();
    sorted.sort();
    assert_eq!(sorted, ["8", "9"]);
    let stats = sim.client().stats().await.unwrap();
    let page = &stats.pages[PAGE];
    assert_eq!(page.delivered, 2);
    assert_eq!(page.rejected_by_code.get("100"), Some(&7));
    sim.shutdown().await;
}

#[tokio::test]
async fn oversized_and_malformed_batches_fail_whole() {
    let sim = start(config()).await;
    let ops: Vec<Value> = (0..51).map(|i| text_op(&format!("{i}"), "x")).collect();
    let reply = batch(&sim, &ops).await;
    assert_eq!(reply.status, 400);
    let error = &reply.json()["error"];
    assert_eq!(error["code"], 1);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("Maximum batch size is 50")
    );

    let ops: Vec<Value> = (0..50).map(|i| text_op(&format!("{i}"), "x")).collect();
    assert_eq!(batch(&sim, &ops).await.items().len(), 50);

    let base = sim.base_url();
    let reply = post(
        &http(),
        &format!("{base}/v21.0/"),
        FORM,
        form(&[("access_token", TOKEN), ("batch", "[{\"method\":")]),
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()["error"]["code"].as_u64()),
        (400, Some(100))
    );
    let reply = post(
        &http(),
        &format!("{base}/v21.0/"),
        FORM,
        form(&[("access_token", TOKEN)]),
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()["error"]["code"].as_u64()),
        (400, Some(100))
    );
    assert_eq!(deliveries(&sim).await.len(), 50);
    sim.shutdown().await;
}

// ------------------------------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn whole_batch_500_and_503_run_nothing() {
    let sim = start(config()).await;
    let admin = sim.client();
    for (faults, status) in [
        (
            Faults {
                batch_500_rate: 1.0,
                ..Faults::default()
            },
            500,
        ),
        (
            Faults {
                batch_503_rate: 1.0,
                ..Faults::default()
            },
            503,
        ),
    ] {
        admin.set_faults(&faults).await.unwrap();
        let reply = batch(&sim, &[text_op("51", "lost")]).await;
        assert_eq!(reply.status, status);
        assert_eq!(reply.json()["error"]["code"], 2);
        assert_eq!(reply.json()["error"]["is_transient"], true);
    }
    assert_eq!(admin.faults().await.unwrap().batch_503_rate, 1.0);
    admin.set_faults(&Faults::default()).await.unwrap();
    assert_eq!(batch(&sim, &[text_op("52", "through")]).await.status, 200);
    assert_eq!(texts(&deliveries(&sim).await), ["through"]);
    let totals = admin.stats().await.unwrap().totals;
    assert_eq!(totals.failed_requests, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn null_and_transient_items_are_not_delivered() {
    let sim = start(config()).await;
    let admin = sim.client();
    let ops: Vec<Value> = (0..20).map(|i| text_op(&format!("6{i}"), "x")).collect();

    admin
        .set_faults(&Faults {
            item_null_rate: 1.0,
            ..Faults::default()
        })
        .await
        .unwrap();
    let items = batch(&sim, &ops).await.items();
    assert!(items.iter().all(Value::is_null));

    admin
        .set_faults(&Faults {
            item_transient_rate: 1.0,
            ..Faults::default()
        })
        .await
        .unwrap();
    let items = batch(&sim, &ops).await.items();
    let mut codes = std::collections::BTreeSet::new();
    for item in &items {
        assert_eq!(item["code"], 500);
        let (code, _) = item_error(item);
        codes.insert(code);
        assert_eq!(item_body(item)["error"]["is_transient"], true);
    }
    assert_eq!(codes.into_iter().collect::<Vec<_>>(), [2, 1200]);
    assert!(deliveries(&sim).await.is_empty());
    let stats = admin.stats().await.unwrap();
    assert_eq!(stats.totals.nulls, 20);
    // Transient failures were executed, so they count as calls; nulls were not.
    assert_eq!(stats.pages[PAGE].calls, 20);
    sim.shutdown().await;
}

/// The `estimated_time_to_regain_access` an item's own usage header reports for `page`.
fn item_regain(item: &Value, page: &str) -> u64 {
    buc_entry(&item_header(item, "X-Business-Use-Case-Usage"), page)["estimated_time_to_regain_access"]
        .as_u64()
        .expect("estimated_time_to_regain_access is a number")
}

/// The `estimated_time_to_regain_access` a reply's outer header reports for `page`.
fn outer_regain(reply: &Reply, page: &str) -> u64 {
    buc_entry(&reply.header_json("x-business-use-case-usage"), page)
        ["estimated_time_to_regain_access"]
        .as_u64()
        .expect("estimated_time_to_regain_access is a number")
}

/// Checks that an item is the platform's rate-limit error, in every field.
fn assert_rate_limited(item: &Value) {
    assert_eq!(item["code"], 400, "{item}");
    assert_eq!(item_error(item), (613, Some(2_534_040)));
    let error = &item_body(item)["error"];
    assert_eq!(error["type"], "OAuthException");
    assert_eq!(
        error["message"],
        "(#613) Calls to this api have exceeded the rate limit."
    );
    assert_eq!(error["is_transient"], true);
}

/// Four batches of 50 distinct texts, `t{batch}-{item}`.
fn throttle_batches() -> Vec<Vec<Value>> {
    (0..4)
        .map(|b| {
            (0..50)
                .map(|i| text_op(&format!("31{b}{i:02}"), &format!("t{b}-{i}")))
                .collect()
        })
        .collect()
}

fn throttle_config(seed: u64) -> SimConfig {
    config().with_seed(seed).with_faults(Faults {
        item_throttle_rate: 0.3,
        throttle_regain_minutes: 7,
        ..Faults::default()
    })
}

#[tokio::test]
async fn injected_throttles_answer_613_with_the_configured_estimate() {
    let sim = start(throttle_config(21)).await;
    let batches = throttle_batches();
    let mut answers = Vec::new();
    let mut delivered_texts = Vec::new();
    let mut throttled = 0usize;
    for ops in &batches {
        let reply = batch(&sim, ops).await;
        let items = reply.items();
        let mut throttled_here = 0;
        for (op, item) in ops.iter().zip(&items) {
            if item["code"] == 200 {
                // The real limits are far away (budget 200 000, 300 per second).
                assert_eq!(item_regain(item, PAGE), 0, "{item}");
                let body = op["body"].as_str().unwrap();
                let fields: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect();
                let message: Value = serde_json::from_str(&fields["message"]).unwrap();
                delivered_texts.push(message["text"].as_str().unwrap().to_owned());
            } else {
                assert_rate_limited(item);
                assert_eq!(item_regain(item, PAGE), 7, "{item}");
                throttled_here += 1;
            }
            answers.push((item["code"].clone(), item["body"].clone()));
        }
        assert!(throttled_here > 0, "50 items at 30 % and none throttled");
        assert_eq!(outer_regain(&reply, PAGE), 7);
        throttled += throttled_here;
    }
    assert!(
        (40..=80).contains(&throttled),
        "{throttled} of 200 throttled at a 30 % rate"
    );

    // Without per-item headers the outer header still carries the estimate.
    let reply = batch_with(&sim, TOKEN, &batches[0], &[("include_headers", "false")]).await;
    let items = reply.items();
    let again = items.iter().filter(|i| i["code"] != 200).count();
    assert!(again > 0 && items.iter().all(|i| i.get("headers").is_none()));
    assert_eq!(outer_regain(&reply, PAGE), 7);
    let total_throttled = throttled + again;

    // The record holds exactly the operations that were not throttled.
    let record = deliveries(&sim).await;
    let first_four: Vec<Delivery> = record.iter().filter(|d| d.batch <= 4).cloned().collect();
    delivered_texts.sort();
    assert_eq!(sorted_texts(&first_four), delivered_texts);
    assert_eq!(record.len(), 250 - total_throttled);

    // Counted like a real 613: calls (in every window), throttled_613 and rejected_by_code.
    let stats = sim.client().stats().await.unwrap();
    let page = &stats.pages[PAGE];
    assert_eq!(stats.totals.throttled_613, total_throttled as u64);
    assert_eq!(stats.totals.rejected, total_throttled as u64);
    assert_eq!(
        page.rejected_by_code.get("613"),
        Some(&(total_throttled as u64))
    );
    assert_eq!(page.calls, 250);
    assert_eq!(page.calls_in_window, 250);
    assert_eq!(page.delivered, (250 - total_throttled) as u64);
    assert_eq!(stats.totals.delivered, page.delivered);
    sim.shutdown().await;

    // The same seed and requests give the same answers; another seed throttles other items.
    let replay = |seed: u64| {
        let batches = batches.clone();
        async move {
            let sim = start(throttle_config(seed)).await;
            let mut out = Vec::new();
            for ops in &batches {
                for item in batch(&sim, ops).await.items() {
                    out.push((item["code"].clone(), item["body"].clone()));
                }
            }
            sim.shutdown().await;
            out
        }
    };
    assert_eq!(replay(21).await, answers);
    let other: Vec<Value> = replay(22).await.into_iter().map(|(c, _)| c).collect();
    let codes: Vec<Value> = answers.into_iter().map(|(c, _)| c).collect();
    assert_ne!(other, codes);
}

#[tokio::test]
async fn throttle_rate_one_refuses_everything_and_uses_up_the_real_budget() {
    // Audience 1: a budget of 200 calls per rolling 24 h, so the windows can be watched filling up
    // without racing the clock.
    let sim = start(SimConfig::default().with_page(PageConfig::new(PAGE, TOKEN, 1))).await;
    let client = http();
    let base = sim.base_url();
    let put_faults = |json: &'static str| {
        let client = client.clone();
        let url = format!("{base}/_sim/faults");
        async move {
            let response = client
                .put(url)
                .header(CONTENT_TYPE, "application/json")
                .body(json)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "PUT /_sim/faults {json}");
        }
    };

    // A single send, with an estimate of 3 minutes.
    put_faults(r#"{"item_throttle_rate": 1.0, "throttle_regain_minutes": 3}"#).await;
    let reply = post(
        &client,
        &format!("{base}/v21.0/me/messages?access_token={TOKEN}"),
        FORM,
        text_body("3200", "single"),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], 613);
    assert_eq!(reply.json()["error"]["error_subcode"], 2_534_040);
    assert_eq!(outer_regain(&reply, PAGE), 3);

    // A missing throttle_regain_minutes means 0, which is reported as such.
    put_faults(r#"{"item_throttle_rate": 1.0}"#).await;
    let faults = sim.client().faults().await.unwrap();
    assert_eq!(
        (faults.item_throttle_rate, faults.throttle_regain_minutes),
        (1.0, 0)
    );
    let mut last = None;
    for b in 0..4 {
        let ops: Vec<Value> = (0..50)
            .map(|i| text_op(&format!("33{b}{i:02}"), "x"))
            .collect();
        let reply = batch(&sim, &ops).await;
        let items = reply.items();
        assert_eq!(items.len(), 50);
        items.iter().for_each(assert_rate_limited);
        if b == 0 {
            // 51 of 200 calls used: the real limits are far, the configured 0 is reported.
            assert!(items.iter().all(|i| item_regain(i, PAGE) == 0));
            assert_eq!(outer_regain(&reply, PAGE), 0);
        }
        last = Some(reply);
    }
    // The injected 613s counted in the budget window like real ones: it is now exhausted, and the
    // real (longer) estimate wins over the configured 0.
    assert_eq!(outer_regain(&last.unwrap(), PAGE), 1440);
    assert!(deliveries(&sim).await.is_empty());

    // With the fault off, the real limit refuses: the injected calls used the budget up.
    put_faults("{}").await;
    let reply = batch(&sim, &[text_op("3400", "after")]).await;
    let item = &reply.items()[0];
    assert_rate_limited(item);
    assert_eq!(item_regain(item, PAGE), 1440);
    assert_eq!(outer_regain(&reply, PAGE), 1440);

    let stats = sim.client().stats().await.unwrap();
    assert_eq!(stats.totals.throttled_613, 202);
    assert_eq!(stats.pages[PAGE].rejected_by_code.get("613"), Some(&202));
    assert_eq!(stats.pages[PAGE].calls_in_window, 202);
    assert_eq!(stats.pages[PAGE].delivered, 0);
    assert!(deliveries(&sim).await.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn injected_throttles_set_the_estimate_only_for_their_page_and_after_validation() {
    let sim = start(config().with_faults(Faults {
        item_throttle_rate: 1.0,
        throttle_regain_minutes: 11,
        ..Faults::default()
    }))
    .await;
    // One valid op for Page one; for Page two (by item token) one without messaging_type, which
    // validation refuses before the fault has a say, and a reserved recipient, which the injected
    // throttle pre-empts.
    let invalid = op(send_body(
        &json!({"recipient": {"id": "36"}, "message": {"text": "x"}}),
    ));
    let mut invalid_page2 = invalid.clone();
    invalid_page2["relative_url"] = json!(format!("{PAGE2}/messages?access_token={TOKEN2}"));
    let ops = [text_op("37", "page one"), invalid_page2];
    let reply = batch(&sim, &ops).await;
    let items = reply.items();
    assert_rate_limited(&items[0]);
    assert_eq!(item_regain(&items[0], PAGE), 11);
    assert_eq!(item_error(&items[1]), (100, None));
    assert_eq!(outer_regain(&reply, PAGE), 11);
    assert_eq!(
        outer_regain(&reply, PAGE2),
        0,
        "no operation of Page two was throttled"
    );
    let items = batch(
        &sim,
        &[text_op(reserved::AMBIGUOUS_1357046, "ambiguous"), invalid],
    )
    .await
    .items();
    assert_rate_limited(&items[0]);
    assert_eq!(item_error(&items[1]), (100, None));
    assert!(
        deliveries(&sim).await.is_empty(),
        "a throttled 1357046 is not delivered"
    );
    let stats = sim.client().stats().await.unwrap();
    assert_eq!(stats.totals.throttled_613, 2);
    assert_eq!(stats.pages[PAGE2].rejected_by_code.get("100"), Some(&1));
    assert_eq!(stats.pages[PAGE2].rejected_by_code.get("613"), None);
    sim.shutdown().await;
}

#[tokio::test]
async fn dropped_connections_are_client_errors_and_run_nothing() {
    let sim = start(config()).await;
    sim.client()
        .set_faults(&Faults {
            drop_rate: 1.0,
            ..Faults::default()
        })
        .await
        .unwrap();
    let batch_json = Value::Array(vec![text_op("71", "x")]).to_string();
    let result = try_post(
        &http(),
        &format!("{}/v21.0/", sim.base_url()),
        FORM,
        form(&[("access_token", TOKEN), ("batch", &batch_json)]),
    )
    .await;
    let error = result.expect_err("the connection is aborted without a reply");
    assert!(!error.is_timeout(), "{error:?}");
    assert!(deliveries(&sim).await.is_empty());
    assert_eq!(sim.client().stats().await.unwrap().totals.dropped, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn timed_out_batches_are_executed_and_recorded() {
    let sim = start(config()).await;
    sim.client()
        .set_faults(&Faults {
            timeout_rate: 1.0,
            timeout_delay_ms: 5_000,
            ..Faults::default()
        })
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let batch_json = Value::Array(vec![text_op("81", "a"), text_op("82", "b")]).to_string();
    let result = try_post(
        &client,
        &format!("{}/v21.0/", sim.base_url()),
        FORM,
        form(&[("access_token", TOKEN), ("batch", &batch_json)]),
    )
    .await;
    assert!(result.expect_err("the reply is held back").is_timeout());
    let recorded = sorted_texts(&deliveries(&sim).await);
    assert_eq!(
        recorded,
        ["a", "b"],
        "the platform ran them: the reply was what got lost"
    );
    assert_eq!(sim.client().stats().await.unwrap().totals.timed_out, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_delays_replies() {
    let sim = start(config()).await;
    sim.client()
        .set_faults(&Faults {
            latency_p50_ms: 300,
            latency_p99_ms: 300,
            ..Faults::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(batch(&sim, &[text_op("85", "slow")]).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(290));
    sim.shutdown().await;
}

#[tokio::test]
async fn reserved_recipients_always_fail_as_documented() {
    let sim = start(config()).await;
    let cases = [
        (reserved::USER_BLOCKED_551, (551, None)),
        (reserved::NO_MATCHING_USER_2018001, (100, Some(2_018_001))),
        (reserved::OUTSIDE_WINDOW_2018278, (10, Some(2_018_278))),
        (reserved::NOT_AVAILABLE_1545041, (200, Some(1_545_041))),
        (reserved::ALWAYS_TRANSIENT_2, (2, None)),
        (reserved::AMBIGUOUS_1357046, (1, Some(1_357_046))),
        (reserved::UNKNOWN_CODE_99999, (99_999, None)),
    ];
    let ops: Vec<Value> = cases.iter().map(|(id, _)| text_op(id, id)).collect();
    // Twice: "always" includes retries (a new occurrence of the same content).
    for _ in 0..2 {
        let items = batch(&sim, &ops).await.items();
        for ((id, want), item) in cases.iter().zip(&items) {
            assert_eq!(item_error(item), *want, "recipient {id}");
        }
        assert_eq!(item_body(&items[4])["error"]["is_transient"], true);
    }
    let record = deliveries(&sim).await;
    assert_eq!(
        record.len(),
        2,
        "only the ambiguous 1357046 counts as delivered"
    );
    assert!(
        record
            .iter()
            .all(|d| d.recipient["id"] == reserved::AMBIGUOUS_1357046)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn revoked_and_rotated_tokens_answer_190() {
    let sim = start(config()).await;
    let admin = sim.client();
    let ops = [text_op("91", "x")];
    admin
        .update_page(
            PAGE,
            &PageUpdate {
                revoked: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let reply = batch(&sim, &ops).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        (
            reply.json()["error"]["code"].as_u64(),
            reply.json()["error"]["error_subcode"].as_u64()
        ),
        (Some(190), Some(460))
    );
    // An item token of a revoked Page fails per item.
    let item = json!({"method": "POST", "relative_url": format!("{PAGE}/messages?access_token={TOKEN}"), "body": text_body("92", "x")});
    let items = batch_with(&sim, TOKEN2, &[item], &[]).await.items();
    assert_eq!(item_error(&items[0]), (190, Some(460)));

    admin
        .update_page(
            PAGE,
            &PageUpdate {
                revoked: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(batch(&sim, &ops).await.status, 200);

    let view = admin
        .update_page(
            PAGE,
            &PageUpdate {
                token: Some("rotated".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(view.tokens, ["rotated"]);
    assert_eq!(batch(&sim, &ops).await.json()["error"]["code"], 190);
    assert_eq!(batch_with(&sim, "rotated", &ops, &[]).await.status, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn outages_start_and_stop_through_the_admin_api() {
    let sim = start(config()).await;
    let admin = sim.client();
    let ops = [text_op("95", "x")];

    let view = admin.start_outage(None, OutageMode::Http503).await.unwrap();
    assert!(view.active && view.remaining_ms.is_none());
    assert_eq!(batch(&sim, &ops).await.status, 503);
    admin.end_outage().await.unwrap();
    assert!(!admin.outage().await.unwrap().active);
    assert_eq!(batch(&sim, &ops).await.status, 200);

    admin.start_outage(None, OutageMode::Drop).await.unwrap();
    let batch_json = Value::Array(ops.to_vec()).to_string();
    let attempt = try_post(
        &http(),
        &format!("{}/v21.0/", sim.base_url()),
        FORM,
        form(&[("access_token", TOKEN), ("batch", &batch_json)]),
    )
    .await;
    assert!(attempt.is_err());

    // A timed outage ends by itself.
    admin
        .start_outage(Some(Duration::from_millis(300)), OutageMode::Http503)
        .await
        .unwrap();
    assert_eq!(batch(&sim, &ops).await.status, 503);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(batch(&sim, &ops).await.status, 200);
    assert_eq!(deliveries(&sim).await.len(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_admin_input_is_refused() {
    let sim = start(config()).await;
    let client = http();
    let base = sim.base_url();
    let response = client
        .put(format!("{base}/_sim/faults"))
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"item_null_rate": 2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = client
        .put(format!("{base}/_sim/faults"))
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"item_throttle_rate": -0.5, "throttle_regain_minutes": 3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let refusal: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert!(
        refusal["error"]
            .as_str()
            .unwrap()
            .contains("item_throttle_rate")
    );
    assert_eq!(
        sim.client().faults().await.unwrap(),
        Faults::default(),
        "a refused PUT keeps the previous faults"
    );
    let response = client
        .put(format!("{base}/_sim/faults"))
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"nonsense": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let result = sim
        .client()
        .update_page(
            "77",
            &PageUpdate {
                audience: Some(3),
                ..Default::default()
            },
        )
        .await;
    assert!(result.is_err(), "a new Page needs a token");
    let view = sim
        .client()
        .update_page(
            "77",
            &PageUpdate {
                token: Some("t77".into()),
                audience: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(view.budget, 600);
    assert_eq!(
        batch_with(&sim, "t77", &[text_op("1", "new page")], &[])
            .await
            .items()[0]["code"],
        200
    );
    sim.shutdown().await;
}

// ------------------------------------------------------------------------------------------------
// Rate limits

fn buc_entry(value: &Value, page: &str) -> Value {
    value[page][0].clone()
}

fn item_header(item: &Value, name: &str) -> Value {
    let header = item["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("item has no {name} header"));
    serde_json::from_str(header["value"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn per_second_ceiling_refuses_with_613_and_usage_headers() {
    let sim =
        start(SimConfig::default().with_page(PageConfig::new(PAGE, TOKEN, 1000).with_rps(20)))
            .await;
    let ops: Vec<Value> = (0..30).map(|i| text_op(&format!("10{i}"), "x")).collect();
    let reply = batch(&sim, &ops).await;
    let items = reply.items();
    let (ok, refused): (Vec<&Value>, Vec<&Value>) = items.iter().partition(|i| i["code"] == 200);
    assert_eq!((ok.len(), refused.len()), (20, 10));
    for item in &refused {
        assert_eq!(item_error(item), (613, Some(2_534_040)));
        let buc = buc_entry(&item_header(item, "X-Business-Use-Case-Usage"), PAGE);
        assert_eq!(buc["estimated_time_to_regain_access"], 1);
        assert!(buc["total_time"].as_u64().unwrap() >= 100);
        assert!(item_header(item, "X-App-Usage")["call_count"].is_u64());
    }
    for item in &ok {
        let buc = buc_entry(&item_header(item, "X-Business-Use-Case-Usage"), PAGE);
        assert!(buc["estimated_time_to_regain_access"].as_u64().unwrap() <= 1);
    }
    let outer = buc_entry(&reply.header_json("x-business-use-case-usage"), PAGE);
    assert_eq!(outer["estimated_time_to_regain_access"], 1);
    assert_eq!(outer["type"], "messenger");
    assert!(
        reply.header_json("x-app-usage")["total_time"]
            .as_u64()
            .unwrap()
            >= 100
    );

    let stats = sim.client().stats().await.unwrap();
    assert_eq!(stats.totals.throttled_613, 10);
    assert_eq!(stats.pages[PAGE].rejected_by_code.get("613"), Some(&10));
    assert_eq!(stats.pages[PAGE].delivered, 20);
    assert!(stats.pages[PAGE].peak_calls_per_second >= 15);

    // The refused calls count too, but a quiet second clears the rolling second.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let items = batch(&sim, &ops[..5]).await.items();
    assert!(items.iter().all(|i| i["code"] == 200));
    sim.shutdown().await;
}

#[tokio::test]
async fn media_ceiling_limits_audio_and_video_only() {
    let sim =
        start(SimConfig::default().with_page(PageConfig::new(PAGE, TOKEN, 1000).with_media_rps(3)))
            .await;
    let video = |i: usize| {
        op(send_body(
            &json!({"recipient": {"id": format!("20{i}")}, "messaging_type": "UPDATE",
            "message": {"attachment": {"type": "video", "payload": {"url": "https://example.invalid/v.mp4"}}}}),
        ))
    };
    let mut ops: Vec<Value> = (0..5).map(video).collect();
    ops.push(text_op("301", "text"));
    ops.push(text_op("302", "text"));
    let items = batch(&sim, &ops).await.items();
    let video_ok = items[..5].iter().filter(|i| i["code"] == 200).count();
    assert_eq!(video_ok, 3);
    for item in items[..5].iter().filter(|i| i["code"] != 200) {
        assert_eq!(item_error(item).0, 613);
    }
    assert!(items[5..].iter().all(|i| i["code"] == 200));
    sim.shutdown().await;
}

#[tokio::test]
async fn exhausted_budget_estimates_a_full_day() {
    // Audience 1: 200 calls per rolling 24 h, real time.
    let sim = start(SimConfig::default().with_page(PageConfig::new(PAGE, TOKEN, 1))).await;
    for round in 0..4 {
        let ops: Vec<Value> = (0..50)
            .map(|i| text_op(&format!("{round}{i}"), "x"))
            .collect();
        assert!(
            batch(&sim, &ops)
                .await
                .items()
                .iter()
                .all(|i| i["code"] == 200)
        );
    }
    let ops: Vec<Value> = (0..10).map(|i| text_op(&format!("9{i}"), "over")).collect();
    let reply = batch(&sim, &ops).await;
    for item in reply.items() {
        assert_eq!(item_error(&item).0, 613);
        let minutes = buc_entry(&item_header(&item, "X-Business-Use-Case-Usage"), PAGE)
            ["estimated_time_to_regain_access"]
            .as_u64()
            .unwrap();
        assert_eq!(
            minutes, 1440,
            "the oldest call leaves the window a day after it was made"
        );
    }
    let outer = buc_entry(&reply.header_json("x-business-use-case-usage"), PAGE);
    assert_eq!(outer["estimated_time_to_regain_access"], 1440);
    assert_eq!(outer["call_count"], 105);
    let stats = sim.client().stats().await.unwrap();
    assert_eq!(stats.pages[PAGE].calls_in_window, 210);
    assert_eq!(stats.pages[PAGE].budget, 200);
    assert_eq!(stats.pages[PAGE].delivered, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn time_scaled_budget_window_slides_and_never_over_admits() {
    // Budget 200 per window; the 24 h window lasts 3 s of real time (long enough that a slow box
    // still sends the whole burst inside one window).
    let scale = 86_400.0 / 3.0;
    let config = SimConfig::default()
        .with_page(PageConfig::new(PAGE, TOKEN, 1).with_rps(10_000))
        .with_time_scale(scale);
    let window = config.budget_window();
    assert_eq!(window, Duration::from_secs(3));
    let sim = start(config).await;
    let mut n = 0usize;
    let mut next_ops = |count: usize| {
        let ops: Vec<Value> = (0..count)
            .map(|_| {
                n += 1;
                text_op(&format!("{}", 5_000_000 + n), &format!("m{n}"))
            })
            .collect();
        ops
    };

    // Burst: 200 admitted, then refused with an estimate of at most one (real) minute.
    let mut admitted = 0;
    let mut refused = 0;
    for _ in 0..5 {
        let reply = batch(&sim, &next_ops(50)).await;
        for item in reply.items() {
            if item["code"] == 200 {
                admitted += 1;
            } else {
                assert_eq!(item_error(&item).0, 613);
                let buc = buc_entry(&item_header(&item, "X-Business-Use-Case-Usage"), PAGE);
                assert_eq!(buc["estimated_time_to_regain_access"], 1);
                refused += 1;
            }
        }
    }
    assert_eq!((admitted, refused), (200, 50));

    // After the window has slid past the burst (refused calls included), calls are admitted again.
    tokio::time::sleep(window + Duration::from_millis(300)).await;
    let items = batch(&sim, &next_ops(50)).await.items();
    assert!(
        items.iter().all(|i| i["code"] == 200),
        "admitted again after the window slid"
    );

    // Keep pushing for a while, backing off when refused (calls made while throttled count).
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let items = batch(&sim, &next_ops(25)).await.items();
        if items.iter().any(|i| i["code"] != 200) {
            tokio::time::sleep(Duration::from_millis(700)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    // The truth: no rolling window of the budget's length ever held more than 200 deliveries.
    let record = deliveries(&sim).await;
    let times: Vec<u64> = record.iter().map(|d| d.at_us).collect();
    let window_us = window.as_micros() as u64;
    let mut worst = 0;
    for (i, &end) in times.iter().enumerate() {
        let in_window = times[..=i].iter().filter(|&&t| t + window_us > end).count();
        worst = worst.max(in_window);
    }
    assert!(worst <= 200, "a window held {worst} deliveries");
    assert!(
        record.len() > 300,
        "only {} delivered: the window did not keep sliding",
        record.len()
    );
    sim.shutdown().await;
}

// ------------------------------------------------------------------------------------------------
// Ordering

#[tokio::test]
async fn depends_on_chains_run_in_order_and_omit_successful_parents() {
    let sim = start(config()).await;
    let chain = |omit: Option<bool>, prefix: &str, first_valid: bool| -> Vec<Value> {
        let mut ops = Vec::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let body = if i == 0 && !first_valid {
                send_body(
                    &json!({"recipient": {"id": "400"}, "message": {"text": "no messaging_type"}}),
                )
            } else {
                text_body("400", &format!("{prefix}{name}"))
            };
            let mut op = json!({"method": "POST", "relative_url": "me/messages", "name": format!("{prefix}{name}"), "body": body});
            if i > 0 {
                op["depends_on"] = json!(format!("{prefix}{}", ["a", "b"][i - 1]));
            }
            if let Some(omit) = omit {
                op["omit_response_on_success"] = json!(omit);
            }
            ops.push(op);
        }
        ops
    };

    let items = batch(&sim, &chain(None, "x", true)).await.items();
    assert!(
        items[0].is_null() && items[1].is_null(),
        "depended-upon successes are omitted"
    );
    assert_eq!(items[2]["code"], 200);

    let items = batch(&sim, &chain(Some(false), "y", true)).await.items();
    assert!(items.iter().all(|i| i["code"] == 200));

    let items = batch(&sim, &chain(Some(false), "z", false)).await.items();
    assert_eq!(item_error(&items[0]), (100, None));
    assert!(
        items[1].is_null() && items[2].is_null(),
        "a failed parent's dependents do not run"
    );

    assert_eq!(
        texts(&deliveries(&sim).await),
        ["xa", "xb", "xc", "ya", "yb", "yc"]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn independent_ops_are_shuffled_but_chains_never_are() {
    let sim = start(config().with_seed(7)).await;
    let independent = [text_op("500", "first"), text_op("500", "second")];
    let chained = [
        json!({"method": "POST", "relative_url": "me/messages", "name": "p", "omit_response_on_success": false, "body": text_body("501", "first")}),
        json!({"method": "POST", "relative_url": "me/messages", "depends_on": "p", "body": text_body("501", "second")}),
    ];
    let mut reversed = 0;
    for _ in 0..20 {
        let before = deliveries(&sim).await.len();
        batch(&sim, &independent).await.items();
        let record = deliveries(&sim).await;
        if texts(&record[before..]) == ["second", "first"] {
            reversed += 1;
        }
        let before = record.len();
        batch(&sim, &chained).await.items();
        assert_eq!(
            texts(&deliveries(&sim).await[before..]),
            ["first", "second"]
        );
    }
    assert!(reversed > 0 && reversed < 20, "reversed {reversed} of 20");
    sim.shutdown().await;
}

// ------------------------------------------------------------------------------------------------
// The record and stats

#[tokio::test]
async fn deliveries_are_read_with_a_cursor() {
    let sim = start(config()).await;
    let ops: Vec<Value> = (0..3)
        .map(|i| text_op(&format!("60{i}"), &format!("t{i}")))
        .collect();
    batch(&sim, &ops).await.items();
    let tagged = op(send_body(
        &json!({"recipient": {"id": "610"}, "messaging_type": "MESSAGE_TAG", "tag": "ACCOUNT_UPDATE",
        "message": {"text": "tagged", "metadata": "job-1"}, "notification_type": "SILENT_PUSH"}),
    ));
    batch(&sim, &[tagged, text_op("611", "last")]).await.items();

    let admin = sim.client();
    let first = admin.deliveries(0, 2).await.unwrap();
    assert_eq!(first.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2]);
    let second = admin.deliveries(2, 2).await.unwrap();
    assert_eq!(second.iter().map(|d| d.seq).collect::<Vec<_>>(), [3, 4]);
    let rest = admin.deliveries(4, 100).await.unwrap();
    assert_eq!(rest.iter().map(|d| d.seq).collect::<Vec<_>>(), [5]);
    assert!(admin.deliveries(5, 100).await.unwrap().is_empty());

    let all = admin.all_deliveries().await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all[..3].iter().all(|d| d.batch == all[0].batch));
    assert!(all[3].batch > all[0].batch);
    let tagged = all.iter().find(|d| d.recipient["id"] == "610").unwrap();
    assert_eq!(
        tagged.body,
        json!({"recipient": {"id": "610"}, "messaging_type": "MESSAGE_TAG", "tag": "ACCOUNT_UPDATE",
            "message": {"text": "tagged", "metadata": "job-1"}, "notification_type": "SILENT_PUSH"})
    );
    assert_eq!(tagged.page_id, PAGE);
    let stats = admin.stats().await.unwrap();
    for d in &all {
        assert!(d.at_ms <= stats.uptime_ms && d.at_ms == d.at_us / 1000);
        assert!(d.unix_ms > 1_600_000_000_000);
    }

    // The raw endpoint is JSON lines.
    let raw = get(
        &http(),
        &format!("{}/_sim/deliveries?after=3", sim.base_url()),
    )
    .await;
    assert_eq!(raw.headers[CONTENT_TYPE], "application/x-ndjson");
    assert_eq!(raw.text.lines().count(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn stats_summarise_pages_and_totals() {
    let sim = start(config()).await;
    let ops = [
        text_op("700", "ok"),
        text_op(reserved::USER_BLOCKED_551, "blocked"),
        op(send_body(
            &json!({"recipient": {"id": "701"}, "message": {"text": "x"}}),
        )),
    ];
    batch(&sim, &ops).await.items();
    let item = json!({"method": "POST", "relative_url": format!("{PAGE2}/messages?access_token={TOKEN2}"), "body": text_body("702", "two")});
    batch(&sim, &[item]).await.items();

    let stats = sim.client().stats().await.unwrap();
    assert_eq!(stats.totals.batches, 2);
    assert_eq!(stats.totals.ops, 4);
    assert_eq!(stats.totals.delivered, 2);
    assert_eq!(stats.totals.rejected, 2);
    assert_eq!(stats.totals.throttled_613, 0);
    assert_eq!(stats.budget_window_ms, 86_400_000);
    let one = &stats.pages[PAGE];
    assert_eq!((one.delivered, one.calls, one.calls_in_window), (1, 3, 3));
    let want: HashMap<String, u64> = [("551".to_owned(), 1), ("100".to_owned(), 1)].into();
    assert_eq!(
        one.rejected_by_code
            .clone()
            .into_iter()
            .collect::<HashMap<_, _>>(),
        want
    );
    assert_eq!((one.budget, one.audience), (200_000, 1000));
    assert!(one.peak_calls_per_second >= 1 && one.peak_delivered_per_second == 1);
    assert_eq!(stats.pages[PAGE2].delivered, 1);
    sim.shutdown().await;
}

// ------------------------------------------------------------------------------------------------
// Determinism

/// Twelve distinct batches touching every seeded decision: item nulls, transient errors and
/// injected throttles, whole batch failures, message ids, trace ids and execution order (visible through `depends_on`-free
/// reply bodies).
fn determinism_batches() -> Vec<String> {
    (0..12)
        .map(|b| {
            let ops: Vec<Value> = (0..10)
                .map(|i| text_op(&format!("8{b:02}{i:02}"), &format!("b{b} i{i}")))
                .collect();
            form(&[
                ("access_token", TOKEN),
                ("include_headers", "false"),
                ("batch", &Value::Array(ops).to_string()),
            ])
        })
        .collect()
}

fn determinism_config(seed: u64) -> SimConfig {
    config().with_seed(seed).with_faults(Faults {
        item_null_rate: 0.2,
        item_transient_rate: 0.2,
        item_throttle_rate: 0.15,
        throttle_regain_minutes: 5,
        batch_500_rate: 0.15,
        ..Faults::default()
    })
}

async fn answers(sim: &Simulator, concurrent: bool) -> Vec<(u16, String)> {
    let client = http();
    let url = format!("{}/v21.0/", sim.base_url());
    let bodies = determinism_batches();
    // Each batch is sent twice: the second occurrence must get its own (different) draw.
    let requests: Vec<String> = bodies.iter().chain(bodies.iter()).cloned().collect();
    if concurrent {
        // All distinct batches at once, in reverse order; occurrences are counted per content, so
        // only the two copies of one batch must keep their order (the second round starts after
        // the first has been answered).
        let send = |body: String| {
            let client = client.clone();
            let url = url.clone();
            async move { post(&client, &url, FORM, body).await }
        };
        let mut out = Vec::new();
        for round in requests.chunks(12) {
            let mut replies =
                futures_util::future::join_all(round.iter().rev().cloned().map(send)).await;
            replies.reverse();
            out.extend(replies.into_iter().map(|r| (r.status, r.text)));
        }
        out
    } else {
        let mut out = Vec::new();
        for body in requests {
            let reply = post(&client, &url, FORM, body).await;
            out.push((reply.status, reply.text));
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_and_requests_give_the_same_answers_even_concurrently() {
    let a = start(determinism_config(11)).await;
    let b = start(determinism_config(11)).await;
    let c = start(determinism_config(12)).await;
    let sequential = answers(&a, false).await;
    let concurrent = answers(&b, true).await;
    let other_seed = answers(&c, false).await;
    assert_eq!(sequential, concurrent);
    assert_ne!(sequential, other_seed);
    // The faults really were exercised, and repeats got fresh draws.
    let all: String = sequential.iter().map(|(_, t)| t.as_str()).collect();
    assert!(sequential.iter().any(|(s, _)| *s == 500));
    assert!(all.contains("null") && all.contains("is_transient") && all.contains("(#613)"));
    assert_ne!(sequential[..12], sequential[12..]);
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

// ------------------------------------------------------------------------------------------------
// The binary

fn spawn_binary(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_graph-sim"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("graph-sim starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let elapsed = started.elapsed();
    let url = line
        .trim()
        .strip_prefix("graph-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, url, elapsed)
}

fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "graph-sim did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn binary_prints_its_address_serves_and_stops_on_sigterm() {
    let (mut child, url, startup) = spawn_binary(
        &[
            "--listen",
            "127.0.0.1:0",
            "--page",
            &format!("{PAGE}:{TOKEN}:10"),
            "--seed",
            "5",
        ],
        &[],
    );
    assert!(
        startup < Duration::from_secs(1),
        "took {startup:?} to start"
    );
    assert!(url.starts_with("http://127.0.0.1:"));
    let batch_json = Value::Array(vec![text_op("900", "from the binary")]).to_string();
    let reply = post(
        &http(),
        &format!("{url}/v21.0/"),
        FORM,
        form(&[("access_token", TOKEN), ("batch", &batch_json)]),
    )
    .await;
    assert_eq!(reply.items()[0]["code"], 200);
    let record = pagerelay::sim::SimClient::new(url)
        .all_deliveries()
        .await
        .unwrap();
    assert_eq!(texts(&record), ["from the binary"]);
    assert!(terminate(&mut child).success());
}

#[tokio::test]
async fn binary_takes_the_throttle_fault_from_the_command_line() {
    let (mut child, url, _) = spawn_binary(
        &[
            "--listen",
            "127.0.0.1:0",
            "--page",
            &format!("{PAGE}:{TOKEN}:10"),
            "--item-throttle-rate",
            "1",
            "--throttle-regain-minutes",
            "9",
        ],
        &[],
    );
    let faults = pagerelay::sim::SimClient::new(url.clone())
        .faults()
        .await
        .unwrap();
    assert_eq!(
        (faults.item_throttle_rate, faults.throttle_regain_minutes),
        (1.0, 9)
    );
    let batch_json = Value::Array(vec![text_op("901", "throttled")]).to_string();
    let reply = post(
        &http(),
        &format!("{url}/v21.0/"),
        FORM,
        form(&[("access_token", TOKEN), ("batch", &batch_json)]),
    )
    .await;
    assert_rate_limited(&reply.items()[0]);
    assert_eq!(outer_regain(&reply, PAGE), 9);
    assert!(terminate(&mut child).success());
}

#[tokio::test]
async fn binary_reads_a_pages_file_and_the_app_secret_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("pages.toml");
    std::fs::write(
        &pages,
        format!("[[pages]]\nid = \"{PAGE}\"\ntoken = \"{TOKEN}\"\naudience = 1\nrps = 5\n"),
    )
    .unwrap();
    let (mut child, url, _) = spawn_binary(
        &[
            "--listen",
            "127.0.0.1:0",
            "--pages",
            pages.to_str().unwrap(),
            "--app-secret-env",
            "SIM_TEST_SECRET",
            "--time-scale",
            "1440",
        ],
        &[("SIM_TEST_SECRET", "s3cret")],
    );
    let ops: Vec<Value> = (0..6).map(|i| text_op(&format!("91{i}"), "x")).collect();
    let batch_json = Value::Array(ops).to_string();
    let reply = post(
        &http(),
        &format!("{url}/v21.0/"),
        FORM,
        form(&[("access_token", TOKEN), ("batch", &batch_json)]),
    )
    .await;
    assert_eq!(reply.json()["error"]["type"], "GraphMethodException");
    let proof = appsecret_proof("s3cret", TOKEN);
    let reply = post(
        &http(),
        &format!("{url}/v21.0/"),
        FORM,
        form(&[
            ("access_token", TOKEN),
            ("appsecret_proof", &proof),
            ("batch", &batch_json),
        ]),
    )
    .await;
    let refused = reply.items().iter().filter(|i| i["code"] != 200).count();
    assert_eq!(refused, 1, "rps = 5 from the Pages file");
    let stats = pagerelay::sim::SimClient::new(url).stats().await.unwrap();
    assert_eq!(stats.budget_window_ms, 60_000);
    assert!(terminate(&mut child).success());
}

#[test]
fn binary_help_documents_every_option() {
    let output = Command::new(env!("CARGO_BIN_EXE_graph-sim"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "--listen",
        "--seed",
        "--pages",
        "--page",
        "--app-secret-env",
        "--rps-limit",
        "--media-rps-limit",
        "--time-scale",
        "--latency-p50-ms",
        "--latency-p99-ms",
        "--batch-500-rate",
        "--batch-503-rate",
        "--drop-rate",
        "--timeout-rate",
        "--timeout-delay-ms",
        "--item-null-rate",
        "--item-transient-rate",
        "--item-throttle-rate",
        "--throttle-regain-minutes",
        "127.0.0.1:8090",
    ] {
        assert!(help.contains(option), "--help does not mention {option}");
    }
}

#[test]
fn binary_refuses_bad_options() {
    let output = Command::new(env!("CARGO_BIN_EXE_graph-sim"))
        .args(["--listen", "127.0.0.1:0", "--page", "not-a-page"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let output = Command::new(env!("CARGO_BIN_EXE_graph-sim"))
        .args(["--listen", "127.0.0.1:0", "--item-null-rate", "3"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("item_null_rate"));
    let output = Command::new(env!("CARGO_BIN_EXE_graph-sim"))
        .args(["--listen", "127.0.0.1:0", "--item-throttle-rate", "1.5"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("item_throttle_rate"));
}
