//! Plinth's BMC drivers. [`Driver`] speaks IPMI (through `ipmitool`, the
//! password in its environment) or Redfish (HTTPS, the BMC's certificate
//! checked against the host's roots, a site CA or a pinned fingerprint) and
//! answers in one vocabulary: a [`PowerState`], an action done, or a
//! [`PowerError`] that says in words what went wrong. Nothing here touches
//! the store: `plinth_api::power` holds the machine-side of it.
#![forbid(unsafe_code)]

pub mod ipmi;
pub mod media;
pub mod redfish;
pub mod tls;

use plinth_model::{Bmc, BmcDriver, BootDevice, MacAddr, PowerAction, PowerState};
use std::path::PathBuf;
use std::time::Duration;

/// Why a BMC call failed, in the words an operator acts on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PowerError {
    /// No answer, or no connection.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The BMC refused the user name or password (or its privilege).
    #[error("bad credentials: {0}")]
    BadCredentials(String),
    /// The BMC (or the server's host) cannot do this.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The BMC's certificate is not the one trusted.
    #[error("TLS: {0}")]
    Tls(String),
    /// The BMC answered something Plinth does not understand.
    #[error("unexpected answer: {0}")]
    Garbage(String),
    /// The machine's BMC settings cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// Anything else the BMC or the tool said.
    #[error("failed: {0}")]
    Failed(String),
}

/// What a BMC says of the system it manages.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Identity {
    /// SMBIOS system UUID, lower case.
    pub uuid: Option<String>,
    /// The system's serial number.
    pub serial: Option<String>,
    /// Maker.
    pub manufacturer: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// The MACs of its NICs.
    pub macs: Vec<MacAddr>,
}

/// How long a BMC call may take, and where `ipmitool` is.
#[derive(Debug, Clone)]
pub struct Limits {
    /// One call's time, connection included.
    pub timeout: Duration,
    /// The `ipmitool` program (found on `PATH` when a bare name).
    pub ipmitool: PathBuf,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { timeout: Duration::from_secs(20), ipmitool: PathBuf::from("ipmitool") }
    }
}

/// A BMC, ready to be called.
#[derive(Debug)]
pub enum Driver {
    Ipmi(ipmi::Ipmi),
    Redfish(Box<redfish::Redfish>),
}

impl Driver {
    /// The driver for `bmc`, logging in with `password` (opened by the
    /// caller from its sealed value).
    pub fn new(bmc: &Bmc, password: &str, limits: &Limits) -> Result<Driver, PowerError> {
        bmc.check().map_err(|(field, why)| PowerError::Config(format!("{field}: {why}")))?;
        Ok(match bmc.driver {
            BmcDriver::Ipmi => Driver::Ipmi(ipmi::Ipmi::new(
                &bmc.address,
                &bmc.username,
                password,
                bmc.cipher_suite,
                &limits.ipmitool,
                limits.timeout,
            )?),
            BmcDriver::Redfish => Driver::Redfish(Box::new(redfish::Redfish::new(bmc, password, limits.timeout)?)),
        })
    }

    /// The machine's power state.
    pub async fn status(&self) -> Result<PowerState, PowerError> {
        match self {
            Driver::Ipmi(d) => d.status().await,
            Driver::Redfish(d) => d.status().await,
        }
    }

    /// Carries out `action`. A cycle or reset of a machine that is off
    /// powers it on; powering on one that is on, or off one that is off,
    /// does nothing.
    pub async fn act(&self, action: PowerAction) -> Result<(), PowerError> {
        let now = self.status().await?;
        let action = match (action, now) {
            (PowerAction::On, PowerState::On) | (PowerAction::Off | PowerAction::SoftOff, PowerState::Off) => {
                return Ok(());
            }
            (PowerAction::Cycle | PowerAction::Reset, PowerState::Off) => PowerAction::On,
            (a, _) => a,
        };
        match self {
            Driver::Ipmi(d) => d.act(action).await,
            Driver::Redfish(d) => d.act(action).await,
        }
    }

    /// Boots `device` once, at the next boot (`uefi`: in UEFI mode, where
    /// the BMC distinguishes).
    pub async fn boot_once(&self, device: BootDevice, uefi: bool) -> Result<(), PowerError> {
        match self {
            Driver::Ipmi(d) => d.boot_once(device, uefi).await,
            Driver::Redfish(d) => d.boot_once(device, uefi).await,
        }
    }

    /// The Redfish driver, for what only Redfish does (virtual media,
    /// identity).
    pub fn redfish(&self) -> Result<&redfish::Redfish, PowerError> {
        match self {
            Driver::Redfish(d) => Ok(d),
            Driver::Ipmi(_) => Err(PowerError::Unsupported("this needs a Redfish BMC; the machine's is IPMI".into())),
        }
    }
}
