//! The guardrails of `pagerelay replay`: letters that would only fail again are refused unless
//! the operator says otherwise.
//!
//! - `invalid` letters failed the job contract; the same bytes fail it again
//!   (`--include-invalid` overrides).
//! - `ambiguous` letters may have been delivered already (Graph's 1/1357046); pagerelay never
//!   resends those blindly, and a bulk replay should not either (`--include-ambiguous`).
//! - A Page the daemon reports as paused (token revoked, app secret refused, Page blocked) would
//!   park the replayed jobs until they are dead-lettered again; a Page the daemon does not know
//!   would dead-letter them at once as `unknown_page` (`--force` overrides both).
//!
//! The Page checks ask the daemon's admin endpoint (`GET /pages`). When it cannot be reached,
//! nothing can be checked, and a replay refuses to start unless `--force` is given: a replay is
//! rare, deliberate and hard to undo, so an unverifiable Page counts as a failed check rather
//! than a passed one. A dry run still runs and shows every letter it would have refused.
//!
//! With several replicas, ask the one that consumes the Page's shard: a pause is local to the
//! process that saw the token fail (another replica reports the Page as not paused).
//!
//! It does not read the queue (see `replay`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::letter::Letter;
use crate::amqp::headers::DeadLetterReason;

/// How long the admin endpoint may take to answer.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a matching letter was not replayed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Guardrail {
    /// An `invalid` letter, without `--include-invalid`.
    Invalid,
    /// An `ambiguous` letter, without `--include-ambiguous`.
    Ambiguous,
    /// The daemon reports the Page paused, for this reason (`token_invalid` …).
    PagePaused(String),
    /// The daemon has no such Page.
    PageUnknown,
    /// The daemon's admin endpoint could not be asked (dry runs only; a real replay refuses to
    /// start).
    AdminUnreachable,
}

impl Guardrail {
    /// The name in summaries: `invalid`, `ambiguous`, `page_paused`, `page_unknown`,
    /// `admin_unreachable`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Guardrail::Invalid => "invalid",
            Guardrail::Ambiguous => "ambiguous",
            Guardrail::PagePaused(_) => "page_paused",
            Guardrail::PageUnknown => "page_unknown",
            Guardrail::AdminUnreachable => "admin_unreachable",
        }
    }

    /// What to tell the operator, and how to override it.
    pub fn explain(&self) -> String {
        match self {
            Guardrail::Invalid => {
                "invalid jobs fail validation again; fix the publisher, or pass --include-invalid"
                    .to_string()
            }
            Guardrail::Ambiguous => "the Graph API may have delivered these already; pass \
                 --include-ambiguous to send them again"
                .to_string(),
            Guardrail::PagePaused(reason) => format!(
                "the daemon reports the Page paused ({reason}); fix it (rotate the token and \
                 SIGHUP the daemon) and replay again, or pass --force"
            ),
            Guardrail::PageUnknown => "the daemon has no such Page; its jobs would be \
                 dead-lettered as unknown_page again; add the Page, or pass --force"
                .to_string(),
            Guardrail::AdminUnreachable => "the daemon's admin endpoint could not be asked \
                 whether the Page is paused; pass --admin URL, or --force"
                .to_string(),
        }
    }
}

/// The overrides an operator gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub include_invalid: bool,
    pub include_ambiguous: bool,
    /// Skip the Page checks.
    pub force: bool,
}

/// What the daemon said about its Pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageCheck {
    /// Page id → why it is paused, if it is.
    Known {
        url: String,
        pages: HashMap<String, Option<String>>,
    },
    Unreachable {
        url: String,
        error: String,
    },
}

#[derive(Deserialize)]
struct PageView {
    id: String,
    paused: Option<String>,
}

impl PageCheck {
    /// Asks `url` (a `/pages` URL, see [`pages_url`]).
    pub async fn fetch(url: &str, timeout: Duration) -> PageCheck {
        let unreachable = |error: String| PageCheck::Unreachable {
            url: url.to_string(),
            error,
        };
        let client = match reqwest::Client::builder().timeout(timeout).build() {
            Ok(client) => client,
            Err(e) => return unreachable(e.to_string()),
        };
        let response = match client.get(url).send().await {
            Ok(response) => response,
            Err(e) => return unreachable(error_chain(&e)),
        };
        let status = response.status();
        if !status.is_success() {
            return unreachable(format!("HTTP {status}"));
        }
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => return unreachable(error_chain(&e)),
        };
        match serde_json::from_slice::<Vec<PageView>>(&body) {
            Ok(views) => PageCheck::Known {
                url: url.to_string(),
                pages: views.into_iter().map(|v| (v.id, v.paused)).collect(),
            },
            Err(e) => unreachable(format!("not a list of Pages: {e}")),
        }
    }

    pub fn url(&self) -> &str {
        match self {
            PageCheck::Known { url, .. } | PageCheck::Unreachable { url, .. } => url,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The `/pages` URL: `admin` as given (`http://host:9464`, `host:9464` or a full `/pages` URL),
/// else the settings' `admin.listen`, with an unspecified address replaced by loopback.
pub fn pages_url(admin: Option<&str>, listen: SocketAddr) -> String {
    let base = match admin {
        Some(admin) if admin.contains("://") => admin.trim_end_matches('/').to_string(),
        Some(admin) => format!("http://{}", admin.trim_end_matches('/')),
        None => {
            let ip = match listen.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            format!("http://{}", SocketAddr::new(ip, listen.port()))
        }
    };
    if base.ends_with("/pages") {
        base
    } else {
        format!("{base}/pages")
    }
}

/// The guardrail `letter` trips, if any.
pub fn check(letter: &Letter, overrides: Overrides, pages: &PageCheck) -> Option<Guardrail> {
    match letter.reason.pagerelay() {
        Some(DeadLetterReason::Invalid) if !overrides.include_invalid => {
            return Some(Guardrail::Invalid);
        }
        Some(DeadLetterReason::Ambiguous) if !overrides.include_ambiguous => {
            return Some(Guardrail::Ambiguous);
        }
        _ => {}
    }
    if overrides.force {
        return None;
    }
    match pages {
        PageCheck::Unreachable { .. } => Some(Guardrail::AdminUnreachable),
        PageCheck::Known { pages, .. } => match pages.get(letter.target_routing_key()) {
            None => Some(Guardrail::PageUnknown),
            Some(Some(reason)) => Some(Guardrail::PagePaused(reason.clone())),
            Some(None) => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::letter::tests::{broker_letter, pagerelay_letter};
    use super::*;

    fn known(pages: &[(&str, Option<&str>)]) -> PageCheck {
        PageCheck::Known {
            url: "http://127.0.0.1:9464/pages".into(),
            pages: pages
                .iter()
                .map(|(id, p)| (id.to_string(), p.map(str::to_string)))
                .collect(),
        }
    }

    #[test]
    fn invalid_and_ambiguous_need_their_own_flags() {
        let pages = known(&[("1001", None)]);
        let invalid = pagerelay_letter("invalid", "1001", "a");
        let ambiguous = pagerelay_letter("ambiguous", "1001", "b");
        let none = Overrides::default();
        assert_eq!(check(&invalid, none, &pages), Some(Guardrail::Invalid));
        assert_eq!(check(&ambiguous, none, &pages), Some(Guardrail::Ambiguous));
        // --force is about Pages; it does not let invalid or ambiguous letters through.
        let force = Overrides {
            force: true,
            ..none
        };
        assert_eq!(check(&invalid, force, &pages), Some(Guardrail::Invalid));
        assert_eq!(check(&ambiguous, force, &pages), Some(Guardrail::Ambiguous));
        let both = Overrides {
            include_invalid: true,
            include_ambiguous: true,
            force: false,
        };
        assert_eq!(check(&invalid, both, &pages), None);
        assert_eq!(check(&ambiguous, both, &pages), None);
    }

    #[test]
    fn pages_must_be_known_and_running() {
        let pages = known(&[("1001", None), ("1002", Some("token_invalid"))]);
        let none = Overrides::default();
        let ok = pagerelay_letter("token_invalid", "1001", "a");
        let paused = pagerelay_letter("token_invalid", "1002", "b");
        let unknown = pagerelay_letter("unknown_page", "1009", "c");
        assert_eq!(check(&ok, none, &pages), None);
        assert_eq!(
            check(&paused, none, &pages),
            Some(Guardrail::PagePaused("token_invalid".into()))
        );
        assert_eq!(check(&unknown, none, &pages), Some(Guardrail::PageUnknown));
        assert_eq!(check(&broker_letter("1001"), none, &pages), None);

        let unreachable = PageCheck::Unreachable {
            url: "http://127.0.0.1:1/pages".into(),
            error: "connection refused".into(),
        };
        assert_eq!(
            check(&ok, none, &unreachable),
            Some(Guardrail::AdminUnreachable)
        );
        let force = Overrides {
            force: true,
            ..none
        };
        for letter in [&ok, &paused, &unknown] {
            assert_eq!(check(letter, force, &pages), None);
            assert_eq!(check(letter, force, &unreachable), None);
        }
    }

    #[test]
    fn pages_urls() {
        let listen: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        assert_eq!(pages_url(None, listen), "http://127.0.0.1:9464/pages");
        let listen6: SocketAddr = "[::]:9464".parse().unwrap();
        assert_eq!(pages_url(None, listen6), "http://[::1]:9464/pages");
        let lan: SocketAddr = "10.0.0.5:9000".parse().unwrap();
        assert_eq!(pages_url(None, lan), "http://10.0.0.5:9000/pages");
        assert_eq!(
            pages_url(Some("http://relay-2:9464/"), listen),
            "http://relay-2:9464/pages"
        );
        assert_eq!(
            pages_url(Some("relay-2:9464"), listen),
            "http://relay-2:9464/pages"
        );
        assert_eq!(
            pages_url(Some("https://relay-2/admin/pages"), listen),
            "https://relay-2/admin/pages"
        );
    }

    #[tokio::test]
    async fn an_unreachable_admin_endpoint_says_why() {
        // A port nobody listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/pages");
        match PageCheck::fetch(&url, Duration::from_secs(2)).await {
            PageCheck::Unreachable { url: u, error } => {
                assert_eq!(u, url);
                assert!(!error.is_empty());
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
    }
}
