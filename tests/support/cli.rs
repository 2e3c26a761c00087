//! `pagerelay` as an operator runs it: a command against a settings file (a running daemon's, or
//! one of its own for tests without a daemon), run to completion with its output captured, or
//! spawned so that a test can signal it.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use serde_json::Value;

use super::broker;
use super::daemon::{Daemon, free_port};

/// A settings file and the environment to run commands with.
pub struct Cli {
    path: PathBuf,
    env: Vec<(String, String)>,
    /// Keeps a settings file of our own alive.
    _dir: Option<tempfile::TempDir>,
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Every stdout line as JSON (panics on a line that is not).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{self:?}"))
            })
            .collect()
    }

    /// The `{"summary": …}` line of `replay --json`.
    pub fn summary(&self) -> Value {
        self.json_lines()
            .into_iter()
            .rev()
            .find_map(|l| l.get("summary").cloned())
            .unwrap_or_else(|| panic!("no summary line: {self:?}"))
    }

    /// Panics with the whole output unless the command exited with `code`.
    pub fn expect_code(self, code: i32) -> Output {
        assert_eq!(self.code(), Some(code), "unexpected exit status: {self:?}");
        self
    }
}

impl Cli {
    /// Commands against a running daemon's settings (broker, prefix, admin endpoint).
    pub fn for_daemon(daemon: &Daemon) -> Cli {
        Cli {
            path: daemon.dir.path().join("pagerelay.toml"),
            env: daemon.config.env.clone(),
            _dir: None,
        }
    }

    /// Commands for `prefix` with no daemon: the admin endpoint is a loopback port nobody
    /// listens on.
    pub fn standalone(prefix: &str) -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pagerelay.toml");
        std::fs::write(
            &path,
            format!(
                "[amqp]\nurl = \"{}\"\nprefix = \"{prefix}\"\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n\
                 [logging]\nformat = \"json\"\nlevel = \"warn\"\n",
                broker::amqp_url(),
                free_port()
            ),
        )
        .unwrap();
        Cli {
            path,
            env: Vec::new(),
            _dir: Some(dir),
        }
    }

    pub fn config_path(&self) -> &Path {
        &self.path
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pagerelay"));
        command
            .arg("--config")
            .arg(&self.path)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("PAGERELAY_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `pagerelay --config <file> <args>` to completion.
    pub async fn run(&self, args: &[&str]) -> Output {
        let output = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            self.command(args).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("pagerelay {args:?} did not finish within 120 s"))
        .expect("pagerelay runs");
        Output {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Starts `pagerelay --config <file> <args>` and returns at once.
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        self.command(args).spawn().expect("pagerelay starts")
    }
}

/// Waits for a spawned command and collects its output.
pub async fn finish(child: tokio::process::Child) -> Output {
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        child.wait_with_output(),
    )
    .await
    .expect("the command finishes within 120 s")
    .expect("the command's output can be read");
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
