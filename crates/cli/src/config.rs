//! The CLI's configuration file, written by `plinth login`: endpoint, token
//! and the CA certificate to trust. Flags and environment variables
//! (`PLINTH_ENDPOINT`, `PLINTH_TOKEN`, `PLINTH_CA_CERT`) take precedence.

use crate::ClientError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Saved connection settings.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

/// Where the file lives: `$PLINTH_CONFIG`, else
/// `$XDG_CONFIG_HOME/plinth/config.json`, else `~/.config/plinth/config.json`.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PLINTH_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("plinth").join("config.json"))
}

/// Loads the file; a missing file is an empty configuration.
pub fn load() -> Result<Config, ClientError> {
    let Some(p) = path() else { return Ok(Config::default()) };
    match std::fs::read(&p) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Input(format!("config {}: {e}", p.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(ClientError::Input(format!("config {}: {e}", p.display()))),
    }
}

/// Saves the file with mode 0600 (it holds a token).
pub fn save(config: &Config) -> Result<PathBuf, ClientError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p =
        path().ok_or_else(|| ClientError::Input("no place for the config file: set PLINTH_CONFIG or HOME".into()))?;
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ClientError::Input(format!("{}: {e}", dir.display())))?;
    }
    let text = serde_json::to_string_pretty(config).map_err(|e| ClientError::Input(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)
        .map_err(|e| ClientError::Input(format!("{}: {e}", p.display())))?;
    f.write_all(text.as_bytes()).map_err(|e| ClientError::Input(format!("{}: {e}", p.display())))?;
    Ok(p)
}
