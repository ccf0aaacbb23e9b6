//! Virtual media: the discovery ISO a BMC boots a machine from when the
//! network gives it no boot options. `plinth discovery build --iso` makes
//! the base image (BIOS and UEFI, GRUB from Debian's packages through
//! `grub-mkrescue`); for each insert the server writes a copy whose
//! `/plinth/seed.cfg` carries that machine's arguments (its id, a boot
//! credential, the server's URLs, a static address): `xorriso` appends a
//! session holding the seed to a copy of the base image, whose boot records
//! and partition tables stay as they are (rewriting the image instead
//! collides with the EFI partition `grub-mkrescue` appends).

use crate::PowerError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the base image's GRUB reads the per-machine arguments.
pub const SEED_PATH: &str = "/plinth/seed.cfg";

/// The base image's GRUB configuration: the discovery kernel with the
/// seed's arguments, on the serial console and the screen.
pub const GRUB_CFG: &str = r#"set timeout=2
set default=0
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set plinth_args=""
if [ -f /plinth/seed.cfg ]; then source /plinth/seed.cfg; fi
menuentry "Plinth discovery" {
  linux /discovery/vmlinuz console=tty0 console=ttyS0,115200 $plinth_args
  initrd /discovery/initrd.img
}
"#;

/// Whether `value` may go on the kernel command line unquoted: URLs,
/// tokens, addresses.
fn plain(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 512
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/@=,+-[]".contains(&b))
}

/// The seed file for `args` (`name=value` kernel arguments).
pub fn seed(args: &[(&str, String)]) -> Result<String, PowerError> {
    let mut line = Vec::new();
    for (name, value) in args {
        if !plain(name) || !plain(value) {
            return Err(PowerError::Config(format!(
                "`{name}={}` cannot go on a kernel command line",
                value.escape_debug()
            )));
        }
        line.push(format!("{name}={value}"));
    }
    Ok(format!("set plinth_args=\"{}\"\n", line.join(" ")))
}

/// Writes `out`: the image `base` with `seed` as its [`SEED_PATH`], boot
/// records kept, in at most `timeout`.
pub async fn personalise(
    xorriso: &Path,
    base: &Path,
    out: &Path,
    seed: &str,
    timeout: Duration,
) -> Result<(), PowerError> {
    let program = crate::ipmi::find_program(xorriso).ok_or_else(|| {
        PowerError::Unsupported(format!(
            "`{}` is not installed on the server's host (Debian: apt-get install xorriso)",
            xorriso.display()
        ))
    })?;
    let dir = out.parent().ok_or_else(|| PowerError::Failed("no folder for the image".into()))?;
    let seed_file = dir.join(".seed.cfg");
    std::fs::write(&seed_file, seed).map_err(|e| PowerError::Failed(format!("{}: {e}", seed_file.display())))?;
    tokio::fs::copy(base, out)
        .await
        .map_err(|e| PowerError::Failed(format!("{} to {}: {e}", base.display(), out.display())))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("-dev")
        .arg(out)
        .args(["-boot_image", "any", "keep", "-map"])
        .arg(&seed_file)
        .args([SEED_PATH, "-commit", "-end"])
        .env_clear()
        .env("LANG", "C")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| PowerError::Failed(format!("cannot run xorriso: {e}")))?;
    let result = tokio::time::timeout(timeout, child.wait_with_output()).await;
    let _ = std::fs::remove_file(&seed_file);
    match result {
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let line = err.lines().rev().find(|l| l.contains("FAILURE") || l.contains("SORRY")).unwrap_or("");
            Err(PowerError::Failed(format!("xorriso could not write the image: {}", crate::ipmi::quote(line))))
        }
        Ok(Err(e)) => Err(PowerError::Failed(format!("xorriso: {e}"))),
        Err(_) => Err(PowerError::Failed(format!("xorriso took longer than {} s", timeout.as_secs()))),
    }
}

/// The folder per-machine images are written to, under the file root.
pub fn media_dir(file_root: &Path) -> PathBuf {
    file_root.join("media")
}

/// Removes per-machine images older than `keep`; how many.
pub fn prune(file_root: &Path, keep: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(media_dir(file_root)) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let old = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > keep);
        if old && e.file_type().is_ok_and(|t| t.is_dir()) && std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_hold_only_plain_arguments() {
        let s =
            seed(&[("plinth.api", "https://10.0.0.1:8092".into()), ("plinth.token", "plt_ab.cd-_".into())]).unwrap();
        assert_eq!(s, "set plinth_args=\"plinth.api=https://10.0.0.1:8092 plinth.token=plt_ab.cd-_\"\n");
        for bad in ["a b", "x\"; reboot; \"", "$(x)", "", "a\nb", "a;b"] {
            assert!(seed(&[("plinth.x", bad.into())]).is_err(), "{bad:?}");
        }
    }
}
