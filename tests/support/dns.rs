//! A tiny authoritative DNS server on 127.0.0.1 (UDP) for tests: answers
//! A and AAAA queries from a table the test changes at will, and can be
//! told to stop answering. Counts the queries it got.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct DnsServer {
    pub addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<IpAddr>>>>,
    silent: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind dns");
        let addr = sock.local_addr().expect("addr");
        let records = Arc::new(Mutex::new(HashMap::new()));
        let silent = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (r, s, q) = (records.clone(), silent.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    break;
                };
                q.fetch_add(1, Ordering::SeqCst);
                if s.load(Ordering::SeqCst) {
                    continue;
                }
                let table = r.lock().unwrap().clone();
                if let Some(answer) = answer(&buf[..n], &table) {
                    let _ = sock.send_to(&answer, peer).await;
                }
            }
        });
        DnsServer {
            addr,
            records,
            silent,
            queries,
            task,
        }
    }

    /// Sets the addresses of `name` (A and AAAA by address family).
    pub fn set(&self, name: &str, ips: &[&str]) {
        let ips = ips.iter().map(|i| i.parse().expect("ip")).collect();
        self.records
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), ips);
    }

    /// Stops answering (queries are still read and counted).
    pub fn go_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The response to one query: the records of the asked type, NXDOMAIN for
/// an unknown name.
fn answer(q: &[u8], table: &HashMap<String, Vec<IpAddr>>) -> Option<Vec<u8>> {
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = *q.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]);
    let question = q.get(12..at + 4)?;
    let ips = table.get(&labels.join("."));
    let records: Vec<&IpAddr> = ips
        .map(|v| {
            v.iter()
                .filter(|ip| match qtype {
                    1 => ip.is_ipv4(),
                    28 => ip.is_ipv6(),
                    _ => false,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    out.extend_from_slice(&q[..2]);
    out.push(0x84 | (q[2] & 0x01)); // QR, AA, RD echoed
    out.push(if ips.is_none() { 0x83 } else { 0x80 }); // RA; NXDOMAIN
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for ip in records {
        out.extend_from_slice(&[0xc0, 12]);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 1]);
        match ip {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&[0, 4]);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&[0, 16]);
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    Some(out)
}
