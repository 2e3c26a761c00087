//! The `graph-sim` command: a Graph API (batch + Messenger Send API) simulator for pagerelay's tests,
//! benchmarks and demo. Parses options into a `SimConfig`, prints the bound address as the first
//! line of standard output, and serves until SIGINT or SIGTERM.
//!
//! Everything it does is in `pagerelay::sim`; this file only wires the command line to it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use pagerelay::sim::{Faults, PageConfig, SimConfig, Simulator};

/// The simulator shares the machine with what it measures: a faster allocator keeps its share small.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "graph-sim",
    version,
    about = "Simulates the Graph API batch call and the Messenger Send API for pagerelay",
    long_about = "Simulates the Graph API batch call and the Messenger Send API for pagerelay.\n\n\
        Prints `graph-sim listening on http://ADDR` as the first line of standard output, then \
        serves until SIGINT or SIGTERM. Admin API under /_sim (deliveries, stats, faults, pages, \
        outage). Logs go to standard error (RUST_LOG overrides --log-level)."
)]
struct Cli {
    /// Address to listen on (port 0 picks a free port; read it from the first output line).
    #[arg(long, default_value = "127.0.0.1:8090", value_name = "ADDR")]
    listen: SocketAddr,

    /// Seed for every fault decision, message id and execution order.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Pages file (TOML): [[pages]] tables with id, token (or tokens = [..]), audience, and
    /// optional rps and media_rps.
    #[arg(long, value_name = "FILE")]
    pages: Option<PathBuf>,

    /// A Page as ID:TOKEN:AUDIENCE; repeat for several. Adds to --pages.
    #[arg(long = "page", value_name = "ID:TOKEN:AUDIENCE")]
    page: Vec<PageConfig>,

    /// Name of an environment variable holding the app secret; when set, every token must come
    /// with a matching appsecret_proof.
    #[arg(long, value_name = "VAR")]
    app_secret_env: Option<String>,

    /// Default per-Page ceiling, calls per rolling second.
    #[arg(long, default_value_t = 300, value_name = "N")]
    rps_limit: u64,

    /// Default per-Page ceiling for audio and video sends, per rolling second.
    #[arg(long, default_value_t = 10, value_name = "N")]
    media_rps_limit: u64,

    /// Divides the 24 h budget window (1440: the window lasts one minute). The per-second
    /// ceilings stay in real seconds.
    #[arg(long, default_value_t = 1.0, value_name = "K")]
    time_scale: f64,

    /// Median latency added to each request, in ms (0: none).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    latency_p50_ms: u64,

    /// 99th percentile latency in ms (log-normal with the median; equal to the median: fixed).
    /// Defaults to the median.
    #[arg(long, value_name = "MS")]
    latency_p99_ms: Option<u64>,

    /// Share of requests answered with HTTP 500 before running anything.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    batch_500_rate: f64,

    /// Share of requests answered with HTTP 503 before running anything.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    batch_503_rate: f64,

    /// Share of requests whose connection is aborted without a reply (nothing runs).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    drop_rate: f64,

    /// Share of requests that run, are recorded, and then reply only after --timeout-delay-ms.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    timeout_rate: f64,

    /// How long a timed-out request's reply is held back, in ms.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    timeout_delay_ms: u64,

    /// Share of batch items answered null (not run, not recorded).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    item_null_rate: f64,

    /// Share of items failing with a transient error (code 2 or 1200, is_transient).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    item_transient_rate: f64,

    /// Share of items (and single sends) refused with an injected rate-limit error (code 613,
    /// subcode 2534040) although the real limits are not reached. Counted like a real 613, not
    /// recorded as delivered.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    item_throttle_rate: f64,

    /// estimated_time_to_regain_access (minutes) reported in X-Business-Use-Case-Usage for the
    /// Page of an item throttled by --item-throttle-rate (the real estimate wins if longer).
    #[arg(long, default_value_t = 0, value_name = "MINUTES")]
    throttle_regain_minutes: u64,

    /// Log filter when RUST_LOG is not set.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log_level: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cli.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = match config_from(cli) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("graph-sim: {message}");
            return ExitCode::from(2);
        }
    };
    let simulator = match Simulator::start(config).await {
        Ok(simulator) => simulator,
        Err(e) => {
            eprintln!("graph-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Scripts read this line to find the port; flush so they are not left waiting on a buffer.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "graph-sim listening on {}", simulator.base_url());
    let _ = stdout.flush();
    wait_for_signal().await;
    tracing::info!("shutting down");
    simulator.shutdown().await;
    ExitCode::SUCCESS
}

fn config_from(cli: Cli) -> Result<SimConfig, String> {
    let mut pages = match &cli.pages {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            PageConfig::parse_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Vec::new(),
    };
    pages.extend(cli.page);
    if pages.is_empty() {
        tracing::warn!("no Pages configured: every token is invalid until PUT /_sim/pages/{{id}}");
    }
    let app_secret = match &cli.app_secret_env {
        Some(var) => {
            Some(std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?)
        }
        None => None,
    };
    let faults = Faults {
        batch_500_rate: cli.batch_500_rate,
        batch_503_rate: cli.batch_503_rate,
        drop_rate: cli.drop_rate,
        timeout_rate: cli.timeout_rate,
        timeout_delay_ms: cli.timeout_delay_ms,
        latency_p50_ms: cli.latency_p50_ms,
        latency_p99_ms: cli.latency_p99_ms.unwrap_or(cli.latency_p50_ms),
        item_null_rate: cli.item_null_rate,
        item_transient_rate: cli.item_transient_rate,
        item_throttle_rate: cli.item_throttle_rate,
        throttle_regain_minutes: cli.throttle_regain_minutes,
    };
    Ok(SimConfig {
        listen: cli.listen,
        seed: cli.seed,
        pages,
        app_secret,
        rps_limit: cli.rps_limit,
        media_rps_limit: cli.media_rps_limit,
        time_scale: cli.time_scale,
        faults,
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(cause = %e, "cannot listen for SIGTERM; only SIGINT stops graph-sim");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
