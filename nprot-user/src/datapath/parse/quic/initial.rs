//! Initial packets: long-header parsing, key derivation (RFC 9001 §5.2, RFC 9369 §3.3),
//! header protection removal (RFC 9001 §5.4) and AEAD opening (RFC 9001 §5.3).
//!
//! All cryptography is `ring`'s: HKDF-SHA256, AES-128 header protection, AES-128-GCM.

use ring::{
    aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, quic::HeaderProtectionKey},
    hkdf,
};

use super::{QuicError, QuicVersion};

/// RFC 9001 §5.2: the QUIC v1 initial salt.
const SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
/// RFC 9369 §3.3.1: the QUIC v2 initial salt.
const SALT_V2: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb,
    0xf9, 0xbd, 0x2e, 0xd9,
];

/// Longest connection ID of QUIC v1 and v2 (RFC 9000 §17.2).
pub(super) const MAX_CID_LEN: usize = 20;
/// Header protection samples 16 bytes starting 4 bytes after the packet number offset.
const SAMPLE_LEN: usize = 16;
const SAMPLE_OFFSET: usize = 4;

/// Long-header packet types, by meaning (their wire bits depend on the version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PacketType {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

/// The long-header type of the 2 type bits of `first` in `version`.
fn packet_type(version: QuicVersion, first: u8) -> PacketType {
    let bits = (first >> 4) & 0b11;
    match (version, bits) {
        (QuicVersion::V1, 0b00) | (QuicVersion::V2, 0b01) => PacketType::Initial,
        (QuicVersion::V1, 0b01) | (QuicVersion::V2, 0b10) => PacketType::ZeroRtt,
        (QuicVersion::V1, 0b10) | (QuicVersion::V2, 0b11) => PacketType::Handshake,
        _ => PacketType::Retry,
    }
}

/// The 2 type bits of an Initial packet in `version`, in place in the first byte.
#[cfg(any(test, feature = "testdata"))]
pub(super) fn initial_type_bits(version: QuicVersion) -> u8 {
    match version {
        QuicVersion::V1 => 0b00 << 4,
        QuicVersion::V2 => 0b01 << 4,
    }
}

/// Read a variable-length integer (RFC 9000 §16) at `*pos`, advancing it.
pub(super) fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, QuicError> {
    let first = *buf.get(*pos).ok_or(QuicError::Truncated)?;
    let len = 1usize << (first >> 6);
    let bytes = buf
        .get(*pos..pos.saturating_add(len))
        .ok_or(QuicError::Truncated)?;
    let mut value = u64::from(first & 0x3f);
    for &b in bytes.iter().skip(1) {
        value = value << 8 | u64::from(b);
    }
    *pos += len;
    Ok(value)
}

/// Read `len` bytes at `*pos`, advancing it.
pub(super) fn read_bytes<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    len: u64,
) -> Result<&'a [u8], QuicError> {
    let len = usize::try_from(len).map_err(|_| QuicError::Truncated)?;
    let end = pos.checked_add(len).ok_or(QuicError::Truncated)?;
    let bytes = buf.get(*pos..end).ok_or(QuicError::Truncated)?;
    *pos = end;
    Ok(bytes)
}

/// The unprotected fields of one long-header packet (RFC 9000 §17.2).
#[derive(Debug, Clone, Copy)]
pub(super) struct LongHeader<'a> {
    pub version: QuicVersion,
    pub packet_type: PacketType,
    pub dcid: &'a [u8],
    /// Offset of the (protected) packet number from the packet's first byte.
    pub pn_offset: usize,
    /// Bytes of this packet in the datagram (header, packet number, payload, tag).
    pub packet_len: usize,
}

/// Parse the long header at the start of `buf` and find where the packet ends.
pub(super) fn parse_long_header(buf: &[u8]) -> Result<LongHeader<'_>, QuicError> {
    let &first = buf.first().ok_or(QuicError::Truncated)?;
    if first & 0x80 == 0 {
        return Err(QuicError::NotLongHeader);
    }
    let &[_, a, b, c, d] = buf.first_chunk::<5>().ok_or(QuicError::Truncated)?;
    let wire = u32::from_be_bytes([a, b, c, d]);
    if wire == 0 {
        return Err(QuicError::VersionNegotiation);
    }
    let version = QuicVersion::from_wire(wire).ok_or(QuicError::UnknownVersion(wire))?;
    if first & 0x40 == 0 {
        return Err(QuicError::FixedBitUnset);
    }
    let packet_type = packet_type(version, first);
    if packet_type == PacketType::Retry {
        return Err(QuicError::Retry);
    }
    let mut pos = 5;
    let dcid_len = *buf.get(pos).ok_or(QuicError::Truncated)?;
    pos += 1;
    if usize::from(dcid_len) > MAX_CID_LEN {
        return Err(QuicError::BadLength);
    }
    let dcid = read_bytes(buf, &mut pos, u64::from(dcid_len))?;
    let scid_len = *buf.get(pos).ok_or(QuicError::Truncated)?;
    pos += 1;
    if usize::from(scid_len) > MAX_CID_LEN {
        return Err(QuicError::BadLength);
    }
    read_bytes(buf, &mut pos, u64::from(scid_len))?;
    if packet_type == PacketType::Initial {
        let token_len = read_varint(buf, &mut pos)?;
        read_bytes(buf, &mut pos, token_len)?;
    }
    let length = read_varint(buf, &mut pos)?;
    let pn_offset = pos;
    let length = usize::try_from(length).map_err(|_| QuicError::BadLength)?;
    let packet_len = pn_offset.checked_add(length).ok_or(QuicError::BadLength)?;
    if packet_len > buf.len() {
        return Err(QuicError::Truncated);
    }
    // The shortest protected packet: a sample of 16 bytes 4 bytes after the packet number
    // (which also leaves room for a 1-byte packet number, a frame and the tag).
    if length < SAMPLE_OFFSET + SAMPLE_LEN {
        return Err(QuicError::BadLength);
    }
    Ok(LongHeader {
        version,
        packet_type,
        dcid,
        pn_offset,
        packet_len,
    })
}

/// The raw client Initial secrets of one connection: key, IV and header protection key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawKeys {
    pub key: [u8; 16],
    pub iv: [u8; 12],
    pub hp: [u8; 16],
}

/// An output length for `ring::hkdf` (which wants a `KeyType`).
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context, into `out`.
fn expand_label(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) -> Result<(), QuicError> {
    let out_len = u16::try_from(out.len()).map_err(|_| QuicError::DecryptFailed)?;
    let len_bytes = out_len.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).map_err(|_| QuicError::DecryptFailed)?];
    let info: [&[u8]; 5] = [&len_bytes, &label_len, b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| QuicError::DecryptFailed)
}

impl RawKeys {
    /// Derive the client Initial key, IV and header protection key of a connection whose
    /// client chose `dcid` as Destination Connection ID.
    pub fn client(version: QuicVersion, dcid: &[u8]) -> Result<Self, QuicError> {
        let (salt, labels): (&[u8], [&[u8]; 3]) = match version {
            QuicVersion::V1 => (&SALT_V1, [b"quic key", b"quic iv", b"quic hp"]),
            QuicVersion::V2 => (&SALT_V2, [b"quicv2 key", b"quicv2 iv", b"quicv2 hp"]),
        };
        let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(dcid);
        let mut secret = [0u8; 32];
        expand_label(&initial, b"client in", &mut secret)?;
        let client = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret);
        let mut keys = Self {
            key: [0; 16],
            iv: [0; 12],
            hp: [0; 16],
        };
        expand_label(&client, labels[0], &mut keys.key)?;
        expand_label(&client, labels[1], &mut keys.iv)?;
        expand_label(&client, labels[2], &mut keys.hp)?;
        Ok(keys)
    }
}

/// Ready-to-use client Initial keys.
pub(super) struct Keys {
    aead: LessSafeKey,
    iv: [u8; 12],
    hp: HeaderProtectionKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    /// The client Initial keys of `version` for `dcid`.
    pub fn client(version: QuicVersion, dcid: &[u8]) -> Result<Self, QuicError> {
        Self::from_raw(&RawKeys::client(version, dcid)?)
    }

    /// Keys from their raw bytes.
    pub fn from_raw(raw: &RawKeys) -> Result<Self, QuicError> {
        let unbound =
            UnboundKey::new(&aead::AES_128_GCM, &raw.key).map_err(|_| QuicError::DecryptFailed)?;
        let hp = HeaderProtectionKey::new(&aead::quic::AES_128, &raw.hp)
            .map_err(|_| QuicError::DecryptFailed)?;
        Ok(Self {
            aead: LessSafeKey::new(unbound),
            iv: raw.iv,
            hp,
        })
    }

    /// The AEAD nonce of packet number `pn` (RFC 9001 §5.3).
    fn nonce(&self, pn: u64) -> Nonce {
        let mut nonce = self.iv;
        for (n, p) in nonce.iter_mut().skip(4).zip(pn.to_be_bytes()) {
            *n ^= p;
        }
        Nonce::assume_unique_for_key(nonce)
    }

    /// The header protection mask for the sample of the packet `packet` whose packet
    /// number starts at `pn_offset`.
    fn mask(&self, packet: &[u8], pn_offset: usize) -> Result<[u8; 5], QuicError> {
        let start = pn_offset + SAMPLE_OFFSET;
        let sample = packet
            .get(start..start + SAMPLE_LEN)
            .ok_or(QuicError::BadLength)?;
        self.hp
            .new_mask(sample)
            .map_err(|_| QuicError::DecryptFailed)
    }

    /// Remove header protection and open one protected long-header packet in place.
    /// `packet` is exactly the packet's bytes; `largest_pn` the largest packet number
    /// opened so far with these keys. Returns the packet number and the plaintext range.
    pub fn open(
        &self,
        packet: &mut [u8],
        pn_offset: usize,
        largest_pn: Option<u64>,
    ) -> Result<(u64, std::ops::Range<usize>), QuicError> {
        let mask = self.mask(packet, pn_offset)?;
        let first = packet.first_mut().ok_or(QuicError::Truncated)?;
        *first ^= mask[0] & 0x0f;
        let first = *first;
        let pn_len = usize::from(first & 0b11) + 1;
        let pn_bytes = packet
            .get_mut(pn_offset..pn_offset + pn_len)
            .ok_or(QuicError::BadLength)?;
        let mut truncated = 0u64;
        for (b, m) in pn_bytes.iter_mut().zip(mask.iter().skip(1)) {
            *b ^= m;
            truncated = truncated << 8 | u64::from(*b);
        }
        let pn = decode_packet_number(largest_pn, truncated, pn_len);
        let (header, body) = packet
            .split_at_mut_checked(pn_offset + pn_len)
            .ok_or(QuicError::BadLength)?;
        let plain_len = self
            .aead
            .open_in_place(self.nonce(pn), Aad::from(&*header), body)
            .map_err(|_| QuicError::DecryptFailed)?
            .len();
        // Reserved bits must be zero once protection is removed (RFC 9000 §17.2).
        if first & 0x0c != 0 {
            return Err(QuicError::ReservedBits);
        }
        let start = pn_offset + pn_len;
        Ok((pn, start..start + plain_len))
    }

    /// Protect a packet in place (test data): `packet` holds the header with the
    /// unprotected first byte and packet number, then the plaintext; the tag is appended.
    #[cfg(any(test, feature = "testdata"))]
    pub fn seal(&self, packet: &mut Vec<u8>, pn_offset: usize, pn: u64) -> Result<(), QuicError> {
        let first = *packet.first().ok_or(QuicError::Truncated)?;
        let pn_len = usize::from(first & 0b11) + 1;
        let header_len = pn_offset + pn_len;
        let mut body = packet.split_off(header_len);
        self.aead
            .seal_in_place_append_tag(self.nonce(pn), Aad::from(&packet[..]), &mut body)
            .map_err(|_| QuicError::DecryptFailed)?;
        packet.extend_from_slice(&body);
        let mask = self.mask(packet, pn_offset)?;
        if let Some(b) = packet.first_mut() {
            *b ^= mask[0] & 0x0f;
        }
        if let Some(pn_bytes) = packet.get_mut(pn_offset..header_len) {
            for (b, m) in pn_bytes.iter_mut().zip(mask.iter().skip(1)) {
                *b ^= m;
            }
        }
        Ok(())
    }
}

/// Recover a full packet number from its `pn_len`-byte truncation (RFC 9000 §A.3).
fn decode_packet_number(largest: Option<u64>, truncated: u64, pn_len: usize) -> u64 {
    let expected = largest.map_or(0, |l| l.saturating_add(1));
    let bits = 8 * pn_len as u32;
    let win = 1u64 << bits;
    let hwin = win / 2;
    let mask = win - 1;
    let candidate = (expected & !mask) | truncated;
    if expected >= hwin
        && candidate <= expected - hwin
        && candidate < (1u64 << 62).saturating_sub(win)
    {
        candidate + win
    } else if candidate > expected.saturating_add(hwin) && candidate >= win {
        candidate - win
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_number_decoding_follows_rfc9000_a3() {
        // RFC 9000 §A.3 example: largest 0xa82f30ea, truncated 0x9b32 (2 bytes).
        assert_eq!(
            decode_packet_number(Some(0xa82f_30ea), 0x9b32, 2),
            0xa82f_9b32
        );
        assert_eq!(decode_packet_number(None, 2, 4), 2);
        assert_eq!(decode_packet_number(Some(255), 0, 1), 256);
    }

    #[test]
    fn varints_follow_rfc9000_a1() {
        for (hex, value) in [
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c][..],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
            (&[0x40, 0x25], 37),
        ] {
            let mut pos = 0;
            assert_eq!(read_varint(hex, &mut pos), Ok(value));
            assert_eq!(pos, hex.len());
        }
        let mut pos = 0;
        assert_eq!(read_varint(&[0x7b], &mut pos), Err(QuicError::Truncated));
        assert_eq!(read_varint(&[], &mut pos), Err(QuicError::Truncated));
    }
}
