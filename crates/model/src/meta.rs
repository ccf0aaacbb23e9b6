//! The keys the server itself writes in an object's `meta` (which is
//! otherwise the site's own free-form labels), in one place.

use serde_json::Value;

/// The content pack that installed the object.
pub const PACK: &str = "pack";
/// The version of that pack.
pub const PACK_VERSION: &str = "pack_version";
/// The pack whose object the site overrides with this one.
pub const OVERRIDE: &str = "override";
/// Where built-in content an earlier Plinth installed without a pack came
/// from; its value is [`BUILTIN`].
pub const SOURCE: &str = "source";
/// The value of [`SOURCE`] on built-in content.
pub const BUILTIN: &str = "builtin";
/// A machine pinned to an earlier version of a pack (a canary holding it
/// back) has `meta["pin:<pack>"] = "<version>"`.
pub const PIN_PREFIX: &str = "pin:";
/// The keys the server manages on pack objects; no client sets them.
pub const PACK_KEYS: [&str; 3] = [PACK, PACK_VERSION, OVERRIDE];

/// The `meta` value `key` of an object body, if it is text.
pub fn get<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get("meta").and_then(|m| m.get(key)).and_then(Value::as_str)
}

/// The `meta` key that pins a machine to a version of `pack`.
pub fn pin_key(pack: &str) -> String {
    format!("{PIN_PREFIX}{pack}")
}
