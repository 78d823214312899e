//! QUIC client Initial packets (RFC 9000, RFC 9001, RFC 9369): the ClientHello a QUIC
//! client sends, recovered from the UDP datagrams it sent on one flow.
//!
//! Initial packets are encrypted with keys anyone can derive from the client's first
//! Destination Connection ID, so a passive observer can read them: [`InitialReader`]
//! derives those keys, removes header protection, opens the AEAD, walks the frames,
//! reassembles the CRYPTO stream (across packets and datagrams, in any order) and hands
//! the complete ClientHello to the same parser as TLS over TCP
//! ([`tls::parse_handshake_message`]).
//!
//! Nothing here panics on network input, and every buffer is bounded: at most
//! [`MAX_DATAGRAMS`] datagrams and [`MAX_TOTAL_BYTES`] bytes per reader, and CRYPTO data up
//! to the 64 KiB ClientHello limit of the TLS parser.

mod crypto;
mod frames;
mod initial;

/// Protected Initial builder for tests, benchmarks and fuzz seeds (not part of the API).
#[doc(hidden)]
#[cfg(any(test, feature = "testdata"))]
pub mod testdata;

#[cfg(test)]
mod tests;

use self::{
    crypto::CryptoStream,
    initial::{Keys, LongHeader, PacketType, parse_long_header},
};
use super::{ParseOutcome, Parsed, tls, tls::ClientHelloInfo};

/// Datagrams one reader takes before giving up on finding a ClientHello
/// ([`QuicError::TooManyDatagrams`]). Clients send theirs in one to three datagrams (more
/// with reordering, 0-RTT or a Retry).
pub const MAX_DATAGRAMS: usize = 16;
/// Bytes of datagrams one reader takes before giving up ([`QuicError::TooManyDatagrams`]).
pub const MAX_TOTAL_BYTES: usize = 128 * 1024;

/// The QUIC versions whose Initial packets can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum QuicVersion {
    /// QUIC version 1 (RFC 9000), wire value 0x00000001.
    V1,
    /// QUIC version 2 (RFC 9369), wire value 0x6b3343cf.
    V2,
}

impl QuicVersion {
    /// Wire value of QUIC v1.
    pub const WIRE_V1: u32 = 0x0000_0001;
    /// Wire value of QUIC v2.
    pub const WIRE_V2: u32 = 0x6b33_43cf;

    /// "v1" or "v2".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }

    /// The version of a long header's Version field, if it is one we read.
    pub fn from_wire(version: u32) -> Option<Self> {
        match version {
            Self::WIRE_V1 => Some(Self::V1),
            Self::WIRE_V2 => Some(Self::V2),
            _ => None,
        }
    }

    /// The wire value of this version.
    pub fn to_wire(self) -> u32 {
        match self {
            Self::V1 => Self::WIRE_V1,
            Self::V2 => Self::WIRE_V2,
        }
    }
}

/// Why client datagrams do not yield a ClientHello.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicError {
    /// The datagram starts with a short-header (1-RTT) packet, or is not QUIC.
    #[error("not a QUIC long-header packet")]
    NotLongHeader,
    /// A long header of a version other than v1 and v2.
    #[error("unknown QUIC version {0:#010x}")]
    UnknownVersion(u32),
    /// A Version Negotiation packet (version 0), which only servers send.
    #[error("QUIC version negotiation packet")]
    VersionNegotiation,
    /// A Retry packet, which only servers send.
    #[error("QUIC Retry packet")]
    Retry,
    /// A known-version long header with the fixed bit (0x40) unset.
    #[error("QUIC fixed bit unset")]
    FixedBitUnset,
    /// The first datagram holds no Initial packet.
    #[error("no QUIC Initial packet")]
    NotInitial,
    /// A field or packet runs past the end of its datagram or payload.
    #[error("truncated QUIC packet")]
    Truncated,
    /// A length field is impossible (connection ID over 20 bytes, packet too short to be
    /// protected).
    #[error("bad length in QUIC packet")]
    BadLength,
    /// The Initial packet does not open with the keys of its connection.
    #[error("QUIC Initial packet does not decrypt")]
    DecryptFailed,
    /// The reserved header bits are set once protection is removed.
    #[error("QUIC reserved bits set")]
    ReservedBits,
    /// A frame type not allowed in Initial packets (RFC 9000 §12.4), or not encoded in
    /// its shortest form.
    #[error("frame type {0:#x} not allowed in a QUIC Initial packet")]
    FrameNotAllowed(u64),
    /// CRYPTO data beyond the largest ClientHello accepted.
    #[error("CRYPTO data beyond the 64 KiB ClientHello limit")]
    CryptoTooFar,
    /// [`MAX_DATAGRAMS`] datagrams or [`MAX_TOTAL_BYTES`] bytes without a whole ClientHello.
    #[error("no ClientHello within the QUIC datagram budget")]
    TooManyDatagrams,
    /// The CRYPTO stream does not start with a ClientHello.
    #[error("QUIC CRYPTO stream does not start with a ClientHello")]
    NotClientHello,
    /// The ClientHello is malformed (the TLS parser's reason).
    #[error("ClientHello in QUIC: {0}")]
    Tls(&'static str),
}

/// Result of feeding a datagram to an [`InitialReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuicOutcome {
    /// The ClientHello is not complete yet: feed the flow's next client datagram.
    NeedMore,
    /// The ClientHello, complete (final).
    ClientHello {
        /// Version of the Initial packets that carried it.
        version: QuicVersion,
        /// What the ClientHello says, as for TLS over TCP (`length`: of the handshake
        /// message).
        info: ClientHelloInfo,
    },
    /// The datagrams are not (or no longer) a readable QUIC client handshake (final).
    Invalid(QuicError),
}

/// Cheap check of a flow's first client datagram: a long header with the fixed bit, a
/// version this module reads and the Initial packet type. Nothing is decrypted. The
/// kernel's rule ([`nprot_common::quic::Header::is_initial`]), so that both agree.
pub fn looks_like_client_initial(datagram: &[u8]) -> bool {
    nprot_common::quic::header(datagram).is_initial()
}

/// The keys of one connection's client Initial packets.
#[derive(Debug)]
struct Connection {
    version: QuicVersion,
    /// The Destination Connection ID the keys derive from.
    dcid: Vec<u8>,
    keys: Keys,
    /// Largest packet number opened with these keys.
    largest_pn: Option<u64>,
}

impl Connection {
    fn new(header: &LongHeader<'_>) -> Result<Self, QuicError> {
        Ok(Self {
            version: header.version,
            dcid: header.dcid.to_vec(),
            keys: Keys::client(header.version, header.dcid)?,
            largest_pn: None,
        })
    }

    /// Open the packet `packet` (exactly its bytes) into `scratch`; returns the range of
    /// the plaintext in `scratch`.
    fn open(
        &self,
        header: &LongHeader<'_>,
        packet: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(u64, std::ops::Range<usize>), QuicError> {
        if header.version != self.version {
            return Err(QuicError::DecryptFailed);
        }
        scratch.clear();
        scratch.extend_from_slice(packet);
        self.keys.open(scratch, header.pn_offset, self.largest_pn)
    }
}

/// Per-flow reader of a QUIC client's Initial packets, up to its ClientHello.
///
/// Keys are derived from the Destination Connection ID of the first Initial packet seen.
/// An Initial that does not open with them but opens with keys derived from its own DCID
/// (a client sending its ClientHello again after a Retry, with the new DCID the server
/// chose, or a new connection on the same 4-tuple) makes the reader restart: CRYPTO data
/// gathered so far is dropped and the new keys are used from then on.
///
/// Once the first Initial opened, a later datagram whose Initial opens with neither set of
/// keys is ignored (`NeedMore`), so a spoofed datagram cannot end inspection; a datagram
/// without an Initial packet (0-RTT, Handshake) counts towards the budget and is skipped.
/// `ClientHello` and `Invalid` are final: `push` keeps returning the same outcome.
#[derive(Debug, Default)]
pub struct InitialReader {
    connection: Option<Connection>,
    /// A packet opened with the current keys.
    opened: bool,
    crypto: CryptoStream,
    datagrams: usize,
    bytes: usize,
    scratch: Vec<u8>,
    outcome: Option<QuicOutcome>,
}

impl InitialReader {
    /// A reader that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one client datagram (a whole UDP payload) of the flow.
    pub fn push(&mut self, datagram: &[u8]) -> QuicOutcome {
        if let Some(outcome) = &self.outcome {
            return outcome.clone();
        }
        self.datagrams += 1;
        self.bytes = self.bytes.saturating_add(datagram.len());
        let outcome = match self.process(datagram) {
            Ok(Some(outcome)) => outcome,
            Err(QuicError::DecryptFailed) if self.opened => QuicOutcome::NeedMore,
            Err(e) => QuicOutcome::Invalid(e),
            Ok(None) if self.connection.is_none() => QuicOutcome::Invalid(QuicError::NotInitial),
            Ok(None) => QuicOutcome::NeedMore,
        };
        let outcome = if outcome == QuicOutcome::NeedMore
            && (self.datagrams >= MAX_DATAGRAMS || self.bytes > MAX_TOTAL_BYTES)
        {
            QuicOutcome::Invalid(QuicError::TooManyDatagrams)
        } else {
            outcome
        };
        if outcome != QuicOutcome::NeedMore {
            self.outcome = Some(outcome.clone());
        }
        outcome
    }

    /// The version of the Initial packets read, once one was seen.
    pub fn version(&self) -> Option<QuicVersion> {
        self.connection.as_ref().map(|c| c.version)
    }

    /// After the ClientHello was found: does this datagram belong to the same connection
    /// (its Initial packets open with this reader's keys, or one of its long-header
    /// packets carries the DCID the keys derive from)?
    ///
    /// A datagram that does not, but whose own DCID gives keys that open it (see
    /// [`looks_like_client_initial`] and a new reader), is a new connection on the same
    /// 4-tuple. Datagrams with only Handshake or 1-RTT packets addressed to the server's
    /// connection ID cannot be told apart here and give `false`.
    pub fn same_connection(&self, datagram: &[u8]) -> bool {
        let Some(connection) = &self.connection else {
            return false;
        };
        let mut scratch = Vec::new();
        let mut rest = datagram;
        while let Ok(header) = parse_long_header(rest) {
            let Some(packet) = rest.get(..header.packet_len) else {
                return false;
            };
            if header.version == connection.version && header.dcid == connection.dcid {
                return true;
            }
            if header.packet_type == PacketType::Initial
                && connection.open(&header, packet, &mut scratch).is_ok()
            {
                return true;
            }
            rest = rest.get(header.packet_len..).unwrap_or_default();
        }
        false
    }

    /// Read the datagram's packets. `Ok(Some(..))`: a final outcome; `Ok(None)`: more needed.
    fn process(&mut self, datagram: &[u8]) -> Result<Option<QuicOutcome>, QuicError> {
        let mut rest = datagram;
        let mut first = true;
        while !rest.is_empty() {
            let header = match parse_long_header(rest) {
                Ok(header) => header,
                Err(e) if first => return Err(e),
                // Coalesced packets end at a short header, padding or junk.
                Err(_) => break,
            };
            let (packet, next) = rest
                .split_at_checked(header.packet_len)
                .ok_or(QuicError::Truncated)?;
            rest = next;
            let was_first = std::mem::replace(&mut first, false);
            if header.packet_type != PacketType::Initial {
                continue;
            }
            let payload = match self.open(&header, packet) {
                Ok(payload) => payload,
                Err(e) if was_first => return Err(e),
                // A later coalesced packet that does not open is dropped (RFC 9000 §12.2).
                Err(_) => continue,
            };
            let mut scratch = std::mem::take(&mut self.scratch);
            let crypto = &mut self.crypto;
            let walked = scratch
                .get(payload)
                .ok_or(QuicError::Truncated)
                .and_then(|plain| {
                    frames::for_each_crypto_frame(plain, |offset, data| crypto.insert(offset, data))
                });
            std::mem::swap(&mut self.scratch, &mut scratch);
            walked?;
            if let Some(outcome) = self.client_hello()? {
                return Ok(Some(outcome));
            }
        }
        Ok(None)
    }

    /// Open one Initial packet into `self.scratch`, with the current keys or, failing
    /// that, with keys from its own DCID (restarting the reader on those).
    fn open(
        &mut self,
        header: &LongHeader<'_>,
        packet: &[u8],
    ) -> Result<std::ops::Range<usize>, QuicError> {
        if let Some(connection) = &mut self.connection {
            if let Ok((pn, range)) = connection.open(header, packet, &mut self.scratch) {
                connection.largest_pn = connection.largest_pn.max(Some(pn));
                self.opened = true;
                return Ok(range);
            }
            if connection.version == header.version && connection.dcid == header.dcid {
                return Err(QuicError::DecryptFailed);
            }
        }
        let mut fresh = Connection::new(header)?;
        let (pn, range) = fresh.open(header, packet, &mut self.scratch)?;
        fresh.largest_pn = Some(pn);
        self.connection = Some(fresh);
        self.crypto.clear();
        self.opened = true;
        Ok(range)
    }

    /// The outcome once the CRYPTO stream holds the whole ClientHello.
    fn client_hello(&self) -> Result<Option<QuicOutcome>, QuicError> {
        let Some(message) = self.crypto.client_hello()? else {
            return Ok(None);
        };
        let version = self.version().ok_or(QuicError::NotInitial)?;
        match tls::parse_handshake_message(message) {
            ParseOutcome::Complete(Parsed::Tls(info)) => {
                Ok(Some(QuicOutcome::ClientHello { version, info }))
            }
            ParseOutcome::NotRecognised(why) => Err(QuicError::Tls(why)),
            ParseOutcome::NeedMore | ParseOutcome::Complete(_) | ParseOutcome::Oversized => {
                Err(QuicError::Tls("incomplete ClientHello"))
            }
        }
    }
}
