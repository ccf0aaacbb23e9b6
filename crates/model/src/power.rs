//! A machine's BMC and its power: how Plinth reaches the BMC, the state it
//! last read, and the actions it can take.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol Plinth speaks to a BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BmcDriver {
    /// IPMI 2.0 over LAN (RMCP+), through `ipmitool`.
    Ipmi,
    /// DMTF Redfish over HTTPS.
    Redfish,
}

impl BmcDriver {
    /// The driver's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            BmcDriver::Ipmi => "ipmi",
            BmcDriver::Redfish => "redfish",
        }
    }
}

/// How Plinth reaches a machine's BMC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend(
    "if" = {"properties": {"driver": {"const": "ipmi"}}},
    "then" = {"properties": {
        "address": {"not": {"pattern": "://"}},
        "system": {"type": "null"}, "ca_pem": {"type": "null"}, "fingerprint": {"type": "null"},
        "insecure_tls": {"const": false}
    }},
    "else" = {"properties": {
        "cipher_suite": {"type": "null"},
        "address": {"not": {"pattern": "^(?!https://)[A-Za-z][A-Za-z0-9+.-]*://"}},
        "fingerprint": {"anyOf": [
            {"type": "string", "pattern": "^:*(?:[0-9A-Fa-f]:*){64}$"},
            {"type": "null"}
        ]}
    }}
))]
pub struct Bmc {
    /// `ipmi` or `redfish`.
    pub driver: BmcDriver,
    /// `host` or `host:port` (IPMI: UDP 623 by default; Redfish: HTTPS 443),
    /// or for Redfish a base URL (`https://host:port`; `http://` only with
    /// `insecure_tls`).
    #[schemars(regex(pattern = r"^[^\s\x00-\x1f\x7f-\x9f]{1,255}$"))]
    pub address: String,
    /// The BMC user Plinth logs in as.
    #[schemars(regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]{1,64}$"))]
    pub username: String,
    /// The BMC password: a plain string when written, sealed by the server
    /// (`{"$sealed": …}`) and shown as `<secure>` in every answer.
    #[serde(default)]
    #[schemars(extend("anyOf" = [{"type": "string", "maxLength": 256, "pattern": "^[^\\x00]*$"}, {"type": "null"}]))]
    pub password: Value,
    /// IPMI: the RMCP+ cipher suite (`ipmitool -C`); 3 (HMAC-SHA1, AES-128)
    /// by default, 17 for SHA-256.
    #[serde(default)]
    pub cipher_suite: Option<u8>,
    /// Redfish: the system's id or path when the BMC manages more than
    /// one (`/redfish/v1/Systems/<id>`); by default the only one.
    #[serde(default)]
    pub system: Option<String>,
    /// Redfish: a CA certificate (PEM) the BMC's certificate must chain to,
    /// instead of the host's roots.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Redfish: the SHA-256 of the BMC's certificate (hex, `:` allowed):
    /// that certificate is trusted whatever signed it, and no other.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Redfish: accept any certificate, or plain HTTP. For lab gear only:
    /// anyone between Plinth and the BMC can then read the password.
    #[serde(default)]
    pub insecure_tls: bool,
}

impl Bmc {
    /// Checks what serde cannot: a sane address, a fingerprint's shape, and
    /// options that belong to the other driver.
    pub fn check(&self) -> Result<(), (String, String)> {
        let field = |f: &str, why: String| Err((format!("bmc.{f}"), why));
        let addr = self.address.as_str();
        if addr.is_empty() || addr.chars().count() > 255 || addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return field("address", "expected `host`, `host:port` or (Redfish) `https://host:port`".into());
        }
        if self.username.is_empty() || self.username.chars().count() > 64 || self.username.chars().any(char::is_control)
        {
            return field("username", "expected a user name of 1 to 64 characters".into());
        }
        match &self.password {
            Value::String(s) if s.chars().count() > 256 || s.contains('\0') => {
                return field("password", "expected a password of at most 256 characters".into());
            }
            Value::String(_) | Value::Null | Value::Object(_) => {}
            _ => return field("password", "expected a string".into()),
        }
        match self.driver {
            BmcDriver::Ipmi => {
                if addr.contains("://") {
                    return field("address", "an IPMI BMC is `host` or `host:port`, not a URL".into());
                }
                for (set, name) in [
                    (self.system.is_some(), "system"),
                    (self.ca_pem.is_some(), "ca_pem"),
                    (self.fingerprint.is_some(), "fingerprint"),
                    (self.insecure_tls, "insecure_tls"),
                ] {
                    if set {
                        return field(name, "applies to Redfish only".into());
                    }
                }
            }
            BmcDriver::Redfish => {
                if self.cipher_suite.is_some() {
                    return field("cipher_suite", "applies to IPMI only".into());
                }
                if let Some((scheme, _)) = addr.split_once("://") {
                    match scheme {
                        "https" => {}
                        "http" if self.insecure_tls => {}
                        "http" => {
                            return field(
                                "address",
                                "plain http:// would send the password in the clear; use https:// or set insecure_tls (lab gear only)"
                                    .into(),
                            );
                        }
                        other => return field("address", format!("unknown scheme `{other}`; use https://")),
                    }
                }
                if let Some(f) = &self.fingerprint
                    && parse_fingerprint(f).is_none()
                {
                    return field("fingerprint", "expected a SHA-256 in hex (64 digits, `:` allowed)".into());
                }
            }
        }
        Ok(())
    }
}

/// A SHA-256 fingerprint in hex (`AB:CD:…` or `abcd…`) as bytes.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A machine's power as its BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
    /// Not read yet, or the last read failed.
    #[default]
    Unknown,
}

/// The power state Plinth last read from a machine's BMC. Written by the
/// server only.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerStatus {
    /// `on`, `off` or `unknown`.
    pub state: PowerState,
    /// When the state was last read (between changes, the stored time is
    /// refreshed at most hourly).
    #[serde(default)]
    pub checked_at: Option<DateTime<Utc>>,
    /// When `state` or `error` last changed.
    #[serde(default)]
    pub changed_at: Option<DateTime<Utc>>,
    /// Why the last read or action failed, in words.
    #[serde(default)]
    pub error: Option<String>,
}

/// What Plinth can ask a BMC to do with a machine's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    /// Power on (nothing when already on).
    On,
    /// Power off at once.
    Off,
    /// Off, then on.
    Cycle,
    /// A hard reset (the reset button).
    Reset,
    /// Ask the OS to shut down (ACPI power button).
    SoftOff,
}

impl PowerAction {
    /// The action's name as the API and CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
            PowerAction::Reset => "reset",
            PowerAction::SoftOff => "soft-off",
        }
    }

    /// Whether the machine boots again after the action.
    pub fn boots(self) -> bool {
        matches!(self, PowerAction::On | PowerAction::Cycle | PowerAction::Reset)
    }
}

/// A device a machine boots from once, at its next boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    /// The network (PXE, or UEFI's network boot).
    Pxe,
    /// The first disk.
    Disk,
    /// A CD or DVD, virtual media included.
    Cd,
}

impl BootDevice {
    /// The device's name as the API and CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::Cd => "cd",
        }
    }
}

/// A power action the workflow engine asked for, which the server carries
/// out through the machine's BMC and then clears. Written by the server only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    /// The action.
    pub action: PowerAction,
    /// Why, for the timeline (e.g. "stage `off`").
    #[serde(default)]
    pub reason: String,
    /// When it was asked for.
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bmc(v: Value) -> Bmc {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn bmc_checks_name_the_field() {
        let ok = bmc(json!({"driver": "ipmi", "address": "10.0.0.5:623", "username": "admin", "password": "pw"}));
        assert!(ok.check().is_ok());
        let url = bmc(json!({"driver": "ipmi", "address": "https://x", "username": "admin"}));
        assert_eq!(url.check().unwrap_err().0, "bmc.address");
        let tls = bmc(json!({"driver": "ipmi", "address": "x", "username": "a", "insecure_tls": true}));
        assert_eq!(tls.check().unwrap_err().0, "bmc.insecure_tls");
        let plain = bmc(json!({"driver": "redfish", "address": "http://x:8000", "username": "a"}));
        assert_eq!(plain.check().unwrap_err().0, "bmc.address");
        let lab = bmc(json!({"driver": "redfish", "address": "http://x:8000", "username": "a", "insecure_tls": true}));
        assert!(lab.check().is_ok());
        let fp = bmc(json!({"driver": "redfish", "address": "x", "username": "a", "fingerprint": "ab:cd"}));
        assert_eq!(fp.check().unwrap_err().0, "bmc.fingerprint");
        let pw = bmc(json!({"driver": "redfish", "address": "x", "username": "a", "password": 7}));
        assert_eq!(pw.check().unwrap_err().0, "bmc.password");
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let colons: Vec<String> = hex.as_bytes().chunks(2).map(|c| String::from_utf8(c.to_vec()).unwrap()).collect();
        assert_eq!(parse_fingerprint(hex), parse_fingerprint(&colons.join(":").to_uppercase()));
        assert_eq!(parse_fingerprint(hex).unwrap()[31], 0xff);
        assert!(parse_fingerprint("zz").is_none());
        assert!(parse_fingerprint(&format!("{hex}00")).is_none());
    }
}
