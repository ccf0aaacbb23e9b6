//! Everything one machine's rendering needs, loaded through the store
//! (read-only): its resolved params, its bootenv and the templates, and the
//! render context built from them.

use crate::{Layers, ResolveError, Resolved, Source, resolve};
use plinth_model::{BootEnv, Kind, Machine, Name, Object, Param, ParamName, Profile, Stage, Workflow};
use plinth_store::{Store, StoreError, StoreExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// Why a machine's view could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored object is invalid: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

/// A machine with what rendering for it reads.
pub struct MachineView {
    pub machine: Machine,
    pub params: BTreeMap<ParamName, Resolved>,
    pub bootenv: Option<BootEnv>,
    /// Every stored template, by name.
    pub templates: HashMap<String, String>,
    /// The machine's current DHCP lease (by its MACs), if any.
    pub lease: Option<plinth_model::Lease>,
    /// The subnet of that lease.
    pub subnet: Option<plinth_model::Subnet>,
}

async fn all<T: Object>(store: &dyn Store, kind: Kind) -> Result<Vec<T>, LoadError> {
    store
        .list_all(kind, vec![])
        .await?
        .into_iter()
        .map(|r| plinth_model::decode(r.body).map_err(|e| LoadError::Corrupt(e.to_string())))
        .collect()
}

async fn one<T: Object>(store: &dyn Store, kind: Kind, key: &str) -> Result<Option<T>, LoadError> {
    match store.get(kind, key).await? {
        Some(r) => Ok(Some(plinth_model::decode(r.body).map_err(|e| LoadError::Corrupt(e.to_string()))?)),
        None => Ok(None),
    }
}

/// Loads and resolves what rendering for `machine` needs.
pub async fn load(store: &dyn Store, machine: Machine) -> Result<MachineView, LoadError> {
    let profiles: HashMap<Name, Profile> =
        all::<Profile>(store, Kind::Profile).await?.into_iter().map(|p| (p.name.clone(), p)).collect();
    let params: HashMap<ParamName, Param> =
        all::<Param>(store, Kind::Param).await?.into_iter().map(|p| (p.name.clone(), p)).collect();
    let stage: Option<Stage> = match &machine.stage {
        Some(s) => one(store, Kind::Stage, s.as_str()).await?,
        None => None,
    };
    let workflow: Option<Workflow> = match &machine.workflow {
        Some(w) => one(store, Kind::Workflow, w.as_str()).await?,
        None => None,
    };
    let resolved = resolve(&Layers {
        machine: &machine,
        profiles: &profiles,
        stage: stage.as_ref(),
        workflow: workflow.as_ref(),
        params: &params,
    })?;
    let bootenv = one::<BootEnv>(store, Kind::BootEnv, machine.bootenv.as_str()).await?;
    let templates = all::<plinth_model::Template>(store, Kind::Template)
        .await?
        .into_iter()
        .map(|t| (t.name.to_string(), t.contents))
        .collect();
    let mut lease: Option<plinth_model::Lease> = None;
    for mac in &machine.macs {
        let filter = plinth_store::Filter { path: vec!["mac".into()], value: Value::String(mac.to_string()) };
        for r in store.list_all(Kind::Lease, vec![filter]).await? {
            let l: plinth_model::Lease = plinth_model::decode(r.body).map_err(|e| LoadError::Corrupt(e.to_string()))?;
            // The bound lease that runs longest is the current one.
            if l.state == plinth_model::LeaseState::Bound && lease.as_ref().is_none_or(|c| l.expires_at > c.expires_at)
            {
                lease = Some(l);
            }
        }
    }
    let subnet = match &lease {
        Some(l) => one::<plinth_model::Subnet>(store, Kind::Subnet, l.subnet.as_str()).await?,
        None => None,
    };
    Ok(MachineView { machine, params: resolved, bootenv, templates, lease, subnet })
}

/// Where the client reaches Plinth.
#[derive(Debug, Clone, Default)]
pub struct Provisioner {
    /// Base URL of the boot HTTP server, e.g. `http://10.0.0.1:8091`.
    pub http: String,
}

impl MachineView {
    /// Non-secure resolved values, for `param()`. Secure values are never
    /// rendered through this path.
    pub fn plain_params(&self) -> BTreeMap<String, Value> {
        self.params.iter().filter(|(_, r)| !r.secure).map(|(k, r)| (k.to_string(), r.value.clone())).collect()
    }

    /// The render context: `machine` (without raw params), `params`, `lease`
    /// and `subnet` (when the machine holds a lease),
    /// `bootenv` (with `boot_args` rendered and `initrd_names` for the EFI
    /// `initrd=` argument) and `provisioner`.
    pub fn context(&self, provisioner: &Provisioner) -> Result<Value, crate::RenderError> {
        let mut machine = serde_json::to_value(&self.machine).unwrap_or_default();
        if let Value::Object(m) = &mut machine {
            m.remove("params");
        }
        let subnet = self.subnet.as_ref().map(|s| {
            json!({"name": s.name, "cidr": s.cidr, "netmask": s.cidr.mask(), "router": s.router, "dns_servers": s.dns_servers,
                "domain_name": s.domain_name, "ntp_servers": s.ntp_servers})
        });
        let mut ctx = json!({"machine": machine, "params": self.plain_params(), "provisioner": {"http": provisioner.http},
            "lease": self.lease, "subnet": subnet});
        if let Some(b) = &self.bootenv {
            let initrd_names: Vec<&str> = b.initrds.iter().map(|i| i.rsplit('/').next().unwrap_or(i)).collect();
            ctx["bootenv"] = json!({"name": b.name, "kernel": b.kernel, "initrds": b.initrds, "initrd_names": initrd_names,
                "os": b.os, "boot_args": ""});
            let args = crate::render(self.templates.clone(), Source::Inline(&b.boot_args), &ctx, self.plain_params())
                .map_err(|e| crate::RenderError { template: format!("bootenv `{}` boot_args", b.name), ..e })?;
            ctx["bootenv"]["boot_args"] = json!(args.trim());
        }
        Ok(ctx)
    }

    /// Renders `source` for this machine.
    pub fn render(&self, source: Source<'_>, provisioner: &Provisioner) -> Result<String, crate::RenderError> {
        let ctx = self.context(provisioner)?;
        crate::render(self.templates.clone(), source, &ctx, self.plain_params())
    }

    /// The bootenv file whose rendered path is `path`, rendered.
    pub fn render_path(&self, path: &str, provisioner: &Provisioner) -> Option<Result<String, crate::RenderError>> {
        let b = self.bootenv.as_ref()?;
        let ctx = match self.context(provisioner) {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let wanted = path.trim_start_matches('/');
        for t in &b.templates {
            // A file without a path is reached by its name (the iPXE entry
            // script is the one named `ipxe`).
            let matches = match &t.path {
                Some(p) => crate::render(self.templates.clone(), Source::Inline(p), &ctx, self.plain_params())
                    .is_ok_and(|r| r.trim().trim_start_matches('/') == wanted),
                None => t.name == wanted,
            };
            if !matches {
                continue;
            }
            let source = match (&t.template, &t.contents) {
                (Some(name), _) => Source::Named(name.as_str()),
                (None, Some(text)) => Source::Inline(text),
                (None, None) => continue,
            };
            return Some(crate::render(self.templates.clone(), source, &ctx, self.plain_params()));
        }
        None
    }
}
