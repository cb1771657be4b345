//! portico: a stateless layer-7 reverse proxy and load balancer.
//!
//! # The map of the crate
//!
//! Layers, top to bottom. A module uses only modules on lower lines, never
//! one on its own line or above (`tests/layers.rs` reads every `crate::`
//! and `super::` path of src/ and fails on an upward import or a cycle
//! between the files of one folder):
//!
//! | layer | owns |
//! | --- | --- |
//! | [`server`] | the process: start, signals, config file watch, drain, exit |
//! | [`admin`] | the admin listener: health, readiness, metrics, config, reload, revoke |
//! | [`supervisor`] | the listeners and the generation in force; reloads by build-then-swap, pushes each listener its settings |
//! | [`snapshot`] | one generation: aggregates what each module below builds from the config; builds nothing itself |
//! | [`listener`] | accept, TLS, HTTP/1.1 and HTTP/2 serving, the byte layer under hyper (timeouts, framing tracking, HTTP/2 flood guard, lingering close), QUIC and HTTP/3; builds its [`listener::ListenerSettings`] |
//! | [`proxy`] | the one pipeline for every protocol (admit, route, cors, authenticate, forward, finish), the edge rules, the answers portico writes itself; builds the [`proxy::runtime::Runtime`] a request reads |
//! | [`auth`], [`upstream`] | JWT policies, keys, token cache, revocation, the admin token; round-robin pools of keepalive connections, health, retries |
//! | [`observe`] | access log, request ids, the Prometheus registry (rendered from its handles) |
//! | [`tls`], [`body`] | server and client TLS configs and the one TCP+TLS client connector; the body types every layer shares |
//! | [`config`], [`sys`] | proxy.toml as plain data with `PATH:LINE:COL` errors; every `unsafe` block and libc call (systemd, sockets, thread priority, clocks) |
//!
//! A request: a [`listener`] accepts and decodes it and hands it to
//! [`proxy::handle`], which loads the [`proxy::runtime::Runtime`] in force
//! once, checks the request against the edge rules, routes, authenticates
//! through [`auth`], forwards through an [`upstream`] pool and logs through
//! [`observe`]. A reload: the [`supervisor`] builds a new [`snapshot`] off
//! the request path and swaps it in whole; requests in flight keep the
//! runtime they started with.

// A connection task's future nests the whole pipeline (upstream, auth,
// Redis clients): proving it Send sits at the default limit of 128, so a
// small edit, or an incremental build's state, can tip it into E0275.
#![recursion_limit = "256"]

/// `Box::pin($fut)` for a future of the request path that hyper or tokio
/// would otherwise move by value (into a task, through its state changes,
/// into a dispatcher's slot, into a timeout): behind the box only a pointer
/// moves, and one allocation costs less than those copies. The box is
/// allocated first and the future written into it, so that it can be built
/// in place rather than on the stack and copied whole (`Box::pin`
/// allocates after its argument exists).
macro_rules! pin_in_place {
    ($fut:expr) => {
        ::std::boxed::Box::into_pin(::std::boxed::Box::write(
            ::std::boxed::Box::new_uninit(),
            $fut,
        ))
    };
}

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
