//! The Graph API over HTTP: one pooled `reqwest` client with keep-alive and timeouts, used for
//! batch calls and insights reads.
//!
//! It turns transport failures into [`BatchFailure::Transport`] / [`BatchFailure::Timeout`] and
//! replies into [`BatchReply`]; what they mean is [`classify`](super::classify)'s business.
//! Request bodies carry tokens, so neither they nor reqwest's errors' URLs (which hold no token:
//! tokens travel in the body or are stripped) are ever logged in full.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use secrecy::ExposeSecret;
use serde_json::Value;
use url::Url;

use super::{BatchFailure, BatchReply, BatchRequest, PageAuth};
use crate::config::GraphSettings;

/// The metric insights report a Page's Messenger audience with.
pub const AUDIENCE_METRIC: &str = "page_messages_total_messaging_connections";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Why an audience could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AudienceError {
    #[error("insights request failed: {0}")]
    Transport(String),
    #[error("insights answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("insights reply has no {AUDIENCE_METRIC} value")]
    NoValue,
}

/// What a batch call came back with.
#[derive(Debug)]
pub enum Sent {
    /// An HTTP reply, decoded (which may still be a whole-batch failure).
    Reply(BatchReply),
    /// No reply: connection failure or timeout.
    Failed(BatchFailure),
}

/// A Graph API client for one base URL and API version.
#[derive(Debug, Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    /// `{base_url}/{version}/`: the batch endpoint.
    batch_url: Url,
    version_url: Url,
}

impl GraphClient {
    pub fn new(settings: &GraphSettings) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            // Shared requests keep the connections in use far below max_in_flight.
            .pool_max_idle_per_host(settings.max_in_flight.min(64))
            .tcp_nodelay(true)
            .user_agent(concat!("pagerelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        let mut version_url = settings.base_url.clone();
        version_url.set_path(&format!(
            "{}/{}/",
            settings.base_url.path().trim_end_matches('/'),
            settings.api_version
        ));
        Ok(GraphClient {
            http,
            batch_url: version_url.clone(),
            version_url,
        })
    }

    /// POSTs one batch and decodes the reply.
    pub async fn send(&self, request: &BatchRequest) -> Sent {
        let response = self
            .http
            .post(self.batch_url.clone())
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .body(request.form_body().into_bytes())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Sent::Failed(failure(&e)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        match response.bytes().await {
            Ok(body) => Sent::Reply(BatchReply::decode(request, status, &headers, &body)),
            Err(e) => Sent::Failed(failure(&e)),
        }
    }

    /// Reads a Page's audience: the newest `page_messages_total_messaging_connections` value.
    pub async fn audience(&self, page_id: &str, auth: &PageAuth) -> Result<u64, AudienceError> {
        let mut url = self
            .version_url
            .join(&format!("{page_id}/insights"))
            .map_err(|e| AudienceError::Transport(e.to_string()))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("metric", AUDIENCE_METRIC);
            query.append_pair("access_token", auth.token().expose_secret());
            if let Some(proof) = auth.appsecret_proof() {
                query.append_pair("appsecret_proof", proof.expose_secret());
            }
        }
        // The token is in this GET's query: errors lose their URL before they can be shown.
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| AudienceError::Transport(e.without_url().to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| AudienceError::Transport(e.without_url().to_string()))?;
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = json["error"]["message"]
                .as_str()
                .unwrap_or("no Graph error in the reply")
                .replace(auth.token().expose_secret(), "[redacted]");
            return Err(AudienceError::Http {
                status: status.as_u16(),
                message,
            });
        }
        newest_audience(&json).ok_or(AudienceError::NoValue)
    }
}

/// The newest value of the audience metric in an insights reply. Values may be numbers or
/// numeric strings; the newest is the one with the latest `end_time`, else the last.
pub fn newest_audience(reply: &Value) -> Option<u64> {
    let data = reply["data"].as_array()?;
    let metric = data
        .iter()
        .find(|m| m["name"].as_str() == Some(AUDIENCE_METRIC))
        .or_else(|| data.first())?;
    let values = metric["values"].as_array()?;
    let newest = values
        .iter()
        .filter(|v| !v["value"].is_null())
        .max_by(|a, b| {
            let ta = a["end_time"].as_str().unwrap_or("");
            let tb = b["end_time"].as_str().unwrap_or("");
            ta.cmp(tb)
        })?;
    match &newest["value"] {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn failure(e: &reqwest::Error) -> BatchFailure {
    if e.is_timeout() {
        BatchFailure::Timeout
    } else {
        BatchFailure::Transport
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_newest_audience_value_wins() {
        let reply = json!({"data": [{
            "name": AUDIENCE_METRIC,
            "period": "day",
            "values": [
                {"value": 900, "end_time": "2026-11-20T08:00:00+0000"},
                {"value": "1200", "end_time": "2026-11-22T08:00:00+0000"},
                {"value": 1000, "end_time": "2026-11-21T08:00:00+0000"}
            ]
        }]});
        assert_eq!(newest_audience(&reply), Some(1200));
        assert_eq!(newest_audience(&json!({"data": []})), None);
        assert_eq!(newest_audience(&json!({"error": {"code": 190}})), None);
        assert_eq!(
            newest_audience(
                &json!({"data": [{"name": AUDIENCE_METRIC, "values": [{"value": null}]}]})
            ),
            None
        );
    }
}
