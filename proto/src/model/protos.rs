//! `protos`: protobuf definitions that `grpc-transcode` routes translate JSON to and from
//! (APISIX's shape). `content` holds either `.proto` source text or a base64-encoded, compiled
//! `FileDescriptorSet` (`protoc --include_imports --descriptor_set_out=…`), told apart by their
//! alphabet: source text always has characters base64 has not (`;`, `{`, `"`, spaces).
//!
//! The content is compiled when parsed (protox, pure Rust: no `protoc` at runtime), so a bad
//! definition is refused at the Admin API naming its line, and the compiled descriptors travel
//! with the parsed resource: the data plane compiles each proto once per snapshot.

use std::collections::BTreeMap;

use base64::Engine;
use prost_reflect::{DescriptorPool, MethodDescriptor};
use serde::{Deserialize, Serialize};

use super::error::{Result, ValidationError};
use super::validate::{check_id, check_text};

/// Largest `content` accepted (source text or base64).
const MAX_CONTENT_LEN: usize = 1024 * 1024;

/// The name the source text is compiled under (it shows in error messages).
const SOURCE_NAME: &str = "content.proto";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtoConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `.proto` source text (imports: only the well-known `google/protobuf/*.proto`), or a
    /// base64 `FileDescriptorSet` (which may hold any imports).
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
    /// The compiled descriptors, set by [`ProtoConfig::compile`] (never serialised).
    #[serde(skip)]
    pool: Option<DescriptorPool>,
}

impl ProtoConfig {
    /// The checks that need no compiling.
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.id {
            check_id(id).map_err(|e| e.under("id"))?;
        }
        check_text("name", self.name.as_deref())?;
        check_text("desc", self.desc.as_deref())?;
        if self.content.trim().is_empty() {
            return Err(ValidationError::new("content", "must not be empty"));
        }
        if self.content.len() > MAX_CONTENT_LEN {
            return Err(ValidationError::new(
                "content",
                format!("longer than {MAX_CONTENT_LEN} bytes"),
            ));
        }
        Ok(())
    }

    /// Compiles `content` and keeps the result (see [`ProtoConfig::pool`]).
    pub fn compile(&mut self) -> Result<()> {
        self.validate()?;
        let pool = compile_content(&self.content)
            .map_err(|message| ValidationError::new("content", message))?;
        self.pool = Some(pool);
        Ok(())
    }

    /// The compiled descriptors; `None` for a config that was never compiled (only
    /// [`super::Resource::parse`] compiles).
    pub fn pool(&self) -> Option<&DescriptorPool> {
        self.pool.as_ref()
    }
}

/// Compiles source text or decodes a base64 descriptor set.
fn compile_content(content: &str) -> std::result::Result<DescriptorPool, String> {
    let is_base64 = content
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=\r\n".contains(&b));
    if is_base64 {
        let compact: String = content.split_ascii_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| format!("looks like base64 but does not decode: {e}"))?;
        // Starts from the well-known types, so a set compiled without --include_imports that
        // imports only those still resolves.
        let mut pool = DescriptorPool::global();
        pool.decode_file_descriptor_set(bytes.as_slice())
            .map_err(|e| format!("not a valid FileDescriptorSet: {e}"))?;
        return Ok(pool);
    }
    compile_source(content)
}

/// One in-memory source file, with the well-known types importable beside it.
struct Source(String);

impl protox::file::FileResolver for Source {
    fn resolve_path(&self, path: &std::path::Path) -> Option<String> {
        (path == std::path::Path::new(SOURCE_NAME)).then(|| SOURCE_NAME.to_string())
    }

    fn open_file(&self, name: &str) -> std::result::Result<protox::file::File, protox::Error> {
        if name == SOURCE_NAME {
            protox::file::File::from_source(name, &self.0)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

fn compile_source(source: &str) -> std::result::Result<DescriptorPool, String> {
    use protox::file::{ChainFileResolver, GoogleFileResolver};
    let mut resolver = ChainFileResolver::new();
    resolver.add(Source(source.to_string()));
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    match compiler.open_file(SOURCE_NAME) {
        Ok(_) => Ok(compiler.descriptor_pool()),
        Err(e) => Err(describe(&e, source)),
    }
}

/// `line 4, column 9: expected ';' …`: the compiler's message with where it points in the text.
fn describe(e: &protox::Error, source: &str) -> String {
    use miette::Diagnostic;
    let offset = e
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset());
    let mut message = e.to_string();
    if let Some(help) = e.help() {
        message = format!("{message} ({help})");
    }
    match offset {
        Some(offset) if offset <= source.len() => {
            let before = &source[..offset];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        _ => message,
    }
}

/// Finds `method` of `service` (`package.Service`) in `pool`: errors name `service` or `method`.
/// Client and bidirectional streaming methods are refused.
pub fn find_method(pool: &DescriptorPool, service: &str, method: &str) -> Result<MethodDescriptor> {
    let svc = pool.get_service_by_name(service).ok_or_else(|| {
        let known: Vec<String> = pool.services().map(|s| s.full_name().to_string()).collect();
        ValidationError::new(
            "service",
            format!(
                "no service '{service}' in the proto (it has: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        )
    })?;
    let m = svc.methods().find(|m| m.name() == method).ok_or_else(|| {
        let known: Vec<String> = svc.methods().map(|m| m.name().to_string()).collect();
        ValidationError::new(
            "method",
            format!(
                "service '{service}' has no method '{method}' (it has: {})",
                known.join(", ")
            ),
        )
    })?;
    // Server streaming is answered as newline-delimited JSON; a client stream has no HTTP
    // request shape here.
    if m.is_client_streaming() {
        let kind = if m.is_server_streaming() {
            "bidirectional streaming"
        } else {
            "client streaming"
        };
        return Err(ValidationError::new(
            "method",
            format!(
                "'{method}' is a {kind} method; grpc-transcode calls unary and server streaming \
                 methods only"
            ),
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{Resource, ResourceKind};

    const GOOD: &str = r#"syntax = "proto3";
package shop.v1;
import "google/protobuf/timestamp.proto";
service Orders {
  rpc Get (GetRequest) returns (Order);
  rpc Watch (GetRequest) returns (stream Order);
  rpc Upload (stream Order) returns (Order);
  rpc Chat (stream Order) returns (stream Order);
}
message GetRequest { int64 id = 1; }
message Order { int64 id = 1; google.protobuf.Timestamp at = 2; }
"#;

    fn parse(content: &str) -> Result<ProtoConfig> {
        match Resource::parse(ResourceKind::Protos, &json!({ "content": content }))? {
            Resource::Proto(p) => Ok(p),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn source_text_compiles_with_well_known_imports() {
        let p = parse(GOOD).expect("compiles");
        let pool = p.pool().expect("compiled");
        assert!(pool.get_message_by_name("shop.v1.Order").is_some());
        // Never serialised: the stored body is what was written.
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({ "content": GOOD })
        );
    }

    #[test]
    fn base64_descriptor_sets_are_decoded() {
        let pool = compile_source(GOOD).unwrap();
        let set = pool.encode_to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&set);
        // Wrapped at 76 columns, as `base64` prints it.
        let wrapped: Vec<String> = b64
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let p = parse(&wrapped.join("\n")).expect("descriptor set");
        assert!(
            p.pool()
                .unwrap()
                .get_service_by_name("shop.v1.Orders")
                .is_some()
        );
    }

    #[test]
    fn bad_content_names_the_line() {
        let cases = [
            // (content, expected start of the message)
            (
                "syntax = \"proto3\";\nmessage A {\n  int32 x = 1\n}\n",
                "line 4, column 1:",
            ),
            (
                "syntax = \"proto3\";\nmessage A { Missing m = 1; }\n",
                "line 2, column 13:",
            ),
            (
                "syntax = \"proto3\";\nimport \"other.proto\";\n",
                "line 2, column 1:",
            ),
            ("", "must not be empty"),
            ("bm90IGEgZGVzY3JpcHRvcg==", "not a valid FileDescriptorSet"),
            ("abc", "looks like base64"),
        ];
        for (content, want) in cases {
            let e = parse(content).expect_err(content);
            assert_eq!(e.field, "content", "{content}");
            assert!(e.message.starts_with(want), "{content:?} -> {}", e.message);
        }
    }

    #[test]
    fn config_sets_check_transcodes_against_their_protos() {
        use crate::model::ConfigSet;
        let route = |method: &str, proto: &str| {
            json!({"uri": "/o", "upstream": {"nodes": {"127.0.0.1:1": 1}},
                   "plugins": {"grpc-transcode": {"proto_id": proto, "service": "shop.v1.Orders",
                                                  "method": method}}})
        };
        let cases = [
            (route("Get", "p"), None),
            (route("Watch", "p"), None),
            (
                route("Gone", "p"),
                Some("routes/r.plugins.grpc-transcode.method"),
            ),
            (
                route("Upload", "p"),
                Some("routes/r.plugins.grpc-transcode.method"),
            ),
            (
                route("Get", "q"),
                Some("routes/r.plugins.grpc-transcode.proto_id"),
            ),
        ];
        for (body, want) in cases {
            let mut set = ConfigSet::default();
            set.insert(
                "p",
                Resource::parse(ResourceKind::Protos, &json!({"content": GOOD})).unwrap(),
            );
            set.insert("r", Resource::parse(ResourceKind::Routes, &body).unwrap());
            let got = set.check_references().err().map(|e| e.field);
            assert_eq!(got.as_deref(), want, "{body}");
        }
    }

    #[test]
    fn methods_are_found_and_client_streaming_refused() {
        let pool = compile_source(GOOD).unwrap();
        assert!(find_method(&pool, "shop.v1.Orders", "Get").is_ok());
        assert!(find_method(&pool, "shop.v1.Orders", "Watch").is_ok());
        let cases = [
            ("Orders", "Get", "service", "no service 'Orders'"),
            ("shop.v1.Orders", "Put", "method", "has no method 'Put'"),
            ("shop.v1.Orders", "Upload", "method", "client streaming"),
            (
                "shop.v1.Orders",
                "Chat",
                "method",
                "bidirectional streaming",
            ),
        ];
        for (service, method, field, want) in cases {
            let e = find_method(&pool, service, method).expect_err(method);
            assert_eq!(e.field, field);
            assert!(e.message.contains(want), "{}", e.message);
        }
    }
}
