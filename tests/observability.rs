//! Observability end to end: what `/metrics`, `/healthz`, `/readyz`, `/pages` and the logs of a
//! real `pagerelay run` say after a known run, with real RabbitMQ and `graph-sim` over HTTP; and
//! that the deploy files (Grafana dashboard, Prometheus rules) only use metrics that exist.
//!
//! These tests need `promtool` (Debian's `prometheus` package; `scripts/test.sh` installs it) and
//! fail, rather than skip, without it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use pagerelay::amqp::headers::DeadLetterReason;
use pagerelay::pipeline::outcome::ParkReason;
use pagerelay::sim::{OutageMode, PageConfig, SimConfig, Simulator, reserved};
use pagerelay::telemetry::{self, Kind};
use serde_json::{Value, json};

use support::daemon::{Daemon, DaemonConfig};
use support::scrape::Scrape;
use support::sim::page_ids;
use support::{broker, jobs, wait_for};

async fn sim_with(pages: &[String], audience: u64) -> Simulator {
    support::sim::start(pages, audience, 17).await
}

async fn scrape(daemon: &Daemon) -> (String, Scrape) {
    let text = daemon.metrics().await;
    let scrape = Scrape::parse(&text);
    (text, scrape)
}

/// Waits until `check` holds on a scrape, then returns the scrape.
async fn scrape_until(
    daemon: &Daemon,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Scrape) -> bool,
) -> Scrape {
    wait_for(what, timeout, || async {
        let (_, scrape) = scrape(daemon).await;
        check(&scrape).then_some(scrape)
    })
    .await
}

/// The daemon's log lines, each parsed as the JSON object the production format writes.
fn log_lines(daemon: &Daemon) -> Vec<Value> {
    daemon
        .logs()
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
        })
        .collect()
}

/// `promtool`, or a failure that says how to get it: these checks must not be skipped silently.
fn promtool() -> Command {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "promtool is not installed: `apt-get install prometheus` (scripts/test.sh does it)"
    );
    Command::new("promtool")
}

/// Runs promtool with `args`, `stdin` piped in, and fails with its output unless it succeeds.
fn run_promtool(args: &[&str], stdin: &str) -> String {
    let mut child = promtool()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The deploy files that name metrics: the dashboard, the rules and the rule tests.
fn deploy_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (dir, ext) in [
        ("deploy/grafana", "json"),
        ("deploy/prometheus", "yml"),
        ("deploy/prometheus/tests", "yml"),
    ] {
        for entry in std::fs::read_dir(repo_file(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == ext) {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 3, "deploy files: {files:?}");
    files
}

/// Every `pagerelay_*` word in `text`: metric names, as PromQL and series selectors write them.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("pagerelay_") {
        let boundary = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        if boundary {
            names.insert(word.clone());
        }
        rest = &rest[at + word.len()..];
    }
    names
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    }
}

/// The known run: N delivered, M dead-lettered by reason, K retried, nothing else. Asserts the
/// exact value of every counter after it, then that the scrape describes every metric, that
/// `promtool check metrics` accepts it, that every metric the deploy files use is in it, and
/// that the logs stay quiet at info level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_run_is_counted_exactly_and_the_scrape_serves_the_deploy_files() {
    let prefix = broker::unique_prefix("obs-known");
    let pages = page_ids(310_000_000_000_000, 2);
    let (p1, p2) = (pages[0].as_str(), pages[1].as_str());
    let sim = sim_with(&pages, 100_000).await;
    // Three attempts: an always-transient recipient is retried exactly twice, then dead-lettered.
    let daemon = Daemon::start(
        DaemonConfig::new(&prefix, &sim.base_url())
            .pages(&pages, 100_000)
            .section("retry", "max_attempts = 3"),
    )
    .await;
    let conn = broker::connect().await;
    let topology = daemon.topology();

    let mut all: Vec<Value> = Vec::new();
    all.extend(
        (0..12).map(|i| jobs::text_job(p1, &format!("{}", 6_100_000 + i), &format!("good-1-{i}"))),
    );
    all.extend(
        (0..8).map(|i| jobs::text_job(p2, &format!("{}", 6_200_000 + i), &format!("good-2-{i}"))),
    );
    all.push(jobs::text_job(p1, reserved::USER_BLOCKED_551, "perm-551"));
    all.push(jobs::text_job(
        p2,
        reserved::NO_MATCHING_USER_2018001,
        "perm-2018001",
    ));
    all.push(jobs::text_job(
        p1,
        reserved::ALWAYS_TRANSIENT_2,
        "transient-1",
    ));
    all.push(jobs::text_job(
        p2,
        reserved::ALWAYS_TRANSIENT_2,
        "transient-2",
    ));
    let mut too_long = jobs::text_job(p1, "6300001", "invalid-1");
    too_long["message"]["text"] = Value::from("x".repeat(2001));
    let mut expired = jobs::text_job(p2, "6300002", "expired-1");
    expired["expires_at"] = Value::from("2020-01-01T00:00:00Z");
    all.push(too_long);
    all.push(expired);
    all.push(jobs::text_job(
        "999999999999999",
        "6300003",
        "unknown-page-1",
    ));
    let job_ids: Vec<String> = all
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_string())
        .collect();
    jobs::publish(&conn, &topology, &all).await;

    let ops = telemetry::OPERATIONS;
    scrape_until(
        &daemon,
        "20 delivered and 7 dead letters",
        Duration::from_secs(60),
        |s| {
            s.value(ops, &[("outcome", "delivered")]) >= 20.0
                && s.value(ops, &[("outcome", "dead_lettered")]) >= 7.0
        },
    )
    .await;
    // Let anything late show up (it must not), and the 2 s upkeep write the per-Page gauges.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (text, s) = scrape(&daemon).await;

    // Every delivery taken: 20 good, 2 permanent, 3 dead on intake, and 3 attempts for each of
    // the 2 always-transient jobs (the retries come back through the jobs queue).
    assert_eq!(s.value(telemetry::JOBS_CONSUMED, &[]), 31.0);
    let by_outcome_and_page: BTreeMap<(String, String), f64> = s
        .series(ops)
        .map(|x| {
            (
                (x.labels["outcome"].clone(), x.labels["page"].clone()),
                x.value,
            )
        })
        .collect();
    let expected: BTreeMap<(String, String), f64> = [
        (("delivered", p1), 12.0),
        (("delivered", p2), 8.0),
        (("retried", p1), 2.0),
        (("retried", p2), 2.0),
        // 551 and attempts exhausted on p1; 2018001, attempts exhausted and expired on p2;
        // the invalid job (no Page read) and the unknown Page count as "other".
        (("dead_lettered", p1), 2.0),
        (("dead_lettered", p2), 3.0),
        (("dead_lettered", "other"), 2.0),
    ]
    .into_iter()
    .map(|((o, p), v)| ((o.to_string(), p.to_string()), v))
    .collect();
    assert_eq!(by_outcome_and_page, expected, "{ops}");

    let dead: BTreeMap<&str, f64> = [
        ("permanent", 2.0),
        ("max_attempts", 2.0),
        ("invalid", 1.0),
        ("unknown_page", 1.0),
        ("expired", 1.0),
    ]
    .into();
    for reason in DeadLetterReason::ALL {
        assert_eq!(
            s.value(telemetry::DEAD_LETTERS, &[("reason", reason.as_str())]),
            dead.get(reason.as_str()).copied().unwrap_or(0.0),
            "dead letters {reason}"
        );
    }
    for reason in ParkReason::LABELS {
        assert_eq!(
            s.value(telemetry::PARKED, &[("reason", reason)]),
            0.0,
            "parked {reason}"
        );
    }
    assert_eq!(s.value(telemetry::DUPLICATES, &[]), 0.0);

    let errors: BTreeMap<(String, String, String), f64> = s
        .series(telemetry::GRAPH_ERRORS)
        .map(|x| {
            let l = &x.labels;
            (
                (
                    l["code"].clone(),
                    l["subcode"].clone(),
                    l["decision"].clone(),
                ),
                x.value,
            )
        })
        .collect();
    let expected_errors: BTreeMap<(String, String, String), f64> = [
        (("551", "", "dead_letter"), 1.0),
        (("100", "2018001", "dead_letter"), 1.0),
        // Three attempts each for the two always-transient jobs.
        (("2", "", "retry"), 6.0),
    ]
    .into_iter()
    .map(|((c, sc, d), v)| ((c.to_string(), sc.to_string(), d.to_string()), v))
    .collect();
    assert_eq!(errors, expected_errors, "{}", telemetry::GRAPH_ERRORS);

    // Operations sent: 20 good, 2 permanent, 6 transient attempts. However they were batched,
    // every request is counted once by each request metric.
    let batch = telemetry::BATCH_SIZE;
    assert_eq!(s.value(&format!("{batch}_sum"), &[]), 28.0);
    let requests = s.value(&format!("{batch}_count"), &[]);
    assert!((4.0..=28.0).contains(&requests), "{requests} requests");
    assert_eq!(
        s.value(telemetry::GRAPH_REQUESTS, &[("result", "ok")]),
        requests
    );
    assert_eq!(s.value(telemetry::GRAPH_REQUESTS, &[]), requests);
    assert_eq!(
        s.value(&format!("{}_count", telemetry::GRAPH_DURATION), &[]),
        requests
    );
    // Every Page batch records its limiter wait; Page batches may share a request.
    let page_batches = s.value(&format!("{}_count", telemetry::LIMITER_WAIT), &[]);
    assert!(
        (requests..=28.0).contains(&page_batches),
        "{page_batches} Page batches in {requests} requests"
    );
    assert_eq!(
        s.value(&format!("{}_count", telemetry::END_TO_END), &[]),
        20.0
    );

    for (name, value) in [
        (telemetry::SETTLE_FAILURES, 0.0),
        (telemetry::AMQP_RECONNECTS, 0.0),
        (telemetry::CONFIG_RELOADS, 0.0),
        (telemetry::AUDIENCE_REFRESHES, 0.0),
        (telemetry::READY, 1.0),
        (telemetry::AMQP_CONNECTED, 1.0),
        (telemetry::AMQP_CONSUMERS, 1.0),
        (telemetry::PAGES, 2.0),
        (telemetry::LANES, 2.0),
        (telemetry::IN_FLIGHT_BATCHES, 0.0),
        (telemetry::IN_FLIGHT_OPERATIONS, 0.0),
        (telemetry::PAGE_LANE_DEPTH, 0.0),
        (telemetry::PAGE_PAUSED, 0.0),
        (telemetry::PAGE_CIRCUIT_OPEN, 0.0),
        (telemetry::PAGE_COOLDOWN, 0.0),
    ] {
        assert_eq!(s.value(name, &[]), value, "{name}");
    }
    // 200 × 100,000 × 0.95 a day; the bucket (10 % of it) refills ~200 calls a second, so the
    // 16 calls p1 made are back already.
    assert_eq!(
        s.value(telemetry::PAGE_BUDGET, &[("page", p1)]),
        19_000_000.0
    );
    assert_eq!(
        s.value(telemetry::PAGE_BUDGET_REMAINING, &[("page", p1)]),
        1_900_000.0
    );

    // Every metric is described, typed and present; nothing undescribed is.
    for m in telemetry::METRICS {
        assert_eq!(
            s.help.get(m.name).map(String::as_str),
            Some(m.help),
            "{} help",
            m.name
        );
        assert_eq!(
            s.types.get(m.name).map(String::as_str),
            Some(kind_name(m.kind)),
            "{}",
            m.name
        );
        assert!(s.has_family(m.name), "{} has no sample", m.name);
    }
    let described: BTreeSet<&str> = telemetry::METRICS.iter().map(|m| m.name).collect();
    for name in s.types.keys().filter(|n| n.starts_with("pagerelay_")) {
        assert!(
            described.contains(name.as_str()),
            "{name} is not in telemetry::METRICS"
        );
    }

    // Prometheus's own linter accepts the scrape.
    run_promtool(&["check", "metrics"], &text);

    // Every metric name the dashboard, the rules and the rule tests use is a series in the
    // scrape: histograms by their `_bucket`, `_sum` and `_count` series (a histogram's bare
    // family name selects nothing in PromQL, so it is refused here too).
    let samples: BTreeSet<&str> = s.samples.iter().map(|x| x.name.as_str()).collect();
    for file in deploy_files() {
        let names = metric_names(&std::fs::read_to_string(&file).unwrap());
        assert!(!names.is_empty(), "{} names no metric", file.display());
        for name in names {
            assert!(
                samples.contains(name.as_str()),
                "{} uses {name}, which a real scrape does not have",
                file.display()
            );
        }
    }

    // Info-level logs follow events, not messages: no job or recipient is ever named, and there
    // are fewer lines than jobs.
    let lines = log_lines(&daemon);
    let logs = daemon.logs();
    for id in &job_ids {
        assert!(!logs.contains(id.as_str()), "the logs name job {id}");
    }
    assert!(!logs.contains("6100000"), "the logs name a recipient");
    assert!(
        lines.len() < all.len(),
        "{} log lines for {} jobs:\n{logs}",
        lines.len(),
        all.len()
    );
    assert!(
        lines
            .iter()
            .all(|l| l["level"] != "DEBUG" && l["level"] != "TRACE"),
        "level info"
    );

    drop(daemon);
    broker::delete_topology(&prefix).await;
}

/// The cardinality guard, as the issue states it: 2,000 Pages send, and no per-Page metric has
/// more than `page_label_limit` + 1 (`other`) values of `page` on a real scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_pages_make_at_most_limit_plus_one_series_per_page_metric() {
    const PAGES: usize = 2_000;
    const LIMIT: usize = 500; // metrics.page_label_limit's default
    let prefix = broker::unique_prefix("obs-cardinality");
    let pages = page_ids(320_000_000_000_000, PAGES);
    let sim = sim_with(&pages, 100_000).await;
    let daemon = Daemon::start(
        DaemonConfig::new(&prefix, &sim.base_url())
            .pages(&pages, 100_000)
            .pages_in_file(),
    )
    .await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let all: Vec<Value> = pages
        .iter()
        .enumerate()
        .map(|(i, page)| jobs::text_job(page, &format!("{}", 6_400_000 + i), &format!("job-{i}")))
        .collect();
    jobs::publish(&conn, &topology, &all).await;

    let ops = telemetry::OPERATIONS;
    scrape_until(&daemon, "2,000 deliveries", Duration::from_secs(180), |s| {
        s.value(ops, &[("outcome", "delivered")]) >= PAGES as f64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, s) = scrape(&daemon).await;

    // The first 500 Pages seen got a label; the other 1,500 deliveries count as "other".
    let labelled: BTreeSet<String> = s
        .label_values(ops, "page")
        .into_iter()
        .filter(|p| p != "other")
        .collect();
    assert_eq!(labelled.len(), LIMIT);
    assert!(labelled.iter().all(|p| pages.contains(p)));
    assert_eq!(s.value(ops, &[("outcome", "delivered")]), PAGES as f64);
    assert_eq!(s.value(ops, &[("page", "other")]), (PAGES - LIMIT) as f64);

    // The bound, for every family that carries `page`.
    let mut per_family: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sample in s
        .samples
        .iter()
        .filter(|x| x.name.starts_with("pagerelay_"))
    {
        if let Some(page) = sample.labels.get("page") {
            per_family
                .entry(sample.name.clone())
                .or_default()
                .insert(page.clone());
        }
    }
    for (family, values) in &per_family {
        assert!(
            values.len() <= LIMIT + 1,
            "{family} has {} page values",
            values.len()
        );
    }
    // Exactly: the per-Page gauges cover the same 500 Pages (lane depth adds "other"), one
    // series per Page, or one per Page and pause reason.
    let with_other: BTreeSet<String> = labelled
        .iter()
        .cloned()
        .chain(["other".to_string()])
        .collect();
    for (name, values, series) in [
        (telemetry::OPERATIONS, &with_other, LIMIT + 1),
        (telemetry::PAGE_BUDGET, &labelled, LIMIT),
        (telemetry::PAGE_BUDGET_REMAINING, &labelled, LIMIT),
        (telemetry::PAGE_COOLDOWN, &labelled, LIMIT),
        (telemetry::PAGE_CIRCUIT_OPEN, &labelled, LIMIT),
        (telemetry::PAGE_PAUSED, &labelled, 3 * LIMIT),
        (telemetry::PAGE_LANE_DEPTH, &with_other, LIMIT + 1),
    ] {
        assert_eq!(per_family.get(name), Some(values), "{name}: page values");
        assert_eq!(s.series(name).count(), series, "{name}: series");
    }
    assert_eq!(
        per_family
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        [
            telemetry::OPERATIONS,
            telemetry::PAGE_BUDGET,
            telemetry::PAGE_BUDGET_REMAINING,
            telemetry::PAGE_COOLDOWN,
            telemetry::PAGE_CIRCUIT_OPEN,
            telemetry::PAGE_PAUSED,
            telemetry::PAGE_LANE_DEPTH,
        ]
        .into(),
        "the per-Page families"
    );
    assert_eq!(s.value(telemetry::PAGES, &[]), PAGES as f64);

    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_a_running_daemon() {
    let prefix = broker::unique_prefix("obs-admin");
    let pages = page_ids(330_000_000_000_000, 2);
    let sim = sim_with(&pages, 1_000).await;
    let daemon = Daemon::start(
        DaemonConfig::new(&prefix, &sim.base_url())
            .page(&pages[0], 1_000)
            .page(&pages[1], 50_000),
    )
    .await;

    let healthz = reqwest::get(format!("{}/healthz", daemon.admin))
        .await
        .unwrap();
    assert_eq!(healthz.status().as_u16(), 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&healthz.bytes().await.unwrap()).unwrap(),
        json!({"status": "alive"})
    );

    let (status, body) = daemon.readyz().await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "ready": true,
            "checks": {"connected": true, "topology_declared": true, "consuming": true},
        })
    );

    let mut listed: Vec<Value> = daemon.pages().await.as_array().unwrap().clone();
    listed.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    // Budget: 200 × audience × 0.95 a day; what may go at once: 10 % of it, untouched yet.
    let expected = |id: &str, audience: u64, budget: u64| {
        json!({
            "id": id,
            "audience": audience,
            "audience_source": "configured",
            "budget": budget,
            "budget_remaining": budget / 10,
            "rps": 250,
            "media_rps": 10,
            "cooldown_remaining_seconds": 0.0,
            "lane_depth": 0,
            "paused": null,
            "circuit_open": false,
            "blocked": null,
        })
    };
    assert_eq!(
        listed,
        [
            expected(&pages[0], 1_000, 190_000),
            expected(&pages[1], 50_000, 9_500_000)
        ]
    );
    assert_eq!(daemon.metric(telemetry::READY, &[]).await, 1.0);

    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_failing_check_while_the_broker_is_unreachable() {
    let prefix = broker::unique_prefix("obs-unready");
    let mut config = DaemonConfig::new(&prefix, "http://127.0.0.1:1")
        .page("340000000000000", 1_000)
        .section("amqp", "reconnect_max_delay = \"500ms\"");
    // Nothing listens on port 1: every connection attempt is refused.
    config.env.push((
        "PAGERELAY__AMQP__URL".to_string(),
        "amqp://guest:guest@127.0.0.1:1/%2f".to_string(),
    ));
    let mut daemon = Daemon::spawn(config);

    // The admin listener answers before the broker does (which is never).
    let healthz = wait_for("/healthz", Duration::from_secs(30), || async {
        let r = reqwest::get(format!("{}/healthz", daemon.admin))
            .await
            .ok()?;
        Some(r.status().as_u16())
    })
    .await;
    assert_eq!(healthz, 200);
    let (status, body) = daemon.readyz().await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({
            "ready": false,
            "checks": {"connected": false, "topology_declared": false, "consuming": false},
            "failing": "connected",
        })
    );
    // The gauges say the same from the first scrape, so "not ready" can alert.
    let (_, s) = scrape(&daemon).await;
    assert_eq!(
        s.series(telemetry::READY)
            .map(|x| x.value)
            .collect::<Vec<_>>(),
        [0.0]
    );
    assert_eq!(s.value(telemetry::AMQP_CONNECTED, &[]), 0.0);
    wait_for(
        "a warning about the broker",
        Duration::from_secs(10),
        || async { daemon.logs().contains("broker unavailable").then_some(()) },
    )
    .await;

    assert!(daemon.stop().await.success(), "{}", daemon.logs());
}

/// Tokens, app secrets and proofs never leak, on the paths most likely to leak them: revoked and
/// unknown tokens (190), an insights read (its token travels in the URL), reserved recipients'
/// errors, a Graph outage; with every crate logging at trace, as someone troubleshooting might
/// (the HTTP and AMQP clients included: the batch form and the insights URL carry the token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_metrics_or_dead_letters() {
    const APP_SECRET: &str = "appsecret-Qw7Zr2Lp9Xv4Kd8M";
    let prefix = broker::unique_prefix("obs-secrets");
    let pages = page_ids(350_000_000_000_000, 4);
    let (good, revoked, stale, auto) = (&pages[0], &pages[1], &pages[2], &pages[3]);
    let token = |page: &str| format!("EAAG-{page}-Tk5Hs1Nq6Bw3Jc0Y");
    let mut sim_config = SimConfig::default()
        .with_seed(23)
        .with_app_secret(APP_SECRET);
    for page in &pages {
        let sim_token = if page == stale {
            "EAAG-rotated-Vf2Mx8Rk4Pz1Lq7D".to_string()
        } else {
            token(page)
        };
        sim_config = sim_config.with_page(PageConfig::new(page, sim_token, 100_000));
    }
    let sim = Simulator::start(sim_config).await.unwrap();
    let client = sim.client();
    client.revoke(revoked).await.unwrap();

    let mut config = DaemonConfig::new(&prefix, &sim.base_url())
        .page(good, 100_000)
        .page(revoked, "auto")
        .page(stale, 100_000)
        .page(auto, "auto")
        .app_secret(APP_SECRET)
        .section("retry", "max_attempts = 3")
        .section("logging", "level = \"trace\"");
    for page in &pages {
        config.tokens.insert(page.clone(), token(page));
    }
    let daemon = Daemon::start(config).await;
    let conn = broker::connect().await;
    let topology = daemon.topology();

    let mut wave: Vec<Value> = (0..5)
        .map(|i| jobs::text_job(good, &format!("{}", 6_500_000 + i), &format!("good-{i}")))
        .collect();
    for (i, recipient) in [
        reserved::USER_BLOCKED_551,
        reserved::NO_MATCHING_USER_2018001,
        reserved::ALWAYS_TRANSIENT_2,
        reserved::UNKNOWN_CODE_99999,
        reserved::AMBIGUOUS_1357046,
    ]
    .into_iter()
    .enumerate()
    {
        wave.push(jobs::text_job(good, recipient, &format!("reserved-{i}")));
    }
    for page in [revoked, stale] {
        wave.extend(
            (0..3).map(|i| {
                jobs::text_job(page, &format!("{}", 6_600_000 + i), &format!("{page}-{i}"))
            }),
        );
    }
    jobs::publish(&conn, &topology, &wave).await;
    let ops = telemetry::OPERATIONS;
    let settled_on_good = |s: &Scrape, n: f64| {
        s.value(ops, &[("page", good), ("outcome", "delivered")])
            + s.value(ops, &[("page", good), ("outcome", "dead_lettered")])
            >= n
    };
    scrape_until(
        &daemon,
        "the first wave settled",
        Duration::from_secs(60),
        |s| {
            settled_on_good(s, 10.0)
                && s.value(
                    telemetry::PAGE_PAUSED,
                    &[("page", revoked), ("reason", "token_invalid")],
                ) == 1.0
                && s.value(
                    telemetry::PAGE_PAUSED,
                    &[("page", stale), ("reason", "token_invalid")],
                ) == 1.0
                && s.value(telemetry::AUDIENCE_REFRESHES, &[("result", "ok")]) >= 1.0
                && s.value(telemetry::AUDIENCE_REFRESHES, &[("result", "failed")]) >= 1.0
        },
    )
    .await;

    // A Graph outage: whole batch requests fail, and say so at warn.
    client
        .start_outage(Some(Duration::from_secs(2)), OutageMode::Http503)
        .await
        .unwrap();
    let outage: Vec<Value> = (0..5)
        .map(|i| jobs::text_job(good, &format!("{}", 6_700_000 + i), &format!("outage-{i}")))
        .collect();
    jobs::publish(&conn, &topology, &outage).await;
    scrape_until(
        &daemon,
        "the outage's jobs settled",
        Duration::from_secs(60),
        |s| settled_on_good(s, 15.0),
    )
    .await;

    // Positive controls: the failure paths ran and were logged, so silence below means something.
    let lines = log_lines(&daemon);
    let has = |level: &str, message: &str, page: &str| {
        lines.iter().any(|l| {
            l["level"] == level
                && l["message"].as_str().is_some_and(|m| m.contains(message))
                && (l["page"] == page || l["span"]["page"] == page)
        })
    };
    assert!(
        has("WARN", "cannot read the audience", revoked),
        "{}",
        daemon.logs()
    );
    assert!(
        has("WARN", "batch request failed", good),
        "{}",
        daemon.logs()
    );
    // The pause is logged once, inside the batch span that found it: Page and size attached.
    let paused = lines
        .iter()
        .find(|l| l["level"] == "ERROR" && l["page"] == revoked.as_str())
        .unwrap_or_else(|| panic!("no error line for the revoked Page:\n{}", daemon.logs()));
    assert_eq!(paused["span"]["name"], "batch", "{paused}");
    assert_eq!(paused["span"]["page"], revoked.as_str(), "{paused}");
    assert!(
        paused["span"]["size"].as_u64().is_some_and(|n| n >= 1),
        "{paused}"
    );
    let letters = jobs::drain(&conn, &topology.dead_queue()).await;
    let reasons: BTreeSet<String> = letters.iter().map(|l| l.reason()).collect();
    for reason in ["permanent", "max_attempts", "unknown_error", "ambiguous"] {
        assert!(reasons.contains(reason), "{reason} in {reasons:?}");
    }
    let pages_view = daemon.pages().await;
    let revoked_view = pages_view
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == revoked.as_str())
        .unwrap();
    assert_eq!(revoked_view["paused"], "token_invalid");
    assert_eq!(revoked_view["audience_source"], "insights");

    // Everything pagerelay wrote or served.
    let mut haystacks: Vec<(String, String)> = vec![
        ("log".into(), daemon.logs()),
        (
            "stdout".into(),
            std::fs::read_to_string(daemon.dir.path().join("stdout.log")).unwrap(),
        ),
        ("/metrics".into(), daemon.metrics().await),
        ("/pages".into(), pages_view.to_string()),
        ("/readyz".into(), format!("{:?}", daemon.readyz().await)),
    ];
    for letter in &letters {
        haystacks.push((
            format!("dead letter {}", letter.reason()),
            format!(
                "{} {:?} {:?} {}",
                String::from_utf8_lossy(&letter.body),
                letter.headers,
                letter.properties,
                letter.routing_key
            ),
        ));
    }
    let mut secrets = vec![APP_SECRET.to_string()];
    for page in &pages {
        secrets.push(token(page));
        secrets.push(pagerelay::sim::appsecret_proof(APP_SECRET, &token(page)));
    }
    for (what, text) in &haystacks {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} contains a secret ({secret})"
            );
        }
        // Not even the distinctive part of one.
        assert!(
            !text.contains("Tk5Hs1Nq6Bw3Jc0Y") && !text.contains("Qw7Zr2Lp9Xv4Kd8M"),
            "{what}"
        );
    }

    drop(daemon);
    broker::delete_topology(&prefix).await;
}

/// The dashboard is importable JSON whose every query is valid PromQL (promtool parses them as
/// recording rules, with Grafana's variables filled in).
#[test]
fn the_dashboard_queries_are_valid_promql() {
    let path = repo_file("deploy/grafana/pagerelay.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "pagerelay");
    let mut ids = BTreeSet::new();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
                .replace("$top", "10");
            rules.push_str(&format!(
                "      - record: dashboard:panel_{}_{}\n        expr: {}\n",
                panel["id"],
                target["refId"].as_str().unwrap(),
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, &rules).unwrap();
    run_promtool(&["check", "rules", file.to_str().unwrap()], "");
}
