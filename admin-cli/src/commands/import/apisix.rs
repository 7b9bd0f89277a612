//! APISIX standalone (`apisix.yaml`) → Postern. The resource shapes are APISIX's already, so
//! routes, services, upstreams, protos, global rules and consumers carry over by id; `plugin_configs`
//! are inlined into the routes that use them (Postern has no such kind).

use anyhow::bail;
use serde_json::{Map, Value};

use super::{Imported, Out};

const KINDS: [&str; 6] = [
    "upstreams",
    "protos",
    "services",
    "routes",
    "global_rules",
    "consumers",
];

pub fn import(input: &Value) -> anyhow::Result<Imported> {
    let Some(top) = input.as_object() else {
        bail!("an APISIX standalone file is a YAML mapping");
    };
    let mut out = Out::default();
    let plugin_configs: Map<String, Value> = top
        .get("plugin_configs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|pc| Some((id_of(pc)?, pc.get("plugins").cloned().unwrap_or_default())))
        .collect();
    for (key, value) in top {
        match key.as_str() {
            k if KINDS.contains(&k) => {}
            "plugin_configs" => {}
            "plugins" => out.note(
                "plugins",
                "the list of enabled plugins is not needed: Postern enables every built-in plugin",
            ),
            other => out.note(other, format!("not mapped ({} entries)", count(value))),
        }
    }
    for kind in KINDS {
        for (i, item) in top
            .get(kind)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(obj) = item.as_object() else {
                out.note(&format!("{kind}[{i}]"), "not an object; skipped");
                continue;
            };
            let mut obj = obj.clone();
            let id = if kind == "consumers" {
                obj.get("username")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            } else {
                id_of(item)
            };
            let Some(id) = id else {
                out.note(&format!("{kind}[{i}]"), "has no id; skipped");
                continue;
            };
            obj.insert("id".into(), Value::String(id.clone()));
            // APISIX accepts numeric ids in references too; Postern's are strings.
            for field in ["upstream_id", "service_id"] {
                if let Some(Value::Number(n)) = obj.get(field) {
                    let s = n.to_string();
                    obj.insert(field.into(), Value::String(s));
                }
            }
            if let Some(pc_id) = obj.remove("plugin_config_id") {
                let pc_id = id_of_value(&pc_id).unwrap_or_default();
                match plugin_configs.get(&pc_id).and_then(Value::as_object) {
                    Some(pc) => {
                        let plugins = obj
                            .entry("plugins")
                            .or_insert_with(|| Value::Object(Map::new()));
                        if let Some(plugins) = plugins.as_object_mut() {
                            for (name, conf) in pc {
                                // The route's own configuration of a plugin wins, as in APISIX.
                                plugins.entry(name.clone()).or_insert_with(|| conf.clone());
                            }
                        }
                    }
                    None => out.note(
                        &format!("{kind}/{id}"),
                        format!("plugin_config_id {pc_id} not found in plugin_configs"),
                    ),
                }
            }
            if let Some(Value::Object(plugins)) = obj.get_mut("plugins")
                && let Some(Value::Object(gt)) = plugins.get_mut("grpc-transcode")
                && let Some(Value::Number(n)) = gt.get("proto_id")
            {
                let s = n.to_string();
                gt.insert("proto_id".into(), Value::String(s));
            }
            out.push(kind, Value::Object(obj));
        }
    }
    Ok(out.finish())
}

fn id_of(v: &Value) -> Option<String> {
    id_of_value(v.get("id")?)
}

fn id_of_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn count(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.len(),
        Value::Object(m) => m.len(),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn standalone_file_maps_by_id() {
        let input: Value = serde_yaml_ng::from_str(
            r#"
routes:
  - id: 1
    uri: /hello
    upstream_id: 1
    plugin_config_id: pc1
    plugins:
      cors: {allow_origins: "https://a.example"}
upstreams:
  - id: 1
    nodes: {"127.0.0.1:1980": 1}
    type: roundrobin
services:
  - id: s1
    upstream_id: 1
global_rules:
  - id: g
    plugins: {prometheus: {}}
consumers:
  - username: jack
    plugins: {key-auth: {key: k}}
plugin_configs:
  - id: pc1
    plugins:
      cors: {}
      request-termination: {status_code: 403}
ssls:
  - id: 1
    cert: x
protos:
  - id: 7
    content: 'syntax = "proto3";'
plugins:
  - name: cors
#END
"#,
        )
        .unwrap();
        let got = import(&input).unwrap();
        assert_eq!(
            got.doc,
            json!({"postern_backup": 1, "resources": {
                "upstreams": [{"id": "1", "nodes": {"127.0.0.1:1980": 1}, "type": "roundrobin"}],
                "protos": [{"id": "7", "content": "syntax = \"proto3\";"}],
                "services": [{"id": "s1", "upstream_id": "1"}],
                "routes": [{"id": "1", "uri": "/hello", "upstream_id": "1", "plugins": {
                    "cors": {"allow_origins": "https://a.example"},
                    "request-termination": {"status_code": 403}
                }}],
                "global_rules": [{"id": "g", "plugins": {"prometheus": {}}}],
                "consumers": [{"id": "jack", "username": "jack", "plugins": {"key-auth": {"key": "k"}}}],
                "consumer_groups": [],
                "revocations": [],
                "ssls": [],
                "cache_purges": []
            }})
        );
        assert_eq!(got.unmapped.len(), 2, "{:?}", got.unmapped);
        assert!(
            got.unmapped
                .iter()
                .any(|u| u.starts_with("ssls: not mapped (1 entries)"))
        );
        assert!(got.unmapped.iter().any(|u| u.starts_with("plugins: ")));
    }
}
