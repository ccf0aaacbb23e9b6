//! The extractors every handler uses for the URL: axum's `Path` and
//! `Query`, with their rejections turned into the API's JSON error body
//! (`{error, detail, field}`) instead of the framework's plain text.

use crate::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// Splits a deserializer's message `field: what` into its parts, when it
/// starts with a plain field name.
fn field_of(message: &str) -> (Option<String>, String) {
    if let Some((field, rest)) = message.split_once(": ")
        && !field.is_empty()
        && field.len() <= 128
        && field.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']'))
    {
        return (Some(field.to_owned()), rest.to_owned());
    }
    for lead in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.strip_prefix(lead)
            && let Some((field, _)) = rest.split_once('`')
        {
            return (Some(field.to_owned()), message.to_owned());
        }
    }
    (None, message.to_owned())
}

/// Query-string parameters, deserialized into `T`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => {
                let text = e.body_text();
                let text = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
                let (field, what) = field_of(text);
                let detail = match &field {
                    Some(f) => format!("query parameter `{f}`: {what}"),
                    None => format!("query string: {what}"),
                };
                Err(ApiError::Invalid { detail, field })
            }
        }
    }
}

/// Path segments, deserialized into `T`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(ApiError::BadRequest(format!("path: {}", e.body_text()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::field_of;

    #[test]
    fn a_leading_field_name_is_split_off() {
        assert_eq!(field_of("force: provided string was not `true` or `false`").0.as_deref(), Some("force"));
        assert_eq!(field_of("missing field `version`").0.as_deref(), Some("version"));
        assert_eq!(field_of("a b: c").0, None);
    }
}
