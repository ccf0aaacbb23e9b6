//! Secure param values in the API: sealed before they are stored, shown as
//! `<secure>` in every response and event, and re-sealed when the keyring
//! rotates or a param becomes secure.

use crate::{ApiError, AppState};
use plinth_model::{Kind, Param};
use plinth_secrets::{Keyring, REDACTED, contains_sealed, is_sealed};
use plinth_store::{Expect, Store, StoreError, StoreExt, WriteOp};
use serde_json::Value;
use std::collections::HashMap;

/// Kinds whose `params` hold param values.
pub(crate) const PARAM_HOLDERS: [Kind; 4] = [Kind::Machine, Kind::Profile, Kind::Stage, Kind::Workflow];

/// Replaces every sealed value in `body` with `<secure>`.
pub(crate) fn redact_sealed(body: &mut Value) {
    match body {
        v if is_sealed(v) => *v = Value::String(REDACTED.into()),
        Value::Object(m) => m.values_mut().for_each(redact_sealed),
        Value::Array(a) => a.iter_mut().for_each(redact_sealed),
        _ => {}
    }
}

/// Checks the params of a body about to be written and seals the values of
/// secure params. Every value must belong to a defined param and fit its
/// schema. A client never sends a sealed value; it sends `<secure>` to keep
/// the value `previous` (the stored object) has for that param.
pub(crate) async fn prepare_params(
    state: &AppState,
    kind: Kind,
    key: &str,
    body: &mut Value,
    previous: Option<&Value>,
) -> Result<(), ApiError> {
    if !PARAM_HOLDERS.contains(&kind) {
        return Ok(());
    }
    let Some(Value::Object(params)) = body.get_mut("params") else { return Ok(()) };
    for (name, value) in params.iter_mut() {
        let field = format!("params.{name}");
        if contains_sealed(value) {
            return Err(ApiError::field(
                field,
                format!(
                    "{kind} `{key}`: param `{name}`: sealed values are written by the server only; send the plain value"
                ),
            ));
        }
        if value.as_str() == Some(REDACTED) {
            match previous.and_then(|p| p.get("params")).and_then(|p| p.get(name)).filter(|v| is_sealed(v)) {
                Some(stored) => {
                    *value = stored.clone();
                    continue;
                }
                None => {
                    return Err(ApiError::field(
                        field,
                        format!(
                            "{kind} `{key}`: `{REDACTED}` keeps a stored secure value, but there is none for param `{name}`; send the value"
                        ),
                    ));
                }
            }
        }
        let Some(record) = state.store.get(Kind::Param, name).await? else {
            return Err(ApiError::dangling(
                field,
                format!(
                    "{kind} `{key}`: param `{name}` is not defined; define it first (POST /api/v1/params) so its values can be typed"
                ),
            ));
        };
        let param: Param = plinth_model::decode(record.body).map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Err(why) = param.check_value(value) {
            return Err(ApiError::param_value(field, format!("param `{name}` on {kind} `{key}`: {why}")));
        }
        if param.secure {
            *value = state.keyring.seal(name, value).map_err(|e| ApiError::Internal(e.to_string()))?;
        }
    }
    Ok(())
}

/// Seals what should be sealed under the keyring's current key: values
/// sealed under an older key, and plain values of params that are secure.
/// Returns how many values changed. The server runs it at start (after a
/// key rotation) and whenever a param is written secure.
pub async fn reseal_all(store: &dyn Store, keyring: &Keyring) -> Result<usize, StoreError> {
    let mut secure: HashMap<String, bool> = HashMap::new();
    for r in store.list_all(Kind::Param, vec![]).await? {
        if let Ok(p) = plinth_model::decode::<Param>(r.body) {
            secure.insert(p.name.to_string(), p.secure);
        }
    }
    let mut total = 0;
    for kind in PARAM_HOLDERS {
        let mut ops = Vec::new();
        for r in store.list_all(kind, vec![]).await? {
            let mut body = r.body;
            let mut changed = 0;
            if let Some(Value::Object(params)) = body.get_mut("params") {
                for (name, value) in params.iter_mut() {
                    let sealed = if is_sealed(value) {
                        if keyring.is_current(value) {
                            continue;
                        }
                        match keyring.open(name, value) {
                            Ok(plain) => keyring.seal(name, &plain),
                            Err(e) => {
                                tracing::error!(kind = %kind, key = %r.key, param = %name, error = %e, "cannot re-seal a secure value");
                                continue;
                            }
                        }
                    } else if secure.get(name).copied().unwrap_or(false) {
                        keyring.seal(name, value)
                    } else {
                        continue;
                    };
                    if let Ok(s) = sealed {
                        *value = s;
                        changed += 1;
                    }
                }
            }
            if changed > 0 {
                total += changed;
                ops.push(WriteOp::Put { kind, key: r.key, body, expect: Expect::Revision(r.revision) });
            }
        }
        for chunk in ops.chunks(200) {
            store.apply(chunk.to_vec()).await?;
        }
    }
    Ok(total)
}

/// How many stored secure values are sealed under a key other than the
/// keyring's current one.
pub async fn sealed_under_old_keys(store: &dyn Store, keyring: &Keyring) -> Result<usize, StoreError> {
    let mut n = 0;
    for kind in PARAM_HOLDERS {
        for r in store.list_all(kind, vec![]).await? {
            if let Some(Value::Object(params)) = r.body.get("params") {
                n += params.values().filter(|v| is_sealed(v) && !keyring.is_current(v)).count();
            }
        }
    }
    Ok(n)
}

/// Records that secure values of `machine` were read (rendered for it).
pub async fn audit_read(
    state: &AppState,
    actor: String,
    machine: plinth_model::MachineId,
    detail: String,
) -> Result<(), StoreError> {
    state.store.append_audit(vec![plinth_model::AuditEntry::secure_read(actor, machine, detail)]).await
}
