//! The order in which ring-buffer records are handled: records a verdict waits for first,
//! the rest (connection records, pre-allowed payload, which wake nobody) after them, each
//! flow's own records always in ring order.
//!
//! Pre-allowed flows' records do not wake the daemon; they pile up until one that does. Fed
//! through the pipeline in ring order, that one would wait for all of them (several µs
//! each); put off here, it waits only for their copy. Which records are awaited is
//! [`Record::awaited`](crate::record::Record::awaited).

use std::collections::{HashMap, VecDeque};

use nprot_common::FlowKey;

/// Records put off, oldest first, and where each flow's are among them.
///
/// A flow's records are taken out early by tombstoning their slots (`None`), so that
/// every operation is O(1) per record, whatever the backlog's length.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Slot `i` holds the record put off `head + i`-th.
    queue: VecDeque<Option<Vec<u8>>>,
    /// How many records were taken from the front of `queue` so far.
    head: usize,
    /// Absolute positions (`head + i`) of each flow's records, oldest first.
    per_flow: HashMap<FlowKey, Vec<usize>>,
    /// Keys of the records, by absolute position (for `handle_oldest`).
    keys: VecDeque<FlowKey>,
    /// Records put off and not handled yet.
    held: usize,
    /// Buffers of records already handled, for reuse.
    spare: Vec<Vec<u8>>,
}

/// Most records handled from the backlog before the ring is looked at again.
pub const BACKLOG_CHUNK: usize = 32;

impl Backlog {
    /// Takes in the record `bytes` of flow `key` in ring order: one a verdict may wait for
    /// (`awaited`) goes first, right after that flow's own records put off, which
    /// `handle` gets now, oldest first; true then, and the caller handles the record
    /// itself. Any other record is put off (false).
    pub fn admit(
        &mut self,
        key: FlowKey,
        awaited: bool,
        bytes: &[u8],
        handle: impl FnMut(&[u8]),
    ) -> bool {
        if awaited {
            self.flush_flow(&key, handle);
        } else {
            self.push(key, bytes);
        }
        awaited
    }

    fn push(&mut self, key: FlowKey, bytes: &[u8]) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        let at = self.head + self.queue.len();
        self.queue.push_back(Some(buf));
        self.keys.push_back(key);
        self.per_flow.entry(key).or_default().push(at);
        self.held += 1;
    }

    /// Hands `handle` the records of flow `key` put off, oldest first, and forgets them.
    fn flush_flow(&mut self, key: &FlowKey, mut handle: impl FnMut(&[u8])) {
        let Some(positions) = self.per_flow.remove(key) else {
            return;
        };
        for at in positions {
            if let Some(buf) = at
                .checked_sub(self.head)
                .and_then(|i| self.queue.get_mut(i))
                .and_then(Option::take)
            {
                self.held -= 1;
                handle(&buf);
                self.spare.push(buf);
            }
        }
    }

    /// Hands `handle` up to `n` of the oldest records put off; true if any are left.
    pub fn handle_oldest(&mut self, n: usize, mut handle: impl FnMut(&[u8])) -> bool {
        let mut handled = 0;
        while handled < n {
            let (Some(slot), Some(key)) = (self.queue.pop_front(), self.keys.pop_front()) else {
                break;
            };
            let at = self.head;
            self.head += 1;
            // A tombstone: its flow was flushed already.
            let Some(buf) = slot else { continue };
            if let Some(positions) = self.per_flow.get_mut(&key) {
                positions.retain(|&p| p != at);
                if positions.is_empty() {
                    self.per_flow.remove(&key);
                }
            }
            self.held -= 1;
            handle(&buf);
            self.spare.push(buf);
            handled += 1;
        }
        self.held > 0
    }

    /// Records put off and not handled yet.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether nothing is put off.
    pub fn is_empty(&self) -> bool {
        self.held == 0
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

    /// Admits `records` (flow, awaited, name) and returns the order they were handled in.
    fn order(records: &[(u16, bool, &str)]) -> Vec<String> {
        let mut b = Backlog::default();
        let mut seen: Vec<String> = Vec::new();
        for &(flow, awaited, name) in records {
            let mut now = Vec::new();
            if b.admit(key(flow), awaited, name.as_bytes(), |r| {
                now.push(String::from_utf8_lossy(r).into_owned());
            }) {
                now.push(name.to_owned());
            }
            seen.extend(now);
        }
        while b.handle_oldest(1, |r| seen.push(String::from_utf8_lossy(r).into_owned())) {}
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
        seen
    }

    #[test]
    fn awaited_records_go_first_each_flow_in_ring_order() {
        // Flow 1 was pre-allowed (put off), flow 2 put off a connection record, flow 3's
        // payload is awaited: it goes first, after its own connection record only; a
        // second awaited record of flow 1 takes flow 1's earlier ones with it.
        let seen = order(&[
            (1, false, "1-established"),
            (1, false, "1-preallowed"),
            (2, false, "2-established"),
            (3, false, "3-established"),
            (3, true, "3-payload"),
            (1, true, "1-second-request"),
            (2, false, "2-closed"),
        ]);
        assert_eq!(
            seen,
            [
                "3-established",
                "3-payload",
                "1-established",
                "1-preallowed",
                "1-second-request",
                "2-established",
                "2-closed",
            ]
        );
    }

    #[test]
    fn the_oldest_come_out_in_chunks_and_flushed_slots_are_skipped() {
        let mut b = Backlog::default();
        for (flow, name) in [(1, "a1"), (2, "b1"), (1, "a2"), (3, "c1")] {
            assert!(!b.admit(key(flow), false, name.as_bytes(), |_| {}));
        }
        assert_eq!(b.len(), 4);
        let mut seen = Vec::new();
        assert!(b.admit(key(1), true, b"a3", |r| seen.push(r.to_vec())));
        assert_eq!(seen, [b"a1".to_vec(), b"a2".to_vec()]);
        assert_eq!(b.len(), 2);
        seen.clear();
        assert!(b.handle_oldest(1, |r| seen.push(r.to_vec())));
        assert!(!b.handle_oldest(BACKLOG_CHUNK, |r| seen.push(r.to_vec())));
        assert_eq!(seen, [b"b1".to_vec(), b"c1".to_vec()]);
        assert!(b.is_empty());
        // Nothing put off for a flow: an awaited record of it flushes nothing.
        assert!(b.admit(key(9), true, b"x", |_| panic!("nothing was put off")));
        // A flow put off again after a flush is tracked afresh.
        assert!(!b.admit(key(1), false, b"a4", |_| {}));
        let mut again = Vec::new();
        assert!(b.admit(key(1), true, b"a5", |r| again.push(r.to_vec())));
        assert_eq!(again, [b"a4".to_vec()]);
    }
}
