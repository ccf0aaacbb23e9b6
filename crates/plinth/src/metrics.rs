//! The metrics listener (`--metrics-addr`, off by default): `GET /metrics`
//! in the OpenMetrics text format Prometheus scrapes, and `/healthz` and
//! `/readyz` as on the API listener. It is plain HTTP with no token, like
//! every Prometheus exporter: bind it to loopback or a management network.
//!
//! Each scrape reads the DHCP service's counters and histograms, TFTP's and
//! boot HTTP's counters, the API's request histograms, and counts machines by workflow state (one pass over
//! the machines in the store, a few milliseconds at 10,000 machines).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use plinth_boot::dhcp::DhcpStats;
use plinth_model::Kind;
use plinth_store::{Store, StoreExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What a scrape reads.
pub struct Sources {
    pub store: Arc<dyn Store>,
    pub dhcp: Arc<DhcpStats>,
    pub boot: Arc<plinth_boot::events::BootStats>,
    pub api: plinth_api::ApiMetrics,
    pub readiness: Arc<plinth_api::Readiness>,
}

type Labels = Vec<(&'static str, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: &AtomicU64) {
    let c: Counter = Counter::default();
    c.inc_by(value.load(Relaxed));
    registry.register(name, help, c);
}

fn counters(registry: &mut Registry, name: &str, help: &str, values: &[(Labels, u64)]) {
    let family = Family::<Labels, Counter>::default();
    for (labels, v) in values {
        family.get_or_create(labels).inc_by(*v);
    }
    registry.register(name, help, family);
}

/// DHCP message types by number, as `type` label values.
const TYPES: [&str; 9] = ["other", "discover", "offer", "request", "decline", "ack", "nak", "release", "inform"];

fn dhcp(registry: &mut Registry, s: &DhcpStats) {
    let received: Vec<(Labels, u64)> = TYPES
        .iter()
        .zip(&s.received_by_type)
        .map(|(t, n)| (vec![("type", (*t).to_owned())], n.load(Relaxed)))
        .collect();
    counters(registry, "plinth_dhcp_received", "Well-formed DHCP packets received, by message type", &received);
    counter(registry, "plinth_dhcp_malformed", "DHCP packets that did not parse", &s.malformed);
    let replies = [("offer", &s.offers), ("ack", &s.acks), ("nak", &s.naks)]
        .map(|(t, n)| (vec![("type", t.to_owned())], n.load(Relaxed)));
    counters(
        registry,
        "plinth_dhcp_decided",
        "Replies decided, by kind (an ACK is sent once its lease is stored)",
        &replies,
    );
    counter(registry, "plinth_dhcp_replies_sent", "DHCP replies sent", &s.replies);
    let shed = [
        ("discover_queue_full", &s.shed_discovers),
        ("request_queue_full", &s.shed_requests),
        ("stale", &s.shed_stale),
        ("starvation_guard", &s.starved),
    ]
    .map(|(r, n)| (vec![("reason", r.to_owned())], n.load(Relaxed)));
    counters(registry, "plinth_dhcp_shed", "Requests not answered on purpose under load, by reason", &shed);
    counter(registry, "plinth_dhcp_lease_writes", "Lease writes made durable", &s.lease_writes);
    counter(registry, "plinth_dhcp_commits", "Store transactions that made lease writes durable", &s.commits);
    counter(
        registry,
        "plinth_dhcp_acks_withheld",
        "ACKs withheld because their leases could not be stored",
        &s.withheld,
    );
    let unicast = [("direct", &s.unicast_direct), ("broadcast_instead", &s.unicast_fallbacks)]
        .map(|(r, n)| (vec![("result", r.to_owned())], n.load(Relaxed)));
    counters(
        registry,
        "plinth_dhcp_unicast",
        "Replies RFC 2131 wants unicast to clients with no address yet",
        &unicast,
    );
    let queued = Family::<Labels, Gauge>::default();
    for (q, n) in [("request", &s.queued_requests), ("discover", &s.queued_discovers)] {
        queued.get_or_create(&vec![("queue", q.to_owned())]).set(n.load(Relaxed) as i64);
    }
    registry.register("plinth_dhcp_queued", "Packets waiting to be decided, by queue", queued);
    registry.register(
        "plinth_dhcp_decide_wait_seconds",
        "Time from a packet's arrival to its decision",
        s.decide_seconds.0.clone(),
    );
    registry.register("plinth_dhcp_commit_seconds", "Duration of each lease commit", s.commit_seconds.0.clone());
}

fn boot(registry: &mut Registry, s: &plinth_boot::events::BootStats) {
    let tftp = [("sent", &s.tftp_sent), ("failed", &s.tftp_failed), ("refused", &s.tftp_refused)]
        .map(|(r, n)| (vec![("result", r.to_owned())], n.load(Relaxed)));
    counters(registry, "plinth_tftp_transfers", "TFTP transfers by result", &tftp);
    counter(registry, "plinth_tftp_sent_bytes", "Bytes of the TFTP transfers sent whole", &s.tftp_bytes);
    let http: Vec<(Labels, u64)> =
        (1..6).map(|c| (vec![("class", format!("{c}xx"))], s.http_answers[c].load(Relaxed))).collect();
    counters(registry, "plinth_boot_http_answers", "Boot HTTP answers by status class", &http);
    counter(registry, "plinth_boot_http_bytes", "Bytes the boot HTTP answers declared", &s.http_bytes);
}

async fn machines(registry: &mut Registry, store: &dyn Store) {
    let records = match store.list_all(Kind::Machine, vec![]).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot count machines");
            return;
        }
    };
    let family = Family::<Labels, Gauge>::default();
    // Every state, so a state with no machine reads 0, not absent.
    for state in ["idle", "running", "rebooting", "paused", "failed", "complete"] {
        family.get_or_create(&vec![("state", state.to_owned())]).set(0);
    }
    for r in records {
        let state = r.body["workflow_state"].as_str().unwrap_or("idle").to_owned();
        family.get_or_create(&vec![("state", state)]).inc();
    }
    registry.register("plinth_machines", "Machines by workflow state", family);
}

async fn metrics(State(sources): State<Arc<Sources>>) -> Response {
    let mut registry = Registry::default();
    dhcp(&mut registry, &sources.dhcp);
    boot(&mut registry, &sources.boot);
    registry.register(
        "plinth_api_request_duration_seconds",
        "API requests until their answer's head, by route template, method and status",
        sources.api.requests.clone(),
    );
    machines(&mut registry, sources.store.as_ref()).await;
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &registry) {
        tracing::warn!(error = %e, "metrics: cannot encode");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

async fn readyz(State(sources): State<Arc<Sources>>) -> Response {
    plinth_api::health::readyz_answer(plinth_api::health::ready(sources.store.as_ref(), &sources.readiness).await)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sources: Arc<Sources>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(plinth_api::health::healthz))
        .route("/readyz", axum::routing::get(readyz))
        .with_state(sources);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
