//! `pagerelay run`: builds the pipeline, keeps a broker session alive, reloads the Page
//! registry on request, and shuts down without losing a job.
//!
//! # Sessions
//!
//! The supervisor owns the AMQP connection. When it is lost it marks the process not ready,
//! tells every lane to forget the jobs of the dead session (the broker redelivers them), and
//! reconnects with capped, jittered backoff, redeclaring the topology each time. In-flight
//! batches finish on their own; their acks fail harmlessly, and the duplicate guard acks the
//! redeliveries of the jobs they delivered.
//!
//! # Shutdown
//!
//! On `shutdown`: stop consuming, let the lanes hand their queued jobs back (nack, requeue), give
//! in-flight batches `shutdown_grace` to finish and settle, then close the channel and connection
//! (which hands back anything still unacked). Nothing is lost at any point of this: a job is
//! acked only once its fate is durable. The session's acks are flushed, coalesced where they
//! can be (`amqp::acks`), before the channel closes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::options::BasicCancelOptions;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::combiner::{self, Combiner};
use super::consumer::{self, ConsumeEnd};
use super::dedup::DuplicateGuard;
use super::lane::{LaneMsg, Lanes};
use super::registry::Registry;
use super::{Meters, Origin, Shared, audience, bundled_room};
use crate::admin::{self, AdminState, Health};
use crate::amqp::{Acks, Session, Topology};
use crate::config::{LoadOptions, Settings};
use crate::graph::{GraphClient, StopReason};
use crate::telemetry::{self, PageLabels};

/// How the caller steers a running daemon: cancel `shutdown` to stop gracefully, send on
/// `reload` to re-read the settings' Page registry (SIGHUP in the binary).
pub struct Control {
    pub shutdown: CancellationToken,
    pub reload: mpsc::UnboundedReceiver<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot bind the admin listener on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the Graph API client: {0}")]
    Graph(#[from] crate::graph::ClientError),
}

/// Runs the daemon until `control.shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    load: LoadOptions,
    metrics: Option<PrometheusHandle>,
    control: Control,
) -> Result<(), RunError> {
    let Control {
        shutdown,
        mut reload,
    } = control;
    let graph = GraphClient::new(&settings.graph)?;
    let registry = Arc::new(Registry::new(&settings));
    let health = Arc::new(Health::default());
    let listener = admin::bind(settings.admin.listen)
        .await
        .map_err(|source| RunError::Admin {
            addr: settings.admin.listen,
            source,
        })?;
    let admin_addr = listener.local_addr().ok();
    let (combiner, parts) = Combiner::new();
    let shared = Arc::new(Shared {
        combiner,
        topology: Topology::new(&settings.amqp, &settings.retry.tiers),
        dedup: DuplicateGuard::new(
            settings.pipeline.dedup_capacity,
            settings.pipeline.dedup_ttl,
        ),
        labels: PageLabels::new(settings.metrics.page_label_limit),
        in_flight: Arc::new(Semaphore::new(settings.graph.max_in_flight)),
        bundled_room: Arc::new(Semaphore::new(bundled_room(&settings))),
        lanes: Lanes::default(),
        meters: Meters::register(),
        registry: registry.clone(),
        health: health.clone(),
        graph,
        settings,
    });
    tracing::info!(
        pages = registry.len(),
        prefix = shared.topology.prefix(),
        shards = shared.topology.shards(),
        admin = ?admin_addr,
        "pagerelay starting"
    );

    // Everything in the background ends with `background`, after the pipeline has drained.
    let background = CancellationToken::new();
    let admin_state = AdminState {
        health: health.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
    };
    let admin_task = tokio::spawn(admin::serve(listener, admin_state, background.clone()));
    tokio::spawn(combiner::run(shared.clone(), parts, background.clone()));
    tokio::spawn(upkeep(shared.clone(), metrics, background.clone()));
    tokio::spawn(audience::refresh_loop(shared.clone(), background.clone()));
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            while reload.recv().await.is_some() {
                reload_registry(&shared, &load);
            }
        });
    }

    // On a worker rather than the caller's thread (in the binary, `main`'s): the consumer wakes
    // a lane for nearly every delivery, and a wake from inside the pool is a push on the
    // worker's own queue where one from outside is a cross-thread unpark.
    let consuming = tokio::spawn({
        let shared = shared.clone();
        async move { sessions(&shared, &shutdown).await }
    });
    if let Err(e) = consuming.await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }

    background.cancel();
    let _ = admin_task.await;
    tracing::info!("pagerelay stopped");
    Ok(())
}

/// How long the last acks get to reach their queues before the channel closes on shutdown.
const ACK_SETTLE: Duration = Duration::from_millis(500);

/// Opens sessions one after another until shutdown, then shuts the last one down gracefully.
async fn sessions(shared: &Arc<Shared>, shutdown: &CancellationToken) {
    let amqp = &shared.settings.amqp;
    let name = format!(
        "pagerelay {} pid {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    let mut backoff = reconnect_backoff(amqp.reconnect_min_delay, amqp.reconnect_max_delay);
    let mut generation = 0u64;
    loop {
        if shutdown.is_cancelled() {
            shared.lanes.stop();
            return;
        }
        generation += 1;
        let session = tokio::select! {
            _ = shutdown.cancelled() => continue,
            opened = Session::open(amqp, &shared.topology, generation, &name) => opened,
        };
        let session = match session {
            Ok(session) => session,
            Err(e) => {
                let wait = backoff.next().unwrap_or(amqp.reconnect_max_delay);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "broker unavailable");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        shared.health.connected.store(true, Ordering::Relaxed);
        shared
            .health
            .topology_declared
            .store(true, Ordering::Relaxed);
        metrics::gauge!(telemetry::AMQP_CONNECTED).set(1.0);
        let consumer_tag = format!("pagerelay-{}-{generation}", std::process::id());
        let (channel, mut deliveries) = match session
            .consume(&shared.topology, amqp.prefetch, &consumer_tag)
            .await
        {
            Ok(consuming) => consuming,
            Err(e) => {
                tracing::warn!(error = %e, "cannot consume; reconnecting");
                lost(shared, generation).await;
                session.close().await;
                continue;
            }
        };
        backoff = reconnect_backoff(amqp.reconnect_min_delay, amqp.reconnect_max_delay);
        shared.health.consuming.store(true, Ordering::Relaxed);
        let consumers = shared.topology.job_queues().len();
        metrics::gauge!(telemetry::AMQP_CONSUMERS).set(consumers as f64);
        metrics::gauge!(telemetry::READY).set(1.0);
        tracing::info!(generation, queues = consumers, "consuming");

        let (acks, flusher) = Acks::start(channel.clone(), amqp.ack_hold);
        let origin = Arc::new(Origin {
            generation,
            publisher: session.publisher.clone(),
            acks,
        });
        let end = consumer::consume(shared, &origin, &mut deliveries, shutdown).await;
        match end {
            ConsumeEnd::Stopping => {
                for i in 0..consumers {
                    let tag = format!("{consumer_tag}-{i}");
                    let _ = channel
                        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                        .await;
                }
                shared.health.consuming.store(false, Ordering::Relaxed);
                metrics::gauge!(telemetry::READY).set(0.0);
                drain(shared).await;
                // Quorum queues can drop acks that arrive just before their channel closes
                // (rabbitmq-server#10327): the jobs would come back and be sent again. Only the
                // last frames need that time; a daemon idle for longer closes at once.
                if let Some(last_frame) = flusher.finish().await {
                    tokio::time::sleep_until(last_frame + ACK_SETTLE).await;
                }
                let _ = channel.close(200, "pagerelay shutting down".into()).await;
                session.close().await;
                shared.health.set_down();
                metrics::gauge!(telemetry::AMQP_CONNECTED).set(0.0);
                return;
            }
            ConsumeEnd::Lost(e) => {
                tracing::warn!(error = %e, generation, "broker connection lost; reconnecting");
            }
            ConsumeEnd::Cancelled => {
                tracing::warn!(
                    generation,
                    "the broker cancelled the consumers; reconnecting"
                );
            }
        }
        drop(flusher);
        lost(shared, generation).await;
        session.close().await;
    }
}

/// Marks the process not ready and voids the jobs of `generation` in every lane.
async fn lost(shared: &Arc<Shared>, generation: u64) {
    shared.health.set_down();
    metrics::gauge!(telemetry::AMQP_CONNECTED).set(0.0);
    metrics::gauge!(telemetry::AMQP_CONSUMERS).set(0.0);
    metrics::gauge!(telemetry::READY).set(0.0);
    metrics::counter!(telemetry::AMQP_RECONNECTS).increment(1);
    shared.lanes.broadcast(|| LaneMsg::Forget {
        generation: generation + 1,
    });
}

/// Lets the lanes hand their jobs back and in-flight batches finish, within the grace period.
async fn drain(shared: &Arc<Shared>) {
    let grace = shared.settings.pipeline.shutdown_grace;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        lanes = shared.lanes.len(),
        "draining"
    );
    shared.lanes.stop();
    let all = shared.settings.graph.max_in_flight as u32;
    let drained = async {
        // Every batch holds a permit until it has settled: all permits back means none in flight.
        let _all = shared.in_flight.acquire_many(all).await;
        // Give the lanes a moment to hand their queues back and end.
        while !shared.lanes.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            "in-flight work did not finish within {}; closing the channel hands it back to the broker",
            humantime::format_duration(grace)
        );
    }
}

fn reconnect_backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Re-reads the settings and applies the new Page registry. An invalid file keeps the old one.
fn reload_registry(shared: &Arc<Shared>, load: &LoadOptions) {
    // A fresh look at the environment too: rotated tokens often arrive that way.
    let options = LoadOptions {
        file: load.file.clone(),
        env: std::env::vars().collect(),
    };
    match Settings::load(&options) {
        Ok(settings) => {
            let summary = shared.registry.reload(&settings);
            metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "ok").increment(1);
            metrics::gauge!(telemetry::PAGES).set(shared.registry.len() as f64);
            tracing::info!(
                added = summary.added,
                kept = summary.kept,
                removed = summary.removed,
                "Page registry reloaded"
            );
        }
        Err(e) => {
            metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "failed").increment(1);
            tracing::error!(error = %e, "reload rejected; keeping the current settings");
        }
    }
}

/// Periodic housekeeping: per-Page gauges, the ranking of per-Page labels, the exporter's upkeep.
async fn upkeep(shared: Arc<Shared>, metrics: Option<PrometheusHandle>, stop: CancellationToken) {
    let mut gauges = tokio::time::interval(Duration::from_secs(2));
    let mut rerank = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = gauges.tick() => {
                page_gauges(&shared);
                if let Some(handle) = &metrics {
                    handle.run_upkeep();
                }
            }
            _ = rerank.tick() => {
                let pages = shared.registry.all();
                let volumes: Vec<_> = pages
                    .iter()
                    .map(|p| (&p.id, telemetry::take_volume(&p.volume)))
                    .collect();
                shared.labels.rerank(volumes);
            }
        }
    }
}

fn page_gauges(shared: &Shared) {
    let now = tokio::time::Instant::now();
    let mut other_depth = 0usize;
    metrics::gauge!(telemetry::PAGES).set(shared.registry.len() as f64);
    for page in shared.registry.all() {
        let depth = page.lane_depth.load(Ordering::Relaxed);
        if !shared.labels.is_labelled(&page.id) {
            other_depth += depth;
            continue;
        }
        let id = page.id.to_string();
        let limiter = page.limiter();
        let (paused, cooldown, circuit) =
            page.with_control(|c| (c.paused(), c.cooldown_remaining(now), c.circuit_open()));
        metrics::gauge!(telemetry::PAGE_BUDGET, "page" => id.clone())
            .set(limiter.plan().budget as f64);
        metrics::gauge!(telemetry::PAGE_BUDGET_REMAINING, "page" => id.clone())
            .set(limiter.budget_remaining() as f64);
        metrics::gauge!(telemetry::PAGE_COOLDOWN, "page" => id.clone()).set(cooldown.as_secs_f64());
        metrics::gauge!(telemetry::PAGE_LANE_DEPTH, "page" => id.clone()).set(depth as f64);
        metrics::gauge!(telemetry::PAGE_CIRCUIT_OPEN, "page" => id.clone())
            .set(f64::from(u8::from(circuit)));
        for reason in [
            StopReason::TokenInvalid,
            StopReason::AppSecretInvalid,
            StopReason::PageBlocked,
        ] {
            metrics::gauge!(telemetry::PAGE_PAUSED, "page" => id.clone(), "reason" => reason.as_str())
                .set(f64::from(u8::from(paused == Some(reason))));
        }
    }
    metrics::gauge!(telemetry::PAGE_LANE_DEPTH, "page" => telemetry::OTHER_PAGES)
        .set(other_depth as f64);
    metrics::gauge!(telemetry::LANES).set(shared.lanes.len() as f64);
    telemetry::touch_event_gauges();
}
