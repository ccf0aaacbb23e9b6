//! `GET /api/v1/machines/{id}/params[?explain=true]`: a machine's resolved
//! params, and with `explain`, where each value came from and what it shadows.

use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, Query, State};
use plinth_model::{Kind, Machine, Name, Param, ParamName, Profile, Stage, Workflow};
use plinth_render::{Layers, resolve};
use plinth_store::StoreExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

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

pub async fn machine_params(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ParamsQuery>,
) -> Result<Json<Value>, ApiError> {
    let machine: Machine = load_one(&state, Kind::Machine, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("machines `{}` not found", id.escape_debug())))?;
    let profiles: HashMap<Name, Profile> =
        load_all::<Profile>(&state, Kind::Profile).await?.into_iter().map(|p| (p.name.clone(), p)).collect();
    let params: HashMap<ParamName, Param> =
        load_all::<Param>(&state, Kind::Param).await?.into_iter().map(|p| (p.name.clone(), p)).collect();
    let stage: Option<Stage> = match &machine.stage {
        Some(s) => load_one(&state, Kind::Stage, s.as_str()).await?,
        None => None,
    };
    let workflow: Option<Workflow> = match &machine.workflow {
        Some(w) => load_one(&state, Kind::Workflow, w.as_str()).await?,
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
