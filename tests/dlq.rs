//! Dead-letter operations end to end: `pagerelay dlq stats`, `dlq peek` and `replay` as an
//! operator runs them, against real RabbitMQ, with the daemon and `graph-sim` over HTTP where a
//! delivery must be observed. Deliveries are asserted on the simulator's record, the queues by
//! reading them.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicNackOptions;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pagerelay::amqp::headers as h;
use pagerelay::amqp::headers::DeadLetterReason;
use pagerelay::config::{LoadOptions, Settings};
use pagerelay::sim::{Simulator, reserved};
use serde_json::{Value, json};

use support::cli::{self, Cli};
use support::daemon::{Daemon, DaemonConfig};
use support::sim::arrivals as delivered;
use support::{broker, jobs, wait_for};

fn page_ids(n: usize) -> Vec<String> {
    support::sim::page_ids(100_000_000_000_000, n)
}

async fn sim_with(pages: &[String]) -> Simulator {
    support::sim::start(pages, 100_000, 3).await
}

async fn wait_depth(conn: &lapin::Connection, queue: &str, want: u32) {
    wait_for(
        &format!("{want} messages in {queue}"),
        Duration::from_secs(60),
        || async move { (jobs::depth(conn, queue).await == want).then_some(()) },
    )
    .await;
}

/// Asserts that two long id lists are equal, naming the first difference instead of printing both.
fn assert_same_ids(got: &[String], want: &[String], what: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(g, w)| g != w)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} ids, expected {}; first difference at {at}: got {:?}, expected {:?}",
            got.len(),
            want.len(),
            &got[at..(at + 5).min(got.len())],
            &want[at..(at + 5).min(want.len())]
        );
    }
}

fn job_ids_of(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["job_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A fresh one-shard topology for `test`, declared on a connection of its own: for the tests that
/// work on the dead-letter queue with no daemon.
async fn declared_topology(test: &str) -> (String, lapin::Connection, pagerelay::amqp::Topology) {
    let prefix = broker::unique_prefix(test);
    let conn = broker::connect().await;
    let topology = jobs::topology(&prefix, 1);
    topology.declare(&conn).await.unwrap();
    (prefix, conn, topology)
}

/// A job the broker itself dead-letters: published to the jobs queue of a topology with a
/// delivery limit of 1 and handed back twice, before any daemon consumes.
async fn broker_dead_letter(conn: &lapin::Connection, prefix: &str, job: &Value) {
    let mut settings = Settings::load(&LoadOptions::default()).unwrap();
    settings.amqp.prefix = prefix.to_string();
    settings.amqp.delivery_limit = 1;
    let topology = pagerelay::amqp::Topology::new(&settings.amqp, &settings.retry.tiers);
    topology.declare(conn).await.unwrap();
    jobs::publish(conn, &topology, std::slice::from_ref(job)).await;
    // Hand it back until the broker gives up on it (basic.get is not allowed on a queue with a
    // single active consumer, so consume).
    let channel = conn.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            topology.job_queues()[0].as_str().into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("the job is delivered")
            .unwrap()
            .unwrap();
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    wait_depth(conn, &topology.dead_queue(), 1).await;
    // The daemon must become the queue's active consumer.
    channel.close(200, "done".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_peek_report_every_dead_letter_and_leave_the_queue_as_it_was() {
    let prefix = broker::unique_prefix("dlq-stats");
    let pages = page_ids(3);
    let (p1, p2, p3) = (&pages[0], &pages[1], &pages[2]);
    let conn = broker::connect().await;
    broker_dead_letter(&conn, &prefix, &jobs::text_job(p3, "41", "limit-1")).await;

    let sim = sim_with(&pages).await;
    let mut config = DaemonConfig::new(&prefix, &sim.base_url()).pages(&pages, 100_000);
    // The jobs queue was declared with a delivery limit of 1 above; the daemon must agree.
    config
        .env
        .push(("PAGERELAY__AMQP__DELIVERY_LIMIT".into(), "1".into()));
    let daemon = Daemon::start(config).await;
    let topology = daemon.topology();
    let too_long = |page: &str, id: &str| {
        let mut job = jobs::text_job(page, "42", id);
        job["message"]["text"] = Value::from("x".repeat(2001));
        job
    };
    let all = vec![
        jobs::text_job(p1, reserved::USER_BLOCKED_551, "perm-1"),
        too_long(p1, "invalid-1"),
        jobs::text_job(p1, reserved::USER_BLOCKED_551, "perm-2"),
        jobs::text_job(p2, reserved::NO_MATCHING_USER_2018001, "perm-3"),
        jobs::text_job("999999999999999", "43", "unknown-1"),
        jobs::text_job(p1, reserved::USER_BLOCKED_551, "perm-4"),
        too_long(p3, "invalid-2"),
        jobs::text_job(p2, reserved::NO_MATCHING_USER_2018001, "perm-5"),
        too_long(p1, "invalid-3"),
        jobs::text_job("999999999999999", "44", "unknown-2"),
        jobs::text_job(p2, "45", "good-1"),
    ];
    // One at a time, so that the dead-letter queue's order is known.
    for job in &all {
        let before = jobs::depth(&conn, &topology.dead_queue()).await;
        jobs::publish(&conn, &topology, std::slice::from_ref(job)).await;
        if job["job_id"] != "good-1" {
            wait_depth(&conn, &topology.dead_queue(), before + 1).await;
        }
    }
    let client = sim.client();
    wait_for("good-1 delivered", Duration::from_secs(30), || async {
        let stats = client.stats().await.ok()?;
        (stats.totals.delivered >= 1).then_some(())
    })
    .await;
    let dead = topology.dead_queue();
    assert_eq!(jobs::depth(&conn, &dead).await, 11);
    let cli = Cli::for_daemon(&daemon);

    let stats = cli.run(&["dlq", "stats", "--json"]).await.expect_code(0);
    let stats: Value = serde_json::from_str(stats.stdout.trim()).unwrap();
    assert_eq!(stats["queue"], dead.as_str());
    assert_eq!(stats["depth"], 11);
    assert_eq!(stats["scanned"], 11);
    assert_eq!(
        stats["by_reason"],
        json!({"permanent": 5, "invalid": 3, "unknown_page": 2, "broker:delivery_limit": 1})
    );
    assert_eq!(
        stats["by_error_code"],
        json!({"none": 6, "551": 3, "100/2018001": 2})
    );
    assert_eq!(
        stats["by_page"],
        json!([
            {"page_id": p1, "count": 5},
            {"page_id": p2, "count": 2},
            {"page_id": p3, "count": 2},
            {"page_id": "999999999999999", "count": 2},
        ])
    );
    assert_eq!(stats["other_pages"], json!({"pages": 0, "count": 0}));
    assert_eq!(stats["undated"], 0);
    let oldest = h::parse_time(stats["oldest_dead_lettered_at"].as_str().unwrap()).unwrap();
    let newest = h::parse_time(stats["newest_dead_lettered_at"].as_str().unwrap()).unwrap();
    assert!(oldest <= newest && newest <= chrono::Utc::now());

    let top = cli
        .run(&["dlq", "stats", "--json", "--top", "1"])
        .await
        .expect_code(0);
    let top: Value = serde_json::from_str(top.stdout.trim()).unwrap();
    assert_eq!(top["by_page"], json!([{"page_id": p1, "count": 5}]));
    assert_eq!(top["other_pages"], json!({"pages": 3, "count": 6}));

    let human = cli.run(&["dlq", "stats"]).await.expect_code(0);
    assert!(
        human
            .stdout
            .starts_with(&format!("{dead}: 11 dead letters\n")),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("broker:delivery_limit"));

    let peek = cli.run(&["dlq", "peek", "-n", "100"]).await.expect_code(0);
    let lines = peek.json_lines();
    let order = job_ids_of(&lines);
    let expected_order: Vec<String> = std::iter::once("limit-1".to_string())
        .chain(
            all.iter()
                .filter(|j| j["job_id"] != "good-1")
                .map(|j| j["job_id"].as_str().unwrap().to_string()),
        )
        .collect();
    assert_eq!(order, expected_order, "peek shows the queue in order");
    let perm = &lines[1];
    assert_eq!(perm["reason"], "permanent");
    assert_eq!(perm["error_code"], 551);
    assert_eq!(perm["error_subcode"], Value::Null);
    assert!(perm["error_message"].is_string());
    assert!(perm["fbtrace_id"].is_string());
    assert_eq!(perm["attempts"], 1);
    assert!(perm["first_attempt_at"].is_string());
    assert!(perm["dead_lettered_at"].is_string());
    assert_eq!(perm["page_id"], p1.as_str());
    assert_eq!(perm["routing_key"], p1.as_str());
    assert_eq!(perm["message_id"], "perm-1");
    assert_eq!(perm["job"]["recipient"]["id"], reserved::USER_BLOCKED_551);
    let invalid = &lines[2];
    assert_eq!(invalid["reason"], "invalid");
    assert_eq!(
        invalid["error_message"],
        "message.text: 2001 characters, limit is 1999"
    );
    assert_eq!(invalid["attempts"], 0);
    let limit = &lines[0];
    assert_eq!(limit["reason"], "broker:delivery_limit");
    assert_eq!(limit["page_id"], p3.as_str());
    assert!(limit["dead_lettered_at"].is_string());
    assert_eq!(limit["job"]["job_id"], "limit-1");

    let filtered = cli
        .run(&[
            "dlq",
            "peek",
            "--reason",
            "permanent",
            "--page",
            p1,
            "--page",
            p3,
        ])
        .await
        .expect_code(0);
    assert_eq!(
        job_ids_of(&filtered.json_lines()),
        ["perm-1", "perm-2", "perm-4"]
    );
    let first = cli
        .run(&["dlq", "peek", "-n", "1", "--code", "100/2018001"])
        .await
        .expect_code(0);
    assert_eq!(job_ids_of(&first.json_lines()), ["perm-3"]);
    assert!(
        first.stderr.contains("showed 1 of 2 matching"),
        "{}",
        first.stderr
    );
    let young = cli
        .run(&["dlq", "peek", "--older-than", "1h"])
        .await
        .expect_code(0);
    assert!(young.stdout.is_empty(), "nothing is an hour old yet");
    let bad = cli.run(&["dlq", "peek", "--reason", "revoked"]).await;
    assert_eq!(bad.code(), Some(2), "{bad:?}");
    assert!(bad.stderr.contains("token_invalid"), "{}", bad.stderr);

    // Everything is still there, in the same order; each of the 7 scans counted as a redelivery.
    assert_eq!(jobs::depth(&conn, &dead).await, 11);
    let letters = jobs::drain(&conn, &dead).await;
    assert_eq!(jobs::job_ids(&letters), expected_order);
    for letter in &letters {
        assert_eq!(
            letter.int("x-delivery-count"),
            Some(7),
            "{:?}",
            letter.json()
        );
    }
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_refuses_a_paused_page_then_moves_exactly_its_token_invalid_letters() {
    let prefix = broker::unique_prefix("dlq-token");
    let pages = page_ids(2);
    let (a, b) = (&pages[0], &pages[1]);
    let sim = sim_with(&pages).await;
    let mut daemon = Daemon::start(
        DaemonConfig::new(&prefix, &sim.base_url())
            .pages(&pages, 100_000)
            .section("retry", "max_parked = \"3s\""),
    )
    .await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let dead = topology.dead_queue();
    let client = sim.client();

    // Letters that must stay: permanent failures of both Pages.
    let permanent: Vec<Value> = [a, a, b, b]
        .iter()
        .enumerate()
        .map(|(i, p)| jobs::text_job(p, reserved::USER_BLOCKED_551, &format!("perm-{i}")))
        .collect();
    jobs::publish(&conn, &topology, &permanent).await;
    wait_depth(&conn, &dead, 4).await;

    // Page A's token is revoked: its jobs are parked, then dead-lettered as token_invalid.
    client.revoke(a).await.unwrap();
    let a_jobs: Vec<Value> = (0..20)
        .map(|i| jobs::text_job(a, &format!("{}", 6_000_000 + i), &format!("a-{i:02}")))
        .collect();
    let b_jobs: Vec<Value> = (0..10)
        .map(|i| jobs::text_job(b, &format!("{}", 6_100_000 + i), &format!("b-{i:02}")))
        .collect();
    jobs::publish(&conn, &topology, &a_jobs).await;
    jobs::publish(&conn, &topology, &b_jobs).await;
    wait_depth(&conn, &dead, 24).await;
    let paused = daemon.page(a).await.unwrap()["paused"].clone();
    assert_eq!(paused, "token_invalid");

    let cli = Cli::for_daemon(&daemon);
    let args = ["replay", "--page", a, "--reason", "token_invalid", "--json"];
    let refused = cli.run(&args).await.expect_code(3);
    let summary = refused.summary();
    assert_eq!(summary["matched"], 20);
    assert_eq!(summary["moved"], 0);
    assert_eq!(summary["refused"], json!({"page_paused": 20}));
    assert!(
        summary["refused_pages"][a.as_str()]
            .as_str()
            .unwrap()
            .contains("paused (token_invalid)"),
        "{summary}"
    );
    assert!(
        refused.stderr.contains("refused Page"),
        "{}",
        refused.stderr
    );
    assert_eq!(jobs::depth(&conn, &dead).await, 24);
    // --force would replay them anyway, and says what it overrides.
    let forced = cli
        .run(&[
            "replay",
            "--page",
            a,
            "--reason",
            "token_invalid",
            "--force",
            "--dry-run",
            "--json",
        ])
        .await
        .expect_code(0);
    let summary = forced.summary();
    assert_eq!(summary["moved"], 20);
    assert!(
        summary["forced_pages"][a.as_str()]
            .as_str()
            .unwrap()
            .contains("paused (token_invalid)"),
        "{summary}"
    );
    assert!(
        forced.stderr.contains("anyway (--force)"),
        "{}",
        forced.stderr
    );

    // The fix: a new token for the Page, on both sides, and a SIGHUP.
    daemon.rotate_token(&client, a, "token-a-rotated").await;
    wait_for(
        "Page A no longer paused",
        Duration::from_secs(30),
        || async {
            let page = daemon.page(a).await?;
            page["paused"].is_null().then_some(())
        },
    )
    .await;

    let moved = cli.run(&args).await.expect_code(0);
    let summary = moved.summary();
    assert_eq!(summary["scanned"], 24);
    assert_eq!(summary["matched"], 20);
    assert_eq!(summary["moved"], 20);
    assert_eq!(summary["kept"], 4);
    assert_eq!(summary["refused"], json!({}));
    assert_eq!(summary["error"], Value::Null);

    wait_for("30 deliveries", Duration::from_secs(60), || async {
        let stats = client.stats().await.ok()?;
        (stats.totals.delivered >= 30).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = delivered(&sim).await;
    let expected: HashSet<String> = a_jobs
        .iter()
        .chain(&b_jobs)
        .map(|j| j["job_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");

    let left = jobs::drain(&conn, &dead).await;
    // Sorted: two Pages' lanes dead-letter concurrently, so the queue's order is not publish order.
    let mut ids = jobs::job_ids(&left);
    ids.sort();
    assert_eq!(ids, ["perm-0", "perm-1", "perm-2", "perm-3"]);
    assert!(left.iter().all(|l| l.reason() == "permanent"));
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_move_nothing_limits_move_exactly_and_replays_start_over() {
    let (prefix, conn, topology) = declared_topology("dlq-limit").await;
    let page = "104857600000001";
    let dead = topology.dead_queue();
    let jobs_queue = topology.job_queues().remove(0);

    // 30 permanent letters, with invalid and ambiguous ones and a broker dead letter among them.
    let mut letters = Vec::new();
    let mut order = Vec::new();
    for i in 0..30 {
        let id = format!("d-{i:02}");
        let job = jobs::text_job(page, &format!("{}", 7_000_000 + i), &id);
        letters.push(jobs::dead_letter(
            &job,
            jobs::dead_headers("permanent", page, Some(551)),
        ));
        order.push(id);
        let extra = match i {
            3 | 12 | 25 => Some(("invalid", format!("inv-{i}"))),
            7 | 20 => Some(("ambiguous", format!("amb-{i}"))),
            15 => Some(("broker", "brk-15".to_string())),
            _ => None,
        };
        if let Some((kind, id)) = extra {
            let job = jobs::text_job(page, "1", &id);
            let headers = if kind == "broker" {
                jobs::broker_dead_headers(&jobs_queue, "delivery_limit")
            } else {
                jobs::dead_headers(kind, page, None)
            };
            letters.push(jobs::dead_letter(&job, headers));
            order.push(id);
        }
    }
    jobs::publish_dead(&conn, &topology, &letters).await;
    assert_eq!(jobs::depth(&conn, &dead).await, 36);
    let cli = Cli::standalone(&prefix);

    let usage = cli.run(&["replay"]).await.expect_code(2);
    assert!(usage.stderr.contains("--all"), "{}", usage.stderr);
    let both = cli.run(&["replay", "--all", "--page", page]).await;
    assert_eq!(both.code(), Some(2), "{both:?}");

    // No daemon to ask: a real replay refuses to start; a dry run warns and shows the refusals.
    let refused = cli.run(&["replay", "--all"]).await.expect_code(3);
    assert!(
        refused
            .stderr
            .contains("cannot reach the daemon's admin endpoint"),
        "{}",
        refused.stderr
    );
    let unchecked = cli
        .run(&["replay", "--all", "--dry-run", "--json"])
        .await
        .expect_code(3);
    assert_eq!(
        unchecked.summary()["refused"],
        json!({"admin_unreachable": 31, "invalid": 3, "ambiguous": 2})
    );

    let dry = cli
        .run(&["replay", "--all", "--dry-run", "--force", "--json"])
        .await
        .expect_code(3);
    let decisions: Vec<Value> = dry
        .json_lines()
        .into_iter()
        .filter(|l| l.get("action").is_some())
        .collect();
    assert_eq!(job_ids_of(&decisions), order);
    let count = |action: &str| decisions.iter().filter(|l| l["action"] == action).count();
    assert_eq!(count("would_move"), 31);
    assert_eq!(count("refused"), 5);
    let would = decisions
        .iter()
        .find(|l| l["action"] == "would_move")
        .unwrap();
    assert_eq!(would["target_exchange"], topology.jobs_exchange().as_str());
    assert_eq!(would["target_routing_key"], page);
    let summary = dry.summary();
    assert_eq!(summary["dry_run"], true);
    assert_eq!(summary["moved"], 31);
    assert_eq!(summary["kept"], 36);
    assert_eq!(
        jobs::depth(&conn, &dead).await,
        36,
        "a dry run moves nothing"
    );
    assert_eq!(jobs::depth(&conn, &jobs_queue).await, 0);

    let limited = cli
        .run(&["replay", "--all", "--force", "--limit", "10", "--json"])
        .await
        .expect_code(3);
    let summary = limited.summary();
    assert_eq!(summary["moved"], 10);
    assert_eq!(summary["over_limit"], 21);
    assert_eq!(summary["kept"], 26);
    assert_eq!(summary["refused"], json!({"invalid": 3, "ambiguous": 2}));
    assert_eq!(jobs::depth(&conn, &dead).await, 26);
    assert_eq!(jobs::depth(&conn, &jobs_queue).await, 10);

    // Broker dead letters replay like the others, and invalid ones with their flag.
    cli.run(&[
        "replay",
        "--reason",
        "broker:delivery_limit",
        "--reason",
        "invalid",
        "--include-invalid",
        "--force",
    ])
    .await
    .expect_code(0);
    assert_eq!(jobs::depth(&conn, &dead).await, 22);

    // The jobs queue has a single active consumer, which rules out basic.get.
    let replayed = jobs::collect(&conn, &jobs_queue, Duration::from_secs(2)).await;
    let first_ten: Vec<String> = order
        .iter()
        .filter(|id| id.starts_with("d-"))
        .take(10)
        .cloned()
        .chain(["inv-3", "inv-12", "brk-15", "inv-25"].map(String::from))
        .collect();
    assert_eq!(jobs::job_ids(&replayed), first_ten, "moved in queue order");
    for letter in &replayed {
        let id = letter.json()["job_id"].as_str().unwrap().to_string();
        assert_eq!(letter.routing_key, page, "{id}: routed by its Page");
        for cleared in [
            h::ATTEMPTS,
            h::FIRST_ATTEMPT_AT,
            h::PARKED,
            h::PARK_REASON,
            h::REASON,
            h::ERROR_CODE,
            h::ERROR_MESSAGE,
            h::FBTRACE_ID,
            h::DEAD_LETTERED_AT,
            h::PAGE_ID,
            "x-death",
            "x-first-death-reason",
        ] {
            assert!(!letter.headers.contains_key(cleared), "{id}: {cleared}");
        }
        assert_eq!(letter.int(h::REPLAY_COUNT), Some(1), "{id}");
        assert!(letter.header(h::REPLAYED_AT).is_some(), "{id}");
        let previous = match id.as_str() {
            "brk-15" => "broker:delivery_limit",
            i if i.starts_with("inv-") => "invalid",
            _ => "permanent",
        };
        assert_eq!(
            letter.header(h::PREVIOUS_REASON).as_deref(),
            Some(previous),
            "{id}"
        );
        assert_eq!(letter.properties.delivery_mode(), &Some(2));
        assert_eq!(
            letter.properties.message_id().as_ref().map(|m| m.as_str()),
            Some(id.as_str())
        );
        assert_eq!(
            h::JobState::from_headers(Some(&letter.headers)),
            h::JobState::default(),
            "{id}: never attempted, never parked"
        );
    }

    // What stayed is in its original order.
    let kept = jobs::drain(&conn, &dead).await;
    let expected: Vec<String> = order
        .iter()
        .filter(|id| !first_ten.contains(id))
        .cloned()
        .collect();
    assert_eq!(jobs::job_ids(&kept), expected);
    assert!(
        kept.iter()
            .all(|l| l.reason() != DeadLetterReason::Invalid.as_str())
    );
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_or_killed_replay_loses_nothing_and_a_second_run_finishes() {
    let prefix = broker::unique_prefix("dlq-kill");
    let pages = page_ids(2);
    let (p, q) = (&pages[0], &pages[1]);
    let sim = sim_with(&pages).await;
    let daemon =
        Daemon::start(DaemonConfig::new(&prefix, &sim.base_url()).pages(&pages, 100_000)).await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let dead = topology.dead_queue();

    let total: usize = 300;
    let mut letters: Vec<_> = (0..total)
        .map(|i| {
            let job = jobs::text_job(p, &format!("{}", 8_000_000 + i), &format!("k-{i:03}"));
            jobs::dead_letter(&job, jobs::dead_headers("token_invalid", p, Some(190)))
        })
        .collect();
    // Another Page's letters, which no replay here selects.
    letters.extend((0..5).map(|i| {
        let job = jobs::text_job(q, "1", &format!("q-{i}"));
        jobs::dead_letter(&job, jobs::dead_headers("permanent", q, Some(551)))
    }));
    jobs::publish_dead(&conn, &topology, &letters).await;
    assert_eq!(jobs::depth(&conn, &dead).await, total as u32 + 5);
    let cli = Cli::for_daemon(&daemon);
    let client = sim.client();
    let replay = ["replay", "--page", p.as_str(), "--rate", "40", "--json"];

    // SIGINT: the replay settles what is in flight and stops.
    let child = cli.spawn(&replay);
    let pid = Pid::from_raw(child.id().unwrap() as i32);
    wait_for(
        "some replayed deliveries",
        Duration::from_secs(30),
        || async { (client.stats().await.ok()?.totals.delivered >= 20).then_some(()) },
    )
    .await;
    // The replay has the queue to itself meanwhile.
    let busy = cli.run(&["dlq", "stats"]).await.expect_code(1);
    assert!(
        busy.stderr
            .contains("another `pagerelay dlq` or `pagerelay replay`"),
        "{}",
        busy.stderr
    );
    kill(pid, Signal::SIGINT).unwrap();
    let interrupted = cli::finish(child).await.expect_code(130);
    let summary = interrupted.summary();
    assert_eq!(summary["interrupted"], true);
    let moved = summary["moved"].as_u64().unwrap();
    assert!((20..total as u64).contains(&moved), "{summary}");
    assert!(interrupted.stderr.contains("run the same replay again"));
    // Graceful: every moved letter left the queue, every other one is still there.
    assert_eq!(
        jobs::depth(&conn, &dead).await,
        total as u32 + 5 - moved as u32
    );

    // SIGKILL: the broker hands back whatever was not acked.
    let mut child = cli.spawn(&replay);
    let before = client.stats().await.unwrap().totals.delivered;
    wait_for(
        "more replayed deliveries",
        Duration::from_secs(30),
        || async { (client.stats().await.ok()?.totals.delivered >= before + 20).then_some(()) },
    )
    .await;
    child.kill().await.unwrap();
    // What the killed replay republished reaches the simulator; what it had not acked is handed
    // back to the dead-letter queue when the broker sees the connection drop (until then the
    // killed scan's exclusive consumer still holds the queue, and peek is refused).
    let in_dlq = wait_for(
        "every letter delivered or back in the dead-letter queue",
        Duration::from_secs(60),
        || async {
            let peek = cli.run(&["dlq", "peek", "-n", "1000"]).await;
            if peek.code() != Some(0) {
                return None;
            }
            let in_dlq = job_ids_of(&peek.json_lines());
            let delivered_now = delivered(&sim).await;
            (0..total)
                .all(|i| {
                    let id = format!("k-{i:03}");
                    delivered_now.contains_key(&id) || in_dlq.contains(&id)
                })
                .then_some(in_dlq)
        },
    )
    .await;
    let unique: HashSet<&String> = in_dlq.iter().collect();
    assert_eq!(
        unique.len(),
        in_dlq.len(),
        "no letter is in the queue twice"
    );
    assert_eq!(in_dlq.iter().filter(|id| id.starts_with("q-")).count(), 5);

    // A second run finishes the job.
    let finished = cli
        .run(&["replay", "--page", p.as_str(), "--json"])
        .await
        .expect_code(0);
    assert_eq!(finished.summary()["kept"], 5);
    wait_for("every job delivered", Duration::from_secs(60), || async {
        let counts = delivered(&sim).await;
        (counts.len() >= total).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = delivered(&sim).await;
    assert_eq!(counts.len(), total);
    // A letter killed between its confirm and its ack is replayed twice; the daemon's duplicate
    // guard sends it once.
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    // Sorted: a killed scan may have been handed only part of the queue, and RabbitMQ puts what
    // it hands back behind what it never handed out.
    let mut left = jobs::job_ids(&jobs::drain(&conn, &dead).await);
    left.sort();
    assert_eq!(left, ["q-0", "q-1", "q-2", "q-3", "q-4"]);
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_read_past_the_brokers_credit_in_rounds_and_keep_the_order() {
    use pagerelay::dlq::{DeadLetters, Filter, Overrides, PageCheck, ReplayOptions};
    use tokio_util::sync::CancellationToken;

    let (prefix, conn, topology) = declared_topology("dlq-rounds").await;
    let dead = topology.dead_queue();
    let (a, b) = ("104857600000001", "104857600000002");
    // More than the 2,000 deliveries a 3.10 quorum queue hands a consumer with no prefetch limit.
    let total = 2500;
    let letters: Vec<_> = (0..total)
        .map(|i| {
            let page = if i % 2 == 0 { a } else { b };
            let job = jobs::text_job(page, "1", &format!("r-{i:04}"));
            jobs::dead_letter(&job, jobs::dead_headers("token_invalid", page, Some(190)))
        })
        .collect();
    jobs::publish_dead(&conn, &topology, &letters).await;
    let ids = |page: &str| -> Vec<String> {
        (0..total)
            .filter(|i| (i % 2 == 0) == (page == a))
            .map(|i| format!("r-{i:04}"))
            .collect()
    };

    let stats = Cli::standalone(&prefix)
        .run(&["dlq", "stats", "--json"])
        .await
        .expect_code(0);
    let stats: Value = serde_json::from_str(stats.stdout.trim()).unwrap();
    assert_eq!(stats["scanned"], total);
    assert_eq!(stats["by_reason"]["token_invalid"], total);

    // Rounds of 300: each hands its part back to the end of the queue and reads on.
    let queue = DeadLetters::new(&conn, &topology).with_chunk(300);
    let mut shown = Vec::new();
    let filter = Filter {
        pages: vec![a.to_string()],
        ..Filter::default()
    };
    let summary = queue
        .peek(&filter, usize::MAX, chrono::Utc::now(), |letter| {
            shown.push(letter.job_id().unwrap().to_string());
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(summary.scanned, total as u64);
    assert_same_ids(&shown, &ids(a), "peek in rounds");

    let options = ReplayOptions {
        filter,
        overrides: Overrides {
            force: true,
            ..Overrides::default()
        },
        ..ReplayOptions::default()
    };
    let unchecked = PageCheck::Unreachable {
        url: "http://127.0.0.1:1/pages".into(),
        error: "not asked".into(),
    };
    let summary = queue
        .replay(
            Duration::from_secs(30),
            &options,
            &unchecked,
            &CancellationToken::new(),
            |_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(summary.error, None);
    assert_eq!(summary.scanned, total as u64);
    assert_eq!(summary.moved, total as u64 / 2);
    assert_eq!(summary.kept, total as u64 / 2);

    let moved = jobs::collect(&conn, &topology.job_queues()[0], Duration::from_secs(3)).await;
    assert_same_ids(
        &jobs::job_ids(&moved),
        &ids(a),
        "republished in queue order",
    );
    let kept = jobs::drain(&conn, &dead).await;
    assert_same_ids(&jobs::job_ids(&kept), &ids(b), "kept in queue order");
    // One hand-back per pass: stats, peek, replay.
    assert!(kept.iter().all(|l| l.int("x-delivery-count") == Some(3)));
    broker::delete_topology(&prefix).await;
}

/// A park bundle the broker dead-lettered whole (after its delivery limit): the jobs `ids` of
/// `page`, each with the attempt count it was parked with.
fn dead_bundle(
    page: &str,
    ids: &[&str],
    jobs_queue: &str,
) -> (String, Vec<u8>, lapin::BasicProperties) {
    use pagerelay::amqp::bundle;
    let pieces: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut table = lapin::types::FieldTable::default();
            h::set_int(&mut table, h::ATTEMPTS, i as i64 + 1);
            let (_, body, properties) =
                jobs::dead_letter(&jobs::text_job(page, "7000001", id), table);
            (properties, body)
        })
        .collect();
    let body = bundle::encode(pieces.iter().map(|(p, b)| (p, b.as_slice())));
    let mut table = jobs::broker_dead_headers(jobs_queue, "delivery_limit");
    h::set_str(&mut table, h::PAGE_ID, page);
    (page.to_string(), body, bundle::properties(table, ids.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_shows_the_jobs_inside_a_dead_lettered_bundle_and_finds_them_by_id() {
    let (prefix, conn, topology) = declared_topology("dlq-bundle").await;
    let page = "104857600000001";
    let jobs_queue = topology.job_queues().remove(0);
    let (_, mut cut, cut_properties) = dead_bundle(page, &["c-1", "c-2"], &jobs_queue);
    cut.truncate(cut.len() - 3);
    let letters = vec![
        jobs::dead_letter(
            &jobs::text_job(page, "1", "plain-1"),
            jobs::dead_headers("permanent", page, Some(551)),
        ),
        dead_bundle(page, &["b-1", "b-2", "b-3"], &jobs_queue),
        (page.to_string(), cut, cut_properties),
    ];
    jobs::publish_dead(&conn, &topology, &letters).await;
    let cli = Cli::standalone(&prefix);

    let lines = cli.run(&["dlq", "peek"]).await.expect_code(0).json_lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].get("bundle").is_none(), "{}", lines[0]);
    let bundle = &lines[1];
    assert_eq!(bundle["reason"], "broker:delivery_limit");
    assert_eq!(bundle["page_id"], page);
    assert_eq!(bundle["job"], Value::Null);
    assert_eq!(bundle["bundle"]["jobs"], 3);
    let members = bundle["bundle"]["members"].as_array().unwrap();
    assert_eq!(
        job_ids_of(members),
        ["b-1", "b-2", "b-3"],
        "the jobs inside, in bundle order"
    );
    assert_eq!(members[2]["attempts"], 3);
    assert_eq!(members[2]["message_id"], "b-3");
    assert_eq!(members[2]["job"]["recipient"]["id"], "7000001");
    assert_eq!(
        lines[2]["bundle"],
        json!({"jobs": 2, "unreadable": "piece 1 is cut short"})
    );

    // --job-id finds a job inside a readable bundle; the bundle is the letter shown (and moved).
    let found = cli
        .run(&["dlq", "peek", "--job-id", "b-2"])
        .await
        .expect_code(0)
        .json_lines();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["bundle"]["jobs"], 3);
    let dry = cli
        // No daemon to ask about the Page: --force, which a dry run only reports.
        .run(&["replay", "--job-id", "b-2", "--dry-run", "--force"])
        .await
        .expect_code(0)
        .json_lines();
    assert_eq!(dry.len(), 1, "{dry:?}");
    assert_eq!(dry[0]["action"], "would_move");
    assert_eq!(dry[0]["bundle"]["jobs"], 3);
    let none = cli
        .run(&["dlq", "peek", "--job-id", "c-2"])
        .await
        .expect_code(0);
    assert!(
        none.stdout.is_empty(),
        "nothing inside an unreadable bundle is found: {}",
        none.stdout
    );

    // Stats count the jobs inside: one plain letter, three and two (as declared) in bundles.
    let stats = cli.run(&["dlq", "stats", "--json"]).await.expect_code(0);
    let stats: Value = serde_json::from_str(stats.stdout.trim()).unwrap();
    assert_eq!(
        (&stats["scanned"], &stats["jobs"], &stats["bundles"]),
        (&json!(3), &json!(6), &json!(2))
    );
    assert_eq!(
        stats["by_reason"],
        json!({"broker:delivery_limit": 5, "permanent": 1})
    );
    assert_eq!(stats["by_page"], json!([{"page_id": page, "count": 6}]));

    assert_eq!(
        jobs::depth(&conn, &topology.dead_queue()).await,
        3,
        "peeks and stats move nothing"
    );
    broker::delete_topology(&prefix).await;
}
