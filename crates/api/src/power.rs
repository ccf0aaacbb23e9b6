//! Machines' power through their BMCs: the BMC password sealed as it is
//! written, the routes that read and change power (`/machines/{id}/power`,
//! `boot-once`, `rebuild`, `enroll`), and the server's power task, which
//! polls every BMC at a bounded rate, carries out the power actions the
//! workflow asks for, and power-cycles machines that did not come back
//! from a reboot or whose agent went silent in a job.

use crate::agent::{audit_action, body, machine_id, machine_json};
use crate::extract::Path;
use crate::{ApiError, AppState, Principal};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use plinth_model::{
    BootDevice, Job, JobState, Kind, Machine, MachineId, Name, PowerAction, PowerState, PowerStatus, WorkflowState,
};
use plinth_power::{Driver, PowerError};
use plinth_secrets::{REDACTED, contains_sealed, is_sealed};
use plinth_store::{Filter, StoreExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// What a BMC password is sealed for: no param can be named so.
pub const PASSWORD_AD: &str = "bmc:password";

/// Between changes, a polled state is written back at most this often.
const REFRESH: Duration = Duration::from_secs(3600);

/// How the server drives BMCs.
#[derive(Debug, Clone)]
pub struct PowerConfig {
    /// One BMC call's time, and the `ipmitool` to run.
    pub limits: plinth_power::Limits,
    /// Most BMC calls at once, server-wide.
    pub concurrency: usize,
    /// How often every BMC's power state is read; `None`: never polled.
    pub poll: Option<Duration>,
    /// A machine with a BMC told to reboot that has not come back (its
    /// agent from a new boot) within this is power-cycled.
    pub reboot_timeout: Duration,
    /// How many such cycles before the server gives up on it.
    pub reboot_cycles: u32,
    /// How long past its task's time limit a job may run with no word
    /// from its agent before the machine is recovered through its BMC.
    pub job_grace: Duration,
    /// Virtual media: where per-machine images are written and served.
    pub media: Option<MediaConfig>,
}

/// Where per-machine virtual media images go and how machines reach them.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// The file root: the base image is `discovery/discovery.iso`, the
    /// per-machine ones go under `media/`.
    pub file_root: std::path::PathBuf,
    /// The boot HTTP server's URL as machines reach it (`--boot-url`).
    pub boot_url: Option<String>,
    /// The lifetime of the boot credential an image carries.
    pub credential_ttl: Duration,
    /// The `xorriso` program.
    pub xorriso: std::path::PathBuf,
}

/// The boot HTTP server's URL as machines reach it: `--boot-url`, else
/// the host the API call named (its `Host`, without the port), with the
/// boot HTTP port.
pub(crate) fn boot_base(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let host =
        host.rsplit_once(':').map_or(host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
    let configured = state.power.config.media.as_ref().and_then(|m| m.boot_url.clone());
    match (configured, state.power.http_port.get()) {
        (Some(u), _) => Ok(u.trim_end_matches('/').to_owned()),
        (None, Some(port)) => Ok(format!("http://{host}:{port}")),
        (None, None) => Err(ApiError::Conflict("boot HTTP is not listening".into())),
    }
}

impl Default for PowerConfig {
    fn default() -> PowerConfig {
        PowerConfig {
            limits: plinth_power::Limits::default(),
            concurrency: 16,
            poll: Some(Duration::from_secs(300)),
            reboot_timeout: Duration::from_secs(1200),
            reboot_cycles: 2,
            job_grace: Duration::from_secs(120),
            media: None,
        }
    }
}

/// The server's power state: its settings and the slots BMC calls take.
#[derive(Debug)]
pub struct Power {
    pub config: PowerConfig,
    slots: tokio::sync::Semaphore,
    /// The boot HTTP server's port, once it listens.
    pub http_port: std::sync::OnceLock<u16>,
}

impl Power {
    pub fn new(config: PowerConfig) -> Power {
        let slots = tokio::sync::Semaphore::new(config.concurrency.max(1));
        Power { config, slots, http_port: std::sync::OnceLock::new() }
    }
}

impl Default for Power {
    fn default() -> Power {
        Power::new(PowerConfig::default())
    }
}

/// Seals the plain BMC password of a machine body about to be written, or
/// keeps the stored one for `<secure>` (or none given); the server-written
/// `power` and `power_request` are kept as stored, whatever the client sent.
pub(crate) fn prepare_machine(
    state: &AppState,
    key: &str,
    body: &mut Value,
    previous: Option<&Value>,
) -> Result<(), ApiError> {
    let Value::Object(map) = body else { return Ok(()) };
    for field in ["power", "power_request"] {
        match previous.and_then(|p| p.get(field)).filter(|v| !v.is_null()) {
            Some(v) => map.insert(field.into(), v.clone()),
            None => map.remove(field),
        };
    }
    let Some(Value::Object(bmc)) = map.get_mut("bmc") else { return Ok(()) };
    let stored = previous.and_then(|p| p.pointer("/bmc/password")).filter(|v| is_sealed(v)).cloned();
    let given = bmc.get("password").cloned().unwrap_or(Value::Null);
    let sealed = match given {
        Value::Null => stored.unwrap_or(Value::Null),
        Value::String(s) if s == REDACTED => stored.ok_or_else(|| {
            ApiError::field(
                "bmc.password",
                format!(
                    "machines `{key}`: `{REDACTED}` keeps a stored BMC password, but there is none; send the password"
                ),
            )
        })?,
        v if contains_sealed(&v) => {
            return Err(ApiError::field(
                "bmc.password",
                "sealed values are written by the server only; send the plain password",
            ));
        }
        v @ Value::String(_) => state.keyring.seal(PASSWORD_AD, &v).map_err(|e| ApiError::Internal(e.to_string()))?,
        _ => return Err(ApiError::field("bmc.password", "expected a string")),
    };
    bmc.insert("password".into(), sealed);
    Ok(())
}

/// The driver for machine `m`'s BMC, its password opened.
pub(crate) fn driver(state: &AppState, m: &Machine) -> Result<Driver, PowerError> {
    let Some(bmc) = &m.bmc else {
        return Err(PowerError::Config(format!(
            "machine `{}` has no BMC; give it one (`plinth machines bmc {} --driver ipmi|redfish …`)",
            m.name, m.id
        )));
    };
    let password = match &bmc.password {
        Value::Null => String::new(),
        v if is_sealed(v) => match state.keyring.open(PASSWORD_AD, v) {
            Ok(Value::String(s)) => s,
            _ => return Err(PowerError::Config("the stored BMC password cannot be opened; set it again".into())),
        },
        Value::String(s) => s.clone(),
        _ => return Err(PowerError::Config("the stored BMC password is not a string; set it again".into())),
    };
    Driver::new(bmc, &password, &state.power.config.limits)
}

/// Runs `call` on machine `m`'s BMC, in one of the server's slots.
async fn with_bmc<T, F, Fut>(state: &AppState, m: &Machine, call: F) -> Result<T, PowerError>
where
    F: FnOnce(Driver) -> Fut,
    Fut: Future<Output = Result<T, PowerError>>,
{
    let driver = driver(state, m)?;
    let _slot = state.power.slots.acquire().await.map_err(|_| PowerError::Failed("the server is stopping".into()))?;
    call(driver).await
}

/// Reads machine `m`'s power and stores what was read (`force`: even when
/// nothing changed); the status.
async fn read(state: &AppState, m: &Machine, force: bool) -> Result<PowerStatus, ApiError> {
    let read = with_bmc(state, m, |d| async move { d.status().await }).await;
    record(state, m.id, read.as_ref().ok().copied(), read.err().map(|e| e.to_string()), force).await
}

/// Stores a power reading: `state` when it was read (else unknown) and the
/// error in words, when there was one. Written when state or error
/// changed, or `force`, or the stored reading is older than [`REFRESH`].
async fn record(
    state: &AppState,
    id: MachineId,
    power: Option<PowerState>,
    error: Option<String>,
    force: bool,
) -> Result<PowerStatus, ApiError> {
    let now = plinth_model::now();
    let next = |old: Option<&PowerStatus>| {
        let state = power.unwrap_or(PowerState::Unknown);
        let changed = old.is_none_or(|o| o.state != state || o.error != error);
        PowerStatus {
            state,
            checked_at: Some(now),
            changed_at: if changed { Some(now) } else { old.and_then(|o| o.changed_at) },
            error: error.clone(),
        }
    };
    let Some((m, _)) = state.store.get_as::<Machine>(&id.to_string()).await? else {
        return Err(ApiError::NotFound(format!("machines `{id}` not found")));
    };
    let fresh =
        m.power.as_ref().and_then(|p| p.checked_at).is_some_and(|t| (now - t).to_std().unwrap_or_default() < REFRESH);
    let status = next(m.power.as_ref());
    if !force && fresh && status.changed_at == m.power.as_ref().and_then(|p| p.changed_at) {
        return Ok(status);
    }
    let m = state
        .store
        .update_as::<Machine, ApiError, _>(&id.to_string(), |m| {
            m.power = Some(next(m.power.as_ref()));
            Ok(())
        })
        .await?;
    Ok(m.power.unwrap_or_default())
}

/// A BMC failure as an API answer: 502, the BMC's trouble in words.
fn bmc_error(m: &Machine, what: &str, e: &PowerError) -> ApiError {
    let detail = format!("machine `{}`: {what}: {e}", m.name);
    match e {
        // What the machine's BMC settings or the BMC itself cannot do is
        // a conflict with the machine as stored, not a failing gateway.
        PowerError::Config(_) | PowerError::Unsupported(_) => ApiError::Conflict(detail),
        _ => ApiError::BadGateway(detail),
    }
}

async fn note(state: &AppState, m: &Machine, detail: String) {
    let _ = state.store.append_boot_events(vec![plinth_model::BootEvent::about(m, "power", detail)]).await;
}

pub(crate) async fn machine(state: &AppState, id: &str) -> Result<Machine, ApiError> {
    let id = machine_id(id)?;
    state
        .store
        .get_as::<Machine>(&id.to_string())
        .await?
        .map(|(m, _)| m)
        .ok_or_else(|| ApiError::NotFound(format!("machines `{id}` not found")))
}

/// Whether machine `m` boots with UEFI, as far as Plinth saw: its last
/// lease's client architecture, else its inventory.
async fn uefi(state: &AppState, m: &Machine) -> bool {
    for mac in &m.macs {
        let filter = Filter { path: vec!["mac".into()], value: json!(mac.to_string()) };
        if let Ok(leases) = state.store.list_all(Kind::Lease, vec![filter]).await
            && let Some(arch) = leases.iter().filter_map(|l| l.body.get("client_arch").and_then(Value::as_u64)).next()
        {
            return arch != 0;
        }
    }
    m.inventory.pointer("/firmware").and_then(Value::as_str) == Some("uefi")
}

/// Carries out `action` on `m` (audited as `actor`, on the timeline), then
/// reads and stores its state.
async fn act(
    state: &AppState,
    m: &Machine,
    action: PowerAction,
    actor: String,
    why: &str,
) -> Result<PowerStatus, ApiError> {
    let done = with_bmc(state, m, |d| async move { d.act(action).await }).await;
    let after = read(state, m, true).await?;
    let outcome = match &done {
        Ok(()) => format!("power {}{why}: done, now {}", action.as_str(), state_word(after.state)),
        Err(e) => format!("power {}{why}: {e}", action.as_str()),
    };
    note(state, m, outcome.clone()).await;
    let entry = plinth_model::AuditEntry::new(actor, "updated", Kind::Machine, m.id.to_string(), None, None, outcome);
    state.store.append_audit(vec![entry]).await?;
    match done {
        Ok(()) => Ok(after),
        Err(e) => {
            if after.error.is_none() {
                record(state, m.id, Some(after.state), Some(e.to_string()), true).await?;
            }
            Err(bmc_error(m, &format!("power {}", action.as_str()), &e))
        }
    }
}

fn state_word(s: PowerState) -> &'static str {
    match s {
        PowerState::On => "on",
        PowerState::Off => "off",
        PowerState::Unknown => "unknown",
    }
}

fn answer(m: &Machine, action: Option<&str>, status: &PowerStatus) -> Value {
    json!({"machine": m.id, "name": m.name, "action": action, "state": status.state,
        "checked_at": status.checked_at, "error": status.error})
}

/// `GET /api/v1/machines/{id}/power`: the state read from the BMC now.
pub async fn status(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let m = machine(&state, &id).await?;
    if m.bmc.is_none() {
        // No BMC: said as the driver says it, and nothing recorded.
        driver(&state, &m).map_err(|e| bmc_error(&m, "power status", &e))?;
    }
    let status = read(&state, &m, true).await?;
    if let Some(e) = &status.error {
        return Err(ApiError::BadGateway(format!("machine `{}`: power status: {e}", m.name)));
    }
    Ok(Json(answer(&m, Some("status"), &status)))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PowerBody {
    #[schemars(with = "PowerAction")]
    action: Option<PowerAction>,
}

/// `POST /api/v1/machines/{id}/power` `{"action": …}`: a power action.
pub async fn power(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let req: PowerBody = body(&headers, b).await?;
    let action = req.action.ok_or_else(|| ApiError::field("action", "give one of on, off, cycle, reset, soft-off"))?;
    let m = machine(&state, &id).await?;
    driver(&state, &m).map_err(|e| bmc_error(&m, &format!("power {}", action.as_str()), &e))?;
    let status = act(&state, &m, action, principal.actor(), "").await?;
    Ok(Json(answer(&m, Some(action.as_str()), &status)))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BootOnceBody {
    #[schemars(with = "BootDevice")]
    device: Option<BootDevice>,
    /// UEFI boot (IPMI `efiboot`, Redfish `BootSourceOverrideMode`);
    /// by default what Plinth saw the machine boot with.
    #[serde(default)]
    uefi: Option<bool>,
}

async fn boot_once_on(
    state: &AppState,
    m: &Machine,
    device: BootDevice,
    uefi_mode: Option<bool>,
    actor: String,
) -> Result<(), ApiError> {
    let uefi_mode = match uefi_mode {
        Some(u) => u,
        None => uefi(state, m).await,
    };
    let done = with_bmc(state, m, |d| async move { d.boot_once(device, uefi_mode).await }).await;
    let outcome = match &done {
        Ok(()) => format!("boot once from {}: set", device.as_str()),
        Err(e) => format!("boot once from {}: {e}", device.as_str()),
    };
    note(state, m, outcome.clone()).await;
    let entry = plinth_model::AuditEntry::new(actor, "updated", Kind::Machine, m.id.to_string(), None, None, outcome);
    state.store.append_audit(vec![entry]).await?;
    done.map_err(|e| bmc_error(m, &format!("boot once from {}", device.as_str()), &e))
}

/// `POST /api/v1/machines/{id}/boot-once` `{"device": "pxe"|"disk"|"cd"}`.
pub async fn boot_once(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let req: BootOnceBody = body(&headers, b).await?;
    let device = req.device.ok_or_else(|| ApiError::field("device", "give one of pxe, disk, cd"))?;
    let m = machine(&state, &id).await?;
    driver(&state, &m).map_err(|e| bmc_error(&m, "boot once", &e))?;
    boot_once_on(&state, &m, device, req.uefi, principal.actor()).await?;
    Ok(Json(json!({"machine": m.id, "name": m.name, "device": device})))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RebuildBody {
    /// The workflow to run; by default the machine's own.
    #[serde(default)]
    #[schemars(with = "Option<plinth_model::Name>")]
    workflow: Option<String>,
}

/// `POST /api/v1/machines/{id}/rebuild` `{"workflow": W}`: a whole
/// reprovision with nobody at the machine: the workflow assigned (waiting
/// for the machine's next boot), one network boot set, the machine
/// power-cycled (or powered on).
pub async fn rebuild(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let req: RebuildBody = body(&headers, b).await?;
    let m = machine(&state, &id).await?;
    if !principal.may("machines", "update", Some(&m.id.to_string()))
        && !principal.may("machines", "update", Some(m.name.as_str()))
    {
        return Err(ApiError::Forbidden(format!(
            "a rebuild changes machine `{}`: it needs the claim `update machines`",
            m.name
        )));
    }
    let wf: Name = match req.workflow.or_else(|| m.workflow.as_ref().map(|w| w.to_string())) {
        Some(w) => w.parse().map_err(|e: String| ApiError::field("workflow", e))?,
        None => {
            return Err(ApiError::Dangling {
                code: "no_workflow",
                field: Some("workflow".into()),
                detail: format!("machine `{}` has no workflow; name one", m.name),
            });
        }
    };
    driver(&state, &m).map_err(|e| bmc_error(&m, "rebuild", &e))?;
    let assigned = plinth_engine::Engine::new(state.store.clone()).assign_for_reboot(m.id, &wf).await?;
    audit_action(
        &state,
        &principal,
        &assigned,
        &machine_json(&assigned)?,
        format!("rebuild: workflow `{wf}` assigned"),
    )
    .await?;
    boot_once_on(&state, &assigned, BootDevice::Pxe, None, principal.actor()).await?;
    let status = act(&state, &assigned, PowerAction::Cycle, principal.actor(), " (rebuild)").await?;
    let mut out = answer(&assigned, Some("rebuild"), &status);
    out["workflow"] = json!(wf);
    Ok(Json(out))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MediaBody {
    #[serde(default)]
    eject: bool,
}

/// The kernel arguments of a static address for `m`: its `address` (or
/// its reservation's) and the subnet that holds it; none when Plinth knows
/// no address for it (the image then asks DHCP for one).
async fn static_address(state: &AppState, m: &Machine) -> Result<Vec<(&'static str, String)>, ApiError> {
    let mut address = m.address;
    if address.is_none() {
        for mac in &m.macs {
            let f = Filter { path: vec!["mac".into()], value: json!(mac.to_string()) };
            if let Some(r) = state.store.list_all(Kind::Reservation, vec![f]).await?.into_iter().next()
                && let Some(a) = r.body.get("address").and_then(Value::as_str).and_then(|a| a.parse().ok())
            {
                address = Some(a);
                break;
            }
        }
    }
    let Some(address) = address else { return Ok(Vec::new()) };
    for r in state.store.list_all(Kind::Subnet, vec![]).await? {
        let Ok(s) = plinth_model::decode::<plinth_model::Subnet>(r.body) else { continue };
        if !s.cidr.contains(address) {
            continue;
        }
        let mut args = vec![("plinth.ip", format!("{address}/{}", s.cidr.prefix))];
        if let Some(gw) = s.router {
            args.push(("plinth.gw", gw.to_string()));
        }
        if !s.dns_servers.is_empty() {
            args.push(("plinth.dns", s.dns_servers.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")));
        }
        if let Some(mac) = m.macs.first() {
            args.push(("plinth.mac", mac.to_string()));
        }
        return Ok(args);
    }
    Err(ApiError::Conflict(format!(
        "machine `{}` has address {address}, but no subnet holds it: create the subnet (its prefix and router go to the image)",
        m.name
    )))
}

/// `POST /api/v1/machines/{id}/boot-media` `{"eject"?: true}`: boots the
/// machine from the discovery image over Redfish virtual media, for
/// networks without DHCP boot options: an image of its own (the base
/// `discovery/discovery.iso` with its id, a boot credential and the
/// server's URLs, and its static address when Plinth knows one) is
/// inserted, booted once, and the machine powered on or cycled. The
/// credential is the one a boot file carries: for this machine only, traded
/// once, gone after `--machine-token-ttl`; the image is removed with it.
pub async fn boot_media(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let req: MediaBody = body(&headers, b).await?;
    let m = machine(&state, &id).await?;
    let check = driver(&state, &m).and_then(|d| d.redfish().map(|_| ()));
    check.map_err(|e| bmc_error(&m, "virtual media", &e))?;
    let Some(media) = state.power.config.media.clone() else {
        return Err(ApiError::Conflict(
            "this server serves no files (--http-addr off): virtual media needs boot HTTP".into(),
        ));
    };
    let dir = plinth_power::media::media_dir(&media.file_root);
    let remove_own = || {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{}-", m.id)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    };
    if req.eject {
        let done = with_bmc(&state, &m, |d| async move { d.redfish()?.eject_media().await }).await;
        remove_own();
        let outcome = match &done {
            Ok(()) => "virtual media ejected".to_owned(),
            Err(e) => format!("virtual media eject: {e}"),
        };
        note(&state, &m, outcome.clone()).await;
        audit_action(&state, &principal, &m, &machine_json(&m)?, outcome).await?;
        done.map_err(|e| bmc_error(&m, "virtual media eject", &e))?;
        return Ok(Json(json!({"machine": m.id, "name": m.name, "ejected": true})));
    }
    let base = media.file_root.join("discovery/discovery.iso");
    if !base.is_file() {
        return Err(ApiError::Conflict(format!(
            "there is no discovery image to insert ({}): run `plinth discovery build --iso` on the server's host",
            base.display()
        )));
    }
    // The URLs the machine reaches the server by.
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let api = state.api_url.clone().unwrap_or_else(|| format!("https://{host}"));
    let http = boot_base(&state, &headers)?;
    // The boot credential the image carries.
    let now = plinth_model::now();
    let expires =
        now + chrono::Duration::from_std(media.credential_ttl).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (mut token, bearer) = plinth_model::Token::mint(
        plinth_model::Name::known("machine"),
        format!("boot credential for {}, on virtual media", m.id),
        expires,
        Some(m.id),
    );
    token.boot = true;
    token.uses_left = Some(1);
    state.store.put_boot_token(&token, now).await?;
    let mut args = vec![
        ("plinth.api", api),
        ("plinth.http", http.clone()),
        ("plinth.machine", m.id.to_string()),
        ("plinth.token", bearer),
    ];
    args.extend(static_address(&state, &m).await?);
    let seed = plinth_power::media::seed(&args).map_err(|e| ApiError::Conflict(e.to_string()))?;
    remove_own();
    let name = format!("{}-{}", m.id, crate::random_secret(16).replace(['-', '_'], "x"));
    let folder = dir.join(&name);
    plinth_secrets::ensure_dir(&dir, 0o711).map_err(|e| ApiError::Internal(format!("{}: {e}", dir.display())))?;
    plinth_secrets::ensure_dir(&folder, 0o711).map_err(|e| ApiError::Internal(format!("{}: {e}", folder.display())))?;
    let image = folder.join("discovery.iso");
    let written =
        plinth_power::media::personalise(&media.xorriso, &base, &image, &seed, Duration::from_secs(120)).await;
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&folder);
        return Err(ApiError::Internal(e.to_string()));
    }
    let url = format!("{}/files/media/{name}/discovery.iso", http.trim_end_matches('/'));
    let inserted = {
        let url = url.clone();
        with_bmc(&state, &m, |d| async move { d.redfish()?.insert_media(&url).await }).await
    };
    let outcome = match &inserted {
        Ok(()) => format!("virtual media inserted: the discovery image (boot credential until {expires})"),
        Err(e) => format!("virtual media insert: {e}"),
    };
    note(&state, &m, outcome.clone()).await;
    audit_action(&state, &principal, &m, &machine_json(&m)?, outcome).await?;
    if let Err(e) = inserted {
        let _ = std::fs::remove_dir_all(&folder);
        return Err(bmc_error(&m, "virtual media insert", &e));
    }
    boot_once_on(&state, &m, BootDevice::Cd, None, principal.actor()).await?;
    let status = act(&state, &m, PowerAction::Cycle, principal.actor(), " (virtual media)").await?;
    let mut out = answer(&m, Some("boot-media"), &status);
    out["image"] = json!(url);
    out["credential_expires_at"] = json!(expires);
    Ok(Json(out))
}

fn redfish_bmc_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let bmc = generator.subschema_for::<plinth_model::Bmc>();
    schemars::json_schema!({"allOf": [bmc, {"properties": {"driver": {"const": "redfish"}}}]})
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrollBody {
    /// The machine's Redfish BMC.
    #[schemars(schema_with = "redfish_bmc_schema")]
    bmc: Value,
    /// The name a new machine gets.
    #[serde(default)]
    #[schemars(with = "Option<plinth_model::Name>")]
    name: Option<String>,
    /// The profiles a new machine gets.
    #[serde(default)]
    #[schemars(with = "Vec<plinth_model::Name>")]
    profiles: Vec<String>,
    /// The workflow a new machine starts.
    #[serde(default)]
    #[schemars(with = "Option<plinth_model::Name>")]
    workflow: Option<String>,
}

/// `POST /api/v1/machines/enroll` `{"bmc": {…}, "name"?, "profiles"?,
/// "workflow"?}`: reads the system's UUID, serial and NIC MACs from a
/// Redfish BMC and creates the machine, or gives the BMC to the machine
/// those match (as `whoami` scores them), before it ever boots.
pub async fn enroll(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    headers: HeaderMap,
    b: axum::body::Body,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let raw = crate::crud::read_json_or_empty(&headers, b).await?.unwrap_or(Value::Null);
    let req: EnrollBody =
        serde_json::from_value(raw).map_err(|e| ApiError::BadRequest(format!("request body: {e}")))?;
    if req.bmc.get("driver").and_then(Value::as_str).is_some_and(|d| d != "redfish") {
        return Err(ApiError::field("bmc.driver", "enrolment reads the system from a Redfish BMC: `redfish`"));
    }
    // The BMC as a machine would hold it: checked, its password sealed.
    let mut probe = json!({"name": "enrol-probe", "bmc": req.bmc});
    prepare_machine(&state, "enrol-probe", &mut probe, None)?;
    let bmc_value = probe["bmc"].clone();
    let (_, checked) = plinth_model::normalize(Kind::Machine, probe).map_err(ApiError::from)?;
    let probe: Machine = plinth_model::decode(checked).map_err(|e| ApiError::Internal(e.to_string()))?;
    let identity = with_bmc(&state, &probe, |d| async move { d.redfish()?.identity().await })
        .await
        .map_err(|e| bmc_error(&probe, "enrol", &e))?;
    let claim = plinth_engine::identity::Claim {
        macs: identity.macs.clone(),
        system_uuid: identity.uuid.clone(),
        serial: identity.serial.clone(),
    };
    if claim.macs.is_empty() && claim.uuid().is_none() {
        return Err(ApiError::BadGateway(
            "the BMC names neither a system UUID nor a NIC MAC: nothing to know the machine by".into(),
        ));
    }
    let system = json!({"uuid": identity.uuid, "serial": identity.serial, "vendor": identity.manufacturer, "product": identity.model});
    let matched = crate::agent::match_machine(&state, &claim).await?;
    let (m, created, score) = match matched {
        Some((m, score)) => {
            if !principal.may("machines", "update", Some(&m.id.to_string())) {
                return Err(ApiError::Forbidden(format!(
                    "the BMC's system is machine `{}`, which this user may not update",
                    m.name
                )));
            }
            let macs = identity.macs.clone();
            let m = state
                .store
                .update_as::<Machine, ApiError, _>(&m.id.to_string(), |m| {
                    m.bmc = probe.bmc.clone();
                    for mac in &macs {
                        if !m.macs.contains(mac) {
                            m.macs.push(*mac);
                        }
                    }
                    if m.inventory.get("system").is_none() && m.inventory.is_object() {
                        m.inventory["system"] = system.clone();
                    }
                    Ok(())
                })
                .await?;
            (m, false, score)
        }
        None => {
            let name = req.name.clone().unwrap_or_else(|| match identity.macs.first() {
                Some(mac) => format!("node-{}", mac.to_string().replace(':', "")),
                None => {
                    format!("node-{}", identity.uuid.as_deref().unwrap_or("bmc").split('-').next().unwrap_or("bmc"))
                }
            });
            let v = json!({"name": name, "macs": identity.macs, "bootenv": "discovery", "profiles": req.profiles,
                "bmc": bmc_value, "inventory": {"system": system}});
            let (key, v) = plinth_model::normalize(Kind::Machine, v).map_err(ApiError::from)?;
            let op = plinth_store::WriteOp::Put {
                kind: Kind::Machine,
                key,
                body: v.clone(),
                expect: plinth_store::Expect::Absent,
            };
            state.store.apply_audited(vec![op], principal.actor()).await?;
            let m: Machine = plinth_model::decode(v).map_err(|e| ApiError::Internal(e.to_string()))?;
            (m, true, 0)
        }
    };
    let detail = if created {
        "enrolled from its BMC: a new machine".to_owned()
    } else {
        format!("enrolled from its BMC: matched (score {score})")
    };
    note(&state, &m, detail.clone()).await;
    audit_action(&state, &principal, &m, &machine_json(&m)?, detail).await?;
    let m = match req.workflow {
        Some(w) => {
            let wf: Name = w.parse().map_err(|e: String| ApiError::field("workflow", e))?;
            plinth_engine::Engine::new(state.store.clone()).assign(m.id, &wf).await?
        }
        None => m,
    };
    let code = if created { axum::http::StatusCode::CREATED } else { axum::http::StatusCode::OK };
    Ok((code, Json(json!({"machine": machine_json(&m)?, "created": created, "score": score}))))
}

/// The server's power task until `stop`: every BMC polled each
/// `config.poll`; every 10 s, the power actions the workflow asked for
/// carried out, machines that have not come back from a reboot within
/// `reboot_timeout` booted once from the network and power-cycled (at
/// most `reboot_cycles` times), and a machine whose job ran past its task's
/// time limit by `job_grace` with no word from its agent recovered the
/// same way, once.
pub async fn run(state: AppState, stop: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_poll: Option<tokio::time::Instant> = None;
    let mut watch = Watch::default();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep(&state, &mut watch).await {
            tracing::warn!(error = %e, "power: cannot sweep machines");
        }
        if let Some(every) = state.power.config.poll
            && last_poll.is_none_or(|t| t.elapsed() >= every)
        {
            last_poll = Some(tokio::time::Instant::now());
            let s = state.clone();
            tokio::spawn(async move { poll_all(&s).await });
        }
    }
}

/// What the watchdogs have done, so each acts once per occasion.
#[derive(Default)]
struct Watch {
    /// Machine → (the reboot it is waiting on, cycles done for it).
    reboots: HashMap<MachineId, (chrono::DateTime<chrono::Utc>, u32)>,
    /// Jobs whose machine was cycled for running past their time.
    jobs: HashSet<plinth_model::JobId>,
}

/// Reads every BMC's power state, `concurrency` at a time.
pub async fn poll_all(state: &AppState) {
    let Ok(records) = state.store.list_all(Kind::Machine, vec![]).await else { return };
    let machines: Vec<Machine> = records
        .into_iter()
        .filter(|r| r.body.get("bmc").is_some_and(|b| !b.is_null()))
        .filter_map(|r| plinth_model::decode::<Machine>(r.body).ok())
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for m in machines {
        let s = state.clone();
        tasks.spawn(async move {
            if let Err(e) = read(&s, &m, false).await {
                tracing::debug!(machine = %m.id, error = %e, "power: cannot record a reading");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn sweep(state: &AppState, watch: &mut Watch) -> Result<(), ApiError> {
    let now = plinth_model::now();
    // Requests the workflow made, and reboots that take too long.
    for r in state.store.list_all(Kind::Machine, vec![]).await? {
        let wants = r.body.get("power_request").is_some_and(|v| !v.is_null());
        let rebooting = r.body.get("workflow_state").and_then(Value::as_str) == Some("rebooting");
        if !(wants || rebooting) || r.body.get("bmc").is_none_or(Value::is_null) {
            continue;
        }
        let Ok(m) = plinth_model::decode::<Machine>(r.body) else { continue };
        if let Some(req) = m.power_request.clone() {
            let s = state.clone();
            let why = format!(" ({})", req.reason);
            // Cleared first: a request is carried out once, whatever the BMC says.
            let cleared = state
                .store
                .update_as::<Machine, ApiError, _>(&m.id.to_string(), |x| {
                    if x.power_request.as_ref() == Some(&req) {
                        x.power_request = None;
                    }
                    Ok(())
                })
                .await;
            if cleared.is_ok() {
                tokio::spawn(async move {
                    let _ = act(&s, &m, req.action, "server:workflow".into(), &why).await;
                });
            }
            continue;
        }
        if m.workflow_state != WorkflowState::Rebooting {
            continue;
        }
        let Some(since) = m.rebooting_since else { continue };
        let entry = watch.reboots.entry(m.id).or_insert((since, 0));
        if entry.0 != since {
            *entry = (since, 0);
        }
        let waited = (now - since).to_std().unwrap_or_default();
        let due = state.power.config.reboot_timeout * (entry.1 + 1);
        if waited < due || entry.1 >= state.power.config.reboot_cycles {
            if waited >= due && entry.1 == state.power.config.reboot_cycles {
                entry.1 += 1;
                note(
                    state,
                    &m,
                    format!("did not come back from its reboot after {} power cycles; giving up", entry.1 - 1),
                )
                .await;
            }
            continue;
        }
        entry.1 += 1;
        let s = state.clone();
        let why = format!(" (no agent from a new boot {} s after the reboot)", waited.as_secs());
        tokio::spawn(async move { recover(&s, &m, &why).await });
    }
    if let Some(media) = &state.power.config.media {
        plinth_power::media::prune(&media.file_root, media.credential_ttl * 2);
    }
    watch.reboots.retain(|_, (since, _)| (now - *since).to_std().unwrap_or_default() < Duration::from_secs(7 * 86_400));
    // Jobs run past their task's time limit: the agent is gone.
    let running = Filter { path: vec!["state".into()], value: json!("running") };
    for r in state.store.list_all(Kind::Job, vec![running]).await? {
        let Ok(job) = plinth_model::decode::<Job>(r.body) else { continue };
        if job.state != JobState::Running || watch.jobs.contains(&job.id) {
            continue;
        }
        let Some(started) = job.started_at else { continue };
        let Some((task, _)) = state.store.get_as::<plinth_model::Task>(job.task.as_str()).await? else { continue };
        if task.timeout_secs == 0 {
            continue;
        }
        let limit = Duration::from_secs(u64::from(task.timeout_secs)) + state.power.config.job_grace;
        if (now - started).to_std().unwrap_or_default() < limit {
            continue;
        }
        let Some((m, _)) = state.store.get_as::<Machine>(&job.machine.to_string()).await? else { continue };
        if m.bmc.is_none() || m.current_job != Some(job.id) {
            continue;
        }
        watch.jobs.insert(job.id);
        let s = state.clone();
        let why = format!(
            " (job {} of task `{}` ran past its {} s with no word from the agent)",
            job.id, job.task, task.timeout_secs
        );
        tokio::spawn(async move { recover(&s, &m, &why).await });
    }
    Ok(())
}

/// Brings back a machine that did not come back by itself: boot once from
/// the network (where Plinth says what it boots; a bootenv `local` boots
/// its disk from there), then a power cycle. A BMC that keeps no boot
/// device still gets the cycle.
async fn recover(state: &AppState, m: &Machine, why: &str) {
    let _ = boot_once_on(state, m, BootDevice::Pxe, None, "server:watchdog".into()).await;
    let _ = act(state, m, PowerAction::Cycle, "server:watchdog".into(), why).await;
}

/// Claims the power routes need, for `auth::requirement`.
pub(crate) fn requirement(
    method: &axum::http::Method,
    id: &str,
    route: &str,
) -> (String, &'static str, Option<String>) {
    let action = if route == "power" && *method == axum::http::Method::GET { "read" } else { "update" };
    ("power".into(), action, Some(id.to_owned()))
}
