//! Header rules of forwarding: hop-by-hop removal, upgrade, claim header
//! spellings, x-forwarded-*, limits.

use http::header::{
    CONNECTION, EXPECT, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers (RFC 9110 7.6.1): Connection and the headers
/// it names, Keep-Alive, Proxy-*, TE (except "trailers", which gRPC needs),
/// Trailer, Transfer-Encoding, Upgrade and HTTP2-Settings.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    strip_hop_by_hop_keeping(h, None);
}

/// As [`strip_hop_by_hop`], for what a client sent, before the proxy sets
/// its own headers. Connection never names away Host (the proxy sets it
/// from the request's host anyway) nor `keep` (the Authorization header on
/// a route that checks it: the token that was checked is what is
/// forwarded).
pub fn strip_client_hop_by_hop(h: &mut HeaderMap, keep: Option<&HeaderName>) {
    strip_hop_by_hop_keeping(h, keep);
}

fn strip_hop_by_hop_keeping(h: &mut HeaderMap, keep: Option<&HeaderName>) {
    // Most messages carry none, and most of the rest only Connection (an
    // upstream's `Connection: keep-alive` on every response): one pass over
    // the names says which are there, and only those are looked up again.
    let present = h.keys().fold(0u16, |bits, n| bits | hop_by_hop_bit(n));
    if present == 0 {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        // Keep-Alive, the one name most lists hold, goes below with the
        // other hop-by-hop fields.
        if !lists_only_keep_alive(h) {
            remove_listed(h, keep);
        }
        h.remove(CONNECTION);
    }
    if present & TE_BIT != 0 {
        let trailers = h.get_all(TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        h.remove(TE);
        if trailers {
            h.insert(TE, HeaderValue::from_static("trailers"));
        }
    }
    for (i, name) in BY_NAME.iter().enumerate() {
        if present & (1 << (i + 2)) != 0 {
            h.remove(name);
        }
    }
}

const CONNECTION_BIT: u16 = 1;
const TE_BIT: u16 = 1 << 1;

/// The hop-by-hop fields removed by name alone; bit `i + 2` of
/// [`hop_by_hop_bit`] stands for `BY_NAME[i]`.
static BY_NAME: [HeaderName; 8] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TRANSFER_ENCODING,
    TRAILER,
    UPGRADE,
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
    HeaderName::from_static("http2-settings"),
];

/// Which hop-by-hop field `n` is, as a bit of [`strip_hop_by_hop_keeping`]'s
/// set; 0 for an end-to-end field.
///
/// A match on the name's text (it runs for every field of every message
/// both ways): most names differ in length from all ten and are passed
/// over after one compare, where comparing with each name in turn cost
/// ten.
fn hop_by_hop_bit(n: &HeaderName) -> u16 {
    match n.as_str() {
        "connection" => CONNECTION_BIT,
        "te" => TE_BIT,
        "keep-alive" => 1 << 2,
        "proxy-connection" => 1 << 3,
        "transfer-encoding" => 1 << 4,
        "trailer" => 1 << 5,
        "upgrade" => 1 << 6,
        "proxy-authorization" => 1 << 7,
        "proxy-authenticate" => 1 << 8,
        "http2-settings" => 1 << 9,
        _ => 0,
    }
}

/// Removes the fields the Connection header lists, except Host and `keep`.
fn remove_listed(h: &mut HeaderMap, keep: Option<&HeaderName>) {
    let listed: Vec<HeaderValue> = h.get_all(CONNECTION).iter().cloned().collect();
    let names = listed
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty());
    for name in names {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            if n != HOST && Some(&n) != keep {
                h.remove(n);
            }
        }
    }
}

/// Whether every Connection field lists only `keep-alive`, as most do (an
/// upstream's `Connection: keep-alive` on every response): the field it
/// names goes with the other hop-by-hop fields, so no copy of the list is
/// needed.
fn lists_only_keep_alive(h: &HeaderMap) -> bool {
    h.get_all(CONNECTION).iter().all(|v| {
        v.as_bytes().split(|&b| b == b',').all(|t| {
            let t = t.trim_ascii();
            t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive")
        })
    })
}

/// A hop-by-hop field, or any Proxy-* one (for trailers, where none
/// belongs).
fn is_hop_by_hop(n: &HeaderName) -> bool {
    hop_by_hop_bit(n) != 0 || n.as_str().starts_with("proxy-")
}

/// The Upgrade value of an HTTP/1.1 request that asks for a WebSocket
/// (`Connection: upgrade` and `Upgrade: websocket`, any case): the only
/// upgrade the proxy tunnels. Any other upgrade (h2c above all) is not
/// one: its headers are removed and the request goes on as a plain one.
pub fn websocket_upgrade(version: http::Version, h: &HeaderMap) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    let mut upgrades = h.get_all(UPGRADE).iter();
    let value = match (upgrades.next(), upgrades.next()) {
        (Some(v), None) => v,
        _ => return None,
    };
    let websocket = value
        .to_str()
        .is_ok_and(|s| s.trim().eq_ignore_ascii_case("websocket"));
    let connection_upgrade = h.get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    (websocket && connection_upgrade).then(|| value.clone())
}

/// The Sec-WebSocket-Accept a real WebSocket server answers to `key`
/// (RFC 6455 4.2.2): base64 of the SHA-1 of the key and the protocol's GUID.
pub fn websocket_accept(key: &HeaderValue) -> HeaderValue {
    use base64::Engine;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID);
    let b64 = base64::engine::general_purpose::STANDARD.encode(ctx.finish());
    // Base64 is always a valid header value.
    HeaderValue::from_str(&b64).unwrap_or(HeaderValue::from_static(""))
}

/// Whether a 101 answer is the WebSocket handshake the client asked for:
/// `Upgrade: websocket` and the Sec-WebSocket-Accept that `accept` (from
/// [`websocket_accept`]) expects. A 101 that is not (an endpoint that lets
/// a client pick its status) would turn the tunnel into a raw channel to
/// the upstream's HTTP parser, past routing and auth.
pub fn is_websocket_handshake(response: &HeaderMap, accept: Option<&HeaderValue>) -> bool {
    let upgrade = response
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
    let mut answers = response.get_all("sec-websocket-accept").iter();
    let accepted = match (answers.next(), answers.next(), accept) {
        (Some(a), None, Some(want)) => a.as_bytes().trim_ascii() == want.as_bytes(),
        _ => false,
    };
    upgrade && accepted
}

/// The header names that any policy's forward_claims sets, in the one
/// spelling an upstream may map them to: lower case, `_` as `-`. Built once
/// per snapshot; [`ClaimHeaders::strip`] removes every spelling of them
/// from a request (so a client cannot pass a claim header itself, on any
/// route, whether it has auth or not).
#[derive(Debug, Default)]
pub struct ClaimHeaders {
    names: Vec<Box<[u8]>>,
}

/// `a` and `b` name the same header for an upstream that reads `_` as `-`
/// and ignores case (`b` is already in that spelling).
fn same_claim_name(a: &[u8], canonical: &[u8]) -> bool {
    a.len() == canonical.len()
        && a.iter().zip(canonical).all(|(&x, &y)| {
            let x = match x {
                b'_' => b'-',
                x => x.to_ascii_lowercase(),
            };
            x == y
        })
}

impl ClaimHeaders {
    /// The set of `names` (any spelling).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> ClaimHeaders {
        let mut set: Vec<Box<[u8]>> = Vec::new();
        for n in names {
            let canonical: Box<[u8]> = n
                .bytes()
                .map(|b| match b {
                    b'_' => b'-',
                    b => b.to_ascii_lowercase(),
                })
                .collect();
            if !set.contains(&canonical) {
                set.push(canonical);
            }
        }
        ClaimHeaders { names: set }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Removes every header of `h` that is a spelling of a claim header.
    pub fn strip(&self, h: &mut HeaderMap) {
        if self.names.is_empty() {
            return;
        }
        let is_claim = |n: &HeaderName| {
            self.names
                .iter()
                .any(|c| same_claim_name(n.as_str().as_bytes(), c))
        };
        remove_where(h, is_claim);
    }
}

/// Removes every field whose name `pick` chooses; a message with none
/// (the usual case) costs one pass over the names and no allocation.
fn remove_where(h: &mut HeaderMap, pick: impl Fn(&HeaderName) -> bool) {
    if !h.keys().any(&pick) {
        return;
    }
    let found: Vec<HeaderName> = h.keys().filter(|n| pick(n)).cloned().collect();
    for n in found {
        h.remove(n);
    }
}

/// What a client's request trailers may not carry, applied to the trailers
/// frame on its way upstream: connection-specific fields (and TE, all
/// removed by name: in trailers, Connection names nothing), and in
/// any spelling (case, `_` for `-`) every field the edge routes,
/// authenticates, frames or sets by: Host, Content-Length, Authorization,
/// Cookie, X-Forwarded-*, Forwarded, the request id header, trace context
/// and every policy's claim headers. Trailers are checked by nobody before
/// the upstream, and an upstream that merges them into the header section
/// (RFC 9110 6.5.1 forbids it, some do) would otherwise read a client's
/// claim header or token as the proxy's.
pub struct TrailerRules {
    owned: ClaimHeaders,
}

impl TrailerRules {
    /// The rules for a config whose policies set `claims` and whose
    /// request id travels in `request_id`.
    pub fn new<'a>(
        claims: impl IntoIterator<Item = &'a str>,
        request_id: &'a HeaderName,
    ) -> TrailerRules {
        let fixed = [
            HOST.as_str(),
            http::header::CONTENT_LENGTH.as_str(),
            http::header::AUTHORIZATION.as_str(),
            http::header::COOKIE.as_str(),
            http::header::FORWARDED.as_str(),
            X_FORWARDED_FOR.as_str(),
            X_FORWARDED_PROTO.as_str(),
            X_FORWARDED_HOST.as_str(),
            "traceparent",
            "tracestate",
            request_id.as_str(),
        ];
        TrailerRules {
            owned: ClaimHeaders::new(fixed.into_iter().chain(claims)),
        }
    }
}

impl crate::body::TrailerFilter for TrailerRules {
    fn filter(&self, t: &mut HeaderMap) {
        // By name only: a Connection field in trailers is itself
        // malformed and names nothing.
        remove_where(t, is_hop_by_hop);
        self.owned.strip(t);
    }
}

/// Removes the headers a client spelled with `_` for `-` that name one the
/// proxy sets (x-forwarded-for, -proto, -host and `request_id`): an
/// upstream that maps `_` to `-` (CGI and WSGI servers, NGINX with
/// underscores_in_headers) would read the client's copy as the proxy's.
pub fn strip_underscore_spellings(h: &mut HeaderMap, request_id: &HeaderName) {
    // Most requests have no `_` in any name: one pass over the names decides.
    if !h.keys().any(|n| n.as_str().contains('_')) {
        return;
    }
    let set = [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        request_id,
    ];
    remove_where(h, |n| {
        n.as_str().contains('_')
            && set
                .iter()
                .any(|s| same_claim_name(n.as_str().as_bytes(), s.as_str().as_bytes()))
    });
}

/// Removes what a client sends that the proxy itself answers (Expect is
/// answered by the proxy's own 100 Continue).
pub fn strip_request_only(h: &mut HeaderMap) {
    h.remove(EXPECT);
}

/// Sets x-forwarded-for (appended), x-forwarded-proto and x-forwarded-host
/// (replacing any client copies). Several x-forwarded-for fields are one
/// list (RFC 9110 5.3): they are joined in order, then the client is
/// appended. `client` is the client's IP as a header value (made once per
/// connection).
pub fn set_forwarded(
    h: &mut HeaderMap,
    client: &HeaderValue,
    https: bool,
    host: Option<&HeaderValue>,
) {
    let mut appended = None;
    if h.contains_key(&X_FORWARDED_FOR) {
        let mut s = String::new();
        for prev in h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            s.push_str(prev);
            s.push_str(", ");
        }
        if !s.is_empty() {
            s.push_str(client.to_str().unwrap_or(""));
            appended = HeaderValue::from_str(&s).ok();
        }
    }
    match appended {
        Some(v) => {
            h.remove(&X_FORWARDED_FOR);
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
        None => {
            h.insert(X_FORWARDED_FOR.clone(), client.clone());
        }
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    match host {
        Some(v) => {
            h.insert(X_FORWARDED_HOST.clone(), v.clone());
        }
        None => {
            h.remove(&X_FORWARDED_HOST);
        }
    }
}

/// The listener's view of the peer for [`set_forwarded_trusting`].
pub struct Peer<'a> {
    pub ip: std::net::IpAddr,
    /// `ip` as a header value (made once per connection).
    pub value: &'a HeaderValue,
    pub https: bool,
    /// trusted_proxies: not empty.
    pub trusted: &'a [ipnet::IpNet],
}

/// As [`set_forwarded`] on a listener with trusted_proxies: from a trusted
/// peer X-Forwarded-For is kept and the peer appended, and the client's
/// -Proto and -Host are kept (set by portico when absent); from any other
/// peer all three are set by portico, -For to the peer alone. Returns the
/// client address: the rightmost -For entry not in the list (the leftmost
/// if all are; the entry right of one that is no IP address).
pub fn set_forwarded_trusting(
    h: &mut HeaderMap,
    peer: Peer<'_>,
    host: Option<&HeaderValue>,
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| peer.trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer.ip) {
        h.remove(&X_FORWARDED_FOR);
        set_forwarded(h, peer.value, peer.https, host);
        return peer.ip;
    }
    let proto = h.get(&X_FORWARDED_PROTO).cloned();
    let fhost = h.get(&X_FORWARDED_HOST).cloned();
    set_forwarded(h, peer.value, peer.https, host);
    if let Some(v) = proto {
        h.insert(X_FORWARDED_PROTO.clone(), v);
    }
    if let Some(v) = fhost {
        h.insert(X_FORWARDED_HOST.clone(), v);
    }
    let list = h
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut client = peer.ip;
    for entry in list.rsplit(',') {
        match parse_forwarded_ip(entry) {
            Some(ip) if is_trusted(&ip) => client = ip,
            Some(ip) => return ip,
            None => break,
        }
    }
    client
}

/// An X-Forwarded-For entry: an IP address, also with a port (`1.2.3.4:5`,
/// `[::1]:5`).
fn parse_forwarded_ip(s: &str) -> Option<std::net::IpAddr> {
    let s = s.trim();
    s.parse()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// A method that equals a standard one (RFC 9110 9, PATCH) only
/// case-insensitively (`post`, `Get`): methods are case-sensitive, and an
/// upstream that folds case would read it as the standard one that routing
/// did not see.
pub fn miscased_method(m: &http::Method) -> bool {
    use http::Method as M;
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if matches!(
        *m,
        M::GET
            | M::HEAD
            | M::POST
            | M::PUT
            | M::DELETE
            | M::CONNECT
            | M::OPTIONS
            | M::TRACE
            | M::PATCH
    ) {
        return false;
    }
    let s = m.as_str();
    STANDARD.iter().any(|k| k.eq_ignore_ascii_case(s))
}

/// Names plus values of every header, the measure max_header_bytes limits.
pub fn head_size(h: &HeaderMap) -> usize {
    h.iter().map(|(n, v)| n.as_str().len() + v.len()).sum()
}

/// Checks RFC 9112 Host rules for an HTTP/1.x request: exactly one Host
/// header on HTTP/1.1 (none allowed on 1.0), never two.
pub fn host_header_error(h: &HeaderMap, version: http::Version) -> Option<&'static str> {
    let mut hosts = h.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some("more than one Host header"),
        (None, _) if version == http::Version::HTTP_11 => Some("missing Host header"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusting(h: &mut HeaderMap, peer: &str, trusted: &[&str]) -> std::net::IpAddr {
        let ip: std::net::IpAddr = peer.parse().unwrap();
        let value = HeaderValue::from_str(peer).unwrap();
        let nets: Vec<ipnet::IpNet> = trusted
            .iter()
            .map(|c| crate::config::parse_cidr(c).unwrap())
            .collect();
        let p = Peer {
            ip,
            value: &value,
            https: true,
            trusted: &nets,
        };
        set_forwarded_trusting(h, p, Some(&HeaderValue::from_static("app")))
    }

    #[test]
    fn trusted_proxies_pick_the_rightmost_untrusted_entry() {
        let mut h = HeaderMap::new();
        h.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.2"),
        );
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        let client = trusting(&mut h, "10.0.0.1", &["10.0.0.0/8"]);
        assert_eq!(client.to_string(), "1.2.3.4");
        assert_eq!(h[&X_FORWARDED_FOR], "6.6.6.6, 1.2.3.4, 10.0.0.2, 10.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "app");
        // All trusted: the leftmost; garbage stops the walk.
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.9.9.9"));
        assert_eq!(
            trusting(&mut h, "10.0.0.1", &["10.0.0.0/8"]).to_string(),
            "10.9.9.9"
        );
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("nope, 10.9.9.9"));
        assert_eq!(
            trusting(&mut h, "10.0.0.1", &["10.0.0.0/8"]).to_string(),
            "10.9.9.9"
        );
        // An untrusted peer: reset to it.
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        assert_eq!(
            trusting(&mut h, "192.0.2.1", &["10.0.0.0/8"]).to_string(),
            "192.0.2.1"
        );
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[TE], "trailers");
        assert_eq!(h["x-kept"], "1");
    }

    #[test]
    fn each_name_removed_by_name_has_its_own_bit() {
        assert_eq!(hop_by_hop_bit(&CONNECTION), CONNECTION_BIT);
        assert_eq!(hop_by_hop_bit(&TE), TE_BIT);
        for (i, n) in BY_NAME.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(n), 1 << (i + 2), "{n}");
        }
        for n in ["host", "x-keep-alive", "content-length", "proxy-foo", "t"] {
            let n = HeaderName::from_static(n);
            assert_eq!(hop_by_hop_bit(&n), 0, "{n}");
        }
    }

    #[test]
    fn every_hop_by_hop_field_goes_on_its_own() {
        for name in [
            "connection",
            "te",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "trailer",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
            "http2-settings",
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("x"));
            h.insert("proxy-other", HeaderValue::from_static("1"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 2, "{name}: {h:?}");
            assert!(h.contains_key("x-kept") && h.contains_key("proxy-other"));
        }
        assert!(is_hop_by_hop(&HeaderName::from_static("proxy-other")));
        assert!(!is_hop_by_hop(&HeaderName::from_static("x-kept")));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        set_forwarded(
            &mut h,
            &HeaderValue::from_static("127.0.0.1"),
            true,
            Some(&HeaderValue::from_static("a.example")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.example");
    }

    #[test]
    fn several_forwarded_for_fields_are_joined() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static(""));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("10.0.0.2, 10.0.0.3"),
        );
        set_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), false, None);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"
        );
    }

    #[test]
    fn connection_never_names_away_host_or_the_kept_header() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("host, authorization, x-a"),
        );
        h.insert(HOST, HeaderValue::from_static("a"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQCAAAAAAIAAAAA"),
        );
        strip_client_hop_by_hop(&mut h, Some(&http::header::AUTHORIZATION));
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[HOST], "a");
        assert_eq!(h["authorization"], "Bearer t");
    }

    #[test]
    fn a_connection_of_keep_alive_alone_and_a_longer_list() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(CONNECTION, HeaderValue::from_static(" , keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-a"], "1");

        h.insert("close", HeaderValue::from_static("1"));
        h.append(CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(CONNECTION, HeaderValue::from_static("close,x-a"));
        strip_hop_by_hop(&mut h);
        assert!(
            h.is_empty(),
            "fields named in a later Connection line: {h:?}"
        );
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        let v11 = http::Version::HTTP_11;
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        assert_eq!(websocket_upgrade(v11, &h).unwrap(), "WebSocket");
        assert!(websocket_upgrade(http::Version::HTTP_2, &h).is_none());
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(websocket_upgrade(v11, &h).is_none());
        h.insert(UPGRADE, HeaderValue::from_static("websocket, h2c"));
        assert!(websocket_upgrade(v11, &h).is_none());
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(websocket_upgrade(v11, &h).is_none());
    }

    #[test]
    fn claim_headers_in_every_spelling_are_removed() {
        let c = ClaimHeaders::new(["X-User-Id", "x-tenant", "x-user-id"]);
        assert_eq!(c.names.len(), 2);
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("a"));
        h.insert("x_user_id", HeaderValue::from_static("b"));
        h.insert("x-user_id", HeaderValue::from_static("c"));
        h.insert("x_tenant", HeaderValue::from_static("d"));
        h.insert("x-user-idx", HeaderValue::from_static("e"));
        h.insert("x-userid", HeaderValue::from_static("f"));
        c.strip(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("x-user-idx") && h.contains_key("x-userid"));
        let none = ClaimHeaders::default();
        none.strip(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn underscore_spellings_of_set_headers_are_removed() {
        let mut h = HeaderMap::new();
        for n in [
            "x_forwarded_for",
            "x_forwarded-proto",
            "x-forwarded_host",
            "x_request_id",
            "x-forwarded-for",
            "x_other",
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static("1"));
        }
        strip_underscore_spellings(&mut h, &HeaderName::from_static("x-request-id"));
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("x-forwarded-for") && h.contains_key("x_other"));
    }

    #[test]
    fn websocket_handshake() {
        // RFC 6455 1.3's example.
        let want = websocket_accept(&HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(want, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(!is_websocket_handshake(&h, Some(&want)));
        h.insert("sec-websocket-accept", want.clone());
        assert!(is_websocket_handshake(&h, Some(&want)));
        assert!(!is_websocket_handshake(&h, None));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket_handshake(&h, Some(&want)));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("sec-websocket-accept", HeaderValue::from_static("x"));
        assert!(!is_websocket_handshake(&h, Some(&want)));
    }

    #[test]
    fn methods_are_case_sensitive() {
        for m in ["post", "Get", "pAtCh", "options"] {
            assert!(
                miscased_method(&http::Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        for m in ["POST", "GET", "PROPFIND", "propfind", "GETX"] {
            assert!(
                !miscased_method(&http::Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
    }

    #[test]
    fn host_rules() {
        let mut h = HeaderMap::new();
        assert!(host_header_error(&h, http::Version::HTTP_11).is_some());
        assert!(host_header_error(&h, http::Version::HTTP_10).is_none());
        h.append(HOST, HeaderValue::from_static("a"));
        assert!(host_header_error(&h, http::Version::HTTP_11).is_none());
        h.append(HOST, HeaderValue::from_static("b"));
        assert!(host_header_error(&h, http::Version::HTTP_11).is_some());
    }
}
