//! Content packs ([`pack`]: the format; [`plan`]: plans, install, upgrade,
//! rollback, remove, promote, canaries, site export) and the content Plinth
//! ships: iPXE and GRUB boot templates, the `local` and `discovery`
//! bootenvs, installers (Debian 12 preseed, Ubuntu 24.04 autoinstall,
//! Rocky/Alma 9 kickstart, cloud-init user-data) built from small parts
//! chosen by params, those params with schemas and defaults, the common
//! tasks and the `base-configure` stage and workflow. The files live in
//! `default/` and are compiled in; [`install_default`] installs them at
//! start as the `plinth-default` pack, or upgrades it when this Plinth
//! ships a newer version. A site changes a pack's object by overriding it
//! (`?override=true`), which upgrades keep. [`install_missing`] (store
//! what is absent, outside any pack) is for tests and benchmarks.
#![forbid(unsafe_code)]

mod diff;
pub mod pack;
pub mod plan;

pub use diff::unified as unified_diff;

use plinth_model::{Kind, meta};
#[cfg(test)]
use plinth_store::StoreExt;
use plinth_store::{Expect, Store, StoreError, WriteOp};
use serde_json::{Value, json};

/// Templates by name, as `(name, text)`.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("autoinstall-meta-data", include_str!("../default/templates/autoinstall-meta-data.tmpl")),
    ("autoinstall.network-dhcp", include_str!("../default/templates/autoinstall.network-dhcp.tmpl")),
    ("autoinstall.network-static", include_str!("../default/templates/autoinstall.network-static.tmpl")),
    ("autoinstall.storage-lvm", include_str!("../default/templates/autoinstall.storage-lvm.tmpl")),
    ("autoinstall.storage-plain", include_str!("../default/templates/autoinstall.storage-plain.tmpl")),
    ("autoinstall", include_str!("../default/templates/autoinstall.tmpl")),
    ("cloud-init-user-data", include_str!("../default/templates/cloud-init-user-data.tmpl")),
    ("grub-boot-linux", include_str!("../default/templates/grub-boot-linux.tmpl")),
    ("grub-local", include_str!("../default/templates/grub-local.tmpl")),
    ("grub-default", include_str!("../default/templates/grub-default.tmpl")),
    ("ipxe-boot-linux", include_str!("../default/templates/ipxe-boot-linux.tmpl")),
    ("ipxe-default", include_str!("../default/templates/ipxe-default.tmpl")),
    ("ipxe-local", include_str!("../default/templates/ipxe-local.tmpl")),
    ("kickstart.network-dhcp", include_str!("../default/templates/kickstart.network-dhcp.tmpl")),
    ("kickstart.network-static", include_str!("../default/templates/kickstart.network-static.tmpl")),
    ("kickstart.part-lvm", include_str!("../default/templates/kickstart.part-lvm.tmpl")),
    ("kickstart.part-plain", include_str!("../default/templates/kickstart.part-plain.tmpl")),
    ("kickstart", include_str!("../default/templates/kickstart.tmpl")),
    ("kickstart.users", include_str!("../default/templates/kickstart.users.tmpl")),
    ("post-install.sh", include_str!("../default/templates/post-install.sh.tmpl")),
    ("post.agent", include_str!("../default/templates/post.agent.tmpl")),
    ("post.none", include_str!("../default/templates/post.none.tmpl")),
    ("post.ssh-keys", include_str!("../default/templates/post.ssh-keys.tmpl")),
    ("preseed.mirror", include_str!("../default/templates/preseed.mirror.tmpl")),
    ("preseed.network-dhcp", include_str!("../default/templates/preseed.network-dhcp.tmpl")),
    ("preseed.network-static", include_str!("../default/templates/preseed.network-static.tmpl")),
    ("preseed.packages", include_str!("../default/templates/preseed.packages.tmpl")),
    ("preseed.part-lvm", include_str!("../default/templates/preseed.part-lvm.tmpl")),
    ("preseed.part-plain", include_str!("../default/templates/preseed.part-plain.tmpl")),
    ("preseed", include_str!("../default/templates/preseed.tmpl")),
    ("preseed.users", include_str!("../default/templates/preseed.users.tmpl")),
    ("task.set-hostname", include_str!("../default/templates/task.set-hostname.tmpl")),
    ("task.ssh-keys", include_str!("../default/templates/task.ssh-keys.tmpl")),
    ("task.agent-service", include_str!("../default/templates/task.agent-service.tmpl")),
    ("task.site-hook", include_str!("../default/templates/task.site-hook.tmpl")),
    ("task.firmware-settings", include_str!("../default/templates/task.firmware-settings.tmpl")),
    ("firmware.none", include_str!("../default/templates/firmware.none.tmpl")),
    ("nocloud.meta-data", include_str!("../default/templates/nocloud.meta-data.tmpl")),
    ("nocloud.user-data", include_str!("../default/templates/nocloud.user-data.tmpl")),
    ("nocloud.vendor-data", include_str!("../default/templates/nocloud.vendor-data.tmpl")),
    ("nocloud.network-config", include_str!("../default/templates/nocloud.network-config.tmpl")),
    ("nocloud.none", include_str!("../default/templates/nocloud.none.tmpl")),
    ("task.image-deploy", include_str!("../default/templates/task.image-deploy.tmpl")),
    ("task.cloud-init-done", include_str!("../default/templates/task.cloud-init-done.tmpl")),
];

/// Tasks, stages and workflows, each a YAML list.
pub const TASKS: &str = include_str!("../default/tasks/tasks.yaml");
pub const STAGES: &str = include_str!("../default/stages/stages.yaml");
pub const WORKFLOWS: &str = include_str!("../default/workflows/workflows.yaml");

/// The name of the pack the built-in content is installed as.
pub const DEFAULT_PACK: &str = "plinth-default";

/// Bootenvs, as YAML.
pub const BOOTENVS: &[&str] = &[
    include_str!("../default/bootenvs/alma-9.yaml"),
    include_str!("../default/bootenvs/debian-12.yaml"),
    include_str!("../default/bootenvs/discovery.yaml"),
    include_str!("../default/bootenvs/local.yaml"),
    include_str!("../default/bootenvs/rocky-9.yaml"),
    include_str!("../default/bootenvs/ubuntu-24.04.yaml"),
];

/// Param definitions, a YAML list.
pub const PARAMS: &str = include_str!("../default/params.yaml");

/// Why the built-in content could not be read or stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    #[error("built-in content `{0}` is not valid YAML: {1}")]
    Yaml(String, String),
    #[error("built-in {0} `{1}` is invalid: {2}")]
    Invalid(Kind, String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the default pack was not installed:\n- {}", .0.join("\n- "))]
    Refused(Vec<String>),
}

/// Every built-in object, normalised and checked, as `(kind, key, body)`,
/// params first so the rest can refer to them.
pub fn objects() -> Result<Vec<(Kind, String, Value)>, ContentError> {
    let mut raw: Vec<(Kind, Value)> = Vec::new();
    let params: Vec<Value> =
        serde_yaml_ng::from_str(PARAMS).map_err(|e| ContentError::Yaml("params.yaml".into(), e.to_string()))?;
    raw.extend(params.into_iter().map(|p| (Kind::Param, p)));
    for (name, text) in TEMPLATES {
        raw.push((Kind::Template, json!({"name": name, "contents": text, "meta": {meta::SOURCE: meta::BUILTIN}})));
    }
    for (i, text) in BOOTENVS.iter().enumerate() {
        let v: Value =
            serde_yaml_ng::from_str(text).map_err(|e| ContentError::Yaml(format!("bootenvs[{i}]"), e.to_string()))?;
        raw.push((Kind::BootEnv, v));
    }
    for (kind, file, text) in [
        (Kind::Task, "tasks.yaml", TASKS),
        (Kind::Stage, "stages.yaml", STAGES),
        (Kind::Workflow, "workflows.yaml", WORKFLOWS),
    ] {
        let items: Vec<Value> =
            serde_yaml_ng::from_str(text).map_err(|e| ContentError::Yaml(file.into(), e.to_string()))?;
        raw.extend(items.into_iter().map(|v| (kind, v)));
    }
    raw.into_iter()
        .map(|(kind, mut v)| {
            if let Value::Object(m) = &mut v {
                m.entry("meta").or_insert_with(|| json!({meta::SOURCE: meta::BUILTIN}));
            }
            let name = v.get("name").and_then(Value::as_str).unwrap_or("?").to_owned();
            let (key, body) =
                plinth_model::normalize(kind, v).map_err(|e| ContentError::Invalid(kind, name, e.to_string()))?;
            Ok((kind, key, body))
        })
        .collect()
}

/// The built-in content as the `plinth-default` pack, versioned with Plinth.
pub fn default_pack() -> Result<pack::Pack, ContentError> {
    let manifest = pack::Manifest {
        name: DEFAULT_PACK.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "Plinth's built-in content: discovery, local boot, OS installers, common tasks.".into(),
        source: "built into plinth".into(),
        requires: Vec::new(),
        plinth: None,
        overrides: Vec::new(),
    };
    let bundle = pack::Pack { manifest, objects: objects()? }.to_bundle();
    pack::Pack::from_bundle(&bundle)
        .map_err(|e| ContentError::Invalid(Kind::Content, DEFAULT_PACK.into(), e.to_string()))
}

/// Installs the built-in content as the `plinth-default` pack when it is
/// not installed, or upgrades it when this Plinth ships a newer version.
/// Objects an earlier Plinth installed without a pack are adopted, or kept
/// as the site's overrides where the site changed them. A plan with errors
/// (say, a site object in the way) is not applied: its errors are returned
/// for the server to log, and the server starts with what it has.
pub async fn install_default(store: &dyn Store) -> Result<Option<plan::Plan>, ContentError> {
    let pack = default_pack()?;
    if let Some(r) = store.get(Kind::Content, DEFAULT_PACK).await? {
        let installed = r.body.get("version").and_then(Value::as_str).and_then(|v| semver::Version::parse(v).ok());
        if installed.is_some_and(|v| v >= pack.manifest.semver()) {
            return Ok(None);
        }
    }
    match plan::install(store, &pack, false, None, "server").await {
        Ok(plan) => Ok(Some(plan)),
        Err(plan::PackError::Refused(errors)) => Err(ContentError::Refused(errors)),
        Err(plan::PackError::Store(e)) => Err(ContentError::Store(e)),
        Err(e) => Err(ContentError::Invalid(Kind::Content, DEFAULT_PACK.into(), e.to_string())),
    }
}

/// Stores every built-in object that is not in `store` yet, in one
/// all-or-nothing batch; returns how many it wrote. Objects already there,
/// edited by the site or not, are left alone.
pub async fn install_missing(store: &dyn Store) -> Result<usize, ContentError> {
    let mut ops = Vec::new();
    for (kind, key, body) in objects()? {
        if store.get(kind, &key).await?.is_none() {
            ops.push(WriteOp::Put { kind, key, body, expect: Expect::Absent });
        }
    }
    let written = ops.len();
    if written > 0 {
        store.apply(ops).await?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_object_is_valid() {
        let all = objects().unwrap();
        let count = |k| all.iter().filter(|(kind, _, _)| *kind == k).count();
        assert_eq!(count(Kind::Template), TEMPLATES.len());
        assert_eq!(count(Kind::BootEnv), BOOTENVS.len());
        assert!(count(Kind::Param) >= 20);
        for name in ["local", "discovery", "debian-12", "ubuntu-24.04", "rocky-9", "alma-9"] {
            assert!(all.iter().any(|(k, key, _)| *k == Kind::BootEnv && key == name), "{name}");
        }
        // Every template a bootenv names is shipped, and every param
        // default fits its own schema.
        for (kind, key, body) in &all {
            if *kind == Kind::BootEnv {
                for t in body["templates"].as_array().unwrap() {
                    if let Some(name) = t["template"].as_str() {
                        assert!(TEMPLATES.iter().any(|(n, _)| *n == name), "{key} names missing template {name}");
                    }
                }
            }
            if *kind == Kind::Param {
                let schema = &body["schema"];
                let default = schema.get("default").unwrap_or_else(|| panic!("param {key} has no default"));
                assert!(jsonschema_ok(schema, default), "param {key}: default does not fit the schema");
            }
        }
    }

    fn jsonschema_ok(schema: &Value, value: &Value) -> bool {
        let (_, mut body) = plinth_model::normalize(Kind::Param, json!({"name": "probe", "schema": schema})).unwrap();
        body["schema"] = schema.clone();
        plinth_model::decode::<plinth_model::Param>(body).unwrap().check_value(value).is_ok()
    }

    #[tokio::test]
    async fn installs_what_is_missing_and_leaves_site_edits_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = plinth_store::SqliteStore::open(&dir.path().join("db")).unwrap();
        let n = install_missing(&store).await.unwrap();
        assert_eq!(n, objects().unwrap().len());
        let mut t = store.get(Kind::Template, "ipxe-local").await.unwrap().unwrap().body;
        t["contents"] = json!("#!ipxe\necho site\n");
        store.put(Kind::Template, "ipxe-local", t, Expect::Any).await.unwrap();
        store.delete(Kind::Template, "post.none", Expect::Any).await.unwrap();
        assert_eq!(install_missing(&store).await.unwrap(), 1, "only the deleted one comes back");
        let t = store.get(Kind::Template, "ipxe-local").await.unwrap().unwrap().body;
        assert_eq!(t["contents"], "#!ipxe\necho site\n");
    }
}
