//! Flow tracking on TC: looks the packet's flow up in `FLOWS` and takes its step with
//! `nprot_common::track`, the code replay runs too, over the kernel's maps and helpers.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_REDIRECT},
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use nprot_common::{
    FLOW_CLIENT_IS_LO, FLOW_SYN_EGRESS, FlowKey, FlowState, RecordKind, SensorConfig, Verdict,
    VerdictEntry,
    dns::{self, Answered, DNS_QUERY_READ, DnsHost, NameVerdicts, QueryScratch},
    names::PREFILTER_SLOT,
    prefilter::Judgement,
    quic, stat,
    track::{self, Action, Host, Segment},
};

use crate::{
    capture,
    enforce::{self, PASS},
    maps::{CONFIG, DATAGRAM_PACKET, DNS_NAMES, DNS_QUERY, FLOWS, TAIL_CALLS, VERDICTS, bump},
    parse::{self, Packet},
};

/// The kernel's `DNS_NAMES` map, as the DNS step reads it.
pub struct KernelNames;

impl NameVerdicts for KernelNames {
    #[inline(always)]
    fn name_verdict(&self, hash: u64) -> Option<u8> {
        // SAFETY: the value is copied out at once.
        unsafe { DNS_NAMES.get(hash) }.copied()
    }
}

impl DnsHost for Tc<'_> {
    type Names = KernelNames;

    #[inline(always)]
    fn dns_query(&mut self, seg: &Segment) -> Option<(&mut QueryScratch, &KernelNames)> {
        let scratch = DNS_QUERY.get_ptr_mut(0)?;
        // SAFETY: a per-CPU slot; programs run with migration disabled, so no other user.
        let scratch = unsafe { &mut *scratch };
        let len = if seg.payload_len > DNS_QUERY_READ as u32 {
            DNS_QUERY_READ as u32
        } else {
            seg.payload_len
        };
        // As in `capture::payload`: hidden from LLVM so that the check stays for the
        // verifier, on the register the helper gets.
        // SAFETY: reads a local.
        let len = unsafe { core::ptr::read_volatile(&len) };
        if len == 0 || len > DNS_QUERY_READ as u32 {
            return None;
        }
        // SAFETY: the destination holds DNS_QUERY_READ bytes and `len` is at most that.
        let ret = unsafe {
            bpf_skb_load_bytes(
                self.ctx.skb.skb.cast(),
                self.pkt.payload_off,
                scratch.bytes.as_mut_ptr().cast(),
                len,
            )
        };
        if ret != 0 {
            return None;
        }
        scratch.len = len;
        Some((scratch, &KernelNames))
    }

    #[inline(always)]
    fn answer(&mut self, _seg: &Segment, old_flags: u16, new_flags: u16) -> Answered {
        enforce::answer_dns(self.ctx, self.pkt, self.egress, old_flags, new_flags)
    }
}

/// The tracker's view of one program run on one packet.
pub struct Tc<'a> {
    ctx: &'a TcContext,
    pkt: &'a Packet,
    egress: bool,
    now: u64,
}

impl Host for Tc<'_> {
    #[inline(always)]
    fn config(&self) -> Option<&SensorConfig> {
        CONFIG.get(0)
    }

    #[inline(always)]
    fn now(&self) -> u64 {
        self.now
    }

    #[inline(always)]
    fn egress(&self) -> bool {
        self.egress
    }

    #[inline(always)]
    fn bump(&mut self, index: u32) {
        bump(index);
    }

    #[inline(always)]
    fn base(&self, client_is_lo: bool, egress: bool) -> FlowState {
        let mut flags = if client_is_lo { FLOW_CLIENT_IS_LO } else { 0 };
        if egress {
            flags |= FLOW_SYN_EGRESS;
        }
        FlowState {
            first_ns: self.now,
            last_ns: self.now,
            // Only egress skbs carry the local socket.
            socket_cookie: if egress {
                // SAFETY: the skb pointer is the program's context.
                unsafe { bpf_get_socket_cookie(self.ctx.skb.skb.cast()) }
            } else {
                0
            },
            ifindex: self.ifindex(),
            verdict: Verdict::Pending as u8,
            flags,
            ..FlowState::default()
        }
    }

    #[inline(always)]
    fn on_flow_interface(&self, flow: &FlowState) -> bool {
        self.ifindex() == flow.ifindex
    }

    #[inline(always)]
    fn take_verdict(&mut self, key: &FlowKey) -> Option<VerdictEntry> {
        // SAFETY: the value is copied out before the entry is removed.
        let entry = unsafe { VERDICTS.get(key) }.copied()?;
        let _ = VERDICTS.remove(key);
        Some(entry)
    }

    #[inline(always)]
    fn drop_verdict(&mut self, key: &FlowKey) {
        let _ = VERDICTS.remove(key);
    }

    #[inline(always)]
    fn available(&self) -> u32 {
        u32::MAX
    }

    #[inline(always)]
    fn emit(&mut self, seg: &Segment, flow: &FlowState, from_client: bool, kind: RecordKind) {
        capture::emit(seg, flow, from_client, kind, self.now);
    }

    #[inline(always)]
    fn capture(&mut self, seg: &Segment, flow: &FlowState, len: u32, flags: u8) -> bool {
        capture::payload(self.ctx, self.pkt, seg, flow, len, flags, self.now)
    }

    #[inline(always)]
    fn capture_judged(
        &mut self,
        seg: &Segment,
        flow: &FlowState,
        len: u32,
        flags: u8,
    ) -> Option<Judgement> {
        capture::payload_judged(self.ctx, self.pkt, seg, flow, len, flags, self.now)
    }
}

impl Tc<'_> {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the skb pointer is the program's context.
        unsafe { (*self.ctx.skb.skb).ifindex }
    }
}

/// The host of one packet's run.
#[inline(always)]
pub fn host<'a>(ctx: &'a TcContext, pkt: &'a Packet, egress: bool) -> Tc<'a> {
    Tc {
        ctx,
        pkt,
        egress,
        // SAFETY: a helper without arguments.
        now: unsafe { bpf_ktime_get_ns() },
    }
}

/// Tracks one TCP segment with the steps of `nprot_common::track` and says what becomes
/// of it.
#[inline(always)]
pub fn segment<const L2: usize>(ctx: &TcContext, pkt: &Packet, egress: bool) -> i32 {
    let seg = &pkt.seg;
    let (key, src_is_lo) = seg.key();
    let key = &key;
    let mut host = host(ctx, pkt, egress);
    if seg.is_syn() {
        let state = track::syn_state(&host, seg, src_is_lo);
        if let Some(old) = FLOWS.get_ptr_mut(key) {
            // SAFETY: a pointer into the map value, valid for this program run.
            let old = unsafe { &mut *old };
            track::syn_on_entry(&mut host, seg, key, src_is_lo, old, state);
        } else if FLOWS.insert(key, state, BPF_NOEXIST as u64).is_err() {
            bump(stat::FLOW_INSERT_FAILED);
        } else {
            // Counted from the inserted value: the entry may already be gone again (LRU
            // eviction by another CPU), and the flow must still be counted.
            track::count_new(&mut host, &state);
            if seg.payload_len != 0
                && let Some(flow) = FLOWS.get_ptr_mut(key)
            {
                // SAFETY: a pointer into the map value, valid for this program run.
                track::syn_payload(&mut host, seg, unsafe { &mut *flow });
            }
        }
        return PASS;
    }

    let Some(flow) = FLOWS.get_ptr_mut(key) else {
        // The flow's SYN went unseen: tracked from here, never inspected, counted once.
        if let Some(state) = track::midstream(&host, seg, src_is_lo) {
            if FLOWS.insert(key, state, BPF_NOEXIST as u64).is_ok() {
                bump(stat::FLOWS_MIDSTREAM);
            } else {
                bump(stat::FLOW_INSERT_FAILED);
            }
        }
        return PASS;
    };
    // SAFETY: a pointer into the map value, valid for this program run.
    let flow = unsafe { &mut *flow };
    match track::step(&mut host, seg, key, src_is_lo, flow) {
        Action::Pass => PASS,
        Action::Reset => enforce::reset::<L2>(ctx, pkt, egress),
        Action::Page { seq, ack } => enforce::page::<L2>(ctx, pkt, egress, key, seq, ack),
        Action::Hold { requeue } => enforce::hold(ctx, requeue),
        Action::Drop => enforce::DROP,
        Action::Answer => PASS,
        Action::Prefilter => {
            // The pre-filter has a program (and a stack) of its own, which finds the
            // packet in this CPU's slot and the flow in `FLOWS`.
            if let Some(slot) = DATAGRAM_PACKET.get_ptr_mut(0) {
                // SAFETY: a per-CPU slot; programs run with migration disabled, and the
                // tail call keeps the CPU.
                pkt.handover(unsafe { &mut *slot });
                // SAFETY: the context is this program's; on success the call does not
                // return.
                unsafe { TAIL_CALLS.tail_call(ctx, PREFILTER_SLOT) };
            }
            bump(stat::PREFILTER_TAIL_CALLS_FAILED);
            track::unjudged(&mut host, seg, flow);
            PASS
        }
    }
}

/// Tracks one UDP datagram with the QUIC steps of `nprot_common::quic` and says what
/// becomes of it. Run by the datagram programs, which the TCP ones tail-call: each has
/// the whole 512-byte stack, which the two paths together would exceed.
#[inline(always)]
pub fn datagram(ctx: &TcContext, pkt: &Packet, egress: bool) -> i32 {
    let seg = &pkt.seg;
    let (key, src_is_lo) = seg.key();
    let key = &key;
    let host = &mut host(ctx, pkt, egress);
    if dns::is_dns(seg) {
        return match dns::step(host, seg, src_is_lo) {
            Action::Answer => TC_ACT_REDIRECT,
            Action::Drop => enforce::DROP,
            _ => PASS,
        };
    }
    let hdr = &parse::quic_header(ctx, pkt.payload_off as usize);
    let action = if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a pointer into the map value, valid for this program run.
        quic::step(host, seg, hdr, key, src_is_lo, unsafe { &mut *flow })
    } else {
        let (action, state) = quic::unknown(host, seg, hdr, src_is_lo);
        if let Some(state) = state {
            if FLOWS.insert(key, state, BPF_NOEXIST as u64).is_err() {
                bump(stat::QUIC_NOT_TRACKED);
            } else if let Some(flow) = FLOWS.get_ptr_mut(key) {
                // SAFETY: a pointer into the map value, valid for this program run.
                quic::started(host, seg, unsafe { &mut *flow });
            } else {
                // Evicted at once by another CPU: nothing of it reaches the daemon.
                bump(stat::QUIC_NOT_TRACKED);
            }
        }
        action
    };
    match action {
        Action::Hold { requeue } => enforce::hold(host.ctx, requeue),
        Action::Drop | Action::Reset | Action::Page { .. } => enforce::DROP,
        Action::Pass | Action::Answer | Action::Prefilter => PASS,
    }
}
