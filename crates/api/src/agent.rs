//! The workflow routes: operators assign and resume workflows; the agent on
//! a machine (with its machine token) asks for its next job, fetches the
//! job's rendered files, streams its log and reports how it ended.

use crate::{ApiError, AppState, Principal};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use plinth_engine::{Engine, EngineError, Next, Outcome};
use plinth_model::{Job, JobId, Kind, Machine, MachineId, Name, ParamValues};
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
    Path(id): Path<String>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let req: AssignRequest = body(&headers, b).await?;
    let wf: Name = req.workflow.parse().map_err(|e: String| ApiError::field("workflow", e))?;
    let m = Engine::new(state.store.clone()).assign(machine_id(&id)?, &wf).await?;
    Ok(Json(machine_json(&m)?))
}

/// `POST /api/v1/machines/{id}/resume`: go on after a failure or a pause.
pub async fn resume(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let m = Engine::new(state.store.clone()).resume(machine_id(&id)?).await?;
    Ok(Json(machine_json(&m)?))
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
    let params = json!({"params": req.params});
    crate::crud::check_param_values(&state, Kind::Machine, &job.machine.to_string(), &params).await?;
    let outcome = Outcome { exit_code: req.exit_code, reason: req.reason, params: req.params };
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
    let api =
        headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(|h| format!("https://{h}")).unwrap_or_default();
    let provisioner = plinth_render::Provisioner { api, ..Default::default() };
    let rendered = tokio::task::spawn_blocking(move || view.render_task(&task, &provisioner))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
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
    for _ in 0..20 {
        let record = state
            .store
            .get(Kind::Machine, &id.to_string())
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("machines `{id}` not found")))?;
        let mut m: Machine = plinth_model::decode(record.body).map_err(|e| ApiError::Internal(e.to_string()))?;
        m.inventory = inv.clone();
        let body = serde_json::to_value(&m).map_err(|e| ApiError::Internal(e.to_string()))?;
        match state
            .store
            .put(Kind::Machine, &id.to_string(), body, plinth_store::Expect::Revision(record.revision))
            .await
        {
            Ok(_) => {
                let gib = inv["memory_bytes"].as_u64().map(|b| b as f64 / (1u64 << 30) as f64).unwrap_or(0.0);
                let detail = format!(
                    "agent reported inventory: {} CPUs, {gib:.1} GiB, {} disks, {} NICs, {} boot",
                    inv["cpu"]["count"].as_u64().unwrap_or(0),
                    inv["disks"].as_array().map_or(0, Vec::len),
                    inv["nics"].as_array().map_or(0, Vec::len),
                    inv["boot_mode"].as_str().unwrap_or("?")
                );
                let event = plinth_model::BootEvent {
                    id: 0,
                    at: plinth_model::now(),
                    mac: m.macs.first().copied(),
                    address: None,
                    machine: Some(m.id),
                    service: "agent".into(),
                    detail,
                };
                let _ = state.store.append_boot_events(vec![event]).await;
                return Ok(Json(machine_json(&m)?));
            }
            Err(plinth_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict("the machine kept changing; try again".into()))
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
