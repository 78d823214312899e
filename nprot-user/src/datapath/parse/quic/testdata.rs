//! Builder of protected client Initial packets for tests, benchmarks and fuzz seeds:
//! frames are written byte by byte, then sealed (AES-128-GCM) and header-protected with
//! the same `ring` primitives the reader uses to open them.
#![allow(
    clippy::expect_used,
    reason = "a test-data builder: a length that does not fit its field is a bug in the test"
)]

use super::{
    QuicVersion,
    initial::{Keys, initial_type_bits},
};
use crate::datapath::parse::testdata::{ClientHelloBuilder, X25519, X25519_MLKEM768};

/// The PING frame.
pub const PING: u8 = 0x01;

/// `v` as a QUIC variable-length integer (RFC 9000 §16), in its shortest form.
pub fn varint(v: u64) -> Vec<u8> {
    match v {
        0..=0x3f => vec![v as u8],
        0x40..=0x3fff => (0x4000 | v as u16).to_be_bytes().to_vec(),
        0x4000..=0x3fff_ffff => (0x8000_0000 | v as u32).to_be_bytes().to_vec(),
        _ => (0xc000_0000_0000_0000 | v).to_be_bytes().to_vec(),
    }
}

/// A CRYPTO frame carrying `data` at `offset`.
pub fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x06];
    out.extend(varint(offset));
    out.extend(varint(data.len() as u64));
    out.extend_from_slice(data);
    out
}

/// An ACK frame (with ECN counts) acknowledging packet `largest` only.
pub fn ack_ecn_frame(largest: u64) -> Vec<u8> {
    let mut out = vec![0x03];
    out.extend(varint(largest));
    out.extend([0x00, 0x00, 0x00, 0x00, 0x01, 0x00]);
    out
}

/// Builds protected client Initial packets of one connection.
#[derive(Debug, Clone)]
pub struct InitialBuilder {
    version: QuicVersion,
    dcid: Vec<u8>,
    scid: Vec<u8>,
    token: Vec<u8>,
    pn_len: usize,
}

impl InitialBuilder {
    /// Packets of `version` to the Destination Connection ID `dcid` (keys derive from
    /// it), with an empty Source Connection ID, no token and 4-byte packet numbers.
    pub fn new(version: QuicVersion, dcid: &[u8]) -> Self {
        Self {
            version,
            dcid: dcid.to_vec(),
            scid: Vec::new(),
            token: Vec::new(),
            pn_len: 4,
        }
    }

    /// Set the Source Connection ID.
    pub fn scid(mut self, scid: &[u8]) -> Self {
        self.scid = scid.to_vec();
        self
    }

    /// Set the token (as after a Retry).
    pub fn token(mut self, token: &[u8]) -> Self {
        self.token = token.to_vec();
        self
    }

    /// Encode packet numbers in `len` (1..=4) bytes.
    pub fn pn_len(mut self, len: usize) -> Self {
        self.pn_len = len;
        self
    }

    /// The header up to and including the Length field, with the first byte unprotected.
    fn header(&self, long_type_bits: u8, length: usize) -> Vec<u8> {
        let mut out = vec![0xc0 | long_type_bits | (self.pn_len as u8 - 1)];
        out.extend(self.version.to_wire().to_be_bytes());
        out.push(u8::try_from(self.dcid.len()).expect("cid fits"));
        out.extend(&self.dcid);
        out.push(u8::try_from(self.scid.len()).expect("cid fits"));
        out.extend(&self.scid);
        if long_type_bits == initial_type_bits(self.version) {
            out.extend(varint(self.token.len() as u64));
            out.extend(&self.token);
        }
        // Two-byte Length, as most stacks write it.
        let length = u16::try_from(length).expect("packet fits a 2-byte Length");
        assert!(length < 0x4000, "packet too long for a 2-byte Length");
        out.extend((0x4000 | length).to_be_bytes());
        out
    }

    /// A protected Initial packet numbered `pn` carrying `frames`, padded with PADDING
    /// frames to at least `min_len` bytes (and to the minimum a sample needs).
    pub fn packet(&self, pn: u64, frames: &[u8], min_len: usize) -> Vec<u8> {
        let mut payload = frames.to_vec();
        let overhead = self.header(initial_type_bits(self.version), 0).len() + self.pn_len + 16;
        let min_payload = min_len.saturating_sub(overhead).max(4);
        if payload.len() < min_payload {
            payload.resize(min_payload, 0);
        }
        let length = self.pn_len + payload.len() + 16;
        let mut packet = self.header(initial_type_bits(self.version), length);
        let pn_offset = packet.len();
        packet.extend(&pn.to_be_bytes()[8 - self.pn_len..]);
        packet.extend(payload);
        Keys::client(self.version, &self.dcid)
            .and_then(|keys| keys.seal(&mut packet, pn_offset, pn))
            .expect("sealing test packet");
        packet
    }

    /// A long-header packet of another type (2 type bits in place) with `len` bytes of
    /// arbitrary protected content, as a coalesced 0-RTT or Handshake packet looks.
    pub fn other_packet(&self, long_type_bits: u8, len: usize) -> Vec<u8> {
        let mut packet = self.header(long_type_bits, len);
        packet.extend((0..len).map(|i| (i as u8).wrapping_mul(31)));
        packet
    }
}

/// A Chromium-like post-quantum ClientHello handshake message (~1.9 KB): TLS 1.3, GREASE,
/// X25519MLKEM768 + X25519 key shares, ECH GREASE, ALPN h3, QUIC transport parameters.
pub fn chromium_client_hello(sni: &str) -> Vec<u8> {
    ClientHelloBuilder::new()
        .sni(sni)
        .alpn(&["h3"])
        .tls13()
        .grease()
        .key_share(X25519_MLKEM768, 1216)
        .key_share(X25519, 32)
        .raw_extension(
            0x0039,
            &[0x01, 0x02, 0x67, 0x10, 0x03, 0x02, 0x45, 0xc0].repeat(8),
        )
        .ech(400)
        .handshake()
}

/// `hello` sent as Chromium does: two 1250-byte Initial datagrams (packet numbers 1 and
/// 2), each with CRYPTO frames out of order and PING and PADDING frames between them.
pub fn chromium_like_datagrams(version: QuicVersion, dcid: &[u8], hello: &[u8]) -> Vec<Vec<u8>> {
    let n = hello.len();
    let cuts = [0, n / 7, n / 3, n / 2, 2 * n / 3, 5 * n / 6, n];
    let chunk = |i: usize| crypto_frame(cuts[i] as u64, &hello[cuts[i]..cuts[i + 1]]);
    let builder = InitialBuilder::new(version, dcid).scid(&[0x5c; 8]);
    let mut first = vec![PING];
    first.extend(chunk(2));
    first.extend([0, 0, 0]);
    first.extend(chunk(0));
    first.push(PING);
    first.extend(chunk(1));
    let mut second = chunk(5);
    second.extend([PING, 0, 0]);
    second.extend(chunk(3));
    second.push(PING);
    second.extend(chunk(4));
    vec![
        builder.packet(1, &first, 1250),
        builder.packet(2, &second, 1250),
    ]
}
