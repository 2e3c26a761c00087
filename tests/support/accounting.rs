//! The fault suite's ledger: where did every job go?
//!
//! Every job of a scenario carries a unique id — its `job_id`, echoed in `message.metadata` so
//! that the simulator's delivery record names it ([`super::jobs::text_job`]). When the scenario is
//! over, each id must be found
//!
//! - exactly once in the simulator's record of deliveries, or
//! - exactly once in the dead-letter queue, with an `x-pagerelay-reason`, or
//! - more than once (delivered twice, or delivered and dead-lettered), but only when the scenario
//!   opened one of the duplicate windows the README's *Guarantees* name ([`Window`]); each such
//!   id is counted and reported, never hidden.
//!
//! Nothing may be missing, ever, and nothing may turn up that the scenario did not publish.
//! [`Ledger`] follows the record while a scenario runs (a cursor over the simulator's
//! deliveries, so polling a 50,000-job run stays cheap), waits for the topology to fall quiet,
//! and drains the dead-letter queue into a [`Tally`]: the verdict, with the one-line summary
//! that `tests/FAULTS.md` quotes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use lapin::Connection;
use pagerelay::amqp::Topology;
use pagerelay::amqp::headers;
use pagerelay::sim::SimClient;
use serde_json::Value;
use tokio::time::Instant;

use super::jobs::{self, DeadLetter};

/// The situations in which the README's *Guarantees* say a job may reach Graph more than once.
/// A scenario names the windows it opens; a duplicate in any other scenario is a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Window {
    /// pagerelay died between Graph's reply and the ack: the broker redelivers a job that was
    /// sent, to a process whose duplicate guard never saw it.
    CrashAfterReply,
    /// Graph's reply was lost (the request timed out) after Graph had sent the message: the job
    /// is retried although it went out.
    LostReply,
    /// A parked or retried copy was confirmed in a delay tier, then a crash or a lost connection
    /// kept the original from being acked: the original is redelivered and the copy comes back.
    ParkedCopy,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::CrashAfterReply => "crash between reply and ack",
            Window::LostReply => "lost reply",
            Window::ParkedCopy => "parked/retried copy before a crash or lost connection",
        }
    }
}

/// The jobs of one scenario and what has been seen of them so far.
pub struct Ledger {
    scenario: String,
    ids: HashSet<String>,
    /// The simulator's record, read up to this sequence number.
    cursor: u64,
    /// Job id → the Unix time (ms) of each delivery of it.
    deliveries: HashMap<String, Vec<u64>>,
    /// Deliveries whose metadata names no job of this scenario.
    strays: Vec<String>,
    /// All deliveries read, duplicates and strays included.
    read: u64,
}

impl Ledger {
    /// A ledger for `jobs`, which must each carry a distinct `job_id`.
    pub fn new(scenario: &str, jobs: &[Value]) -> Ledger {
        Ledger::for_ids(
            scenario,
            jobs.iter()
                .map(|j| j["job_id"].as_str().expect("a job_id").to_string()),
        )
    }

    pub fn for_ids(scenario: &str, ids: impl IntoIterator<Item = String>) -> Ledger {
        let mut set = HashSet::new();
        for id in ids {
            assert!(set.insert(id.clone()), "job id {id} is not unique");
        }
        Ledger {
            scenario: scenario.to_string(),
            ids: set,
            cursor: 0,
            deliveries: HashMap::new(),
            strays: Vec::new(),
            read: 0,
        }
    }

    pub fn scenario(&self) -> &str {
        &self.scenario
    }

    pub fn jobs_in(&self) -> usize {
        self.ids.len()
    }

    /// Reads the deliveries recorded since the last call. Returns how many there were.
    pub async fn poll(&mut self, sim: &SimClient) -> usize {
        let mut new = 0;
        loop {
            let page = sim
                .deliveries(self.cursor, 10_000)
                .await
                .expect("graph-sim answers its admin API");
            let Some(last) = page.last() else {
                return new;
            };
            self.cursor = last.seq;
            let done = page.len() < 10_000;
            for delivery in page {
                new += 1;
                self.read += 1;
                let id = jobs::job_id_of(&delivery.body).unwrap_or_default();
                if self.ids.contains(&id) {
                    self.deliveries
                        .entry(id)
                        .or_default()
                        .push(delivery.unix_ms);
                } else {
                    self.strays.push(id);
                }
            }
            if done {
                return new;
            }
        }
    }

    /// Jobs of this scenario delivered at least once so far (as of the last [`Ledger::poll`]).
    pub fn delivered_distinct(&self) -> usize {
        self.deliveries.len()
    }

    /// Waits until every job is delivered or dead-lettered and the topology has been quiet for
    /// [`QUIET`]: no job waiting in the jobs queues or the delay tiers, and no new delivery or
    /// dead letter. Returns false on `timeout` (the tally then shows what is missing).
    ///
    /// Quiet is not proof that nothing is unacked inside the daemon; [`Ledger::settled_after_stop`]
    /// is, once the daemon has stopped gracefully.
    pub async fn wait_settled(
        &mut self,
        sim: &SimClient,
        conn: &Connection,
        topology: &Topology,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        let mut quiet_since = Instant::now();
        loop {
            self.poll(sim).await;
            let dead = jobs::depth(conn, &topology.dead_queue()).await as usize;
            let pending = pending(conn, topology).await;
            let state = (self.read, dead, pending);
            let accounted = self.delivered_distinct() + dead >= self.ids.len();
            if !(accounted && pending == 0) || last != Some(state) {
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= QUIET {
                return true;
            }
            last = Some(state);
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Whether the jobs queues and delay tiers are empty: after a graceful stop (which hands
    /// every unacked delivery back), that means no job is anywhere but delivered or dead.
    pub async fn settled_after_stop(conn: &Connection, topology: &Topology) -> bool {
        pending(conn, topology).await == 0
    }

    /// Reads the rest of the record, drains the dead-letter queue and gives the verdict.
    pub async fn tally(mut self, sim: &SimClient, conn: &Connection, topology: &Topology) -> Tally {
        self.poll(sim).await;
        let letters = jobs::drain(conn, &topology.dead_queue()).await;
        self.tally_with(letters)
    }

    /// The verdict, given the dead letters read elsewhere.
    pub fn tally_with(self, letters: Vec<DeadLetter>) -> Tally {
        let mut dead: HashMap<String, Vec<String>> = HashMap::new();
        let mut strays = self.strays;
        let mut unexplained = Vec::new();
        for (letter, id) in letters.iter().zip(jobs::job_ids(&letters)) {
            if !self.ids.contains(&id) {
                strays.push(id);
                continue;
            }
            let reason = letter_reason(letter);
            if reason.is_none() {
                unexplained.push(id.clone());
            }
            dead.entry(id)
                .or_default()
                .push(reason.unwrap_or_else(|| "(none)".into()));
        }
        let mut tally = Tally {
            scenario: self.scenario,
            jobs_in: self.ids.len(),
            strays: strays.len(),
            unexplained_letters: unexplained,
            ..Tally::default()
        };
        let mut ids: Vec<&String> = self.ids.iter().collect();
        ids.sort();
        for id in ids {
            let delivered = self.deliveries.get(id).map_or(&[][..], Vec::as_slice);
            let letters = dead.get(id).map_or(&[][..], Vec::as_slice);
            match (delivered.len(), letters.len()) {
                (0, 0) => tally.lost.push(id.clone()),
                (1, 0) => tally.delivered += 1,
                (0, 1) => *tally.dead.entry(letters[0].clone()).or_default() += 1,
                (d, k) => {
                    tally.duplicated += 1;
                    tally.extra_copies += d + k - 1;
                    tally.max_copies = tally.max_copies.max(d + k);
                    if k > 0 {
                        tally.delivered_and_dead += usize::from(d > 0);
                    }
                    tally.duplicates.push(Duplicate {
                        id: id.clone(),
                        delivered_at_ms: delivered.to_vec(),
                        dead_reasons: letters.to_vec(),
                    });
                }
            }
        }
        tally
    }
}

/// How long the topology must stay unchanged before a run counts as settled.
pub const QUIET: Duration = Duration::from_secs(3);

/// Jobs waiting in the jobs queues and the delay tiers.
async fn pending(conn: &Connection, topology: &Topology) -> usize {
    let mut total = 0;
    for queue in topology
        .job_queues()
        .into_iter()
        .chain(topology.tiers().iter().map(|t| topology.tier_queue(*t)))
    {
        total += jobs::depth(conn, &queue).await as usize;
    }
    total
}

/// The reason of a dead letter: pagerelay's header, else the broker's own (`broker:<reason>`
/// from the newest `x-death` entry).
fn letter_reason(letter: &DeadLetter) -> Option<String> {
    if let Some(reason) = letter.header(headers::REASON).filter(|r| !r.is_empty()) {
        return Some(reason);
    }
    let deaths = letter.headers.inner().get("x-death")?;
    let lapin::types::AMQPValue::FieldArray(entries) = deaths else {
        return None;
    };
    let lapin::types::AMQPValue::FieldTable(newest) = entries.as_slice().first()? else {
        return None;
    };
    let reason = headers::read_string(newest.inner().get("reason")?)?;
    Some(format!("broker:{reason}"))
}

/// One job found more than once.
#[derive(Debug, Clone)]
pub struct Duplicate {
    pub id: String,
    /// When each delivery of it was recorded (Unix ms), oldest first.
    pub delivered_at_ms: Vec<u64>,
    /// The reasons of its dead letters, if it was also dead-lettered.
    pub dead_reasons: Vec<String>,
}

/// Where every job of a scenario ended up.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub scenario: String,
    pub jobs_in: usize,
    /// Jobs delivered exactly once and never dead-lettered.
    pub delivered: usize,
    /// Jobs dead-lettered exactly once and never delivered, by reason.
    pub dead: BTreeMap<String, usize>,
    /// Jobs found more than once (delivered twice or more, or delivered and dead-lettered).
    pub duplicated: usize,
    /// Copies beyond the first, over all duplicated jobs.
    pub extra_copies: usize,
    /// The most copies of one job.
    pub max_copies: usize,
    /// Duplicated jobs that were delivered and also dead-lettered.
    pub delivered_and_dead: usize,
    pub duplicates: Vec<Duplicate>,
    /// Jobs found nowhere.
    pub lost: Vec<String>,
    /// Deliveries or dead letters of jobs this scenario never published.
    pub strays: usize,
    /// Dead letters of this scenario without any reason.
    pub unexplained_letters: Vec<String>,
    /// Scenario-specific figures for the summary (`"kills=5"`, `"replayed=412"`).
    pub notes: Vec<String>,
}

impl Tally {
    pub fn dead_total(&self) -> usize {
        self.dead.values().sum()
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Duplicated jobs with a delivery before and another after one of `events_ms` (a kill, a
    /// broker restart): sent, then the ack was lost with the process or the connection.
    pub fn straddling(&self, events_ms: &[u64]) -> usize {
        self.duplicates
            .iter()
            .filter(|d| {
                d.delivered_at_ms.windows(2).any(|pair| {
                    events_ms
                        .iter()
                        .any(|event| pair[0] <= *event && pair[1] > *event)
                })
            })
            .count()
    }

    /// `<scenario>: jobs in N, delivered N, dead-lettered N (reason N, …), duplicated N (…), lost N`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{}: jobs in {}, delivered {}, dead-lettered {}",
            self.scenario,
            self.jobs_in,
            self.delivered,
            self.dead_total()
        );
        if !self.dead.is_empty() {
            let reasons: Vec<String> = self.dead.iter().map(|(r, n)| format!("{r} {n}")).collect();
            let _ = write!(line, " ({})", reasons.join(", "));
        }
        let _ = write!(line, ", duplicated {}", self.duplicated);
        if self.duplicated > 0 {
            let _ = write!(
                line,
                " ({} extra copies, at most {} of one job{})",
                self.extra_copies,
                self.max_copies,
                if self.delivered_and_dead > 0 {
                    format!(", {} also dead-lettered", self.delivered_and_dead)
                } else {
                    String::new()
                }
            );
        }
        let _ = write!(line, ", lost {}", self.lost.len());
        if self.strays > 0 {
            let _ = write!(line, ", strays {}", self.strays);
        }
        if !self.notes.is_empty() {
            let _ = write!(line, "; {}", self.notes.join(", "));
        }
        line
    }

    /// Prints the summary (with a `FAULTS` prefix to grep for), and appends it to the file named
    /// by `PAGERELAY_FAULTS_SUMMARY` when that is set.
    pub fn report(&self) {
        let line = self.summary();
        eprintln!("FAULTS {line}");
        if let Ok(path) = std::env::var("PAGERELAY_FAULTS_SUMMARY") {
            use std::io::Write as _;
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(file, "{line}");
            }
        }
    }

    /// Fails unless every job is accounted for: none lost, no strays, every dead letter with a
    /// reason, and duplicates only if the scenario opened a duplicate window.
    pub fn assert_sound(&self, windows: &[Window]) {
        let mut problems = Vec::new();
        if !self.lost.is_empty() {
            problems.push(format!(
                "{} jobs lost, e.g. {:?}",
                self.lost.len(),
                &self.lost[..self.lost.len().min(10)]
            ));
        }
        if self.strays > 0 {
            problems.push(format!(
                "{} deliveries or dead letters of jobs never published",
                self.strays
            ));
        }
        if !self.unexplained_letters.is_empty() {
            problems.push(format!(
                "dead letters without a reason: {:?}",
                &self.unexplained_letters[..self.unexplained_letters.len().min(10)]
            ));
        }
        if self.duplicated > 0 && windows.is_empty() {
            problems.push(format!(
                "{} jobs found more than once with no duplicate window open, e.g. {:?}",
                self.duplicated,
                &self.duplicates[..self.duplicates.len().min(5)]
            ));
        }
        let accounted = self.delivered + self.dead_total() + self.duplicated + self.lost.len();
        if accounted != self.jobs_in {
            problems.push(format!(
                "accounted for {accounted} of {} jobs",
                self.jobs_in
            ));
        }
        assert!(
            problems.is_empty(),
            "{}\n{}",
            self.summary(),
            problems.join("\n")
        );
    }
}
