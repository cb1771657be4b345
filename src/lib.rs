//! portico: a stateless layer-7 reverse proxy and load balancer.
//!
//! The map of the crate, following one request:
//! - [`config`]: proxy.toml as plain data, with `PATH:LINE:COL` errors;
//! - [`snapshot`]: config → one generation, put together from what each
//!   module builds (listener settings, pools, JWT policies, and the
//!   [`proxy::runtime::Runtime`] a request reads), swapped whole through
//!   `ArcSwap`;
//! - [`listener`]: accept, TLS, HTTP/1.1 and HTTP/2 serving, timeouts;
//!   [`listener::quic`]: QUIC and the HTTP/3 adapter into the same pipeline;
//! - [`proxy`]: the one pipeline (admit → route → cors → authenticate →
//!   forward → finish) and the proxy's own error answers;
//! - [`auth`]: JWT policies, keys, the verified-token cache, revocation;
//! - [`upstream`]: round-robin pools of keepalive connections, health,
//!   retries;
//! - [`body`]: the request and response body types all of them share;
//! - [`observe`]: access log, request ids, Prometheus metrics;
//! - [`admin`]: the admin listener (health, readiness, metrics, config,
//!   reload, revoke);
//! - [`supervisor`]: owns listeners; reloads by build-then-swap;
//! - [`server`]: process lifecycle: start, signals, drain, exit;
//! - [`sys`]: the operating system glue: systemd, thread priority, clocks.

pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod listener;
pub mod observe;
pub mod proxy;
pub mod server;
pub mod snapshot;
pub mod supervisor;
pub mod sys;
pub mod tls;
pub mod upstream;
