//! Content packs over the API: plan an install or upgrade, install it,
//! roll back, remove. Each write is one audited transaction.

use crate::auth::Principal;
use crate::extract::{Path, Query};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Extension, State};
use plinth_content::pack::{MAX_PACK_BYTES, Pack};
use plinth_content::plan::{PackError, Plan};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ForceQuery {
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InstallQuery {
    #[serde(default)]
    force: bool,
    /// Comma-separated machine ids or names that take the new version; the
    /// others stay on the installed one until `promote`.
    #[serde(default)]
    canary: Option<String>,
}

fn canary_set(canary: &Option<String>) -> Option<std::collections::BTreeSet<String>> {
    canary.as_ref().map(|c| c.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
}

impl From<PackError> for ApiError {
    fn from(e: PackError) -> ApiError {
        match e {
            PackError::Invalid(p) => ApiError::BadRequest(p.to_string()),
            PackError::Refused(_) => ApiError::Conflict(e.to_string()),
            PackError::NotInstalled(_) | PackError::NoPrevious(_) => ApiError::NotFound(e.to_string()),
            PackError::Store(s) => s.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

async fn read_pack(body: axum::body::Body) -> Result<Pack, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_PACK_BYTES).await.map_err(|_| ApiError::TooLarge(MAX_PACK_BYTES))?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest("the request needs a pack bundle (`plinth content bundle DIR`)".into()));
    }
    Ok(Pack::from_bytes(&bytes).map_err(PackError::from)?)
}

fn plan_json(plan: &Plan) -> Result<Json<Value>, ApiError> {
    serde_json::to_value(plan).map(Json).map_err(|e| ApiError::Internal(e.to_string()))
}

/// `POST /api/v1/contents/plan`: what installing or upgrading to the
/// bundle would change, for every object and machine. Writes nothing.
pub async fn plan(
    State(state): State<AppState>,
    Query(q): Query<InstallQuery>,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let pack = read_pack(body).await?;
    plan_json(&plinth_content::plan::plan(state.store.as_ref(), &pack, canary_set(&q.canary).as_ref()).await?)
}

/// `POST /api/v1/contents/install[?force=true]`: installs or upgrades, in
/// one transaction; refused (409, with the plan's errors) unless forced.
pub async fn install(
    State(state): State<AppState>,
    Query(q): Query<InstallQuery>,
    Extension(principal): Extension<Principal>,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let pack = read_pack(body).await?;
    let canary = canary_set(&q.canary);
    let plan = plinth_content::plan::install(state.store.as_ref(), &pack, q.force, canary.as_ref(), &principal.actor())
        .await?;
    plan_json(&plan)
}

/// `POST /api/v1/contents/{name}/promote[?force=true]`: every machine kept
/// on an earlier version (a canary upgrade's others) takes the installed one.
pub async fn promote(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ForceQuery>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    plan_json(&plinth_content::plan::promote(state.store.as_ref(), &name, q.force, &principal.actor()).await?)
}

/// `POST /api/v1/contents/{name}/rollback[?force=true]`.
pub async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ForceQuery>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    plan_json(&plinth_content::plan::rollback(state.store.as_ref(), &name, q.force, &principal.actor()).await?)
}

/// `DELETE /api/v1/contents/{name}[?force=true]`: removes the pack and its
/// objects (not the site's overrides); refused while they are in use.
pub async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ForceQuery>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    plan_json(&plinth_content::plan::remove(state.store.as_ref(), &name, q.force, &principal.actor()).await?)
}

/// `GET /api/v1/contents/{name}`: the installed pack (its bundle included).
pub async fn show(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let r = state
        .store
        .get(plinth_model::Kind::Content, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no pack `{}` is installed", name.escape_debug())))?;
    Ok(Json(r.body))
}

/// `PUT`/`PATCH /api/v1/contents/{name}`: packs change only by install,
/// rollback and remove.
pub async fn not_writable() -> ApiError {
    ApiError::MethodNotAllowed
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    name: String,
    version: String,
}

/// `GET /api/v1/contents/export?name=&version=`: the site's own layer as a
/// pack bundle.
pub async fn export(State(state): State<AppState>, Query(q): Query<ExportQuery>) -> Result<Json<Value>, ApiError> {
    let pack = plinth_content::plan::export_site(state.store.as_ref(), &q.name, &q.version).await?;
    Ok(Json(pack.to_bundle()))
}
