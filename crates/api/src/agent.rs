//! The workflow routes: operators assign and resume workflows; the agent on
//! a machine (with its machine token) asks for its next job, fetches the
//! job's rendered files, streams its log and reports how it ended.

use crate::{ApiError, AppState, Principal};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use plinth_engine::{Engine, EngineError, Next, Outcome};
use plinth_model::{Arch, Job, JobId, Kind, Machine, MachineId, Name, ParamValues};
use plinth_store::StoreExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// Longest a `next` request waits for work.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Largest log chunk accepted.
pub const MAX_LOG_CHUNK: usize = 256 * 1024;

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::NotFound(m) => ApiError::NotFound(m),
            EngineError::Invalid(m) => ApiError::BadRequest(m),
            EngineError::Conflict(m) => ApiError::Conflict(m),
            EngineError::Store(s) => s.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn machine_id(id: &str) -> Result<MachineId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound(format!("machines `{}` not found", id.escape_debug())))
}

fn job_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound(format!("jobs `{}` not found", id.escape_debug())))
}

async fn body<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    b: axum::body::Body,
) -> Result<T, ApiError> {
    let raw = crate::crud::read_json_or_empty(headers, b).await?;
    match raw {
        None => Ok(T::default()),
        Some(v) => serde_json::from_value(v).map_err(|e| ApiError::BadRequest(format!("request body: {e}"))),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AssignRequest {
    workflow: String,
}

/// `POST /api/v1/machines/{id}/workflow`: start a workflow on a machine.
pub async fn assign(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let req: AssignRequest = body(&headers, b).await?;
    let wf: Name = req.workflow.parse().map_err(|e: String| ApiError::field("workflow", e))?;
    let m = Engine::new(state.store.clone()).assign(machine_id(&id)?, &wf).await?;
    let out = machine_json(&m)?;
    audit_action(&state, &principal, &m, &out, format!("workflow `{wf}` started")).await?;
    Ok(Json(out))
}

/// `POST /api/v1/machines/{id}/resume`: go on after a failure or a pause.
pub async fn resume(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = Engine::new(state.store.clone()).resume(machine_id(&id)?).await?;
    let out = machine_json(&m)?;
    audit_action(&state, &principal, &m, &out, "workflow resumed".into()).await?;
    Ok(Json(out))
}

/// Records an operator's action on a machine (the engine made the change).
async fn audit_action(
    state: &AppState,
    principal: &Principal,
    m: &Machine,
    after: &Value,
    detail: String,
) -> Result<(), ApiError> {
    let entry = plinth_model::AuditEntry::new(
        principal.actor(),
        "updated",
        Kind::Machine,
        m.id.to_string(),
        None,
        Some(after.clone()),
        detail,
    );
    Ok(state.store.append_audit(vec![entry]).await?)
}

fn machine_json(m: &Machine) -> Result<Value, ApiError> {
    let mut v = serde_json::to_value(m).map_err(|e| ApiError::Internal(e.to_string()))?;
    crate::crud::redact(Kind::Machine, &mut v);
    Ok(v)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NextRequest {
    /// The agent's boot id (`/proc/sys/kernel/random/boot_id`).
    #[serde(default)]
    boot_id: Option<String>,
    /// Wait up to this many seconds for work (long poll), at most 60.
    #[serde(default)]
    wait_secs: u64,
}

/// `POST /api/v1/machines/{id}/next`: what the agent does now: `run` a job
/// (the same one until it is started), `reboot`, or `wait`.
pub async fn next(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let req: NextRequest = body(&headers, b).await?;
    if req.boot_id.as_ref().is_some_and(|b| b.len() > 64) {
        return Err(ApiError::field("boot_id", "at most 64 characters"));
    }
    let id = machine_id(&id)?;
    let engine = Engine::new(state.store.clone());
    let wait = Duration::from_secs(req.wait_secs).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before looking, so a change between the look and the wait
    // is not missed.
    let mut changes = state.store.subscribe();
    loop {
        let next = engine.next(id, req.boot_id.as_deref()).await?;
        if !matches!(next, Next::Wait { .. }) || tokio::time::Instant::now() >= deadline {
            return Ok(Json(serde_json::to_value(&next).map_err(|e| ApiError::Internal(e.to_string()))?));
        }
        // Wait for a change to this machine (an operator assigning or
        // resuming a workflow), or the deadline.
        let key = id.to_string();
        let woke = tokio::time::timeout_at(deadline, async {
            loop {
                match changes.recv().await {
                    Ok(c) if c.kind == Kind::Machine && c.key == key => return,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                    }
                }
            }
        })
        .await;
        if woke.is_err() {
            let next = engine.next(id, req.boot_id.as_deref()).await?;
            return Ok(Json(serde_json::to_value(&next).map_err(|e| ApiError::Internal(e.to_string()))?));
        }
    }
}

/// The job, if the caller may act on it: its machine's token, or a user.
async fn job_for(state: &AppState, principal: &Principal, id: &str) -> Result<Job, ApiError> {
    let id = job_id(id)?;
    let not_found = || ApiError::NotFound(format!("jobs `{id}` not found"));
    let record = state.store.get(Kind::Job, &id.to_string()).await?.ok_or_else(not_found)?;
    let job: Job = plinth_model::decode(record.body).map_err(|e| ApiError::Internal(e.to_string()))?;
    if principal.machine.is_some_and(|m| m != job.machine) {
        return Err(not_found());
    }
    Ok(job)
}

/// `POST /api/v1/jobs/{id}/start`.
pub async fn start(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let job = job_for(&state, &principal, &id).await?;
    Ok(Json(Engine::new(state.store.clone()).start(job.machine, job.id).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FinishRequest {
    exit_code: i32,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    params: ParamValues,
}

/// `POST /api/v1/jobs/{id}/finish`: how the job ended; `params` are set on
/// the machine when it succeeded (each must be a defined param and fit its
/// schema).
pub async fn finish(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<Json<Job>, ApiError> {
    let job = job_for(&state, &principal, &id).await?;
    let req: FinishRequest = body(&headers, b).await?;
    if req.reason.len() > 4096 {
        return Err(ApiError::field("reason", "at most 4096 bytes"));
    }
    // Checked, and secure values sealed, as if written through the API.
    let mut params = json!({"params": req.params});
    crate::secure::prepare_params(&state, Kind::Machine, &job.machine.to_string(), &mut params, None).await?;
    let params: plinth_model::ParamValues =
        serde_json::from_value(params["params"].take()).map_err(|e| ApiError::Internal(e.to_string()))?;
    let outcome = Outcome { exit_code: req.exit_code, reason: req.reason, params };
    Ok(Json(Engine::new(state.store.clone()).finish(job.machine, job.id, outcome).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogRequest {
    seq: u64,
    text: String,
}

/// `POST /api/v1/jobs/{id}/log`: chunk `seq` of the job's output; a chunk
/// resent with the same `seq` is stored once.
pub async fn append_log(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let job = job_for(&state, &principal, &id).await?;
    let req: LogRequest = body(&headers, b).await?;
    if req.text.len() > MAX_LOG_CHUNK {
        return Err(ApiError::field("text", format!("a chunk is at most {MAX_LOG_CHUNK} bytes")));
    }
    let stored = state.store.append_job_log(job.id, req.seq, req.text).await?;
    Ok(Json(json!({"stored": stored})))
}

/// `GET /api/v1/jobs/{id}/log`: the job's output so far, as text.
pub async fn log(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    let job = job_for(&state, &principal, &id).await?;
    let text = state.store.job_log(job.id).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// `GET /api/v1/jobs/{id}/files`: the job's task rendered for its machine:
/// `[{name, path, contents}]`, scripts (no path) to run in order and files
/// to write.
pub async fn files(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let job = job_for(&state, &principal, &id).await?;
    let task: plinth_model::Task = match state.store.get(Kind::Task, job.task.as_str()).await? {
        Some(r) => plinth_model::decode(r.body).map_err(|e| ApiError::Internal(e.to_string()))?,
        None => return Err(ApiError::NotFound(format!("tasks `{}` not found", job.task))),
    };
    let view = crate::params::view_for(&state, &job.machine.to_string()).await?;
    // A machine pinned to an earlier version of a pack runs that version's task.
    let pinned = plinth_render::pins::pinned_objects(state.store.as_ref(), &view.machine)
        .await
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    let task = match pinned.into_iter().find(|(k, key, _)| *k == Kind::Task && key == job.task.as_str()) {
        Some((_, _, body)) => plinth_model::decode(body).map_err(|e| ApiError::Internal(e.to_string()))?,
        None => task,
    };
    let api =
        headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(|h| format!("https://{h}")).unwrap_or_default();
    // The agent already holds its session: a task has no token to mint, and
    // the bootenv's own arguments (which may carry one) render with a
    // placeholder.
    let placeholder: plinth_render::TokenMinter =
        std::sync::Arc::new(|| Ok(crate::params::TOKEN_PLACEHOLDER.to_owned()));
    // Secure values reach only the machine's own agent.
    let read = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    // Or to a user with an explicit claim to read them.
    let secure_param = if principal.machine == Some(job.machine)
        || (principal.machine.is_none() && principal.may("secure", "read", Some(&job.machine.to_string())))
    {
        view.secure_params(state.keyring.clone(), read.clone())
    } else {
        view.secure_placeholders()
    };
    let hooks =
        plinth_render::Hooks { machine_token: Some(placeholder), join_token: None, secure_param: Some(secure_param) };
    let provisioner = plinth_render::Provisioner { api, ca_pem: state.agent_ca.clone(), hooks, ..Default::default() };
    let task_name = task.name.to_string();
    let rendered = tokio::task::spawn_blocking(move || view.render_task(&task, &provisioner))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    let read: Vec<String> = read.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
    if !read.is_empty() {
        crate::secure::audit_read(
            &state,
            principal.actor(),
            job.machine,
            format!("secure params {} rendered into task `{task_name}` of job {}", read.join(", "), job.id),
        )
        .await?;
    }
    Ok(Json(Value::Array(
        rendered
            .into_iter()
            .map(|(name, path, contents)| json!({"name": name, "path": path, "contents": contents}))
            .collect(),
    )))
}

/// `POST /api/v1/machines/{id}/inventory`: the agent reports the hardware
/// it found; stored as the machine's `inventory`.
pub async fn inventory(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let id = machine_id(&id)?;
    let Some(inv) = crate::crud::read_json_or_empty(&headers, b).await? else {
        return Err(ApiError::BadRequest("the request needs the inventory as a JSON object".into()));
    };
    if !inv.is_object() {
        return Err(ApiError::BadRequest("the inventory must be a JSON object".into()));
    }
    let m = update_machine(&state, id, |m| set_inventory(m, &inv)).await?;
    let gib = inv["memory_bytes"].as_u64().map(|b| b as f64 / (1u64 << 30) as f64).unwrap_or(0.0);
    let detail = format!(
        "agent reported inventory: {} CPUs, {gib:.1} GiB, {} disks, {} NICs, {} boot",
        inv["cpu"]["count"].as_u64().unwrap_or(0),
        inv["disks"].as_array().map_or(0, Vec::len),
        inv["nics"].as_array().map_or(0, Vec::len),
        inv["boot_mode"].as_str().unwrap_or("?")
    );
    let _ = state.store.append_boot_events(vec![plinth_model::BootEvent::about(&m, "agent", detail)]).await;
    Ok(Json(machine_json(&m)?))
}

/// Stores an agent's inventory; the architecture it names becomes the
/// machine's, which picks bootenv variants and the agent download.
fn set_inventory(m: &mut Machine, inv: &Value) {
    m.inventory = inv.clone();
    if let Some(arch) = Arch::from_inventory(inv) {
        m.arch = arch;
    }
}

/// Applies `change` to the stored machine, conditioned on the revision it
/// read, so a concurrent write (the workflow engine's) is never overwritten.
async fn update_machine(
    state: &AppState,
    id: MachineId,
    change: impl Fn(&mut Machine) + Send + Sync,
) -> Result<Machine, ApiError> {
    state
        .store
        .update_as::<Machine, ApiError, _>(&id.to_string(), |m| {
            change(m);
            Ok(())
        })
        .await
}

/// Issues a machine token (the server's default lifetime) and stores it;
/// returns the bearer string and its expiry.
async fn issue_machine_token(
    state: &AppState,
    machine: &Machine,
    description: String,
) -> Result<(String, chrono::DateTime<chrono::Utc>), ApiError> {
    let expires_at = plinth_model::now()
        + chrono::Duration::from_std(state.default_token_ttl).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (token, bearer) = plinth_model::Token::mint(Name::known("machine"), description, expires_at, Some(machine.id));
    let v = serde_json::to_value(&token).map_err(|e| ApiError::Internal(e.to_string()))?;
    state.store.create(Kind::Token, &token.id.to_string(), v).await?;
    Ok((bearer, expires_at))
}

/// `GET /api/v1/machines/{id}/timeline`: everything recorded about a
/// machine, oldest first: DHCP, TFTP and HTTP requests from its MACs
/// (renders included), agent check-ins, jobs handed out, started and ended,
/// stage and bootenv changes.
pub async fn timeline(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = machine_id(&id)?;
    let record = state
        .store
        .get(Kind::Machine, &id.to_string())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("machines `{id}` not found")))?;
    let m: Machine = plinth_model::decode(record.body).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut events = std::collections::BTreeMap::new();
    let limit = plinth_store::MAX_PAGE;
    let mut queries = vec![plinth_store::BootEventQuery { machine: Some(id), limit, ..Default::default() }];
    queries.extend(m.macs.iter().map(|mac| plinth_store::BootEventQuery {
        mac: Some(*mac),
        limit,
        ..Default::default()
    }));
    for q in queries {
        let mut q = q;
        loop {
            let page = state.store.boot_events(&q).await?;
            let last = page.last().map(|e| e.id);
            let full = page.len() >= limit;
            for e in page {
                events.insert(e.id, e);
            }
            match (full, last) {
                (true, Some(l)) => q.after = Some(l),
                _ => break,
            }
        }
    }
    // Boot services record in batches, so ids follow storage order; the
    // timeline follows when things happened.
    let mut items: Vec<plinth_model::BootEvent> = events.into_values().collect();
    items.sort_by_key(|e| (e.at, e.id));
    Ok(Json(json!({"items": items})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JoinTokenRequest {
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    uses: Option<u32>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    workflow: Option<String>,
    #[serde(default)]
    profiles: Vec<String>,
}

/// Most registrations one join token may allow.
pub const MAX_JOIN_USES: u32 = 100_000;

/// `POST /api/v1/join-tokens`: a token that can only register machines
/// (`uses` times, default 1, for `ttl_secs`, default 1 h), optionally
/// giving the machines it creates profiles and a workflow.
pub async fn create_join_token(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<axum::response::Response, ApiError> {
    if principal.machine.is_some() || principal.join {
        return Err(ApiError::Forbidden("only a user's token can create join tokens".into()));
    }
    let req: JoinTokenRequest = body(&headers, b).await?;
    let ttl = Duration::from_secs(req.ttl_secs.unwrap_or(3600));
    if ttl.is_zero() || ttl > crate::auth::MAX_TOKEN_TTL {
        return Err(ApiError::field(
            "ttl_secs",
            format!("expected 1 to {} seconds", crate::auth::MAX_TOKEN_TTL.as_secs()),
        ));
    }
    let uses = req.uses.unwrap_or(1);
    if uses == 0 || uses > MAX_JOIN_USES {
        return Err(ApiError::field("uses", format!("expected 1 to {MAX_JOIN_USES}")));
    }
    let workflow = match &req.workflow {
        Some(w) => {
            let n: Name = w.parse().map_err(|e: String| ApiError::field("workflow", e))?;
            if state.store.get(Kind::Workflow, n.as_str()).await?.is_none() {
                return Err(ApiError::field("workflow", format!("workflows `{n}` not found")));
            }
            Some(n)
        }
        None => None,
    };
    let mut profiles = Vec::new();
    for p in &req.profiles {
        let n: Name = p.parse().map_err(|e: String| ApiError::field("profiles", e))?;
        if state.store.get(Kind::Profile, n.as_str()).await?.is_none() {
            return Err(ApiError::field("profiles", format!("profiles `{n}` not found")));
        }
        profiles.push(n);
    }
    let expires_at =
        plinth_model::now() + chrono::Duration::from_std(ttl).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (mut token, bearer) = plinth_model::Token::mint(principal.user.clone(), req.description, expires_at, None);
    token.join = true;
    token.uses_left = Some(uses);
    token.join_workflow = workflow;
    token.join_profiles = profiles;
    let v = serde_json::to_value(&token).map_err(|e| ApiError::Internal(e.to_string()))?;
    state.store.create(Kind::Token, &token.id.to_string(), v).await?;
    let out = json!({"token": bearer, "id": token.id, "expires_at": expires_at, "uses": uses});
    Ok((axum::http::StatusCode::CREATED, Json(out)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WhoamiRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    macs: Vec<String>,
    #[serde(default)]
    system_uuid: Option<String>,
    #[serde(default)]
    serial: Option<String>,
    #[serde(default)]
    inventory: Option<Value>,
}

/// Takes one use of a join token; refused when none is left.
async fn use_join_token(state: &AppState, id: plinth_model::TokenId) -> Result<plinth_model::Token, ApiError> {
    let taken = state
        .store
        .update_as::<plinth_model::Token, ApiError, _>(&id.to_string(), |t| match t.uses_left.unwrap_or(0) {
            0 => Err(ApiError::Unauthorized("this join token has no uses left".into())),
            left => {
                t.uses_left = Some(left - 1);
                Ok(())
            }
        })
        .await;
    match taken {
        Err(ApiError::NotFound(_)) => Err(ApiError::Unauthorized("invalid, expired or revoked token".into())),
        other => other,
    }
}

/// `POST /api/v1/machines/whoami`: a machine says who it is (MACs, system
/// UUID, serial; never its IP) and gets its Machine, matched by the scoring
/// in `plinth_engine::identity` or created, and a machine token for its
/// agent. With a machine token it is simply that machine.
pub async fn whoami(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    if let Some(id) = principal.machine {
        let r = state
            .store
            .get(Kind::Machine, &id.to_string())
            .await?
            .ok_or_else(|| ApiError::NotFound("machine".into()))?;
        let m: Machine = plinth_model::decode(r.body).map_err(|e| ApiError::Internal(e.to_string()))?;
        return Ok(Json(json!({"machine": machine_json(&m)?, "created": false})));
    }
    let req: WhoamiRequest = body(&headers, b).await?;
    let mut macs = Vec::new();
    for (i, m) in req.macs.iter().enumerate() {
        let mac: plinth_model::MacAddr = m.parse().map_err(|e: String| ApiError::field(format!("macs[{i}]"), e))?;
        if !macs.contains(&mac) {
            macs.push(mac);
        }
    }
    if macs.len() > 64 {
        return Err(ApiError::field("macs", "at most 64"));
    }
    let claim = plinth_engine::identity::Claim {
        macs: macs.clone(),
        system_uuid: req.system_uuid.clone(),
        serial: req.serial.clone(),
    };
    if claim.macs.is_empty() && claim.uuid().is_none() {
        return Err(ApiError::field("macs", "give at least one MAC address or a system UUID"));
    }
    let join = if principal.join { Some(use_join_token(&state, principal.token).await?) } else { None };
    // Candidates: machines sharing a MAC (an index lookup each) or the UUID.
    let mut candidates: Vec<Machine> = Vec::new();
    let mut filters: Vec<plinth_store::Filter> =
        macs.iter().map(|m| plinth_store::Filter { path: vec!["macs".into()], value: json!(m.to_string()) }).collect();
    if let Some(u) = &req.system_uuid {
        filters.push(plinth_store::Filter {
            path: vec!["inventory".into(), "system".into(), "uuid".into()],
            value: json!(u),
        });
        filters.push(plinth_store::Filter {
            path: vec!["inventory".into(), "system".into(), "uuid".into()],
            value: json!(u.to_ascii_lowercase()),
        });
    }
    for f in filters {
        for r in state.store.list_all(Kind::Machine, vec![f]).await? {
            let m: Machine = plinth_model::decode(r.body).map_err(|e| ApiError::Internal(e.to_string()))?;
            if !candidates.iter().any(|c| c.id == m.id) {
                candidates.push(m);
            }
        }
    }
    let matched = match plinth_engine::identity::best(&candidates, &claim) {
        Ok(found) => found.map(|(m, s)| (m.clone(), s)),
        Err(tied) => {
            let names: Vec<String> = tied.iter().map(|m| format!("{} ({})", m.name, m.id)).collect();
            return Err(ApiError::Conflict(format!(
                "these machines match equally well: {}; remove the duplicate or the shared MAC",
                names.join(", ")
            )));
        }
    };
    let (machine, created, score) = match matched {
        Some((m, score)) => {
            let m = update_machine(&state, m.id, |m| {
                for mac in &macs {
                    if !m.macs.contains(mac) {
                        m.macs.push(*mac);
                    }
                }
                if let Some(inv) = &req.inventory {
                    set_inventory(m, inv);
                }
            })
            .await?;
            (m, false, score)
        }
        None => {
            let name = match &req.name {
                Some(n) => n.clone(),
                None => macs
                    .first()
                    .map(|m| format!("node-{}", m.to_string().replace(':', "")))
                    .unwrap_or_else(|| "node".into()),
            };
            let profiles = join.as_ref().map(|t| t.join_profiles.clone()).unwrap_or_default();
            let inventory = req.inventory.clone().unwrap_or(json!({}));
            let arch = Arch::from_inventory(&inventory).unwrap_or_default();
            let v = json!({"name": name, "macs": macs, "bootenv": "local", "profiles": profiles,
                "arch": arch, "inventory": inventory});
            let (key, v) =
                plinth_model::normalize(Kind::Machine, v).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            state.store.create(Kind::Machine, &key, v.clone()).await?;
            let m: Machine = plinth_model::decode(v).map_err(|e| ApiError::Internal(e.to_string()))?;
            (m, true, 0)
        }
    };
    let detail = if created {
        "registered: a new machine".to_owned()
    } else {
        format!("registered: matched an existing machine (score {score})")
    };
    let event = plinth_model::BootEvent::about(&machine, "agent", detail);
    let _ = state.store.append_boot_events(vec![event]).await;
    let machine = match join.as_ref().and_then(|t| t.join_workflow.clone()) {
        Some(wf) if created => Engine::new(state.store.clone()).assign(machine.id, &wf).await?,
        _ => machine,
    };
    // The agent's token: scoped to this machine.
    let (bearer, expires_at) =
        issue_machine_token(&state, &machine, format!("agent session for {}, from whoami", machine.name)).await?;
    Ok(Json(json!({"machine": machine_json(&machine)?, "created": created, "score": score, "token": bearer,
        "expires_at": expires_at})))
}

/// `POST /api/v1/machines/{id}/session`: a fresh machine token for the
/// machine (valid for the server's default token lifetime), for an agent to
/// trade the short-lived token of its boot file for, and to renew before
/// it expires.
pub async fn session(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = machine_id(&id)?;
    if principal.join {
        return Err(ApiError::Forbidden("a join token cannot open sessions".into()));
    }
    let r = state
        .store
        .get(Kind::Machine, &id.to_string())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("machines `{id}` not found")))?;
    let m: Machine = plinth_model::decode(r.body).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (bearer, expires_at) = issue_machine_token(&state, &m, format!("agent session for {}", m.name)).await?;
    Ok(Json(json!({"token": bearer, "expires_at": expires_at})))
}
