//! Link layers of capture files and the link-level encapsulations inside them: where
//! the IP header starts in a frame.
//!
//! Decoding is a walk over [`Layer`]s: a link header gives the first layer
//! ([`link_layer`]), each [`step`] turns one layer into the next (an Ethernet header into
//! its ethertype, a VLAN tag into the ethertype it carries, PPPoE into IP), and
//! `packet::decode` takes over at the IP layer, where tunnels (GRE, VXLAN, GENEVE) lead
//! back here with an inner Ethernet frame or ethertype. Every link type shares these
//! steps; nothing is decoded twice.
//!
//! What the kernel program also walks (VLAN tags, PPPoE, the bounds) follows its rules in
//! `nprot_common::encap`, so that a frame replays as the kernel would have seen it; the
//! link headers of capture files (loopback, PPP, Cisco HDLC, Linux cooked) are replay's
//! own, as no packet at a TC hook has them.

use nprot_common::encap::{
    ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ETH_P_PPP_SES, MAX_TUNNELS, MAX_VLAN_TAGS, PPPOE_HLEN,
    VLAN_HLEN, is_vlan, ppp_ethertype,
};

use super::packet::Skip;

/// `AF_INET` in a DLT_NULL / loopback header (the same on every system).
const AF_INET: u32 = 2;
/// `AF_INET6` as NetBSD/OpenBSD (24), FreeBSD (28), macOS (30) and Linux (10) number it:
/// a capture does not say which system wrote it.
const AF_INET6: [u32; 4] = [24, 28, 30, 10];

/// A link-layer header type replay can decode (tcpdump.org LINKTYPE_* numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// `LINKTYPE_NULL` (0): BSD loopback, a 4-byte address family in the byte order of
    /// the host that captured.
    Null,
    /// `LINKTYPE_LOOP` (108): OpenBSD loopback, the address family in network order.
    Loop,
    /// `LINKTYPE_ETHERNET` (1): 14-byte header, 802.1Q / 802.1ad tags skipped.
    Ethernet,
    /// `LINKTYPE_PPP` (9): PPP, with or without the 0xff 0x03 address and control bytes.
    Ppp,
    /// `LINKTYPE_PPP_HDLC` (50): PPP in HDLC-like framing, or Cisco HDLC when the first
    /// byte is 0x0f or 0x8f.
    PppHdlc,
    /// `LINKTYPE_C_HDLC` (104): Cisco HDLC, address, control and an ethertype.
    CiscoHdlc,
    /// `LINKTYPE_LINUX_SLL` (113): Linux cooked capture v1 (`tcpdump -i any`).
    LinuxSll,
    /// `LINKTYPE_LINUX_SLL2` (276): Linux cooked capture v2.
    LinuxSll2,
    /// `LINKTYPE_RAW` (101, and the DLT_RAW values 12 and 14 some platforms wrote):
    /// the frame is an IP packet, the version nibble tells which.
    RawIp,
    /// `LINKTYPE_IPV4` (228).
    Ipv4,
    /// `LINKTYPE_IPV6` (229).
    Ipv6,
}

/// The link types [`LinkType::from_code`] accepts, for error messages.
pub const SUPPORTED: &str = "Ethernet (1), BSD loopback (0, 108), PPP (9, 50), Cisco HDLC \
                             (104), Linux cooked SLL (113) and SLL2 (276), and raw IP (101, \
                             12, 14, 228, 229)";

impl LinkType {
    /// The link type with tcpdump.org number `code`, if replay supports it.
    pub fn from_code(code: u32) -> Option<LinkType> {
        Some(match code {
            0 => LinkType::Null,
            108 => LinkType::Loop,
            1 => LinkType::Ethernet,
            9 => LinkType::Ppp,
            50 => LinkType::PppHdlc,
            104 => LinkType::CiscoHdlc,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            101 | 12 | 14 => LinkType::RawIp,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            _ => return None,
        })
    }
}

/// IP version of a network-layer packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// What the bytes at some point of a frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer<'a> {
    /// An Ethernet header and what follows (a frame, or one inside GRE, VXLAN, GENEVE).
    Ethernet(&'a [u8]),
    /// The bytes after an ethertype field (or a GRE / GENEVE protocol type) of this value.
    Ethertype(u16, &'a [u8]),
    /// A frame of a PPP link: optional 0xff 0x03, then the protocol field.
    Ppp(&'a [u8]),
    /// An IP packet.
    Ip(IpVersion, &'a [u8]),
}

/// How deep a frame's decoding has gone, so that it stays bounded as the kernel
/// program's walk is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    /// Tunnels entered (GRE, VXLAN, GENEVE), at most [`MAX_TUNNELS`]. PPPoE and VLAN
    /// tags are walked at every level and are not tunnels.
    pub tunnels: usize,
    /// VLAN tags at the current level (outside any tunnel, or inside the last one), at
    /// most [`MAX_VLAN_TAGS`].
    vlan_tags: usize,
}

impl Depth {
    /// One more tunnel; [`Skip::TooDeep`] past [`MAX_TUNNELS`].
    pub fn tunnel(&mut self) -> Result<(), Skip> {
        // What the tunnel carries has its own link header, with its own tags.
        self.vlan_tags = 0;
        self.tunnels += 1;
        if self.tunnels > MAX_TUNNELS {
            return Err(Skip::TooDeep);
        }
        Ok(())
    }
}

/// The first layer of a frame of link type `link`.
pub fn link_layer(link: LinkType, frame: &[u8]) -> Result<Layer<'_>, Skip> {
    Ok(match link {
        LinkType::Null => {
            let h: [u8; 4] = bytes(frame, 0)?;
            // Host order of an unknown host: a family is small, so the order in which
            // the upper half is zero is the right one.
            let le = u32::from_le_bytes(h);
            let family = if le >> 16 == 0 {
                le
            } else {
                u32::from_be_bytes(h)
            };
            address_family(family, rest(frame, 4)?)?
        }
        LinkType::Loop => address_family(u32::from_be_bytes(bytes(frame, 0)?), rest(frame, 4)?)?,
        LinkType::Ethernet => Layer::Ethernet(frame),
        LinkType::Ppp => Layer::Ppp(frame),
        LinkType::PppHdlc => match frame.first() {
            Some(0x0f | 0x8f) => cisco_hdlc(frame)?,
            _ => Layer::Ppp(frame),
        },
        LinkType::CiscoHdlc => cisco_hdlc(frame)?,
        // packet type, ARPHRD, address length, 8 address bytes, protocol.
        LinkType::LinuxSll => Layer::Ethertype(be16(frame, 14)?, rest(frame, 16)?),
        // protocol, reserved, ifindex, ARPHRD, packet type, address length, 8 address bytes.
        LinkType::LinuxSll2 => Layer::Ethertype(be16(frame, 0)?, rest(frame, 20)?),
        LinkType::RawIp => match frame.first().ok_or(Skip::Truncated)? >> 4 {
            4 => Layer::Ip(IpVersion::V4, frame),
            6 => Layer::Ip(IpVersion::V6, frame),
            _ => return Err(Skip::Malformed),
        },
        LinkType::Ipv4 => Layer::Ip(IpVersion::V4, frame),
        LinkType::Ipv6 => Layer::Ip(IpVersion::V6, frame),
    })
}

/// The layer under `layer`, which must not be [`Layer::Ip`] (IP is `packet`'s).
pub fn step<'a>(layer: Layer<'a>, depth: &mut Depth) -> Result<Layer<'a>, Skip> {
    match layer {
        Layer::Ethernet(f) => Ok(Layer::Ethertype(be16(f, 12)?, rest(f, ETH_HLEN)?)),
        Layer::Ethertype(proto, b) => ethertype(proto, b, depth),
        Layer::Ppp(b) => ppp(b),
        Layer::Ip(..) => Err(Skip::Malformed),
    }
}

/// The IP packet in `frame` (under any VLAN tags, PPP or PPPoE, but not inside a
/// tunnel), or `None` if there is none.
pub fn network_layer(link: LinkType, frame: &[u8]) -> Option<(IpVersion, &[u8])> {
    let mut depth = Depth::default();
    let mut layer = link_layer(link, frame).ok()?;
    loop {
        match layer {
            Layer::Ip(v, ip) => return Some((v, ip)),
            other => layer = step(other, &mut depth).ok()?,
        }
    }
}

/// What follows ethertype `proto`; `b` starts right after the field.
fn ethertype<'a>(proto: u16, b: &'a [u8], depth: &mut Depth) -> Result<Layer<'a>, Skip> {
    match proto {
        ETH_P_IP => Ok(Layer::Ip(IpVersion::V4, b)),
        ETH_P_IPV6 => Ok(Layer::Ip(IpVersion::V6, b)),
        _ if is_vlan(proto) => {
            depth.vlan_tags += 1;
            if depth.vlan_tags > MAX_VLAN_TAGS {
                return Err(Skip::TooDeep);
            }
            // Tag control information, then the next ethertype.
            Ok(Layer::Ethertype(be16(b, 2)?, rest(b, VLAN_HLEN)?))
        }
        ETH_P_PPP_SES => pppoe(b),
        _ => Err(Skip::NotIp),
    }
}

/// A PPPoE session (RFC 2516), read as the kernel program reads it: the 2-byte PPP
/// protocol after the 6-byte session header (PPPoE has no address and control bytes),
/// IP behind it. Like Linux's PPPoE receiver it does not check the version, type and
/// code bytes, and the IP header's length, not the session's, ends the packet. A
/// compressed 1-byte protocol field is not read, as the kernel program does not read it.
fn pppoe(b: &[u8]) -> Result<Layer<'_>, Skip> {
    let proto = be16(b, PPPOE_HLEN - 2)?;
    let ip = rest(b, PPPOE_HLEN)?;
    Ok(Layer::Ethertype(
        ppp_ethertype(proto).ok_or(Skip::NotIp)?,
        ip,
    ))
}

/// A frame of a PPP link: address and control (0xff 0x03) if present, then the protocol
/// field, one byte if compressed (RFC 1661: an odd first byte ends the field).
fn ppp(b: &[u8]) -> Result<Layer<'_>, Skip> {
    let b = match b.first().ok_or(Skip::Truncated)? {
        0xff => match b.get(1).ok_or(Skip::Truncated)? {
            0x03 => rest(b, 2)?,
            _ => return Err(Skip::Malformed),
        },
        _ => b,
    };
    let (proto, data) = match *b.first().ok_or(Skip::Truncated)? {
        odd if odd & 1 == 1 => (u16::from(odd), rest(b, 1)?),
        _ => (be16(b, 0)?, rest(b, 2)?),
    };
    // LCP, IPCP, authentication and the rest of PPP's own traffic carry no IP.
    let ethertype = ppp_ethertype(proto).ok_or(Skip::NotIp)?;
    Ok(Layer::Ethertype(ethertype, data))
}

/// A Cisco HDLC frame: address 0x0f (unicast) or 0x8f (broadcast), control 0, ethertype.
fn cisco_hdlc(frame: &[u8]) -> Result<Layer<'_>, Skip> {
    let [address, control]: [u8; 2] = bytes(frame, 0)?;
    if !matches!(address, 0x0f | 0x8f) || control != 0 {
        return Err(Skip::Malformed);
    }
    Ok(Layer::Ethertype(be16(frame, 2)?, rest(frame, 4)?))
}

/// The packet after a loopback header naming address family `family`.
fn address_family(family: u32, b: &[u8]) -> Result<Layer<'_>, Skip> {
    match family {
        AF_INET => Ok(Layer::Ip(IpVersion::V4, b)),
        f if AF_INET6.contains(&f) => Ok(Layer::Ip(IpVersion::V6, b)),
        _ => Err(Skip::NotIp),
    }
}

/// `N` bytes of `b` at `at`, or [`Skip::Truncated`].
pub fn bytes<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], Skip> {
    b.get(at..at.saturating_add(N))
        .and_then(|s| s.try_into().ok())
        .ok_or(Skip::Truncated)
}

/// The big-endian u16 at `at`, or [`Skip::Truncated`].
pub fn be16(b: &[u8], at: usize) -> Result<u16, Skip> {
    bytes(b, at).map(u16::from_be_bytes)
}

/// `b` from `at` on, or [`Skip::Truncated`] if it is shorter.
pub fn rest(b: &[u8], at: usize) -> Result<&[u8], Skip> {
    b.get(at..).ok_or(Skip::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP4: &[u8] = &[0x45, 0, 0, 20];
    const IP6: &[u8] = &[0x60, 0, 0, 0];

    fn eth(tags: &[u16], proto: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0xaa; 12];
        for t in tags {
            f.extend_from_slice(&t.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x2a]);
        }
        f.extend_from_slice(&proto.to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    /// The first IP layer of `frame`, or why there is none.
    fn first_ip(link: LinkType, frame: &[u8]) -> Result<(IpVersion, &[u8]), Skip> {
        let mut depth = Depth::default();
        let mut layer = link_layer(link, frame)?;
        loop {
            match layer {
                Layer::Ip(v, ip) => return Ok((v, ip)),
                other => layer = step(other, &mut depth)?,
            }
        }
    }

    #[test]
    fn ethernet_with_and_without_vlan_tags() {
        let plain = eth(&[], 0x0800, IP4);
        assert_eq!(
            network_layer(LinkType::Ethernet, &plain),
            Some((IpVersion::V4, IP4))
        );
        let tagged = eth(&[0x8100], 0x86DD, IP6);
        assert_eq!(
            network_layer(LinkType::Ethernet, &tagged),
            Some((IpVersion::V6, IP6))
        );
        let qinq = eth(&[0x88A8, 0x8100], 0x0800, IP4);
        assert_eq!(
            network_layer(LinkType::Ethernet, &qinq),
            Some((IpVersion::V4, IP4))
        );
        let old_qinq = eth(&[0x9100, 0x8100], 0x0800, IP4);
        assert_eq!(
            first_ip(LinkType::Ethernet, &old_qinq),
            Ok((IpVersion::V4, IP4))
        );
        // The kernel program's bound, exactly; one more tag is counted, not decoded.
        let most = eth(&[0x8100; MAX_VLAN_TAGS], 0x0800, IP4);
        assert_eq!(
            first_ip(LinkType::Ethernet, &most),
            Ok((IpVersion::V4, IP4))
        );
        let too_many = eth(&[0x8100; MAX_VLAN_TAGS + 1], 0x0800, IP4);
        assert_eq!(first_ip(LinkType::Ethernet, &too_many), Err(Skip::TooDeep));
        let arp = eth(&[], 0x0806, IP4);
        assert_eq!(first_ip(LinkType::Ethernet, &arp), Err(Skip::NotIp));
        assert_eq!(
            first_ip(LinkType::Ethernet, &plain[..13]),
            Err(Skip::Truncated)
        );
    }

    #[test]
    fn linux_cooked_v1_and_v2() {
        let mut sll = vec![0, 4, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0];
        sll.extend_from_slice(&0x86DDu16.to_be_bytes());
        sll.extend_from_slice(IP6);
        assert_eq!(
            network_layer(LinkType::LinuxSll, &sll),
            Some((IpVersion::V6, IP6))
        );
        let mut sll2 = 0x0800u16.to_be_bytes().to_vec();
        sll2.extend_from_slice(&[0, 0, 0, 0, 0, 3, 0, 1, 4, 6, 1, 2, 3, 4, 5, 6, 0, 0]);
        sll2.extend_from_slice(IP4);
        assert_eq!(
            network_layer(LinkType::LinuxSll2, &sll2),
            Some((IpVersion::V4, IP4))
        );
        assert_eq!(network_layer(LinkType::LinuxSll2, &sll2[..10]), None);
    }

    #[test]
    fn raw_ip_by_version_nibble() {
        assert_eq!(
            network_layer(LinkType::RawIp, IP4),
            Some((IpVersion::V4, IP4))
        );
        assert_eq!(
            network_layer(LinkType::RawIp, IP6),
            Some((IpVersion::V6, IP6))
        );
        assert_eq!(network_layer(LinkType::RawIp, &[0x50, 0]), None);
        assert_eq!(network_layer(LinkType::RawIp, &[]), None);
        for code in [101, 12, 14] {
            assert_eq!(LinkType::from_code(code), Some(LinkType::RawIp));
        }
        assert_eq!(LinkType::from_code(228), Some(LinkType::Ipv4));
        assert_eq!(LinkType::from_code(105), None);
    }

    #[test]
    fn loopback_families_in_either_byte_order() {
        for (family, want) in [
            (2u32, IpVersion::V4),
            (24, IpVersion::V6),
            (28, IpVersion::V6),
            (30, IpVersion::V6),
            (10, IpVersion::V6),
        ] {
            let ip = if want == IpVersion::V4 { IP4 } else { IP6 };
            for header in [family.to_le_bytes(), family.to_be_bytes()] {
                let f = [&header[..], ip].concat();
                assert_eq!(first_ip(LinkType::Null, &f), Ok((want, ip)), "{family}");
            }
            // LINKTYPE_LOOP is always network order.
            let f = [&family.to_be_bytes()[..], ip].concat();
            assert_eq!(first_ip(LinkType::Loop, &f), Ok((want, ip)), "{family}");
        }
        let f = [&2u32.to_le_bytes()[..], IP4].concat();
        assert_eq!(first_ip(LinkType::Loop, &f), Err(Skip::NotIp));
        // AF_APPLETALK, AF_LINK: not IP.
        for family in [16u32, 18] {
            let f = [&family.to_le_bytes()[..], IP4].concat();
            assert_eq!(first_ip(LinkType::Null, &f), Err(Skip::NotIp));
        }
        assert_eq!(first_ip(LinkType::Null, &[2, 0, 0]), Err(Skip::Truncated));
        assert_eq!(LinkType::from_code(0), Some(LinkType::Null));
        assert_eq!(LinkType::from_code(108), Some(LinkType::Loop));
    }

    #[test]
    fn ppp_with_and_without_address_and_control() {
        for (proto, ip, want) in [
            (&[0x00, 0x21][..], IP4, IpVersion::V4),
            (&[0x00, 0x57][..], IP6, IpVersion::V6),
            // Protocol-field compression.
            (&[0x21][..], IP4, IpVersion::V4),
            (&[0x57][..], IP6, IpVersion::V6),
        ] {
            for link in [LinkType::Ppp, LinkType::PppHdlc] {
                let bare = [proto, ip].concat();
                assert_eq!(first_ip(link, &bare), Ok((want, ip)));
                let framed = [&[0xff, 0x03][..], proto, ip].concat();
                assert_eq!(first_ip(link, &framed), Ok((want, ip)));
            }
        }
        // LCP and IPCP are PPP's own.
        for proto in [[0xc0, 0x21], [0x80, 0x21]] {
            let f = [&[0xff, 0x03][..], &proto, IP4].concat();
            assert_eq!(first_ip(LinkType::Ppp, &f), Err(Skip::NotIp));
        }
        assert_eq!(
            first_ip(LinkType::Ppp, &[0xff, 0x05, 0, 0x21]),
            Err(Skip::Malformed)
        );
        for cut in [&[][..], &[0xff], &[0xff, 0x03], &[0xff, 0x03, 0x00]] {
            assert_eq!(first_ip(LinkType::Ppp, cut), Err(Skip::Truncated));
        }
        assert_eq!(LinkType::from_code(9), Some(LinkType::Ppp));
        assert_eq!(LinkType::from_code(50), Some(LinkType::PppHdlc));
    }

    #[test]
    fn cisco_hdlc_on_its_own_link_type_and_on_ppp_hdlc() {
        for link in [LinkType::CiscoHdlc, LinkType::PppHdlc] {
            for address in [0x0f, 0x8f] {
                let f = [&[address, 0, 0x08, 0x00][..], IP4].concat();
                assert_eq!(first_ip(link, &f), Ok((IpVersion::V4, IP4)));
                let f = [&[address, 0, 0x86, 0xdd][..], IP6].concat();
                assert_eq!(first_ip(link, &f), Ok((IpVersion::V6, IP6)));
                // SLARP keepalives.
                let f = [&[address, 0, 0x80, 0x35][..], IP4].concat();
                assert_eq!(first_ip(link, &f), Err(Skip::NotIp));
                assert_eq!(first_ip(link, &[address, 0, 8]), Err(Skip::Truncated));
            }
        }
        let f = [&[0x0f, 1, 0x08, 0x00][..], IP4].concat();
        assert_eq!(first_ip(LinkType::CiscoHdlc, &f), Err(Skip::Malformed));
        let f = [&[0x11, 0, 0x08, 0x00][..], IP4].concat();
        assert_eq!(first_ip(LinkType::CiscoHdlc, &f), Err(Skip::Malformed));
        assert_eq!(LinkType::from_code(104), Some(LinkType::CiscoHdlc));
    }

    fn pppoe_frame(tags: &[u16], proto: &[u8], ip: &[u8]) -> Vec<u8> {
        let mut s = vec![0x11, 0x00, 0x12, 0x34];
        let len = u16::try_from(proto.len() + ip.len()).unwrap();
        s.extend_from_slice(&len.to_be_bytes());
        s.extend_from_slice(proto);
        s.extend_from_slice(ip);
        eth(tags, 0x8864, &s)
    }

    #[test]
    fn pppoe_session_with_and_without_vlan_tags() {
        let f = pppoe_frame(&[], &[0, 0x21], IP4);
        assert_eq!(first_ip(LinkType::Ethernet, &f), Ok((IpVersion::V4, IP4)));
        let f = pppoe_frame(&[0x8100], &[0, 0x57], IP6);
        assert_eq!(first_ip(LinkType::Ethernet, &f), Ok((IpVersion::V6, IP6)));
        // PPPoE is walked at its level, not counted as a tunnel.
        let mut depth = Depth::default();
        let mut layer = link_layer(LinkType::Ethernet, &f).unwrap();
        while !matches!(layer, Layer::Ip(..)) {
            layer = step(layer, &mut depth).unwrap();
        }
        assert_eq!(depth.tunnels, 0);
        // Ethernet padding after the PPPoE payload is left to the IP header's length, as
        // the kernel program leaves it.
        let mut padded = pppoe_frame(&[], &[0, 0x21], IP4);
        padded.resize(60, 0xee);
        let (v, ip) = first_ip(LinkType::Ethernet, &padded).unwrap();
        assert_eq!((v, &ip[..4]), (IpVersion::V4, IP4));
        // PPP's own traffic, discovery frames, a compressed protocol field.
        let lcp = pppoe_frame(&[], &[0xc0, 0x21], IP4);
        assert_eq!(first_ip(LinkType::Ethernet, &lcp), Err(Skip::NotIp));
        let mut discovery = pppoe_frame(&[], &[0, 0x21], IP4);
        discovery[13] = 0x63;
        assert_eq!(first_ip(LinkType::Ethernet, &discovery), Err(Skip::NotIp));
        let compressed = pppoe_frame(&[], &[0x21], IP4);
        assert_eq!(first_ip(LinkType::Ethernet, &compressed), Err(Skip::NotIp));
        // Version, type and code are not checked, by Linux's receiver either.
        let mut version = pppoe_frame(&[], &[0, 0x21], IP4);
        version[14] = 0x21;
        version[15] = 0x09;
        assert_eq!(
            first_ip(LinkType::Ethernet, &version),
            Ok((IpVersion::V4, IP4))
        );
        let whole = pppoe_frame(&[], &[0, 0x21], IP4);
        for cut in 0..22 {
            assert_eq!(
                first_ip(LinkType::Ethernet, &whole[..cut]),
                Err(Skip::Truncated),
                "{cut}"
            );
        }
    }

    #[test]
    fn depth_counts_tunnels() {
        let mut depth = Depth::default();
        for _ in 0..MAX_TUNNELS {
            assert_eq!(depth.tunnel(), Ok(()));
        }
        assert_eq!(depth.tunnel(), Err(Skip::TooDeep));
        assert_eq!(
            step(Layer::Ip(IpVersion::V4, IP4), &mut Depth::default()),
            Err(Skip::Malformed)
        );
    }
}
