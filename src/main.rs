//! The `pagerelay` command line: parses arguments, loads settings, and calls the library.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use pagerelay::amqp::{Session, Topology};
use pagerelay::config::{LoadOptions, LogFormat, Settings};
use pagerelay::pipeline::supervisor::Control;

/// glibc's allocator spends a third of the daemon's CPU under its many small, cross-thread
/// allocations (decoded jobs, frames, futures); mimalloc does the same work for a fraction.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for configuration and usage errors (clap uses the same for bad arguments).
const EXIT_CONFIG: u8 = 2;

/// Exit status of `validate` when some job is invalid.
const EXIT_INVALID: u8 = 1;

/// Exit status of `validate` when the input cannot be read (or the verdicts cannot be written).
const EXIT_UNREADABLE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "pagerelay",
    version,
    about = "Delivers Messenger send jobs from RabbitMQ through rate-limited Graph API batches"
)]
struct Cli {
    /// Settings file (TOML). Without it, built-in defaults and PAGERELAY__* variables apply.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "PAGERELAY_CONFIG",
        value_name = "PATH"
    )]
    config: Option<PathBuf>,

    /// Log format; overrides `logging.format`.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<CliLogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliLogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the delivery daemon until SIGTERM or SIGINT (SIGHUP reloads the Page registry).
    Run,
    /// Load and validate the settings, then print them with every secret redacted.
    CheckConfig,
    /// Manage the broker topology.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Check send jobs offline, one JSON job per line, without a broker.
    ///
    /// Prints one verdict per job to standard output: `ok <job_id>`, or `ok -` for a job without a
    /// job_id (the pipeline would take the AMQP message_id or generate one), or
    /// `invalid <line>: <reason>` with the line number counted from 1. Blank lines are skipped.
    /// Jobs are checked as if published with no routing key, message_id or content_type, so the
    /// routing-key agreement is not checked. A count goes to standard error.
    ///
    /// Exit status: 0 when every job is valid (or there are none), 1 when any job is invalid,
    /// 2 when the input cannot be read.
    Validate {
        /// JSON Lines file to check; `-` or nothing reads standard input.
        #[arg(value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Publish JSON-lines jobs (from FILE, or standard input with - or no FILE) to the jobs
    /// exchange, with publisher confirms, routed by their page_id.
    Publish {
        #[arg(value_name = "FILE")]
        input: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Declare every exchange, queue and binding (idempotent) and list them.
    Declare,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = LoadOptions::from_process(cli.config.clone());
    let settings = match Settings::load(&options) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("pagerelay: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let format = match cli.log_format {
        Some(CliLogFormat::Json) => LogFormat::Json,
        Some(CliLogFormat::Pretty) => LogFormat::Pretty,
        None => settings.logging.format,
    };
    if let Err(e) = pagerelay::telemetry::init_tracing(format, &settings.logging.level) {
        eprintln!("pagerelay: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Run => run(settings, options).await,
        Command::CheckConfig => {
            print!("{}", settings.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Topology {
            command: TopologyCommand::Declare,
        } => declare(&settings).await,
        Command::Publish { input } => publish(&settings, input).await,
        Command::Validate { input } => Ok(validate(input.as_deref())),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pagerelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings, options: LoadOptions) -> anyhow::Result<ExitCode> {
    let metrics = pagerelay::telemetry::install_recorder()?;
    let shutdown = CancellationToken::new();
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                    _ = hangup.recv() => {
                        tracing::info!("SIGHUP: reloading the Page registry");
                        let _ = reload_tx.send(());
                        continue;
                    }
                }
                if shutdown.is_cancelled() {
                    // Nothing is lost by leaving now: every unacked delivery returns to its queue
                    // when the connection drops.
                    tracing::warn!("second signal: exiting at once");
                    std::process::exit(130);
                }
                tracing::info!("shutting down (a second signal exits at once)");
                shutdown.cancel();
            }
        });
    }
    let control = Control {
        shutdown,
        reload: reload_rx,
    };
    pagerelay::pipeline::run(settings, options, Some(metrics), control).await?;
    Ok(ExitCode::SUCCESS)
}

async fn declare(settings: &Settings) -> anyhow::Result<ExitCode> {
    let topology = Topology::new(&settings.amqp, &settings.retry.tiers);
    let session = Session::open(&settings.amqp, &topology, 0, "pagerelay topology declare")
        .await
        .context("declaring the topology")?;
    session.close().await;
    println!(
        "exchange {} ({} shard{})",
        topology.jobs_exchange(),
        topology.shards(),
        if topology.shards() == 1 { "" } else { "s" }
    );
    println!("exchange {}", topology.delay_exchange());
    println!("exchange {}", topology.dead_exchange());
    for queue in topology.all_queues() {
        println!("queue {queue}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn publish(settings: &Settings, input: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let topology = Topology::new(&settings.amqp, &settings.retry.tiers);
    let session = tokio::time::timeout(
        pagerelay::publish::CONNECT_TIMEOUT,
        Session::open(&settings.amqp, &topology, 0, "pagerelay publish"),
    )
    .await
    .context("connecting to the broker timed out")?
    .context("connecting to the broker")?;
    let reader: Box<dyn BufRead + Send> = match input.as_deref() {
        None => Box::new(BufReader::new(io::stdin())),
        Some(p) if p.as_os_str() == "-" => Box::new(BufReader::new(io::stdin())),
        Some(p) => Box::new(BufReader::new(
            File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
    };
    let summary = pagerelay::publish::publish_lines(reader, &session.publisher, &topology).await?;
    session.close().await;
    println!(
        "published {} jobs to {}",
        summary.published,
        topology.jobs_exchange()
    );
    Ok(ExitCode::SUCCESS)
}

fn validate(input: Option<&Path>) -> ExitCode {
    let stdout = BufWriter::new(io::stdout().lock());
    let (name, result) = match input.filter(|path| *path != Path::new("-")) {
        Some(path) => match File::open(path) {
            Ok(file) => (
                path.display().to_string(),
                pagerelay::job::validate_lines(BufReader::new(file), stdout),
            ),
            Err(e) => {
                eprintln!("pagerelay: cannot read {}: {e}", path.display());
                return ExitCode::from(EXIT_UNREADABLE);
            }
        },
        None => (
            "standard input".to_owned(),
            pagerelay::job::validate_lines(io::stdin().lock(), stdout),
        ),
    };
    match result {
        Ok(summary) => {
            eprintln!(
                "pagerelay: {} valid, {} invalid",
                summary.valid, summary.invalid
            );
            if summary.all_valid() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_INVALID)
            }
        }
        Err(e) => {
            eprintln!("pagerelay: validating {name}: {e}");
            ExitCode::from(EXIT_UNREADABLE)
        }
    }
}
