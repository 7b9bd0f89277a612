use serde::Serialize;

/// A rejected config: which field, and why. Serialised as the Admin API's 400 body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Dotted path to the offending field, e.g. `upstream.nodes` or `plugins.jwt-auth`.
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, nested under `parent` (e.g. `nodes` → `upstream.nodes`).
    pub fn under(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

pub type Result<T, E = ValidationError> = std::result::Result<T, E>;
