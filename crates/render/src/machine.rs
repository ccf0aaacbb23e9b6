//! Everything one machine's rendering needs, loaded through the store
//! (read-only): its resolved params, its bootenv and the templates, and the
//! render context built from them.

use crate::shared::{LoadError, Shared, load_shared};
use crate::{Hooks, Layers, Resolved, Source, resolve};
use plinth_model::{Arch, BootEnv, Firmware, Kind, Machine, ParamName};
use plinth_store::{Store, StoreExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A machine with what rendering for it reads. It serialises whole, so a
/// render can run elsewhere (a debugging render runs in a child process
/// with a memory budget: see [`DebugRender`]).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct MachineView {
    pub machine: Machine,
    pub params: BTreeMap<ParamName, Resolved>,
    pub bootenv: Option<BootEnv>,
    /// Every stored template, by name.
    pub templates: Arc<HashMap<String, String>>,
    /// The machine's current DHCP lease (by its MACs), if any.
    pub lease: Option<plinth_model::Lease>,
    /// The subnet of that lease.
    pub subnet: Option<plinth_model::Subnet>,
    /// The image param `image` names, when it names one.
    #[serde(default)]
    pub image: Option<plinth_model::Image>,
}

/// Loads and resolves what rendering for `machine` needs.
pub async fn load(store: &dyn Store, machine: Machine) -> Result<MachineView, LoadError> {
    load_with(store, &load_shared(store).await?, machine).await
}

/// Like [`load`], with the shared content already at hand: only the
/// machine's lease is read from the store.
pub async fn load_with(store: &dyn Store, shared: &Shared, machine: Machine) -> Result<MachineView, LoadError> {
    // A machine pinned to an earlier version of a pack sees that version.
    let pinned_shared;
    let shared = if crate::pins::is_pinned(&machine) {
        let objects = crate::pins::pinned_objects(store, &machine).await?;
        if objects.is_empty() {
            shared
        } else {
            pinned_shared = crate::pins::overlay(shared, &objects)?;
            &pinned_shared
        }
    } else {
        shared
    };
    let mut lease: Option<plinth_model::Lease> = None;
    let now = plinth_model::now();
    for mac in &machine.macs {
        let filter = plinth_store::Filter { path: vec!["mac".into()], value: Value::String(mac.to_string()) };
        for r in store.list_all(Kind::Lease, vec![filter]).await? {
            let l: plinth_model::Lease = plinth_model::decode(r.body).map_err(|e| LoadError::Corrupt(e.to_string()))?;
            // The bound, unexpired lease that runs longest is the current
            // one; an ended lease grants nothing.
            if l.is_live(now) && lease.as_ref().is_none_or(|c| l.expires_at > c.expires_at) {
                lease = Some(l);
            }
        }
    }
    view_from(shared, machine, lease)
}

/// Where the client reaches Plinth, and what it said about itself.
#[derive(Clone, Default)]
pub struct Provisioner {
    /// Base URL of the boot HTTP server, e.g. `http://10.0.0.1:8091`.
    pub http: String,
    /// Base URL of the API, e.g. `https://10.0.0.1:8092`.
    pub api: String,
    /// Architecture the client reported (iPXE `${buildarch}`), if any.
    pub arch: Option<Arch>,
    /// Firmware the client reported (iPXE `${platform}`), if any.
    pub firmware: Option<Firmware>,
    /// PEM of the CA the API's certificate chains to, for agents (empty when
    /// the site's own certificate is used).
    pub ca_pem: String,
    /// SHA-256 of the agent binary the boot server serves, by architecture
    /// (`amd64`, `arm64`), so a boot file can check what it downloads.
    pub agent_sha256: BTreeMap<String, String>,
    /// Effects a render may have (the machine token).
    pub hooks: Hooks,
}

impl MachineView {
    /// Non-secure resolved values, for `param()`. Secure values are never
    /// rendered through this path.
    pub fn plain_params(&self) -> BTreeMap<String, Value> {
        self.params.iter().filter(|(_, r)| !r.secure).map(|(k, r)| (k.to_string(), r.value.clone())).collect()
    }

    /// `secure_param()` for this machine: each secure param's value, opened
    /// with `keyring`. Only a caller that has established the request comes
    /// from this machine (or has the claim to read its secrets) passes this.
    /// The names of the params read are added to `read`, for the audit log.
    pub fn secure_params(
        &self,
        keyring: Arc<plinth_secrets::Keyring>,
        read: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    ) -> crate::SecureParams {
        let secure: BTreeMap<String, Value> =
            self.params.iter().filter(|(_, r)| r.secure).map(|(k, r)| (k.to_string(), r.value.clone())).collect();
        let machine = self.machine.name.to_string();
        Arc::new(move |name: &str| {
            let value = secure.get(name).ok_or_else(|| format!("machine `{machine}` has no secure param `{name}`"))?;
            read.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned());
            if plinth_secrets::is_sealed(value) {
                keyring.open(name, value).map_err(|e| e.to_string())
            } else {
                Ok(value.clone())
            }
        })
    }

    /// `secure_param()` for a machine the site does not trust yet (one
    /// discovery registered): every secure value is withheld, with a
    /// message saying how to trust it.
    pub fn secure_withheld(&self) -> crate::SecureParams {
        let (machine, id) = (self.machine.name.to_string(), self.machine.id);
        Arc::new(move |name: &str| {
            Err(format!(
                "machine `{machine}` is not trusted yet, so secure param `{name}` is withheld; accept it first (`plinth machines accept {id}`)"
            ))
        })
    }

    /// `secure_param()` in a debugging render: the placeholder `<secure>`
    /// for each secure param the machine has.
    pub fn secure_placeholders(&self) -> crate::SecureParams {
        let names: std::collections::BTreeSet<String> =
            self.params.iter().filter(|(_, r)| r.secure).map(|(k, _)| k.to_string()).collect();
        let machine = self.machine.name.to_string();
        Arc::new(move |name: &str| {
            if names.contains(name) {
                Ok(Value::String(plinth_secrets::REDACTED.into()))
            } else {
                Err(format!("machine `{machine}` has no secure param `{name}`"))
            }
        })
    }

    /// What an installer needs to configure the machine's network, every key
    /// present (null or empty when unknown): `hostname`, `domain` (the
    /// subnet's, else param `domain`), `fqdn`, `address` (the lease's, else
    /// the machine's), `netmask`, `prefix_len`, `gateway`, `dns`, `ntp`
    /// (param `ntp-servers` when set, else the subnet's).
    fn network(&self) -> Value {
        let params = self.plain_params();
        let subnet = self.subnet.as_ref();
        let domain = subnet
            .and_then(|s| s.domain_name.clone())
            .filter(|d| !d.is_empty())
            .or_else(|| params.get("domain").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        // Param `hostname` when set, else the machine's name.
        let hostname = params
            .get("hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .map_or_else(|| self.machine.name.to_string(), str::to_owned);
        let fqdn = if domain.is_empty() { hostname.clone() } else { format!("{hostname}.{domain}") };
        let ntp = match params.get("ntp-servers") {
            Some(Value::Array(a)) if !a.is_empty() => Value::Array(a.clone()),
            _ => json!(subnet.map(|s| s.ntp_servers.clone()).unwrap_or_default()),
        };
        json!({"hostname": hostname, "domain": domain, "fqdn": fqdn,
            "address": self.lease.as_ref().map(|l| l.address).or(self.machine.address),
            "netmask": subnet.map(|s| s.cidr.mask()), "prefix_len": subnet.map(|s| s.cidr.prefix),
            "gateway": subnet.and_then(|s| s.router), "dns": subnet.map(|s| s.dns_servers.clone()).unwrap_or_default(),
            "ntp": ntp})
    }

    /// The architecture and firmware to boot: what the client said (iPXE's
    /// `${buildarch}`/`${platform}`), else what its last DHCP request said
    /// (option 93), else the machine's `arch` with BIOS on x86-64 and UEFI
    /// on ARM64.
    pub fn boot_target(&self, provisioner: &Provisioner) -> (Arch, Firmware) {
        let from_lease = self.lease.as_ref().and_then(|l| l.client_arch).and_then(Firmware::from_client_arch);
        let arch = provisioner.arch.or(from_lease.map(|(a, _)| a)).unwrap_or(self.machine.arch);
        let default_fw = if arch == Arch::Arm64 { Firmware::Uefi } else { Firmware::Bios };
        let firmware = provisioner.firmware.or(from_lease.map(|(_, f)| f)).unwrap_or(default_fw);
        (arch, firmware)
    }

    /// The render context: `machine` (without raw params), `params`, `lease`
    /// and `subnet` (when the machine holds a lease), `boot` (the
    /// architecture and firmware being booted), `bootenv` (that variant's
    /// kernel, initrds and rendered `boot_args`, with `initrd_names` for
    /// the EFI `initrd=` argument) and `provisioner` (`http`, `api`).
    pub fn context(&self, provisioner: &Provisioner) -> Result<Value, crate::RenderError> {
        let mut machine = serde_json::to_value(&self.machine).unwrap_or_default();
        if let Value::Object(m) = &mut machine {
            m.remove("params");
        }
        let subnet = self.subnet.as_ref().map(|s| {
            json!({"name": s.name, "cidr": s.cidr, "netmask": s.cidr.mask(), "prefix_len": s.cidr.prefix,
                "router": s.router, "dns_servers": s.dns_servers, "domain_name": s.domain_name, "ntp_servers": s.ntp_servers})
        });
        let (arch, firmware) = self.boot_target(provisioner);
        let mut ctx = json!({"machine": machine, "params": self.plain_params(),
            "provisioner": {"http": provisioner.http, "api": provisioner.api, "ca_pem": provisioner.ca_pem,
                "agent_sha256": provisioner.agent_sha256},
            "boot": {"arch": arch, "firmware": firmware}, "lease": self.lease, "subnet": subnet,
            "network": self.network()});
        if let Some(image) = &self.image {
            // A path in the file root is reached through boot HTTP's `/files/`.
            let url = match (&image.url, &image.path) {
                (Some(url), _) => url.clone(),
                (None, Some(path)) => format!("{}/files/{path}", provisioner.http),
                (None, None) => String::new(),
            };
            ctx["image"] = json!({"name": image.name, "url": url, "format": image.format, "size": image.size,
                "sha256": image.sha256, "raw_size": image.raw_size, "os": image.os, "arch": image.arch,
                "efi_loader": image.efi_loader()});
        }
        if let Some(b) = &self.bootenv {
            let variant = b.variants.iter().find(|v| v.arch == arch && v.firmware == firmware);
            let kernel = variant.and_then(|v| v.kernel.clone()).or_else(|| b.kernel.clone());
            let initrds = variant.and_then(|v| v.initrds.clone()).unwrap_or_else(|| b.initrds.clone());
            let boot_args = variant.and_then(|v| v.boot_args.as_deref()).unwrap_or(&b.boot_args);
            let initrd_names: Vec<&str> = initrds.iter().map(|i| i.rsplit('/').next().unwrap_or(i)).collect();
            ctx["bootenv"] = json!({"name": b.name, "kernel": kernel, "initrds": initrds, "initrd_names": initrd_names,
                "os": b.os, "boot_args": "", "install_url": ""});
            let render_field = |text: &str, what: &str, ctx: &Value| {
                crate::render(
                    self.templates.clone(),
                    Source::Inline(text),
                    ctx,
                    Arc::new(self.plain_params()),
                    &provisioner.hooks,
                )
                .map(|r| r.trim().to_owned())
                .map_err(|e| crate::RenderError { template: format!("bootenv `{}` {what}", b.name), ..e })
            };
            ctx["bootenv"]["install_url"] = json!(render_field(&b.os.install_url, "os.install_url", &ctx)?);
            let args = render_field(boot_args, "boot_args", &ctx)?;
            ctx["bootenv"]["boot_args"] = json!(args);
        }
        Ok(ctx)
    }

    /// Renders `source` for this machine.
    pub fn render(&self, source: Source<'_>, provisioner: &Provisioner) -> Result<String, crate::RenderError> {
        let ctx = self.context(provisioner)?;
        crate::render(self.templates.clone(), source, &ctx, Arc::new(self.plain_params()), &provisioner.hooks)
    }

    /// Every param the bootenv requires has a value for this machine.
    pub fn check_required(&self) -> Result<(), crate::RenderError> {
        let Some(b) = &self.bootenv else { return Ok(()) };
        let missing: Vec<&str> =
            b.required_params.iter().filter(|p| !self.params.contains_key(*p)).map(|p| p.as_str()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(crate::RenderError {
            template: format!("bootenv `{}`", b.name),
            line: None,
            message: format!(
                "requires param{} {} with no value for machine `{}`; set it on the machine, one of its profiles or `global`",
                if missing.len() > 1 { "s" } else { "" },
                missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
                self.machine.name
            ),
        })
    }

    /// The files of the machine's bootenv: each entry's name and the path it
    /// is served at (rendered; `None` for files reached by name, like the
    /// iPXE entry script `ipxe`).
    pub fn files(&self, provisioner: &Provisioner) -> Result<Vec<(String, Option<String>)>, crate::RenderError> {
        let Some(b) = &self.bootenv else { return Ok(Vec::new()) };
        let ctx = self.context(provisioner)?;
        let params = Arc::new(self.plain_params());
        b.templates
            .iter()
            .map(|t| {
                let path = self.entry_path(t, &ctx, &params)?.map(|p| p.trim_start_matches('/').to_owned());
                Ok((t.name.clone(), path))
            })
            .collect()
    }

    /// The path a file entry appears at, rendered (paths render without
    /// hooks: no token is ever minted for a path), or `None` when it has none.
    fn entry_path(
        &self,
        t: &plinth_model::TemplateRef,
        ctx: &Value,
        params: &Arc<BTreeMap<String, Value>>,
    ) -> Result<Option<String>, crate::RenderError> {
        let Some(p) = &t.path else { return Ok(None) };
        let rendered =
            crate::render(self.templates.clone(), Source::Inline(p), ctx, params.clone(), &Hooks::default())?;
        Ok(Some(rendered.trim().to_owned()))
    }

    /// A task's templates rendered for this machine, in order: scripts to
    /// run (no path) and files to write (with their rendered path), as
    /// `(name, path, contents)`. Every param the task requires must have a
    /// value.
    #[allow(clippy::type_complexity)]
    pub fn render_task(
        &self,
        task: &plinth_model::Task,
        provisioner: &Provisioner,
    ) -> Result<Vec<(String, Option<String>, String)>, crate::RenderError> {
        let missing: Vec<&str> =
            task.required_params.iter().filter(|p| !self.params.contains_key(*p)).map(|p| p.as_str()).collect();
        if !missing.is_empty() {
            return Err(crate::RenderError {
                template: format!("task `{}`", task.name),
                line: None,
                message: format!(
                    "requires params with no value for machine `{}`: {}",
                    self.machine.name,
                    missing.join(", ")
                ),
            });
        }
        let ctx = self.context(provisioner)?;
        let params = Arc::new(self.plain_params());
        task.templates
            .iter()
            .map(|t| {
                let path = self.entry_path(t, &ctx, &params)?;
                let source = entry_source(t).unwrap_or(Source::Inline(""));
                let text = crate::render(self.templates.clone(), source, &ctx, params.clone(), &provisioner.hooks)
                    .map_err(|e| crate::RenderError {
                        template: format!("task `{}` {}: {}", task.name, t.name, e.template),
                        ..e
                    })?;
                Ok((t.name.clone(), path, text))
            })
            .collect()
    }

    /// The bootenv file whose rendered path is `path`, rendered.
    pub fn render_path(&self, path: &str, provisioner: &Provisioner) -> Option<Result<String, crate::RenderError>> {
        let wanted = path.trim_start_matches('/');
        self.render_where(provisioner, |view, t, ctx, params| match &t.path {
            // A file without a path is reached by its name (the iPXE entry
            // script is the one named `ipxe`). Paths render without hooks.
            Some(_) => view
                .entry_path(t, ctx, params)
                .is_ok_and(|p| p.as_deref().map(|p| p.trim_start_matches('/')) == Some(wanted)),
            None => t.name == wanted,
        })
    }

    /// The bootenv file named `name` (whatever its path), rendered: GRUB's
    /// own `grub/grub.cfg` is answered with the file named `grub`.
    pub fn render_named(&self, name: &str, provisioner: &Provisioner) -> Option<Result<String, crate::RenderError>> {
        self.render_where(provisioner, |_, t, _, _| t.name == name)
    }

    fn render_where(
        &self,
        provisioner: &Provisioner,
        pick: impl Fn(&MachineView, &plinth_model::TemplateRef, &Value, &Arc<BTreeMap<String, Value>>) -> bool,
    ) -> Option<Result<String, crate::RenderError>> {
        let b = self.bootenv.as_ref()?;
        if let Err(e) = self.check_required() {
            return Some(Err(e));
        }
        let ctx = match self.context(provisioner) {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let params = Arc::new(self.plain_params());
        for t in &b.templates {
            if !pick(self, t, &ctx, &params) {
                continue;
            }
            let Some(source) = entry_source(t) else { continue };
            return Some(crate::render(self.templates.clone(), source, &ctx, params, &provisioner.hooks));
        }
        None
    }
}

impl MachineView {
    /// Every file of the machine's bootenv rendered, as `(name, path,
    /// output or error)`, in the bootenv's order (for upgrade plans).
    #[allow(clippy::type_complexity)]
    pub fn render_all(
        &self,
        provisioner: &Provisioner,
    ) -> Vec<(String, Option<String>, Result<String, crate::RenderError>)> {
        let Some(b) = &self.bootenv else { return Vec::new() };
        if let Err(e) = self.check_required() {
            return vec![(String::from("(bootenv)"), None, Err(e))];
        }
        let ctx = match self.context(provisioner) {
            Ok(c) => c,
            Err(e) => return vec![(String::from("(bootenv)"), None, Err(e))],
        };
        let params = Arc::new(self.plain_params());
        b.templates
            .iter()
            .map(|t| {
                let path = self.entry_path(t, &ctx, &params).ok().flatten();
                let out = match entry_source(t) {
                    Some(source) => {
                        crate::render(self.templates.clone(), source, &ctx, params.clone(), &provisioner.hooks)
                    }
                    None => Ok(String::new()),
                };
                (t.name.clone(), path, out)
            })
            .collect()
    }
}

/// A machine's view from a [`Shared`] snapshot and the lease already found
/// (no store access).
pub fn view_from(
    shared: &Shared,
    machine: Machine,
    lease: Option<plinth_model::Lease>,
) -> Result<MachineView, LoadError> {
    let stage = machine.stage.as_ref().and_then(|s| shared.stages.get(s));
    let workflow = machine.workflow.as_ref().and_then(|w| shared.workflows.get(w));
    let resolved =
        resolve(&Layers { machine: &machine, profiles: &shared.profiles, stage, workflow, params: &shared.params })?;
    let bootenv = shared.bootenvs.get(&machine.bootenv).cloned();
    let subnet = lease.as_ref().and_then(|l| shared.subnets.get(&l.subnet)).cloned();
    let image = resolved
        .iter()
        .find(|(k, r)| k.as_str() == plinth_model::integrity::IMAGE_PARAM && !r.secure)
        .and_then(|(_, r)| r.value.as_str())
        .and_then(|name| shared.images.iter().find(|(n, _)| n.as_str() == name))
        .map(|(_, i)| i.clone());
    Ok(MachineView { machine, params: resolved, bootenv, templates: shared.templates.clone(), lease, subnet, image })
}

/// What a file entry renders: a stored template by name, or its inline text.
fn entry_source(t: &plinth_model::TemplateRef) -> Option<Source<'_>> {
    match (&t.template, &t.contents) {
        (Some(name), _) => Some(Source::Named(name.as_str())),
        (None, Some(text)) => Some(Source::Inline(text)),
        (None, None) => None,
    }
}

/// What a debugging render (`POST /api/v1/render`) renders for a machine.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DebugTarget {
    /// A stored template by name.
    Template(String),
    /// Template text.
    Contents(String),
    /// A file of the machine's bootenv, by path or name.
    BootenvFile(String),
}

/// A render without side effects, self-contained so that it can run in a
/// process of its own: the machine's view, what to render, and where the
/// machine reaches Plinth. Tokens render as placeholders and secure values
/// as `<secure>`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct DebugRender {
    pub view: MachineView,
    pub target: DebugTarget,
    pub http: String,
    pub api: String,
    pub arch: Option<Arch>,
    pub firmware: Option<Firmware>,
    pub ca_pem: String,
}

/// What `machine_token()` renders as in a debugging render: no token is
/// issued, so rendering stays free of side effects.
pub const TOKEN_PLACEHOLDER: &str = "<machine-token>";

/// What `metadata_token()` renders as where no token is minted.
pub const METADATA_TOKEN_PLACEHOLDER: &str = "<metadata-token>";

impl DebugRender {
    /// Renders; `Ok(None)` when the bootenv has no such file.
    pub fn run(&self) -> Result<Option<String>, crate::RenderError> {
        let provisioner = Provisioner {
            http: self.http.clone(),
            api: self.api.clone(),
            arch: self.arch,
            firmware: self.firmware,
            ca_pem: self.ca_pem.clone(),
            agent_sha256: Default::default(),
            hooks: Hooks {
                machine_token: Some(Arc::new(|| Ok(TOKEN_PLACEHOLDER.to_owned()))),
                join_token: Some(Arc::new(|| Ok("<join-token>".to_owned()))),
                secure_param: Some(self.view.secure_placeholders()),
                metadata_token: Some(Arc::new(|| Ok(METADATA_TOKEN_PLACEHOLDER.to_owned()))),
            },
        };
        match &self.target {
            DebugTarget::Template(name) => self.view.render(Source::Named(name), &provisioner).map(Some),
            DebugTarget::Contents(text) => self.view.render(Source::Inline(text), &provisioner).map(Some),
            DebugTarget::BootenvFile(path) => self.view.render_path(path, &provisioner).transpose(),
        }
    }
}
