//! Name resolution for upstream connections. A node given as a host name (a Kubernetes service,
//! a DNS round robin) is looked up again for every new connection — so a changed record is
//! followed at once, without waiting for a TTL — and its addresses are tried starting from a
//! different one each time, so new connections spread over every address the name has (the
//! pods of a headless service) instead of all going to the first. A connection that fails moves
//! on to the next address. The node stays one node for the balancer and the health checks.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// Where the next lookup's address list starts (shared by every name: the spread is what
/// matters, not a per-name order).
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The system resolver (`getaddrinfo`, on tokio's blocking pool), addresses rotated per call.
#[derive(Clone, Copy, Debug, Default)]
pub struct RotatingResolver;

impl tower_service::Service<Name> for RotatingResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            Ok(rotated(addrs, NEXT.fetch_add(1, Ordering::Relaxed)).into_iter())
        })
    }
}

/// `addrs` starting at position `start` (modulo their number), in their order otherwise.
fn rotated(mut addrs: Vec<SocketAddr>, start: usize) -> Vec<SocketAddr> {
    if addrs.len() > 1 {
        let k = start % addrs.len();
        addrs.rotate_left(k);
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lookup_starts_at_the_next_address() {
        let a: Vec<SocketAddr> = ["10.0.0.1:0", "10.0.0.2:0", "10.0.0.3:0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let firsts: Vec<String> = (0..6)
            .map(|k| rotated(a.clone(), k)[0].ip().to_string())
            .collect();
        assert_eq!(
            firsts,
            [
                "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.3"
            ]
        );
        // Every address is still there to fall back on.
        let mut all = rotated(a.clone(), 2);
        all.sort();
        assert_eq!(all, a);
    }

    #[tokio::test]
    async fn resolves_names_through_the_system() {
        let addrs: Vec<SocketAddr> = tower_service::Service::call(
            &mut RotatingResolver,
            "localhost".parse::<Name>().unwrap(),
        )
        .await
        .unwrap()
        .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        assert!(!addrs.is_empty());
    }
}
