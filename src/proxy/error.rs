//! Every answer the proxy makes itself, in one place.
//!
//! [`ProxyError`] names the reason; [`ProxyError::response`] is the only
//! function that turns a reason into a status and a body. gRPC clients
//! (content-type application/grpc…) get HTTP 200 with `grpc-status` and
//! `grpc-message` instead (a trailers-only response), as gRPC requires.

use crate::body::ProxyBody;
use http::header::{CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};

/// Why the proxy answers a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Malformed request (framing, Host, a broken request body).
    BadRequest(&'static str),
    /// No route matches.
    NotFound,
    /// The request head did not arrive in time (HTTP/1.1).
    RequestTimeout,
    /// The request head is larger than max_header_bytes.
    HeaderTooLarge,
    /// A request other than GET/HEAD arrived in HTTP/3 0-RTT data, before
    /// the handshake completed (RFC 8470): the client retries it after.
    TooEarly,
    /// The upstream refused, reset, or sent something that is not HTTP.
    BadGateway,
    /// No usable server in the pool.
    ServiceUnavailable,
    /// The upstream's response head came later than the route's timeout.
    GatewayTimeout,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::TooEarly => StatusCode::TOO_EARLY,
            ProxyError::BadGateway => StatusCode::BAD_GATEWAY,
            ProxyError::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn message(self) -> &'static str {
        match self {
            ProxyError::BadRequest(why) => why,
            ProxyError::NotFound => "no route matches this request",
            ProxyError::RequestTimeout => "request head not received in time",
            ProxyError::HeaderTooLarge => "request header fields too large",
            ProxyError::TooEarly => "request sent in TLS early data; retry after the handshake",
            ProxyError::BadGateway => "upstream unavailable or sent an invalid response",
            ProxyError::ServiceUnavailable => "no healthy upstream server",
            ProxyError::GatewayTimeout => "upstream did not answer in time",
        }
    }

    /// The gRPC status code for this error (gRPC's HTTP-to-gRPC mapping).
    fn grpc_status(self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "13",
            ProxyError::NotFound => "12",
            ProxyError::RequestTimeout => "4",
            ProxyError::HeaderTooLarge => "8",
            // UNAVAILABLE: gRPC clients retry it, as 425 asks.
            ProxyError::TooEarly
            | ProxyError::BadGateway
            | ProxyError::ServiceUnavailable
            | ProxyError::GatewayTimeout => "14",
        }
    }

    /// Whether the client connection should close after this answer
    /// (a malformed request leaves the connection's framing in doubt).
    fn closes_connection(self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::RequestTimeout | ProxyError::HeaderTooLarge
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
        if self.closes_connection() {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
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
        let r = ProxyError::TooEarly.response(false);
        assert_eq!(r.status().as_u16(), 425);
        assert!(r.headers().get(CONNECTION).is_none());
    }
}
