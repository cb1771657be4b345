//! The PROXY protocol header (v1 text, v2 binary) an L4 balancer writes at
//! the start of each TCP connection, before TLS.
//!
//! Guarantees:
//! - [`read_header`] reads exactly the header's bytes, never one of what
//!   follows (so TLS or HTTP starts on the very next byte), with ppp doing
//!   the parsing;
//! - the client address is the header's source (TCP over IPv4 or IPv6); a
//!   v2 LOCAL command (the balancer's own health check) and a v1 `UNKNOWN`
//!   line keep the socket's peer address;
//! - anything else (no header, a malformed one, another address family, a
//!   v2 header over [`MAX_V2_LEN`]) is an error: the caller closes the
//!   connection.
//!
//! HTTP/3 (QUIC over UDP) has no such header and is not affected.

use std::net::SocketAddr;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature (12 bytes) that starts every binary header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The shortest v1 line, `PROXY UNKNOWN\r\n`: reading this much first never
/// reads past a header of either version (v2's is 16 bytes at least).
const FIRST_READ: usize = 15;
/// The longest v1 line (the protocol's own limit, CRLF included).
const MAX_V1_LEN: usize = 107;
/// The longest v2 header accepted: the addresses and the TLVs balancers
/// send (AWS's VPC endpoint id, Azure's link id, SSL info) fit well under.
pub const MAX_V2_LEN: usize = 16 + 2048;

/// Why a connection's PROXY header was refused.
#[derive(Debug)]
pub enum HeaderError {
    Io(std::io::Error),
    /// Not a PROXY header, or not one portico can use.
    Invalid(&'static str),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Io(e) => write!(f, "reading the PROXY header: {e}"),
            HeaderError::Invalid(why) => write!(f, "bad PROXY header: {why}"),
        }
    }
}

impl From<std::io::Error> for HeaderError {
    fn from(e: std::io::Error) -> Self {
        HeaderError::Io(e)
    }
}

/// Reads the PROXY header at the start of `stream` and returns the client
/// address it gives (`peer`, the socket's, for a LOCAL or UNKNOWN one).
pub async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, HeaderError> {
    let mut buf = vec![0u8; FIRST_READ];
    stream.read_exact(&mut buf).await?;
    if buf.starts_with(V2_SIGNATURE) {
        read_v2_rest(stream, &mut buf).await?;
    } else if buf.starts_with(b"PROXY ") {
        read_v1_rest(stream, &mut buf).await?;
    } else {
        return Err(HeaderError::Invalid("no PROXY protocol signature"));
    }
    client_address(&buf, peer)
}

/// The rest of a v2 header: byte 16's length field says how much.
async fn read_v2_rest(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), HeaderError> {
    buf.resize(16, 0);
    stream.read_exact(&mut buf[FIRST_READ..]).await?;
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > MAX_V2_LEN {
        return Err(HeaderError::Invalid("v2 header too long"));
    }
    buf.resize(len, 0);
    stream.read_exact(&mut buf[16..]).await?;
    Ok(())
}

/// The rest of a v1 line, up to its LF: what the socket has is peeked and
/// only the line's bytes are consumed.
async fn read_v1_rest(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), HeaderError> {
    let mut peeked = [0u8; MAX_V1_LEN];
    while buf.last() != Some(&b'\n') {
        let room = MAX_V1_LEN - buf.len();
        if room == 0 {
            return Err(HeaderError::Invalid("v1 line too long"));
        }
        let n = stream.peek(&mut peeked[..room]).await?;
        if n == 0 {
            return Err(HeaderError::Invalid("connection closed in the header"));
        }
        // Up to the LF if it is there, else all that is there (peek then
        // waits for more instead of returning the same bytes again).
        let take = peeked[..n]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(n, |i| i + 1);
        let at = buf.len();
        buf.resize(at + take, 0);
        stream.read_exact(&mut buf[at..]).await?;
    }
    Ok(())
}

/// The client address a complete header gives.
fn client_address(header: &[u8], peer: SocketAddr) -> Result<SocketAddr, HeaderError> {
    use ppp::HeaderResult;
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Ok(SocketAddr::from((a.source_address, a.source_port))),
            ppp::v1::Addresses::Tcp6(a) => Ok(SocketAddr::from((a.source_address, a.source_port))),
            ppp::v1::Addresses::Unknown => Ok(peer),
        },
        HeaderResult::V2(Ok(h)) => match (h.command, h.addresses) {
            (ppp::v2::Command::Local, _) => Ok(peer),
            (_, ppp::v2::Addresses::IPv4(a)) => {
                Ok(SocketAddr::from((a.source_address, a.source_port)))
            }
            (_, ppp::v2::Addresses::IPv6(a)) => {
                Ok(SocketAddr::from((a.source_address, a.source_port)))
            }
            _ => Err(HeaderError::Invalid("v2 PROXY without an IP address")),
        },
        HeaderResult::V1(Err(_)) => Err(HeaderError::Invalid("malformed v1 line")),
        HeaderResult::V2(Err(_)) => Err(HeaderError::Invalid("malformed v2 header")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn v1_lines() {
        let a = client_address(b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\n", peer()).unwrap();
        assert_eq!(a, "192.0.2.7:5555".parse().unwrap());
        let a = client_address(b"PROXY TCP6 2001:db8::1 ::1 5555 443\r\n", peer()).unwrap();
        assert_eq!(a, "[2001:db8::1]:5555".parse().unwrap());
        assert_eq!(
            client_address(b"PROXY UNKNOWN\r\n", peer()).unwrap(),
            peer()
        );
        assert!(client_address(b"PROXY TCP4 192.0.2.7\r\n", peer()).is_err());
        assert!(client_address(b"PROXY TCP4 999.0.2.7 10.0.0.1 1 2\r\n", peer()).is_err());
    }

    fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    #[test]
    fn v2_headers() {
        let mut addrs = vec![198, 51, 100, 9, 10, 0, 0, 1];
        addrs.extend_from_slice(&4000u16.to_be_bytes());
        addrs.extend_from_slice(&443u16.to_be_bytes());
        let a = client_address(&v2(1, 0x11, &addrs), peer()).unwrap();
        assert_eq!(a, "198.51.100.9:4000".parse().unwrap());
        // LOCAL: the balancer's own connection.
        assert_eq!(client_address(&v2(0, 0x00, &[]), peer()).unwrap(), peer());
        // PROXY over a UNIX socket: no IP to use.
        assert!(client_address(&v2(1, 0x31, &[0; 216]), peer()).is_err());
        // Version 1 in the binary form.
        let mut bad = v2(1, 0x11, &addrs);
        bad[12] = 0x11;
        assert!(client_address(&bad, peer()).is_err());
    }
}
