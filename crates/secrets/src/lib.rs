//! Secure param values, sealed at rest.
//!
//! A secure value is stored as `{"$sealed": "v1.<key id>.<data>"}`: the JSON
//! text of the value encrypted with ChaCha20-Poly1305 under the keyring's
//! current key, a random 96-bit nonce, and the param's name as associated
//! data (a sealed value opens only as the param it was sealed for). `data`
//! is base64url of nonce ‖ ciphertext ‖ tag. The key id is the first eight
//! hex digits of the key's SHA-256, so values sealed under an older key
//! still open while a rotation re-seals them.
//!
//! The keyring is a file of base64 keys, one per line, the current key
//! first. It is created on first use with mode 0600, or given whole through
//! `PLINTH_SECRET_KEYS` (the same format, lines or commas) so a site can keep
//! it in its own secret manager.
#![forbid(unsafe_code)]

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use std::path::Path;

/// The field that marks a sealed value.
pub const SEALED: &str = "$sealed";
/// What the API shows instead of a secure value, and what a client may send
/// back to keep the stored one.
pub const REDACTED: &str = "<secure>";
/// The environment variable that may hold the whole keyring.
pub const KEYS_ENV: &str = "PLINTH_SECRET_KEYS";

const VERSION: &str = "v1";
const KEY_LEN: usize = 32;

/// Why sealing, opening or loading keys failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("keyring {0}: {1}")]
    Keyring(String, String),
    #[error("not a sealed value")]
    NotSealed,
    #[error("sealed value is malformed: {0}")]
    Malformed(&'static str),
    #[error("sealed with key {0}, which is not in the keyring")]
    UnknownKey(String),
    #[error("sealed value does not open (wrong key, wrong param, or tampered with)")]
    Tampered,
    #[error("the system random source failed")]
    Random,
}

struct Key {
    id: String,
    key: LessSafeKey,
}

/// The keys that seal and open secure values; the first seals.
pub struct Keyring {
    keys: Vec<Key>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("key_ids", &self.key_ids()).finish()
    }
}

fn key_id(raw: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, raw);
    digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl Keyring {
    /// A keyring from raw 32-byte keys, the sealing key first.
    pub fn from_raw(raw: &[[u8; KEY_LEN]]) -> Result<Keyring, SecretError> {
        if raw.is_empty() {
            return Err(SecretError::Keyring("(given)".into(), "no keys".into()));
        }
        let keys = raw
            .iter()
            .map(|k| {
                let unbound = UnboundKey::new(&CHACHA20_POLY1305, k)
                    .map_err(|_| SecretError::Keyring("(given)".into(), "bad key".into()))?;
                Ok(Key { id: key_id(k), key: LessSafeKey::new(unbound) })
            })
            .collect::<Result<_, SecretError>>()?;
        Ok(Keyring { keys, rng: SystemRandom::new() })
    }

    /// Parses a keyring's text: base64 keys separated by newlines or commas;
    /// blank lines and `#` comments are ignored.
    pub fn parse(text: &str, origin: &str) -> Result<Keyring, SecretError> {
        let bad = |why: String| SecretError::Keyring(origin.to_owned(), why);
        let mut raw = Vec::new();
        for (i, item) in
            text.split(['\n', ',']).map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).enumerate()
        {
            let bytes = STANDARD.decode(item).map_err(|_| bad(format!("key {} is not base64", i + 1)))?;
            let key: [u8; KEY_LEN] =
                bytes.try_into().map_err(|_| bad(format!("key {} is not {KEY_LEN} bytes", i + 1)))?;
            raw.push(key);
        }
        if raw.is_empty() {
            return Err(bad("holds no key".into()));
        }
        Keyring::from_raw(&raw).map_err(|_| bad("cannot use its keys".into()))
    }

    /// The keyring from `PLINTH_SECRET_KEYS` when set, else from `path`,
    /// which is created (mode 0600, one fresh key) when missing. A file
    /// that others may read is refused.
    pub fn load_or_create(path: &Path) -> Result<Keyring, SecretError> {
        if let Ok(text) = std::env::var(KEYS_ENV)
            && !text.trim().is_empty()
        {
            return Keyring::parse(&text, KEYS_ENV);
        }
        let origin = path.display().to_string();
        let bad = |why: String| SecretError::Keyring(origin.clone(), why);
        match std::fs::read_to_string(path) {
            Ok(text) => {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(bad(format!(
                        "mode {:o} lets others read it; run `chmod 600 {origin}` (and consider rotating the keys)",
                        mode & 0o777
                    )));
                }
                Keyring::parse(&text, &origin)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = fresh_key()?;
                write_private(path, &format!("{}\n", STANDARD.encode(key))).map_err(|e| bad(e.to_string()))?;
                Keyring::from_raw(&[key])
            }
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// The ids of the keys, the sealing key first.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// Seals `value` for param `param`.
    pub fn seal(&self, param: &str, value: &Value) -> Result<Value, SecretError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SecretError::Random)?;
        let mut data = serde_json::to_vec(value).map_err(|_| SecretError::Malformed("value"))?;
        key.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(param.as_bytes()), &mut data)
            .map_err(|_| SecretError::Tampered)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(serde_json::json!({ SEALED: format!("{VERSION}.{}.{}", key.id, URL_SAFE_NO_PAD.encode(out)) }))
    }

    /// Opens a value sealed for param `param`.
    pub fn open(&self, param: &str, sealed: &Value) -> Result<Value, SecretError> {
        let text = sealed_text(sealed).ok_or(SecretError::NotSealed)?;
        let mut parts = text.splitn(3, '.');
        let (Some(version), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SecretError::Malformed("expected version.key.data"));
        };
        if version != VERSION {
            return Err(SecretError::Malformed("unknown version"));
        }
        let key = self.keys.iter().find(|k| k.id == id).ok_or_else(|| SecretError::UnknownKey(id.to_owned()))?;
        let bytes = URL_SAFE_NO_PAD.decode(data).map_err(|_| SecretError::Malformed("data is not base64url"))?;
        if bytes.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SecretError::Malformed("too short"));
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Malformed("nonce"))?;
        let mut rest = rest.to_vec();
        let plain =
            key.key.open_in_place(nonce, Aad::from(param.as_bytes()), &mut rest).map_err(|_| SecretError::Tampered)?;
        serde_json::from_slice(plain).map_err(|_| SecretError::Malformed("plaintext is not JSON"))
    }

    /// Whether `sealed` is sealed under the current key (else a rotation
    /// should re-seal it).
    pub fn is_current(&self, sealed: &Value) -> bool {
        sealed_text(sealed).and_then(|t| t.split('.').nth(1)).is_some_and(|id| id == self.keys[0].id)
    }
}

/// The text of a sealed value (`{"$sealed": "..."}` and nothing else).
fn sealed_text(v: &Value) -> Option<&str> {
    match v {
        Value::Object(m) if m.len() == 1 => m.get(SEALED).and_then(Value::as_str),
        _ => None,
    }
}

/// Whether `v` is a sealed value.
pub fn is_sealed(v: &Value) -> bool {
    sealed_text(v).is_some()
}

/// Whether `v` holds a sealed value anywhere (a client must never send one).
pub fn contains_sealed(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key(SEALED) || m.values().any(contains_sealed),
        Value::Array(a) => a.iter().any(contains_sealed),
        _ => false,
    }
}

/// A new random key.
pub fn fresh_key() -> Result<[u8; KEY_LEN], SecretError> {
    let mut key = [0u8; KEY_LEN];
    SystemRandom::new().fill(&mut key).map_err(|_| SecretError::Random)?;
    Ok(key)
}

/// A new keyring text: a fresh key first, then the keys of `old` (so values
/// sealed under them still open until they are re-sealed).
pub fn rotated(old: &str) -> Result<String, SecretError> {
    let key = fresh_key()?;
    let mut out = format!("{}\n", STANDARD.encode(key));
    for line in old.lines().map(str::trim).filter(|l| !l.is_empty()) {
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// Makes directory `dir` (and its parents) if missing, and sets its mode to
/// `mode` whatever the umask: the data dir and `tls/` are owner-only
/// (0700), the file root 0755.
pub fn ensure_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Refuses a file of secrets (a key) that others than its owner may read
/// or write, as the keyring is refused: its mode must be 0600 or tighter.
pub fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is open to others (mode {:o}); it holds a private key: `chmod 600` it",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

/// Writes `contents` to a new file at `path` readable only by its owner,
/// replacing any file there atomically.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ring() -> Keyring {
        Keyring::from_raw(&[fresh_key().unwrap()]).unwrap()
    }

    #[test]
    fn sealed_values_open_only_as_their_param_and_hide_the_plaintext() {
        let k = ring();
        let v = json!({"user": "root", "hash": "$6$very-secret"});
        let s = k.seal("root-password", &v).unwrap();
        assert!(is_sealed(&s) && contains_sealed(&json!({"a": [s.clone()]})));
        assert!(!s.to_string().contains("very-secret"));
        assert_eq!(k.open("root-password", &s).unwrap(), v);
        assert!(matches!(k.open("other-param", &s), Err(SecretError::Tampered)));
        // Two seals of one value differ (fresh nonces).
        assert_ne!(k.seal("root-password", &v).unwrap(), s);
        // Any flipped character is caught.
        let text = s[SEALED].as_str().unwrap().to_owned();
        let last = text.len() - 2;
        let mut flipped = text.clone().into_bytes();
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let bad = json!({ SEALED: String::from_utf8(flipped).unwrap() });
        assert!(k.open("root-password", &bad).is_err());
        for junk in [
            json!("x"),
            json!({SEALED: 1}),
            json!({SEALED: "v2.a.b"}),
            json!({SEALED: "v1.zz.AAAA"}),
            json!({SEALED: "v1"}),
        ] {
            assert!(k.open("p", &junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_seals_with_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.keys");
        let old = Keyring::load_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = old.seal("p", &json!("s3cret")).unwrap();
        write_private(&path, &rotated(&std::fs::read_to_string(&path).unwrap()).unwrap()).unwrap();
        let new = Keyring::load_or_create(&path).unwrap();
        assert_eq!(new.key_ids().len(), 2);
        assert_eq!(new.key_ids()[1], old.key_ids()[0]);
        assert_eq!(new.open("p", &sealed).unwrap(), json!("s3cret"));
        assert!(!new.is_current(&sealed));
        assert!(new.is_current(&new.seal("p", &json!(1)).unwrap()));
        // Without the old key, the old value no longer opens.
        let only_new = Keyring::parse(std::fs::read_to_string(&path).unwrap().lines().next().unwrap(), "x").unwrap();
        assert!(matches!(only_new.open("p", &sealed), Err(SecretError::UnknownKey(_))));
    }

    #[test]
    fn a_keyring_others_can_read_or_a_malformed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        Keyring::load_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keyring::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(Keyring::parse("not-base64!", "t").is_err());
        assert!(Keyring::parse(&STANDARD.encode([1u8; 16]), "t").unwrap_err().to_string().contains("32 bytes"));
        assert!(Keyring::parse("# only a comment\n", "t").is_err());
    }
}
