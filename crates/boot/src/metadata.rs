//! The metadata service: what cloud-init on a deployed image (or on a
//! cloud VM) reads about its machine, in the NoCloud layout (`meta-data`,
//! `user-data`, `vendor-data`, `network-config`) and in EC2's
//! (`latest/meta-data/...`, `latest/user-data`). It is reached only under
//! `/t/<token>/` with a token of that machine, so a request names nobody
//! else; see [`crate::generated::RenderedFiles`] for who may read it.

use serde_json::Value;

/// A NoCloud file and the template that renders it when no param names
/// another.
pub const NOCLOUD: [(&str, &str, Option<&str>); 4] = [
    ("meta-data", "nocloud.meta-data", None),
    ("user-data", "nocloud.user-data", Some("cloud-init-user-data")),
    ("vendor-data", "nocloud.vendor-data", Some("cloud-init-vendor-data")),
    ("network-config", "nocloud.network-config", None),
];

/// A path of the metadata service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataPath {
    /// A NoCloud file, rendered from a template: its file name.
    NoCloud(&'static str),
    /// EC2's `<version>/meta-data/<key>`; an empty key (or one ending in
    /// `/`) is a listing.
    Ec2(String),
}

impl MetadataPath {
    /// The metadata path `path` (relative, cleaned) is, if it is one:
    /// a NoCloud file, or under `latest/` or a dated version
    /// (`2009-04-04/`), as EC2 serves them.
    pub fn of(path: &str) -> Option<MetadataPath> {
        let path = path.trim_start_matches('/');
        if let Some((file, _, _)) = NOCLOUD.iter().find(|(f, _, _)| *f == path) {
            return Some(MetadataPath::NoCloud(file));
        }
        let (version, rest) = path.split_once('/').unwrap_or((path, ""));
        let dated = version.len() == 10
            && version.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
        if version != "latest" && !dated {
            return None;
        }
        match rest {
            "user-data" => Some(MetadataPath::NoCloud("user-data")),
            "meta-data" => Some(MetadataPath::Ec2(String::new())),
            _ => rest.strip_prefix("meta-data/").map(|k| MetadataPath::Ec2(k.to_owned())),
        }
    }
}

/// EC2's metadata tree for a machine: `instance-id`, `hostname`,
/// `local-hostname`, `local-ipv4`, `mac`, `public-keys/0/openssh-key`
/// (each key of param `ssh-authorized-keys`, one per index).
pub fn ec2_tree(machine: &plinth_model::Machine, network: &Value, keys: &[String]) -> Value {
    let fqdn = network.get("fqdn").and_then(Value::as_str).unwrap_or_default();
    let hostname = network.get("hostname").and_then(Value::as_str).unwrap_or_default();
    let mut public = serde_json::Map::new();
    for (i, key) in keys.iter().enumerate() {
        public.insert(i.to_string(), serde_json::json!({"openssh-key": key}));
    }
    let mut tree = serde_json::json!({
        "instance-id": machine.id.to_string(),
        "hostname": if fqdn.is_empty() { hostname } else { fqdn },
        "local-hostname": hostname,
        "public-keys": public,
    });
    if let Some(address) = network.get("address").and_then(Value::as_str) {
        tree["local-ipv4"] = Value::String(address.to_owned());
    }
    if let Some(mac) = machine.macs.first() {
        tree["mac"] = Value::String(mac.to_string());
    }
    tree
}

/// The answer for `key` (`public-keys/0/openssh-key`, or a folder like
/// `public-keys/` or the empty root) in `tree`: a leaf's text, or a
/// folder's listing as EC2 gives it (one entry a line, folders with `/`;
/// `public-keys/` lists `0=<name>`).
pub fn ec2_answer(tree: &Value, key: &str) -> Option<String> {
    let mut node = tree;
    let parts: Vec<&str> = key.split('/').filter(|p| !p.is_empty()).collect();
    for p in &parts {
        node = node.get(p)?;
    }
    match node {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => {
            let public_keys = parts.as_slice() == ["public-keys"];
            let lines: Vec<String> = m
                .iter()
                .map(|(k, v)| match v {
                    _ if public_keys => format!("{k}=key-{k}"),
                    Value::Object(_) => format!("{k}/"),
                    _ => k.clone(),
                })
                .collect();
            Some(lines.join("\n"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_paths_are_the_nocloud_files_and_ec2s_tree() {
        assert_eq!(MetadataPath::of("meta-data"), Some(MetadataPath::NoCloud("meta-data")));
        assert_eq!(MetadataPath::of("/user-data"), Some(MetadataPath::NoCloud("user-data")));
        assert_eq!(MetadataPath::of("network-config"), Some(MetadataPath::NoCloud("network-config")));
        assert_eq!(MetadataPath::of("latest/user-data"), Some(MetadataPath::NoCloud("user-data")));
        assert_eq!(MetadataPath::of("latest/meta-data/"), Some(MetadataPath::Ec2(String::new())));
        assert_eq!(MetadataPath::of("latest/meta-data"), Some(MetadataPath::Ec2(String::new())));
        assert_eq!(MetadataPath::of("2009-04-04/meta-data/instance-id"), Some(MetadataPath::Ec2("instance-id".into())));
        assert_eq!(MetadataPath::of("preseed.cfg"), None);
        assert_eq!(MetadataPath::of("2009-4-04/meta-data/x"), None);
        assert_eq!(MetadataPath::of("latest/other"), None);
        assert_eq!(MetadataPath::of("user-data/x"), None);
    }

    #[test]
    fn the_ec2_tree_lists_folders_and_answers_leaves() {
        let tree = json!({"instance-id": "i-1", "local-hostname": "web1",
            "public-keys": {"0": {"openssh-key": "ssh-ed25519 AAA a@b"}}});
        assert_eq!(ec2_answer(&tree, "").unwrap(), "instance-id\nlocal-hostname\npublic-keys/");
        assert_eq!(ec2_answer(&tree, "public-keys/").unwrap(), "0=key-0");
        assert_eq!(ec2_answer(&tree, "public-keys/0/").unwrap(), "openssh-key");
        assert_eq!(ec2_answer(&tree, "public-keys/0/openssh-key").unwrap(), "ssh-ed25519 AAA a@b");
        assert_eq!(ec2_answer(&tree, "instance-id").unwrap(), "i-1");
        assert_eq!(ec2_answer(&tree, "nothing"), None);
    }
}
