//! Staying up: pagerelay survives a broker restart, a graceful stop and restart, a Graph
//! outage, a revoked-then-rotated token and a bad reload, and follows a Page's audience — losing
//! nothing and sending nothing twice. Assertions are made on the simulator's record.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use pagerelay::sim::{OutageMode, PageUpdate, Simulator};

use support::daemon::{Daemon, DaemonConfig};
use support::sim::{arrivals, wait_delivered};
use support::{broker, jobs, wait_for};

fn page_ids(n: usize) -> Vec<String> {
    support::sim::page_ids(200_000_000_000_000, n)
}

async fn sim_with(pages: &[String], audience: u64, latency_ms: u64) -> Simulator {
    // These tests are about surviving failures, not about rates: a generous per-second limit
    // keeps a CPU-starved moment on a busy 2-core machine from adding a cooldown to the story.
    let mut config = support::sim::config(pages, audience, 3);
    config.rps_limit = 100_000;
    config.faults.latency_p50_ms = latency_ms;
    config.faults.latency_p99_ms = latency_ms;
    Simulator::start(config).await.unwrap()
}

/// Like [`wait_delivered`], printing the daemon's diagnostics before failing.
async fn wait_delivered_or_explain(sim: &Simulator, n: u64, within: Duration, daemon: &Daemon) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if sim.client().stats().await.unwrap().totals.delivered >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered = sim.client().stats().await.unwrap().totals.delivered;
    panic!(
        "only {delivered} of {n} delivered within {within:?}\n{}",
        daemon.diagnostics().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_loses_nothing() {
    let node = broker::OwnNode::start("restart");
    // Two Pages at 250/s each: 20,000 jobs take about 40 s, so the restart lands mid-run.
    let pages = page_ids(2);
    let sim = sim_with(&pages, 1_000_000, 5).await;
    let mut config = DaemonConfig::new("restart", &sim.base_url()).pages(&pages, 1_000_000);
    config.amqp_url = node.url();
    let daemon = Daemon::start(config).await;
    let topology = daemon.topology();
    let publisher_conn = lapin::Connection::connect(&node.url(), Default::default())
        .await
        .unwrap();
    let all = jobs::text_jobs(&pages, 20_000, "job");
    jobs::publish(&publisher_conn, &topology, &all).await;
    let _ = publisher_conn.close(200, "published".into()).await;

    wait_delivered(&sim, 4_000, Duration::from_secs(60)).await;
    node.stop();
    // Not ready while the broker is away.
    wait_for("/readyz to turn false", Duration::from_secs(30), || async {
        let (status, body) = daemon.readyz().await?;
        (status == 503 && body["checks"]["connected"] == false).then_some(())
    })
    .await;
    let during = sim.client().stats().await.unwrap().totals.delivered;
    assert!(during < 20_000, "the broker went away mid-run");
    node.restart();
    daemon.wait_ready(Duration::from_secs(60)).await;
    wait_delivered_or_explain(&sim, 20_000, Duration::from_secs(120), &daemon).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let counts = arrivals(&sim).await;
    let missing = (0..20_000)
        .filter(|i| !counts.contains_key(&format!("job-{i}")))
        .count();
    let twice = counts.values().filter(|n| **n > 1).count();
    eprintln!("delivered {during} before the restart; missing {missing}; sent twice {twice}");
    assert_eq!(missing, 0, "nothing lost");
    // The duplicate guard acks the redeliveries of delivered jobs, so the only duplicates left
    // are the README's parked-copy window: a copy confirmed into a delay tier whose original's
    // ack died with the connection. Each needs a parked or retried copy to explain it.
    let copies = daemon.metric("pagerelay_parked_total", &[]).await
        + daemon
            .metric("pagerelay_operations_total", &["outcome=\"retried\""])
            .await;
    assert!(
        twice as f64 <= copies,
        "{twice} jobs sent twice, only {copies} parked or retried copies to explain them"
    );
    assert!(daemon.metric("pagerelay_amqp_reconnects_total", &[]).await >= 1.0);
    let conn = lapin::Connection::connect(&node.url(), Default::default())
        .await
        .unwrap();
    for queue in topology.all_queues() {
        assert_eq!(jobs::depth(&conn, &queue).await, 0, "{queue} is not empty");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_work_back_and_a_new_process_finishes_it() {
    let prefix = broker::unique_prefix("sigterm");
    let pages = page_ids(20);
    let sim = sim_with(&pages, 1_000_000, 20).await;
    let config = DaemonConfig::new(&prefix, &sim.base_url()).pages(&pages, 1_000_000);
    let mut first = Daemon::start(config.clone()).await;
    let conn = broker::connect().await;
    let topology = first.topology();
    jobs::publish(&conn, &topology, &jobs::text_jobs(&pages, 5_000, "job")).await;

    wait_delivered(&sim, 1_000, Duration::from_secs(60)).await;
    let status = first.stop().await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        first.logs()
    );
    let at_stop = sim.client().stats().await.unwrap().totals.delivered;
    assert!(first.logs().contains("draining"), "the shutdown drained");
    assert!(at_stop < 5_000, "stopped mid-run");

    let second = Daemon::start(config).await;
    wait_delivered(&sim, 5_000, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = arrivals(&sim).await;
    let missing = (0..5_000)
        .filter(|i| !counts.contains_key(&format!("job-{i}")))
        .count();
    let twice = counts.values().filter(|n| **n > 1).count();
    eprintln!("{at_stop} delivered by the first process; missing {missing}; sent twice {twice}");
    assert_eq!(missing, 0);
    // Every Graph reply arrived before the stop finished, so nothing was sent twice.
    assert_eq!(twice, 0);
    for queue in topology.all_queues() {
        assert_eq!(jobs::depth(&conn, &queue).await, 0, "{queue} is not empty");
    }
    drop(second);
    broker::delete_topology(&prefix).await;
}

/// Lanes with nothing queued sleep until a message or their idle time: the stop must wake them,
/// or the drain waits out its whole grace period for lanes that have nothing to hand back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_idle_lanes_without_waiting_out_the_grace() {
    let prefix = broker::unique_prefix("idle-stop");
    let pages = page_ids(20);
    let sim = sim_with(&pages, 1_000_000, 5).await;
    let config = DaemonConfig::new(&prefix, &sim.base_url())
        .pages(&pages, 1_000_000)
        .section(
            "pipeline",
            "shutdown_grace = \"5m\"\nidle_lane_ttl = \"1h\"",
        );
    let mut daemon = Daemon::start(config).await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    jobs::publish(&conn, &topology, &jobs::text_jobs(&pages, 200, "job")).await;
    wait_delivered(&sim, 200, Duration::from_secs(60)).await;
    // Settled and acked, every Page's lane stays in memory, idle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while daemon
        .metric("pagerelay_operations_total", &["outcome=\"delivered\""])
        .await
        < 200.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            daemon.diagnostics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(daemon.metric("pagerelay_lanes", &[]).await, 20.0);

    daemon.signal(Signal::SIGTERM);
    // Far less than the grace: only lanes that never heard of the stop could hold it that long.
    let status = daemon.wait_exit(Duration::from_secs(60)).await;
    let logs = daemon.logs();
    assert!(status.success(), "exit status {status:?}; log:\n{logs}");
    assert!(logs.contains("draining"), "the shutdown drained");
    assert!(
        !logs.contains("did not finish within"),
        "the drain waited out its grace:\n{logs}"
    );
    for queue in topology.all_queues() {
        assert_eq!(jobs::depth(&conn, &queue).await, 0, "{queue} is not empty");
    }
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_outage_parks_and_delivery_resumes_after_it() {
    let prefix = broker::unique_prefix("outage");
    let pages = page_ids(10);
    let sim = sim_with(&pages, 1_000_000, 5).await;
    let daemon =
        Daemon::start(DaemonConfig::new(&prefix, &sim.base_url()).pages(&pages, 1_000_000)).await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let client = sim.client();

    jobs::publish(&conn, &topology, &jobs::text_jobs(&pages, 500, "before")).await;
    wait_delivered(&sim, 500, Duration::from_secs(60)).await;
    client
        .start_outage(Some(Duration::from_secs(30)), OutageMode::Http503)
        .await
        .unwrap();
    jobs::publish(&conn, &topology, &jobs::text_jobs(&pages, 2_000, "during")).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        daemon.metric("pagerelay_page_circuit_open", &[]).await >= 1.0,
        "circuits opened"
    );

    wait_delivered(&sim, 2_500, Duration::from_secs(90)).await;
    let counts = arrivals(&sim).await;
    assert_eq!(counts.len(), 2_500);
    assert!(counts.values().all(|n| *n == 1));
    assert_eq!(
        daemon.metric("pagerelay_dead_letters_total", &[]).await,
        0.0,
        "nothing dead-lettered for the outage"
    );
    assert!(
        daemon
            .metric("pagerelay_parked_total", &["reason=\"circuit_open\""])
            .await
            > 0.0
    );
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_resumes_a_paused_page_and_a_bad_reload_changes_nothing() {
    let prefix = broker::unique_prefix("rotate");
    let pages = page_ids(3);
    let sim = sim_with(&pages, 1_000_000, 0).await;
    let client = sim.client();
    let revoked = pages[0].clone();
    client.revoke(&revoked).await.unwrap();
    let mut daemon =
        Daemon::start(DaemonConfig::new(&prefix, &sim.base_url()).pages(&pages, 1_000_000)).await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    jobs::publish(&conn, &topology, &jobs::text_jobs(&pages, 300, "job")).await;

    // The other Pages deliver; the revoked one pauses and parks its jobs.
    wait_delivered(&sim, 200, Duration::from_secs(60)).await;
    let paused = wait_for("the Page to pause", Duration::from_secs(30), || async {
        let view = daemon.page(&revoked).await?;
        (view["paused"] == "token_invalid").then_some(view)
    })
    .await;
    assert_eq!(paused["blocked"], "paused");
    assert_eq!(
        daemon.logs().matches("paused: token_invalid").count(),
        1,
        "logged once, not per job"
    );

    // A reload with a broken tokens file is refused and changes nothing.
    std::fs::write(
        daemon.dir.path().join("tokens.toml"),
        "this is = = not toml",
    )
    .unwrap();
    daemon.signal(Signal::SIGHUP);
    wait_for("the failed reload", Duration::from_secs(10), || async {
        (daemon
            .metric("pagerelay_config_reloads_total", &["result=\"failed\""])
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert!(daemon.logs().contains("reload rejected"));

    // Rotate: the platform gets a new token, and so does pagerelay.
    daemon
        .rotate_token(&client, &revoked, "token-rotated")
        .await;
    wait_delivered(&sim, 300, Duration::from_secs(60)).await;
    let counts = arrivals(&sim).await;
    assert_eq!(counts.len(), 300);
    assert!(counts.values().all(|n| *n == 1));
    assert_eq!(
        daemon
            .metric("pagerelay_config_reloads_total", &["result=\"ok\""])
            .await,
        1.0
    );
    assert_eq!(
        daemon.metric("pagerelay_dead_letters_total", &[]).await,
        0.0
    );
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

/// Quiet Pages share batch requests, and a request is refused as a whole when the Page whose
/// token it carries at the top level is revoked. That is the revoked Page's trouble only: the
/// others' jobs are retried and delivered, and their circuits stay closed even when a single
/// failed batch would open them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_costs_the_pages_sharing_its_request_nothing() {
    let prefix = broker::unique_prefix("bystanders");
    let pages = page_ids(30);
    let sim = sim_with(&pages, 1_000_000, 0).await;
    let client = sim.client();
    let revoked = pages[0].clone();
    client.revoke(&revoked).await.unwrap();
    let daemon = Daemon::start(
        DaemonConfig::new(&prefix, &sim.base_url())
            .pages(&pages, 1_000_000)
            // The revoked Page's batch waits long enough for the others' to join it, at the
            // top level; one failed batch would open a Page's circuit (for 4 s); the paused
            // Page probes every second (the fixture's `paused_delay`).
            .section("graph", "combine_linger = \"300ms\"")
            .section("retry", "circuit_failures = 1\ncooldown_min = \"4s\""),
    )
    .await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let revoked_jobs = jobs::text_jobs(std::slice::from_ref(&revoked), 3, "revoked");
    jobs::publish(&conn, &topology, &revoked_jobs).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Then the others, a wave a second for a few seconds, while the revoked Page probes.
    let others = &pages[1..];
    for wave in 0..4 {
        let tag = format!("wave{wave}");
        jobs::publish(
            &conn,
            &topology,
            &jobs::text_jobs(others, others.len(), &tag),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let expected = 4 * others.len() as u64;
    wait_delivered_or_explain(&sim, expected, Duration::from_secs(30), &daemon).await;

    let logs = daemon.logs();
    assert!(
        logs.contains("refused for another Page's credentials"),
        "the revoked Page's request carried other Pages' jobs"
    );
    let view = daemon.page(&revoked).await.unwrap();
    assert_eq!(view["paused"], "token_invalid");
    for page in others {
        let view = daemon.page(page).await.unwrap();
        assert_eq!(view["circuit_open"], false, "{page}: {view}");
    }
    assert_eq!(
        daemon
            .metric("pagerelay_parked_total", &["reason=\"circuit_open\""])
            .await,
        0.0,
        "no Page was parked behind a circuit"
    );
    let counts = arrivals(&sim).await;
    assert_eq!(counts.len() as u64, expected);
    assert!(counts.values().all(|n| *n == 1), "each delivered once");
    assert!(
        counts.keys().all(|job| !job.starts_with("revoked")),
        "the revoked Page sent nothing"
    );
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_audience_follows_the_insights() {
    let prefix = broker::unique_prefix("audience");
    let pages = page_ids(1);
    let sim = sim_with(&pages, 1_000, 0).await;
    let daemon = Daemon::start(
        DaemonConfig::new(&prefix, &sim.base_url())
            .page(&pages[0], "auto")
            .section("limits", "audience_refresh = \"1s\""),
    )
    .await;
    let view = || async {
        let pages = daemon.pages().await;
        pages.as_array().unwrap()[0].clone()
    };
    let first = wait_for(
        "the audience from insights",
        Duration::from_secs(10),
        || async {
            let v = view().await;
            (v["audience"] == 1_000).then_some(v)
        },
    )
    .await;
    assert_eq!(first["audience_source"], "insights");
    assert_eq!(first["budget"], 190_000);

    sim.client()
        .update_page(
            &pages[0],
            &PageUpdate {
                audience: Some(2_000),
                ..PageUpdate::default()
            },
        )
        .await
        .unwrap();
    let second = wait_for("the new audience", Duration::from_secs(10), || async {
        let v = view().await;
        (v["audience"] == 2_000).then_some(v)
    })
    .await;
    assert_eq!(second["budget"], 380_000);

    // A failed read keeps the last known audience.
    sim.client().revoke(&pages[0]).await.unwrap();
    wait_for("a failed refresh", Duration::from_secs(10), || async {
        (daemon
            .metric("pagerelay_audience_refreshes_total", &["result=\"failed\""])
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(view().await["audience"], 2_000);
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_still_loses_nothing() {
    let prefix = broker::unique_prefix("two-signals");
    let pages = page_ids(5);
    // Slow replies, so that batches are in flight when the signals come.
    let sim = sim_with(&pages, 1_000_000, 2_000).await;
    let config = DaemonConfig::new(&prefix, &sim.base_url()).pages(&pages, 1_000_000);
    let mut first = Daemon::start(config.clone()).await;
    let conn = broker::connect().await;
    let topology = first.topology();
    jobs::publish(&conn, &topology, &jobs::text_jobs(&pages, 2_000, "job")).await;
    wait_delivered(&sim, 200, Duration::from_secs(60)).await;

    first.signal(Signal::SIGTERM);
    // Signals sent back to back coalesce; the second comes while the first drains.
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal(Signal::SIGTERM);
    let status = first.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(130), "the second signal exits at once");

    let second = Daemon::start(config).await;
    // Count distinct jobs: the batches in flight at the exit may arrive twice.
    let counts = wait_for(
        "every job at least once",
        Duration::from_secs(120),
        || async {
            let counts = arrivals(&sim).await;
            (counts.len() >= 2_000).then_some(counts)
        },
    )
    .await;
    let missing = (0..2_000)
        .filter(|i| !counts.contains_key(&format!("job-{i}")))
        .count();
    let twice = counts.values().filter(|n| **n > 1).count();
    eprintln!("missing {missing}; sent twice {twice} (batches in flight at the exit)");
    assert_eq!(missing, 0, "nothing lost");
    // Only batches in flight at the exit can have been sent twice.
    assert!(twice <= 4 * 5 * 50, "{twice} sent twice");
    for queue in topology.all_queues() {
        assert_eq!(jobs::depth(&conn, &queue).await, 0, "{queue} is not empty");
    }
    drop(second);
    broker::delete_topology(&prefix).await;
}
