//! Collector sinks: newline-delimited JSON to a SIEM collector over TCP or UDP.
//!
//! # Threading
//!
//! [`CollectorSink::write_batch`] runs on the verdict loop and only appends the batch's
//! lines to a bounded in-memory queue under a mutex that the sender never holds across
//! I/O. A dedicated OS thread (`nprot-collector`) does everything that can wait: name
//! resolution, connecting, writing, reconnecting with backoff (100 ms doubling to 5 s).
//! A thread rather than a tokio task, so that a slow collector, DNS or a blocking connect
//! can never stall the single-threaded runtime that takes verdicts, and so the sink works
//! the same outside the daemon (replay, tests). Create the sink before the verdict loop
//! switches to SCHED_FIFO: threads inherit the policy of the thread that spawns them.
//!
//! # Bound and drops
//!
//! The queue holds at most [`CollectorConfig::queue`] lines, counting the chunk being
//! written. When it is full, the *oldest* waiting line is dropped for each new one: after
//! a long outage the collector gets the stream up to the outage, a gap (visible as a
//! jump in `ReportId`), then the most recent lines, which matter most for an incident in
//! progress. The chunk being written is never dropped (it may be half delivered). Every
//! dropped line is counted ([`CollectorCounters::dropped`], and [`Sink::dropped`] for
//! `nprot stats`).
//!
//! # TCP delivery
//!
//! A line leaves the queue only once it counts as delivered. Lines are written in chunks
//! of whole lines (at most [`CollectorConfig::max_chunk`] bytes), one chunk at a time. A
//! chunk counts as delivered when the collector's kernel has acknowledged all of it
//! (`TCP_INFO.tcpi_bytes_acked`) and then [`CollectorConfig::confirm`] has passed without
//! the connection being reset. Only then is the next chunk written. When the connection
//! ends, how it ended says what the collector read:
//!
//! - **EOF (FIN)**, or `EPIPE` after one: Linux sends FIN on `close` only when the
//!   application had read everything that had arrived (with unread data it sends RST),
//!   and data arriving after the close is not acknowledged. So every acknowledged byte was
//!   read: acknowledged lines count as delivered and the rest of the chunk is resent.
//! - **Reset** (RST), timeout (`TCP_USER_TIMEOUT`, keepalive), any other error: the
//!   collector may have discarded acknowledged data unread (rsyslog does so on SIGTERM:
//!   it stops reading, then closes with RST). The whole unconfirmed chunk is resent.
//!
//! Before each write and while idle the socket is polled for EOF/RST (a collector never
//! sends), so lines are not written into a connection the collector already closed.
//!
//! What this achieves: no loss and no duplicate while the collector is unreachable or
//! restarting, within the queue bound, provided the collector, when it stops, closes its
//! socket within `confirm` of its last read (rsyslog: a few ms) and reads a chunk in one
//! go. A collector stopped in the middle of reading a chunk can get the part it had read
//! twice (the chunk is resent whole), and one that stops reading for longer than
//! `confirm` before it resets can lose what it had acknowledged but not read: plain TCP
//! has no application acknowledgement (RELP has). When a collector closes cleanly after
//! reading part of a line, it has a truncated fragment (rsyslog logs it as a message of
//! its own); the line is resent whole. A fragment is never valid JSON, so every event
//! still appears exactly once as a complete line. `confirm` = 0 writes chunks back to
//! back as soon as they are acknowledged: faster, and lines the collector discards on a
//! reset are lost. Throughput is at most `max_chunk` per (round trip + `confirm`).
//!
//! # UDP
//!
//! One datagram per line, the newline included. Lines longer than [`UDP_MAX_LINE`] are
//! dropped and counted when queued; send errors (e.g. `ECONNREFUSED` from an ICMP port
//! unreachable) drop the line and count it. Nothing is resent.

use std::{
    collections::VecDeque,
    io::{self, Write},
    mem,
    net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::socket::{MsgFlags, recv},
};
use serde::Serialize;
use serde_json::Value;
use socket2::{SockRef, TcpKeepalive};

use super::sink::Sink;

/// The longest line sent as one UDP datagram (the IPv4 payload limit), newline included.
pub const UDP_MAX_LINE: usize = 65_507;

/// How often an idle sender checks that its connection is still open.
const IDLE_CHECK: Duration = Duration::from_millis(200);
/// Longest single wait of the sender, so that it notices a close request.
const SLICE: Duration = Duration::from_millis(50);

/// The collector's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One connection, newline-delimited, reconnecting.
    Tcp,
    /// One datagram per line.
    Udp,
}

/// How a [`CollectorSink`] reaches its collector.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub transport: Transport,
    /// `host:port`; resolved at every connect (TCP) or until it resolves (UDP).
    pub address: String,
    /// Lines held (queued and being written) at most; the oldest queued lines are dropped
    /// beyond it.
    pub queue: usize,
    /// TCP: how long an acknowledged chunk must go without a reset before it counts as
    /// delivered and the next one is written (see the module documentation).
    pub confirm: Duration,
    /// TCP: bytes written per chunk at most (a longer line goes alone).
    pub max_chunk: usize,
    /// First wait after a failed connect; doubled after each failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// TCP: unacknowledged data older than this breaks the connection
    /// (`TCP_USER_TIMEOUT`); keepalive probes find a silent peer as fast.
    pub user_timeout: Duration,
    /// How long dropping the sink waits for queued lines to be delivered.
    pub close_timeout: Duration,
}

impl CollectorConfig {
    /// Default queue bound, in lines.
    pub const DEFAULT_QUEUE: usize = 10_000;

    /// Defaults for `address` over `transport`.
    pub fn new(transport: Transport, address: &str) -> CollectorConfig {
        CollectorConfig {
            transport,
            address: address.to_owned(),
            queue: Self::DEFAULT_QUEUE,
            confirm: Duration::from_millis(50),
            max_chunk: 128 * 1024,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            user_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(2),
        }
    }
}

/// Live counters of a collector sink, shared with its sender thread.
#[derive(Debug, Default)]
pub struct CollectorStats {
    queued: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    resent: AtomicU64,
    connected: AtomicBool,
    /// TCP connect attempts that failed (not in the snapshot: the tests wait on it).
    connect_failures: AtomicU64,
}

/// A snapshot of [`CollectorStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CollectorCounters {
    /// Lines held now: waiting, or written and not yet confirmed.
    pub queued: u64,
    /// Lines delivered (TCP: confirmed; UDP: handed to the kernel).
    pub sent: u64,
    /// Lines lost: pushed out of a full queue, too long for a datagram, UDP send errors,
    /// left at close.
    pub dropped: u64,
    /// Connections made after the first one (TCP).
    pub reconnects: u64,
    /// Lines written again after a connection was lost before they were confirmed.
    pub resent: u64,
    /// Whether a TCP connection is up now (UDP: whether the address resolved).
    pub connected: bool,
}

impl CollectorStats {
    /// The counters now.
    pub fn snapshot(&self) -> CollectorCounters {
        CollectorCounters {
            queued: self.queued.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            resent: self.resent.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
        }
    }

    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The queue between `write_batch` and the sender thread.
struct Queue {
    lines: VecDeque<Vec<u8>>,
    /// Lines queued plus lines the sender holds (written, not confirmed).
    held: usize,
    /// Set when the sink is dropped: deliver what is held until then, then stop.
    closing: Option<Instant>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: CollectorStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic elsewhere cannot leave the queue half-updated: keep going.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `n` lines the sender held are settled (delivered or dropped).
    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut q = self.lock();
        // Saturating: a sender left behind at close may settle lines already written off.
        q.held = q.held.saturating_sub(n);
        self.stats.queued.store(q.held as u64, Ordering::Relaxed);
    }

    fn delivered(&self, n: usize) {
        CollectorStats::add(&self.stats.sent, n);
        self.release(n);
    }

    fn dropped(&self, n: usize) {
        CollectorStats::add(&self.stats.dropped, n);
        self.release(n);
    }

    fn closing(&self) -> Option<Instant> {
        self.lock().closing
    }

    /// Sleeps up to `d`, waking early when the sink is being closed.
    fn sleep(&self, d: Duration) {
        let q = self.lock();
        if q.closing.is_none() {
            let _ = self.wake.wait_timeout(q, d);
        }
    }
}

/// Newline-delimited JSON to a TCP or UDP collector, through a bounded queue and a
/// sender thread (see the module documentation).
pub struct CollectorSink {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the sender thread ends.
    exited: mpsc::Receiver<()>,
    config: CollectorConfig,
}

impl CollectorSink {
    /// Starts the sender thread. It does not wait for the collector: lines queue until it
    /// answers. Fails only if the thread cannot be spawned.
    pub fn start(config: CollectorConfig) -> io::Result<CollectorSink> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                lines: VecDeque::new(),
                held: 0,
                closing: None,
            }),
            wake: Condvar::new(),
            stats: CollectorStats::default(),
        });
        let sender_shared = shared.clone();
        let sender_config = config.clone();
        let (alive, exited) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("nprot-collector".into())
            .spawn(move || {
                let _alive = alive;
                match sender_config.transport {
                    Transport::Tcp => TcpSender::new(sender_config, sender_shared).run(),
                    Transport::Udp => run_udp(&sender_config, &sender_shared),
                }
            })?;
        Ok(CollectorSink {
            shared,
            thread: Some(thread),
            exited,
            config,
        })
    }

    /// The sink's counters, shared: keep the handle to read them after the sink moved
    /// into a `Fanout`.
    pub fn handle(&self) -> CollectorHandle {
        CollectorHandle(self.shared.clone())
    }

    /// The counters now.
    pub fn counters(&self) -> CollectorCounters {
        self.shared.stats.snapshot()
    }

    /// Queues whole lines (a final line without a newline gets one), dropping the oldest
    /// queued lines beyond the bound; returns how many were queued and how many lines
    /// (old or new) were dropped. Never waits for the network.
    pub fn enqueue(&self, lines: &[u8]) -> (usize, usize) {
        let udp = self.config.transport == Transport::Udp;
        let cap = self.config.queue.max(1);
        let (mut queued, mut dropped) = (0, 0);
        let mut q = self.shared.lock();
        for line in lines.split_inclusive(|&b| b == b'\n') {
            let len = line.len() + usize::from(!line.ends_with(b"\n"));
            if udp && len > UDP_MAX_LINE {
                dropped += 1;
                continue;
            }
            if q.held >= cap {
                dropped += 1;
                if q.lines.pop_front().is_none() {
                    // Everything held is being written: the new line gives way.
                    continue;
                }
                q.held -= 1;
            }
            let mut owned = Vec::with_capacity(line.len() + 1);
            owned.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                owned.push(b'\n');
            }
            q.lines.push_back(owned);
            q.held += 1;
            queued += 1;
        }
        self.shared
            .stats
            .queued
            .store(q.held as u64, Ordering::Relaxed);
        drop(q);
        CollectorStats::add(&self.shared.stats.dropped, dropped);
        if queued > 0 {
            self.shared.wake.notify_one();
        }
        (queued, dropped)
    }

    /// Waits up to `timeout` until every queued line is delivered (or dropped); returns
    /// whether the queue is empty.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.shared.stats.queued.load(Ordering::Relaxed) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Delivers what is held for up to `timeout`, drops (and counts) the rest, stops the
    /// sender and returns the final counters.
    pub fn close(mut self, timeout: Duration) -> CollectorCounters {
        self.stop(timeout);
        self.shared.stats.snapshot()
    }

    fn stop(&mut self, timeout: Duration) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + timeout;
        self.shared.lock().closing = Some(deadline);
        self.shared.wake.notify_all();
        // The sender stops at the deadline unless stuck in name resolution or a connect:
        // then leave it behind rather than hold up the daemon's exit.
        let grace = timeout + Duration::from_secs(1);
        match self.exited.recv_timeout(grace) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                log::warn!("{}: sender thread did not stop in time", self.describe());
            }
            _ => {
                if thread.join().is_err() {
                    log::warn!("{}: sender thread panicked", self.describe());
                }
            }
        }
        // Whatever the sender left (it stops at the deadline) is lost.
        let mut q = self.shared.lock();
        let left = q.held;
        q.lines.clear();
        q.held = 0;
        self.shared.stats.queued.store(0, Ordering::Relaxed);
        drop(q);
        CollectorStats::add(&self.shared.stats.dropped, left);
        if left > 0 {
            log::warn!("{}: {left} events not delivered at close", self.describe());
        }
    }
}

impl Drop for CollectorSink {
    fn drop(&mut self) {
        let timeout = self.config.close_timeout;
        self.stop(timeout);
    }
}

impl Sink for CollectorSink {
    fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            // The caller counts the whole batch as lost.
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "collector sender thread is gone",
            ));
        }
        self.enqueue(lines);
        Ok(())
    }

    fn describe(&self) -> String {
        let kind = match self.config.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        };
        format!("{kind} collector {}", self.config.address)
    }

    fn dropped(&self) -> u64 {
        self.shared.stats.dropped.load(Ordering::Relaxed)
    }

    fn stats(&self) -> Value {
        serde_json::to_value(self.counters()).unwrap_or(Value::Null)
    }

    fn finish(&mut self) {
        let timeout = self.config.close_timeout;
        self.stop(timeout);
    }
}

/// A shared handle on a collector sink's counters.
#[derive(Clone)]
pub struct CollectorHandle(Arc<Shared>);

impl CollectorHandle {
    /// The counters now.
    pub fn counters(&self) -> CollectorCounters {
        self.0.stats.snapshot()
    }
}

impl std::fmt::Debug for CollectorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.counters().fmt(f)
    }
}

/// What [`wait_lines`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// Lines are queued.
    Lines,
    /// Nothing came within the wait.
    Idle,
    /// The sink is closing and nothing is queued: stop.
    Done,
}

/// Waits up to `wait` for queued lines, without taking them: lines stay in the queue (and
/// can be pushed out by newer ones) until there is a way to send them.
fn wait_lines(shared: &Shared, wait: Duration) -> Waited {
    let mut q = shared.lock();
    if q.lines.is_empty() {
        if q.closing.is_some() {
            return Waited::Done;
        }
        q = shared
            .wake
            .wait_timeout(q, wait)
            .map(|(q, _)| q)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    match (q.lines.is_empty(), q.closing.is_some()) {
        (false, _) => Waited::Lines,
        (true, true) => Waited::Done,
        (true, false) => Waited::Idle,
    }
}

/// Moves queued lines into `chunk`: at least one if any is queued, then as many as fit in
/// `max` bytes.
fn take_lines(shared: &Shared, chunk: &mut Chunk, max: usize) {
    let mut q = shared.lock();
    while let Some(line) = q.lines.front() {
        if !chunk.ends.is_empty() && chunk.buf.len() + line.len() > max {
            break;
        }
        let line = q.lines.pop_front().unwrap_or_default();
        chunk.push(&line);
    }
}

/// Lines being written: their bytes back to back and where each ends.
#[derive(Default)]
struct Chunk {
    buf: Vec<u8>,
    ends: Vec<usize>,
    /// Bytes of `buf` written on the current connection.
    written: usize,
    /// Bytes of `buf` ever written (on this or an earlier connection): those lines are
    /// resends if written again.
    ever_written: usize,
}

impl Chunk {
    fn push(&mut self, line: &[u8]) {
        self.buf.extend_from_slice(line);
        self.ends.push(self.buf.len());
    }

    fn lines(&self) -> usize {
        self.ends.len()
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
        self.written = 0;
        self.ever_written = 0;
    }

    /// Removes the first `n` lines; returns how many bytes they took.
    fn drop_lines(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let cut = self.ends[n - 1];
        self.buf.drain(..cut);
        self.ends.drain(..n);
        for end in &mut self.ends {
            *end -= cut;
        }
        self.ever_written = self.ever_written.saturating_sub(cut);
        cut
    }

    /// Lines wholly within the first `bytes` bytes.
    fn whole_lines_in(&self, bytes: usize) -> usize {
        self.ends.partition_point(|&end| end <= bytes)
    }

    /// Lines at least partly within the first `bytes` bytes.
    fn lines_touched_by(&self, bytes: usize) -> usize {
        if bytes == 0 {
            0
        } else {
            self.ends.partition_point(|&end| end < bytes) + 1
        }
        .min(self.ends.len())
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// EOF: the collector read everything its kernel acknowledged.
    Clean,
    /// Reset, timeout or error: acknowledged data may have been discarded unread.
    Unclean,
}

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

struct TcpSender {
    config: CollectorConfig,
    shared: Arc<Shared>,
    conn: Option<Conn>,
    chunk: Chunk,
    backoff: Duration,
    /// When the next connect may be tried.
    next_connect: Instant,
    connections: u64,
}

impl TcpSender {
    fn new(config: CollectorConfig, shared: Arc<Shared>) -> TcpSender {
        TcpSender {
            backoff: config.backoff_min,
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

    fn run(mut self) {
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
                    self.backoff = self.config.backoff_min;
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
                if self.backoff == self.config.backoff_min {
                    log::warn!("{}: cannot connect: {e}", self.describe());
                }
                self.next_connect = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(self.config.backoff_max);
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
            self.next_connect = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(self.config.backoff_max);
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
        let mut nap = Duration::from_micros(200);
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
                // No event says "acknowledged": poll, backing off to 20 ms.
                if let Some(loss) = conn.wait_gone(nap) {
                    return Err(Some(loss));
                }
                nap = (nap * 2).min(Duration::from_millis(20));
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
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd; `info` is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
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
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(if rc == 0 { 0 } else { pfd.revents });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The UDP sender: one datagram per line, nothing resent.
fn run_udp(config: &CollectorConfig, shared: &Shared) {
    let mut socket: Option<UdpSocket> = None;
    let mut backoff = config.backoff_min;
    let mut chunk = Chunk::default();
    loop {
        match wait_lines(shared, IDLE_CHECK) {
            Waited::Done => break,
            Waited::Idle => continue,
            Waited::Lines => {}
        }
        if socket.is_none() {
            match udp_socket(&config.address) {
                Ok(s) => {
                    shared.stats.connected.store(true, Ordering::Relaxed);
                    backoff = config.backoff_min;
                    socket = Some(s);
                }
                Err(e) => {
                    if shared.closing().is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    log::warn!("udp collector {}: {e}", config.address);
                    shared.sleep(backoff);
                    backoff = (backoff * 2).min(config.backoff_max);
                    continue;
                }
            }
        }
        let Some(sock) = socket.as_ref() else {
            continue;
        };
        take_lines(shared, &mut chunk, 64 * 1024);
        let (mut sent, mut failed) = (0, 0);
        let mut start = 0;
        for &end in &chunk.ends {
            let line = &chunk.buf[start..end];
            start = end;
            // A pending ICMP error (port unreachable) fails one send: try once more.
            let ok = match sock.send(line) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => sock.send(line),
                other => other,
            }
            .is_ok();
            if ok { sent += 1 } else { failed += 1 }
        }
        chunk.clear();
        shared.delivered(sent);
        shared.dropped(failed);
    }
    let n = chunk.lines();
    shared.dropped(n);
    shared.stats.connected.store(false, Ordering::Relaxed);
}

fn udp_socket(address: &str) -> io::Result<UdpSocket> {
    let addr = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing"))?;
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(addr)?;
    socket.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use std::{
        io::Read,
        net::{Shutdown, TcpListener},
    };

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn line(n: usize) -> String {
        format!("{{\"n\":{n}}}\n")
    }

    fn lines(range: std::ops::Range<usize>) -> String {
        range.map(line).collect()
    }

    /// A loopback port nobody listens on (for now).
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn tcp_sink(port: u16, queue: usize, confirm: Duration) -> CollectorSink {
        let mut config = CollectorConfig::new(Transport::Tcp, &format!("127.0.0.1:{port}"));
        config.queue = queue;
        config.confirm = confirm;
        config.close_timeout = Duration::from_millis(300);
        CollectorSink::start(config).unwrap()
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads from `stream` until `want` complete lines have arrived (raw reads: what was
    /// read is what the collector application got).
    fn read_lines(stream: &mut TcpStream, want: usize) -> String {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.iter().filter(|&&b| b == b'\n').count() < want {
            let n = stream.read(&mut buf).expect("collector read");
            assert!(
                n > 0,
                "sink closed early after {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    /// Bytes that have arrived on `stream` and not been read (`FIONREAD`).
    fn unread_bytes(stream: &TcpStream) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: valid fd; FIONREAD writes one int.
        let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0, "FIONREAD: {}", io::Error::last_os_error());
        usize::try_from(n).unwrap()
    }

    /// Reads whatever else arrives within `quiet`.
    fn read_more(stream: &mut TcpStream, quiet: Duration) -> String {
        stream.set_read_timeout(Some(quiet)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn chunk_bookkeeping() {
        let mut c = Chunk::default();
        for l in ["ab\n", "cde\n", "f\n"] {
            c.push(l.as_bytes());
        }
        assert_eq!(c.ends, [3, 7, 9]);
        assert_eq!(c.whole_lines_in(0), 0);
        assert_eq!(c.whole_lines_in(6), 1);
        assert_eq!(c.whole_lines_in(7), 2);
        assert_eq!(c.lines_touched_by(0), 0);
        assert_eq!(c.lines_touched_by(3), 1);
        assert_eq!(c.lines_touched_by(4), 2);
        assert_eq!(c.lines_touched_by(100), 3);
        c.ever_written = 5;
        assert_eq!(c.drop_lines(1), 3);
        assert_eq!(
            (c.buf.as_slice(), c.ends.as_slice()),
            (&b"cde\nf\n"[..], &[4, 6][..])
        );
        assert_eq!(c.ever_written, 2);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let port = free_port();
        let sink = tcp_sink(port, 10, Duration::ZERO);
        let handle = sink.handle();
        assert_eq!(sink.enqueue(lines(0..15).as_bytes()), (15, 5));
        let c = handle.counters();
        assert_eq!(
            (c.queued, c.dropped, c.sent, c.connected),
            (10, 5, 0, false)
        );

        // The collector appears: the ten newest lines arrive, in order.
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        assert_eq!(read_lines(&mut stream, 10), lines(5..15));
        wait_for("delivery", || handle.counters().sent == 10);
        let c = sink.close(Duration::from_millis(500));
        assert_eq!((c.queued, c.dropped, c.sent, c.reconnects), (0, 5, 10, 0));
        assert_eq!(read_more(&mut stream, Duration::from_millis(500)), "");
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

    #[test]
    fn close_counts_what_was_never_delivered() {
        let sink = tcp_sink(free_port(), 100, Duration::ZERO);
        sink.enqueue(lines(0..7).as_bytes());
        let started = Instant::now();
        let c = sink.close(Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!((c.dropped, c.queued, c.sent), (7, 0, 0));
    }

    #[test]
    fn write_batch_never_waits_for_the_collector() {
        // A collector that accepts but never reads: the kernel buffers fill up, the sender
        // blocks, and the caller still only queues.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut sink = tcp_sink(port, 1000, Duration::ZERO);
        let big = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(60_000));
        // The sink connects once there is something to send.
        sink.write_batch(big.as_bytes()).unwrap();
        let (_stream, _) = listener.accept().unwrap();
        let started = Instant::now();
        for _ in 0..200 {
            sink.write_batch(big.as_bytes()).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let c = sink.counters();
        assert!(c.queued > 0 && c.queued <= 1000, "{c:?}");
        drop(sink);
    }

    #[test]
    fn udp_sends_one_datagram_per_line() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let addr = collector.local_addr().unwrap().to_string();
        let mut sink = CollectorSink::start(CollectorConfig::new(Transport::Udp, &addr)).unwrap();
        let long = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(UDP_MAX_LINE));
        let batch = format!("{}{}{long}{{\"n\":3}}", line(1), line(2));
        sink.write_batch(batch.as_bytes()).unwrap();
        let mut buf = vec![0u8; 70_000];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = collector.recv(&mut buf).unwrap();
            got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        assert_eq!(got, [line(1), line(2), line(3)]);
        wait_for("counters", || sink.counters().sent == 3);
        assert_eq!(sink.dropped(), 1, "the oversized line");
        // A datagram of exactly the limit still goes.
        let max = format!("{}\n", "y".repeat(UDP_MAX_LINE - 1));
        sink.write_batch(max.as_bytes()).unwrap();
        assert_eq!(collector.recv(&mut buf).unwrap(), UDP_MAX_LINE);
        let c = sink.close(Duration::from_secs(1));
        assert_eq!((c.sent, c.dropped, c.queued), (4, 1, 0));
    }

    #[test]
    fn fanout_counts_what_a_collector_drops() {
        use crate::events::{
            ActionType, Clock, Direction, EventFactory, FlowEnds,
            sink::{Fanout, Sink},
        };
        let sink = tcp_sink(free_port(), 3, Duration::ZERO);
        let handle = sink.handle();
        let mut fanout = Fanout::new(vec![Box::new(sink) as Box<dyn Sink>]);
        let mut f = EventFactory::new("h", "id", Clock::anchored(std::time::UNIX_EPOCH));
        let flow = FlowEnds {
            client: ("198.18.0.1".parse().unwrap(), 40000),
            server: ("198.18.0.2".parse().unwrap(), 443),
            direction: Direction::Outbound,
        };
        let mut events: Vec<_> = (0..5)
            .map(|_| f.connection(ActionType::ConnectionSuccess, 0, &flow))
            .collect();
        fanout.publish(&mut events);
        assert_eq!((fanout.written, fanout.dropped()), (5, 2));
        assert_eq!(handle.counters().queued, 3);
        let stats = fanout.sink_stats();
        assert_eq!(stats[0]["stats"]["dropped"], 2, "{stats}");
        assert!(
            stats[0]["sink"]
                .as_str()
                .unwrap()
                .starts_with("tcp collector")
        );
    }
}
