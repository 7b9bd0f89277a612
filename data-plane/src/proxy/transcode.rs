//! `grpc-transcode` on the request path: the client's JSON request is read whole (bounded),
//! turned into one gRPC message and sent with the proxy's own upstream call (h2c, timeouts,
//! retries, health), then the gRPC answer — message and trailers — is read whole (bounded) and
//! turned into JSON. The message work is the plugin's (`plugins/grpc_transcode.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Either, Full, Limited};

use super::limited_body::LimitedBody;
use super::upstream_call::{FrameMap, RequestBody};
use super::{Exchange, MatchedRoute, Proxy, ProxyBody, ProxyError, plugin_response};
use crate::plugins::PluginResponse;
use crate::plugins::grpc_transcode::{MAX_MESSAGE_BYTES, NdjsonFrames, Transcoder};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl FrameMap for NdjsonFrames {
    fn data(&mut self, data: &[u8]) -> Result<bytes::Bytes, BoxError> {
        NdjsonFrames::data(self, data).map_err(|e| {
            tracing::warn!(error = %e, "grpc-transcode: bad message in a server stream");
            e.into()
        })
    }

    fn trailers(&mut self, trailers: &http::HeaderMap) -> bytes::Bytes {
        NdjsonFrames::trailers(self, trailers)
    }
}

impl Proxy {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward_transcoded(
        &self,
        client_addr: SocketAddr,
        mut parts: http::request::Parts,
        body: RequestBody,
        max_body_size: Option<u64>,
        route: &MatchedRoute,
        t: &Arc<Transcoder>,
        upstream_host: Option<HeaderValue>,
        exchange: &mut Exchange,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let encoded = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() != b"identity");
        if encoded {
            return Ok(plugin_response(PluginResponse::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "grpc-transcode reads plain JSON bodies (no Content-Encoding)",
            )));
        }
        let limit = max_body_size.map_or(MAX_MESSAGE_BYTES, |m| {
            usize::try_from(m)
                .unwrap_or(usize::MAX)
                .min(MAX_MESSAGE_BYTES)
        });
        let client_body = LimitedBody::new(body, None).metered(route.metrics.clone());
        let json = match Limited::new(client_body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ProxyError::BodyTooLarge);
            }
            Err(_) => return Err(ProxyError::BadRequest("the request body could not be read")),
        };
        let framed = match t.encode_request(parts.uri.path(), parts.uri.query(), &json) {
            Ok(f) => f,
            Err(answer) => return Ok(plugin_response(*answer)),
        };

        parts.method = Method::POST;
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(t.path.clone());
        parts.uri =
            Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("unusable request target"))?;
        let h = &mut parts.headers;
        for name in [
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::ACCEPT_ENCODING,
            header::ACCEPT,
        ] {
            h.remove(name);
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        if let Some(timeout) = &t.grpc_timeout {
            h.insert("grpc-timeout", timeout.clone());
        }
        let body = LimitedBody::new(Either::Right(Full::new(framed)), None);

        let call = async {
            let response = self
                .forward(client_addr, parts, body, route, upstream_host, exchange)
                .await?;
            let (head, body) = response.into_parts();
            if head.status != StatusCode::OK {
                return Ok::<_, ProxyError>(
                    PluginResponse::error(
                        StatusCode::BAD_GATEWAY,
                        &format!("the upstream answered HTTP {}, not gRPC", head.status),
                    )
                    .into(),
                );
            }
            // Trailers-only: an error with no message.
            if head.headers.contains_key("grpc-status") {
                return Ok(t.decode_response(&head.headers, b"", None).into());
            }
            if t.server_streaming
                && let Either::Left(upstream) = body
            {
                // Streamed as the messages come: one JSON line each.
                let body = upstream.mapped(Box::new(NdjsonFrames::new(t.clone())));
                let mut response = Response::new(Either::Left(body));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-ndjson"),
                );
                return Ok(Answer::Streamed(response));
            }
            match Limited::new(body, MAX_MESSAGE_BYTES + 5).collect().await {
                Ok(collected) => {
                    let trailers = collected.trailers().cloned();
                    let bytes = collected.to_bytes();
                    Ok(t.decode_response(&head.headers, &bytes, trailers.as_ref())
                        .into())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "grpc-transcode: reading the upstream's response failed");
                    Ok(PluginResponse::error(
                        StatusCode::BAD_GATEWAY,
                        "the upstream's gRPC response could not be read",
                    )
                    .into())
                }
            }
        };
        // For a server stream the deadline bounds the wait for its first bytes here; the
        // upstream enforces the rest (`grpc-timeout`).
        let answer = match t.deadline {
            None => call.await?,
            Some(deadline) => {
                let started = std::time::Instant::now();
                let exceeded = || {
                    PluginResponse::json(
                        StatusCode::GATEWAY_TIMEOUT,
                        serde_json::json!({
                            "code": 4,
                            "message": format!("deadline of {} ms exceeded", deadline.as_millis()),
                        })
                        .to_string()
                        .into(),
                    )
                    .into()
                };
                match tokio::time::timeout(deadline, call).await {
                    // The upstream was given the same deadline (`grpc-timeout`) and may end the
                    // call first: tonic answers CANCELLED ("Timeout expired"), mapped to 499.
                    // Past the deadline that is the deadline, whichever timer fired first.
                    Ok(Ok(Answer::Whole(r)))
                        if r.status.as_u16() == 499 && started.elapsed() >= deadline =>
                    {
                        exceeded()
                    }
                    Ok(r) => r?,
                    Err(_) => exceeded(),
                }
            }
        };
        Ok(match answer {
            Answer::Whole(r) => plugin_response(r),
            Answer::Streamed(r) => r,
        })
    }
}

/// A transcoded answer: whole (a unary message, an error) or streamed (NDJSON).
enum Answer {
    Whole(PluginResponse),
    Streamed(Response<ProxyBody>),
}

impl From<PluginResponse> for Answer {
    fn from(r: PluginResponse) -> Answer {
        Answer::Whole(r)
    }
}
