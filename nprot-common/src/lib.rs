//! Wire types shared by the nprot eBPF programs and the user-space daemon.
//!
//! Everything here is `repr(C)`, plain old data, and compiled into both sides, so that
//! the kernel and the daemon agree on map keys, map values and ring-buffer records
//! byte for byte. Changing a layout here changes both sides at once.
#![no_std]

// The user-space side (summaries the daemon builds, tests) allocates.
#[cfg(any(test, feature = "user"))]
extern crate std;

pub mod dns;
pub mod encap;
pub mod lifecycle;
pub mod name_hash;
pub mod names;
pub mod prefilter;
pub mod quic;
pub mod track;

/// Address family of a flow: IPv4.
pub const FAMILY_V4: u8 = 4;
/// Address family of a flow: IPv6.
pub const FAMILY_V6: u8 = 6;

/// Largest number of payload bytes copied from one segment into the ring buffer.
///
/// A power of two so that the eBPF side can bound the copy length with a mask. An
/// egress skb can be a GSO super-packet far larger than the MTU (up to 64 KiB): it is
/// captured whole, so that a request head written in one go is seen in full; anything
/// larger (BIG TCP) is cut and its record marked truncated.
pub const CAPTURE_SEG_MAX: usize = 64 * 1024;

/// Name of the scratch map the daemon sizes to the number of possible CPUs.
pub const SCRATCH_MAP: &str = "SCRATCH";

/// Default bound on the client payload bytes captured per flow while its verdict is
/// pending: a request head of up to 64 KiB written in one go, and the record that holds
/// its end. Capture stops when the verdict arrives (usually after the first segment),
/// so only flows that send more before their verdict copy more than a few KiB.
pub const CAPTURE_FLOW_MAX_DEFAULT: u32 = 68 * 1024;

/// Maximum number of flows the kernel tracks at once (LRU map).
pub const MAX_FLOWS: u32 = 262_144;

/// Maximum number of names in the kernel's `DNS_NAMES` map (blocked domains and their
/// allowed subdomains).
pub const MAX_DNS_NAMES: u32 = 65_536;

/// Maximum number of verdicts waiting to be picked up by the kernel.
pub const MAX_PENDING_VERDICTS: u32 = 65_536;

/// An IP address as read off the wire: network byte order, IPv4 in the first word.
pub type RawAddr = [u32; 4];

/// Transport of a flow: TCP (`IPPROTO_TCP`).
pub const PROTO_TCP: u8 = 6;
/// Transport of a flow: UDP (`IPPROTO_UDP`), tracked for QUIC.
pub const PROTO_UDP: u8 = 17;

/// A flow oriented client → server, as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowTuple {
    /// Address of the side that sent the SYN (or the first QUIC Initial).
    pub client_addr: RawAddr,
    /// Address of the side that answered it.
    pub server_addr: RawAddr,
    /// Client port, host byte order.
    pub client_port: u16,
    /// Server port, host byte order.
    pub server_port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Padding, zero.
    pub _pad: [u8; 2],
}

/// Key of the kernel flow map: the two endpoints of a flow in a canonical order.
///
/// Both directions of a flow map to the same key, so that the kernel finds a flow with
/// a single lookup whichever way a packet travels. `lo` is the endpoint that compares
/// lower as (address words, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Address of the endpoint that compares lower.
    pub lo_addr: RawAddr,
    /// Address of the endpoint that compares higher.
    pub hi_addr: RawAddr,
    /// Port of the `lo` endpoint, host byte order.
    pub lo_port: u16,
    /// Port of the `hi` endpoint, host byte order.
    pub hi_port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`PROTO_TCP`] or [`PROTO_UDP`]: a TCP and a UDP flow on the same ports are two flows.
    pub proto: u8,
    /// Padding, zero.
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// Canonical key of the flow between `(a_addr, a_port)` and `(b_addr, b_port)`, and
    /// whether `a` is the `lo` side.
    #[inline(always)]
    pub fn canonical(
        family: u8,
        proto: u8,
        a_addr: &RawAddr,
        a_port: u16,
        b_addr: &RawAddr,
        b_port: u16,
    ) -> (FlowKey, bool) {
        let a_is_lo = endpoint_le(a_addr, a_port, b_addr, b_port);
        let key = if a_is_lo {
            FlowKey {
                lo_addr: *a_addr,
                hi_addr: *b_addr,
                lo_port: a_port,
                hi_port: b_port,
                family,
                proto,
                _pad: [0; 2],
            }
        } else {
            FlowKey {
                lo_addr: *b_addr,
                hi_addr: *a_addr,
                lo_port: b_port,
                hi_port: a_port,
                family,
                proto,
                _pad: [0; 2],
            }
        };
        (key, a_is_lo)
    }
}

impl FlowTuple {
    /// The kernel map key of this flow.
    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        FlowKey::canonical(
            self.family,
            self.proto,
            &self.client_addr,
            self.client_port,
            &self.server_addr,
            self.server_port,
        )
        .0
    }
}

/// Deterministic order on endpoints; only needs to agree between kernel and user space.
#[inline(always)]
fn endpoint_le(a: &RawAddr, a_port: u16, b: &RawAddr, b_port: u16) -> bool {
    // Unrolled on purpose: the verifier prefers straight-line code to loops here.
    if a[0] != b[0] {
        return a[0] < b[0];
    }
    if a[1] != b[1] {
        return a[1] < b[1];
    }
    if a[2] != b[2] {
        return a[2] < b[2];
    }
    if a[3] != b[3] {
        return a[3] < b[3];
    }
    a_port <= b_port
}

/// TCP handshake progress of a flow, as tracked by the kernel. A QUIC flow uses two of
/// them: `SynSent` until the server's first datagram, then `Established`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpPhase {
    /// SYN seen, no answer yet.
    SynSent = 0,
    /// SYN-ACK seen from the server.
    SynAckSeen = 1,
    /// Client acknowledged the SYN-ACK (or sent data): the connection succeeded.
    Established = 2,
    /// The server answered the SYN with a reset.
    Failed = 3,
    /// FIN or RST after the connection was established.
    Closed = 4,
}

/// What the kernel does with a flow's client payload.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inspect {
    /// Client→server payload is copied to the ring buffer, up to the per-flow budget.
    Capturing = 0,
    /// Inspection ended: one map lookup per packet, nothing copied.
    Done = 1,
}

/// A decision user space hands to the kernel for one flow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No decision yet.
    Pending = 0,
    /// Let the flow through and stop inspecting it.
    Allow = 1,
    /// Reset the flow in both directions.
    Block = 2,
    /// Release what is held and keep inspecting the client bytes after
    /// [`VerdictEntry::decided_seq`]: a forward-proxy connection whose request was allowed
    /// and whose next request, or the ClientHello inside its tunnel, is still to come.
    Continue = 3,
}

impl Verdict {
    /// Decodes a raw map byte; unknown values read as `Pending`.
    pub fn from_raw(raw: u8) -> Verdict {
        match raw {
            1 => Verdict::Allow,
            2 => Verdict::Block,
            3 => Verdict::Continue,
            _ => Verdict::Pending,
        }
    }
}

/// A value of the kernel's `VERDICTS` map: a decision and, for [`Verdict::Continue`], how
/// far into the client's byte stream the daemon has decided.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictEntry {
    /// [`Verdict`] as u8.
    pub verdict: u8,
    /// With [`Verdict::Block`]: 1 to answer the client with the page the daemon put in
    /// `PAGES` under the flow's key (a plain-HTTP request), rather than a reset.
    pub page: u8,
    /// Padding, zero.
    pub _pad: [u8; 2],
    /// Client sequence number up to which bytes are decided (Continue only). Client
    /// segments that end at or before it (a request body being skipped) are neither held
    /// for nor captured.
    pub decided_seq: u32,
}

impl VerdictEntry {
    /// A final decision.
    pub fn new(verdict: Verdict) -> VerdictEntry {
        VerdictEntry {
            verdict: verdict as u8,
            page: 0,
            _pad: [0; 2],
            decided_seq: 0,
        }
    }

    /// Block, answering the client with the flow's page from `PAGES`.
    pub fn block_with_page() -> VerdictEntry {
        VerdictEntry {
            page: 1,
            ..VerdictEntry::new(Verdict::Block)
        }
    }

    /// Keep inspecting the client bytes from `decided_seq` on.
    pub fn continue_after(decided_seq: u32) -> VerdictEntry {
        VerdictEntry {
            verdict: Verdict::Continue as u8,
            page: 0,
            _pad: [0; 2],
            decided_seq,
        }
    }
}

impl From<Verdict> for VerdictEntry {
    fn from(verdict: Verdict) -> VerdictEntry {
        VerdictEntry::new(verdict)
    }
}

/// TCP sequence order: `a` comes after `b` (RFC 1982 serial arithmetic).
#[inline(always)]
pub fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// `FlowState::flags`: the client is the `lo` endpoint of the key.
pub const FLOW_CLIENT_IS_LO: u8 = 1 << 0;
/// `FlowState::flags`: the SYN left through an egress hook (the initiator is on this side).
pub const FLOW_SYN_EGRESS: u8 = 1 << 1;
/// `FlowState::flags`: the close of this flow was reported.
pub const FLOW_CLOSE_REPORTED: u8 = 1 << 2;
/// `FlowState::flags`: the daemon answered [`Verdict::Continue`] at least once; server
/// payload is held only while client bytes after `decided_seq` await a decision.
pub const FLOW_CONTINUED: u8 = 1 << 3;
/// `FlowState::flags`: the flow was first seen without its SYN (it began before the
/// sensor, or its entry was evicted from a full table or retired idle); it is not inspected.
pub const FLOW_MIDSTREAM: u8 = 1 << 4;
/// `FlowState::flags`: a SYN on this live flow awaits its server's SYN-ACK to start a new
/// flow (`restart_*` fields; see [`lifecycle::SynStep::Defer`]).
pub const FLOW_RESTART_PENDING: u8 = 1 << 5;
/// `FlowState::flags`: the client of the deferred SYN is the `lo` endpoint of the key.
pub const FLOW_RESTART_CLIENT_LO: u8 = 1 << 6;
/// `FlowState::flags`: the kernel pre-filter found that nothing in force can match the
/// client bytes awaiting a verdict ([`prefilter`]): server payload passes at once, up to
/// `prefilter_end_seq`; the daemon's verdict is still applied when it comes.
pub const FLOW_PREALLOWED: u8 = 1 << 7;

/// Per-flow state in the kernel LRU map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Monotonic ns of the SYN.
    pub first_ns: u64,
    /// Monotonic ns of the last packet.
    pub last_ns: u64,
    /// Client→server packets seen.
    pub c2s_packets: u64,
    /// Client→server TCP payload bytes seen.
    pub c2s_bytes: u64,
    /// Server→client packets seen.
    pub s2c_packets: u64,
    /// Server→client TCP payload bytes seen.
    pub s2c_bytes: u64,
    /// Socket cookie of a local socket, 0 where the skb has none.
    pub socket_cookie: u64,
    /// Sequence number of the client's first payload byte (ISN + 1).
    pub client_data_seq: u32,
    /// Client payload bytes copied to user space so far.
    pub captured: u32,
    /// Interface on which the SYN was seen.
    pub ifindex: u32,
    /// Client bytes before this sequence number are decided ([`Verdict::Continue`]).
    pub decided_seq: u32,
    /// Monotonic ns of the first client payload awaiting a decision, 0 when none does:
    /// the verdict clock.
    pub payload_ns: u64,
    /// Sequence number just past the last client byte captured.
    pub capture_end_seq: u32,
    /// [`TcpPhase`] as u8.
    pub phase: u8,
    /// [`Inspect`] as u8.
    pub inspect: u8,
    /// [`Verdict`] as u8.
    pub verdict: u8,
    /// `FLOW_*` bits.
    pub flags: u8,
    /// Socket cookie of a deferred SYN ([`FLOW_RESTART_PENDING`]).
    pub restart_cookie: u64,
    /// Sequence number of a deferred SYN.
    pub restart_seq: u32,
    /// With [`FLOW_PREALLOWED`]: the end of the client bytes the pre-filter judged (the
    /// ClientHello's record, the request head); client bytes past it end the pre-allowance.
    pub prefilter_end_seq: u32,
    /// QUIC flows: the first 8 bytes of the Destination Connection ID of the client's
    /// first Initial ([`quic::conn_id`]), which the Initial keys come from.
    pub quic_dcid: u64,
    /// QUIC flows: the first 8 bytes of the Source Connection ID the server last sent in a
    /// long header: the client's later Initials are addressed to it.
    pub quic_scid: u64,
    /// TCP: the sequence number just past the last server byte let through to the client
    /// (from the SYN-ACK on), where a forged page starts; 0 when unknown.
    pub server_next_seq: u32,
    /// TCP: a blocked flow's page ([`PAGE_WANTED`], [`PAGE_SENT`]), 0 for none.
    pub page: u8,
    /// Padding, zero.
    pub _pad: [u8; 3],
}

/// Entries of the kernel's `PAGES` map: pages of blocked flows not yet sent.
pub const MAX_PAGES: u32 = 1024;

/// [`FlowState::page`]: the next server packet is to be turned into the page.
pub const PAGE_WANTED: u8 = 1;
/// [`FlowState::page`]: the page went out (with a FIN); the server was reset.
pub const PAGE_SENT: u8 = 2;

/// Largest page (HTTP response head and body) the kernel forges: one segment that fits a
/// 1280-byte IPv6 path with a full TCP header, a multiple of 4.
pub const PAGE_MAX: usize = 1176;

/// A value of the kernel's `PAGES` map: the HTTP response a blocked flow's client gets.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PageEntry {
    /// Bytes of `bytes` in use, 1..=[`PAGE_MAX`].
    pub len: u32,
    /// One's-complement sum of `bytes[..len]` as 16-bit words in memory order (an odd
    /// last byte padded with zero), folded: the page's part of the TCP checksum.
    pub sum: u32,
    /// The response, zero past `len`.
    pub bytes: [u8; PAGE_MAX],
}

impl PageEntry {
    /// The entry for `response`, or None if it is empty or longer than [`PAGE_MAX`].
    pub fn new(response: &[u8]) -> Option<PageEntry> {
        if response.is_empty() || response.len() > PAGE_MAX {
            return None;
        }
        let mut bytes = [0u8; PAGE_MAX];
        bytes[..response.len()].copy_from_slice(response);
        let mut sum = 0u32;
        for pair in bytes[..response.len().next_multiple_of(2)].chunks_exact(2) {
            sum += u32::from(u16::from_ne_bytes([pair[0], pair[1]]));
        }
        Some(PageEntry {
            len: response.len() as u32,
            sum: fold(sum),
            bytes,
        })
    }
}

/// Folds a one's-complement sum to 16 bits (kept in a u32).
#[inline(always)]
pub fn fold(mut sum: u32) -> u32 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum
}

/// Kind of a ring-buffer record.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// The handshake completed.
    Established = 1,
    /// The server refused the connection (RST in answer to the SYN).
    Failed = 2,
    /// A client→server payload segment; `len` bytes of it follow the header.
    Payload = 3,
    /// The flow was closed by FIN or RST.
    Closed = 4,
    /// The server sent payload before its client did: no client bytes will name the
    /// flow first, so the daemon judges it by its address (its bytes are held meanwhile).
    ServerFirst = 5,
}

impl RecordKind {
    /// Decodes a raw record byte.
    pub fn from_raw(raw: u8) -> Option<RecordKind> {
        match raw {
            1 => Some(RecordKind::Established),
            2 => Some(RecordKind::Failed),
            3 => Some(RecordKind::Payload),
            4 => Some(RecordKind::Closed),
            5 => Some(RecordKind::ServerFirst),
            _ => None,
        }
    }
}

/// `RecordHeader::flags`: the SYN of this flow left through an egress hook.
pub const RECORD_EGRESS: u8 = 1 << 0;
/// `RecordHeader::flags`: the segment was longer than what was copied.
pub const RECORD_TRUNCATED: u8 = 1 << 1;
/// `RecordHeader::flags`: the flow's capture budget is spent; no more payload follows.
pub const RECORD_BUDGET_SPENT: u8 = 1 << 2;
/// `RecordHeader::flags`: the payload was sent by the server (a DNS response); every
/// other payload record is the client's.
pub const RECORD_FROM_SERVER: u8 = 1 << 3;
/// `RecordHeader::flags`: a DNS query whose name is blocked, answered by the kernel
/// with NXDOMAIN (it never reached the resolver). The payload is the answer the
/// kernel sent back in place of the query (the query with QR and RCODE set); replay
/// copies the query itself.
pub const RECORD_DNS_FORGED: u8 = 1 << 4;
/// `RecordHeader::flags`: the kernel pre-filter let the flow go on without waiting for
/// this record's verdict: the name and the address can match nothing in force.
pub const RECORD_PREALLOWED: u8 = 1 << 5;
/// `RecordHeader::flags`: the kernel pre-filter read a name or address that may match
/// (the summary is a superset): the flow waits for the daemon.
pub const RECORD_CANDIDATE: u8 = 1 << 6;

/// Header of every ring-buffer record; payload records are followed by `len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordHeader {
    /// The flow, oriented client → server.
    pub tuple: FlowTuple,
    /// Monotonic ns (`bpf_ktime_get_ns`) when the kernel saw the packet.
    pub ts_ns: u64,
    /// Socket cookie, 0 if unknown.
    pub socket_cookie: u64,
    /// TCP sequence number of the first payload byte (payload records).
    pub seq: u32,
    /// Bytes of payload that follow this header.
    pub len: u32,
    /// Payload length of the segment on the wire.
    pub seg_len: u32,
    /// Interface index the packet was seen on.
    pub ifindex: u32,
    /// Sequence number of the client's first payload byte (ISN + 1).
    pub client_data_seq: u32,
    /// [`RecordKind`] as u8.
    pub kind: u8,
    /// `RECORD_*` bits.
    pub flags: u8,
    /// Padding, zero.
    pub _pad: [u8; 2],
    /// Where the client bytes still to be decided start: `decided_seq` once the daemon
    /// answered [`Verdict::Continue`], else `client_data_seq`. A stream the daemon has
    /// to start again (it forgot it, or was told of a close the server ignored) starts
    /// here, not at the flow's first byte.
    pub stream_seq: u32,
    /// Padding, zero.
    pub _pad2: u32,
}

/// A payload record as the kernel assembles it in per-CPU scratch memory before
/// copying `size_of::<RecordHeader>() + header.len` bytes of it into the ring buffer.
#[repr(C)]
pub struct PayloadRecord {
    /// The record header; `header.len` is the number of `data` bytes that are sent.
    pub header: RecordHeader,
    /// The copied payload bytes.
    pub data: [u8; CAPTURE_SEG_MAX],
}

/// A UDP datagram as the TC program that parsed it hands it to the datagram program it
/// tail-calls (through the per-CPU `DATAGRAM_PACKET` map: a tail call keeps the CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DatagramPacket {
    /// The datagram's fields.
    pub seg: track::Segment,
    /// Where its UDP payload starts in the packet.
    pub payload_off: u32,
    /// Where its (innermost) IP header starts.
    pub l3_off: u32,
    /// Where its UDP header starts.
    pub l4_off: u32,
    /// Bytes of the link-layer header of the hook's device: 14 on Ethernet, 0 on an
    /// L3 device.
    pub l2_len: u8,
    /// 1 if it came through a tunnel (GRE, VXLAN, GENEVE).
    pub tunneled: u8,
    /// Padding, zero.
    pub _pad: [u8; 2],
}

/// Sockets whose owner the connect hooks remember at once (LRU map keyed by socket cookie).
pub const MAX_SOCKET_OWNERS: u32 = 65_536;

/// Who connected a socket, as the cgroup `connect4`/`connect6` hooks saw it: the value of
/// the `SOCKET_OWNERS` map (keyed by socket cookie) and the record sent through the
/// `CONNECTS` ring buffer. Taken in the connecting task's context, so it is right even
/// when the process exits a moment later.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOwner {
    /// Socket cookie (`bpf_get_socket_cookie`), the key the TC programs report.
    pub cookie: u64,
    /// Monotonic ns of the connect.
    pub ts_ns: u64,
    /// Process id (thread-group id) in the initial pid namespace.
    pub tgid: u32,
    /// Thread id of the connecting thread.
    pub pid: u32,
    /// User id of the task, in the initial user namespace.
    pub uid: u32,
    /// Group id of the task, in the initial user namespace.
    pub gid: u32,
    /// The task's name (`comm`), NUL-padded.
    pub comm: [u8; 16],
}

/// Indexes of the per-CPU `OWNER_STATS` counters of the connect hooks.
pub mod owner_stat {
    /// TCP connects seen by the hooks.
    pub const CONNECTS: u32 = 0;
    /// Connect records lost because the `CONNECTS` ring buffer was full.
    pub const RING_DROPS: u32 = 1;
    /// Number of counters.
    pub const COUNT: u32 = 2;
}

/// Records nobody waits for (connection records, pre-allowed payload) wake the daemon
/// only each time the unread records grow past a multiple of this many bytes: it then
/// never has more than about this much to take out of the ring before the record a
/// verdict waits for, and at idle it sleeps until its periodic drain.
pub const RECORDS_WAKE_BYTES: u64 = 32 * 1024;

/// Default window in which held packets are requeued rather than dropped.
pub const REQUEUE_NS_DEFAULT: u64 = 2_000_000;

/// Default bound on how long server payload is held back waiting for a verdict.
pub const VERDICT_TIMEOUT_NS_DEFAULT: u64 = 500_000_000;

/// Default idle time after which a flow entry is retired on its next packet.
pub const FLOW_IDLE_TIMEOUT_NS_DEFAULT: u64 = 3600 * 1_000_000_000;

/// Sensor-wide settings the daemon writes into the `CONFIG` array (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SensorConfig {
    /// 0: track flows only, capture nothing; 1: capture client payload.
    pub capture: u8,
    /// 1: hold server→client payload back while a flow's verdict is pending (block mode).
    pub hold: u8,
    /// What is done with QUIC ([`quic::QuicMode`] as u8).
    pub quic: u8,
    /// 1: a DNS query for a name `DNS_NAMES` says to block is answered with NXDOMAIN
    /// by the kernel ([`dns::step`]); set by the daemon in block mode only.
    pub dns_block: u8,
    /// Client payload bytes captured per flow at most.
    pub capture_flow_max: u32,
    /// A flow whose verdict takes longer than this after its first client payload is
    /// released (fail-open).
    pub verdict_timeout_ns: u64,
    /// For this long after the first client payload, server payload arriving on ingress
    /// is requeued into the device's backlog instead of dropped, so that a verdict that
    /// comes in microseconds costs no retransmission.
    pub requeue_ns: u64,
    /// A flow that sent nothing for this long is retired when it next sends: its entry is
    /// taken up again as mid-stream ([`FLOW_MIDSTREAM`]) and counted
    /// ([`stat::FLOWS_EXPIRED`]). Blocked flows never expire.
    pub flow_idle_timeout_ns: u64,
    /// `prefilter::CONFIG_*` bits: whether the kernel pre-filter runs, which of the two
    /// summary buffers is in force, and whether ECH makes a ClientHello a candidate.
    pub prefilter: u8,
    /// Padding, zero.
    pub _pad: [u8; 7],
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            capture: 1,
            hold: 0,
            quic: quic::QuicMode::Inspect as u8,
            dns_block: 0,
            capture_flow_max: CAPTURE_FLOW_MAX_DEFAULT,
            verdict_timeout_ns: VERDICT_TIMEOUT_NS_DEFAULT,
            requeue_ns: REQUEUE_NS_DEFAULT,
            flow_idle_timeout_ns: FLOW_IDLE_TIMEOUT_NS_DEFAULT,
            prefilter: 0,
            _pad: [0; 7],
        }
    }
}

/// Indexes of the per-CPU `STATS` counters.
pub mod stat {
    /// Flows created on a SYN.
    pub const FLOWS_NEW: u32 = 0;
    /// Payload segments copied to the ring buffer.
    pub const SEGMENTS_CAPTURED: u32 = 1;
    /// Records lost because the ring buffer was full (every kind; connection records
    /// are also counted in [`CONNECTION_RECORDS_LOST`]).
    pub const RINGBUF_DROPS: u32 = 2;
    /// Segments longer than the per-segment capture bound.
    pub const SEGMENTS_TRUNCATED: u32 = 3;
    /// Flows whose capture budget ran out before user space decided.
    pub const FLOW_BUDGET_SPENT: u32 = 4;
    /// SYNs that found no room in the flow map: connections not tracked.
    pub const FLOW_INSERT_FAILED: u32 = 5;
    /// Verdicts picked up from the verdict map.
    pub const VERDICTS_APPLIED: u32 = 6;
    /// Server→client packets held back (dropped) while a verdict was pending.
    pub const HELD_PACKETS: u32 = 7;
    /// Flows released because their verdict did not arrive in time.
    pub const FAIL_OPEN: u32 = 8;
    /// Flows reset because of a block verdict.
    pub const FLOWS_RESET: u32 = 9;
    /// Packets of blocked flows turned into resets.
    pub const RESET_PACKETS: u32 = 10;
    /// Resets that could not be sent (clone or rewrite failed).
    pub const RESET_FAILED: u32 = 11;
    /// Held packets requeued into the ingress backlog (one per pass) instead of dropped.
    pub const REQUEUED: u32 = 12;
    /// SYNs taken as retransmissions of the SYN that opened their flow.
    pub const SYN_RETRANSMITS: u32 = 13;
    /// Flows replaced by a new connection on their four-tuple before their end was seen
    /// (the server accepted a SYN on the live flow).
    pub const FLOWS_SUPERSEDED: u32 = 14;
    /// Flows first seen without their SYN (begun before the sensor, evicted from a
    /// full table, or retired idle and active again): tracked, not inspected.
    pub const FLOWS_MIDSTREAM: u32 = 15;
    /// Flow entries retired because they idled past the idle timeout.
    pub const FLOWS_EXPIRED: u32 = 16;
    /// Flows seen to end (FIN or RST), on every path.
    pub const FLOWS_CLOSED: u32 = 17;
    /// Established, Failed and Closed records lost because the ring buffer was full.
    pub const CONNECTION_RECORDS_LOST: u32 = 18;
    /// New flows whose SYN left a local socket (to compare with the connect hooks).
    pub const FLOWS_NEW_LOCAL: u32 = 19;
    /// SYNs on a live flow that had to wait for their server's SYN-ACK (see
    /// [`crate::lifecycle::SynStep::Defer`]); those never confirmed were ignored.
    pub const SYNS_DEFERRED: u32 = 20;
    /// SYNs that carried data (TCP Fast Open), captured like a first segment.
    pub const SYN_PAYLOADS: u32 = 21;
    /// Packets of blocked flows inside a tunnel (GRE, VXLAN, GENEVE), turned into resets
    /// for their receiver without a reflected copy.
    pub const TUNNELED_RESETS: u32 = 22;
    /// Segments not captured because the scratch map had no slot for this CPU (it is
    /// sized at load; should stay 0).
    pub const SCRATCH_MISSING: u32 = 23;
    /// TCP packets that came in IP fragments: bytes past a first fragment are not read
    /// (a TCP stack with path-MTU discovery never fragments; a crafted one may).
    pub const TCP_FRAGMENTS: u32 = 24;
    /// Packets with more extension headers or tunnels than the walk reads
    /// (`nprot_common::encap` bounds): not tracked.
    pub const HEADERS_TOO_DEEP: u32 = 25;
    /// QUIC flows opened by a client Initial (UDP; not in [`FLOWS_NEW`]).
    pub const QUIC_FLOWS: u32 = 26;
    /// QUIC flows replaced by a new connection on their 4-tuple: a client Initial to a
    /// connection ID the flow did not use.
    pub const QUIC_RESTARTS: u32 = 27;
    /// QUIC long-header packets that neither opened nor joined a flow: no entry and not
    /// a client Initial of at least 1200 bytes (a connection begun before the sensor), or
    /// no room in the flow table.
    pub const QUIC_NOT_TRACKED: u32 = 28;
    /// QUIC flows given a block verdict.
    pub const QUIC_BLOCKED: u32 = 29;
    /// Datagrams of blocked QUIC flows dropped (both directions).
    pub const QUIC_DROPPED: u32 = 30;
    /// Client Initials dropped because `quic = "block"`: the client falls back to TCP.
    pub const QUIC_REFUSED: u32 = 31;
    /// UDP datagrams not tracked because the datagram program could not be tail-called
    /// (its slot empty) or the parsed datagram not handed over: should stay 0.
    pub const DATAGRAM_TAIL_CALLS_FAILED: u32 = 32;
    /// DNS messages (UDP port 53, queries and responses) copied to the ring buffer.
    pub const DNS_CAPTURED: u32 = 33;
    /// DNS messages longer than [`crate::dns::DNS_CAPTURE_MAX`]: copied cut, marked
    /// truncated (the daemon counts what it cannot parse).
    pub const DNS_TRUNCATED: u32 = 34;
    /// DNS queries for a blocked name answered by the kernel with NXDOMAIN (block mode).
    pub const DNS_FORGED: u32 = 35;
    /// DNS queries for a blocked name the kernel could not answer and let pass: inside
    /// a tunnel or behind VLAN/PPPoE headers, or the rewrite or redirect failed (the
    /// daemon still sees the query and reports the block as missed).
    pub const DNS_FORGE_SKIPPED: u32 = 36;
    /// TCP flows whose server sent payload before the client did: judged by the daemon
    /// from a `ServerFirst` record (by address and DNS name), the server's bytes held.
    pub const FLOWS_SERVER_FIRST: u32 = 37;
    /// Client bytes awaiting a verdict that the kernel pre-filter let go on at once: their
    /// name (TLS SNI or HTTP Host in the first segment) and address match nothing in force.
    pub const PREFILTER_ALLOWED: u32 = 38;
    /// Client bytes whose name or address may match (a possible hit of the summary): they
    /// wait for the daemon, which counts those that matched nothing as false positives.
    pub const PREFILTER_CANDIDATES: u32 = 39;
    /// Client bytes the pre-filter could not judge (no name in the first segment, a proxy
    /// request, an IP literal, a cut or odd ClientHello): they wait for the daemon.
    pub const PREFILTER_UNDECIDED: u32 = 40;
    /// Pre-filter program not tail-called (slot empty, packet not handed over): the bytes
    /// were captured unjudged (also counted undecided). Should stay 0.
    pub const PREFILTER_TAIL_CALLS_FAILED: u32 = 41;
    /// Blocked plain-HTTP flows whose client got the forged page (or redirect) in the
    /// server's stead.
    pub const PAGES_SENT: u32 = 42;
    /// Blocked flows that were to get a page and were reset instead: no page in `PAGES`,
    /// a tunnelled segment, or a rewrite the kernel refused.
    pub const PAGE_FAILED: u32 = 43;
    /// Number of counters.
    pub const COUNT: u32 = 44;
    /// Counter names, in index order, for reports.
    pub const NAMES: [&str; COUNT as usize] = [
        "flows_new",
        "segments_captured",
        "ringbuf_drops",
        "segments_truncated",
        "flow_budget_spent",
        "flow_insert_failed",
        "verdicts_applied",
        "held_packets",
        "fail_open",
        "flows_reset",
        "reset_packets",
        "reset_failed",
        "requeued",
        "syn_retransmits",
        "flows_superseded",
        "flows_midstream",
        "flows_expired",
        "flows_closed",
        "connection_records_lost",
        "flows_new_local",
        "syns_deferred",
        "syn_payloads",
        "tunneled_resets",
        "scratch_missing",
        "tcp_fragments",
        "headers_too_deep",
        "quic_flows",
        "quic_restarts",
        "quic_not_tracked",
        "quic_blocked",
        "quic_dropped",
        "quic_refused",
        "datagram_tail_calls_failed",
        "dns_captured",
        "dns_truncated",
        "dns_forged",
        "dns_forge_skipped",
        "flows_server_first",
        "prefilter_allowed",
        "prefilter_candidates",
        "prefilter_undecided",
        "prefilter_tail_calls_failed",
        "pages_sent",
        "page_failed",
    ];
}

#[cfg(feature = "user")]
mod pod {
    use super::{
        FlowKey, FlowState, FlowTuple, PAGE_MAX, PageEntry, RecordHeader, SensorConfig,
        SocketOwner, VerdictEntry,
    };

    // SAFETY: repr(C), only integer fields and arrays of them (`RawAddr` is `[u32; 4]`),
    // explicit `_pad` and no implicit padding (40 bytes, align 4): any bit pattern is valid.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as `FlowKey`: repr(C) integers with explicit `_pad`, 40 bytes, no implicit
    // padding; any bit pattern is valid.
    unsafe impl aya::Pod for FlowTuple {}
    // SAFETY: repr(C), only integer fields (enums are stored as u8), explicit `_pad`, no
    // implicit padding (120 bytes, align 8); any bit pattern is valid.
    unsafe impl aya::Pod for FlowState {}
    // SAFETY: repr(C), a `FlowTuple` and integer fields with explicit `_pad`/`_pad2`, no
    // implicit padding (88 bytes, align 8); any bit pattern is valid.
    unsafe impl aya::Pod for RecordHeader {}
    // SAFETY: repr(C), only integer fields with explicit `_pad`, no implicit padding
    // (40 bytes, align 8); any bit pattern is valid.
    unsafe impl aya::Pod for SensorConfig {}
    // SAFETY: repr(C), four u64, no padding (32 bytes); any bit pattern is valid.
    unsafe impl aya::Pod for crate::prefilter::Lengths {}
    // SAFETY: repr(C), `verdict` is a raw u8 (decoded by `Verdict::from_raw`), explicit
    // `_pad`, no implicit padding (8 bytes); any bit pattern is valid.
    unsafe impl aya::Pod for VerdictEntry {}
    // SAFETY: repr(C), only integer fields and a byte array, no padding at all (48 bytes,
    // align 8); any bit pattern is valid.
    unsafe impl aya::Pod for SocketOwner {}
    // SAFETY: repr(C), two u32 and a byte array, no padding (1184 bytes, align 4); any
    // bit pattern is valid.
    unsafe impl aya::Pod for PageEntry {}

    // The sizes the comments above rely on: a field added with an implicit hole fails here.
    const _: () = {
        assert!(size_of::<FlowKey>() == 40);
        assert!(size_of::<FlowTuple>() == 40);
        assert!(size_of::<FlowState>() == 128);
        assert!(size_of::<RecordHeader>() == 88);
        assert!(size_of::<SensorConfig>() == 40);
        assert!(size_of::<VerdictEntry>() == 8);
        assert!(size_of::<SocketOwner>() == 48);
        assert!(size_of::<PageEntry>() == 8 + PAGE_MAX);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_key_is_direction_independent() {
        let a = [0x0100_12c6, 0, 0, 0];
        let b = [0x0200_12c6, 0, 0, 0];
        let (k1, a_lo) = FlowKey::canonical(FAMILY_V4, PROTO_TCP, &a, 40000, &b, 443);
        let (k2, b_lo) = FlowKey::canonical(FAMILY_V4, PROTO_TCP, &b, 443, &a, 40000);
        assert_eq!(k1, k2);
        assert_ne!(a_lo, b_lo);
    }

    #[test]
    fn same_address_orders_by_port() {
        let a = [7, 0, 0, 0];
        let (k, a_lo) = FlowKey::canonical(FAMILY_V4, PROTO_TCP, &a, 9000, &a, 80);
        assert!(!a_lo);
        assert_eq!((k.lo_port, k.hi_port), (80, 9000));
    }
}
