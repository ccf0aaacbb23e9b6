//! `GET /api/v1/events`: committed changes as server-sent events.
//!
//! Each event is named `change` and carries `{kind, action, key, revision,
//! object}` with server-only fields redacted. `?kind=machines,jobs` and
//! `?key=...` filter. A subscriber too slow to keep up gets a `lagged` event
//! saying how many changes it missed, so it knows to re-list.

use crate::crud::{parse_kind, redact};
use crate::{ApiError, AppState};
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use plinth_model::Kind;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Comma-separated kinds (plural).
    kind: Option<String>,
    /// Only this key.
    key: Option<String>,
}

pub async fn stream(
    State(state): State<AppState>,
    Query(q): Query<EventQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let kinds: Option<Vec<Kind>> = q
        .kind
        .as_deref()
        .map(|s| s.split(',').filter(|k| !k.is_empty()).map(parse_kind).collect::<Result<_, _>>())
        .transpose()?;
    let key = q.key;
    let rx = state.store.subscribe();
    let events = BroadcastStream::new(rx).filter_map(move |item| match item {
        Ok(c) => {
            if kinds.as_ref().is_some_and(|ks| !ks.contains(&c.kind)) || key.as_ref().is_some_and(|k| *k != c.key) {
                return None;
            }
            let mut object = c.object;
            redact(c.kind, &mut object);
            let data = json!({"kind": c.kind.plural(), "action": c.action.as_str(), "key": c.key, "revision": c.revision, "object": object});
            Some(Ok(Event::default().event("change").data(data.to_string())))
        }
        Err(BroadcastStreamRecvError::Lagged(n)) => {
            Some(Ok(Event::default().event("lagged").data(json!({"missed": n}).to_string())))
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
