//! The local broker is real: a quorum queue under a per-test prefix takes a confirmed publish,
//! delivers it to a manual-ack consumer, and is empty after the ack.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};

use support::broker;

#[tokio::test]
async fn confirmed_publish_consume_and_ack_on_the_local_broker() {
    let prefix = broker::unique_prefix("broker");
    let queue = format!("{prefix}.probe");
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    let confirmation = channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"{\"hello\":\"broker\"}",
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id("probe-1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        confirmation.is_ack(),
        "broker did not confirm: {confirmation:?}"
    );
    assert!(
        confirmation.take_message().is_none(),
        "the publish was returned as unroutable"
    );

    let consumer_channel = conn.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(10, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("no delivery within 10 s")
        .expect("consumer ended")
        .expect("delivery error");
    assert_eq!(delivery.data, b"{\"hello\":\"broker\"}");
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("probe-1")
    );
    assert!(delivery.ack(BasicAckOptions::default()).await.unwrap());

    // The ack is asynchronous on the broker side: poll the depth until it settles.
    let mut depth = u32::MAX;
    for _ in 0..50 {
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        depth = declared.message_count();
        if depth == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(depth, 0, "the acked message is still queued");

    conn.close(200, "done".into()).await.unwrap();
    broker::delete_topology(&prefix).await;
    let client = reqwest::Client::new();
    let left = broker::list_names(&client, &broker::management_url(), "queues")
        .await
        .unwrap();
    assert!(
        !left.iter().any(|q| q.starts_with(&prefix)),
        "cleanup left {left:?}"
    );
}
