//! The kernel pre-filter's side of the kernel: the summary the daemon loads (`PREFILTER_*`
//! maps) as `nprot_common::prefilter::judge` asks it, and the pre-filter program's run.

use aya_ebpf::programs::TcContext;
use nprot_common::{
    PayloadRecord,
    prefilter::{self, BLOCKS, Judgement, Lengths, Summary},
    stat,
    track::{self, Segment},
};

use crate::{
    enforce::PASS,
    maps::{CONFIG, FLOWS, PREFILTER_BLOOM, PREFILTER_LENGTHS, PREFILTER_WALK, bump},
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
