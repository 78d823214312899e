//! QUIC on the kernel side: which UDP datagrams open a flow, and each datagram's step on
//! its flow entry, written once for the eBPF programs and for replay (as [`crate::track`]
//! is for TCP, whose [`Host`] it shares).
//!
//! A QUIC flow is opened by content, never by port: a client's long-header Initial
//! (v1, RFC 9000; v2, RFC 9369) in a datagram of at least 1200 bytes, the size below which
//! servers drop it (RFC 9000 §14.1). Its Initial datagrams are captured for the daemon,
//! which decrypts them (their keys come from the Destination Connection ID on the wire);
//! the server's datagrams are held while the verdict is pending, as TCP server payload
//! is; a blocked flow has every datagram dropped both ways. Short-header packets carry
//! nothing that says QUIC, so a connection begun before the sensor is not seen (its long
//! headers, if any, are counted in [`stat::QUIC_NOT_TRACKED`]).
//!
//! A new connection on a 4-tuple already in the table is told by its connection ID: a
//! client Initial addressed to neither the flow's first Destination Connection ID nor the
//! last Source Connection ID its server sent starts the flow again.

use crate::{
    FlowKey, FlowState, Inspect, RecordKind, TcpPhase, Verdict, lifecycle, stat,
    track::{self, Action, Host, Segment},
};

/// QUIC version 1 (RFC 9000).
pub const VERSION_1: u32 = 0x0000_0001;
/// QUIC version 2 (RFC 9369).
pub const VERSION_2: u32 = 0x6b33_43cf;
/// Smallest UDP payload of a client Initial a server accepts (RFC 9000 §14.1).
pub const MIN_INITIAL_DATAGRAM: u32 = 1200;
/// Longest connection ID (RFC 9000 §17.2).
pub const MAX_CID_LEN: u8 = 20;

/// Offsets in a long header (RFC 9000 §17.2).
pub mod off {
    /// Version, 4 bytes.
    pub const VERSION: usize = 1;
    /// Destination Connection ID length, 1 byte; the ID follows.
    pub const DCID_LEN: usize = 5;
    /// Destination Connection ID.
    pub const DCID: usize = 6;
}

/// The first bytes of a long header to read: first byte, version, DCID length and up to
/// 8 DCID bytes.
pub const LONG_HEADER_PROBE: usize = off::DCID + 8;

/// What `quic = ...` in the config says.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuicMode {
    /// QUIC flows are tracked and their ClientHellos judged.
    Inspect = 0,
    /// Every client Initial is dropped, so that clients fall back to TCP, where they
    /// are inspected.
    Block = 1,
    /// UDP is not tracked at all.
    Off = 2,
}

impl QuicMode {
    /// Decodes the config byte; unknown values read as `Inspect`.
    #[inline(always)]
    pub fn from_raw(raw: u8) -> QuicMode {
        match raw {
            1 => QuicMode::Block,
            2 => QuicMode::Off,
            _ => QuicMode::Inspect,
        }
    }
}

/// What the tracker reads of a datagram's QUIC header; all zero for a short header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The first byte.
    pub first: u8,
    /// The version of a long header, 0 for a short one (0 in a long header is a version
    /// negotiation).
    pub version: u32,
    /// [`conn_id`] of the Destination Connection ID (long headers).
    pub dcid: u64,
    /// [`conn_id`] of the Source Connection ID (long headers; only read from servers).
    pub scid: u64,
}

impl Header {
    /// A long header (RFC 9000 §17.2).
    #[inline(always)]
    pub fn is_long(&self) -> bool {
        self.first & 0x80 != 0
    }

    /// A long header of a version nprot reads.
    #[inline(always)]
    pub fn is_known_long(&self) -> bool {
        self.is_long() && (self.version == VERSION_1 || self.version == VERSION_2)
    }

    /// An Initial packet of v1 or v2, with the fixed bit set.
    #[inline(always)]
    pub fn is_initial(&self) -> bool {
        if !self.is_long() || self.first & 0x40 == 0 {
            return false;
        }
        let kind = (self.first >> 4) & 0x3;
        (self.version == VERSION_1 && kind == 0) || (self.version == VERSION_2 && kind == 1)
    }

    /// An Initial a server would take from a client: datagram of `payload_len` bytes.
    #[inline(always)]
    pub fn is_client_initial(&self, payload_len: u32) -> bool {
        self.is_initial() && payload_len >= MIN_INITIAL_DATAGRAM
    }
}

/// The fields of the long header whose first [`LONG_HEADER_PROBE`] bytes are `probe`, and
/// where the Source Connection ID's length byte is (the SCID itself is read by the
/// caller, [`conn_id`] of the 8 bytes after it); `None` if the header is no QUIC v1/v2
/// one a connection ID could be read from.
#[inline(always)]
pub fn read_long(probe: &[u8; LONG_HEADER_PROBE]) -> (Header, Option<usize>) {
    let mut hdr = Header {
        first: probe[0],
        version: u32::from_be_bytes([probe[1], probe[2], probe[3], probe[4]]),
        ..Header::default()
    };
    let dcid_len = probe[off::DCID_LEN];
    if dcid_len > MAX_CID_LEN {
        // No header of a version nprot reads: no Initial.
        hdr.version = 0;
        return (hdr, None);
    }
    let mut dcid = [0u8; 8];
    dcid.copy_from_slice(&probe[off::DCID..]);
    hdr.dcid = conn_id(dcid, dcid_len);
    (hdr, Some(off::DCID + dcid_len as usize))
}

/// The QUIC header of a UDP payload held in memory (replay; the kernel reads the same
/// fields with loads).
pub fn header(payload: &[u8]) -> Header {
    let Some(&first) = payload.first() else {
        return Header::default();
    };
    let short = Header {
        first,
        ..Header::default()
    };
    if !short.is_long() {
        return short;
    }
    let Some(probe) = payload
        .get(..LONG_HEADER_PROBE)
        .and_then(|p| <&[u8; LONG_HEADER_PROBE]>::try_from(p).ok())
    else {
        return short;
    };
    let (mut hdr, scid_at) = read_long(probe);
    if let Some(at) = scid_at
        && let Some(&len) = payload.get(at)
        && let Some(scid) = payload
            .get(at + 1..at + 9)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
    {
        hdr.scid = conn_id(scid, len);
    }
    hdr
}

/// The first 8 bytes of a connection ID of `len` bytes, read into `bytes` (what follows
/// a shorter ID is masked off), as one comparable word.
#[inline(always)]
pub fn conn_id(bytes: [u8; 8], len: u8) -> u64 {
    let word = u64::from_be_bytes(bytes);
    if len >= 8 {
        word
    } else if len == 0 {
        0
    } else {
        word & !(u64::MAX >> (u32::from(len) * 8))
    }
}

/// The QUIC setting of the sensor.
#[inline(always)]
pub fn mode<H: Host>(host: &H) -> QuicMode {
    match host.config() {
        Some(cfg) => QuicMode::from_raw(cfg.quic),
        None => QuicMode::Off,
    }
}

/// A datagram whose 4-tuple the table does not hold. Returns what becomes of it and, for
/// a client Initial, the entry it opens (the caller inserts it and calls [`started`]).
#[inline(always)]
pub fn unknown<H: Host>(
    host: &mut H,
    seg: &Segment,
    hdr: &Header,
    src_is_lo: bool,
) -> (Action, Option<FlowState>) {
    let mode = mode(host);
    if mode == QuicMode::Off {
        return (Action::Pass, None);
    }
    if !hdr.is_client_initial(seg.payload_len) {
        if hdr.is_known_long() {
            host.bump(stat::QUIC_NOT_TRACKED);
        }
        return (Action::Pass, None);
    }
    if mode == QuicMode::Block {
        host.bump(stat::QUIC_REFUSED);
        return (Action::Drop, None);
    }
    (Action::Pass, Some(open(host, hdr, src_is_lo)))
}

/// The entry a client Initial opens.
#[inline(always)]
fn open<H: Host>(host: &H, hdr: &Header, src_is_lo: bool) -> FlowState {
    let capture = matches!(host.config(), Some(cfg) if cfg.capture != 0);
    let mut state = host.base(src_is_lo, host.egress());
    state.phase = TcpPhase::SynSent as u8;
    state.inspect = if capture {
        Inspect::Capturing as u8
    } else {
        Inspect::Done as u8
    };
    state.quic_dcid = hdr.dcid;
    state
}

/// A new QUIC entry is in the table: it is counted, and the Initial that opened it is
/// captured.
#[inline(always)]
pub fn started<H: Host>(host: &mut H, seg: &Segment, flow: &mut FlowState) {
    host.bump(stat::QUIC_FLOWS);
    flow.c2s_packets = 1;
    flow.c2s_bytes = u64::from(seg.payload_len);
    if flow.inspect == Inspect::Capturing as u8 {
        flow.payload_ns = host.now();
        track::capture(host, seg, flow);
    }
}

/// Any datagram of a QUIC flow in the table.
#[inline(always)]
pub fn step<H: Host>(
    host: &mut H,
    seg: &Segment,
    hdr: &Header,
    key: &FlowKey,
    src_is_lo: bool,
    flow: &mut FlowState,
) -> Action {
    let now = host.now();
    let from_client = src_is_lo == (flow.flags & crate::FLOW_CLIENT_IS_LO != 0);
    let idle_timeout = match host.config() {
        Some(cfg) => cfg.flow_idle_timeout_ns,
        None => u64::MAX,
    };
    let expired = lifecycle::idle_expired(flow.verdict, flow.last_ns, now, idle_timeout);
    if expired {
        host.bump(stat::FLOWS_EXPIRED);
    }
    // A client Initial to a connection ID this flow never used: a new connection on the
    // 4-tuple (or the same one after idling out), judged afresh.
    if from_client
        && hdr.is_client_initial(seg.payload_len)
        && (expired || (hdr.dcid != flow.quic_dcid && hdr.dcid != flow.quic_scid))
    {
        host.drop_verdict(key);
        if mode(host) == QuicMode::Block {
            host.bump(stat::QUIC_REFUSED);
            return Action::Drop;
        }
        if !expired {
            host.bump(stat::QUIC_RESTARTS);
        }
        *flow = open(host, hdr, src_is_lo);
        started(host, seg, flow);
        return Action::Pass;
    }
    if expired {
        // Idle past the timeout and not a new connection: whatever the entry knew is
        // stale, and the flow goes on unjudged (as a mid-stream TCP flow does).
        host.drop_verdict(key);
        flow.inspect = Inspect::Done as u8;
        flow.verdict = Verdict::Allow as u8;
        flow.flags |= crate::FLOW_MIDSTREAM;
        host.bump(stat::QUIC_NOT_TRACKED);
    }
    track::count_packet(flow, seg, from_client, now);

    if flow.verdict == Verdict::Block as u8 {
        host.bump(stat::QUIC_DROPPED);
        return Action::Drop;
    }
    if !from_client {
        if hdr.is_long() {
            flow.quic_scid = hdr.scid;
        }
        // The server answered: QUIC's counterpart of the SYN-ACK.
        if flow.phase == TcpPhase::SynSent as u8 {
            flow.phase = TcpPhase::Established as u8;
            host.emit(seg, flow, from_client, RecordKind::Established);
        }
    }
    if flow.inspect != Inspect::Capturing as u8 || !host.on_flow_interface(flow) {
        return Action::Pass;
    }
    if let Some(entry) = track::pending_verdict(host, key, flow) {
        flow.inspect = Inspect::Done as u8;
        if entry.verdict == Verdict::Block as u8 {
            flow.verdict = Verdict::Block as u8;
            host.bump(stat::QUIC_BLOCKED);
            host.bump(stat::QUIC_DROPPED);
            return Action::Drop;
        }
        // Allow, or a Continue (which QUIC has no use for): the flow goes.
        flow.verdict = Verdict::Allow as u8;
        return Action::Pass;
    }
    if from_client {
        // Only Initials carry the ClientHello; 0-RTT and Handshake packets go unread.
        if hdr.is_initial() {
            track::capture(host, seg, flow);
        }
        Action::Pass
    } else {
        track::hold(host, flow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FAMILY_V4, PROTO_UDP, SensorConfig, VerdictEntry, track::tests::Fake};

    fn dgram(from_client: bool, payload_len: u32) -> Segment {
        let (c, s) = ([1, 0, 0, 0], [2, 0, 0, 0]);
        let (src, dst, sport, dport) = if from_client {
            (c, s, 40000, 443)
        } else {
            (s, c, 443, 40000)
        };
        Segment {
            family: FAMILY_V4,
            proto: PROTO_UDP,
            flags: 0,
            sport,
            dport,
            src,
            dst,
            seq: 0,
            ack: 0,
            data_seq: 0,
            payload_len,
        }
    }

    fn initial(version: u32, dcid: u64) -> Header {
        Header {
            first: if version == VERSION_2 { 0xd0 } else { 0xc0 },
            version,
            dcid,
            scid: 0,
        }
    }

    fn block_host() -> Fake {
        Fake {
            config: SensorConfig {
                hold: 1,
                ..SensorConfig::default()
            },
            now: 1_000,
            ..Fake::default()
        }
    }

    /// Opens a flow with a client Initial to `dcid`.
    fn opened(host: &mut Fake, dcid: u64) -> (FlowKey, bool, FlowState) {
        let seg = dgram(true, 1250);
        let (key, lo) = seg.key();
        let (action, state) = unknown(host, &seg, &initial(VERSION_1, dcid), lo);
        assert_eq!(action, Action::Pass);
        let mut flow = state.expect("a client Initial opens a flow");
        started(host, &seg, &mut flow);
        (key, lo, flow)
    }

    #[test]
    fn headers_are_read_from_the_wire_layout() {
        // RFC 9001 A.2: the client Initial's first bytes (DCID 8394c8f03e515708, empty SCID).
        let mut pkt = [0u8; 32];
        pkt[..15].copy_from_slice(&[
            0xc3, 0, 0, 0, 1, 8, 0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08, 0,
        ]);
        let hdr = header(&pkt);
        assert!(hdr.is_client_initial(1200));
        assert_eq!(hdr.dcid, 0x8394_c8f0_3e51_5708);
        assert_eq!(hdr.scid, 0);
        // A server's: empty DCID, SCID f067a5502a4262b5.
        let mut srv = [0u8; 32];
        srv[..16].copy_from_slice(&[
            0xc1, 0, 0, 0, 1, 0, 8, 0xf0, 0x67, 0xa5, 0x50, 0x2a, 0x42, 0x62, 0xb5, 0,
        ]);
        assert_eq!(header(&srv).scid, 0xf067_a550_2a42_62b5);
        assert_eq!(
            header(&[0x40, 1, 2]),
            Header {
                first: 0x40,
                ..Header::default()
            }
        );
        let mut bad = pkt;
        bad[5] = 21;
        assert!(!header(&bad).is_initial());
    }

    #[test]
    fn connection_ids_are_masked_to_their_length() {
        let bytes = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
        assert_eq!(conn_id(bytes, 8), 0x8394_c8f0_3e51_5708);
        assert_eq!(conn_id(bytes, 20), 0x8394_c8f0_3e51_5708);
        assert_eq!(conn_id(bytes, 2), 0x8394_0000_0000_0000);
        assert_eq!(conn_id(bytes, 0), 0);
    }

    #[test]
    fn initials_are_told_by_version_and_type_and_need_1200_bytes() {
        assert!(initial(VERSION_1, 1).is_client_initial(1200));
        assert!(initial(VERSION_2, 1).is_client_initial(1200));
        assert!(!initial(VERSION_1, 1).is_client_initial(1199));
        // v1 type 1 is 0-RTT; v2 type 0 is Retry.
        let zero_rtt = Header {
            first: 0xd0,
            ..initial(VERSION_1, 1)
        };
        assert!(!zero_rtt.is_initial());
        let v2_retry = Header {
            first: 0xc0,
            ..initial(VERSION_2, 1)
        };
        assert!(!v2_retry.is_initial());
        let unknown_version = Header {
            version: 0x0a0a_0a0a,
            ..initial(VERSION_1, 1)
        };
        assert!(!unknown_version.is_initial());
        let no_fixed_bit = Header {
            first: 0x80,
            ..initial(VERSION_1, 1)
        };
        assert!(!no_fixed_bit.is_initial());
    }

    /// A client Initial opens and is captured, the server's answer is held until the
    /// verdict, which blocks: from then on every datagram is dropped, either way.
    #[test]
    fn a_blocked_flow_has_its_answer_held_then_everything_dropped() {
        let mut host = block_host();
        let (key, lo, mut flow) = opened(&mut host, 7);
        assert_eq!(host.captured, 1250);
        assert_eq!(host.counters[stat::QUIC_FLOWS as usize], 1);

        host.now += 10;
        let answer = dgram(false, 1200);
        let server_hdr = Header {
            first: 0xc0,
            version: VERSION_1,
            dcid: 0,
            scid: 99,
        };
        assert_eq!(
            step(&mut host, &answer, &server_hdr, &key, !lo, &mut flow),
            Action::Hold { requeue: true }
        );
        assert_eq!(host.emitted[0], Some(RecordKind::Established));
        assert_eq!(flow.quic_scid, 99);

        host.verdict = Some(VerdictEntry::new(Verdict::Block));
        assert_eq!(
            step(&mut host, &answer, &server_hdr, &key, !lo, &mut flow),
            Action::Drop
        );
        let more = dgram(true, 40);
        assert_eq!(
            step(&mut host, &more, &Header::default(), &key, lo, &mut flow),
            Action::Drop
        );
        // The client retrying its Initial (same DCID) stays blocked.
        let retry = dgram(true, 1250);
        assert_eq!(
            step(
                &mut host,
                &retry,
                &initial(VERSION_1, 7),
                &key,
                lo,
                &mut flow
            ),
            Action::Drop
        );
        assert_eq!(host.counters[stat::QUIC_BLOCKED as usize], 1);
        assert_eq!(host.counters[stat::QUIC_DROPPED as usize], 3);
    }

    /// Client Initials after the server's answer are addressed to the server's SCID: the
    /// same connection. One to a fresh DCID is a new connection, judged afresh.
    #[test]
    fn a_new_connection_id_on_a_decided_flow_starts_it_again() {
        let mut host = block_host();
        let (key, lo, mut flow) = opened(&mut host, 7);
        let server_hdr = Header {
            first: 0xc0,
            version: VERSION_1,
            dcid: 0,
            scid: 99,
        };
        host.verdict = Some(VerdictEntry::new(Verdict::Allow));
        let answer = dgram(false, 1200);
        assert_eq!(
            step(&mut host, &answer, &server_hdr, &key, !lo, &mut flow),
            Action::Pass
        );
        assert_eq!(flow.inspect, Inspect::Done as u8);

        let ack = dgram(true, 1200);
        assert_eq!(
            step(
                &mut host,
                &ack,
                &initial(VERSION_1, 99),
                &key,
                lo,
                &mut flow
            ),
            Action::Pass
        );
        assert_eq!(flow.inspect, Inspect::Done as u8, "same connection");
        assert_eq!(host.counters[stat::QUIC_RESTARTS as usize], 0);

        let captured = host.captured;
        assert_eq!(
            step(
                &mut host,
                &ack,
                &initial(VERSION_1, 1234),
                &key,
                lo,
                &mut flow
            ),
            Action::Pass
        );
        assert_eq!(host.counters[stat::QUIC_RESTARTS as usize], 1);
        assert_eq!(flow.inspect, Inspect::Capturing as u8);
        assert_eq!(flow.quic_dcid, 1234);
        assert_eq!(host.captured, captured + 1200);
    }

    #[test]
    fn block_mode_refuses_initials_and_off_ignores_udp() {
        let mut host = Fake {
            config: SensorConfig {
                quic: QuicMode::Block as u8,
                ..SensorConfig::default()
            },
            ..Fake::default()
        };
        let seg = dgram(true, 1300);
        let (_, lo) = seg.key();
        assert_eq!(
            unknown(&mut host, &seg, &initial(VERSION_2, 5), lo),
            (Action::Drop, None)
        );
        assert_eq!(host.counters[stat::QUIC_REFUSED as usize], 1);

        host.config.quic = QuicMode::Off as u8;
        assert_eq!(
            unknown(&mut host, &seg, &initial(VERSION_2, 5), lo),
            (Action::Pass, None)
        );
        assert_eq!(host.counters[stat::QUIC_REFUSED as usize], 1);
    }

    #[test]
    fn long_headers_without_a_flow_are_counted_and_other_udp_is_not() {
        let mut host = Fake::default();
        let small = dgram(true, 300);
        let (_, lo) = small.key();
        assert_eq!(
            unknown(&mut host, &small, &initial(VERSION_1, 5), lo),
            (Action::Pass, None)
        );
        assert_eq!(
            unknown(&mut host, &small, &Header::default(), lo),
            (Action::Pass, None)
        );
        assert_eq!(host.counters[stat::QUIC_NOT_TRACKED as usize], 1);
    }

    /// A verdict that does not come in time releases the flow (fail-open, counted).
    #[test]
    fn a_late_verdict_fails_open() {
        let mut host = block_host();
        let (key, lo, mut flow) = opened(&mut host, 7);
        host.now += SensorConfig::default().verdict_timeout_ns + 1;
        let answer = dgram(false, 1200);
        assert_eq!(
            step(&mut host, &answer, &Header::default(), &key, !lo, &mut flow),
            Action::Pass
        );
        assert_eq!(host.counters[stat::FAIL_OPEN as usize], 1);
    }
}
