//! Reporting to the daemon through `RECORDS`: connection records, and client payload copied
//! out of the skb (how much is `nprot_common::track`'s decision).

use core::mem::{offset_of, size_of};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_skb_load_bytes},
    programs::TcContext,
};
use nprot_common::{
    CAPTURE_SEG_MAX, FlowState, PayloadRecord, RECORD_CANDIDATE, RECORD_FROM_SERVER,
    RECORD_PREALLOWED, RECORDS_WAKE_BYTES, RecordHeader, RecordKind,
    prefilter::{self as nprot_prefilter, Judgement},
    stat,
    track::{self, Segment},
};

use crate::{
    maps::{RECORDS, SCRATCH, bump},
    parse::Packet,
    prefilter,
};

/// The wake-up flag of a record of `len` bytes nobody waits for: none, unless it takes the
/// unread records past a multiple of [`RECORDS_WAKE_BYTES`]. Otherwise such records are
/// read with the next one that wakes the daemon, which must first take all of them out
/// of the ring: a flood of them between two periodic drains would delay that one's verdict
/// by milliseconds. A multiple rather than one threshold, so that a crossing missed in a
/// race between CPUs is made up by the next.
#[inline(always)]
fn unurgent_wake(len: usize) -> u64 {
    let unread = RECORDS.query(u64::from(BPF_RB_AVAIL_DATA));
    // The ring's own 8-byte header comes on top of the record.
    let after = unread + len as u64 + 8;
    if unread / RECORDS_WAKE_BYTES != after / RECORDS_WAKE_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Reports a connection-level record. These are not urgent: they wake nobody (see
/// [`unurgent_wake`]) and are read with the next payload record or by the daemon's
/// periodic drain, which saves a wake-up per record on the verdict loop.
#[inline(always)]
pub fn emit(seg: &Segment, flow: &FlowState, from_client: bool, kind: RecordKind, now: u64) {
    let wake = unurgent_wake(size_of::<RecordHeader>());
    match RECORDS.reserve::<RecordHeader>(0) {
        Some(mut entry) => {
            // SAFETY: fill_header writes every field of the reserved record.
            let hdr = unsafe { &mut *entry.as_mut_ptr() };
            track::fill_header(hdr, seg, flow, from_client, kind, now);
            entry.submit(wake);
        }
        None => {
            bump(stat::RINGBUF_DROPS);
            bump(stat::CONNECTION_RECORDS_LOST);
        }
    }
}

/// Sends the first `len` payload bytes of the packet as a payload record (the client's,
/// unless `flags` has `RECORD_FROM_SERVER`); true if it went out.
#[inline(always)]
pub fn payload(
    ctx: &TcContext,
    pkt: &Packet,
    seg: &Segment,
    flow: &FlowState,
    len: u32,
    flags: u8,
    now: u64,
) -> bool {
    match load(ctx, pkt, len) {
        Some((rec, len)) => send(rec, seg, flow, len, flags, now),
        None => false,
    }
}

/// As [`payload`], judging the bytes with the pre-filter before they go out (the record
/// says how: `RECORD_PREALLOWED`, `RECORD_CANDIDATE`); `None` if the record did not go out.
#[inline(always)]
pub fn payload_judged(
    ctx: &TcContext,
    pkt: &Packet,
    seg: &Segment,
    flow: &FlowState,
    len: u32,
    flags: u8,
    now: u64,
) -> Option<Judgement> {
    let (rec, len) = load(ctx, pkt, len)?;
    let (judgement, flags, len) = prefilter::judge_record(rec, len, seg, flags);
    // Bounded again for the verifier: it came back through memory.
    if len == 0 || len > CAPTURE_SEG_MAX as u32 {
        return None;
    }
    let flags = flags
        | match judgement.outcome {
            nprot_prefilter::ALLOWED => RECORD_PREALLOWED,
            nprot_prefilter::CANDIDATE => RECORD_CANDIDATE,
            _ => 0,
        };
    send(rec, seg, flow, len, flags, now).then_some(judgement)
}

/// Copies the first `len` payload bytes of the packet into this CPU's record scratch.
#[inline(always)]
fn load(ctx: &TcContext, pkt: &Packet, len: u32) -> Option<(&'static mut PayloadRecord, u32)> {
    // SAFETY: a helper without arguments. Programs run with migration disabled: this
    // CPU's slot has no other user now.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(rec) = SCRATCH.get_ptr_mut(cpu) else {
        bump(stat::SCRATCH_MISSING);
        return None;
    };
    // SAFETY: a pointer into the map value, valid for this program run.
    let rec = unsafe { &mut *rec };
    // LLVM knows `len` is within bounds and would drop a plain re-check, but the verifier
    // loses track of it across the caller's arithmetic. A volatile read hides the value
    // from LLVM so that the check below stays, on the register the helper gets.
    // SAFETY: reads a local.
    let len = unsafe { core::ptr::read_volatile(&len) };
    if len == 0 || len > CAPTURE_SEG_MAX as u32 {
        return None;
    }
    // SAFETY: the destination holds CAPTURE_SEG_MAX bytes and `len` is at most that.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            pkt.payload_off,
            rec.data.as_mut_ptr().cast(),
            len,
        )
    };
    if ret != 0 {
        return None;
    }
    Some((rec, len))
}

/// Sends the record `load` assembled, `len` payload bytes of it; true if it went out.
#[inline(always)]
fn send(
    rec: &mut PayloadRecord,
    seg: &Segment,
    flow: &FlowState,
    len: u32,
    flags: u8,
    now: u64,
) -> bool {
    let from_client = flags & RECORD_FROM_SERVER == 0;
    track::fill_header(
        &mut rec.header,
        seg,
        flow,
        from_client,
        RecordKind::Payload,
        now,
    );
    rec.header.len = len;
    rec.header.flags |= flags;

    let total = offset_of!(PayloadRecord, data) + len as usize;
    if total > size_of::<PayloadRecord>() {
        return false;
    }
    // SAFETY: `total` bytes of the record are initialised and within it (checked above).
    let bytes =
        unsafe { core::slice::from_raw_parts((rec as *const PayloadRecord).cast::<u8>(), total) };
    // Payload is what a verdict waits for: always wake the reader (an adaptive wake-up
    // would be skipped while unwoken connection records are still unread). Unless the
    // pre-filter let the flow go on: nothing waits, and the record is read with the next
    // one that wakes the reader (which the daemon's backlog lets go first) or by the
    // periodic drain, sparing a wake-up per flow ([`unurgent_wake`]).
    let wake = if flags & RECORD_PREALLOWED != 0 {
        unurgent_wake(total)
    } else {
        u64::from(BPF_RB_FORCE_WAKEUP)
    };
    if RECORDS.output::<[u8]>(bytes, wake).is_ok() {
        true
    } else {
        bump(stat::RINGBUF_DROPS);
        false
    }
}
