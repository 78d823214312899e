//! IP and TCP headers, and the tunnels inside IP, read the way the kernel program
//! reads them.
//!
//! [`decode`] is the one entry point for every link type: it walks the frame's layers
//! ([`link`] for link headers, VLAN tags and PPPoE; here for IPv4, IPv6 extension
//! headers, GRE, VXLAN and GENEVE) down to the innermost TCP segment, or says why there
//! is none ([`Skip`], counted by replay).
//!
//! Every rule the kernel program also applies is its own, from `nprot_common::encap`:
//! header lengths (IHL, IPv6 extension headers including AH, GRE, VXLAN, GENEVE, TCP
//! data offset), which fragments carry TCP, the tunnel ports, the bounds
//! ([`MAX_TUNNELS`](nprot_common::encap::MAX_TUNNELS), [`MAX_IPV6_EXT`]), and the
//! receiver's checks that skip what Linux would drop (a version nibble that disagrees
//! with the ethertype, a total length below the header, hop-by-hop options anywhere but
//! first, an extension header, UDP length or TCP data offset past the packet, VXLAN
//! without the I flag, GRE or GENEVE of an unknown version), and where each field sits
//! ([`encap::off`]). A zero IPv4
//! total length or IPv6 payload length (BIG TCP / jumbo super-packets) falls back to the
//! captured length; the TCP payload length comes from the IP header, so Ethernet
//! padding and trailers are never taken for payload. Checksums are not verified:
//! captures taken on the sending host carry offloaded, unfinished ones.

use std::fmt;

/// TCP flags, as the kernel programs name them.
pub use nprot_common::lifecycle::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use nprot_common::{
    FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, RawAddr,
    encap::{
        self, ETH_P_IP, ETH_P_IPV6, ETH_P_TEB, GENEVE_PORT, IPPROTO_GRE, IPPROTO_TCP, IPPROTO_UDP,
        Ipv6Next, MAX_IPV6_EXT, UDP_HLEN, VXLAN_HLEN, VXLAN_PORT, off,
    },
    lifecycle, track,
};

use super::link::{self, Depth, IpVersion, Layer, LinkType, be16, bytes, rest};

/// A TCP segment (or a UDP datagram, `tcp.proto` says) as the kernel program sees it: the
/// fields the tracker reads, and the payload bytes the capture holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    /// The fields the flow rules read (`nprot_common::track`).
    pub tcp: track::Segment,
    /// The payload bytes that were captured (at most `tcp.payload_len`).
    pub payload: &'a [u8],
}

/// The innermost TCP segment of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The segment.
    pub segment: Segment<'a>,
    /// Tunnels it was found in (GRE, VXLAN, GENEVE; PPPoE is no tunnel); 0 for plain IP,
    /// as the kernel program's `tunneled`.
    pub tunnels: usize,
}

/// Why a frame holds no TCP segment for the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The link layer or a tunnel carries no IP: ARP, LLDP, PPP's own protocols, an
    /// unknown ethertype or address family, GRE the kernel does not walk (PPTP's
    /// version 1, source routing).
    NotIp,
    /// An IP packet of another protocol: ICMP, ESP, UDP to a port that is no tunnel.
    NotTcp,
    /// An IPv4 or IPv6 fragment other than the first, which alone has the TCP header.
    Fragment,
    /// A header runs past the captured bytes (snapshot length).
    Truncated,
    /// A header field that cannot be right (a receiver drops the packet).
    Malformed,
    /// More VLAN tags, tunnels or IPv6 extension headers than decoding follows.
    TooDeep,
}

/// Frames skipped, by [`Skip`] reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// [`Skip::NotIp`].
    pub not_ip: u64,
    /// [`Skip::NotTcp`].
    pub not_tcp: u64,
    /// [`Skip::Fragment`].
    pub fragments: u64,
    /// [`Skip::Truncated`].
    pub truncated: u64,
    /// [`Skip::Malformed`].
    pub malformed: u64,
    /// [`Skip::TooDeep`].
    pub too_deep: u64,
}

impl Skipped {
    /// Counts one frame skipped for `why`.
    pub fn count(&mut self, why: Skip) {
        let n = match why {
            Skip::NotIp => &mut self.not_ip,
            Skip::NotTcp => &mut self.not_tcp,
            Skip::Fragment => &mut self.fragments,
            Skip::Truncated => &mut self.truncated,
            Skip::Malformed => &mut self.malformed,
            Skip::TooDeep => &mut self.too_deep,
        };
        *n += 1;
    }

    /// All frames skipped.
    pub fn total(&self) -> u64 {
        self.not_ip
            + self.not_tcp
            + self.fragments
            + self.truncated
            + self.malformed
            + self.too_deep
    }
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not_ip={} not_tcp={} fragments={} truncated={} malformed={} too_deep={}",
            self.not_ip,
            self.not_tcp,
            self.fragments,
            self.truncated,
            self.malformed,
            self.too_deep
        )
    }
}

/// The innermost TCP segment of a frame of link type `link`, through any VLAN tags,
/// PPP, PPPoE, GRE, VXLAN and GENEVE (at most
/// [`MAX_TUNNELS`](nprot_common::encap::MAX_TUNNELS) tunnels deep).
pub fn decode(link: LinkType, frame: &[u8]) -> Result<Decoded<'_>, Skip> {
    decode_layer(link::link_layer(link, frame)?)
}

/// Decodes the TCP segment in an IP packet (or in a tunnel it carries); `None` for
/// anything the kernel program would pass over.
pub fn tcp_segment(version: IpVersion, ip: &[u8]) -> Option<Segment<'_>> {
    decode_layer(Layer::Ip(version, ip)).ok().map(|d| d.segment)
}

/// The walk shared by every link type: link steps until IP, then IP, then either TCP
/// (done) or a tunnel whose payload starts the walk again one level deeper.
fn decode_layer(mut layer: Layer<'_>) -> Result<Decoded<'_>, Skip> {
    let mut depth = Depth::default();
    loop {
        layer = match layer {
            Layer::Ip(version, ip) => match transport(version, ip)? {
                Transport::Tcp(segment) => {
                    return Ok(Decoded {
                        segment,
                        tunnels: depth.tunnels,
                    });
                }
                Transport::Tunnel(inner) => {
                    depth.tunnel()?;
                    inner
                }
            },
            other => link::step(other, &mut depth)?,
        };
    }
}

/// What an IP packet carries.
enum Transport<'a> {
    /// A TCP segment or a UDP datagram.
    Tcp(Segment<'a>),
    /// The payload of a GRE, VXLAN or GENEVE header.
    Tunnel(Layer<'a>),
}

/// The network header of a packet, as far as the layer above needs it.
struct Network<'a> {
    family: u8,
    src: RawAddr,
    dst: RawAddr,
    /// Protocol of the layer above (after IPv6 extension headers).
    proto: u8,
    /// That layer's bytes as captured, cut at the end the IP header declares.
    l4: &'a [u8],
    /// Its length according to the IP header.
    l4_len: usize,
}

fn transport(version: IpVersion, ip: &[u8]) -> Result<Transport<'_>, Skip> {
    let net = match version {
        IpVersion::V4 => ipv4(ip)?,
        IpVersion::V6 => ipv6(ip)?,
    };
    match net.proto {
        IPPROTO_TCP => tcp(&net).map(Transport::Tcp),
        IPPROTO_GRE => gre(net.l4).map(Transport::Tunnel),
        IPPROTO_UDP => udp(&net),
        _ => Err(Skip::NotTcp),
    }
}

/// An IPv4 header; options are skipped by IHL.
fn ipv4(ip: &[u8]) -> Result<Network<'_>, Skip> {
    let h: [u8; 20] = bytes(ip, 0)?;
    if !encap::ip_version_ok(ETH_P_IP, h[0]) {
        return Err(Skip::Malformed);
    }
    let ihl = encap::ipv4_header_len(h[0]).ok_or(Skip::Malformed)?;
    // Only the first fragment carries the next header.
    if encap::ipv4_later_fragment(be16(&h, off::IPV4_FRAG)?) {
        return Err(Skip::Fragment);
    }
    let tot_len = be16(&h, off::IPV4_TOT_LEN)?;
    if !encap::ipv4_total_len_ok(u32::from(tot_len), ihl) {
        return Err(Skip::Malformed);
    }
    let ip_len = if tot_len != 0 {
        usize::from(tot_len)
    } else {
        ip.len()
    };
    Ok(Network {
        family: FAMILY_V4,
        src: [word(&h, off::IPV4_SADDR)?, 0, 0, 0],
        dst: [word(&h, off::IPV4_DADDR)?, 0, 0, 0],
        proto: h[off::IPV4_PROTO],
        l4: ip.get(ihl..ip_len.min(ip.len())).ok_or(Skip::Truncated)?,
        l4_len: ip_len.saturating_sub(ihl),
    })
}

/// An IPv6 header and the extension headers before the upper layer, walked by
/// [`encap::ipv6_next`] at most [`MAX_IPV6_EXT`] of them.
fn ipv6(ip: &[u8]) -> Result<Network<'_>, Skip> {
    let h: [u8; off::IPV6_HLEN] = bytes(ip, 0)?;
    if !encap::ip_version_ok(ETH_P_IPV6, h[0]) {
        return Err(Skip::Malformed);
    }
    let plen = usize::from(be16(&h, off::IPV6_PLEN)?);
    let end = if plen != 0 {
        off::IPV6_HLEN + plen
    } else {
        ip.len()
    };
    let pkt = &ip[..end.min(ip.len())];
    let mut src = [0u32; 4];
    let mut dst = [0u32; 4];
    for i in 0..4 {
        src[i] = word(&h, off::IPV6_SADDR + 4 * i)?;
        dst[i] = word(&h, off::IPV6_DADDR + 4 * i)?;
    }
    let mut next = h[off::IPV6_NEXT];
    let mut at = off::IPV6_HLEN;
    // What is left of the payload after the extension headers so far.
    let mut left = u32::try_from(end - off::IPV6_HLEN).unwrap_or(u32::MAX);
    let mut walked = 0;
    while encap::ipv6_next(next, 0) != Ipv6Next::Upper {
        walked += 1;
        if walked > MAX_IPV6_EXT {
            return Err(Skip::TooDeep);
        }
        // Every one of these starts with next header and a length or reserved byte, and
        // a fragment header's offset follows: the first 4 bytes hold what the walk needs.
        let e: [u8; 4] = bytes(pkt, at)?;
        let len = match encap::ipv6_next(next, e[off::IPV6_EXT_LEN]) {
            Ipv6Next::Skip(len) => len,
            Ipv6Next::Fragment => {
                if encap::ipv6_later_fragment(be16(&e, off::IPV6_FRAG_OFFSET)?) {
                    return Err(Skip::Fragment);
                }
                8
            }
            // Decided by `next` alone, which the loop has checked.
            Ipv6Next::Upper => break,
        };
        left = encap::ipv6_after_ext(left, len).ok_or(Skip::Malformed)?;
        next = e[0];
        if encap::ipv6_misplaced(next) {
            return Err(Skip::Malformed);
        }
        at += len;
    }
    Ok(Network {
        family: FAMILY_V6,
        src,
        dst,
        proto: next,
        l4: pkt.get(at..).ok_or(Skip::Truncated)?,
        l4_len: left as usize,
    })
}

fn tcp<'a>(net: &Network<'a>) -> Result<Segment<'a>, Skip> {
    let tcp: [u8; 20] = bytes(net.l4, 0)?;
    let segment_len = u32::try_from(net.l4_len).unwrap_or(u32::MAX);
    let doff = encap::tcp_header_len(tcp[off::TCP_DOFF], segment_len).ok_or(Skip::Malformed)?;
    let seq = be32(&tcp, off::TCP_SEQ)?;
    let flags = tcp[off::TCP_FLAGS];
    Ok(Segment {
        tcp: track::Segment {
            family: net.family,
            proto: PROTO_TCP,
            flags,
            sport: be16(&tcp, off::TCP_PORTS)?,
            dport: be16(&tcp, off::TCP_PORTS + 2)?,
            src: net.src,
            dst: net.dst,
            seq,
            ack: be32(&tcp, off::TCP_ACK)?,
            data_seq: lifecycle::data_seq(seq, flags),
            payload_len: segment_len - doff,
        },
        // `l4` already ends where the IP header says; options may be cut by the snap.
        payload: net.l4.get(doff as usize..).unwrap_or_default(),
    })
}

/// A UDP datagram: VXLAN or GENEVE by destination port, anything else a datagram for the
/// QUIC tracker (the kernel program's split). Like the kernel program, what a tunnel
/// carries is read by its own headers' lengths, not cut at the UDP length.
fn udp<'a>(net: &Network<'a>) -> Result<Transport<'a>, Skip> {
    let dport = be16(net.l4, off::UDP_DPORT)?;
    let ulen = be16(net.l4, off::UDP_LEN)?;
    let ip_payload = u32::try_from(net.l4_len).unwrap_or(u32::MAX);
    if !encap::udp_len_ok(ulen, ip_payload, net.family) {
        return Err(Skip::Malformed);
    }
    let payload = rest(net.l4, UDP_HLEN)?;
    if dport == VXLAN_PORT {
        return vxlan(payload).map(Transport::Tunnel);
    }
    if dport == GENEVE_PORT {
        return geneve(payload).map(Transport::Tunnel);
    }
    let payload_len = encap::udp_payload_len(ulen, ip_payload);
    Ok(Transport::Tcp(Segment {
        tcp: track::Segment {
            family: net.family,
            proto: PROTO_UDP,
            flags: 0,
            sport: be16(net.l4, off::UDP_SPORT)?,
            dport,
            src: net.src,
            dst: net.dst,
            seq: 0,
            ack: 0,
            data_seq: 0,
            payload_len,
        },
        payload: payload.get(..payload_len as usize).unwrap_or(payload),
    }))
}

/// A VXLAN header (RFC 7348): flags with I (valid VNI) set, VNI, then an Ethernet frame.
fn vxlan(b: &[u8]) -> Result<Layer<'_>, Skip> {
    let [flags, ..]: [u8; VXLAN_HLEN] = bytes(b, 0)?;
    let len = encap::vxlan_header_len(flags).ok_or(Skip::Malformed)?;
    Ok(Layer::Ethernet(rest(b, len)?))
}

/// A GENEVE header (RFC 8926): version 0, options length in 4-byte words, protocol
/// type (Ethernet, IPv4 or IPv6 here), VNI, options. The O and C bits are not acted on.
fn geneve(b: &[u8]) -> Result<Layer<'_>, Skip> {
    let h: [u8; 8] = bytes(b, 0)?;
    let len = encap::geneve_header_len(h[0]).ok_or(Skip::Malformed)?;
    Ok(tunnel_payload(be16(&h, off::GENEVE_PROTO)?, rest(b, len)?))
}

/// A GRE header (RFC 2784, with RFC 2890's key and sequence number), by
/// [`encap::gre_header_len`]: version 0 without source routing; version 1 is PPTP's,
/// which carries no IP here.
fn gre(b: &[u8]) -> Result<Layer<'_>, Skip> {
    let [f0, f1, p0, p1]: [u8; 4] = bytes(b, 0)?;
    let len = encap::gre_header_len(u16::from_be_bytes([f0, f1])).ok_or(Skip::NotIp)?;
    Ok(tunnel_payload(u16::from_be_bytes([p0, p1]), rest(b, len)?))
}

/// The payload of a tunnel whose protocol field is an ethertype.
fn tunnel_payload(proto: u16, b: &[u8]) -> Layer<'_> {
    if proto == ETH_P_TEB {
        Layer::Ethernet(b)
    } else {
        Layer::Ethertype(proto, b)
    }
}

/// Four address bytes read as the kernel reads them: a native-endian load of wire bytes.
fn word(b: &[u8], at: usize) -> Result<u32, Skip> {
    bytes(b, at).map(u32::from_ne_bytes)
}

/// A big-endian 32-bit field.
fn be32(b: &[u8], at: usize) -> Result<u32, Skip> {
    bytes(b, at).map(u32::from_be_bytes)
}

/// Builders of IP/TCP packets and of the framings around them, for tests (here and in
/// the tracker and replay tests).
#[cfg(test)]
pub mod build {
    use std::net::IpAddr;

    use nprot_common::encap::MAX_TUNNELS;

    /// An IP packet from `src` to `dst` (same family) carrying `payload` of protocol
    /// `proto`.
    pub fn ip(src: IpAddr, dst: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = u16::try_from(20 + payload.len()).expect("test packet fits");
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(payload);
                ip
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let plen = u16::try_from(payload.len()).expect("test packet fits");
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&plen.to_be_bytes());
                ip.extend_from_slice(&[proto, 64]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(payload);
                ip
            }
            _ => panic!("mixed address families"),
        }
    }

    /// A TCP/IP packet from `src` to `dst` (same family) with `flags`, `seq` and `payload`.
    pub fn tcp(
        src: (IpAddr, u16),
        dst: (IpAddr, u16),
        flags: u8,
        seq: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        tcp_acking(src, dst, flags, seq, 0, payload)
    }

    /// [`tcp`] with an acknowledgement number.
    pub fn tcp_acking(
        src: (IpAddr, u16),
        dst: (IpAddr, u16),
        flags: u8,
        seq: u32,
        ack: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&src.1.to_be_bytes());
        tcp.extend_from_slice(&dst.1.to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&ack.to_be_bytes());
        // Data offset 8 words: 12 bytes of options (NOPs), as Linux sends with timestamps.
        tcp.extend_from_slice(&[0x80, flags, 0xff, 0xff, 0, 0, 0, 0]);
        tcp.extend_from_slice(&[1; 12]);
        tcp.extend_from_slice(payload);
        ip(src.0, dst.0, 6, &tcp)
    }

    /// The ethertype of an IP packet, by its version nibble.
    pub fn ethertype(ip: &[u8]) -> u16 {
        if ip[0] >> 4 == 6 { 0x86DD } else { 0x0800 }
    }

    /// `payload` of `ethertype` in an Ethernet frame with the given VLAN tags (TPID,
    /// VLAN id), padded to 60 bytes like a short frame on the wire.
    pub fn ethernet_with(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        for (tpid, vid) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        if f.len() < 60 {
            f.resize(60, 0);
        }
        f
    }

    /// `ip` in an Ethernet frame with the given VLAN tags (TPID, VLAN id), padded to 60
    /// bytes like a short frame on the wire.
    pub fn ethernet(tags: &[(u16, u16)], ip: &[u8]) -> Vec<u8> {
        ethernet_with(tags, ethertype(ip), ip)
    }

    /// `ip` behind a Linux cooked v1 header (`tcpdump -i any`), sent by us.
    pub fn sll(ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
        f.extend_from_slice(&ethertype(ip).to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    /// `ip` behind a Linux cooked v2 header.
    pub fn sll2(ip: &[u8]) -> Vec<u8> {
        let mut f = ethertype(ip).to_be_bytes().to_vec();
        f.extend_from_slice(&[0, 0, 0, 0, 0, 7, 0, 1, 4, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
        f.extend_from_slice(ip);
        f
    }

    /// `ip` behind a BSD loopback header: address family `family` as a 4-byte integer,
    /// big-endian (LINKTYPE_LOOP, or DLT_NULL written on a big-endian host) or little.
    pub fn null(family: u32, big_endian: bool, ip: &[u8]) -> Vec<u8> {
        let mut f = if big_endian {
            family.to_be_bytes().to_vec()
        } else {
            family.to_le_bytes().to_vec()
        };
        f.extend_from_slice(ip);
        f
    }

    /// The loopback address family of `ip` as macOS and as Linux number it.
    pub fn family(ip: &[u8], linux: bool) -> u32 {
        match (ip[0] >> 4, linux) {
            (6, true) => 10,
            (6, false) => 30,
            _ => 2,
        }
    }

    /// The PPP protocol number of an IP packet.
    pub fn ppp_protocol(ip: &[u8]) -> u16 {
        if ip[0] >> 4 == 6 { 0x0057 } else { 0x0021 }
    }

    /// `ip` in a PPP frame, after 0xff 0x03 (address, control) if `hdlc`.
    pub fn ppp(hdlc: bool, ip: &[u8]) -> Vec<u8> {
        let mut f = if hdlc { vec![0xff, 0x03] } else { vec![] };
        f.extend_from_slice(&ppp_protocol(ip).to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    /// `ip` in a Cisco HDLC frame (unicast address).
    pub fn cisco_hdlc(ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0x0f, 0];
        f.extend_from_slice(&ethertype(ip).to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    /// `ip` in a PPPoE session frame on Ethernet with the given VLAN tags.
    pub fn pppoe(tags: &[(u16, u16)], ip: &[u8]) -> Vec<u8> {
        let len = u16::try_from(2 + ip.len()).expect("test packet fits");
        let mut s = vec![0x11, 0x00, 0x00, 0x2a];
        s.extend_from_slice(&len.to_be_bytes());
        s.extend_from_slice(&ppp_protocol(ip).to_be_bytes());
        s.extend_from_slice(ip);
        ethernet_with(tags, 0x8864, &s)
    }

    /// Tunnel endpoints of tests: an IPv4 or IPv6 pair.
    fn outer(v6: bool) -> (IpAddr, IpAddr) {
        let (a, b) = if v6 {
            ("2001:db8:ff::1", "2001:db8:ff::2")
        } else {
            ("192.0.2.1", "192.0.2.2")
        };
        (a.parse().expect("address"), b.parse().expect("address"))
    }

    /// `inner` (of GRE protocol type `proto`) in GRE over IPv4 or IPv6, with the
    /// checksum (0x80), key (0x20) and sequence number (0x10) fields `flags` asks for.
    pub fn gre(v6: bool, flags: u8, proto: u16, inner: &[u8]) -> Vec<u8> {
        let mut g = vec![flags, 0];
        g.extend_from_slice(&proto.to_be_bytes());
        for (bit, field) in [
            (0x80, [0xc5, 0xc5, 0, 0]),
            (0x20, [0, 0, 0, 7]),
            (0x10, [0, 0, 0, 1]),
        ] {
            if flags & bit != 0 {
                g.extend_from_slice(&field);
            }
        }
        g.extend_from_slice(inner);
        let (s, d) = outer(v6);
        ip(s, d, 47, &g)
    }

    /// `payload` in a UDP datagram to `dport` over IPv4 or IPv6 (no checksum).
    pub fn udp(v6: bool, dport: u16, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(8 + payload.len()).expect("test packet fits");
        let mut u = 54321u16.to_be_bytes().to_vec();
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&len.to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        let (s, d) = outer(v6);
        ip(s, d, 17, &u)
    }

    /// The Ethernet frame `frame` in VXLAN (VNI 42).
    pub fn vxlan(v6: bool, frame: &[u8]) -> Vec<u8> {
        let mut v = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
        v.extend_from_slice(frame);
        udp(v6, 4789, &v)
    }

    /// `inner` of protocol type `proto` in GENEVE (VNI 42) with `words` 4-byte words of
    /// options.
    pub fn geneve(v6: bool, words: u8, proto: u16, inner: &[u8]) -> Vec<u8> {
        let mut g = vec![words & 0x3f, 0];
        g.extend_from_slice(&proto.to_be_bytes());
        g.extend_from_slice(&[0, 0, 42, 0]);
        for i in 0..words {
            g.extend_from_slice(&[0x01, 0x02, 0x80 | i, 0]);
        }
        g.extend_from_slice(inner);
        udp(v6, 6081, &g)
    }

    /// `ip4` with `words` 4-byte words of options (NOPs, then end of options).
    pub fn ipv4_options(ip4: &[u8], words: u8) -> Vec<u8> {
        let extra = usize::from(words) * 4;
        let mut p = ip4[..20].to_vec();
        p[0] = 0x40 | (5 + words);
        let total = u16::from_be_bytes([p[2], p[3]]) + u16::from(words) * 4;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend(std::iter::repeat_n(1u8, extra.saturating_sub(1)));
        if extra > 0 {
            p.push(0);
        }
        p.extend_from_slice(&ip4[20..]);
        p
    }

    /// `ip6` with extension headers of the given kinds (0 hop-by-hop, 43 routing, 60
    /// destination options, 51 authentication: 8 bytes, or 16 for destination options
    /// and 24 for authentication; 44 a first fragment) between its fixed header and its
    /// upper layer.
    pub fn ipv6_ext(ip6: &[u8], kinds: &[u8]) -> Vec<u8> {
        let mut next = ip6[6];
        let mut chain = Vec::new();
        for &kind in kinds.iter().rev() {
            let mut h = match kind {
                // PadN over the rest of the header.
                0 => vec![next, 0, 1, 4, 0, 0, 0, 0],
                60 => vec![next, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                // Type 4 (segment routing), no segments left.
                43 => vec![next, 0, 4, 0, 0, 0, 0, 0],
                // Offset 0, more fragments, identification 7.
                44 => vec![next, 0, 0, 1, 0, 0, 0, 7],
                // (4 + 2) × 4 bytes: SPI 0x100, sequence number 1, a 96-bit ICV.
                51 => {
                    let mut h = vec![next, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
                    h.extend_from_slice(&[0xa5; 12]);
                    h
                }
                _ => panic!("not an extension header walked: {kind}"),
            };
            h.extend(chain);
            chain = h;
            next = kind;
        }
        let mut p = ip6[..40].to_vec();
        p[6] = next;
        let plen = u16::from_be_bytes([p[4], p[5]]) + u16::try_from(chain.len()).expect("fits");
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p.extend(chain);
        p.extend_from_slice(&ip6[40..]);
        p
    }

    /// How a test frames an IP packet for a link type.
    pub type Framing = fn(&[u8]) -> Vec<u8>;

    /// Every framing replay decodes: a name, the tcpdump.org link type, the framing
    /// and how many tunnels it wraps the packet in.
    pub fn framings() -> Vec<(&'static str, u32, Framing, usize)> {
        // A call, so that each closure is coerced to the `fn` pointer.
        fn f(
            name: &'static str,
            link: u32,
            framing: Framing,
            tunnels: usize,
        ) -> (&'static str, u32, Framing, usize) {
            (name, link, framing, tunnels)
        }
        vec![
            f("raw", 101, <[u8]>::to_vec, 0),
            f("raw-12", 12, <[u8]>::to_vec, 0),
            f("raw-14", 14, <[u8]>::to_vec, 0),
            f("ethernet", 1, |ip| ethernet(&[], ip), 0),
            f("802.1q", 1, |ip| ethernet(&[(0x8100, 42)], ip), 0),
            f(
                "qinq",
                1,
                |ip| ethernet(&[(0x88A8, 7), (0x8100, 42)], ip),
                0,
            ),
            f(
                "qinq-9100",
                1,
                |ip| ethernet(&[(0x9100, 7), (0x8100, 42)], ip),
                0,
            ),
            f("sll", 113, sll, 0),
            f("sll2", 276, sll2, 0),
            f("null-le", 0, |ip| null(family(ip, false), false, ip), 0),
            f("null-be", 0, |ip| null(family(ip, false), true, ip), 0),
            f("null-linux", 0, |ip| null(family(ip, true), false, ip), 0),
            f(
                "null-freebsd",
                0,
                |ip| null(if ip[0] >> 4 == 6 { 28 } else { 2 }, false, ip),
                0,
            ),
            f("loop", 108, |ip| null(family(ip, false), true, ip), 0),
            f("ppp", 9, |ip| ppp(true, ip), 0),
            f("ppp-bare", 9, |ip| ppp(false, ip), 0),
            f("ppp-hdlc", 50, |ip| ppp(true, ip), 0),
            f("ppp-hdlc-cisco", 50, cisco_hdlc, 0),
            f("c-hdlc", 104, cisco_hdlc, 0),
            f(
                "ipv4-options/ipv6-ext",
                101,
                |ip| match ip[0] >> 4 {
                    6 => ipv6_ext(ip, &[0, 60, 43, 44, 60]),
                    _ => ipv4_options(ip, 10),
                },
                0,
            ),
            // PPPoE is walked at every level, like VLAN tags, but is no tunnel.
            f("pppoe", 1, |ip| pppoe(&[], ip), 0),
            f("pppoe-vlan", 1, |ip| pppoe(&[(0x8100, 5)], ip), 0),
            f(
                "gre4",
                1,
                |ip| ethernet(&[], &gre(false, 0, ethertype(ip), ip)),
                1,
            ),
            f(
                "gre6-cks",
                1,
                |ip| ethernet(&[], &gre(true, 0xb0, ethertype(ip), ip)),
                1,
            ),
            f(
                "gre-key-sll",
                113,
                |ip| sll(&gre(false, 0x20, ethertype(ip), ip)),
                1,
            ),
            f(
                "gre-teb",
                1,
                |ip| ethernet(&[], &gre(false, 0x10, 0x6558, &ethernet(&[], ip))),
                1,
            ),
            f(
                "vxlan4",
                1,
                |ip| ethernet(&[], &vxlan(false, &ethernet(&[], ip))),
                1,
            ),
            f(
                "vxlan6-qinq-inner",
                1,
                |ip| {
                    ethernet(
                        &[(0x8100, 9)],
                        &vxlan(true, &ethernet(&[(0x88A8, 1), (0x8100, 2)], ip)),
                    )
                },
                1,
            ),
            f(
                "geneve-eth",
                1,
                |ip| ethernet(&[], &geneve(false, 0, 0x6558, &ethernet(&[], ip))),
                1,
            ),
            f(
                "geneve-ip-opts",
                1,
                |ip| ethernet(&[], &geneve(true, 5, ethertype(ip), ip)),
                1,
            ),
            f(
                "geneve-raw",
                101,
                |ip| geneve(false, 2, ethertype(ip), ip),
                1,
            ),
            f(
                "vxlan-in-gre-in-pppoe",
                1,
                |ip| {
                    pppoe(
                        &[(0x88A8, 3)],
                        &gre(false, 0x20, 0x0800, &vxlan(false, &ethernet(&[], ip))),
                    )
                },
                2,
            ),
            f(
                "deepest",
                9,
                |ip| {
                    // As many tunnels as the kernel program enters, innermost first:
                    // GENEVE around PPPoE, GRE, VXLAN, GENEVE again …
                    let mut p = ip.to_vec();
                    for level in 0..MAX_TUNNELS {
                        p = match level % 3 {
                            0 => geneve(true, 1, 0x6558, &pppoe(&[(0x8100, 4)], &p)),
                            1 => gre(false, 0x20, ethertype(&p), &p),
                            _ => vxlan(false, &ethernet(&[(0x88A8, 1)], &p)),
                        };
                    }
                    ppp(true, &p)
                },
                MAX_TUNNELS,
            ),
        ]
    }

    /// Packets of one TCP connection: both ends and both initial sequence numbers.
    #[derive(Debug, Clone, Copy)]
    pub struct Conv {
        /// The client end.
        pub client: (IpAddr, u16),
        /// The server end.
        pub server: (IpAddr, u16),
        /// Client ISN.
        pub cisn: u32,
        /// Server ISN.
        pub sisn: u32,
    }

    impl Conv {
        /// A connection between two addresses of one family.
        pub fn new(client: &str, cport: u16, server: &str, sport: u16) -> Conv {
            Conv {
                client: (client.parse().expect("address"), cport),
                server: (server.parse().expect("address"), sport),
                cisn: 1_000,
                sisn: 5_000,
            }
        }

        /// The client's SYN.
        pub fn syn(&self) -> Vec<u8> {
            tcp(self.client, self.server, super::TCP_SYN, self.cisn, b"")
        }

        /// The server's SYN-ACK, acknowledging the client's SYN.
        pub fn syn_ack(&self) -> Vec<u8> {
            let flags = super::TCP_SYN | super::TCP_ACK;
            tcp_acking(
                self.server,
                self.client,
                flags,
                self.sisn,
                self.cisn + 1,
                b"",
            )
        }

        /// The client's SYN carrying `data` (TCP Fast Open).
        pub fn syn_with(&self, data: &[u8]) -> Vec<u8> {
            tcp(self.client, self.server, super::TCP_SYN, self.cisn, data)
        }

        /// The client's ACK completing the handshake.
        pub fn ack(&self) -> Vec<u8> {
            tcp(self.client, self.server, super::TCP_ACK, self.cisn + 1, b"")
        }

        /// SYN, SYN-ACK, ACK.
        pub fn handshake(&self) -> Vec<Vec<u8>> {
            vec![self.syn(), self.syn_ack(), self.ack()]
        }

        /// Client payload `at` bytes into the stream.
        pub fn client(&self, at: u32, data: &[u8]) -> Vec<u8> {
            let flags = super::TCP_ACK | 0x08;
            tcp(self.client, self.server, flags, self.cisn + 1 + at, data)
        }

        /// Server payload `at` bytes into the stream.
        pub fn server(&self, at: u32, data: &[u8]) -> Vec<u8> {
            let flags = super::TCP_ACK | 0x08;
            tcp(self.server, self.client, flags, self.sisn + 1 + at, data)
        }

        /// A packet with `flags` from the client (`from_client`) or the server.
        pub fn flags(&self, from_client: bool, flags: u8) -> Vec<u8> {
            if from_client {
                tcp(self.client, self.server, flags, self.cisn + 1, b"")
            } else {
                tcp(self.server, self.client, flags, self.sisn + 1, b"")
            }
        }
    }

    /// A TLS 1.2-framed ClientHello for `sni`, with a padding extension of `padding`
    /// bytes to make it as large as a test needs.
    pub fn client_hello(sni: &str, padding: usize) -> Vec<u8> {
        let name = sni.as_bytes();
        let mut sni_ext = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        sni_ext.push(0);
        sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni_ext.extend_from_slice(name);
        let mut exts = vec![0, 0];
        exts.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
        exts.extend(sni_ext);
        if padding > 0 {
            exts.extend_from_slice(&[0x00, 0x15]);
            exts.extend_from_slice(&(padding as u16).to_be_bytes());
            exts.extend(std::iter::repeat_n(0u8, padding));
        }
        let mut body = vec![0x03, 0x03];
        body.extend((0u8..32).map(|i| i.wrapping_mul(13)));
        body.push(32);
        body.extend_from_slice(&[0x42; 32]);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02, 1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    // Not `super::*`: the builders are named after the decoders.
    use nprot_common::encap::{MAX_IPV6_EXT, MAX_TUNNELS, MAX_VLAN_TAGS};

    use super::{
        FAMILY_V4, FAMILY_V6, IpVersion, LinkType, Segment, Skip, Skipped, TCP_ACK, build::*,
        decode, tcp_segment,
    };
    use crate::record::raw_addr;

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn v4_packet(payload: &[u8]) -> Vec<u8> {
        tcp(
            (addr("198.18.0.1"), 40000),
            (addr("198.18.0.2"), 80),
            TCP_ACK,
            7,
            payload,
        )
    }

    fn v6_packet(payload: &[u8]) -> Vec<u8> {
        tcp(
            (addr("2001:db8::1"), 50000),
            (addr("2001:db8::2"), 443),
            TCP_ACK,
            99,
            payload,
        )
    }

    fn link_type(code: u32) -> LinkType {
        LinkType::from_code(code).unwrap()
    }

    #[test]
    fn ipv4_segment_ignores_ethernet_padding() {
        let pkt = v4_packet(b"GET");
        let mut padded = pkt.clone();
        padded.extend_from_slice(&[0; 10]);
        let seg = tcp_segment(IpVersion::V4, &padded).unwrap();
        assert_eq!(seg.payload, b"GET");
        assert_eq!(seg.tcp.payload_len, 3);
        assert_eq!((seg.tcp.sport, seg.tcp.dport, seg.tcp.seq), (40000, 80, 7));
        assert_eq!(seg.tcp.src, raw_addr(addr("198.18.0.1")).1);
        assert_eq!(seg.tcp.family, FAMILY_V4);
    }

    #[test]
    fn snapped_payload_is_shorter_than_its_length() {
        let pkt = v4_packet(b"abcdef");
        let seg = tcp_segment(IpVersion::V4, &pkt[..pkt.len() - 4]).unwrap();
        assert_eq!((seg.payload, seg.tcp.payload_len), (&b"ab"[..], 6));
        // The TCP header itself cut off: nothing the kernel could parse.
        assert_eq!(decode(LinkType::RawIp, &pkt[..30]), Err(Skip::Truncated));
    }

    #[test]
    fn non_first_fragments_and_other_protocols_are_skipped() {
        let mut pkt = v4_packet(b"x");
        pkt[7] = 0x10; // fragment offset 16 × 8 bytes
        assert_eq!(decode(LinkType::RawIp, &pkt), Err(Skip::Fragment));
        pkt[6] = 0x20; // More Fragments on the first fragment: still read
        pkt[7] = 0;
        assert!(tcp_segment(IpVersion::V4, &pkt).is_some());
        pkt[9] = 17; // UDP, whose length field is the TCP sequence number's top half
        assert_eq!(decode(LinkType::RawIp, &pkt), Err(Skip::Malformed));
        pkt[9] = 1; // ICMP
        assert_eq!(decode(LinkType::RawIp, &pkt), Err(Skip::NotTcp));
    }

    #[test]
    fn ipv4_options_are_skipped_by_the_header_length() {
        let plain = v4_packet(b"GET / HTTP/1.1\r\n");
        let want = tcp_segment(IpVersion::V4, &plain).unwrap();
        for words in 1..=10 {
            let pkt = ipv4_options(&plain, words);
            assert_eq!(pkt.len(), plain.len() + 4 * usize::from(words));
            assert_eq!(tcp_segment(IpVersion::V4, &pkt), Some(want), "{words}");
        }
        let mut pkt = ipv4_options(&plain, 10);
        // Options cut by the snapshot length.
        assert_eq!(decode(LinkType::RawIp, &pkt[..50]), Err(Skip::Truncated));
        // A header length below 5 words, a total length below the header.
        pkt[0] = 0x44;
        assert_eq!(decode(LinkType::RawIp, &pkt), Err(Skip::Malformed));
        let mut pkt = ipv4_options(&plain, 10);
        pkt[2..4].copy_from_slice(&40u16.to_be_bytes());
        assert_eq!(decode(LinkType::RawIp, &pkt), Err(Skip::Malformed));
        // Version 6 where the link said IPv4.
        let mut pkt = plain.clone();
        pkt[0] = 0x65;
        assert_eq!(decode(LinkType::Ipv4, &pkt), Err(Skip::Malformed));
    }

    #[test]
    fn tcp_data_offset_within_the_segment() {
        // 32 bytes of header and 1 of payload: 15 words of header would not fit.
        let mut pkt = v4_packet(b"x");
        pkt[32] = 0xf0;
        assert_eq!(decode(LinkType::RawIp, &pkt), Err(Skip::Malformed));
        pkt[32] = 0x40;
        assert_eq!(decode(LinkType::RawIp, &pkt), Err(Skip::Malformed));
        // The whole segment as header: no payload.
        let mut pkt = v4_packet(b"abcd");
        pkt[32] = 0x90;
        let seg = tcp_segment(IpVersion::V4, &pkt).unwrap();
        assert_eq!((seg.tcp.payload_len, seg.payload), (0, &b""[..]));
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_tcp() {
        let plain = v6_packet(b"\x16\x03\x01hello");
        let want = tcp_segment(IpVersion::V6, &plain).unwrap();
        assert_eq!(want.tcp.family, FAMILY_V6);
        assert_eq!(want.tcp.dst, raw_addr(addr("2001:db8::2")).1);
        // The kernel program's bound, exactly: hop-by-hop, then routing and destination
        // options, a fragment last.
        let most: Vec<u8> = (0..MAX_IPV6_EXT)
            .map(|i| match i {
                0 => 0,
                i if i + 1 == MAX_IPV6_EXT => 44,
                i if i % 2 == 0 => 43,
                _ => 60,
            })
            .collect();
        for kinds in [
            &[0][..],
            &[43],
            &[60],
            &[44],
            &[51],
            &[0, 60, 51, 44, 60],
            &most,
        ] {
            let pkt = ipv6_ext(&plain, kinds);
            assert_eq!(tcp_segment(IpVersion::V6, &pkt), Some(want), "{kinds:?}");
        }
        // One more is counted, not decoded.
        let too_many = ipv6_ext(&plain, &[&most[..], &[60]].concat());
        assert_eq!(decode(LinkType::Ipv6, &too_many), Err(Skip::TooDeep));
        // Hop-by-hop anywhere but first: Linux drops the packet.
        let late = ipv6_ext(&plain, &[60, 0]);
        assert_eq!(decode(LinkType::Ipv6, &late), Err(Skip::Malformed));
        // A later fragment.
        let mut frag = ipv6_ext(&plain, &[44]);
        frag[42..44].copy_from_slice(&0x0b91u16.to_be_bytes());
        assert_eq!(decode(LinkType::Ipv6, &frag), Err(Skip::Fragment));
        // An extension header longer than the payload length.
        let mut long = ipv6_ext(&plain, &[60]);
        long[41] = 200;
        assert_eq!(decode(LinkType::Ipv6, &long), Err(Skip::Malformed));
        // No next header, and one not walked (ESP) before TCP.
        for proto in [59, 50] {
            let mut pkt = ipv6_ext(&plain, &[60]);
            pkt[40] = proto;
            assert_eq!(decode(LinkType::Ipv6, &pkt), Err(Skip::NotTcp));
        }
        // Version 4 where the link said IPv6.
        let mut pkt = plain.clone();
        pkt[0] = 0x45;
        assert_eq!(decode(LinkType::Ipv6, &pkt), Err(Skip::Malformed));
    }

    #[test]
    fn zero_total_length_falls_back_to_the_captured_length() {
        let mut pkt = v4_packet(b"big");
        pkt[2] = 0;
        pkt[3] = 0;
        assert_eq!(tcp_segment(IpVersion::V4, &pkt).unwrap().payload, b"big");
        let mut pkt = ipv6_ext(&v6_packet(b"jumbo"), &[0]);
        pkt[4] = 0;
        pkt[5] = 0;
        assert_eq!(tcp_segment(IpVersion::V6, &pkt).unwrap().payload, b"jumbo");
    }

    /// The inner packets of the framing tests: one of each family.
    fn packets() -> [Vec<u8>; 2] {
        let hello = client_hello("bad.example", 0);
        [
            v4_packet(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"),
            v6_packet(&hello),
        ]
    }

    #[test]
    fn every_framing_decodes_to_the_plain_segment() {
        for inner in packets() {
            let want = decode(LinkType::RawIp, &inner).unwrap().segment;
            for (name, code, framing, tunnels) in framings() {
                let frame = framing(&inner);
                let got = decode(link_type(code), &frame);
                assert_eq!(got.map(|d| d.tunnels), Ok(tunnels), "{name}");
                // IPv4 options and IPv6 extension headers change nothing above IP.
                assert_eq!(got.map(|d| d.segment), Ok(want), "{name}");
            }
        }
    }

    /// Every cut of every framing: a frame cut before the end of the inner TCP header is
    /// `Truncated`; one cut after it is the segment with what was captured of the payload.
    #[test]
    fn every_cut_of_every_framing_is_truncated_or_a_shorter_payload() {
        for inner in packets() {
            let want = decode(LinkType::RawIp, &inner).unwrap().segment;
            for (name, code, framing, _) in framings() {
                let frame = framing(&inner);
                // The payload is the last thing of the packet, which framings leave whole.
                let payload_at = frame
                    .windows(want.payload.len())
                    .position(|w| w == want.payload)
                    .unwrap();
                for cut in 0..frame.len() {
                    let got = decode(link_type(code), &frame[..cut]).map(|d| d.segment);
                    // The 12 bytes of TCP options before it may be cut: the kernel
                    // reads only the fixed header.
                    if cut < payload_at - 12 {
                        assert_eq!(got, Err(Skip::Truncated), "{name} cut at {cut}");
                    } else {
                        let n = cut.saturating_sub(payload_at).min(want.payload.len());
                        let part = Segment {
                            payload: &want.payload[..n],
                            ..want
                        };
                        assert_eq!(got, Ok(part), "{name} cut at {cut}");
                    }
                }
            }
        }
    }

    #[test]
    fn no_corrupted_byte_makes_decoding_panic() {
        for inner in packets() {
            for (_, code, framing, _) in framings() {
                let frame = framing(&inner);
                for at in 0..frame.len() {
                    for byte in [0x00, 0x01, 0x08, 0x0f, 0x11, 0x3f, 0x45, 0x60, 0x80, 0xff] {
                        let mut bad = frame.clone();
                        bad[at] = byte;
                        let _ = decode(link_type(code), &bad);
                        bad[at] = frame[at] ^ byte;
                        let _ = decode(link_type(code), &bad);
                    }
                }
            }
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let [inner, _] = packets();
        let mut pkt = inner.clone();
        for n in 1..=200usize {
            pkt = gre(n % 2 == 0, 0x20, ethertype(&pkt), &pkt);
            let got = decode(LinkType::RawIp, &pkt).map(|d| d.tunnels);
            if n <= MAX_TUNNELS {
                assert_eq!(got, Ok(n));
            } else {
                assert_eq!(got, Err(Skip::TooDeep), "{n}");
            }
        }
        // One more of any kind past the bound is too deep, whatever the mix.
        let deepest = framings().into_iter().find(|f| f.0 == "deepest").unwrap();
        let frame = (deepest.2)(&inner);
        assert_eq!(
            decode(LinkType::Ppp, &frame).map(|d| d.tunnels),
            Ok(MAX_TUNNELS)
        );
        // Its outer packet (after PPP's 4 bytes) in VXLAN: one too many.
        let over = vxlan(true, &ethernet(&[], &frame[4..]));
        assert_eq!(decode(LinkType::RawIp, &over), Err(Skip::TooDeep));
        // PPPoE in every tunnel is no tunnel of its own.
        let mut pkt = inner.clone();
        for _ in 0..MAX_TUNNELS {
            pkt = vxlan(false, &pppoe(&[], &pkt));
        }
        assert_eq!(
            decode(LinkType::Ethernet, &pppoe(&[], &pkt)).map(|d| d.tunnels),
            Ok(MAX_TUNNELS)
        );
        // VLAN tags are bounded per level: the most outside a tunnel and inside it; one
        // more inside is counted, not decoded.
        let tags = [(0x8100, 1); MAX_VLAN_TAGS];
        let tagged = ethernet(&tags, &vxlan(false, &ethernet(&tags, &inner)));
        assert_eq!(
            decode(LinkType::Ethernet, &tagged).map(|d| d.tunnels),
            Ok(1)
        );
        let more = [(0x8100, 1); MAX_VLAN_TAGS + 1];
        let tagged = ethernet(&tags, &vxlan(false, &ethernet(&more, &inner)));
        assert_eq!(decode(LinkType::Ethernet, &tagged), Err(Skip::TooDeep));
        // Ethernet in Ethernet through 0x6558 needs a tunnel header each time.
        let mut teb = ethernet(&[], &inner);
        for _ in 0..10 {
            teb = ethernet_with(&[], 0x6558, &teb);
        }
        assert_eq!(decode(LinkType::Ethernet, &teb), Err(Skip::NotIp));
    }

    #[test]
    fn tunnel_headers_that_cannot_be_right() {
        let [inner, inner6] = packets();
        let gre4 = gre(false, 0, 0x0800, &inner);
        assert!(decode(LinkType::RawIp, &gre4).is_ok());
        let at = 20; // the GRE header in the IPv4 packet
        // Source routing, PPTP's version 1 and other versions: not walked by the kernel.
        let mut routing = gre4.clone();
        routing[at] = 0x40;
        assert_eq!(decode(LinkType::RawIp, &routing), Err(Skip::NotIp));
        for v in [0x01, 0x03] {
            let mut version = gre4.clone();
            version[at + 1] = v;
            assert_eq!(decode(LinkType::RawIp, &version), Err(Skip::NotIp), "{v}");
        }
        // Reserved flag bits are ignored, as by Linux.
        let mut reserved = gre4.clone();
        reserved[at] = 0x0b;
        reserved[at + 1] = 0xf8;
        assert!(decode(LinkType::RawIp, &reserved).is_ok());
        // MPLS, and an inner packet that is not the version the protocol type says.
        assert_eq!(
            decode(LinkType::RawIp, &gre(false, 0, 0x8847, &inner)),
            Err(Skip::NotIp)
        );
        assert_eq!(
            decode(LinkType::RawIp, &gre(true, 0, 0x86DD, &inner)),
            Err(Skip::Malformed)
        );
        // An outer later fragment.
        let mut frag = gre4.clone();
        frag[7] = 0x40;
        assert_eq!(decode(LinkType::RawIp, &frag), Err(Skip::Fragment));

        let vx = vxlan(false, &ethernet(&[], &inner6));
        assert!(decode(LinkType::RawIp, &vx).is_ok());
        let mut no_vni = vx.clone();
        no_vni[28] = 0;
        assert_eq!(decode(LinkType::RawIp, &no_vni), Err(Skip::Malformed));
        // UDP length below its header, or past the IP packet; 0 only over IPv6.
        for len in [7u16, 4000, 0] {
            let mut bad = vx.clone();
            bad[24..26].copy_from_slice(&len.to_be_bytes());
            assert_eq!(decode(LinkType::RawIp, &bad), Err(Skip::Malformed), "{len}");
        }
        let mut jumbo = vxlan(true, &ethernet(&[], &inner6));
        jumbo[44..46].copy_from_slice(&0u16.to_be_bytes());
        assert!(decode(LinkType::RawIp, &jumbo).is_ok());
        // VXLAN to another port is only a datagram.
        let mut other = vx.clone();
        other[22..24].copy_from_slice(&4790u16.to_be_bytes());
        let datagram = decode(LinkType::RawIp, &other).expect("a UDP datagram");
        assert_eq!(
            (datagram.segment.tcp.proto, datagram.tunnels),
            (nprot_common::PROTO_UDP, 0)
        );

        let gv = geneve(false, 3, 0x6558, &ethernet(&[], &inner));
        assert!(decode(LinkType::RawIp, &gv).is_ok());
        let mut version = gv.clone();
        version[28] |= 0x40;
        assert_eq!(decode(LinkType::RawIp, &version), Err(Skip::Malformed));
        // Options longer than the datagram.
        let mut long = gv.clone();
        long[28] = 0x3f;
        let got = decode(LinkType::RawIp, &long);
        assert!(
            matches!(got, Err(Skip::Truncated | Skip::Malformed)),
            "{got:?}"
        );
        let unknown = geneve(false, 0, 0x88B5, &inner);
        assert_eq!(decode(LinkType::RawIp, &unknown), Err(Skip::NotIp));
    }

    #[test]
    fn skip_counts_name_every_reason() {
        let mut s = Skipped::default();
        for why in [
            Skip::NotIp,
            Skip::NotTcp,
            Skip::NotTcp,
            Skip::Fragment,
            Skip::Truncated,
            Skip::Malformed,
            Skip::TooDeep,
        ] {
            s.count(why);
        }
        assert_eq!(s.total(), 7);
        assert_eq!(
            s.to_string(),
            "not_ip=1 not_tcp=2 fragments=1 truncated=1 malformed=1 too_deep=1"
        );
    }
}
