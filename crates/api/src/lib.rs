//! Plinth's REST API.
//!
//! Owns the HTTPS listener (`--api-addr`), authentication (users, passwords,
//! bearer tokens), the generic CRUD routes at `/api/v1/<kind>`, the server-sent
//! event stream and the OpenAPI document. It validates every body with
//! `plinth_model` before anything reaches the store, and it redacts
//! server-only fields (password and token hashes) from every response and
//! event.
//!
//! It must never serve boot files: those belong to the plain-HTTP boot server.
#![forbid(unsafe_code)]

mod agent;
mod auth;
mod content;
mod crud;
mod error;
mod events;
mod extract;
pub mod health;
mod metadata;
mod openapi;
mod params;
pub mod power;
pub mod sandbox;
mod secure;
pub mod tls;

/// The TLS configuration [`serve`] takes.
pub use rustls::ServerConfig as TlsConfig;

pub use auth::{BootstrapError, LoginLimiter, Principal, bootstrap, hash_password, random_secret, sweep_tokens};
pub use error::ApiError;
pub use health::{ApiMetrics, Readiness};
pub use secure::{reseal_all, sealed_under_old_keys};

use axum::Router;
use axum::routing::{get, post};
use plinth_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body the API reads.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// A client must send its request headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a request may take to be answered (the agent's long poll waits
/// at most 60 s). An event stream, once answered, is not limited.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Lifetime of tokens minted without an explicit `ttl_secs`.
    pub default_token_ttl: Duration,
    /// PEM of the CA agents are given (`provisioner.ca_pem`), empty for none.
    pub agent_ca: String,
    /// Seals and opens secure param values.
    pub keyring: Arc<plinth_secrets::Keyring>,
    /// Failed logins, for rate limiting.
    pub logins: Arc<auth::LoginLimiter>,
    /// The longest a machine's session lasts, renewals included, from the
    /// trade of its boot credential (or its registration).
    pub machine_session_max: Duration,
    /// The API's URL as machines reach it, for task files; `None` is the
    /// address each request came in on.
    pub api_url: Option<String>,
    /// The most log one job may store, in bytes.
    pub job_log_max: u64,
    /// BMC settings and the slots BMC calls take.
    pub power: Arc<power::Power>,
    /// Lifetime of the metadata tokens an image deploy leaves on the disk
    /// and `POST /machines/{id}/metadata-token` mints.
    pub metadata_token_ttl: Duration,
    /// When each running job last reported progress (at most one report
    /// every [`agent::PROGRESS_EVERY`] reaches the timeline).
    pub progress: Arc<std::sync::Mutex<std::collections::HashMap<plinth_model::JobId, std::time::Instant>>>,
    /// The listeners `/readyz` checks.
    pub readiness: Arc<Readiness>,
    /// Request durations, for the metrics listener.
    pub metrics: ApiMetrics,
}

/// The API's router, with authentication applied to every route but
/// `POST /api/v1/auth/token`, `GET /healthz` and `GET /readyz`.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/info", get(info))
        .route("/api/v1/events", get(events::stream))
        .route("/api/v1/boot-events", get(events::boot_events))
        .route("/api/v1/audit", get(events::audit))
        .route("/api/v1/machines/{id}/params", get(params::machine_params))
        .route("/api/v1/render", post(params::render))
        .route("/api/v1/machines/{id}/workflow", post(agent::assign))
        .route("/api/v1/machines/{id}/resume", post(agent::resume))
        .route("/api/v1/machines/{id}/next", post(agent::next))
        .route("/api/v1/machines/whoami", post(agent::whoami))
        .route("/api/v1/machines/{id}/session", post(agent::session))
        .route("/api/v1/machines/{id}/accept", post(agent::accept_machine))
        .route("/api/v1/machines/{id}/power", get(power::status).post(power::power))
        .route("/api/v1/machines/{id}/boot-once", post(power::boot_once))
        .route("/api/v1/machines/{id}/rebuild", post(power::rebuild))
        .route("/api/v1/machines/{id}/boot-media", post(power::boot_media))
        .route("/api/v1/machines/enroll", post(power::enroll))
        .route("/api/v1/machines/{id}/metadata-token", post(metadata::create))
        .route("/api/v1/jobs/{id}/progress", post(agent::progress))
        .route("/api/v1/conflicts/{id}/accept", post(agent::accept_conflict))
        .route("/api/v1/conflicts/{id}/reject", post(agent::reject_conflict))
        .route("/api/v1/join-tokens", post(agent::create_join_token))
        .route("/api/v1/machines/{id}/inventory", post(agent::inventory))
        .route("/api/v1/machines/{id}/timeline", get(agent::timeline))
        .route("/api/v1/jobs/{id}/start", post(agent::start))
        .route("/api/v1/jobs/{id}/finish", post(agent::finish))
        .route("/api/v1/jobs/{id}/log", get(agent::log).post(agent::append_log))
        .route("/api/v1/jobs/{id}/files", get(agent::files))
        .route("/api/v1/contents/plan", post(content::plan))
        .route("/api/v1/contents/install", post(content::install))
        .route("/api/v1/contents/export", get(content::export))
        .route("/api/v1/contents/{name}/rollback", post(content::rollback))
        .route("/api/v1/contents/{name}/promote", post(content::promote))
        .route(
            "/api/v1/contents/{name}",
            get(content::show).delete(content::remove).put(content::not_writable).patch(content::not_writable),
        )
        .route("/api/v1/{kind}", get(crud::list).post(crud::create))
        .route("/api/v1/{kind}/{key}", get(crud::show).put(crud::replace).patch(crud::patch).delete(crud::delete))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token));
    let routes = Router::new()
        .route("/api/v1/auth/token", post(auth::mint_token))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(protected)
        .layer(axum::middleware::from_fn(time_limit))
        .layer(axum::middleware::from_fn_with_state(state.metrics.clone(), health::record))
        .fallback(|| async { ApiError::NotFound("no such route; see /api/v1/openapi.json".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state);
    // Outside the routes, so it sees the router's own 405s and OPTIONS too.
    Router::new().fallback_service(routes).layer(axum::middleware::from_fn(methods))
}

/// Answers 503 when a request takes longer than [`REQUEST_TIMEOUT`].
async fn time_limit(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Unavailable(format!("the request took longer than {} s", REQUEST_TIMEOUT.as_secs()))
            .into_response(),
    }
}

/// `OPTIONS` answers with the methods the OpenAPI document gives the path,
/// and every 405 carries them in `Allow` (RFC 9110), so what a client is
/// told and what the document says cannot differ.
async fn methods(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::http::{HeaderValue, Method, StatusCode, header};
    use axum::response::IntoResponse;
    let allow = openapi::allowed_methods(req.uri().path());
    if req.method() == Method::OPTIONS {
        return match allow {
            Some(a) => {
                let mut r = StatusCode::NO_CONTENT.into_response();
                if let Ok(v) = HeaderValue::from_str(&a) {
                    r.headers_mut().insert(header::ALLOW, v);
                }
                r
            }
            None => ApiError::NotFound("no such route; see /api/v1/openapi.json".into()).into_response(),
        };
    }
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(a) = allow
        && let Ok(v) = HeaderValue::from_str(&a)
    {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

async fn info() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"name": "plinth", "version": env!("CARGO_PKG_VERSION"), "api": "v1"}))
}

/// Serves the API over TLS on `listener` until `shutdown` resolves, then
/// drains connections for up to ten seconds.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    listener.set_nonblocking(true)?;
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    let mut server = axum_server::from_tcp_rustls(listener, config);
    // Headers must arrive promptly (the TLS handshake has its own 10 s limit).
    server.http_builder().http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    server.handle(handle).serve(router(state).into_make_service_with_connect_info::<SocketAddr>()).await
}
