//! The file root and safe path resolution.
//!
//! A requested path is untrusted. It is split on `/` (and `\`, which
//! Windows-style PXE clients send), `.` and empty parts are dropped, and any
//! `..` part, NUL byte or over-long path is refused outright, before the file
//! system is touched. The result is then canonicalised (resolving symlinks)
//! and must still lie inside the canonical root: a symlink pointing out is
//! refused, not followed.

use std::path::{Component, Path, PathBuf};

/// Longest request path accepted, in bytes.
pub const MAX_PATH: usize = 1024;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("path contains a NUL byte or control character")]
    BadByte,
    #[error("path is not valid UTF-8")]
    NotUtf8,
    #[error("path leaves the file root")]
    Escapes,
    #[error("no such file")]
    NotFound,
    #[error("not a regular file")]
    NotAFile,
}

/// The directory boot files are served from.
#[derive(Debug, Clone)]
pub struct FileRoot {
    root: PathBuf,
}

impl FileRoot {
    /// A root at `dir`, created if missing.
    pub fn new(dir: &Path) -> std::io::Result<FileRoot> {
        std::fs::create_dir_all(dir)?;
        Ok(FileRoot { root: dir.canonicalize()? })
    }

    /// The canonical root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Normalises a request path into relative components without touching
    /// the file system.
    pub fn clean(request: &[u8]) -> Result<PathBuf, PathError> {
        if request.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        if request.iter().any(|b| *b < 0x20 || *b == 0x7f) {
            return Err(PathError::BadByte);
        }
        let text = std::str::from_utf8(request).map_err(|_| PathError::NotUtf8)?;
        let mut out = PathBuf::new();
        for part in text.split(['/', '\\']) {
            match part {
                "" | "." => {}
                ".." => return Err(PathError::Escapes),
                p => {
                    // A part like "C:" could be read as a prefix on other
                    // platforms; on Unix it is a plain name, checked anyway.
                    if Path::new(p).components().any(|c| !matches!(c, Component::Normal(_))) {
                        return Err(PathError::Escapes);
                    }
                    out.push(p);
                }
            }
        }
        if out.as_os_str().is_empty() {
            return Err(PathError::Empty);
        }
        Ok(out)
    }

    /// Resolves a request to a regular file inside the root.
    pub fn resolve(&self, request: &[u8]) -> Result<PathBuf, PathError> {
        self.resolve_clean(&FileRoot::clean(request)?)
    }

    /// Resolves a path [`FileRoot::clean`] made to a regular file inside
    /// the root.
    pub fn resolve_clean(&self, relative: &Path) -> Result<PathBuf, PathError> {
        let joined = self.root.join(relative);
        let canonical = match joined.canonicalize() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PathError::NotFound),
            Err(_) => return Err(PathError::NotFound),
        };
        if !canonical.starts_with(&self.root) {
            return Err(PathError::Escapes);
        }
        match std::fs::metadata(&canonical) {
            Ok(m) if m.is_file() => Ok(canonical),
            Ok(_) => Err(PathError::NotAFile),
            Err(_) => Err(PathError::NotFound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_traversal_before_touching_the_disk() {
        for bad in [&b"../etc/passwd"[..], b"a/../../b", b"..", b"a\\..\\..\\b", b"/../x", b"ok/\0/x", b"x\n"] {
            assert!(FileRoot::clean(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(FileRoot::clean(&vec![b'a'; MAX_PATH + 1]), Err(PathError::TooLong));
        assert_eq!(FileRoot::clean(b"/"), Err(PathError::Empty));
        assert_eq!(FileRoot::clean(&[0xff, 0xfe]), Err(PathError::NotUtf8));
    }

    #[test]
    fn cleans_leading_slashes_dots_and_backslashes() {
        assert_eq!(FileRoot::clean(b"/boot//./x.efi").unwrap(), PathBuf::from("boot/x.efi"));
        assert_eq!(FileRoot::clean(b"\\boot\\pxelinux.0").unwrap(), PathBuf::from("boot/pxelinux.0"));
        assert_eq!(
            FileRoot::clean(b"%2e%2e/x").unwrap(),
            PathBuf::from("%2e%2e/x"),
            "no decoding here: a literal name"
        );
    }

    #[test]
    fn refuses_symlinks_that_leave_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = FileRoot::new(&dir.path().join("files")).unwrap();
        std::fs::write(root.path().join("ok.bin"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("dirlink")).unwrap();
        std::os::unix::fs::symlink("ok.bin", root.path().join("inside-link")).unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        assert!(root.resolve(b"ok.bin").is_ok());
        assert!(root.resolve(b"inside-link").is_ok(), "a symlink within the root is fine");
        assert_eq!(root.resolve(b"link"), Err(PathError::Escapes));
        assert_eq!(root.resolve(b"dirlink/secret"), Err(PathError::Escapes));
        assert_eq!(root.resolve(b"missing"), Err(PathError::NotFound));
        assert_eq!(root.resolve(b"sub"), Err(PathError::NotAFile));
    }
}
