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
        })?;
        Ok((object.key(), value))
    }
    if !body.is_object() {
        return Err(ValidationError {
            kind,
            key: None,
            field: None,
            message: format!("expected a JSON object, got {}", json_type_name(&body)),
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
