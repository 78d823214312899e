//! The kernel pre-filter: decides in the TC program, on the first client bytes of what
//! awaits a verdict, that nothing in force can match them, so that the server's answer
//! need not wait for the daemon.
//!
//! The daemon loads a summary of what can match: a blocked Bloom filter of the
//! [`name_hash`] of every indicator host (Domain and Url values) and of the [`net_key`]
//! of every IP indicator, with the set of prefix lengths those have ([`Lengths`]). The
//! summary is a superset: a name or address it does not hold matches nothing. It has two
//! buffers; the daemon writes the one not in force and then flips [`CONFIG_BUFFER_1`] in
//! `SensorConfig::prefilter`, so that a flow is judged against one whole summary, the
//! old or the new.
//!
//! [`judge`] reads the payload record the kernel assembled (the segment's first bytes):
//! the SNI of a ClientHello, or the Host of an origin-form request head, both whole in the
//! segment, hashes every label suffix with [`name_hash`] as the daemon's matcher does, and
//! says [`ALLOWED`], [`CANDIDATE`] or [`UNDECIDED`]. Written once for the eBPF program and
//! the host's tests; every walk keeps its positions in [`Walk`] (map memory, see
//! `dns::spill` for why) and has a single exit.

#[cfg(feature = "user")]
use std::{vec, vec::Vec};

use crate::{
    CAPTURE_SEG_MAX, FAMILY_V4, RawAddr,
    dns::{spill, unspill},
    name_hash,
};

/// `SensorConfig::prefilter`: the pre-filter runs (block mode, a summary loaded).
pub const CONFIG_ON: u8 = 1 << 0;
/// `SensorConfig::prefilter`: the second summary buffer is in force.
pub const CONFIG_BUFFER_1: u8 = 1 << 1;
/// `SensorConfig::prefilter`: a ClientHello with the encrypted_client_hello extension is a
/// candidate (the daemon may judge it by more than its outer name: `ech = "block"`, or
/// `dns_names = "enforce"`).
pub const CONFIG_ECH_CANDIDATE: u8 = 1 << 2;

/// 64-bit words in a filter block: 4 KiB, one map value.
pub const BLOCK_WORDS: usize = 512;
/// Bits in a block.
pub const BLOCK_BITS: u32 = (BLOCK_WORDS * 64) as u32;
/// Blocks per buffer (2 MiB, 2^24 bits: at 10^6 keys about 0.1 % false positives).
pub const BLOCKS: u32 = 512;
/// Bits set per key, all in the key's block (one map lookup per key).
pub const PROBES: u32 = 7;
/// A filter block.
pub type Block = [u64; BLOCK_WORDS];

/// The prefix lengths of a buffer's IP indicators: bit `L` of `v4` for IPv4 `/L`, bit
/// `L % 64` of `v6[L / 64]` for IPv6 `/L`. The kernel looks up the server address
/// masked to each length present.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lengths {
    /// IPv4 prefix lengths 0..=32.
    pub v4: u64,
    /// IPv6 prefix lengths 0..=128.
    pub v6: [u64; 3],
}

impl Lengths {
    /// Adds a prefix length of `family`.
    pub fn add(&mut self, family: u8, len: u32) {
        if family == FAMILY_V4 {
            self.v4 |= 1 << (len & 63);
        } else {
            self.v6[(len as usize / 64) % 3] |= 1 << (len % 64);
        }
    }

    /// Whether an IP indicator of `family` with `len` bits was added.
    #[inline(always)]
    pub fn has(&self, family: u8, len: u32) -> bool {
        let word = if family == FAMILY_V4 {
            self.v4
        } else {
            self.v6[(len as usize / 64) % 3]
        };
        word >> (len % 64) & 1 != 0
    }
}

/// What [`judge`] found.
pub const ALLOWED: u8 = 1;
/// See [`judge`].
pub const CANDIDATE: u8 = 2;
/// See [`judge`].
pub const UNDECIDED: u8 = 3;

/// Longest name judged (RFC 1035's 253 characters of a dotted name).
pub const NAME_MAX: usize = 253;
/// Extensions of a ClientHello read at most (browsers send about 20).
pub const MAX_EXTENSIONS: usize = 40;
/// Bytes of a request head searched for its Host at most.
pub const HTTP_HEAD_MAX: usize = 128;

const MASK: usize = CAPTURE_SEG_MAX - 1;
const TLS_HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: usize = 0;
const EXT_ECH: usize = 0xfe0d;

/// Mixes a key (a name hash, an address key) into the bits the filter uses: FNV-1a's
/// low bits depend on few input bits, so its state is finalised as MurmurHash3 does.
#[inline(always)]
pub const fn mix(h: u64) -> u64 {
    let mut x = h ^ (h >> 33);
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The block of a mixed key within a buffer.
#[inline(always)]
pub const fn block_of(m: u64) -> u32 {
    (m >> 55) as u32 & (BLOCKS - 1)
}

/// The bit of probe `j` of a mixed key within its block (double hashing).
#[inline(always)]
pub const fn bit_of(m: u64, j: u32) -> u32 {
    let a = m as u32;
    let b = ((m >> 32) as u32) | 1;
    a.wrapping_add(j.wrapping_mul(b)) & (BLOCK_BITS - 1)
}

/// Sets a mixed key's bits in its block.
pub fn insert(block: &mut Block, m: u64) {
    for j in 0..PROBES {
        let bit = bit_of(m, j) as usize;
        block[(bit / 64) & (BLOCK_WORDS - 1)] |= 1 << (bit % 64);
    }
}

/// Whether all of a mixed key's bits are set in its block.
#[inline(always)]
pub fn contains(block: &Block, m: u64) -> bool {
    let mut all = true;
    for j in 0..PROBES {
        let bit = bit_of(m, j) as usize;
        if block[(bit / 64) & (BLOCK_WORDS - 1)] & (1 << (bit % 64)) == 0 {
            all = false;
        }
    }
    all
}

/// The filter key of the network of `len` bits of an address as flows carry it (words in
/// network byte order): apart from every name hash by a tag no name hash has.
#[inline(always)]
pub const fn net_key(family: u8, addr: &RawAddr, len: u32) -> u64 {
    let w0 = masked(addr[0], len) as u64;
    let w1 = masked(addr[1], len.saturating_sub(32)) as u64;
    let w2 = masked(addr[2], len.saturating_sub(64)) as u64;
    let w3 = masked(addr[3], len.saturating_sub(96)) as u64;
    let hi = (w0 << 32) | w1;
    let lo = (w2 << 32) | w3;
    (hi ^ lo.rotate_left(29) ^ (0xff << 56) ^ ((family as u64) << 8) ^ len as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The first `bits` bits of a word in network byte order, as a number.
#[inline(always)]
const fn masked(word: u32, bits: u32) -> u32 {
    let v = u32::from_be(word);
    if bits == 0 {
        0
    } else if bits >= 32 {
        v
    } else {
        v & (u32::MAX << (32 - bits))
    }
}

/// The summary as the pre-filter asks it.
pub trait Summary {
    /// The filter may hold `key` (a [`name_hash`] or a [`net_key`]; false positives
    /// allowed, false negatives never).
    fn may_hold(&self, key: u64) -> bool;
    /// The prefix lengths of the IP indicators.
    fn lengths(&self) -> Lengths;
}

/// Positions of [`judge`]'s walks, kept in map memory rather than in registers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Walk {
    /// Bytes of the payload at hand.
    pub len: u32,
    /// The next ClientHello extension.
    pub pos: u32,
    /// Where the extensions end (within what is at hand).
    pub end: u32,
    /// The name, `[name_start, name_end)`; 0 if none.
    pub name_start: u32,
    /// See `name_start`.
    pub name_end: u32,
    /// server_name extensions, or Host fields, seen.
    pub names: u32,
    /// 1 if the ClientHello has an encrypted_client_hello extension.
    pub ech: u32,
    /// Where the request head ends; 0 if not found.
    pub head_end: u32,
    /// 1 if a suffix of the name may match.
    pub hit: u32,
    /// The caller's record flags, kept here across the walks: a value held in a register
    /// would make the verifier go through the walks once per value it may take.
    pub keep: u32,
    /// The name hash while the name is walked: in a register, it would be a known
    /// constant on the paths that skip positions or meet a dot, and every such path a
    /// verifier state of its own.
    pub hash: u64,
}

/// [`judge`]'s outcome: [`ALLOWED`], [`CANDIDATE`] or [`UNDECIDED`], and for
/// [`ALLOWED`] how many bytes from the segment's start the decision covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// [`ALLOWED`], [`CANDIDATE`] or [`UNDECIDED`].
    pub outcome: u8,
    /// Bytes the outcome covers: the ClientHello's record, or the request head.
    pub covered: u32,
}

impl Judgement {
    /// Nothing could be judged.
    pub const UNDECIDED: Judgement = Judgement {
        outcome: UNDECIDED,
        covered: 0,
    };
}

#[inline(always)]
fn byte(d: &[u8; CAPTURE_SEG_MAX], at: usize) -> usize {
    d[at & MASK] as usize
}

#[inline(always)]
fn be16(d: &[u8; CAPTURE_SEG_MAX], at: usize) -> usize {
    (byte(d, at) << 8) | byte(d, at + 1)
}

/// Judges the first `len` bytes of `d` (a client's bytes awaiting a verdict) sent to the
/// server at `addr`: [`ALLOWED`] when they carry a name (TLS SNI, HTTP Host) and neither
/// a suffix of it nor the address may match; [`CANDIDATE`] when one may (or, with
/// `ech_candidate`, the ClientHello has ECH); [`UNDECIDED`] when no name could be read
/// that the daemon would read the same way.
#[inline(always)]
pub fn judge<S: Summary>(
    d: &[u8; CAPTURE_SEG_MAX],
    len: u32,
    walk: &mut Walk,
    summary: &S,
    ech_candidate: bool,
    family: u8,
    addr: &RawAddr,
) -> Judgement {
    spill(&mut walk.len, len);
    spill(&mut walk.name_start, 0);
    spill(&mut walk.name_end, 0);
    spill(&mut walk.names, 0);
    spill(&mut walk.ech, 0);
    let covered = if d[0] == TLS_HANDSHAKE {
        tls_name(d, walk)
    } else {
        http_name(d, walk)
    };
    let Some(covered) = covered else {
        return Judgement::UNDECIDED;
    };
    if !judgeable_name(d, walk) {
        return Judgement::UNDECIDED;
    }
    let candidate = name_may_match(d, walk, summary)
        || addr_may_match(walk, summary, family, addr)
        || (ech_candidate && unspill(&walk.ech) != 0);
    Judgement {
        outcome: if candidate { CANDIDATE } else { ALLOWED },
        covered: covered as u32,
    }
}

/// The SNI of a ClientHello whose record starts the bytes: the first host_name of the
/// first server_name extension, as the daemon takes it (`walk.name_*`). Returns the
/// record's end. `None` for anything else: not a ClientHello, one fragmented over
/// records, a name not whole in the bytes, no server_name before the bytes end.
#[inline(always)]
fn tls_name(d: &[u8; CAPTURE_SEG_MAX], walk: &mut Walk) -> Option<usize> {
    let len = unspill(&walk.len) as usize;
    if len < 44 || d[1] != 3 || d[5] != CLIENT_HELLO {
        return None;
    }
    let rec_end = 5 + be16(d, 3);
    let hs_end = 9 + ((byte(d, 6) << 16) | be16(d, 7));
    if hs_end > rec_end {
        return None;
    }
    // Version (2) and random (32) after the handshake header, then the session id.
    let mut p = 43;
    p += 1 + byte(d, p);
    if p + 2 > len {
        return None;
    }
    p += 2 + be16(d, p);
    if p + 1 > len {
        return None;
    }
    p += 1 + byte(d, p);
    if p + 2 > len {
        return None;
    }
    let ext_end = p + 2 + be16(d, p);
    if ext_end > hs_end {
        return None;
    }
    spill(&mut walk.pos, (p + 2) as u32);
    spill(&mut walk.end, ext_end.min(len) as u32);
    for _ in 0..MAX_EXTENSIONS {
        let pos = unspill(&walk.pos) as usize;
        if pos + 4 > unspill(&walk.end) as usize {
            continue;
        }
        let kind = be16(d, pos);
        let ext_len = be16(d, pos + 2);
        if kind == EXT_SERVER_NAME {
            // A list (2 bytes long), its first entry's type (0: host_name) and length.
            if unspill(&walk.names) == 0
                && byte(d, pos + 6) == 0
                && pos + 9 + be16(d, pos + 7) <= pos + 4 + ext_len
            {
                spill(&mut walk.name_start, (pos + 9) as u32);
                spill(&mut walk.name_end, (pos + 9 + be16(d, pos + 7)) as u32);
            }
            let names = unspill(&walk.names);
            spill(&mut walk.names, names + 1);
        } else if kind == EXT_ECH {
            spill(&mut walk.ech, 1);
        }
        spill(&mut walk.pos, (pos + 4 + ext_len) as u32);
    }
    // A name is judged only when every extension was read: ECH, if offered, is known.
    let pos = unspill(&walk.pos) as usize;
    if pos != ext_end || ext_end > len {
        return None;
    }
    Some(rec_end)
}

/// The Host of an origin-form request head that ends within the bytes, and nothing after
/// it (a pipelined request would go unjudged): `walk.name_*`. Returns the head's end.
/// `None` for a proxy request (absolute-form, CONNECT), a method it does not know, no or
/// several Host fields, a head not whole in the bytes or followed by more.
///
/// The head is walked for line starts only, each with one comparison per thing looked
/// for (a blank line, `host:` in any case): few paths per byte for the verifier.
#[inline(always)]
fn http_name(d: &[u8; CAPTURE_SEG_MAX], walk: &mut Walk) -> Option<usize> {
    // Through map memory, so that every method the line may start with reaches the walk
    // in the same verifier state.
    spill(&mut walk.head_end, u32::from(origin_form_request(d)));
    if unspill(&walk.len) < 16 || unspill(&walk.head_end) == 0 {
        return None;
    }
    spill(&mut walk.head_end, 0);
    for i in 0..HTTP_HEAD_MAX {
        if i >= unspill(&walk.len) as usize || unspill(&walk.head_end) != 0 {
            continue;
        }
        if byte(d, i) != usize::from(b'\n') {
            continue;
        }
        if (byte(d, i + 1) << 8 | byte(d, i + 2)) == 0x0d0a {
            spill(&mut walk.head_end, (i + 3) as u32);
        } else if (byte(d, i + 1) << 24
            | byte(d, i + 2) << 16
            | byte(d, i + 3) << 8
            | byte(d, i + 4))
            | 0x2020_2020
            == 0x686f_7374
            && byte(d, i + 5) == usize::from(b':')
        {
            // The last one is kept; more than one makes the head undecided.
            spill(&mut walk.name_start, (i + 6) as u32);
            let names = unspill(&walk.names);
            spill(&mut walk.names, names + 1);
        }
    }
    let head_end = unspill(&walk.head_end) as usize;
    if head_end == 0 || head_end != unspill(&walk.len) as usize || unspill(&walk.names) != 1 {
        return None;
    }
    // The value: after optional blanks, up to a port, a blank or the line's end.
    for _ in 0..2 {
        let start = unspill(&walk.name_start) as usize;
        let b = byte(d, start);
        if b == usize::from(b' ') || b == usize::from(b'\t') {
            spill(&mut walk.name_start, (start + 1) as u32);
        }
    }
    spill(&mut walk.name_end, 0);
    for i in 0..=NAME_MAX {
        let at = unspill(&walk.name_start) as usize + i;
        // The bound is read from memory: a register compared here would carry what each
        // path learnt of it, and no two paths would meet again for the verifier.
        if at >= unspill(&walk.head_end) as usize || unspill(&walk.name_end) != 0 {
            continue;
        }
        let b = byte(d, at) as u8;
        if b == b'\r' || b == b'\n' || b == b':' || b == b' ' || b == b'\t' {
            spill(&mut walk.name_end, at as u32);
        }
    }
    Some(head_end)
}

/// The request line starts with a method the daemon judges by Host and an origin-form
/// target (`/`).
#[inline(always)]
fn origin_form_request(d: &[u8; CAPTURE_SEG_MAX]) -> bool {
    let at = |s: &[u8]| s.iter().enumerate().all(|(i, &b)| d[i] == b);
    at(b"GET /")
        | at(b"HEAD /")
        | at(b"POST /")
        | at(b"PUT /")
        | at(b"DELETE /")
        | at(b"OPTIONS /")
        | at(b"PATCH /")
}

/// The name found is one the daemon matches as a name: not empty or too long, not an IP
/// literal (a digit last: no top-level domain ends in one; or a bracket), no trailing dot.
#[inline(always)]
fn judgeable_name(d: &[u8; CAPTURE_SEG_MAX], walk: &Walk) -> bool {
    let start = unspill(&walk.name_start) as usize;
    let end = unspill(&walk.name_end) as usize;
    if start == 0 || end <= start || end - start > NAME_MAX || end > unspill(&walk.len) as usize {
        return false;
    }
    let last = byte(d, end - 1) as u8;
    let first = byte(d, start) as u8;
    !(last.is_ascii_digit() || last == b'.' || first == b'[')
}

/// Whether the summary may hold the name or one of its label suffixes: the walk of
/// `dns::name_verdict`, backwards over every position the longest name may take.
#[inline(always)]
fn name_may_match<S: Summary>(d: &[u8; CAPTURE_SEG_MAX], walk: &mut Walk, summary: &S) -> bool {
    spill(&mut walk.hit, 0);
    spill(&mut walk.hash, name_hash::SEED);
    for i in 0..NAME_MAX {
        let at = unspill(&walk.name_start) as usize + (NAME_MAX - 1 - i);
        if at >= unspill(&walk.name_end) as usize {
            continue;
        }
        let b = byte(d, at) as u8;
        let h = unspill(&walk.hash);
        if b == b'.' && summary.may_hold(h) {
            spill(&mut walk.hit, 1);
        }
        spill(&mut walk.hash, name_hash::step(h, b));
    }
    let h = unspill(&walk.hash);
    summary.may_hold(h) || unspill(&walk.hit) != 0
}

/// Whether an IP indicator may hold the server address: the address masked to every
/// prefix length the indicators have.
#[inline(always)]
pub fn addr_may_match<S: Summary>(
    walk: &mut Walk,
    summary: &S,
    family: u8,
    addr: &RawAddr,
) -> bool {
    let lengths = summary.lengths();
    spill(&mut walk.hit, 0);
    let max = if family == FAMILY_V4 { 32 } else { 128 };
    for len in 0..=128u32 {
        if len <= max && lengths.has(family, len) && summary.may_hold(net_key(family, addr, len)) {
            spill(&mut walk.hit, 1);
        }
    }
    unspill(&walk.hit) != 0
}

/// A summary in memory: the daemon builds the filter buffers with it, and tests judge
/// with it.
#[cfg(feature = "user")]
#[derive(Clone)]
pub struct Filter {
    /// The [`BLOCKS`] blocks of one buffer.
    pub blocks: Vec<Block>,
    /// The prefix lengths of the IP indicators added.
    pub lengths: Lengths,
}

#[cfg(feature = "user")]
impl Default for Filter {
    fn default() -> Filter {
        Filter {
            blocks: vec![[0; BLOCK_WORDS]; BLOCKS as usize],
            lengths: Lengths::default(),
        }
    }
}

#[cfg(feature = "user")]
impl Summary for Filter {
    fn may_hold(&self, key: u64) -> bool {
        Filter::may_hold(self, key)
    }
    fn lengths(&self) -> Lengths {
        self.lengths
    }
}

#[cfg(feature = "user")]
impl Filter {
    /// Adds an IP network: `addr` (as flows carry it) with `len` bits.
    pub fn add_net(&mut self, family: u8, addr: &RawAddr, len: u32) {
        self.add(net_key(family, addr, len));
        self.lengths.add(family, len);
    }

    /// Adds a key (a [`name_hash`] or a [`net_key`]).
    pub fn add(&mut self, key: u64) {
        let m = mix(key);
        if let Some(block) = self.blocks.get_mut(block_of(m) as usize) {
            insert(block, m);
        }
    }

    /// Whether the filter may hold a key.
    pub fn may_hold(&self, key: u64) -> bool {
        let m = mix(key);
        self.blocks
            .get(block_of(m) as usize)
            .is_some_and(|b| contains(b, m))
    }
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use std::{boxed::Box, format, string::String, vec};

    use super::*;

    /// A filter of names and IPv4 addresses.
    fn summary(names: &[&str], addrs: &[RawAddr]) -> Filter {
        let mut f = Filter::default();
        for n in names {
            f.add(name_hash::hash_name(n));
        }
        for a in addrs {
            f.add_net(FAMILY_V4, a, 32);
        }
        f
    }

    const SERVER: RawAddr = [0x0200_12c6, 0, 0, 0];

    fn judged(bytes: &[u8], s: &Filter, ech: bool) -> Judgement {
        // Stale bytes past the end must not count.
        let Ok(mut d) = Box::<[u8; CAPTURE_SEG_MAX]>::try_from(vec![b'x'; CAPTURE_SEG_MAX]) else {
            return Judgement::UNDECIDED;
        };
        d[..bytes.len()].copy_from_slice(bytes);
        let mut walk = Walk::default();
        judge(
            &d,
            bytes.len() as u32,
            &mut walk,
            s,
            ech,
            FAMILY_V4,
            &SERVER,
        )
    }

    /// A ClientHello with `extensions` (type, body) after a 32-byte session id.
    fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut exts = Vec::new();
        for (kind, body) in extensions {
            exts.extend_from_slice(&kind.to_be_bytes());
            exts.extend_from_slice(&(body.len() as u16).to_be_bytes());
            exts.extend_from_slice(body);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![CLIENT_HELLO, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![TLS_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut b = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(&(name.len() as u16).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        (0, b)
    }

    #[test]
    fn a_client_hello_is_judged_by_every_suffix_of_its_sni_and_the_address() {
        let s = summary(&["bad.example", "evil.test"], &[[0x0900_12c6, 0, 0, 0]]);
        let ok = hello(&[
            (10, vec![0, 2, 0, 29]),
            sni("www.good.example"),
            (43, vec![2, 3, 4]),
        ]);
        let j = judged(&ok, &s, false);
        assert_eq!(j.outcome, ALLOWED);
        assert_eq!(j.covered as usize, ok.len());
        for name in [
            "bad.example",
            "x.bad.example",
            "A.B.BAD.Example",
            "evil.test",
        ] {
            let j = judged(&hello(&[sni(name)]), &s, false);
            assert_eq!(j.outcome, CANDIDATE, "{name}");
        }
        // Not a suffix on a label boundary.
        assert_eq!(
            judged(&hello(&[sni("notbad.example")]), &s, false).outcome,
            ALLOWED
        );
        let blocked_server = summary(&[], &[SERVER]);
        assert_eq!(judged(&ok, &blocked_server, false).outcome, CANDIDATE);
    }

    #[test]
    fn a_client_hello_the_daemon_might_read_otherwise_is_undecided() {
        let s = summary(&[], &[]);
        let ok = hello(&[sni("good.example")]);
        // Cut anywhere: undecided, never allowed on what was not read.
        for cut in 1..ok.len() {
            assert_eq!(
                judged(&ok[..cut], &s, false),
                Judgement::UNDECIDED,
                "cut {cut}"
            );
        }
        // No SNI; an IP literal; a trailing dot.
        for h in [
            hello(&[(10, vec![0, 2, 0, 29])]),
            hello(&[sni("198.18.0.5")]),
            hello(&[sni("good.example.")]),
        ] {
            assert_eq!(judged(&h, &s, false), Judgement::UNDECIDED);
        }
        // The first SNI decides, as in the daemon.
        let s = summary(&["bad.example"], &[]);
        let two = hello(&[sni("good.example"), sni("bad.example")]);
        assert_eq!(judged(&two, &s, false).outcome, ALLOWED);
        let two = hello(&[sni("bad.example"), sni("good.example")]);
        assert_eq!(judged(&two, &s, false).outcome, CANDIDATE);
        // ECH makes it a candidate only when asked.
        let ech = hello(&[sni("cover.example"), (0xfe0d, vec![0; 40])]);
        assert_eq!(judged(&ech, &s, false).outcome, ALLOWED);
        assert_eq!(judged(&ech, &s, true).outcome, CANDIDATE);
        // More extensions than are read: undecided.
        let many: Vec<_> = (0..MAX_EXTENSIONS as u16)
            .map(|i| (100 + i, vec![]))
            .chain([sni("good.example")])
            .collect();
        assert_eq!(judged(&hello(&many), &s, false), Judgement::UNDECIDED);
    }

    #[test]
    fn a_request_head_is_judged_by_its_host() {
        let s = summary(&["bad.example"], &[]);
        let ok = b"GET /x HTTP/1.1\r\nUser-Agent: t\r\nhost:  www.good.example:8080 \r\nAccept: */*\r\n\r\n";
        let j = judged(ok, &s, false);
        assert_eq!(j.outcome, ALLOWED);
        assert_eq!(j.covered as usize, ok.len());
        let bad = b"POST / HTTP/1.1\r\nHost: a.BAD.example\r\n\r\n";
        assert_eq!(judged(bad, &s, false).outcome, CANDIDATE);
        for undecided in [
            &b"GET http://bad.example/ HTTP/1.1\r\nHost: good.example\r\n\r\n"[..],
            b"CONNECT bad.example:443 HTTP/1.1\r\nHost: good.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: good.example\r\nHost: bad.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: good.example\r\n",
            b"GET / HTTP/1.1\r\nHost: 198.18.0.9\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n",
            // A pipelined request after the head.
            b"GET / HTTP/1.1\r\nHost: good.example\r\n\r\nGET / HTTP/1.1\r\nHost: bad.example\r\n\r\n",
        ] {
            assert_eq!(
                judged(undecided, &s, false),
                Judgement::UNDECIDED,
                "{}",
                String::from_utf8_lossy(undecided)
            );
        }
    }

    #[test]
    fn a_server_in_an_ip_network_of_any_length_may_match() {
        let hello = hello(&[sni("good.example")]);
        // 198.18.0.2 is SERVER.
        let mut f = Filter::default();
        f.add_net(FAMILY_V4, &[0x0000_12c6, 0, 0, 0], 16);
        assert_eq!(judged(&hello, &f, false).outcome, CANDIDATE);
        let mut f = Filter::default();
        f.add_net(FAMILY_V4, &[0x0001_12c6, 0, 0, 0], 24);
        assert_eq!(judged(&hello, &f, false).outcome, ALLOWED);
        // Host bits of the indicator's address do not matter; /0 holds everything.
        let mut f = Filter::default();
        f.add_net(FAMILY_V4, &[0xff00_12c6, 0, 0, 0], 24);
        assert_eq!(judged(&hello, &f, false).outcome, CANDIDATE);
        let mut f = Filter::default();
        f.add_net(FAMILY_V4, &[0x0102_0304, 0, 0, 0], 0);
        assert_eq!(judged(&hello, &f, false).outcome, CANDIDATE);
        // IPv6 /64 and /128.
        let v6: RawAddr = [0xb80d_0120, 0, 0, 0x0100_0000];
        let mut walk = Walk::default();
        let mut f = Filter::default();
        f.add_net(crate::FAMILY_V6, &[0xb80d_0120, 0, 0x0500_0000, 0], 64);
        assert!(addr_may_match(&mut walk, &f, crate::FAMILY_V6, &v6));
        let mut f = Filter::default();
        f.add_net(crate::FAMILY_V6, &v6, 128);
        assert!(addr_may_match(&mut walk, &f, crate::FAMILY_V6, &v6));
        let other: RawAddr = [0xb80d_0120, 0, 0, 0x0200_0000];
        assert!(!addr_may_match(&mut walk, &f, crate::FAMILY_V6, &other));
    }

    #[test]
    fn the_filter_holds_what_was_added_and_little_else() {
        let mut f = Filter::default();
        for i in 0..100_000u64 {
            f.add(name_hash::hash_name(format!("n{i}.example")));
        }
        for i in 0..100_000u64 {
            assert!(f.may_hold(name_hash::hash_name(format!("n{i}.example"))));
        }
        let false_positives = (0..100_000u64)
            .filter(|i| f.may_hold(name_hash::hash_name(format!("m{i}.example"))))
            .count();
        // 10^5 keys in 2^24 bits: well under 0.1 %.
        assert!(false_positives < 100, "{false_positives}");
    }
}
