//! The kernel pre-filter's side of the kernel: the summary the daemon loads (`PREFILTER_*`
//! maps) as `nprot_common::prefilter::judge` asks it, and the pre-filter program's run.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_skb_load_bytes},
    programs::TcContext,
};
use nprot_common::{
    CAPTURE_SEG_MAX, FAMILY_V4, PayloadRecord,
    encap::ETH_HLEN,
    names,
    prefilter::{self, BLOCKS, Judgement, Lengths, Summary},
    stat,
    track::{self, Segment},
};

use crate::{
    enforce::PASS,
    maps::{
        CONFIG, FLOWS, HASH_TEST, PREFILTER_BLOOM, PREFILTER_LENGTHS, PREFILTER_WALK, SCRATCH, bump,
    },
    parse::Packet,
    track::host,
};

/// The summary buffer in force, as the daemon wrote it.
struct KernelSummary {
    /// Which buffer: 0 or 1.
    buffer: u32,
}

impl Summary for KernelSummary {
    #[inline(always)]
    fn may_hold(&self, key: u64) -> bool {
        let m = prefilter::mix(key);
        match PREFILTER_BLOOM.get(self.buffer * BLOCKS + prefilter::block_of(m)) {
            Some(block) => prefilter::contains(block, m),
            // Cannot happen (the index is in range); if it did, wait for the daemon.
            None => true,
        }
    }

    #[inline(always)]
    fn lengths(&self) -> Lengths {
        match PREFILTER_LENGTHS.get(self.buffer) {
            Some(lengths) => *lengths,
            // As above: every length, so that nothing is missed.
            None => Lengths {
                v4: u64::MAX,
                v6: [u64::MAX; 3],
            },
        }
    }
}

/// Judges the client bytes of a payload record assembled in scratch (`len` of them) sent
/// by `seg`'s source to its destination, the server; `flags` (the record's) come back
/// through map memory ([`prefilter::Walk::keep`]), and so does `len`: held in registers
/// across the walks, each value they may take (a cut segment's length is a constant)
/// would be a verifier pass of its own.
#[inline(always)]
pub fn judge_record(
    rec: &PayloadRecord,
    len: u32,
    seg: &Segment,
    flags: u8,
) -> (Judgement, u8, u32) {
    let (Some(cfg), Some(walk)) = (CONFIG.get(0), PREFILTER_WALK.get_ptr_mut(0)) else {
        return (Judgement::UNDECIDED, flags, len);
    };
    // SAFETY: a per-CPU slot; programs run with migration disabled, so no other user.
    let walk = unsafe { &mut *walk };
    // SAFETY: writes and reads a field of the map value (volatile: LLVM keeps them).
    unsafe { core::ptr::write_volatile(&mut walk.keep, u32::from(flags)) };
    let summary = KernelSummary {
        buffer: u32::from(cfg.prefilter & prefilter::CONFIG_BUFFER_1 != 0),
    };
    let judgement = prefilter::judge(
        &rec.data,
        len,
        walk,
        &summary,
        cfg.prefilter & prefilter::CONFIG_ECH_CANDIDATE != 0,
        seg.family,
        &seg.dst,
    );
    // SAFETY: as above.
    let flags = unsafe { core::ptr::read_volatile(&walk.keep) } as u8;
    // SAFETY: as above.
    let len = unsafe { core::ptr::read_volatile(&walk.len) };
    (judgement, flags, len)
}

/// The pre-filter program's run on a client segment the TC program handed over
/// ([`track::Action::Prefilter`]): its flow is looked up again and its bytes captured
/// and judged.
#[inline(always)]
pub fn segment(ctx: &TcContext, pkt: &Packet) -> i32 {
    let seg = &pkt.seg;
    let (key, _) = seg.key();
    // The direction only matters to holding and to new entries, neither of which the
    // capture and judgement take: one program serves both.
    let mut host = host(ctx, pkt, false);
    match FLOWS.get_ptr_mut(key) {
        // SAFETY: a pointer into the map value, valid for this program run.
        Some(flow) => track::prefiltered(&mut host, seg, unsafe { &mut *flow }),
        // Evicted since the TC program's step: nothing is captured, and nothing waits.
        None => bump(stat::PREFILTER_UNDECIDED),
    }
    PASS
}

/// A summary that holds nothing and records every key it is asked in `HASH_TEST`.
struct Recording;

impl Summary for Recording {
    #[inline(always)]
    fn may_hold(&self, key: u64) -> bool {
        if let Some(count) = HASH_TEST.get_ptr_mut(0) {
            // SAFETY: pointers into the map's values, valid for this program run; the test
            // runs one program at a time.
            unsafe {
                let n = *count;
                if n < u64::from(names::HASH_TEST_KEYS) {
                    if let Some(slot) = HASH_TEST.get_ptr_mut(1 + n as u32) {
                        *slot = key;
                    }
                    *count = n + 1;
                }
            }
        }
        false
    }

    #[inline(always)]
    fn lengths(&self) -> Lengths {
        Lengths::default()
    }
}

/// The test program's run: the packet's bytes after the Ethernet header, judged as a
/// client's first bytes by [`prefilter::judge`] with [`Recording`]; returns the outcome.
#[inline(always)]
pub fn hash_test(ctx: &TcContext) -> i32 {
    let len = ctx.len().saturating_sub(ETH_HLEN as u32);
    // SAFETY: reads a local (volatile: the check below stays on the helper's register).
    let len = unsafe { core::ptr::read_volatile(&len) };
    // SAFETY: a helper without arguments; programs run with migration disabled.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let (Some(rec), Some(walk)) = (SCRATCH.get_ptr_mut(cpu), PREFILTER_WALK.get_ptr_mut(0)) else {
        return 0;
    };
    if len == 0 || len > CAPTURE_SEG_MAX as u32 {
        return 0;
    }
    // SAFETY: pointers into map values, valid for this program run (the test runs one
    // program at a time).
    let (rec, walk) = unsafe { (&mut *rec, &mut *walk) };
    // SAFETY: the destination holds CAPTURE_SEG_MAX bytes and `len` is at most that.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            ETH_HLEN as u32,
            rec.data.as_mut_ptr().cast(),
            len,
        )
    };
    if ret != 0 {
        return 0;
    }
    let judgement = prefilter::judge(&rec.data, len, walk, &Recording, false, FAMILY_V4, &[0; 4]);
    i32::from(judgement.outcome)
}
