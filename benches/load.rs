//! The load tool: end-to-end benchmarks of `pagerelay run` against the local RabbitMQ and the
//! Graph simulator, each scenario on a fresh topology, with a report at the end.
//!
//! ```text
//! cargo bench --bench load                      # every scenario
//! cargo bench --bench load -- throughput cost   # some of them
//! cargo bench --bench load -- --quick           # a tenth of the sizes, for a smoke run
//! ```
//!
//! Scenarios (DESIGN and issue 9):
//! - `throughput`: 200,000 ~300-byte jobs over 1,000 Pages, queued before pagerelay starts,
//!   simulator unthrottled; jobs per second from the first consume to the last delivery. In the
//!   same run, `ceiling`: a bare lapin consumer draining the same backlog with the same
//!   prefetch, acking each delivery — the most any consumer could do here.
//! - `cost`: CPU seconds (user + sys) per 1,000 jobs delivered and peak RSS, at prefetch 10,000
//!   with 10,000 distinct Pages; then the idle daemon's CPU per second with those lanes in
//!   memory, and the time from SIGTERM to exit.
//! - `precision`: one Page, a backlog of 20,000, ceiling 250/s, simulator limit 300/s: the rate
//!   achieved over 60 s and the number of 613s.
//! - `latency`: publish → simulator arrival at 20 % of the measured throughput (or of 5,000/s).
//! - `fairness`: one Page out of budget with 50,000 jobs queued among 999 healthy Pages' jobs:
//!   the healthy Pages' throughput as a ratio of the same run without the exhausted Page. In the
//!   same run, two bare consumers over the same queue contents: one that parks the exhausted
//!   Page's jobs (a confirmed republish each) and acks the rest, and one that acks them all
//!   unparked — what the broker's delivering those jobs costs, whoever consumes them.
//!
//! Environment: `LOAD_PAGES` sets the throughput scenario's Page count (default 1,000), and
//! `LOAD_TOKEN_CHARS` the length of every Page's token (default 200, as real ones are).
//!
//! The report goes to standard output and `target/load-report.md`. Figures from one run on a
//! small shared machine are noisy: compare ratios, and runs on the same machine.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use pagerelay::amqp::{Publisher, Session, Topology};
use pagerelay::config::{LoadOptions, Settings};
use pagerelay::sim::{PageConfig, SimConfig, Simulator};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to do there.
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "load: run with `cargo bench --bench load` (it needs release binaries and minutes)"
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let mut wanted: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if wanted.is_empty() {
        wanted = vec!["throughput", "cost", "precision", "latency", "fairness"];
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let report = runtime.block_on(run(&wanted, if quick { 10 } else { 1 }));
    println!("\n{report}");
    let _ = std::fs::create_dir_all("target");
    std::fs::write("target/load-report.md", &report).expect("report written");
}

async fn run(wanted: &[&str], divisor: usize) -> String {
    let status = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/rabbitmq/local-broker.sh"
    ))
    .status()
    .expect("local-broker.sh runs");
    assert!(status.success(), "the local broker must start");
    let mut report = String::new();
    let _ = writeln!(report, "# pagerelay load report\n");
    let _ = writeln!(report, "{}\n", machine());
    let mut throughput = None;
    for scenario in wanted {
        let section = match *scenario {
            "throughput" | "ceiling" => {
                let pages = std::env::var("LOAD_PAGES")
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(1_000);
                let (text, rate) = scenario_throughput(200_000 / divisor, pages).await;
                throughput = Some(rate);
                text
            }
            "cost" => scenario_cost(100_000 / divisor, 10_000 / divisor.min(10)).await,
            "precision" => scenario_precision(20_000, if divisor > 1 { 15 } else { 60 }).await,
            "latency" => {
                scenario_latency(
                    throughput.unwrap_or(5_000.0) * 0.2,
                    30 / divisor.min(3) as u64,
                )
                .await
            }
            "fairness" => scenario_fairness(50_000 / divisor, 999, 100 / divisor.min(2)).await,
            other => format!("unknown scenario {other}\n"),
        };
        println!("{section}");
        report.push_str(&section);
        report.push('\n');
    }
    report
}

/// The length of every Page's token: `LOAD_TOKEN_CHARS`, else 200, about what a real Page token
/// measures. Runs before 2026-12-07's third round used 22-character tokens (`token-` and the
/// id), which made the reply scrubber search every receipt (no real token is that short) and
/// made requests smaller than they are; `LOAD_TOKEN_CHARS=22` compares with them.
fn token_chars() -> usize {
    std::env::var("LOAD_TOKEN_CHARS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}

/// Page `id`'s token, the same in the simulator and the daemon's tokens file: `token-`, the id,
/// then letters and digits drawn from the id, to [`token_chars`] characters in all.
fn page_token(id: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut token = format!("token-{id}");
    let mut state = id.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let len = token_chars();
    while token.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        token.push(char::from(
            ALPHABET[(state % ALPHABET.len() as u64) as usize],
        ));
    }
    token
}

/// User + system CPU seconds of process `pid` (or `"self"`) so far, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0 // CLK_TCK is 100 on Linux
}

/// Operations per batch request the simulator received.
async fn ops_per_batch(sim: &Simulator) -> f64 {
    let totals = sim.client().stats().await.expect("simulator stats").totals;
    totals.ops as f64 / totals.batches.max(1) as f64
}

// ===== scenarios =====

async fn scenario_throughput(jobs: usize, pages: usize) -> (String, f64) {
    let page_ids = ids(pages);
    let sim = simulator(&page_ids, 10_000_000, 100_000_000, 5).await;
    let run_prefix = prefix("throughput");
    let daemon_config = Config::new(&run_prefix, &sim.base_url(), &page_ids, 10_000_000);
    let topology = daemon_config.topology();
    declare(&topology).await;
    fill(&topology, &workload(&page_ids, jobs, 0)).await;

    let mut daemon = Daemon::start(&daemon_config).await;
    let started = daemon.ready_at;
    wait_for_deliveries(&sim, jobs as u64, Duration::from_secs(900)).await;
    let elapsed = last_arrival(&sim).await.saturating_duration_since(started);
    let rate = jobs as f64 / elapsed.as_secs_f64();
    let cpu = daemon.cpu_seconds();
    let batch = ops_per_batch(&sim).await;
    daemon.stop();
    sim.shutdown().await;

    // The broker's ceiling: the same backlog, the same prefetch, a bare consumer acking each.
    let ceiling_prefix = prefix("ceiling");
    let ceiling_topology =
        Config::new(&ceiling_prefix, "http://127.0.0.1:1", &page_ids, 1).topology();
    declare(&ceiling_topology).await;
    fill(&ceiling_topology, &workload(&page_ids, jobs, 0)).await;
    let (ceiling, bare_cpu) = drain_bare(&ceiling_topology, jobs, 1000, 1).await;
    // And once more acking every 100th delivery with `multiple`: the share of the ack frames.
    fill(&ceiling_topology, &workload(&page_ids, jobs, 0)).await;
    let (_, multi_cpu) = drain_bare(&ceiling_topology, jobs, 1000, 100).await;
    cleanup(&run_prefix).await;
    cleanup(&ceiling_prefix).await;

    let text = format!(
        "## throughput\n\n{jobs} jobs over {pages} Pages, queued first, simulator unthrottled (latency p50 5 ms), prefetch 1000.\n\n\
         | measure | value |\n|---|---|\n\
         | pagerelay, first consume → last delivery | {rate:.0} jobs/s ({:.1} s) |\n\
         | broker ceiling (bare lapin consumer, ack each) | {ceiling:.0} jobs/s |\n\
         | ratio | **{:.2}** (target ≥ 0.50) |\n\
         | pagerelay CPU | {:.1} ms per 1,000 jobs |\n\
         | bare consumer CPU (receive + ack only) | {:.1} ms per 1,000 jobs |\n\
         | bare consumer CPU, one `multiple` ack per 100 deliveries | {:.1} ms per 1,000 jobs |\n\
         | operations per Graph batch request | {batch:.1} |\n",
        elapsed.as_secs_f64(),
        rate / ceiling,
        cpu * 1000.0 / (jobs as f64 / 1000.0),
        bare_cpu * 1000.0 / (jobs as f64 / 1000.0),
        multi_cpu * 1000.0 / (jobs as f64 / 1000.0),
    );
    (text, rate)
}

async fn scenario_cost(jobs: usize, pages: usize) -> String {
    let page_ids = ids(pages);
    let sim = simulator(&page_ids, 10_000_000, 100_000_000, 5).await;
    let prefix = prefix("cost");
    let mut config = Config::new(&prefix, &sim.base_url(), &page_ids, 10_000_000);
    config.prefetch = 10_000;
    let topology = config.topology();
    declare(&topology).await;
    fill(&topology, &workload(&page_ids, jobs, 0)).await;
    let mut daemon = Daemon::start(&config).await;
    let cpu_before = daemon.cpu_seconds();
    wait_for_deliveries(&sim, jobs as u64, Duration::from_secs(900)).await;
    let cpu = daemon.cpu_seconds() - cpu_before;
    let rss = daemon.peak_rss_mb();
    let batch = ops_per_batch(&sim).await;
    // Then idle, every Page's lane still in memory until its idle time runs out: what an idle
    // daemon costs, and how long its shutdown takes with that many lanes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lanes = daemon.metric("pagerelay_lanes").await;
    let idle_before = daemon.cpu_seconds();
    let idle_for = Duration::from_secs(5);
    tokio::time::sleep(idle_for).await;
    let idle_cpu = daemon.cpu_seconds() - idle_before;
    let stop_started = Instant::now();
    daemon.stop();
    let stop_took = stop_started.elapsed();
    sim.shutdown().await;
    cleanup(&prefix).await;
    format!(
        "## cost\n\n{jobs} jobs over {pages} distinct Pages, prefetch 10,000.\n\n\
         | measure | value | target |\n|---|---|---|\n\
         | CPU (user + sys) per 1,000 jobs delivered | **{:.1} ms** | ≤ 20 ms |\n\
         | peak RSS | **{rss:.0} MB** | ≤ 150 MB |\n\
         | operations per Graph batch request | {batch:.1} | |\n\
         | idle afterwards, {lanes:.0} lanes in memory: CPU per second | {:.1} ms | |\n\
         | then SIGTERM → exit | {} ms | |\n",
        cpu * 1000.0 / (jobs as f64 / 1000.0),
        idle_cpu * 1000.0 / idle_for.as_secs_f64(),
        stop_took.as_millis()
    )
}

async fn scenario_precision(backlog: usize, seconds: u64) -> String {
    let page_ids = ids(1);
    let sim = simulator(&page_ids, 100_000_000, 300, 5).await;
    let prefix = prefix("precision");
    let config = Config::new(&prefix, &sim.base_url(), &page_ids, 100_000_000);
    let topology = config.topology();
    declare(&topology).await;
    fill(&topology, &workload(&page_ids, backlog, 0)).await;
    let mut daemon = Daemon::start(&config).await;
    tokio::time::sleep(Duration::from_secs(seconds + 2)).await;
    let deliveries = sim.client().all_deliveries().await.expect("deliveries");
    let stats = sim.client().stats().await.expect("stats");
    daemon.stop();
    sim.shutdown().await;
    cleanup(&prefix).await;
    let mut at: Vec<u64> = deliveries.iter().map(|d| d.at_us).collect();
    at.sort_unstable();
    // Skip the first second (the burst and the start), then count a window of `seconds`.
    let start = at.first().copied().unwrap_or(0) + 1_000_000;
    let end = start + (seconds - 1) * 1_000_000;
    let in_window = at.iter().filter(|t| **t >= start && **t < end).count();
    let rate = in_window as f64 / (seconds - 1) as f64;
    format!(
        "## limiter precision\n\nOne Page, backlog {backlog}, pagerelay ceiling 250/s, simulator limit 300/s, {seconds} s.\n\n\
         | measure | value | target |\n|---|---|---|\n\
         | achieved rate | **{rate:.1}/s** ({:.1} % of 250) | 95–100 % |\n\
         | 613 replies | **{}** | 0 |\n\
         | simulator's busiest second | {} calls |  ≤ 300 |\n",
        rate / 2.5,
        stats.totals.throttled_613,
        stats.pages[&page_ids[0]].peak_calls_per_second
    )
}

async fn scenario_latency(rate: f64, seconds: u64) -> String {
    let page_ids = ids(100);
    let sim = simulator(&page_ids, 10_000_000, 100_000_000, 0).await;
    let prefix = prefix("latency");
    let config = Config::new(&prefix, &sim.base_url(), &page_ids, 10_000_000);
    let topology = config.topology();
    declare(&topology).await;
    let mut daemon = Daemon::start(&config).await;
    let total = (rate * seconds as f64) as usize;
    let jobs = workload(&page_ids, total, 0);
    // Publish at a steady pace, remembering when each job left.
    let session = Session::open(&settings(&prefix).amqp, &topology, 0, "load latency")
        .await
        .expect("session");
    let mut published_at: HashMap<String, u64> = HashMap::with_capacity(total);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for (i, job) in jobs.iter().enumerate() {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        published_at.insert(job.1.clone(), unix_ms());
        let publisher = session.publisher.clone();
        let exchange = topology.jobs_exchange();
        let (page, _, body) = (job.0.clone(), job.1.clone(), job.2.clone());
        pending.push(async move {
            publisher
                .publish(&exchange, &page, body.as_bytes(), props())
                .await
        });
        while let Some(Some(result)) = futures_util::FutureExt::now_or_never(pending.next()) {
            result.expect("publish confirmed");
        }
    }
    while let Some(result) = pending.next().await {
        result.expect("publish confirmed");
    }
    wait_for_deliveries(&sim, total as u64, Duration::from_secs(120)).await;
    let deliveries = sim.client().all_deliveries().await.expect("deliveries");
    daemon.stop();
    session.close().await;
    sim.shutdown().await;
    cleanup(&prefix).await;
    let mut latencies: Vec<u64> = deliveries
        .iter()
        .filter_map(|d| {
            let id = d.body["message"]["metadata"].as_str()?;
            Some(d.unix_ms.saturating_sub(*published_at.get(id)?))
        })
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    format!(
        "## latency\n\n{total} jobs over 100 Pages published at {rate:.0}/s (20 % of the measured throughput), linger 10 ms.\n\n\
         | publish → simulator arrival | ms |\n|---|---|\n| p50 | {} |\n| p99 | **{}** (target ≤ 50) |\n| max | {} |\n",
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or(0)
    )
}

async fn scenario_fairness(exhausted_jobs: usize, healthy_pages: usize, per_page: usize) -> String {
    let mut with = Vec::new();
    let mut bare = Vec::new();
    // Jobs parked and the messages they were parked in, in the run with the exhausted Page.
    let mut parks = (0.0, 0.0);
    // The bare consumer's healthy throughput when it acks the exhausted Page's jobs unparked.
    let mut acked_only = 0.0;
    for exhausted in [false, true] {
        let mut page_ids = ids(healthy_pages);
        let tiny = "199999999999999".to_string();
        let mut sim_config = SimConfig {
            rps_limit: 100_000_000,
            ..SimConfig::default()
        };
        for id in &page_ids {
            sim_config = sim_config.with_page(PageConfig::new(id, page_token(id), 10_000_000));
        }
        sim_config = sim_config.with_page(PageConfig::new(&tiny, page_token(&tiny), 1));
        sim_config.faults.latency_p50_ms = 5;
        sim_config.faults.latency_p99_ms = 5;
        let sim = Simulator::start(sim_config).await.expect("simulator");
        let prefix = prefix(if exhausted {
            "fair-with"
        } else {
            "fair-without"
        });
        let mut config = Config::new(&prefix, &sim.base_url(), &page_ids, 10_000_000);
        config.pages.push((tiny.clone(), 1));
        let topology = config.topology();
        declare(&topology).await;
        let healthy = workload(&page_ids, healthy_pages * per_page, 0);
        let mut all = Vec::with_capacity(healthy.len() + exhausted_jobs);
        if exhausted {
            // The exhausted Page's jobs interleaved with the healthy ones, as they would arrive.
            let tiny_jobs = workload(std::slice::from_ref(&tiny), exhausted_jobs, 1);
            let mut h = healthy.into_iter();
            let mut t = tiny_jobs.into_iter();
            loop {
                match (h.next(), t.next()) {
                    (None, None) => break,
                    (a, b) => all.extend(a.into_iter().chain(b)),
                }
            }
        } else {
            all = healthy;
        }
        fill(&topology, &all).await;
        let mut daemon = Daemon::start(&config).await;
        let healthy_total = (healthy_pages * per_page) as u64;
        let client = sim.client();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let stats = client.stats().await.expect("stats");
            let delivered: u64 = page_ids.iter().map(|p| stats.pages[p].delivered).sum();
            if delivered >= healthy_total || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deliveries = client.all_deliveries().await.expect("deliveries");
        let last = deliveries
            .iter()
            .filter(|d| d.page_id != tiny)
            .map(|d| d.unix_ms)
            .max()
            .unwrap_or(0);
        let started_ms = daemon.ready_unix_ms;
        let rate = healthy_total as f64 / ((last.saturating_sub(started_ms)) as f64 / 1000.0);
        if exhausted {
            parks = (
                daemon.metric("pagerelay_parked_total").await,
                daemon.metric("pagerelay_park_message_jobs_count").await,
            );
        }
        daemon.stop();
        sim.shutdown().await;
        // The ceiling of the same run: a bare consumer over the same queue contents, on a fresh
        // topology (the daemon's parked jobs would come back from their delay queues). It parks
        // into the dead-letter queue: a quorum queue like the delay tiers, but one that keeps
        // what it is given.
        cleanup(&prefix).await;
        declare(&topology).await;
        fill(&topology, &all).await;
        let (expected, healthy_expected) = (all.len(), healthy_total as usize);
        if exhausted {
            let park = Exhausted::Park {
                page: tiny.clone(),
                queue: topology.dead_queue(),
            };
            bare.push(drain_parking(&topology, expected, healthy_expected, park).await);
            cleanup(&prefix).await;
            declare(&topology).await;
            fill(&topology, &all).await;
            let ack = Exhausted::Ack { page: tiny.clone() };
            acked_only = drain_parking(&topology, expected, healthy_expected, ack).await;
        } else {
            bare.push(
                drain_parking(&topology, expected, healthy_expected, Exhausted::Absent).await,
            );
        }
        cleanup(&prefix).await;
        page_ids.clear();
        with.push(rate);
    }
    format!(
        "## fairness\n\n{healthy_pages} healthy Pages × {per_page} jobs, with and without one Page out of budget holding {exhausted_jobs} jobs interleaved in the queue.\n\n\
         | run | pagerelay: healthy Pages' throughput | bare consumer that parks the exhausted Page's jobs |\n|---|---|---|\n\
         | without the exhausted Page | {:.0} jobs/s | {:.0} jobs/s |\n| with it | {:.0} jobs/s | {:.0} jobs/s |\n\
         | ratio | **{:.2}** (target ≥ 0.95) | {:.2} (each parked job a message of its own) |\n\
         | pagerelay's ratio as a share of the bare consumer's | {:.2} | |\n\
         | bare consumer that acks the exhausted Page's jobs unparked (the broker's delivering them, alone) | | {:.0} jobs/s, ratio {:.2} |\n\
         | pagerelay's ratio were its own work on those jobs free (the broker's delivery time added to the run without them) | {:.2} | |\n\n\
         pagerelay parked {:.0} jobs in {:.0} messages ({:.1} per message); the bare consumer parks each job as a message of its own.\n",
        with[0],
        bare[0],
        with[1],
        bare[1],
        with[1] / with[0],
        bare[1] / bare[0],
        (with[1] / with[0]) / (bare[1] / bare[0]),
        acked_only,
        acked_only / bare[0],
        // Times per healthy job add on a saturated machine: pagerelay's own, plus what the
        // broker spends delivering the exhausted Page's jobs (the bare runs' difference).
        (1.0 / with[0]) / (1.0 / with[0] + 1.0 / acked_only - 1.0 / bare[0]),
        parks.0,
        parks.1,
        parks.0 / parks.1.max(1.0),
    )
}

/// The fairness scenario's ceiling: a bare consumer draining `expected` deliveries with the
/// daemon's prefetch that acks the healthy Pages' jobs (one `multiple` ack per 100, as
/// pagerelay coalesces them) and does what `exhausted` says with the exhausted Page's jobs.
/// Returns the healthy jobs per second, from the first delivery to the last healthy one.
async fn drain_parking(
    topology: &Topology,
    expected: usize,
    healthy: usize,
    exhausted: Exhausted,
) -> f64 {
    let conn = lapin::Connection::connect(AMQP_URL, Default::default())
        .await
        .expect("broker");
    let publisher = Publisher::open(&conn, Duration::from_secs(60))
        .await
        .expect("publisher");
    let mut consumer = bare_consumer(&conn, topology, 1000).await;
    let (mut seen, mut healthy_seen) = (0, 0);
    let mut started = None;
    let mut last_healthy = Instant::now();
    let mut confirms = Vec::new();
    let mut acked: Option<tokio::task::JoinHandle<()>> = None;
    while seen < expected {
        let delivery = consumer
            .next()
            .await
            .expect("delivery")
            .expect("delivery ok");
        started.get_or_insert_with(Instant::now);
        seen += 1;
        match &exhausted {
            Exhausted::Park { page, queue } if delivery.routing_key.as_str() == page => {
                let confirm = publisher
                    .send("", queue, &delivery.data, delivery.properties.clone())
                    .await
                    .expect("park sent");
                confirms.push(confirm);
            }
            Exhausted::Ack { page } if delivery.routing_key.as_str() == page => {}
            _ => {
                healthy_seen += 1;
                if healthy_seen == healthy {
                    last_healthy = Instant::now();
                }
            }
        }
        if seen % 100 == 0 || seen == expected {
            // Nothing is acked before the copies it leaves behind are confirmed, and a `multiple`
            // ack covers earlier deliveries too, so each ack waits for the one before it; the
            // consumer itself never waits (pagerelay does not either).
            let parked = std::mem::take(&mut confirms);
            let before = acked.take();
            acked = Some(tokio::spawn(async move {
                if let Some(before) = before {
                    before.await.expect("earlier acks");
                }
                for confirm in parked {
                    confirm.confirmed().await.expect("park confirmed");
                }
                delivery
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .expect("ack");
            }));
        }
    }
    if let Some(last) = acked {
        last.await.expect("acks");
    }
    let _ = conn.close(200, "drained".into()).await;
    healthy as f64
        / last_healthy
            .saturating_duration_since(started.expect("at least one"))
            .as_secs_f64()
}

/// What the bare consumer does with the exhausted Page's jobs.
enum Exhausted {
    /// There are none.
    Absent,
    /// Republishes each to `queue` and acks it once confirmed: the least any consumer must do
    /// with a job it may not send yet without losing it.
    Park { page: String, queue: String },
    /// Acks it unparked (losing it): what the broker's delivering it costs, alone.
    Ack { page: String },
}

// ===== pieces =====

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "Machine: {cores} cores ({cpu}), {} GiB; broker, simulator, publisher and pagerelay share it. RabbitMQ 3.10 (Debian 12). \
         Page tokens of {} characters.",
        mem / 1024 / 1024,
        token_chars()
    )
}

fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{}", 100_000_000_000_000u64 + i as u64))
        .collect()
}

fn prefix(name: &str) -> String {
    format!(
        "load-{name}-{}-{}",
        std::process::id(),
        unix_ms() % 1_000_000
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// `(page, job id, body)`: realistic ~300-byte text jobs, round-robin over `pages`.
fn workload(pages: &[String], n: usize, salt: usize) -> Vec<(String, String, String)> {
    (0..n)
        .map(|i| {
            let page = &pages[i % pages.len()];
            let id = format!("j{salt}-{i}");
            let body = format!(
                r#"{{"page_id":"{page}","job_id":"{id}","recipient":{{"id":"{}"}},"messaging_type":"UPDATE","notification_type":"REGULAR","message":{{"text":"Hi Sam, your order #{i} has shipped and is on its way. Track it any time from your account page; it should arrive within three working days.","metadata":"{id}"}}}}"#,
                7_000_000_000u64 + (i / pages.len()) as u64 % 5_000
            );
            (page.clone(), id, body)
        })
        .collect()
}

fn props() -> lapin::BasicProperties {
    lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

async fn simulator(pages: &[String], audience: u64, rps_limit: u64, latency_ms: u64) -> Simulator {
    let mut config = SimConfig {
        rps_limit,
        ..SimConfig::default()
    };
    config.faults.latency_p50_ms = latency_ms;
    config.faults.latency_p99_ms = latency_ms;
    for id in pages {
        config = config.with_page(PageConfig::new(id, page_token(id), audience));
    }
    Simulator::start(config).await.expect("simulator starts")
}

fn settings(prefix: &str) -> Settings {
    let mut settings = Settings::load(&LoadOptions::default()).expect("defaults load");
    settings.amqp.prefix = prefix.to_string();
    settings
}

async fn declare(topology: &Topology) {
    let conn = lapin::Connection::connect(AMQP_URL, Default::default())
        .await
        .expect("broker");
    topology.declare(&conn).await.expect("topology");
    let _ = conn.close(200, "declared".into()).await;
}

/// Publishes every job, confirmed, before the measurement starts.
async fn fill(topology: &Topology, jobs: &[(String, String, String)]) {
    let conn = lapin::Connection::connect(AMQP_URL, Default::default())
        .await
        .expect("broker");
    let publisher = Publisher::open(&conn, Duration::from_secs(60))
        .await
        .expect("publisher");
    let exchange = topology.jobs_exchange();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for (page, _, body) in jobs {
        pending.push(publisher.publish(&exchange, page, body.as_bytes(), props()));
        if pending.len() >= 2_000 {
            pending
                .next()
                .await
                .expect("pending")
                .expect("publish confirmed");
        }
    }
    while let Some(result) = pending.next().await {
        result.expect("publish confirmed");
    }
    let _ = conn.close(200, "filled".into()).await;
}

/// A plain lapin consumer on the first jobs queue of `topology`, with `prefetch`.
async fn bare_consumer(
    conn: &lapin::Connection,
    topology: &Topology,
    prefetch: u16,
) -> lapin::Consumer {
    let channel = conn.create_channel().await.expect("channel");
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let queue = topology.job_queues().remove(0);
    channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume")
}

/// Drains `expected` deliveries with a bare lapin consumer and `prefetch`; returns the rate and
/// the CPU seconds this process spent on it (nothing else runs in it meanwhile). With
/// `ack_every = 1` it acks each delivery (the ceiling); with more, one `multiple` ack per that
/// many deliveries, which shows what the ack frames themselves cost.
async fn drain_bare(
    topology: &Topology,
    expected: usize,
    prefetch: u16,
    ack_every: usize,
) -> (f64, f64) {
    let conn = lapin::Connection::connect(AMQP_URL, Default::default())
        .await
        .expect("broker");
    let mut consumer = bare_consumer(&conn, topology, prefetch).await;
    let mut seen = 0;
    let mut started = None;
    let cpu_before = cpu_seconds("self");
    while seen < expected {
        let delivery = consumer
            .next()
            .await
            .expect("delivery")
            .expect("delivery ok");
        started.get_or_insert_with(Instant::now);
        seen += 1;
        if ack_every == 1 {
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
        } else if seen % ack_every == 0 || seen == expected {
            delivery
                .ack(BasicAckOptions { multiple: true })
                .await
                .expect("ack");
        }
    }
    let elapsed = started.expect("at least one").elapsed();
    let cpu = cpu_seconds("self") - cpu_before;
    let _ = conn.close(200, "drained".into()).await;
    (expected as f64 / elapsed.as_secs_f64(), cpu)
}

async fn wait_for_deliveries(sim: &Simulator, n: u64, within: Duration) {
    let client = sim.client();
    let deadline = Instant::now() + within;
    loop {
        let delivered = client.stats().await.expect("stats").totals.delivered;
        if delivered >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {delivered} of {n} delivered within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// When the last delivery arrived, as an `Instant` on this process's clock.
async fn last_arrival(sim: &Simulator) -> Instant {
    let deliveries = sim.client().all_deliveries().await.expect("deliveries");
    let last = deliveries.iter().map(|d| d.unix_ms).max().unwrap_or(0);
    let ago = unix_ms().saturating_sub(last);
    Instant::now() - Duration::from_millis(ago)
}

async fn cleanup(prefix: &str) {
    let client = reqwest::Client::new();
    for kind in ["queues", "exchanges"] {
        let Ok(response) = client
            .get(format!(
                "http://127.0.0.1:15672/api/{kind}/%2F?columns=name"
            ))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
        else {
            continue;
        };
        let body = response.bytes().await.unwrap_or_default();
        let items: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
        for name in items.iter().filter_map(|i| i["name"].as_str()) {
            if name.starts_with(&format!("{prefix}.")) {
                let encoded: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
                let _ = client
                    .delete(format!("http://127.0.0.1:15672/api/{kind}/%2F/{encoded}"))
                    .basic_auth("guest", Some("guest"))
                    .send()
                    .await;
            }
        }
    }
}

/// A pagerelay configuration for one scenario.
struct Config {
    prefix: String,
    graph_url: String,
    pages: Vec<(String, u64)>,
    prefetch: u16,
}

impl Config {
    fn new(prefix: &str, graph_url: &str, pages: &[String], audience: u64) -> Config {
        Config {
            prefix: prefix.to_string(),
            graph_url: graph_url.to_string(),
            pages: pages.iter().map(|p| (p.clone(), audience)).collect(),
            prefetch: 1000,
        }
    }

    fn topology(&self) -> Topology {
        let s = settings(&self.prefix);
        Topology::new(&s.amqp, &s.retry.tiers)
    }
}

/// `pagerelay run` (the release binary) as a child process.
struct Daemon {
    child: Child,
    /// The admin listener's base URL.
    admin: String,
    ready_at: Instant,
    ready_unix_ms: u64,
    _dir: tempfile::TempDir,
}

impl Daemon {
    async fn start(config: &Config) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let mut pages = String::new();
        let mut tokens = String::new();
        for (id, audience) in &config.pages {
            let _ = writeln!(pages, "[[pages]]\nid = \"{id}\"\naudience = {audience}\n");
            let _ = writeln!(tokens, "\"{id}\" = \"{}\"", page_token(id));
        }
        std::fs::write(dir.path().join("pages.toml"), pages).expect("pages");
        std::fs::write(dir.path().join("tokens.toml"), tokens).expect("tokens");
        std::fs::write(
            dir.path().join("pagerelay.toml"),
            format!(
                "pages_file = \"pages.toml\"\ntokens_file = \"tokens.toml\"\n\n[amqp]\nprefix = \"{}\"\nprefetch = {}\n\n\
                 [graph]\nbase_url = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:{port}\"\n\n[logging]\nlevel = \"warn\"\n",
                config.prefix, config.prefetch, config.graph_url
            ),
        )
        .expect("settings");
        let child = Command::new(env!("CARGO_BIN_EXE_pagerelay"))
            .arg("--config")
            .arg(dir.path().join("pagerelay.toml"))
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pagerelay starts");
        let admin = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{admin}/readyz")).await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "pagerelay did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Daemon {
            child,
            admin,
            ready_at: Instant::now(),
            ready_unix_ms: unix_ms(),
            _dir: dir,
        }
    }

    /// The sum of metric `name` over all its label sets, from the admin listener's scrape.
    async fn metric(&self, name: &str) -> f64 {
        let Ok(response) = reqwest::get(format!("{}/metrics", self.admin)).await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.child.id().to_string())
    }

    /// Peak resident set size (VmHWM), in MB.
    fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
