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

mod queue;
mod tcp;
mod udp;

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::Value;

use self::{queue::Shared, tcp::TcpSender, udp::run_udp};
use super::sink::Sink;

/// The longest line sent as one UDP datagram (the IPv4 payload limit), newline included.
pub const UDP_MAX_LINE: usize = 65_507;

/// How often an idle sender checks that its connection is still open.
const IDLE_CHECK: Duration = Duration::from_millis(200);

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
    /// TCP or UDP.
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
    /// The longest wait between connect attempts.
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

/// Waits between attempts: `min` first, doubled after each attempt up to `max`, and
/// `min` again after a success.
#[derive(Debug, Clone)]
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The wait before the next attempt; the one after is twice as long, up to `max`.
    fn next(&mut self) -> Duration {
        let wait = self.current;
        self.current = (self.current * 2).min(self.max);
        wait
    }

    /// Back to `min`, after a success.
    fn reset(&mut self) {
        self.current = self.min;
    }

    /// Whether the next wait is `min` (nothing failed since the last reset).
    fn is_reset(&self) -> bool {
        self.current == self.min
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
        let shared = Arc::new(Shared::new());
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
        let max_line = (self.config.transport == Transport::Udp).then_some(UDP_MAX_LINE);
        self.shared.push(lines, self.config.queue.max(1), max_line)
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
        self.shared.close_at(deadline);
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
        let left = self.shared.abandon();
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
        if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
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

#[cfg(test)]
mod testutil {
    use std::{
        io::Read,
        net::{TcpListener, TcpStream},
        thread,
        time::{Duration, Instant},
    };

    use super::{CollectorConfig, CollectorSink, Transport};

    pub(super) const WAIT: Duration = Duration::from_secs(10);

    pub(super) fn line(n: usize) -> String {
        format!("{{\"n\":{n}}}\n")
    }

    pub(super) fn lines(range: std::ops::Range<usize>) -> String {
        range.map(line).collect()
    }

    /// A loopback port nobody listens on (for now).
    pub(super) fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    pub(super) fn tcp_sink(port: u16, queue: usize, confirm: Duration) -> CollectorSink {
        let mut config = CollectorConfig::new(Transport::Tcp, &format!("127.0.0.1:{port}"));
        config.queue = queue;
        config.confirm = confirm;
        config.close_timeout = Duration::from_millis(300);
        CollectorSink::start(config).unwrap()
    }

    pub(super) fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads from `stream` until `want` complete lines have arrived (raw reads: what was
    /// read is what the collector application got).
    pub(super) fn read_lines(stream: &mut TcpStream, want: usize) -> String {
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

    /// Reads whatever else arrives within `quiet`.
    pub(super) fn read_more(stream: &mut TcpStream, quiet: Duration) -> String {
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
}

#[cfg(test)]
mod tests {
    use std::{
        net::TcpListener,
        time::{Duration, Instant},
    };

    use super::{
        Backoff,
        testutil::{free_port, lines, tcp_sink},
    };
    use crate::events::sink::Sink;

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        assert!(b.is_reset());
        let waits: Vec<_> = (0..5).map(|_| b.next()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        assert!(!b.is_reset());
        b.reset();
        assert!(b.is_reset());
        assert_eq!(b.next(), ms(100));
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
            transport: crate::events::Transport::Tcp,
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
