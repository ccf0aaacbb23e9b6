//! Generic CRUD over every kind: list, show, create, replace, merge-patch,
//! delete. Bodies are validated by `plinth_model::normalize`, then by the
//! checks that need the store (param values against their schemas), then
//! written with a revision precondition so no update is ever lost.

use crate::auth::{Principal, hash_password};
use crate::extract::{Path, Query};
use crate::{ApiError, AppState, MAX_BODY};
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plinth_model::{Kind, meta};
use plinth_store::{Expect, Filter, ListQuery, Record, StoreExt, WriteOp};
use serde_json::{Value, json};

/// Default page size of list calls.
pub const DEFAULT_PAGE: usize = 100;

pub(crate) fn parse_kind(kind: &str) -> Result<Kind, ApiError> {
    Kind::from_plural(kind).ok_or_else(|| {
        let all: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        ApiError::NotFound(format!("unknown kind `{}`; kinds are: {}", kind.escape_debug(), all.join(", ")))
    })
}

/// A kind named in a query parameter: unknown is a 400 naming the parameter.
pub(crate) fn kind_param(field: &str, kind: &str) -> Result<Kind, ApiError> {
    parse_kind(kind).map_err(|e| ApiError::field(field, e.to_string()))
}

/// Removes server-only fields and hides sealed (secure) values before an
/// object leaves the server.
pub(crate) fn redact(kind: Kind, body: &mut Value) {
    crate::secure::redact_sealed(body);
    if let Value::Object(map) = body {
        for field in kind.server_only_fields() {
            map.remove(*field);
        }
    }
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn object_response(status: StatusCode, record: Record) -> Response {
    let mut body = record.body;
    redact(record.kind, &mut body);
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::ETAG, etag(record.revision));
    if status == StatusCode::CREATED
        && let Ok(loc) = HeaderValue::from_str(&format!("/api/v1/{}/{}", record.kind.plural(), record.key))
    {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

/// Parses `If-Match`: `"3"`, `W/"3"`, `3` or `*`.
fn if_match(headers: &HeaderMap) -> Result<Option<Expect>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let s = v.to_str().map_err(|_| ApiError::field("If-Match", "If-Match is not ASCII"))?.trim();
    if s == "*" {
        return Ok(Some(Expect::Present));
    }
    let tag = s.strip_prefix("W/").unwrap_or(s);
    let digits = match tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(d) => d,
        None if tag.len() == s.len() => tag,
        None => "",
    };
    let ok = (1..=19).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| digits.parse::<u64>().ok()).flatten().map(|r| Some(Expect::Revision(r))).ok_or_else(|| {
        ApiError::field(
            "If-Match",
            format!("If-Match must be an ETag from a previous response (a revision like \"3\") or `*`, got `{s}`"),
        )
    })
}

pub(crate) async fn read_json(headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        if !ct.contains("json") {
            return Err(ApiError::UnsupportedMediaType(format!("expected a JSON body (application/json), got `{ct}`")));
        }
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| ApiError::TooLarge(MAX_BODY))?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest("the request needs a JSON body".into()));
    }
    serde_json::from_slice(&bytes)
        .map(integral_numbers)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))
}

/// Numbers written with a fraction that is zero (`3.0`) are the integers
/// JSON Schema says they are.
fn integral_numbers(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Number(n) if !n.is_i64() && !n.is_u64() => {
                if let Some(f) = n.as_f64()
                    && f.fract() == 0.0
                    && f.abs() < 9.0e15
                {
                    *v = Value::from(f as i64);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            Value::Object(m) => m.values_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// Like [`read_json`], but an empty body is `None`.
pub(crate) async fn read_json_or_empty(headers: &HeaderMap, body: Body) -> Result<Option<Value>, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| ApiError::TooLarge(MAX_BODY))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        if !ct.contains("json") {
            return Err(ApiError::UnsupportedMediaType(format!("expected a JSON body (application/json), got `{ct}`")));
        }
    }
    serde_json::from_slice(&bytes)
        .map(|v| Some(integral_numbers(v)))
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))
}

fn check_writable(kind: Kind) -> Result<(), ApiError> {
    if kind.writable_via_api() { Ok(()) } else { Err(ApiError::MethodNotAllowed) }
}

/// Query of the write routes: `?override=true` changes an object a content
/// pack installed, making it the site's override.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    #[serde(default, rename = "override")]
    override_: Option<bool>,
}

impl WriteQuery {
    fn override_pack(&self) -> bool {
        self.override_.unwrap_or(false)
    }
}

/// The content-pack layering rules for a write of `body` over `previous`:
/// a pack's object changes only as an explicit override (recorded in
/// `meta.override`); an override stays one; nobody else sets these marks.
fn pack_layer(kind: Kind, previous: Option<&Value>, override_pack: bool, body: &mut Value) -> Result<(), ApiError> {
    let pack = previous.and_then(|p| meta::get(p, meta::PACK)).map(str::to_owned);
    let kept = previous.and_then(|p| meta::get(p, meta::OVERRIDE)).map(str::to_owned);
    if let Some(p) = &pack
        && !override_pack
    {
        let version = previous.and_then(|b| meta::get(b, meta::PACK_VERSION)).unwrap_or_default();
        return Err(ApiError::Conflict(format!(
            "{kind} `{}` belongs to content pack `{p}` {version}; change it in the pack, or override it here with `?override=true` (upgrades then leave it alone and report it)",
            previous.and_then(|b| b.get(kind.key_field())).and_then(Value::as_str).unwrap_or_default()
        )));
    }
    let Value::Object(m) = body else { return Ok(()) };
    let labels = m.entry("meta").or_insert_with(|| serde_json::json!({}));
    if let Value::Object(labels) = labels {
        for k in meta::PACK_KEYS {
            labels.remove(k);
        }
        if let Some(o) = pack.or(kept) {
            labels.insert(meta::OVERRIDE.into(), Value::String(o));
        }
    }
    Ok(())
}

/// Built-in roles are the server's: they cannot be changed or deleted.
fn check_not_builtin(kind: Kind, key: &str) -> Result<(), ApiError> {
    if kind == Kind::Role && crate::auth::is_builtin_role(key) {
        return Err(ApiError::Conflict(format!(
            "role `{key}` is built in and cannot be changed or deleted; make a role of your own"
        )));
    }
    Ok(())
}

/// Rejects client attempts to set server-only fields.
fn refuse_server_only(kind: Kind, body: &Value) -> Result<(), ApiError> {
    for field in kind.server_only_fields() {
        if body.get(*field).is_some() {
            return Err(ApiError::field(*field, format!("{kind}: field `{field}` is managed by the server")));
        }
    }
    Ok(())
}

/// Roles, users and their claims: a caller may write a role, or a user,
/// only when it holds every claim the role grants (before and after the
/// write), or every claim of every role the user has (before and after): so
/// delegated administration (`users:*`, `roles:*`) cannot reach beyond what
/// the delegate holds, nor take over a user who holds more (by resetting its
/// password).
async fn check_grants(
    state: &AppState,
    principal: &Principal,
    kind: Kind,
    key: &str,
    bodies: [Option<&Value>; 2],
) -> Result<(), ApiError> {
    let claims_of = |b: &Value| -> Result<Vec<plinth_model::Claim>, ApiError> {
        serde_json::from_value(b.get("claims").cloned().unwrap_or(Value::Array(Vec::new())))
            .map_err(|e| ApiError::Internal(e.to_string()))
    };
    let refuse = |what: String| {
        ApiError::Forbidden(format!(
            "{kind} `{key}`: {what}, which user `{}` does not hold; one can grant only what one holds",
            principal.user
        ))
    };
    match kind {
        Kind::Role => {
            for body in bodies.into_iter().flatten() {
                for (i, c) in claims_of(body)?.iter().enumerate() {
                    if !principal.holds(c) {
                        return Err(refuse(format!("claims[{i}] grants {}", describe_claim(c))));
                    }
                }
            }
        }
        Kind::User => {
            let mut roles = std::collections::BTreeSet::new();
            for body in bodies.into_iter().flatten() {
                for r in body.get("roles").and_then(Value::as_array).into_iter().flatten() {
                    roles.extend(r.as_str().map(str::to_owned));
                }
            }
            for role in roles {
                for c in crate::auth::role_claims(state.store.as_ref(), &role).await? {
                    if !principal.holds(&c) {
                        return Err(refuse(format!("role `{role}` grants {}", describe_claim(&c))));
                    }
                }
            }
        }
        // Trusting a machine with the site's secrets is the accept route's
        // claim, whichever route writes it.
        Kind::Machine => {
            let trusted = |b: &Value| b.get("trusted") != Some(&Value::Bool(false));
            if let [Some(before), Some(after)] = bodies
                && !trusted(before)
                && trusted(after)
                && !principal.may("secure", "update", Some(key))
            {
                return Err(refuse("trusting it needs the claim `update secure`".into()));
            }
        }
        _ => {}
    }
    Ok(())
}

fn describe_claim(c: &plinth_model::Claim) -> String {
    format!("`{} {}{}`", c.action, c.kind, c.name.as_ref().map(|n| format!(" {n}")).unwrap_or_default())
}

/// When a write gives user `key` a new password, every token of that user
/// is revoked with it (but the caller's own, when it changes its own).
async fn revocations(
    state: &AppState,
    principal: &Principal,
    kind: Kind,
    key: &str,
    body: &Value,
) -> Result<Vec<WriteOp>, ApiError> {
    if kind != Kind::User || body.get("password").and_then(Value::as_str).is_none() {
        return Ok(Vec::new());
    }
    let filter = Filter { path: vec!["user".into()], value: Value::String(key.to_owned()) };
    Ok(state
        .store
        .list_all(Kind::Token, vec![filter])
        .await?
        .into_iter()
        .filter(|r| !(principal.user.as_str() == key && r.key == principal.token.to_string()))
        .map(|r| WriteOp::Delete { kind: Kind::Token, key: r.key, expect: Expect::Any })
        .collect())
}

/// Validates a body and applies the checks that need the store. `previous`
/// is the stored object being replaced, if any.
async fn prepare(
    state: &AppState,
    kind: Kind,
    mut body: Value,
    previous: Option<&Value>,
    override_pack: bool,
) -> Result<(String, Value), ApiError> {
    refuse_server_only(kind, &body)?;
    pack_layer(kind, previous, override_pack, &mut body)?;
    let password =
        (kind == Kind::User).then(|| body.get("password").and_then(Value::as_str).map(str::to_owned)).flatten();
    let (key, mut value) = plinth_model::normalize(kind, body)?;
    crate::secure::prepare_params(state, kind, &key, &mut value, previous).await?;
    if kind == Kind::Machine {
        crate::power::prepare_machine(state, &key, &mut value, previous)?;
    }
    check_template_syntax(kind, &key, &value)?;
    if kind == Kind::User {
        let hash = match password {
            Some(pw) => Some(
                tokio::task::spawn_blocking(move || hash_password(&pw))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))??,
            ),
            None => previous.and_then(|p| p.get("password_hash")).and_then(Value::as_str).map(str::to_owned),
        };
        if let (Some(h), Value::Object(map)) = (hash, &mut value) {
            map.insert("password_hash".into(), Value::String(h));
        }
    }
    Ok((key, value))
}

/// Splits a list call's query into paging and field filters, typing each
/// filter value by the field's schema.
fn list_query(state_schema: &Value, kind: Kind, pairs: Vec<(String, String)>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery { limit: DEFAULT_PAGE, ..Default::default() };
    let props = state_schema.get("properties").and_then(Value::as_object);
    let fields = plinth_model::filter_fields(kind);
    let mut seen = std::collections::HashSet::new();
    for (name, raw) in pairs {
        if !seen.insert(name.clone()) {
            return Err(ApiError::field(
                name.as_str(),
                format!("`{}` is given twice; give each parameter once", name.escape_debug()),
            ));
        }
        match name.as_str() {
            "limit" => {
                q.limit = raw.parse::<usize>().ok().filter(|l| (1..=plinth_store::MAX_PAGE).contains(l)).ok_or_else(
                    || ApiError::BadRequest(format!("limit must be 1 to {}, got `{raw}`", plinth_store::MAX_PAGE)),
                )?;
            }
            "after" => q.after = Some(raw),
            field => {
                let path: Vec<String> = field.split('.').map(str::to_owned).collect();
                let top = props.and_then(|p| p.get(&path[0]));
                let Some(prop) = top else {
                    let known: Vec<&str> = props.map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default();
                    return Err(ApiError::Invalid {
                        detail: format!(
                            "{kind} have no field `{}` to filter on; fields are: {}",
                            path[0].escape_debug(),
                            known.join(", ")
                        ),
                        field: Some(field.to_owned()),
                    });
                };
                let value = if path.len() == 1 {
                    match fields.iter().find(|(f, _)| *f == path[0]) {
                        // A filter value must be one the field can hold.
                        Some((_, scalar)) => {
                            let v = typed_value(&schema_types(state_schema, scalar), &raw);
                            plinth_model::check_in_kind(kind, scalar, &v)
                                .map_err(|why| ApiError::field(field, format!("filter `{field}`: {why}")))?;
                            v
                        }
                        None => typed_value(&schema_types(state_schema, prop), &raw),
                    }
                } else {
                    Value::String(raw)
                };
                q.filters.push(Filter { path, value });
            }
        }
    }
    Ok(q)
}

/// JSON types a property may take, following `$ref`, `anyOf`/`oneOf` and array items.
fn schema_types(root: &Value, prop: &Value) -> Vec<String> {
    fn walk(root: &Value, s: &Value, out: &mut Vec<String>, depth: u8) {
        if depth > 8 {
            return;
        }
        if let Some(r) = s.get("$ref").and_then(Value::as_str)
            && let Some(name) = r.strip_prefix("#/$defs/")
            && let Some(def) = root.get("$defs").and_then(|d| d.get(name))
        {
            walk(root, def, out, depth + 1);
        }
        match s.get("type") {
            Some(Value::String(t)) => out.push(t.clone()),
            Some(Value::Array(ts)) => out.extend(ts.iter().filter_map(Value::as_str).map(str::to_owned)),
            _ => {}
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(alts)) = s.get(key) {
                for a in alts {
                    walk(root, a, out, depth + 1);
                }
            }
        }
        if let Some(items) = s.get("items") {
            walk(root, items, out, depth + 1);
        }
    }
    let mut out = Vec::new();
    walk(root, prop, &mut out, 0);
    out
}

fn typed_value(types: &[String], raw: &str) -> Value {
    let has = |t: &str| types.iter().any(|x| x == t);
    if raw == "null" && has("null") {
        return Value::Null;
    }
    if has("boolean")
        && let Ok(b) = raw.parse::<bool>()
    {
        return Value::Bool(b);
    }
    if has("integer") {
        if let Ok(i) = raw.parse::<i64>() {
            return json!(i);
        }
        if let Ok(u) = raw.parse::<u64>() {
            return json!(u);
        }
    }
    if has("number")
        && let Ok(f) = raw.parse::<f64>()
    {
        return json!(f);
    }
    Value::String(raw.to_owned())
}

/// `GET /api/v1/{kind}`.
pub async fn list(
    State(state): State<AppState>,
    Path(kind): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    let schema = plinth_model::schema_of(kind);
    let query = list_query(&schema, kind, pairs)?;
    let page = state.store.list(kind, &query).await?;
    let items: Vec<Value> = page
        .items
        .into_iter()
        .map(|r| {
            let mut b = r.body;
            redact(kind, &mut b);
            b
        })
        .collect();
    Ok(axum::Json(json!({"items": items, "next": page.next})).into_response())
}

/// `GET /api/v1/{kind}/{key}`.
pub async fn show(
    State(state): State<AppState>,
    Path((kind, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    let record = state.store.get(kind, &key).await?.ok_or_else(|| not_found(kind, &key))?;
    Ok(object_response(StatusCode::OK, record))
}

fn not_found(kind: Kind, key: &str) -> ApiError {
    ApiError::NotFound(format!("{kind} `{}` not found", key.escape_debug()))
}

/// `POST /api/v1/{kind}`.
pub async fn create(
    State(state): State<AppState>,
    Path(kind): Path<String>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    check_writable(kind)?;
    let body = read_json(&headers, body).await?;
    let (key, value) = prepare(&state, kind, body, None, false).await?;
    check_grants(&state, &principal, kind, &key, [None, Some(&value)]).await?;
    let record = audited_put(&state, &principal, kind, &key, value, Expect::Absent, Vec::new()).await?;
    after_write(&state, &record).await;
    Ok(object_response(StatusCode::CREATED, record))
}

/// Writes one object (and `with`, in the same transaction), recording the
/// changes in the audit log.
pub(crate) async fn audited_put(
    state: &AppState,
    principal: &Principal,
    kind: Kind,
    key: &str,
    body: Value,
    expect: Expect,
    with: Vec<WriteOp>,
) -> Result<Record, ApiError> {
    let mut ops = vec![WriteOp::Put { kind, key: key.to_owned(), body, expect }];
    ops.extend(with);
    let change = state.store.apply_audited(ops, principal.actor()).await?.into_iter().next();
    let c = change.ok_or_else(|| ApiError::Internal("a write returned no change".into()))?;
    Ok(Record { kind: c.kind, key: c.key, revision: c.revision, body: c.object })
}

/// Every template text an object holds must parse, so a broken template
/// is refused where it is written rather than found at boot time.
fn check_template_syntax(kind: Kind, key: &str, body: &Value) -> Result<(), ApiError> {
    let texts = plinth_content::pack::template_texts(kind, body);
    for (field, text) in texts {
        if let Err(e) = plinth_render::check_syntax(&format!("{kind} `{key}` {field}"), text) {
            return Err(ApiError::field(field, e.to_string()));
        }
    }
    Ok(())
}

/// What follows a write: a param written secure has its existing plain
/// values sealed at once.
async fn after_write(state: &AppState, record: &Record) {
    if record.kind == Kind::Param && record.body.get("secure") == Some(&Value::Bool(true)) {
        match crate::secure::reseal_all(state.store.as_ref(), &state.keyring).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(param = %record.key, sealed = n, "sealed the values of a param made secure"),
            Err(e) => tracing::error!(param = %record.key, error = %e, "cannot seal the values of a param made secure"),
        }
    }
}

/// Puts the key from the URL into a body that lacks it, and refuses a body
/// whose key disagrees with the URL.
fn key_from_path(kind: Kind, key: &str, body: &mut Value) -> Result<(), ApiError> {
    let field = kind.key_field();
    let Value::Object(map) = body else {
        return Err(ApiError::BadRequest(format!("{kind}: expected a JSON object")));
    };
    match map.get(field) {
        None => {
            map.insert(field.into(), Value::String(key.to_owned()));
            Ok(())
        }
        Some(Value::String(k)) if k == key => Ok(()),
        // RFC 9110 (PUT): a representation inconsistent with its target is a 409.
        Some(other) => Err(ApiError::Dangling {
            code: "key_mismatch",
            field: Some(field.into()),
            detail: format!(
                "{kind} `{key}`: the body's `{field}` ({other}) does not match the URL; the key of an object cannot change"
            ),
        }),
    }
}

/// The precondition a write uses: the client's `If-Match`, else the revision
/// we read, so a concurrent writer is never silently overwritten.
fn precondition(client: Option<Expect>, read: &Record) -> Result<Expect, ApiError> {
    match client {
        Some(Expect::Revision(r)) if r != read.revision => Err(ApiError::PreconditionFailed(format!(
            "{} `{}` is at revision {}, not {r}: reload it and retry",
            read.kind, read.key, read.revision
        ))),
        _ => Ok(Expect::Revision(read.revision)),
    }
}

/// `PUT /api/v1/{kind}/{key}`: replaces an existing object.
pub async fn replace(
    State(state): State<AppState>,
    Path((kind, key)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    check_writable(kind)?;
    check_not_builtin(kind, &key)?;
    let expect = if_match(&headers)?;
    let mut body = read_json(&headers, body).await?;
    key_from_path(kind, &key, &mut body)?;
    let current = state.store.get(kind, &key).await?.ok_or_else(|| not_found(kind, &key))?;
    let expect = precondition(expect, &current)?;
    let revoke = revocations(&state, &principal, kind, &key, &body).await?;
    let (_, value) = prepare(&state, kind, body, Some(&current.body), q.override_pack()).await?;
    check_grants(&state, &principal, kind, &key, [Some(&current.body), Some(&value)]).await?;
    let record = audited_put(&state, &principal, kind, &key, value, expect, revoke).await?;
    after_write(&state, &record).await;
    Ok(object_response(StatusCode::OK, record))
}

/// `PATCH /api/v1/{kind}/{key}`: applies a JSON merge patch (RFC 7396).
pub async fn patch(
    State(state): State<AppState>,
    Path((kind, key)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    check_writable(kind)?;
    check_not_builtin(kind, &key)?;
    let expect = if_match(&headers)?;
    let patch = read_json(&headers, body).await?;
    if !patch.is_object() {
        return Err(ApiError::BadRequest("a merge patch must be a JSON object".into()));
    }
    refuse_server_only(kind, &patch)?;
    if patch.get(kind.key_field()).is_some_and(Value::is_null) {
        return Err(ApiError::field(
            kind.key_field(),
            format!("`{}` is the key; it cannot be removed", kind.key_field()),
        ));
    }
    let current = state.store.get(kind, &key).await?.ok_or_else(|| not_found(kind, &key))?;
    let expect = precondition(expect, &current)?;
    let mut merged = current.body.clone();
    // The patch applies to what the client can see.
    redact(kind, &mut merged);
    plinth_model::merge_patch(&mut merged, &patch);
    key_from_path(kind, &key, &mut merged)?;
    let revoke = revocations(&state, &principal, kind, &key, &patch).await?;
    let (_, value) = prepare(&state, kind, merged, Some(&current.body), q.override_pack()).await?;
    check_grants(&state, &principal, kind, &key, [Some(&current.body), Some(&value)]).await?;
    let record = audited_put(&state, &principal, kind, &key, value, expect, revoke).await?;
    after_write(&state, &record).await;
    Ok(object_response(StatusCode::OK, record))
}

/// `DELETE /api/v1/{kind}/{key}`. Deleting a user revokes its tokens, and
/// deleting a machine its tokens, jobs and registration conflicts, in the
/// same transaction; an
/// object others still name is not deleted (409 naming them).
pub async fn delete(
    State(state): State<AppState>,
    Path((kind, key)): Path<(String, String)>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    let expect = if_match(&headers)?.unwrap_or(Expect::Any);
    if kind == Kind::Profile && key == "global" {
        return Err(ApiError::Conflict(
            "the `global` profile is built in and cannot be deleted; clear its params instead".into(),
        ));
    }
    if kind == Kind::User && key == principal.user.as_str() {
        return Err(ApiError::Conflict("you cannot delete the user you are logged in as".into()));
    }
    check_not_builtin(kind, &key)?;
    let current = state.store.get(kind, &key).await?;
    if let Some(current) = &current {
        check_grants(&state, &principal, kind, &key, [Some(&current.body), None]).await?;
    }
    if let Some(current) = &current
        && let Some(p) = meta::get(&current.body, meta::PACK)
    {
        return Err(ApiError::Conflict(format!(
            "{kind} `{key}` belongs to content pack `{p}`; remove the pack (`plinth content remove {p}`), or override the object first"
        )));
    }
    // What goes with the object, in the same transaction: a user's tokens;
    // a machine's tokens and its jobs (with their logs). Anything else that
    // names it makes the store refuse the delete, naming who.
    let mut ops = vec![WriteOp::Delete { kind, key: key.clone(), expect }];
    let owned: &[(Kind, &str)] = match kind {
        Kind::User => &[(Kind::Token, "user")],
        Kind::Machine => &[(Kind::Token, "machine"), (Kind::Job, "machine"), (Kind::Conflict, "machine")],
        _ => &[],
    };
    for (owned_kind, field) in owned {
        let filter = Filter { path: vec![(*field).into()], value: Value::String(key.clone()) };
        for r in state.store.list_all(*owned_kind, vec![filter]).await? {
            ops.push(WriteOp::Delete { kind: *owned_kind, key: r.key, expect: Expect::Any });
        }
    }
    let changes = state.store.apply_audited(ops, principal.actor()).await?;
    let first = changes.into_iter().next().ok_or_else(|| ApiError::Internal("delete returned no change".into()))?;
    let mut body = first.object;
    redact(kind, &mut body);
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}
