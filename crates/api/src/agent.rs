//! The workflow routes: operators assign and resume workflows; the agent on
//! a machine (with its machine token) asks for its next job, fetches the
//! job's rendered files, streams its log and reports how it ended.

use crate::auth::PeerAddr;
use crate::extract::Path;
use crate::{ApiError, AppState, Principal};
use axum::Json;
use axum::extract::State;
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

pub(crate) fn machine_id(id: &str) -> Result<MachineId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound(format!("machines `{}` not found", id.escape_debug())))
}

fn job_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound(format!("jobs `{}` not found", id.escape_debug())))
}

pub(crate) async fn body<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    b: axum::body::Body,
) -> Result<T, ApiError> {
    let raw = crate::crud::read_json_or_empty(headers, b).await?;
    match raw {
        None => Ok(T::default()),
        Some(v) if !v.is_object() => Err(ApiError::BadRequest("the request body must be a JSON object".into())),
        Some(v) => serde_json::from_value(v).map_err(|e| {
            let text = e.to_string();
            let field = ["unknown field `", "missing field `"]
                .iter()
                .find_map(|lead| text.strip_prefix(lead).and_then(|r| r.split_once('`')).map(|(f, _)| f.to_owned()));
            ApiError::Invalid { detail: format!("request body: {text}"), field }
        }),
    }
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssignRequest {
    /// The workflow to start.
    #[schemars(with = "plinth_model::Name")]
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
pub(crate) async fn audit_action(
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

pub(crate) fn machine_json(m: &Machine) -> Result<Value, ApiError> {
    let mut v = serde_json::to_value(m).map_err(|e| ApiError::Internal(e.to_string()))?;
    crate::crud::redact(Kind::Machine, &mut v);
    Ok(v)
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NextRequest {
    /// The agent's boot id (`/proc/sys/kernel/random/boot_id`).
    #[serde(default)]
    boot_id: Option<String>,
    /// Wait up to this many seconds for work (long poll), at most 60.
    #[serde(default)]
    #[schemars(range(max = 60))]
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
    if req.wait_secs > MAX_WAIT.as_secs() {
        return Err(ApiError::field("wait_secs", format!("expected at most {} seconds", MAX_WAIT.as_secs())));
    }
    let wait = Duration::from_secs(req.wait_secs);
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

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FinishRequest {
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
    // A task sets only the params it declares it reports.
    if !req.params.is_empty() {
        let task = task_of(&state, &job).await?;
        for name in req.params.keys() {
            if !task.reports.contains(name) {
                return Err(ApiError::field(
                    format!("params.{name}"),
                    format!(
                        "task `{}` does not report param `{name}`; a task sets only the params listed in its `reports`",
                        task.name
                    ),
                ));
            }
        }
    }
    let reported: Vec<String> = req.params.keys().map(ToString::to_string).collect();
    // Checked, and secure values sealed, as if written through the API.
    let mut params = json!({"params": req.params});
    crate::secure::prepare_params(&state, Kind::Machine, &job.machine.to_string(), &mut params, None).await?;
    let params: plinth_model::ParamValues =
        serde_json::from_value(params["params"].take()).map_err(|e| ApiError::Internal(e.to_string()))?;
    let outcome = Outcome { exit_code: req.exit_code, reason: req.reason, params };
    let done = Engine::new(state.store.clone()).finish(job.machine, job.id, outcome).await?;
    if !reported.is_empty() && done.state == plinth_model::JobState::Finished {
        let entry = plinth_model::AuditEntry::new(
            principal.actor(),
            "updated",
            Kind::Machine,
            job.machine.to_string(),
            None,
            None,
            format!("job {} (task `{}`) set params {}", job.id, job.task, reported.join(", ")),
        );
        state.store.append_audit(vec![entry]).await?;
    }
    Ok(Json(done))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogRequest {
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
    let outcome = state.store.append_job_log(job.id, req.seq, req.text, state.job_log_max).await?;
    Ok(Json(json!({"stored": outcome == plinth_store::LogAppend::Stored,
        "truncated": outcome == plinth_store::LogAppend::Truncated})))
}

/// The least time between two progress reports of one job on its
/// machine's timeline; one sooner is answered `recorded: false`.
pub(crate) const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(4);

/// What an agent reports of a job's progress (`POST /api/v1/jobs/{id}/progress`).
#[derive(serde::Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProgressRequest {
    /// What is being done, e.g. `image debian-12 to /dev/vda`.
    #[serde(default)]
    #[schemars(length(max = 200))]
    what: String,
    /// Bytes (or units) done so far.
    done: u64,
    /// Of how many, when known.
    #[serde(default)]
    total: Option<u64>,
    /// Bytes a second, when measured.
    #[serde(default)]
    rate: Option<u64>,
}

/// `POST /api/v1/jobs/{id}/progress`: a running job's progress, put on its
/// machine's timeline (the agent sends it at most every few seconds).
pub async fn progress(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let job = job_for(&state, &principal, &id).await?;
    let req: ProgressRequest = body(&headers, b).await?;
    if job.state != plinth_model::JobState::Running {
        return Err(ApiError::Conflict(format!("job {} is not running", job.id)));
    }
    {
        let mut seen = state.progress.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if seen.get(&job.id).is_some_and(|at| now.duration_since(*at) < PROGRESS_EVERY) {
            return Ok(Json(json!({"recorded": false})));
        }
        if seen.len() > 4096 {
            seen.retain(|_, at| now.duration_since(*at) < PROGRESS_EVERY);
        }
        seen.insert(job.id, now);
    }
    if req.what.len() > 200 || req.what.chars().any(char::is_control) {
        return Err(ApiError::field("what", "at most 200 characters, no control characters"));
    }
    let machine = crate::power::machine(&state, &job.machine.to_string()).await?;
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    let mut detail = format!("job {} (task `{}`): {}", job.id, job.task, req.what);
    detail.push_str(&format!(" {} done", mib(req.done)));
    if let Some(total) = req.total.filter(|t| *t > 0) {
        detail.push_str(&format!(" of {} ({}%)", mib(total), req.done.saturating_mul(100) / total));
    }
    if let Some(rate) = req.rate {
        detail.push_str(&format!(", {}/s", mib(rate)));
    }
    state.store.append_boot_events(vec![plinth_model::BootEvent::about(&machine, "agent", detail)]).await?;
    Ok(Json(json!({"recorded": true})))
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

/// The task a job runs, as its machine runs it: a machine pinned to an
/// earlier version of a pack runs that version's.
async fn task_of(state: &AppState, job: &Job) -> Result<plinth_model::Task, ApiError> {
    let (machine, _) = state
        .store
        .get_as::<Machine>(&job.machine.to_string())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("machines `{}` not found", job.machine)))?;
    let pinned = plinth_render::pins::pinned_objects(state.store.as_ref(), &machine)
        .await
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    if let Some((_, _, body)) = pinned.into_iter().find(|(k, key, _)| *k == Kind::Task && key == job.task.as_str()) {
        return plinth_model::decode(body).map_err(|e| ApiError::Internal(e.to_string()));
    }
    match state.store.get_as::<plinth_model::Task>(job.task.as_str()).await? {
        Some((t, _)) => Ok(t),
        None => Err(ApiError::NotFound(format!("tasks `{}` not found", job.task))),
    }
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
    let task = task_of(&state, &job).await?;
    let view = crate::params::view_for(&state, &job.machine.to_string()).await?;
    let api = match &state.api_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(|h| format!("https://{h}")).unwrap_or_default()
        }
    };
    // The agent already holds its session: a task has no token to mint, and
    // the bootenv's own arguments (which may carry one) render with a
    // placeholder.
    let placeholder: plinth_render::TokenMinter =
        std::sync::Arc::new(|| Ok(crate::params::TOKEN_PLACEHOLDER.to_owned()));
    // Secure values reach only the machine's own agent.
    let read = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    // Or to a user with an explicit claim to read them.
    let secure_param = if !view.machine.trusted {
        view.secure_withheld()
    } else if principal.machine == Some(job.machine)
        || (principal.machine.is_none() && principal.may("secure", "read", Some(&job.machine.to_string())))
    {
        view.secure_params(state.keyring.clone(), read.clone())
    } else {
        view.secure_placeholders()
    };
    // A metadata token (the seed an image deploy leaves on the disk) is
    // minted only for the machine's own agent, and only when the task asks.
    let metadata_token: plinth_render::TokenMinter = if principal.machine == Some(job.machine) {
        let (store, ttl, machine) = (state.store.clone(), state.metadata_token_ttl, job.machine);
        let (handle, actor, why) = (
            tokio::runtime::Handle::current(),
            principal.actor(),
            format!("for task `{}` of job {}", task.name, job.id),
        );
        std::sync::Arc::new(move || {
            handle
                .block_on(crate::metadata::mint(store.as_ref(), machine, ttl, &why, actor.clone()))
                .map(|(bearer, _)| bearer)
                .map_err(|e| e.to_string())
        })
    } else {
        std::sync::Arc::new(|| Ok(plinth_render::METADATA_TOKEN_PLACEHOLDER.to_owned()))
    };
    let hooks = plinth_render::Hooks {
        machine_token: Some(placeholder),
        join_token: None,
        secure_param: Some(secure_param),
        metadata_token: Some(metadata_token),
    };
    // Boot HTTP as the machine reaches it (for image URLs and metadata seeds).
    let http = crate::power::boot_base(&state, &headers).unwrap_or_default();
    let provisioner =
        plinth_render::Provisioner { api, http, ca_pem: state.agent_ca.clone(), hooks, ..Default::default() };
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

/// Most session tokens one machine keeps: each renewal makes one, and the
/// oldest beyond these are revoked with it.
const SESSIONS_KEPT: usize = 3;

/// Issues a session token for `machine`: the server's default lifetime,
/// but never past `ends` (the session's absolute end), which it carries;
/// older sessions of the machine beyond [`SESSIONS_KEPT`] are revoked in
/// the same write. Returns the bearer string and its expiry.
async fn issue_session(
    state: &AppState,
    machine: &Machine,
    description: String,
    ends: chrono::DateTime<chrono::Utc>,
) -> Result<(String, chrono::DateTime<chrono::Utc>), ApiError> {
    let now = plinth_model::now();
    if ends <= now {
        return Err(ApiError::Unauthorized(format!(
            "the session of machine `{}` ended at {ends}; it gets a new one when it boots from Plinth again",
            machine.name
        )));
    }
    let ttl = chrono::Duration::from_std(state.default_token_ttl).map_err(|e| ApiError::Internal(e.to_string()))?;
    let expires_at = (now + ttl).min(ends);
    let (mut token, bearer) =
        plinth_model::Token::mint(Name::known("machine"), description, expires_at, Some(machine.id));
    token.session_ends_at = Some(ends);
    let v = serde_json::to_value(&token).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut ops = vec![plinth_store::WriteOp::Put {
        kind: Kind::Token,
        key: token.id.to_string(),
        body: v,
        expect: plinth_store::Expect::Absent,
    }];
    let filter = plinth_store::Filter { path: vec!["machine".into()], value: json!(machine.id.to_string()) };
    let mut sessions: Vec<plinth_model::Token> = state
        .store
        .list_all(Kind::Token, vec![filter])
        .await?
        .into_iter()
        .filter_map(|r| plinth_model::decode::<plinth_model::Token>(r.body).ok())
        .filter(|t| !t.boot && !t.metadata)
        .collect();
    sessions.sort_by_key(|t| std::cmp::Reverse(t.expires_at));
    for old in sessions.iter().skip(SESSIONS_KEPT - 1) {
        ops.push(plinth_store::WriteOp::Delete {
            kind: Kind::Token,
            key: old.id.to_string(),
            expect: plinth_store::Expect::Any,
        });
    }
    state.store.apply(ops).await?;
    Ok((bearer, expires_at))
}

/// A boot credential presented for a second trade: refused (by the
/// caller), and recorded in the audit log and on the machine's timeline,
/// since the first trade may have been someone else's.
pub(crate) async fn record_reused_boot_token(
    state: &AppState,
    machine: &Machine,
    token: &plinth_model::Token,
    peer: Option<std::net::IpAddr>,
) {
    let from = peer.map(|p| p.to_string()).unwrap_or_else(|| "an unknown address".into());
    let handed = token.address.map(|a| format!(", handed to {a}")).unwrap_or_default();
    let detail = format!(
        "a second trade of boot credential {} (issued {}{handed}) was refused, from {from}: \
         the first trade may not have been this machine's; a copy of its boot file may have been taken",
        token.id,
        token.created_at.map(|t| t.to_rfc3339()).unwrap_or_default()
    );
    tracing::warn!(machine = %machine.name, %from, "{detail}");
    let entry = plinth_model::AuditEntry::new(
        format!("address:{from}"),
        "refused",
        Kind::Token,
        token.id.to_string(),
        None,
        None,
        detail.clone(),
    );
    let _ = state.store.append_audit(vec![entry]).await;
    let _ = state.store.append_boot_events(vec![plinth_model::BootEvent::about(machine, "agent", detail)]).await;
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

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JoinTokenRequest {
    /// Lifetime, seconds (default 3600).
    #[serde(default)]
    #[schemars(range(min = 1, max = 2_592_000))]
    ttl_secs: Option<u64>,
    /// How many machines it registers (default 1).
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_JOIN_USES))]
    uses: Option<u32>,
    /// For humans.
    #[serde(default)]
    description: String,
    /// The workflow the machines it creates start.
    #[serde(default)]
    #[schemars(with = "Option<plinth_model::Name>")]
    workflow: Option<String>,
    /// The profiles the machines it creates get.
    #[serde(default)]
    #[schemars(with = "Vec<plinth_model::Name>")]
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
                return Err(ApiError::dangling("workflow", format!("workflows `{n}` not found")));
            }
            Some(n)
        }
        None => None,
    };
    let mut profiles = Vec::new();
    for p in &req.profiles {
        let n: Name = p.parse().map_err(|e: String| ApiError::field("profiles", e))?;
        if state.store.get(Kind::Profile, n.as_str()).await?.is_none() {
            return Err(ApiError::dangling("profiles", format!("profiles `{n}` not found")));
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

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [
    {"required": ["macs"], "properties": {"macs": {"minItems": 1}}},
    {"required": ["system_uuid"], "properties": {"system_uuid": {
        "type": "string",
        "pattern": "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$",
        "not": {"pattern": "^([0-]*|[fF-]*|03000200-0400-0500-0006-000700080009)$"}
    }}}
]))]
pub(crate) struct WhoamiRequest {
    /// The name a new machine gets (default `node-<first MAC>`).
    #[serde(default)]
    #[schemars(with = "Option<plinth_model::Name>")]
    name: Option<String>,
    /// The machine's MACs (at most 64).
    #[serde(default)]
    #[schemars(with = "Vec<plinth_model::MacAddr>", length(max = 64))]
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

/// A discovery registration that matched `m`: the conflict an operator
/// accepted (go on), or refused (a pending one recorded now, or one an
/// operator rejected).
async fn held_registration(
    state: &AppState,
    principal: &Principal,
    m: &Machine,
    score: u32,
    claim: &plinth_engine::identity::Claim,
    peer: Option<std::net::IpAddr>,
) -> Result<plinth_model::Conflict, ApiError> {
    use plinth_model::{Conflict, ConflictState};
    let filter = plinth_store::Filter { path: vec!["token".into()], value: json!(principal.token.to_string()) };
    let held: Option<Conflict> = state
        .store
        .list_all(Kind::Conflict, vec![filter])
        .await?
        .into_iter()
        .filter_map(|r| plinth_model::decode::<Conflict>(r.body).ok())
        .find(|c| c.machine == m.id);
    let how = |c: &Conflict| {
        format!(
            "this registration matches machine `{}` ({}), which Plinth already knows; discovery does not hand over a known machine: \
             it is held as conflict {} for an operator (`plinth conflicts accept {}` if it is that machine, `reject` if not)",
            m.name, m.id, c.id, c.id
        )
    };
    match held {
        Some(c) if c.state == ConflictState::Accepted => Ok(c),
        Some(c) if c.state == ConflictState::Rejected => Err(ApiError::Forbidden(format!(
            "an operator rejected this registration as machine `{}` (conflict {})",
            m.name, c.id
        ))),
        Some(c) => Err(ApiError::Conflict(how(&c))),
        None => {
            let address = peer.map(|p| p.to_string());
            let c = Conflict {
                id: plinth_model::ConflictId::generate(),
                machine: m.id,
                token: principal.token,
                macs: claim.macs.clone(),
                system_uuid: claim.system_uuid.clone(),
                serial: claim.serial.clone(),
                score,
                address: address.clone(),
                state: ConflictState::Pending,
                detail: format!(
                    "a discovery registration from {} matched machine `{}` with score {score}",
                    address.as_deref().unwrap_or("an unknown address"),
                    m.name
                ),
                meta: Default::default(),
                revision: 0,
                created_at: None,
                updated_at: None,
            };
            let body = serde_json::to_value(&c).map_err(|e| ApiError::Internal(e.to_string()))?;
            let op = plinth_store::WriteOp::Put {
                kind: Kind::Conflict,
                key: c.id.to_string(),
                body,
                expect: plinth_store::Expect::Absent,
            };
            state.store.apply_audited(vec![op], format!("token:{}", principal.token)).await?;
            let event = format!("{}; held as conflict {} for an operator", c.detail, c.id);
            let _ = state.store.append_boot_events(vec![plinth_model::BootEvent::about(m, "agent", event)]).await;
            Err(ApiError::Conflict(how(&c)))
        }
    }
}

/// Whether the site's rule (`discovery-accept-macs` on the `global`
/// profile: MAC patterns, `*` for any run of characters) trusts a machine
/// discovery registers with `macs`.
async fn auto_accepted(state: &AppState, macs: &[plinth_model::MacAddr]) -> Result<bool, ApiError> {
    let Some((global, _)) = state.store.get_as::<plinth_model::Profile>("global").await? else { return Ok(false) };
    let name: plinth_model::ParamName = ACCEPT_RULE.parse().map_err(ApiError::Internal)?;
    let patterns: Vec<String> =
        global.params.get(&name).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    // MACs are written in lower case; so are the patterns, for matching.
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_ascii_lowercase()).collect();
    Ok(macs.iter().any(|mac| patterns.iter().any(|p| plinth_model::pattern_matches(p, &mac.to_string()))))
}

/// The param (on `global`) whose MAC patterns trust what discovery finds.
pub const ACCEPT_RULE: &str = "discovery-accept-macs";

/// `POST /api/v1/machines/whoami`: a machine says who it is (MACs, system
/// UUID, serial; never its IP) and gets its Machine, matched by the scoring
/// in `plinth_engine::identity` or created, and a machine token for its
/// agent. With a machine token it is simply that machine.
pub async fn whoami(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    PeerAddr(peer): PeerAddr,
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
    let matched = match_machine(&state, &claim).await?;
    // A discovery join token (any unknown machine's boot script has one)
    // never hands over a machine Plinth knows: the registration is held as
    // a conflict until an operator says whether it is that machine.
    let mut settled: Option<plinth_model::Conflict> = None;
    if principal.discovery
        && let Some((m, score)) = &matched
    {
        settled = Some(held_registration(&state, &principal, m, *score, &claim, peer).await?);
    }
    let join = if principal.join { Some(use_join_token(&state, principal.token).await?) } else { None };
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
            // A machine discovery finds is not trusted with secrets until
            // an operator, or the site's rule, accepts it.
            let trusted = !principal.discovery || auto_accepted(&state, &macs).await?;
            let v = json!({"name": name, "macs": macs, "bootenv": "local", "profiles": profiles,
                "arch": arch, "inventory": inventory, "trusted": trusted});
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
    if let Some(c) = settled {
        // Accepted and used: done with.
        let op = plinth_store::WriteOp::Delete {
            kind: Kind::Conflict,
            key: c.id.to_string(),
            expect: plinth_store::Expect::Any,
        };
        state.store.apply_audited(vec![op], format!("machine:{}", machine.id)).await?;
    }
    // The agent's session: scoped to this machine.
    let max = chrono::Duration::from_std(state.machine_session_max).map_err(|e| ApiError::Internal(e.to_string()))?;
    let description = format!("agent session for {}, from whoami", machine.name);
    let (bearer, expires_at) = issue_session(&state, &machine, description, plinth_model::now() + max).await?;
    Ok(Json(json!({"machine": machine_json(&machine)?, "created": created, "score": score, "token": bearer,
        "expires_at": expires_at})))
}

/// The machine `claim` names best (by the identity score `whoami` uses):
/// candidates share a MAC (an index lookup each) or the system UUID.
pub(crate) async fn match_machine(
    state: &AppState,
    claim: &plinth_engine::identity::Claim,
) -> Result<Option<(Machine, u32)>, ApiError> {
    let mut candidates: Vec<Machine> = Vec::new();
    let mut filters: Vec<plinth_store::Filter> = claim
        .macs
        .iter()
        .map(|m| plinth_store::Filter { path: vec!["macs".into()], value: json!(m.to_string()) })
        .collect();
    if let Some(u) = &claim.system_uuid {
        for value in [u.clone(), u.to_ascii_lowercase()] {
            filters.push(plinth_store::Filter {
                path: vec!["inventory".into(), "system".into(), "uuid".into()],
                value: json!(value),
            });
        }
    }
    for f in filters {
        for r in state.store.list_all(Kind::Machine, vec![f]).await? {
            let m: Machine = plinth_model::decode(r.body).map_err(|e| ApiError::Internal(e.to_string()))?;
            if !candidates.iter().any(|c| c.id == m.id) {
                candidates.push(m);
            }
        }
    }
    match plinth_engine::identity::best(&candidates, claim) {
        Ok(found) => Ok(found.map(|(m, s)| (m.clone(), s))),
        Err(tied) => {
            let names: Vec<String> = tied.iter().map(|m| format!("{} ({})", m.name, m.id)).collect();
            Err(ApiError::Conflict(format!(
                "these machines match equally well: {}; remove the duplicate or the shared MAC",
                names.join(", ")
            )))
        }
    }
}

/// `POST /api/v1/machines/{id}/session`: the machine's agent trades the
/// boot credential its boot file carried for a session token (once: a
/// second trade is refused and recorded), or renews its session. A
/// session never lasts past its absolute end, set when the boot credential
/// was traded (or the machine registered). Only the machine's own token
/// may call this.
pub async fn session(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    PeerAddr(peer): PeerAddr,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = machine_id(&id)?;
    if principal.machine != Some(id) {
        return Err(ApiError::Forbidden(
            "a machine session is only for the machine's own agent, which trades its boot credential for it".into(),
        ));
    }
    let (m, _) = state
        .store
        .get_as::<Machine>(&id.to_string())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("machines `{id}` not found")))?;
    let now = plinth_model::now();
    let max = chrono::Duration::from_std(state.machine_session_max).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (ends, description) = if principal.boot {
        // First come, first served: the trade is one conditional write.
        let traded = state
            .store
            .update_as::<plinth_model::Token, ApiError, _>(&principal.token.to_string(), |t| {
                if t.uses_left == Some(0) {
                    return Err(ApiError::Unauthorized("this boot credential was already traded".into()));
                }
                t.uses_left = Some(0);
                Ok(())
            })
            .await;
        let token = match traded {
            Ok(t) => t,
            Err(ApiError::Unauthorized(_)) => {
                if let Some((t, _)) = state.store.get_as::<plinth_model::Token>(&principal.token.to_string()).await? {
                    record_reused_boot_token(&state, &m, &t, peer).await;
                }
                return Err(ApiError::Unauthorized(
                    "this boot credential was already traded for a session; it is good for nothing else".into(),
                ));
            }
            Err(e) => return Err(e),
        };
        let from = peer.map(|p| p.to_string()).unwrap_or_default();
        let event = format!("boot credential {} traded for a session, from {from}", token.id);
        let _ = state.store.append_boot_events(vec![plinth_model::BootEvent::about(&m, "agent", event)]).await;
        (now + max, format!("agent session for {}, from its boot credential", m.name))
    } else {
        (principal.session_ends_at.unwrap_or(now + max), format!("agent session for {}, renewed", m.name))
    };
    let (bearer, expires_at) = issue_session(&state, &m, description, ends).await?;
    Ok(Json(json!({"token": bearer, "expires_at": expires_at, "session_ends_at": ends})))
}

/// `POST /api/v1/machines/{id}/accept`: the site trusts the machine (one
/// discovery registered) with its secrets from now on.
pub async fn accept_machine(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = machine_id(&id)?;
    let m = update_machine(&state, id, |m| m.trusted = true).await?;
    let out = machine_json(&m)?;
    audit_action(&state, &principal, &m, &out, "accepted: trusted with the site's secrets".into()).await?;
    Ok(Json(out))
}

/// Sets a pending conflict's state.
async fn settle_conflict(
    state: &AppState,
    principal: &Principal,
    id: &str,
    to: plinth_model::ConflictState,
) -> Result<Json<Value>, ApiError> {
    let conflict = state
        .store
        .update_as::<plinth_model::Conflict, ApiError, _>(id, |c| {
            if c.state != plinth_model::ConflictState::Pending {
                return Err(ApiError::Conflict(format!("conflicts `{id}` is already {:?}", c.state).to_lowercase()));
            }
            c.state = to;
            Ok(())
        })
        .await?;
    let after = serde_json::to_value(&conflict).map_err(|e| ApiError::Internal(e.to_string()))?;
    let entry = plinth_model::AuditEntry::new(
        principal.actor(),
        "updated",
        Kind::Conflict,
        id.to_owned(),
        None,
        Some(after.clone()),
        format!("{:?} the registration of machine {}", to, conflict.machine).to_lowercase(),
    );
    state.store.append_audit(vec![entry]).await?;
    Ok(Json(after))
}

/// `POST /api/v1/conflicts/{id}/accept`: the registrant is the machine it
/// matched; its next registration gets that machine's session.
pub async fn accept_conflict(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    settle_conflict(&state, &principal, &id, plinth_model::ConflictState::Accepted).await
}

/// `POST /api/v1/conflicts/{id}/reject`: the registrant is not that
/// machine; it is refused from now on.
pub async fn reject_conflict(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    settle_conflict(&state, &principal, &id, plinth_model::ConflictState::Rejected).await
}
