//! DNS on the kernel side: every UDP message to or from port 53, query or response, is
//! copied to the daemon (bounded), which parses it; none is held and no flow entry is
//! made (a lookup is one exchange; the daemon pairs responses with their queries).
//! Written once for the eBPF programs and for replay, over the tracker's [`Host`].

use crate::{
    RECORD_FROM_SERVER, RECORD_TRUNCATED, stat,
    track::{Host, Segment},
};

/// The DNS port (RFC 1035).
pub const DNS_PORT: u16 = 53;

/// Bytes of a DNS message copied at most: an EDNS0 answer of the usual 1232–4096 bytes
/// whole; a longer one is cut and marked truncated.
pub const DNS_CAPTURE_MAX: u32 = 4096;

/// A UDP datagram to or from the DNS port (a query from port 53 to port 53 is a query).
#[inline(always)]
pub fn is_dns(seg: &Segment) -> bool {
    seg.dport == DNS_PORT || seg.sport == DNS_PORT
}

/// Copies a DNS message to the daemon, oriented client → server (the client is the side
/// that is not port 53). The message always passes.
#[inline(always)]
pub fn step<H: Host>(host: &mut H, seg: &Segment, src_is_lo: bool) {
    let capture = matches!(host.config(), Some(cfg) if cfg.capture != 0);
    if !capture || seg.payload_len == 0 {
        return;
    }
    let from_client = seg.dport == DNS_PORT;
    let client_is_lo = src_is_lo == from_client;
    // The "SYN" of the exchange is the query: it left through an egress hook if the
    // query does here, or the response comes in.
    let flow = host.base(client_is_lo, host.egress() == from_client);
    let mut flags = if from_client { 0 } else { RECORD_FROM_SERVER };
    let mut len = seg.payload_len;
    if len > DNS_CAPTURE_MAX {
        len = DNS_CAPTURE_MAX;
        flags |= RECORD_TRUNCATED;
    }
    if host.available() < len {
        len = host.available();
        flags |= RECORD_TRUNCATED;
    }
    if flags & RECORD_TRUNCATED != 0 {
        host.bump(stat::DNS_TRUNCATED);
    }
    if len != 0 && host.capture(seg, &flow, len, flags) {
        host.bump(stat::DNS_CAPTURED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FAMILY_V4, PROTO_UDP, SensorConfig, track::tests::Fake};

    fn dns(from_client: bool, payload_len: u32) -> Segment {
        let (c, s) = ([1, 0, 0, 0], [2, 0, 0, 0]);
        let (src, dst, sport, dport) = if from_client {
            (c, s, 40000, 53)
        } else {
            (s, c, 53, 40000)
        };
        Segment {
            family: FAMILY_V4,
            proto: PROTO_UDP,
            sport,
            dport,
            src,
            dst,
            payload_len,
            ..Segment::default()
        }
    }

    #[test]
    fn queries_and_responses_are_copied_and_long_ones_cut() {
        let mut host = Fake::default();
        let query = dns(true, 40);
        assert!(is_dns(&query));
        step(&mut host, &query, query.key().1);
        let answer = dns(false, 5000);
        step(&mut host, &answer, answer.key().1);
        assert_eq!(host.captured, 40 + DNS_CAPTURE_MAX);
        assert_eq!(host.counters[stat::DNS_CAPTURED as usize], 2);
        assert_eq!(host.counters[stat::DNS_TRUNCATED as usize], 1);
    }

    #[test]
    fn nothing_is_copied_without_capture() {
        let mut host = Fake {
            config: SensorConfig {
                capture: 0,
                ..SensorConfig::default()
            },
            ..Fake::default()
        };
        let query = dns(true, 40);
        step(&mut host, &query, query.key().1);
        assert_eq!(host.captured, 0);
    }
}
