//! `GET /api/v1/events`: committed changes as server-sent events.
//!
//! Each event is named `change` and carries `{kind, action, key, revision,
//! object}` with server-only fields redacted. `?kind=machines,jobs` and
//! `?key=...` filter. A subscriber sees only changes to objects it may read
//! (a token: only its own, unless it may read every token). A subscriber
//! too slow to keep up gets a `lagged` event saying how many changes it
//! missed, so it knows to re-list.

use crate::crud::redact;
use crate::extract::Query;
use crate::{ApiError, AppState, Principal};
use axum::extract::State;
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

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventQuery {
    /// Comma-separated kinds (plural).
    kind: Option<String>,
    /// Only this key.
    key: Option<String>,
}

/// Whether `p` may see a change to `kind` object `key` (body `object`):
/// the same claim a read of it needs (a machine also by its name), and a
/// token only its owner or one who may read every token.
fn may_see(p: &Principal, kind: Kind, key: &str, object: &serde_json::Value) -> bool {
    if kind == Kind::Token {
        let own = object.get("user").and_then(|u| u.as_str()) == Some(p.user.as_str())
            && object.get("machine").is_none_or(|m| m.is_null());
        return own || p.holds(&plinth_model::Claim::new("tokens", "read"));
    }
    let name = object.get("name").and_then(|n| n.as_str());
    p.may(kind.plural(), "read", Some(key))
        || (kind == Kind::Machine && name.is_some_and(|n| p.may(kind.plural(), "read", Some(n))))
}

pub async fn stream(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Query(q): Query<EventQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let kinds: Option<Vec<Kind>> = q
        .kind
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(|k| crate::crud::kind_param("kind", k)).collect::<Result<_, _>>())
        .transpose()?;
    let key = q.key;
    let rx = state.store.subscribe();
    let events = BroadcastStream::new(rx).filter_map(move |item| match item {
        Ok(c) => {
            if kinds.as_ref().is_some_and(|ks| !ks.contains(&c.kind)) || key.as_ref().is_some_and(|k| *k != c.key) {
                return None;
            }
            // Only what the subscriber may read.
            if !may_see(&principal, c.kind, &c.key, &c.object) {
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
    // `ready` first: from here on no committed change is missed, so a
    // client may read the current state and then apply the changes.
    let ready = Event::default().event("ready").data(json!({"subscribed": true}).to_string());
    let events = tokio_stream::once(Ok(ready)).chain(events);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BootEventParams {
    /// Only this machine's.
    #[schemars(with = "Option<plinth_model::MacAddr>")]
    mac: Option<String>,
    /// `next` of the previous page.
    after: Option<u64>,
    /// At most this many (1000 by default).
    #[schemars(range(min = 1, max = plinth_store::MAX_PAGE))]
    limit: Option<usize>,
}

/// `GET /api/v1/boot-events`: DHCP, TFTP and HTTP boot requests in order,
/// optionally for one MAC (`?mac=`), after an id (`?after=`).
pub async fn boot_events(
    State(state): State<AppState>,
    Query(q): Query<BootEventParams>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let mac = q
        .mac
        .as_deref()
        .map(|m| m.parse::<plinth_model::MacAddr>().map_err(|e| ApiError::field("mac", e)))
        .transpose()?;
    let limit = page_limit(q.limit)?;
    let items =
        state.store.boot_events(&plinth_store::BootEventQuery { mac, after: q.after, limit, machine: None }).await?;
    let next = (items.len() == limit).then(|| items.last().map(|e| e.id)).flatten();
    Ok(axum::Json(json!({"items": items, "next": next})))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    /// Only this kind's (plural).
    kind: Option<String>,
    /// Only this object's.
    key: Option<String>,
    /// `user:NAME`, `machine:ID`, `address:IP`, `host:NAME`.
    actor: Option<String>,
    /// `next` of the previous page.
    after: Option<u64>,
    /// At most this many (1000 by default).
    #[schemars(range(min = 1, max = plinth_store::MAX_PAGE))]
    limit: Option<usize>,
}

/// `GET /api/v1/audit`: the audit log in order, filtered by `kind`, `key`,
/// `actor`, after a sequence number. Objects are shown as everywhere else:
/// server-only fields removed, secure values as `<secure>`.
pub async fn audit(
    State(state): State<AppState>,
    Query(q): Query<AuditParams>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let kind = q.kind.as_deref().map(|k| crate::crud::kind_param("kind", k)).transpose()?;
    let limit = page_limit(q.limit)?;
    let query = plinth_store::AuditQuery {
        kind: kind.map(|k| k.plural().to_owned()),
        key: q.key,
        actor: q.actor,
        after: q.after,
        limit,
    };
    let mut items = state.store.audit(&query).await?;
    for e in &mut items {
        let kind = Kind::from_plural(&e.kind);
        for body in [&mut e.before, &mut e.after].into_iter().flatten() {
            match kind {
                Some(k) => redact(k, body),
                None => crate::secure::redact_sealed(body),
            }
        }
    }
    let next = (items.len() == limit).then(|| items.last().map(|e| e.seq)).flatten();
    Ok(axum::Json(json!({"items": items, "next": next})))
}

/// A log route's `?limit=`: 1000 by default, at most a store page.
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(1000);
    if limit == 0 || limit > plinth_store::MAX_PAGE {
        return Err(ApiError::field("limit", format!("expected 1 to {}", plinth_store::MAX_PAGE)));
    }
    Ok(limit)
}
