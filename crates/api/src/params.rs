//! `GET /api/v1/machines/{id}/params[?explain=true]`: a machine's resolved
//! params, and with `explain`, where each value came from and what it shadows.

use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, Query, State};
use plinth_model::{Kind, Machine, Name, Param, ParamName, Profile, Stage, Workflow};
use plinth_render::{Layers, Resolved, resolve};
use plinth_store::StoreExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamsQuery {
    #[serde(default)]
    explain: bool,
}

/// Shown instead of a secure value.
const REDACTED: &str = "<secure>";

async fn load_all<T: plinth_model::Object>(state: &AppState, kind: Kind) -> Result<Vec<T>, ApiError> {
    let records = state.store.list_all(kind, vec![]).await?;
    records.into_iter().map(|r| plinth_model::decode(r.body).map_err(|e| ApiError::Internal(e.to_string()))).collect()
}

async fn load_one<T: plinth_model::Object>(state: &AppState, kind: Kind, key: &str) -> Result<Option<T>, ApiError> {
    match state.store.get(kind, key).await? {
        Some(r) => Ok(Some(plinth_model::decode(r.body).map_err(|e| ApiError::Internal(e.to_string()))?)),
        None => Ok(None),
    }
}

/// Loads a machine and resolves its params.
pub(crate) async fn resolved_for(
    state: &AppState,
    id: &str,
) -> Result<(Machine, BTreeMap<ParamName, Resolved>), ApiError> {
    let machine: Machine = load_one(state, Kind::Machine, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("machines `{}` not found", id.escape_debug())))?;
    let profiles: HashMap<Name, Profile> =
        load_all::<Profile>(state, Kind::Profile).await?.into_iter().map(|p| (p.name.clone(), p)).collect();
    let params: HashMap<ParamName, Param> =
        load_all::<Param>(state, Kind::Param).await?.into_iter().map(|p| (p.name.clone(), p)).collect();
    let stage: Option<Stage> = match &machine.stage {
        Some(s) => load_one(state, Kind::Stage, s.as_str()).await?,
        None => None,
    };
    let workflow: Option<Workflow> = match &machine.workflow {
        Some(w) => load_one(state, Kind::Workflow, w.as_str()).await?,
        None => None,
    };
    let resolved = resolve(&Layers {
        machine: &machine,
        profiles: &profiles,
        stage: stage.as_ref(),
        workflow: workflow.as_ref(),
        params: &params,
    })
    .map_err(|e| ApiError::Conflict(format!("cannot resolve the params of machines `{id}`: {e}")))?;
    Ok((machine, resolved))
}

pub async fn machine_params(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ParamsQuery>,
) -> Result<Json<Value>, ApiError> {
    let (_, resolved) = resolved_for(&state, &id).await?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenderRequest {
    machine: String,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    contents: Option<String>,
}

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
    if req.template.is_some() == req.contents.is_some() {
        return Err(ApiError::field(
            "template",
            "give exactly one of `template` (a stored template's name) or `contents` (template text)",
        ));
    }
    let (machine, resolved) = resolved_for(&state, &req.machine).await?;
    let templates: HashMap<String, String> = load_all::<plinth_model::Template>(&state, Kind::Template)
        .await?
        .into_iter()
        .map(|t| (t.name.to_string(), t.contents))
        .collect();
    if let Some(name) = &req.template
        && !templates.contains_key(name)
    {
        return Err(ApiError::NotFound(format!("templates `{}` not found", name.escape_debug())));
    }
    let params: BTreeMap<String, Value> =
        resolved.iter().filter(|(_, r)| !r.secure).map(|(k, r)| (k.to_string(), r.value.clone())).collect();
    let mut machine_json = serde_json::to_value(&machine).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Value::Object(m) = &mut machine_json {
        // Params are read through param(); raw values may include secure ones.
        m.remove("params");
    }
    let context = json!({"machine": machine_json, "params": params});
    let field = if req.template.is_some() { "template" } else { "contents" };
    let output = tokio::task::spawn_blocking(move || {
        let source = match (&req.template, &req.contents) {
            (Some(name), _) => plinth_render::Source::Named(name),
            (None, Some(text)) => plinth_render::Source::Inline(text),
            (None, None) => plinth_render::Source::Inline(""),
        };
        plinth_render::render(templates, source, &context, params)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::field(field, e.to_string()))?;
    Ok(Json(json!({"output": output})))
}
