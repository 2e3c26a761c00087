//! HTTP: the Graph endpoints, the `/_sim` admin endpoints, and the accept loop that serves them.
//!
//! This module turns requests into calls on [`Shared`] and results into responses, and applies the
//! request-level faults (outage, drop, 5xx, latency, timeout). The accept loop is hand-written on
//! hyper rather than `axum::serve` for one reason: a dropped connection must close the socket
//! *without writing a response*, which needs the service to return an error to hyper, and
//! `axum::serve` only takes infallible services. It speaks HTTP/1.1 with keep-alive.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::batch::{self, BatchForm};
use super::error::GraphError;
use super::faults::{
    self, Faults, Outage, OutageMode, OutageRequest, RequestDecision, RequestFate,
};
use super::limits::{self, Usage};
use super::pages::{Directory, Page, PageUpdate, proof_matches};
use super::record::{Delivery, Stats, Totals};
use super::send;
use super::state::{Call, Shared};

/// Largest request body accepted: 50 operations with 2000-character texts, percent-encoded twice,
/// fit comfortably.
const MAX_BODY: usize = 32 << 20;
/// How long shutdown waits for requests in flight before aborting their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Default and maximum page size of `GET /_sim/deliveries`.
const DELIVERIES_DEFAULT_LIMIT: usize = 1_000;
const DELIVERIES_MAX_LIMIT: usize = 100_000;

/// Marks a response that must not be sent: the connection is aborted instead.
#[derive(Debug, Clone, Copy)]
struct AbortConnection;

/// The error handed to hyper to make it drop the connection.
#[derive(Debug, thiserror::Error)]
#[error("connection aborted by graph-sim (fault injection)")]
struct Aborted;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{version}", post(batch_call).fallback(unknown_path))
        .route("/{version}/", post(batch_call).fallback(unknown_path))
        .route(
            "/{version}/{node}/messages",
            post(single_send).fallback(unknown_path),
        )
        .route(
            "/{version}/{node}/insights",
            get(insights).fallback(unknown_path),
        )
        .route(
            "/{version}/{node}/insights/{metric}",
            get(insights_metric).fallback(unknown_path),
        )
        .route("/_sim/deliveries", get(deliveries))
        .route("/_sim/stats", get(stats))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/pages", get(list_pages))
        .route("/_sim/pages/{id}", put(put_page))
        .route(
            "/_sim/outage",
            get(get_outage).post(post_outage).delete(delete_outage),
        )
        .fallback(unknown_path)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// Accepts connections until `cancel` fires, then lets requests in flight finish for a short grace
/// period and aborts the rest.
pub(crate) async fn serve(listener: TcpListener, router: Router, cancel: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Replies are written whole; Nagle would only add latency to them.
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, router.clone(), cancel.clone()));
                }
                Err(e) => {
                    // Typically EMFILE under load: back off briefly instead of spinning.
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    cancel: CancellationToken,
) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let router = router.clone();
        async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response.extensions().get::<AbortConnection>().is_some() {
                return Err(Aborted);
            }
            Ok::<_, Aborted>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(cause = %e, "connection ended with an error");
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

fn json_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        )],
        body,
    )
        .into_response()
}

fn graph_error(error: &GraphError, entropy: u64) -> Response {
    json_response(error.status, error.to_json(&faults::fbtrace_id(entropy)))
}

fn admin_error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

fn abort() -> Response {
    let mut response = Response::new(Body::empty());
    response.extensions_mut().insert(AbortConnection);
    response
}

fn with_usage_headers(mut response: Response, usages: &[(Arc<Page>, Usage)]) -> Response {
    if usages.is_empty() {
        return response;
    }
    let entries: Vec<(&str, Usage)> = usages.iter().map(|(p, u)| (&*p.id, *u)).collect();
    let app = Usage {
        call_count: usages.iter().map(|(_, u)| u.call_count).max().unwrap_or(0),
        time: usages.iter().map(|(_, u)| u.time).max().unwrap_or(0),
        regain_minutes: 0,
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&limits::business_use_case_usage(&entries)) {
        headers.insert("x-business-use-case-usage", value);
    }
    if let Ok(value) = HeaderValue::from_str(&limits::app_usage(app)) {
        headers.insert("x-app-usage", value);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Request-level faults

/// Applies an outage in force; `None` lets the request through.
fn outage_response(shared: &Shared) -> Option<Response> {
    match shared.outage_mode()? {
        OutageMode::Http503 => {
            Totals::add(&shared.totals.failed_requests, 1);
            Some(graph_error(&GraphError::server_error(503), shared.now_us()))
        }
        OutageMode::Drop => {
            Totals::add(&shared.totals.dropped, 1);
            Some(abort())
        }
    }
}

/// Applies a request's fault decision before anything runs; `None` lets it run.
async fn fate_response(shared: &Shared, decision: &RequestDecision) -> Option<Response> {
    match decision.fate {
        RequestFate::Drop => {
            Totals::add(&shared.totals.dropped, 1);
            Some(abort())
        }
        RequestFate::Fail(status) => {
            Totals::add(&shared.totals.failed_requests, 1);
            let response = graph_error(&GraphError::server_error(status), decision.entropy);
            Some(delayed(shared, decision.latency, response).await)
        }
        RequestFate::TimeOut | RequestFate::Normal => None,
    }
}

/// Sends a reply after the decision's latency, or after the timeout delay for a timed-out request.
async fn reply_after(shared: &Shared, decision: &RequestDecision, response: Response) -> Response {
    let delay = if decision.fate == RequestFate::TimeOut {
        Totals::add(&shared.totals.timed_out, 1);
        Duration::from_millis(shared.faults.load().timeout_delay_ms)
    } else {
        decision.latency
    };
    delayed(shared, delay, response).await
}

async fn delayed(shared: &Shared, delay: Duration, response: Response) -> Response {
    if delay.is_zero() {
        return response;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => response,
        _ = shared.cancel.cancelled() => abort(),
    }
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth"))
        .then(|| token.trim().to_owned())
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Authenticates a request-level token (and its proof, when an app secret is configured).
fn authenticate<'d>(
    shared: &Shared,
    directory: &'d Directory,
    token: Option<&str>,
    proof: Option<&str>,
) -> Result<&'d Arc<Page>, GraphError> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or_else(GraphError::token_missing)?;
    let page = directory.authenticate(token)?;
    if let Some(secret) = &shared.app_secret
        && !proof_matches(secret, token, proof.unwrap_or(""))
    {
        return Err(GraphError::appsecret_proof_invalid());
    }
    Ok(page)
}

// ---------------------------------------------------------------------------------------------
// Graph endpoints

async fn batch_call(
    State(shared): State<Arc<Shared>>,
    Path(version): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !batch::is_version(&version) {
        return graph_error(&GraphError::unknown_path(&format!("/{version}")), 0);
    }
    if let Some(response) = outage_response(&shared) {
        return response;
    }
    Totals::add(&shared.totals.batches, 1);
    let form = match batch::decode_form(content_type(&headers), query.as_deref(), &body) {
        Ok(form) => form,
        Err(error) => {
            return graph_error(&error, faults::hash_bytes(shared.seed, &body));
        }
    };
    let raw = form.batch.as_deref().unwrap_or("");
    let decision =
        shared.decide_request(faults::hash_parts(shared.seed, &[b"batch", raw.as_bytes()]));
    if let Some(response) = fate_response(&shared, &decision).await {
        return response;
    }
    let response = run_batch(&shared, &form, &decision);
    reply_after(&shared, &decision, response).await
}

/// The synchronous part of a batch: authenticate, parse, execute, encode. No lock is held when it
/// returns.
fn run_batch(shared: &Shared, form: &BatchForm, decision: &RequestDecision) -> Response {
    let directory = shared.registry.load();
    let caller = match authenticate(
        shared,
        &directory,
        form.access_token.as_deref(),
        form.appsecret_proof.as_deref(),
    ) {
        Ok(page) => page,
        Err(error) => return graph_error(&error, decision.entropy),
    };
    let Some(raw) = form.batch.as_deref() else {
        return graph_error(&GraphError::batch_missing(), decision.entropy);
    };
    let ops = match batch::parse_ops(raw) {
        Ok(ops) => ops,
        Err(error) => return graph_error(&error, decision.entropy),
    };
    Totals::add(&shared.totals.ops, ops.len() as u64);
    let contents: Vec<u64> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| match op {
            Ok(op) => op.content_hash(shared.seed),
            Err(_) => {
                faults::hash_parts(shared.seed, &[b"bad-op", raw.as_bytes(), &i.to_le_bytes()])
            }
        })
        .collect();
    let decisions = shared.decide_ops(&contents);
    let mut rng = faults::SplitMix64::new(decision.entropy);
    let batch_seq = shared.next_batch_seq();
    let executed = batch::execute(
        shared, &directory, caller, ops, &decisions, &mut rng, batch_seq,
    );
    let body = executed.encode(form.include_headers);
    let usages = batch::current_usage(shared, &executed.pages());
    with_usage_headers(json_response(200, body), &usages)
}

async fn single_send(
    State(shared): State<Arc<Shared>>,
    Path((version, node)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !batch::is_version(&version) {
        return graph_error(&GraphError::unknown_path(&format!("/{version}")), 0);
    }
    if let Some(response) = outage_response(&shared) {
        return response;
    }
    Totals::add(&shared.totals.single_sends, 1);
    Totals::add(&shared.totals.ops, 1);
    let is_json = content_type(&headers).is_some_and(|ct| ct.starts_with("application/json"));
    let mut decoded = if is_json {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Object(object)) => send::decode_json(object),
            _ => {
                let error = GraphError::param("(#100) The request body must be a JSON object");
                return graph_error(&error, faults::hash_bytes(shared.seed, &body));
            }
        }
    } else {
        send::decode_form(&body)
    };
    let token = decoded
        .access_token
        .take()
        .or_else(|| query_param(query.as_deref(), "access_token"))
        .or_else(|| bearer_token(&headers));
    let proof = decoded
        .appsecret_proof
        .take()
        .or_else(|| query_param(query.as_deref(), "appsecret_proof"));
    let decision = shared.decide_request(faults::hash_parts(
        shared.seed,
        &[b"send", node.as_bytes(), &body],
    ));
    if let Some(response) = fate_response(&shared, &decision).await {
        return response;
    }
    let response = {
        let directory = shared.registry.load();
        match authenticate(&shared, &directory, token.as_deref(), proof.as_deref()) {
            Err(error) => graph_error(&error, decision.entropy),
            Ok(caller) => {
                // A single send has no `null`: only the transient and throttle parts of the item
                // faults apply.
                let op_decision = shared
                    .faults
                    .load()
                    .decide_op(faults::mix(decision.entropy));
                let call = Call { node, decoded };
                let mut outcome = shared.execute(&directory, caller, &call, &op_decision, 0);
                shared
                    .record
                    .append(outcome.delivered.take().into_iter().collect());
                let usages: Vec<(Arc<Page>, Usage)> = match (&outcome.page, outcome.usage) {
                    (Some(page), Some(usage)) => vec![(page.clone(), usage)],
                    _ => Vec::new(),
                };
                with_usage_headers(json_response(outcome.status, outcome.body), &usages)
            }
        }
    };
    reply_after(&shared, &decision, response).await
}

/// The one insights metric the simulator knows.
const CONNECTIONS_METRIC: &str = "page_messages_total_messaging_connections";

async fn insights(
    State(shared): State<Arc<Shared>>,
    Path((version, node)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let metric = query_param(query.as_deref(), "metric");
    insights_reply(&shared, &version, &node, metric, query.as_deref(), &headers)
}

async fn insights_metric(
    State(shared): State<Arc<Shared>>,
    Path((version, node, metric)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    insights_reply(
        &shared,
        &version,
        &node,
        Some(metric),
        query.as_deref(),
        &headers,
    )
}

/// Insights are read rarely; they honour outages but not the per-request fault rates.
fn insights_reply(
    shared: &Shared,
    version: &str,
    node: &str,
    metric: Option<String>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    if !batch::is_version(version) {
        return graph_error(&GraphError::unknown_path(&format!("/{version}")), 0);
    }
    if let Some(response) = outage_response(shared) {
        return response;
    }
    let entropy = faults::hash_parts(shared.seed, &[b"insights", node.as_bytes()]);
    let directory = shared.registry.load();
    let token = query_param(query, "access_token").or_else(|| bearer_token(headers));
    let proof = query_param(query, "appsecret_proof");
    let caller = match authenticate(shared, &directory, token.as_deref(), proof.as_deref()) {
        Ok(page) => page,
        Err(error) => return graph_error(&error, entropy),
    };
    let page = match directory.page(node) {
        None if node == "me" => caller,
        None => return graph_error(&GraphError::unknown_object(node), entropy),
        Some(page) if page.index != caller.index => {
            return graph_error(&GraphError::wrong_page(node), entropy);
        }
        Some(page) => page,
    };
    let metrics: Vec<&str> = metric.as_deref().unwrap_or("").split(',').collect();
    if let Some(unknown) = metrics.iter().find(|m| **m != CONNECTIONS_METRIC) {
        return graph_error(&GraphError::unknown_insights_metric(unknown), entropy);
    }
    let body = insights_body(
        &page.id,
        page.previous_audience(),
        page.audience(),
        Utc::now(),
    );
    json_response(200, body.to_string())
}

/// Two daily values ending at the latest 07:00 UTC (midnight Pacific, daylight time), the newest
/// being the current audience.
fn insights_body(
    page_id: &str,
    previous: u64,
    current: u64,
    now: DateTime<Utc>,
) -> serde_json::Value {
    let mut end = now
        .with_hour(7)
        .and_then(|t| t.with_minute(0))
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now);
    if end > now {
        end -= ChronoDuration::days(1);
    }
    let stamp = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S+0000").to_string();
    json!({
        "data": [{
            "name": CONNECTIONS_METRIC,
            "period": "day",
            "values": [
                {"value": previous, "end_time": stamp(end - ChronoDuration::days(1))},
                {"value": current, "end_time": stamp(end)},
            ],
            "title": "Daily: Total Messaging Connections",
            "description": "Daily: The number of people who have sent a message to your business, not including people who have blocked or reported your business on Messenger. (This number only includes connections made since October 2016.)",
            "id": format!("{page_id}/insights/{CONNECTIONS_METRIC}/day"),
        }],
        "paging": {}
    })
}

async fn unknown_path(uri: axum::http::Uri) -> Response {
    graph_error(&GraphError::unknown_path(uri.path()), 0)
}

// ---------------------------------------------------------------------------------------------
// Admin endpoints

#[derive(Debug, Deserialize)]
struct DeliveriesQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn deliveries(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<DeliveriesQuery>,
) -> Response {
    let limit = q
        .limit
        .unwrap_or(DELIVERIES_DEFAULT_LIMIT)
        .min(DELIVERIES_MAX_LIMIT);
    let entries = shared.record.read(q.after.unwrap_or(0), limit);
    let directory = shared.registry.load();
    let mut out = String::with_capacity(entries.len() * 256);
    for (seq, stored) in &entries {
        let page = directory.by_index(stored.page);
        let delivery = Delivery::from_stored(*seq, stored, &page.id, shared.start_unix_us());
        out.push_str(&serde_json::to_string(&delivery).expect("deliveries serialise"));
        out.push('\n');
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        out,
    )
        .into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let now = shared.now_us();
    let directory = shared.registry.load();
    let pages = directory
        .pages()
        .iter()
        .map(|page| {
            let limits = page.limits();
            let mut state = page.lock();
            let in_window = state.limiter.calls_in_window(now);
            let view = state
                .counters
                .view(in_window, limits.budget, page.audience());
            (page.id.to_string(), view)
        })
        .collect();
    let stats = Stats {
        uptime_ms: now / 1000,
        budget_window_ms: shared.budget_window_us / 1000,
        totals: shared.totals.view(),
        pages,
    };
    axum::Json(stats).into_response()
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(Faults::clone(&shared.faults.load())).into_response()
}

async fn put_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(faults) => faults,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = faults.validate() {
        return admin_error(StatusCode::BAD_REQUEST, e);
    }
    tracing::info!(?faults, "faults changed");
    shared.faults.store(Arc::new(faults.clone()));
    axum::Json(faults).into_response()
}

async fn list_pages(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.registry.views()).into_response()
}

async fn put_page(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let update: PageUpdate = match serde_json::from_slice(&body) {
        Ok(update) => update,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, e),
    };
    match shared.registry.upsert(&id, &update) {
        Ok(view) => {
            tracing::info!(page = %id, audience = view.audience, revoked = view.revoked, "page changed");
            axum::Json(view).into_response()
        }
        Err(e) => admin_error(StatusCode::BAD_REQUEST, e),
    }
}

fn outage_view(shared: &Shared) -> Response {
    let outage = *shared.outage.lock().unwrap_or_else(|e| e.into_inner());
    axum::Json(Outage::view(outage, shared.now_us())).into_response()
}

async fn get_outage(State(shared): State<Arc<Shared>>) -> Response {
    outage_view(&shared)
}

async fn post_outage(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: OutageRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, e),
    };
    let until_us = request
        .duration_ms
        .map(|ms| shared.now_us().saturating_add(ms.saturating_mul(1000)));
    *shared.outage.lock().unwrap_or_else(|e| e.into_inner()) = Some(Outage {
        mode: request.mode,
        until_us,
    });
    tracing::info!(mode = ?request.mode, duration_ms = ?request.duration_ms, "outage started");
    outage_view(&shared)
}

async fn delete_outage(State(shared): State<Arc<Shared>>) -> Response {
    *shared.outage.lock().unwrap_or_else(|e| e.into_inner()) = None;
    tracing::info!("outage ended");
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn insights_values_end_at_the_latest_day_boundary() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 5, 30, 0).unwrap();
        let body = insights_body("42", 10, 12, now);
        let values = &body["data"][0]["values"];
        assert_eq!(values[1]["value"], 12);
        assert_eq!(values[1]["end_time"], "2026-11-21T07:00:00+0000");
        assert_eq!(values[0]["end_time"], "2026-11-20T07:00:00+0000");
        assert_eq!(
            body["data"][0]["id"],
            "42/insights/page_messages_total_messaging_connections/day"
        );
    }

    #[test]
    fn bearer_tokens_are_read_from_authorization() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&headers).as_deref(), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
    }
}
