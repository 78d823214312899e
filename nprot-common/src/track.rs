//! The TCP flow tracker, written once for the eBPF programs and for replay.
//!
//! Each function takes one packet's step on a flow entry ([`FlowState`]): a SYN makes or
//! restarts an entry, a packet of an unknown flow is taken up mid-stream, and every other
//! packet goes through [`step`], which follows the handshake, reports connection records,
//! captures client payload while the flow is inspected, applies the daemon's verdict and
//! says what to do with the packet ([`Action`]). What differs between the kernel and
//! replay — the flow table, the verdict map, the ring buffer, the clock, the counters — is
//! behind [`Host`]; the flow table itself stays with the caller, which looks the entry up
//! and hands it in.
//!
//! Everything is `#[inline(always)]` and free of loops and allocation, so that the eBPF
//! programs compile it into their own bodies for the verifier.

use crate::{
    CAPTURE_SEG_MAX, FLOW_CLIENT_IS_LO, FLOW_CLOSE_REPORTED, FLOW_CONTINUED, FLOW_MIDSTREAM,
    FLOW_PREALLOWED, FLOW_RESTART_CLIENT_LO, FLOW_RESTART_PENDING, FLOW_SYN_EGRESS, FlowKey,
    FlowState, FlowTuple, Inspect, PAGE_SENT, PAGE_WANTED, RECORD_BUDGET_SPENT, RECORD_EGRESS,
    RECORD_TRUNCATED, RawAddr, RecordHeader, RecordKind, SensorConfig, TcpPhase, Verdict,
    VerdictEntry,
    lifecycle::{self, SynStep, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    prefilter::{self, Judgement},
    seq_after, stat,
};

/// The fields of a TCP segment the tracker reads, in host byte order (addresses as on
/// the wire, [`RawAddr`]). A UDP datagram (QUIC, [`crate::quic`]) is one too, with
/// `proto` [`PROTO_UDP`](crate::PROTO_UDP), no flags and no sequence numbers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Segment {
    /// [`FAMILY_V4`](crate::FAMILY_V4) or [`FAMILY_V6`](crate::FAMILY_V6).
    pub family: u8,
    /// [`PROTO_TCP`](crate::PROTO_TCP) or [`PROTO_UDP`](crate::PROTO_UDP).
    pub proto: u8,
    /// TCP header flags.
    pub flags: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Source address.
    pub src: RawAddr,
    /// Destination address.
    pub dst: RawAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Sequence number of the first payload byte (after a SYN's own, for Fast Open).
    pub data_seq: u32,
    /// Payload length according to the IP header.
    pub payload_len: u32,
}

impl Segment {
    /// The flow map key of this segment, and whether its source is the key's `lo` end.
    #[inline(always)]
    pub fn key(&self) -> (FlowKey, bool) {
        FlowKey::canonical(
            self.family,
            self.proto,
            &self.src,
            self.sport,
            &self.dst,
            self.dport,
        )
    }

    /// A SYN without ACK: the opening of a connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// The flow's tuple oriented client → server, from a segment travelling either way.
    #[inline(always)]
    pub fn tuple(&self, from_client: bool) -> FlowTuple {
        let (client_addr, client_port, server_addr, server_port) = if from_client {
            (self.src, self.sport, self.dst, self.dport)
        } else {
            (self.dst, self.dport, self.src, self.sport)
        };
        FlowTuple {
            client_addr,
            server_addr,
            client_port,
            server_port,
            family: self.family,
            proto: self.proto,
            _pad: [0; 2],
        }
    }
}

/// What becomes of the packet after its step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// It goes on unchanged.
    Pass,
    /// The flow is blocked: the packet (never itself a reset) is turned into resets.
    Reset,
    /// Server payload while the client's bytes await a verdict: held back. `requeue`
    /// when it arrived on ingress within the requeue window, so that it may come back a
    /// moment later instead of being dropped.
    Hold {
        /// The packet may be requeued rather than dropped.
        requeue: bool,
    },
    /// The packet is dropped: a datagram of a blocked QUIC flow, or a QUIC Initial that
    /// `quic = "block"` refuses; for TCP, a packet of a flow whose page went out
    /// ([`Action::Page`]) that must not reach the other end.
    Drop,
    /// The packet was answered: rewritten into the answer (a forged NXDOMAIN for a DNS
    /// query of a blocked name, [`crate::dns::step`]), it goes back to its sender, and
    /// nothing of it goes on. Never returned for TCP or QUIC.
    Answer,
    /// Client bytes that start what awaits a verdict, with the kernel pre-filter on: the
    /// TC program hands the packet to the pre-filter program, which captures and judges
    /// them ([`prefiltered`]). Never returned with the pre-filter off.
    Prefilter,
    /// The first server packet after a block with a page: it becomes the page (from
    /// `PAGES`), from `seq` and acknowledging `ack`, with a FIN, and a reset goes back to
    /// the server in its stead. Reset, if the page cannot be forged.
    Page {
        /// Where the client expects the server's next byte.
        seq: u32,
        /// The client's bytes acknowledged.
        ack: u32,
    },
}

/// Where the tracker runs: the kernel's maps and helpers, or replay's tables.
pub trait Host {
    /// The sensor's settings; `None` if the daemon has not written them.
    fn config(&self) -> Option<&SensorConfig>;
    /// Monotonic ns of this packet.
    fn now(&self) -> u64;
    /// This packet passes an egress hook.
    fn egress(&self) -> bool;
    /// Adds one to counter `index` ([`stat`]).
    fn bump(&mut self, index: u32);
    /// A fresh entry: its times, the side of the client and what the hook knows about the
    /// flow (interface, local socket); `egress` when its SYN passes an egress hook.
    fn base(&self, client_is_lo: bool, egress: bool) -> FlowState;
    /// This packet was seen where the flow was first seen (a gateway guarding both its
    /// sides inspects a flow once).
    fn on_flow_interface(&self, flow: &FlowState) -> bool;
    /// Takes the daemon's verdict for `key`, if there is one.
    fn take_verdict(&mut self, key: &FlowKey) -> Option<VerdictEntry>;
    /// Forgets any verdict for `key` (its flow was replaced).
    fn drop_verdict(&mut self, key: &FlowKey);
    /// Payload bytes of this packet at hand (a capture file's snapshot length may have
    /// cut them).
    fn available(&self) -> u32;
    /// Sends a connection record; counts it itself if it is lost.
    fn emit(&mut self, seg: &Segment, flow: &FlowState, from_client: bool, kind: RecordKind);
    /// Sends a payload record of the first `len` payload bytes, with `RECORD_*` `flags`
    /// added; true if it went out (the host counts what it loses).
    fn capture(&mut self, seg: &Segment, flow: &FlowState, len: u32, flags: u8) -> bool;
    /// As [`Host::capture`], judging the bytes with the kernel pre-filter
    /// ([`prefilter::judge`]) and marking the record with the outcome; `None` if the
    /// record did not go out. A host without a summary judges nothing.
    fn capture_judged(
        &mut self,
        seg: &Segment,
        flow: &FlowState,
        len: u32,
        flags: u8,
    ) -> Option<Judgement> {
        self.capture(seg, flow, len, flags)
            .then_some(Judgement::UNDECIDED)
    }
}

/// The entry a SYN opens.
#[inline(always)]
pub fn syn_state<H: Host>(host: &H, seg: &Segment, src_is_lo: bool) -> FlowState {
    let capture = matches!(host.config(), Some(cfg) if cfg.capture != 0);
    let mut state = host.base(src_is_lo, host.egress());
    state.c2s_packets = 1;
    state.client_data_seq = seg.seq.wrapping_add(1);
    state.capture_end_seq = seg.seq.wrapping_add(1);
    state.phase = TcpPhase::SynSent as u8;
    state.inspect = if capture {
        Inspect::Capturing as u8
    } else {
        Inspect::Done as u8
    };
    state
}

/// A SYN on the key of an entry `old`: a retransmission leaves it, a SYN on an ended flow
/// replaces it with `state` (from [`syn_state`]), and a SYN on a live flow waits for its
/// server's answer ([`lifecycle::syn_step`]).
#[inline(always)]
pub fn syn_on_entry<H: Host>(
    host: &mut H,
    seg: &Segment,
    key: &FlowKey,
    src_is_lo: bool,
    old: &mut FlowState,
    state: FlowState,
) {
    let same_client = src_is_lo == (old.flags & FLOW_CLIENT_IS_LO != 0);
    let mut step = lifecycle::syn_step(old.phase, old.client_data_seq, seg.seq, same_client);
    // Data in the SYN (Fast Open) cannot wait for the server's answer: it is captured now
    // or never.
    if step == SynStep::Defer && seg.payload_len != 0 {
        host.bump(stat::FLOWS_SUPERSEDED);
        step = SynStep::Restart;
    }
    match step {
        SynStep::Retransmit => host.bump(stat::SYN_RETRANSMITS),
        SynStep::Defer => {
            old.flags |= FLOW_RESTART_PENDING;
            if src_is_lo {
                old.flags |= FLOW_RESTART_CLIENT_LO;
            } else {
                old.flags &= !FLOW_RESTART_CLIENT_LO;
            }
            old.restart_seq = seg.seq;
            old.restart_cookie = state.socket_cookie;
            host.bump(stat::SYNS_DEFERRED);
        }
        SynStep::Restart => {
            // In place: the kernel's entry keeps its LRU slot.
            *old = state;
            host.drop_verdict(key);
            flow_started(host, seg, old);
        }
    }
}

/// A new entry is in the table: it is counted, and data its SYN carried is captured.
#[inline(always)]
pub fn flow_started<H: Host>(host: &mut H, seg: &Segment, flow: &mut FlowState) {
    count_new(host, flow);
    syn_payload(host, seg, flow);
}

/// Counts a new flow entry (and, with a local socket, a locally opened one).
#[inline(always)]
pub fn count_new<H: Host>(host: &mut H, flow: &FlowState) {
    host.bump(stat::FLOWS_NEW);
    if flow.socket_cookie != 0 {
        host.bump(stat::FLOWS_NEW_LOCAL);
    }
}

/// Captures the data a SYN carries (TCP Fast Open), like a first client segment.
#[inline(always)]
pub fn syn_payload<H: Host>(host: &mut H, seg: &Segment, flow: &mut FlowState) {
    if seg.payload_len == 0 || flow.inspect != Inspect::Capturing as u8 {
        return;
    }
    host.bump(stat::SYN_PAYLOADS);
    flow.payload_ns = host.now();
    capture(host, seg, flow);
}

/// The entry of a packet whose flow the table does not hold (its SYN went unseen, or its
/// entry was evicted), if the packet may start one: tracked, never inspected, its sender
/// taken as the client.
#[inline(always)]
pub fn midstream<H: Host>(host: &H, seg: &Segment, src_is_lo: bool) -> Option<FlowState> {
    if lifecycle::picks_up_midstream(seg.flags) {
        Some(midstream_state(host, seg, src_is_lo))
    } else {
        None
    }
}

#[inline(always)]
fn midstream_state<H: Host>(host: &H, seg: &Segment, src_is_lo: bool) -> FlowState {
    let mut state = host.base(src_is_lo, host.egress());
    state.flags |= FLOW_MIDSTREAM;
    state.client_data_seq = seg.seq;
    state.capture_end_seq = seg.seq;
    state.phase = if lifecycle::ends_flow(seg.flags) {
        TcpPhase::Closed as u8
    } else {
        TcpPhase::Established as u8
    };
    state.inspect = Inspect::Done as u8;
    state.verdict = Verdict::Allow as u8;
    state
}

/// Any packet but a SYN, on the flow entry `flow` under `key`.
#[inline(always)]
pub fn step<H: Host>(
    host: &mut H,
    seg: &Segment,
    key: &FlowKey,
    src_is_lo: bool,
    flow: &mut FlowState,
) -> Action {
    let now = host.now();
    let idle_timeout = match host.config() {
        Some(cfg) => cfg.flow_idle_timeout_ns,
        None => u64::MAX,
    };
    if lifecycle::idle_expired(flow.verdict, flow.last_ns, now, idle_timeout) {
        // Whatever the entry knew is stale: take the flow up again as if first seen now.
        host.bump(stat::FLOWS_EXPIRED);
        host.drop_verdict(key);
        *flow = midstream_state(host, seg, src_is_lo);
        host.bump(stat::FLOWS_MIDSTREAM);
    }
    if flow.flags & FLOW_RESTART_PENDING != 0 {
        let from_new_server = src_is_lo != (flow.flags & FLOW_RESTART_CLIENT_LO != 0);
        if lifecycle::confirms_restart(seg.flags, from_new_server, seg.ack, flow.restart_seq) {
            restart_confirmed(host, key, flow);
            return Action::Pass;
        }
    }
    let from_client = src_is_lo == (flow.flags & FLOW_CLIENT_IS_LO != 0);
    count_packet(flow, seg, from_client, now);

    if flow.verdict == Verdict::Block as u8 {
        return blocked(host, seg, flow, from_client);
    }

    // Fast path: a flow whose inspection ended and whose handshake is settled. Its close
    // is not reported (user space holds nothing for it any more), but noted, so that the
    // entry is known to be over: one flag test, a write only on the change.
    if flow.inspect == Inspect::Done as u8 && flow.phase >= TcpPhase::Established as u8 {
        if lifecycle::ends_flow(seg.flags)
            && flow.phase != TcpPhase::Closed as u8
            && flow.flags & FLOW_CLOSE_REPORTED == 0
        {
            flow.phase = TcpPhase::Closed as u8;
            host.bump(stat::FLOWS_CLOSED);
        }
        return Action::Pass;
    }

    handshake(host, seg, flow, from_client);

    if flow.inspect != Inspect::Capturing as u8 || !host.on_flow_interface(flow) {
        return Action::Pass;
    }
    if let Some(entry) = pending_verdict(host, key, flow) {
        if entry.verdict == Verdict::Continue as u8 {
            continue_inspection(flow, entry.decided_seq, now);
        } else {
            flow.verdict = entry.verdict;
            flow.inspect = Inspect::Done as u8;
            if flow.verdict == Verdict::Block as u8 {
                // Reset from here on: the connection is over, and a new SYN on its
                // four-tuple starts a new flow without superseding anything.
                flow.phase = TcpPhase::Closed as u8;
                host.bump(stat::FLOWS_CLOSED);
                host.bump(stat::FLOWS_RESET);
                if entry.page != 0 {
                    flow.page = PAGE_WANTED;
                }
                return blocked(host, seg, flow, from_client);
            }
            return Action::Pass;
        }
    }
    // Resets are never held: one may carry data (ours do) and must reach the socket at
    // once, e.g. from an upstream nprot that blocked this flow.
    if seg.payload_len == 0 || seg.flags & TCP_RST != 0 {
        return Action::Pass;
    }
    if from_client {
        let end = seg.data_seq.wrapping_add(seg.payload_len);
        // Bytes the daemon already decided (a request body it skips) need nothing.
        if flow.flags & FLOW_CONTINUED != 0 && !seq_after(end, flow.decided_seq) {
            return Action::Pass;
        }
        // Bytes past what the pre-filter judged wait for the daemon. The verdict clock
        // starts with them: the pre-allowed bytes waited for nothing, and their record
        // may not even be read yet (it woke nobody). Unless they start right where the
        // judged bytes end (the next request on a kept-alive connection, sent before
        // the daemon's Continue for the last one): those are judged afresh.
        if flow.flags & FLOW_PREALLOWED != 0 && seq_after(end, flow.prefilter_end_seq) {
            flow.flags &= !FLOW_PREALLOWED;
            flow.payload_ns = now;
            if seg.data_seq == flow.prefilter_end_seq && prefilter_on(host) {
                return Action::Prefilter;
            }
        }
        if flow.payload_ns == 0 {
            flow.payload_ns = now;
            if prefilter_on(host) {
                return Action::Prefilter;
            }
        }
        capture(host, seg, flow);
        Action::Pass
    } else {
        let action = if flow.payload_ns == 0 && flow.flags & FLOW_CONTINUED == 0 {
            server_first(host, seg, flow)
        } else {
            hold(host, flow)
        };
        if action == Action::Pass {
            let end = seg.seq.wrapping_add(seg.payload_len);
            if flow.server_next_seq == 0 || seq_after(end, flow.server_next_seq) {
                flow.server_next_seq = end;
            }
        }
        action
    }
}

/// A packet of a blocked flow. Without a page it becomes resets. With one, the server's
/// next packet carries the page to the client; the client's packets go on until then
/// (the server answers them). Once the page is out the server's packets are dropped and
/// so are the client's bare ACKs of it, so that nothing reaches the client's socket
/// before its application has read the page and closed: its FIN, or any data, is reset.
#[inline(always)]
fn blocked<H: Host>(
    host: &mut H,
    seg: &Segment,
    flow: &mut FlowState,
    from_client: bool,
) -> Action {
    if seg.flags & TCP_RST != 0 {
        return Action::Pass;
    }
    match flow.page {
        PAGE_WANTED if from_client => Action::Pass,
        PAGE_WANTED => {
            flow.page = PAGE_SENT;
            let seq = if flow.server_next_seq != 0 {
                flow.server_next_seq
            } else {
                seg.seq
            };
            let ack = if seq_after(flow.capture_end_seq, seg.ack) {
                flow.capture_end_seq
            } else {
                seg.ack
            };
            Action::Page { seq, ack }
        }
        PAGE_SENT if !from_client || (seg.payload_len == 0 && seg.flags & TCP_FIN == 0) => {
            Action::Drop
        }
        _ => reset(host, seg),
    }
}

/// The daemon asked for client bytes awaiting a verdict to be pre-filtered.
#[inline(always)]
fn prefilter_on<H: Host>(host: &H) -> bool {
    matches!(host.config(), Some(cfg) if cfg.prefilter & prefilter::CONFIG_ON != 0)
}

/// The server spoke before its client (SMTP, FTP; SSH when its banner wins the race):
/// no client bytes will name the flow first, so the daemon judges it by where it goes
/// from a [`RecordKind::ServerFirst`] record, and the server's bytes are held meanwhile
/// as they are for a request.
#[inline(always)]
fn server_first<H: Host>(host: &mut H, seg: &Segment, flow: &mut FlowState) -> Action {
    host.bump(stat::FLOWS_SERVER_FIRST);
    flow.payload_ns = host.now();
    host.emit(seg, flow, false, RecordKind::ServerFirst);
    hold(host, flow)
}

/// The daemon's verdict for a flow awaiting one, taken (and counted) if it is there. A
/// verdict answers captured bytes, which start the verdict clock: with nothing awaiting
/// one (a kept-alive connection between requests) there is none to look up, and such a
/// flow costs about what the fast path does.
#[inline(always)]
pub(crate) fn pending_verdict<H: Host>(
    host: &mut H,
    key: &FlowKey,
    flow: &FlowState,
) -> Option<VerdictEntry> {
    if flow.payload_ns == 0 {
        return None;
    }
    let entry = host.take_verdict(key)?;
    host.bump(stat::VERDICTS_APPLIED);
    Some(entry)
}

/// Counts a packet on its flow and notes when it was seen. Flow counters are statistics:
/// a lost increment when egress and ingress race on two CPUs costs nothing that matters
/// (the bpfel target has no 64-bit atomics in core).
#[inline(always)]
pub(crate) fn count_packet(flow: &mut FlowState, seg: &Segment, from_client: bool, now: u64) {
    flow.last_ns = now;
    if from_client {
        flow.c2s_packets = flow.c2s_packets.wrapping_add(1);
        flow.c2s_bytes = flow.c2s_bytes.wrapping_add(u64::from(seg.payload_len));
    } else {
        flow.s2c_packets = flow.s2c_packets.wrapping_add(1);
        flow.s2c_bytes = flow.s2c_bytes.wrapping_add(u64::from(seg.payload_len));
    }
}

/// A blocked flow's packet becomes resets, unless it is one already (ours included, when
/// they come back through a hook).
#[inline(always)]
fn reset<H: Host>(host: &mut H, seg: &Segment) -> Action {
    if seg.flags & TCP_RST != 0 {
        return Action::Pass;
    }
    host.bump(stat::RESET_PACKETS);
    Action::Reset
}

/// A SYN-ACK that confirms a deferred SYN ([`SynStep::Defer`]): the live flow under the
/// key was superseded by a new connection, which starts here.
#[inline(always)]
fn restart_confirmed<H: Host>(host: &mut H, key: &FlowKey, flow: &mut FlowState) {
    let capture = matches!(host.config(), Some(cfg) if cfg.capture != 0);
    let client_is_lo = flow.flags & FLOW_RESTART_CLIENT_LO != 0;
    let data_seq = flow.restart_seq.wrapping_add(1);
    // The SYN went the other way through this hook (egress when its answer comes in).
    let mut state = host.base(client_is_lo, !host.egress());
    state.socket_cookie = flow.restart_cookie;
    state.c2s_packets = 1;
    state.s2c_packets = 1;
    state.client_data_seq = data_seq;
    state.capture_end_seq = data_seq;
    state.phase = TcpPhase::SynAckSeen as u8;
    state.inspect = if capture {
        Inspect::Capturing as u8
    } else {
        Inspect::Done as u8
    };
    // A flow whose close was seen ended; one that went quiet was superseded.
    if flow.flags & FLOW_CLOSE_REPORTED == 0 {
        host.bump(stat::FLOWS_SUPERSEDED);
    }
    *flow = state;
    host.drop_verdict(key);
    count_new(host, flow);
}

/// Applies [`Verdict::Continue`]: what is held goes, inspection goes on after
/// `decided_seq` with a fresh capture budget, and the verdict clock restarts only if
/// client bytes past it were captured already (a pipelined request). Those stay
/// pre-allowed if the pre-filter allowed every one of them (kept-alive requests judged
/// in the kernel while the daemon's Continue for an earlier one was on its way).
#[inline(always)]
fn continue_inspection(flow: &mut FlowState, decided_seq: u32, now: u64) {
    let still_preallowed = flow.flags & FLOW_PREALLOWED != 0
        && seq_after(flow.prefilter_end_seq, decided_seq)
        && !seq_after(flow.capture_end_seq, flow.prefilter_end_seq);
    flow.flags |= FLOW_CONTINUED;
    if !still_preallowed {
        flow.flags &= !FLOW_PREALLOWED;
    }
    flow.decided_seq = decided_seq;
    flow.captured = 0;
    flow.payload_ns = if seq_after(flow.capture_end_seq, decided_seq) {
        now
    } else {
        0
    };
}

/// Server payload of a flow still under inspection is held back while the verdict is
/// pending, up to the verdict timeout (then the flow fails open).
#[inline(always)]
pub(crate) fn hold<H: Host>(host: &mut H, flow: &mut FlowState) -> Action {
    if flow.payload_ns == 0 {
        // Nothing awaits a decision on a continued flow: the proxy's answer passes.
        if flow.flags & FLOW_CONTINUED != 0 {
            return Action::Pass;
        }
        // A TCP server that speaks first is judged (`server_first`); a datagram flow's
        // entry starts with its client's bytes, so only an odd one gets here: let it go.
        flow.inspect = Inspect::Done as u8;
        flow.verdict = Verdict::Allow as u8;
        return Action::Pass;
    }
    // Nothing in force can match what awaits the verdict: the answer need not wait.
    if flow.flags & FLOW_PREALLOWED != 0 {
        return Action::Pass;
    }
    let (hold, verdict_timeout_ns, requeue_ns) = match host.config() {
        Some(cfg) => (cfg.hold, cfg.verdict_timeout_ns, cfg.requeue_ns),
        None => return Action::Pass,
    };
    if hold == 0 {
        return Action::Pass;
    }
    let waited = host.now().saturating_sub(flow.payload_ns);
    if waited > verdict_timeout_ns {
        flow.inspect = Inspect::Done as u8;
        flow.verdict = Verdict::Allow as u8;
        host.bump(stat::FAIL_OPEN);
        return Action::Pass;
    }
    Action::Hold {
        requeue: !host.egress() && waited < requeue_ns,
    }
}

/// Follows the handshake and reports its outcome, and the close of a flow still under
/// inspection.
#[inline(always)]
fn handshake<H: Host>(host: &mut H, seg: &Segment, flow: &mut FlowState, from_client: bool) {
    let phase = flow.phase;
    if phase == TcpPhase::SynSent as u8 && !from_client {
        if seg.flags & TCP_RST != 0 {
            flow.phase = TcpPhase::Failed as u8;
            flow.inspect = Inspect::Done as u8;
            host.emit(seg, flow, from_client, RecordKind::Failed);
        } else if seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            flow.phase = TcpPhase::SynAckSeen as u8;
            flow.server_next_seq = seg.seq.wrapping_add(1);
        }
    } else if phase == TcpPhase::SynAckSeen as u8
        && from_client
        && seg.flags & (TCP_ACK | TCP_RST) == TCP_ACK
    {
        flow.phase = TcpPhase::Established as u8;
        host.emit(seg, flow, from_client, RecordKind::Established);
    } else if phase >= TcpPhase::Established as u8
        && lifecycle::ends_flow(seg.flags)
        && flow.inspect == Inspect::Capturing as u8
        && flow.flags & FLOW_CLOSE_REPORTED == 0
    {
        // The phase stays: a RST with a bad checksum or a FIN out of window looks the
        // same here and the server ignores it, so the flow is still inspected, and a SYN
        // on its ports waits for the server's answer (see `lifecycle::SynStep::Defer`).
        flow.flags |= FLOW_CLOSE_REPORTED;
        host.bump(stat::FLOWS_CLOSED);
        host.emit(seg, flow, from_client, RecordKind::Closed);
    }
}

/// Captures client payload, bounded per segment ([`CAPTURE_SEG_MAX`]) and per flow
/// (`capture_flow_max`).
#[inline(always)]
pub(crate) fn capture<H: Host>(host: &mut H, seg: &Segment, flow: &mut FlowState) {
    if let Some(len) = capture_bounds(host, seg, flow)
        && host.capture(seg, flow, len.0, len.1)
    {
        captured(host, seg, flow, len.0);
    }
}

/// What [`Action::Prefilter`] asked for, in the pre-filter program: the client bytes are
/// captured and judged, and the flow is pre-allowed if nothing can match them. Every
/// judgement is counted once: allowed, candidate or undecided.
#[inline(always)]
pub fn prefiltered<H: Host>(host: &mut H, seg: &Segment, flow: &mut FlowState) {
    let judgement = match capture_bounds(host, seg, flow) {
        Some((len, flags)) => match host.capture_judged(seg, flow, len, flags) {
            Some(j) => {
                captured(host, seg, flow, len);
                j
            }
            None => Judgement::UNDECIDED,
        },
        None => Judgement::UNDECIDED,
    };
    match judgement.outcome {
        prefilter::ALLOWED => {
            flow.flags |= FLOW_PREALLOWED;
            flow.prefilter_end_seq = seg.data_seq.wrapping_add(judgement.covered);
            host.bump(stat::PREFILTER_ALLOWED);
        }
        prefilter::CANDIDATE => host.bump(stat::PREFILTER_CANDIDATES),
        _ => host.bump(stat::PREFILTER_UNDECIDED),
    }
}

/// [`Action::Prefilter`] where the pre-filter program could not run: the bytes are
/// captured unjudged, and counted undecided.
#[inline(always)]
pub fn unjudged<H: Host>(host: &mut H, seg: &Segment, flow: &mut FlowState) {
    capture(host, seg, flow);
    host.bump(stat::PREFILTER_UNDECIDED);
}

/// How much of the segment [`capture`] takes, and the record's flags; counts the cuts.
#[inline(always)]
fn capture_bounds<H: Host>(host: &mut H, seg: &Segment, flow: &FlowState) -> Option<(u32, u8)> {
    let flow_max = host.config()?.capture_flow_max;
    let (len, flags) = capture_len(seg.payload_len, host.available(), flow.captured, flow_max)?;
    if flags & RECORD_TRUNCATED != 0 {
        host.bump(stat::SEGMENTS_TRUNCATED);
    }
    if flags & RECORD_BUDGET_SPENT != 0 {
        host.bump(stat::FLOW_BUDGET_SPENT);
    }
    if len == 0 { None } else { Some((len, flags)) }
}

/// Notes `len` bytes of the segment as captured.
#[inline(always)]
fn captured<H: Host>(host: &mut H, seg: &Segment, flow: &mut FlowState, len: u32) {
    flow.captured += len;
    let end = seg.data_seq.wrapping_add(seg.payload_len);
    if seq_after(end, flow.capture_end_seq) {
        flow.capture_end_seq = end;
    }
    host.bump(stat::SEGMENTS_CAPTURED);
}

/// How many of a segment's `payload_len` bytes (`available` of them at hand) a flow that
/// captured `captured` of `flow_max` bytes takes, and the `RECORD_*` flags saying why it
/// is fewer; `None` once the flow's budget is spent.
#[inline(always)]
pub fn capture_len(
    payload_len: u32,
    available: u32,
    captured: u32,
    flow_max: u32,
) -> Option<(u32, u8)> {
    let budget = flow_max.saturating_sub(captured);
    if budget == 0 {
        return None;
    }
    let mut len = payload_len;
    let mut flags = 0;
    if len > CAPTURE_SEG_MAX as u32 {
        len = CAPTURE_SEG_MAX as u32;
        flags |= RECORD_TRUNCATED;
    }
    if available < len {
        len = available;
        flags |= RECORD_TRUNCATED;
    }
    if len >= budget {
        len = budget;
        flags |= RECORD_BUDGET_SPENT;
    }
    Some((len, flags))
}

/// Fills a record header for `seg` of `flow` in place (the kernel builds records where
/// they are sent, not on its 512-byte stack); `len` is 0 (a payload record sets it).
#[inline(always)]
#[allow(
    clippy::used_underscore_binding,
    reason = "the padding fields are zeroed on purpose: the record goes to user space whole"
)]
pub fn fill_header(
    hdr: &mut RecordHeader,
    seg: &Segment,
    flow: &FlowState,
    from_client: bool,
    kind: RecordKind,
    now: u64,
) {
    hdr.tuple = seg.tuple(from_client);
    hdr.ts_ns = now;
    hdr.socket_cookie = flow.socket_cookie;
    hdr.seq = seg.data_seq;
    hdr.len = 0;
    hdr.seg_len = seg.payload_len;
    hdr.ifindex = flow.ifindex;
    hdr.client_data_seq = flow.client_data_seq;
    hdr.stream_seq = if flow.flags & FLOW_CONTINUED != 0 {
        flow.decided_seq
    } else {
        flow.client_data_seq
    };
    hdr._pad2 = 0;
    hdr.kind = kind as u8;
    hdr.flags = if flow.flags & FLOW_SYN_EGRESS != 0 {
        RECORD_EGRESS
    } else {
        0
    };
    hdr._pad = [0; 2];
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn capture_is_bounded_per_segment_per_flow_and_by_what_is_at_hand() {
        let seg_max = CAPTURE_SEG_MAX as u32;
        assert_eq!(capture_len(100, u32::MAX, 0, 1000), Some((100, 0)));
        assert_eq!(
            capture_len(seg_max + 1, u32::MAX, 0, u32::MAX),
            Some((seg_max, RECORD_TRUNCATED))
        );
        assert_eq!(capture_len(100, 40, 0, 1000), Some((40, RECORD_TRUNCATED)));
        assert_eq!(
            capture_len(100, u32::MAX, 950, 1000),
            Some((50, RECORD_BUDGET_SPENT))
        );
        // Exactly filling the budget spends it: nothing more will be captured.
        assert_eq!(
            capture_len(50, u32::MAX, 950, 1000),
            Some((50, RECORD_BUDGET_SPENT))
        );
        assert_eq!(capture_len(100, u32::MAX, 1000, 1000), None);
    }

    #[test]
    fn the_tuple_is_oriented_client_to_server_either_way() {
        let seg = Segment {
            family: crate::FAMILY_V4,
            proto: crate::PROTO_TCP,
            flags: TCP_ACK,
            sport: 443,
            dport: 40000,
            src: [2, 0, 0, 0],
            dst: [1, 0, 0, 0],
            seq: 0,
            ack: 0,
            data_seq: 0,
            payload_len: 0,
        };
        let from_server = seg.tuple(false);
        assert_eq!(
            (from_server.client_port, from_server.server_port),
            (40000, 443)
        );
        assert_eq!(from_server.client_addr, [1, 0, 0, 0]);
        let as_client = seg.tuple(true);
        assert_eq!((as_client.client_port, as_client.server_port), (443, 40000));
    }

    /// A host with one pending verdict slot, counters and the records it was asked for.
    pub(crate) struct Fake {
        pub(crate) config: SensorConfig,
        pub(crate) now: u64,
        pub(crate) counters: [u64; stat::COUNT as usize],
        pub(crate) verdict: Option<VerdictEntry>,
        pub(crate) emitted: [Option<RecordKind>; 4],
        pub(crate) captured: u32,
        /// The flags of the last payload record.
        pub(crate) captured_flags: u8,
        /// The datagram's payload (DNS steps), and its length.
        pub(crate) payload: [u8; 128],
        pub(crate) payload_len: usize,
        pub(crate) scratch: crate::dns::QueryScratch,
        /// `DNS_NAMES`.
        pub(crate) names: FakeNames,
        /// The flags words of the last answer sent, and how many were.
        pub(crate) answered: Option<(u16, u16)>,
        pub(crate) answers: u32,
        /// What `answer` says.
        pub(crate) answer_result: crate::dns::Answered,
        /// What the pre-filter says of captured bytes (`capture_judged`).
        pub(crate) judgement: Judgement,
    }

    /// Up to four `DNS_NAMES` entries.
    #[derive(Default)]
    pub(crate) struct FakeNames(pub(crate) [Option<(u64, u8)>; 4]);

    impl crate::dns::NameVerdicts for FakeNames {
        fn name_verdict(&self, hash: u64) -> Option<u8> {
            self.0
                .iter()
                .flatten()
                .find(|(h, _)| *h == hash)
                .map(|(_, v)| *v)
        }
    }

    impl crate::dns::DnsHost for Fake {
        type Names = FakeNames;
        fn dns_query(
            &mut self,
            _seg: &Segment,
        ) -> Option<(&mut crate::dns::QueryScratch, &FakeNames)> {
            let n = self.payload_len.min(crate::dns::DNS_QUERY_READ);
            self.scratch.bytes[..n].copy_from_slice(&self.payload[..n]);
            self.scratch.len = n as u32;
            Some((&mut self.scratch, &self.names))
        }
        fn answer(&mut self, _seg: &Segment, old: u16, new: u16) -> crate::dns::Answered {
            if self.answer_result == crate::dns::Answered::Sent {
                self.answered = Some((old, new));
                self.answers += 1;
            }
            self.answer_result
        }
    }

    impl Default for Fake {
        fn default() -> Fake {
            Fake {
                config: SensorConfig::default(),
                now: 0,
                counters: [0; stat::COUNT as usize],
                verdict: None,
                emitted: [None; 4],
                captured: 0,
                captured_flags: 0,
                payload: [0; 128],
                payload_len: 0,
                scratch: crate::dns::QueryScratch::default(),
                names: FakeNames::default(),
                answered: None,
                answers: 0,
                answer_result: crate::dns::Answered::Sent,
                judgement: Judgement::UNDECIDED,
            }
        }
    }

    impl Host for Fake {
        fn config(&self) -> Option<&SensorConfig> {
            Some(&self.config)
        }
        fn now(&self) -> u64 {
            self.now
        }
        fn egress(&self) -> bool {
            false
        }
        fn bump(&mut self, index: u32) {
            self.counters[index as usize] += 1;
        }
        fn base(&self, client_is_lo: bool, _egress: bool) -> FlowState {
            FlowState {
                first_ns: self.now,
                last_ns: self.now,
                verdict: Verdict::Pending as u8,
                flags: if client_is_lo { FLOW_CLIENT_IS_LO } else { 0 },
                ..FlowState::default()
            }
        }
        fn on_flow_interface(&self, _flow: &FlowState) -> bool {
            true
        }
        fn take_verdict(&mut self, _key: &FlowKey) -> Option<VerdictEntry> {
            self.verdict.take()
        }
        fn drop_verdict(&mut self, _key: &FlowKey) {
            self.verdict = None;
        }
        fn available(&self) -> u32 {
            u32::MAX
        }
        fn emit(
            &mut self,
            _seg: &Segment,
            _flow: &FlowState,
            _from_client: bool,
            kind: RecordKind,
        ) {
            if let Some(slot) = self.emitted.iter_mut().find(|s| s.is_none()) {
                *slot = Some(kind);
            }
        }
        fn capture(&mut self, _seg: &Segment, _flow: &FlowState, len: u32, flags: u8) -> bool {
            self.captured += len;
            self.captured_flags = flags;
            true
        }
        fn capture_judged(
            &mut self,
            seg: &Segment,
            flow: &FlowState,
            len: u32,
            flags: u8,
        ) -> Option<Judgement> {
            self.capture(seg, flow, len, flags)
                .then_some(self.judgement)
        }
    }

    fn seg(from_client: bool, flags: u8, seq: u32, ack: u32, payload_len: u32) -> Segment {
        let (c, s) = ([1, 0, 0, 0], [2, 0, 0, 0]);
        let (src, dst, sport, dport) = if from_client {
            (c, s, 40000, 80)
        } else {
            (s, c, 80, 40000)
        };
        Segment {
            family: crate::FAMILY_V4,
            proto: crate::PROTO_TCP,
            flags,
            sport,
            dport,
            src,
            dst,
            seq,
            ack,
            data_seq: lifecycle::data_seq(seq, flags),
            payload_len,
        }
    }

    /// A host that holds server bytes while a verdict is pending (block mode).
    fn holding_host() -> Fake {
        Fake {
            config: SensorConfig {
                hold: 1,
                ..SensorConfig::default()
            },
            now: 1_000,
            ..Fake::default()
        }
    }

    /// A flow through its handshake on `host`: its key, which side is lower as seen from
    /// the client and from the server, and its entry.
    fn established(host: &mut Fake) -> (FlowKey, bool, bool, FlowState) {
        let syn = seg(true, TCP_SYN, 100, 0, 0);
        let (key, lo) = syn.key();
        let mut flow = syn_state(host, &syn, lo);
        flow_started(host, &syn, &mut flow);
        let synack = seg(false, TCP_SYN | TCP_ACK, 500, 101, 0);
        let (_, server_lo) = synack.key();
        step(host, &synack, &key, server_lo, &mut flow);
        step(host, &seg(true, TCP_ACK, 101, 501, 0), &key, lo, &mut flow);
        (key, lo, server_lo, flow)
    }

    /// A block with a page: the client's packets go on until the server's next one,
    /// which becomes the page from where the client expects the server's next byte (past
    /// the bytes of an earlier, allowed answer); then the server's packets and the
    /// client's bare ACKs are dropped, and the client's FIN is reset.
    #[test]
    fn a_block_with_a_page_turns_the_servers_next_packet_into_it() {
        let mut host = holding_host();
        let (key, lo, server_lo, mut flow) = established(&mut host);
        assert_eq!(flow.server_next_seq, 501);
        let request = seg(true, TCP_ACK, 101, 501, 40);
        assert_eq!(step(&mut host, &request, &key, lo, &mut flow), Action::Pass);
        host.now += 10;
        let answer = seg(false, TCP_ACK, 501, 141, 300);
        assert!(matches!(
            step(&mut host, &answer, &key, server_lo, &mut flow),
            Action::Hold { .. }
        ));
        host.verdict = Some(VerdictEntry::block_with_page());
        // The verdict comes with a client packet (its ACK of nothing): it goes on.
        let client_ack = seg(true, TCP_ACK, 141, 501, 0);
        assert_eq!(
            step(&mut host, &client_ack, &key, lo, &mut flow),
            Action::Pass
        );
        assert_eq!(flow.page, PAGE_WANTED);
        // The held answer's second segment comes first: the page still starts at 501,
        // and acknowledges the whole request although the server did not yet.
        let later = seg(false, TCP_ACK, 801, 121, 300);
        assert_eq!(
            step(&mut host, &later, &key, server_lo, &mut flow),
            Action::Page { seq: 501, ack: 141 }
        );
        assert_eq!(flow.page, PAGE_SENT);
        assert_eq!(
            step(&mut host, &answer, &key, server_lo, &mut flow),
            Action::Drop
        );
        let acked = seg(true, TCP_ACK, 141, 700, 0);
        assert_eq!(step(&mut host, &acked, &key, lo, &mut flow), Action::Drop);
        let fin = seg(true, TCP_FIN | TCP_ACK, 141, 700, 0);
        assert_eq!(step(&mut host, &fin, &key, lo, &mut flow), Action::Reset);
        assert_eq!(host.counters[stat::FLOWS_RESET as usize], 1);
    }

    /// Server bytes let through move where a page would start.
    #[test]
    fn the_servers_next_byte_follows_what_passed() {
        let mut host = holding_host();
        let (key, lo, server_lo, mut flow) = established(&mut host);
        let request = seg(true, TCP_ACK, 101, 501, 40);
        step(&mut host, &request, &key, lo, &mut flow);
        host.verdict = Some(VerdictEntry::continue_after(141));
        let answer = seg(false, TCP_ACK, 501, 141, 300);
        assert_eq!(
            step(&mut host, &answer, &key, server_lo, &mut flow),
            Action::Pass
        );
        assert_eq!(flow.server_next_seq, 801);
        // A retransmission of older bytes does not move it back.
        let old = seg(false, TCP_ACK, 501, 141, 100);
        step(&mut host, &old, &key, server_lo, &mut flow);
        assert_eq!(flow.server_next_seq, 801);
    }

    /// SYN, SYN-ACK, ACK, a request, then the server's answer: held until the verdict,
    /// which blocks, and from then on every packet but a reset becomes resets.
    #[test]
    fn a_flow_is_established_captured_held_and_reset_once_blocked() {
        let mut host = holding_host();
        let syn = seg(true, TCP_SYN, 100, 0, 0);
        let (key, lo) = syn.key();
        let mut flow = syn_state(&host, &syn, lo);
        flow_started(&mut host, &syn, &mut flow);
        assert_eq!(flow.phase, TcpPhase::SynSent as u8);

        let synack = seg(false, TCP_SYN | TCP_ACK, 500, 101, 0);
        let (_, from_server_lo) = synack.key();
        assert_eq!(
            step(&mut host, &synack, &key, from_server_lo, &mut flow),
            Action::Pass
        );
        let ack = seg(true, TCP_ACK, 101, 501, 0);
        assert_eq!(step(&mut host, &ack, &key, lo, &mut flow), Action::Pass);
        assert_eq!(host.emitted[0], Some(RecordKind::Established));

        let request = seg(true, TCP_ACK, 101, 501, 40);
        assert_eq!(step(&mut host, &request, &key, lo, &mut flow), Action::Pass);
        assert_eq!(host.captured, 40);
        assert_eq!(flow.capture_end_seq, 141);

        host.now += 10;
        let answer = seg(false, TCP_ACK, 501, 141, 300);
        assert_eq!(
            step(&mut host, &answer, &key, from_server_lo, &mut flow),
            Action::Hold { requeue: true }
        );

        host.verdict = Some(VerdictEntry::new(Verdict::Block));
        assert_eq!(
            step(&mut host, &answer, &key, from_server_lo, &mut flow),
            Action::Reset
        );
        assert_eq!(host.counters[stat::FLOWS_RESET as usize], 1);
        let rst = seg(true, TCP_RST | TCP_ACK, 141, 501, 0);
        assert_eq!(step(&mut host, &rst, &key, lo, &mut flow), Action::Pass);
        assert_eq!(
            step(&mut host, &request, &key, lo, &mut flow),
            Action::Reset
        );
        assert_eq!(host.counters[stat::RESET_PACKETS as usize], 2);
    }

    /// With the pre-filter on, the first client bytes go to the pre-filter program; when
    /// it allows them the answer passes at once, until the client sends past what was
    /// judged; a candidate's answer is held as before.
    #[test]
    fn prefiltered_bytes_let_the_answer_pass_until_the_client_sends_more() {
        for (outcome, counter) in [
            (prefilter::ALLOWED, stat::PREFILTER_ALLOWED),
            (prefilter::CANDIDATE, stat::PREFILTER_CANDIDATES),
        ] {
            let mut host = holding_host();
            host.config.prefilter = prefilter::CONFIG_ON;
            host.judgement = Judgement {
                outcome,
                covered: 40,
            };
            let (key, lo, server_lo, mut flow) = established(&mut host);
            let request = seg(true, TCP_ACK, 101, 501, 40);
            assert_eq!(
                step(&mut host, &request, &key, lo, &mut flow),
                Action::Prefilter
            );
            assert_eq!(host.captured, 0, "the pre-filter program captures");
            prefiltered(&mut host, &request, &mut flow);
            assert_eq!(host.captured, 40);
            assert_eq!(host.counters[counter as usize], 1);
            host.now += 10;
            let answer = seg(false, TCP_ACK, 501, 141, 300);
            let held = Action::Hold { requeue: true };
            let first = step(&mut host, &answer, &key, server_lo, &mut flow);
            if outcome == prefilter::ALLOWED {
                assert_eq!(first, Action::Pass);
                assert_eq!(flow.prefilter_end_seq, 141);
                // Bytes past the judged ones, long after them, in a segment that does
                // not start where they end (a retransmission with more): judged by
                // nobody yet, and their answer waits from their own time (requeued).
                host.now += 2 * host.config.requeue_ns + 1;
                let more = seg(true, TCP_ACK, 131, 801, 30);
                assert_eq!(step(&mut host, &more, &key, lo, &mut flow), Action::Pass);
                assert_eq!(host.captured, 70);
                assert_eq!(flow.flags & FLOW_PREALLOWED, 0);
                assert_eq!(step(&mut host, &answer, &key, server_lo, &mut flow), held);
            } else {
                assert_eq!(first, held);
            }
        }
        // Bytes the pre-filter could not judge, or the record lost: undecided, held.
        let mut host = holding_host();
        host.config.prefilter = prefilter::CONFIG_ON;
        let (key, lo, server_lo, mut flow) = established(&mut host);
        let request = seg(true, TCP_ACK, 101, 501, 40);
        assert_eq!(
            step(&mut host, &request, &key, lo, &mut flow),
            Action::Prefilter
        );
        prefiltered(&mut host, &request, &mut flow);
        assert_eq!(host.counters[stat::PREFILTER_UNDECIDED as usize], 1);
        let answer = seg(false, TCP_ACK, 501, 141, 300);
        assert_eq!(
            step(&mut host, &answer, &key, server_lo, &mut flow),
            Action::Hold { requeue: true }
        );
    }

    /// A pre-allowed flow's Continue verdict ends the pre-allowance: the next request is
    /// pre-filtered again.
    #[test]
    fn a_continue_verdict_sends_the_next_request_to_the_prefilter_again() {
        let mut host = holding_host();
        host.config.prefilter = prefilter::CONFIG_ON;
        host.judgement = Judgement {
            outcome: prefilter::ALLOWED,
            covered: 40,
        };
        let (key, lo, server_lo, mut flow) = established(&mut host);
        let request = seg(true, TCP_ACK, 101, 501, 40);
        assert_eq!(
            step(&mut host, &request, &key, lo, &mut flow),
            Action::Prefilter
        );
        prefiltered(&mut host, &request, &mut flow);
        let mut cont = VerdictEntry::new(Verdict::Continue);
        cont.decided_seq = 141;
        host.verdict = Some(cont);
        let answer = seg(false, TCP_ACK, 501, 141, 300);
        assert_eq!(
            step(&mut host, &answer, &key, server_lo, &mut flow),
            Action::Pass
        );
        assert_eq!(flow.flags & FLOW_PREALLOWED, 0);
        let next = seg(true, TCP_ACK, 141, 801, 40);
        assert_eq!(
            step(&mut host, &next, &key, lo, &mut flow),
            Action::Prefilter
        );
    }

    /// The next request on a kept-alive connection, sent before the daemon's Continue for
    /// the last one, is pre-filtered where it starts: allowed, its answer passes, and the
    /// late Continue for the first request does not take that back; a candidate's answer
    /// is held.
    #[test]
    fn a_kept_alive_request_is_prefiltered_before_the_last_ones_continue() {
        for (outcome, held) in [(prefilter::ALLOWED, false), (prefilter::CANDIDATE, true)] {
            let mut host = holding_host();
            host.config.prefilter = prefilter::CONFIG_ON;
            host.judgement = Judgement {
                outcome: prefilter::ALLOWED,
                covered: 40,
            };
            let (key, lo, server_lo, mut flow) = established(&mut host);
            let first = seg(true, TCP_ACK, 101, 501, 40);
            assert_eq!(
                step(&mut host, &first, &key, lo, &mut flow),
                Action::Prefilter
            );
            prefiltered(&mut host, &first, &mut flow);
            let answer = seg(false, TCP_ACK, 501, 141, 300);
            assert_eq!(
                step(&mut host, &answer, &key, server_lo, &mut flow),
                Action::Pass
            );

            host.now += 2 * host.config.requeue_ns + 1;
            host.judgement.outcome = outcome;
            let second = seg(true, TCP_ACK, 141, 801, 40);
            assert_eq!(
                step(&mut host, &second, &key, lo, &mut flow),
                Action::Prefilter
            );
            assert_eq!(flow.payload_ns, host.now, "its own verdict clock");
            prefiltered(&mut host, &second, &mut flow);
            assert_eq!(host.captured, 80);
            // The daemon's Continue for the first request comes late.
            let mut cont = VerdictEntry::new(Verdict::Continue);
            cont.decided_seq = 141;
            host.verdict = Some(cont);
            let answer = seg(false, TCP_ACK, 801, 181, 300);
            let expect = if held {
                Action::Hold { requeue: true }
            } else {
                Action::Pass
            };
            assert_eq!(step(&mut host, &answer, &key, server_lo, &mut flow), expect);
            assert_eq!(
                flow.flags & FLOW_PREALLOWED != 0,
                !held,
                "a Continue before the pre-allowed bytes leaves them pre-allowed"
            );
            // Its own Continue ends the pre-allowance: the third request starts afresh.
            let mut cont = VerdictEntry::new(Verdict::Continue);
            cont.decided_seq = 181;
            host.verdict = Some(cont);
            assert_eq!(
                step(&mut host, &answer, &key, server_lo, &mut flow),
                Action::Pass
            );
            assert_eq!(flow.flags & FLOW_PREALLOWED, 0);
            assert_eq!(flow.payload_ns, 0);
        }
    }

    /// A server that speaks first (an SSH or SMTP banner) has its bytes held and the flow
    /// reported for judgement; an Allow releases them, and the client's bytes after it
    /// are no longer captured.
    #[test]
    fn a_server_that_speaks_first_waits_for_a_verdict() {
        let mut host = holding_host();
        let (key, lo, server_lo, mut flow) = established(&mut host);
        let banner = seg(false, TCP_ACK, 501, 101, 20);
        assert_eq!(
            step(&mut host, &banner, &key, server_lo, &mut flow),
            Action::Hold { requeue: true }
        );
        assert_eq!(host.emitted[1], Some(RecordKind::ServerFirst));
        assert_eq!(host.counters[stat::FLOWS_SERVER_FIRST as usize], 1);
        host.now += 10;
        assert_eq!(
            step(&mut host, &banner, &key, server_lo, &mut flow),
            Action::Hold { requeue: true },
            "still held, reported once"
        );
        assert_eq!(host.emitted[2], None);
        host.verdict = Some(VerdictEntry::new(Verdict::Allow));
        assert_eq!(
            step(&mut host, &banner, &key, server_lo, &mut flow),
            Action::Pass
        );
        let reply = seg(true, TCP_ACK, 101, 521, 30);
        assert_eq!(step(&mut host, &reply, &key, lo, &mut flow), Action::Pass);
        assert_eq!(host.captured, 0);
    }

    /// A SYN with a new ISN on a live flow waits for its server's SYN-ACK before the flow
    /// is replaced; the old flow goes on being inspected meanwhile.
    #[test]
    fn a_syn_on_a_live_flow_is_deferred_until_its_server_answers() {
        let mut host = Fake {
            now: 1,
            ..Fake::default()
        };
        let syn = seg(true, TCP_SYN, 100, 0, 0);
        let (key, lo) = syn.key();
        let mut flow = syn_state(&host, &syn, lo);
        flow_started(&mut host, &syn, &mut flow);
        let again = seg(true, TCP_SYN, 7000, 0, 0);
        let state = syn_state(&host, &again, lo);
        syn_on_entry(&mut host, &again, &key, lo, &mut flow, state);
        assert_eq!(host.counters[stat::SYNS_DEFERRED as usize], 1);
        assert_eq!(flow.client_data_seq, 101, "the live flow is kept");

        let synack = seg(false, TCP_SYN | TCP_ACK, 9000, 7001, 0);
        let (_, server_lo) = synack.key();
        assert_eq!(
            step(&mut host, &synack, &key, server_lo, &mut flow),
            Action::Pass
        );
        assert_eq!(flow.client_data_seq, 7001, "the new connection took over");
        assert_eq!(flow.phase, TcpPhase::SynAckSeen as u8);
        assert_eq!(host.counters[stat::FLOWS_SUPERSEDED as usize], 1);
        assert_eq!(host.counters[stat::FLOWS_NEW as usize], 2);
    }
}
