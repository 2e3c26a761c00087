//! The `pagerelay` command line: parses arguments, loads settings, and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use pagerelay::config::{LoadOptions, LogFormat, Settings};

/// Exit status for configuration and usage errors (clap uses the same for bad arguments).
const EXIT_CONFIG: u8 = 2;

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
    }
}
