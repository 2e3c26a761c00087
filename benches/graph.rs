//! The Graph batch protocol on the hot path: encoding a full batch of realistic jobs, and decoding
//! and classifying the reply to it. Together they should stay well under 100 µs.
//!
//! `encode_bodies_50` writes 50 jobs' bodies in their wire form, as the consumer does once per
//! job; `encode_50` assembles a request from bodies already written, and `encode_shared_50` one
//! shared by 50 Pages, each operation with its own 200-character token and proof.
//!
//! `decode_classify_shared_50` decodes the reply to a shared request (50 Pages, one operation
//! each) whose tokens are as short as the load tool's, so every message id is searched for every
//! Page's token: the reply scrubber's worst case. Real Page tokens are longer than any receipt id,
//! which skips the search.
//!
//! `cargo bench --bench graph -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, StatusCode};
use pagerelay::graph::{
    BUSINESS_USE_CASE_USAGE, BatchReply, BatchRequest, Decision, EncodedBody, MAX_OPERATIONS,
    Operation, PageAuth, classify,
};
use secrecy::SecretString;
use serde_json::{Map, Value, json};

/// A Send API body of about 300 bytes, as the pipeline hands it over (job fields stripped).
fn job(index: usize) -> Map<String, Value> {
    let body = json!({
        "recipient": {"id": format!("65432109876{index:05}")},
        "messaging_type": "UPDATE",
        "message": {
            "text": format!(
                "Hi Ana! Your order #{index} (2 items, 49.90 €) has shipped & will arrive \
                 Tuesday. Track it at https://shop.example/t?o={index}&k=ab%20cd — reply STOP \
                 to opt out."
            ),
            "metadata": format!("job=0f8fad5b-d9cb-469f-a165-70867728{index:04}"),
        },
        "notification_type": "REGULAR",
    });
    match body {
        Value::Object(map) => map,
        _ => unreachable!("the literal is an object"),
    }
}

/// Graph's answer to a batch where every operation succeeded.
fn success_reply(operations: usize) -> Vec<u8> {
    let items: Vec<Value> = (0..operations)
        .map(|index| {
            let body = json!({
                "recipient_id": format!("65432109876{index:05}"),
                "message_id": format!(
                    "m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6AC8fplwlqLP_{index:05}"
                ),
            });
            json!({"code": 200, "body": body.to_string()})
        })
        .collect();
    serde_json::to_vec(&items).expect("serialises")
}

/// One operation per body, each sent with its own Page's credentials: a shared request.
fn each_with_own_auth<'a>(bodies: &'a [EncodedBody], auths: &'a [PageAuth]) -> Vec<Operation<'a>> {
    bodies
        .iter()
        .zip(auths)
        .map(|(body, auth)| Operation::send(body).with_auth(auth))
        .collect()
}

fn bench(c: &mut Criterion) {
    let auth = PageAuth::new(
        SecretString::from("EAAGm0PX4ZCpsBAKZCZBZAkE0ZB0ZCZBx".repeat(6)),
        Some(&SecretString::from("0123456789abcdef0123456789abcdef")),
    );
    let jobs: Vec<_> = (0..MAX_OPERATIONS).map(job).collect();
    let bodies: Vec<_> = jobs.iter().map(EncodedBody::new).collect();
    let ops: Vec<_> = bodies.iter().map(Operation::send).collect();
    let request = BatchRequest::encode(&auth, &ops).expect("encodes");
    let reply = success_reply(MAX_OPERATIONS);
    let mut headers = HeaderMap::new();
    headers.insert(
        BUSINESS_USE_CASE_USAGE,
        HeaderValue::from_static(
            r#"{"104857600000001":[{"type":"messenger","call_count":12,"total_cputime":3,"total_time":5,"estimated_time_to_regain_access":0}]}"#,
        ),
    );

    let job_bytes: usize = jobs
        .iter()
        .map(|j| Value::Object(j.clone()).to_string().len())
        .sum();
    eprintln!(
        "{} jobs, {} bytes of JSON on average; form body {} bytes; reply {} bytes",
        jobs.len(),
        job_bytes / jobs.len(),
        request.form_body().len(),
        reply.len()
    );

    let shared_auths: Vec<_> = (0..MAX_OPERATIONS)
        .map(|page| PageAuth::new(SecretString::from(format!("token-1048576{page:08}")), None))
        .collect();
    let shared_ops = each_with_own_auth(&bodies, &shared_auths);
    let shared = BatchRequest::encode(&shared_auths[0], &shared_ops).expect("encodes");
    // Tokens of 200 characters and an app secret, as in production.
    let app_secret = SecretString::from("0123456789abcdef0123456789abcdef");
    let real_auths: Vec<_> = (0..MAX_OPERATIONS)
        .map(|page| {
            let token = format!(
                "EAAGm0PX4ZCpsBA{page:04}{}",
                "KZCZBZAkE0ZB0ZCZBx".repeat(11)
            );
            PageAuth::new(
                SecretString::from(token[..200].to_owned()),
                Some(&app_secret),
            )
        })
        .collect();
    let real_ops = each_with_own_auth(&bodies, &real_auths);

    let mut group = c.benchmark_group("graph");
    group.throughput(Throughput::Elements(MAX_OPERATIONS as u64));
    group.bench_function("encode_bodies_50", |b| {
        b.iter(|| {
            black_box(&jobs)
                .iter()
                .map(EncodedBody::new)
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("encode_50", |b| {
        b.iter(|| {
            let request = BatchRequest::encode(&auth, black_box(&ops)).expect("encodes");
            request.form_body()
        })
    });
    group.bench_function("encode_shared_50", |b| {
        b.iter(|| {
            let request =
                BatchRequest::encode(&real_auths[0], black_box(&real_ops)).expect("encodes");
            request.form_body()
        })
    });
    group.bench_function("decode_classify_50", |b| {
        b.iter(|| {
            let reply = BatchReply::decode(&request, StatusCode::OK, &headers, black_box(&reply));
            let delivered = reply
                .outcomes()
                .filter(|o| classify(*o) == Decision::Delivered)
                .count();
            (delivered, reply.usage().max_usage_percent())
        })
    });
    group.bench_function("decode_classify_shared_50", |b| {
        b.iter(|| {
            let reply = BatchReply::decode(&shared, StatusCode::OK, &headers, black_box(&reply));
            reply
                .outcomes()
                .filter(|o| classify(*o) == Decision::Delivered)
                .count()
        })
    });
    group.bench_function("round_trip_50", |b| {
        b.iter(|| {
            let request = BatchRequest::encode(&auth, black_box(&ops)).expect("encodes");
            let body = request.form_body();
            let reply = BatchReply::decode(&request, StatusCode::OK, &headers, black_box(&reply));
            let delivered = reply
                .outcomes()
                .filter(|o| classify(*o) == Decision::Delivered)
                .count();
            (body.len(), delivered)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
