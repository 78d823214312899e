//! IP and TCP headers, read the way the kernel program reads them.
//!
//! Same rules as `nprot-ebpf`: IPv4 non-first fragments are skipped; IPv6 extension
//! headers are not walked (TCP must be the first next-header); a zero IPv4 total length
//! or IPv6 payload length (BIG TCP / jumbo super-packets) falls back to the captured
//! length; the TCP payload length comes from the IP header, so Ethernet padding and
//! trailers are never taken for payload.

use nprot_common::{FAMILY_V4, FAMILY_V6, RawAddr};

use super::link::IpVersion;

const IPPROTO_TCP: u8 = 6;

/// TCP flags, as the kernel programs name them.
pub use nprot_common::lifecycle::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// A TCP segment as the kernel program sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// Source address as on the wire (`RawAddr` layout).
    pub src: RawAddr,
    /// Destination address.
    pub dst: RawAddr,
    /// Source port, host order.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number, host order.
    pub seq: u32,
    /// Acknowledgement number, host order.
    pub ack: u32,
    /// TCP flags byte.
    pub flags: u8,
    /// Payload length according to the IP header.
    pub payload_len: u32,
    /// The payload bytes that were captured (at most `payload_len`).
    pub payload: &'a [u8],
}

/// Decodes the TCP segment in an IP packet; `None` for anything the kernel program
/// would pass over (not TCP, a later fragment, a header that does not fit).
pub fn tcp_segment(version: IpVersion, ip: &[u8]) -> Option<Segment<'_>> {
    let (family, src, dst, l4, ip_payload_len) = match version {
        IpVersion::V4 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if ihl < 20 || *ip.get(9)? != IPPROTO_TCP {
                return None;
            }
            // Only the first fragment carries the TCP header.
            if u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff != 0 {
                return None;
            }
            let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let ip_len = if tot_len != 0 { tot_len } else { ip.len() };
            let src = word(ip, 12)?;
            let dst = word(ip, 16)?;
            (
                FAMILY_V4,
                [src, 0, 0, 0],
                [dst, 0, 0, 0],
                ihl,
                ip_len.saturating_sub(ihl),
            )
        }
        IpVersion::V6 => {
            if *ip.get(6)? != IPPROTO_TCP {
                return None;
            }
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let plen = if plen != 0 {
                plen
            } else {
                ip.len().saturating_sub(40)
            };
            let mut src = [0u32; 4];
            let mut dst = [0u32; 4];
            for i in 0..4 {
                src[i] = word(ip, 8 + 4 * i)?;
                dst[i] = word(ip, 24 + 4 * i)?;
            }
            (FAMILY_V6, src, dst, 40, plen)
        }
    };
    let tcp = ip.get(l4..l4 + 20)?;
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 {
        return None;
    }
    let payload_len = ip_payload_len.saturating_sub(doff);
    let from = (l4 + doff).min(ip.len());
    let to = (l4 + doff + payload_len).min(ip.len());
    Some(Segment {
        family,
        src,
        dst,
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        flags: tcp[13],
        payload_len: u32::try_from(payload_len).unwrap_or(u32::MAX),
        payload: &ip[from..to],
    })
}

/// Four address bytes read as the kernel reads them: a native-endian load of wire bytes.
fn word(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Builders of IP/TCP packets for tests (here and in the tracker and replay tests).
#[cfg(test)]
pub mod build {
    use std::net::IpAddr;

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
        match (src.0, dst.0) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = u16::try_from(20 + tcp.len()).expect("test packet fits");
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend(tcp);
                ip
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let plen = u16::try_from(tcp.len()).expect("test packet fits");
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&plen.to_be_bytes());
                ip.extend_from_slice(&[6, 64]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend(tcp);
                ip
            }
            _ => panic!("mixed address families"),
        }
    }

    fn ethertype(ip: &[u8]) -> [u8; 2] {
        if ip[0] >> 4 == 6 {
            0x86DDu16.to_be_bytes()
        } else {
            0x0800u16.to_be_bytes()
        }
    }

    /// `ip` in an Ethernet frame with the given VLAN tags (TPID, VLAN id), padded to 60
    /// bytes like a short frame on the wire.
    pub fn ethernet(tags: &[(u16, u16)], ip: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        for (tpid, vid) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype(ip));
        f.extend_from_slice(ip);
        if f.len() < 60 {
            f.resize(60, 0);
        }
        f
    }

    /// `ip` behind a Linux cooked v1 header (`tcpdump -i any`), sent by us.
    pub fn sll(ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
        f.extend_from_slice(&ethertype(ip));
        f.extend_from_slice(ip);
        f
    }

    /// `ip` behind a Linux cooked v2 header.
    pub fn sll2(ip: &[u8]) -> Vec<u8> {
        let mut f = ethertype(ip).to_vec();
        f.extend_from_slice(&[0, 0, 0, 0, 0, 7, 0, 1, 4, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
        f.extend_from_slice(ip);
        f
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

    use super::*;
    use crate::capture::raw_addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_segment_ignores_ethernet_padding() {
        let pkt = build::tcp(
            (ip("198.18.0.1"), 40000),
            (ip("198.18.0.2"), 80),
            TCP_ACK,
            7,
            b"GET",
        );
        let mut padded = pkt.clone();
        padded.extend_from_slice(&[0; 10]);
        let seg = tcp_segment(IpVersion::V4, &padded).unwrap();
        assert_eq!(seg.payload, b"GET");
        assert_eq!(seg.payload_len, 3);
        assert_eq!((seg.sport, seg.dport, seg.seq), (40000, 80, 7));
        assert_eq!(seg.src, raw_addr(ip("198.18.0.1")).1);
        assert_eq!(seg.family, FAMILY_V4);
    }

    #[test]
    fn snapped_payload_is_shorter_than_its_length() {
        let pkt = build::tcp(
            (ip("198.18.0.1"), 1),
            (ip("198.18.0.2"), 2),
            TCP_ACK,
            0,
            b"abcdef",
        );
        let seg = tcp_segment(IpVersion::V4, &pkt[..pkt.len() - 4]).unwrap();
        assert_eq!((seg.payload, seg.payload_len), (&b"ab"[..], 6));
        // The TCP header itself cut off: nothing the kernel could parse.
        assert!(tcp_segment(IpVersion::V4, &pkt[..30]).is_none());
    }

    #[test]
    fn non_first_fragments_and_other_protocols_are_skipped() {
        let mut pkt = build::tcp(
            (ip("198.18.0.1"), 1),
            (ip("198.18.0.2"), 2),
            TCP_ACK,
            0,
            b"x",
        );
        pkt[7] = 0x10; // fragment offset 16 × 8 bytes
        assert!(tcp_segment(IpVersion::V4, &pkt).is_none());
        pkt[6] = 0x20; // More Fragments on the first fragment: still read
        pkt[7] = 0;
        assert!(tcp_segment(IpVersion::V4, &pkt).is_some());
        pkt[9] = 17; // UDP
        assert!(tcp_segment(IpVersion::V4, &pkt).is_none());
    }

    #[test]
    fn ipv6_segment_and_unwalked_extension_headers() {
        let mut pkt = build::tcp(
            (ip("2001:db8::1"), 50000),
            (ip("2001:db8::2"), 443),
            TCP_SYN,
            99,
            b"",
        );
        let seg = tcp_segment(IpVersion::V6, &pkt).unwrap();
        assert_eq!(seg.family, FAMILY_V6);
        assert_eq!(seg.dst, raw_addr(ip("2001:db8::2")).1);
        assert_eq!((seg.flags, seg.payload_len), (TCP_SYN, 0));
        pkt[6] = 0; // hop-by-hop options first
        assert!(tcp_segment(IpVersion::V6, &pkt).is_none());
    }

    #[test]
    fn zero_total_length_falls_back_to_the_captured_length() {
        let mut pkt = build::tcp(
            (ip("198.18.0.1"), 1),
            (ip("198.18.0.2"), 2),
            TCP_ACK,
            0,
            b"big",
        );
        pkt[2] = 0;
        pkt[3] = 0;
        assert_eq!(tcp_segment(IpVersion::V4, &pkt).unwrap().payload, b"big");
    }
}
