//! A sink that hands event lines to another part of the sensor (the fleet's stream
//! publisher) through a bounded queue: the verdict loop only appends; when the queue is
//! full the oldest line is dropped for each new one and counted, as the collectors do.
//! Each line gets a sequence number when it is queued, so that a resend after a
//! reconnect carries the same message id and the receiver can drop the duplicate.

use std::{
    collections::VecDeque,
    io,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Duration,
};

use serde_json::{Value, json};

use super::sink::Sink;

/// One queued line and its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1 for the first line queued, then one more for each.
    pub seq: u64,
    /// The JSON line, without its newline.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    lines: VecDeque<Line>,
    next_seq: u64,
    dropped: u64,
    delivered: u64,
    closed: bool,
}

/// The queue, shared by the sink and its consumer.
#[derive(Debug, Clone)]
pub struct Outbox {
    shared: Arc<(Mutex<State>, Condvar)>,
    cap: usize,
}

impl Outbox {
    /// An empty queue of at most `cap` lines.
    pub fn new(cap: usize) -> Outbox {
        Outbox {
            shared: Arc::new((Mutex::new(State::default()), Condvar::new())),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues every line of `batch`; drops the oldest when full.
    pub fn push(&self, batch: &[u8]) {
        let mut s = self.lock();
        for line in batch.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if s.lines.len() >= self.cap {
                s.lines.pop_front();
                s.dropped += 1;
            }
            s.next_seq += 1;
            let seq = s.next_seq;
            s.lines.push_back(Line {
                seq,
                bytes: line.to_vec(),
            });
        }
        drop(s);
        self.shared.1.notify_all();
    }

    /// Up to `max` of the oldest lines, left in the queue until [`Outbox::delivered`];
    /// waits up to `wait` for one. Empty when closed and drained.
    pub fn peek(&self, max: usize, wait: Duration) -> Vec<Line> {
        let mut s = self.lock();
        if s.lines.is_empty() && !s.closed {
            s = self
                .shared
                .1
                .wait_timeout(s, wait)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        s.lines.iter().take(max).cloned().collect()
    }

    /// The lines up to and including `seq` were delivered: they leave the queue.
    pub fn delivered(&self, seq: u64) {
        let mut s = self.lock();
        while s.lines.front().is_some_and(|l| l.seq <= seq) {
            s.lines.pop_front();
            s.delivered += 1;
        }
    }

    /// No more lines come; wakes the consumer.
    pub fn close(&self) {
        self.lock().closed = true;
        self.shared.1.notify_all();
    }

    /// Gives up the lines still queued (the sensor stops): they count as dropped.
    /// Returns how many.
    pub fn abandon(&self) -> usize {
        let mut s = self.lock();
        let n = s.lines.len();
        s.lines.clear();
        s.dropped += n as u64;
        n
    }

    /// Lines dropped, lines delivered, and lines still queued.
    pub fn counts(&self) -> (u64, u64, usize) {
        let s = self.lock();
        (s.dropped, s.delivered, s.lines.len())
    }
}

/// The [`Sink`] side of an [`Outbox`].
pub struct OutboxSink {
    outbox: Outbox,
    name: String,
}

impl OutboxSink {
    /// A sink feeding `outbox`, described as `name`.
    pub fn new(outbox: Outbox, name: String) -> OutboxSink {
        OutboxSink { outbox, name }
    }
}

impl Sink for OutboxSink {
    fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
        self.outbox.push(lines);
        Ok(())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn dropped(&self) -> u64 {
        self.outbox.counts().0
    }

    fn stats(&self) -> Value {
        let (dropped, delivered, queued) = self.outbox.counts();
        json!({ "dropped": dropped, "delivered": delivered, "queued": queued })
    }

    fn finish(&mut self) {
        self.outbox.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_stay_until_delivered_and_the_oldest_are_dropped_when_full() {
        let outbox = Outbox::new(3);
        outbox.push(b"a\nb\n");
        let got = outbox.peek(10, Duration::ZERO);
        assert_eq!(got.iter().map(|l| l.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            outbox.peek(10, Duration::ZERO).len(),
            2,
            "not taken by a peek"
        );
        outbox.delivered(1);
        outbox.push(b"c\nd\ne\n");
        let got = outbox.peek(10, Duration::ZERO);
        assert_eq!(got.iter().map(|l| l.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(got[0].bytes, b"c");
        assert_eq!(outbox.counts(), (1, 1, 3));
        assert_eq!(outbox.abandon(), 3);
        assert_eq!(
            outbox.counts(),
            (4, 1, 0),
            "abandoned lines count as dropped"
        );
    }
}
