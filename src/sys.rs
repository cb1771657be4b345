//! The operating system glue: every `unsafe` block and libc call of the
//! crate, behind safe functions.
//!
//! - [`notify`]: systemd's notify protocol (READY=1, RELOADING=1, ...),
//!   through the `sd-notify` crate, and [`watchdog_interval`];
//! - [`ignore_stray_signals`]: SIGUSR2 and SIGPIPE ignored;
//! - [`inherited_sockets`]: listening sockets passed by systemd
//!   (LISTEN_PID/LISTEN_FDS);
//! - [`lower_thread_priority`]: the nice value of the calling thread;
//! - [`monotonic_usec`] and [`monotonic_ms`]: CLOCK_MONOTONIC, the one clock
//!   portico measures intervals and deadlines with outside of tokio;
//! - [`coarse_now`]: the monotonic time of the event-loop pass, for
//!   timeouts and idle times, read once per pass rather than per request
//!   ([`event_loop_woke`] marks the passes);
//! - [`unix_now`]: the wall clock in whole seconds, the one clock for times
//!   that leave the process (JWT `exp`/`nbf`, revocations, the reload
//!   timestamp metric).
//! - [`Tcp`]: a TCP stream whose vectored writes are one `sendmsg(2)`;
//! - [`Allocator`]: mimalloc as the global allocator.
//!
//! Linux only, as portico is. Each `unsafe` block says why it is sound.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Sends state lines to systemd when run as a notify service
/// (NOTIFY_SOCKET set); does nothing otherwise. Failures are logged.
///
/// A socket path goes through the `sd-notify` crate; an abstract socket
/// ("@name", which the crate does not address) is written to here.
pub fn notify(state: &[sd_notify::NotifyState<'_>]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = match path.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => notify_abstract(name, state),
        None => sd_notify::notify(state),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The notify datagram to an abstract socket, in the crate's format (one
/// `KEY=VALUE` line each).
fn notify_abstract(name: &[u8], state: &[sd_notify::NotifyState<'_>]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let msg: String = state.iter().map(|s| format!("{s}\n")).collect();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    std::os::unix::net::UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

/// The systemd watchdog interval, when WATCHDOG_USEC is set for this
/// process (WATCHDOG_PID, if set, is ours).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Sets SIGUSR2 and SIGPIPE to be ignored, so that neither kills the
/// process by its default action (a stray `kill -USR2`, a write to a peer
/// that went away). Signals portico handles get tokio handlers instead.
pub fn ignore_stray_signals() {
    for sig in [libc::SIGUSR2, libc::SIGPIPE] {
        // SAFETY: SIG_IGN installs no code of ours; setting a disposition
        // is process-wide and safe with other threads running.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
}

/// Sockets passed by the service manager (socket activation), by local
/// address: stream sockets for listeners' TCP sides, datagram sockets for
/// their QUIC (HTTP/3) sides.
#[derive(Default)]
pub struct Inherited {
    pub tcp: HashMap<SocketAddr, std::net::TcpListener>,
    pub udp: HashMap<SocketAddr, std::net::UdpSocket>,
}

/// Takes the sockets systemd passed (LISTEN_PID/LISTEN_FDS, from fd 3 on,
/// read by the sd-notify crate, which also makes them close-on-exec), by
/// type and local address. The variables are removed so that nothing
/// started later inherits them. A descriptor that is neither a bound
/// stream nor a bound datagram socket is left as it is.
///
/// Call it once, from `main` before any other thread exists (the tokio
/// runtime included): changing the environment while another thread may
/// read it is undefined behaviour, and a second call would take the same
/// descriptors again.
pub fn inherited_sockets() -> Inherited {
    use std::os::fd::FromRawFd;
    let mut out = Inherited::default();
    // SAFETY: called from main before any other thread exists (see above),
    // so removing the variables races with no reader.
    let fds = match unsafe { sd_notify::listen_fds_with_names_and_unset_env() } {
        Ok(fds) => fds,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the sockets passed by the service manager");
            return out;
        }
    };
    for (fd, _name) in fds {
        // SAFETY: the service manager hands these descriptors to this
        // process (LISTEN_PID is ours); each is taken once, here, and owned
        // by the socket from now on.
        let socket = unsafe { socket2::Socket::from_raw_fd(fd) };
        let addr = socket.local_addr().ok().and_then(|a| a.as_socket());
        match (socket.r#type().ok(), addr) {
            (Some(socket2::Type::STREAM), Some(addr)) => {
                out.tcp.insert(addr, socket.into());
            }
            (Some(socket2::Type::DGRAM), Some(addr)) => {
                out.udp.insert(addr, socket.into());
            }
            _ => {
                tracing::warn!(
                    fd,
                    "ignoring a passed descriptor that is not a bound TCP or UDP socket"
                );
                // Not ours to close: whatever it is stays as it was.
                std::mem::forget(socket);
            }
        }
    }
    out
}

/// The id of the calling thread (gettid).
fn thread_id() -> libc::id_t {
    // SAFETY: gettid has no preconditions and returns the calling thread's id.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::id_t }
}

/// The nice value of the calling thread, or `None` when it cannot be read.
pub fn thread_nice() -> Option<i32> {
    let tid = thread_id();
    // getpriority may legitimately return -1: clear errno to tell.
    // SAFETY: errno is thread-local and writable; getpriority only reads.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, tid)
    };
    match std::io::Error::last_os_error().raw_os_error() {
        Some(0) => Some(nice),
        _ => None,
    }
}

/// Lowers the calling thread (not the process) to nice `nice`, or leaves
/// it where it is if already lower; the scheduling class stays the normal
/// one. Unreadable current priority: set to `nice`.
pub fn lower_thread_priority(nice: i32) -> std::io::Result<()> {
    let target = thread_nice().map_or(nice, |current| current.max(nice));
    // SAFETY: on Linux PRIO_PROCESS with a thread id sets that thread only;
    // setpriority takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, thread_id(), target) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds (time since boot, not counting
/// suspend), as systemd's RELOADING=1 wants it; 0 if the clock cannot be
/// read.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own and pass by
    // exclusive reference.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// CLOCK_MONOTONIC in milliseconds: for deadlines and rate limits kept in
/// atomics (never 0 on a running system, so 0 may stand for "none").
pub fn monotonic_ms() -> u64 {
    monotonic_usec() / 1_000
}

/// How many [`coarse_now`] readings one clock reading serves at most, so
/// that a pass that runs long (the runtime polls its I/O between tasks
/// without parking when it is busy) still sees time move.
const COARSE_READS: u32 = 64;

/// The coarse clock of one runtime thread.
#[derive(Clone, Copy)]
enum Coarse {
    /// No [`event_loop_woke`] on this thread (tests' runtimes, other
    /// threads): every reading is exact.
    Exact,
    /// A pass began: the next reading reads the clock.
    Due,
    /// This pass's reading, and how many more readings it serves.
    Read(tokio::time::Instant, u32),
}

thread_local! {
    static COARSE: std::cell::Cell<Coarse> = const { std::cell::Cell::new(Coarse::Exact) };
}

/// The monotonic time as of this event-loop pass (tokio's clock): at most
/// one pass, or [`COARSE_READS`] readings, old on a runtime thread whose
/// wake-ups call [`event_loop_woke`]; exact anywhere else.
///
/// For timeouts and idle times, seconds long, that requests re-arm all
/// the time (the connection's head and idle timers, body stalls, a route's
/// deadline, the pool's idle connections, the HTTP/2 flood windows): read
/// exactly, they took about ten clock readings per request, where NGINX
/// and HAProxy read the clock once per pass of their event loop. Being a
/// pass early makes such a timer fire at most that much early. Latencies
/// that are reported (request and upstream durations) read the clock
/// exactly.
pub fn coarse_now() -> tokio::time::Instant {
    COARSE.with(|cell| match cell.get() {
        Coarse::Exact => tokio::time::Instant::now(),
        Coarse::Read(now, left) if left > 0 => {
            cell.set(Coarse::Read(now, left - 1));
            now
        }
        Coarse::Due | Coarse::Read(..) => {
            let now = tokio::time::Instant::now();
            cell.set(Coarse::Read(now, COARSE_READS - 1));
            now
        }
    })
}

/// A runtime thread woke up to a new event-loop pass (tokio's
/// `on_thread_unpark`): the next [`coarse_now`] reads the clock.
pub fn event_loop_woke() {
    COARSE.with(|cell| cell.set(Coarse::Due));
}

/// Whole seconds since the Unix epoch by the wall clock; 0 if the clock
/// reads before 1970.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A tokio TCP stream whose vectored writes go out as one `sendmsg(2)`
/// instead of `writev(2)`; everything else is the stream's own (it derefs
/// to it).
///
/// Every connection, client or upstream, plain or under TLS, writes
/// through this: hyper's HTTP/1.1 writes, the HTTP/1.1 upstream client's
/// and rustls' records are all vectored. `writev` on a socket first goes
/// through the file layer (`fdget_pos`, `rw_verify_area`, the LSM
/// permission hook, fsnotify); `sendmsg` goes straight to the socket, as
/// `send` (what tokio already uses for one buffer) does. Under the
/// HTTP/2 bench `vfs_writev` alone was 2 % of portico's CPU.
#[derive(Debug)]
pub struct Tcp(tokio::net::TcpStream);

impl From<tokio::net::TcpStream> for Tcp {
    fn from(s: tokio::net::TcpStream) -> Tcp {
        Tcp(s)
    }
}

impl std::ops::Deref for Tcp {
    type Target = tokio::net::TcpStream;
    fn deref(&self) -> &tokio::net::TcpStream {
        &self.0
    }
}

impl std::ops::DerefMut for Tcp {
    fn deref_mut(&mut self) -> &mut tokio::net::TcpStream {
        &mut self.0
    }
}

impl tokio::io::AsyncRead for Tcp {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tcp {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // As std's writev: at most IOV_MAX slices per call (a short write
        // beyond), and nothing to write is Ok(0) without a syscall.
        let bufs = &bufs[..bufs.len().min(1024)];
        if bufs.iter().all(|b| b.is_empty()) {
            return std::task::Poll::Ready(Ok(0));
        }
        let s = &self.get_mut().0;
        loop {
            std::task::ready!(s.poll_write_ready(cx))?;
            // try_io clears the readiness when the send would block, so
            // the next poll_write_ready waits for the socket again.
            match s.try_io(tokio::io::Interest::WRITABLE, || {
                // MSG_NOSIGNAL: a peer gone is an EPIPE error, never a
                // signal (what std's own send does).
                socket2::SockRef::from(s).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return std::task::Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// mimalloc as the global allocator, entered by its plain functions
/// whenever the alignment asked for is one every mimalloc block has (a
/// machine word), by its aligned ones otherwise.
///
/// Why not the `mimalloc` crate's own `MiMalloc`: it sends every
/// allocation through `mi_malloc_aligned`, whose fast path covers blocks
/// up to 1 KiB only. Larger ones (each request's boxed pipeline future,
/// read buffers, HTTP/2 stream tasks) went through its generic path and
/// were over-allocated by the alignment: about 330 instructions each,
/// six per HTTP/2 request.
#[cfg(feature = "mimalloc")]
pub struct Allocator;

#[cfg(feature = "mimalloc")]
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: each function forwards to the mimalloc function with the same
// contract (memory of at least `size` bytes, aligned as `layout` asks:
// mimalloc aligns every block to at least a word, and the aligned
// functions to `align`), and every block is freed by `mi_free`, which
// takes blocks from any of them.
#[cfg(feature = "mimalloc")]
unsafe impl std::alloc::GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: see the impl.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[cfg(feature = "mimalloc")]
    #[test]
    fn the_allocator_aligns_keeps_and_zeroes() {
        use std::alloc::{GlobalAlloc, Layout};
        let a = Allocator;
        for size in [1, 7, 8, 24, 100, 1024, 1025, 3000, 70_000, 2 << 20] {
            for align in [1, 2, 8, 16, 64, 128, 4096] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: layouts of non-zero size; each block is used
                // within its size and freed once, with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(
                        !p.is_null() && (p as usize).is_multiple_of(align),
                        "{size} {align}"
                    );
                    std::ptr::write_bytes(p, 0xa5, size);
                    let grown = size * 2 + 3;
                    let q = a.realloc(p, layout, grown);
                    assert!(
                        !q.is_null() && (q as usize).is_multiple_of(align),
                        "{size} {align} realloc"
                    );
                    assert!((0..size).all(|i| *q.add(i) == 0xa5), "{size} {align} kept");
                    a.dealloc(q, Layout::from_size_align(grown, align).expect("layout"));
                    let z = a.alloc_zeroed(layout);
                    assert!(
                        !z.is_null() && (z as usize).is_multiple_of(align),
                        "{size} {align} zeroed"
                    );
                    assert!((0..size).all(|i| *z.add(i) == 0), "{size} {align} zero");
                    a.dealloc(z, layout);
                }
            }
        }
    }

    #[test]
    fn the_coarse_clock_is_exact_off_the_event_loop() {
        std::thread::spawn(|| {
            let a = coarse_now();
            std::thread::sleep(Duration::from_millis(2));
            assert!(coarse_now() > a);
        })
        .join()
        .expect("the clock thread panicked");
    }

    #[test]
    fn the_coarse_clock_holds_for_a_pass_and_a_bounded_number_of_readings() {
        std::thread::spawn(|| {
            event_loop_woke();
            let first = coarse_now();
            std::thread::sleep(Duration::from_millis(2));
            for _ in 1..COARSE_READS {
                assert_eq!(coarse_now(), first, "read again within the pass");
            }
            let renewed = coarse_now();
            assert!(renewed >= first + Duration::from_millis(2), "never renewed");
            std::thread::sleep(Duration::from_millis(2));
            event_loop_woke();
            assert!(
                coarse_now() >= renewed + Duration::from_millis(2),
                "not renewed by a new pass"
            );
        })
        .join()
        .expect("the clock thread panicked");
    }

    #[test]
    fn a_lowered_thread_stays_in_the_normal_class() {
        let (nice, policy) = std::thread::spawn(|| {
            let _ = lower_thread_priority(10);
            // SAFETY: a plain query about the calling thread.
            (thread_nice(), unsafe { libc::sched_getscheduler(0) })
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_OTHER, "not SCHED_IDLE");
        assert!(nice.is_some_and(|n| n >= 10), "{nice:?}");
    }

    /// Vectored writes larger than the socket's buffers: every byte
    /// arrives, in order, through the sends that would block and the waits
    /// for the socket to drain.
    #[tokio::test]
    async fn vectored_writes_deliver_every_byte_in_order() {
        use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                // Slowly at first, so that the writer's sends block.
                if got.len() < 1 << 20 {
                    tokio::time::sleep(std::time::Duration::from_micros(50)).await;
                }
                match s.read(&mut buf).await.unwrap() {
                    0 => break got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let mut tcp = Tcp::from(tokio::net::TcpStream::connect(addr).await.unwrap());
        assert!(tcp.is_write_vectored());
        let nothing = [std::io::IoSlice::new(&[]), std::io::IoSlice::new(&[])];
        assert_eq!(tcp.write_vectored(&nothing).await.unwrap(), 0);
        let parts: Vec<Vec<u8>> = (0..3u8)
            .map(|i| {
                (0..(3 << 20) + i as usize)
                    .map(|j| (j % 251) as u8 ^ i)
                    .collect()
            })
            .collect();
        let want: Vec<u8> = parts.concat();
        let (mut part, mut at) = (0, 0);
        while part < parts.len() {
            let mut slices = vec![std::io::IoSlice::new(&parts[part][at..])];
            slices.extend(parts[part + 1..].iter().map(|p| std::io::IoSlice::new(p)));
            let mut n = tcp.write_vectored(&slices).await.unwrap();
            assert!(n > 0);
            while n > 0 {
                let left = parts[part].len() - at;
                if n >= left {
                    n -= left;
                    part += 1;
                    at = 0;
                } else {
                    at += n;
                    n = 0;
                }
            }
        }
        tcp.shutdown().await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the bytes arrived out of order");
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = monotonic_ms();
        assert!(a > 0 && b >= a + 5, "{a} {b}");
    }
}
