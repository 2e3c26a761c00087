//! Scaling out: with `shards = 4` and two `pagerelay run` processes, every shard queue has one
//! active consumer, a Page's limits hold across the processes, and stopping one process moves its
//! shards to the other without losing a job.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use pagerelay::sim::{PageConfig, SimConfig, Simulator};
use serde_json::Value;

use support::daemon::{Daemon, DaemonConfig};
use support::{broker, jobs, wait_for};

/// Active consumers per shard queue, and the pid in each active consumer's tag.
async fn active_by_queue(prefix: &str) -> BTreeMap<String, Vec<String>> {
    let mut active: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in broker::consumers(prefix).await {
        if c.active {
            active.entry(c.queue).or_default().push(c.tag);
        }
    }
    active
}

fn pid_of(tag: &str) -> &str {
    // pagerelay-<pid>-<generation>-<index>
    tag.split('-').nth(1).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_have_one_active_consumer_and_fail_over_without_loss() {
    let prefix = broker::unique_prefix("shards");
    let hot = "100000000000042".to_string();
    let others: Vec<String> = (0..19)
        .map(|i| format!("{}", 100_000_000_000_100u64 + i))
        .collect();
    let mut sim_config =
        SimConfig::default().with_page(PageConfig::new(&hot, format!("token-{hot}"), 10_000_000));
    for id in &others {
        sim_config = sim_config.with_page(PageConfig::new(id, format!("token-{id}"), 100_000));
    }
    let sim = Simulator::start(sim_config).await.unwrap();
    let config = || {
        let mut c = DaemonConfig::new(&prefix, &sim.base_url())
            .page(&hot, 10_000_000)
            .pages(&others, 100_000);
        c.shards = 4;
        c
    };
    let mut first = Daemon::start(config()).await;
    let second = Daemon::start(config()).await;

    // Both processes consume every shard; the broker lets one consumer per shard be active.
    let active = wait_for(
        "one active consumer on each of the 4 shards",
        Duration::from_secs(30),
        || async {
            let active = active_by_queue(&prefix).await;
            (active.len() == 4 && active.values().all(|tags| tags.len() == 1)).then_some(active)
        },
    )
    .await;
    // The management API refreshes consumers every few seconds: the second process's may lag.
    wait_for(
        "two consumers on each shard",
        Duration::from_secs(30),
        || async { (broker::consumers(&prefix).await.len() == 8).then_some(()) },
    )
    .await;
    // The process that started first holds every shard; the other is a hot standby.
    let first_pid = first.pid().unwrap().to_string();
    assert!(
        active.values().all(|tags| pid_of(&tags[0]) == first_pid),
        "{active:?}"
    );

    let conn = broker::connect().await;
    let topology = first.topology();
    // The hot Page's 1,500 jobs all hash to one shard: if two processes sent for it at once, the
    // simulator would see up to twice the ceiling and answer 613.
    let mut all: Vec<Value> = (0..1_500)
        .map(|i| jobs::text_job(&hot, &format!("{}", 9_000_000 + i), &format!("hot-{i}")))
        .collect();
    for (p, id) in others.iter().enumerate() {
        all.extend(
            (0..100).map(|i| {
                jobs::text_job(id, &format!("{}", 9_100_000 + i), &format!("other-{p}-{i}"))
            }),
        );
    }
    jobs::publish(&conn, &topology, &all).await;
    let total = all.len() as u64;

    // Stop the active process a third of the way through the hot Page's backlog.
    let client = sim.client();
    wait_for(
        "a third of the deliveries",
        Duration::from_secs(60),
        || async {
            let stats = client.stats().await.ok()?;
            (stats.totals.delivered >= total / 3).then_some(())
        },
    )
    .await;
    let status = first.stop().await;
    assert!(status.success(), "graceful stop: {status:?}");

    let second_pid = second.pid().unwrap().to_string();
    wait_for(
        "every shard on the remaining process",
        Duration::from_secs(30),
        || async {
            let active = active_by_queue(&prefix).await;
            (active.len() == 4
                && active
                    .values()
                    .all(|tags| tags.len() == 1 && pid_of(&tags[0]) == second_pid))
            .then_some(())
        },
    )
    .await;

    wait_for("every delivery", Duration::from_secs(120), || async {
        let stats = client.stats().await.ok()?;
        (stats.totals.delivered >= total).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for d in client.all_deliveries().await.unwrap() {
        *counts.entry(jobs::job_id_of(&d.body).unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len() as u64, total, "nothing lost");
    assert!(counts.values().all(|n| *n == 1), "nothing sent twice");
    let stats = client.stats().await.unwrap();
    assert_eq!(
        stats.totals.throttled_613, 0,
        "the Page's limits held across both processes"
    );
    assert!(
        stats.pages[&hot].peak_calls_per_second <= 300,
        "{:?}",
        stats.pages[&hot]
    );
    for queue in topology.all_queues() {
        assert_eq!(jobs::depth(&conn, &queue).await, 0, "{queue} is not empty");
    }
    drop(second);
    broker::delete_topology(&prefix).await;
}
