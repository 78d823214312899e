//! What a decision does to a packet: server payload held back while a verdict is
//! pending, and a blocked flow's packets rewritten into resets.

use aya_ebpf::{
    bindings::{
        BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM,
        TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::{bpf_csum_update, bpf_redirect, bpf_skb_change_tail, bpf_skb_store_bytes},
    programs::TcContext,
};
use nprot_common::{
    FAMILY_V4, FlowKey, PAGE_MAX, PageEntry,
    dns::Answered,
    encap::{ETH_HLEN, off},
    fold,
    lifecycle::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stat,
};

use crate::{
    maps::{PAGES, bump},
    parse::Packet,
};

/// TCP's PSH flag.
const TCP_PSH: u8 = 0x08;

/// Let the packet continue: the next TCX program or the stack decides.
pub const PASS: i32 = TC_ACT_UNSPEC;

/// Drop the packet: a datagram of a blocked QUIC flow (nothing can be forged that a QUIC
/// endpoint would take as a close).
pub const DROP: i32 = TC_ACT_SHOT;

/// Holds back server payload whose flow awaits its verdict. On ingress within the
/// requeue window (`requeue`) it is first requeued into the device's backlog (it comes
/// back through this program a moment later), so a verdict that arrives within the
/// window costs nothing; after that, or on egress where a redirect cannot requeue, it is
/// dropped and the server retransmits it.
#[inline(always)]
pub fn hold(ctx: &TcContext, requeue: bool) -> i32 {
    if requeue {
        // SAFETY: the skb pointer is the program's context.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        // SAFETY: a helper taking plain values.
        let action = unsafe { bpf_redirect(ifindex, BPF_F_INGRESS as u64) };
        if action == TC_ACT_REDIRECT as i64 {
            bump(stat::REQUEUED);
            return TC_ACT_REDIRECT;
        }
    }
    bump(stat::HELD_PACKETS);
    TC_ACT_SHOT
}

/// Resets a blocked flow in both directions with this packet: a copy, turned into a
/// RST the sender accepts, goes back the way the packet came; the packet itself goes
/// on as a RST the receiver accepts. A RST carrying data is valid TCP and its data is
/// discarded, so no payload has to be cut and only the checksum deltas of the
/// rewritten words matter; swapping addresses and ports leaves the checksums alone. The
/// packet is never a reset itself (`nprot_common::track` lets those pass).
#[inline(always)]
pub fn reset<const L2: usize>(ctx: &TcContext, pkt: &Packet, egress: bool) -> i32 {
    // A reflected copy of a tunnelled segment would need its outer headers rewritten
    // too: such a segment only becomes a reset for its own receiver (so both ends
    // are reset by the next packet each sends). An outer UDP checksum (an IPv6
    // underlay) is not updated, and the receiver then drops it: blocked either way.
    if pkt.tunneled {
        bump(stat::TUNNELED_RESETS);
        if set_flags(ctx, pkt, TCP_RST | TCP_ACK).is_err() {
            bump(stat::RESET_FAILED);
            return TC_ACT_SHOT;
        }
        return PASS;
    }
    if reflect_reset::<L2>(ctx, pkt, egress).is_err() {
        bump(stat::RESET_FAILED);
    }
    // The original, as a RST with its own sequence number.
    if set_flags(ctx, pkt, TCP_RST | TCP_ACK).is_err() {
        bump(stat::RESET_FAILED);
        return TC_ACT_SHOT;
    }
    PASS
}

/// Answers a blocked plain-HTTP request with its page: a copy of this server packet
/// goes back to the server as a reset (as [`reset`] does), and the packet itself becomes
/// the page from `PAGES`, from `seq` and acknowledging `ack`, with PSH and FIN. Anything
/// that keeps the page from being forged makes the packet a reset instead (counted).
#[inline(always)]
pub fn page<const L2: usize>(
    ctx: &TcContext,
    pkt: &Packet,
    egress: bool,
    key: &FlowKey,
    seq: u32,
    ack: u32,
) -> i32 {
    let entry = match PAGES.get_ptr(key) {
        // SAFETY: a pointer into the map value, valid for this program run.
        Some(entry) if !pkt.tunneled => unsafe { &*entry },
        _ => {
            bump(stat::PAGE_FAILED);
            return reset::<L2>(ctx, pkt, egress);
        }
    };
    if reflect_reset::<L2>(ctx, pkt, egress).is_err() {
        bump(stat::RESET_FAILED);
    }
    let written = write_page(ctx, pkt, entry, seq, ack);
    let _ = PAGES.remove(key);
    match written {
        Ok(()) => {
            bump(stat::PAGES_SENT);
            PASS
        }
        Err(Unchanged) => {
            bump(stat::PAGE_FAILED);
            if set_flags(ctx, pkt, TCP_RST | TCP_ACK).is_err() {
                bump(stat::RESET_FAILED);
                return TC_ACT_SHOT;
            }
            PASS
        }
        // Half rewritten: neither the server's bytes nor a page. The client's next packet
        // is reset.
        Err(Changed) => {
            bump(stat::PAGE_FAILED);
            TC_ACT_SHOT
        }
    }
}

/// How far [`write_page`] got before a helper refused.
enum PageError {
    /// The packet is as it came.
    Unchanged,
    /// The packet is partly rewritten.
    Changed,
}
use PageError::{Changed, Unchanged};

/// Rewrites the packet into the page. The TCP checksum is kept by deltas, which the
/// helpers apply for every checksum state of the skb: header words and the pseudo
/// header's length as such; the payload's change as a sum that only a checksum already
/// complete takes (one still to be completed, CHECKSUM_PARTIAL, is summed over the new
/// payload later). The old payload's sum is never read: a complete checksum makes the
/// whole segment sum to zero, so it is minus the pseudo header's and the TCP header's.
#[inline(always)]
fn write_page(
    ctx: &TcContext,
    pkt: &Packet,
    entry: &PageEntry,
    seq: u32,
    ack: u32,
) -> Result<(), PageError> {
    let len = entry.len as usize;
    if len == 0 || len > PAGE_MAX {
        return Err(Unchanged);
    }
    let l3 = pkt.l3_off as usize;
    let l4 = pkt.l4_off as usize;
    let hdr_len = ((pkt.doff_byte >> 4) as usize) * 4;
    if hdr_len < 20 {
        return Err(Unchanged);
    }
    let old_tcp_len = hdr_len as u32 + pkt.seg.payload_len;
    let new_tcp_len = (hdr_len + len) as u32;
    // -(old payload) = pseudo header + TCP header (check included), old length.
    let minus_old = pseudo_sum(ctx, pkt, old_tcp_len).ok_or(Unchanged)?
        + header_sum(ctx, l4, hdr_len).ok_or(Unchanged)?;
    let diff = fold(fold(minus_old) + entry.sum);
    let check_before: u16 = ctx.load(l4 + off::TCP_CSUM).map_err(|_| Unchanged)?;
    ctx.l4_csum_replace(l4 + off::TCP_CSUM, 0, u64::from(diff), 0)
        .map_err(|_| Unchanged)?;
    // A CHECKSUM_COMPLETE skb's sum covers the checksum field: it moved without its data.
    let check_after: u16 = ctx.load(l4 + off::TCP_CSUM).map_err(|_| Changed)?;
    let moved = fold(u32::from(check_after) + u32::from(!check_before));
    // SAFETY: a helper taking the program's context and a plain value; a skb in another
    // checksum state refuses it and is left as it is.
    let _ = unsafe { bpf_csum_update(ctx.skb.skb, moved) };

    // SAFETY: a helper taking the program's context and plain values.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (l4 + hdr_len + len) as u32, 0) } != 0 {
        return Err(Changed);
    }
    let at = (l4 + hdr_len) as u32;
    // SAFETY: `bytes` holds PAGE_MAX bytes and `len` is at most that.
    let stored = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb,
            at,
            entry.bytes.as_ptr().cast(),
            len as u32,
            u64::from(BPF_F_RECOMPUTE_CSUM),
        )
    };
    if stored != 0 {
        return Err(Changed);
    }
    // The IP header's length, and the pseudo header's.
    let ip_hdr = l4 - l3;
    if pkt.seg.family == FAMILY_V4 {
        let old: u16 = ctx.load(l3 + off::IPV4_TOT_LEN).map_err(|_| Changed)?;
        let new = ((ip_hdr + hdr_len + len) as u16).to_be();
        ctx.store(l3 + off::IPV4_TOT_LEN, &new, 0)
            .map_err(|_| Changed)?;
        ctx.l3_csum_replace(l3 + IPV4_CSUM, u64::from(old), u64::from(new), 2)
            .map_err(|_| Changed)?;
    } else {
        let new = ((ip_hdr - off::IPV6_HLEN + hdr_len + len) as u16).to_be();
        ctx.store(l3 + off::IPV6_PLEN, &new, 0)
            .map_err(|_| Changed)?;
    }
    ctx.l4_csum_replace(
        l4 + off::TCP_CSUM,
        u64::from((old_tcp_len as u16).to_be()),
        u64::from((new_tcp_len as u16).to_be()),
        u64::from(BPF_F_PSEUDO_HDR) | 2,
    )
    .map_err(|_| Changed)?;
    rewrite_seq_ack(
        ctx,
        l4,
        [pkt.seq_raw, pkt.ack_raw],
        [seq.to_be(), ack.to_be()],
    )
    .map_err(|_| Changed)?;
    set_flags(ctx, pkt, TCP_PSH | TCP_FIN | TCP_ACK).map_err(|_| Changed)?;
    Ok(())
}

/// Offset of the IPv4 header checksum.
const IPV4_CSUM: usize = 10;

/// The one's-complement sum (unfolded) of the TCP pseudo header for `tcp_len` bytes of
/// TCP, over 16-bit words in memory order, as the kernel's checksums are.
#[inline(always)]
fn pseudo_sum(ctx: &TcContext, pkt: &Packet, tcp_len: u32) -> Option<u32> {
    let l3 = pkt.l3_off as usize;
    let mut sum = u32::from(u16::from_ne_bytes([0, 6]))
        + u32::from(u16::from_ne_bytes((tcp_len as u16).to_be_bytes()));
    if pkt.seg.family == FAMILY_V4 {
        let addrs: [u32; 2] = ctx.load(l3 + off::IPV4_SADDR).ok()?;
        for w in addrs {
            sum += (w & 0xffff) + (w >> 16);
        }
    } else {
        let addrs: [u32; 8] = ctx.load(l3 + off::IPV6_SADDR).ok()?;
        for w in addrs {
            sum += (w & 0xffff) + (w >> 16);
        }
    }
    Some(sum)
}

/// The one's-complement sum (unfolded) of the TCP header's `hdr_len` bytes, checksum
/// field included.
#[inline(always)]
fn header_sum(ctx: &TcContext, l4: usize, hdr_len: usize) -> Option<u32> {
    let mut sum = 0u32;
    for i in 0..15 {
        if i * 4 >= hdr_len {
            break;
        }
        let w: u32 = ctx.load(l4 + i * 4).ok()?;
        sum += (w & 0xffff) + (w >> 16);
    }
    Some(sum)
}

#[inline(always)]
fn reflect_reset<const L2: usize>(ctx: &TcContext, pkt: &Packet, egress: bool) -> Result<(), i64> {
    let l4 = pkt.l4_off as usize;
    let mut consumed = pkt.seg.payload_len;
    if pkt.seg.flags & (TCP_SYN | TCP_FIN) != 0 {
        consumed += 1;
    }
    // The sender expects our next byte at its ACK number.
    let seq_ack = [pkt.ack_raw, pkt.seg.seq.wrapping_add(consumed).to_be()];
    write_endpoints::<L2>(ctx, pkt, true)?;
    rewrite_seq_ack(ctx, l4, [pkt.seq_raw, pkt.ack_raw], seq_ack)?;
    set_flags(ctx, pkt, TCP_RST | TCP_ACK)?;
    // SAFETY: the skb pointer is the program's context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let flags = if egress { BPF_F_INGRESS as u64 } else { 0 };
    let sent = ctx.clone_redirect(ifindex, flags);
    // Put the packet back as it was (flags aside) whether or not the copy went out.
    write_endpoints::<L2>(ctx, pkt, false)?;
    rewrite_seq_ack(ctx, l4, seq_ack, [pkt.seq_raw, pkt.ack_raw])?;
    sent
}

/// Writes the packet's endpoints back to front (`reflected`) or as parsed. MACs are
/// swapped in place, which is its own inverse.
#[inline(always)]
fn write_endpoints<const L2: usize>(
    ctx: &TcContext,
    pkt: &Packet,
    reflected: bool,
) -> Result<(), i64> {
    if L2 == ETH_HLEN {
        let macs: [u8; 12] = ctx.load(0)?;
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&macs[6..]);
        swapped[6..].copy_from_slice(&macs[..6]);
        ctx.store(0, &swapped, 0)?;
    }
    let (src, dst, sport, dport) = if reflected {
        (&pkt.seg.dst, &pkt.seg.src, pkt.seg.dport, pkt.seg.sport)
    } else {
        (&pkt.seg.src, &pkt.seg.dst, pkt.seg.sport, pkt.seg.dport)
    };
    let l3 = pkt.l3_off as usize;
    if pkt.seg.family == FAMILY_V4 {
        ctx.store(l3 + off::IPV4_SADDR, &[src[0], dst[0]], 0)?;
    } else {
        ctx.store(l3 + off::IPV6_SADDR, src, 0)?;
        ctx.store(l3 + off::IPV6_DADDR, dst, 0)?;
    }
    ctx.store(
        pkt.l4_off as usize + off::TCP_PORTS,
        &[sport.to_be(), dport.to_be()],
        0,
    )?;
    Ok(())
}

#[inline(always)]
fn rewrite_seq_ack(ctx: &TcContext, l4: usize, from: [u32; 2], to: [u32; 2]) -> Result<(), i64> {
    ctx.store(l4 + off::TCP_SEQ, &to, 0)?;
    ctx.l4_csum_replace(l4 + off::TCP_CSUM, from[0] as u64, to[0] as u64, 4)?;
    ctx.l4_csum_replace(l4 + off::TCP_CSUM, from[1] as u64, to[1] as u64, 4)?;
    Ok(())
}

#[inline(always)]
fn set_flags(ctx: &TcContext, pkt: &Packet, flags: u8) -> Result<(), i64> {
    let l4 = pkt.l4_off as usize;
    let current: [u8; 2] = ctx.load(l4 + off::TCP_DOFF)?;
    if current[1] == flags {
        return Ok(());
    }
    let old = u16::from_ne_bytes(current);
    let new = u16::from_ne_bytes([pkt.doff_byte, flags]);
    ctx.store(l4 + off::TCP_FLAGS, &flags, 0)?;
    ctx.l4_csum_replace(l4 + off::TCP_CSUM, old as u64, new as u64, 2)?;
    Ok(())
}

/// Turns a DNS query into its answer in place and sends it back: the header's flags
/// word becomes `new_flags` (from `old_flags`, both host order), addresses, ports and
/// (on Ethernet) MAC addresses are swapped, and the packet is redirected to the device
/// it is on: to its ingress from an egress hook (a query of this host goes back to its
/// socket), out again from an ingress hook (a forwarded client's query on a gateway).
/// Only the flags word changes the UDP checksum (the swaps keep the one's-complement
/// sum); a zero IPv4 UDP checksum stays zero, and a locally made packet whose checksum
/// is still to be completed (CHECKSUM_PARTIAL) is left to the helper.
///
/// A query inside a tunnel or behind VLAN/PPPoE headers is not answered (`Skipped`).
#[inline(always)]
pub fn answer_dns(
    ctx: &TcContext,
    pkt: &Packet,
    egress: bool,
    old_flags: u16,
    new_flags: u16,
) -> Answered {
    if pkt.tunneled || pkt.l3_off != u32::from(pkt.l2_len) {
        return Answered::Skipped;
    }
    let flags_at = pkt.payload_off as usize + 2;
    if ctx.store(flags_at, &new_flags.to_be(), 0).is_err() {
        return Answered::Skipped;
    }
    // From here on the packet is changed: a failure leaves neither query nor answer.
    if forge_rest(ctx, pkt, old_flags, new_flags).is_err() {
        return Answered::Broken;
    }
    // SAFETY: the skb pointer is the program's context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let flags = if egress { BPF_F_INGRESS as u64 } else { 0 };
    // SAFETY: a helper taking plain values.
    if unsafe { bpf_redirect(ifindex, flags) } != TC_ACT_REDIRECT as i64 {
        return Answered::Broken;
    }
    Answered::Sent
}

#[inline(always)]
fn forge_rest(ctx: &TcContext, pkt: &Packet, old_flags: u16, new_flags: u16) -> Result<(), i64> {
    let l4 = pkt.l4_off as usize;
    ctx.l4_csum_replace(
        l4 + off::UDP_CSUM,
        u64::from(old_flags.to_be()),
        u64::from(new_flags.to_be()),
        2 | BPF_F_MARK_MANGLED_0 as u64,
    )?;
    if pkt.l2_len as usize == ETH_HLEN {
        let macs: [u8; 12] = ctx.load(0)?;
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&macs[6..]);
        swapped[6..].copy_from_slice(&macs[..6]);
        ctx.store(0, &swapped, 0)?;
    }
    let seg = &pkt.seg;
    let l3 = pkt.l3_off as usize;
    if seg.family == FAMILY_V4 {
        ctx.store(l3 + off::IPV4_SADDR, &[seg.dst[0], seg.src[0]], 0)?;
    } else {
        ctx.store(l3 + off::IPV6_SADDR, &seg.dst, 0)?;
        ctx.store(l3 + off::IPV6_DADDR, &seg.src, 0)?;
    }
    ctx.store(
        l4 + off::UDP_SPORT,
        &[seg.dport.to_be(), seg.sport.to_be()],
        0,
    )?;
    Ok(())
}
