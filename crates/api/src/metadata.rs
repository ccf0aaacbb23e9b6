//! Metadata tokens: what a deployed image (or a cloud VM) reads its
//! metadata with, on boot HTTP under `/t/<token>/`. Each reads one
//! machine's metadata (the API refuses it; boot HTTP gives it no boot
//! file), hands out at most one boot credential through its vendor-data,
//! expires, and rotates: minting one revokes the machine's earlier ones.

use crate::extract::Path;
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use plinth_model::{Kind, MachineId, Name};
use plinth_store::StoreExt;
use serde_json::{Value, json};

/// Mints a metadata token for `machine`, living `ttl`, and deletes the
/// machine's earlier metadata tokens in the same batch; the bearer string
/// and when it expires.
pub async fn mint(
    store: &dyn plinth_store::Store,
    machine: MachineId,
    ttl: std::time::Duration,
    why: &str,
    actor: String,
) -> Result<(String, chrono::DateTime<chrono::Utc>), ApiError> {
    let now = plinth_model::now();
    let expires_at = now + chrono::Duration::from_std(ttl).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (mut token, bearer) =
        plinth_model::Token::mint(Name::known("machine"), format!("metadata token: {why}"), expires_at, Some(machine));
    token.metadata = true;
    // The one boot credential its vendor-data may hand out.
    token.uses_left = Some(1);
    let body = serde_json::to_value(&token).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut ops = vec![plinth_store::WriteOp::Put {
        kind: Kind::Token,
        key: token.id.to_string(),
        body,
        expect: plinth_store::Expect::Absent,
    }];
    let filter = plinth_store::Filter { path: vec!["machine".into()], value: json!(machine.to_string()) };
    for r in store.list_all(Kind::Token, vec![filter]).await? {
        if plinth_model::decode::<plinth_model::Token>(r.body).is_ok_and(|t| t.metadata) {
            ops.push(plinth_store::WriteOp::Delete {
                kind: Kind::Token,
                key: r.key,
                expect: plinth_store::Expect::Any,
            });
        }
    }
    store.apply_audited(ops, actor).await?;
    Ok((bearer, expires_at))
}

/// `POST /api/v1/machines/{id}/metadata-token`: a new metadata token for
/// the machine (its earlier ones revoked), with the NoCloud seed URL a
/// cloud VM is given (`ds=nocloud-net;s=<seed_url>`). Minting it needs the
/// claim to read the machine's secure values, which its metadata may carry.
pub async fn create(
    State(state): State<AppState>,
    principal: axum::Extension<crate::auth::Principal>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let id: MachineId =
        id.parse().map_err(|_| ApiError::NotFound(format!("no machine has the id `{}`", id.escape_debug())))?;
    let (machine, _) = state
        .store
        .get_as::<plinth_model::Machine>(&id.to_string())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no machine {id}")))?;
    let base = crate::power::boot_base(&state, &headers)?;
    let (bearer, expires_at) =
        mint(state.store.as_ref(), machine.id, state.metadata_token_ttl, "minted through the API", principal.actor())
            .await?;
    let seed_url = format!("{base}/t/{bearer}/");
    Ok(Json(json!({"machine": machine.id, "token": bearer, "expires_at": expires_at, "seed_url": seed_url,
        "smbios": format!("type=1,serial=ds=nocloud-net;s={seed_url}"),
        "kernel_arg": format!("ds=nocloud-net;s={seed_url}")})))
}
