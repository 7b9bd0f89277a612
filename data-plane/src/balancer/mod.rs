//! Load balancers: built once per upstream per config snapshot, picked from per request
//! without allocating.

mod roundrobin;

pub use roundrobin::RoundRobin;
