//! The TFTP listener: receives requests on the well-known port and runs each
//! read transfer on its own socket (its transfer id) in its own task, driven
//! by `plinth_tftp::Transfer`. Read-only: write requests get an error.

use crate::events::BootLog;
use crate::files::{FileRoot, PathError};
use crate::generated::{FileRequest, Generated};
use plinth_tftp::{Action, ErrorCode, Limits, Packet, Transfer};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

/// TFTP server settings.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Negotiation limits and retransmission policy.
    pub limits: Limits,
    /// Concurrent transfers; requests beyond it get "server busy".
    pub max_transfers: usize,
    /// Concurrent transfers to one client address; beyond it, "busy".
    pub max_transfers_per_client: usize,
    /// Largest file served in netascii mode (converted in memory).
    pub max_netascii: u64,
    /// Port of the boot HTTP server, for `provisioner.http` in rendered files.
    pub http_port: u16,
    /// The boot HTTP server's URL as machines reach it (`--boot-url`); else
    /// `http://<the address the client reached TFTP on>:<http_port>`.
    pub http_url: Option<String>,
}

impl Default for TftpConfig {
    fn default() -> TftpConfig {
        TftpConfig {
            limits: Limits::default(),
            max_transfers: 1024,
            max_transfers_per_client: 32,
            max_netascii: 16 * 1024 * 1024,
            http_port: 8091,
            http_url: None,
        }
    }
}

enum Source {
    File(std::fs::File),
    Memory(Vec<u8>),
}

impl Source {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Source::File(f) => f.read_exact_at(buf, offset),
            Source::Memory(m) => {
                let start = usize::try_from(offset).map_err(std::io::Error::other)?;
                let src = m.get(start..start + buf.len()).ok_or_else(|| std::io::Error::other("read past the end"))?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

/// Converts to netascii: LF becomes CR LF, a bare CR becomes CR NUL.
fn to_netascii(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    for &b in data {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.push(b),
        }
    }
    out
}

/// Serves TFTP on `socket` until `shutdown` resolves.
pub async fn serve(
    socket: UdpSocket,
    root: FileRoot,
    generated: Arc<dyn Generated>,
    config: TftpConfig,
    log: BootLog,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let local_ip = socket.local_addr()?.ip();
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_transfers));
    let per_client: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> = Default::default();
    let mut buf = vec![0u8; 65536];
    tokio::pin!(shutdown);
    loop {
        let (n, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "tftp receive error");
                    continue;
                }
            },
        };
        let reply = |bytes: Vec<u8>| {
            let socket = &socket;
            async move {
                let _ = socket.send_to(&bytes, peer).await;
            }
        };
        match Packet::parse(&buf[..n]) {
            Ok(Packet::Rrq { filename, mode, options }) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "tftp: too many transfers, refusing");
                    reply(Packet::error(ErrorCode::NotDefined, "server busy, retry later")).await;
                    continue;
                };
                let admitted = {
                    let mut counts = per_client.lock().unwrap_or_else(|p| p.into_inner());
                    let n = counts.entry(peer.ip()).or_insert(0);
                    let ok = *n < config.max_transfers_per_client;
                    if ok {
                        *n += 1;
                    }
                    ok
                };
                if !admitted {
                    tracing::warn!(%peer, "tftp: too many transfers to one client, refusing");
                    reply(Packet::error(ErrorCode::NotDefined, "too many transfers from this address, retry later"))
                        .await;
                    continue;
                }
                let per_client = per_client.clone();
                let request = Request {
                    peer,
                    filename: filename.to_vec(),
                    mode: mode.to_ascii_lowercase(),
                    options: options.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
                };
                let (root, config, log, generated) = (root.clone(), config.clone(), log.clone(), generated.clone());
                tokio::spawn(async move {
                    let ip = request.peer.ip();
                    run_transfer(local_ip, request, &root, generated.as_ref(), &config, &log).await;
                    let mut counts = per_client.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(n) = counts.get_mut(&ip) {
                        *n -= 1;
                        if *n == 0 {
                            counts.remove(&ip);
                        }
                    }
                    drop(permit);
                });
            }
            Ok(Packet::Wrq { .. }) => {
                reply(Packet::error(ErrorCode::AccessViolation, "this server is read-only")).await;
            }
            Ok(_) => {
                // ACK/DATA/ERROR to the well-known port belong to no transfer.
                reply(Packet::error(ErrorCode::UnknownTransferId, "no transfer on this port")).await;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "tftp: malformed request");
                reply(Packet::error(ErrorCode::IllegalOperation, &format!("malformed request: {e}"))).await;
            }
        }
    }
}

struct Request {
    peer: SocketAddr,
    filename: Vec<u8>,
    mode: Vec<u8>,
    options: Vec<(Vec<u8>, Vec<u8>)>,
}

fn open(request: &Request, root: &FileRoot, config: &TftpConfig) -> Result<(Source, u64), (ErrorCode, String)> {
    let netascii = match request.mode.as_slice() {
        b"octet" => false,
        b"netascii" => true,
        other => {
            return Err((
                ErrorCode::IllegalOperation,
                format!("unsupported mode `{}`", String::from_utf8_lossy(other)),
            ));
        }
    };
    let path = root.resolve(&request.filename).map_err(|e| match e {
        PathError::NotFound | PathError::NotAFile | PathError::Empty => {
            (ErrorCode::FileNotFound, "file not found".to_owned())
        }
        other => (ErrorCode::AccessViolation, format!("access violation: {other}")),
    })?;
    let io_err = |e: std::io::Error| (ErrorCode::AccessViolation, format!("cannot read the file: {e}"));
    let file = std::fs::File::open(&path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if !netascii {
        return Ok((Source::File(file), size));
    }
    if size > config.max_netascii {
        return Err((ErrorCode::AccessViolation, "file too large for netascii mode; use octet".into()));
    }
    let data = to_netascii(&std::fs::read(&path).map_err(io_err)?);
    let len = data.len() as u64;
    Ok((Source::Memory(data), len))
}

async fn run_transfer(
    local_ip: IpAddr,
    request: Request,
    root: &FileRoot,
    generated: &dyn Generated,
    config: &TftpConfig,
    log: &BootLog,
) {
    let peer = request.peer;
    let peer_v4 = match peer.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    };
    let name = String::from_utf8_lossy(&request.filename).into_owned();
    let socket = match UdpSocket::bind(SocketAddr::new(local_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "tftp: cannot open a transfer socket");
            return;
        }
    };
    // Connected: the kernel drops datagrams from any other transfer id.
    if socket.connect(peer).await.is_err() {
        return;
    }
    // A regular file in the file root (a loader, a kernel) is served as it
    // is; other clean paths are asked of the generated files first (iPXE
    // scripts, GRUB configs, a machine's rendered files), then the root.
    let made = match FileRoot::clean(&request.filename) {
        Ok(clean) => {
            let path = clean.to_string_lossy().into_owned();
            let plain = crate::generated::Target::of(&path).file_root_first() && {
                let (root, name) = (root.clone(), request.filename.clone());
                tokio::task::spawn_blocking(move || root.resolve(&name).is_ok()).await.unwrap_or(false)
            };
            if plain {
                None
            } else {
                // The address this client reaches us on: what the kernel
                // chose for the connected transfer socket (the listener's
                // own may be 0.0.0.0).
                let reached = socket.local_addr().map(|a| a.ip()).unwrap_or(local_ip);
                let http_base = Some(match &config.http_url {
                    Some(url) => url.clone(),
                    None => format!("http://{reached}:{}", config.http_port),
                });
                generated.lookup(&FileRequest { client: peer_v4, http_base, ..FileRequest::new(&path) }).await
            }
        }
        Err(_) => None,
    };
    let opened = match made {
        Some(bytes) if request.mode.as_slice() == b"netascii" => Ok((Source::Memory(to_netascii(&bytes)), 0)),
        Some(bytes) => Ok((Source::Memory(bytes), 0)),
        None => open(&request, root, config),
    };
    let opened = opened.map(|(source, size)| {
        let size = match &source {
            Source::Memory(m) => m.len() as u64,
            Source::File(_) => size,
        };
        (source, size)
    });
    let (source, size) = match opened {
        Ok(x) => x,
        Err((code, message)) => {
            tracing::info!(%peer, file = %name.escape_debug(), %message, "tftp: refused");
            log.stats().tftp_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log.record(None, peer_v4, "tftp", format!("refused {}: {message}", name.escape_debug()));
            let _ = socket.send(&Packet::error(code, &message)).await;
            return;
        }
    };
    let options: Vec<(&[u8], &[u8])> = request.options.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
    let started = Instant::now();
    let (mut transfer, actions) = Transfer::start(&options, size, &config.limits, started);
    let mut out = Vec::with_capacity(4 + transfer.blksize());
    let mut inbuf = vec![0u8; 2048];
    let mut actions = actions;
    loop {
        for action in actions.drain(..) {
            match action {
                Action::Send(bytes) => {
                    let _ = socket.send(&bytes).await;
                }
                Action::SendBlock { block, offset, len } => {
                    out.clear();
                    out.extend_from_slice(&3u16.to_be_bytes());
                    out.extend_from_slice(&block.to_be_bytes());
                    out.resize(4 + len, 0);
                    if let Err(e) = source.read_at(offset, &mut out[4..]) {
                        tracing::warn!(%peer, file = %name.escape_debug(), error = %e, "tftp: file changed during transfer");
                        let _ =
                            socket.send(&Packet::error(ErrorCode::NotDefined, "file changed during transfer")).await;
                        return;
                    }
                    // A send error (ICMP unreachable from a gone client)
                    // shows up as a timeout and ends the transfer there.
                    let _ = socket.send(&out).await;
                }
                Action::Finished => {
                    let secs = started.elapsed().as_secs_f64();
                    tracing::info!(%peer, file = %name.escape_debug(), bytes = size, secs, blksize = transfer.blksize(),
                        windowsize = transfer.windowsize(), "tftp: sent");
                    let stats = log.stats();
                    stats.tftp_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    stats.tftp_bytes.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
                    log.record(
                        None,
                        peer_v4,
                        "tftp",
                        format!("sent {} ({size} bytes in {secs:.2} s)", name.escape_debug()),
                    );
                    return;
                }
                Action::Failed(e) => {
                    tracing::warn!(%peer, file = %name.escape_debug(), error = %e, "tftp: transfer failed");
                    log.stats().tftp_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    log.record(None, peer_v4, "tftp", format!("failed {}: {e}", name.escape_debug()));
                    return;
                }
            }
        }
        let deadline = tokio::time::Instant::from_std(transfer.deadline());
        tokio::select! {
            r = socket.recv(&mut inbuf) => {
                match r {
                    Ok(n) => {
                        if let Ok(p) = Packet::parse(&inbuf[..n]) {
                            actions = transfer.on_packet(&p, Instant::now());
                        }
                    }
                    Err(_) => {
                        // ECONNREFUSED from an earlier send: let the timer decide.
                        tokio::time::sleep_until(deadline).await;
                        actions = transfer.on_timeout(Instant::now());
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                actions = transfer.on_timeout(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netascii_expands_line_ends() {
        assert_eq!(to_netascii(b"a\nb\rc"), b"a\r\nb\r\0c");
    }
}
