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
