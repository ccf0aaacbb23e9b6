//! Users, passwords and bearer tokens.
//!
//! A token is `plt_<id>.<secret>`: the id finds the stored [`Token`], whose
//! `secret_hash` (SHA-256) must match the secret. Only the hash is stored, so
//! a copy of the database does not hand out working tokens.

use crate::{ApiError, AppState};
use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use plinth_model::{Claim, Kind, Name, Token, TokenId, User};
use plinth_store::{Store, StoreError, StoreExt};
use serde::Deserialize;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// Longest lifetime a token may ask for.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Who is calling, attached to every authenticated request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user.
    pub user: Name,
    /// The token used.
    pub token: TokenId,
    /// Set for a machine token: the one machine it may read.
    pub machine: Option<plinth_model::MachineId>,
    /// A join token: it may only register machines.
    pub join: bool,
    /// What the user's roles allow (empty for machine and join tokens).
    pub claims: std::sync::Arc<Vec<Claim>>,
    /// When the token is restricted, what it allows (within `claims`).
    pub token_claims: Option<std::sync::Arc<Vec<Claim>>>,
    /// A boot credential (see [`Token::boot`]): it may only be traded once
    /// for a session.
    pub boot: bool,
    /// A join token the unknown-machine boot script minted.
    pub discovery: bool,
    /// For a machine token: the absolute end of the machine's session.
    pub session_ends_at: Option<chrono::DateTime<chrono::Utc>>,
    /// For a machine token: whether the site trusts the machine (see
    /// `Machine::trusted`).
    pub trusted: bool,
}

impl Principal {
    /// Whether this user (and token) may do `action` on `kind` (object
    /// `name`, when the request is about one).
    pub fn may(&self, kind: &str, action: &str, name: Option<&str>) -> bool {
        self.claims.iter().any(|c| c.allows(kind, action, name))
            && self.token_claims.as_ref().is_none_or(|t| t.iter().any(|c| c.allows(kind, action, name)))
    }

    /// Whether this caller holds `claim`: its user's roles cover it, and so
    /// does its token's restriction, if any. What a caller may grant (in a
    /// role, to a user, to a token) is what it holds.
    pub fn holds(&self, claim: &Claim) -> bool {
        self.machine.is_none()
            && !self.join
            && self.claims.iter().any(|c| c.covers(claim))
            && self.token_claims.as_ref().is_none_or(|t| t.iter().any(|c| c.covers(claim)))
    }

    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        match self.machine {
            Some(m) => format!("machine:{m}"),
            None => format!("user:{}", self.user),
        }
    }
}

/// Whether a machine token for `machine` may make this request: it reads its
/// own machine and (when the site trusts the machine) its resolved params,
/// asks for its next job, and works on jobs (each job route then checks the
/// job is its machine's). A boot credential may only be traded for a session.
fn machine_may(p: &Principal, machine: plinth_model::MachineId, method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    let own = format!("/api/v1/machines/{machine}");
    if p.boot {
        return *method == Method::POST && path == format!("{own}/session");
    }
    let job_route = path.strip_prefix("/api/v1/jobs/").and_then(|rest| rest.split_once('/')).map(|(_, r)| r);
    match *method {
        Method::GET => {
            path == own || (p.trusted && path == format!("{own}/params")) || matches!(job_route, Some("log" | "files"))
        }
        Method::POST => {
            path == "/api/v1/machines/whoami"
                || path == format!("{own}/next")
                || path == format!("{own}/inventory")
                || path == format!("{own}/session")
                || matches!(job_route, Some("start" | "finish" | "log" | "progress"))
        }
        _ => false,
    }
}

/// The built-in roles: `admin` may do everything; `operator` everything but
/// users, roles, other tokens and secure values; `viewer` may read (no
/// secure values, no tokens).
pub fn builtin_roles() -> Vec<(&'static str, &'static str, Vec<Claim>)> {
    let objects = |skip: &[Kind], action: &str| -> Vec<Claim> {
        Kind::ALL.iter().filter(|k| !skip.contains(k)).map(|k| Claim::new(k.plural(), action)).collect()
    };
    // Jobs come from workflows, which the engine sequences; making one by
    // hand (any task, on any machine, at once) is an admin's.
    let mut operator = objects(&[Kind::User, Kind::Role, Kind::Token, Kind::Job], "*");
    operator.extend(
        [
            ("jobs", "read"),
            ("jobs", "update"),
            ("jobs", "delete"),
            ("events", "read"),
            ("boot-events", "read"),
            ("audit", "read"),
            ("render", "read"),
            ("join-tokens", "create"),
            ("power", "*"),
        ]
        .map(|(k, a)| Claim::new(k, a)),
    );
    let mut viewer = objects(&[Kind::Token], "read");
    viewer.extend(
        [("events", "read"), ("boot-events", "read"), ("audit", "read"), ("render", "read"), ("power", "read")]
            .map(|(k, a)| Claim::new(k, a)),
    );
    vec![
        ("admin", "Everything (built in).", vec![Claim::new("*", "*")]),
        ("operator", "Everything but users, roles, tokens and secure values (built in).", operator),
        ("viewer", "Read everything but tokens; no secure values (built in).", viewer),
    ]
}

/// Whether `name` is a built-in role (which cannot be changed or deleted).
pub fn is_builtin_role(name: &str) -> bool {
    builtin_roles().iter().any(|(n, _, _)| *n == name)
}

/// What a request needs: `(kind, action, object)`, or `None` when any
/// authenticated caller may make it. Paths are `/api/v1/...`.
pub fn requirement(method: &axum::http::Method, path: &str) -> Option<(String, &'static str, Option<String>)> {
    use axum::http::Method;
    let rest = path.strip_prefix("/api/v1/").unwrap_or(path);
    let seg: Vec<&str> = rest.split('/').collect();
    let write = |m: &Method| match *m {
        Method::POST => "create",
        Method::PUT | Method::PATCH => "update",
        Method::DELETE => "delete",
        _ => "read",
    };
    let own = |kind: &str, action: &'static str, key: &str| Some((kind.to_owned(), action, Some(key.to_owned())));
    match seg.as_slice() {
        ["info"] | ["openapi.json"] => None,
        [extra @ ("events" | "boot-events" | "audit")] => Some(((*extra).to_owned(), "read", None)),
        ["render"] => Some(("render".into(), "read", None)),
        ["join-tokens"] => Some(("join-tokens".into(), "create", None)),
        ["machines", "whoami"] => Some(("machines".into(), "create", None)),
        // Enrolment creates (or updates) a machine from what its BMC says.
        ["machines", "enroll"] => Some(("machines".into(), "create", None)),
        ["contents", "plan" | "export"] => Some(("contents".into(), "read", None)),
        ["contents", "install"] => Some(("contents".into(), "create", None)),
        ["contents", name, "rollback" | "promote"] => own("contents", "update", name),
        ["machines", id, "params" | "timeline"] => own("machines", "read", id),
        // Letting secure values reach a machine is a grant of its own.
        ["machines", id, "accept"] => own("secure", "update", id),
        // A machine's power is a claim of its own.
        ["machines", id, route @ ("power" | "boot-once" | "rebuild" | "boot-media")] => {
            Some(crate::power::requirement(method, id, route))
        }
        // A metadata token reads what the machine's metadata renders,
        // secure values included.
        ["machines", id, "metadata-token"] => own("secure", "read", id),
        ["conflicts", _, "accept"] => Some(("secure".into(), "update", None)),
        ["conflicts", id, "reject"] => own("conflicts", "update", id),
        ["machines", id, _] => own("machines", "update", id),
        ["jobs", id, _] if *method == Method::GET => own("jobs", "read", id),
        ["jobs", id, _] => own("jobs", "update", id),
        [kind] => Some(((*kind).to_owned(), write(method), None)),
        [kind, key] => Some(((*kind).to_owned(), write(method), Some((*key).to_owned()))),
        _ => Some(("*".into(), "*", None)),
    }
}

/// Hashes a password with Argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("password hashing failed: {e}")))
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A random secret of `bytes` bytes from the OS, URL-safe base64.
pub fn random_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Failure to prepare the store for first use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// Creates what a fresh store needs: the `admin` user and the `global`
/// profile. The admin password is `PLINTH_ADMIN_PASSWORD` when given, else
/// random and written to `<data_dir>/initial-admin-password` (mode 0600).
pub async fn bootstrap(
    store: &dyn Store,
    data_dir: &Path,
    admin_password: Option<String>,
) -> Result<(), BootstrapError> {
    if store.get(Kind::Profile, "global").await?.is_none() {
        let body = json!({"name": "global", "description": "Params for every machine (built in)."});
        let (key, body) = plinth_model::normalize(Kind::Profile, body).map_err(ApiError::from)?;
        match store.create(Kind::Profile, &key, body).await {
            Ok(_) | Err(StoreError::Exists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (name, description, claims) in builtin_roles() {
        let body = json!({"name": name, "description": description, "claims": claims});
        let (key, body) = plinth_model::normalize(Kind::Role, body).map_err(ApiError::from)?;
        match store.get(Kind::Role, name).await? {
            None => match store.create(Kind::Role, &key, body).await {
                Ok(_) | Err(StoreError::Exists { .. }) => {}
                Err(e) => return Err(e.into()),
            },
            // A newer Plinth may give a built-in role more claims.
            Some(r) if r.body.get("claims") != body.get("claims") => {
                store.put(Kind::Role, &key, body, plinth_store::Expect::Revision(r.revision)).await?;
            }
            Some(_) => {}
        }
    }
    if store.get(Kind::User, "admin").await?.is_some() {
        return Ok(());
    }
    let (password, from_env) = match admin_password {
        Some(p) if !p.is_empty() => (p, true),
        _ => (random_secret(18), false),
    };
    let hash = hash_password(&password)?;
    let body =
        json!({"name": "admin", "description": "Created on first start.", "roles": ["admin"], "password_hash": hash});
    let (key, body) = plinth_model::normalize(Kind::User, body).map_err(ApiError::from)?;
    store.create(Kind::User, &key, body).await?;
    if from_env {
        tracing::info!("created user `admin` with the password from PLINTH_ADMIN_PASSWORD");
    } else {
        let path = data_dir.join("initial-admin-password");
        write_secret_file(&path, &format!("{password}\n"))
            .map_err(|e| BootstrapError::Io(format!("cannot write {}: {e}", path.display())))?;
        tracing::info!(path = %path.display(), "created user `admin`; its password is in this file (mode 0600)");
    }
    Ok(())
}

/// Writes a file readable only by its owner (atomically).
pub(crate) fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    plinth_secrets::write_private(path, contents)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    description: String,
    /// Restrict the token to these claims (each within the user's).
    #[serde(default)]
    claims: Option<Vec<Claim>>,
}

fn basic_credentials(headers: &HeaderMap) -> Result<(String, String), ApiError> {
    let unauthorized = || ApiError::Unauthorized("send HTTP basic credentials (username and password)".into());
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(unauthorized)?;
    let encoded = value.strip_prefix("Basic ").ok_or_else(unauthorized)?;
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| unauthorized())?;
    let text = String::from_utf8(decoded).map_err(|_| unauthorized())?;
    let (user, pass) = text.split_once(':').ok_or_else(unauthorized)?;
    Ok((user.to_owned(), pass.to_owned()))
}

/// Failed logins allowed per client address, and per user, within
/// [`LOGIN_WINDOW`]; beyond them logins are refused (429) until the window
/// passes, whether or not the password is right. The per-user limit does
/// not apply from an address that user logged in from before (within
/// [`KNOWN_FOR`]), so failures from elsewhere cannot lock the owner out;
/// and it counts against the user's current password, so a new one (say,
/// from `plinth users reset-password` on the server's host) starts afresh.
pub const LOGIN_FAILURES: u32 = 10;
/// How long an address a user logged in from stays known for that user.
pub const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Addresses remembered per user.
const KNOWN_PER_USER: usize = 16;
/// See [`LOGIN_FAILURES`].
pub const LOGIN_WINDOW: Duration = Duration::from_secs(300);
/// Most addresses and names the limiter remembers; beyond it the oldest
/// windows are forgotten, so a spray of addresses cannot exhaust memory.
const LOGIN_TRACKED: usize = 65_536;

/// Counts failed logins by client address and by user; remembers the
/// addresses each user logged in from.
#[derive(Default)]
pub struct LoginLimiter {
    failures: std::sync::Mutex<std::collections::HashMap<String, (u32, std::time::Instant)>>,
    known: std::sync::Mutex<std::collections::HashMap<String, Vec<(std::net::IpAddr, std::time::Instant)>>>,
}

impl LoginLimiter {
    /// Seconds until `keys` may try again, if any is over the limit.
    fn blocked(&self, keys: &[String]) -> Option<u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .filter_map(|k| map.get(k))
            .filter(|(n, since)| *n >= LOGIN_FAILURES && since.elapsed() < LOGIN_WINDOW)
            .map(|(_, since)| LOGIN_WINDOW.saturating_sub(since.elapsed()).as_secs().max(1))
            .max()
    }

    fn failed(&self, keys: &[String]) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= LOGIN_TRACKED {
            map.retain(|_, (_, since)| since.elapsed() < LOGIN_WINDOW);
            if map.len() >= LOGIN_TRACKED {
                map.clear();
            }
        }
        for k in keys {
            let e = map.entry(k.clone()).or_insert((0, std::time::Instant::now()));
            if e.1.elapsed() >= LOGIN_WINDOW {
                *e = (0, std::time::Instant::now());
            }
            e.0 += 1;
        }
    }

    /// A login of `user` from `from` succeeded: the address is known for
    /// that user from now on. The user's failure count is left to its
    /// window: a success from a known address must not reopen the user to
    /// guesses from everywhere else.
    fn succeeded(&self, user: &str, from: Option<std::net::IpAddr>) {
        let Some(ip) = from else { return };
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= LOGIN_TRACKED && !known.contains_key(user) {
            known.clear();
        }
        let list = known.entry(user.to_owned()).or_default();
        list.retain(|(a, at)| *a != ip && at.elapsed() < KNOWN_FOR);
        list.push((ip, std::time::Instant::now()));
        if list.len() > KNOWN_PER_USER {
            list.remove(0);
        }
    }

    /// Whether `user` logged in from `from` before.
    fn known(&self, user: &str, from: Option<std::net::IpAddr>) -> bool {
        let Some(ip) = from else { return false };
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(user).is_some_and(|l| l.iter().any(|(a, at)| *a == ip && at.elapsed() < KNOWN_FOR))
    }
}

/// The client's address, when the server knows it.
pub struct PeerAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddr(parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())))
    }
}

/// `POST /api/v1/auth/token`: HTTP basic credentials in, a bearer token out.
pub async fn mint_token(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (username, password) = basic_credentials(&headers)?;
    let user = match username.parse::<Name>() {
        Ok(n) => state.store.get(Kind::User, n.as_str()).await?,
        Err(_) => None,
    };
    let hash = user.as_ref().and_then(|u| u.body.get("password_hash")).and_then(|h| h.as_str()).map(str::to_owned);
    // The user's failures count against its current password (the hash's
    // tail names it), from addresses it has not logged in from.
    let fingerprint = hash.as_deref().map(|h| &h[h.len().saturating_sub(12)..]).unwrap_or("none");
    let user_key = format!("user:{username}:{fingerprint}");
    let addr_key = format!("addr:{}", peer.map(|p| p.to_string()).unwrap_or_default());
    let keys = if state.logins.known(&username, peer) { vec![addr_key] } else { vec![addr_key, user_key.clone()] };
    if let Some(secs) = state.logins.blocked(&keys) {
        tracing::warn!(user = %username.escape_debug(), address = %keys[0], "login refused: too many failures");
        return Err(ApiError::TooManyRequests(secs));
    }
    let req: TokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TokenRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("token request body: {e}")))?
    };
    let ttl = req.ttl_secs.map_or(state.default_token_ttl, Duration::from_secs);
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(ApiError::field("ttl_secs", format!("expected 1 to {} seconds", MAX_TOKEN_TTL.as_secs())));
    }
    // Verify even for unknown users so timing does not reveal which exist.
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => verify_password(&h, &password),
        None => {
            static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            let dummy = DUMMY.get_or_init(|| hash_password("not a real password").unwrap_or_default());
            let _ = verify_password(dummy, &password);
            false
        }
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    if !ok {
        tracing::warn!(user = %username.escape_debug(), address = %keys[0], "failed login");
        state.logins.failed(&keys);
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    }
    state.logins.succeeded(&username, peer);
    let expires_at =
        plinth_model::now() + chrono::Duration::from_std(ttl).map_err(|e| ApiError::Internal(e.to_string()))?;
    let user = username.parse().map_err(ApiError::BadRequest)?;
    if let Some(wanted) = &req.claims {
        let have = user_claims(&state, &user).await?;
        for (i, c) in wanted.iter().enumerate() {
            let valid = plinth_model::normalize(Kind::Role, json!({"name": "check", "claims": [c]}));
            if let Err(e) = valid {
                return Err(ApiError::field(format!("claims[{i}]"), e.to_string()));
            }
            if !have.iter().any(|h| h.covers(c)) {
                return Err(ApiError::Forbidden(format!(
                    "claims[{i}] ({} {}{}) is more than user `{user}` may do; a token carries a subset of its user's claims",
                    c.action,
                    c.kind,
                    c.name.as_ref().map(|n| format!(" {n}")).unwrap_or_default()
                )));
            }
        }
    }
    let (mut token, bearer) = Token::mint(user, req.description, expires_at, None);
    token.claims = req.claims;
    let id = token.id;
    let body = serde_json::to_value(&token).map_err(|e| ApiError::Internal(e.to_string()))?;
    state.store.create(Kind::Token, &id.to_string(), body).await?;
    let out = json!({"token": bearer, "id": id, "user": token.user, "expires_at": expires_at});
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

/// Middleware: a valid, unexpired bearer token of an existing user, or 401.
pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let principal = authenticate(&state, req.headers(), req.uri().path(), peer).await?;
    if let Some(machine) = principal.machine
        && !machine_may(&principal, machine, req.method(), req.uri().path())
    {
        return Err(ApiError::Forbidden(if principal.boot {
            "a boot credential can only be traded for a session (POST /api/v1/machines/{id}/session)".into()
        } else {
            "a machine token may only read its own machine".into()
        }));
    }
    if principal.join && !(req.method() == axum::http::Method::POST && req.uri().path() == "/api/v1/machines/whoami") {
        return Err(ApiError::Forbidden(
            "a join token may only register a machine (POST /api/v1/machines/whoami)".into(),
        ));
    }
    if principal.machine.is_none()
        && !principal.join
        && let Some((kind, action, name)) = requirement(req.method(), req.uri().path())
        && !principal.may(&kind, action, name.as_deref())
        && !may_by_machine_name(&state, &principal, &kind, action, name.as_deref()).await
        && !own_tokens(&state, &principal, req.method(), req.uri()).await
    {
        return Err(ApiError::Forbidden(format!(
            "user `{}` may not {action} {kind}{}: no role (or token restriction) of theirs claims it",
            principal.user,
            name.map(|n| format!(" `{}`", n.escape_debug())).unwrap_or_default()
        )));
    }
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

/// The caller a request's bearer token names. `path` and `peer` are the
/// request's, for the record a second trade of a boot credential leaves.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    peer: Option<std::net::IpAddr>,
) -> Result<Principal, ApiError> {
    let missing = || {
        ApiError::Unauthorized("missing bearer token; get one with POST /api/v1/auth/token or `plinth login`".into())
    };
    let invalid = || ApiError::Unauthorized("invalid, expired or revoked token".into());
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(missing)?;
    let token = value.strip_prefix("Bearer ").ok_or_else(missing)?.trim();
    let (id, secret) = Token::parse_bearer(token).ok_or_else(invalid)?;
    let record = state.store.get(Kind::Token, &id.to_string()).await?.ok_or_else(invalid)?;
    let stored: Token = plinth_model::decode(record.body).map_err(|e| ApiError::Internal(e.to_string()))?;
    if !stored.secret_matches(secret) || stored.expires_at <= plinth_model::now() {
        return Err(invalid());
    }
    if stored.metadata {
        return Err(ApiError::Unauthorized(
            "a metadata token reads its machine's metadata on boot HTTP (/t/<token>/...), nothing on the API".into(),
        ));
    }
    if let Some(machine) = stored.machine {
        // A machine token lives as long as its machine.
        let (m, _) = state.store.get_as::<plinth_model::Machine>(&machine.to_string()).await?.ok_or_else(invalid)?;
        if stored.boot && stored.uses_left == Some(0) {
            if path == format!("/api/v1/machines/{machine}/session") {
                crate::agent::record_reused_boot_token(state, &m, &stored, peer).await;
            }
            return Err(ApiError::Unauthorized(
                "this boot credential was already traded for a session; it is good for nothing else".into(),
            ));
        }
        return Ok(Principal {
            user: stored.user,
            token: id,
            machine: Some(machine),
            join: false,
            claims: Default::default(),
            token_claims: None,
            boot: stored.boot,
            discovery: false,
            session_ends_at: stored.session_ends_at,
            trusted: m.trusted,
        });
    }
    if stored.join && stored.uses_left == Some(0) {
        return Err(invalid());
    }
    let claims = user_claims(state, &stored.user).await?;
    let token_claims = stored.claims.map(std::sync::Arc::new);
    Ok(Principal {
        user: stored.user,
        token: id,
        machine: None,
        join: stored.join,
        claims: claims.into(),
        token_claims,
        boot: false,
        discovery: stored.discovery,
        session_ends_at: None,
        trusted: true,
    })
}

/// The claims role `name` grants (none when it does not exist).
pub(crate) async fn role_claims(store: &dyn Store, name: &str) -> Result<Vec<Claim>, ApiError> {
    match store.get(Kind::Role, name).await? {
        Some(r) => Ok(plinth_model::decode::<plinth_model::Role>(r.body)
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .claims),
        None => Ok(Vec::new()),
    }
}

/// Whether a user's request about tokens concerns only its own: listing
/// with `?user=<itself>`, or reading or revoking one of its own tokens.
/// Every user may do that, whatever its roles say (to log out, above all).
async fn own_tokens(state: &AppState, p: &Principal, method: &axum::http::Method, uri: &axum::http::Uri) -> bool {
    use axum::http::Method;
    if p.machine.is_some() || p.join {
        return false;
    }
    let rest = uri.path().strip_prefix("/api/v1/tokens").unwrap_or("-");
    match (method, rest) {
        (&Method::GET, "" | "/") => {
            let pairs =
                axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
            pairs.iter().any(|(k, v)| k == "user" && v == p.user.as_str())
        }
        (&Method::GET | &Method::DELETE, id) => {
            let Some(id) = id.strip_prefix('/').filter(|i| !i.contains('/')) else { return false };
            let Ok(Some(r)) = state.store.get(Kind::Token, id).await else { return false };
            r.body.get("user").and_then(|u| u.as_str()) == Some(p.user.as_str())
                && r.body.get("machine").is_none_or(|m| m.is_null())
        }
        _ => false,
    }
}

/// Machines are keyed by id, but a site names them: a claim's pattern
/// (`web-*`) also matches the machine's name.
async fn may_by_machine_name(state: &AppState, p: &Principal, kind: &str, action: &str, key: Option<&str>) -> bool {
    let Some(key) = key.filter(|_| kind == "machines") else { return false };
    let Ok(Some(r)) = state.store.get(Kind::Machine, key).await else { return false };
    r.body.get("name").and_then(|n| n.as_str()).is_some_and(|name| p.may(kind, action, Some(name)))
}

/// The claims of every role `user` has (a role that no longer exists gives
/// nothing). Fails as unauthorized when the user is gone.
async fn user_claims(state: &AppState, user: &Name) -> Result<Vec<Claim>, ApiError> {
    let record = state
        .store
        .get(Kind::User, user.as_str())
        .await?
        .ok_or_else(|| ApiError::Unauthorized("invalid, expired or revoked token".into()))?;
    let user: User = plinth_model::decode(record.body).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut claims = Vec::new();
    for role in &user.roles {
        if let Some(r) = state.store.get(Kind::Role, role.as_str()).await? {
            let role: plinth_model::Role =
                plinth_model::decode(r.body).map_err(|e| ApiError::Internal(e.to_string()))?;
            claims.extend(role.claims);
        }
    }
    Ok(claims)
}

/// Deletes tokens that can no longer be used: expired ones, and join
/// tokens with no uses left. Returns how many. The server runs it every few
/// minutes, so the join tokens each unknown machine's boot script mints and
/// the sessions agents renew do not pile up.
pub async fn sweep_tokens(store: &dyn Store) -> Result<usize, StoreError> {
    let now = plinth_model::now();
    let mut ops = Vec::new();
    for r in store.list_all(Kind::Token, vec![]).await? {
        let Ok(t) = plinth_model::decode::<Token>(r.body) else { continue };
        if t.expires_at <= now || (t.join && t.uses_left == Some(0)) {
            ops.push(plinth_store::WriteOp::Delete {
                kind: Kind::Token,
                key: r.key,
                expect: plinth_store::Expect::Revision(r.revision),
            });
        }
    }
    let n = ops.len();
    // In modest batches; a token used meanwhile (revision changed) stays
    // for the next sweep.
    for chunk in ops.chunks(500) {
        if store.apply(chunk.to_vec()).await.is_err() {
            for op in chunk {
                let _ = store.apply(vec![op.clone()]).await;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sweeping_removes_expired_and_used_up_tokens_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = plinth_store::SqliteStore::open(&dir.path().join("db")).unwrap();
        store.create(Kind::User, "admin", json!({"name": "admin"})).await.unwrap();
        let later = plinth_model::now() + chrono::Duration::hours(1);
        let earlier = plinth_model::now() - chrono::Duration::seconds(1);
        let put = |t: Token| {
            let v = serde_json::to_value(&t).unwrap();
            let key = t.id.to_string();
            let store = &store;
            async move { store.create(Kind::Token, &key, v).await.unwrap() }
        };
        let (live, _) = Token::mint(Name::known("admin"), String::new(), later, None);
        let (expired, _) = Token::mint(Name::known("admin"), String::new(), earlier, None);
        let (mut used_up, _) = Token::mint(Name::known("admin"), String::new(), later, None);
        used_up.join = true;
        used_up.uses_left = Some(0);
        let (mut join_left, _) = Token::mint(Name::known("admin"), String::new(), later, None);
        join_left.join = true;
        join_left.uses_left = Some(2);
        for t in [live.clone(), expired, used_up, join_left.clone()] {
            put(t).await;
        }
        assert_eq!(sweep_tokens(&store).await.unwrap(), 2);
        let left: Vec<String> = store.list_all(Kind::Token, vec![]).await.unwrap().into_iter().map(|r| r.key).collect();
        let mut want = vec![live.id.to_string(), join_left.id.to_string()];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horsE"));
        assert!(!verify_password("not a hash", "x"));
    }
}
