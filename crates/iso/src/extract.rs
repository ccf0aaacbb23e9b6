//! Installing an image's tree into a folder: checksum first, then every
//! file written through a temporary name and renamed, and a manifest that
//! makes a second run with the same image skip what is already in place.

use crate::{Entry, Iso, IsoError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Name of the manifest written into the destination.
pub const MANIFEST: &str = ".plinth-import";

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error("checksum mismatch for {file}: expected SHA-256 {expected}, the file has {actual}")]
    Checksum { file: String, expected: String, actual: String },
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
    #[error("{0} leads outside the destination folder (a symbolic link?); refusing to write there")]
    Escapes(String),
    #[error(transparent)]
    Iso(#[from] IsoError),
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// SHA-256 of the image, lower-case hex.
    pub sha256: String,
    /// Files written.
    pub written: usize,
    /// Files already in place from an earlier import of the same image.
    pub unchanged: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Symbolic links in the image, not created.
    pub symlinks: usize,
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, ImportError> {
    let mut f = std::fs::File::open(path).map_err(|e| ImportError::Read(path.display().to_string(), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ImportError::Read(path.display().to_string(), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn read_manifest(dest: &Path) -> (String, HashMap<String, u64>) {
    let text = std::fs::read_to_string(dest.join(MANIFEST)).unwrap_or_default();
    let mut lines = text.lines();
    let sha = lines.next().unwrap_or_default().to_owned();
    let files = lines
        .filter_map(|l| l.split_once('\t'))
        .filter_map(|(size, path)| Some((path.to_owned(), size.parse().ok()?)))
        .collect();
    (sha, files)
}

/// Verifies `image` against `expected` (SHA-256 hex) and extracts its tree
/// into `dest`. Files already there from an import of the same image, with
/// the size the image gives, are left alone.
pub fn import(image: &Path, expected: &str, dest: &Path) -> Result<Summary, ImportError> {
    let name = image.display().to_string();
    let actual = sha256_file(image)?;
    if !actual.eq_ignore_ascii_case(expected.trim()) {
        return Err(ImportError::Checksum { file: name, expected: expected.trim().to_lowercase(), actual });
    }
    let file = std::fs::File::open(image).map_err(|e| ImportError::Read(name.clone(), e))?;
    let mut iso = Iso::open(std::io::BufReader::new(file))?;
    let entries = iso.walk()?;

    let werr = |p: &Path, e| ImportError::Write(p.display().to_string(), e);
    std::fs::create_dir_all(dest).map_err(|e| werr(dest, e))?;
    let root = dest.canonicalize().map_err(|e| werr(dest, e))?;
    let (old_sha, old_files) = read_manifest(&root);
    let same_image = old_sha == actual;
    let mut summary = Summary { sha256: actual.clone(), ..Summary::default() };
    let mut manifest = format!("{actual}\n");
    let inside = |p: &Path| -> Result<PathBuf, ImportError> {
        let c = p.canonicalize().map_err(|e| werr(p, e))?;
        if c.starts_with(&root) { Ok(c) } else { Err(ImportError::Escapes(p.display().to_string())) }
    };
    for (path, entry) in &entries {
        let rel = path.join("/");
        let target = path.iter().fold(root.clone(), |acc, c| acc.join(c));
        match entry {
            Entry::Symlink { .. } => summary.symlinks += 1,
            Entry::Dir { .. } => {
                std::fs::create_dir_all(&target).map_err(|e| werr(&target, e))?;
                inside(&target)?;
            }
            Entry::File { .. } => {
                let parent = target.parent().unwrap_or(&root);
                std::fs::create_dir_all(parent).map_err(|e| werr(parent, e))?;
                let parent = inside(parent)?;
                let size = entry.size();
                manifest.push_str(&format!("{size}\t{rel}\n"));
                let in_place = same_image
                    && old_files.get(&rel) == Some(&size)
                    && std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_file() && m.len() == size);
                if in_place {
                    summary.unchanged += 1;
                    continue;
                }
                let tmp = parent.join(format!(".{}.plinth-tmp", entry.name()));
                let mut out = std::fs::File::create(&tmp).map_err(|e| werr(&tmp, e))?;
                let n = iso.copy(entry, &mut out)?;
                out.flush().map_err(|e| werr(&tmp, e))?;
                drop(out);
                std::fs::rename(&tmp, &target).map_err(|e| werr(&target, e))?;
                summary.written += 1;
                summary.bytes += n;
            }
        }
    }
    let tmp = root.join(format!("{MANIFEST}.tmp"));
    std::fs::write(&tmp, manifest).map_err(|e| werr(&tmp, e))?;
    std::fs::rename(&tmp, root.join(MANIFEST)).map_err(|e| werr(&root, e))?;
    Ok(summary)
}
