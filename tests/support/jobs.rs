//! Send jobs for tests: JSON builders, publishing through the real `publish` code path, reading
//! the dead-letter queue, and dead letters made by hand (as pagerelay or the broker writes them).

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use pagerelay::amqp::headers;
use pagerelay::amqp::{Publisher, Topology};
use pagerelay::config::{LoadOptions, Settings};

/// A valid text job; `metadata` carries `job_id` so that deliveries in the simulator's record
/// can be traced back to their job.
pub fn text_job(page: &str, recipient: &str, job_id: &str) -> Value {
    json!({
        "page_id": page,
        "job_id": job_id,
        "recipient": {"id": recipient},
        "messaging_type": "UPDATE",
        "message": {"text": format!("Your order {job_id} has shipped."), "metadata": job_id},
    })
}

/// `n` text jobs spread round-robin over `pages` and 2,000 recipients, with ids `<tag>-<i>`.
pub fn text_jobs(pages: &[String], n: usize, tag: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            text_job(
                &pages[i % pages.len()],
                &format!("{}", 5_000_000 + i % 2_000),
                &format!("{tag}-{i}"),
            )
        })
        .collect()
}

/// The job id a delivery in the simulator's record belongs to.
pub fn job_id_of(delivery_body: &Value) -> Option<String> {
    delivery_body["message"]["metadata"]
        .as_str()
        .map(str::to_string)
}

/// The topology of `prefix` with default tiers (what the tests' daemons use unless told).
pub fn topology(prefix: &str, shards: u16) -> Topology {
    let mut settings = Settings::load(&LoadOptions::default()).unwrap();
    settings.amqp.prefix = prefix.to_string();
    settings.amqp.shards = shards;
    Topology::new(&settings.amqp, &settings.retry.tiers)
}

/// Publishes `jobs` (one JSON value per job) with confirms, as `pagerelay publish` does.
pub async fn publish(conn: &lapin::Connection, topology: &Topology, jobs: &[Value]) {
    let publisher = Publisher::open(conn, Duration::from_secs(30))
        .await
        .unwrap();
    let text: String = jobs.iter().map(|j| format!("{j}\n")).collect();
    let summary = pagerelay::publish::publish_lines(text.as_bytes(), &publisher, topology)
        .await
        .unwrap();
    assert_eq!(summary.published, jobs.len() as u64);
}

/// Publishes raw bodies with explicit routing keys and properties (for hostile input).
pub async fn publish_raw(
    conn: &lapin::Connection,
    topology: &Topology,
    messages: &[(String, Vec<u8>, lapin::BasicProperties)],
) {
    let publisher = Publisher::open(conn, Duration::from_secs(30))
        .await
        .unwrap();
    for (routing_key, body, properties) in messages {
        publisher
            .publish(
                &topology.jobs_exchange(),
                routing_key,
                body,
                properties.clone(),
            )
            .await
            .unwrap();
    }
}

/// A dead letter as a test reads it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub routing_key: String,
    pub headers: FieldTable,
    pub properties: lapin::BasicProperties,
}

impl DeadLetter {
    pub fn header(&self, key: &str) -> Option<String> {
        headers::get_string(Some(&self.headers), key)
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        headers::get_int(Some(&self.headers), key)
    }

    pub fn reason(&self) -> String {
        self.header(headers::REASON).unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Number of ready messages in `queue`.
pub async fn depth(conn: &lapin::Connection, queue: &str) -> u32 {
    let channel = conn.create_channel().await.unwrap();
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "depth".into()).await;
    q.message_count()
}

/// Takes (and acks) every message in `queue`.
pub async fn drain(conn: &lapin::Connection, queue: &str) -> Vec<DeadLetter> {
    let channel = conn.create_channel().await.unwrap();
    let mut letters = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        let delivery = message.delivery;
        letters.push(DeadLetter {
            body: delivery.data.clone(),
            routing_key: delivery.routing_key.to_string(),
            headers: delivery.properties.headers().clone().unwrap_or_default(),
            properties: delivery.properties.clone(),
        });
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = channel.close(200, "drained".into()).await;
    letters
}

/// Consumes `queue` for `window` and returns what arrived (acked).
pub async fn collect(conn: &lapin::Connection, queue: &str, window: Duration) -> Vec<DeadLetter> {
    let channel = conn.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut letters = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, consumer.next()).await {
        letters.push(DeadLetter {
            body: delivery.data.clone(),
            routing_key: delivery.routing_key.to_string(),
            headers: delivery.properties.headers().clone().unwrap_or_default(),
            properties: delivery.properties.clone(),
        });
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = channel.close(200, "collected".into()).await;
    letters
}

/// A string header value, for building test messages.
pub fn header(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Headers of a dead letter as pagerelay writes them: the reason, the Page, one attempt, the
/// error context, and the times.
pub fn dead_headers(reason: &str, page: &str, code: Option<i64>) -> FieldTable {
    let mut table = FieldTable::default();
    let now = chrono::Utc::now();
    headers::set_str(&mut table, headers::REASON, reason);
    headers::set_str(&mut table, headers::PAGE_ID, page);
    headers::set_int(&mut table, headers::ATTEMPTS, 1);
    headers::set_time(&mut table, headers::FIRST_ATTEMPT_AT, Some(now));
    headers::set_time(&mut table, headers::DEAD_LETTERED_AT, Some(now));
    headers::set_int(&mut table, headers::PARKED, 2);
    headers::set_str(&mut table, headers::PARK_REASON, "paused");
    if let Some(code) = code {
        headers::write_error(
            &mut table,
            &headers::ErrorContext {
                code: Some(code),
                subcode: None,
                message: Some(format!("error {code}")),
                fbtrace_id: Some("AbCdEf".into()),
            },
        );
    }
    table
}

/// Headers of a message the broker dead-lettered itself from `queue`: an `x-death` entry and
/// `x-first-death-reason`, no `x-pagerelay-reason`.
pub fn broker_dead_headers(queue: &str, reason: &str) -> FieldTable {
    let mut death = FieldTable::default();
    death.insert("queue".into(), header(queue));
    death.insert("reason".into(), header(reason));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    death.insert(
        "time".into(),
        AMQPValue::Timestamp(chrono::Utc::now().timestamp() as u64),
    );
    let mut table = FieldTable::default();
    table.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    table.insert("x-first-death-reason".into(), header(reason));
    table
}

/// A dead letter of `job` (its body, its Page as routing key, its job id as message id).
pub fn dead_letter(job: &Value, headers: FieldTable) -> (String, Vec<u8>, lapin::BasicProperties) {
    let page = job["page_id"].as_str().unwrap_or("unrouted").to_string();
    let mut properties = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(id) = job["job_id"].as_str() {
        properties = properties.with_message_id(id.into());
    }
    (page, job.to_string().into_bytes(), properties)
}

/// Publishes messages straight to the dead-letter exchange, in order, and waits for every
/// confirm.
pub async fn publish_dead(
    conn: &lapin::Connection,
    topology: &Topology,
    letters: &[(String, Vec<u8>, lapin::BasicProperties)],
) {
    let publisher = Publisher::open(conn, Duration::from_secs(30))
        .await
        .unwrap();
    let mut pending = Vec::with_capacity(letters.len());
    for (routing_key, body, properties) in letters {
        pending.push(
            publisher
                .send(
                    &topology.dead_exchange(),
                    routing_key,
                    body,
                    properties.clone(),
                )
                .await
                .unwrap(),
        );
    }
    for confirm in pending {
        confirm.confirmed().await.unwrap();
    }
}

/// The job ids of `letters`, in order (the body's `job_id`, else the message id).
pub fn job_ids(letters: &[DeadLetter]) -> Vec<String> {
    letters
        .iter()
        .map(|l| {
            l.json()["job_id"]
                .as_str()
                .map(str::to_string)
                .or_else(|| l.properties.message_id().as_ref().map(|m| m.to_string()))
                .unwrap_or_default()
        })
        .collect()
}
