//! Link layers of capture files: where the IP header starts in a frame.

/// Ethertype of IPv4.
const ETH_P_IP: u16 = 0x0800;
/// Ethertype of IPv6.
const ETH_P_IPV6: u16 = 0x86DD;
/// 802.1Q, 802.1ad and the old pre-standard QinQ tag: 4 bytes each, skipped.
const VLAN_TAGS: [u16; 3] = [0x8100, 0x88A8, 0x9100];
/// More stacked VLAN tags than this and the frame is not looked at.
const MAX_VLAN_TAGS: usize = 4;

/// A link-layer header type replay can decode (tcpdump.org LINKTYPE_* numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// `LINKTYPE_ETHERNET` (1): 14-byte header, 802.1Q / 802.1ad tags skipped.
    Ethernet,
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

impl LinkType {
    /// The link type with tcpdump.org number `code`, if replay supports it.
    pub fn from_code(code: u32) -> Option<LinkType> {
        Some(match code {
            1 => LinkType::Ethernet,
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

/// The IP packet in `frame`, or `None` if the frame carries something else (ARP, LLDP,
/// other protocols) or is too short for its link header.
pub fn network_layer(link: LinkType, frame: &[u8]) -> Option<(IpVersion, &[u8])> {
    let (proto, off) = match link {
        LinkType::Ethernet => {
            let mut off = 12;
            let mut proto = be16(frame, off)?;
            let mut tags = 0;
            while VLAN_TAGS.contains(&proto) {
                tags += 1;
                if tags > MAX_VLAN_TAGS {
                    return None;
                }
                off += 4;
                proto = be16(frame, off)?;
            }
            (proto, off + 2)
        }
        // packet type, ARPHRD, address length, 8 address bytes, protocol.
        LinkType::LinuxSll => (be16(frame, 14)?, 16),
        // protocol, reserved, ifindex, ARPHRD, packet type, address length, 8 address bytes.
        LinkType::LinuxSll2 => (be16(frame, 0)?, 20),
        LinkType::RawIp => {
            let version = frame.first()? >> 4;
            return match version {
                4 => Some((IpVersion::V4, frame)),
                6 => Some((IpVersion::V6, frame)),
                _ => None,
            };
        }
        LinkType::Ipv4 => return Some((IpVersion::V4, frame)),
        LinkType::Ipv6 => return Some((IpVersion::V6, frame)),
    };
    let ip = frame.get(off..)?;
    match proto {
        ETH_P_IP => Some((IpVersion::V4, ip)),
        ETH_P_IPV6 => Some((IpVersion::V6, ip)),
        _ => None,
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
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
        let too_many = eth(&[0x8100; 5], 0x0800, IP4);
        assert_eq!(network_layer(LinkType::Ethernet, &too_many), None);
        let arp = eth(&[], 0x0806, IP4);
        assert_eq!(network_layer(LinkType::Ethernet, &arp), None);
        assert_eq!(network_layer(LinkType::Ethernet, &plain[..13]), None);
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
}
