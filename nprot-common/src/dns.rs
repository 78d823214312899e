//! DNS on the kernel side: every UDP message to or from port 53, query or response, is
//! copied to the daemon (bounded), which parses it; none is held and no flow entry is
//! made (a lookup is one exchange; the daemon pairs responses with their queries).
//!
//! In block mode (`SensorConfig::dns_block`) a standard query whose name, or the
//! longest of its label suffixes found in the daemon's `DNS_NAMES` map, is to be
//! blocked is answered at once with NXDOMAIN: rewritten in place into the answer and
//! sent back to the client ([`Action::Answer`]), so it never reaches the resolver and
//! the daemon is not on the path. Its record still goes to the daemon, flagged
//! [`RECORD_DNS_FORGED`].
//!
//! Written once for the eBPF programs and for replay, over the tracker's [`Host`] and
//! [`DnsHost`].

use crate::{
    RECORD_DNS_FORGED, RECORD_FROM_SERVER, RECORD_TRUNCATED, name_hash, stat,
    track::{Action, Host, Segment},
};

/// The DNS port (RFC 1035).
pub const DNS_PORT: u16 = 53;

/// Bytes of a DNS message copied at most: an EDNS0 answer of the usual 1232–4096 bytes
/// whole; a longer one is cut and marked truncated.
pub const DNS_CAPTURE_MAX: u32 = 4096;

/// Bytes of a query read to find its name: the 12-byte header, the longest name (255
/// bytes on the wire) and the question's type and class fit. A power of two, so that an
/// index into it is bounded with a mask (for the verifier).
pub const DNS_QUERY_READ: usize = 512;

/// Longest name on the wire (RFC 1035 §2.3.4), its root label included.
pub const DNS_NAME_MAX: usize = 255;

/// Header length; the question's name follows it.
const HEADER_LEN: usize = 12;

/// A `DNS_NAMES` value: queries for the name (and its subdomains, unless a longer
/// suffix says otherwise) are answered NXDOMAIN.
pub const NAME_BLOCK: u8 = 1;
/// A `DNS_NAMES` value: the name (and its subdomains) pass, whatever a shorter suffix
/// says (an allowed subdomain of a blocked domain).
pub const NAME_ALLOW: u8 = 0;

/// `QueryScratch::verdict` before a suffix is found.
pub const NO_VERDICT: u32 = 0x100;

/// Flags word bits (the header's bytes 2 and 3, big-endian).
const QR: u16 = 0x8000;
const OPCODE: u16 = 0x7800;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;
/// RCODE 3, NXDOMAIN.
pub const RCODE_NXDOMAIN: u16 = 3;

/// Scratch space for the start of a query (per CPU in the kernel, never on the stack):
/// its bytes as read, then its name rewritten in place as a lowercase dotted name.
#[repr(C)]
#[derive(Debug)]
pub struct QueryScratch {
    /// Bytes of `bytes` that were read from the datagram.
    pub len: u32,
    /// Where the next label's length byte is, while the name is read ([`spill`]).
    pub next: u32,
    /// Where the name ends (its root label), once read ([`spill`]).
    pub end: u32,
    /// The value of the longest suffix found so far, [`NO_VERDICT`] if none ([`spill`]).
    pub verdict: u32,
    /// The datagram's first bytes.
    pub bytes: [u8; DNS_QUERY_READ],
}

impl Default for QueryScratch {
    fn default() -> QueryScratch {
        QueryScratch {
            len: 0,
            next: 0,
            end: 0,
            verdict: NO_VERDICT,
            bytes: [0; DNS_QUERY_READ],
        }
    }
}

/// Keeps a value of the name walk in the scratch map rather than in a register. The
/// verifier tracks registers exactly and memory not at all: a label position in a
/// register would make every iteration's state differ by it (and what follows the walk
/// be verified once per position it could end at), which exceeds its budget. Volatile,
/// so that LLVM keeps the round trip.
#[inline(always)]
pub(crate) fn spill<T: Copy>(slot: &mut T, value: T) {
    // SAFETY: a write through a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(slot, value) }
}

/// Reads a value [`spill`] kept.
#[inline(always)]
pub(crate) fn unspill<T: Copy>(slot: &T) -> T {
    // SAFETY: a read through a valid reference.
    unsafe { core::ptr::read_volatile(slot) }
}

/// The names the daemon wants answered ([`NAME_BLOCK`]) or let through ([`NAME_ALLOW`]),
/// by [`name_hash::hash_name`].
pub trait NameVerdicts {
    /// The value stored for a name's hash, if any.
    fn name_verdict(&self, hash: u64) -> Option<u8>;
}

/// What became of [`DnsHost::answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    /// The packet is the answer now and goes back to its sender.
    Sent,
    /// Nothing was changed: the query passes (a tunnelled query, a device the answer
    /// cannot be sent back on).
    Skipped,
    /// The rewrite failed half way: the packet is neither query nor answer and is dropped
    /// (the client asks again).
    Broken,
}

/// What the DNS step needs besides the tracker's [`Host`].
pub trait DnsHost: Host {
    /// The name map.
    type Names: NameVerdicts;
    /// Reads the first bytes of this datagram's payload (up to [`DNS_QUERY_READ`], and
    /// what is at hand) into scratch space, `len` set; with the name map. `None` if there
    /// is no scratch space.
    fn dns_query(&mut self, seg: &Segment) -> Option<(&mut QueryScratch, &Self::Names)>;
    /// Rewrites this query into its answer, whose header flags word is `new_flags`
    /// (`old_flags` before; both host order): flags changed, addresses, ports (and
    /// link-layer addresses) swapped, and sends it back where it came from.
    fn answer(&mut self, seg: &Segment, old_flags: u16, new_flags: u16) -> Answered;
}

/// A UDP datagram to or from the DNS port (a query from port 53 to port 53 is a query).
#[inline(always)]
pub fn is_dns(seg: &Segment) -> bool {
    seg.dport == DNS_PORT || seg.sport == DNS_PORT
}

/// Copies a DNS message to the daemon, oriented client → server (the client is the side
/// that is not port 53), and in block mode answers a query for a blocked name
/// ([`Action::Answer`]); every other message passes.
#[inline(always)]
pub fn step<H: DnsHost>(host: &mut H, seg: &Segment, src_is_lo: bool) -> Action {
    let (capture, block) = match host.config() {
        Some(cfg) => (cfg.capture != 0, cfg.dns_block != 0),
        None => return Action::Pass,
    };
    if seg.payload_len == 0 {
        return Action::Pass;
    }
    let from_client = seg.dport == DNS_PORT;
    let mut action = Action::Pass;
    let mut flags = if from_client { 0 } else { RECORD_FROM_SERVER };
    if block && from_client {
        match forge(host, seg) {
            Answered::Sent => {
                host.bump(stat::DNS_FORGED);
                flags |= RECORD_DNS_FORGED;
                action = Action::Answer;
            }
            Answered::Skipped => {}
            Answered::Broken => return Action::Drop,
        }
    }
    if !capture {
        return action;
    }
    let client_is_lo = src_is_lo == from_client;
    // The "SYN" of the exchange is the query: it left through an egress hook if the
    // query does here, or the response comes in.
    let flow = host.base(client_is_lo, host.egress() == from_client);
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
    action
}

/// A query whose name is blocked is answered; `Skipped` for every other message (and
/// counted when a blocked name's query could not be answered).
#[inline(always)]
fn forge<H: DnsHost>(host: &mut H, seg: &Segment) -> Answered {
    let Some((query, names)) = host.dns_query(seg) else {
        return Answered::Skipped;
    };
    let Some(old_flags) = standard_query(query) else {
        return Answered::Skipped;
    };
    if dotted_name(query).is_none() {
        return Answered::Skipped;
    }
    if name_verdict(query, names) != Some(NAME_BLOCK) {
        return Answered::Skipped;
    }
    let answered = host.answer(seg, old_flags, nxdomain_flags(old_flags));
    if answered != Answered::Sent {
        host.bump(stat::DNS_FORGE_SKIPPED);
    }
    answered
}

/// The flags word of a standard query (QR 0, opcode QUERY, one question, no answer or
/// authority records), or `None`.
#[inline(always)]
pub fn standard_query(query: &QueryScratch) -> Option<u16> {
    if (query.len as usize) < HEADER_LEN {
        return None;
    }
    let b = &query.bytes;
    let flags = u16::from_be_bytes([b[2], b[3]]);
    let qdcount = u16::from_be_bytes([b[4], b[5]]);
    let ancount = u16::from_be_bytes([b[6], b[7]]);
    let nscount = u16::from_be_bytes([b[8], b[9]]);
    if flags & (QR | OPCODE) != 0 || qdcount != 1 || ancount != 0 || nscount != 0 {
        return None;
    }
    Some(flags)
}

/// The flags word of the NXDOMAIN answer to a query with `flags`: a response, with the
/// query's opcode and RD, recursion available; AA, TC, Z, AD and CD clear.
#[inline(always)]
pub const fn nxdomain_flags(flags: u16) -> u16 {
    QR | (flags & (OPCODE | RD)) | RA | RCODE_NXDOMAIN
}

/// Rewrites the question's name in place into a dotted name (each length byte but the
/// first becomes a `.`; case is left to the hash, which folds it): it is then `bytes[13..end]`; returns `end` (also kept in
/// `query.end`). `None` for a compression pointer, a label length past what was read, a
/// name longer than [`DNS_NAME_MAX`], or a question cut before its type and class.
///
/// Every bound the walk compares with is read from the scratch map where it is used
/// ([`unspill`]): a register compared with the position would differ at every exit of
/// the loop, and the verifier would go through the rest of the program once per exit.
#[inline(always)]
pub fn dotted_name(query: &mut QueryScratch) -> Option<usize> {
    spill(&mut query.next, HEADER_LEN as u32);
    spill(&mut query.end, 0);
    for i in 0..=DNS_NAME_MAX {
        let at = HEADER_LEN + i;
        if at >= unspill(&query.len) as usize {
            return None;
        }
        let b = query.bytes[at & (DNS_QUERY_READ - 1)];
        if at == unspill(&query.next) as usize {
            if b == 0 {
                spill(&mut query.end, at as u32);
                break;
            }
            // 0xc0 is a compression pointer (never in a query's question), 0x40 and 0x80
            // are not in use.
            if b > 63 {
                return None;
            }
            spill(&mut query.next, (at + 1 + b as usize) as u32);
            query.bytes[at & (DNS_QUERY_READ - 1)] = b'.';
        }
    }
    let end = unspill(&query.end) as usize;
    let len = unspill(&query.len) as usize;
    // Not found within the longest name; or the question's type and class are missing.
    if end == 0 || end > HEADER_LEN + DNS_NAME_MAX || end + 5 > len {
        return None;
    }
    Some(end)
}

/// The value of the longest suffix of the dotted name `bytes[13..end]` that
/// [`dotted_name`] left (`end` in `query.end`) that `names` holds: the most specific
/// indicator decides. The walk goes over every position the longest name may take,
/// from its end back, and skips those past this name's end, so that it has one exit.
#[inline(always)]
pub fn name_verdict<N: NameVerdicts>(query: &mut QueryScratch, names: &N) -> Option<u8> {
    let start = HEADER_LEN + 1;
    let last = HEADER_LEN + DNS_NAME_MAX - 1;
    if (unspill(&query.end) as usize) <= start {
        return None;
    }
    spill(&mut query.verdict, NO_VERDICT);
    let mut h = name_hash::SEED;
    for i in 0..=last - start {
        let at = last - i;
        if at >= unspill(&query.end) as usize {
            continue;
        }
        let b = query.bytes[at & (DNS_QUERY_READ - 1)];
        if b == b'.'
            && let Some(v) = names.name_verdict(h)
        {
            spill(&mut query.verdict, u32::from(v));
        }
        h = name_hash::step(h, b);
    }
    if let Some(v) = names.name_verdict(h) {
        return Some(v);
    }
    let verdict = unspill(&query.verdict);
    if verdict < NO_VERDICT {
        Some(verdict as u8)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FAMILY_V4, PROTO_UDP, SensorConfig, name_hash::hash_name, track::tests::Fake};

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

    /// A query for `name` with `flags` (RD set, AD set: what dig sends) and one EDNS OPT.
    fn query(host: &mut Fake, name: &str, flags: u16) -> Segment {
        let mut msg = [0u8; 128];
        msg[0..2].copy_from_slice(&0x1234u16.to_be_bytes());
        msg[2..4].copy_from_slice(&flags.to_be_bytes());
        msg[4..6].copy_from_slice(&1u16.to_be_bytes());
        msg[10..12].copy_from_slice(&1u16.to_be_bytes());
        let mut at = 12;
        for label in name.split('.') {
            msg[at] = label.len() as u8;
            msg[at + 1..at + 1 + label.len()].copy_from_slice(label.as_bytes());
            at += 1 + label.len();
        }
        msg[at] = 0;
        // Type A, class IN, then an OPT record.
        msg[at + 1..at + 5].copy_from_slice(&[0, 1, 0, 1]);
        at += 5;
        msg[at..at + 11].copy_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        at += 11;
        host.payload = msg;
        host.payload_len = at;
        dns(true, at as u32)
    }

    fn blocking(names: &[(&str, u8)]) -> Fake {
        let mut host = Fake {
            config: SensorConfig {
                dns_block: 1,
                ..SensorConfig::default()
            },
            ..Fake::default()
        };
        for (slot, (name, v)) in host.names.0.iter_mut().zip(names) {
            *slot = Some((hash_name(name), *v));
        }
        host
    }

    #[test]
    fn queries_and_responses_are_copied_and_long_ones_cut() {
        let mut host = Fake::default();
        let query = dns(true, 40);
        assert!(is_dns(&query));
        assert_eq!(step(&mut host, &query, query.key().1), Action::Pass);
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

    #[test]
    fn a_query_for_a_blocked_name_is_answered_nxdomain_and_reported_forged() {
        let mut host = blocking(&[("blocked.test", NAME_BLOCK)]);
        let seg = query(&mut host, "www.BLOCKED.test", 0x0120);
        assert_eq!(step(&mut host, &seg, seg.key().1), Action::Answer);
        // QR, RD kept, RA, NXDOMAIN; AD cleared.
        assert_eq!(host.answered, Some((0x0120, 0x8183)));
        assert_eq!(host.counters[stat::DNS_FORGED as usize], 1);
        assert_eq!(host.captured_flags & RECORD_DNS_FORGED, RECORD_DNS_FORGED);
        assert_eq!(host.counters[stat::DNS_CAPTURED as usize], 1);

        // The name itself, too.
        let seg = query(&mut host, "blocked.test", 0x0100);
        assert_eq!(step(&mut host, &seg, seg.key().1), Action::Answer);
        // Other names, and a name that only ends like it, pass.
        for name in ["ok.test", "notblocked.test", "test"] {
            let seg = query(&mut host, name, 0x0100);
            assert_eq!(step(&mut host, &seg, seg.key().1), Action::Pass, "{name}");
            assert_eq!(host.captured_flags & RECORD_DNS_FORGED, 0);
        }
        assert_eq!(host.answers, 2);
    }

    #[test]
    fn the_longest_suffix_decides() {
        let mut host = blocking(&[
            ("blocked.test", NAME_BLOCK),
            ("ok.blocked.test", NAME_ALLOW),
            ("bad.ok.blocked.test", NAME_BLOCK),
        ]);
        for (name, action) in [
            ("a.ok.blocked.test", Action::Pass),
            ("ok.blocked.test", Action::Pass),
            ("x.bad.ok.blocked.test", Action::Answer),
            ("other.blocked.test", Action::Answer),
        ] {
            let seg = query(&mut host, name, 0x0100);
            assert_eq!(step(&mut host, &seg, seg.key().1), action, "{name}");
        }
    }

    #[test]
    fn only_standard_queries_in_block_mode_are_answered() {
        // Not in block mode.
        let mut host = blocking(&[("blocked.test", NAME_BLOCK)]);
        host.config.dns_block = 0;
        let seg = query(&mut host, "blocked.test", 0x0100);
        assert_eq!(step(&mut host, &seg, seg.key().1), Action::Pass);

        let mut host = blocking(&[("blocked.test", NAME_BLOCK)]);
        // A response, an UPDATE (opcode 5).
        for flags in [0x8180, 0x2800] {
            let seg = query(&mut host, "blocked.test", flags);
            assert_eq!(step(&mut host, &seg, seg.key().1), Action::Pass);
        }
        // A compression pointer in the question.
        let seg = query(&mut host, "blocked.test", 0x0100);
        host.payload[12] = 0xc0;
        assert_eq!(step(&mut host, &seg, seg.key().1), Action::Pass);
        // A label running past the message, and a question cut before its type.
        let seg = query(&mut host, "blocked.test", 0x0100);
        host.payload[12] = 60;
        assert_eq!(step(&mut host, &seg, seg.key().1), Action::Pass);
        let mut seg = query(&mut host, "blocked.test", 0x0100);
        host.payload_len = 12 + 14 + 2;
        seg.payload_len = host.payload_len as u32;
        assert_eq!(step(&mut host, &seg, seg.key().1), Action::Pass);
        // Two questions.
        let seg = query(&mut host, "blocked.test", 0x0100);
        host.payload[5] = 2;
        assert_eq!(step(&mut host, &seg, seg.key().1), Action::Pass);
        assert_eq!(host.answers, 0);
        assert_eq!(host.counters[stat::DNS_FORGE_SKIPPED as usize], 0);
    }

    #[test]
    fn a_blocked_query_that_cannot_be_answered_is_counted() {
        let mut host = blocking(&[("blocked.test", NAME_BLOCK)]);
        host.answer_result = Answered::Skipped;
        let seg = query(&mut host, "blocked.test", 0x0100);
        assert_eq!(step(&mut host, &seg, seg.key().1), Action::Pass);
        assert_eq!(host.counters[stat::DNS_FORGE_SKIPPED as usize], 1);
        assert_eq!(host.captured_flags & RECORD_DNS_FORGED, 0);
        host.answer_result = Answered::Broken;
        assert_eq!(step(&mut host, &seg, seg.key().1), Action::Drop);
        assert_eq!(host.counters[stat::DNS_FORGE_SKIPPED as usize], 2);
    }

    #[test]
    fn the_longest_name_is_read_and_a_longer_one_is_not() {
        let mut scratch = QueryScratch::default();
        // 127 one-byte labels plus the root: 255 bytes on the wire.
        let mut at = HEADER_LEN;
        for _ in 0..127 {
            scratch.bytes[at] = 1;
            scratch.bytes[at + 1] = b'A';
            at += 2;
        }
        scratch.bytes[at] = 0;
        scratch.len = (at + 5) as u32;
        let end = dotted_name(&mut scratch).expect("255 bytes");
        assert_eq!(end, HEADER_LEN + 254);
        assert_eq!(&scratch.bytes[13..16], b"A.A");
        let mut scratch = QueryScratch::default();
        let mut at = HEADER_LEN;
        for _ in 0..128 {
            scratch.bytes[at] = 1;
            scratch.bytes[at + 1] = b'a';
            at += 2;
        }
        scratch.len = (at + 5) as u32;
        assert_eq!(dotted_name(&mut scratch), None);
    }
}
