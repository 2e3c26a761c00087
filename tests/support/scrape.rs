//! A parsed `/metrics` page (Prometheus text format 0.0.4): samples with their labels, and the
//! `# HELP` / `# TYPE` metadata of each family. Enough for exact assertions, nothing more.

use std::collections::{BTreeMap, BTreeSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Family name → help text.
    pub help: BTreeMap<String, String>,
    /// Family name → type (`counter`, `gauge`, `histogram`, …).
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    /// Parses `text`, panicking on a line it cannot read: a scrape a test cannot read is a
    /// scrape Prometheus might not read either.
    pub fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                scrape.help.insert(name.to_string(), help.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                scrape.types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') {
                scrape.samples.push(parse_sample(line));
            }
        }
        scrape
    }

    /// The samples named exactly `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The sum of the samples named `name` whose labels include every `key=value` of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The distinct values of label `key` on the samples named `name`.
    pub fn label_values(&self, name: &str, key: &str) -> BTreeSet<String> {
        self.series(name)
            .filter_map(|s| s.labels.get(key).cloned())
            .collect()
    }

    /// Whether the family `name` has at least one sample (a histogram's `_bucket`, `_sum`
    /// and `_count` count as its samples).
    pub fn has_family(&self, name: &str) -> bool {
        self.samples
            .iter()
            .any(|s| family_of(&s.name, &self.types) == name)
    }
}

/// The family a sample belongs to: its name, or for histogram samples the name without the
/// `_bucket` / `_sum` / `_count` suffix.
pub fn family_of<'a>(sample: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && types.get(base).map(String::as_str) == Some("histogram")
        {
            return base;
        }
    }
    sample
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("no value: {line}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in: {line}")),
    };
    let Some((name, rest)) = series.split_once('{') else {
        return Sample {
            name: series.to_string(),
            labels: BTreeMap::new(),
            value,
        };
    };
    let body = rest
        .strip_suffix('}')
        .unwrap_or_else(|| panic!("unterminated labels: {line}"));
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} is not quoted: {line}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape: {line}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        }
        labels.insert(key.trim().to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}
