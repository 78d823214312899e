//! Finding the TCP segment in a packet: link layer, VLAN tags, PPPoE, IP (IPv6 extension
//! headers walked), GRE/VXLAN/GENEVE tunnels, each walk bounded and each receiver-drop
//! rule taken from `nprot_common::encap`, as replay's decoder does.

use aya_ebpf::programs::TcContext;
use nprot_common::{
    DatagramPacket, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, RawAddr,
    encap::{
        self, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ETH_P_PPP_SES, ETH_P_TEB, GENEVE_PORT, IPPROTO_GRE,
        IPPROTO_TCP, IPPROTO_UDP, MAX_IPV6_EXT, MAX_TUNNELS, MAX_VLAN_TAGS, PPPOE_HLEN, UDP_HLEN,
        VLAN_HLEN, VXLAN_PORT, off,
    },
    lifecycle,
    quic::{self, LONG_HEADER_PROBE},
    stat,
    track::Segment,
};

use crate::maps::bump;

/// A TCP/IP packet or a UDP datagram: what the tracker reads ([`Segment`]) and where its
/// headers are, for capture and for rewriting it into a reset.
pub struct Packet {
    /// The fields the flow rules read.
    pub seg: Segment,
    /// Sequence and acknowledgement numbers as on the wire.
    pub seq_raw: u32,
    pub ack_raw: u32,
    /// Data-offset byte (header length << 4), kept to rewrite the flags word.
    pub doff_byte: u8,
    /// The segment came through a tunnel (GRE, VXLAN, GENEVE): it cannot be rewritten
    /// into a reset for its peers, so a blocked flow's packets are dropped instead.
    pub tunneled: bool,
    /// Bytes of the hook device's link-layer header (the program's `L2`).
    pub l2_len: u8,
    /// Where the (innermost) IP header starts.
    pub l3_off: u32,
    pub l4_off: u32,
    pub payload_off: u32,
}

impl Packet {
    /// A datagram handed over by a tail call: what the datagram path reads of it.
    #[inline(always)]
    pub fn datagram(parsed: &DatagramPacket) -> Packet {
        Packet {
            seg: parsed.seg,
            seq_raw: 0,
            ack_raw: 0,
            doff_byte: 0,
            tunneled: parsed.tunneled != 0,
            l2_len: parsed.l2_len,
            l3_off: parsed.l3_off,
            l4_off: parsed.l4_off,
            payload_off: parsed.payload_off,
        }
    }

    /// What the datagram program needs of this datagram.
    #[inline(always)]
    pub fn handover(&self, slot: &mut DatagramPacket) {
        slot.seg = self.seg;
        slot.payload_off = self.payload_off;
        slot.l3_off = self.l3_off;
        slot.l4_off = self.l4_off;
        slot.l2_len = self.l2_len;
        slot.tunneled = u8::from(self.tunneled);
        slot._pad = [0; 2];
    }
}

/// An IP header, as [`parse_ip`] reads it.
struct IpHeader {
    family: u8,
    src: RawAddr,
    dst: RawAddr,
    /// The upper-layer protocol (after IPv6 extension headers).
    proto: u8,
    l4_off: usize,
    /// Bytes after the IP header (and its extension headers).
    payload_len: u32,
}

/// The IP header at `off` (`ethertype` says which): family, addresses, protocol,
/// where its payload starts and how long it is. IPv6 extension headers are walked
/// ([`encap::ipv6_next`]); a later fragment (v4 or v6) has no transport header.
#[inline(always)]
fn parse_ip(ctx: &TcContext, ethertype: u16, off: usize) -> Option<IpHeader> {
    // What the receiver drops is not tracked either (the same rules as replay's).
    let first: u8 = ctx.load(off).ok()?;
    if !encap::ip_version_ok(ethertype, first) {
        return None;
    }
    if ethertype == ETH_P_IP {
        let ihl = encap::ipv4_header_len(first)?;
        let frag: u16 = u16::from_be(ctx.load(off + off::IPV4_FRAG).ok()?);
        let proto: u8 = ctx.load(off + off::IPV4_PROTO).ok()?;
        // More fragments, or a later one: bytes past the first fragment are not read.
        if frag & 0x3fff != 0 && proto == IPPROTO_TCP {
            bump(stat::TCP_FRAGMENTS);
        }
        if encap::ipv4_later_fragment(frag) {
            return None;
        }
        let tot_len = u16::from_be(ctx.load(off + off::IPV4_TOT_LEN).ok()?) as u32;
        if !encap::ipv4_total_len_ok(tot_len, ihl) {
            return None;
        }
        let src: u32 = ctx.load(off + off::IPV4_SADDR).ok()?;
        let dst: u32 = ctx.load(off + off::IPV4_DADDR).ok()?;
        // tot_len is 0 on BIG TCP super-packets; fall back to the skb length then.
        let ip_len = if tot_len != 0 {
            tot_len
        } else {
            ctx.len().saturating_sub(off as u32)
        };
        return Some(IpHeader {
            family: FAMILY_V4,
            src: [src, 0, 0, 0],
            dst: [dst, 0, 0, 0],
            proto,
            l4_off: off + ihl,
            payload_len: ip_len.saturating_sub(ihl as u32),
        });
    }
    if ethertype != ETH_P_IPV6 {
        return None;
    }
    let plen = u16::from_be(ctx.load(off + off::IPV6_PLEN).ok()?) as u32;
    let src: RawAddr = ctx.load(off + off::IPV6_SADDR).ok()?;
    let dst: RawAddr = ctx.load(off + off::IPV6_DADDR).ok()?;
    let mut plen = if plen != 0 {
        plen
    } else {
        ctx.len().saturating_sub((off + off::IPV6_HLEN) as u32)
    };
    let mut next: u8 = ctx.load(off + off::IPV6_NEXT).ok()?;
    let mut at = off + off::IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT {
        let len_byte: u8 = match encap::ipv6_next(next, 0) {
            encap::Ipv6Next::Upper => break,
            _ => ctx.load(at + off::IPV6_EXT_LEN).ok()?,
        };
        let len = match encap::ipv6_next(next, len_byte) {
            encap::Ipv6Next::Skip(len) => len,
            encap::Ipv6Next::Fragment => {
                let offset: u16 = u16::from_be(ctx.load(at + off::IPV6_FRAG_OFFSET).ok()?);
                // Fragments carry whatever they carry: counted, the first one read.
                if offset & 0xfff9 != 0 {
                    bump(stat::TCP_FRAGMENTS);
                }
                if encap::ipv6_later_fragment(offset) {
                    return None;
                }
                8
            }
            encap::Ipv6Next::Upper => break,
        };
        next = ctx.load(at).ok()?;
        if encap::ipv6_misplaced(next) {
            return None;
        }
        at += len;
        plen = encap::ipv6_after_ext(plen, len)?;
    }
    if encap::ipv6_next(next, 0) != encap::Ipv6Next::Upper {
        // More extension headers than the walk reads: what they hide is not seen.
        bump(stat::HEADERS_TOO_DEEP);
        return None;
    }
    Some(IpHeader {
        family: FAMILY_V6,
        src,
        dst,
        proto: next,
        l4_off: at,
        payload_len: plen,
    })
}

/// Finds the TCP segment in a packet: through VLAN tags and a PPPoE session, then IP,
/// and into GRE, VXLAN and GENEVE tunnels, each walk bounded (`nprot_common::encap`).
/// For Ethernet the ethertype is read from the frame (the skb's protocol may be the
/// sender's `ETH_P_ALL` for packet-socket traffic).
#[inline(always)]
pub fn parse<const L2: usize>(ctx: &TcContext) -> Option<Packet> {
    let mut off = L2;
    let mut ethertype = if L2 == ETH_HLEN {
        u16::from_be(ctx.load(off::ETH_TYPE).ok()?)
    } else {
        u16::from_be(ctx.skb.protocol() as u16)
    };
    let mut tunneled = false;
    let mut ip = None;
    for depth in 0..=MAX_TUNNELS {
        for _ in 0..MAX_VLAN_TAGS {
            if !encap::is_vlan(ethertype) {
                break;
            }
            ethertype = u16::from_be(ctx.load(off + off::VLAN_TYPE).ok()?);
            off += VLAN_HLEN;
        }
        if ethertype == ETH_P_PPP_SES {
            ethertype = encap::ppp_ethertype(u16::from_be(ctx.load(off + off::PPPOE_PROTO).ok()?))?;
            off += PPPOE_HLEN;
        }
        let hdr = parse_ip(ctx, ethertype, off)?;
        if hdr.proto == IPPROTO_TCP {
            ip = Some(hdr);
            break;
        }
        if hdr.proto == IPPROTO_UDP {
            let dport = u16::from_be(ctx.load(hdr.l4_off + off::UDP_DPORT).ok()?);
            if dport != VXLAN_PORT && dport != GENEVE_PORT {
                // A datagram, not a tunnel: QUIC, maybe.
                ip = Some(hdr);
                break;
            }
        }
        if depth == MAX_TUNNELS {
            if hdr.proto == IPPROTO_GRE || hdr.proto == IPPROTO_UDP {
                bump(stat::HEADERS_TOO_DEEP);
            }
            return None;
        }
        // Into a tunnel: the inner packet is an Ethernet frame or an IP packet.
        let (inner, inner_type) = if hdr.proto == IPPROTO_GRE {
            let flags = u16::from_be(ctx.load(hdr.l4_off).ok()?);
            let len = encap::gre_header_len(flags)?;
            (
                hdr.l4_off + len,
                u16::from_be(ctx.load(hdr.l4_off + off::GRE_PROTO).ok()?),
            )
        } else if hdr.proto == IPPROTO_UDP {
            let dport = u16::from_be(ctx.load(hdr.l4_off + off::UDP_DPORT).ok()?);
            let ulen = u16::from_be(ctx.load(hdr.l4_off + off::UDP_LEN).ok()?);
            if !encap::udp_len_ok(ulen, hdr.payload_len, hdr.family) {
                return None;
            }
            let at = hdr.l4_off + UDP_HLEN;
            if dport == VXLAN_PORT {
                (at + encap::vxlan_header_len(ctx.load(at).ok()?)?, ETH_P_TEB)
            } else if dport == GENEVE_PORT {
                let len = encap::geneve_header_len(ctx.load(at).ok()?)?;
                (
                    at + len,
                    u16::from_be(ctx.load(at + off::GENEVE_PROTO).ok()?),
                )
            } else {
                return None;
            }
        } else {
            return None;
        };
        tunneled = true;
        if inner_type == ETH_P_TEB {
            ethertype = u16::from_be(ctx.load(inner + off::ETH_TYPE).ok()?);
            off = inner + ETH_HLEN;
        } else {
            ethertype = inner_type;
            off = inner;
        }
    }
    let ip = ip?;
    if ip.proto == IPPROTO_UDP {
        return datagram(ctx, &ip, L2 as u8, off, tunneled);
    }
    let l4_off = ip.l4_off;
    let ports: [u16; 2] = ctx.load(l4_off + off::TCP_PORTS).ok()?;
    let seq_ack: [u32; 2] = ctx.load(l4_off + off::TCP_SEQ).ok()?;
    let doff_flags: [u8; 2] = ctx.load(l4_off + off::TCP_DOFF).ok()?;
    let doff = encap::tcp_header_len(doff_flags[0], ip.payload_len)?;
    let seq = u32::from_be(seq_ack[0]);
    Some(Packet {
        seg: Segment {
            family: ip.family,
            proto: PROTO_TCP,
            flags: doff_flags[1],
            sport: u16::from_be(ports[0]),
            dport: u16::from_be(ports[1]),
            src: ip.src,
            dst: ip.dst,
            seq,
            ack: u32::from_be(seq_ack[1]),
            data_seq: lifecycle::data_seq(seq, doff_flags[1]),
            payload_len: ip.payload_len.saturating_sub(doff),
        },
        seq_raw: seq_ack[0],
        ack_raw: seq_ack[1],
        doff_byte: doff_flags[0],
        tunneled,
        l2_len: L2 as u8,
        l3_off: off as u32,
        l4_off: l4_off as u32,
        payload_off: l4_off as u32 + doff,
    })
}

/// A UDP datagram: its ports and length (its QUIC header is read by [`quic_header`], in
/// the datagram path's own stack frame).
#[inline(always)]
fn datagram(
    ctx: &TcContext,
    ip: &IpHeader,
    l2_len: u8,
    l3_off: usize,
    tunneled: bool,
) -> Option<Packet> {
    let l4_off = ip.l4_off;
    let ports: [u16; 2] = ctx.load(l4_off + off::UDP_SPORT).ok()?;
    let ulen = u16::from_be(ctx.load(l4_off + off::UDP_LEN).ok()?);
    if !encap::udp_len_ok(ulen, ip.payload_len, ip.family) {
        return None;
    }
    let payload_off = l4_off + UDP_HLEN;
    Some(Packet {
        seg: Segment {
            family: ip.family,
            proto: PROTO_UDP,
            flags: 0,
            sport: u16::from_be(ports[0]),
            dport: u16::from_be(ports[1]),
            src: ip.src,
            dst: ip.dst,
            seq: 0,
            ack: 0,
            data_seq: 0,
            payload_len: encap::udp_payload_len(ulen, ip.payload_len),
        },
        seq_raw: 0,
        ack_raw: 0,
        doff_byte: 0,
        tunneled,
        l2_len,
        l3_off: l3_off as u32,
        l4_off: l4_off as u32,
        payload_off: payload_off as u32,
    })
}

/// What the tracker reads of a QUIC header at `at` ([`quic::read_long`]); zero where the
/// datagram is too short.
#[inline(always)]
pub fn quic_header(ctx: &TcContext, at: usize) -> quic::Header {
    let Ok(first) = ctx.load::<u8>(at) else {
        return quic::Header::default();
    };
    let short = quic::Header {
        first,
        ..quic::Header::default()
    };
    if !short.is_long() {
        return short;
    }
    let Ok(probe) = ctx.load::<[u8; LONG_HEADER_PROBE]>(at) else {
        return short;
    };
    let (mut hdr, scid_at) = quic::read_long(&probe);
    if let Some(scid_at) = scid_at
        && let Ok(len) = ctx.load::<u8>(at + scid_at)
        && let Ok(scid) = ctx.load::<[u8; 8]>(at + scid_at + 1)
    {
        hdr.scid = quic::conn_id(scid, len);
    }
    hdr
}
