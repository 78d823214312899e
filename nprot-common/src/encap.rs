//! How to walk from a frame's outer header to the TCP segment it carries: VLAN tags,
//! PPPoE sessions, IPv6 extension headers, GRE, VXLAN and GENEVE. The length rules are
//! written once here for the eBPF programs and for replay; each is a pure function of a
//! few header bytes, and every walk is bounded.

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

/// Tunnels (GRE, VXLAN, GENEVE) walked into at most, one inside the other.
pub const MAX_TUNNELS: usize = 2;
/// VLAN tags walked at most per Ethernet header (QinQ).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked at most before TCP.
pub const MAX_IPV6_EXT: usize = 6;

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
    fn tags_and_ppp() {
        assert!(is_vlan(0x8100) && is_vlan(0x88a8) && is_vlan(0x9100));
        assert!(!is_vlan(ETH_P_IP));
        assert_eq!(ppp_ethertype(0x0021), Some(ETH_P_IP));
        assert_eq!(ppp_ethertype(0xc021), None, "LCP");
    }
}
