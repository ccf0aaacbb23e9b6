//! The content Plinth ships: iPXE and GRUB boot templates, the `local` and
//! `discovery` bootenvs, installers (Debian 12 preseed, Ubuntu 24.04
//! autoinstall, Rocky/Alma 9 kickstart, cloud-init user-data) built from
//! small parts chosen by params, and those params with schemas and
//! defaults. The files live in `default/`; they are compiled in and
//! written to the store by [`install_missing`] on every start, so a site
//! overrides any of them by editing the stored object, and a new Plinth
//! adds what it newly ships. (The content-pack issue turns this into the
//! default pack with versioned upgrades.)
#![forbid(unsafe_code)]

mod diff;
pub mod pack;
pub mod plan;

pub use diff::unified as unified_diff;

use plinth_model::Kind;
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
];

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
}

/// Every built-in object, normalised and checked, as `(kind, key, body)`,
/// params first so the rest can refer to them.
pub fn objects() -> Result<Vec<(Kind, String, Value)>, ContentError> {
    let mut raw: Vec<(Kind, Value)> = Vec::new();
    let params: Vec<Value> =
        serde_yaml::from_str(PARAMS).map_err(|e| ContentError::Yaml("params.yaml".into(), e.to_string()))?;
    raw.extend(params.into_iter().map(|p| (Kind::Param, p)));
    for (name, text) in TEMPLATES {
        raw.push((Kind::Template, json!({"name": name, "contents": text, "meta": {"source": "builtin"}})));
    }
    for (i, text) in BOOTENVS.iter().enumerate() {
        let v: Value =
            serde_yaml::from_str(text).map_err(|e| ContentError::Yaml(format!("bootenvs[{i}]"), e.to_string()))?;
        raw.push((Kind::BootEnv, v));
    }
    raw.into_iter()
        .map(|(kind, mut v)| {
            if let Value::Object(m) = &mut v {
                m.entry("meta").or_insert_with(|| json!({"source": "builtin"}));
            }
            let name = v.get("name").and_then(Value::as_str).unwrap_or("?").to_owned();
            let (key, body) =
                plinth_model::normalize(kind, v).map_err(|e| ContentError::Invalid(kind, name, e.to_string()))?;
            Ok((kind, key, body))
        })
        .collect()
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
