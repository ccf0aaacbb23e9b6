//! `plinth bootloaders install`: fills the file root with iPXE loaders from
//! the system's `ipxe` package. Plinth ships no third-party binaries it
//! cannot rebuild; this copies the distribution's builds instead.

use anyhow::{Context, Result, bail};
use clap::ArgMatches;
use std::path::{Path, PathBuf};

/// Loaders looked for, as (file in the source folder, name in the file root).
const LOADERS: &[(&str, &str)] = &[
    ("undionly.kpxe", "undionly.kpxe"),
    ("ipxe.efi", "ipxe.efi"),
    ("snponly.efi", "snponly.efi"),
    ("ipxe.pxe", "ipxe.pxe"),
    ("arm64-efi/ipxe.efi", "ipxe-arm64.efi"),
    ("arm64-efi/snponly.efi", "snponly-arm64.efi"),
];

/// Copies what is there; fails when none of the loaders is found.
pub fn install(from: &Path, file_root: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(file_root).with_context(|| format!("cannot create {}", file_root.display()))?;
    let mut copied = Vec::new();
    for (src, dst) in LOADERS {
        let s = from.join(src);
        if s.is_file() {
            let tmp = file_root.join(format!(".{dst}.tmp"));
            std::fs::copy(&s, &tmp).with_context(|| format!("cannot copy {}", s.display()))?;
            std::fs::rename(&tmp, file_root.join(dst)).with_context(|| format!("cannot install {dst}"))?;
            copied.push((*dst).to_owned());
        }
    }
    if copied.is_empty() {
        bail!(
            "no iPXE loaders in {}: install Debian's `ipxe` package (apt-get install ipxe) or pass --from with a folder holding undionly.kpxe and ipxe.efi",
            from.display()
        );
    }
    Ok(copied)
}

/// Runs the subcommand.
pub fn run(m: &ArgMatches) -> Result<()> {
    let from = m.get_one::<PathBuf>("from").cloned().unwrap_or_else(|| PathBuf::from("/usr/lib/ipxe"));
    let root = match m.get_one::<PathBuf>("file-root") {
        Some(r) => r.clone(),
        None => {
            m.get_one::<PathBuf>("data-dir").cloned().unwrap_or_else(|| PathBuf::from("./plinth-data")).join("files")
        }
    };
    let copied = install(&from, &root)?;
    println!("installed into {}: {}", root.display(), copied.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_present_loaders_and_fails_clearly_without_any() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let e = install(src.path(), dst.path()).unwrap_err();
        assert!(e.to_string().contains("apt-get install ipxe"), "{e}");
        std::fs::write(src.path().join("undionly.kpxe"), "bios").unwrap();
        std::fs::create_dir(src.path().join("arm64-efi")).unwrap();
        std::fs::write(src.path().join("arm64-efi/ipxe.efi"), "arm").unwrap();
        let copied = install(src.path(), &dst.path().join("files")).unwrap();
        assert_eq!(copied, ["undionly.kpxe", "ipxe-arm64.efi"]);
        assert_eq!(std::fs::read_to_string(dst.path().join("files/ipxe-arm64.efi")).unwrap(), "arm");
    }
}
