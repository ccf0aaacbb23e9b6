//! Health and the API's own metrics.
//!
//! `GET /healthz` answers 200 while the process serves; `GET /readyz`
//! answers 200 when the store answers a read within two seconds and the
//! boot HTTP and TFTP listeners the server was told to run are bound, else
//! 503. Both need no
//! token and say nothing but `ok`, `ready` or `not ready` (the server's
//! log says why). [`ApiMetrics`] times every API request by route
//! template, method and status for the metrics listener.

use axum::extract::{MatchedPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plinth_model::Kind;
use plinth_store::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The listeners a server runs and whether each is up.
#[derive(Debug, Default)]
pub struct Readiness {
    listeners: Mutex<Vec<(&'static str, bool)>>,
}

impl Readiness {
    /// Records whether `listener` (`api`, `http`, `tftp`) is up.
    pub fn set(&self, listener: &'static str, up: bool) {
        let mut l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        match l.iter_mut().find(|(n, _)| *n == listener) {
            Some(e) => e.1 = up,
            None => l.push((listener, up)),
        }
    }

    /// The listeners that are down.
    pub fn down(&self) -> Vec<&'static str> {
        let l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().filter(|(_, up)| !up).map(|(n, _)| *n).collect()
    }
}

/// How long `/readyz` waits for the store.
pub const STORE_PROBE: Duration = Duration::from_secs(2);

/// Whether the server is ready: the store answers and no listener is down.
/// Why not is logged, never answered.
pub async fn ready(store: &dyn Store, readiness: &Readiness) -> bool {
    match tokio::time::timeout(STORE_PROBE, store.get(Kind::Role, "admin")).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readyz: the store does not answer");
            return false;
        }
        Err(_) => {
            tracing::warn!(seconds = STORE_PROBE.as_secs(), "readyz: the store did not answer in time");
            return false;
        }
    }
    let down = readiness.down();
    if !down.is_empty() {
        tracing::warn!(?down, "readyz: listeners down");
    }
    down.is_empty()
}

/// The answer of `/healthz`.
pub async fn healthz() -> Response {
    (StatusCode::OK, [(axum::http::header::CACHE_CONTROL, "no-store")], "ok\n").into_response()
}

/// The answer of `/readyz` for `ready`.
pub fn readyz_answer(ready: bool) -> Response {
    let (status, body) =
        if ready { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") };
    (status, [(axum::http::header::CACHE_CONTROL, "no-store")], body).into_response()
}

pub(crate) async fn readyz(State(state): State<crate::AppState>) -> Response {
    readyz_answer(ready(state.store.as_ref(), &state.readiness).await)
}

/// Labels of an API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template (`/api/v1/{kind}/{key}`); requests no route
    /// matches are not counted.
    pub route: String,
    pub method: String,
    pub status: String,
}

fn request_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The API's request metrics; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    /// Duration of each request until its answer's head, by route, method
    /// and status.
    pub requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics { requests: Family::new_with_constructor(request_histogram) }
    }
}

/// Times a request (a layer on every route).
pub(crate) async fn record(
    State(metrics): State<ApiMetrics>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::Method;
    // Only routes: the fallback does not pass through this layer.
    let route = req.extensions().get::<MatchedPath>().map_or("", |m| m.as_str()).to_owned();
    let m = req.method();
    // Only the methods the API knows: anything else is one label value.
    let method =
        if [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::HEAD, Method::OPTIONS]
            .contains(m)
        {
            m.as_str().to_owned()
        } else {
            "other".to_owned()
        };
    let start = Instant::now();
    let resp = next.run(req).await;
    let labels = RequestLabels { route, method, status: resp.status().as_u16().to_string() };
    metrics.requests.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_the_listeners_down() {
        let r = Readiness::default();
        assert!(r.down().is_empty());
        r.set("http", false);
        r.set("api", true);
        assert_eq!(r.down(), vec!["http"]);
        r.set("http", true);
        assert!(r.down().is_empty());
    }
}
