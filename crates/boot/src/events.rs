//! The boot event log: every DHCP exchange, TFTP transfer and HTTP fetch is
//! recorded for its machine. Recording never blocks or slows a boot: events
//! go through a bounded queue to a writer task that stores them in batches
//! (one transaction per batch) and fills in the MAC of TFTP/HTTP clients
//! from their lease. Under a flood the queue drops events, not packets.

use plinth_model::{BootEvent, Kind, Lease, MacAddr};
use plinth_store::Store;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::sync::mpsc;

const QUEUE: usize = 10_000;
const BATCH: usize = 512;

/// Boot events one client address may record per [`SOURCE_WINDOW`]; more
/// are dropped (and counted in one event saying so), so one noisy or
/// hostile client cannot fill the log.
pub const PER_SOURCE: u32 = 200;
/// See [`PER_SOURCE`].
pub const SOURCE_WINDOW: Duration = Duration::from_secs(10);
/// Client addresses tracked at once (beyond it, the oldest windows go).
const SOURCES: usize = 65_536;

/// A handle to record boot events; cheap to clone.
#[derive(Clone, Debug)]
pub struct BootLog {
    tx: Option<mpsc::Sender<BootEvent>>,
    sources: Arc<std::sync::Mutex<HashMap<Ipv4Addr, Window>>>,
    stats: Arc<BootStats>,
}

/// What TFTP and boot HTTP have served since the server started.
#[derive(Debug, Default)]
pub struct BootStats {
    /// TFTP transfers sent whole, failed midway, and refused.
    pub tftp_sent: AtomicU64,
    pub tftp_failed: AtomicU64,
    pub tftp_refused: AtomicU64,
    /// Bytes of the TFTP transfers sent whole.
    pub tftp_bytes: AtomicU64,
    /// Boot HTTP answers by status class (index 1 to 5: 1xx to 5xx).
    pub http_answers: [AtomicU64; 6],
    /// Bytes the boot HTTP answers declared (`Content-Length`).
    pub http_bytes: AtomicU64,
}

/// One client address's current window: when it began, the events
/// recorded in it, and those dropped.
type Window = (std::time::Instant, u32, u32);

impl BootLog {
    /// Starts the writer task on `store`.
    pub fn start(store: Arc<dyn Store>) -> BootLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(store, rx));
        BootLog { tx: Some(tx), sources: Default::default(), stats: Default::default() }
    }

    /// A log that records nothing.
    pub fn disabled() -> BootLog {
        BootLog { tx: None, sources: Default::default(), stats: Default::default() }
    }

    /// The counters TFTP and boot HTTP keep beside the events.
    pub fn stats(&self) -> &Arc<BootStats> {
        &self.stats
    }

    /// Whether `address` may record another event now; `Some(n)` when a new
    /// window begins after `n` were dropped in the last.
    fn admit(&self, address: Option<Ipv4Addr>) -> (bool, u32) {
        let Some(ip) = address else { return (true, 0) };
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if sources.len() >= SOURCES && !sources.contains_key(&ip) {
            sources.retain(|_, (since, _, _)| since.elapsed() < SOURCE_WINDOW);
            if sources.len() >= SOURCES {
                sources.clear();
            }
        }
        let e = sources.entry(ip).or_insert((std::time::Instant::now(), 0, 0));
        let mut dropped_before = 0;
        if e.0.elapsed() >= SOURCE_WINDOW {
            dropped_before = e.2;
            *e = (std::time::Instant::now(), 0, 0);
        }
        if e.1 >= PER_SOURCE {
            e.2 += 1;
            return (false, dropped_before);
        }
        e.1 += 1;
        (true, dropped_before)
    }

    /// Records an event; never waits.
    pub fn record(&self, mac: Option<MacAddr>, address: Option<Ipv4Addr>, service: &str, detail: String) {
        let (admitted, dropped) = self.admit(address);
        if dropped > 0 {
            let why = format!(
                "{dropped} events from this address were not recorded (over {PER_SOURCE} in {} s)",
                SOURCE_WINDOW.as_secs()
            );
            self.send(None, address, service, why);
        }
        if admitted {
            self.send(mac, address, service, detail);
        } else {
            tracing::debug!(?address, "boot events from this address over their limit; dropped");
        }
    }

    fn send(&self, mac: Option<MacAddr>, address: Option<Ipv4Addr>, service: &str, detail: String) {
        if let Some(tx) = &self.tx {
            let event = BootEvent {
                id: 0,
                at: plinth_model::now(),
                mac,
                address,
                machine: None,
                service: service.to_owned(),
                detail,
            };
            if tx.try_send(event).is_err() {
                tracing::debug!("boot event queue full; event dropped");
            }
        }
    }
}

async fn mac_of(store: &dyn Store, ip: Ipv4Addr, cache: &mut HashMap<Ipv4Addr, Option<MacAddr>>) -> Option<MacAddr> {
    if let Some(m) = cache.get(&ip) {
        return *m;
    }
    // Only a live lease attributes a request to a machine.
    let mac = match store.get(Kind::Lease, &ip.to_string()).await {
        Ok(Some(r)) => {
            plinth_model::decode::<Lease>(r.body).ok().filter(|l| l.is_live(plinth_model::now())).map(|l| l.mac)
        }
        _ => None,
    };
    cache.insert(ip, mac);
    mac
}

async fn writer(store: Arc<dyn Store>, mut rx: mpsc::Receiver<BootEvent>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // Gather what arrives in the next moment into the same transaction.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        let mut cache = HashMap::new();
        for e in &mut batch {
            if e.mac.is_none()
                && let Some(ip) = e.address
            {
                e.mac = mac_of(store.as_ref(), ip, &mut cache).await;
            }
        }
        if let Err(e) = store.append_boot_events(batch).await {
            tracing::warn!(error = %e, "cannot store boot events");
        }
    }
}
