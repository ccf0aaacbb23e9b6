//! IPMI 2.0 over LAN through `ipmitool`, as MAAS and Ironic drive it. The
//! password goes through the environment (`-E`, `IPMI_PASSWORD`), never the
//! command line; the child gets no other environment, is killed when its
//! time is up, and its answers are parsed strictly: anything but the lines
//! `ipmitool` prints on success is an error.

use crate::PowerError;
use plinth_model::{BootDevice, PowerAction, PowerState};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The UDP port of IPMI over LAN.
pub const DEFAULT_PORT: u16 = 623;

/// One BMC reached through `ipmitool -I lanplus`.
pub struct Ipmi {
    host: String,
    port: u16,
    username: String,
    password: String,
    cipher_suite: u8,
    program: PathBuf,
    timeout: Duration,
}

impl std::fmt::Debug for Ipmi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipmi").field("host", &self.host).field("port", &self.port).finish_non_exhaustive()
    }
}

/// Splits `host`, `host:port` or `[v6]:port`, refusing anything `ipmitool`
/// could read as an option or that is not a host name or address.
pub fn split_address(address: &str, default_port: u16) -> Result<(String, u16), PowerError> {
    let bad = || PowerError::Config(format!("`{}` is not `host` or `host:port`", address.escape_debug()));
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad()),
        }
    } else if address.matches(':').count() == 1 {
        let (h, p) = address.split_once(':').ok_or_else(bad)?;
        (h, Some(p))
    } else {
        (address, None)
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?,
        None => default_port,
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_');
    if host.is_empty() || host.len() > 253 || host.starts_with('-') || !host.chars().all(ok) {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Finds `program` on `PATH` (or takes it as given when it names a path).
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

impl Ipmi {
    /// A BMC at `address` (`host[:port]`), logged in as `username`.
    pub fn new(
        address: &str,
        username: &str,
        password: &str,
        cipher_suite: Option<u8>,
        program: &Path,
        timeout: Duration,
    ) -> Result<Ipmi, PowerError> {
        let (host, port) = split_address(address, DEFAULT_PORT)?;
        let program = find_program(program).ok_or_else(|| {
            PowerError::Unsupported(format!(
                "`{}` is not installed on the server's host (Debian: apt-get install ipmitool)",
                program.display()
            ))
        })?;
        Ok(Ipmi {
            host,
            port,
            username: username.to_owned(),
            password: password.to_owned(),
            cipher_suite: cipher_suite.unwrap_or(3),
            program,
            timeout,
        })
    }

    /// Runs `ipmitool … ARGS`; its standard output on success.
    async fn run(&self, args: &[&str]) -> Result<String, PowerError> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(["-I", "lanplus", "-H", &self.host, "-p", &self.port.to_string(), "-U", &self.username])
            .args(["-C", &self.cipher_suite.to_string(), "-E", "-N", "2", "-R", "2", "-v"])
            .args(args)
            .env_clear()
            .env("IPMI_PASSWORD", &self.password)
            .env("LANG", "C")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| PowerError::Failed(format!("cannot run ipmitool: {e}")))?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(PowerError::Failed(format!("ipmitool: {e}"))),
            Err(_) => {
                return Err(PowerError::Unreachable(format!(
                    "no answer from {}:{} within {} s",
                    self.host,
                    self.port,
                    self.timeout.as_secs()
                )));
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // ipmitool reports some refusals on stderr and still exits 0 (a
        // BMC that keeps no boot parameters: "Set Chassis Boot Parameter 5
        // failed: Invalid data field in request").
        let refused = stderr.lines().any(|l| l.starts_with("Error") || l.contains(" failed: "));
        if !out.status.success() || refused {
            return Err(classify(&stderr, self.cipher_suite));
        }
        Ok(stdout)
    }

    /// The chassis power state.
    pub async fn status(&self) -> Result<PowerState, PowerError> {
        parse_status(&self.run(&["chassis", "power", "status"]).await?)
    }

    /// Carries out `action`.
    pub async fn act(&self, action: PowerAction) -> Result<(), PowerError> {
        let word = match action {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
            PowerAction::Reset => "reset",
            PowerAction::SoftOff => "soft",
        };
        parse_control(&self.run(&["chassis", "power", word]).await?, action)
    }

    /// Boots `device` once, at the next boot.
    pub async fn boot_once(&self, device: BootDevice, uefi: bool) -> Result<(), PowerError> {
        let word = match device {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::Cd => "cdrom",
        };
        let mut args = vec!["chassis", "bootdev", word];
        if uefi {
            args.push("options=efiboot");
        }
        parse_bootdev(&self.run(&args).await?, word)
    }
}

/// Printable and short, for an error message quoting a BMC.
pub(crate) fn quote(s: &str) -> String {
    let t: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let t: String = t.trim().chars().take(160).collect();
    if t.is_empty() { "nothing".into() } else { format!("`{t}`") }
}

/// The one line `ipmitool chassis power status` prints.
pub fn parse_status(stdout: &str) -> Result<PowerState, PowerError> {
    let lines: Vec<&str> = stdout.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.as_slice() {
        ["Chassis Power is on"] => Ok(PowerState::On),
        ["Chassis Power is off"] => Ok(PowerState::Off),
        _ => Err(PowerError::Garbage(format!("the BMC's power status was {}", quote(stdout)))),
    }
}

/// The line `ipmitool chassis power ACTION` prints.
pub fn parse_control(stdout: &str, action: PowerAction) -> Result<(), PowerError> {
    let want = match action {
        PowerAction::On => "Up/On",
        PowerAction::Off => "Down/Off",
        PowerAction::Cycle => "Cycle",
        PowerAction::Reset => "Reset",
        PowerAction::SoftOff => "Soft",
    };
    let lines: Vec<&str> = stdout.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.as_slice() {
        [l] if l.strip_prefix("Chassis Power Control: ") == Some(want) => Ok(()),
        _ => Err(PowerError::Garbage(format!("the BMC answered power {} with {}", action.as_str(), quote(stdout)))),
    }
}

/// The line `ipmitool chassis bootdev DEVICE` prints.
pub fn parse_bootdev(stdout: &str, device: &str) -> Result<(), PowerError> {
    let lines: Vec<&str> = stdout.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.as_slice() {
        [l] if l.strip_prefix("Set Boot Device to ") == Some(device) => Ok(()),
        _ => Err(PowerError::Garbage(format!("the BMC answered bootdev {device} with {}", quote(stdout)))),
    }
}

/// What a failed `ipmitool -v` run means, from what it wrote to stderr.
pub fn classify(stderr: &str, cipher_suite: u8) -> PowerError {
    let has = |s: &str| stderr.contains(s);
    if has("RAKP 2 HMAC is invalid")
        || has("unauthorized name")
        || has("Invalid user name")
        || has("RAKP 4 message has invalid integrity check value")
        || has("insufficient privilege")
    {
        return PowerError::BadCredentials("the BMC refused the user name or password".into());
    }
    if has("invalid authentication algorithm") || has("invalid integrity algorithm") || has("no matching cipher suite")
    {
        return PowerError::Unsupported(format!(
            "the BMC does not offer cipher suite {cipher_suite}; set bmc.cipher_suite to one it does (3 or 17)"
        ));
    }
    if has("Get Auth Capabilities error")
        || has("Get Channel Authentication Capabilities")
        || has("No response from remote controller")
        || has("Unable to establish IPMI v2")
    {
        return PowerError::Unreachable("no IPMI session could be opened (no answer from the BMC)".into());
    }
    if has("Invalid data field") || has("Invalid command") || has("not supported") {
        let line = stderr.lines().find(|l| l.starts_with("Error") || l.contains(" failed: ")).unwrap_or(stderr);
        return PowerError::Unsupported(format!("the BMC refused it: {}", quote(line)));
    }
    let line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    PowerError::Failed(format!("ipmitool failed: {}", quote(line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_and_refuse_options() {
        assert_eq!(split_address("10.0.0.5", 623).unwrap(), ("10.0.0.5".into(), 623));
        assert_eq!(split_address("bmc-1.rack:6230", 623).unwrap(), ("bmc-1.rack".into(), 6230));
        assert_eq!(split_address("[fd00::5]:700", 623).unwrap(), ("fd00::5".into(), 700));
        assert_eq!(split_address("fd00::5", 623).unwrap(), ("fd00::5".into(), 623));
        for bad in ["", "-oProxy=x", "a b", "host:0", "host:99999", "host;rm", "[::1", "x:y:z]"] {
            assert!(split_address(bad, 623).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_parsed_strictly() {
        assert_eq!(parse_status("Chassis Power is on\n").unwrap(), PowerState::On);
        assert_eq!(parse_status("Chassis Power is off").unwrap(), PowerState::Off);
        for bad in ["", "Chassis Power is maybe", "Chassis Power is on\nChassis Power is off", "\u{0}\u{1b}[2J"] {
            assert!(matches!(parse_status(bad), Err(PowerError::Garbage(_))), "{bad:?}");
        }
        assert!(parse_control("Chassis Power Control: Up/On\n", PowerAction::On).is_ok());
        assert!(parse_control("Chassis Power Control: Up/On\n", PowerAction::Off).is_err());
        assert!(parse_bootdev("Set Boot Device to pxe\n", "pxe").is_ok());
        assert!(parse_bootdev("Set Boot Device to disk\n", "pxe").is_err());
    }

    #[test]
    fn failures_are_told_apart() {
        let rakp = "Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n";
        assert!(matches!(classify(rakp, 3), PowerError::BadCredentials(_)));
        let name =
            "RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish IPMI v2 / RMCP+ session";
        assert!(matches!(classify(name, 3), PowerError::BadCredentials(_)));
        let gone = "Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session";
        assert!(matches!(classify(gone, 3), PowerError::Unreachable(_)));
        let suite = "Error in open session response message : invalid authentication algorithm\n\nError: Unable to establish IPMI v2 / RMCP+ session";
        assert!(matches!(classify(suite, 17), PowerError::Unsupported(m) if m.contains("17")));
        let field = "Set Chassis Boot Parameter 5 failed: Invalid data field in request";
        assert!(matches!(classify(field, 3), PowerError::Unsupported(m) if m.contains("Boot Parameter 5")));
    }
}
