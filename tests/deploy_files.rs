//! The files under `deploy/` agree with the code: every shipped pagerelay settings file loads
//! through the real settings loader, every stop timeout outlasts the shutdown grace it guards,
//! the admin port is the same everywhere it is named, the RabbitMQ policies match exactly
//! pagerelay's queues and set only keys that cannot fight its queue arguments, and the compose
//! trial's jobs and Pages fit together.
//!
//! Tool-based checks of the same files (hadolint, kubernetes-validate, docker-compose config,
//! systemd-analyze, shellcheck, yamllint, promtool) are in `scripts/check-deploy.sh`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pagerelay::amqp::Topology;
use pagerelay::config::{LoadOptions, Settings};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

fn toml_table(path: &str) -> toml::Table {
    read(path)
        .parse()
        .unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// Loads a shipped settings file as pagerelay would, with `tokens_file` pointed at a file
/// holding a token for each of its Pages (the real one is a mounted secret).
fn load_settings(path: &str, tokens: Option<&Path>) -> Settings {
    let dir = tempfile::tempdir().unwrap();
    let tokens = match tokens {
        Some(tokens) => tokens.to_path_buf(),
        None => {
            let ids: Vec<String> = toml_table(path)
                .get("pages")
                .and_then(|p| p.as_array())
                .map(|pages| {
                    pages
                        .iter()
                        .map(|p| p["id"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            let file = dir.path().join("tokens.toml");
            let text: String = ids.iter().map(|id| format!("\"{id}\" = \"t\"\n")).collect();
            std::fs::write(&file, text).unwrap();
            file
        }
    };
    let options = LoadOptions {
        file: Some(deploy(path)),
        env: HashMap::from([(
            "PAGERELAY__TOKENS_FILE".to_string(),
            tokens.display().to_string(),
        )]),
    };
    Settings::load(&options).unwrap_or_else(|e| panic!("deploy/{path} does not load: {e}"))
}

/// The value of the first line `<key><separator><value>` (after indentation) of `path`.
fn scalar(path: &str, key: &str, separator: char) -> String {
    read(path)
        .lines()
        .map(str::trim)
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim_start()
                .strip_prefix(separator)
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("deploy/{path} sets no {key}"))
}

#[test]
fn shipped_settings_files_load() {
    // The image's built-in default: no Pages, admin on every interface of the container.
    let docker = load_settings("docker/pagerelay.toml", None);
    assert!(docker.pages.is_empty());
    assert!(docker.admin.listen.ip().is_unspecified());

    let k8s = load_settings("k8s/pagerelay.toml", None);
    assert!(k8s.admin.listen.ip().is_unspecified());
    assert_eq!(
        k8s.amqp.shards, 6,
        "the Deployment's comments assume 6 shards"
    );
    // Loaded with tokens_file overridden; the file itself names where the Deployment mounts
    // the Secret.
    assert_eq!(
        toml_table("k8s/pagerelay.toml")["tokens_file"].as_str(),
        Some("/run/secrets/pagerelay/tokens.toml")
    );

    let compose = load_settings(
        "compose/pagerelay.toml",
        Some(&deploy("compose/tokens.toml")),
    );
    assert!(compose.admin.listen.ip().is_unspecified());
    assert!(compose.amqp.shards > 1, "the trial shows sharding");
    assert_eq!(
        toml_table("compose/pagerelay.toml")["tokens_file"].as_str(),
        Some("/run/secrets/pagerelay/tokens.toml")
    );
}

#[test]
fn the_compose_simulator_knows_pagerelays_pages_and_tokens() {
    let settings = load_settings(
        "compose/pagerelay.toml",
        Some(&deploy("compose/tokens.toml")),
    );
    let theirs: BTreeMap<String, (String, u64)> = toml_table("compose/sim-pages.toml")["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                (
                    p["token"].as_str().unwrap().to_string(),
                    p["audience"].as_integer().unwrap() as u64,
                ),
            )
        })
        .collect();
    let ours: BTreeMap<String, (String, u64)> = settings
        .pages
        .iter()
        .map(|p| {
            use secrecy::ExposeSecret;
            let audience = match p.audience {
                pagerelay::config::Audience::Fixed(n) => n,
                pagerelay::config::Audience::Auto => panic!("the trial uses fixed audiences"),
            };
            (
                p.id.clone(),
                (p.token().expose_secret().to_string(), audience),
            )
        })
        .collect();
    assert_eq!(ours, theirs);

    // The sample jobs are valid and all go to those Pages.
    let jobs = read("compose/jobs.jsonl");
    let mut verdicts = Vec::new();
    let summary = pagerelay::job::validate_lines(jobs.as_bytes(), &mut verdicts).unwrap();
    assert!(summary.all_valid() && summary.valid > 0, "{summary:?}");
    for line in jobs.lines() {
        let job: Value = serde_json::from_str(line).unwrap();
        assert!(
            ours.contains_key(job["page_id"].as_str().unwrap()),
            "{line}"
        );
    }
}

fn duration(text: &str) -> Duration {
    let text = text.trim_matches('"');
    match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text).unwrap_or_else(|e| panic!("{text}: {e}")),
    }
}

#[test]
fn stop_timeouts_outlast_the_shutdown_grace() {
    // After the grace, pagerelay still hands the rest back and closes the connection; SIGKILL
    // before that loses nothing either, but turns a clean stop into redeliveries.
    let margin = Duration::from_secs(10);
    let cases = [
        (
            "k8s/deployment.yaml terminationGracePeriodSeconds",
            duration(&scalar(
                "k8s/deployment.yaml",
                "terminationGracePeriodSeconds",
                ':',
            )),
            load_settings("k8s/pagerelay.toml", None),
        ),
        (
            "compose.yaml stop_grace_period",
            duration(&scalar("compose.yaml", "stop_grace_period", ':')),
            load_settings(
                "compose/pagerelay.toml",
                Some(&deploy("compose/tokens.toml")),
            ),
        ),
        (
            // The unit's settings file is the operator's: measure against the default.
            "systemd TimeoutStopSec",
            duration(&scalar("systemd/pagerelay.service", "TimeoutStopSec", '=')),
            Settings::load(&LoadOptions::default()).unwrap(),
        ),
    ];
    for (what, timeout, settings) in cases {
        let grace = settings.pipeline.shutdown_grace;
        assert!(
            timeout >= grace + margin,
            "{what} is {timeout:?}; shutdown_grace is {grace:?}"
        );
    }
}

#[test]
fn the_admin_port_is_the_same_everywhere() {
    let port = load_settings("docker/pagerelay.toml", None)
        .admin
        .listen
        .port();
    let dockerfile = read("docker/Dockerfile");
    assert!(dockerfile.contains(&format!("\nEXPOSE {port}\n")));
    assert!(dockerfile.contains(&format!("http://127.0.0.1:{port}/healthz")));

    let k8s = load_settings("k8s/pagerelay.toml", None)
        .admin
        .listen
        .port();
    assert_eq!(
        scalar("k8s/deployment.yaml", "containerPort", ':'),
        k8s.to_string()
    );

    let compose = load_settings(
        "compose/pagerelay.toml",
        Some(&deploy("compose/tokens.toml")),
    )
    .admin
    .listen
    .port();
    assert!(read("compose.yaml").contains(&format!("\"127.0.0.1:{compose}:{compose}\"")));
    assert!(read("compose/prometheus.yml").contains(&format!("\"pagerelay:{compose}\"")));
}

/// The topology of the default prefix, with a given shard count and tiers.
fn topology(shards: u16, tiers: &[&str]) -> Topology {
    let mut env = HashMap::from([("PAGERELAY__AMQP__SHARDS".to_string(), shards.to_string())]);
    if !tiers.is_empty() {
        env.insert("PAGERELAY__RETRY__TIERS".to_string(), tiers.join(","));
    }
    let settings = Settings::load(&LoadOptions { file: None, env }).unwrap();
    Topology::new(&settings.amqp, &settings.retry.tiers)
}

struct Policy {
    name: String,
    pattern: regex::Regex,
    definition: serde_json::Map<String, Value>,
}

fn policies() -> Vec<Policy> {
    let definitions: Value = serde_json::from_str(&read("rabbitmq/definitions.json")).unwrap();
    definitions["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["vhost"], "/", "{p}");
            assert_eq!(p["apply-to"], "queues", "{p}");
            assert_eq!(p["priority"], 10, "{p}");
            Policy {
                name: p["name"].as_str().unwrap().to_string(),
                pattern: regex::Regex::new(p["pattern"].as_str().unwrap()).unwrap(),
                definition: p["definition"].as_object().unwrap().clone(),
            }
        })
        .collect()
}

#[test]
fn rabbitmq_policies_match_exactly_pagerelays_queues() {
    let policies = policies();
    let mut queues = BTreeSet::new();
    for shards in [1, 2, 6, 32] {
        for tiers in [&[][..], &["250ms", "90s", "2h"][..]] {
            queues.extend(topology(shards, tiers).all_queues());
        }
    }
    for queue in &queues {
        let matching: Vec<&str> = policies
            .iter()
            .filter(|p| p.pattern.is_match(queue))
            .map(|p| p.name.as_str())
            .collect();
        let kind = queue.split('.').nth(1).unwrap();
        assert_eq!(matching, [format!("pagerelay-{kind}")], "{queue}");
    }
    // Nothing else: other prefixes, other deployments' queues, near misses.
    for other in [
        "pagerelay2.jobs",
        "t-test.pagerelay.jobs",
        "pagerelay.jobs.x",
        "pagerelay.jobs.",
        "pagerelay.jobsx",
        "pagerelay.delay",
        "pagerelay.delay.soon",
        "pagerelay.dead.1",
        "demo.jobs.0",
    ] {
        assert!(
            policies.iter().all(|p| !p.pattern.is_match(other)),
            "{other} is matched"
        );
    }
}

#[test]
fn rabbitmq_policies_set_nothing_that_overrides_pagerelays_arguments() {
    // See deploy/rabbitmq/README.md: on 3.10 quorum queues, overflow, expires and the leader
    // locator from a policy beat the queue's arguments, delivery-limit and message-ttl take the
    // lower value, and dead-letter-* from a policy are ignored. Only these keys are safe.
    let allowed = ["queue-leader-locator", "max-length", "max-length-bytes"];
    for policy in policies() {
        for (key, value) in &policy.definition {
            assert!(allowed.contains(&key.as_str()), "{}: {key}", policy.name);
            match key.as_str() {
                "queue-leader-locator" => assert_eq!(value, "balanced", "{}", policy.name),
                _ => assert!(value.as_u64().is_some_and(|n| n > 0), "{}", policy.name),
            }
        }
        assert!(
            policy.definition.contains_key("queue-leader-locator"),
            "{}: leaders must spread over the cluster",
            policy.name
        );
    }
}
