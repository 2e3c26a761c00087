//! The `pagerelay` command line: parses arguments, loads settings, and calls the library.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use pagerelay::amqp::{Session, Topology};
use pagerelay::config::{LoadOptions, LogFormat, Settings};
use pagerelay::dlq::{self, Action, CodeFilter, DeadLetters, DlqError, Filter, Letter, ReasonName};
use pagerelay::pipeline::supervisor::Control;

/// glibc's allocator spends a third of the daemon's CPU under its many small, cross-thread
/// allocations (decoded jobs, frames, futures); mimalloc does the same work for a fraction.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for the daemon. mimalloc asks for them on its arenas, and
/// under the daemon's churn of short-lived allocations the kernel kept zeroing fresh 2 MB pages
/// (`clear_page_erms` under `vma_alloc_anon_folio_pmd`, 4.6 % of the CPU in the cost benchmark)
/// for memory that was soon purged again; with 4 KB pages the same run takes ~6 % less CPU and
/// peaks ~20 MB lower (benches/RESULTS.md). Advisory: where the kernel refuses, nothing changes.
fn refuse_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(error = %e, "transparent huge pages stay on");
    }
}

/// Exit status for configuration and usage errors (clap uses the same for bad arguments).
const EXIT_CONFIG: u8 = 2;

/// Exit status of `validate` when some job is invalid.
const EXIT_INVALID: u8 = 1;

/// Exit status of `validate` when the input cannot be read (or the verdicts cannot be written).
const EXIT_UNREADABLE: u8 = 2;

/// Exit status of `replay` when a guardrail refused some matching dead letters (or the Pages
/// could not be checked): the operator has something to fix or to override.
const EXIT_REFUSED: u8 = 3;

/// Exit status of `replay` when a signal stopped it (the shell's convention for SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

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
    /// Inspect the dead-letter queue (<prefix>.dead) without changing it.
    ///
    /// Both commands read the whole queue and hand every message back in its order; each run
    /// raises the messages' x-delivery-count by one (see the README before using RabbitMQ 4.x).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Move dead letters that match the filters back to the jobs exchange, routed by their Page.
    ///
    /// Each moved letter is republished with its attempts and parking state reset and replay
    /// provenance added, and removed from the dead-letter queue only after the broker confirmed
    /// the republish; everything else stays in place. Letters of Pages the daemon reports paused
    /// or does not know, invalid and ambiguous letters are refused unless overridden. Fix the
    /// cause first, and look with --dry-run.
    ///
    /// Exit status: 0 when everything that matched was moved (or nothing matched), 1 on an
    /// error, 2 on a usage error, 3 when a guardrail refused some letters (or the daemon could
    /// not be asked), 130 when interrupted. Running it again after an interruption finishes it.
    Replay(ReplayArgs),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Count the dead letters' jobs by reason, by error code and by Page, with the oldest and
    /// newest dead-lettering times (a park bundle counts once for each job in it).
    Stats {
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Name this many Pages, the largest first; the rest are summed.
        #[arg(long, value_name = "N", default_value_t = 10)]
        top: usize,
    },
    /// Print the first N dead letters that match the filters, in queue order, one JSON object
    /// per line: the job, the reason, the error, attempts, times, Page, routing key, ids.
    Peek {
        /// How many to print.
        #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 10)]
        count: usize,
        #[command(flatten)]
        filter: FilterArgs,
    },
}

/// Which dead letters: values of one option are alternatives, options combine.
#[derive(Debug, Args)]
struct FilterArgs {
    /// Letters of this Page (repeatable).
    #[arg(long = "page", value_name = "PAGE_ID", value_parser = dlq::filter::parse_page)]
    pages: Vec<String>,
    /// Letters dead-lettered for this reason: token_invalid, permanent, invalid, ambiguous,
    /// expired, max_attempts, unknown_error, unknown_page, appsecret_invalid, page_blocked,
    /// park_limit, broker:<reason> (e.g. broker:delivery_limit) or unknown (repeatable).
    #[arg(long = "reason", value_name = "REASON")]
    reasons: Vec<ReasonName>,
    /// Letters whose last Graph error has this code, or code and subcode (repeatable).
    #[arg(long = "code", value_name = "CODE[/SUBCODE]")]
    codes: Vec<CodeFilter>,
    /// Letters dead-lettered at least this long ago (90s, 15m, 2h, 3d).
    #[arg(long, value_name = "AGE", value_parser = dlq::filter::parse_age)]
    older_than: Option<Duration>,
    /// Letters dead-lettered at most this long ago.
    #[arg(long, value_name = "AGE", value_parser = dlq::filter::parse_age)]
    newer_than: Option<Duration>,
    /// The letter of this job (the body's job_id or the message_id, also of a job inside a park
    /// bundle, which then moves whole; repeatable).
    #[arg(long = "job-id", value_name = "JOB_ID")]
    job_ids: Vec<String>,
}

impl FilterArgs {
    fn into_filter(self) -> Filter {
        Filter {
            pages: self.pages,
            reasons: self.reasons,
            codes: self.codes,
            older_than: self.older_than,
            newer_than: self.newer_than,
            job_ids: self.job_ids,
        }
    }
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Replay every dead letter; required when no filter is given.
    #[arg(long)]
    all: bool,
    /// Move at most N letters (the first N that match, in queue order).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Print what would move (one JSON object per matching letter) and move nothing.
    #[arg(long)]
    dry_run: bool,
    /// Republish at most this many letters per second (default: as fast as confirms allow).
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<f64>,
    /// Replay Pages the daemon reports paused or does not know, and replay when the daemon's
    /// admin endpoint cannot be reached.
    #[arg(long)]
    force: bool,
    /// Replay `invalid` letters too (they fail validation again unless the job contract changed).
    #[arg(long)]
    include_invalid: bool,
    /// Replay `ambiguous` letters too (the Graph API may have delivered them already).
    #[arg(long)]
    include_ambiguous: bool,
    /// The daemon's admin endpoint to ask about Pages (default: http://<admin.listen>).
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// Print the summary as JSON on standard output (as the last line, {"summary": …}).
    #[arg(long)]
    json: bool,
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
        Command::Dlq {
            command: DlqCommand::Stats { json, top },
        } => dlq_stats(&settings, json, top).await,
        Command::Dlq {
            command: DlqCommand::Peek { count, filter },
        } => dlq_peek(&settings, count, filter.into_filter()).await,
        Command::Replay(args) => replay(&settings, args).await,
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
    refuse_transparent_huge_pages();
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

async fn connect(settings: &Settings, name: &str) -> anyhow::Result<lapin::Connection> {
    pagerelay::amqp::session::connect(&settings.amqp, name)
        .await
        .context("connecting to the broker")
}

async fn dlq_stats(settings: &Settings, json: bool, top: usize) -> anyhow::Result<ExitCode> {
    let topology = Topology::new(&settings.amqp, &settings.retry.tiers);
    let connection = connect(settings, "pagerelay dlq stats").await?;
    let result = DeadLetters::new(&connection, &topology).stats(top).await;
    let _ = connection.close(200, "done".into()).await;
    let stats = result?;
    if json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        print!("{}", stats.render(chrono::Utc::now()));
    }
    Ok(ExitCode::SUCCESS)
}

async fn dlq_peek(settings: &Settings, count: usize, filter: Filter) -> anyhow::Result<ExitCode> {
    let topology = Topology::new(&settings.amqp, &settings.retry.tiers);
    let connection = connect(settings, "pagerelay dlq peek").await?;
    let mut out = io::stdout().lock();
    let result = DeadLetters::new(&connection, &topology)
        .peek(&filter, count, chrono::Utc::now(), |letter| {
            print_line(&mut out, &letter.to_json())
        })
        .await;
    let _ = connection.close(200, "done".into()).await;
    let summary = result?;
    eprintln!(
        "pagerelay: showed {} of {} matching dead letters ({} in {})",
        summary.shown,
        summary.matched,
        summary.scanned,
        topology.dead_queue()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes one JSON line. A closed pipe (`| head`) stops the output but not the scan, which must
/// read to the end to leave the queue in order.
fn print_line(out: &mut impl Write, value: &serde_json::Value) -> io::Result<()> {
    match writeln!(out, "{value}") {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

async fn replay(settings: &Settings, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let options = dlq::ReplayOptions {
        filter: args.filter.into_filter(),
        all: args.all,
        limit: args.limit,
        dry_run: args.dry_run,
        rate: args.rate,
        overrides: dlq::Overrides {
            include_invalid: args.include_invalid,
            include_ambiguous: args.include_ambiguous,
            force: args.force,
        },
    };
    if let Err(e) = options.validate() {
        eprintln!("pagerelay: {e}");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let url = dlq::guard::pages_url(args.admin.as_deref(), settings.admin.listen);
    let pages = dlq::PageCheck::fetch(&url, dlq::guard::ADMIN_TIMEOUT).await;
    if let dlq::PageCheck::Unreachable { url, error } = &pages {
        if args.force {
            eprintln!(
                "pagerelay: warning: cannot reach the daemon at {url} ({error}); replaying \
                 without checking whether the Pages are paused (--force)"
            );
        } else if args.dry_run {
            eprintln!(
                "pagerelay: warning: cannot reach the daemon at {url} ({error}); a real replay \
                 would refuse to start without --admin URL or --force"
            );
        }
    }
    let topology = Topology::new(&settings.amqp, &settings.retry.tiers);
    let connection = connect(settings, "pagerelay replay").await?;
    let cancel = CancellationToken::new();
    stop_on_signals(cancel.clone())?;
    let mut out = io::stdout().lock();
    let mut output_error = None;
    let exchange = topology.jobs_exchange();
    let result = DeadLetters::new(&connection, &topology)
        .replay(
            settings.amqp.publish_timeout,
            &options,
            &pages,
            &cancel,
            |letter, action| {
                // A real run reports only its summary; a dry run shows every decision.
                if !options.dry_run || output_error.is_some() {
                    return;
                }
                if let Err(e) = print_line(&mut out, &decision_line(letter, action, &exchange)) {
                    output_error = Some(e);
                }
            },
        )
        .await;
    let _ = connection.close(200, "done".into()).await;
    let summary = match result {
        Ok(summary) => summary,
        Err(e @ DlqError::AdminUnreachable { .. }) => {
            eprintln!("pagerelay: {e}");
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(e) = output_error {
        eprintln!("pagerelay: cannot write the dry run's output: {e}");
    }
    if args.json {
        print_line(&mut out, &serde_json::json!({ "summary": summary }))?;
    }
    eprint!("{}", summary.render());
    Ok(if summary.error.is_some() {
        ExitCode::FAILURE
    } else if summary.interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if summary.refused_total() > 0 {
        ExitCode::from(EXIT_REFUSED)
    } else {
        ExitCode::SUCCESS
    })
}

/// One line of a dry run: the letter as `peek` shows it, what would happen, and where it would go.
fn decision_line(letter: &Letter, action: &Action, exchange: &str) -> serde_json::Value {
    let mut line = letter.to_json();
    line["action"] = action.as_str().into();
    if let Action::Refused(guardrail) = action {
        line["guardrail"] = guardrail.as_str().into();
        line["why"] = guardrail.explain().into();
    }
    line["target_exchange"] = exchange.into();
    line["target_routing_key"] = letter.target_routing_key().into();
    line
}

/// SIGINT or SIGTERM stops the replay after the publishes in flight are settled; a second
/// signal exits at once, which loses nothing either (the broker requeues every unacked letter).
fn stop_on_signals(cancel: CancellationToken) -> io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            if cancel.is_cancelled() {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
            eprintln!(
                "pagerelay: stopping after the publishes in flight (a second signal exits at once)"
            );
            cancel.cancel();
        }
    });
    Ok(())
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
