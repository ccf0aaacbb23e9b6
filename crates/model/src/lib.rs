//! Plinth's object model: every kind of object the server stores, their typed
//! identifiers, and the validation that runs at the edge (API bodies, content).
//!
//! This crate owns the *shape* of data. It never does I/O: no files, no
//! sockets, no clock reads except through [`now`] where a caller asks for it.
//! Everything that crosses into the store has passed [`normalize`] first, so
//! the rest of the server can trust the types.
#![forbid(unsafe_code)]

mod error;
pub mod integrity;
mod kind;
pub mod meta;
mod objects;
mod power;
mod types;

pub use error::ValidationError;
pub use kind::Kind;
pub use objects::*;
pub use power::*;
pub use types::*;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The current time, truncated to microseconds so that it round-trips through
/// JSON and every backend without changing.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::{SubsecRound, Utc};
    Utc::now().trunc_subsecs(6)
}

/// A typed object that can be stored.
pub trait Object: Serialize + DeserializeOwned + schemars::JsonSchema + Clone + Send + Sync + 'static {
    /// The kind this type represents.
    const KIND: Kind;

    /// The object's key: its identity within its kind.
    fn key(&self) -> String;

    /// Checks that involve more than one field, or values serde cannot judge
    /// alone. Field-level type errors are caught by deserialization already.
    fn check(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

/// Decodes an untrusted JSON body into `T`, naming the field that failed.
pub fn decode<T: Object>(body: Value) -> Result<T, ValidationError> {
    let key = body.get(T::KIND.key_field()).and_then(Value::as_str).map(str::to_owned);
    let object: T = serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        ValidationError {
            kind: T::KIND,
            key: key.clone(),
            field: (path != "." && !path.is_empty()).then_some(path),
            message: e.into_inner().to_string(),
            reference: false,
        }
    })?;
    object.check()?;
    Ok(object)
}

/// Validates an untrusted JSON body as an object of `kind` and returns its key
/// and canonical JSON form (defaults filled in, types normalised).
pub fn normalize(kind: Kind, body: Value) -> Result<(String, Value), ValidationError> {
    fn typed<T: Object>(body: Value) -> Result<(String, Value), ValidationError> {
        let object: T = decode(body)?;
        let value = serde_json::to_value(&object).map_err(|e| ValidationError {
            kind: T::KIND,
            key: Some(object.key()),
            field: None,
            message: format!("cannot encode: {e}"),
            reference: false,
        })?;
        Ok((object.key(), value))
    }
    if !body.is_object() {
        return Err(ValidationError {
            kind,
            key: None,
            field: None,
            message: format!("expected a JSON object, got {}", json_type_name(&body)),
            reference: false,
        });
    }
    match kind {
        Kind::Machine => typed::<Machine>(body),
        Kind::BootEnv => typed::<BootEnv>(body),
        Kind::Template => typed::<Template>(body),
        Kind::Param => typed::<Param>(body),
        Kind::Profile => typed::<Profile>(body),
        Kind::Task => typed::<Task>(body),
        Kind::Stage => typed::<Stage>(body),
        Kind::Workflow => typed::<Workflow>(body),
        Kind::Job => typed::<Job>(body),
        Kind::Subnet => typed::<Subnet>(body),
        Kind::Reservation => typed::<Reservation>(body),
        Kind::Lease => typed::<Lease>(body),
        Kind::User => typed::<User>(body),
        Kind::Token => typed::<Token>(body),
        Kind::Role => typed::<Role>(body),
        Kind::Content => typed::<Content>(body),
        Kind::Conflict => typed::<Conflict>(body),
        Kind::Image => typed::<Image>(body),
    }
}

/// The JSON Schema of `kind`'s objects, as served in the OpenAPI document.
pub fn schema_of(kind: Kind) -> Value {
    fn s<T: Object>() -> Value {
        schemars::schema_for!(T).to_value()
    }
    match kind {
        Kind::Machine => s::<Machine>(),
        Kind::BootEnv => s::<BootEnv>(),
        Kind::Template => s::<Template>(),
        Kind::Param => s::<Param>(),
        Kind::Profile => s::<Profile>(),
        Kind::Task => s::<Task>(),
        Kind::Stage => s::<Stage>(),
        Kind::Workflow => s::<Workflow>(),
        Kind::Job => s::<Job>(),
        Kind::Subnet => s::<Subnet>(),
        Kind::Reservation => s::<Reservation>(),
        Kind::Lease => s::<Lease>(),
        Kind::User => s::<User>(),
        Kind::Token => s::<Token>(),
        Kind::Role => s::<Role>(),
        Kind::Content => s::<Content>(),
        Kind::Conflict => s::<Conflict>(),
        Kind::Image => s::<Image>(),
    }
}

/// `schema` without its `null` alternative: `{"type": ["string", "null"]}`
/// is `{"type": "string"}`, `{"anyOf": [S, {"type": "null"}]}` is `S`.
fn without_null(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(Value::Array(alts)) = s.get("anyOf") {
        let rest: Vec<&Value> = alts.iter().filter(|a| a.get("type") != Some(&Value::from("null"))).collect();
        if rest.len() == 1 {
            let mut one = rest[0].clone();
            if let (Value::Object(o), Some(d)) = (&mut one, s.get("description")) {
                o.entry("description").or_insert(d.clone());
            }
            return one;
        }
    }
    if let Some(Value::Array(ts)) = s.get("type") {
        let rest: Vec<Value> = ts.iter().filter(|t| *t != "null").cloned().collect();
        s["type"] = if rest.len() == 1 { rest[0].clone() } else { Value::Array(rest) };
    }
    s
}

/// Gives integers of a fixed width (`format: uint32`, …) the bounds of the
/// type the server reads them into, as the server refuses any outside.
pub fn bound_integers(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let bounds: Option<(i128, i128)> = match m.get("format").and_then(Value::as_str) {
                Some("uint8") => Some((0, u8::MAX.into())),
                Some("uint16") => Some((0, u16::MAX.into())),
                Some("uint32") => Some((0, u32::MAX.into())),
                Some("uint64") | Some("uint") => Some((0, u64::MAX.into())),
                Some("int32") => Some((i32::MIN.into(), i32::MAX.into())),
                Some("int64") | Some("int") => Some((i64::MIN.into(), i64::MAX.into())),
                _ => None,
            };
            if let Some((lo, hi)) = bounds {
                let num = |n: i128| i64::try_from(n).map(Value::from).unwrap_or_else(|_| Value::from(u64::MAX));
                m.entry("minimum").or_insert(num(lo));
                m.entry("maximum").or_insert(num(hi));
            }
            m.values_mut().for_each(bound_integers);
        }
        Value::Array(a) => a.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// Follows a `#/$defs/` reference within `root`.
fn resolved<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    s.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|n| root.get("$defs").and_then(|d| d.get(n)))
        .unwrap_or(s)
}

/// The fields a list of `kind` filters on by name (`?field=value`): every
/// top-level field whose value is a scalar or an array of scalars, with the
/// schema a filter value must meet (for an array field, its items'; such a
/// filter matches an element). References are to `schema_of(kind)`'s
/// `$defs`. Object fields filter by dotted names (`?os.family=debian`),
/// which match nested values as they are.
pub fn filter_fields(kind: Kind) -> Vec<(String, Value)> {
    let root = schema_of(kind);
    let Some(props) = root.get("properties").and_then(Value::as_object) else { return Vec::new() };
    let is_object = |s: &Value| {
        let r = resolved(&root, s);
        r.get("type") == Some(&Value::from("object")) || r.get("properties").is_some()
    };
    let mut out = Vec::new();
    for (name, prop) in props {
        if kind.server_only_fields().contains(&name.as_str()) || name == "limit" || name == "after" {
            continue;
        }
        let prop = without_null(prop);
        let target = resolved(&root, &prop);
        let scalar = if target.get("type") == Some(&Value::from("array")) {
            match target.get("items") {
                Some(items) => without_null(items),
                None => continue,
            }
        } else {
            prop.clone()
        };
        let t = resolved(&root, &scalar);
        let typed = matches!(t.get("type").and_then(Value::as_str), Some("string" | "integer" | "number" | "boolean"))
            || t.get("enum").is_some()
            || t.get("oneOf")
                .is_some_and(|alts| alts.as_array().is_some_and(|a| a.iter().all(|x| x.get("const").is_some())));
        if is_object(&scalar) || !typed {
            continue;
        }
        let mut scalar = scalar;
        bound_integers(&mut scalar);
        if let Value::Object(o) = &mut scalar {
            // A filter has no default.
            o.remove("default");
            if let Some(d) = prop.get("description") {
                o.entry("description").or_insert(d.clone());
            }
        }
        out.push((name.clone(), scalar));
    }
    out
}

/// Checks `value` against `schema`, whose references are to `kind`'s
/// schema's `$defs`.
pub fn check_in_kind(kind: Kind, schema: &Value, value: &Value) -> Result<(), String> {
    let root = schema_of(kind);
    let mut s = schema.clone();
    if let (Value::Object(o), Some(defs)) = (&mut s, root.get("$defs")) {
        o.insert("$defs".into(), defs.clone());
    }
    objects::check_schema(&s, value).map_err(|why| {
        // An enumeration says its values rather than how it failed.
        let target = resolved(&root, schema);
        let consts: Vec<String> = match (target.get("enum"), target.get("oneOf")) {
            (Some(Value::Array(e)), _) => e.iter().map(Value::to_string).collect(),
            (_, Some(Value::Array(alts))) => alts.iter().filter_map(|a| a.get("const")).map(Value::to_string).collect(),
            _ => Vec::new(),
        };
        if consts.is_empty() { why } else { format!("expected one of {}, got {value}", consts.join(", ")) }
    })
}

/// A short English name of a JSON value's type, for error messages.
pub fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Applies a JSON merge patch (RFC 7396) to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests;
