//! A small typed client for the simulator's `/_sim` admin API, for tests: read the delivery record
//! with a cursor, read stats, switch faults and outages, change Pages.
//!
//! It does not send Graph requests; tests and pagerelay build those themselves, so that the
//! simulator's parsing is exercised by someone else's encoding.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::faults::{Faults, OutageMode, OutageRequest, OutageView};
use super::pages::{PageUpdate, PageView};
use super::record::{Delivery, Stats};

/// Page size used by [`SimClient::all_deliveries`].
const PAGE: usize = 10_000;

/// Talks to one simulator's admin API.
#[derive(Debug, Clone)]
pub struct SimClient {
    http: reqwest::Client,
    base: String,
}

/// A failed admin call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request to graph-sim failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("graph-sim answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot decode graph-sim's answer: {0}")]
    Decode(#[from] serde_json::Error),
}

impl SimClient {
    /// A client for the simulator at `base_url` (e.g. `http://127.0.0.1:8090`).
    pub fn new(base_url: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client always builds");
        SimClient {
            http,
            base: base_url.into().trim_end_matches('/').to_owned(),
        }
    }

    /// Up to `limit` deliveries with `seq` greater than `after`, oldest first.
    pub async fn deliveries(&self, after: u64, limit: usize) -> Result<Vec<Delivery>, ClientError> {
        let url = format!("{}/_sim/deliveries?after={after}&limit={limit}", self.base);
        let body = self.send(self.http.get(url)).await?;
        body.split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).map_err(ClientError::from))
            .collect()
    }

    /// Every delivery recorded so far, read page by page with the cursor.
    pub async fn all_deliveries(&self) -> Result<Vec<Delivery>, ClientError> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map_or(0, |d: &Delivery| d.seq);
            let page = self.deliveries(after, PAGE).await?;
            let done = page.len() < PAGE;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.get_json("/_sim/stats").await
    }

    pub async fn faults(&self) -> Result<Faults, ClientError> {
        self.get_json("/_sim/faults").await
    }

    /// Replaces the faults; returns them as the simulator now applies them.
    pub async fn set_faults(&self, faults: &Faults) -> Result<Faults, ClientError> {
        self.send_json(reqwest::Method::PUT, "/_sim/faults", faults)
            .await
    }

    pub async fn pages(&self) -> Result<Vec<PageView>, ClientError> {
        self.get_json("/_sim/pages").await
    }

    /// Creates or changes a Page (token rotation, audience, revocation, ceilings).
    pub async fn update_page(
        &self,
        id: &str,
        update: &PageUpdate,
    ) -> Result<PageView, ClientError> {
        self.send_json(reqwest::Method::PUT, &format!("/_sim/pages/{id}"), update)
            .await
    }

    /// Revokes every token of Page `id` (code 190 until [`SimClient::update_page`] sets
    /// `revoked` back to false, or a rotation gives it a new token).
    pub async fn revoke(&self, id: &str) -> Result<PageView, ClientError> {
        let update = PageUpdate {
            revoked: Some(true),
            ..PageUpdate::default()
        };
        self.update_page(id, &update).await
    }

    /// Starts an outage: every Graph request fails in `mode` until `duration` passes (or forever
    /// with `None`) or [`SimClient::end_outage`] is called.
    pub async fn start_outage(
        &self,
        duration: Option<Duration>,
        mode: OutageMode,
    ) -> Result<OutageView, ClientError> {
        let request = OutageRequest {
            duration_ms: duration.map(|d| d.as_millis() as u64),
            mode,
        };
        self.send_json(reqwest::Method::POST, "/_sim/outage", &request)
            .await
    }

    pub async fn end_outage(&self) -> Result<(), ClientError> {
        self.send(self.http.delete(format!("{}/_sim/outage", self.base)))
            .await
            .map(drop)
    }

    pub async fn outage(&self) -> Result<OutageView, ClientError> {
        self.get_json("/_sim/outage").await
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        Ok(serde_json::from_slice(&body)?)
    }

    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(serde_json::to_vec(body)?);
        let body = self.send(request).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, ClientError> {
        let response = request.send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            return Err(ClientError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(body.to_vec())
    }
}
