//! Settings: loading, layering and validation.
//!
//! Owns everything between the operator's files and a typed [`Settings`]: built-in defaults, then a
//! TOML file (`--config PATH`), then environment overrides (`PAGERELAY__AMQP__URL` style), then the
//! Page registry (inline `[[pages]]`, an optional `pages_file`, and token sources). Every key is
//! checked once here, so the rest of the crate works with durations, URLs and non-zero numbers
//! instead of strings. Errors name the key, the value and the rule; secrets never appear in them.
//!
//! It does not own reloading (the pipeline calls [`Settings::load`] again on SIGHUP) or the meaning
//! of the limits (see `pipeline::limiter`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// The prefix of environment overrides: `PAGERELAY__GRAPH__LINGER=20ms`.
pub const ENV_PREFIX: &str = "PAGERELAY";

/// The most operations the Graph API accepts in one batch.
pub const MAX_BATCH_SIZE: usize = 50;

/// Why the settings could not be loaded. Every variant renders as one line that names the key or
/// file, the offending value (redacted when secret) and the rule it breaks.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("{key} = {value}: {rule}")]
    Invalid {
        key: String,
        value: String,
        rule: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, value: impl fmt::Display, rule: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}

/// Where settings come from. The environment is passed in, never read from globals, so tests can
/// load settings with a fake environment.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The TOML file given with `--config`, if any.
    pub file: Option<PathBuf>,
    /// Environment variables: `PAGERELAY__…` overrides and the variables token sources name.
    pub env: HashMap<String, String>,
}

impl LoadOptions {
    /// Options for `file` with the process environment.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        LoadOptions {
            file,
            env: std::env::vars().collect(),
        }
    }
}

// ===== validated settings =====

/// The validated settings of one pagerelay process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub graph: GraphSettings,
    pub limits: LimitSettings,
    pub retry: RetrySettings,
    pub pipeline: PipelineSettings,
    pub admin: AdminSettings,
    pub metrics: MetricsSettings,
    pub logging: LoggingSettings,
    /// The Page registry, in file order; ids are unique.
    pub pages: Vec<PageSettings>,
    /// The file the pages came from besides the main file, if any (re-read on reload).
    pub pages_file: Option<PathBuf>,
    /// The file Page tokens came from, if any (re-read on reload).
    pub tokens_file: Option<PathBuf>,
}

#[derive(Clone)]
pub struct AmqpSettings {
    /// The broker URL. May carry a password, so it is only shown through [`redact_url`].
    pub url: SecretString,
    /// Prefix of every exchange and queue name.
    pub prefix: String,
    /// Number of shard queues behind the jobs exchange.
    pub shards: u16,
    /// Unacknowledged deliveries per consumer (per shard queue).
    pub prefetch: u16,
    /// How long a confirmed publish may take before it counts as failed.
    pub publish_timeout: Duration,
    /// Reconnect backoff bounds.
    pub reconnect_min_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// Broker-side redelivery limit of the jobs queues before they dead-letter a message.
    pub delivery_limit: u32,
    /// How long a settled delivery may wait for the older ones to settle, so that a single
    /// `basic.ack` with `multiple` covers them all.
    pub ack_hold: Duration,
}

impl fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("prefix", &self.prefix)
            .field("shards", &self.shards)
            .field("prefetch", &self.prefetch)
            .field("publish_timeout", &self.publish_timeout)
            .field("reconnect_min_delay", &self.reconnect_min_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("delivery_limit", &self.delivery_limit)
            .field("ack_hold", &self.ack_hold)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct GraphSettings {
    /// Graph API root, e.g. `https://graph.facebook.com`.
    pub base_url: Url,
    /// API version path segment, e.g. `v21.0`.
    pub api_version: String,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// The app secret for `appsecret_proof`, when one is configured.
    pub app_secret: Option<SecretString>,
    /// Where the app secret came from (shown by `check-config`).
    pub app_secret_source: Option<SecretSource>,
    /// Operations per batch, 1..=50.
    pub batch_size: usize,
    /// How long a partly filled batch waits for more operations.
    pub linger: Duration,
    /// How long one Page's batch waits for other Pages' to share its request.
    pub combine_linger: Duration,
    /// Page batches in flight across all Pages (several may share one request, so this also
    /// bounds HTTP requests in flight).
    pub max_in_flight: usize,
    /// Batches in flight for one Page.
    pub max_in_flight_per_page: usize,
}

#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Calls allowed per unit of audience per budget window (Meta: 200).
    pub calls_per_audience: u32,
    /// Fraction of the platform budget pagerelay allows itself, (0, 1].
    pub safety: f64,
    /// Fraction of the daily budget that may go out as a burst, (0, 1).
    pub burst_fraction: f64,
    /// The length of the rolling budget window: 24 h on the real platform. Shorter windows are
    /// for simulations that compress a day.
    pub budget_window: Duration,
    /// Default per-second ceiling per Page and its burst.
    pub rps: NonZeroU32,
    pub rps_burst: NonZeroU32,
    /// Default per-second ceiling for audio and video attachments per Page, and its burst.
    pub media_rps: NonZeroU32,
    pub media_burst: NonZeroU32,
    /// Audience assumed for an `auto` Page until its insights have been read once.
    pub default_audience: u64,
    /// How often `auto` audiences are re-read from insights.
    pub audience_refresh: Duration,
}

#[derive(Debug, Clone)]
pub struct RetrySettings {
    /// Delay tiers, shortest first. Retries and parking pick from these.
    pub tiers: Vec<Duration>,
    /// Send attempts before a job is dead-lettered with `max_attempts`.
    pub max_attempts: u32,
    /// Relative jitter applied to retry delays, [0, 0.5].
    pub jitter: f64,
    /// How long a job may stay parked in total before it is dead-lettered.
    pub max_parked: Duration,
    /// Cooldown after a rate-limit reply without a usable estimate: grows from min to max.
    pub cooldown_min: Duration,
    pub cooldown_max: Duration,
    /// Consecutive failed batches that open a Page's circuit.
    pub circuit_failures: u32,
    /// Delay used to park jobs of a paused Page (token revoked and the like).
    pub paused_delay: Duration,
    /// Most jobs one park message carries: a lane parks its Page's jobs together, as one
    /// bundle per delay tier (1: every parked job is a message of its own).
    pub park_bundle: usize,
}

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Jobs a healthy Page lane holds in memory before it parks the overflow.
    pub lane_capacity: usize,
    /// Jobs a blocked Page lane (cooldown, budget spent, paused) holds before it parks the rest.
    pub blocked_lane_capacity: usize,
    /// The longest a job should wait in a lane: a lane keeps only what its Page can send within
    /// this time and parks the rest, so no delivery sits unacked for long.
    pub max_hold: Duration,
    /// A lane without work for this long is dropped.
    pub idle_lane_ttl: Duration,
    /// Delivered job ids remembered by the duplicate guard, and for how long.
    pub dedup_capacity: usize,
    pub dedup_ttl: Duration,
    /// Time given to in-flight batches on SIGTERM before the rest is handed back.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// Pages that get their own `page` label; the rest share `page="other"`.
    pub page_label_limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Pretty => "pretty",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoggingSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

/// Where a secret is read from. Secrets are never written inline in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
    TokensFile(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "env:{var}"),
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
            SecretSource::TokensFile(path) => write!(f, "tokens_file:{}", path.display()),
        }
    }
}

/// A Page's Messenger audience: fixed, or read from insights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Fixed(u64),
    Auto,
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Audience::Fixed(n) => write!(f, "{n}"),
            Audience::Auto => f.write_str("auto"),
        }
    }
}

/// One Page of the registry.
#[derive(Clone)]
pub struct PageSettings {
    pub id: String,
    pub token: SecretString,
    pub token_source: SecretSource,
    pub audience: Audience,
    /// Per-Page overrides of the ceilings in [`LimitSettings`].
    pub rps: Option<NonZeroU32>,
    pub media_rps: Option<NonZeroU32>,
}

impl PageSettings {
    /// The access token, for the one place that must send it.
    pub fn token(&self) -> &SecretString {
        &self.token
    }
}

impl fmt::Debug for PageSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageSettings")
            .field("id", &self.id)
            .field("token", &"[redacted]")
            .field("token_source", &self.token_source)
            .field("audience", &self.audience)
            .field("rps", &self.rps)
            .field("media_rps", &self.media_rps)
            .finish()
    }
}

// ===== raw, file-shaped settings =====
//
// Deserialised permissively typed (strings for durations, i64 for counts) so that validation can
// name the key and the rule instead of surfacing a bare serde type error.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSettings {
    pages_file: Option<String>,
    tokens_file: Option<String>,
    amqp: RawAmqp,
    graph: RawGraph,
    limits: RawLimits,
    retry: RawRetry,
    pipeline: RawPipeline,
    admin: RawAdmin,
    metrics: RawMetrics,
    logging: RawLogging,
    pages: Vec<RawPage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAmqp {
    url: String,
    prefix: String,
    shards: i64,
    prefetch: i64,
    publish_timeout: String,
    reconnect_min_delay: String,
    reconnect_max_delay: String,
    delivery_limit: i64,
    ack_hold: String,
}

impl Default for RawAmqp {
    fn default() -> Self {
        RawAmqp {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: "pagerelay".into(),
            shards: 1,
            prefetch: 1000,
            publish_timeout: "10s".into(),
            reconnect_min_delay: "500ms".into(),
            reconnect_max_delay: "30s".into(),
            delivery_limit: 20,
            ack_hold: "20ms".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGraph {
    base_url: String,
    api_version: String,
    request_timeout: String,
    connect_timeout: String,
    app_secret_env: Option<String>,
    app_secret_file: Option<String>,
    batch_size: i64,
    linger: String,
    combine_linger: String,
    max_in_flight: i64,
    max_in_flight_per_page: i64,
}

impl Default for RawGraph {
    fn default() -> Self {
        RawGraph {
            base_url: "https://graph.facebook.com".into(),
            api_version: "v21.0".into(),
            request_timeout: "30s".into(),
            connect_timeout: "5s".into(),
            app_secret_env: None,
            app_secret_file: None,
            batch_size: 50,
            linger: "10ms".into(),
            combine_linger: "2ms".into(),
            max_in_flight: 512,
            max_in_flight_per_page: 4,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    calls_per_audience: i64,
    safety: f64,
    burst_fraction: f64,
    budget_window: String,
    rps: i64,
    rps_burst: i64,
    media_rps: i64,
    media_burst: i64,
    default_audience: i64,
    audience_refresh: String,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            calls_per_audience: 200,
            safety: 0.95,
            burst_fraction: 0.10,
            budget_window: "24h".into(),
            rps: 250,
            rps_burst: 50,
            media_rps: 10,
            media_burst: 10,
            default_audience: 100,
            audience_refresh: "6h".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRetry {
    tiers: Vec<String>,
    max_attempts: i64,
    jitter: f64,
    max_parked: String,
    cooldown_min: String,
    cooldown_max: String,
    circuit_failures: i64,
    paused_delay: String,
    park_bundle: i64,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            tiers: ["1s", "5s", "30s", "2m", "10m", "1h"]
                .map(String::from)
                .to_vec(),
            max_attempts: 8,
            jitter: 0.2,
            max_parked: "24h".into(),
            cooldown_min: "30s".into(),
            cooldown_max: "15m".into(),
            circuit_failures: 3,
            paused_delay: "30s".into(),
            park_bundle: 200,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPipeline {
    lane_capacity: i64,
    blocked_lane_capacity: i64,
    max_hold: String,
    idle_lane_ttl: String,
    dedup_capacity: i64,
    dedup_ttl: String,
    shutdown_grace: String,
}

impl Default for RawPipeline {
    fn default() -> Self {
        RawPipeline {
            lane_capacity: 500,
            blocked_lane_capacity: 50,
            max_hold: "2s".into(),
            idle_lane_ttl: "5m".into(),
            dedup_capacity: 100_000,
            dedup_ttl: "1h".into(),
            shutdown_grace: "20s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    page_label_limit: i64,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            page_label_limit: 500,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLogging {
    format: String,
    level: String,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPage {
    id: Option<RawScalar>,
    token_env: Option<String>,
    token_file: Option<String>,
    audience: Option<RawScalar>,
    rps: Option<i64>,
    media_rps: Option<i64>,
}

/// The pages file holds `[[pages]]` entries and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPagesFile {
    #[serde(default)]
    pages: Vec<RawPage>,
}

/// A value written either as a number or as a string (`id = 123` and `id = "123"` both work,
/// and so do `audience = 1000` and `audience = "auto"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawScalar {
    Int(i64),
    Str(String),
}

impl fmt::Display for RawScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawScalar::Int(n) => write!(f, "{n}"),
            RawScalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

// ===== loading =====

impl Settings {
    /// Loads and validates the settings: defaults, then the file, then the environment, then the
    /// Page registry and its tokens.
    pub fn load(options: &LoadOptions) -> Result<Settings, ConfigError> {
        let raw = read_layers(options)?;
        let base_dir = options
            .file
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        validate(raw, &base_dir, &options.env)
    }

    /// The id → settings map of the registry.
    pub fn pages_by_id(&self) -> HashMap<&str, &PageSettings> {
        self.pages.iter().map(|p| (p.id.as_str(), p)).collect()
    }
}

fn read_layers(options: &LoadOptions) -> Result<RawSettings, ConfigError> {
    let mut builder = config::Config::builder();
    let origin = match &options.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            // Parse once with `toml` for a precise syntax error (line and column); the config
            // crate's own message for a syntax error is less helpful.
            if let Err(e) = text.parse::<toml::Table>() {
                return Err(ConfigError::Parse {
                    path: path.display().to_string(),
                    reason: format!(
                        "invalid TOML{}: {}",
                        location(&text, &e),
                        one_line(e.message())
                    ),
                });
            }
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
            path.display().to_string()
        }
        None => "settings".to_string(),
    };
    let env: HashMap<String, String> = options
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("retry.tiers")
            .try_parsing(true)
            .source(Some(env)),
    );
    let merged = builder.build().map_err(|e| ConfigError::Parse {
        path: origin.clone(),
        reason: one_line(&e.to_string()),
    })?;
    merged
        .try_deserialize::<RawSettings>()
        .map_err(|e| ConfigError::Parse {
            path: origin,
            reason: one_line(&e.to_string()),
        })
}

/// " at line L, column C" for a TOML error that knows where it happened.
fn location(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(" at line {line}, column {column}")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ===== validation =====

fn validate(
    raw: RawSettings,
    base_dir: &Path,
    env: &HashMap<String, String>,
) -> Result<Settings, ConfigError> {
    let amqp = validate_amqp(raw.amqp)?;
    let graph = validate_graph(raw.graph, base_dir, env)?;
    let limits = validate_limits(raw.limits)?;
    let retry = validate_retry(raw.retry)?;
    let pipeline = validate_pipeline(raw.pipeline)?;
    let admin = AdminSettings {
        listen: raw.admin.listen.parse().map_err(|_| {
            ConfigError::invalid(
                "admin.listen",
                quoted(&raw.admin.listen),
                "must be an address like 127.0.0.1:9464",
            )
        })?,
    };
    let metrics = MetricsSettings {
        page_label_limit: int_in(
            "metrics.page_label_limit",
            raw.metrics.page_label_limit,
            0,
            100_000,
        )? as usize,
    };
    let logging = validate_logging(raw.logging)?;

    let tokens_file = raw.tokens_file.as_deref().map(|p| resolve(base_dir, p));
    let tokens = match &tokens_file {
        Some(path) => read_tokens_file(path)?,
        None => BTreeMap::new(),
    };
    let pages_file = raw.pages_file.as_deref().map(|p| resolve(base_dir, p));
    let mut raw_pages: Vec<(String, RawPage)> = raw
        .pages
        .into_iter()
        .enumerate()
        .map(|(i, p)| (format!("pages[{i}]"), p))
        .collect();
    if let Some(path) = &pages_file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let file: RawPagesFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: format!("{}{}", one_line(e.message()), location(&text, &e)),
        })?;
        let name = path.display().to_string();
        raw_pages.extend(
            file.pages
                .into_iter()
                .enumerate()
                .map(|(i, p)| (format!("{name}: pages[{i}]"), p)),
        );
    }
    let pages_base = base_dir;
    let mut seen = HashSet::new();
    let mut pages = Vec::with_capacity(raw_pages.len());
    for (key, raw_page) in raw_pages {
        let page = validate_page(
            &key,
            raw_page,
            pages_base,
            env,
            tokens_file.as_deref(),
            &tokens,
        )?;
        if !seen.insert(page.id.clone()) {
            return Err(ConfigError::invalid(
                format!("{key}.id"),
                quoted(&page.id),
                "duplicate Page id: each Page may be listed once",
            ));
        }
        pages.push(page);
    }

    Ok(Settings {
        amqp,
        graph,
        limits,
        retry,
        pipeline,
        admin,
        metrics,
        logging,
        pages,
        pages_file,
        tokens_file,
    })
}

fn validate_amqp(raw: RawAmqp) -> Result<AmqpSettings, ConfigError> {
    let url = Url::parse(&raw.url).map_err(|e| {
        ConfigError::invalid(
            "amqp.url",
            quoted(&redact_url(&raw.url)),
            format!("not a URL ({e})"),
        )
    })?;
    if !matches!(url.scheme(), "amqp" | "amqps") {
        return Err(ConfigError::invalid(
            "amqp.url",
            quoted(&redact_url(&raw.url)),
            "scheme must be amqp or amqps",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::invalid(
            "amqp.url",
            quoted(&redact_url(&raw.url)),
            "has no host",
        ));
    }
    // Queue names are short strings (255 bytes) and the longest we derive adds about 20 bytes.
    if raw.prefix.is_empty()
        || raw.prefix.len() > 200
        || !raw
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ConfigError::invalid(
            "amqp.prefix",
            quoted(&raw.prefix),
            "must be 1 to 200 characters of letters, digits, '-', '_' and '.'",
        ));
    }
    let min = duration("amqp.reconnect_min_delay", &raw.reconnect_min_delay)?;
    let max = duration("amqp.reconnect_max_delay", &raw.reconnect_max_delay)?;
    if max < min {
        return Err(ConfigError::invalid(
            "amqp.reconnect_max_delay",
            quoted(&raw.reconnect_max_delay),
            "must not be shorter than amqp.reconnect_min_delay",
        ));
    }
    Ok(AmqpSettings {
        url: SecretString::from(raw.url),
        prefix: raw.prefix,
        shards: int_in("amqp.shards", raw.shards, 1, 1024)? as u16,
        prefetch: int_in("amqp.prefetch", raw.prefetch, 1, u16::MAX as i64)? as u16,
        publish_timeout: positive_duration("amqp.publish_timeout", &raw.publish_timeout)?,
        reconnect_min_delay: min,
        reconnect_max_delay: max,
        delivery_limit: int_in("amqp.delivery_limit", raw.delivery_limit, 1, 1_000_000)? as u32,
        ack_hold: at_most("amqp.ack_hold", &raw.ack_hold, Duration::from_secs(1))?,
    })
}

fn validate_graph(
    raw: RawGraph,
    base_dir: &Path,
    env: &HashMap<String, String>,
) -> Result<GraphSettings, ConfigError> {
    let base_url = Url::parse(&raw.base_url).map_err(|e| {
        ConfigError::invalid(
            "graph.base_url",
            quoted(&raw.base_url),
            format!("not a URL ({e})"),
        )
    })?;
    match base_url.scheme() {
        "https" => {}
        "http" if is_loopback(&base_url) => {}
        "http" => {
            return Err(ConfigError::invalid(
                "graph.base_url",
                quoted(&raw.base_url),
                "must use https (plain http is allowed only for loopback, e.g. the simulator)",
            ));
        }
        _ => {
            return Err(ConfigError::invalid(
                "graph.base_url",
                quoted(&raw.base_url),
                "scheme must be https",
            ));
        }
    }
    if base_url.query().is_some() || base_url.cannot_be_a_base() {
        return Err(ConfigError::invalid(
            "graph.base_url",
            quoted(&raw.base_url),
            "must be a root URL without a query",
        ));
    }
    let version = &raw.api_version;
    let version_ok = version
        .strip_prefix('v')
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && major.chars().all(|c| c.is_ascii_digit())
                && minor.chars().all(|c| c.is_ascii_digit())
        });
    if !version_ok {
        return Err(ConfigError::invalid(
            "graph.api_version",
            quoted(version),
            "must look like v21.0",
        ));
    }
    let (app_secret, app_secret_source) = match (&raw.app_secret_env, &raw.app_secret_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "graph.app_secret_file",
                "(set)",
                "set only one of graph.app_secret_env and graph.app_secret_file",
            ));
        }
        (Some(var), None) => {
            let secret = read_env_secret("graph.app_secret_env", var, env)?;
            (Some(secret), Some(SecretSource::Env(var.clone())))
        }
        (None, Some(file)) => {
            let path = resolve(base_dir, file);
            let secret = read_file_secret("graph.app_secret_file", &path)?;
            (Some(secret), Some(SecretSource::File(path)))
        }
        (None, None) => (None, None),
    };
    let batch_size = int_in("graph.batch_size", raw.batch_size, 1, MAX_BATCH_SIZE as i64)? as usize;
    let max_in_flight = int_in("graph.max_in_flight", raw.max_in_flight, 1, 10_000)? as usize;
    let max_in_flight_per_page = int_in(
        "graph.max_in_flight_per_page",
        raw.max_in_flight_per_page,
        1,
        1_000,
    )? as usize;
    Ok(GraphSettings {
        base_url,
        api_version: raw.api_version,
        request_timeout: positive_duration("graph.request_timeout", &raw.request_timeout)?,
        connect_timeout: positive_duration("graph.connect_timeout", &raw.connect_timeout)?,
        app_secret,
        app_secret_source,
        batch_size,
        linger: duration("graph.linger", &raw.linger)?,
        combine_linger: at_most(
            "graph.combine_linger",
            &raw.combine_linger,
            Duration::from_secs(1),
        )?,
        max_in_flight,
        max_in_flight_per_page,
    })
}

fn validate_limits(raw: RawLimits) -> Result<LimitSettings, ConfigError> {
    if !(raw.safety > 0.0 && raw.safety <= 1.0) {
        return Err(ConfigError::invalid(
            "limits.safety",
            raw.safety,
            "must be in (0, 1]",
        ));
    }
    if !(raw.burst_fraction > 0.0 && raw.burst_fraction < 1.0) {
        return Err(ConfigError::invalid(
            "limits.burst_fraction",
            raw.burst_fraction,
            "must be in (0, 1)",
        ));
    }
    let rps = non_zero("limits.rps", raw.rps, 10_000)?;
    let rps_burst = non_zero("limits.rps_burst", raw.rps_burst, 10_000)?;
    let media_rps = non_zero("limits.media_rps", raw.media_rps, 10_000)?;
    let media_burst = non_zero("limits.media_burst", raw.media_burst, 10_000)?;
    Ok(LimitSettings {
        calls_per_audience: int_in(
            "limits.calls_per_audience",
            raw.calls_per_audience,
            1,
            1_000_000,
        )? as u32,
        safety: raw.safety,
        burst_fraction: raw.burst_fraction,
        budget_window: positive_duration("limits.budget_window", &raw.budget_window)?,
        rps,
        rps_burst,
        media_rps,
        media_burst,
        default_audience: int_in(
            "limits.default_audience",
            raw.default_audience,
            1,
            i64::from(u32::MAX),
        )? as u64,
        audience_refresh: positive_duration("limits.audience_refresh", &raw.audience_refresh)?,
    })
}

fn validate_retry(raw: RawRetry) -> Result<RetrySettings, ConfigError> {
    if raw.tiers.is_empty() {
        return Err(ConfigError::invalid(
            "retry.tiers",
            "[]",
            "needs at least one delay tier",
        ));
    }
    let mut tiers = Vec::with_capacity(raw.tiers.len());
    for (i, text) in raw.tiers.iter().enumerate() {
        let key = format!("retry.tiers[{i}]");
        let tier = positive_duration(&key, text)?;
        if tier < Duration::from_millis(100) || tier > Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigError::invalid(
                key,
                quoted(text),
                "must be between 100ms and 7d",
            ));
        }
        if tiers.last().is_some_and(|prev| *prev >= tier) {
            return Err(ConfigError::invalid(
                key,
                quoted(text),
                "tiers must be in increasing order",
            ));
        }
        tiers.push(tier);
    }
    if !(0.0..=0.5).contains(&raw.jitter) {
        return Err(ConfigError::invalid(
            "retry.jitter",
            raw.jitter,
            "must be in [0, 0.5]",
        ));
    }
    let cooldown_min = positive_duration("retry.cooldown_min", &raw.cooldown_min)?;
    let cooldown_max = positive_duration("retry.cooldown_max", &raw.cooldown_max)?;
    if cooldown_max < cooldown_min {
        return Err(ConfigError::invalid(
            "retry.cooldown_max",
            quoted(&raw.cooldown_max),
            "must not be shorter than retry.cooldown_min",
        ));
    }
    Ok(RetrySettings {
        tiers,
        max_attempts: int_in("retry.max_attempts", raw.max_attempts, 1, 1_000)? as u32,
        jitter: raw.jitter,
        max_parked: positive_duration("retry.max_parked", &raw.max_parked)?,
        cooldown_min,
        cooldown_max,
        circuit_failures: int_in("retry.circuit_failures", raw.circuit_failures, 1, 1_000)? as u32,
        paused_delay: positive_duration("retry.paused_delay", &raw.paused_delay)?,
        park_bundle: int_in("retry.park_bundle", raw.park_bundle, 1, 10_000)? as usize,
    })
}

fn validate_pipeline(raw: RawPipeline) -> Result<PipelineSettings, ConfigError> {
    let lane_capacity = int_in("pipeline.lane_capacity", raw.lane_capacity, 1, 1_000_000)? as usize;
    let blocked_lane_capacity = int_in(
        "pipeline.blocked_lane_capacity",
        raw.blocked_lane_capacity,
        0,
        1_000_000,
    )? as usize;
    if blocked_lane_capacity > lane_capacity {
        return Err(ConfigError::invalid(
            "pipeline.blocked_lane_capacity",
            raw.blocked_lane_capacity,
            "must not exceed pipeline.lane_capacity",
        ));
    }
    Ok(PipelineSettings {
        lane_capacity,
        blocked_lane_capacity,
        max_hold: positive_duration("pipeline.max_hold", &raw.max_hold)?,
        idle_lane_ttl: positive_duration("pipeline.idle_lane_ttl", &raw.idle_lane_ttl)?,
        dedup_capacity: int_in(
            "pipeline.dedup_capacity",
            raw.dedup_capacity,
            0,
            100_000_000,
        )? as usize,
        dedup_ttl: duration("pipeline.dedup_ttl", &raw.dedup_ttl)?,
        shutdown_grace: duration("pipeline.shutdown_grace", &raw.shutdown_grace)?,
    })
}

fn validate_logging(raw: RawLogging) -> Result<LoggingSettings, ConfigError> {
    let format = match raw.format.as_str() {
        "json" => LogFormat::Json,
        "pretty" => LogFormat::Pretty,
        _ => {
            return Err(ConfigError::invalid(
                "logging.format",
                quoted(&raw.format),
                "must be json or pretty",
            ));
        }
    };
    if raw.level.parse::<tracing_subscriber::EnvFilter>().is_err() {
        return Err(ConfigError::invalid(
            "logging.level",
            quoted(&raw.level),
            "must be a level (error, warn, info, debug, trace) or a filter directive",
        ));
    }
    Ok(LoggingSettings {
        format,
        level: raw.level,
    })
}

fn validate_page(
    key: &str,
    raw: RawPage,
    base_dir: &Path,
    env: &HashMap<String, String>,
    tokens_file: Option<&Path>,
    tokens: &BTreeMap<String, SecretString>,
) -> Result<PageSettings, ConfigError> {
    let id = match raw.id {
        Some(RawScalar::Int(n)) if n > 0 => n.to_string(),
        Some(RawScalar::Str(s)) if is_page_id(&s) => s,
        Some(other) => {
            return Err(ConfigError::invalid(
                format!("{key}.id"),
                other,
                "a Page id is 1 to 64 digits",
            ));
        }
        None => {
            return Err(ConfigError::invalid(
                format!("{key}.id"),
                "(missing)",
                "every Page needs an id",
            ));
        }
    };
    let (token, token_source) = match (&raw.token_env, &raw.token_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                format!("{key}.token_file"),
                "(set)",
                "set only one of token_env and token_file",
            ));
        }
        (Some(var), None) => (
            read_env_secret(&format!("{key}.token_env"), var, env)?,
            SecretSource::Env(var.clone()),
        ),
        (None, Some(file)) => {
            let path = resolve(base_dir, file);
            (
                read_file_secret(&format!("{key}.token_file"), &path)?,
                SecretSource::File(path),
            )
        }
        (None, None) => match (tokens.get(&id), tokens_file) {
            (Some(token), Some(path)) => {
                (token.clone(), SecretSource::TokensFile(path.to_path_buf()))
            }
            _ => {
                return Err(ConfigError::invalid(
                    format!("{key}.token_env"),
                    "(missing)",
                    format!(
                        "Page {id} has no token source: set token_env or token_file, or list it in tokens_file"
                    ),
                ));
            }
        },
    };
    let audience = match raw.audience {
        None => Audience::Auto,
        Some(RawScalar::Str(s)) if s == "auto" => Audience::Auto,
        Some(RawScalar::Int(n)) if n >= 1 && n <= i64::from(u32::MAX) => Audience::Fixed(n as u64),
        Some(other) => {
            return Err(ConfigError::invalid(
                format!("{key}.audience"),
                other,
                "must be a positive number of people or \"auto\"",
            ));
        }
    };
    let rps = raw
        .rps
        .map(|v| non_zero(&format!("{key}.rps"), v, 10_000))
        .transpose()?;
    let media_rps = raw
        .media_rps
        .map(|v| non_zero(&format!("{key}.media_rps"), v, 10_000))
        .transpose()?;
    Ok(PageSettings {
        id,
        token,
        token_source,
        audience,
        rps,
        media_rps,
    })
}

/// A Page id as the Graph API writes them: digits only.
pub fn is_page_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_digit())
}

fn read_tokens_file(path: &Path) -> Result<BTreeMap<String, SecretString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    // Deliberately not echoing the parser's message: it may quote the line, and the line holds a
    // token.
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.display().to_string(),
            reason: format!(
                "invalid TOML near byte {}; expected lines of the form `page_id = \"token\"`",
                e.span().map_or(0, |s| s.start)
            ),
        })?;
    let mut tokens = BTreeMap::new();
    for (id, value) in table {
        let Some(token) = value.as_str() else {
            return Err(ConfigError::invalid(
                format!("{}: {id}", path.display()),
                "(not shown)",
                "a token must be a string",
            ));
        };
        if !is_page_id(&id) || token.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{}: {id}", path.display()),
                "(not shown)",
                "entries are `page_id = \"token\"` with a numeric Page id and a non-empty token",
            ));
        }
        tokens.insert(id, SecretString::from(token.trim().to_string()));
    }
    Ok(tokens)
}

fn read_env_secret(
    key: &str,
    var: &str,
    env: &HashMap<String, String>,
) -> Result<SecretString, ConfigError> {
    match env.get(var) {
        Some(value) if !value.trim().is_empty() => Ok(SecretString::from(value.trim().to_string())),
        Some(_) => Err(ConfigError::invalid(
            key,
            quoted(var),
            "the environment variable is empty",
        )),
        None => Err(ConfigError::invalid(
            key,
            quoted(var),
            "the environment variable is not set",
        )),
    }
}

fn read_file_secret(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::invalid(
            key,
            quoted(&path.display().to_string()),
            format!("cannot read the file ({e})"),
        )
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(ConfigError::invalid(
            key,
            quoted(&path.display().to_string()),
            "the file is empty",
        ));
    }
    Ok(SecretString::from(secret.to_string()))
}

fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn int_in(key: &str, value: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            key,
            value,
            format!("must be between {min} and {max}"),
        ))
    }
}

fn non_zero(key: &str, value: i64, max: i64) -> Result<NonZeroU32, ConfigError> {
    let v = int_in(key, value, 1, max)?;
    Ok(NonZeroU32::new(v as u32).expect("checked to be at least 1"))
}

fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|_| {
        ConfigError::invalid(
            key,
            quoted(text),
            "must be a duration such as 250ms, 30s, 5m or 24h",
        )
    })
}

fn positive_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = duration(key, text)?;
    if d.is_zero() {
        return Err(ConfigError::invalid(
            key,
            quoted(text),
            "must be longer than zero",
        ));
    }
    Ok(d)
}

fn at_most(key: &str, text: &str, max: Duration) -> Result<Duration, ConfigError> {
    let d = duration(key, text)?;
    if d > max {
        return Err(ConfigError::invalid(
            key,
            quoted(text),
            format!("must be at most {}", humantime::format_duration(max)),
        ));
    }
    Ok(d)
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// `url` with any password replaced by `***`. Works on strings that do not parse as URLs too, so
/// that a malformed URL in an error message never leaks its password.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut parsed) = Url::parse(url) {
        if parsed.password().is_some() && parsed.set_password(Some("***")).is_ok() {
            return parsed.to_string();
        }
        if parsed.password().is_none() {
            return parsed.to_string();
        }
    }
    // Unparseable: hide everything between the scheme and the last '@'.
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start + 3 => {
            let user_end = url[start + 3..at].find(':').map_or(at, |i| start + 3 + i);
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_string(),
    }
}

// ===== effective settings, for check-config =====

impl Settings {
    /// The effective settings as TOML, secrets shown only by their source.
    pub fn to_redacted_toml(&self) -> String {
        use std::fmt::Write;
        let d = |d: Duration| quoted(&humantime::format_duration(d).to_string());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# effective settings; secrets are shown by their source only"
        );
        if let Some(p) = &self.pages_file {
            let _ = writeln!(out, "pages_file = {}", quoted(&p.display().to_string()));
        }
        if let Some(p) = &self.tokens_file {
            let _ = writeln!(out, "tokens_file = {}", quoted(&p.display().to_string()));
        }
        let a = &self.amqp;
        let _ = writeln!(out, "\n[amqp]");
        let _ = writeln!(out, "url = {}", quoted(&redact_url(a.url.expose_secret())));
        let _ = writeln!(out, "prefix = {}", quoted(&a.prefix));
        let _ = writeln!(out, "shards = {}", a.shards);
        let _ = writeln!(out, "prefetch = {}", a.prefetch);
        let _ = writeln!(out, "publish_timeout = {}", d(a.publish_timeout));
        let _ = writeln!(out, "reconnect_min_delay = {}", d(a.reconnect_min_delay));
        let _ = writeln!(out, "reconnect_max_delay = {}", d(a.reconnect_max_delay));
        let _ = writeln!(out, "delivery_limit = {}", a.delivery_limit);
        let _ = writeln!(out, "ack_hold = {}", d(a.ack_hold));
        let g = &self.graph;
        let _ = writeln!(out, "\n[graph]");
        let _ = writeln!(out, "base_url = {}", quoted(g.base_url.as_str()));
        let _ = writeln!(out, "api_version = {}", quoted(&g.api_version));
        let _ = writeln!(out, "request_timeout = {}", d(g.request_timeout));
        let _ = writeln!(out, "connect_timeout = {}", d(g.connect_timeout));
        match &g.app_secret_source {
            Some(SecretSource::Env(var)) => {
                let _ = writeln!(out, "app_secret_env = {}  # [redacted]", quoted(var));
            }
            Some(SecretSource::File(path) | SecretSource::TokensFile(path)) => {
                let _ = writeln!(
                    out,
                    "app_secret_file = {}  # [redacted]",
                    quoted(&path.display().to_string())
                );
            }
            None => {
                let _ = writeln!(out, "# no app secret: appsecret_proof is not sent");
            }
        }
        let _ = writeln!(out, "batch_size = {}", g.batch_size);
        let _ = writeln!(out, "linger = {}", d(g.linger));
        let _ = writeln!(out, "combine_linger = {}", d(g.combine_linger));
        let _ = writeln!(out, "max_in_flight = {}", g.max_in_flight);
        let _ = writeln!(out, "max_in_flight_per_page = {}", g.max_in_flight_per_page);
        let l = &self.limits;
        let _ = writeln!(out, "\n[limits]");
        let _ = writeln!(out, "calls_per_audience = {}", l.calls_per_audience);
        let _ = writeln!(out, "safety = {}", l.safety);
        let _ = writeln!(out, "burst_fraction = {}", l.burst_fraction);
        let _ = writeln!(out, "budget_window = {}", d(l.budget_window));
        let _ = writeln!(out, "rps = {}", l.rps);
        let _ = writeln!(out, "rps_burst = {}", l.rps_burst);
        let _ = writeln!(out, "media_rps = {}", l.media_rps);
        let _ = writeln!(out, "media_burst = {}", l.media_burst);
        let _ = writeln!(out, "default_audience = {}", l.default_audience);
        let _ = writeln!(out, "audience_refresh = {}", d(l.audience_refresh));
        let r = &self.retry;
        let _ = writeln!(out, "\n[retry]");
        let tiers: Vec<String> = r.tiers.iter().map(|t| d(*t)).collect();
        let _ = writeln!(out, "tiers = [{}]", tiers.join(", "));
        let _ = writeln!(out, "max_attempts = {}", r.max_attempts);
        let _ = writeln!(out, "jitter = {}", r.jitter);
        let _ = writeln!(out, "max_parked = {}", d(r.max_parked));
        let _ = writeln!(out, "cooldown_min = {}", d(r.cooldown_min));
        let _ = writeln!(out, "cooldown_max = {}", d(r.cooldown_max));
        let _ = writeln!(out, "circuit_failures = {}", r.circuit_failures);
        let _ = writeln!(out, "paused_delay = {}", d(r.paused_delay));
        let _ = writeln!(out, "park_bundle = {}", r.park_bundle);
        let p = &self.pipeline;
        let _ = writeln!(out, "\n[pipeline]");
        let _ = writeln!(out, "lane_capacity = {}", p.lane_capacity);
        let _ = writeln!(out, "blocked_lane_capacity = {}", p.blocked_lane_capacity);
        let _ = writeln!(out, "max_hold = {}", d(p.max_hold));
        let _ = writeln!(out, "idle_lane_ttl = {}", d(p.idle_lane_ttl));
        let _ = writeln!(out, "dedup_capacity = {}", p.dedup_capacity);
        let _ = writeln!(out, "dedup_ttl = {}", d(p.dedup_ttl));
        let _ = writeln!(out, "shutdown_grace = {}", d(p.shutdown_grace));
        let _ = writeln!(out, "\n[admin]");
        let _ = writeln!(out, "listen = {}", quoted(&self.admin.listen.to_string()));
        let _ = writeln!(out, "\n[metrics]");
        let _ = writeln!(out, "page_label_limit = {}", self.metrics.page_label_limit);
        let _ = writeln!(out, "\n[logging]");
        let _ = writeln!(out, "format = {}", quoted(self.logging.format.as_str()));
        let _ = writeln!(out, "level = {}", quoted(&self.logging.level));
        for page in &self.pages {
            let _ = writeln!(out, "\n[[pages]]");
            let _ = writeln!(out, "id = {}", quoted(&page.id));
            match &page.token_source {
                SecretSource::Env(var) => {
                    let _ = writeln!(out, "token_env = {}  # [redacted]", quoted(var));
                }
                SecretSource::File(path) => {
                    let _ = writeln!(
                        out,
                        "token_file = {}  # [redacted]",
                        quoted(&path.display().to_string())
                    );
                }
                SecretSource::TokensFile(_) => {
                    let _ = writeln!(out, "# token from tokens_file [redacted]");
                }
            }
            match page.audience {
                Audience::Fixed(n) => {
                    let _ = writeln!(out, "audience = {n}");
                }
                Audience::Auto => {
                    let _ = writeln!(out, "audience = \"auto\"");
                }
            }
            if let Some(rps) = page.rps {
                let _ = writeln!(out, "rps = {rps}");
            }
            if let Some(rps) = page.media_rps {
                let _ = writeln!(out, "media_rps = {rps}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    const TOKEN: &str = "EAAGm0PX4ZCpsBAKZC-very-secret-token";
    const APP_SECRET: &str = "d3adb33f-app-secret";

    /// Writes `text` to a fresh file in a temporary directory; returns the directory (kept alive
    /// by the caller) and the file's path.
    fn file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (dir, path)
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_text(text: &str, env_pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let (_dir, path) = file("pagerelay.toml", text);
        Settings::load(&LoadOptions {
            file: Some(path),
            env: env(env_pairs),
        })
    }

    fn error_of(text: &str) -> String {
        load_text(text, &[("TOKEN_1", TOKEN)])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn default_toml_is_accepted_and_matches_the_built_in_defaults() {
        let shipped = Settings::load(&LoadOptions {
            file: Some(PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/default.toml"
            ))),
            env: HashMap::new(),
        })
        .expect("config/default.toml loads");
        let built_in = Settings::load(&LoadOptions::default()).unwrap();
        assert_eq!(shipped.to_redacted_toml(), built_in.to_redacted_toml());
        assert_eq!(built_in.amqp.prefetch, 1000);
        assert_eq!(built_in.graph.batch_size, 50);
        assert_eq!(built_in.graph.linger, Duration::from_millis(10));
        assert_eq!(built_in.retry.tiers.len(), 6);
        assert!(built_in.pages.is_empty());
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Settings::load(&LoadOptions {
            file: Some(PathBuf::from("/nonexistent/pagerelay.toml")),
            env: HashMap::new(),
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/pagerelay.toml"),
            "{err}"
        );
    }

    #[test]
    fn invalid_toml_names_the_line() {
        let err = error_of("[amqp]\nprefetch = \n");
        assert!(err.contains("invalid TOML at line 2"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = error_of("[amqp]\nprefetchh = 10\n");
        assert!(err.contains("unknown field `prefetchh`"), "{err}");
        assert!(err.contains("amqp"), "{err}");
        let err = error_of("[pipeline]\nlane_capacity = 5\nshards = 2\n");
        assert!(err.contains("unknown field `shards`"), "{err}");
        let err = error_of("colour = \"blue\"\n");
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn out_of_range_numbers_name_key_value_and_rule() {
        assert_eq!(
            error_of("[amqp]\nprefetch = 0\n"),
            "amqp.prefetch = 0: must be between 1 and 65535"
        );
        assert_eq!(
            error_of("[graph]\nbatch_size = 51\n"),
            "graph.batch_size = 51: must be between 1 and 50"
        );
        assert_eq!(
            error_of("[limits]\nsafety = 1.5\n"),
            "limits.safety = 1.5: must be in (0, 1]"
        );
        assert_eq!(
            error_of("[amqp]\nshards = 0\n"),
            "amqp.shards = 0: must be between 1 and 1024"
        );
    }

    #[test]
    fn durations_and_tiers_are_checked() {
        assert!(
            error_of("[graph]\nlinger = \"soon\"\n")
                .starts_with("graph.linger = \"soon\": must be a duration")
        );
        assert_eq!(
            error_of("[retry]\ntiers = [\"5s\", \"1s\"]\n"),
            "retry.tiers[1] = \"1s\": tiers must be in increasing order"
        );
        assert_eq!(
            error_of("[retry]\ntiers = []\n"),
            "retry.tiers = []: needs at least one delay tier"
        );
        assert_eq!(
            error_of("[amqp]\nack_hold = \"5s\"\n"),
            "amqp.ack_hold = \"5s\": must be at most 1s"
        );
        assert_eq!(
            error_of("[graph]\ncombine_linger = \"2m\"\n"),
            "graph.combine_linger = \"2m\": must be at most 1s"
        );
    }

    #[test]
    fn urls_are_checked() {
        let err = error_of("[amqp]\nurl = \"http://guest:hunter2@localhost\"\n");
        assert!(err.starts_with("amqp.url = "), "{err}");
        assert!(err.ends_with("scheme must be amqp or amqps"), "{err}");
        assert!(!err.contains("hunter2"), "password leaked: {err}");
        let err = error_of("[amqp]\nurl = \"amqp://guest:hunter2@\"\n");
        assert!(!err.contains("hunter2"), "password leaked: {err}");
        let err = error_of("[graph]\nbase_url = \"http://graph.example.com\"\n");
        assert!(err.contains("must use https"), "{err}");
        let ok = load_text("[graph]\nbase_url = \"http://127.0.0.1:8090\"\n", &[]).unwrap();
        assert_eq!(ok.graph.base_url.as_str(), "http://127.0.0.1:8090/");
        assert!(error_of("[graph]\napi_version = \"21\"\n").contains("must look like v21.0"));
    }

    #[test]
    fn a_page_needs_a_token_source() {
        let err = error_of("[[pages]]\nid = \"1001\"\naudience = 10\n");
        assert_eq!(
            err,
            "pages[0].token_env = (missing): Page 1001 has no token source: set token_env or token_file, or list it in tokens_file"
        );
        let err = error_of("[[pages]]\nid = \"1001\"\ntoken_env = \"NOT_SET\"\n");
        assert_eq!(
            err,
            "pages[0].token_env = \"NOT_SET\": the environment variable is not set"
        );
    }

    #[test]
    fn duplicate_page_ids_are_rejected() {
        let err = error_of(
            "[[pages]]\nid = \"1001\"\ntoken_env = \"TOKEN_1\"\n[[pages]]\nid = 1001\ntoken_env = \"TOKEN_1\"\n",
        );
        assert_eq!(
            err,
            "pages[1].id = \"1001\": duplicate Page id: each Page may be listed once"
        );
    }

    #[test]
    fn page_ids_and_audiences_are_checked() {
        assert!(
            error_of("[[pages]]\nid = \"page-1\"\ntoken_env = \"TOKEN_1\"\n")
                .contains("a Page id is 1 to 64 digits")
        );
        assert!(
            error_of("[[pages]]\nid = 1\ntoken_env = \"TOKEN_1\"\naudience = 0\n")
                .contains("must be a positive number")
        );
        assert!(
            error_of("[[pages]]\nid = 1\ntoken_env = \"TOKEN_1\"\naudience = \"lots\"\n")
                .contains("must be a positive number")
        );
    }

    #[test]
    fn tokens_come_from_env_files_and_the_tokens_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("page-2.token"), format!("{TOKEN}-2\n")).unwrap();
        std::fs::write(
            dir.path().join("tokens.toml"),
            format!("\"3003\" = \"{TOKEN}-3\"\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("pages.toml"),
            "[[pages]]\nid = \"3003\"\naudience = \"auto\"\n",
        )
        .unwrap();
        let main = dir.path().join("pagerelay.toml");
        std::fs::write(
            &main,
            "pages_file = \"pages.toml\"\ntokens_file = \"tokens.toml\"\n\
             [[pages]]\nid = \"1001\"\ntoken_env = \"TOKEN_1\"\naudience = 500\nrps = 40\n\
             [[pages]]\nid = \"2002\"\ntoken_file = \"page-2.token\"\n",
        )
        .unwrap();
        let settings = Settings::load(&LoadOptions {
            file: Some(main),
            env: env(&[("TOKEN_1", TOKEN)]),
        })
        .unwrap();
        let ids: Vec<&str> = settings.pages.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["1001", "2002", "3003"]);
        assert_eq!(settings.pages[0].token().expose_secret(), TOKEN);
        assert_eq!(settings.pages[0].audience, Audience::Fixed(500));
        assert_eq!(settings.pages[0].rps.map(NonZeroU32::get), Some(40));
        assert_eq!(
            settings.pages[1].token().expose_secret(),
            format!("{TOKEN}-2")
        );
        assert_eq!(
            settings.pages[2].token().expose_secret(),
            format!("{TOKEN}-3")
        );
        assert_eq!(settings.pages[2].audience, Audience::Auto);
        assert!(matches!(
            settings.pages[2].token_source,
            SecretSource::TokensFile(_)
        ));
    }

    #[test]
    fn environment_overrides_the_file() {
        let settings = load_text(
            "[amqp]\nprefetch = 10\n",
            &[
                ("PAGERELAY__AMQP__PREFETCH", "20"),
                ("PAGERELAY__AMQP__PREFIX", "staging"),
                ("PAGERELAY__GRAPH__LINGER", "25ms"),
                ("PAGERELAY__RETRY__TIERS", "2s,10s"),
                ("PAGERELAY_UNRELATED", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(settings.amqp.prefetch, 20);
        assert_eq!(settings.amqp.prefix, "staging");
        assert_eq!(settings.graph.linger, Duration::from_millis(25));
        assert_eq!(
            settings.retry.tiers,
            [Duration::from_secs(2), Duration::from_secs(10)]
        );
        let err = load_text("", &[("PAGERELAY__AMQP__PREFECH", "5")]).unwrap_err();
        assert!(err.to_string().contains("unknown field `prefech`"), "{err}");
    }

    #[test]
    fn secrets_never_appear_in_output_or_errors() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("pagerelay.toml");
        std::fs::write(
            &main,
            "[amqp]\nurl = \"amqp://relay:hunter2@broker:5672/%2f\"\n\
             [graph]\napp_secret_env = \"APP_SECRET\"\n\
             [[pages]]\nid = \"1001\"\ntoken_env = \"TOKEN_1\"\naudience = 10\n",
        )
        .unwrap();
        let options = LoadOptions {
            file: Some(main.clone()),
            env: env(&[("TOKEN_1", TOKEN), ("APP_SECRET", APP_SECRET)]),
        };
        let settings = Settings::load(&options).unwrap();
        let shown = [
            settings.to_redacted_toml(),
            format!("{settings:?}"),
            format!("{:?}", settings.pages),
        ];
        for text in &shown {
            assert!(!text.contains(TOKEN), "token leaked: {text}");
            assert!(!text.contains(APP_SECRET), "app secret leaked: {text}");
            assert!(!text.contains("hunter2"), "password leaked: {text}");
        }
        assert!(shown[0].contains("amqp://relay:***@broker:5672/%2f"));
        assert!(shown[0].contains("token_env = \"TOKEN_1\""));

        // A tokens file with a syntax error must not be quoted back.
        std::fs::write(dir.path().join("tokens.toml"), format!("1001 = {TOKEN}\n")).unwrap();
        std::fs::write(&main, "tokens_file = \"tokens.toml\"\n").unwrap();
        let err = Settings::load(&options).unwrap_err().to_string();
        assert!(!err.contains(TOKEN), "token leaked: {err}");
        assert!(err.contains("tokens.toml"), "{err}");
    }

    #[test]
    fn redact_url_hides_passwords_in_any_shape() {
        assert_eq!(
            redact_url("amqp://u:p@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert_eq!(redact_url("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact_url("amqp://u:p@@"), "amqp://u:***@");
        assert!(!redact_url("amqp://user:secret@[bad").contains("secret"));
    }
}
