//! The local RabbitMQ (started by `deploy/rabbitmq/local-broker.sh`) and per-test prefixes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::{Connection, ConnectionProperties};

/// The broker under test; override with `PAGERELAY_TEST_AMQP_URL`.
pub fn amqp_url() -> String {
    std::env::var("PAGERELAY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// The broker's management API, used to find and delete what a test declared.
pub fn management_url() -> String {
    std::env::var("PAGERELAY_TEST_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:15672".to_string())
}

/// A topology prefix no other test (in this process or another) uses: `t-<name>-<pid>-<n>-<nanos>`.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t-{name}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connects to the test broker, failing the test with a hint when it is not running.
pub async fn connect() -> Connection {
    let url = amqp_url();
    match tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "cannot connect to the test broker at {url}: {e}; start it with deploy/rabbitmq/local-broker.sh"
        ),
        Err(_) => panic!("connecting to the test broker at {url} timed out"),
    }
}

/// Deletes every queue and exchange whose name starts with `prefix.` (or equals `prefix`).
pub async fn delete_topology(prefix: &str) {
    let client = reqwest::Client::new();
    let base = management_url();
    for kind in ["queues", "exchanges"] {
        let names: Vec<String> = match list_names(&client, &base, kind).await {
            Ok(names) => names,
            Err(e) => {
                eprintln!("cleanup of {prefix}: cannot list {kind}: {e}");
                continue;
            }
        };
        for name in names
            .into_iter()
            .filter(|n| n == prefix || n.starts_with(&format!("{prefix}.")))
        {
            let url = format!("{base}/api/{kind}/%2F/{}", encode(&name));
            let _ = client
                .delete(url)
                .basic_auth("guest", Some("guest"))
                .send()
                .await;
        }
    }
}

/// Names of the queues or exchanges of the default vhost.
pub async fn list_names(
    client: &reqwest::Client,
    base: &str,
    kind: &str,
) -> Result<Vec<String>, String> {
    let response = client
        .get(format!("{base}/api/{kind}/%2F?columns=name"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    let items: Vec<serde_json::Value> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok(items
        .iter()
        .filter_map(|i| i["name"].as_str().map(str::to_string))
        .collect())
}

fn encode(name: &str) -> String {
    form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A consumer as the management API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub queue: String,
    pub tag: String,
    pub active: bool,
}

/// The consumers of queues whose names start with `prefix.`. The management API refreshes
/// consumer activity every few seconds, so callers poll.
pub async fn consumers(prefix: &str) -> Vec<ConsumerInfo> {
    consumers_at(&management_url(), prefix).await
}

/// [`consumers`], asking the management API at `base` (another broker or cluster node).
pub async fn consumers_at(base: &str, prefix: &str) -> Vec<ConsumerInfo> {
    let client = reqwest::Client::new();
    let Ok(response) = client
        .get(format!("{base}/api/consumers/%2F"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
    else {
        return Vec::new();
    };
    let Ok(body) = response.bytes().await else {
        return Vec::new();
    };
    let items: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
    items
        .iter()
        .filter_map(|c| {
            let queue = c["queue"]["name"].as_str()?.to_string();
            queue
                .starts_with(&format!("{prefix}."))
                .then(|| ConsumerInfo {
                    queue,
                    tag: c["consumer_tag"].as_str().unwrap_or_default().to_string(),
                    active: c["active"].as_bool().unwrap_or(false),
                })
        })
        .collect()
}

/// A RabbitMQ node of a test's own (`deploy/rabbitmq/node.sh`), for tests that stop and restart
/// the broker without disturbing the one every other test shares. Forgotten (stopped, data
/// deleted) on drop.
pub struct OwnNode {
    pub name: String,
    pub port: u16,
}

impl OwnNode {
    /// Starts a node with a free AMQP port (its management and distribution ports, +10000 and
    /// +20000, are free too).
    pub fn start(name: &str) -> OwnNode {
        let port = (20_000u16..25_000)
            .step_by(7)
            .skip((std::process::id() % 500) as usize)
            .find(|p| {
                [*p, p + 10_000, p + 20_000]
                    .iter()
                    .all(|q| std::net::TcpListener::bind(("127.0.0.1", *q)).is_ok())
            })
            .expect("a free port range");
        let name = format!("{name}-{}", std::process::id());
        let node = OwnNode { name, port };
        node.run(&["start", &node.name.clone(), &port.to_string()]);
        node
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn stop(&self) {
        self.run(&["stop", &self.name]);
    }

    pub fn restart(&self) {
        self.run(&["start", &self.name, &self.port.to_string()]);
    }

    fn run(&self, args: &[&str]) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rabbitmq/node.sh");
        let status = std::process::Command::new(script)
            .args(args)
            .status()
            .expect("node.sh runs");
        assert!(status.success(), "node.sh {args:?} failed");
    }
}

impl Drop for OwnNode {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rabbitmq/node.sh");
        let _ = std::process::Command::new(script)
            .args(["forget", &self.name])
            .status();
    }
}
