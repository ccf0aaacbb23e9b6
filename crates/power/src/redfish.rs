//! DMTF Redfish: a system's power, its one-time boot override, virtual
//! media and identity. Every request carries HTTP basic credentials over
//! TLS, redirects are not followed, answers are bounded and parsed
//! strictly, and every link the BMC returns must stay on the BMC
//! (`/redfish/v1/…`), so a hostile answer cannot send the password
//! elsewhere.

use crate::tls::{Trust, client_config};
use crate::{Identity, PowerError};
use plinth_model::{Bmc, BootDevice, MacAddr, PowerAction, PowerState};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// Most bytes of one answer Plinth reads.
pub const MAX_ANSWER: usize = 1 << 20;

/// One Redfish service and the system Plinth drives on it.
pub struct Redfish {
    base: String,
    username: String,
    password: String,
    system: Option<String>,
    client: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for Redfish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redfish").field("base", &self.base).finish_non_exhaustive()
    }
}

/// A link the BMC gave: a path under `/redfish/v1/`, nothing else.
pub fn link(v: &Value) -> Result<String, PowerError> {
    let s = v
        .get("@odata.id")
        .and_then(Value::as_str)
        .or_else(|| v.as_str())
        .ok_or_else(|| PowerError::Garbage("a link without `@odata.id`".into()))?;
    check_path(s)
}

/// `s` as a path on the BMC: `/redfish/v1/…`, no scheme, host, `..`,
/// query or control characters.
pub fn check_path(s: &str) -> Result<String, PowerError> {
    let ok = s.starts_with("/redfish/v1/")
        && s.len() <= 512
        && !s.split('/').any(|c| c == "..")
        && s.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '?' | '#' | '\\' | '%'));
    if ok {
        Ok(s.trim_end_matches('/').to_owned())
    } else {
        Err(PowerError::Garbage(format!("a link that leaves the BMC's Redfish tree: {}", crate::ipmi::quote(s))))
    }
}

/// The members of a collection.
pub fn members(collection: &Value) -> Result<Vec<String>, PowerError> {
    let Some(items) = collection.get("Members").and_then(Value::as_array) else {
        return Err(PowerError::Garbage("a collection without `Members`".into()));
    };
    if items.len() > 1024 {
        return Err(PowerError::Garbage(format!("a collection of {} members", items.len())));
    }
    items.iter().map(link).collect()
}

/// A system's `PowerState`.
pub fn power_state(system: &Value) -> Result<PowerState, PowerError> {
    match system.get("PowerState").and_then(Value::as_str) {
        Some("On" | "PoweringOn") => Ok(PowerState::On),
        Some("Off" | "PoweringOff") => Ok(PowerState::Off),
        Some(other) => Err(PowerError::Garbage(format!("PowerState {}", crate::ipmi::quote(other)))),
        None => Err(PowerError::Garbage("the system has no PowerState".into())),
    }
}

/// The reset action of a system: its target and the reset types it allows
/// (empty when the BMC does not say).
pub fn reset_action(system: &Value) -> Result<(String, Vec<String>), PowerError> {
    let action = system
        .pointer("/Actions/#ComputerSystem.Reset")
        .ok_or_else(|| PowerError::Unsupported("the BMC offers no ComputerSystem.Reset action".into()))?;
    let target = check_path(
        action
            .get("target")
            .and_then(Value::as_str)
            .ok_or_else(|| PowerError::Garbage("a reset action without target".into()))?,
    )?;
    let allowed = action
        .get("ResetType@Redfish.AllowableValues")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    Ok((target, allowed))
}

/// What a system says of itself, and its NICs' MACs (from `nics`, the
/// members of its EthernetInterfaces).
pub fn identity(system: &Value, nics: &[Value]) -> Result<Identity, PowerError> {
    let text = |k: &str| {
        system
            .get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .map(str::to_owned)
    };
    let mut macs = Vec::new();
    for nic in nics {
        let mac = nic.get("PermanentMACAddress").or_else(|| nic.get("MACAddress")).and_then(Value::as_str);
        if let Some(m) = mac
            && let Ok(mac) = m.parse::<MacAddr>()
            && !macs.contains(&mac)
        {
            macs.push(mac);
        }
    }
    let uuid = text("UUID").map(|u| u.to_lowercase());
    if uuid.as_deref().is_some_and(|u| u.len() != 36 || !u.chars().all(|c| c.is_ascii_hexdigit() || c == '-')) {
        return Err(PowerError::Garbage(format!("UUID {}", crate::ipmi::quote(uuid.as_deref().unwrap_or("")))));
    }
    Ok(Identity { uuid, serial: text("SerialNumber"), manufacturer: text("Manufacturer"), model: text("Model"), macs })
}

/// The message a Redfish error answer carries.
fn error_message(body: &Value) -> Option<String> {
    body.pointer("/error/@Message.ExtendedInfo/0/Message")
        .or_else(|| body.pointer("/error/message"))
        .and_then(Value::as_str)
        .map(crate::ipmi::quote)
}

impl Redfish {
    /// A service at `bmc.address`, judged as `bmc` says.
    pub fn new(bmc: &Bmc, password: &str, timeout: Duration) -> Result<Redfish, PowerError> {
        let address = bmc.address.trim().trim_end_matches('/');
        let base = if address.contains("://") { address.to_owned() } else { format!("https://{address}") };
        let url = reqwest::Url::parse(&base)
            .map_err(|e| PowerError::Config(format!("bmc.address `{}`: {e}", address.escape_debug())))?;
        if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
            return Err(PowerError::Config("bmc.address is `host[:port]` or `https://host[:port]`, no path".into()));
        }
        match url.scheme() {
            "https" => {}
            "http" if bmc.insecure_tls => {}
            "http" => {
                return Err(PowerError::Config(
                    "bmc.address is plain http://, which sends the password in the clear; use https:// \
                     (or set bmc.insecure_tls for lab gear)"
                        .into(),
                ));
            }
            other => return Err(PowerError::Config(format!("bmc.address scheme `{other}` is not https"))),
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(1);
        let trust = if bmc.insecure_tls {
            Some(Trust::Any)
        } else if let Some(f) = &bmc.fingerprint {
            Some(Trust::Pinned(
                plinth_model::parse_fingerprint(f)
                    .ok_or_else(|| PowerError::Config("bmc.fingerprint is not a SHA-256".into()))?,
            ))
        } else {
            bmc.ca_pem.as_deref().map(Trust::Ca)
        };
        if let Some(t) = trust {
            builder = builder.use_preconfigured_tls(client_config(t)?);
        }
        let client = builder.build().map_err(|e| PowerError::Config(format!("HTTP client: {e}")))?;
        let system = match &bmc.system {
            Some(s) if s.starts_with('/') => Some(check_path(s)?),
            Some(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {
                Some(format!("/redfish/v1/Systems/{s}"))
            }
            Some(s) => {
                return Err(PowerError::Config(format!("bmc.system `{}` is not an id or a path", s.escape_debug())));
            }
            None => None,
        };
        Ok(Redfish {
            base: url.as_str().trim_end_matches('/').to_owned(),
            username: bmc.username.clone(),
            password: password.to_owned(),
            system,
            client,
            timeout,
        })
    }

    /// One request; the answer's JSON (`Null` for an empty one) and ETag.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Result<(Value, Option<String>), PowerError> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .basic_auth(&self.username, Some(&self.password))
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(e) = if_match {
            req = req.header("If-Match", e);
        }
        let mut resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            if bytes.len() + chunk.len() > MAX_ANSWER {
                return Err(PowerError::Garbage(format!("an answer to {method} {path} over {MAX_ANSWER} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        let json = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).ok().unwrap_or(Value::Null)
        };
        let why = || error_message(&json).map(|m| format!(": {m}")).unwrap_or_default();
        match status {
            s if s.is_success() => {
                if json.is_null() && method == Method::GET {
                    return Err(PowerError::Garbage(format!("GET {path} answered {s} without JSON")));
                }
                Ok((json, etag))
            }
            StatusCode::UNAUTHORIZED => {
                Err(PowerError::BadCredentials(format!("the BMC refused the user name or password{}", why())))
            }
            StatusCode::FORBIDDEN => Err(PowerError::BadCredentials(format!("the BMC user may not do this{}", why()))),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => {
                Err(PowerError::Unsupported(format!("{method} {path}: {status}{}", why())))
            }
            s => Err(PowerError::Failed(format!("{method} {path}: {s}{}", why()))),
        }
    }

    async fn get(&self, path: &str) -> Result<Value, PowerError> {
        Ok(self.call(Method::GET, path, None, None).await?.0)
    }

    /// A transport failure in words: TLS, unreachable or timed out.
    fn transport(&self, e: reqwest::Error) -> PowerError {
        let mut chain = Vec::new();
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = source {
            chain.push(s.to_string());
            source = s.source();
        }
        let text = chain.join(": ");
        let tls = ["certificate", "Certificate", "tls", "TLS", "handshake", "SHA-256"];
        if tls.iter().any(|t| text.contains(t)) && !e.is_timeout() {
            let last = chain.last().cloned().unwrap_or_default();
            return PowerError::Tls(format!(
                "the BMC's certificate is not trusted ({last}); give bmc.ca_pem or bmc.fingerprint"
            ));
        }
        if e.is_timeout() {
            return PowerError::Unreachable(format!(
                "no answer from {} within {} s",
                self.base,
                self.timeout.as_secs()
            ));
        }
        if e.is_connect() {
            return PowerError::Unreachable(format!(
                "cannot connect to {}: {}",
                self.base,
                chain.last().cloned().unwrap_or_default()
            ));
        }
        PowerError::Failed(format!("{}: {text}", self.base))
    }

    /// The system's path: the configured one, or the service's only one.
    async fn system_path(&self) -> Result<String, PowerError> {
        if let Some(s) = &self.system {
            return Ok(s.clone());
        }
        let systems = members(&self.get("/redfish/v1/Systems").await?)?;
        match systems.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(PowerError::Unsupported("the BMC manages no system".into())),
            many => Err(PowerError::Config(format!(
                "the BMC manages {} systems ({}); set bmc.system to one",
                many.len(),
                many.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    async fn system(&self) -> Result<(String, Value, Option<String>), PowerError> {
        let path = self.system_path().await?;
        let (body, etag) = self.call(Method::GET, &path, None, None).await?;
        Ok((path, body, etag))
    }

    /// The system's power state.
    pub async fn status(&self) -> Result<PowerState, PowerError> {
        power_state(&self.system().await?.1)
    }

    /// Carries out `action`.
    pub async fn act(&self, action: PowerAction) -> Result<(), PowerError> {
        let (_, system, _) = self.system().await?;
        let (target, allowed) = reset_action(&system)?;
        let (target, allowed) = (&target, &allowed);
        let may = |t: &str| allowed.is_empty() || allowed.iter().any(|a| a == t);
        let reset = |t: &'static str| async move {
            if !may(t) {
                return Err(PowerError::Unsupported(format!(
                    "the BMC does not allow ResetType {t} (it allows {})",
                    allowed.join(", ")
                )));
            }
            self.call(Method::POST, target, Some(json!({"ResetType": t})), None).await.map(|_| ())
        };
        match action {
            PowerAction::On => reset("On").await,
            PowerAction::Off => reset("ForceOff").await,
            PowerAction::SoftOff => reset("GracefulShutdown").await,
            PowerAction::Reset => reset("ForceRestart").await,
            PowerAction::Cycle if !allowed.is_empty() && may("PowerCycle") => reset("PowerCycle").await,
            PowerAction::Cycle => {
                reset("ForceOff").await?;
                let until = tokio::time::Instant::now() + self.timeout;
                while self.status().await? != PowerState::Off {
                    if tokio::time::Instant::now() > until {
                        return Err(PowerError::Failed("the system did not power off for the cycle".into()));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                reset("On").await
            }
        }
    }

    /// Boots `device` once, at the next boot.
    pub async fn boot_once(&self, device: BootDevice, uefi: bool) -> Result<(), PowerError> {
        let (path, system, etag) = self.system().await?;
        let target = match device {
            BootDevice::Pxe => "Pxe",
            BootDevice::Disk => "Hdd",
            BootDevice::Cd => "Cd",
        };
        if let Some(allowed) =
            system.pointer("/Boot/BootSourceOverrideTarget@Redfish.AllowableValues").and_then(Value::as_array)
            && !allowed.iter().any(|a| a.as_str() == Some(target))
        {
            return Err(PowerError::Unsupported(format!("the BMC cannot boot {target} once")));
        }
        let mut boot = json!({"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": "Once"});
        if uefi && system.pointer("/Boot/BootSourceOverrideMode").is_some() {
            boot["BootSourceOverrideMode"] = json!("UEFI");
        }
        self.call(Method::PATCH, &path, Some(json!({"Boot": boot})), etag.as_deref()).await.map(|_| ())
    }

    /// The system's CD/DVD virtual media device: under the system (as
    /// sushy-tools puts it) or its manager's.
    async fn cd_media(&self) -> Result<(String, Value), PowerError> {
        let (_, system, _) = self.system().await?;
        let mut collections = Vec::new();
        if let Some(v) = system.get("VirtualMedia") {
            collections.push(link(v)?);
        }
        if let Some(managers) = system.pointer("/Links/ManagedBy").and_then(Value::as_array) {
            for m in managers.iter().take(4) {
                let manager = self.get(&link(m)?).await?;
                if let Some(v) = manager.get("VirtualMedia") {
                    collections.push(link(v)?);
                }
            }
        }
        for c in collections {
            for m in members(&self.get(&c).await?)? {
                let media = self.get(&m).await?;
                let types = media.get("MediaTypes").and_then(Value::as_array).cloned().unwrap_or_default();
                if types.iter().any(|t| matches!(t.as_str(), Some("CD" | "DVD"))) {
                    return Ok((m, media));
                }
            }
        }
        Err(PowerError::Unsupported("the BMC has no CD or DVD virtual media".into()))
    }

    /// Inserts the image at `url` as a virtual CD (ejecting what is in).
    pub async fn insert_media(&self, url: &str) -> Result<(), PowerError> {
        let (path, media) = self.cd_media().await?;
        if media.get("Inserted") == Some(&Value::Bool(true)) {
            self.eject_at(&path, &media).await?;
        }
        let body = json!({"Image": url, "Inserted": true, "WriteProtected": true});
        match media.pointer("/Actions/#VirtualMedia.InsertMedia/target").and_then(Value::as_str) {
            Some(t) => self.call(Method::POST, &check_path(t)?, Some(body), None).await.map(|_| ()),
            None => self.call(Method::PATCH, &path, Some(body), None).await.map(|_| ()),
        }
    }

    async fn eject_at(&self, path: &str, media: &Value) -> Result<(), PowerError> {
        match media.pointer("/Actions/#VirtualMedia.EjectMedia/target").and_then(Value::as_str) {
            Some(t) => self.call(Method::POST, &check_path(t)?, Some(json!({})), None).await.map(|_| ()),
            None => {
                self.call(Method::PATCH, path, Some(json!({"Image": null, "Inserted": false})), None).await.map(|_| ())
            }
        }
    }

    /// Ejects the virtual CD.
    pub async fn eject_media(&self) -> Result<(), PowerError> {
        let (path, media) = self.cd_media().await?;
        if media.get("Inserted") == Some(&Value::Bool(false)) {
            return Ok(());
        }
        self.eject_at(&path, &media).await
    }

    /// The system's UUID, serial, maker and NIC MACs.
    pub async fn identity(&self) -> Result<Identity, PowerError> {
        let (_, system, _) = self.system().await?;
        let mut nics = Vec::new();
        if let Some(v) = system.get("EthernetInterfaces") {
            for m in members(&self.get(&link(v)?).await?)?.into_iter().take(64) {
                nics.push(self.get(&m).await?);
            }
        }
        identity(&system, &nics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_stay_on_the_bmc() {
        assert_eq!(check_path("/redfish/v1/Systems/1/").unwrap(), "/redfish/v1/Systems/1");
        for bad in [
            "https://evil.example/redfish/v1/Systems/1",
            "//evil.example/redfish/v1/",
            "/redfish/v1/../../etc",
            "/redfish/v1/Systems/1?x=1",
            "/other",
            "/redfish/v1/Systems/\u{0}",
            "/redfish/v1/Systems/%2e%2e",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        assert!(members(&json!({"Members": [{"@odata.id": "/redfish/v1/Systems/a"}]})).is_ok());
        assert!(members(&json!({"Members": [{"@odata.id": "http://x/redfish/v1/Systems/a"}]})).is_err());
        assert!(members(&json!({"members": []})).is_err());
    }

    #[test]
    fn system_answers_are_parsed_strictly() {
        assert_eq!(power_state(&json!({"PowerState": "On"})).unwrap(), PowerState::On);
        assert_eq!(power_state(&json!({"PowerState": "PoweringOff"})).unwrap(), PowerState::Off);
        assert!(power_state(&json!({"PowerState": 1})).is_err());
        assert!(power_state(&json!({})).is_err());
        let sys = json!({"Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
            "ResetType@Redfish.AllowableValues": ["On", "ForceOff"]}}});
        let (t, allowed) = reset_action(&sys).unwrap();
        assert_eq!((t.as_str(), allowed.len()), ("/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", 2));
        assert!(matches!(reset_action(&json!({})), Err(PowerError::Unsupported(_))));
        let id = identity(
            &json!({"UUID": "C0FFEE00-0000-4000-8000-000000000001", "SerialNumber": " SN1 ", "Manufacturer": "QEMU"}),
            &[
                json!({"MACAddress": "52:54:00:AA:BB:CC"}),
                json!({"MACAddress": "junk"}),
                json!({"MACAddress": "52:54:00:aa:bb:cc"}),
            ],
        )
        .unwrap();
        assert_eq!(id.uuid.as_deref(), Some("c0ffee00-0000-4000-8000-000000000001"));
        assert_eq!((id.serial.as_deref(), id.macs.len()), (Some("SN1"), 1));
        assert!(identity(&json!({"UUID": "../../x"}), &[]).is_err());
    }
}
