//! The lingering close of a client connection after an error answer.

use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// Closes a client connection after an error answer the way NGINX's
/// lingering close does: shut down the write side (the answer is out), then
/// read and discard what the client still sends, up to 30 s in all or 5 s
/// without a byte, so that its writes do not fail with a reset before it
/// reads the answer. Ends early when `stop` fires (shutdown).
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, stop: impl Future<Output = ()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TOTAL: Duration = Duration::from_secs(30);
    const QUIET: Duration = Duration::from_secs(5);
    let drain = async {
        let end = Instant::now() + TOTAL;
        if tokio::time::timeout_at(end.min(Instant::now() + QUIET), io.shutdown())
            .await
            .is_err()
        {
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout_at(end.min(Instant::now() + QUIET), io.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = drain => {}
        _ = stop => {}
    }
}
