//! The Pages the simulator serves: their ids, access tokens, audiences, revocation and per-Page
//! ceilings, plus `appsecret_proof` checking.
//!
//! Lookups happen on every request, changes only through the admin API, so the id and token maps
//! live in an immutable [`Directory`] snapshot that is swapped whole on a change (readers never
//! block). Each [`Page`] itself is shared across snapshots and carries the mutable per-Page state
//! (limiter and counters) behind its own small lock. This module does not decide what a request is
//! allowed to do with a Page beyond "this token belongs to that Page and is not revoked".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::error::GraphError;
use super::limits::{Limits, PageLimiter};
use super::record::PageCounters;

/// The `appsecret_proof` for `token`: hex HMAC-SHA256 of the token keyed by the app secret.
pub fn appsecret_proof(app_secret: &str, token: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(token.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a proof in constant time; a proof that is not hex is simply wrong.
pub(crate) fn proof_matches(app_secret: &str, token: &str, proof: &str) -> bool {
    let Ok(bytes) = hex::decode(proof) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(token.as_bytes());
    mac.verify_slice(&bytes).is_ok()
}

/// Calls per rolling budget window per member of the audience.
pub(crate) const CALLS_PER_AUDIENCE: u64 = 200;

/// One Page and its mutable state.
#[derive(Debug)]
pub(crate) struct Page {
    pub id: Box<str>,
    /// Position in [`Directory::pages`]; stable for the simulator's lifetime (Pages are never
    /// removed), so the delivery record stores this instead of the id.
    pub index: u32,
    audience: AtomicU64,
    /// The audience before the latest change, reported as the older insights value.
    previous_audience: AtomicU64,
    revoked: AtomicBool,
    rps: AtomicU64,
    media_rps: AtomicU64,
    state: Mutex<PageState>,
}

/// What one lock per operation guards: the windows and the counters move together.
#[derive(Debug)]
pub(crate) struct PageState {
    pub limiter: PageLimiter,
    pub counters: PageCounters,
}

impl Page {
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            budget: self
                .audience
                .load(Ordering::Relaxed)
                .saturating_mul(CALLS_PER_AUDIENCE),
            rps: self.rps.load(Ordering::Relaxed),
            media_rps: self.media_rps.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn audience(&self) -> u64 {
        self.audience.load(Ordering::Relaxed)
    }

    pub(crate) fn previous_audience(&self) -> u64 {
        self.previous_audience.load(Ordering::Relaxed)
    }

    pub(crate) fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, PageState> {
        // A panic while holding this lock leaves counters at worst slightly off; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An immutable snapshot of the Pages and their tokens.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    pages: Vec<Arc<Page>>,
    tokens: Vec<Vec<String>>,
    by_id: HashMap<String, usize>,
    by_token: HashMap<String, usize>,
}

impl Directory {
    pub(crate) fn pages(&self) -> &[Arc<Page>] {
        &self.pages
    }

    pub(crate) fn page(&self, id: &str) -> Option<&Arc<Page>> {
        self.by_id.get(id).map(|&i| &self.pages[i])
    }

    pub(crate) fn by_index(&self, index: u32) -> &Arc<Page> {
        &self.pages[index as usize]
    }

    /// The Page a token belongs to: unknown tokens and revoked Pages' tokens are code 190.
    pub(crate) fn authenticate(&self, token: &str) -> Result<&Arc<Page>, GraphError> {
        let page = self
            .by_token
            .get(token)
            .map(|&i| &self.pages[i])
            .ok_or_else(GraphError::token_invalid)?;
        if page.revoked() {
            return Err(GraphError::token_revoked());
        }
        Ok(page)
    }

    fn view(&self, index: usize) -> PageView {
        let page = &self.pages[index];
        let limits = page.limits();
        PageView {
            id: page.id.to_string(),
            tokens: self.tokens[index].clone(),
            audience: page.audience(),
            revoked: page.revoked(),
            rps: limits.rps,
            media_rps: limits.media_rps,
            budget: limits.budget,
        }
    }

    fn rebuild_token_index(&mut self) -> Result<(), PageError> {
        let mut by_token: HashMap<String, usize> = HashMap::new();
        for (index, tokens) in self.tokens.iter().enumerate() {
            for token in tokens {
                if let Some(&other) = by_token.get(token.as_str())
                    && other != index
                {
                    return Err(PageError::TokenInUse {
                        page: self.pages[other].id.to_string(),
                    });
                }
                by_token.insert(token.clone(), index);
            }
        }
        self.by_token = by_token;
        Ok(())
    }
}

/// A Page as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageView {
    pub id: String,
    pub tokens: Vec<String>,
    pub audience: u64,
    pub revoked: bool,
    pub rps: u64,
    pub media_rps: u64,
    /// Calls per rolling budget window (200 × audience).
    pub budget: u64,
}

/// A change to a Page (`PUT /_sim/pages/{id}`); absent fields are left as they are. A Page that does
/// not exist yet is created, which needs a token and an audience.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PageUpdate {
    /// Replaces all the Page's tokens with this one (rotation: the old tokens stop working).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Replaces all the Page's tokens with these (rotation with an overlap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<u64>,
    /// A revoked Page's tokens all answer 190 (subcode 460) until this is set back to false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_rps: Option<u64>,
}

/// Why a Page could not be created or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("a Page id must be a non-empty string of digits, got {0:?}")]
    InvalidId(String),
    #[error("Page {0} is configured twice")]
    DuplicateId(String),
    #[error("a new Page needs at least one token and an audience")]
    IncompleteNewPage,
    #[error("a token must not be empty")]
    EmptyToken,
    #[error("the token already belongs to Page {page}")]
    TokenInUse { page: String },
    #[error("give either token or tokens, not both")]
    TokenAndTokens,
}

/// The live set of Pages.
#[derive(Debug)]
pub(crate) struct Registry {
    current: ArcSwap<Directory>,
    /// Serialises writers; readers use `current` without locking.
    writer: Mutex<()>,
    budget_window_us: u64,
    default_rps: u64,
    default_media_rps: u64,
}

/// Initial settings of one Page.
pub(crate) struct NewPage<'a> {
    pub id: &'a str,
    pub tokens: &'a [String],
    pub audience: u64,
    pub rps: Option<u64>,
    pub media_rps: Option<u64>,
}

impl Registry {
    pub(crate) fn new(
        pages: &[NewPage<'_>],
        budget_window_us: u64,
        default_rps: u64,
        default_media_rps: u64,
    ) -> Result<Self, PageError> {
        let registry = Registry {
            current: ArcSwap::from_pointee(Directory::default()),
            writer: Mutex::new(()),
            budget_window_us,
            default_rps,
            default_media_rps,
        };
        let mut directory = Directory::default();
        for page in pages {
            if directory.by_id.contains_key(page.id) {
                return Err(PageError::DuplicateId(page.id.to_owned()));
            }
            registry.add(&mut directory, page)?;
        }
        directory.rebuild_token_index()?;
        registry.current.store(Arc::new(directory));
        Ok(registry)
    }

    /// The current snapshot.
    pub(crate) fn load(&self) -> Arc<Directory> {
        self.current.load_full()
    }

    fn add(&self, directory: &mut Directory, new: &NewPage<'_>) -> Result<(), PageError> {
        if new.id.is_empty() || !new.id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PageError::InvalidId(new.id.to_owned()));
        }
        if new.tokens.is_empty() {
            return Err(PageError::IncompleteNewPage);
        }
        if new.tokens.iter().any(String::is_empty) {
            return Err(PageError::EmptyToken);
        }
        let index = directory.pages.len();
        directory.pages.push(Arc::new(Page {
            id: new.id.into(),
            index: u32::try_from(index).expect("fewer than 2^32 Pages"),
            audience: AtomicU64::new(new.audience),
            previous_audience: AtomicU64::new(new.audience),
            revoked: AtomicBool::new(false),
            rps: AtomicU64::new(new.rps.unwrap_or(self.default_rps)),
            media_rps: AtomicU64::new(new.media_rps.unwrap_or(self.default_media_rps)),
            state: Mutex::new(PageState {
                limiter: PageLimiter::new(self.budget_window_us),
                counters: PageCounters::default(),
            }),
        }));
        directory.tokens.push(new.tokens.to_vec());
        directory.by_id.insert(new.id.to_owned(), index);
        Ok(())
    }

    /// Creates or changes a Page. Token changes swap in a new snapshot; the rest is atomic in place.
    pub(crate) fn upsert(&self, id: &str, update: &PageUpdate) -> Result<PageView, PageError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tokens = match (&update.token, &update.tokens) {
            (Some(_), Some(_)) => return Err(PageError::TokenAndTokens),
            (Some(token), None) => Some(vec![token.clone()]),
            (None, Some(tokens)) => Some(tokens.clone()),
            (None, None) => None,
        };
        if tokens
            .as_ref()
            .is_some_and(|t| t.iter().any(String::is_empty))
        {
            return Err(PageError::EmptyToken);
        }
        let current = self.current.load_full();
        let mut next = Directory {
            pages: current.pages.clone(),
            tokens: current.tokens.clone(),
            by_id: current.by_id.clone(),
            by_token: HashMap::new(),
        };
        let index = match next.by_id.get(id) {
            Some(&index) => {
                if let Some(tokens) = tokens {
                    next.tokens[index] = tokens;
                }
                index
            }
            None => {
                let (Some(tokens), Some(audience)) = (tokens, update.audience) else {
                    return Err(PageError::IncompleteNewPage);
                };
                self.add(
                    &mut next,
                    &NewPage {
                        id,
                        tokens: &tokens,
                        audience,
                        rps: update.rps,
                        media_rps: update.media_rps,
                    },
                )?;
                next.pages.len() - 1
            }
        };
        next.rebuild_token_index()?;
        let page = &next.pages[index];
        if let Some(audience) = update.audience {
            let old = page.audience.swap(audience, Ordering::Relaxed);
            page.previous_audience.store(old, Ordering::Relaxed);
        }
        if let Some(revoked) = update.revoked {
            page.revoked.store(revoked, Ordering::Relaxed);
        }
        if let Some(rps) = update.rps {
            page.rps.store(rps, Ordering::Relaxed);
        }
        if let Some(media_rps) = update.media_rps {
            page.media_rps.store(media_rps, Ordering::Relaxed);
        }
        let view = next.view(index);
        self.current.store(Arc::new(next));
        Ok(view)
    }

    pub(crate) fn views(&self) -> Vec<PageView> {
        let directory = self.load();
        (0..directory.pages.len())
            .map(|i| directory.view(i))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let tokens = vec!["t1".to_owned()];
        Registry::new(
            &[NewPage {
                id: "111",
                tokens: &tokens,
                audience: 5,
                rps: None,
                media_rps: Some(3),
            }],
            1_000_000,
            300,
            10,
        )
        .unwrap()
    }

    #[test]
    fn proofs_match_only_their_token_and_secret() {
        let proof = appsecret_proof("secret", "token");
        assert_eq!(proof.len(), 64);
        assert!(proof_matches("secret", "token", &proof));
        assert!(!proof_matches("secret", "other", &proof));
        assert!(!proof_matches("other", "token", &proof));
        assert!(!proof_matches("secret", "token", "not hex"));
    }

    #[test]
    fn tokens_authenticate_rotate_and_revoke() {
        let registry = registry();
        let page = registry.load().authenticate("t1").unwrap().clone();
        assert_eq!(
            page.limits(),
            Limits {
                budget: 1000,
                rps: 300,
                media_rps: 3
            }
        );
        assert_eq!(registry.load().authenticate("nope").unwrap_err().code, 190);

        registry
            .upsert(
                "111",
                &PageUpdate {
                    token: Some("t2".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(registry.load().authenticate("t1").is_err());
        assert!(registry.load().authenticate("t2").is_ok());

        registry
            .upsert(
                "111",
                &PageUpdate {
                    revoked: Some(true),
                    ..Default::default()
                },
            )
            .unwrap();
        let err = registry.load().authenticate("t2").unwrap_err();
        assert_eq!((err.code, err.subcode), (190, Some(460)));

        let view = registry
            .upsert(
                "111",
                &PageUpdate {
                    revoked: Some(false),
                    audience: Some(7),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!((view.audience, view.budget, view.revoked), (7, 1400, false));
        assert_eq!(page.previous_audience(), 5);
    }

    #[test]
    fn new_pages_need_tokens_and_unique_tokens() {
        let registry = registry();
        assert_eq!(
            registry.upsert(
                "222",
                &PageUpdate {
                    audience: Some(1),
                    ..Default::default()
                }
            ),
            Err(PageError::IncompleteNewPage)
        );
        assert_eq!(
            registry.upsert(
                "222",
                &PageUpdate {
                    token: Some("t1".into()),
                    audience: Some(1),
                    ..Default::default()
                }
            ),
            Err(PageError::TokenInUse { page: "111".into() })
        );
        assert!(matches!(
            registry.upsert(
                "me",
                &PageUpdate {
                    token: Some("x".into()),
                    audience: Some(1),
                    ..Default::default()
                }
            ),
            Err(PageError::InvalidId(_))
        ));
        let view = registry
            .upsert(
                "222",
                &PageUpdate {
                    token: Some("t3".into()),
                    audience: Some(1),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(view.rps, 300);
        assert_eq!(registry.load().authenticate("t3").unwrap().index, 1);
    }
}
