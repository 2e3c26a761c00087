//! Park bundles end to end: pagerelay parks a Page's overflow as a few bundle messages rather
//! than a message per job, loses none of the jobs in them, and splits any bundle it consumes back
//! into jobs that are each delivered or dead-lettered on their own — and a bundle it cannot read
//! is dead-lettered whole, never dropped.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::FieldTable;
use pagerelay::amqp::{bundle, headers};
use pagerelay::sim::{PageConfig, SimConfig, Simulator};
use serde_json::Value;

use support::daemon::{Daemon, DaemonConfig};
use support::jobs::DeadLetter;
use support::sim::{arrivals, wait_delivered};
use support::{broker, jobs, wait_for};

const PAGE: &str = "100000000000501";
const UNKNOWN_PAGE: &str = "100000000000999";
const CASE: &str = "x-bundle-case";

fn piece_properties(case: &str) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(CASE.into(), jobs::header(case));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(table)
}

fn bundle_properties(count: usize) -> BasicProperties {
    bundle::properties(FieldTable::default(), count)
}

fn job_body(page: &str, id: &str) -> Vec<u8> {
    jobs::text_job(page, "7000001", id).to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumed_bundle_is_split_into_jobs_settled_one_by_one() {
    let prefix = broker::unique_prefix("bundle_split");
    let sim = Simulator::start(SimConfig::default().with_page(PageConfig::new(
        PAGE,
        format!("token-{PAGE}"),
        100_000,
    )))
    .await
    .unwrap();
    let daemon =
        Daemon::start(DaemonConfig::new(&prefix, &sim.base_url()).page(PAGE, 100_000)).await;
    let conn = broker::connect().await;
    let topology = daemon.topology();

    let (a1, a2, a3, b1) = (
        job_body(PAGE, "a1"),
        b"{\"page_id\": ".to_vec(),
        job_body(PAGE, "a3"),
        job_body(UNKNOWN_PAGE, "b1"),
    );
    let (pa1, pa2, pa3, pb1) = (
        piece_properties("a1"),
        piece_properties("a2"),
        piece_properties("a3"),
        piece_properties("b1"),
    );
    let mixed = bundle::encode([
        (&pa1, a1.as_slice()),
        (&pa2, a2.as_slice()),
        (&pa3, a3.as_slice()),
    ]);
    let unknown = bundle::encode([(&pb1, b1.as_slice())]);
    // Declares two jobs; the second is cut short.
    let mut unreadable = bundle::encode([(&pa1, a1.as_slice()), (&pa3, a3.as_slice())]);
    unreadable.truncate(unreadable.len() - 3);
    jobs::publish_raw(
        &conn,
        &topology,
        &[
            (PAGE.to_string(), mixed, bundle_properties(3)),
            (UNKNOWN_PAGE.to_string(), unknown, bundle_properties(1)),
            (PAGE.to_string(), unreadable.clone(), bundle_properties(2)),
        ],
    )
    .await;

    wait_delivered(&sim, 2, Duration::from_secs(30)).await;
    let dead_queue = topology.dead_queue();
    wait_for("three dead letters", Duration::from_secs(30), || async {
        (jobs::depth(&conn, &dead_queue).await >= 3).then_some(())
    })
    .await;

    assert_eq!(
        arrivals(&sim).await,
        HashMap::from([("a1".into(), 1), ("a3".into(), 1)])
    );

    let letters = jobs::drain(&conn, &dead_queue).await;
    assert_eq!(letters.len(), 3, "{letters:?}");
    let case = |l: &DeadLetter| l.header(CASE);
    let bad_piece = letters
        .iter()
        .find(|l| case(l).as_deref() == Some("a2"))
        .expect("the unreadable job of the bundle, alone");
    assert_eq!(bad_piece.reason(), "invalid");
    assert_eq!(bad_piece.body, a2, "the job's own body, not the bundle's");
    assert_eq!(bad_piece.header(headers::PAGE_ID), None);
    assert_eq!(bundle::count(Some(&bad_piece.headers)), None);

    let unknown = letters
        .iter()
        .find(|l| case(l).as_deref() == Some("b1"))
        .expect("the unknown Page's job");
    assert_eq!(unknown.reason(), "unknown_page");
    assert_eq!(unknown.json()["job_id"], "b1");

    let whole = letters
        .iter()
        .find(|l| bundle::count(Some(&l.headers)).is_some())
        .expect("the unreadable bundle, whole");
    assert_eq!(whole.reason(), "invalid");
    assert_eq!(whole.body, unreadable);
    let message = whole.header(headers::ERROR_MESSAGE).unwrap_or_default();
    assert!(
        message.starts_with("not a readable park bundle: piece 1 is cut short"),
        "{message}"
    );

    for queue in topology.job_queues() {
        assert_eq!(
            jobs::depth(&conn, &queue).await,
            0,
            "{queue}: every bundle acked"
        );
    }
    assert_eq!(
        daemon.metric("pagerelay_jobs_consumed_total", &[]).await,
        5.0,
        "each job of a readable bundle counts, an unreadable bundle once"
    );
    drop(daemon);
    broker::delete_topology(&prefix).await;
}

/// A job id from a job's body.
fn id_of(body: &[u8]) -> String {
    let job: Value = serde_json::from_slice(body).expect("a job");
    job["job_id"].as_str().expect("a job id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_out_of_budget_parks_its_jobs_in_bundles_and_loses_none() {
    let prefix = broker::unique_prefix("bundle_park");
    // An audience of 1: a budget of 190 calls a day, 19 of them at once; the rest is parked
    // for minutes to hours, longer than this test.
    let sim = Simulator::start(SimConfig::default().with_page(PageConfig::new(
        PAGE,
        format!("token-{PAGE}"),
        1,
    )))
    .await
    .unwrap();
    let mut daemon = Daemon::start(DaemonConfig::new(&prefix, &sim.base_url()).page(PAGE, 1)).await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let total = 600;
    let all: Vec<Value> = (0..total)
        .map(|i| jobs::text_job(PAGE, &format!("{}", 8_000_000 + i), &format!("p-{i}")))
        .collect();
    jobs::publish(&conn, &topology, &all).await;

    let client = sim.client();
    wait_for("the overflow parked", Duration::from_secs(60), || async {
        let delivered = client.stats().await.ok()?.totals.delivered as f64;
        let parked = daemon.metric("pagerelay_parked_total", &[]).await;
        (delivered + parked >= (total - 60) as f64).then_some(())
    })
    .await;
    let parked = daemon
        .metric("pagerelay_parked_total", &["reason=\"budget\""])
        .await;
    let messages = daemon
        .metric("pagerelay_park_message_jobs_count", &[])
        .await;
    assert!(
        messages >= 1.0 && messages * 10.0 <= parked,
        "{parked} jobs parked in {messages} messages"
    );
    // Shutdown parks what is waiting to be parked and hands the held jobs back.
    assert!(daemon.stop().await.success());

    let delivered = arrivals(&sim).await;
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
    let mut seen: Vec<String> = delivered.keys().cloned().collect();
    let mut bundles = 0;
    let mut pieces = 0;
    for tier in topology.tiers() {
        for message in jobs::drain(&conn, &topology.tier_queue(*tier)).await {
            let Some(declared) = bundle::count(Some(&message.headers)) else {
                pieces += 1;
                seen.push(id_of(&message.body));
                continue;
            };
            bundles += 1;
            assert_eq!(message.header(headers::PAGE_ID).as_deref(), Some(PAGE));
            for piece in bundle::decode(&message.body, declared).unwrap() {
                let h = piece.properties.headers().as_ref();
                let reason = headers::get_string(h, headers::PARK_REASON).unwrap_or_default();
                // Before the budget is spent, the overflow of a full lane is parked too.
                assert!(
                    ["budget", "lane_full"].contains(&reason.as_str()),
                    "{reason}"
                );
                assert_eq!(headers::get_int(h, headers::PARKED), Some(1));
                let id = id_of(&piece.body);
                assert_eq!(
                    piece.properties.message_id().as_ref().map(|m| m.as_str()),
                    Some(id.as_str())
                );
                pieces += 1;
                seen.push(id);
            }
        }
    }
    for queue in topology.job_queues() {
        // A quorum queue with a single active consumer refuses basic.get: consume it.
        for message in jobs::collect(&conn, &queue, Duration::from_secs(2)).await {
            assert_eq!(
                bundle::count(Some(&message.headers)),
                None,
                "handed back alone"
            );
            seen.push(id_of(&message.body));
        }
    }
    assert_eq!(jobs::depth(&conn, &topology.dead_queue()).await, 0);
    eprintln!(
        "{} delivered, {pieces} parked in {bundles} bundles, {} handed back",
        delivered.len(),
        seen.len() - delivered.len() - pieces
    );
    assert!(
        bundles >= 1 && bundles * 10 <= pieces,
        "{pieces} jobs in {bundles} bundles"
    );
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "no job twice");
    assert_eq!(
        seen.len(),
        total,
        "every job delivered, parked or handed back"
    );
    broker::delete_topology(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_larger_than_the_prefetch_window_take_turns_and_all_deliver() {
    let prefix = broker::unique_prefix("bundle_room");
    let pages: Vec<String> = (0..3)
        .map(|i| format!("{}", 100_000_000_000_600u64 + i))
        .collect();
    let mut sim_config = SimConfig::default();
    for id in &pages {
        sim_config = sim_config.with_page(PageConfig::new(id, format!("token-{id}"), 100_000));
    }
    let sim = Simulator::start(sim_config).await.unwrap();
    // A window of 20 deliveries, so room for 20 bundled jobs: a bundle of 30 takes all of it,
    // and the next waits until its jobs are settled. None may be stuck waiting.
    let daemon = Daemon::start(
        DaemonConfig::new(&prefix, &sim.base_url())
            .pages(&pages, 100_000)
            .section("amqp", "prefetch = 20"),
    )
    .await;
    let conn = broker::connect().await;
    let topology = daemon.topology();
    let mut messages = Vec::new();
    let mut ids = BTreeSet::new();
    for b in 0..6 {
        let page = &pages[b % pages.len()];
        let bodies: Vec<(BasicProperties, Vec<u8>)> = (0..30)
            .map(|i| {
                let id = format!("room-{b}-{i}");
                ids.insert(id.clone());
                (piece_properties(&id), job_body(page, &id))
            })
            .collect();
        let body = bundle::encode(bodies.iter().map(|(p, b)| (p, b.as_slice())));
        messages.push((page.clone(), body, bundle_properties(30)));
    }
    jobs::publish_raw(&conn, &topology, &messages).await;

    wait_delivered(&sim, 180, Duration::from_secs(60)).await;
    let delivered = arrivals(&sim).await;
    assert!(
        delivered.values().all(|n| *n == 1),
        "each once: {delivered:?}"
    );
    assert_eq!(delivered.into_keys().collect::<BTreeSet<_>>(), ids);
    wait_for("every bundle acked", Duration::from_secs(10), || async {
        let mut depth = 0;
        for queue in topology.job_queues() {
            depth += jobs::depth(&conn, &queue).await;
        }
        let consumed = daemon.metric("pagerelay_jobs_consumed_total", &[]).await;
        (depth == 0 && consumed == 180.0).then_some(())
    })
    .await;
    drop(daemon);
    broker::delete_topology(&prefix).await;
}
