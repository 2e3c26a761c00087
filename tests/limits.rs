//! Per-Page limits against the simulator's own accounting: the per-second ceiling is met
//! precisely without a single 613, and a Page that spends its budget is parked without slowing
//! the other Pages, then delivers once its window slides.
//!
//! These tests measure rates, so they take a lock and run one at a time.

mod support;

use std::time::Duration;

use pagerelay::sim::{PageConfig, SimConfig, Simulator};
use serde_json::Value;
use tokio::sync::Mutex;

use support::daemon::{Daemon, DaemonConfig};
use support::{broker, jobs, wait_for};

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rps_ceiling_is_met_within_five_percent_without_a_613() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let prefix = broker::unique_prefix("rps");
    let page = "100000000000777".to_string();
    // The platform's ceiling is 300/s; pagerelay's is 250/s with a burst of one batch.
    let sim = Simulator::start(SimConfig::default().with_page(PageConfig::new(
        &page,
        format!("token-{page}"),
        10_000_000,
    )))
    .await
    .unwrap();
    let daemon =
        Daemon::start(DaemonConfig::new(&prefix, &sim.base_url()).page(&page, 10_000_000)).await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let total = 3_500; // 14 s at 250/s
    let all: Vec<Value> = (0..total)
        .map(|i| {
            jobs::text_job(
                &page,
                &format!("{}", 6_000_000 + i % 1000),
                &format!("job-{i}"),
            )
        })
        .collect();
    jobs::publish(&conn, &topology, &all).await;

    let client = sim.client();
    wait_for("every delivery", Duration::from_secs(60), || async {
        let stats = client.stats().await.ok()?;
        (stats.totals.delivered >= total as u64).then_some(())
    })
    .await;
    let stats = client.stats().await.unwrap();
    let page_stats = &stats.pages[&page];
    assert_eq!(
        page_stats.rejected_by_code.get("613"),
        None,
        "no 613 at all: {page_stats:?}"
    );
    assert!(page_stats.peak_calls_per_second <= 300, "{page_stats:?}");

    let mut arrivals: Vec<u64> = client
        .all_deliveries()
        .await
        .unwrap()
        .iter()
        .map(|d| d.at_us)
        .collect();
    arrivals.sort_unstable();
    // After the initial burst of one batch, the rate is the ceiling.
    let after_burst = &arrivals[50..];
    let span_s = (after_burst[after_burst.len() - 1] - after_burst[0]) as f64 / 1e6;
    let rate = (after_burst.len() - 1) as f64 / span_s;
    eprintln!("achieved {rate:.1}/s over {span_s:.1} s");
    assert!(span_s >= 10.0, "the run lasted {span_s:.1} s");
    assert!((237.5..=262.5).contains(&rate), "achieved {rate:.1}/s");
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_out_of_budget_is_parked_while_the_others_flow() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let prefix = broker::unique_prefix("budget");
    // A simulated day of 20 s, on both sides.
    let window = Duration::from_secs(20);
    let scale = 86_400.0 / window.as_secs_f64();
    let tiny = "100000000000001".to_string();
    let others: Vec<String> = (0..99)
        .map(|i| format!("{}", 100_000_000_000_100u64 + i))
        .collect();
    let mut sim_config = SimConfig::default()
        .with_time_scale(scale)
        .with_page(PageConfig::new(&tiny, format!("token-{tiny}"), 1));
    for id in &others {
        sim_config = sim_config.with_page(PageConfig::new(id, format!("token-{id}"), 100_000));
    }
    let sim = Simulator::start(sim_config).await.unwrap();
    let daemon = Daemon::start(
        DaemonConfig::new(&prefix, &sim.base_url())
            .page(&tiny, 1)
            .pages(&others, 100_000)
            .section("limits", "budget_window = \"20s\""),
    )
    .await;
    let conn = broker::connect().await;
    let topology = daemon.topology();

    // The tiny Page (budget 190 per window) gets 300 jobs first, so they sit in front of the
    // others in the queue; then 50 jobs for each of the 99 others.
    let mut all: Vec<Value> = (0..300)
        .map(|i| jobs::text_job(&tiny, &format!("{}", 1_000_000 + i), &format!("tiny-{i}")))
        .collect();
    for (p, id) in others.iter().enumerate() {
        all.extend(
            (0..50).map(|i| {
                jobs::text_job(id, &format!("{}", 2_000_000 + i), &format!("other-{p}-{i}"))
            }),
        );
    }
    let started = std::time::Instant::now();
    jobs::publish(&conn, &topology, &all).await;

    let client = sim.client();
    let others_done = wait_for(
        "the other Pages' 4,950 jobs",
        Duration::from_secs(60),
        || async {
            let stats = client.stats().await.ok()?;
            let delivered: u64 = others.iter().map(|id| stats.pages[id].delivered).sum();
            (delivered >= 4_950).then(|| (started.elapsed(), stats.pages[&tiny].delivered))
        },
    )
    .await;
    eprintln!(
        "others done in {:?}; the tiny Page had {} delivered",
        others_done.0, others_done.1
    );
    assert!(
        others_done.0 < Duration::from_secs(15),
        "the others took {:?}",
        others_done.0
    );
    assert!(others_done.1 < 300, "the tiny Page cannot be done yet");
    let parked = daemon
        .metric("pagerelay_parked_total", &["reason=\"budget\""])
        .await;
    assert!(parked > 0.0, "the tiny Page's overflow was parked");
    let park_messages = daemon
        .metric("pagerelay_park_message_jobs_count", &[])
        .await;
    assert!(
        park_messages * 3.0 <= parked,
        "parked together: {parked} jobs in {park_messages} messages"
    );
    let tiny_view = daemon.page(&tiny).await.unwrap();
    assert_eq!(tiny_view["budget"], 190);

    // After the window slides, the parked jobs come back and go out.
    wait_for(
        "the tiny Page's 300 jobs",
        Duration::from_secs(120),
        || async {
            let stats = client.stats().await.ok()?;
            (stats.pages[&tiny].delivered >= 300).then_some(())
        },
    )
    .await;
    let stats = client.stats().await.unwrap();
    assert_eq!(
        stats.pages[&tiny].rejected_by_code.get("613"),
        None,
        "pagerelay kept within the budget"
    );
    assert_eq!(stats.totals.delivered, 5_250);
    let deliveries = client.all_deliveries().await.unwrap();
    let mut tiny_ids: Vec<String> = deliveries
        .iter()
        .filter(|d| d.page_id == tiny)
        .filter_map(|d| jobs::job_id_of(&d.body))
        .collect();
    tiny_ids.sort();
    tiny_ids.dedup();
    assert_eq!(tiny_ids.len(), 300, "every tiny job once");
    // The tiny Page's deliveries spanned more than one window: it waited for the slide.
    let tiny_times: Vec<u64> = deliveries
        .iter()
        .filter(|d| d.page_id == tiny)
        .map(|d| d.at_ms)
        .collect();
    let span = tiny_times.iter().max().unwrap() - tiny_times.iter().min().unwrap();
    assert!(
        span > window.as_millis() as u64,
        "tiny deliveries spanned {span} ms"
    );
    for queue in topology.all_queues() {
        assert_eq!(jobs::depth(&conn, &queue).await, 0, "{queue} is not empty");
    }
    drop(daemon);
    broker::delete_topology(&prefix).await;
}
