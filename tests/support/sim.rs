//! The Graph simulator as the tests use it: Pages whose tokens are `token-<id>` (what
//! `DaemonConfig` gives pagerelay), and its delivery record read back as job ids (our test jobs
//! carry their id in `message.metadata`, see `jobs::text_job`).

use std::collections::HashMap;
use std::time::Duration;

use pagerelay::sim::{PageConfig, SimConfig, Simulator};

use super::{jobs, wait_for};

/// `n` Page ids counting up from `base` (15 digits, like real ones).
pub fn page_ids(base: u64, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{}", base + i as u64)).collect()
}

/// A simulator configuration with `pages`, each with `audience` and the token pagerelay's test
/// settings use, and a fixed seed.
pub fn config(pages: &[String], audience: u64, seed: u64) -> SimConfig {
    let mut config = SimConfig::default().with_seed(seed);
    for id in pages {
        config = config.with_page(PageConfig::new(id, format!("token-{id}"), audience));
    }
    config
}

/// Starts a simulator for `pages`.
pub async fn start(pages: &[String], audience: u64, seed: u64) -> Simulator {
    Simulator::start(config(pages, audience, seed))
        .await
        .unwrap()
}

/// How many times each job arrived, per the simulator's record.
pub async fn arrivals(sim: &Simulator) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for d in sim.client().all_deliveries().await.unwrap() {
        *counts
            .entry(jobs::job_id_of(&d.body).unwrap_or_default())
            .or_default() += 1;
    }
    counts
}

/// Waits until the simulator counts `n` deliveries (duplicates included).
pub async fn wait_delivered(sim: &Simulator, n: u64, within: Duration) {
    let client = sim.client();
    wait_for(&format!("{n} deliveries"), within, || async {
        let stats = client.stats().await.ok()?;
        (stats.totals.delivered >= n).then_some(())
    })
    .await;
}
