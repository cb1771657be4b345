//! Every answer the proxy makes itself, in one place.
//!
//! [`ProxyError`] names the reason; [`ProxyError::response`] is the only
//! function that turns a reason into a status and a body. gRPC clients
//! (content-type application/grpc…) get HTTP 200 with `grpc-status` and
//! `grpc-message` instead (a trailers-only response), as gRPC requires.
//! The JWT answers follow RFC 6750: 401 with `WWW-Authenticate: Bearer
//! realm="portico"` (plus `error="invalid_token"` when a token was sent),
//! 403 with `error="insufficient_scope"`.

use crate::auth::AuthFailure;
use crate::body::ProxyBody;
use http::header::{CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

/// Why the proxy answers a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Malformed request (framing, Host, a broken request body).
    BadRequest(&'static str),
    /// No route matches.
    NotFound,
    /// A CORS preflight from a disallowed origin, or asking for a method or
    /// header the route's policy does not allow.
    CorsRejected,
    /// The request head did not arrive in time (HTTP/1.1).
    RequestTimeout,
    /// The request head is larger than max_header_bytes.
    HeaderTooLarge,
    /// The request body is larger than max_body_bytes.
    PayloadTooLarge,
    /// No request body bytes for body_timeout.
    BodyTimeout,
    /// A request other than GET/HEAD arrived in HTTP/3 0-RTT data, before
    /// the handshake completed (RFC 8470): the client retries it after.
    TooEarly,
    /// The upstream refused, reset, or sent something that is not HTTP.
    BadGateway,
    /// No usable server in the pool.
    ServiceUnavailable,
    /// The upstream's response head came later than the route's timeout.
    GatewayTimeout,
    /// 401: the route needs a bearer token and none was sent.
    Unauthorized,
    /// 401: the bearer token is malformed, badly signed, expired, not yet
    /// valid, for another issuer or audience, or revoked.
    InvalidToken,
    /// 403: the token is valid but lacks a required scope.
    InsufficientScope,
    /// 503: the token cannot be checked now (no key ever obtained, or the
    /// revocation store is down with on_store_error = "deny").
    AuthUnavailable,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::CorsRejected => StatusCode::FORBIDDEN,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::TooEarly => StatusCode::TOO_EARLY,
            ProxyError::BadGateway => StatusCode::BAD_GATEWAY,
            ProxyError::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Unauthorized | ProxyError::InvalidToken => StatusCode::UNAUTHORIZED,
            ProxyError::InsufficientScope => StatusCode::FORBIDDEN,
            ProxyError::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn message(self) -> &'static str {
        match self {
            ProxyError::BadRequest(why) => why,
            ProxyError::NotFound => "no route matches this request",
            ProxyError::CorsRejected => {
                "CORS preflight rejected: origin, method or header not allowed"
            }
            ProxyError::RequestTimeout => "request head not received in time",
            ProxyError::HeaderTooLarge => "request header fields too large",
            ProxyError::PayloadTooLarge => "request body too large",
            ProxyError::BodyTimeout => "request body not received in time",
            ProxyError::TooEarly => "request sent in TLS early data; retry after the handshake",
            ProxyError::BadGateway => "upstream unavailable or sent an invalid response",
            ProxyError::ServiceUnavailable => "no healthy upstream server",
            ProxyError::GatewayTimeout => "upstream did not answer in time",
            ProxyError::Unauthorized => "a bearer token is required",
            ProxyError::InvalidToken => "invalid token",
            ProxyError::InsufficientScope => "insufficient scope",
            ProxyError::AuthUnavailable => "authentication unavailable",
        }
    }

    /// A short reason for logs (the access log's `error` field).
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::BadRequest(why) => why,
            ProxyError::NotFound => "no route",
            ProxyError::CorsRejected => "CORS preflight rejected",
            ProxyError::RequestTimeout => "request head timeout",
            ProxyError::HeaderTooLarge => "request header fields too large",
            ProxyError::PayloadTooLarge => "request body too large",
            ProxyError::BodyTimeout => "request body timeout",
            ProxyError::TooEarly => "non-idempotent request in early data",
            ProxyError::BadGateway => "upstream failed",
            ProxyError::ServiceUnavailable => "no healthy upstream",
            ProxyError::GatewayTimeout => "upstream timeout",
            ProxyError::Unauthorized => "token missing",
            ProxyError::InvalidToken => "token invalid",
            ProxyError::InsufficientScope => "insufficient scope",
            ProxyError::AuthUnavailable => "authentication unavailable",
        }
    }

    /// The RFC 6750 challenge of an authentication error.
    fn www_authenticate(self) -> Option<&'static str> {
        match self {
            ProxyError::Unauthorized => Some("Bearer realm=\"portico\""),
            ProxyError::InvalidToken => Some("Bearer realm=\"portico\", error=\"invalid_token\""),
            ProxyError::InsufficientScope => {
                Some("Bearer realm=\"portico\", error=\"insufficient_scope\"")
            }
            _ => None,
        }
    }

    /// The gRPC status code for this error (gRPC's HTTP-to-gRPC mapping).
    fn grpc_status(self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "13",
            ProxyError::NotFound => "12",
            ProxyError::CorsRejected => "7",
            ProxyError::RequestTimeout => "4",
            ProxyError::HeaderTooLarge | ProxyError::PayloadTooLarge => "8",
            ProxyError::BodyTimeout => "4",
            // UNAVAILABLE: gRPC clients retry it, as 425 asks.
            ProxyError::TooEarly
            | ProxyError::BadGateway
            | ProxyError::ServiceUnavailable
            | ProxyError::GatewayTimeout
            | ProxyError::AuthUnavailable => "14",
            ProxyError::Unauthorized | ProxyError::InvalidToken => "16",
            ProxyError::InsufficientScope => "7",
        }
    }

    /// Whether the client connection should close after this answer
    /// (a malformed request leaves the connection's framing in doubt).
    fn closes_connection(self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::RequestTimeout
                | ProxyError::HeaderTooLarge
                | ProxyError::PayloadTooLarge
                | ProxyError::BodyTimeout
        )
    }

    /// The response for this error. `grpc`: the request was a gRPC call.
    pub fn response(self, grpc: bool) -> Response<ProxyBody> {
        let mut resp = if grpc {
            let mut r = Response::new(ProxyBody::empty());
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from_static(self.grpc_status()));
            if let Ok(v) = HeaderValue::from_str(self.message()) {
                h.insert("grpc-message", v);
            }
            r
        } else {
            let mut body = String::with_capacity(64);
            body.push_str(self.status().as_str());
            body.push(' ');
            body.push_str(self.message());
            body.push('\n');
            let mut r = Response::new(ProxyBody::full(body));
            *r.status_mut() = self.status();
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        if let Some(challenge) = self.www_authenticate() {
            resp.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        if self.closes_connection() {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl ProxyError {
    /// The answer to a client request body that failed with `e`: 413 or
    /// 408 when portico failed it for its limits, else 400.
    pub fn client_body(e: &(dyn std::error::Error + 'static)) -> ProxyError {
        match crate::body::BodyFault::find(e) {
            Some(f) => ProxyError::body_fault(f),
            None => ProxyError::BadRequest("malformed request body"),
        }
    }

    /// The answer to a request body portico failed for its limits.
    pub fn body_fault(f: crate::body::BodyFault) -> ProxyError {
        match f {
            crate::body::BodyFault::TooLarge => ProxyError::PayloadTooLarge,
            crate::body::BodyFault::Stalled => ProxyError::BodyTimeout,
        }
    }
}

impl From<AuthFailure> for ProxyError {
    fn from(f: AuthFailure) -> ProxyError {
        match f {
            AuthFailure::NoToken => ProxyError::Unauthorized,
            AuthFailure::TwoAuthorizationHeaders => {
                ProxyError::BadRequest("more than one Authorization header")
            }
            AuthFailure::Invalid(_) | AuthFailure::Expired | AuthFailure::Revoked => {
                ProxyError::InvalidToken
            }
            AuthFailure::InsufficientScope => ProxyError::InsufficientScope,
            AuthFailure::NoKey | AuthFailure::StoreUnavailable => ProxyError::AuthUnavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_are_http_200_with_grpc_status() {
        let r = ProxyError::BadGateway.response(true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        let r = ProxyError::GatewayTimeout.response(false);
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            ProxyError::InvalidToken.response(true).headers()["grpc-status"],
            "16"
        );
        assert_eq!(
            ProxyError::Unauthorized.response(true).headers()["grpc-status"],
            "16"
        );
        assert_eq!(
            ProxyError::InsufficientScope.response(true).headers()["grpc-status"],
            "7"
        );
    }

    #[test]
    fn auth_errors_carry_rfc6750_challenges() {
        let r = ProxyError::Unauthorized.response(false);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer realm=\"portico\"");
        let r = ProxyError::InvalidToken.response(false);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"portico\", error=\"invalid_token\""
        );
        let r = ProxyError::InsufficientScope.response(false);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"portico\", error=\"insufficient_scope\""
        );
        let r = ProxyError::AuthUnavailable.response(false);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn too_early_is_425_without_connection_header() {
        let r = ProxyError::TooEarly.response(false);
        assert_eq!(r.status().as_u16(), 425);
        assert!(r.headers().get(CONNECTION).is_none());
    }
}
