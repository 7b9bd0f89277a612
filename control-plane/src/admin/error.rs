//! The Admin API's one error type, mapped to a status code and a JSON body in one place.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use postern_proto::model::ValidationError;
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or invalid X-API-KEY")]
    Unauthorized,
    /// A key whose role does not allow the request.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// A bad body or parameter: 400 naming the field.
    #[error("{0}")]
    Invalid(ValidationError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        AdminError::Invalid(ValidationError::new(field, message))
    }

    fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AdminError::Unauthorized => "unauthorized",
            AdminError::Forbidden(_) => "forbidden",
            AdminError::NotFound(_) => "not_found",
            AdminError::Invalid(_) => "invalid",
            AdminError::Conflict(_) => "conflict",
            AdminError::PreconditionFailed(_) => "precondition_failed",
            AdminError::Unavailable(_) => "store_unavailable",
            AdminError::Internal(_) => "internal",
        }
    }
}

impl From<ValidationError> for AdminError {
    fn from(e: ValidationError) -> Self {
        AdminError::Invalid(e)
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::NotFound { .. } => AdminError::NotFound(msg),
            StoreError::AlreadyExists { .. } => AdminError::Conflict(msg),
            StoreError::PreconditionFailed { .. } | StoreError::RevisionMismatch { .. } => {
                AdminError::PreconditionFailed(msg)
            }
            // The field goes in `field` (and in front of the message, once).
            StoreError::DanglingReference { field, kind, id } => AdminError::invalid(
                field,
                format!("references {kind} '{id}' which does not exist"),
            ),
            // APISIX answers 400 here too: the request conflicts with the config, not the server.
            StoreError::InUse { .. } => AdminError::invalid("id", msg),
            StoreError::CredentialTaken { .. } => AdminError::Conflict(msg),
            StoreError::Unavailable(_) => {
                crate::metrics::METRICS
                    .store_errors
                    .with_label_values(&["admin"])
                    .inc();
                AdminError::Unavailable(msg)
            }
            StoreError::Corrupt(_) => {
                crate::metrics::METRICS
                    .store_errors
                    .with_label_values(&["admin"])
                    .inc();
                AdminError::Internal(msg)
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "admin request failed");
        }
        let mut body = json!({"error_msg": self.to_string(), "code": self.code()});
        if let AdminError::Invalid(v) = &self {
            body["field"] = json!(v.field);
        }
        (status, Json(body)).into_response()
    }
}
