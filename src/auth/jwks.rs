//! A JWKS fetched from a URL, kept fresh in the background.
//!
//! Guarantees:
//! - nothing is fetched until [`JwksSource::start`] (the server calls it once
//!   the snapshot is built; a request calls it too, in case a reload built
//!   this source): `portico check` never contacts a jwks_url;
//! - fetched at start, then every `jwks_refresh`, and on demand when a
//!   token names an unknown kid, at most once a minute
//!   ([`KID_REFRESH_INTERVAL`]); requests that wait for such a fetch share
//!   it and wait at most [`FETCH_TIMEOUT`];
//! - a failed fetch (network, status, body, or a document with no usable
//!   key) keeps the last good key set in force and is logged;
//! - HTTPS is verified against `jwks_ca` when given, else the system's
//!   trust roots, with the same client config builder and connector as
//!   upstream TLS; only a 200 answer counts: redirects are not followed (an
//!   IdP that moved its JWKS is a config change, and following a redirect
//!   would let whoever answers the URL point portico anywhere); the body
//!   is capped at [`MAX_BODY`] and the whole fetch at [`FETCH_TIMEOUT`];
//! - the refresh task holds only a weak reference: it ends once the last
//!   snapshot using this source is gone.

use super::keys::{self, KeySet};
use crate::tls::{ClientTls, ConnectError};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::uri::Authority;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Notify};

/// Longest one fetch may take, connect to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two fetches caused by unknown kids.
pub const KID_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// Largest JWKS document accepted.
pub const MAX_BODY: usize = 1 << 20;

/// The parts of a jwks source config that decide whether a reload may keep
/// the running source.
#[derive(Clone, PartialEq, Eq)]
pub struct JwksIdentity {
    pub url: String,
    pub ca_pem: Option<Vec<u8>>,
    pub refresh: Duration,
}

/// One jwks_url and the key set last fetched from it.
pub struct JwksSource {
    pub identity: JwksIdentity,
    https: bool,
    authority: Authority,
    path: String,
    /// TLS as for an upstream: same builder, same connector.
    tls: Option<ClientTls>,
    keys: ArcSwapOption<KeySet>,
    /// Raised whenever the key set changes (cached tokens verified under an
    /// older epoch are checked again).
    epoch: AtomicU64,
    /// Number of finished fetch attempts, good or bad.
    attempts: watch::Sender<u64>,
    /// Wakes the refresh task early (unknown kid, or this source dropped).
    kick: Arc<Notify>,
    kick_pending: AtomicBool,
    /// When the last unknown-kid fetch was asked for
    /// ([`crate::sys::monotonic_ms`]; 0: never).
    last_kick_ms: AtomicU64,
    started: AtomicBool,
    /// SHA-256 of the last good document.
    last_doc: std::sync::Mutex<Option<[u8; 32]>>,
}

impl JwksSource {
    /// A source for `url` (already validated by the config). `ca_certs`:
    /// the jwks_ca certificates, or None for the system's trust roots.
    pub fn new(
        identity: JwksIdentity,
        ca_certs: Option<Vec<rustls_pki_types::CertificateDer<'static>>>,
    ) -> Result<JwksSource, String> {
        let (https, authority, path) = crate::config::jwks_url_parts(&identity.url)
            .ok_or_else(|| "jwks_url must be an http:// or https:// URL".to_string())?;
        let tls = if https {
            let roots = match ca_certs {
                Some(certs) => crate::tls::roots_of(certs).map_err(|e| format!("jwks_ca: {e}"))?,
                None => crate::tls::system_roots(),
            };
            let config = crate::tls::client_config(roots, None, &[b"http/1.1"])
                .map_err(|e| e.to_string())?;
            Some(ClientTls {
                config: Arc::new(config),
                // The URL's host is the name verified and sent as SNI.
                server_name: None,
                fingerprint: 0,
            })
        } else {
            None
        };
        Ok(JwksSource {
            identity,
            https,
            authority,
            path,
            tls,
            keys: ArcSwapOption::empty(),
            epoch: AtomicU64::new(0),
            attempts: watch::Sender::new(0),
            kick: Arc::new(Notify::new()),
            kick_pending: AtomicBool::new(false),
            last_kick_ms: AtomicU64::new(0),
            started: AtomicBool::new(false),
            last_doc: std::sync::Mutex::new(None),
        })
    }

    /// The key set in force; None until a fetch has succeeded once.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Starts the refresh task, once. Needs the runtime.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let kick = self.kick.clone();
        tokio::spawn(refresh_loop(weak, kick));
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Waits (bounded) for the first fetch attempt to finish.
    pub async fn wait_first_attempt(&self) {
        let mut rx = self.attempts.subscribe();
        let _ = tokio::time::timeout(
            FETCH_TIMEOUT + Duration::from_secs(1),
            rx.wait_for(|n| *n > 0),
        )
        .await;
    }

    /// A token named a kid this source does not know: fetch again now,
    /// unless a kid-driven fetch happened less than a minute ago, and wait
    /// (bounded) for it. Returns false without waiting when rate-limited.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let mut rx = self.attempts.subscribe();
        let seen = *rx.borrow_and_update();
        if !self.kick_pending.load(Ordering::Acquire) {
            let now = crate::sys::monotonic_ms();
            let last = self.last_kick_ms.load(Ordering::Acquire);
            let due =
                last == 0 || now.saturating_sub(last) >= KID_REFRESH_INTERVAL.as_millis() as u64;
            if due
                && self
                    .last_kick_ms
                    .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                self.kick_pending.store(true, Ordering::Release);
                self.kick.notify_one();
            } else if !self.kick_pending.load(Ordering::Acquire) {
                return false;
            }
        }
        let fetched = tokio::time::timeout(
            FETCH_TIMEOUT + Duration::from_secs(1),
            rx.wait_for(|n| *n > seen),
        )
        .await
        .is_ok();
        fetched
    }

    /// One fetch attempt; on success the new key set is in force.
    async fn fetch_once(&self) {
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(Ok(body)) => self.install(&body),
            Ok(Err(e)) => {
                tracing::warn!(url = %self.identity.url, error = %e, "JWKS fetch failed; keeping the last good key set")
            }
            Err(_) => {
                tracing::warn!(url = %self.identity.url, "JWKS fetch timed out; keeping the last good key set")
            }
        }
        self.kick_pending.store(false, Ordering::Release);
        self.attempts.send_modify(|n| *n += 1);
    }

    fn install(&self, body: &[u8]) {
        let digest = super::cache::sha256(body);
        let mut last = self.last_doc.lock().unwrap_or_else(|p| p.into_inner());
        if *last == Some(digest) && self.keys.load().is_some() {
            return;
        }
        match keys::parse_jwks(body, false) {
            Ok(parsed) => {
                for s in &parsed.skipped {
                    tracing::info!(url = %self.identity.url, "JWKS: skipped {s}");
                }
                for s in &parsed.malformed {
                    tracing::warn!(url = %self.identity.url, "JWKS: ignored a broken key: {s}");
                }
                if parsed.keys.is_empty() {
                    tracing::warn!(url = %self.identity.url, "JWKS has no usable key; keeping the last good key set");
                    return;
                }
                tracing::info!(url = %self.identity.url, keys = parsed.keys.len(), "JWKS loaded");
                self.keys.store(Some(Arc::new(KeySet::new(parsed.keys))));
                self.epoch.fetch_add(1, Ordering::AcqRel);
                *last = Some(digest);
            }
            Err(e) => {
                tracing::warn!(url = %self.identity.url, error = %e, "bad JWKS; keeping the last good key set")
            }
        }
    }

    async fn fetch(&self) -> Result<Bytes, String> {
        let host = self.authority.host();
        let port = self
            .authority
            .port_u16()
            .unwrap_or(if self.https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let io = crate::tls::connect((bare_host, port), self.tls.as_ref(), host, FETCH_TIMEOUT)
            .await
            .map_err(|e| match e {
                ConnectError::Io(e) => format!("connect to {host}: {e}"),
                ConnectError::Timeout => format!("connect to {host}: timed out"),
            })?;
        self.get(io).await
    }

    async fn get<IO>(&self, io: IO) -> Result<Bytes, String>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let driver = tokio::spawn(conn);
        let req = http::Request::get(self.path.as_str())
            .header(http::header::HOST, self.authority.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("portico/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let result = async {
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("status {}", resp.status()));
            }
            Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| format!("body: {e}"))
        }
        .await;
        driver.abort();
        result
    }
}

impl Drop for JwksSource {
    fn drop(&mut self) {
        // Let the refresh task see that its source is gone.
        self.kick.notify_one();
    }
}

async fn refresh_loop(weak: Weak<JwksSource>, kick: Arc<Notify>) {
    loop {
        let refresh = {
            let Some(src) = weak.upgrade() else { return };
            src.fetch_once().await;
            src.identity.refresh
        };
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            _ = kick.notified() => {}
        }
    }
}
