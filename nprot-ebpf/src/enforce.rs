//! What a decision does to a packet: server payload held back while a verdict is
//! pending, and a blocked flow's packets rewritten into resets.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_redirect,
    programs::TcContext,
};
use nprot_common::{
    FAMILY_V4,
    dns::Answered,
    encap::{ETH_HLEN, off},
    lifecycle::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stat,
};

use crate::{maps::bump, parse::Packet};

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
