//! Upstream pools: server choice, keepalive connections, sending a request.
//!
//! An [`UpstreamPool`] is built from one `[upstream.NAME]` table and is
//! immutable apart from atomics and the per-server idle stacks. Guarantees:
//! - servers are chosen by [`Balancer`] (round-robin, smooth weighted),
//!   never by anything about the client;
//! - an HTTP/1.1 connection goes back to its server's idle stack only after
//!   its response body was read to the end and its request body was sent to
//!   the end; an exchange that ends otherwise (the client went away, the
//!   server answered before reading the whole upload) closes the
//!   connection; the stack is LIFO (hot
//!   connections stay hot, surplus ones age out), capped at
//!   `max_idle_per_server` when that is set (by default it holds what
//!   recent demand opened), and a reaper task closes connections idle
//!   longer than `idle_timeout` even when no request comes;
//! - HTTP/2 upstreams share one multiplexed connection per server;
//! - a request that a reused connection could not even start sending (the
//!   server closed it while idle: the keepalive race) is sent again on
//!   another connection, whatever its method, since nothing reached the
//!   server;
//! - a server named by DNS stands for every address of the name, looked up
//!   again every `resolve_interval`; see [`members`](self::members) and
//!   [`dns`](self::dns) for what a new answer changes;
//! - servers out of rotation (failed active checks, or passively ejected
//!   after a refused connect or a reset) get no traffic; see [`health`];
//! - HTTPS upstreams verify the server with the configured CA (or the
//!   system's trust roots), send SNI, offer ALPN h2 or http/1.1 by protocol,
//!   and present a client certificate when configured.
//!
//! HTTP/1.1 upstreams are spoken to by portico's own client
//! ([`h1`](self::h1)): the request's task writes the request and reads the
//! response head on the pooled connection, the response body reads the
//! rest, with no task per connection and no channel between tasks;
//! checkout is a mutex-guarded `Vec::pop` (never held across an await).
//! HTTP/2 upstreams use hyper's `client::conn::http2`.

mod balancer;
mod checks;
mod dns;
mod h1;
pub mod health;
mod members;
mod pool;
pub mod resolve;
mod retry;
mod rounds;
mod server;

/// The HTTP/1.1 client's exchange, for the fuzz target of what upstreams
/// send (fuzz/fuzz_targets/h1_response.rs). Not an API.
#[doc(hidden)]
pub mod h1_fuzzing {
    pub use super::h1::{H1Conn, Home};
}

pub use balancer::Balancer;
pub use h1::{connection_lists, Upgraded};
pub use health::ServerHealth;
pub use members::{CurrentMembers, Members, NoServer};
pub use pool::{Exchange, ResponseBody, SendFailure, UpstreamError, UpstreamPool};
pub use resolve::Resolver;
pub use retry::RetryBudget;
pub use server::UpstreamServer;
