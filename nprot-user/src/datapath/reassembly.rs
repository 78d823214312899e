//! Flow reassembly: puts each flow's captured client segments back in sequence order.
//!
//! Only the first bytes of a flow matter to nprot, so a stream is bounded (`limit`), and
//! the table of streams is bounded too; what does not fit is counted, never grown. A
//! few streams at a time may hold more than the usual bound while a large item (a long
//! request head) is incomplete ([`Reassembler::raise_limit`]).

use std::collections::{BTreeMap, HashMap};

use nprot_common::FlowKey;

/// Out-of-order segments kept per stream at most.
const MAX_PENDING_SEGMENTS: usize = 64;

/// Streams whose limit is raised at once at most, by default: this bounds what large
/// heads can make the table hold (1024 × 68 KiB is 68 MiB), however many are sent.
pub const MAX_RAISED_STREAMS: usize = 1024;

/// The client→server byte stream of one flow, from its first payload byte.
#[derive(Debug)]
pub struct Stream {
    /// Sequence number of the flow's first client byte, which tells one connection on a
    /// four-tuple from the next.
    origin: u32,
    base_seq: u32,
    limit: usize,
    data: Vec<u8>,
    /// Segments beyond a gap, by offset from `base_seq`.
    pending: BTreeMap<usize, Vec<u8>>,
}

impl Stream {
    /// A stream whose first byte has sequence number `base_seq`, holding `limit` bytes at most.
    pub fn new(base_seq: u32, limit: usize) -> Stream {
        Stream::starting(base_seq, base_seq, limit)
    }

    /// A stream of the flow whose first byte is `origin`, from `base_seq` on (what comes
    /// before it is decided).
    pub fn starting(origin: u32, base_seq: u32, limit: usize) -> Stream {
        Stream {
            origin,
            base_seq,
            limit,
            data: Vec::new(),
            pending: BTreeMap::new(),
        }
    }

    /// The in-order bytes received so far.
    pub fn contiguous(&self) -> &[u8] {
        &self.data
    }

    /// True once `limit` in-order bytes are held: nothing more can be added.
    pub fn is_full(&self) -> bool {
        self.data.len() >= self.limit
    }

    /// Sequence number just past the in-order bytes.
    pub fn end_seq(&self) -> u32 {
        self.base_seq.wrapping_add(self.data.len() as u32)
    }

    /// Adds a segment; returns whether the in-order prefix grew.
    ///
    /// Retransmitted and overlapping bytes are dropped in favour of those already held
    /// (first copy wins, as most receivers do); bytes before the stream start or past
    /// `limit` are ignored.
    pub fn insert(&mut self, seq: u32, bytes: &[u8]) -> bool {
        let rel = seq.wrapping_sub(self.base_seq);
        let (offset, bytes) = if rel > u32::MAX / 2 {
            // Starts before the stream: keep only what lies after the start.
            let skip = self.base_seq.wrapping_sub(seq) as usize;
            if skip >= bytes.len() {
                return false;
            }
            (0, &bytes[skip..])
        } else {
            (rel as usize, bytes)
        };
        if offset >= self.limit {
            return false;
        }
        let bytes = &bytes[..bytes.len().min(self.limit - offset)];
        if bytes.is_empty() {
            return false;
        }

        if offset > self.data.len() {
            if self.pending.len() < MAX_PENDING_SEGMENTS {
                let keep = self
                    .pending
                    .get(&offset)
                    .is_none_or(|held| held.len() < bytes.len());
                if keep {
                    self.pending.insert(offset, bytes.to_vec());
                }
            }
            return false;
        }
        let before = self.data.len();
        self.append_at(offset, bytes);
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > self.data.len() {
                break;
            }
            let (off, seg) = entry.remove_entry();
            self.append_at(off, &seg);
        }
        self.data.len() > before
    }

    /// Sequence number of the first byte of [`Stream::contiguous`].
    pub fn base_seq(&self) -> u32 {
        self.base_seq
    }

    /// Moves the start of the stream `n` bytes on: the bytes a caller has dealt with
    /// (a request and its body), possibly more than have arrived, in which case the rest
    /// is skipped as it comes. The `limit` then counts from the new start.
    pub fn advance(&mut self, n: usize) {
        let old_base = self.base_seq;
        // Sequence space wraps at 2^32; a skip that large is not a real request anyway.
        self.base_seq = old_base.wrapping_add(n as u32);
        if n <= self.data.len() {
            self.data.drain(..n);
        } else {
            self.data.clear();
        }
        for (offset, seg) in std::mem::take(&mut self.pending) {
            self.insert(old_base.wrapping_add(offset as u32), &seg);
        }
    }

    fn append_at(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        if end > self.data.len() {
            let new_from = self.data.len() - offset;
            self.data.extend_from_slice(&bytes[new_from..]);
        }
    }
}

/// The reassembly table has no room for another flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// Streams of the flows under inspection.
#[derive(Debug)]
pub struct Reassembler<T> {
    streams: HashMap<FlowKey, (Stream, T)>,
    max_flows: usize,
    stream_limit: usize,
    /// Streams whose limit is above `stream_limit` now, and how many may be.
    raised: usize,
    max_raised: usize,
    /// Flows not reassembled because the table was full.
    pub overflows: u64,
    /// Streams dropped because a new connection on their four-tuple began.
    pub superseded: u64,
}

impl<T> Reassembler<T> {
    /// A table of at most `max_flows` streams of `stream_limit` bytes each.
    pub fn new(max_flows: usize, stream_limit: usize) -> Reassembler<T> {
        Reassembler {
            streams: HashMap::new(),
            max_flows,
            stream_limit,
            raised: 0,
            max_raised: MAX_RAISED_STREAMS,
            overflows: 0,
            superseded: 0,
        }
    }

    /// Lets at most `n` streams at once hold more than the table's stream limit.
    pub fn with_max_raised(mut self, n: usize) -> Reassembler<T> {
        self.max_raised = n;
        self
    }

    /// Lets the stream of `key` hold `limit` bytes, more than the table's stream limit,
    /// while a large item in it is incomplete. False if the flow has no stream, or too
    /// many streams are raised already (the stream keeps its limit).
    pub fn raise_limit(&mut self, key: &FlowKey, limit: usize) -> bool {
        let (default, raised, max) = (self.stream_limit, self.raised, self.max_raised);
        let Some((stream, _)) = self.streams.get_mut(key) else {
            return false;
        };
        if stream.limit > default {
            stream.limit = stream.limit.max(limit);
            return true;
        }
        if raised >= max || limit <= default {
            return false;
        }
        stream.limit = limit;
        self.raised += 1;
        true
    }

    /// Puts the stream of `key` back to the table's stream limit (bytes already held
    /// past it stay).
    pub fn lower_limit(&mut self, key: &FlowKey) {
        // Called for most segments: no lookup while no stream is raised.
        if self.raised == 0 {
            return;
        }
        if let Some((stream, _)) = self.streams.get_mut(key)
            && stream.limit > self.stream_limit
        {
            stream.limit = self.stream_limit;
            self.raised -= 1;
        }
    }

    /// Streams whose limit is raised now.
    pub fn raised(&self) -> usize {
        self.raised
    }

    /// Accounts for a stream leaving the table.
    fn gone(&mut self, stream: &Stream) {
        if stream.limit > self.stream_limit {
            self.raised -= 1;
        }
    }

    /// Adds a segment of flow `key`, creating its stream (with `meta`) on first sight.
    /// Returns the stream and whether its in-order prefix grew, or `Err(TableFull)` if
    /// the flow has no stream and no room for one.
    pub fn insert(
        &mut self,
        key: FlowKey,
        (origin, base_seq): (u32, u32),
        seq: u32,
        bytes: &[u8],
        meta: impl FnOnce() -> T,
    ) -> Result<(&mut (Stream, T), bool), TableFull> {
        if !self.streams.contains_key(&key) && self.streams.len() >= self.max_flows {
            self.overflows += 1;
            return Err(TableFull);
        }
        let limit = self.stream_limit;
        // A stream left by an earlier connection on the same four-tuple (whose end was
        // not reported) gives way to the new one.
        if self
            .streams
            .get(&key)
            .is_some_and(|(s, _)| s.origin != origin)
            && let Some((old, _)) = self.streams.remove(&key)
        {
            self.gone(&old);
            self.superseded += 1;
        }
        let entry = self
            .streams
            .entry(key)
            .or_insert_with(|| (Stream::starting(origin, base_seq, limit), meta()));
        let grew = entry.0.insert(seq, bytes);
        Ok((entry, grew))
    }

    /// The stream and metadata of flow `key`, if it has a stream.
    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut (Stream, T)> {
        self.streams.get_mut(key)
    }

    /// Forgets a flow; returns its stream and metadata if it had any.
    pub fn remove(&mut self, key: &FlowKey) -> Option<(Stream, T)> {
        let removed = self.streams.remove(key);
        if let Some((stream, _)) = &removed {
            self.gone(stream);
        }
        removed
    }

    /// Keeps only the streams whose metadata `keep` accepts; returns how many were dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(&Stream, &T) -> bool) -> usize {
        let before = self.streams.len();
        let default = self.stream_limit;
        let mut raised_gone = 0;
        self.streams.retain(|_, (stream, meta)| {
            let kept = keep(stream, meta);
            if !kept && stream.limit > default {
                raised_gone += 1;
            }
            kept
        });
        self.raised -= raised_gone;
        before - self.streams.len()
    }

    /// Number of flows with a stream.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// True when no flow has a stream.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_segments_concatenate() {
        let mut s = Stream::new(1000, 100);
        assert!(s.insert(1000, b"hello "));
        assert!(s.insert(1006, b"world"));
        assert_eq!(s.contiguous(), b"hello world");
    }

    #[test]
    fn advance_drops_decided_bytes_and_skips_ahead() {
        let mut s = Stream::new(1000, 8);
        s.insert(1000, b"req1body");
        s.advance(4);
        assert_eq!((s.base_seq(), s.contiguous()), (1004, &b"body"[..]));
        // Past what has arrived: the rest of a body is skipped as it comes; a segment
        // held beyond a gap is kept relative to the new start.
        s.insert(1020, b"NEXT");
        s.advance(10);
        assert_eq!((s.base_seq(), s.contiguous()), (1014, &b""[..]));
        assert!(!s.insert(1012, b"xx"), "before the new start");
        assert!(s.insert(1013, b"xyz123456"));
        assert_eq!(
            s.contiguous(),
            b"yz123456",
            "limit counts from the new start"
        );
        s.advance(8);
        assert!(!s.is_full());
    }

    #[test]
    fn a_new_connection_on_the_four_tuple_replaces_the_old_stream() {
        let mut table: Reassembler<u8> = Reassembler::new(4, 100);
        let key = FlowKey::default();
        table
            .insert(key, (1000, 1000), 1000, b"GET /old", || 1)
            .unwrap();
        let ((stream, meta), grew) = table
            .insert(key, (5000, 5000), 5000, b"GET /new", || 2)
            .unwrap();
        assert!(grew, "the new stream grew");
        assert_eq!((stream.contiguous(), *meta), (&b"GET /new"[..], 2));
        assert_eq!(table.superseded, 1);
    }

    #[test]
    fn out_of_order_segment_waits_for_the_gap() {
        let mut s = Stream::new(1000, 100);
        assert!(!s.insert(1006, b"world"));
        assert_eq!(s.contiguous(), b"");
        assert!(s.insert(1000, b"hello "));
        assert_eq!(s.contiguous(), b"hello world");
    }

    #[test]
    fn three_segments_reversed() {
        let mut s = Stream::new(0, 100);
        s.insert(6, b"ghi");
        s.insert(3, b"def");
        assert!(s.insert(0, b"abc"));
        assert_eq!(s.contiguous(), b"abcdefghi");
    }

    #[test]
    fn retransmission_changes_nothing() {
        let mut s = Stream::new(5, 100);
        s.insert(5, b"abc");
        assert!(!s.insert(5, b"abc"));
        assert!(!s.insert(5, b"XY"));
        assert_eq!(s.contiguous(), b"abc");
    }

    #[test]
    fn overlap_keeps_first_copy_and_adds_the_rest() {
        let mut s = Stream::new(0, 100);
        s.insert(0, b"abcd");
        assert!(s.insert(2, b"XXef"));
        assert_eq!(s.contiguous(), b"abcdef");
    }

    #[test]
    fn overlapping_pending_segments_merge() {
        let mut s = Stream::new(0, 100);
        s.insert(4, b"efgh");
        s.insert(2, b"cdEF");
        assert!(s.insert(0, b"ab"));
        assert_eq!(s.contiguous(), b"abcdEFgh");
    }

    #[test]
    fn sequence_wraparound() {
        let mut s = Stream::new(u32::MAX - 1, 100);
        s.insert(u32::MAX - 1, b"ab");
        assert!(s.insert(0, b"cd"));
        assert_eq!(s.contiguous(), b"abcd");
    }

    #[test]
    fn bytes_before_start_are_trimmed() {
        let mut s = Stream::new(100, 100);
        assert!(s.insert(98, b"xxab"));
        assert_eq!(s.contiguous(), b"ab");
        assert!(!s.insert(90, b"short"));
    }

    #[test]
    fn limit_bounds_the_stream() {
        let mut s = Stream::new(0, 4);
        assert!(s.insert(0, b"abcdef"));
        assert_eq!(s.contiguous(), b"abcd");
        assert!(s.is_full());
        assert!(!s.insert(4, b"gh"));
        assert!(!s.insert(1_000_000, b"far"));
    }

    #[test]
    fn table_is_bounded_and_counts_overflow() {
        let key = |p: u16| FlowKey {
            lo_port: p,
            ..Default::default()
        };
        let mut r: Reassembler<()> = Reassembler::new(1, 10);
        assert!(r.insert(key(1), (0, 0), 0, b"a", || ()).unwrap().1);
        assert!(r.insert(key(2), (0, 0), 0, b"a", || ()).is_err());
        assert_eq!(r.overflows, 1);
        assert!(!r.insert(key(1), (0, 0), 0, b"a", || ()).unwrap().1);
        assert!(r.insert(key(1), (0, 0), 1, b"b", || ()).unwrap().1);
        assert!(r.remove(&key(1)).is_some());
        assert!(r.is_empty());
    }

    #[test]
    fn raised_limits_are_bounded_and_given_back() {
        let key = |p: u16| FlowKey {
            lo_port: p,
            ..Default::default()
        };
        let mut r: Reassembler<()> = Reassembler::new(8, 4).with_max_raised(2);
        for p in 1..=3 {
            r.insert(key(p), (0, 0), 0, b"abcd", || ()).unwrap();
        }
        assert!(!r.raise_limit(&key(9), 16), "no such stream");
        assert!(!r.raise_limit(&key(1), 4), "not above the table's limit");
        assert!(r.raise_limit(&key(1), 16) && r.raise_limit(&key(1), 16));
        assert!(r.raise_limit(&key(2), 16));
        assert!(!r.raise_limit(&key(3), 16), "two at most");
        assert_eq!(r.raised(), 2);
        // A raised stream takes more; the others keep their bound.
        assert!(r.insert(key(1), (0, 0), 4, b"efgh", || ()).unwrap().1);
        assert!(!r.insert(key(3), (0, 0), 4, b"efgh", || ()).unwrap().1);
        // Removal, expiry, a lowered limit and a new connection on the four-tuple all
        // give the room back.
        r.lower_limit(&key(1));
        r.lower_limit(&key(1));
        assert_eq!(r.raised(), 1);
        assert!(r.raise_limit(&key(3), 16));
        r.remove(&key(3));
        r.insert(key(2), (7, 7), 7, b"new", || ()).unwrap();
        assert_eq!((r.raised(), r.superseded), (0, 1));
        assert!(r.raise_limit(&key(1), 16) && r.raise_limit(&key(2), 16));
        assert_eq!(r.retain(|_, ()| false), 2);
        assert_eq!(r.raised(), 0);
    }
}
