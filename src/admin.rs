//! The admin HTTP listener: `/metrics` for Prometheus, `/healthz` (the process answers),
//! `/readyz` (connected, topology declared, consuming — with the failing check named), and
//! `/pages` (each Page's budget, ceilings, cooldown, lane depth and pause).
//!
//! It only reads shared state; it never changes what the pipeline does. Bound to loopback by
//! default: none of it needs to be public, and `/pages` lists every Page id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Audience;
use crate::pipeline::registry::{Admission, Registry};

/// The three readiness checks, set by the connection supervisor.
#[derive(Debug, Default)]
pub struct Health {
    pub connected: AtomicBool,
    pub topology_declared: AtomicBool,
    pub consuming: AtomicBool,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self.topology_declared.load(Ordering::Relaxed)
            && self.consuming.load(Ordering::Relaxed)
    }

    /// Marks everything down (connection lost, or shutting down).
    pub fn set_down(&self) {
        self.consuming.store(false, Ordering::Relaxed);
        self.topology_declared.store(false, Ordering::Relaxed);
        self.connected.store(false, Ordering::Relaxed);
    }
}

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub health: Arc<Health>,
    pub registry: Arc<Registry>,
    pub metrics: Option<PrometheusHandle>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/pages", get(pages))
        .with_state(state)
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process\n",
        )
            .into_response(),
    }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "alive" }))
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    checks: Checks,
    /// The first failing check, for humans.
    #[serde(skip_serializing_if = "Option::is_none")]
    failing: Option<&'static str>,
}

#[derive(Serialize)]
struct Checks {
    connected: bool,
    topology_declared: bool,
    consuming: bool,
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let h = &state.health;
    let checks = Checks {
        connected: h.connected.load(Ordering::Relaxed),
        topology_declared: h.topology_declared.load(Ordering::Relaxed),
        consuming: h.consuming.load(Ordering::Relaxed),
    };
    let failing = if !checks.connected {
        Some("connected")
    } else if !checks.topology_declared {
        Some("topology_declared")
    } else if !checks.consuming {
        Some("consuming")
    } else {
        None
    };
    let body = Readiness {
        ready: failing.is_none(),
        checks,
        failing,
    };
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

#[derive(Serialize)]
struct PageView {
    id: String,
    audience: u64,
    audience_source: &'static str,
    budget: u64,
    budget_remaining: u64,
    rps: u32,
    media_rps: u32,
    cooldown_remaining_seconds: f64,
    lane_depth: usize,
    paused: Option<&'static str>,
    circuit_open: bool,
    /// Why the Page may not send right now, if it may not.
    blocked: Option<&'static str>,
}

async fn pages(State(state): State<AdminState>) -> impl IntoResponse {
    let now = tokio::time::Instant::now();
    let views: Vec<PageView> = state
        .registry
        .all()
        .iter()
        .map(|page| {
            let config = page.config();
            let limiter = page.limiter();
            let (paused, cooldown, circuit_open) = page.with_control(|c| {
                (
                    c.paused().map(|p| p.as_str()),
                    c.cooldown_remaining(now),
                    c.circuit_open(),
                )
            });
            PageView {
                id: page.id.to_string(),
                audience: page.audience(),
                audience_source: match config.audience {
                    Audience::Fixed(_) => "configured",
                    Audience::Auto => "insights",
                },
                budget: limiter.plan().budget,
                budget_remaining: limiter.budget_remaining(),
                rps: config.ceilings.rps.get(),
                media_rps: config.ceilings.media_rps.get(),
                cooldown_remaining_seconds: cooldown.as_secs_f64(),
                lane_depth: page.lane_depth.load(Ordering::Relaxed),
                paused,
                circuit_open,
                blocked: match page.admission(now) {
                    Admission::Blocked { reason, .. } => Some(reason.as_str()),
                    Admission::Open | Admission::Probe => None,
                },
            }
        })
        .collect();
    axum::Json(views)
}
