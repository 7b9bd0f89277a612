//! The plugin registry of the config model: which plugin names exist and how each one's config
//! is checked. A plugin's behaviour lives in the data plane (`data-plane/src/plugins/`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::{Result, ValidationError};

/// One known plugin: its name as users write it and its config check.
pub struct PluginSpec {
    pub name: &'static str,
    pub validate: fn(&Value) -> Result<()>,
}

/// Every plugin this version of Postern can run. The data plane has one implementation per
/// entry; a name missing here is rejected at the Admin API, never silently ignored.
pub const PLUGINS: &[PluginSpec] = &[];

pub fn find_plugin(name: &str) -> Option<&'static PluginSpec> {
    PLUGINS.iter().find(|p| p.name == name)
}

pub fn validate_plugins(plugins: &BTreeMap<String, Value>) -> Result<()> {
    for (name, config) in plugins {
        let spec = find_plugin(name).ok_or_else(|| {
            let known: Vec<_> = PLUGINS.iter().map(|p| p.name).collect();
            ValidationError::new(
                name.as_str(),
                if known.is_empty() {
                    format!("unknown plugin '{name}' (this version of Postern has no plugins yet)")
                } else {
                    format!("unknown plugin '{name}' (known: {})", known.join(", "))
                },
            )
        })?;
        (spec.validate)(config).map_err(|e| e.under(name))?;
    }
    Ok(())
}
