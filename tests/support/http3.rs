//! An HTTP/3 test client (quinn + h3) and a UDP relay that delays the
//! server's datagrams, so a test can hold a QUIC handshake open on purpose.
//!
//! Everything talks to 127.0.0.1 only.

use super::Pki;
use bytes::{Buf, Bytes};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Errors of the test client.
pub type H3Error = Box<dyn std::error::Error + Send + Sync>;

/// A QUIC client endpoint on 127.0.0.1 trusting the test CA, with TLS
/// session resumption (and, if asked, 0-RTT) across its connections.
pub struct H3Client {
    pub endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

impl H3Client {
    pub fn new(pki: &Pki, early_data: bool) -> H3Client {
        let mut tls = pki.client_config(&[b"h3"], &[&rustls::version::TLS13]);
        tls.enable_early_data = early_data;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("idle"),
        ));
        config.transport_config(Arc::new(transport));
        let endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
        H3Client { endpoint, config }
    }

    /// A full (1-RTT) connection to `addr` for "localhost".
    pub async fn connect(&self, addr: SocketAddr) -> Result<H3Conn, H3Error> {
        let conn = self
            .endpoint
            .connect_with(self.config.clone(), addr, "localhost")?
            .await?;
        H3Conn::new(conn).await
    }

    /// A connection that sends 0-RTT data if it holds a session ticket
    /// from an earlier connection. Returns the connection and, when 0-RTT
    /// was attempted, a future that tells whether the server accepted it.
    pub async fn connect_0rtt(
        &self,
        addr: SocketAddr,
    ) -> Result<(H3Conn, Option<quinn::ZeroRttAccepted>), H3Error> {
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), addr, "localhost")?;
        match connecting.into_0rtt() {
            Ok((conn, accepted)) => Ok((H3Conn::new(conn).await?, Some(accepted))),
            Err(connecting) => Ok((H3Conn::new(connecting.await?).await?, None)),
        }
    }
}

/// One HTTP/3 connection; clones share it (to send requests concurrently).
#[derive(Clone)]
pub struct H3Conn {
    pub quic: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    _driver: Arc<Driver>,
}

/// The h3 client connection's driver task, ended with the last clone.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A whole response.
#[derive(Debug)]
pub struct H3Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl H3Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl H3Conn {
    async fn new(conn: quinn::Connection) -> Result<H3Conn, H3Error> {
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
        let driver = tokio::spawn(async move {
            let _ = driver.wait_idle().await;
        });
        Ok(H3Conn {
            quic: conn,
            send,
            _driver: Arc::new(Driver(driver)),
        })
    }

    /// Sends a request with `body` in chunks of up to 64 KiB.
    pub async fn request(
        &mut self,
        req: http::Request<()>,
        body: Bytes,
    ) -> Result<H3Response, H3Error> {
        let mut stream = self.send.send_request(req).await?;
        let mut rest = body;
        // A server that answers without the rest of the request stops it
        // (RFC 9114 4.1): the response still counts, so a failed send only
        // ends the sending.
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(64 * 1024));
            if stream.send_data(chunk).await.is_err() {
                break;
            }
        }
        let _ = stream.finish().await;
        let resp = stream.recv_response().await?;
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            while chunk.has_remaining() {
                let c = chunk.chunk();
                body.extend_from_slice(c);
                let n = c.len();
                chunk.advance(n);
            }
        }
        let trailers = stream.recv_trailers().await?;
        Ok(H3Response {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: Bytes::from(body),
            trailers,
        })
    }

    /// GET `path` on authority "localhost".
    pub async fn get(&mut self, path: &str) -> Result<H3Response, H3Error> {
        self.request(request("GET", path), Bytes::new()).await
    }

    /// Closes the connection (H3_NO_ERROR).
    pub fn close(&self) {
        self.quic.close(quinn::VarInt::from_u32(0x100), b"");
    }
}

/// A request head for `https://localhost{path}`.
pub fn request(method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())
        .expect("request")
}

/// A UDP relay on 127.0.0.1 for one client at a time: datagrams from the
/// client go to `server` at once; datagrams from the server reach the
/// client `delay` later (in order). With it, a client's first flight
/// (ClientHello and 0-RTT data) reaches the server long before the client
/// can finish the handshake. Returns the address clients should use.
pub async fn delaying_relay(server: SocketAddr, delay: Duration) -> SocketAddr {
    let front = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("relay bind"),
    );
    let back = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("relay bind"),
    );
    back.connect(server).await.expect("relay connect");
    let addr = front.local_addr().expect("relay addr");
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    {
        let (front, back, client) = (front.clone(), back.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                let _ = back.send(&buf[..n]).await;
            }
        });
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let _ = tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
        }
    });
    tokio::spawn(async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            let to = *client.lock().unwrap();
            if let Some(to) = to {
                let _ = front.send_to(&data, to).await;
            }
        }
    });
    addr
}
