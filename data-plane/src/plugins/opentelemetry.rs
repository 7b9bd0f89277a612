//! `opentelemetry`: W3C trace context and a server span per request.
//!
//! - `rewrite`: reads the client's `traceparent` (an invalid one is ignored, as W3C asks),
//!   decides sampling (the parent's flag for `parent_based_traceidratio`, otherwise the ratio
//!   applied to the trace id, so every hop of one trace decides alike), and sends the upstream a
//!   `traceparent` whose parent is the gateway's own span. `tracestate` passes unchanged.
//! - `response`: ends the span at the response head and queues it for OTLP export
//!   (`observability::otlp`). Unsampled requests cost a header parse and a header write.

use std::time::{SystemTime, UNIX_EPOCH};

use http::header::HeaderName;
use http::{HeaderValue, StatusCode};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span::SpanKind, status};
use postern_proto::model::plugins::opentelemetry::{
    OpenTelemetryConfig, SamplerName, is_request_var,
};
use postern_proto::model::vars::parse_var;
use postern_proto::model::{Result, plugins};
use serde_json::Value;

use super::{Flow, Plugin, RequestCtx};
use crate::observability::otlp::{self, attribute, int_attribute};
use crate::router::vars::{RequestVars, VarSource};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

pub struct OpenTelemetry {
    sampler: SamplerName,
    /// Share of traces that start here to sample.
    fraction: f64,
    attributes: Vec<(String, Attribute)>,
    /// Lower-case header-name prefixes.
    header_prefixes: Vec<String>,
}

enum Attribute {
    Var(VarSource),
    RouteId,
}

/// A sampled request's span, kept in the request context until the response.
pub struct SpanDraft {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
    start: SystemTime,
    name: String,
    attributes: Vec<KeyValue>,
}

/// A parsed `traceparent`: `00-<trace id>-<parent id>-<flags>`.
#[derive(Debug, PartialEq)]
struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    sampled: bool,
}

fn parse_traceparent(v: &HeaderValue) -> Option<TraceParent> {
    let s = v.to_str().ok()?;
    let mut parts = s.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may append more.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let trace_id: [u8; 16] = hex(trace)?;
    let parent_id: [u8; 8] = hex(parent)?;
    let [flags]: [u8; 1] = hex(flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags & 1 == 1,
    })
}

/// Exactly `N` bytes as `2N` lower-case hex digits (W3C allows no other case); no allocation.
fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Some(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `00-<trace id>-<span id>-<flags>`, written on the stack.
fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = HEX[usize::from(b >> 4)];
            out[at + 2 * i + 1] = HEX[usize::from(b & 15)];
        }
    };
    put(3, trace_id);
    put(36, span_id);
    put(53, &[u8::from(sampled)]);
    out
}

#[cfg(test)]
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ratio sampler of OpenTelemetry: the trace id's last 8 bytes against the fraction.
fn ratio_sampled(trace_id: &[u8; 16], fraction: f64) -> bool {
    if fraction >= 1.0 {
        return true;
    }
    let tail = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or([0; 8]));
    (tail >> 1) < (fraction * (1u64 << 63) as f64) as u64
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl OpenTelemetry {
    pub fn new(config: &Value) -> Result<OpenTelemetry> {
        let c: OpenTelemetryConfig = plugins::parse(config)?;
        let mut attributes = Vec::new();
        for name in &c.additional_attributes {
            if name == "route_id" {
                attributes.push((name.clone(), Attribute::RouteId));
            } else if is_request_var(name) {
                let source = VarSource::new(parse_var(name)?)?;
                attributes.push((name.clone(), Attribute::Var(source)));
            }
        }
        Ok(OpenTelemetry {
            sampler: c.sampler.name,
            fraction: c.sampler.root_fraction(),
            attributes,
            header_prefixes: c
                .additional_header_prefix_attributes
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
        })
    }

    fn sampled(&self, trace_id: &[u8; 16], parent: Option<&TraceParent>) -> bool {
        match self.sampler {
            SamplerName::AlwaysOn => true,
            SamplerName::AlwaysOff => false,
            SamplerName::TraceIdRatio => ratio_sampled(trace_id, self.fraction),
            SamplerName::ParentBasedTraceidratio => match parent {
                Some(p) => p.sampled,
                None => ratio_sampled(trace_id, self.fraction),
            },
        }
    }
}

impl Plugin for OpenTelemetry {
    fn name(&self) -> &'static str {
        "opentelemetry"
    }

    fn rewrite(&self, req: &mut http::request::Parts, ctx: &mut RequestCtx) -> Flow {
        let parent = req.headers.get(&TRACEPARENT).and_then(parse_traceparent);
        let trace_id = parent
            .as_ref()
            .map_or_else(|| fastrand::u128(1..).to_be_bytes(), |p| p.trace_id);
        let span_id = fastrand::u64(1..).to_be_bytes();
        let sampled = self.sampled(&trace_id, parent.as_ref());
        let header = traceparent(&trace_id, &span_id, sampled);
        if let Ok(v) = HeaderValue::from_bytes(&header) {
            req.headers.insert(TRACEPARENT.clone(), v);
        }
        if !sampled {
            return Flow::Continue;
        }
        let mut attributes = vec![
            attribute("http.request.method", req.method.as_str()),
            attribute("url.path", req.uri.path()),
            attribute("client.address", ctx.client_addr.ip().to_string()),
            attribute("postern.route.id", &*ctx.route_id),
        ];
        let vars = RequestVars {
            parts: req,
            client: ctx.client_addr.ip(),
        };
        for (name, source) in &self.attributes {
            let value = match source {
                Attribute::RouteId => Some(ctx.route_id.to_string()),
                Attribute::Var(v) => v.value(&vars).map(|v| v.into_owned()),
            };
            if let Some(value) = value {
                attributes.push(attribute(name.clone(), value));
            }
        }
        if !self.header_prefixes.is_empty() {
            for (name, value) in &req.headers {
                let n = name.as_str();
                if self
                    .header_prefixes
                    .iter()
                    .any(|p| n.starts_with(p.as_str()))
                    && let Ok(v) = value.to_str()
                {
                    attributes.push(attribute(format!("http.request.header.{n}"), v));
                }
            }
        }
        ctx.span = Some(Box::new(SpanDraft {
            trace_id,
            span_id,
            parent_span_id: parent.map(|p| p.parent_id),
            start: SystemTime::now(),
            name: format!("{} {}", req.method, ctx.route_id),
            attributes,
        }));
        Flow::Continue
    }

    fn response(&self, resp: &mut http::response::Parts, ctx: &mut RequestCtx) {
        let Some(draft) = ctx.span.take() else {
            return;
        };
        let SpanDraft {
            trace_id,
            span_id,
            parent_span_id,
            start,
            name,
            mut attributes,
        } = *draft;
        attributes.push(int_attribute(
            "http.response.status_code",
            i64::from(resp.status.as_u16()),
        ));
        let code = if resp.status >= StatusCode::INTERNAL_SERVER_ERROR {
            status::StatusCode::Error
        } else {
            status::StatusCode::Unset
        };
        otlp::export(Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent_span_id.map_or_else(Vec::new, |p| p.to_vec()),
            name,
            kind: SpanKind::Server as i32,
            start_time_unix_nano: unix_nanos(start),
            end_time_unix_nano: unix_nanos(SystemTime::now()),
            attributes,
            status: Some(Status {
                message: String::new(),
                code: code as i32,
            }),
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parse_traceparent(&HeaderValue::from_static(ok)).unwrap();
        assert_eq!(to_hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(to_hex(&p.parent_id), "00f067aa0ba902b7");
        assert!(p.sampled);
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            assert_eq!(
                parse_traceparent(&HeaderValue::from_static(bad)),
                None,
                "{bad}"
            );
        }
        // A later version may carry more fields; the first four are read.
        let out = traceparent(&p.trace_id, &p.parent_id, true);
        assert_eq!(&out[..], ok.as_bytes(), "written back as read");
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        assert!(
            !parse_traceparent(&HeaderValue::from_static(v1))
                .unwrap()
                .sampled
        );
    }

    #[test]
    fn ratio_sampling_keeps_about_the_fraction() {
        for fraction in [0.0, 0.1, 0.5, 1.0] {
            let n = 20_000;
            let kept = (0..n)
                .filter(|_| ratio_sampled(&fastrand::u128(..).to_be_bytes(), fraction))
                .count();
            let share = kept as f64 / n as f64;
            assert!((share - fraction).abs() < 0.02, "{fraction}: {share}");
        }
    }

    fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri("/orders/1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn parent_based_follows_the_caller_and_reparents_the_upstream() {
        let p = OpenTelemetry::new(&serde_json::json!({
            "sampler": {"name": "parent_based_traceidratio", "options": {"fraction": 0.0}},
            "additional_header_prefix_attributes": ["X-Custom-"]
        }))
        .unwrap();
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut req = parts(&[("traceparent", incoming), ("x-custom-team", "payments")]);
        let mut ctx = RequestCtx::new("10.0.0.1:5000".parse().unwrap(), "r1".into());
        assert!(matches!(p.rewrite(&mut req, &mut ctx), Flow::Continue));
        let out = req.headers["traceparent"].to_str().unwrap().to_string();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert!(
            !out.contains("00f067aa0ba902b7"),
            "the gateway's span is the new parent"
        );
        let draft = ctx.span.as_ref().expect("sampled because the parent was");
        assert_eq!(
            draft.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert!(
            draft
                .attributes
                .iter()
                .any(|a| a.key == "http.request.header.x-custom-team")
        );

        // An unsampled parent, or none at fraction 0: context still flows, nothing recorded.
        for headers in [
            vec![(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            )],
            vec![],
        ] {
            let mut req = parts(&headers);
            let mut ctx = RequestCtx::new("10.0.0.1:5000".parse().unwrap(), "r1".into());
            p.rewrite(&mut req, &mut ctx);
            assert!(ctx.span.is_none());
            assert!(
                req.headers["traceparent"]
                    .to_str()
                    .unwrap()
                    .ends_with("-00")
            );
        }
    }
}
