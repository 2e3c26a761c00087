//! The Graph batch call: decoding the request's form, parsing the operations, planning their
//! execution order, running them and encoding the reply array.
//!
//! # Semantics
//!
//! - Top-level fields: `access_token` (required), `batch` (a JSON array, as a string), optional
//!   `include_headers` (default true) and `appsecret_proof`. They may come in a url-encoded form body,
//!   the query string, or a JSON object body (as some clients send); the body wins over the query.
//! - At most 50 operations, else the whole batch fails (HTTP 400, code 1). A `batch` that is not a
//!   JSON array fails the whole batch (HTTP 400, code 100). An element that is not a usable
//!   operation fails only itself.
//! - Supported operation: `POST me/messages` or `POST {page-id}/messages`, with an optional version
//!   prefix (`v21.0/me/messages`) and an optional query string carrying the item's own
//!   `access_token` and `appsecret_proof` (these may also be fields of the item's `body`).
//! - Independent operations run in an order shuffled by the request's seeded entropy, as the
//!   platform may run them in parallel; the delivery record shows that order. An operation with
//!   `depends_on` runs after the operation with that `name`.
//! - If the operation depended on did not succeed (error, `null`, or not run), the dependent is not
//!   run and comes back `null`: `null` is the platform's documented "not executed, safe to retry",
//!   and that is exactly the dependent's state. A `depends_on` naming no operation, or a cycle, is
//!   an item error (code 100).
//! - A successful operation that another one depends on comes back `null` unless it set
//!   `omit_response_on_success: false`.
//! - JSONPath references (`{result=name:$.x}`) are not resolved; they pass through as text.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::error::GraphError;
use super::faults::{self, OpDecision, SplitMix64};
use super::limits::{self, Usage};
use super::pages::{Directory, Page};
use super::record::Totals;
use super::send;
use super::state::{Call, Outcome, Shared};

/// The most operations one batch may carry.
pub const MAX_BATCH: usize = 50;

/// The top-level fields of a batch request.
#[derive(Debug, Default)]
pub(crate) struct BatchForm {
    pub access_token: Option<String>,
    pub appsecret_proof: Option<String>,
    pub include_headers: bool,
    /// The `batch` field as the client sent it (a JSON document in a string).
    pub batch: Option<String>,
}

/// Decodes the top-level fields from the query string and the body.
pub(crate) fn decode_form(
    content_type: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Result<BatchForm, GraphError> {
    let mut form = BatchForm {
        include_headers: true,
        ..BatchForm::default()
    };
    if let Some(query) = query {
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            form.set(&key, Value::String(value.into_owned()));
        }
    }
    let media_type = content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match media_type.as_str() {
        "application/json" => {
            let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
                return Err(GraphError::param(
                    "(#100) The request body must be a JSON object",
                ));
            };
            for (key, value) in object {
                form.set(&key, value);
            }
        }
        "multipart/form-data" => {
            return Err(GraphError::unsupported_content_type("multipart/form-data"));
        }
        _ => {
            for (key, value) in form_urlencoded::parse(body) {
                form.set(&key, Value::String(value.into_owned()));
            }
        }
    }
    Ok(form)
}

impl BatchForm {
    fn set(&mut self, key: &str, value: Value) {
        let text = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        match key {
            "access_token" => self.access_token = Some(text),
            "appsecret_proof" => self.appsecret_proof = Some(text),
            "batch" => self.batch = Some(text),
            "include_headers" => self.include_headers = !matches!(text.as_str(), "false" | "0"),
            _ => {}
        }
    }
}

/// One parsed operation.
#[derive(Debug)]
pub(crate) struct Op {
    pub method: String,
    pub relative_url: String,
    pub body: String,
    pub name: Option<String>,
    pub depends_on: Option<String>,
    pub omit_response_on_success: bool,
}

impl Op {
    /// The hash that identifies this operation's content for fault decisions.
    pub(crate) fn content_hash(&self, seed: u64) -> u64 {
        faults::hash_parts(
            seed,
            &[
                b"op",
                self.method.as_bytes(),
                self.relative_url.as_bytes(),
                self.body.as_bytes(),
            ],
        )
    }
}

/// Parses the `batch` field. `Err` fails the whole batch; an `Err` element fails that item only.
pub(crate) fn parse_ops(batch: &str) -> Result<Vec<Result<Op, GraphError>>, GraphError> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(batch) else {
        return Err(GraphError::batch_malformed());
    };
    if items.len() > MAX_BATCH {
        return Err(GraphError::batch_too_large());
    }
    Ok(items.into_iter().map(parse_op).collect())
}

fn parse_op(item: Value) -> Result<Op, GraphError> {
    let Value::Object(mut object) = item else {
        return Err(GraphError::param(
            "(#100) Each batch request must be a JSON object",
        ));
    };
    let mut text = |key: &str| -> Result<Option<String>, GraphError> {
        match object.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(GraphError::param(format!(
                "(#100) Param {key} of a batch request must be a string"
            ))),
        }
    };
    let method = text("method")?.unwrap_or_else(|| "GET".to_owned());
    let Some(relative_url) = text("relative_url")? else {
        return Err(GraphError::param(
            "(#100) Missing relative_url in batch request",
        ));
    };
    let body = text("body")?.unwrap_or_default();
    let name = text("name")?;
    let depends_on = text("depends_on")?;
    let omit_response_on_success = match object.remove("omit_response_on_success") {
        Some(Value::Bool(b)) => b,
        Some(Value::String(s)) => s != "false" && s != "0",
        _ => true,
    };
    Ok(Op {
        method,
        relative_url,
        body,
        name,
        depends_on,
        omit_response_on_success,
    })
}

/// Splits a `relative_url` into the node of `{node}/messages` and the item's auth fields from its
/// query string.
pub(crate) fn call_for(op: &Op) -> Result<Call, GraphError> {
    let (path, query) = match op.relative_url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (op.relative_url.as_str(), None),
    };
    let trimmed = path.trim_matches('/');
    let mut segments: Vec<&str> = trimmed.split('/').collect();
    if segments.first().is_some_and(|s| is_version(s)) {
        segments.remove(0);
    }
    let node = match segments.as_slice() {
        [node, "messages"] if !node.is_empty() => (*node).to_owned(),
        [node] if !node.is_empty() => {
            return Err(GraphError::unsupported_method(&op.method, node));
        }
        _ => return Err(GraphError::unknown_path(&format!("/{trimmed}"))),
    };
    if !op.method.eq_ignore_ascii_case("POST") {
        return Err(GraphError::unsupported_method(&op.method, &node));
    }
    let mut decoded = send::decode_form(op.body.as_bytes());
    if let Some(query) = query {
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "access_token" => decoded.access_token = Some(value.into_owned()),
                "appsecret_proof" => decoded.appsecret_proof = Some(value.into_owned()),
                _ => {}
            }
        }
    }
    Ok(Call { node, decoded })
}

/// `v<major>.<minor>`.
pub(crate) fn is_version(segment: &str) -> bool {
    let Some(rest) = segment.strip_prefix('v') else {
        return false;
    };
    let Some((major, minor)) = rest.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(major) && digits(minor)
}

/// The order in which a batch's operations run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Indices in execution order; operations not listed cannot run (see `errors`).
    pub order: Vec<usize>,
    /// The operation each one depends on.
    pub parent: Vec<Option<usize>>,
    /// Whether some other operation depends on this one.
    pub depended_on: Vec<bool>,
    /// Operations whose dependency is broken (unknown name or cycle).
    pub errors: Vec<Option<GraphError>>,
}

/// Orders the operations: a topological order of the `depends_on` graph in which every choice
/// among ready operations is drawn from `rng`, so independent operations are shuffled and chains
/// keep their order.
pub(crate) fn plan(ops: &[Option<&Op>], rng: &mut SplitMix64) -> Plan {
    let n = ops.len();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(name) = op.and_then(|op| op.name.as_deref()) {
            names.entry(name).or_insert(i);
        }
    }
    let mut parent = vec![None; n];
    let mut errors: Vec<Option<GraphError>> = (0..n).map(|_| None).collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut depended_on = vec![false; n];
    for (i, op) in ops.iter().enumerate() {
        let Some(dependency) = op.and_then(|op| op.depends_on.as_deref()) else {
            continue;
        };
        match names.get(dependency) {
            Some(&p) if p != i => {
                parent[i] = Some(p);
                children[p].push(i);
                depended_on[p] = true;
            }
            _ => {
                errors[i] = Some(GraphError::param(format!(
                    "(#100) depends_on refers to no other request named {dependency}"
                )));
            }
        }
    }
    let mut ready: Vec<usize> = (0..n)
        .filter(|&i| parent[i].is_none() && errors[i].is_none())
        .collect();
    let mut order = Vec::with_capacity(n);
    while !ready.is_empty() {
        let i = ready.swap_remove(rng.below(ready.len()));
        order.push(i);
        ready.extend(children[i].iter().copied().filter(|&c| errors[c].is_none()));
    }
    let mut placed = vec![false; n];
    for &i in &order {
        placed[i] = true;
    }
    // An unplaced operation either sits on a cycle (an error of its own) or hangs below a broken
    // dependency or a cycle (never run, so `null`).
    let on_cycle: Vec<bool> = (0..n)
        .map(|i| !placed[i] && errors[i].is_none() && reaches_itself(i, &parent))
        .collect();
    for (i, cyclic) in on_cycle.into_iter().enumerate() {
        if cyclic {
            errors[i] = Some(GraphError::param(
                "(#100) Batch requests form a dependency cycle",
            ));
        }
    }
    Plan {
        order,
        parent,
        depended_on,
        errors,
    }
}

/// Whether following `i`'s parents leads back to `i`; at most `n` steps, so any path ends.
fn reaches_itself(i: usize, parent: &[Option<usize>]) -> bool {
    let mut current = parent[i];
    for _ in 0..parent.len() {
        match current {
            None => return false,
            Some(p) if p == i => return true,
            Some(p) => current = parent[p],
        }
    }
    false
}

/// One item of the reply array.
pub(crate) enum Item {
    Null,
    Reply(Outcome),
}

/// The executed batch, ready to be encoded.
pub(crate) struct Executed {
    pub items: Vec<Item>,
    pub depended_on: Vec<bool>,
    pub omit: Vec<bool>,
}

/// Runs a parsed batch for the Page `caller` authenticated as. Records the deliveries and updates
/// the totals; returns the per-item outcomes in request order.
pub(crate) fn execute(
    shared: &Shared,
    directory: &Directory,
    caller: &Arc<Page>,
    ops: Vec<Result<Op, GraphError>>,
    decisions: &[OpDecision],
    rng: &mut SplitMix64,
    batch_seq: u64,
) -> Executed {
    let n = ops.len();
    let plan = {
        let refs: Vec<Option<&Op>> = ops.iter().map(|op| op.as_ref().ok()).collect();
        plan(&refs, rng)
    };
    let omit: Vec<bool> = ops
        .iter()
        .map(|op| {
            op.as_ref()
                .map(|op| op.omit_response_on_success)
                .unwrap_or(true)
        })
        .collect();
    let mut items: Vec<Option<Item>> = (0..n).map(|_| None).collect();
    let mut deliveries = Vec::new();
    let fail = |error: &GraphError, entropy: u64| {
        Totals::add(&shared.totals.rejected, 1);
        Item::Reply(Outcome {
            status: error.status,
            body: error.to_json(&faults::fbtrace_id(entropy)),
            page: None,
            usage: None,
            regain_floor: None,
            success: false,
            delivered: None,
        })
    };
    // Operations that cannot be parsed or planned fail at once; they have no place in the order.
    for (i, op) in ops.iter().enumerate() {
        if let Err(error) = op {
            items[i] = Some(fail(error, decisions[i].entropy));
        } else if let Some(error) = &plan.errors[i] {
            items[i] = Some(fail(error, decisions[i].entropy));
        }
    }
    for &i in &plan.order {
        let Ok(op) = &ops[i] else { continue };
        let parent_ok = plan.parent[i]
            .is_none_or(|p| matches!(&items[p], Some(Item::Reply(outcome)) if outcome.success));
        if !parent_ok || decisions[i].null {
            items[i] = Some(Item::Null);
            continue;
        }
        let item = match call_for(op) {
            Err(error) => fail(&error, decisions[i].entropy),
            Ok(call) => {
                let mut outcome =
                    shared.execute(directory, caller, &call, &decisions[i], batch_seq);
                if let Some(stored) = outcome.delivered.take() {
                    deliveries.push(stored);
                }
                Item::Reply(outcome)
            }
        };
        items[i] = Some(item);
    }
    shared.record.append(deliveries);
    // Operations downstream of a broken dependency were never placed: not executed.
    let items: Vec<Item> = items
        .into_iter()
        .map(|item| item.unwrap_or(Item::Null))
        .collect();
    let nulls = items.iter().filter(|i| matches!(i, Item::Null)).count();
    Totals::add(&shared.totals.nulls, nulls as u64);
    Executed {
        items,
        depended_on: plan.depended_on,
        omit,
    }
}

#[derive(Serialize)]
struct ItemJson<'a> {
    code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<Vec<HeaderJson<'a>>>,
    body: &'a str,
}

#[derive(Serialize)]
struct HeaderJson<'a> {
    name: &'static str,
    value: Cow<'a, str>,
}

impl Executed {
    /// Encodes the reply array in request order.
    pub(crate) fn encode(&self, include_headers: bool) -> String {
        let items: Vec<Option<ItemJson<'_>>> = self
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Item::Null => None,
                Item::Reply(outcome) if outcome.success && self.depended_on[i] && self.omit[i] => {
                    None
                }
                Item::Reply(outcome) => Some(ItemJson {
                    code: outcome.status,
                    headers: include_headers.then(|| item_headers(outcome)),
                    body: &outcome.body,
                }),
            })
            .collect();
        serde_json::to_string(&items).expect("batch replies always serialise")
    }

    /// The Pages the batch's operations were charged to, each once, with the highest regain
    /// estimate an injected throttle set for that Page in this batch (if any did).
    pub(crate) fn pages(&self) -> Vec<(Arc<Page>, Option<u64>)> {
        let mut pages: Vec<(Arc<Page>, Option<u64>)> = Vec::new();
        for item in &self.items {
            let Item::Reply(Outcome {
                page: Some(page),
                regain_floor,
                ..
            }) = item
            else {
                continue;
            };
            match pages.iter_mut().find(|(p, _)| p.index == page.index) {
                Some((_, floor)) => *floor = (*floor).max(*regain_floor),
                None => pages.push((page.clone(), *regain_floor)),
            }
        }
        pages
    }
}

fn item_headers(outcome: &Outcome) -> Vec<HeaderJson<'static>> {
    let mut headers = vec![
        HeaderJson {
            name: "Content-Type",
            value: Cow::Borrowed("application/json; charset=UTF-8"),
        },
        HeaderJson {
            name: "Cache-Control",
            value: Cow::Borrowed("private, no-cache, no-store, must-revalidate"),
        },
    ];
    if let (Some(page), Some(usage)) = (&outcome.page, outcome.usage) {
        headers.push(HeaderJson {
            name: "X-Business-Use-Case-Usage",
            value: Cow::Owned(limits::business_use_case_usage(&[(&page.id, usage)])),
        });
        headers.push(HeaderJson {
            name: "X-App-Usage",
            value: Cow::Owned(limits::app_usage(usage)),
        });
    }
    headers
}

/// The usage of each Page right now, for the outer response headers. A Page with a regain floor
/// (an injected throttle in this batch) reports at least that `estimated_time_to_regain_access`.
pub(crate) fn current_usage(
    shared: &Shared,
    pages: &[(Arc<Page>, Option<u64>)],
) -> Vec<(Arc<Page>, Usage)> {
    let now = shared.now_us();
    pages
        .iter()
        .map(|(page, floor)| {
            let limits = page.limits();
            let mut usage = page.lock().limiter.usage(now, false, limits);
            if let Some(floor) = *floor {
                usage.regain_minutes = usage.regain_minutes.max(floor);
            }
            (page.clone(), usage)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: Option<&str>, depends_on: Option<&str>) -> Op {
        Op {
            method: "POST".into(),
            relative_url: "me/messages".into(),
            body: String::new(),
            name: name.map(str::to_owned),
            depends_on: depends_on.map(str::to_owned),
            omit_response_on_success: true,
        }
    }

    fn plan_of(ops: &[Op], seed: u64) -> Plan {
        let refs: Vec<Option<&Op>> = ops.iter().map(Some).collect();
        plan(&refs, &mut SplitMix64::new(seed))
    }

    #[test]
    fn chains_keep_their_order_and_independent_ops_shuffle() {
        let ops = vec![
            op(Some("a"), None),
            op(Some("b"), Some("a")),
            op(None, Some("b")),
            op(None, None),
            op(None, None),
        ];
        let mut orders = std::collections::HashSet::new();
        for seed in 0..64 {
            let plan = plan_of(&ops, seed);
            let pos = |i: usize| plan.order.iter().position(|&x| x == i).unwrap();
            assert!(pos(0) < pos(1) && pos(1) < pos(2), "{:?}", plan.order);
            assert_eq!(plan.order.len(), 5);
            orders.insert(plan.order);
        }
        assert!(orders.len() > 5, "the order should vary with the seed");
        let plan = plan_of(&ops, 0);
        assert_eq!(plan.depended_on, [true, true, false, false, false]);
        assert_eq!(plan.parent, [None, Some(0), Some(1), None, None]);
    }

    #[test]
    fn broken_dependencies_are_item_errors() {
        let ops = vec![
            op(Some("a"), Some("b")),
            op(Some("b"), Some("a")),
            op(None, Some("nobody")),
            op(None, Some("c")),
            op(Some("c"), Some("nobody")),
        ];
        let plan = plan_of(&ops, 3);
        assert!(plan.order.is_empty());
        assert!(plan.errors[0].is_some() && plan.errors[1].is_some());
        assert!(plan.errors[2].is_some());
        // Downstream of a broken op: never run, but not an error of its own.
        assert!(plan.errors[3].is_none());
        assert!(plan.errors[4].is_some());
    }

    #[test]
    fn relative_urls_accept_versions_queries_and_page_ids() {
        let mut o = op(None, None);
        o.relative_url = "/v21.0/123/messages?access_token=T&appsecret_proof=P".into();
        let call = call_for(&o).unwrap();
        assert_eq!(call.node, "123");
        assert_eq!(call.decoded.access_token.as_deref(), Some("T"));
        assert_eq!(call.decoded.appsecret_proof.as_deref(), Some("P"));
        o.relative_url = "me/feed".into();
        assert_eq!(call_for(&o).unwrap_err().code, 2500);
        o.relative_url = "me/messages".into();
        o.method = "GET".into();
        assert_eq!(call_for(&o).unwrap_err().code, 100);
        assert!(
            is_version("v3.1") && !is_version("v3") && !is_version("x3.1") && !is_version("v.1")
        );
    }

    #[test]
    fn batch_field_errors() {
        assert_eq!(parse_ops("{").unwrap_err().code, 100);
        assert_eq!(parse_ops("{}").unwrap_err().code, 100);
        let big = format!("[{}]", vec!["{}"; 51].join(","));
        assert_eq!(parse_ops(&big).unwrap_err().code, 1);
        let ops = parse_ops(r#"[{"method":"POST","relative_url":"me/messages","omit_response_on_success":false}, 3]"#).unwrap();
        assert!(!ops[0].as_ref().unwrap().omit_response_on_success);
        assert!(ops[1].is_err());
    }

    #[test]
    fn form_fields_merge_query_and_body() {
        let form = decode_form(
            Some("application/x-www-form-urlencoded"),
            Some("access_token=Q&include_headers=false"),
            b"access_token=B&batch=%5B%5D",
        )
        .unwrap();
        assert_eq!(form.access_token.as_deref(), Some("B"));
        assert!(!form.include_headers);
        assert_eq!(form.batch.as_deref(), Some("[]"));
        let form = decode_form(
            Some("application/json"),
            None,
            br#"{"access_token":"J","batch":[],"include_headers":false}"#,
        )
        .unwrap();
        assert_eq!(
            (form.access_token.as_deref(), form.batch.as_deref()),
            (Some("J"), Some("[]"))
        );
        assert!(!form.include_headers);
        assert_eq!(
            decode_form(Some("multipart/form-data; boundary=x"), None, b"")
                .unwrap_err()
                .code,
            100
        );
    }
}
