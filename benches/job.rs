//! What decoding and validating one delivery costs: a typical text job of about 300 bytes and a
//! button-template attachment job, each decoded with the delivery metadata the consumer passes.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pagerelay::job::{DeliveryMeta, Job};

const TEXT_JOB: &str = r#"{"page_id":"104857600000001","job_id":"0f8fad5b-d9cb-469f-a165-70867728950e","expires_at":"2026-11-22T10:00:00Z","recipient":{"id":"6543210987654321"},"messaging_type":"UPDATE","message":{"text":"Your order #40417 has shipped. It should arrive on Thursday.","metadata":"order-40417"},"notification_type":"REGULAR"}"#;

const TEMPLATE_JOB: &str = r#"{"page_id":"104857600000001","job_id":"9b2c7d1e-5f3a-4c8b-a6d2-1e0f9a8b7c6d","recipient":{"id":"6543210987654321"},"messaging_type":"MESSAGE_TAG","tag":"POST_PURCHASE_UPDATE","message":{"attachment":{"type":"template","payload":{"template_type":"button","text":"Your parcel is out for delivery. Track it or change the drop-off point.","buttons":[{"type":"web_url","url":"https://example.com/track/40417","title":"Track parcel"},{"type":"postback","title":"Change drop-off","payload":"CHANGE_DROPOFF_40417"},{"type":"phone_number","title":"Call us","payload":"+15105551234"}]}},"quick_replies":[{"content_type":"text","title":"Thanks","payload":"THANKS"},{"content_type":"text","title":"Help","payload":"HELP"}]}}"#;

fn decode(c: &mut Criterion) {
    let meta = DeliveryMeta {
        routing_key: "104857600000001",
        message_id: Some("0f8fad5b-d9cb-469f-a165-70867728950e"),
        content_type: Some("application/json"),
    };
    let mut group = c.benchmark_group("job_decode");
    for (name, body) in [("text", TEXT_JOB), ("template", TEMPLATE_JOB)] {
        // A bench of a refused job would measure the error path; make sure it is not that.
        Job::decode(body.as_bytes(), &meta).expect("bench jobs are valid");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name}_{}b", body.len()), |b| {
            b.iter(|| Job::decode(black_box(body.as_bytes()), black_box(&meta)))
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
