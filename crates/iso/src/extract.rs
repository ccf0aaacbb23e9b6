//! Installing an image's tree into a folder: checksum first; then the
//! image's own claims checked before anything is written (no two names for
//! one path, no two files sharing data, no more data than the image holds,
//! room for it on the disk); then every file written under a temporary
//! name, and only when all are written, renamed into place. A failure
//! leaves the folder as it was. A manifest makes a second run with the
//! same image skip what is already in place.

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
    #[error("the image names `{0}` twice; refusing it")]
    Duplicate(String),
    #[error(
        "files `{0}` and `{1}` share their data in the image; refusing it (a well-formed image gives each file its own)"
    )]
    SharedData(String, String),
    #[error("the image's files claim {claimed} bytes, more than the image's {image} bytes; refusing it")]
    TooLarge { claimed: u64, image: u64 },
    #[error("not enough room in {dest}: the import needs {needed} bytes, {free} are free")]
    NoRoom { dest: String, needed: u64, free: u64 },
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
    let image_len = file.metadata().map_err(|e| ImportError::Read(name.clone(), e))?.len();
    let mut iso = Iso::open(std::io::BufReader::new(file))?;
    let entries = iso.walk()?;
    check_claims(&entries, image_len)?;

    let werr = |p: &Path, e| ImportError::Write(p.display().to_string(), e);
    let mut made_dirs: Vec<PathBuf> = Vec::new();
    if !dest.exists() {
        made_dirs.push(dest.to_owned());
    }
    std::fs::create_dir_all(dest).map_err(|e| werr(dest, e))?;
    let root = dest.canonicalize().map_err(|e| werr(dest, e))?;
    let (old_sha, old_files) = read_manifest(&root);
    let same_image = old_sha == actual;
    let in_place = |rel: &str, target: &Path, size: u64| {
        same_image
            && old_files.get(rel) == Some(&size)
            && std::fs::symlink_metadata(target).is_ok_and(|m| m.is_file() && m.len() == size)
    };
    let needed: u64 = entries
        .iter()
        .filter(|(path, e)| {
            matches!(e, Entry::File { .. })
                && !in_place(&path.join("/"), &path.iter().fold(root.clone(), |acc, c| acc.join(c)), e.size())
        })
        .map(|(_, e)| e.size())
        .sum();
    if let Some(free) = free_bytes(&root)
        && needed > free
    {
        return Err(ImportError::NoRoom { dest: root.display().to_string(), needed, free });
    }
    let mut summary = Summary { sha256: actual.clone(), ..Summary::default() };
    let mut manifest = format!("{actual}\n");
    // Files written under temporary names, renamed once all are written.
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let written =
        stage_files(&mut iso, &entries, &root, &mut made_dirs, &mut staged, &mut manifest, &mut summary, &in_place);
    if let Err(e) = written {
        // As it was: the temporary files and the folders made for them go.
        for (tmp, _) in &staged {
            let _ = std::fs::remove_file(tmp);
        }
        for dir in made_dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        return Err(e);
    }
    for (tmp, target) in &staged {
        std::fs::rename(tmp, target).map_err(|e| werr(target, e))?;
    }
    let tmp = root.join(format!("{MANIFEST}.tmp"));
    std::fs::write(&tmp, manifest).map_err(|e| werr(&tmp, e))?;
    std::fs::rename(&tmp, root.join(MANIFEST)).map_err(|e| werr(&root, e))?;
    Ok(summary)
}

/// What the image says of itself that an import must not believe: two
/// entries at one path, two files over the same data (which would write
/// the image's bytes many times over), more file data than the image has.
pub fn check_claims(entries: &[(Vec<String>, Entry)], image_len: u64) -> Result<(), ImportError> {
    let mut paths = std::collections::HashSet::new();
    let mut ranges: Vec<(u64, u64, String)> = Vec::new();
    let mut claimed = 0u64;
    for (path, entry) in entries {
        let rel = path.join("/");
        if !paths.insert(rel.clone()) {
            return Err(ImportError::Duplicate(rel));
        }
        if let Entry::File { extents, .. } = entry {
            for e in extents.iter().filter(|e| e.len > 0) {
                let start = u64::from(e.lba) * 2048;
                let end = start + u64::from(e.len);
                if end > image_len {
                    return Err(ImportError::TooLarge { claimed: end, image: image_len });
                }
                ranges.push((start, end, rel.clone()));
            }
            claimed += entry.size();
        }
    }
    if claimed > image_len {
        return Err(ImportError::TooLarge { claimed, image: image_len });
    }
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(ImportError::SharedData(w[0].2.clone(), w[1].2.clone()));
        }
    }
    Ok(())
}

/// Free bytes on the file system holding `dir`, when it says.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Writes each file that is not already in place under a temporary name
/// next to its target, recording it in `staged`, and the folders it makes
/// in `made_dirs`.
#[allow(clippy::too_many_arguments)]
fn stage_files<R: std::io::Read + std::io::Seek>(
    iso: &mut Iso<R>,
    entries: &[(Vec<String>, Entry)],
    root: &Path,
    made_dirs: &mut Vec<PathBuf>,
    staged: &mut Vec<(PathBuf, PathBuf)>,
    manifest: &mut String,
    summary: &mut Summary,
    in_place: &dyn Fn(&str, &Path, u64) -> bool,
) -> Result<(), ImportError> {
    let werr = |p: &Path, e| ImportError::Write(p.display().to_string(), e);
    let inside = |p: &Path| -> Result<PathBuf, ImportError> {
        let c = p.canonicalize().map_err(|e| werr(p, e))?;
        if c.starts_with(root) { Ok(c) } else { Err(ImportError::Escapes(p.display().to_string())) }
    };
    let make_dir = |dir: &Path, made: &mut Vec<PathBuf>| -> Result<(), ImportError> {
        let mut missing: Vec<PathBuf> = dir.ancestors().take_while(|a| !a.exists()).map(Path::to_owned).collect();
        std::fs::create_dir_all(dir).map_err(|e| werr(dir, e))?;
        missing.reverse();
        made.extend(missing);
        Ok(())
    };
    for (path, entry) in entries {
        let rel = path.join("/");
        let target = path.iter().fold(root.to_owned(), |acc, c| acc.join(c));
        match entry {
            Entry::Symlink { .. } => summary.symlinks += 1,
            Entry::Dir { .. } => {
                make_dir(&target, made_dirs)?;
                inside(&target)?;
            }
            Entry::File { .. } => {
                let parent = target.parent().unwrap_or(root);
                make_dir(parent, made_dirs)?;
                let parent = inside(parent)?;
                let size = entry.size();
                manifest.push_str(&format!("{size}\t{rel}\n"));
                if in_place(&rel, &target, size) {
                    summary.unchanged += 1;
                    continue;
                }
                let tmp = parent.join(format!(".{}.plinth-tmp", entry.name()));
                staged.push((tmp.clone(), target.clone()));
                let mut out = std::fs::File::create(&tmp).map_err(|e| werr(&tmp, e))?;
                let n = iso.copy(entry, &mut out)?;
                out.flush().map_err(|e| werr(&tmp, e))?;
                summary.written += 1;
                summary.bytes += n;
            }
        }
    }
    Ok(())
}
