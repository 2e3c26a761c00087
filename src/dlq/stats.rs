//! `pagerelay dlq stats`: what is in the dead-letter queue, counted by reason, by error code and
//! by Page, with the oldest and newest dead-lettering times — from one full scan that leaves
//! every message in place. The breakdowns count jobs, so a dead-lettered park bundle counts once
//! for each job in it, under the bundle's reason, code and Page.
//!
//! [`Tally`] is the pure part (counting letters); [`DeadLetters::stats`] runs the scan. Rendering for humans
//! and the JSON shape for scripts are both here, so they cannot drift apart.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::ser::SerializeMap;

use super::letter::Letter;
use super::{DeadLetters, DlqError};
use crate::amqp::headers::format_time;

/// Counts by name, largest first (ties by name), serialised as a JSON object in that order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub Vec<(String, u64)>);

impl Counts {
    fn from_map(map: HashMap<String, u64>) -> Counts {
        let mut counts: Vec<(String, u64)> = map.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Counts(counts)
    }

    /// The count of `name`, 0 when absent.
    pub fn get(&self, name: &str) -> u64 {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c)
    }
}

impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, count) in &self.0 {
            map.serialize_entry(name, count)?;
        }
        map.end()
    }
}

/// One Page's share of the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageCount {
    pub page_id: String,
    pub count: u64,
}

/// The Pages outside the top N, together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OtherPages {
    pub pages: u64,
    pub count: u64,
}

/// What `dlq stats` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub queue: String,
    /// Ready messages when the scan started.
    pub depth: u32,
    /// Messages the scan read (less than `depth` only if another client took some meanwhile).
    pub scanned: u64,
    /// The jobs in them: one per message, and a park bundle's count for each bundle.
    pub jobs: u64,
    /// How many of the messages are park bundles.
    pub bundles: u64,
    pub by_reason: Counts,
    /// `CODE` or `CODE/SUBCODE`; letters without an error code count as `none`.
    pub by_error_code: Counts,
    /// The top N Pages by jobs; a letter without a readable Page counts under its routing key.
    pub by_page: Vec<PageCount>,
    pub other_pages: OtherPages,
    pub distinct_pages: u64,
    #[serde(serialize_with = "time_opt")]
    pub oldest_dead_lettered_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "time_opt")]
    pub newest_dead_lettered_at: Option<DateTime<Utc>>,
    /// Letters with no dead-lettering time (left out of oldest and newest).
    pub undated: u64,
    /// The highest `x-delivery-count` seen: how many scans the most scanned letter went through.
    pub max_delivery_count: i64,
}

fn time_opt<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_time(*t)),
        None => s.serialize_none(),
    }
}

/// Counting in progress.
#[derive(Debug, Default)]
pub struct Tally {
    scanned: u64,
    jobs: u64,
    bundles: u64,
    by_reason: HashMap<String, u64>,
    by_code: HashMap<String, u64>,
    by_page: HashMap<String, u64>,
    oldest: Option<DateTime<Utc>>,
    newest: Option<DateTime<Utc>>,
    undated: u64,
    max_delivery_count: i64,
}

impl Tally {
    pub fn add(&mut self, letter: &Letter) {
        let jobs = letter.job_count() as u64;
        self.scanned += 1;
        self.jobs += jobs;
        self.bundles += u64::from(letter.bundle.is_some());
        *self.by_reason.entry(letter.reason.label()).or_default() += jobs;
        let code = match (letter.error.code, letter.error.subcode) {
            (Some(code), Some(sub)) => format!("{code}/{sub}"),
            (Some(code), None) => code.to_string(),
            (None, _) => "none".to_string(),
        };
        *self.by_code.entry(code).or_default() += jobs;
        *self
            .by_page
            .entry(letter.target_routing_key().to_string())
            .or_default() += jobs;
        match letter.dead_lettered_at {
            Some(at) => {
                self.oldest = Some(self.oldest.map_or(at, |o| o.min(at)));
                self.newest = Some(self.newest.map_or(at, |n| n.max(at)));
            }
            None => self.undated += 1,
        }
        self.max_delivery_count = self
            .max_delivery_count
            .max(letter.delivery_count.unwrap_or(0));
    }

    /// The report, with the `top` largest Pages named.
    pub fn finish(self, queue: &str, depth: u32, top: usize) -> Stats {
        let pages = Counts::from_map(self.by_page).0;
        let distinct_pages = pages.len() as u64;
        let (named, rest) = pages.split_at(top.min(pages.len()));
        Stats {
            queue: queue.to_string(),
            depth,
            scanned: self.scanned,
            jobs: self.jobs,
            bundles: self.bundles,
            by_reason: Counts::from_map(self.by_reason),
            by_error_code: Counts::from_map(self.by_code),
            by_page: named
                .iter()
                .map(|(page_id, count)| PageCount {
                    page_id: page_id.clone(),
                    count: *count,
                })
                .collect(),
            other_pages: OtherPages {
                pages: rest.len() as u64,
                count: rest.iter().map(|(_, c)| c).sum(),
            },
            distinct_pages,
            oldest_dead_lettered_at: self.oldest,
            newest_dead_lettered_at: self.newest,
            undated: self.undated,
            max_delivery_count: self.max_delivery_count,
        }
    }
}

impl Stats {
    /// The report for a terminal, with ages relative to `now`.
    pub fn render(&self, now: DateTime<Utc>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} dead letter{}",
            self.queue,
            self.scanned,
            if self.scanned == 1 { "" } else { "s" }
        );
        if self.bundles > 0 {
            let _ = writeln!(
                out,
                "  holding {} jobs: {} of the letters {} park bundle{}, counted below by job",
                self.jobs,
                self.bundles,
                if self.bundles == 1 { "is a" } else { "are" },
                if self.bundles == 1 { "" } else { "s" }
            );
        }
        if self.scanned < u64::from(self.depth) {
            let _ = writeln!(
                out,
                "  (the queue counted {} when the scan started; another client took some)",
                self.depth
            );
        }
        if self.scanned == 0 {
            return out;
        }
        let when = |t: Option<DateTime<Utc>>| match t {
            Some(t) => {
                let age = (now - t).to_std().unwrap_or_default();
                format!(
                    "{} ({} ago)",
                    format_time(t),
                    humantime::format_duration(std::time::Duration::from_secs(age.as_secs()))
                )
            }
            None => "-".to_string(),
        };
        let _ = writeln!(out, "  oldest  {}", when(self.oldest_dead_lettered_at));
        let _ = writeln!(out, "  newest  {}", when(self.newest_dead_lettered_at));
        if self.undated > 0 {
            let _ = writeln!(out, "  undated {}", self.undated);
        }
        let width = self
            .by_reason
            .0
            .iter()
            .chain(&self.by_error_code.0)
            .map(|(n, _)| n.len())
            .chain(self.by_page.iter().map(|p| p.page_id.len()))
            .max()
            .unwrap_or(0)
            .max(12);
        let _ = writeln!(out, "\nby reason");
        for (name, count) in &self.by_reason.0 {
            let _ = writeln!(out, "  {name:<width$}  {count:>8}");
        }
        let _ = writeln!(out, "\nby error code");
        for (name, count) in &self.by_error_code.0 {
            let _ = writeln!(out, "  {name:<width$}  {count:>8}");
        }
        let _ = writeln!(
            out,
            "\nby Page (top {} of {})",
            self.by_page.len(),
            self.distinct_pages
        );
        for page in &self.by_page {
            let _ = writeln!(out, "  {:<width$}  {:>8}", page.page_id, page.count);
        }
        if self.other_pages.pages > 0 {
            let other = format!("{} other Pages", self.other_pages.pages);
            let _ = writeln!(out, "  {other:<width$}  {:>8}", self.other_pages.count);
        }
        out
    }
}

impl DeadLetters<'_> {
    /// Counts the dead-letter queue, naming the `top` largest Pages; every message stays where
    /// it was.
    pub async fn stats(&self, top: usize) -> Result<Stats, DlqError> {
        let mut scan = self.scan().await?;
        let mut tally = Tally::default();
        let result = async {
            while let Some(scanned) = scan.next().await? {
                tally.add(&Letter::from_delivery(&scanned.delivery));
            }
            Ok::<_, DlqError>(())
        }
        .await;
        let depth = scan.depth();
        scan.close().await;
        result?;
        Ok(tally.finish(&self.topology.dead_queue(), depth, top))
    }
}

#[cfg(test)]
mod tests {
    use super::super::letter::tests::{broker_letter, bundle_letter, pagerelay_letter};
    use super::*;
    use crate::amqp::headers::parse_time;

    #[test]
    fn counts_by_reason_code_and_page() {
        let mut tally = Tally::default();
        for i in 0..3 {
            tally.add(&pagerelay_letter("permanent", "1001", &format!("a{i}")));
        }
        tally.add(&pagerelay_letter("token_invalid", "1002", "b"));
        tally.add(&pagerelay_letter("token_invalid", "1003", "c"));
        tally.add(&broker_letter("1003"));
        let stats = tally.finish("relay.dead", 6, 2);

        assert_eq!(stats.scanned, 6);
        assert_eq!(
            stats.by_reason.0,
            [
                ("permanent".to_string(), 3),
                ("token_invalid".to_string(), 2),
                ("broker:delivery_limit".to_string(), 1)
            ]
        );
        assert_eq!(stats.by_error_code.get("551"), 5);
        assert_eq!(stats.by_error_code.get("none"), 1);
        assert_eq!(
            stats.by_page,
            [
                PageCount {
                    page_id: "1001".into(),
                    count: 3
                },
                PageCount {
                    page_id: "1003".into(),
                    count: 2
                }
            ]
        );
        assert_eq!(stats.other_pages, OtherPages { pages: 1, count: 1 });
        assert_eq!(stats.distinct_pages, 3);
        // The broker letter died at 1_795_000_000 s (2026-11-18), before the others.
        assert_eq!(
            stats.oldest_dead_lettered_at,
            DateTime::from_timestamp(1_795_000_000, 0)
        );
        assert_eq!(
            stats.newest_dead_lettered_at,
            parse_time("2026-11-22T10:00:00Z")
        );
        assert_eq!(stats.undated, 0);

        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["by_reason"]["token_invalid"], 2);
        assert_eq!(json["by_error_code"]["551"], 5);
        assert_eq!(json["by_page"][0]["page_id"], "1001");
        assert_eq!(json["other_pages"]["count"], 1);
        assert_eq!(json["newest_dead_lettered_at"], "2026-11-22T10:00:00.000Z");
        // Largest first in the JSON object too.
        let keys: Vec<&String> = json["by_reason"].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["permanent", "token_invalid", "broker:delivery_limit"]
        );

        let text = stats.render(parse_time("2026-11-22T12:00:00Z").unwrap());
        assert!(text.starts_with("relay.dead: 6 dead letters\n"), "{text}");
        assert!(
            text.contains("newest  2026-11-22T10:00:00.000Z (2h ago)"),
            "{text}"
        );
        assert!(text.contains("1 other Pages"), "{text}");
    }

    #[test]
    fn a_bundle_counts_once_for_each_job_in_it() {
        let mut tally = Tally::default();
        tally.add(&pagerelay_letter("permanent", "1001", "a"));
        tally.add(&bundle_letter("1002", &["p-1", "p-2", "p-3"], 0));
        // Cut short: counted as its header declares.
        tally.add(&bundle_letter("1002", &["q-1", "q-2"], 3));
        let stats = tally.finish("relay.dead", 3, 10);

        assert_eq!((stats.scanned, stats.jobs, stats.bundles), (3, 6, 2));
        assert_eq!(stats.by_reason.get("broker:delivery_limit"), 5);
        assert_eq!(stats.by_reason.get("permanent"), 1);
        assert_eq!(stats.by_error_code.get("none"), 5);
        assert_eq!(
            stats.by_page,
            [
                PageCount {
                    page_id: "1002".into(),
                    count: 5
                },
                PageCount {
                    page_id: "1001".into(),
                    count: 1
                }
            ]
        );
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(
            (json["jobs"].clone(), json["bundles"].clone()),
            (6.into(), 2.into())
        );

        let text = stats.render(Utc::now());
        assert!(
            text.starts_with(
                "relay.dead: 3 dead letters\n  holding 6 jobs: 2 of the letters are park bundles, counted below by job\n"
            ),
            "{text}"
        );
        // Without bundles the line is left out.
        let plain = {
            let mut tally = Tally::default();
            tally.add(&pagerelay_letter("permanent", "1001", "a"));
            tally.finish("relay.dead", 1, 10)
        };
        assert_eq!((plain.jobs, plain.bundles), (1, 0));
        assert!(!plain.render(Utc::now()).contains("holding"));
    }

    #[test]
    fn an_empty_queue_reports_nothing() {
        let stats = Tally::default().finish("relay.dead", 0, 10);
        assert_eq!(stats.scanned, 0);
        assert!(stats.by_page.is_empty());
        assert_eq!(stats.oldest_dead_lettered_at, None);
        assert_eq!(stats.render(Utc::now()), "relay.dead: 0 dead letters\n");
        assert_eq!(
            serde_json::to_value(&stats).unwrap()["newest_dead_lettered_at"],
            serde_json::Value::Null
        );
    }
}
