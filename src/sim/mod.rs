//! `graph-sim`: a stand-in for the Graph API's batch and Messenger Send API endpoints, for
//! pagerelay's tests, benchmarks and demo.
//!
//! The simulator implements the platform's documented behaviour on its own — request parsing, Send
//! API validation, per-Page rate limits, error objects, usage headers — without using any pagerelay
//! module, so that a wrong assumption in pagerelay shows up as a disagreement. It records every
//! operation it counts as delivered ([`record`]) so that tests can assert on what really happened,
//! and it injects faults reproducibly from a seed ([`faults`]). It speaks HTTP/1.1 with
//! keep-alive on loopback; there is no TLS and no HTTP/2. It does not deliver anything, talk to
//! any network but its own listener, or persist state.
//!
//! # Endpoints
//!
//! Graph (`{version}` is any `v<major>.<minor>`):
//!
//! - `POST /{version}` and `POST /{version}/`: the batch call (semantics in the `batch` module).
//! - `POST /{version}/me/messages`, `POST /{version}/{page-id}/messages`: a single send, with a JSON
//!   or form body; the token comes from the body, the `access_token` query parameter or
//!   `Authorization: Bearer`.
//! - `GET /{version}/{page-id}/insights?metric=page_messages_total_messaging_connections` (also
//!   `…/insights/page_messages_total_messaging_connections`): two daily values, the newest being
//!   the Page's current audience.
//!
//! Admin (JSON; see [`client::SimClient`] for a typed client):
//!
//! - `GET /_sim/deliveries?after=SEQ&limit=N`: JSON lines, oldest first ([`Delivery`]).
//! - `GET /_sim/stats` ([`Stats`]).
//! - `GET`/`PUT /_sim/faults` ([`Faults`]; `PUT` replaces the whole set).
//! - `GET /_sim/pages`, `PUT /_sim/pages/{id}` ([`PageUpdate`] → [`PageView`]).
//! - `GET`/`POST`/`DELETE /_sim/outage` ([`OutageRequest`] → [`OutageView`]).
//!
//! # Decisions where the platform's behaviour is unknown
//!
//! - **Wrong Page**: a token of Page A used on `/{B}/messages` is a permission error, code 200, HTTP
//!   403 (the operation was authenticated, it is just not allowed). A node that is no configured
//!   Page is 100/33, the platform's "object does not exist or cannot be loaded" error.
//! - **Missing token** answers 190, like an invalid one, so every token problem is one class.
//! - **Rate-limit accounting**: refused (613) operations count toward every window, as the platform
//!   says calls made while throttled still count. Windows are rolling, not calendar-aligned, and
//!   exact in the safe direction (the `limits` module explains the bucketing).
//! - **`estimated_time_to_regain_access`** is the real (wall-clock) wait, rounded up to whole
//!   minutes: with `--time-scale` it shrinks with the window. For the per-second ceiling it is 1
//!   while throttled and 0 otherwise. The header is on every reply, not only on throttled ones.
//!   The one exception is an injected throttle (below).
//! - **Injected throttles** ([`Faults::item_throttle_rate`]) answer with the same 613/2534040 error
//!   as a real limit and are accounted exactly like a real 613: the call has already been counted
//!   by the limiter in every window of its Page (so injected throttles use up budget and per-second
//!   room, and can push the Page into real throttling), in `calls`, `throttled_613` and
//!   `rejected_by_code["613"]`; it is not delivered. Its own item headers and its request's outer
//!   `X-Business-Use-Case-Usage` report, for its Page, `estimated_time_to_regain_access` =
//!   [`Faults::throttle_regain_minutes`], or the real estimate if that is larger (real limits are
//!   never under-reported). Other items of the same Page in the same batch keep their real figures,
//!   and nothing carries over to later requests: the fault throttles operations, not the Page.
//!   Precedence: `null` (not run) → real limits → validation → injected throttle → transient fault
//!   → reserved recipients.
//! - **Per-item usage headers**: when `include_headers` is on, every item carries
//!   `X-Business-Use-Case-Usage` and `X-App-Usage` for its Page (whether the platform does is
//!   unverified).
//! - **Failed dependencies**: the dependent operation is not run and comes back `null`.
//! - **Timeouts** run and record every operation, then hold the reply: the ambiguous "reply lost"
//!   case. **Dropped** connections run nothing: the "request lost" case.
//! - **1/1357046** is recorded as delivered.
//! - The batch-size error's wording ("Too many requests in batch message. Maximum batch size is 50")
//!   is recalled, not verified.
//!
//! # Determinism
//!
//! Given the same seed and the same requests, the simulator gives the same reply bodies, whatever
//! the interleaving of concurrent requests: each decision is derived from a hash of the seed, the
//! content, and how many times that content was seen before (see [`faults`]); this includes which
//! operations get an injected throttle. Two *identical* requests in flight at once may swap their
//! answers. Rate limits, and the usage figures in the headers, depend on timing and are the
//! deliberate exception (an injected throttle's regain estimate is not: it is the configured
//! value unless a real limit calls for more).

mod batch;
pub mod client;
mod error;
pub mod faults;
mod limits;
mod pages;
pub mod record;
mod send;
mod server;
mod state;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use batch::MAX_BATCH;
pub use client::{ClientError, SimClient};
pub use faults::{Faults, FaultsError, OutageMode, OutageRequest, OutageView, reserved};
pub use pages::{PageError, PageUpdate, PageView, appsecret_proof};
pub use record::{Delivery, PageStats, Stats, TotalStats};

use pages::{NewPage, Registry};
use state::Shared;

/// The platform's budget window, before time scaling.
const DAY_US: f64 = 86_400.0 * 1_000_000.0;

/// One Page to serve.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageConfig {
    /// The Page id (digits).
    pub id: String,
    /// Access tokens that authenticate as this Page (usually one).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// `page_messages_total_messaging_connections`; the budget is 200 × this per window.
    pub audience: u64,
    /// This Page's per-second ceiling, overriding [`SimConfig::rps_limit`].
    #[serde(default)]
    pub rps: Option<u64>,
    /// This Page's media ceiling, overriding [`SimConfig::media_rps_limit`].
    #[serde(default)]
    pub media_rps: Option<u64>,
}

impl PageConfig {
    pub fn new(id: impl Into<String>, token: impl Into<String>, audience: u64) -> Self {
        PageConfig {
            id: id.into(),
            tokens: vec![token.into()],
            audience,
            rps: None,
            media_rps: None,
        }
    }

    pub fn with_rps(mut self, rps: u64) -> Self {
        self.rps = Some(rps);
        self
    }

    pub fn with_media_rps(mut self, media_rps: u64) -> Self {
        self.media_rps = Some(media_rps);
        self
    }

    /// Parses a Pages file: `[[pages]]` tables with `id`, `token` (or `tokens`), `audience`, and
    /// optional `rps` and `media_rps`.
    pub fn parse_toml(text: &str) -> Result<Vec<PageConfig>, SimError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            pages: Vec<Entry>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Entry {
            id: String,
            token: Option<String>,
            #[serde(default)]
            tokens: Vec<String>,
            audience: u64,
            rps: Option<u64>,
            media_rps: Option<u64>,
        }
        let file: File = toml::from_str(text).map_err(|e| SimError::PagesFile(e.to_string()))?;
        Ok(file
            .pages
            .into_iter()
            .map(|e| PageConfig {
                id: e.id,
                tokens: e.token.into_iter().chain(e.tokens).collect(),
                audience: e.audience,
                rps: e.rps,
                media_rps: e.media_rps,
            })
            .collect())
    }
}

/// `ID:TOKEN:AUDIENCE`, as given to `--page`. The token is everything between the first and the
/// last colon.
impl FromStr for PageConfig {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SimError::PageSpec(s.to_owned());
        let (id, rest) = s.split_once(':').ok_or_else(bad)?;
        let (token, audience) = rest.rsplit_once(':').ok_or_else(bad)?;
        let audience = audience.parse().map_err(|_| bad())?;
        Ok(PageConfig::new(id, token, audience))
    }
}

/// Everything the simulator needs to start.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where to listen; port 0 picks a free port (see [`Simulator::local_addr`]).
    pub listen: SocketAddr,
    /// Seeds every fault decision, message id and execution order.
    pub seed: u64,
    pub pages: Vec<PageConfig>,
    /// When set, every token must come with its `appsecret_proof`.
    pub app_secret: Option<String>,
    /// Default per-Page per-second ceiling (rolling second, real time).
    pub rps_limit: u64,
    /// Default per-Page ceiling for audio and video sends.
    pub media_rps_limit: u64,
    /// The budget window lasts 24 h divided by this, in real time (1440: one minute).
    pub time_scale: f64,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 1,
            pages: Vec::new(),
            app_secret: None,
            rps_limit: 300,
            media_rps_limit: 10,
            time_scale: 1.0,
            faults: Faults::default(),
        }
    }
}

impl SimConfig {
    pub fn with_page(mut self, page: PageConfig) -> Self {
        self.pages.push(page);
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn with_app_secret(mut self, secret: impl Into<String>) -> Self {
        self.app_secret = Some(secret.into());
        self
    }

    pub fn with_time_scale(mut self, time_scale: f64) -> Self {
        self.time_scale = time_scale;
        self
    }

    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The real-time length of the budget window.
    pub fn budget_window(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.budget_window_us())
    }

    fn budget_window_us(&self) -> u64 {
        ((DAY_US / self.time_scale).round() as u64).max(1_000)
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid Page configuration: {0}")]
    Page(#[from] PageError),
    #[error("invalid faults: {0}")]
    Faults(#[from] FaultsError),
    #[error("time scale must be a positive finite number, got {0}")]
    TimeScale(f64),
    #[error("app secret must not be empty")]
    EmptyAppSecret,
    #[error("invalid Page spec {0:?}; expected ID:TOKEN:AUDIENCE")]
    PageSpec(String),
    #[error("invalid Pages file: {0}")]
    PagesFile(String),
}

/// A running simulator. Dropping it stops the server too; [`Simulator::shutdown`] also waits for it.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Simulator {
    /// Binds the listener and starts serving in the background.
    pub async fn start(config: SimConfig) -> Result<Simulator, SimError> {
        if !(config.time_scale.is_finite() && config.time_scale > 0.0) {
            return Err(SimError::TimeScale(config.time_scale));
        }
        if config.app_secret.as_deref() == Some("") {
            return Err(SimError::EmptyAppSecret);
        }
        config.faults.validate()?;
        let budget_window_us = config.budget_window_us();
        let new_pages: Vec<NewPage<'_>> = config
            .pages
            .iter()
            .map(|p| NewPage {
                id: &p.id,
                tokens: &p.tokens,
                audience: p.audience,
                rps: p.rps,
                media_rps: p.media_rps,
            })
            .collect();
        let registry = Registry::new(
            &new_pages,
            budget_window_us,
            config.rps_limit,
            config.media_rps_limit,
        )?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared::new(
            config.seed,
            config.app_secret.clone(),
            registry,
            config.faults.clone(),
            budget_window_us,
        ));
        let router = server::router(shared.clone());
        let task = tokio::spawn(server::serve(listener, router, shared.cancel.clone()));
        tracing::info!(%addr, pages = config.pages.len(), seed = config.seed, "graph-sim started");
        Ok(Simulator {
            addr,
            shared,
            task: Some(task),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client for the admin API.
    pub fn client(&self) -> SimClient {
        SimClient::new(self.base_url())
    }

    /// Stops accepting, lets requests in flight finish briefly, and waits for the server to stop.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_specs_parse() {
        let page: PageConfig = "123:tok:en:42".parse().unwrap();
        assert_eq!(page, PageConfig::new("123", "tok:en", 42));
        assert!("123:tok".parse::<PageConfig>().is_err());
        assert!("123:tok:many".parse::<PageConfig>().is_err());
    }

    #[test]
    fn pages_files_parse() {
        let pages = PageConfig::parse_toml(
            "[[pages]]\nid = \"1\"\ntoken = \"a\"\naudience = 5\nrps = 40\n\n\
             [[pages]]\nid = \"2\"\ntokens = [\"b\", \"c\"]\naudience = 7\n",
        )
        .unwrap();
        assert_eq!(pages[0], PageConfig::new("1", "a", 5).with_rps(40));
        assert_eq!(pages[1].tokens, ["b", "c"]);
        assert!(PageConfig::parse_toml("[[pages]]\nid = \"1\"\n").is_err());
    }

    #[test]
    fn time_scale_shrinks_the_budget_window() {
        let config = SimConfig::default().with_time_scale(1440.0);
        assert_eq!(config.budget_window(), std::time::Duration::from_secs(60));
        assert_eq!(
            SimConfig::default().budget_window(),
            std::time::Duration::from_secs(86_400)
        );
    }
}
