//! Looking up the addresses of an upstream server's DNS name.
//!
//! A [`Resolver`] is either the system's (getaddrinfo: /etc/resolv.conf,
//! /etc/hosts, search domains) or a list of DNS servers from
//! `server.resolvers`, asked over UDP in order, the next one only when one
//! fails. Guarantees: a lookup either gives a non-empty set of addresses
//! (A and AAAA together, deduplicated, sorted) or fails; a name with no
//! address is a failure too, so that the caller keeps its last answer
//! rather than emptying a pool on a passing fault. Names are looked up as
//! written (no search domains) when DNS servers are configured. A
//! truncated UDP answer is used as far as it goes (no TCP retry).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

/// How long one DNS server gets to answer both queries of a lookup.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// Where names are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolver {
    /// The system's resolver.
    System,
    /// These DNS servers, in order.
    Servers(Vec<SocketAddr>),
}

impl Resolver {
    /// The resolver `server.resolvers` names (already validated).
    pub fn from_config(addrs: Option<Vec<SocketAddr>>) -> Resolver {
        match addrs {
            Some(a) if !a.is_empty() => Resolver::Servers(a),
            _ => Resolver::System,
        }
    }

    /// Every address of `host`, sorted; an error says why there is none.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let mut ips = match self {
            Resolver::System => tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| e.to_string())?
                .map(|a| a.ip())
                .collect(),
            Resolver::Servers(servers) => {
                let mut last = String::from("no resolver");
                let mut found = None;
                for s in servers {
                    match query(*s, host).await {
                        Ok(ips) => {
                            found = Some(ips);
                            break;
                        }
                        Err(e) => last = format!("{s}: {e}"),
                    }
                }
                found.ok_or(last)?
            }
        };
        ips.sort_unstable();
        ips.dedup();
        if ips.is_empty() {
            return Err("the name has no address".into());
        }
        Ok(ips)
    }
}

/// Asks `server` for the A and AAAA records of `host`.
async fn query(server: SocketAddr, host: &str) -> Result<Vec<IpAddr>, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    let id_a = fastrand::u16(..);
    let id_aaaa = id_a.wrapping_add(1);
    for (id, qtype) in [(id_a, TYPE_A), (id_aaaa, TYPE_AAAA)] {
        let q = encode_query(id, host, qtype).ok_or("not a valid DNS name")?;
        sock.send(&q).await.map_err(|e| e.to_string())?;
    }
    let answers = async {
        let mut ips = Vec::new();
        let mut pending = [id_a, id_aaaa].to_vec();
        let mut buf = vec![0u8; 4096];
        while !pending.is_empty() {
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // Anything else (a late answer to an earlier lookup, noise) is ignored.
            let Some(id) = buf.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
                continue;
            };
            let Some(at) = pending.iter().position(|&p| p == id) else {
                continue;
            };
            let qtype = if id == id_a { TYPE_A } else { TYPE_AAAA };
            ips.extend(parse_answer(&buf[..n], qtype)?);
            pending.swap_remove(at);
        }
        Ok::<_, String>(ips)
    };
    match tokio::time::timeout(QUERY_TIMEOUT, answers).await {
        Ok(r) => r,
        Err(_) => Err("no answer".into()),
    }
}

/// A recursive query for `qtype` records of `host`; `None` when `host`
/// is not a DNS name.
fn encode_query(id: u16, host: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut q = Vec::with_capacity(18 + host.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in host.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    if q.len() > 12 + 255 {
        return None;
    }
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    Some(q)
}

/// The `qtype` addresses in the answer section of a DNS response (CNAME
/// records before them are skipped: a recursive server answers with the
/// chain and its end). NXDOMAIN and an empty answer give no address.
fn parse_answer(msg: &[u8], qtype: u16) -> Result<Vec<IpAddr>, String> {
    let bad = || "malformed answer".to_string();
    let header = msg.get(..12).ok_or_else(bad)?;
    if header[2] & 0x80 == 0 {
        return Err(bad());
    }
    match header[3] & 0x0f {
        0 => {}
        3 => return Ok(Vec::new()),
        rcode => return Err(format!("server answered rcode {rcode}")),
    }
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    let ancount = u16::from_be_bytes([header[6], header[7]]);
    let mut at = 12;
    for _ in 0..qdcount {
        at = skip_name(msg, at).ok_or_else(bad)? + 4;
    }
    let mut ips = Vec::new();
    for _ in 0..ancount {
        at = skip_name(msg, at).ok_or_else(bad)?;
        let Some(fixed) = msg.get(at..at + 10) else {
            // Truncated: keep what came whole.
            break;
        };
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let len = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let Some(data) = msg.get(at + 10..at + 10 + len) else {
            break;
        };
        match (rtype, qtype, data.len()) {
            (TYPE_A, TYPE_A, 4) => ips.push(IpAddr::from([data[0], data[1], data[2], data[3]])),
            (TYPE_AAAA, TYPE_AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                ips.push(IpAddr::from(b));
            }
            _ => {}
        }
        at += 10 + len;
    }
    Ok(ips)
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => {
                msg.get(at + 1)?;
                return Some(at + 2);
            }
            l if l & 0xc0 == 0 => at += 1 + l as usize,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_a_cname_chain_give_the_addresses() {
        let mut m = encode_query(7, "a.test", TYPE_A).unwrap();
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 2;
        // a.test CNAME b.test (pointer to the question's name), then A.
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 9, 0, 4, 1, b'b', 0xc0, 14]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 9, 0, 4, 127, 0, 0, 2]);
        let ips = parse_answer(&m, TYPE_A).unwrap();
        assert_eq!(ips, vec![IpAddr::from([127, 0, 0, 2])]);
    }

    #[test]
    fn errors_and_bad_names_are_refused() {
        let mut m = encode_query(7, "a.test", TYPE_A).unwrap();
        m[2] = 0x81;
        m[3] = 0x82;
        assert!(parse_answer(&m, TYPE_A).is_err());
        assert!(encode_query(1, "a..b", TYPE_A).is_none());
        assert!(parse_answer(&[0; 5], TYPE_A).is_err());
    }
}
