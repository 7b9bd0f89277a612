//! `grpc-transcode`: HTTP/JSON in, one unary gRPC call out, JSON back. Built once per snapshot
//! from the snapshot's compiled protos ([`Transcoder`]); the proxy (`proxy/transcode.rs`) buffers
//! the bodies and calls [`Transcoder::encode_request`] and [`Transcoder::decode_response`].
//!
//! Request message = the JSON body (proto3 JSON mapping: field names or lowerCamelCase json
//! names), then query arguments, then the route's path parameters (`/users/:id` → `id`), later
//! ones overriding earlier ones. Dotted names reach nested messages (`?address.city=x`), a
//! repeated field takes every occurrence. Unknown query arguments are ignored; an unknown JSON
//! field is an error, as is a value of the wrong type: 400 naming the field, nothing sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};
use postern_proto::model::plugins::grpc_transcode::{
    DefaultValues, GrpcTranscodeConfig, Int64As, PbOptions,
};
use postern_proto::model::plugins::parse;
use postern_proto::model::protos::find_method;
use postern_proto::model::{ProtoConfig, ValidationError};
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions, Syntax,
};
use serde_json::{Map, Value, json};

use super::PluginResponse;

/// Largest request or response message transcoded (gRPC's usual default maximum).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// One segment of a route path, for reading path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

pub struct Transcoder {
    input: MessageDescriptor,
    output: MessageDescriptor,
    /// `/package.Service/Method`.
    pub path: http::uri::PathAndQuery,
    pub deadline: Option<Duration>,
    /// `grpc-timeout` for `deadline` (`500m`).
    pub grpc_timeout: Option<HeaderValue>,
    serialize: SerializeOptions,
    /// The route's parameterised paths (`/users/:id`), split in segments.
    patterns: Vec<Vec<Segment>>,
    /// Answered as newline-delimited JSON, one line per message ([`NdjsonFrames`]).
    pub server_streaming: bool,
}

impl Transcoder {
    /// `paths`: the route's `uri`/`uris`.
    pub fn new<'a>(
        config: &serde_json::Value,
        protos: &BTreeMap<String, ProtoConfig>,
        paths: impl Iterator<Item = &'a str>,
    ) -> Result<Transcoder, ValidationError> {
        let config: GrpcTranscodeConfig = parse(config)?;
        let pool = protos
            .get(&config.proto_id)
            .and_then(ProtoConfig::pool)
            .ok_or_else(|| {
                ValidationError::new(
                    "proto_id",
                    format!("no compiled protos '{}'", config.proto_id),
                )
            })?;
        let method = find_method(pool, &config.service, &config.method)?;
        let options = config.pb_options()?;
        let output = method.output();
        let path = format!("/{}/{}", config.service, config.method)
            .parse()
            .map_err(|_| ValidationError::new("method", "not usable in a request path"))?;
        let deadline = (config.deadline > 0).then(|| Duration::from_millis(config.deadline));
        let grpc_timeout =
            deadline.and_then(|_| HeaderValue::try_from(format!("{}m", config.deadline)).ok());
        let patterns = paths
            .filter(|p| p.split('/').any(|s| s.starts_with(':')))
            .map(|p| {
                p.split('/')
                    .skip(1)
                    .map(|s| match s.strip_prefix(':') {
                        Some(name) => Segment::Param(name.to_string()),
                        None => Segment::Literal(s.to_string()),
                    })
                    .collect()
            })
            .collect();
        Ok(Transcoder {
            server_streaming: method.is_server_streaming(),
            serialize: serialize_options(options, &output),
            input: method.input(),
            output,
            path,
            deadline,
            grpc_timeout,
            patterns,
        })
    }

    /// The gRPC request body (one length-prefixed message) for a request with this path, query
    /// and body; or the 400 to answer.
    pub fn encode_request(
        &self,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Bytes, Box<PluginResponse>> {
        let mut fields = if body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(bad_request("", "the body must be a JSON object")),
                Err(e) => return Err(bad_request("", &format!("invalid JSON: {e}"))),
            }
        };
        let query_pairs = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                Some((decode_component(k, true)?, decode_component(v, true)?))
            });
        // Query arguments first: a repeated one accumulates; then path parameters override.
        let mut from_query: Vec<(String, String)> = query_pairs.collect();
        from_query.retain(|(k, _)| !k.is_empty());
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in &from_query {
            let replace = !seen.contains(name);
            if set_field(&self.input, &mut fields, name, value, replace) {
                seen.push(name.clone());
            }
        }
        for (name, value) in self.path_params(path) {
            set_field(&self.input, &mut fields, &name, &value, true);
        }
        let message = Value::Object(fields);
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(&message, &mut track);
        let options = DeserializeOptions::new().deny_unknown_fields(true);
        let msg = match DynamicMessage::deserialize_with_options(self.input.clone(), de, &options) {
            Ok(m) => m,
            Err(e) => {
                let mut field = track.path().to_string();
                if field == "." {
                    field.clear();
                }
                let message = e.to_string();
                // The unknown name is only in the message; put it in the path too.
                if let Some(name) = message
                    .strip_prefix("unrecognized field name '")
                    .and_then(|r| r.split('\'').next())
                {
                    field = if field.is_empty() {
                        name.to_string()
                    } else {
                        format!("{field}.{name}")
                    };
                }
                return Err(bad_request(&field, &message));
            }
        };
        let len = msg.encoded_len();
        let mut framed = BytesMut::with_capacity(5 + len);
        framed.put_u8(0);
        framed.put_u32(len as u32);
        msg.encode(&mut framed)
            .map_err(|e| bad_request("", &format!("cannot encode: {e}")))?;
        Ok(framed.freeze())
    }

    /// The client's answer for the upstream's gRPC response: its message as JSON (200), or the
    /// gRPC status mapped to HTTP with `{"code", "message"}`. `trailers` is `None` for a
    /// trailers-only response (status in the headers).
    pub fn decode_response(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        trailers: Option<&HeaderMap>,
    ) -> PluginResponse {
        let status_from = |h: &HeaderMap| {
            h.get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<u32>().ok())
        };
        let (code, source) = match status_from(headers) {
            Some(code) => (code, headers),
            None => match trailers.and_then(|t| status_from(t).map(|c| (c, t))) {
                Some(found) => found,
                None => return upstream_error("the upstream's response has no grpc-status"),
            },
        };
        if code != 0 {
            let message = source
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .and_then(|m| decode_component(m, false))
                .unwrap_or_default();
            let body = json!({"code": code, "message": message}).to_string();
            return PluginResponse::json(http_status(code), Bytes::from(body));
        }
        let message = match first_message(body) {
            Ok(m) => m,
            Err(e) => return upstream_error(e),
        };
        match self.message_json(message) {
            Ok(json) => PluginResponse::json(StatusCode::OK, Bytes::from(json)),
            Err(e) => upstream_error(&e),
        }
    }

    /// One response message (without its prefix) as JSON.
    fn message_json(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let msg = DynamicMessage::decode(self.output.clone(), message).map_err(|e| {
            format!(
                "the upstream's message is not a {}: {e}",
                self.output.full_name()
            )
        })?;
        let mut out = Vec::with_capacity(message.len() * 2 + 16);
        let mut ser = serde_json::Serializer::new(&mut out);
        msg.serialize_with_options(&mut ser, &self.serialize)
            .map_err(|e| format!("cannot write the response as JSON: {e}"))?;
        Ok(out)
    }

    /// `name → value` of the first of the route's parameterised paths that `path` matches.
    fn path_params(&self, path: &str) -> Vec<(String, String)> {
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        for pattern in &self.patterns {
            if pattern.len() != segments.len() {
                continue;
            }
            let mut params = Vec::new();
            let matched = pattern.iter().zip(&segments).all(|(p, s)| match p {
                Segment::Literal(l) => l == s,
                Segment::Param(name) => {
                    let value = decode_component(s, false);
                    let ok = !s.is_empty() && value.is_some();
                    if let Some(v) = value {
                        params.push((name.clone(), v));
                    }
                    ok
                }
            });
            if matched {
                return params;
            }
        }
        Vec::new()
    }
}

/// A server stream's messages as newline-delimited JSON, as they arrive: one line per message,
/// and a last `{"code", "message"}` line when the stream ends with a non-zero `grpc-status`
/// (the HTTP status, 200, went out with the first bytes).
pub struct NdjsonFrames {
    transcoder: Arc<Transcoder>,
    /// Bytes of a message not complete yet.
    pending: BytesMut,
}

impl NdjsonFrames {
    pub fn new(transcoder: Arc<Transcoder>) -> NdjsonFrames {
        NdjsonFrames {
            transcoder,
            pending: BytesMut::new(),
        }
    }

    /// The lines for the complete messages `data` finishes (possibly none).
    pub fn data(&mut self, data: &[u8]) -> Result<Bytes, String> {
        self.pending.extend_from_slice(data);
        let mut out = BytesMut::new();
        while self.pending.len() >= 5 {
            if self.pending[0] != 0 {
                return Err("the upstream sent a compressed message, which was not offered".into());
            }
            let len = u32::from_be_bytes([
                self.pending[1],
                self.pending[2],
                self.pending[3],
                self.pending[4],
            ]) as usize;
            if len > MAX_MESSAGE_BYTES {
                return Err(format!("a message of {len} bytes is over the limit"));
            }
            if self.pending.len() < 5 + len {
                break;
            }
            let frame = self.pending.split_to(5 + len);
            out.extend_from_slice(&self.transcoder.message_json(&frame[5..])?);
            out.put_u8(b'\n');
        }
        Ok(out.freeze())
    }

    /// The last line, when the stream ended in an error (or cut a message short).
    pub fn trailers(&mut self, trailers: &HeaderMap) -> Bytes {
        let code = trailers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u32>().ok());
        let line = match code {
            Some(0) if self.pending.is_empty() => return Bytes::new(),
            Some(0) => json!({"code": 13, "message": "the stream ended inside a message"}),
            Some(code) => {
                let message = trailers
                    .get("grpc-message")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|m| decode_component(m, false))
                    .unwrap_or_default();
                json!({"code": code, "message": message})
            }
            None => json!({"code": 13, "message": "the upstream's stream has no grpc-status"}),
        };
        Bytes::from(format!("{line}\n"))
    }
}

fn serialize_options(options: PbOptions, output: &MessageDescriptor) -> SerializeOptions {
    let proto3 = output.parent_file().syntax() == Syntax::Proto3;
    let skip_defaults = match options.defaults {
        DefaultValues::Auto => !proto3,
        DefaultValues::Skip => true,
        DefaultValues::Show => false,
    };
    SerializeOptions::new()
        // Field names as in the .proto, as APISIX answers.
        .use_proto_field_name(true)
        .use_enum_numbers(!options.enum_as_name)
        .stringify_64_bit_integers(options.int64 == Int64As::String)
        .skip_default_fields(skip_defaults)
}

/// The one message of a unary response: after the 5-byte prefix (flag 0 = not compressed; we
/// never offer compression, so a compressed message is an upstream error).
fn first_message(body: &[u8]) -> Result<&[u8], &'static str> {
    if body.len() < 5 {
        return Err("the upstream answered OK without a message");
    }
    if body[0] != 0 {
        return Err("the upstream sent a compressed message, which was not offered");
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    body.get(5..5 + len)
        .ok_or("the upstream's message is shorter than its length prefix")
}

fn upstream_error(message: &str) -> PluginResponse {
    tracing::warn!(error = message, "grpc-transcode: bad upstream response");
    PluginResponse::error(StatusCode::BAD_GATEWAY, message)
}

/// `{"error_msg": "field: message", "field": …}` with 400.
fn bad_request(field: &str, message: &str) -> Box<PluginResponse> {
    let error_msg = if field.is_empty() {
        message.to_string()
    } else {
        format!("{field}: {message}")
    };
    let body = json!({"error_msg": error_msg, "field": field}).to_string();
    Box::new(PluginResponse::json(
        StatusCode::BAD_REQUEST,
        Bytes::from(body),
    ))
}

/// The usual mapping of gRPC status codes to HTTP (as grpc-gateway and Envoy map them).
pub fn http_status(code: u32) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        4 => StatusCode::GATEWAY_TIMEOUT,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        // UNKNOWN, INTERNAL, DATA_LOSS and codes from the future.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Percent-decodes (and, in query strings, `+` → space); `None` when not UTF-8.
fn decode_component(s: &str, plus_is_space: bool) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' => match (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Puts a query argument or path parameter into the JSON object, typed for its field so the
/// proto3 JSON parser takes it (numbers may stay strings; bools and enum numbers may not).
/// `false` when no field has that name (the argument is ignored).
fn set_field(
    desc: &MessageDescriptor,
    object: &mut Map<String, Value>,
    name: &str,
    raw: &str,
    replace: bool,
) -> bool {
    let (head, rest) = match name.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (name, None),
    };
    let Some(field) = desc
        .get_field_by_name(head)
        .or_else(|| desc.get_field_by_json_name(head))
    else {
        return false;
    };
    let key = field.name().to_string();
    // The JSON body may have used the json name: one spelling only, or the parser refuses.
    if field.json_name() != field.name()
        && let Some(v) = object.remove(field.json_name())
    {
        object.entry(key.clone()).or_insert(v);
    }
    match (field.kind(), rest) {
        (Kind::Message(inner), Some(rest)) if !field.is_list() && !field.is_map() => {
            let slot = object
                .entry(key)
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            match slot {
                Value::Object(m) => set_field(&inner, m, rest, raw, replace),
                _ => false,
            }
        }
        (_, Some(_)) => false,
        (kind, None) => {
            let value = typed(&kind, raw);
            if field.is_list() {
                match object.get_mut(&key) {
                    Some(Value::Array(items)) if !replace => items.push(value),
                    _ => {
                        object.insert(key, Value::Array(vec![value]));
                    }
                }
            } else {
                object.insert(key, value);
            }
            true
        }
    }
}

fn typed(kind: &Kind, raw: &str) -> Value {
    match kind {
        Kind::Bool => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(raw.to_string()),
        },
        Kind::Enum(_) => raw
            .parse::<i32>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(raw.to_string())),
        // Numbers as strings: proto3 JSON accepts them for every numeric type, and a bad one is
        // refused by the parser naming the field.
        _ => Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTO: &str = r#"syntax = "proto3";
package t.v1;
service S { rpc Get (Req) returns (Resp); }
enum Color { COLOR_UNSPECIFIED = 0; RED = 1; GREEN = 2; }
message Inner { string city = 1; int32 zip_code = 2; }
message Req { int64 id = 1; bool verbose = 2; repeated string tags = 3; Color color = 4; Inner inner = 5; }
message Resp { int64 id = 1; string name = 2; Color color = 3; repeated Inner places = 4; int32 count = 5; }
"#;

    fn transcoder(options: serde_json::Value, paths: &[&str]) -> Transcoder {
        let mut protos = BTreeMap::new();
        let Ok(postern_proto::model::Resource::Proto(p)) = postern_proto::model::Resource::parse(
            postern_proto::model::ResourceKind::Protos,
            &json!({ "content": PROTO }),
        ) else {
            panic!("proto")
        };
        protos.insert("p".to_string(), p);
        let mut config = json!({"proto_id": "p", "service": "t.v1.S", "method": "Get"});
        if let Some(o) = options.as_object() {
            for (k, v) in o {
                config[k] = v.clone();
            }
        }
        Transcoder::new(&config, &protos, paths.iter().copied()).unwrap()
    }

    fn decode_req(t: &Transcoder, framed: &[u8]) -> Value {
        assert_eq!(framed[0], 0);
        let len = u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize;
        assert_eq!(framed.len(), 5 + len);
        let msg = DynamicMessage::decode(t.input.clone(), &framed[5..]).unwrap();
        serde_json::to_value(&msg).unwrap()
    }

    #[test]
    fn requests_merge_body_query_and_path() {
        let t = transcoder(json!({}), &["/users/:id", "/other"]);
        let cases = [
            // (path, query, body, expected request message in proto3 JSON)
            ("/users/7", None, "", json!({"id": "7"})),
            (
                "/users/7",
                Some("verbose=true&tags=a&tags=b%20c&color=RED&inner.city=Li%C3%A8ge&unknown=1"),
                "",
                json!({"id": "7", "verbose": true, "tags": ["a", "b c"], "color": "RED",
                       "inner": {"city": "Liège"}}),
            ),
            (
                "/users/9",
                Some("color=2"),
                r#"{"id": 1, "tags": ["x"], "inner": {"zipCode": 4000}}"#,
                json!({"id": "9", "tags": ["x"], "color": "GREEN", "inner": {"zipCode": 4000}}),
            ),
            (
                "/other",
                Some("inner.zip_code=12"),
                r#"{"inner": {"city": "a"}}"#,
                json!({"inner": {"city": "a", "zipCode": 12}}),
            ),
        ];
        for (path, query, body, want) in cases {
            let framed = t
                .encode_request(path, query, body.as_bytes())
                .unwrap_or_else(|r| panic!("{path} {query:?}: {:?}", r.body));
            assert_eq!(decode_req(&t, &framed), want, "{path} {query:?} {body}");
        }
    }

    #[test]
    fn bad_requests_name_the_field() {
        let t = transcoder(json!({}), &["/users/:id"]);
        let cases = [
            ("/users/x", None, "", "id"),
            ("/users/1", Some("verbose=yes"), "", "verbose"),
            ("/users/1", None, r#"{"color": "BLUE"}"#, "color"),
            (
                "/users/1",
                None,
                r#"{"inner": {"zip_code": "abc"}}"#,
                "inner.zip_code",
            ),
            ("/users/1", None, r#"{"tags": ["a", 3]}"#, "tags[1]"),
            ("/users/1", None, r#"{"nope": 1}"#, "nope"),
            ("/users/1", None, r#"{"id": "#, ""),
            ("/users/1", None, "[1]", ""),
        ];
        for (path, query, body, field) in cases {
            let r = t
                .encode_request(path, query, body.as_bytes())
                .expect_err(body);
            assert_eq!(r.status, StatusCode::BAD_REQUEST);
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["field"], field, "{path} {query:?} {body}: {v}");
        }
    }

    fn framed(msg: &DynamicMessage) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn responses_follow_pb_option() {
        let t = transcoder(json!({}), &[]);
        let msg = DynamicMessage::deserialize(
            t.output.clone(),
            json!({"id": "12345678901", "color": "GREEN", "places": [{"city": "a"}]}),
        )
        .unwrap();
        let body = framed(&msg);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let cases = [
            (
                json!({}),
                json!({"id": 12345678901u64, "name": "", "color": "GREEN",
                       "places": [{"city": "a", "zip_code": 0}], "count": 0}),
            ),
            (
                json!({"pb_option": ["enum_as_value", "int64_as_string", "no_default_values"]}),
                json!({"id": "12345678901", "color": 2, "places": [{"city": "a"}]}),
            ),
        ];
        for (options, want) in cases {
            let t = transcoder(options.clone(), &[]);
            let r = t.decode_response(&HeaderMap::new(), &body, Some(&trailers));
            assert_eq!(r.status, StatusCode::OK);
            let got: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(got, want, "{options}");
        }
    }

    #[test]
    fn grpc_statuses_map_to_http() {
        let t = transcoder(json!({}), &[]);
        let cases = [
            (3, 400),
            (5, 404),
            (7, 403),
            (16, 401),
            (14, 503),
            (4, 504),
            (6, 409),
            (8, 429),
            (12, 501),
            (13, 500),
            (2, 500),
        ];
        for (code, want) in cases {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from(code));
            h.insert("grpc-message", HeaderValue::from_static("no%20such user"));
            // Trailers-only: the status comes in the headers.
            let r = t.decode_response(&h, b"", None);
            assert_eq!(r.status.as_u16(), want, "code {code}");
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v, json!({"code": code, "message": "no such user"}));
        }
        // No status at all, or a message that is not the output type: 502.
        let r = t.decode_response(&HeaderMap::new(), b"", None);
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let r = t.decode_response(&HeaderMap::new(), &[0, 0, 0, 0, 9, 1], Some(&trailers));
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn server_streams_become_ndjson_lines() {
        let t = Arc::new(transcoder(json!({"pb_option": ["no_default_values"]}), &[]));
        let one = |id: &str| {
            framed(&DynamicMessage::deserialize(t.output.clone(), json!({ "id": id })).unwrap())
        };
        let mut stream: Vec<u8> = one("1");
        stream.extend(one("2"));
        stream.extend(one("3"));
        // Cut anywhere: lines come out when their message is complete.
        let mut n = NdjsonFrames::new(t.clone());
        let mut out = Vec::new();
        for chunk in stream.chunks(3) {
            out.extend_from_slice(&n.data(chunk).unwrap());
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(n.trailers(&trailers).is_empty());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n"
        );
        // An error at the end is a last line.
        trailers.insert("grpc-status", HeaderValue::from_static("14"));
        trailers.insert("grpc-message", HeaderValue::from_static("gone%21"));
        assert_eq!(
            &n.trailers(&trailers)[..],
            b"{\"code\":14,\"message\":\"gone!\"}\n"
        );
        // A stream cut inside a message.
        let mut n = NdjsonFrames::new(t.clone());
        n.data(&one("4")[..4]).unwrap();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(String::from_utf8_lossy(&n.trailers(&trailers)).contains("inside a message"));
    }

    #[test]
    fn percent_decoding() {
        let cases = [
            ("a%20b", false, Some("a b")),
            ("a+b", true, Some("a b")),
            ("a+b", false, Some("a+b")),
            ("100%", false, Some("100%")),
            ("%zz", false, Some("%zz")),
            ("%C3%A8", false, Some("è")),
            ("%FF", false, None),
        ];
        for (input, plus, want) in cases {
            assert_eq!(decode_component(input, plus).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn an_empty_body_is_an_empty_message() {
        let t = transcoder(json!({}), &[]);
        let framed = t.encode_request("/", None, b"  ").unwrap();
        assert_eq!(&framed[..], &[0, 0, 0, 0, 0]);
    }
}
