//! The stored objects. Each carries the common fields `meta`, `revision`,
//! `created_at` and `updated_at`; the last three are owned by the store and
//! ignored when a client sends them.

use crate::{ConflictId, Ipv4Cidr, JobId, Kind, MacAddr, MachineId, Name, Object, ParamName, TokenId, ValidationError};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

/// Param values keyed by param name.
pub type ParamValues = BTreeMap<ParamName, Value>;

/// Declares an object struct with the common fields appended, and its
/// [`Object`] impl.
macro_rules! object {
    (
        $(#[$m:meta])*
        pub struct $name:ident : $kind:ident, key = $key:ident {
            $( $(#[$fm:meta])* pub $f:ident : $t:ty, )*
        }
    ) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        $(#[$m])*
        pub struct $name {
            $( $(#[$fm])* pub $f: $t, )*
            /// Free-form string labels.
            #[serde(default)]
            pub meta: BTreeMap<String, String>,
            /// Revision, incremented by the store on every write.
            #[serde(default)]
            pub revision: u64,
            /// When the object was created (set by the store).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub created_at: Option<DateTime<Utc>>,
            /// When the object was last written (set by the store).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub updated_at: Option<DateTime<Utc>>,
        }

        impl $name {
            #[allow(dead_code)]
            fn invalid(&self, field: &str, message: impl Into<String>) -> ValidationError {
                ValidationError::field(Kind::$kind, self.key(), field, message)
            }
        }

        impl Object for $name {
            const KIND: Kind = Kind::$kind;
            fn key(&self) -> String {
                self.$key.to_string()
            }
            fn check(&self) -> Result<(), ValidationError> {
                self.check_fields()
            }
        }
    };
}

fn default_true() -> bool {
    true
}

fn default_discovery() -> Name {
    Name::known("discovery")
}

/// Processor architecture of a machine or bootenv variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86-64.
    #[default]
    Amd64,
    /// 64-bit ARM.
    Arm64,
}

/// Where a machine is in its workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    /// No workflow, or not started.
    #[default]
    Idle,
    /// Jobs are handed out as the agent asks.
    Running,
    /// Waiting for the machine to boot its new bootenv (the agent reboots it).
    Rebooting,
    /// Stopped by a task (exit code 66) or an operator; resume to go on.
    Paused,
    /// A task failed past its retries; `last_job` is the failing job.
    Failed,
    /// Every stage ran.
    Complete,
}

/// Boot firmware of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Legacy BIOS (PXE, then iPXE's `pcbios` platform).
    #[default]
    Bios,
    /// UEFI (PXE or HTTP boot, then iPXE's `efi` platform).
    Uefi,
}

impl Firmware {
    /// The firmware and architecture an RFC 4578 client architecture code
    /// (DHCP option 93) names, if it is one Plinth boots.
    pub fn from_client_arch(code: u16) -> Option<(Arch, Firmware)> {
        Some(match code {
            0 => (Arch::Amd64, Firmware::Bios),
            7 | 9 | 15 | 16 => (Arch::Amd64, Firmware::Uefi),
            11 | 19 => (Arch::Arm64, Firmware::Uefi),
            _ => return None,
        })
    }

    /// The firmware iPXE's `${platform}` names (`pcbios`, `efi`).
    pub fn from_ipxe_platform(platform: &str) -> Option<Firmware> {
        match platform {
            "pcbios" => Some(Firmware::Bios),
            "efi" => Some(Firmware::Uefi),
            _ => None,
        }
    }
}

impl Arch {
    /// The name Plinth uses (as serialized): `amd64`, `arm64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The architecture an agent's inventory names (its `arch`, as Rust's
    /// `std::env::consts::ARCH`: `x86_64`, `aarch64`), if Plinth boots it.
    pub fn from_inventory(inventory: &serde_json::Value) -> Option<Arch> {
        match inventory.get("arch")?.as_str()? {
            "x86_64" | "amd64" => Some(Arch::Amd64),
            "aarch64" | "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// The architecture iPXE's `${buildarch}` names (`x86_64`, `i386`, `arm64`).
    pub fn from_ipxe_buildarch(buildarch: &str) -> Option<Arch> {
        match buildarch {
            "x86_64" | "i386" => Some(Arch::Amd64),
            "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

/// What a bootenv boots on one architecture and firmware, where that
/// differs from its defaults (another kernel, initrds or arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootVariant {
    /// Architecture this variant is for.
    pub arch: Arch,
    /// Firmware this variant is for.
    pub firmware: Firmware,
    /// Kernel path, replacing the bootenv's.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Initrd paths, replacing the bootenv's.
    #[serde(default)]
    pub initrds: Option<Vec<String>>,
    /// Kernel command line (a template), replacing the bootenv's.
    #[serde(default)]
    pub boot_args: Option<String>,
}

object! {
    /// A managed system, keyed by a stable UUID.
    #[schemars(extend(
        "if" = {"required": ["stage"], "properties": {"stage": {"type": "string"}}},
        "then" = {"required": ["workflow"], "properties": {"workflow": {"type": "string"}}}
    ))]
    pub struct Machine : Machine, key = id {
        /// Stable identity; assigned by the server when omitted.
        #[serde(default = "MachineId::generate")]
        pub id: MachineId,
        /// Host name.
        pub name: Name,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// MAC addresses of the machine's NICs.
        #[serde(default)]
        pub macs: Vec<MacAddr>,
        /// The machine's provisioning address, when known.
        #[serde(default)]
        pub address: Option<Ipv4Addr>,
        /// Processor architecture.
        #[serde(default)]
        pub arch: Arch,
        /// Boot environment the machine boots into next.
        #[serde(default = "default_discovery")]
        pub bootenv: Name,
        /// Workflow the machine runs, if any.
        #[serde(default)]
        pub workflow: Option<Name>,
        /// Current stage of the workflow.
        #[serde(default)]
        pub stage: Option<Name>,
        /// Current job, if one is handed out.
        #[serde(default)]
        pub current_job: Option<JobId>,
        /// Where the machine is in its workflow (set by the workflow engine).
        #[serde(default)]
        pub workflow_state: WorkflowState,
        /// Position of the next task within the current stage.
        #[serde(default)]
        pub task_index: u32,
        /// Failed runs of the current task so far (for its `retries`).
        #[serde(default)]
        pub task_attempts: u32,
        /// The last job that ended (the failing one when `workflow_state` is `failed`).
        #[serde(default)]
        pub last_job: Option<JobId>,
        /// Boot id (`/proc/sys/kernel/random/boot_id`) the agent last reported.
        #[serde(default)]
        pub boot_id: Option<String>,
        /// While `rebooting`: the boot the machine must leave (the agent's
        /// requests from it are told to reboot again).
        #[serde(default)]
        pub reboot_from: Option<String>,
        /// Profiles applied in order (first wins).
        #[serde(default)]
        pub profiles: Vec<Name>,
        /// Params set on the machine itself (highest precedence).
        #[serde(default)]
        pub params: ParamValues,
        /// Whether the agent may run jobs.
        #[serde(default = "default_true")]
        pub runnable: bool,
        /// A locked machine refuses changes from workflows.
        #[serde(default)]
        pub locked: bool,
        /// Hardware inventory reported by the agent.
        #[serde(default)]
        pub inventory: Value,
        /// Whether the site trusts this machine with its secrets. A machine
        /// discovery registers starts untrusted until an operator accepts it
        /// (`POST /api/v1/machines/{id}/accept`) or the site's
        /// `discovery-accept-macs` rule does: until then it renders no
        /// secure value and its token reads no resolved params.
        #[serde(default = "default_true")]
        pub trusted: bool,
        /// The machine's BMC, through which Plinth controls its power.
        #[serde(default)]
        pub bmc: Option<crate::Bmc>,
        /// The power state Plinth last read from the BMC (written by the
        /// server; a value sent by a client is ignored).
        #[serde(default)]
        pub power: Option<crate::PowerStatus>,
        /// A power action the workflow asked for, until the server has
        /// carried it out (written by the server).
        #[serde(default)]
        pub power_request: Option<crate::PowerRequest>,
        /// While `rebooting`: since when (the server power-cycles a machine
        /// with a BMC that has not come back in time).
        #[serde(default)]
        pub rebooting_since: Option<chrono::DateTime<chrono::Utc>>,
    }
}

impl Machine {
    fn check_fields(&self) -> Result<(), ValidationError> {
        for (i, a) in self.macs.iter().enumerate() {
            if self.macs[..i].contains(a) {
                return Err(self.invalid(&format!("macs[{i}]"), format!("duplicate MAC address {a}")));
            }
        }
        if self.stage.is_some() && self.workflow.is_none() {
            return Err(self.invalid("stage", "a stage is set but no workflow; set `workflow` too"));
        }
        if let Some(b) = &self.bmc {
            b.check().map_err(|(field, why)| self.invalid(&field, why))?;
        }
        Ok(())
    }
}

/// Operating system metadata of a bootenv.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OsInfo {
    /// e.g. `debian-12`.
    #[serde(default)]
    pub name: String,
    /// e.g. `debian`, `redhat`.
    #[serde(default)]
    pub family: String,
    /// e.g. `12`.
    #[serde(default)]
    pub version: String,
    /// Where the installer fetches the OS tree, a template (e.g.
    /// `{{ provisioner.http }}/files/debian-12/`).
    #[serde(default)]
    pub install_url: String,
}

/// An install source: an ISO or archive and its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallSource {
    /// File name of the ISO (as the distribution publishes it).
    pub file: String,
    /// Expected SHA-256, hex; empty until pinned (`import-iso --sha256`
    /// pins it).
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9A-Fa-f]{64})?$"))]
    pub sha256: String,
    /// Keep the image itself in the file root next to its extracted tree
    /// (installers that download the whole ISO, like Ubuntu's, need it).
    #[serde(default)]
    pub keep_image: bool,
}

/// A template rendered for a machine and served at a path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    {"required": ["template"], "properties": {"template": {"type": "string"}}},
    {"required": ["contents"], "properties": {"contents": {"type": "string"}}}
]))]
pub struct TemplateRef {
    /// Name of this entry within its owner.
    pub name: String,
    /// Name of a stored template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Name>,
    /// Inline template text (instead of `template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
    /// Path the rendered file appears at (TFTP and HTTP), itself a template.
    #[serde(default)]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$"))]
    pub path: Option<String>,
}

/// Checks a file path a bootenv serves or a task writes: it may not leave
/// its root (`..`), hold NUL or control characters, or be over-long; a
/// bootenv's paths are relative to the file root (`absolute` false), a
/// task's are under the agent's root, absolute or not.
fn check_file_path(path: &str, absolute: bool) -> Result<(), String> {
    if path.is_empty() || path.len() > 1024 {
        return Err("expected a path of 1 to 1024 bytes".into());
    }
    if path.chars().any(char::is_control) {
        return Err("a path may not hold NUL or control characters".into());
    }
    if path.split(['/', '\\']).any(|part| part == "..") {
        return Err(format!("`{}`: a path may not hold `..`, which would leave its root", path.escape_debug()));
    }
    if !absolute && path.starts_with('/') {
        return Err(format!("`{}`: a bootenv's paths are relative to the file root", path.escape_debug()));
    }
    Ok(())
}

fn check_template_refs(
    list: &[TemplateRef],
    absolute_paths: bool,
    err: impl Fn(String, String) -> ValidationError,
) -> Result<(), ValidationError> {
    for (i, t) in list.iter().enumerate() {
        if let Some(p) = &t.path {
            check_file_path(p, absolute_paths).map_err(|m| err(format!("templates[{i}].path"), m))?;
        }
        if t.template.is_some() == t.contents.is_some() {
            return Err(err(
                format!("templates[{i}]"),
                "set exactly one of `template` (a stored template's name) or `contents`".into(),
            ));
        }
        if list[..i].iter().any(|o| o.name == t.name) {
            return Err(err(format!("templates[{i}].name"), format!("duplicate entry `{}`", t.name)));
        }
    }
    Ok(())
}

/// How an image file is encoded, as served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum ImageFormat {
    /// A raw disk image, written as it is.
    #[default]
    #[serde(rename = "raw")]
    Raw,
    /// A raw disk image compressed with gzip.
    #[serde(rename = "raw.gz")]
    RawGz,
    /// A raw disk image compressed with xz.
    #[serde(rename = "raw.xz")]
    RawXz,
    /// A raw disk image compressed with zstd.
    #[serde(rename = "raw.zst")]
    RawZst,
    /// A QEMU copy-on-write image: registered, but refused by the deploy
    /// (it cannot be written while streaming); convert it to raw first.
    #[serde(rename = "qcow2")]
    Qcow2,
}

impl ImageFormat {
    /// The name used in objects and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::RawGz => "raw.gz",
            ImageFormat::RawXz => "raw.xz",
            ImageFormat::RawZst => "raw.zst",
            ImageFormat::Qcow2 => "qcow2",
        }
    }

    /// Every format, for messages and parsing.
    pub const ALL: [ImageFormat; 5] =
        [ImageFormat::Raw, ImageFormat::RawGz, ImageFormat::RawXz, ImageFormat::RawZst, ImageFormat::Qcow2];

    /// The format a name (`raw.zst`) or a file name's ending (`disk.raw.zst`,
    /// `disk.img.xz`, `disk.qcow2`) says.
    pub fn from_name(name: &str) -> Option<ImageFormat> {
        let lower = name.to_ascii_lowercase();
        if let Some(f) = ImageFormat::ALL.into_iter().find(|f| f.as_str() == lower) {
            return Some(f);
        }
        Some(match lower.rsplit('.').next()? {
            "gz" => ImageFormat::RawGz,
            "xz" => ImageFormat::RawXz,
            "zst" | "zstd" => ImageFormat::RawZst,
            "qcow2" => ImageFormat::Qcow2,
            "raw" | "img" => ImageFormat::Raw,
            _ => return None,
        })
    }

    /// The format bytes at the start of a file show, if they show one.
    pub fn sniff(head: &[u8]) -> Option<ImageFormat> {
        Some(match head {
            [0x1f, 0x8b, ..] => ImageFormat::RawGz,
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => ImageFormat::RawXz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => ImageFormat::RawZst,
            [b'Q', b'F', b'I', 0xfb, ..] => ImageFormat::Qcow2,
            _ => return None,
        })
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

object! {
    /// A disk image the image deploy writes to a machine's disk: where it
    /// is (a URL, or a path in the file root served at `/files/<path>`),
    /// how it is encoded, and the SHA-256 and size of the file as served.
    #[schemars(extend("oneOf" = [
        {"required": ["url"], "properties": {"url": {"type": "string"}, "path": {"type": "null"}}},
        {"required": ["path"], "properties": {"path": {"type": "string"}, "url": {"type": "null"}}}
    ]))]
    pub struct Image : Image, key = name {
        /// Name.
        pub name: Name,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// Where the file is: an `http://` or `https://` URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(regex(pattern = r"^https?://[^\s\x00-\x1f\x7f-\x9f]+$"))]
        pub url: Option<String>,
        /// Or its path relative to the file root (served by boot HTTP).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(regex(pattern = r"^(?:[^/\\\x00-\x1f\x7f-\x9f]+/)*[^/\\\x00-\x1f\x7f-\x9f]+$"))]
        pub path: Option<String>,
        /// How the file is encoded.
        #[serde(default)]
        pub format: ImageFormat,
        /// Bytes of the file as served.
        #[schemars(range(min = 1))]
        pub size: u64,
        /// SHA-256 of the file as served, hex.
        #[schemars(regex(pattern = r"^[0-9A-Fa-f]{64}$"))]
        pub sha256: String,
        /// Bytes once decoded: the least a target disk must hold. Unknown
        /// for an image registered without it (a disk too small is then
        /// found while writing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub raw_size: Option<u64>,
        /// OS metadata.
        #[serde(default)]
        pub os: OsInfo,
        /// Architecture the image boots on.
        #[serde(default)]
        pub arch: Arch,
        /// The loader a UEFI boot entry names, on the image's EFI system
        /// partition (default `\EFI\BOOT\BOOTX64.EFI`, `BOOTAA64.EFI` on ARM64).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(regex(pattern = r"^\\[^/\x00-\x1f\x7f-\x9f]{0,199}$"))]
        pub efi_loader: Option<String>,
    }
}

impl Image {
    fn check_fields(&self) -> Result<(), ValidationError> {
        match (&self.url, &self.path) {
            (Some(_), Some(_)) => return Err(self.invalid("url", "give `url` or `path`, not both")),
            (None, None) => return Err(self.invalid("path", "give `url` (http or https) or `path` (in the file root)")),
            (Some(u), None) => {
                let rest = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://"));
                let ok = rest.is_some_and(|r| !r.is_empty()) && !u.chars().any(|c| c.is_whitespace() || c.is_control());
                if !ok {
                    return Err(
                        self.invalid("url", format!("expected an http:// or https:// URL, got `{}`", u.escape_debug()))
                    );
                }
            }
            (None, Some(p)) => {
                let bad = p.is_empty()
                    || p.starts_with('/')
                    || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
                    || p.chars().any(|c| c.is_control() || c == '\\');
                if bad {
                    return Err(self.invalid(
                        "path",
                        format!("expected a relative path inside the file root, got `{}`", p.escape_debug()),
                    ));
                }
            }
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.invalid("sha256", format!("expected 64 hex digits, got `{}`", self.sha256.escape_debug())));
        }
        if self.size == 0 {
            return Err(self.invalid("size", "an image file is never empty"));
        }
        if let Some(l) = &self.efi_loader
            && (!l.starts_with('\\') || l.chars().any(|c| c.is_control() || c == '/') || l.chars().count() > 200)
        {
            return Err(self.invalid(
                "efi_loader",
                format!("expected a path like \\EFI\\BOOT\\BOOTX64.EFI, got `{}`", l.escape_debug()),
            ));
        }
        Ok(())
    }

    /// The loader a UEFI boot entry for this image names.
    pub fn efi_loader(&self) -> String {
        self.efi_loader.clone().unwrap_or_else(|| match self.arch {
            Arch::Amd64 => "\\EFI\\BOOT\\BOOTX64.EFI".into(),
            Arch::Arm64 => "\\EFI\\BOOT\\BOOTAA64.EFI".into(),
        })
    }
}

object! {
    /// How to boot an OS or image.
    pub struct BootEnv : BootEnv, key = name {
        /// Name.
        pub name: Name,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// OS metadata.
        #[serde(default)]
        pub os: OsInfo,
        /// Kernel path relative to the file root.
        #[serde(default)]
        pub kernel: Option<String>,
        /// Initrd paths relative to the file root.
        #[serde(default)]
        pub initrds: Vec<String>,
        /// Kernel command line (a template).
        #[serde(default)]
        pub boot_args: String,
        /// Architectures this bootenv supports.
        #[serde(default)]
        pub arches: Vec<Arch>,
        /// Whether machines in this bootenv network-boot. `false` (the
        /// `local` bootenv) makes DHCP give them an address and no boot
        /// information, so their firmware boots the next device at once.
        #[serde(default = "default_true")]
        pub netboot: bool,
        /// Per-architecture and per-firmware differences (x86-64 BIOS,
        /// x86-64 UEFI, ARM64 UEFI); a client without a matching variant
        /// gets the defaults above.
        #[serde(default)]
        pub variants: Vec<BootVariant>,
        /// Install source with checksum.
        #[serde(default)]
        pub source: Option<InstallSource>,
        /// Files rendered per machine.
        #[serde(default)]
        pub templates: Vec<TemplateRef>,
        /// Params a machine must have to boot this.
        #[serde(default)]
        pub required_params: Vec<ParamName>,
        /// Params this bootenv reads when set.
        #[serde(default)]
        pub optional_params: Vec<ParamName>,
    }
}

impl BootEnv {
    fn check_fields(&self) -> Result<(), ValidationError> {
        if let Some(src) = &self.source
            && !src.sha256.is_empty()
            && (src.sha256.len() != 64 || !src.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(
                self.invalid("source.sha256", format!("expected 64 hex digits (or empty), got `{}`", src.sha256))
            );
        }
        for (i, v) in self.variants.iter().enumerate() {
            if self.variants[..i].iter().any(|o| (o.arch, o.firmware) == (v.arch, v.firmware)) {
                return Err(self.invalid(
                    &format!("variants[{i}]"),
                    format!("a second variant for {:?}/{:?}", v.arch, v.firmware).to_lowercase(),
                ));
            }
        }
        check_template_refs(&self.templates, false, |f, m| self.invalid(&f, m))
    }
}

object! {
    /// A named template text (Jinja syntax).
    pub struct Template : Template, key = name {
        /// Name.
        pub name: Name,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// The template text.
        pub contents: String,
    }
}

impl Template {
    fn check_fields(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

object! {
    /// A typed parameter definition.
    pub struct Param : Param, key = name {
        /// Name.
        pub name: ParamName,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// Longer documentation (Markdown).
        #[serde(default)]
        pub documentation: String,
        /// JSON Schema values must satisfy; its `default` is the last fallback.
        #[serde(default = "empty_schema")]
        #[schemars(schema_with = "json_schema_schema")]
        pub schema: Value,
        /// Secure values are encrypted at rest and redacted everywhere.
        #[serde(default)]
        pub secure: bool,
    }
}

/// A JSON Schema is an object or a boolean.
fn json_schema_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": ["object", "boolean"], "default": {},
        "description": "JSON Schema values must satisfy; its `default` is the last fallback."})
}

fn empty_schema() -> Value {
    Value::Object(Default::default())
}

impl Param {
    fn check_fields(&self) -> Result<(), ValidationError> {
        if !self.schema.is_object() && !self.schema.is_boolean() {
            return Err(self.invalid(
                "schema",
                format!("expected a JSON Schema (an object or a boolean), got {}", crate::json_type_name(&self.schema)),
            ));
        }
        if let Err(e) = jsonschema::meta::validate(&self.schema) {
            let at = e.instance_path().to_string();
            return Err(
                self.invalid(&format!("schema{}", at.replace('/', ".")), format!("not a valid JSON Schema: {e}"))
            );
        }
        let validator = jsonschema::validator_for(&self.schema)
            .map_err(|e| self.invalid("schema", format!("not a usable JSON Schema: {e}")))?;
        if let Some(default) = self.schema.get("default")
            && let Some(e) = validator.iter_errors(default).next()
        {
            return Err(self.invalid("schema.default", format!("the default does not satisfy the schema: {e}")));
        }
        Ok(())
    }

    /// Checks `value` against this param's schema; the error says what was expected.
    pub fn check_value(&self, value: &Value) -> Result<(), String> {
        let validator =
            compiled(&self.schema).map_err(|e| format!("param `{}` has an unusable schema: {e}", self.name))?;
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| {
                let at = e.instance_path().to_string();
                // A secure value must not leak through an error message.
                let what = if self.secure {
                    "the value does not fit the param's schema (not shown: the param is secure)".to_owned()
                } else {
                    e.to_string()
                };
                if at.is_empty() { what } else { format!("at {at}: {what}") }
            })
            .collect();
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }
}

/// Checks `value` against `schema`; the error says what was expected.
pub(crate) fn check_schema(schema: &Value, value: &Value) -> Result<(), String> {
    // Formats (date-time, uuid, …) are checked too.
    let validator = jsonschema::options().should_validate_formats(true).build(schema).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator.iter_errors(value).map(|e| e.to_string()).collect();
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// Compiled validators by schema text: resolving a machine's params checks
/// every value, and compiling a schema costs far more than checking one.
fn compiled(schema: &Value) -> Result<std::sync::Arc<jsonschema::Validator>, String> {
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<std::collections::HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let key = schema.to_string();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(v.clone());
    }
    let v = Arc::new(jsonschema::validator_for(schema).map_err(|e| e.to_string())?);
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= 4096 {
        map.clear();
    }
    map.insert(key, v.clone());
    Ok(v)
}

object! {
    /// A named set of param values.
    pub struct Profile : Profile, key = name {
        /// Name. The profile `global` applies to every machine.
        pub name: Name,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// Profiles included by this one, in order.
        #[serde(default)]
        pub profiles: Vec<Name>,
        /// Param values.
        #[serde(default)]
        pub params: ParamValues,
    }
}

impl Profile {
    fn check_fields(&self) -> Result<(), ValidationError> {
        if self.profiles.contains(&self.name) {
            return Err(ValidationError::reference(
                Kind::Profile,
                self.key(),
                "profiles",
                "a profile cannot include itself",
            ));
        }
        Ok(())
    }
}

object! {
    /// Templates the agent executes on a machine.
    pub struct Task : Task, key = name {
        /// Name.
        pub name: Name,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// Scripts to run (no `path`) and files to write (with `path`), in order.
        #[serde(default)]
        pub templates: Vec<TemplateRef>,
        /// Params a machine must have to run this task.
        #[serde(default)]
        pub required_params: Vec<ParamName>,
        /// Params this task reads when set.
        #[serde(default)]
        pub optional_params: Vec<ParamName>,
        /// Time limit of one run, in seconds.
        #[serde(default = "default_task_timeout")]
        #[schemars(range(min = 1))]
        pub timeout_secs: u32,
        /// How many times a failed run is retried.
        #[serde(default)]
        pub retries: u32,
        /// Params a run of this task may set on its machine when it
        /// finishes; any other is refused.
        #[serde(default)]
        pub reports: Vec<ParamName>,
    }
}

fn default_task_timeout() -> u32 {
    3600
}

impl Task {
    fn check_fields(&self) -> Result<(), ValidationError> {
        if self.timeout_secs == 0 {
            return Err(self.invalid("timeout_secs", "expected a positive number of seconds"));
        }
        check_template_refs(&self.templates, true, |f, m| self.invalid(&f, m))
    }
}

object! {
    /// An optional bootenv plus ordered tasks.
    #[schemars(extend(
        "if" = {"required": ["power"], "properties": {"power": {"enum": ["off", "soft-off"]}}},
        "then" = {"properties": {"tasks": {"maxItems": 0}}}
    ))]
    pub struct Stage : Stage, key = name {
        /// Name.
        pub name: Name,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// Bootenv the machine switches to when entering this stage.
        #[serde(default)]
        pub bootenv: Option<Name>,
        /// Tasks run in order.
        #[serde(default)]
        pub tasks: Vec<Name>,
        /// Params in force during this stage.
        #[serde(default)]
        pub params: ParamValues,
        /// Reboot after the stage's tasks finish.
        #[serde(default)]
        pub reboot: bool,
        /// A power action carried out through the machine's BMC as the
        /// machine enters the stage (after its bootenv is set): `on`,
        /// `cycle` or `reset` boot it into the stage (the workflow waits
        /// for its agent, as after a reboot); `off` or `soft-off` end with
        /// the machine off, in a stage without tasks.
        #[serde(default)]
        pub power: Option<crate::PowerAction>,
    }
}

impl Stage {
    fn check_fields(&self) -> Result<(), ValidationError> {
        if let Some(a) = self.power
            && !a.boots()
            && !self.tasks.is_empty()
        {
            return Err(self.invalid(
                "power",
                format!(
                    "a stage that powers the machine off (`{}`) runs no tasks; move them to a stage before it",
                    a.as_str()
                ),
            ));
        }
        Ok(())
    }
}

object! {
    /// An ordered list of stages.
    pub struct Workflow : Workflow, key = name {
        /// Name.
        pub name: Name,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// Stages in order.
        #[schemars(length(min = 1))]
        pub stages: Vec<Name>,
        /// Params in force while the workflow runs.
        #[serde(default)]
        pub params: ParamValues,
    }
}

impl Workflow {
    fn check_fields(&self) -> Result<(), ValidationError> {
        if self.stages.is_empty() {
            return Err(self.invalid("stages", "expected at least one stage"));
        }
        Ok(())
    }
}

/// Life cycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Handed out, not started.
    #[default]
    Created,
    /// The agent is running it.
    Running,
    /// Exited 0.
    Finished,
    /// Exited non-zero or timed out.
    Failed,
    /// Interrupted (agent lost, server restarted mid-run).
    Incomplete,
}

impl JobState {
    /// Whether the job has ended.
    pub fn ended(self) -> bool {
        matches!(self, JobState::Finished | JobState::Failed | JobState::Incomplete)
    }
}

object! {
    /// One execution of one task on one machine.
    pub struct Job : Job, key = id {
        /// Identity; assigned by the server when omitted.
        #[serde(default = "JobId::generate")]
        pub id: JobId,
        /// Machine it runs on.
        pub machine: MachineId,
        /// Task it runs.
        pub task: Name,
        /// Stage it belongs to.
        #[serde(default)]
        pub stage: Option<Name>,
        /// Workflow it belongs to.
        #[serde(default)]
        pub workflow: Option<Name>,
        /// State.
        #[serde(default)]
        pub state: JobState,
        /// Exit code once ended.
        #[serde(default)]
        pub exit_code: Option<i32>,
        /// When it started running.
        #[serde(default)]
        pub started_at: Option<DateTime<Utc>>,
        /// When it ended.
        #[serde(default)]
        pub ended_at: Option<DateTime<Utc>>,
        /// Which run of the task this is (1 for the first).
        #[serde(default)]
        pub attempt: u32,
        /// Time limit of this run, from the task (the agent enforces it).
        #[serde(default = "default_task_timeout")]
        pub timeout_secs: u32,
        /// What the task asked for when it ended: `reboot`, `poweroff` or `stop`.
        #[serde(default)]
        pub action: Option<String>,
        /// Why it ended as it did, for humans (`timed out after 60 s`).
        #[serde(default)]
        pub reason: String,
    }
}

impl Job {
    fn check_fields(&self) -> Result<(), ValidationError> {
        if let (Some(s), Some(e)) = (self.started_at, self.ended_at)
            && e < s
        {
            return Err(self.invalid("ended_at", "ends before it started"));
        }
        Ok(())
    }
}

/// A DHCP option value by code: exactly one of `text`, `hex` or `ipv4`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    {"required": ["text"], "properties": {"text": {"type": "string"}}},
    {"required": ["hex"], "properties": {"hex": {"type": "string"}}},
    {"required": ["ipv4"], "properties": {"ipv4": {"type": "array"}}}
]))]
pub struct DhcpOption {
    /// Option code, 1..=254.
    #[schemars(range(min = 1, max = 254))]
    pub code: u8,
    /// Value as text (ASCII bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Value as hex bytes, `01:02:0a` or `01020a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^:*(?:[0-9A-Fa-f]:*[0-9A-Fa-f]:*)*$"))]
    pub hex: Option<String>,
    /// Value as a list of IPv4 addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Vec<Ipv4Addr>>,
}

impl DhcpOption {
    /// The option's value as bytes.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.text, &self.hex, &self.ipv4) {
            (Some(t), None, None) => Ok(t.as_bytes().to_vec()),
            (None, Some(h), None) => {
                let digits: String = h.chars().filter(|c| *c != ':').collect();
                // Only hex digits, so the two-byte steps below stay on characters.
                if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "`{}` is not hex (digits 0-9, a-f, optionally `:`-separated)",
                        h.escape_debug()
                    ));
                }
                if !digits.len().is_multiple_of(2) {
                    return Err(format!("hex value `{h}` has an odd number of digits"));
                }
                (0..digits.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| format!("`{h}` is not hex")))
                    .collect()
            }
            (None, None, Some(ips)) => Ok(ips.iter().flat_map(|ip| ip.octets()).collect()),
            _ => Err("set exactly one of `text`, `hex` or `ipv4`".into()),
        }
    }
}

fn check_options(
    options: &[DhcpOption],
    err: impl Fn(String, String) -> ValidationError,
) -> Result<(), ValidationError> {
    for (i, o) in options.iter().enumerate() {
        if o.code == 0 || o.code == 255 {
            return Err(err(format!("options[{i}].code"), "expected an option code from 1 to 254".into()));
        }
        match o.bytes() {
            Ok(b) if b.len() > 255 => return Err(err(format!("options[{i}]"), "value longer than 255 bytes".into())),
            Ok(_) => {}
            Err(m) => return Err(err(format!("options[{i}]"), m)),
        }
    }
    Ok(())
}

fn default_lease_secs() -> u32 {
    3600
}

object! {
    /// A DHCP scope.
    #[schemars(extend(
        "if" = {"required": ["proxy"], "properties": {"proxy": {"const": true}}},
        "then" = {"required": ["interface"], "properties": {"interface": {"type": "string"}}, "oneOf": [
            {"required": ["range_start", "range_end"],
                "properties": {"range_start": {"type": "string"}, "range_end": {"type": "string"}}},
            {"properties": {"range_start": {"type": "null"}, "range_end": {"type": "null"}}}
        ]},
        "else" = {"required": ["range_start", "range_end"],
            "properties": {"range_start": {"type": "string"}, "range_end": {"type": "string"}}}
    ))]
    pub struct Subnet : Subnet, key = name {
        /// Name.
        pub name: Name,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// The network, e.g. `10.0.0.0/24`.
        pub cidr: Ipv4Cidr,
        /// First address handed out (required unless `proxy`).
        #[serde(default)]
        pub range_start: Option<Ipv4Addr>,
        /// Last address handed out (required unless `proxy`).
        #[serde(default)]
        pub range_end: Option<Ipv4Addr>,
        /// proxyDHCP mode (PXE spec): another server hands out addresses;
        /// Plinth answers PXE and iPXE clients with boot information only,
        /// on port 67 and 4011, and never gives an address.
        #[serde(default)]
        pub proxy: bool,
        /// Interface whose direct (non-relayed) requests this subnet answers.
        #[serde(default)]
        #[schemars(regex(pattern = r"^[A-Za-z0-9._@-]{1,15}$"))]
        pub interface: Option<String>,
        /// Whether the subnet answers at all.
        #[serde(default = "default_true")]
        pub enabled: bool,
        /// Answer only machines with a reservation.
        #[serde(default)]
        pub only_reservations: bool,
        /// Lease time in seconds.
        #[serde(default = "default_lease_secs")]
        #[schemars(range(min = 60))]
        pub lease_secs: u32,
        /// Default gateway (option 3).
        #[serde(default)]
        pub router: Option<Ipv4Addr>,
        /// DNS servers (option 6).
        #[serde(default)]
        pub dns_servers: Vec<Ipv4Addr>,
        /// Domain name (option 15).
        #[serde(default)]
        pub domain_name: Option<String>,
        /// NTP servers (option 42).
        #[serde(default)]
        pub ntp_servers: Vec<Ipv4Addr>,
        /// Boot server address (siaddr); defaults to the server's own.
        #[serde(default)]
        pub next_server: Option<Ipv4Addr>,
        /// Any further options by code.
        #[serde(default)]
        pub options: Vec<DhcpOption>,
        /// Boot file per client kind, overriding the defaults: keys `bios`,
        /// `uefi-ia32`, `uefi-x64`, `uefi-arm64`, `uefi-http-x64`,
        /// `uefi-http-arm64`, `ipxe`; values are paths in the file root or URLs,
        /// with `{http}`, `{server}` and `{mac}` expanded.
        #[serde(default)]
        #[schemars(extend(
            "propertyNames" = {"enum": ["bios", "uefi-ia32", "uefi-x64", "uefi-arm64", "uefi-http-x64", "uefi-http-arm64", "ipxe"]},
            "additionalProperties" = {"type": "string", "minLength": 1, "maxLength": 255}
        ))]
        pub boot_files: BTreeMap<String, String>,
        /// Starvation guard: offers not yet requested hold at most this many
        /// addresses at once; a new offer beyond it withdraws the oldest
        /// (whose address goes back to the range), so DISCOVERs that never
        /// REQUEST cannot drain the range, and no client is refused for
        /// them. 0 means no limit.
        #[serde(default = "default_max_pending_offers")]
        pub max_pending_offers: u32,
        /// Starvation guard: at most this many new clients (no lease or
        /// reservation) are offered an address per minute. 0 means no limit.
        #[serde(default)]
        pub new_clients_per_minute: u32,
        /// Relay agents this subnet trusts, by the address they send from.
        /// A relayed request (one with `giaddr`) is answered for this subnet
        /// only when it comes from one of them; with none, relayed requests
        /// for this subnet are not answered.
        #[serde(default)]
        pub relays: Vec<Ipv4Addr>,
        /// The share of the dynamic range (percent) that clients Plinth does
        /// not know (no machine and no reservation has their MAC) may hold at
        /// once, so a flood of spoofed MACs cannot take the addresses known
        /// machines need. 0 refuses unknown clients; 100 lets them take all.
        #[serde(default = "default_unknown_share")]
        #[schemars(range(max = 100))]
        pub unknown_share: u8,
        /// Identify clients by their client identifier (option 61) instead of
        /// their hardware address, as Kea's `match-client-id`. Off by
        /// default: a client identifier names nothing the server can check.
        /// When on, an identifier of hardware type that names another MAC
        /// than the packet's is refused.
        #[serde(default)]
        pub match_client_id: bool,
    }
}

fn default_max_pending_offers() -> u32 {
    256
}

fn default_unknown_share() -> u8 {
    25
}

/// Keys of [`Subnet::boot_files`].
pub const BOOT_FILE_KEYS: &[&str] =
    &["bios", "uefi-ia32", "uefi-x64", "uefi-arm64", "uefi-http-x64", "uefi-http-arm64", "ipxe"];

impl Subnet {
    fn check_fields(&self) -> Result<(), ValidationError> {
        match (self.range_start, self.range_end) {
            (Some(start), Some(end)) => {
                for (field, ip) in [("range_start", start), ("range_end", end)] {
                    if !self.cidr.contains(ip) {
                        return Err(self.invalid(field, format!("{ip} is outside {}", self.cidr)));
                    }
                }
                if u32::from(start) > u32::from(end) {
                    return Err(self.invalid("range_end", format!("{end} is before range_start {start}")));
                }
            }
            (None, None) if self.proxy => {}
            (None, _) => {
                return Err(
                    self.invalid("range_start", "required: the first address to hand out (or set `proxy: true`)")
                );
            }
            (_, None) => {
                return Err(self.invalid("range_end", "required: the last address to hand out (or set `proxy: true`)"));
            }
        }
        if self.proxy && self.interface.is_none() {
            return Err(
                self.invalid("interface", "a proxy subnet answers broadcasts and needs the interface to answer on")
            );
        }
        if self.lease_secs < 60 {
            return Err(self.invalid("lease_secs", format!("expected at least 60 seconds, got {}", self.lease_secs)));
        }
        if let Some(r) = self.router
            && !self.cidr.contains(r)
        {
            return Err(self.invalid("router", format!("{r} is outside {}", self.cidr)));
        }
        for (k, v) in &self.boot_files {
            if !BOOT_FILE_KEYS.contains(&k.as_str()) {
                return Err(self.invalid(
                    &format!("boot_files.{k}"),
                    format!("unknown client kind; expected one of {}", BOOT_FILE_KEYS.join(", ")),
                ));
            }
            if v.is_empty() || v.len() > 255 {
                return Err(self.invalid(&format!("boot_files.{k}"), "expected a path or URL of 1 to 255 characters"));
            }
        }
        if self.unknown_share > 100 {
            return Err(
                self.invalid("unknown_share", format!("expected a percentage, 0 to 100, got {}", self.unknown_share))
            );
        }
        if let Some(i) = &self.interface
            && (i.is_empty() || i.len() > 15 || !i.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)))
        {
            return Err(self.invalid(
                "interface",
                format!("expected a network interface name like eth0, got `{}`", i.escape_debug()),
            ));
        }
        check_options(&self.options, |f, m| self.invalid(&f, m))
    }
}

object! {
    /// A fixed address for a MAC.
    pub struct Reservation : Reservation, key = mac {
        /// Client MAC address.
        pub mac: MacAddr,
        /// Address always given to it.
        pub address: Ipv4Addr,
        /// Host name (option 12).
        #[serde(default)]
        pub hostname: Option<Name>,
        /// Subnet it belongs to (found by address when omitted).
        #[serde(default)]
        pub subnet: Option<Name>,
        /// Boot server override.
        #[serde(default)]
        pub next_server: Option<Ipv4Addr>,
        /// Options overriding the subnet's.
        #[serde(default)]
        pub options: Vec<DhcpOption>,
    }
}

impl Reservation {
    fn check_fields(&self) -> Result<(), ValidationError> {
        check_options(&self.options, |f, m| self.invalid(&f, m))
    }
}

/// Life cycle of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Offered, waiting for REQUEST.
    #[default]
    Offered,
    /// Acknowledged.
    Bound,
    /// Released by the client.
    Released,
    /// Declined by the client (address in use elsewhere).
    Declined,
    /// Ran out.
    Expired,
}

object! {
    /// A DHCP lease, persisted before the ACK leaves.
    pub struct Lease : Lease, key = address {
        /// Leased address.
        pub address: Ipv4Addr,
        /// Client MAC.
        pub mac: MacAddr,
        /// Client identifier (option 61), hex.
        #[serde(default)]
        pub client_id: Option<String>,
        /// Subnet it came from.
        pub subnet: Name,
        /// State.
        #[serde(default)]
        pub state: LeaseState,
        /// Expiry.
        pub expires_at: DateTime<Utc>,
        /// Host name the client sent.
        #[serde(default)]
        pub hostname: Option<String>,
        /// Client architecture code (DHCP option 93) the client last sent.
        #[serde(default)]
        pub client_arch: Option<u16>,
        /// Relay agent information (option 82) the relay added, hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub relay_info: Option<String>,
    }
}

impl Lease {
    fn check_fields(&self) -> Result<(), ValidationError> {
        Ok(())
    }

    /// Whether the lease is bound and not yet expired at `now`: only such a
    /// lease says an address is a machine's.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.state == LeaseState::Bound && self.expires_at > now
    }
}

object! {
    /// A person or service that logs in.
    pub struct User : User, key = name {
        /// Login name.
        pub name: Name,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// Roles (see the security issue); `admin` has every claim.
        #[serde(default)]
        pub roles: Vec<Name>,
        /// Write-only: a new password, hashed by the server and never stored or returned.
        #[serde(default, skip_serializing)]
        #[schemars(length(min = 8))]
        pub password: Option<String>,
        /// Argon2 hash, managed by the server; never returned by the API.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub password_hash: Option<String>,
    }
}

impl User {
    fn check_fields(&self) -> Result<(), ValidationError> {
        if let Some(p) = &self.password
            && p.chars().count() < 8
        {
            return Err(self.invalid("password", "expected at least 8 characters"));
        }
        Ok(())
    }
}

/// One permission: an action on objects of a kind, optionally only those
/// whose key matches a pattern (`*` matches any run of characters).
///
/// Kinds are the API's plurals (`machines`, `users`, ...) plus `events`,
/// `boot-events`, `audit`, `render`, `join-tokens` and `secure` (reading
/// secure values: `secure` `read` lets a user's render of a machine's task
/// show them). Actions are `read`, `create`, `update`, `delete`. `*` as the
/// kind or action matches every one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// A kind (plural), or `*`.
    #[schemars(schema_with = "claim_kind_schema")]
    pub kind: String,
    /// `read`, `create`, `update`, `delete`, or `*`.
    #[schemars(extend("enum" = ["read", "create", "update", "delete", "*"]))]
    pub action: String,
    /// Only objects whose key matches this pattern; every object when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub name: Option<String>,
}

fn claim_kind_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let kinds: Vec<&str> =
        Kind::ALL.iter().map(|k| k.plural()).chain(CLAIM_KINDS_EXTRA).chain(std::iter::once("*")).collect();
    schemars::json_schema!({"type": "string", "enum": kinds})
}

/// Kinds a claim may name besides the object kinds.
pub const CLAIM_KINDS_EXTRA: [&str; 7] = ["events", "boot-events", "audit", "render", "join-tokens", "secure", "power"];
/// Actions a claim may name.
pub const CLAIM_ACTIONS: [&str; 4] = ["read", "create", "update", "delete"];

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters (claims' name patterns, the site's MAC rules).
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    glob(pattern, text)
}

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters. Linear backtracking to the last star: no blow-up on
/// patterns like `a*a*a*a*b`.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Claim {
    /// A claim on `kind` and `action`, for every object.
    pub fn new(kind: &str, action: &str) -> Claim {
        Claim { kind: kind.into(), action: action.into(), name: None }
    }

    /// Whether this claim allows `action` on `kind` (object `name`, if the
    /// request is about one).
    pub fn allows(&self, kind: &str, action: &str, name: Option<&str>) -> bool {
        (self.kind == "*" || self.kind == kind)
            && (self.action == "*" || self.action == action)
            && match (&self.name, name) {
                (None, _) => true,
                (Some(p), Some(n)) => glob(p, n),
                (Some(_), None) => false,
            }
    }

    /// Whether everything `other` allows, this claim allows too.
    pub fn covers(&self, other: &Claim) -> bool {
        (self.kind == "*" || self.kind == other.kind)
            && (self.action == "*" || self.action == other.action)
            && match (&self.name, &other.name) {
                (None, _) => true,
                (Some(p), Some(n)) => p == n || (!n.contains('*') && glob(p, n)),
                (Some(_), None) => false,
            }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        let kind_ok = self.kind == "*"
            || Kind::from_plural(&self.kind).is_some()
            || CLAIM_KINDS_EXTRA.contains(&self.kind.as_str());
        if !kind_ok {
            return Err(format!(
                "unknown kind `{}` (a plural like `machines`, one of {}, or `*`)",
                self.kind,
                CLAIM_KINDS_EXTRA.join(", ")
            ));
        }
        if self.action != "*" && !CLAIM_ACTIONS.contains(&self.action.as_str()) {
            return Err(format!("unknown action `{}` (one of {}, or `*`)", self.action, CLAIM_ACTIONS.join(", ")));
        }
        if self.name.as_ref().is_some_and(|n| n.is_empty() || n.len() > 256) {
            return Err("`name` must be 1 to 256 characters".into());
        }
        Ok(())
    }
}

object! {
    /// A named set of claims users are given. `admin`, `operator` and
    /// `viewer` are built in.
    pub struct Role : Role, key = name {
        /// Its name.
        pub name: Name,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// What it allows.
        #[serde(default)]
        pub claims: Vec<Claim>,
    }
}

impl Role {
    fn check_fields(&self) -> Result<(), ValidationError> {
        for (i, c) in self.claims.iter().enumerate() {
            c.check().map_err(|e| self.invalid(&format!("claims[{i}]"), e))?;
        }
        Ok(())
    }
}

/// One object of a pack bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleObject {
    /// Its kind (plural).
    pub kind: String,
    /// Its key.
    pub key: String,
    /// The object.
    pub body: Value,
}

/// A content pack as one document: its manifest and its objects (the
/// content crate reads and checks the manifest; the model keeps it as the
/// pack wrote it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// The bundle format's name and version.
    pub format: String,
    /// `pack.yaml`: name, version, description, requirements, overrides.
    pub manifest: Value,
    /// Every object of the pack.
    pub objects: Vec<BundleObject>,
}

impl Bundle {
    /// The pack version the manifest names.
    pub fn version(&self) -> Option<&str> {
        self.manifest.get("version").and_then(Value::as_str)
    }

    /// Its objects, with their kinds parsed (unknown kinds left out).
    pub fn kinds_and_objects(&self) -> impl Iterator<Item = (Kind, &str, &Value)> {
        self.objects.iter().filter_map(|o| Some((Kind::from_plural(&o.kind)?, o.key.as_str(), &o.body)))
    }
}

object! {
    /// An installed content pack: its manifest and every object it holds
    /// (a bundle), and the bundle it replaced, for rollback. Written only
    /// by installs, upgrades, rollbacks and removals.
    pub struct Content : Content, key = name {
        /// The pack's name.
        pub name: Name,
        /// Its version (semver).
        pub version: String,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// The whole pack as installed.
        pub bundle: Bundle,
        /// The bundle this one replaced, which `rollback` restores.
        #[serde(default)]
        pub previous: Option<Bundle>,
    }
}

impl Content {
    fn check_fields(&self) -> Result<(), ValidationError> {
        Ok(())
    }

    /// The bundle of `version` as this record keeps it: the installed one,
    /// or the one it replaced (what a machine pinned by a canary renders).
    pub fn objects_at(&self, version: &str) -> Option<&Bundle> {
        if self.version == version {
            return Some(&self.bundle);
        }
        self.previous.as_ref().filter(|p| p.version() == Some(version))
    }
}

/// Where an operator has got with a registration conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConflictState {
    /// Waiting for an operator; the agent asks again meanwhile.
    #[default]
    Pending,
    /// The registrant is the machine: its next registration gets the
    /// machine's session.
    Accepted,
    /// The registrant is not the machine: it is refused.
    Rejected,
}

object! {
    /// A registration made with a discovery join token that matched a
    /// machine Plinth already knows. Discovery never hands over a known
    /// machine by itself: the registration waits here until an operator
    /// accepts it (the registrant is that machine) or rejects it.
    pub struct Conflict : Conflict, key = id {
        /// Identity; assigned by the server.
        #[serde(default = "ConflictId::generate")]
        pub id: ConflictId,
        /// The known machine the registrant matched.
        pub machine: MachineId,
        /// The join token it registered with.
        pub token: TokenId,
        /// What the registrant said about itself.
        #[serde(default)]
        pub macs: Vec<MacAddr>,
        #[serde(default)]
        pub system_uuid: Option<String>,
        #[serde(default)]
        pub serial: Option<String>,
        /// How well it matched (`plinth_engine::identity`).
        #[serde(default)]
        pub score: u32,
        /// The address it registered from.
        #[serde(default)]
        pub address: Option<String>,
        /// Where the operator has got with it.
        #[serde(default)]
        pub state: ConflictState,
        /// For humans: what matched and what differs.
        #[serde(default)]
        pub detail: String,
    }
}

impl Conflict {
    fn check_fields(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

object! {
    /// An API token. The secret is shown once, at creation; only its hash is kept.
    pub struct Token : Token, key = id {
        /// Public identity of the token.
        pub id: TokenId,
        /// User it acts for.
        pub user: Name,
        /// Description for humans.
        #[serde(default)]
        pub description: String,
        /// When it stops working.
        pub expires_at: DateTime<Utc>,
        /// SHA-256 of the secret, hex; never returned by the API.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub secret_hash: Option<String>,
        /// A machine token acts for this machine only (its agent), not for
        /// `user`: it can read that machine and nothing else.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub machine: Option<MachineId>,
        /// A join token: it can only register a machine (`POST
        /// /api/v1/machines/whoami`), at most `uses_left` times.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub join: bool,
        /// Registrations left for a join token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub uses_left: Option<u32>,
        /// Workflow started on a machine created with this join token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub join_workflow: Option<Name>,
        /// Profiles given to a machine created with this join token.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub join_profiles: Vec<Name>,
        /// When set, the token may do only this (within what its user's
        /// roles allow); otherwise everything its user may.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub claims: Option<Vec<Claim>>,
        /// A boot credential: a machine token minted into a boot file
        /// (`machine_token()`). It fetches its machine's files
        /// (`/t/<token>/…`) and is traded once for a session; `uses_left`
        /// is 0 once traded, and a second trade is refused and recorded.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub boot: bool,
        /// The address a boot credential was handed to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub address: Option<Ipv4Addr>,
        /// A machine session's absolute end: renewals never go past it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub session_ends_at: Option<DateTime<Utc>>,
        /// A join token the unknown-machine boot script minted: it registers
        /// new machines only, and they start untrusted.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub discovery: bool,
        /// A metadata token: it reads its machine's metadata (`/t/<token>/`
        /// `meta-data`, `user-data`, ... on boot HTTP): no API route, no
        /// boot file. Its vendor-data may hand out one boot credential in
        /// all (`uses_left` goes from 1 to 0), under the leased-address rule.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub metadata: bool,
    }
}

impl Token {
    fn check_fields(&self) -> Result<(), ValidationError> {
        for (i, c) in self.claims.iter().flatten().enumerate() {
            c.check().map_err(|e| self.invalid(&format!("claims[{i}]"), e))?;
        }
        Ok(())
    }

    /// A new token with a fresh random secret (244 bits from the OS), and
    /// the bearer string `plt_<id>.<secret>` that is shown once. Only the
    /// secret's SHA-256 is kept in the token.
    pub fn mint(
        user: Name,
        description: String,
        expires_at: DateTime<Utc>,
        machine: Option<MachineId>,
    ) -> (Token, String) {
        let id = TokenId::generate();
        let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let token = Token {
            id,
            user,
            description,
            expires_at,
            secret_hash: Some(sha256_hex(&secret)),
            machine,
            join: false,
            uses_left: None,
            join_workflow: None,
            join_profiles: Vec::new(),
            claims: None,
            boot: false,
            address: None,
            session_ends_at: None,
            discovery: false,
            metadata: false,
            meta: Default::default(),
            revision: 0,
            created_at: None,
            updated_at: None,
        };
        (token, format!("plt_{id}.{secret}"))
    }

    /// Splits a bearer string `plt_<id>.<secret>` into the token's id and
    /// its secret; `None` for anything else. The one parser of bearer
    /// strings (the API, boot files' `/t/<token>/` and the CLI use it).
    pub fn parse_bearer(bearer: &str) -> Option<(TokenId, &str)> {
        let (id, secret) = bearer.trim().strip_prefix("plt_")?.split_once('.')?;
        let id = id.parse().ok()?;
        (!secret.is_empty()).then_some((id, secret))
    }

    /// Whether `secret` is this token's, compared in constant time.
    pub fn secret_matches(&self, secret: &str) -> bool {
        let want = self.secret_hash.as_deref().unwrap_or_default().as_bytes();
        let got = sha256_hex(secret);
        let got = got.as_bytes();
        want.len() == got.len() && want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// One thing that happened while a machine booted: a DHCP exchange, a TFTP
/// transfer, an HTTP fetch. Appended by the boot services, never edited;
/// the raw material of a machine's boot timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BootEvent {
    /// Sequence number assigned by the store (0 before it is stored).
    #[serde(default)]
    pub id: u64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The machine's MAC, when known (from the packet or its lease).
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// The client's address.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// The machine, when the event is about a known one (workflow and agent events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineId>,
    /// `dhcp`, `tftp`, `http`, `workflow` or `agent`.
    pub service: String,
    /// What happened, for humans.
    pub detail: String,
}

impl BootEvent {
    /// An event about a known machine (workflow, agent), found in its
    /// timeline by its id and first MAC.
    pub fn about(machine: &Machine, service: &str, detail: String) -> BootEvent {
        BootEvent {
            id: 0,
            at: crate::now(),
            mac: machine.macs.first().copied(),
            address: None,
            machine: Some(machine.id),
            service: service.to_owned(),
            detail,
        }
    }
}

/// One entry of the audit log: a change to an object, or an access to
/// secure values. Appended by the server, never edited or deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    /// Sequence number assigned by the store (0 before it is stored).
    #[serde(default)]
    pub seq: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who: `user:<name>`, `machine:<id>`, or `server` for the server's own
    /// changes (built-in content, re-sealing).
    pub actor: String,
    /// `created`, `updated`, `deleted`, or `secure-read`.
    pub action: String,
    /// The kind (plural), e.g. `machines`.
    pub kind: String,
    /// The object's key.
    pub key: String,
    /// The object before the change (server-only fields removed; secure
    /// values sealed, shown as `<secure>`).
    #[serde(default)]
    pub before: Option<Value>,
    /// The object after the change.
    #[serde(default)]
    pub after: Option<Value>,
    /// More, for humans (for `secure-read`: which params, where, to whom).
    #[serde(default)]
    pub detail: String,
}

impl AuditEntry {
    /// An entry, now, before the store numbers it.
    pub fn new(
        actor: String,
        action: &str,
        kind: Kind,
        key: String,
        before: Option<Value>,
        after: Option<Value>,
        detail: String,
    ) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at: crate::now(),
            actor,
            action: action.into(),
            kind: kind.plural().into(),
            key,
            before,
            after,
            detail,
        }
    }

    /// An entry saying `actor` had secure values of `machine` rendered.
    pub fn secure_read(actor: String, machine: MachineId, detail: String) -> AuditEntry {
        AuditEntry::new(actor, "secure-read", Kind::Machine, machine.to_string(), None, None, detail)
    }
}
