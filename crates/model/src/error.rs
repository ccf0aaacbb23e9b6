use crate::Kind;
use std::fmt;

/// An object failed validation. The message names the object, the field and
/// what was expected, e.g. "machines `web-1`: field `macs[0]`: expected a MAC
/// address like 52:54:00:12:34:56, got `zz`".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// Kind of the object being validated.
    pub kind: Kind,
    /// Its key, when the body named one.
    pub key: Option<String>,
    /// Path of the offending field (`macs[0]`, `params.ntp-servers`).
    pub field: Option<String>,
    /// What was wrong and what was expected.
    pub message: String,
    /// Whether the object is well formed but names what cannot be (itself,
    /// where it may not): a conflict with the store's state, not a
    /// malformed body.
    pub reference: bool,
}

impl ValidationError {
    /// An error on one field of an object.
    pub fn field(kind: Kind, key: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            kind,
            key: Some(key.into()),
            field: Some(field.into()),
            message: message.into(),
            reference: false,
        }
    }

    /// A field that names what it may not (an object itself).
    pub fn reference(kind: Kind, key: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError { reference: true, ..ValidationError::field(kind, key, field, message) }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind.plural())?;
        if let Some(key) = &self.key {
            write!(f, " `{key}`")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}
