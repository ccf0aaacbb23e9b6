//! Canary upgrades: a machine may be pinned to the version of a content
//! pack it had before an upgrade (`meta["pin:<pack>"] = "<version>"`, see
//! `plinth_model::meta`). Its
//! renders then see that version's objects: the pack's record keeps the
//! bundle it replaced for exactly this (and for rollback).

use crate::shared::{LoadError, Shared};
use plinth_model::{Kind, Machine, meta};
use plinth_store::{Store, StoreExt};
use serde_json::Value;
use std::sync::Arc;

/// The objects of every pack version `machine` is pinned to that is not
/// the installed one, as `(kind, key, body)`.
pub async fn pinned_objects(store: &dyn Store, machine: &Machine) -> Result<Vec<(Kind, String, Value)>, LoadError> {
    let mut out = Vec::new();
    for (k, version) in &machine.meta {
        let Some(pack) = k.strip_prefix(meta::PIN_PREFIX) else { continue };
        let Some((content, _)) = store.get_as::<plinth_model::Content>(pack).await? else {
            return Err(LoadError::Corrupt(format!(
                "machine `{}` is pinned to pack `{pack}`, which is not installed",
                machine.name
            )));
        };
        if &content.version == version {
            continue;
        }
        let Some(bundle) = content.objects_at(version) else {
            return Err(LoadError::Corrupt(format!(
                "machine `{}` is pinned to pack `{pack}` {version}, which is no longer kept (installed: {}); promote or unpin it",
                machine.name, content.version
            )));
        };
        // Only what differs from the installed version, and never over the
        // site's own override of an object.
        let installed: std::collections::HashMap<(Kind, &str), &Value> =
            content.bundle.kinds_and_objects().map(|(kind, key, body)| ((kind, key), body)).collect();
        for (kind, key, body) in bundle.kinds_and_objects() {
            if installed.get(&(kind, key)) == Some(&body) {
                continue;
            }
            if let Some(current) = store.get(kind, key).await?
                && meta::get(&current.body, meta::OVERRIDE) == Some(pack)
            {
                continue;
            }
            out.push((kind, key.to_owned(), body.clone()));
        }
    }
    Ok(out)
}

/// `shared` with `objects` put over it.
pub fn overlay(shared: &Shared, objects: &[(Kind, String, Value)]) -> Result<Shared, LoadError> {
    let mut s = shared.clone();
    let mut templates = (*s.templates).clone();
    let bad = |e: plinth_model::ValidationError| LoadError::Corrupt(e.to_string());
    for (kind, _, body) in objects {
        let body = body.clone();
        match kind {
            Kind::Template => {
                let t: plinth_model::Template = plinth_model::decode(body).map_err(bad)?;
                templates.insert(t.name.to_string(), t.contents);
            }
            Kind::Param => {
                let p: plinth_model::Param = plinth_model::decode(body).map_err(bad)?;
                s.params.insert(p.name.clone(), p);
            }
            Kind::Profile => {
                let p: plinth_model::Profile = plinth_model::decode(body).map_err(bad)?;
                s.profiles.insert(p.name.clone(), p);
            }
            Kind::BootEnv => {
                let b: plinth_model::BootEnv = plinth_model::decode(body).map_err(bad)?;
                s.bootenvs.insert(b.name.clone(), b);
            }
            Kind::Stage => {
                let st: plinth_model::Stage = plinth_model::decode(body).map_err(bad)?;
                s.stages.insert(st.name.clone(), st);
            }
            Kind::Workflow => {
                let w: plinth_model::Workflow = plinth_model::decode(body).map_err(bad)?;
                s.workflows.insert(w.name.clone(), w);
            }
            _ => {}
        }
    }
    s.templates = Arc::new(templates);
    Ok(s)
}

/// Whether `machine` has any pin.
pub fn is_pinned(machine: &Machine) -> bool {
    machine.meta.keys().any(|k| k.starts_with(meta::PIN_PREFIX))
}
