//! How to walk from a frame's outer header to the TCP segment it carries: VLAN tags,
//! PPPoE sessions, IPv6 extension headers, GRE, VXLAN and GENEVE. The length rules are
//! written once here for the eBPF programs and for replay, and so are the checks that
//! skip what a Linux receiver would drop (a version nibble that disagrees with the
//! ethertype, lengths shorter than their header or longer than their packet); each is a
//! pure function of a few header bytes, and every walk is bounded.

/// Ethertype: IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// Ethertype: IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// Ethertype: 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// Ethertype: 802.1ad service tag (QinQ).
pub const ETH_P_8021AD: u16 = 0x88A8;
/// Ethertype: the pre-standard QinQ tag some switches still send.
pub const ETH_P_QINQ_9100: u16 = 0x9100;
/// Ethertype: PPPoE session stage.
pub const ETH_P_PPP_SES: u16 = 0x8864;
/// Ethertype (GRE/GENEVE protocol): transparent Ethernet bridging, an inner Ethernet frame.
pub const ETH_P_TEB: u16 = 0x6558;
/// Length of an Ethernet header without tags.
pub const ETH_HLEN: usize = 14;

/// IP protocol: TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol: UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol: GRE.
pub const IPPROTO_GRE: u8 = 47;

/// UDP port of VXLAN (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;
/// UDP port of GENEVE (RFC 8926).
pub const GENEVE_PORT: u16 = 6081;
/// Length of the VXLAN header after UDP.
pub const VXLAN_HLEN: usize = 8;
/// Length of the UDP header.
pub const UDP_HLEN: usize = 8;
/// Length of a PPPoE session header with its PPP protocol field.
pub const PPPOE_HLEN: usize = 8;
/// Length of one VLAN tag.
pub const VLAN_HLEN: usize = 4;

// The bounds are the kernel program's and replay's alike: past one, the frame is not
// tracked (replay counts it `too_deep`). Each multiplies the states the verifier walks:
// raise one only if the programs still load (the `capture` tests).

/// Tunnels (GRE, VXLAN, GENEVE) walked into at most, one inside the other. PPPoE and
/// VLAN tags are walked at every level and are not tunnels.
pub const MAX_TUNNELS: usize = 2;
/// VLAN tags walked at most per level (outside any tunnel, or inside each): QinQ and
/// more.
pub const MAX_VLAN_TAGS: usize = 4;
/// IPv6 extension headers walked at most before the upper layer, per IP header.
pub const MAX_IPV6_EXT: usize = 8;

/// Where the fields the programs read sit in their headers, in bytes from the header's
/// start: one table for the kernel's loads and stores and replay's decoder.
pub mod off {
    /// Ethernet: the ethertype.
    pub const ETH_TYPE: usize = 12;
    /// 802.1Q/802.1ad tag: the ethertype that follows it.
    pub const VLAN_TYPE: usize = 2;
    /// PPPoE session header: the PPP protocol number.
    pub const PPPOE_PROTO: usize = 6;
    /// IPv4: total length.
    pub const IPV4_TOT_LEN: usize = 2;
    /// IPv4: flags and fragment offset.
    pub const IPV4_FRAG: usize = 6;
    /// IPv4: protocol.
    pub const IPV4_PROTO: usize = 9;
    /// IPv4: source address (the destination follows at +4).
    pub const IPV4_SADDR: usize = 12;
    /// IPv4: destination address.
    pub const IPV4_DADDR: usize = 16;
    /// IPv6: payload length.
    pub const IPV6_PLEN: usize = 4;
    /// IPv6: next header.
    pub const IPV6_NEXT: usize = 6;
    /// IPv6: source address.
    pub const IPV6_SADDR: usize = 8;
    /// IPv6: destination address.
    pub const IPV6_DADDR: usize = 24;
    /// IPv6: the fixed header's length.
    pub const IPV6_HLEN: usize = 40;
    /// IPv6 extension header: its length byte (the next header is at 0).
    pub const IPV6_EXT_LEN: usize = 1;
    /// IPv6 fragment header: offset and flags.
    pub const IPV6_FRAG_OFFSET: usize = 2;
    /// UDP: source and destination ports.
    pub const UDP_SPORT: usize = 0;
    /// UDP: destination port.
    pub const UDP_DPORT: usize = 2;
    /// UDP: length.
    pub const UDP_LEN: usize = 4;
    /// UDP: checksum.
    pub const UDP_CSUM: usize = 6;
    /// GRE: the protocol type.
    pub const GRE_PROTO: usize = 2;
    /// GENEVE: the protocol type.
    pub const GENEVE_PROTO: usize = 2;
    /// TCP: source and destination ports.
    pub const TCP_PORTS: usize = 0;
    /// TCP: sequence number (the acknowledgement number follows at +4).
    pub const TCP_SEQ: usize = 4;
    /// TCP: acknowledgement number.
    pub const TCP_ACK: usize = 8;
    /// TCP: data offset byte (the flags byte follows).
    pub const TCP_DOFF: usize = 12;
    /// TCP: flags byte.
    pub const TCP_FLAGS: usize = 13;
    /// TCP: checksum.
    pub const TCP_CSUM: usize = 16;
}

/// True for the ethertypes of a VLAN tag (802.1Q, 802.1ad, 0x9100).
#[inline(always)]
pub fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_9100
}

/// The ethertype of what a PPP session carries, for the PPP protocols of IP.
#[inline(always)]
pub fn ppp_ethertype(ppp_protocol: u16) -> Option<u16> {
    match ppp_protocol {
        0x0021 => Some(ETH_P_IP),
        0x0057 => Some(ETH_P_IPV6),
        _ => None,
    }
}

/// Length of a GRE header (RFC 2784, RFC 2890) from its first 16 bits: 4, plus 4 for each
/// of the checksum, key and sequence fields present. Version 0 only (version 1 is PPTP's
/// enhanced GRE), and no source routing.
#[inline(always)]
pub fn gre_header_len(flags_version: u16) -> Option<usize> {
    const CHECKSUM: u16 = 0x8000;
    const ROUTING: u16 = 0x4000;
    const KEY: u16 = 0x2000;
    const SEQUENCE: u16 = 0x1000;
    if flags_version & 0x0007 != 0 || flags_version & ROUTING != 0 {
        return None;
    }
    let mut len = 4;
    if flags_version & CHECKSUM != 0 {
        len += 4;
    }
    if flags_version & KEY != 0 {
        len += 4;
    }
    if flags_version & SEQUENCE != 0 {
        len += 4;
    }
    Some(len)
}

/// Length of a GENEVE header (RFC 8926) from its first byte (version and option length
/// in 4-byte words): 8 plus the options. Version 0 only.
#[inline(always)]
pub fn geneve_header_len(first: u8) -> Option<usize> {
    if first >> 6 != 0 {
        return None;
    }
    Some(8 + usize::from(first & 0x3f) * 4)
}

/// What an IPv6 next-header value leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Next {
    /// An extension header of this many bytes (`len_byte` is its second byte).
    Skip(usize),
    /// A fragment header (8 bytes): only the first fragment carries the TCP header.
    Fragment,
    /// Anything else: the upper-layer protocol (TCP, UDP, GRE, …) or one not walked.
    Upper,
}

/// Classifies IPv6 next-header `next`, whose header's second byte is `len_byte`.
#[inline(always)]
pub fn ipv6_next(next: u8, len_byte: u8) -> Ipv6Next {
    match next {
        // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
        0 | 43 | 60 => Ipv6Next::Skip((usize::from(len_byte) + 1) * 8),
        44 => Ipv6Next::Fragment,
        // Authentication header: (len + 2) * 4 bytes.
        51 => Ipv6Next::Skip((usize::from(len_byte) + 2) * 4),
        _ => Ipv6Next::Upper,
    }
}

/// True if an IPv6 fragment header's offset field (bytes 2..4, host order) marks a
/// later fragment (one without the upper-layer header).
#[inline(always)]
pub fn ipv6_later_fragment(offset_flags: u16) -> bool {
    offset_flags & 0xfff8 != 0
}

/// True if `next`, the next-header field of an IPv6 extension header, is hop-by-hop
/// options, which may only follow the fixed header (RFC 8200 §4.1): Linux drops the
/// packet (an unknown next header) when it comes later. A test of the byte read, not of
/// where the header is: the verifier can decide a comparison of offsets, and such a
/// test made it walk ten times the states.
#[inline(always)]
pub fn ipv6_misplaced(next: u8) -> bool {
    next == 0
}

/// The IPv6 payload length `plen` left after an extension header of `len` bytes, or
/// `None` if the header does not fit in it (a receiver drops such a packet).
#[inline(always)]
pub fn ipv6_after_ext(plen: u32, len: usize) -> Option<u32> {
    plen.checked_sub(len as u32)
}

/// True if the first byte of an IP header (its version nibble) is the version that
/// `ethertype` names, IPv4 or IPv6; false for any other ethertype. Linux drops an IP
/// packet whose version disagrees with its ethertype.
#[inline(always)]
pub fn ip_version_ok(ethertype: u16, first: u8) -> bool {
    match ethertype {
        ETH_P_IP => first >> 4 == 4,
        ETH_P_IPV6 => first >> 4 == 6,
        _ => false,
    }
}

/// Length of an IPv4 header from its first byte (version and IHL in 4-byte words):
/// options are skipped by it. At least the 20 fixed bytes.
#[inline(always)]
pub fn ipv4_header_len(ver_ihl: u8) -> Option<usize> {
    let len = usize::from(ver_ihl & 0x0f) * 4;
    if len < 20 { None } else { Some(len) }
}

/// True if an IPv4 header's flags and fragment offset (bytes 6..8, host order) mark a
/// later fragment (one without the upper-layer header); a first fragment with More
/// Fragments set is read.
#[inline(always)]
pub fn ipv4_later_fragment(flags_offset: u16) -> bool {
    flags_offset & 0x1fff != 0
}

/// True if an IPv4 total length (host order) covers the `ihl`-byte header; 0 is allowed
/// (BIG TCP super-packets: the captured length stands in). Linux drops the packet
/// otherwise.
#[inline(always)]
pub fn ipv4_total_len_ok(tot_len: u32, ihl: usize) -> bool {
    tot_len == 0 || tot_len as usize >= ihl
}

/// True if a UDP length field (host order) fits the `ip_payload` bytes the IP header
/// gives the datagram: at least its own 8-byte header, at most the IP payload. 0 is
/// allowed over IPv6 only (jumbograms: the IP length stands in), as Linux does.
#[inline(always)]
pub fn udp_len_ok(ulen: u16, ip_payload: u32, family: u8) -> bool {
    if ulen == 0 {
        return family == crate::FAMILY_V6;
    }
    usize::from(ulen) >= UDP_HLEN && u32::from(ulen) <= ip_payload
}

/// Payload bytes of a UDP datagram whose length field [`udp_len_ok`] accepted: what the
/// field says (a receiver trims the IP payload to it), or the IP payload for a jumbogram.
#[inline(always)]
pub fn udp_payload_len(ulen: u16, ip_payload: u32) -> u32 {
    let len = if ulen == 0 {
        ip_payload
    } else {
        u32::from(ulen)
    };
    len.saturating_sub(UDP_HLEN as u32)
}

/// Length of a VXLAN header (RFC 7348) from its flags byte: [`VXLAN_HLEN`], if the I flag
/// (a valid VNI) is set, which Linux requires. Reserved bits are ignored on receipt, as
/// the RFC says.
#[inline(always)]
pub fn vxlan_header_len(flags: u8) -> Option<usize> {
    if flags & 0x08 == 0 {
        None
    } else {
        Some(VXLAN_HLEN)
    }
}

/// Length of a TCP header from its data-offset byte (byte 12): at least the 20 fixed
/// bytes and no more than the `segment_len` bytes the IP header gives the segment (a
/// receiver drops a header longer than its packet).
#[inline(always)]
pub fn tcp_header_len(doff_byte: u8, segment_len: u32) -> Option<u32> {
    let len = u32::from(doff_byte >> 4) * 4;
    if len < 20 || len > segment_len {
        None
    } else {
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gre_lengths_follow_the_flags() {
        assert_eq!(gre_header_len(0x0000), Some(4));
        assert_eq!(gre_header_len(0x2000), Some(8), "key");
        assert_eq!(gre_header_len(0xB000), Some(16), "checksum, key, sequence");
        assert_eq!(gre_header_len(0x0001), None, "PPTP's version 1");
        assert_eq!(gre_header_len(0x4000), None, "source routing");
    }

    #[test]
    fn geneve_and_ipv6_lengths() {
        assert_eq!(geneve_header_len(0x00), Some(8));
        assert_eq!(geneve_header_len(0x02), Some(16));
        assert_eq!(geneve_header_len(0x40), None);
        assert_eq!(ipv6_next(0, 0), Ipv6Next::Skip(8));
        assert_eq!(ipv6_next(60, 1), Ipv6Next::Skip(16));
        assert_eq!(ipv6_next(51, 4), Ipv6Next::Skip(24));
        assert_eq!(ipv6_next(44, 0), Ipv6Next::Fragment);
        assert_eq!(ipv6_next(6, 0), Ipv6Next::Upper);
        assert!(!ipv6_later_fragment(0x0001), "first fragment, more to come");
        assert!(ipv6_later_fragment(0x0008));
    }

    #[test]
    fn receiver_rules() {
        assert!(ip_version_ok(ETH_P_IP, 0x45) && ip_version_ok(ETH_P_IPV6, 0x60));
        assert!(!ip_version_ok(ETH_P_IP, 0x65) && !ip_version_ok(ETH_P_IPV6, 0x45));
        assert!(!ip_version_ok(ETH_P_8021Q, 0x45));
        assert_eq!(ipv4_header_len(0x45), Some(20));
        assert_eq!(ipv4_header_len(0x4f), Some(60));
        assert_eq!(ipv4_header_len(0x44), None);
        assert!(ipv4_later_fragment(0x0001) && !ipv4_later_fragment(0x2000));
        assert!(ipv4_total_len_ok(0, 60) && ipv4_total_len_ok(20, 20));
        assert!(!ipv4_total_len_ok(40, 60));
        assert!(ipv6_misplaced(0) && !ipv6_misplaced(60));
        assert_eq!(ipv6_after_ext(16, 16), Some(0));
        assert_eq!(ipv6_after_ext(8, 16), None);
        assert!(udp_len_ok(8, 8, crate::FAMILY_V4) && udp_len_ok(0, 100, crate::FAMILY_V6));
        assert!(!udp_len_ok(0, 100, crate::FAMILY_V4));
        assert!(!udp_len_ok(7, 100, crate::FAMILY_V6) && !udp_len_ok(101, 100, crate::FAMILY_V4));
        assert_eq!(vxlan_header_len(0x08), Some(8));
        assert_eq!(vxlan_header_len(0xf7), None);
        assert_eq!(tcp_header_len(0x50, 20), Some(20));
        assert_eq!(tcp_header_len(0x80, 31), None, "options past the segment");
        assert_eq!(tcp_header_len(0x40, 100), None);
    }

    #[test]
    fn tags_and_ppp() {
        assert!(is_vlan(0x8100) && is_vlan(0x88a8) && is_vlan(0x9100));
        assert!(!is_vlan(ETH_P_IP));
        assert_eq!(ppp_ethertype(0x0021), Some(ETH_P_IP));
        assert_eq!(ppp_ethertype(0xc021), None, "LCP");
    }
}
