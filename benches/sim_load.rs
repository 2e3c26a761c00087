//! Load generator for graph-sim: measures the simulator's ceiling in operations per second, with
//! batches of 50 text sends over keep-alive connections and no faults. Every batch has new content
//! (fresh recipients and texts), as pagerelay's traffic would, so the simulator's per-content
//! bookkeeping grows as it would in a benchmark.
//!
//! ```text
//! cargo bench --bench sim_load                       # starts a simulator in this process
//! SIM_URL=http://127.0.0.1:8090 SIM_TOKEN=tok cargo bench --bench sim_load
//! ```
//!
//! Environment: `SIM_LOAD_SECS` (default 5), `SIM_LOAD_CONNECTIONS` (default 8). With `SIM_URL`
//! the target must have a Page for `SIM_TOKEN` with limits high enough not to throttle.
//! `benches/sim_load.lua` is the same load for `wrk` (repeated content).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pagerelay::sim::{PageConfig, SimConfig, Simulator};

const OPS_PER_BATCH: usize = 50;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let secs: u64 = env_or("SIM_LOAD_SECS", 5);
    let connections: usize = env_or("SIM_LOAD_CONNECTIONS", 8);
    let (url, token, simulator) = match std::env::var("SIM_URL") {
        Ok(url) => (url, std::env::var("SIM_TOKEN").unwrap_or_default(), None),
        Err(_) => {
            let page = PageConfig::new("100000000000001", "load-token", 1_000_000_000)
                .with_rps(u64::MAX / 2);
            let sim = Simulator::start(SimConfig::default().with_page(page))
                .await
                .expect("simulator starts");
            (sim.base_url(), "load-token".to_owned(), Some(sim))
        }
    };
    let endpoint = format!("{url}/v21.0/");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let (endpoint, token, ops, errors) =
            (endpoint.clone(), token.clone(), ops.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("an HTTP client");
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let body = batch_body(&token, connection as u64, n);
                let sent = Instant::now();
                let result = client
                    .post(&endpoint)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await;
                match result {
                    Ok(response) if response.status() == 200 => {
                        let text = response.text().await.unwrap_or_default();
                        let refused = text.matches("\"error\"").count() as u64;
                        ops.fetch_add(OPS_PER_BATCH as u64 - refused, Ordering::Relaxed);
                        errors.fetch_add(refused, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(OPS_PER_BATCH as u64, Ordering::Relaxed);
                    }
                }
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("load task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: usize| {
        latencies
            .get(latencies.len() * p / 100)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let ok = ops.load(Ordering::Relaxed);
    println!(
        "graph-sim load: {connections} connections, {secs} s, batches of {OPS_PER_BATCH}: \
         {:.0} ops/s ({:.0} batches/s), latency p50 {:.2} ms p99 {:.2} ms, errors {}",
        ok as f64 / elapsed,
        latencies.len() as f64 / elapsed,
        pct(50),
        pct(99),
        errors.load(Ordering::Relaxed),
    );
    if let Some(sim) = simulator {
        sim.shutdown().await;
    }
}

/// A form-encoded batch of 50 distinct text sends.
fn batch_body(token: &str, connection: u64, n: u64) -> String {
    let ops: Vec<serde_json::Value> = (0..OPS_PER_BATCH)
        .map(|i| {
            let psid = format!("7{connection:03}{n:09}{i:02}");
            let body = form_urlencoded::Serializer::new(String::new())
                .append_pair("recipient", &format!(r#"{{"id":"{psid}"}}"#))
                .append_pair("messaging_type", "UPDATE")
                .append_pair(
                    "message",
                    &format!(r#"{{"text":"Your order {n}-{i} has shipped."}}"#),
                )
                .finish();
            serde_json::json!({
                "method": "POST",
                "relative_url": "me/messages",
                "body": body,
                "omit_response_on_success": false,
            })
        })
        .collect();
    form_urlencoded::Serializer::new(String::new())
        .append_pair("access_token", token)
        .append_pair("include_headers", "false")
        .append_pair("batch", &serde_json::Value::Array(ops).to_string())
        .finish()
}
