//! The bounded queue between [`CollectorSink::enqueue`](super::CollectorSink::enqueue)
//! and the sender thread, and the chunk of lines the sender holds.

use std::{
    collections::VecDeque,
    sync::{Condvar, Mutex, MutexGuard, atomic::Ordering},
    time::{Duration, Instant},
};

use super::CollectorStats;

/// The queue between `write_batch` and the sender thread.
struct Queue {
    lines: VecDeque<Vec<u8>>,
    /// Lines queued plus lines the sender holds (written, not confirmed).
    held: usize,
    /// Set when the sink is dropped: deliver what is held until then, then stop.
    closing: Option<Instant>,
}

/// What the sink and its sender thread share.
pub(super) struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    pub(super) stats: CollectorStats,
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            queue: Mutex::new(Queue {
                lines: VecDeque::new(),
                held: 0,
                closing: None,
            }),
            wake: Condvar::new(),
            stats: CollectorStats::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic elsewhere cannot leave the queue half-updated: keep going.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues whole lines (a final line without a newline gets one), dropping the oldest
    /// queued lines beyond `cap` held and lines longer than `max_line` (newline included);
    /// returns how many were queued and how many lines (old or new) were dropped, and
    /// counts the drops. Never waits for the sender beyond the lock.
    pub(super) fn push(&self, lines: &[u8], cap: usize, max_line: Option<usize>) -> (usize, usize) {
        let (mut queued, mut dropped) = (0, 0);
        let mut q = self.lock();
        for line in lines.split_inclusive(|&b| b == b'\n') {
            let len = line.len() + usize::from(!line.ends_with(b"\n"));
            if max_line.is_some_and(|max| len > max) {
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
        self.stats.queued.store(q.held as u64, Ordering::Relaxed);
        drop(q);
        CollectorStats::add(&self.stats.dropped, dropped);
        if queued > 0 {
            self.wake.notify_one();
        }
        (queued, dropped)
    }

    /// Tells the sender to deliver what is held until `deadline`, then stop.
    pub(super) fn close_at(&self, deadline: Instant) {
        self.lock().closing = Some(deadline);
        self.wake.notify_all();
    }

    /// Writes off everything still held (the sender has stopped or was left behind):
    /// counts it as dropped and returns how many lines that was.
    pub(super) fn abandon(&self) -> usize {
        let mut q = self.lock();
        let left = q.held;
        q.lines.clear();
        q.held = 0;
        self.stats.queued.store(0, Ordering::Relaxed);
        drop(q);
        CollectorStats::add(&self.stats.dropped, left);
        left
    }

    /// `n` lines the sender held are settled (delivered or dropped).
    pub(super) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut q = self.lock();
        // Saturating: a sender left behind at close may settle lines already written off.
        q.held = q.held.saturating_sub(n);
        self.stats.queued.store(q.held as u64, Ordering::Relaxed);
    }

    pub(super) fn delivered(&self, n: usize) {
        CollectorStats::add(&self.stats.sent, n);
        self.release(n);
    }

    pub(super) fn dropped(&self, n: usize) {
        CollectorStats::add(&self.stats.dropped, n);
        self.release(n);
    }

    pub(super) fn closing(&self) -> Option<Instant> {
        self.lock().closing
    }

    /// Sleeps up to `d`, waking early when the sink is being closed.
    pub(super) fn sleep(&self, d: Duration) {
        let q = self.lock();
        if q.closing.is_none() {
            let _ = self.wake.wait_timeout(q, d);
        }
    }
}

/// What [`wait_lines`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waited {
    /// Lines are queued.
    Lines,
    /// Nothing came within the wait.
    Idle,
    /// The sink is closing and nothing is queued: stop.
    Done,
}

/// Waits up to `wait` for queued lines, without taking them: lines stay in the queue (and
/// can be pushed out by newer ones) until there is a way to send them.
pub(super) fn wait_lines(shared: &Shared, wait: Duration) -> Waited {
    let mut q = shared.lock();
    if q.lines.is_empty() {
        if q.closing.is_some() {
            return Waited::Done;
        }
        q = shared
            .wake
            .wait_timeout(q, wait)
            .map_or_else(|p| p.into_inner().0, |(q, _)| q);
    }
    match (q.lines.is_empty(), q.closing.is_some()) {
        (false, _) => Waited::Lines,
        (true, true) => Waited::Done,
        (true, false) => Waited::Idle,
    }
}

/// Moves queued lines into `chunk`: at least one if any is queued, then as many as fit in
/// `max` bytes.
pub(super) fn take_lines(shared: &Shared, chunk: &mut Chunk, max: usize) {
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
pub(super) struct Chunk {
    pub(super) buf: Vec<u8>,
    pub(super) ends: Vec<usize>,
    /// Bytes of `buf` written on the current connection.
    pub(super) written: usize,
    /// Bytes of `buf` ever written (on this or an earlier connection): those lines are
    /// resends if written again.
    pub(super) ever_written: usize,
}

impl Chunk {
    pub(super) fn push(&mut self, line: &[u8]) {
        self.buf.extend_from_slice(line);
        self.ends.push(self.buf.len());
    }

    pub(super) fn lines(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
        self.written = 0;
        self.ever_written = 0;
    }

    /// Removes the first `n` lines; returns how many bytes they took.
    pub(super) fn drop_lines(&mut self, n: usize) -> usize {
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
    pub(super) fn whole_lines_in(&self, bytes: usize) -> usize {
        self.ends.partition_point(|&end| end <= bytes)
    }

    /// Lines at least partly within the first `bytes` bytes.
    pub(super) fn lines_touched_by(&self, bytes: usize) -> usize {
        if bytes == 0 {
            0
        } else {
            self.ends.partition_point(|&end| end < bytes) + 1
        }
        .min(self.ends.len())
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, time::Duration};

    use super::Chunk;
    use crate::events::collector::testutil::{
        free_port, lines, read_lines, read_more, tcp_sink, wait_for,
    };

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
}
