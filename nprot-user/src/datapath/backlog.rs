//! The order in which ring-buffer records are handled: records a verdict waits for first,
//! the rest (connection records, pre-allowed payload, which wake nobody) after them, each
//! flow's own records always in ring order.
//!
//! Pre-allowed flows' records do not wake the daemon; they pile up until one that does. Fed
//! through the pipeline in ring order, that one would wait for all of them (several µs
//! each); put off here, it waits only for their copy.

use std::collections::{HashMap, VecDeque};

use nprot_common::{FlowKey, RecordKind};

use crate::record::{Prefiltered, Record};

/// Records put off, oldest first, and how many each flow has among them.
#[derive(Debug, Default)]
pub struct Backlog {
    queue: VecDeque<(FlowKey, Vec<u8>)>,
    per_flow: HashMap<FlowKey, usize>,
    /// Buffers of records already handled, for reuse.
    spare: Vec<Vec<u8>>,
}

/// Most records handled from the backlog before the ring is looked at again.
pub const BACKLOG_CHUNK: usize = 32;

/// Whether a verdict waits for this record: client payload the kernel did not pre-allow
/// (it holds the server's answer until the daemon decides).
pub fn awaited(rec: &Record<'_>) -> bool {
    rec.kind == RecordKind::Payload && rec.prefilter != Prefiltered::Allowed
}

impl Backlog {
    /// Puts off the record `bytes` of flow `key`.
    pub fn push(&mut self, key: FlowKey, bytes: &[u8]) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        self.queue.push_back((key, buf));
        *self.per_flow.entry(key).or_default() += 1;
    }

    /// Whether flow `key` has records put off.
    pub fn holds(&self, key: &FlowKey) -> bool {
        self.per_flow.contains_key(key)
    }

    /// Hands `handle` the records of flow `key` put off, oldest first, and forgets them.
    pub fn flush_flow(&mut self, key: &FlowKey, mut handle: impl FnMut(&[u8])) {
        let Some(mut left) = self.per_flow.remove(key) else {
            return;
        };
        let mut i = 0;
        while left > 0 && i < self.queue.len() {
            if self.queue[i].0 == *key {
                if let Some((_, buf)) = self.queue.remove(i) {
                    handle(&buf);
                    self.spare.push(buf);
                }
                left -= 1;
            } else {
                i += 1;
            }
        }
    }

    /// Hands `handle` up to `n` of the oldest records put off; true if any are left.
    pub fn handle_oldest(&mut self, n: usize, mut handle: impl FnMut(&[u8])) -> bool {
        for _ in 0..n {
            let Some((key, buf)) = self.queue.pop_front() else {
                break;
            };
            if let Some(count) = self.per_flow.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.per_flow.remove(&key);
                }
            }
            handle(&buf);
            self.spare.push(buf);
        }
        !self.queue.is_empty()
    }

    /// Records put off.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is put off.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u16) -> FlowKey {
        FlowKey {
            lo_port: n,
            ..FlowKey::default()
        }
    }

    #[test]
    fn a_flow_flushed_early_keeps_its_order_and_the_rest_theirs() {
        let mut b = Backlog::default();
        b.push(key(1), b"a1");
        b.push(key(2), b"b1");
        b.push(key(1), b"a2");
        b.push(key(3), b"c1");
        assert!(b.holds(&key(1)));
        let mut seen = Vec::new();
        b.flush_flow(&key(1), |r| seen.push(r.to_vec()));
        assert_eq!(seen, [b"a1".to_vec(), b"a2".to_vec()]);
        assert!(!b.holds(&key(1)));
        assert_eq!(b.len(), 2);
        seen.clear();
        assert!(b.handle_oldest(1, |r| seen.push(r.to_vec())));
        assert!(!b.handle_oldest(BACKLOG_CHUNK, |r| seen.push(r.to_vec())));
        assert_eq!(seen, [b"b1".to_vec(), b"c1".to_vec()]);
        assert!(b.is_empty());
        assert!(!b.holds(&key(2)) && !b.holds(&key(3)));
        // Nothing held: nothing to flush.
        b.flush_flow(&key(9), |_| panic!("nothing was put off"));
    }
}
