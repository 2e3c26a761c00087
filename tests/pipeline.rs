//! The delivery pipeline end to end: real RabbitMQ, `graph-sim` over real HTTP, and the
//! `pagerelay` binary. Every assertion about delivery is made on the simulator's record.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pagerelay::sim::{PageConfig, SimConfig, Simulator};
use serde_json::Value;

use support::daemon::{Daemon, DaemonConfig};
use support::{broker, jobs, wait_for};

fn page_ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{}", 100_000_000_000_000u64 + i as u64))
        .collect()
}

async fn sim_with(pages: &[String], audience: u64) -> Simulator {
    let mut config = SimConfig::default().with_seed(7);
    for id in pages {
        config = config.with_page(PageConfig::new(id, format!("token-{id}"), audience));
    }
    Simulator::start(config).await.unwrap()
}

/// Job ids delivered per the simulator's record, with how many times each arrived.
async fn delivered(sim: &Simulator) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for d in sim.client().all_deliveries().await.unwrap() {
        *counts
            .entry(jobs::job_id_of(&d.body).unwrap_or_default())
            .or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_is_delivered_exactly_once() {
    let prefix = broker::unique_prefix("exactly-once");
    let pages = page_ids(100);
    let sim = sim_with(&pages, 100_000).await;
    let daemon =
        Daemon::start(DaemonConfig::new(&prefix, &sim.base_url()).pages(&pages, 100_000)).await;
    let conn = broker::connect().await;
    let topology = daemon.topology();

    let all: Vec<Value> = (0..10_000)
        .map(|i| {
            let page = &pages[i % pages.len()];
            jobs::text_job(
                page,
                &format!("{}", 7_000_000 + i % 997),
                &format!("job-{i}"),
            )
        })
        .collect();
    jobs::publish(&conn, &topology, &all).await;

    let client = sim.client();
    wait_for("10,000 deliveries", Duration::from_secs(120), || async {
        let stats = client.stats().await.ok()?;
        (stats.totals.delivered >= 10_000).then_some(())
    })
    .await;
    // Anything still in flight would show up as extra deliveries: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let counts = delivered(&sim).await;
    assert_eq!(counts.len(), 10_000, "distinct jobs delivered");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let expected: HashSet<String> = (0..10_000).map(|i| format!("job-{i}")).collect();
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), expected);

    for queue in topology.all_queues() {
        assert_eq!(jobs::depth(&conn, &queue).await, 0, "{queue} is not empty");
    }
    assert_eq!(
        daemon
            .metric("pagerelay_operations_total", &["outcome=\"delivered\""])
            .await,
        10_000.0
    );
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_and_null_items_are_retried_until_delivered_once() {
    use pagerelay::sim::Faults;
    let prefix = broker::unique_prefix("transient");
    let pages = page_ids(20);
    let mut config = SimConfig::default().with_seed(11).with_faults(Faults {
        item_transient_rate: 0.2,
        item_null_rate: 0.05,
        ..Faults::default()
    });
    for id in &pages {
        config = config.with_page(PageConfig::new(id, format!("token-{id}"), 100_000));
    }
    let sim = Simulator::start(config).await.unwrap();
    // With a 25 % chance of failure per attempt, 12 attempts leave about 1 in 17 million jobs
    // undelivered: none, for 2,000 jobs.
    let daemon = Daemon::start(
        DaemonConfig::new(&prefix, &sim.base_url())
            .pages(&pages, 100_000)
            .section("retry", "max_attempts = 12"),
    )
    .await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let all: Vec<Value> = (0..2_000)
        .map(|i| jobs::text_job(&pages[i % pages.len()], &format!("{}", 8_000_000 + i), &format!("job-{i}")))
        .collect();
    jobs::publish(&conn, &topology, &all).await;

    let client = sim.client();
    wait_for("2,000 deliveries", Duration::from_secs(120), || async {
        let stats = client.stats().await.ok()?;
        (stats.totals.delivered >= 2_000).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let counts = delivered(&sim).await;
    assert_eq!(counts.len(), 2_000);
    assert!(counts.values().all(|n| *n == 1), "a job was delivered twice");
    let stats = client.stats().await.unwrap();
    assert!(stats.totals.nulls > 0 && stats.totals.rejected > 0, "faults were injected: {:?}", stats.totals);
    let retried = daemon.metric("pagerelay_operations_total", &["outcome=\"retried\""]).await;
    assert_eq!(retried as u64, stats.totals.nulls + stats.totals.rejected, "every failed operation was retried once");
    assert_eq!(daemon.metric("pagerelay_dead_letters_total", &[]).await, 0.0);
    for queue in topology.all_queues() {
        assert_eq!(jobs::depth(&conn, &queue).await, 0, "{queue} is not empty");
    }
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recipient_hears_its_messages_in_publish_order() {
    let prefix = broker::unique_prefix("order");
    let pages = page_ids(1);
    // Seed 7 shuffles independent operations of a batch; a pipeline that put two messages to
    // one recipient in a batch would be caught out of order.
    let sim = sim_with(&pages, 100_000).await;
    let daemon = Daemon::start(DaemonConfig::new(&prefix, &sim.base_url()).pages(&pages, 100_000)).await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let mut all: Vec<Value> = (0..200)
        .map(|i| jobs::text_job(&pages[0], "4242424242", &format!("job-{i:03}")))
        .collect();
    // Other recipients' messages mixed in, so that batches are full of independent work.
    all.extend((0..300).map(|i| jobs::text_job(&pages[0], &format!("{}", 5_000_000 + i), &format!("other-{i}"))));
    jobs::publish(&conn, &topology, &all).await;

    let client = sim.client();
    wait_for("500 deliveries", Duration::from_secs(120), || async {
        let stats = client.stats().await.ok()?;
        (stats.totals.delivered >= 500).then_some(())
    })
    .await;
    let order: Vec<String> = client
        .all_deliveries()
        .await
        .unwrap()
        .iter()
        .filter(|d| d.recipient["id"] == "4242424242")
        .filter_map(|d| jobs::job_id_of(&d.body))
        .collect();
    let expected: Vec<String> = (0..200).map(|i| format!("job-{i:03}")).collect();
    assert_eq!(order, expected);
    drop(daemon);
    broker::delete_topology(&prefix).await;
}
