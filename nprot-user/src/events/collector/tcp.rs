//! The TCP sender: one connection, chunks confirmed by `tcpi_bytes_acked`, reconnecting
//! with backoff (see the [module documentation](super) for what counts as delivered).

use std::{
    io::{self, Write},
    mem,
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::socket::{MsgFlags, recv},
};
use socket2::{SockRef, TcpKeepalive};

use super::{
    Backoff, CollectorConfig, CollectorStats, IDLE_CHECK,
    queue::{Chunk, Shared, Waited, take_lines, wait_lines},
};

/// Longest single wait of the sender, so that it notices a close request.
const SLICE: Duration = Duration::from_millis(50);

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// EOF: the collector read everything its kernel acknowledged.
    Clean,
    /// Reset, timeout or error: acknowledged data may have been discarded unread.
    Unclean,
}

/// A connection to the collector and where its byte counts start.
struct Conn {
    stream: TcpStream,
    /// `tcpi_bytes_acked` right after the connect (the SYN may count).
    acked_base: u64,
    /// Bytes written on this connection before the current chunk.
    chunk_base: u64,
    peer: SocketAddr,
    /// Whether a chunk was confirmed on this connection.
    delivered: bool,
}

impl Conn {
    fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Bytes of our data the peer's kernel acknowledged.
    fn acked(&self) -> io::Result<u64> {
        Ok(bytes_acked(self.fd())?.saturating_sub(self.acked_base))
    }

    /// Whether the collector closed or reset the connection (it never sends, so anything
    /// readable is an end), without waiting.
    fn gone(&self) -> Option<Loss> {
        self.wait_gone(Duration::ZERO)
    }

    /// Waits up to `timeout` for the connection to end.
    fn wait_gone(&self, timeout: Duration) -> Option<Loss> {
        let events = libc::POLLIN | libc::POLLRDHUP;
        match poll_fd(self.fd(), events, timeout) {
            Ok(0) => None,
            Ok(_) => self.classify_end(),
            Err(_) => Some(Loss::Unclean),
        }
    }

    #[allow(
        clippy::match_same_arms,
        reason = "each outcome of the read is named for what it means"
    )]
    fn classify_end(&self) -> Option<Loss> {
        let mut buf = [0u8; 4096];
        loop {
            match recv(self.fd().as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Some(Loss::Clean),
                // A collector that talks back: ignore what it says.
                Ok(_) | Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return None,
                // Reset after our late data reached a socket it had closed cleanly.
                Err(Errno::EPIPE) => return Some(Loss::Clean),
                Err(_) => return Some(Loss::Unclean),
            }
        }
    }
}

fn classify_write_error(e: &io::Error) -> Loss {
    // EPIPE: the collector had closed (FIN) and reset what we sent after.
    if e.kind() == io::ErrorKind::BrokenPipe {
        Loss::Clean
    } else {
        Loss::Unclean
    }
}

/// The TCP sender thread's state.
pub(super) struct TcpSender {
    config: CollectorConfig,
    shared: Arc<Shared>,
    conn: Option<Conn>,
    chunk: Chunk,
    backoff: Backoff,
    /// When the next connect may be tried.
    next_connect: Instant,
    connections: u64,
}

impl TcpSender {
    pub(super) fn new(config: CollectorConfig, shared: Arc<Shared>) -> TcpSender {
        TcpSender {
            backoff: Backoff::new(config.backoff_min, config.backoff_max),
            config,
            shared,
            conn: None,
            chunk: Chunk::default(),
            next_connect: Instant::now(),
            connections: 0,
        }
    }

    fn describe(&self) -> String {
        format!("tcp collector {}", self.config.address)
    }

    pub(super) fn run(mut self) {
        loop {
            if self.chunk.lines() == 0 {
                let wait = if self.conn.is_some() {
                    IDLE_CHECK
                } else {
                    SLICE
                };
                match wait_lines(&self.shared, wait) {
                    Waited::Done => break,
                    Waited::Idle => {
                        // Notice a collector that went away before we write to it.
                        if let Some(loss) = self.conn.as_ref().and_then(Conn::gone) {
                            self.lost(loss);
                        }
                        continue;
                    }
                    Waited::Lines => {}
                }
            }
            if self.past_close_deadline() {
                break;
            }
            if self.conn.is_none() && !self.connect() {
                continue;
            }
            if self.chunk.lines() == 0 {
                // A collector that went away while we were idle: find out before taking
                // lines, which would then be held (never pushed out by newer ones) for
                // the whole outage.
                if let Some(loss) = self.conn.as_ref().and_then(Conn::gone) {
                    self.lost(loss);
                    continue;
                }
                // Connected: only now do queued lines become the chunk in flight.
                take_lines(&self.shared, &mut self.chunk, self.config.max_chunk);
                if self.chunk.lines() == 0 {
                    continue;
                }
            }
            let result = self.write_chunk().and_then(|()| self.confirm_chunk());
            match result {
                Ok(()) => {
                    let n = self.chunk.lines();
                    if let Some(conn) = &mut self.conn {
                        conn.chunk_base += self.chunk.buf.len() as u64;
                        conn.delivered = true;
                    }
                    self.chunk.clear();
                    self.backoff.reset();
                    self.shared.delivered(n);
                }
                Err(Some(loss)) => self.lost(loss),
                Err(None) => break,
            }
        }
        self.finish();
    }

    fn past_close_deadline(&self) -> bool {
        self.shared.closing().is_some_and(|d| Instant::now() >= d)
    }

    /// Drops what is held at close, after a clean shutdown of the connection.
    fn finish(&mut self) {
        let n = self.chunk.lines();
        self.chunk.clear();
        self.shared.dropped(n);
        if let Some(conn) = self.conn.take() {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            // Give the collector a moment to read up to our FIN before the socket goes.
            let _ = poll_fd(
                conn.fd(),
                libc::POLLIN | libc::POLLRDHUP,
                Duration::from_millis(200),
            );
        }
        self.shared.stats.connected.store(false, Ordering::Relaxed);
    }

    /// One connect attempt, once the backoff allows; false if there is no connection.
    fn connect(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next_connect {
            self.shared.sleep((self.next_connect - now).min(SLICE));
            return false;
        }
        match self.try_connect() {
            Ok(conn) => {
                if self.connections > 0 {
                    self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                self.connections += 1;
                log::info!("{}: connected to {}", self.describe(), conn.peer);
                self.shared.stats.connected.store(true, Ordering::Relaxed);
                self.chunk.written = 0;
                self.conn = Some(conn);
                true
            }
            Err(e) => {
                self.shared
                    .stats
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                if self.backoff.is_reset() {
                    log::warn!("{}: cannot connect: {e}", self.describe());
                }
                self.next_connect = Instant::now() + self.backoff.next();
                false
            }
        }
    }

    fn try_connect(&self) -> io::Result<Conn> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing");
        for addr in self.config.address.to_socket_addrs()? {
            let mut timeout = self.config.connect_timeout;
            if let Some(deadline) = self.shared.closing() {
                let left = deadline.saturating_duration_since(Instant::now());
                timeout = timeout.min(left).max(Duration::from_millis(1));
            }
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    configure_tcp(&stream, self.config.user_timeout)?;
                    stream.set_nonblocking(true)?;
                    let acked_base = bytes_acked(stream.as_fd())?;
                    return Ok(Conn {
                        stream,
                        acked_base,
                        chunk_base: 0,
                        peer: addr,
                        delivered: false,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The connection ended: settle what the collector read, keep the rest to resend.
    fn lost(&mut self, loss: Loss) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        self.shared.stats.connected.store(false, Ordering::Relaxed);
        let written = self.chunk.written;
        let delivered = if loss == Loss::Clean {
            let acked = conn.acked().unwrap_or(0).saturating_sub(conn.chunk_base);
            let acked = usize::try_from(acked).unwrap_or(usize::MAX).min(written);
            self.chunk.whole_lines_in(acked)
        } else {
            0
        };
        self.chunk.drop_lines(delivered);
        self.shared.delivered(delivered);
        self.chunk.written = 0;
        let resend = self.chunk.lines_touched_by(self.chunk.ever_written);
        log::warn!(
            "{}: connection to {} {}; {resend} events to resend",
            self.describe(),
            conn.peer,
            match loss {
                Loss::Clean => "closed",
                Loss::Unclean => "reset",
            }
        );
        // Reconnect at once after a connection that worked; back off after one that
        // ended before delivering anything (a collector that accepts and closes).
        if conn.delivered || delivered > 0 {
            self.next_connect = Instant::now();
        } else {
            self.next_connect = Instant::now() + self.backoff.next();
        }
    }

    /// Writes the rest of the chunk. `Err(None)`: the close deadline passed.
    fn write_chunk(&mut self) -> Result<(), Option<Loss>> {
        let Some(conn) = self.conn.as_ref() else {
            return Err(Some(Loss::Unclean));
        };
        if self.chunk.written == 0 {
            if let Some(loss) = conn.gone() {
                return Err(Some(loss));
            }
            // Lines written before on a lost connection go out again.
            let again = self.chunk.lines_touched_by(self.chunk.ever_written);
            CollectorStats::add(&self.shared.stats.resent, again);
        }
        while self.chunk.written < self.chunk.buf.len() {
            if self.past_close_deadline() {
                return Err(None);
            }
            match (&conn.stream).write(&self.chunk.buf[self.chunk.written..]) {
                Ok(0) => return Err(Some(Loss::Unclean)),
                Ok(n) => {
                    self.chunk.written += n;
                    self.chunk.ever_written = self.chunk.ever_written.max(self.chunk.written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let ends = libc::POLLIN | libc::POLLRDHUP;
                    match poll_fd(conn.fd(), libc::POLLOUT | ends, SLICE) {
                        Ok(r) if r & ends != 0 => {
                            if let Some(loss) = conn.classify_end() {
                                return Err(Some(loss));
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return Err(Some(Loss::Unclean)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Some(classify_write_error(&e))),
            }
        }
        Ok(())
    }

    /// Waits until the chunk is acknowledged and then `confirm` passes without the
    /// connection ending.
    fn confirm_chunk(&mut self) -> Result<(), Option<Loss>> {
        let Some(conn) = self.conn.as_ref() else {
            return Err(Some(Loss::Unclean));
        };
        let end = self.chunk.buf.len() as u64;
        let mut acked_at: Option<Instant> = None;
        // No event says "acknowledged": poll, backing off to 20 ms.
        let mut nap = Backoff::new(Duration::from_micros(200), Duration::from_millis(20));
        loop {
            if let Some(loss) = conn.gone() {
                return Err(Some(loss));
            }
            let now = Instant::now();
            if acked_at.is_none() {
                let acked = conn.acked().map_err(|_| Some(Loss::Unclean))?;
                if acked.saturating_sub(conn.chunk_base) >= end {
                    acked_at = Some(now);
                }
            }
            let closing = self.shared.closing();
            if let Some(at) = acked_at {
                // At close, queued lines still get their confirmation time, within the
                // deadline.
                let due = at + self.config.confirm;
                if now >= due {
                    return Ok(());
                }
                if closing.is_some_and(|d| now >= d) {
                    return Err(None);
                }
                if let Some(loss) = conn.wait_gone((due - now).min(SLICE)) {
                    return Err(Some(loss));
                }
            } else {
                if closing.is_some_and(|d| now >= d) {
                    return Err(None);
                }
                if let Some(loss) = conn.wait_gone(nap.next()) {
                    return Err(Some(loss));
                }
            }
        }
    }
}

/// Keepalive and user timeout, so that a silent peer breaks the connection.
fn configure_tcp(stream: &TcpStream, user_timeout: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = SockRef::from(stream);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    sock.set_tcp_keepalive(&keepalive)?;
    // The kernel reads an int and refuses a negative one: at most i32::MAX ms.
    let max = Duration::from_millis(i32::MAX as u64);
    sock.set_tcp_user_timeout(Some(user_timeout.min(max)))
}

/// `tcpi_bytes_acked` of a TCP socket (Linux ≥ 4.1); still readable after a reset.
/// By hand: neither nix nor socket2 reads `TCP_INFO`.
fn bytes_acked(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: tcp_info is plain data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd; `info` is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_bytes_acked)
}

/// poll(2) on one fd; returns the `revents` (0 on timeout). By hand: nix's `PollFlags`
/// has no `POLLRDHUP`, and its `revents()` gives nothing when the kernel sets it.
fn poll_fd(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout: Duration,
) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // Round a sub-millisecond wait up, except a zero one.
    let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
    loop {
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(if rc == 0 { 0 } else { pfd.revents });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        net::{Shutdown, TcpListener, TcpStream},
        os::fd::AsRawFd,
        sync::atomic::Ordering,
        time::Duration,
    };

    use crate::events::collector::testutil::{
        free_port, lines, read_lines, read_more, tcp_sink, wait_for,
    };

    /// Bytes that have arrived on `stream` and not been read (`FIONREAD`).
    fn unread_bytes(stream: &TcpStream) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: valid fd; FIONREAD writes one int.
        let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0, "FIONREAD: {}", io::Error::last_os_error());
        usize::try_from(n).unwrap()
    }

    #[test]
    fn reconnects_and_resends_exactly_what_was_not_confirmed() {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let sink = tcp_sink(port, 100, Duration::from_millis(400));
        let handle = sink.handle();

        sink.enqueue(lines(0..5).as_bytes());
        let (mut first, _) = listener.accept().unwrap();
        assert_eq!(read_lines(&mut first, 5), lines(0..5));
        wait_for("confirmation", || handle.counters().sent == 5);

        // The collector stops reading, acknowledges the next lines in its kernel, then
        // goes away with them unread: a reset, so the sink resends them.
        sink.enqueue(lines(5..10).as_bytes());
        let unread = lines(5..10).len();
        wait_for("the lines to arrive unread", || {
            unread_bytes(&first) >= unread
        });
        drop(listener);
        drop(first);
        wait_for("the reset to be seen", || !handle.counters().connected);
        assert_eq!(handle.counters().sent, 5);
        // The collector stays away until the sink has tried to reconnect and been refused.
        let failures = handle.0.stats.connect_failures.load(Ordering::Relaxed);
        wait_for("a refused reconnect", || {
            handle.0.stats.connect_failures.load(Ordering::Relaxed) > failures
        });
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let (mut second, _) = listener.accept().unwrap();
        assert_eq!(read_lines(&mut second, 5), lines(5..10));
        wait_for("confirmation", || handle.counters().sent == 10);

        // This time the collector reads everything, then closes cleanly (FIN) before the
        // sink's confirmation time is up: nothing is resent.
        sink.enqueue(lines(10..15).as_bytes());
        assert_eq!(read_lines(&mut second, 5), lines(10..15));
        second.shutdown(Shutdown::Both).unwrap();
        drop(second);
        wait_for("the close to be settled", || handle.counters().sent == 15);
        sink.enqueue(lines(15..20).as_bytes());
        let (mut third, _) = listener.accept().unwrap();
        assert_eq!(read_lines(&mut third, 5), lines(15..20));

        let c = sink.close(Duration::from_secs(2));
        assert_eq!(
            (c.sent, c.dropped, c.resent, c.reconnects, c.queued),
            (20, 0, 5, 2, 0)
        );
        // The sink shut its side down after the last confirmation: EOF, nothing more.
        assert_eq!(read_more(&mut third, Duration::from_secs(1)), "");
    }
}
