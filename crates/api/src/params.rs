//! `GET /api/v1/machines/{id}/params[?explain=true]`: a machine's resolved
//! params, and with `explain`, where each value came from and what it shadows.

use crate::extract::{Path, Query};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use plinth_model::{Kind, Machine};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ParamsQuery {
    #[serde(default)]
    explain: bool,
}

use plinth_secrets::REDACTED;

/// Loads a machine and what rendering for it reads.
pub(crate) async fn view_for(state: &AppState, id: &str) -> Result<plinth_render::MachineView, ApiError> {
    let record = state
        .store
        .get(Kind::Machine, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("machines `{}` not found", id.escape_debug())))?;
    let machine: Machine = plinth_model::decode(record.body).map_err(|e| ApiError::Internal(e.to_string()))?;
    plinth_render::load(state.store.as_ref(), machine).await.map_err(|e| match e {
        plinth_render::LoadError::Resolve(e) => {
            ApiError::Conflict(format!("cannot resolve the params of machines `{id}`: {e}"))
        }
        other => ApiError::Internal(other.to_string()),
    })
}

pub async fn machine_params(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ParamsQuery>,
) -> Result<Json<Value>, ApiError> {
    let resolved = view_for(&state, &id).await?.params;
    let shown = |secure: bool, v: &Value| if secure { json!(REDACTED) } else { v.clone() };
    let out: serde_json::Map<String, Value> = resolved
        .iter()
        .map(|(name, r)| {
            let v = if q.explain {
                json!({
                    "value": shown(r.secure, &r.value),
                    "source": r.source,
                    "shadows": r.shadows.iter().map(|(l, v)| json!({"source": l, "value": shown(r.secure, v)})).collect::<Vec<_>>(),
                    "secure": r.secure,
                })
            } else {
                shown(r.secure, &r.value)
            };
            (name.to_string(), v)
        })
        .collect();
    Ok(Json(Value::Object(out)))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenderRequest {
    /// The machine's id or name.
    machine: String,
    /// A stored template's name.
    #[serde(default)]
    #[schemars(with = "plinth_model::Name")]
    template: Option<String>,
    /// Template text.
    #[serde(default)]
    #[schemars(with = "String")]
    contents: Option<String>,
    /// Boot HTTP base URL to render with (`provisioner.http`).
    #[serde(default)]
    http: Option<String>,
    /// A file of the machine's bootenv, by the path it is served at (or its name).
    #[serde(default)]
    #[schemars(with = "String")]
    bootenv_file: Option<String>,
    /// API base URL to render with (`provisioner.api`); defaults to this API's.
    #[serde(default)]
    api: Option<String>,
    /// Architecture to render the bootenv variant of (`amd64`, `arm64`).
    #[serde(default)]
    arch: Option<plinth_model::Arch>,
    /// Firmware to render the bootenv variant of (`bios`, `uefi`).
    #[serde(default)]
    firmware: Option<plinth_model::Firmware>,
}

/// What `machine_token()` renders as in a debugging render.
pub use plinth_render::TOKEN_PLACEHOLDER;

/// `POST /api/v1/render`: renders a stored template (`template`) or inline
/// text (`contents`) for a machine, without side effects. Secure params are
/// not available here.
pub async fn render(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let body = crate::crud::read_json(&headers, body).await?;
    let req: RenderRequest =
        serde_json::from_value(body).map_err(|e| ApiError::BadRequest(format!("render request: {e}")))?;
    let given =
        [req.template.is_some(), req.contents.is_some(), req.bootenv_file.is_some()].iter().filter(|g| **g).count();
    if given != 1 {
        return Err(ApiError::field(
            "template",
            "give exactly one of `template` (a stored template's name), `contents` (template text) or `bootenv_file` (a path of the machine's bootenv)",
        ));
    }
    let view = view_for(&state, &req.machine).await?;
    if let Some(name) = &req.template
        && !view.templates.contains_key(name)
    {
        return Err(ApiError::NotFound(format!("templates `{}` not found", name.escape_debug())));
    }
    let api = req.api.clone().or_else(|| state.api_url.clone()).or_else(|| {
        headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).map(|h| format!("https://{h}"))
    });
    let (target, field) = match (req.template, req.contents, req.bootenv_file) {
        (Some(t), _, _) => (plinth_render::DebugTarget::Template(t), "template"),
        (None, Some(c), _) => (plinth_render::DebugTarget::Contents(c), "contents"),
        (None, None, Some(p)) => (plinth_render::DebugTarget::BootenvFile(p), "bootenv_file"),
        (None, None, None) => return Err(ApiError::field("template", "nothing to render")),
    };
    let job = plinth_render::DebugRender {
        view,
        target,
        http: req.http.unwrap_or_default(),
        api: api.unwrap_or_default(),
        arch: req.arch,
        firmware: req.firmware,
        ca_pem: state.agent_ca.clone(),
    };
    // In a process of its own, with a memory and CPU budget.
    let output = match crate::sandbox::render(&job).await {
        Ok(Some(output)) => output,
        Ok(None) => {
            return Err(ApiError::NotFound(format!(
                "the bootenv of machines `{}` has no file at that path",
                req.machine.escape_debug()
            )));
        }
        Err(crate::sandbox::SandboxError::Worker(e)) => return Err(ApiError::Internal(e)),
        Err(e) => return Err(ApiError::field(field, e.to_string())),
    };
    Ok(Json(json!({"output": output})))
}
