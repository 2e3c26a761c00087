//! The delivery pipeline end to end: real RabbitMQ, `graph-sim` over real HTTP, and the
//! `pagerelay` binary. Every assertion about delivery is made on the simulator's record.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use pagerelay::sim::{PageConfig, SimConfig, Simulator};
use serde_json::Value;

use support::daemon::{Daemon, DaemonConfig};
use support::sim::arrivals as delivered;
use support::{broker, jobs, wait_for};

fn page_ids(n: usize) -> Vec<String> {
    support::sim::page_ids(100_000_000_000_000, n)
}

async fn sim_with(pages: &[String], audience: u64) -> Simulator {
    support::sim::start(pages, audience, 7).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_is_delivered_exactly_once() {
    let prefix = broker::unique_prefix("exactly-once");
    let pages = page_ids(100);
    let sim = sim_with(&pages, 100_000).await;
    let mut daemon =
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
    // Acknowledgements were coalesced: fewer frames than jobs, some of them covering runs.
    let frames = |kind: &'static str| {
        let daemon = &daemon;
        async move {
            daemon
                .metric(
                    "pagerelay_amqp_ack_frames_total",
                    &[&format!("kind=\"{kind}\"")],
                )
                .await
        }
    };
    let (multiple, single) = (frames("multiple").await, frames("single").await);
    assert!(multiple > 0.0, "no multiple acks");
    assert!(
        multiple + single < 10_000.0,
        "{multiple} multiple + {single} single ack frames for 10,000 jobs"
    );
    // And every one of them was acknowledged: after a graceful stop, nothing went back to the
    // queue (an unacknowledged delivery would be ready again once its channel closed).
    assert!(daemon.stop().await.success());
    for queue in topology.job_queues() {
        assert_eq!(jobs::depth(&conn, &queue).await, 0, "{queue} got jobs back");
    }
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_pages_share_batch_requests_and_each_send_goes_out_as_its_own_page() {
    let prefix = broker::unique_prefix("shared-requests");
    let pages = page_ids(400);
    let sim = sim_with(&pages, 100_000).await;
    let daemon =
        Daemon::start(DaemonConfig::new(&prefix, &sim.base_url()).pages(&pages, 100_000)).await;
    let conn = broker::connect().await;
    // Two jobs per Page: no Page ever has enough for a batch of its own.
    let all: Vec<Value> = (0..800)
        .map(|i| {
            let page = &pages[i % pages.len()];
            jobs::text_job(page, &format!("{}", 8_000_000 + i), &format!("job-{i}"))
        })
        .collect();
    jobs::publish(&conn, &daemon.topology(), &all).await;
    support::sim::wait_delivered(&sim, 800, Duration::from_secs(60)).await;

    let deliveries = sim.client().all_deliveries().await.unwrap();
    assert_eq!(deliveries.len(), 800);
    let mut mixed = HashSet::new();
    let mut page_of_request = std::collections::HashMap::new();
    for d in &deliveries {
        // The simulator attributes each operation to the Page whose token it carried.
        let job = jobs::job_id_of(&d.body).unwrap();
        let i: usize = job.trim_start_matches("job-").parse().unwrap();
        assert_eq!(
            d.page_id,
            pages[i % pages.len()],
            "{job} went out as another Page"
        );
        if *page_of_request.entry(d.batch).or_insert(&d.page_id) != &d.page_id {
            mixed.insert(d.batch);
        }
    }
    assert!(
        page_of_request.len() <= 800 / 5,
        "{} requests for 800 sends of 400 Pages",
        page_of_request.len()
    );
    assert!(!mixed.is_empty(), "no request carried several Pages");
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
        .map(|i| {
            jobs::text_job(
                &pages[i % pages.len()],
                &format!("{}", 8_000_000 + i),
                &format!("job-{i}"),
            )
        })
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
    assert!(
        counts.values().all(|n| *n == 1),
        "a job was delivered twice"
    );
    let stats = client.stats().await.unwrap();
    assert!(
        stats.totals.nulls > 0 && stats.totals.rejected > 0,
        "faults were injected: {:?}",
        stats.totals
    );
    let retried = daemon
        .metric("pagerelay_operations_total", &["outcome=\"retried\""])
        .await;
    assert_eq!(
        retried as u64,
        stats.totals.nulls + stats.totals.rejected,
        "every failed operation was retried once"
    );
    assert_eq!(
        daemon.metric("pagerelay_dead_letters_total", &[]).await,
        0.0
    );
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
    let daemon =
        Daemon::start(DaemonConfig::new(&prefix, &sim.base_url()).pages(&pages, 100_000)).await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let mut all: Vec<Value> = (0..200)
        .map(|i| jobs::text_job(&pages[0], "4242424242", &format!("job-{i:03}")))
        .collect();
    // Other recipients' messages mixed in, so that batches are full of independent work.
    all.extend((0..300).map(|i| {
        jobs::text_job(
            &pages[0],
            &format!("{}", 5_000_000 + i),
            &format!("other-{i}"),
        )
    }));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_cannot_be_sent_are_dead_lettered_with_their_reason_and_context() {
    use pagerelay::amqp::headers as h;
    use pagerelay::sim::reserved;
    let prefix = broker::unique_prefix("dead-letters");
    let pages = page_ids(2);
    let sim = sim_with(&pages, 100_000).await;
    let daemon = Daemon::start(
        DaemonConfig::new(&prefix, &sim.base_url())
            .pages(&pages, 100_000)
            .section("retry", "max_attempts = 3"),
    )
    .await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let page = &pages[0];

    let mut expired = jobs::text_job(page, "31", "expired-1");
    expired["expires_at"] = Value::from("2020-01-01T00:00:00Z");
    let mut too_long = jobs::text_job(page, "32", "invalid-text");
    too_long["message"]["text"] = Value::from("x".repeat(2001));
    let cases: Vec<(Value, &str, Option<i64>, Option<i64>)> = vec![
        (
            jobs::text_job(page, reserved::USER_BLOCKED_551, "perm-551"),
            "permanent",
            Some(551),
            None,
        ),
        (
            jobs::text_job(page, reserved::NO_MATCHING_USER_2018001, "perm-2018001"),
            "permanent",
            Some(100),
            Some(2018001),
        ),
        (
            jobs::text_job(page, reserved::OUTSIDE_WINDOW_2018278, "perm-2018278"),
            "permanent",
            Some(10),
            Some(2018278),
        ),
        (
            jobs::text_job(page, reserved::NOT_AVAILABLE_1545041, "perm-1545041"),
            "permanent",
            Some(200),
            Some(1545041),
        ),
        (
            jobs::text_job(page, reserved::AMBIGUOUS_1357046, "ambiguous-1"),
            "ambiguous",
            Some(1),
            Some(1357046),
        ),
        (
            jobs::text_job(page, reserved::ALWAYS_TRANSIENT_2, "transient-forever"),
            "max_attempts",
            Some(2),
            None,
        ),
        (
            jobs::text_job(page, reserved::UNKNOWN_CODE_99999, "unknown-code"),
            "unknown_error",
            Some(99999),
            None,
        ),
        (
            jobs::text_job("999999999999999", "33", "no-such-page"),
            "unknown_page",
            None,
            None,
        ),
        (expired, "expired", None, None),
        (too_long, "invalid", None, None),
    ];
    let bodies: Vec<Value> = cases.iter().map(|c| c.0.clone()).collect();
    jobs::publish(&conn, &topology, &bodies).await;
    // A body that is not JSON at all, and a good job alongside, which must be delivered.
    jobs::publish_raw(
        &conn,
        &topology,
        &[(
            page.clone(),
            b"{not json".to_vec(),
            lapin::BasicProperties::default(),
        )],
    )
    .await;
    jobs::publish(&conn, &topology, &[jobs::text_job(page, "34", "good-1")]).await;

    wait_for("11 dead letters", Duration::from_secs(60), || {
        let conn = &conn;
        let queue = topology.dead_queue();
        async move { (jobs::depth(conn, &queue).await >= 11).then_some(()) }
    })
    .await;
    let letters = jobs::drain(&conn, &topology.dead_queue()).await;
    assert_eq!(
        letters.len(),
        11,
        "exactly the failed jobs are dead letters"
    );

    for (body, reason, code, subcode) in &cases {
        let job_id = body["job_id"].as_str().unwrap();
        let letter = letters
            .iter()
            .find(|l| l.json()["job_id"] == job_id)
            .unwrap_or_else(|| panic!("no dead letter for {job_id}"));
        assert_eq!(letter.reason(), *reason, "{job_id}");
        assert_eq!(
            letter.body,
            body.to_string().into_bytes(),
            "{job_id}: body unchanged"
        );
        assert_eq!(letter.int(h::ERROR_CODE), *code, "{job_id}: error code");
        assert_eq!(
            letter.int(h::ERROR_SUBCODE),
            *subcode,
            "{job_id}: error subcode"
        );
        assert!(letter.header(h::DEAD_LETTERED_AT).is_some(), "{job_id}");
        assert_eq!(
            letter.properties.message_id().as_ref().map(|m| m.as_str()),
            Some(job_id)
        );
        match *reason {
            "permanent" | "ambiguous" => {
                assert_eq!(letter.int(h::ATTEMPTS), Some(1), "{job_id}");
                assert!(
                    letter.header(h::FBTRACE_ID).is_some(),
                    "{job_id}: fbtrace id"
                );
                assert!(
                    letter.header(h::ERROR_MESSAGE).is_some(),
                    "{job_id}: error message"
                );
                assert!(letter.header(h::FIRST_ATTEMPT_AT).is_some(), "{job_id}");
                assert_eq!(letter.header(h::PAGE_ID).as_deref(), Some(page.as_str()));
            }
            "max_attempts" | "unknown_error" => {
                assert_eq!(
                    letter.int(h::ATTEMPTS),
                    Some(3),
                    "{job_id}: every attempt counted"
                );
            }
            _ => assert_eq!(
                letter.int(h::ATTEMPTS),
                Some(0),
                "{job_id}: never attempted"
            ),
        }
    }
    let invalid = letters
        .iter()
        .find(|l| l.json()["job_id"] == "invalid-text")
        .unwrap();
    assert_eq!(
        invalid.header(h::ERROR_MESSAGE).as_deref(),
        Some("message.text: 2001 characters, limit is 1999")
    );
    let garbage = letters
        .iter()
        .find(|l| l.body == b"{not json")
        .expect("the non-JSON body");
    assert_eq!(garbage.reason(), "invalid");
    assert!(
        garbage
            .header(h::ERROR_MESSAGE)
            .unwrap()
            .starts_with("body:"),
        "{:?}",
        garbage.header(h::ERROR_MESSAGE)
    );
    assert_eq!(garbage.routing_key, *page);

    // The good job went through, and the ambiguous one is in the record (it may have arrived).
    let counts = delivered(&sim).await;
    assert_eq!(counts.get("good-1"), Some(&1));
    assert_eq!(counts.get("ambiguous-1"), Some(&1));
    assert_eq!(counts.len(), 2, "{counts:?}");
    for (reason, n) in [
        ("permanent", 4.0),
        ("invalid", 2.0),
        ("max_attempts", 1.0),
        ("unknown_page", 1.0),
    ] {
        assert_eq!(
            daemon
                .metric(
                    "pagerelay_dead_letters_total",
                    &[&format!("reason=\"{reason}\"")]
                )
                .await,
            n,
            "{reason}"
        );
    }
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_page_cools_down_without_spending_attempts() {
    use pagerelay::sim::Faults;
    let prefix = broker::unique_prefix("throttled");
    let pages = page_ids(2);
    let mut config = SimConfig::default().with_seed(5).with_faults(Faults {
        item_throttle_rate: 0.3,
        throttle_regain_minutes: 0,
        ..Faults::default()
    });
    for id in &pages {
        config = config.with_page(PageConfig::new(id, format!("token-{id}"), 100_000));
    }
    let sim = Simulator::start(config).await.unwrap();
    // One attempt only: if a 613 cost an attempt, its job would be dead-lettered.
    let daemon = Daemon::start(
        DaemonConfig::new(&prefix, &sim.base_url())
            .pages(&pages, 100_000)
            .section("retry", "max_attempts = 1"),
    )
    .await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let all: Vec<Value> = (0..400)
        .map(|i| {
            jobs::text_job(
                &pages[i % 2],
                &format!("{}", 3_000_000 + i),
                &format!("job-{i}"),
            )
        })
        .collect();
    jobs::publish(&conn, &topology, &all).await;

    let client = sim.client();
    wait_for("400 deliveries", Duration::from_secs(120), || async {
        let stats = client.stats().await.ok()?;
        (stats.totals.delivered >= 400).then_some(())
    })
    .await;
    let stats = client.stats().await.unwrap();
    assert!(stats.totals.throttled_613 > 0, "613s were injected");
    let counts = delivered(&sim).await;
    assert_eq!(counts.len(), 400);
    assert!(counts.values().all(|n| *n == 1));
    assert_eq!(
        daemon.metric("pagerelay_dead_letters_total", &[]).await,
        0.0
    );
    assert_eq!(
        daemon
            .metric("pagerelay_operations_total", &["outcome=\"retried\""])
            .await,
        0.0
    );
    assert!(
        daemon
            .metric("pagerelay_parked_total", &["reason=\"cooldown\""])
            .await
            >= stats.totals.throttled_613 as f64
    );
    assert_eq!(
        daemon
            .metric(
                "pagerelay_graph_errors_total",
                &["code=\"613\"", "decision=\"throttle\""]
            )
            .await,
        stats.totals.throttled_613 as f64
    );
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_after_a_quiet_spell_is_still_acknowledged() {
    // An idle channel's ack flusher sleeps until a settlement wakes it. Were that wake lost, the
    // job would be delivered but never acknowledged until the channel closed.
    let prefix = broker::unique_prefix("ack-after-quiet");
    let pages = page_ids(1);
    let sim = sim_with(&pages, 100_000).await;
    let mut daemon =
        Daemon::start(DaemonConfig::new(&prefix, &sim.base_url()).pages(&pages, 100_000)).await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let client = sim.client();
    let acked = || async {
        daemon
            .metric("pagerelay_amqp_ack_frames_total", &[])
            .await
            .max(0.0)
    };

    for round in 1..=3u32 {
        let job = jobs::text_job(&pages[0], "7000001", &format!("quiet-{round}"));
        jobs::publish(&conn, &topology, &[job]).await;
        wait_for(
            &format!("delivery {round}"),
            Duration::from_secs(30),
            || async {
                let stats = client.stats().await.ok()?;
                (stats.totals.delivered >= u64::from(round)).then_some(())
            },
        )
        .await;
        // One frame per job: each is alone in its flush.
        wait_for(&format!("ack {round}"), Duration::from_secs(30), || async {
            (acked().await >= f64::from(round)).then_some(())
        })
        .await;
        // Long past the flusher's tick and the ack hold: it is asleep when the next job comes.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(acked().await, 3.0, "one frame per job, no more");
    assert_eq!(
        daemon
            .metric("pagerelay_operations_total", &["outcome=\"delivered\""])
            .await,
        3.0
    );
    // Acknowledged before the stop, so the stop hands nothing back.
    assert!(daemon.stop().await.success());
    for queue in topology.job_queues() {
        assert_eq!(jobs::depth(&conn, &queue).await, 0, "{queue} got jobs back");
    }
    assert_eq!(
        delivered(&sim).await.values().sum::<usize>(),
        3,
        "each job delivered once"
    );
    broker::delete_topology(&prefix).await;
}
