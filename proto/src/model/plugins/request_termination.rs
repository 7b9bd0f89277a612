//! `request-termination`: answer every request of the route with a fixed status and body,
//! without calling the upstream (maintenance pages, retired endpoints).

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use crate::model::error::{Result, ValidationError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestTerminationConfig {
    /// Status to answer with [default: 503].
    #[serde(default = "default_status")]
    pub status_code: u16,
    /// Body to answer with; JSON `{"error_msg": …}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Kong's name for the same thing; used when `body` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Content type of `body` [default: application/json when it parses as JSON, else text/plain].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

fn default_status() -> u16 {
    503
}

impl PluginConfig for RequestTerminationConfig {
    fn validate(&self) -> Result<()> {
        if !(100..=599).contains(&self.status_code) {
            return Err(ValidationError::new("status_code", "must be 100-599"));
        }
        if self.body.is_some() && self.message.is_some() {
            return Err(ValidationError::new(
                "message",
                "give either 'body' or 'message'",
            ));
        }
        if let Some(ct) = &self.content_type
            && (ct.is_empty() || ct.bytes().any(|b| b.is_ascii_control()))
        {
            return Err(ValidationError::new(
                "content_type",
                "not a valid header value",
            ));
        }
        Ok(())
    }
}
