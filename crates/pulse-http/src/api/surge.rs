//! `GET /api/v1/surge/cells` (the live cells and drivers now) and `GET /api/v1/surge/stream`
//! (Server-Sent Events: a `snapshot`, then an `update` whenever something changed).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use pulse_surge::map::SurgeSnapshot;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{SurgeApi, STREAM_KEEP_ALIVE as KEEP_ALIVE};
use crate::auth::Caller;
use crate::openapi::domain;
use crate::openapi::responses::*;
use crate::ApiError;

/// The caller's live surge map now: cells with a value, and available drivers.
#[utoipa::path(
    get,
    path = "/api/v1/surge/cells",
    operation_id = "getSurgeCells",
    tag = "surge",
    responses(
        (status = 200, description = "The map now.", body = domain::SurgeSnapshot),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn cells(
    State(state): State<Arc<SurgeApi>>,
    Caller(caller): Caller,
) -> Result<Json<SurgeSnapshot>, ApiError> {
    let snapshot = state
        .surge
        .map(&caller.tenant)
        .snapshot()
        .await
        .map_err(|err| {
            ApiError::unavailable(format!("cannot read the surge map from the cache: {err}"))
        })?;
    Ok(Json(snapshot))
}

fn event(name: &str, data: &impl Serialize) -> Event {
    // Serialising these plain structs cannot fail; an empty event would be harmless anyway.
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_default())
}

/// Where one stream is: what its client has, and the feed it follows.
struct Follower {
    sent: Arc<SurgeSnapshot>,
    feed: watch::Receiver<Option<Arc<SurgeSnapshot>>>,
    shutdown: CancellationToken,
}

impl Follower {
    /// The next update for this client, or `None` when the process stops.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                changed = self.feed.changed() => changed.ok()?,
            }
            let latest = self.feed.borrow_and_update().clone();
            let Some(latest) = latest else { continue };
            if let Some(update) = latest.changes_since(&self.sent) {
                self.sent = latest;
                return Some((Ok(event("update", &update)), self));
            }
        }
    }
}

/// Follow the caller's live surge map (Server-Sent Events).
///
/// The first event is `snapshot` (data: a `SurgeSnapshot`), then an `update` (data: a
/// `SurgeUpdate`) whenever something changed; a comment line every 15 s keeps a quiet stream
/// open. The stream has no deadline: it ends when the client leaves or the server stops.
#[utoipa::path(
    get,
    path = "/api/v1/surge/stream",
    operation_id = "streamSurge",
    tag = "surge",
    responses(
        (status = 200, description = "An event stream: `event: snapshot` then `event: update`, \
            each `data:` one JSON object (`SurgeSnapshot`, then `SurgeUpdate`).",
            content_type = "text/event-stream", body = String),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn stream(
    State(state): State<Arc<SurgeApi>>,
    Caller(caller): Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let tenant_feed = state.surge.feed(&caller.tenant);
    // Subscribe before reading the first snapshot, so no change falls between the two.
    let mut feed = tenant_feed.subscribe();
    feed.mark_unchanged();
    let first = Arc::new(tenant_feed.map().snapshot().await.map_err(|err| {
        ApiError::unavailable(format!("cannot read the surge map from the cache: {err}"))
    })?);
    let follower = Follower {
        sent: first.clone(),
        feed,
        shutdown: state.surge.shutdown().clone(),
    };
    let opening = stream::once(async move { Ok(event("snapshot", &*first)) });
    let updates = stream::unfold(follower, Follower::next);
    Ok(Sse::new(opening.chain(updates)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
