//! Audience discovery for Pages configured with `audience = "auto"`: reads
//! `page_messages_total_messaging_connections` from the insights API at start and every
//! `limits.audience_refresh`, and resizes the Page's budget when it changes.
//!
//! A failed read keeps the last known audience (or `limits.default_audience` before the first
//! success) and is counted, never fatal: an underestimated audience only slows a Page down.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::config::Audience;
use crate::telemetry;

/// Refreshes every `auto` Page now and then every `audience_refresh`, until `stop`.
pub async fn refresh_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(shared.settings.limits.audience_refresh);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => refresh_all(&shared).await,
        }
    }
}

/// Reads the audience of every `auto` Page once.
pub async fn refresh_all(shared: &Shared) {
    for page in shared.registry.all() {
        let config = page.config();
        if config.audience != Audience::Auto {
            continue;
        }
        match shared.graph.audience(&page.id, &config.auth).await {
            Ok(audience) if audience > 0 => {
                metrics::counter!(telemetry::AUDIENCE_REFRESHES, "result" => "ok").increment(1);
                page.set_audience(audience, &shared.settings.limits);
            }
            Ok(_) => {
                metrics::counter!(telemetry::AUDIENCE_REFRESHES, "result" => "failed").increment(1);
                tracing::warn!(page = %page.id, kept = page.audience(), "insights reported no audience; keeping the last one");
            }
            Err(e) => {
                metrics::counter!(telemetry::AUDIENCE_REFRESHES, "result" => "failed").increment(1);
                tracing::warn!(page = %page.id, error = %e, kept = page.audience(), "cannot read the audience; keeping the last one");
            }
        }
    }
}
