//! Files made per request instead of read from the file root: the seam the
//! rendering engine plugs into. TFTP asks it before the file root, and the
//! boot HTTP server's per-machine routes (`/ipxe/<mac>`) are answered by it.

use crate::files::FileRoot;
use async_trait::async_trait;
use plinth_model::MacAddr;
use std::net::Ipv4Addr;

/// What a client asked for.
#[derive(Debug, Clone)]
pub struct FileRequest<'a> {
    /// The requested path, relative (`ipxe/52-54-00-12-34-56`).
    pub path: &'a str,
    /// The client's address.
    pub client: Option<Ipv4Addr>,
    /// The client's MAC, when the request names it.
    pub mac: Option<MacAddr>,
}

/// A source of generated files.
#[async_trait]
pub trait Generated: Send + Sync + 'static {
    /// The file's bytes, or `None` when this path is not one it makes.
    async fn lookup(&self, request: &FileRequest<'_>) -> Option<Vec<u8>>;
}

/// The built-in provider until templates render per machine: `ipxe/<mac>`
/// is the file root's `ipxe/<mac>.ipxe` (MAC as `52-54-00-12-34-56`), else
/// `ipxe/default.ipxe`.
pub struct IpxeScripts {
    root: FileRoot,
}

impl IpxeScripts {
    /// Serves scripts from `root`.
    pub fn new(root: FileRoot) -> IpxeScripts {
        IpxeScripts { root }
    }
}

/// Parses the MAC in `ipxe/<mac>` (colons or dashes, any case).
pub fn ipxe_path_mac(path: &str) -> Option<MacAddr> {
    let rest = path.trim_start_matches('/').strip_prefix("ipxe/")?;
    rest.replace('-', ":").parse().ok()
}

#[async_trait]
impl Generated for IpxeScripts {
    async fn lookup(&self, request: &FileRequest<'_>) -> Option<Vec<u8>> {
        let mac = request.mac.or_else(|| ipxe_path_mac(request.path))?;
        let specific = format!("ipxe/{}.ipxe", mac.to_string().replace(':', "-"));
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let path = root.resolve(specific.as_bytes()).or_else(|_| root.resolve(b"ipxe/default.ipxe")).ok()?;
            std::fs::read(path).ok()
        })
        .await
        .ok()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn per_mac_script_then_default_then_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = FileRoot::new(dir.path()).unwrap();
        let p = IpxeScripts::new(root.clone());
        let req = |path| FileRequest { path, client: None, mac: None };
        assert_eq!(p.lookup(&req("ipxe/52-54-00-12-34-56")).await, None, "no scripts at all");
        std::fs::create_dir(root.path().join("ipxe")).unwrap();
        std::fs::write(root.path().join("ipxe/default.ipxe"), "#!ipxe\necho default\n").unwrap();
        std::fs::write(root.path().join("ipxe/52-54-00-12-34-56.ipxe"), "#!ipxe\necho mine\n").unwrap();
        assert_eq!(p.lookup(&req("ipxe/52:54:00:12:34:56")).await.unwrap(), b"#!ipxe\necho mine\n");
        assert_eq!(p.lookup(&req("/ipxe/52-54-00-AA-BB-CC")).await.unwrap(), b"#!ipxe\necho default\n");
        assert_eq!(p.lookup(&req("undionly.kpxe")).await, None, "not a generated path");
        assert_eq!(p.lookup(&req("ipxe/../../etc")).await, None);
    }
}
