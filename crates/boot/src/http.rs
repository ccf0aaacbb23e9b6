//! The boot HTTP server (plain HTTP: firmware and installers need it).
//!
//! `GET`/`HEAD /files/<path>` serves the file root with `Range`, `ETag`,
//! `Last-Modified` and conditional requests, streaming large files in big
//! chunks. The path is percent-decoded exactly once and then resolved by
//! [`FileRoot::resolve`], so encoded or double-encoded traversal cannot
//! leave the root. `GET /ipxe/<mac>` (the iPXE script),
//! `GET /machines/<mac>/<path>` (a file of the machine's bootenv, rendered
//! for it) and `GET /t/<machine-token>/<path>` (the same for the token's
//! machine) are answered by the generated-files hook and sent with
//! `Cache-Control: no-store`. Nothing of the API is reachable here.

use crate::cache::{Cached, FileCache, Validators};
use crate::events::BootLog;
use crate::files::{FileRoot, PathError};
use crate::generated::{FileRequest, Generated};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt;

/// Chunk size when streaming a file.
const CHUNK: usize = 256 * 1024;
/// Files up to this size are sent from one buffer (and kept).
const SMALL: u64 = crate::cache::MAX_FILE;

/// The boot HTTP router.
pub fn router(root: FileRoot, generated: Arc<dyn Generated>, log: BootLog) -> Router {
    let cache = FileCache::new(root.path());
    // Watching walks the whole root: off the async workers, and the cache
    // keeps nothing until it is in place.
    let watched = cache.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = watched.watch() {
            tracing::warn!(root = %watched.root().display(), error = %e, "http: cannot watch the file root; small-file cache off");
        }
    });
    Router::new()
        .route("/files/{*path}", axum::routing::get(file))
        .route("/ipxe/{mac}", axum::routing::get(ipxe_script))
        .route("/machines/{mac}/{*path}", axum::routing::get(machine_file))
        .route("/t/{token}/{*path}", axum::routing::get(token_file))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::from_fn_with_state(log, log_request))
        .with_state(HttpState { root, cache, generated })
}

/// The boot HTTP server's URL as this connection's client reaches it: the
/// configured `--boot-url`, else the address the connection came in on.
/// Never the client's `Host` header, which a client may set to anything.
#[derive(Clone)]
struct BootBase(String);

/// What the handlers share.
#[derive(Clone)]
struct HttpState {
    root: FileRoot,
    cache: Arc<FileCache>,
    generated: Arc<dyn Generated>,
}

/// Records every boot HTTP request: which client fetched what, and the answer.
async fn log_request(
    State(log): State<BootLog>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let client = peer.map(|ip| ip.to_string()).unwrap_or_default();
    let method = req.method().clone();
    // A token in the path is a credential: never logged.
    let path = match req.uri().path().strip_prefix("/t/") {
        Some(rest) => format!("/t/<token>/{}", rest.split_once('/').map_or("", |(_, p)| p)),
        None => req.uri().path().to_owned(),
    };
    let resp = next.run(req).await;
    tracing::info!(%client, %method, path = %path.escape_debug(), status = resp.status().as_u16(), "http boot request");
    let stats = log.stats();
    let class = usize::from(resp.status().as_u16() / 100).min(5);
    stats.http_answers[class].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let declared = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    stats.http_bytes.fetch_add(declared.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    let v4 = match peer {
        Some(std::net::IpAddr::V4(v4)) => Some(v4),
        _ => None,
    };
    // Per-machine routes name the MAC; other requests are matched to one by
    // the client's lease.
    let mac = path
        .strip_prefix("/ipxe/")
        .or_else(|| path.strip_prefix("/machines/"))
        .and_then(|rest| rest.split('/').next())
        .and_then(|m| m.replace('-', ":").parse::<plinth_model::MacAddr>().ok());
    log.record(mac, v4, "http", format!("{method} {} {}", path.escape_debug(), resp.status().as_u16()));
    resp
}

/// A client must send its request headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections served at once; beyond it, new ones wait in the kernel's
/// backlog (and are dropped by it), never costing memory here.
pub const MAX_CONNECTIONS: usize = 4096;
/// A connection with no request in flight is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves until `shutdown` resolves, then lets requests in flight finish
/// for up to ten seconds. Slow clients cannot hold connections: headers
/// must arrive within [`HEADER_TIMEOUT`] and idle connections close after
/// [`IDLE_TIMEOUT`]; at most [`MAX_CONNECTIONS`] are open at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    root: FileRoot,
    generated: Arc<dyn Generated>,
    log: BootLog,
    public_url: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(root, generated, log);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Headers and body go out in separate writes; without TCP_NODELAY,
        // Nagle and the client's delayed ACK stall every small response 40 ms.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let base = match (&public_url, tcp.local_addr()) {
            (Some(url), _) => BootBase(url.trim_end_matches('/').to_owned()),
            (None, Ok(local)) => BootBase(format!("http://{local}")),
            (None, Err(_)) => BootBase(String::new()),
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                req.extensions_mut().insert(base.clone());
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, req).await }
            });
            let io = IdleTimeout::new(hyper_util::rt::TokioIo::new(tcp), IDLE_TIMEOUT);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).keep_alive(true);
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    let _ =
        tokio::time::timeout(Duration::from_secs(11), async { while connections.join_next().await.is_some() {} }).await;
    Ok(())
}

/// An I/O stream that fails with `TimedOut` when it neither reads nor
/// writes anything for `limit` (a client that stopped reading a response,
/// or a keep-alive connection left open).
struct IdleTimeout<T> {
    inner: T,
    limit: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, limit: Duration) -> Self {
        IdleTimeout { inner, limit, deadline: Box::pin(tokio::time::sleep(limit)) }
    }

    fn progress(&mut self) {
        self.deadline.as_mut().reset(tokio::time::Instant::now() + self.limit);
    }

    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle too long")
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for IdleTimeout<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.progress();
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for IdleTimeout<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.progress();
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Decodes `%XX` escapes once. Invalid escapes are an error, not passed on.
pub fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn plain(status: StatusCode, msg: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{msg}\n")).into_response()
}

fn content_type(path: &std::path::Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("ipxe" | "txt" | "cfg" | "conf" | "ks" | "seed" | "sh") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        Some("yaml" | "yml") => "application/yaml",
        Some("iso") => "application/x-iso9660-image",
        Some("html") => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A byte range to send: `start..start+len`.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    Full,
    Part { start: u64, len: u64 },
    Unsatisfiable,
}

/// Parses one `Range: bytes=...` spec. Several ranges are served as the
/// whole file, which RFC 9110 allows.
fn parse_range(value: &str, size: u64) -> Range {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Range::Full };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((a, b)) = spec.split_once('-') else { return Range::Full };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, false) => b.parse::<u64>().ok().map(|n| {
            let n = n.min(size);
            (size - n, n)
        }),
        (false, _) => a.parse::<u64>().ok().and_then(|start| {
            if start >= size {
                return Some((start, 0));
            }
            let end = if b.is_empty() { Some(size.saturating_sub(1)) } else { b.parse::<u64>().ok() }?;
            if end < start {
                return None;
            }
            Some((start, end.min(size.saturating_sub(1)).saturating_sub(start) + 1))
        }),
        (true, true) => None,
    };
    match parsed {
        None => Range::Full,
        Some((start, len)) if start >= size || len == 0 => Range::Unsatisfiable,
        Some((start, len)) => Range::Part { start, len },
    }
}

/// `GET /ipxe/<mac>`: the iPXE script DHCP points iPXE at: a known
/// machine's bootenv file `ipxe` rendered for it; for an unknown one the
/// file root's `ipxe/<mac>.ipxe`, else `ipxe/default.ipxe`, else the
/// `ipxe-default` template.
async fn ipxe_script(
    State(state): State<HttpState>,
    axum::extract::Path(mac): axum::extract::Path<String>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    base: Option<axum::Extension<BootBase>>,
    uri: Uri,
) -> Response {
    let Some(mac) = crate::generated::ipxe_path_mac(&format!("ipxe/{mac}")) else {
        return plain(StatusCode::BAD_REQUEST, "expected a MAC address like 52-54-00-12-34-56");
    };
    let path = format!("ipxe/{}", mac.to_string().replace(':', "-"));
    let missing = "no iPXE script for this machine (and no ipxe/default.ipxe)";
    generated_response(&state, &path, mac, connect, base, uri.query().map(str::to_owned), missing).await
}

/// `GET /machines/<mac>/<path>`: a file of that machine's bootenv, rendered
/// for it (kickstarts, preseeds, configs), at the path the bootenv gives.
async fn machine_file(
    State(state): State<HttpState>,
    axum::extract::Path((mac, path)): axum::extract::Path<(String, String)>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    base: Option<axum::Extension<BootBase>>,
    uri: Uri,
) -> Response {
    let Ok(mac) = mac.replace('-', ":").parse::<plinth_model::MacAddr>() else {
        return plain(StatusCode::BAD_REQUEST, "expected a MAC address like 52-54-00-12-34-56");
    };
    let Ok(clean) = FileRoot::clean(path.as_bytes()) else { return plain(StatusCode::FORBIDDEN, "refused path") };
    let query = uri.query().map(str::to_owned);
    generated_response(&state, &clean.to_string_lossy(), mac, connect, base, query, "no such file for this machine")
        .await
}

/// `GET /t/<machine-token>/<path>`: a file of the bootenv of the machine the
/// token belongs to. The token proves the request comes from that machine,
/// so a file holding secure values is served wherever the machine is (no
/// lease needed: proxyDHCP sites, or addresses Plinth did not hand out).
async fn token_file(
    State(state): State<HttpState>,
    axum::extract::Path((token, path)): axum::extract::Path<(String, String)>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    base: Option<axum::Extension<BootBase>>,
    uri: Uri,
) -> Response {
    let Ok(clean) = FileRoot::clean(path.as_bytes()) else { return plain(StatusCode::FORBIDDEN, "refused path") };
    let query = uri.query().map(str::to_owned);
    let path = clean.to_string_lossy();
    let request = file_request(&path, None, Some(&token), connect, base, query.as_deref());
    generated_answer(&state, &request, "no such file for the machine of that token").await
}

/// What a client asked for, from the parts of its request.
fn file_request<'a>(
    path: &'a str,
    mac: Option<plinth_model::MacAddr>,
    token: Option<&'a str>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    base: Option<axum::Extension<BootBase>>,
    query: Option<&str>,
) -> FileRequest<'a> {
    let client = connect.and_then(|c| match c.0.0.ip() {
        std::net::IpAddr::V4(v4) => Some(v4),
        std::net::IpAddr::V6(_) => None,
    });
    let http_base = base.map(|b| b.0.0);
    // iPXE tells what it runs as in the query: `?platform=${platform}&buildarch=${buildarch}`.
    let mut arch = None;
    let mut firmware = None;
    for (k, v) in query.unwrap_or_default().split('&').filter_map(|kv| kv.split_once('=')) {
        match k {
            "platform" => firmware = plinth_model::Firmware::from_ipxe_platform(v),
            "buildarch" => arch = plinth_model::Arch::from_ipxe_buildarch(v),
            _ => {}
        }
    }
    FileRequest { path, client, mac, http_base, arch, firmware, token }
}

/// Answers with the generated file `request` names, never cacheable by
/// anything in between, or 404 with `missing`.
async fn generated_answer(state: &HttpState, request: &FileRequest<'_>, missing: &str) -> Response {
    match state.generated.lookup(request).await {
        Some(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
            body,
        )
            .into_response(),
        None => plain(StatusCode::NOT_FOUND, missing),
    }
}

/// Answers with a generated file for `mac`, never cacheable by anything in
/// between, or 404 with `missing`.
async fn generated_response(
    state: &HttpState,
    path: &str,
    mac: plinth_model::MacAddr,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    base: Option<axum::Extension<BootBase>>,
    query: Option<String>,
    missing: &str,
) -> Response {
    let request = file_request(path, Some(mac), None, connect, base, query.as_deref());
    generated_answer(state, &request, missing).await
}

async fn file(State(state): State<HttpState>, method: Method, headers: HeaderMap, uri: Uri) -> Response {
    let raw = uri.path().strip_prefix("/files/").unwrap_or_default();
    let Some(request) = percent_decode(raw) else {
        return plain(StatusCode::BAD_REQUEST, "bad percent-encoding in path");
    };
    serve_path(state, request, method, headers).await
}

async fn serve_path(state: HttpState, request: Vec<u8>, method: Method, headers: HeaderMap) -> Response {
    let key = match FileRoot::clean(&request) {
        Ok(k) => k,
        Err(PathError::Empty) => return plain(StatusCode::NOT_FOUND, "not found"),
        Err(e) => return refused(&request, &e),
    };
    // A kept small file: answered without a system call.
    if let Some(hit) = state.cache.get(&key) {
        return answer(&hit.validators, Body::Memory(hit.body.clone()), &method, &headers);
    }
    let generation = state.cache.generation();
    let root = state.root;
    let relative = key.clone();
    // Resolve, open, stat and (for small files) read in one trip to the
    // blocking pool.
    let opened = tokio::task::spawn_blocking(move || {
        let path = root.resolve_clean(&relative)?;
        let file = std::fs::File::open(&path).map_err(|_| PathError::NotFound)?;
        let meta = file.metadata().map_err(|_| PathError::NotFound)?;
        let small = if meta.len() <= SMALL {
            let mut buf = Vec::with_capacity(meta.len() as usize);
            let mut limited = std::io::Read::take(&file, SMALL + 1);
            std::io::Read::read_to_end(&mut limited, &mut buf).map_err(|_| PathError::NotFound)?;
            // Grown while being read: streamed from the open file instead.
            (buf.len() as u64 == meta.len()).then_some(buf)
        } else {
            None
        };
        Ok::<_, PathError>((path, file, meta, small))
    })
    .await;
    let (path, file, meta, small) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(PathError::NotFound | PathError::NotAFile | PathError::Empty)) => {
            return plain(StatusCode::NOT_FOUND, "not found");
        }
        Ok(Err(e)) => return refused(&request, &e),
        Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    };
    let validators = validators(&path, &meta);
    match small {
        Some(buf) => {
            let body = Bytes::from(buf);
            let v = validators.clone();
            state.cache.insert(key, generation, Cached { canonical: path, validators: v, body: body.clone() });
            answer(&validators, Body::Memory(body), &method, &headers)
        }
        None => answer(&validators, Body::File(file), &method, &headers),
    }
}

fn refused(request: &[u8], e: &PathError) -> Response {
    tracing::info!(path = %String::from_utf8_lossy(request).escape_debug(), error = %e, "http: refused path");
    plain(StatusCode::FORBIDDEN, &format!("refused: {e}"))
}

/// The ETag, Last-Modified and type of a file.
fn validators(path: &std::path::Path, meta: &std::fs::Metadata) -> Validators {
    let size = meta.len();
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let mtime = modified.duration_since(UNIX_EPOCH).unwrap_or_default();
    let hv = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
    // HTTP dates have one-second resolution.
    let modified_secs = UNIX_EPOCH + Duration::from_secs(mtime.as_secs());
    Validators {
        size,
        etag: hv(format!("\"{size:x}-{:x}\"", mtime.as_nanos())),
        last_modified: hv(httpdate::fmt_http_date(modified_secs)),
        modified_secs,
        content_type: content_type(path),
    }
}

/// Where an answer's bytes come from.
enum Body {
    Memory(Bytes),
    File(std::fs::File),
}

/// The answer for a file, honouring conditional and range requests.
fn answer(v: &Validators, body: Body, method: &Method, headers: &HeaderMap) -> Response {
    let size = v.size;
    let etag = v.etag.to_str().unwrap_or_default();
    let last_modified = v.last_modified.to_str().unwrap_or_default();
    let header_str = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let not_modified = match header_str(header::IF_NONE_MATCH) {
        Some(inm) => inm.split(',').any(|t| t.trim() == etag || t.trim() == "*"),
        // A date in the future is not a valid validator (RFC 9110 §13.1.3):
        // ignored, the file sent.
        None => header_str(header::IF_MODIFIED_SINCE)
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .filter(|since: &SystemTime| *since <= SystemTime::now())
            .is_some_and(|since: SystemTime| v.modified_secs <= since),
    };
    let mut h = HeaderMap::new();
    let hv = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    h.insert(header::ETAG, v.etag.clone());
    h.insert(header::LAST_MODIFIED, v.last_modified.clone());
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if not_modified {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v.content_type));

    let range_applies = header_str(header::IF_RANGE).is_none_or(|ir| ir == etag || ir == last_modified);
    let range = match header_str(header::RANGE) {
        Some(r) if range_applies => parse_range(r, size),
        _ => Range::Full,
    };
    let (status, start, len) = match range {
        Range::Full => (StatusCode::OK, 0, size),
        Range::Part { start, len } => {
            h.insert(header::CONTENT_RANGE, hv(&format!("bytes {start}-{}/{size}", start + len - 1)));
            (StatusCode::PARTIAL_CONTENT, start, len)
        }
        Range::Unsatisfiable => {
            h.insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
            return (StatusCode::RANGE_NOT_SATISFIABLE, h).into_response();
        }
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if method == Method::HEAD {
        return (status, h).into_response();
    }
    match body {
        // Small answers (scripts, configs) go out as one buffer.
        Body::Memory(bytes) => {
            let end = usize::try_from(start + len).unwrap_or(usize::MAX).min(bytes.len());
            let begin = usize::try_from(start).unwrap_or(0).min(end);
            (status, h, bytes.slice(begin..end)).into_response()
        }
        Body::File(mut file) => {
            // Always: a file that grew while being read was read to its
            // end. A seek on an open regular file does no I/O.
            if std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start)).is_err() {
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "seek failed");
            }
            let file = tokio::fs::File::from_std(file);
            let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), CHUNK);
            (status, h, axum::body::Body::from_stream(stream)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000), Range::Part { start: 0, len: 100 });
        assert_eq!(parse_range("bytes=900-", 1000), Range::Part { start: 900, len: 100 });
        assert_eq!(parse_range("bytes=-100", 1000), Range::Part { start: 900, len: 100 });
        assert_eq!(parse_range("bytes=-5000", 1000), Range::Part { start: 0, len: 1000 });
        assert_eq!(parse_range("bytes=990-5000", 1000), Range::Part { start: 990, len: 10 });
        assert_eq!(parse_range("bytes=1000-", 1000), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 1000), Range::Full, "invalid spec is ignored");
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Range::Full);
        assert_eq!(parse_range("items=0-1", 1000), Range::Full);
        assert_eq!(parse_range("bytes=-0", 1000), Range::Unsatisfiable);
    }

    #[test]
    fn percent_decoding_happens_once_and_rejects_bad_escapes() {
        assert_eq!(percent_decode("a%2e%2E/b").unwrap(), b"a../b");
        assert_eq!(percent_decode("%252e").unwrap(), b"%2e");
        assert!(percent_decode("%zz").is_none());
        assert!(percent_decode("%2").is_none());
    }
}
