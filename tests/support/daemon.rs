//! `pagerelay run` as a child process: its settings written to a temporary directory, its admin
//! endpoints on a free loopback port, its logs captured to a file, and signals to send it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use super::broker;

/// What a test's daemon looks like. `Default` gives fast retries and short cooldowns so tests
/// finish in seconds; `extra` is appended to the settings file verbatim.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub prefix: String,
    /// The broker; the shared local one unless a test runs its own node.
    pub amqp_url: String,
    pub graph_url: String,
    /// Page id → audience ("auto" or a number as written in TOML).
    pub pages: BTreeMap<String, String>,
    /// Page id → token; Pages not listed get `token-<id>`.
    pub tokens: BTreeMap<String, String>,
    pub shards: u16,
    pub prefetch: u16,
    /// Extra `PAGERELAY__…` overrides.
    pub env: Vec<(String, String)>,
    /// Settings by section and key, values as TOML (`[retry] max_attempts = 5` …).
    pub sections: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// Write the Pages to a separate `pages_file` instead of inline `[[pages]]`, as large
    /// registries are deployed.
    pub pages_in_file: bool,
}

impl DaemonConfig {
    pub fn new(prefix: &str, graph_url: &str) -> Self {
        let config = DaemonConfig {
            prefix: prefix.to_string(),
            amqp_url: broker::amqp_url(),
            graph_url: graph_url.to_string(),
            pages: BTreeMap::new(),
            tokens: BTreeMap::new(),
            shards: 1,
            prefetch: 1000,
            env: Vec::new(),
            sections: BTreeMap::new(),
            pages_in_file: false,
        };
        config
            .section(
                "retry",
                "tiers = [\"200ms\", \"500ms\", \"1s\", \"2s\", \"5s\"]\nmax_attempts = 5\njitter = 0.2\n\
                 cooldown_min = \"1s\"\ncooldown_max = \"4s\"\npaused_delay = \"1s\"",
            )
            .section("graph", "linger = \"5ms\"\nrequest_timeout = \"10s\"")
            .section("pipeline", "shutdown_grace = \"10s\"")
            .section("logging", "format = \"json\"\nlevel = \"info\"")
    }

    /// Lists the Pages in `pages.toml`, named by `pages_file`.
    pub fn pages_in_file(mut self) -> Self {
        self.pages_in_file = true;
        self
    }

    /// Configures the app secret for `appsecret_proof`, passed the way production passes it:
    /// through the environment variable that `graph.app_secret_env` names.
    pub fn app_secret(mut self, secret: &str) -> Self {
        self.env
            .push(("PAGERELAY_TEST_APP_SECRET".to_string(), secret.to_string()));
        self.section("graph", "app_secret_env = \"PAGERELAY_TEST_APP_SECRET\"")
    }

    pub fn page(mut self, id: &str, audience: impl ToString) -> Self {
        self.pages.insert(id.to_string(), audience.to_string());
        self
    }

    pub fn pages<'a>(mut self, ids: impl IntoIterator<Item = &'a String>, audience: u64) -> Self {
        for id in ids {
            self.pages.insert(id.clone(), audience.to_string());
        }
        self
    }

    /// Sets the `key = value` lines in section `name` (`"retry"`, `"limits"`…), replacing
    /// keys set before.
    pub fn section(mut self, name: &'static str, lines: &str) -> Self {
        let entry = self.sections.entry(name).or_default();
        for line in lines.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line.split_once('=').expect("key = value");
            entry.insert(key.trim().to_string(), value.trim().to_string());
        }
        self
    }

    pub fn token_of(&self, page: &str) -> String {
        self.tokens
            .get(page)
            .cloned()
            .unwrap_or_else(|| format!("token-{page}"))
    }

    fn settings_text(&self, admin_port: u16) -> String {
        let mut text = String::from("tokens_file = \"tokens.toml\"\n");
        if self.pages_in_file {
            text.push_str("pages_file = \"pages.toml\"\n");
        }
        // The fixed keys first, then `sections` over them: a TOML table may appear only once.
        let quoted = |v: &str| format!("\"{v}\"");
        let mut sections: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
        sections.insert(
            "amqp",
            [
                ("url", quoted(&self.amqp_url)),
                ("prefix", quoted(&self.prefix)),
                ("shards", self.shards.to_string()),
                ("prefetch", self.prefetch.to_string()),
                ("reconnect_min_delay", quoted("200ms")),
                ("reconnect_max_delay", quoted("2s")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        );
        sections.insert(
            "graph",
            [("base_url".to_string(), quoted(&self.graph_url))].into(),
        );
        sections.insert(
            "admin",
            [(
                "listen".to_string(),
                quoted(&format!("127.0.0.1:{admin_port}")),
            )]
            .into(),
        );
        for (name, keys) in &self.sections {
            sections.entry(name).or_default().extend(keys.clone());
        }
        for (name, keys) in &sections {
            text.push_str(&format!("\n[{name}]\n"));
            for (key, value) in keys {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        if !self.pages_in_file {
            text.push_str(&self.pages_text());
        }
        text
    }

    fn pages_text(&self) -> String {
        let mut text = String::new();
        for (id, audience) in &self.pages {
            let audience = if audience == "auto" {
                "\"auto\"".to_string()
            } else {
                audience.clone()
            };
            text.push_str(&format!(
                "\n[[pages]]\nid = \"{id}\"\naudience = {audience}\n"
            ));
        }
        text
    }

    fn tokens_text(&self) -> String {
        self.pages
            .keys()
            .map(|id| format!("\"{id}\" = \"{}\"\n", self.token_of(id)))
            .collect()
    }
}

/// A running `pagerelay run`.
pub struct Daemon {
    child: Option<Child>,
    pub config: DaemonConfig,
    pub admin: String,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon and waits until `/readyz` says ready.
    pub async fn start(config: DaemonConfig) -> Daemon {
        let daemon = Daemon::spawn(config);
        daemon.wait_ready(Duration::from_secs(30)).await;
        daemon
    }

    /// Starts the daemon without waiting for it.
    pub fn spawn(config: DaemonConfig) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("pagerelay.toml"),
            config.settings_text(port),
        )
        .unwrap();
        std::fs::write(dir.path().join("tokens.toml"), config.tokens_text()).unwrap();
        if config.pages_in_file {
            std::fs::write(dir.path().join("pages.toml"), config.pages_text()).unwrap();
        }
        let log = dir.path().join("pagerelay.log");
        let child = Command::new(env!("CARGO_BIN_EXE_pagerelay"))
            .arg("--config")
            .arg(dir.path().join("pagerelay.toml"))
            .arg("run")
            .env_remove("RUST_LOG")
            .env_remove("PAGERELAY_CONFIG")
            .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("pagerelay binary starts");
        Daemon {
            child: Some(child),
            config,
            admin: format!("http://127.0.0.1:{port}"),
            dir,
            log,
        }
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        let url = format!("{}/readyz", self.admin);
        let log = self.log.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "pagerelay not ready within {timeout:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The daemon's settings, as it loaded them.
    pub fn settings(&self) -> pagerelay::config::Settings {
        pagerelay::config::Settings::load(&pagerelay::config::LoadOptions {
            file: Some(self.dir.path().join("pagerelay.toml")),
            env: self.config.env.iter().cloned().collect(),
        })
        .expect("the test's settings load")
    }

    /// The daemon's topology.
    pub fn topology(&self) -> pagerelay::amqp::Topology {
        let settings = self.settings();
        pagerelay::amqp::Topology::new(&settings.amqp, &settings.retry.tiers)
    }

    /// `/readyz`: status code and body.
    pub async fn readyz(&self) -> Option<(u16, Value)> {
        let r = reqwest::get(format!("{}/readyz", self.admin)).await.ok()?;
        let status = r.status().as_u16();
        Some((status, serde_json::from_slice(&r.bytes().await.ok()?).ok()?))
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the sample `name{labels}` (labels as rendered, e.g. `outcome="delivered"`),
    /// summed over every series whose labels contain all of `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics().await, name, labels)
    }

    /// Page `id`'s entry in `/pages`, if the daemon lists it.
    pub async fn page(&self, id: &str) -> Option<Value> {
        self.pages()
            .await
            .as_array()?
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
    }

    pub async fn pages(&self) -> Value {
        let body = reqwest::get(format!("{}/pages", self.admin))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    /// Peak resident set (VmHWM) of the running process, in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }

    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, signal);
        }
    }

    /// Rewrites the tokens file (for a rotation followed by SIGHUP).
    pub fn set_token(&mut self, page: &str, token: &str) {
        self.config
            .tokens
            .insert(page.to_string(), token.to_string());
        std::fs::write(
            self.dir.path().join("tokens.toml"),
            self.config.tokens_text(),
        )
        .unwrap();
    }

    /// A token rotation as an operator does it: the platform issues `token` for `page` (and
    /// lifts any revocation), the tokens file gets it, and SIGHUP reloads it.
    pub async fn rotate_token(&mut self, sim: &pagerelay::sim::SimClient, page: &str, token: &str) {
        sim.update_page(
            page,
            &pagerelay::sim::PageUpdate {
                token: Some(token.into()),
                revoked: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        self.set_token(page, token);
        self.signal(Signal::SIGHUP);
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(60)).await
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "pagerelay did not exit within {timeout:?}; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the log and the pipeline's counters, for a failing test to print.
    pub async fn diagnostics(&self) -> String {
        let logs = self.logs();
        let tail: Vec<&str> = logs.lines().rev().take(30).collect();
        let metrics = reqwest::get(format!("{}/metrics", self.admin)).await;
        let metrics = match metrics {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("(no metrics: {e})"),
        };
        let counters: Vec<&str> = metrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("page=") && !l.contains("_bucket"))
            .collect();
        format!(
            "--- last log lines ---\n{}\n--- metrics ---\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            counters.join("\n")
        )
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sums the samples of `name` whose label set contains every one of `labels`.
pub fn sum_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name
                && labels
                    .iter()
                    .all(|want| label_text.split(',').any(|l| l == *want)))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
