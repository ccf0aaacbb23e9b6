use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plinth_model::ValidationError;
use plinth_store::StoreError;
use serde_json::json;

/// An API failure, rendered as `{error, detail, field?}` with the right status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{detail}")]
    Invalid { detail: String, field: Option<String> },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    /// A request the document accepts that breaks a rule of the store's
    /// current state, which no schema can express: it names an object
    /// that does not exist (`reference`), or a param value its param's
    /// stored schema refuses (`param_value`). 409, with the field to blame.
    #[error("{detail}")]
    Dangling { code: &'static str, detail: String, field: Option<String> },
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
    /// A BMC (or another system the server called) failed.
    #[error("{0}")]
    BadGateway(String),
    /// Too many attempts; retry after this many seconds.
    #[error("too many failed logins; retry in {0} s")]
    TooManyRequests(u64),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Dangling { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
        }
    }

    /// A field naming an object that does not exist.
    pub fn dangling(field: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError::Dangling { code: "reference", detail: detail.into(), field: Some(field.into()) }
    }

    /// A param value its param's stored schema refuses.
    pub fn param_value(field: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError::Dangling { code: "param_value", detail: detail.into(), field: Some(field.into()) }
    }

    /// An invalid field.
    pub fn field(field: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError::Invalid { detail: detail.into(), field: Some(field.into()) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = %e, "request failed");
        }
        let mut body = json!({"error": code, "detail": self.to_string()});
        if let ApiError::Invalid { field: Some(f), .. } | ApiError::Dangling { field: Some(f), .. } = &self {
            body["field"] = json!(f);
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::TooManyRequests(secs) = &self
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"plinth\""));
        }
        resp
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> ApiError {
        if e.reference {
            return ApiError::Dangling { code: "reference", detail: e.to_string(), field: e.field.clone() };
        }
        ApiError::Invalid { field: e.field.clone(), detail: e.to_string() }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::Exists { .. } => ApiError::Conflict(e.to_string()),
            StoreError::Conflict { .. } => ApiError::PreconditionFailed(e.to_string()),
            StoreError::Query(m) => ApiError::BadRequest(m),
            StoreError::Unique { .. } | StoreError::Referenced { .. } | StoreError::Busy { .. } => {
                ApiError::Conflict(e.to_string())
            }
            StoreError::Dangling { ref field, .. } => {
                ApiError::Dangling { code: "reference", field: Some(field.clone()), detail: e.to_string() }
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}
