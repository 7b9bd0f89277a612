//! Protocol upgrades (WebSocket) over HTTP/1.1: the client's `Connection: upgrade` and `Upgrade`
//! headers are hop-by-hop, so the proxy strips them like every other and then puts back exactly
//! these two for the upstream. Only a `101 Switching Protocols` from the upstream, to a request
//! that asked for an upgrade, turns the two connections into a byte tunnel; any other answer is
//! an ordinary response and the client's connection stays HTTP (a pipelined request is never
//! tunnelled on the strength of a 200).
//!
//! A tunnel lives on its own task, holding nothing of the config: a snapshot applied while it is
//! open does not touch it. Tunnels are tracked so that a shutdown gives them the drain period
//! too, as it gives in-flight requests.

use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

/// The open tunnels (WebSockets) of this process.
pub static TUNNELS: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// The `Upgrade` value when the request asks to switch protocols (HTTP/1.1, `Connection`
/// naming `upgrade`, one `Upgrade` header).
pub fn requested(parts: &http::request::Parts) -> Option<HeaderValue> {
    // One lookup first: most requests ask for no upgrade.
    if parts.version != Version::HTTP_11 || !parts.headers.contains_key(header::UPGRADE) {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let mut values = parts.headers.get_all(header::UPGRADE).iter();
    match (asks, values.next(), values.next()) {
        (true, Some(v), None) => Some(v.clone()),
        _ => None,
    }
}

/// Puts back the two headers an upgrade needs (after the hop-by-hop ones were stripped).
pub fn set_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Joins the client's and the upstream's upgraded connections and copies bytes both ways until
/// either side closes.
pub fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    TUNNELS.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        }
    });
}
