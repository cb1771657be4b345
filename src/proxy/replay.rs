//! What a retry needs: which requests may be sent again, the body of the
//! ones that may (their head stays with the forward phase, which lends it
//! to every attempt), and the servers tried so far.
//!
//! Guarantees: a request counts as retry-safe when its method is GET, HEAD,
//! OPTIONS, PUT or DELETE, or it carries an Idempotency-Key; its body is
//! kept for a replay only if it is known in full (empty, or a
//! Content-Length of at most 64 KiB, read before sending, within the
//! route's deadline); a pool's server is never tried twice for one request.

use super::error::ProxyError;
use crate::body::RequestBody;
use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;

/// Bodies up to this size are kept so a retry-safe request can be replayed.
const REPLAY_LIMIT: u64 = 64 * 1024;

static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// What is needed to send a request again besides its head (which the
/// forward phase keeps, and sending only borrows): its body.
pub(super) struct Replay {
    body: Bytes,
}

impl Replay {
    /// Keeps what a replay of a request with `body` needs, if its body is
    /// known in full: the body is then read (until `deadline`) and the
    /// request goes on with the bytes read.
    pub async fn keep(
        body: RequestBody,
        deadline: tokio::time::Instant,
    ) -> Result<(RequestBody, Option<Replay>), ProxyError> {
        let empty = http_body::Body::is_end_stream(&body);
        let small = http_body::Body::size_hint(&body)
            .exact()
            .is_some_and(|n| n <= REPLAY_LIMIT);
        if !empty && !small {
            return Ok((body, None));
        }
        let bytes = if empty {
            Bytes::new()
        } else {
            match tokio::time::timeout_at(deadline, body.collect()).await {
                Ok(Ok(c)) => c.to_bytes(),
                Ok(Err(e)) => return Err(ProxyError::client_body(&*e)),
                Err(_) => return Err(ProxyError::GatewayTimeout),
            }
        };
        let replay = Replay {
            body: bytes.clone(),
        };
        Ok((RequestBody::full(bytes), Some(replay)))
    }

    /// The body of the request sent again.
    pub fn body(&self) -> RequestBody {
        RequestBody::full(self.body.clone())
    }
}

pub(super) fn retry_safe(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || headers.contains_key(&IDEMPOTENCY_KEY)
}

/// Servers tried for one request, in order: inline for the usual few, on
/// the heap beyond that, so a pool of any size is never tried twice.
pub(super) struct Tried {
    inline: [usize; 8],
    len: usize,
    spilled: Vec<usize>,
}

impl Tried {
    pub fn new() -> Tried {
        Tried {
            inline: [0; 8],
            len: 0,
            spilled: Vec::new(),
        }
    }
    pub fn as_slice(&self) -> &[usize] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }
    /// How many attempts were made.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }
    pub fn push(&mut self, i: usize) {
        if self.spilled.is_empty() && self.len < self.inline.len() {
            self.inline[self.len] = i;
            self.len += 1;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline);
            }
            self.spilled.push(i);
        }
    }
}
