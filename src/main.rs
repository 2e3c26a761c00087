//! The `pagerelay` command line: parses arguments, loads settings, and calls the library.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use pagerelay::config::{LoadOptions, LogFormat, Settings};

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
    /// Load and validate the settings, then print them with every secret redacted.
    CheckConfig,

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
}

fn main() -> ExitCode {
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
    match cli.command {
        Command::CheckConfig => {
            print!("{}", settings.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Validate { input } => validate(input.as_deref()),
    }
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
