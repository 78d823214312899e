//! TLS ClientHello parsing: SNI, ALPN, highest offered version, ECH and GREASE presence.
//!
//! The record layer is reassembled here rather than with `tls_parser::parse_tls_plaintext`,
//! which parses each record on its own and so rejects a ClientHello fragmented over
//! several records (post-quantum key shares make ClientHellos larger than one segment,
//! and some stacks fragment them on purpose).

use std::borrow::Cow;

use tls_parser::{
    Err as NomErr, TlsExtension, TlsRecordType, parse_tls_client_hello_extension,
    parse_tls_extension_unknown, parse_tls_handshake_client_hello, parse_tls_raw_record,
};

use super::{ParseOutcome, Parsed};

/// Largest ClientHello body accepted; a larger declared length is hostile or not TLS.
pub const MAX_HANDSHAKE_LEN: usize = 64 * 1024;

const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
const EXT_SERVER_NAME: u16 = 0;
/// Longest DNS name in presentation form (RFC 1035), without the trailing dot.
const MAX_DNS_NAME_LEN: usize = 253;

/// What a ClientHello tells about the flow's destination and client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientHelloInfo {
    /// SNI host_name, lowercase, without a trailing dot; `None` if absent or not a valid DNS name.
    pub server_name: Option<String>,
    /// ALPN protocol names in the order offered.
    pub alpn: Vec<String>,
    /// Highest version offered: "TLS 1.3", "TLS 1.2", "TLS 1.1", "TLS 1.0", "SSL 3.0" (or "unknown").
    pub tls_version: &'static str,
    /// The encrypted_client_hello extension (0xfe0d) is present: `server_name` is the outer (public) name.
    pub ech: bool,
    /// A GREASE value (RFC 8701) appears among cipher suites, extensions, versions or groups.
    pub grease: bool,
    /// Bytes consumed: all TLS records up to and including the one that ends the ClientHello.
    pub length: usize,
}

/// Parse a TLS ClientHello from the start of `buf` (which must begin with a TLS record).
///
/// Returns `Complete(Parsed::Tls(..))`, `NeedMore` for any valid prefix (the ClientHello
/// may be split over TCP segments and TLS records at any offset), or `NotRecognised`.
pub fn parse_client_hello(buf: &[u8]) -> ParseOutcome {
    match reassemble(buf) {
        Ok((message, length)) => match parse_message(&message, length) {
            Ok(info) => ParseOutcome::Complete(Parsed::Tls(info)),
            Err(why) => ParseOutcome::NotRecognised(why),
        },
        Err(Stop::NeedMore) => ParseOutcome::NeedMore,
        Err(Stop::Bad(why)) => ParseOutcome::NotRecognised(why),
    }
}

/// Parse a bare ClientHello handshake message (4-byte handshake header included, no TLS
/// record layer), as QUIC carries it in CRYPTO frames (RFC 9001 §4).
///
/// Gives the same [`ClientHelloInfo`] as [`parse_client_hello`] over TCP, except that
/// `length` counts the message itself (header included). Returns `NeedMore` while `msg`
/// is a valid prefix of a ClientHello; bytes after the message are ignored.
pub fn parse_handshake_message(msg: &[u8]) -> ParseOutcome {
    match check_handshake_prefix(msg, &[]) {
        Ok(Some(total)) => match msg.get(..total) {
            Some(message) => match parse_message(message, total) {
                Ok(info) => ParseOutcome::Complete(Parsed::Tls(info)),
                Err(why) => ParseOutcome::NotRecognised(why),
            },
            None => ParseOutcome::NeedMore,
        },
        Ok(None) | Err(Stop::NeedMore) => ParseOutcome::NeedMore,
        Err(Stop::Bad(why)) => ParseOutcome::NotRecognised(why),
    }
}

/// Why reassembly stopped before a whole handshake message was available.
enum Stop {
    NeedMore,
    Bad(&'static str),
}

/// Concatenate the payloads of consecutive handshake records until the first handshake
/// message is complete. Returns that message (header included) and the bytes consumed.
/// Borrows when the message fits one record, the usual case.
fn reassemble(buf: &[u8]) -> Result<(Cow<'_, [u8]>, usize), Stop> {
    let mut handshake: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut consumed = 0;
    loop {
        let rest = buf.get(consumed..).unwrap_or_default();
        check_record_header(rest)?;
        let record = match parse_tls_raw_record(rest) {
            Ok((_, record)) => record,
            Err(NomErr::Incomplete(_)) => {
                // Judge the partial payload now, so that junk is rejected without waiting.
                let partial = rest.get(RECORD_HEADER_LEN..).unwrap_or_default();
                check_handshake_prefix(&handshake, partial)?;
                return Err(Stop::NeedMore);
            }
            Err(_) => return Err(Stop::Bad("bad TLS record")),
        };
        consumed += RECORD_HEADER_LEN + record.data.len();
        if handshake.is_empty() {
            handshake = Cow::Borrowed(record.data);
        } else {
            handshake.to_mut().extend_from_slice(record.data);
        }
        if let Some(total) = check_handshake_prefix(&handshake, &[])?
            && handshake.len() >= total
        {
            let message = match handshake {
                Cow::Borrowed(all) => Cow::Borrowed(all.get(..total).unwrap_or(all)),
                Cow::Owned(mut all) => {
                    all.truncate(total);
                    Cow::Owned(all)
                }
            };
            return Ok((message, consumed));
        }
    }
}

/// Validate the (possibly partial) 5-byte record header at the start of `rest`.
fn check_record_header(rest: &[u8]) -> Result<(), Stop> {
    let byte = |i: usize| rest.get(i).copied();
    if rest.is_empty() {
        return Err(Stop::NeedMore);
    }
    if byte(0) != Some(TlsRecordType::Handshake.0) {
        return Err(Stop::Bad(
            "non-handshake TLS record before the ClientHello ended",
        ));
    }
    if byte(1).is_some_and(|major| major != 0x03) || byte(2).is_some_and(|minor| minor > 0x04) {
        return Err(Stop::Bad("implausible TLS record version"));
    }
    if let (Some(hi), Some(lo)) = (byte(3), byte(4)) {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        // Empty handshake fragments are forbidden (RFC 8446 5.1) and would let a peer
        // feed endless records.
        if len == 0 {
            return Err(Stop::Bad("empty TLS handshake record"));
        }
        if len > usize::from(tls_parser::MAX_RECORD_LEN) {
            return Err(Stop::Bad("TLS record too long"));
        }
    }
    Ok(())
}

/// Validate the handshake bytes seen so far (`done` then `partial`): the message must be a
/// ClientHello of sane length with a TLS-family legacy_version. Returns the full message
/// length (header included) once the header is known.
fn check_handshake_prefix(done: &[u8], partial: &[u8]) -> Result<Option<usize>, Stop> {
    let mut head = [0u8; HANDSHAKE_HEADER_LEN + 1];
    let mut seen = 0;
    for (slot, &b) in head.iter_mut().zip(done.iter().chain(partial)) {
        *slot = b;
        seen += 1;
    }
    if seen >= 1 && head[0] != HANDSHAKE_CLIENT_HELLO {
        return Err(Stop::Bad(
            "first TLS handshake message is not a ClientHello",
        ));
    }
    // legacy_version major byte: SSL 3.0 and every TLS version use 3.
    if seen > HANDSHAKE_HEADER_LEN && head[HANDSHAKE_HEADER_LEN] != 0x03 {
        return Err(Stop::Bad("implausible ClientHello version"));
    }
    if seen < HANDSHAKE_HEADER_LEN {
        return Ok(None);
    }
    let len = usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3]);
    if len > MAX_HANDSHAKE_LEN {
        return Err(Stop::Bad("ClientHello declared longer than 64 KiB"));
    }
    Ok(Some(HANDSHAKE_HEADER_LEN + len))
}

/// Parse one complete ClientHello handshake message (header included).
fn parse_message(message: &[u8], length: usize) -> Result<ClientHelloInfo, &'static str> {
    let body = message.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default();
    let (trailing, hello) =
        parse_tls_handshake_client_hello(body).map_err(|_| "malformed ClientHello")?;
    // tls-parser silently drops an extension block whose length overruns the message;
    // leftover bytes reveal that (and any other trailing junk, which servers reject too).
    if !trailing.is_empty() {
        return Err("malformed ClientHello extensions");
    }

    let mut info = ClientHelloInfo {
        server_name: None,
        alpn: Vec::new(),
        tls_version: "unknown",
        ech: false,
        grease: hello.ciphers.iter().any(|c| is_grease(c.0)),
        length,
    };
    let mut highest = version_rank(hello.version.0);
    let mut seen_sni = false;
    let mut rest = hello.ext.unwrap_or_default();
    while !rest.is_empty() {
        // Frame each extension generically first: tls-parser's list parser stops silently
        // at the first extension whose content it dislikes, which would hide later ones.
        let (next, ext_type) = match parse_tls_extension_unknown(rest) {
            Ok((next, TlsExtension::Unknown(ext_type, _))) => (next, ext_type.0),
            _ => return Err("malformed ClientHello extension list"),
        };
        let raw = rest.get(..rest.len() - next.len()).unwrap_or_default();
        rest = next;
        info.grease |= is_grease(ext_type);
        info.ech |= ext_type == EXT_ENCRYPTED_CLIENT_HELLO;
        if ext_type == EXT_SERVER_NAME {
            // Only the first server_name counts; servers reject duplicates anyway.
            if std::mem::replace(&mut seen_sni, true) {
                continue;
            }
        }
        // A known extension with undecodable content leaves its field empty.
        let Ok((_, ext)) = parse_tls_client_hello_extension(raw) else {
            continue;
        };
        match ext {
            TlsExtension::SNI(names) => {
                info.server_name = names
                    .iter()
                    .find(|(kind, _)| *kind == tls_parser::SNIType::HostName)
                    .and_then(|(_, name)| dns_name(name));
            }
            TlsExtension::ALPN(protocols) if info.alpn.is_empty() => {
                info.alpn = protocols
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
            }
            TlsExtension::SupportedVersions(versions) => {
                for v in versions {
                    info.grease |= is_grease(v.0);
                    highest = highest.max(version_rank(v.0));
                }
            }
            TlsExtension::EllipticCurves(groups) => {
                info.grease |= groups.iter().any(|g| is_grease(g.0));
            }
            _ => {}
        }
    }
    info.tls_version = version_name(highest);
    Ok(info)
}

/// GREASE values (RFC 8701) are 0x0a0a, 0x1a1a, … 0xfafa: two equal bytes ending in 0xa.
fn is_grease(v: u16) -> bool {
    let [hi, lo] = v.to_be_bytes();
    hi == lo && lo & 0x0f == 0x0a
}

/// Order protocol versions; 0 = not a version we name (GREASE, DTLS, unknown).
fn version_rank(v: u16) -> u8 {
    match v {
        0x0300 => 1,
        0x0301 => 2,
        0x0302 => 3,
        0x0303 => 4,
        // RFC 8446 and its drafts (0x7fxx), which pre-RFC clients offered.
        0x0304 | 0x7f00..=0x7fff => 5,
        _ => 0,
    }
}

fn version_name(rank: u8) -> &'static str {
    match rank {
        1 => "SSL 3.0",
        2 => "TLS 1.0",
        3 => "TLS 1.1",
        4 => "TLS 1.2",
        5 => "TLS 1.3",
        _ => "unknown",
    }
}

/// Validate an SNI host_name as a DNS name (letters, digits, '-', '_' in dot-separated
/// labels of 1..=63 bytes) and normalise it: lowercase, no trailing dot.
fn dns_name(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    if raw.is_empty() || raw.len() > MAX_DNS_NAME_LEN {
        return None;
    }
    let valid = raw.split(|&b| b == b'.').all(|label| {
        (1..=63).contains(&label.len())
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    // All bytes are ASCII once validated, so this conversion cannot fail.
    valid
        .then(|| String::from_utf8(raw.to_ascii_lowercase()).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::{
        super::testdata::{ClientHelloBuilder, X25519, X25519_MLKEM768},
        *,
    };

    fn complete(buf: &[u8]) -> ClientHelloInfo {
        match parse_client_hello(buf) {
            ParseOutcome::Complete(Parsed::Tls(info)) => info,
            other => panic!("expected a ClientHello, got {other:?}"),
        }
    }

    fn not_recognised(buf: &[u8]) -> bool {
        matches!(parse_client_hello(buf), ParseOutcome::NotRecognised(_))
    }

    /// Every strict prefix must ask for more; the whole buffer must parse.
    fn assert_prefixes_need_more(buf: &[u8]) -> ClientHelloInfo {
        for cut in 0..buf.len() {
            let prefix = buf.get(..cut).unwrap_or_default();
            assert_eq!(
                parse_client_hello(prefix),
                ParseOutcome::NeedMore,
                "prefix of {cut}/{} bytes",
                buf.len()
            );
        }
        complete(buf)
    }

    #[test]
    fn bare_handshake_message_parses_like_records() {
        let builder = ClientHelloBuilder::new()
            .sni("Quic.Example")
            .alpn(&["h3"])
            .tls13()
            .grease()
            .key_share(X25519_MLKEM768, 1216)
            .max_fragment(300);
        let msg = builder.handshake();
        let over_tcp = complete(&builder.build());
        let ParseOutcome::Complete(Parsed::Tls(bare)) = parse_handshake_message(&msg) else {
            panic!("bare ClientHello not parsed");
        };
        assert_eq!(bare.length, msg.len());
        assert_eq!(
            ClientHelloInfo {
                length: over_tcp.length,
                ..bare.clone()
            },
            over_tcp
        );
        assert_eq!(bare.server_name.as_deref(), Some("quic.example"));
        // Trailing bytes are ignored, every prefix needs more.
        let mut longer = msg.clone();
        longer.extend_from_slice(&[0; 7]);
        assert_eq!(
            parse_handshake_message(&longer),
            ParseOutcome::Complete(Parsed::Tls(bare))
        );
        for cut in [0, 1, 4, 5, msg.len() / 2, msg.len() - 1] {
            assert_eq!(
                parse_handshake_message(&msg[..cut]),
                ParseOutcome::NeedMore,
                "{cut}"
            );
        }
        assert!(matches!(
            parse_handshake_message(&[0x02, 0, 0, 1, 3]),
            ParseOutcome::NotRecognised(_)
        ));
        assert!(matches!(
            parse_handshake_message(&[0x01, 0, 0, 2, 3, 3]),
            ParseOutcome::NotRecognised(_)
        ));
    }

    #[test]
    fn tls13_with_sni_and_alpn() {
        let buf = ClientHelloBuilder::new()
            .sni("WWW.Example.COM")
            .alpn(&["h2", "http/1.1"])
            .tls13()
            .build();
        let info = complete(&buf);
        assert_eq!(info.server_name.as_deref(), Some("www.example.com"));
        assert_eq!(info.alpn, ["h2", "http/1.1"]);
        assert_eq!(info.tls_version, "TLS 1.3");
        assert!(!info.ech);
        assert!(!info.grease);
        assert_eq!(info.length, buf.len());
    }

    #[test]
    fn without_sni() {
        let info = complete(&ClientHelloBuilder::new().tls13().build());
        assert_eq!(info.server_name, None);
        assert!(info.alpn.is_empty());
        assert_eq!(info.tls_version, "TLS 1.3");
    }

    #[test]
    fn tls12_only() {
        let buf = ClientHelloBuilder::new().sni("legacy.example").build();
        let info = complete(&buf);
        assert_eq!(info.server_name.as_deref(), Some("legacy.example"));
        assert_eq!(info.tls_version, "TLS 1.2");
    }

    #[test]
    fn legacy_versions_without_extensions() {
        for (version, name) in [
            (0x0300, "SSL 3.0"),
            (0x0301, "TLS 1.0"),
            (0x0302, "TLS 1.1"),
        ] {
            let buf = ClientHelloBuilder::new()
                .legacy_version(version)
                .no_extensions()
                .build();
            assert_eq!(complete(&buf).tls_version, name);
        }
    }

    #[test]
    fn ech_flag() {
        let buf = ClientHelloBuilder::new()
            .sni("public.example")
            .tls13()
            .ech(200)
            .build();
        let info = complete(&buf);
        assert!(info.ech);
        assert_eq!(info.server_name.as_deref(), Some("public.example"));
    }

    #[test]
    fn grease_flag() {
        let info = complete(
            &ClientHelloBuilder::new()
                .sni("g.example")
                .tls13()
                .grease()
                .build(),
        );
        assert!(info.grease);
        assert_eq!(info.tls_version, "TLS 1.3");
        assert_eq!(info.server_name.as_deref(), Some("g.example"));
    }

    #[test]
    fn grease_detection_is_strict() {
        assert!(is_grease(0x0a0a) && is_grease(0xfafa) && is_grease(0x3a3a));
        assert!(!is_grease(0x1a2a) && !is_grease(0x0a0b) && !is_grease(0x0303));
    }

    #[test]
    fn every_prefix_needs_more() {
        let buf = ClientHelloBuilder::new()
            .sni("split.example")
            .alpn(&["h2", "http/1.1"])
            .tls13()
            .grease()
            .build();
        let info = assert_prefixes_need_more(&buf);
        assert_eq!(info.server_name.as_deref(), Some("split.example"));
    }

    #[test]
    fn split_at_awkward_offsets() {
        let buf = ClientHelloBuilder::new()
            .sni("awkward.example")
            .alpn(&["h2"])
            .tls13()
            .build();
        let sni_at = buf
            .windows(7)
            .position(|w| w == b"awkward")
            .expect("SNI in the test ClientHello");
        // Cuts: inside the record header, in the middle of the SNI, at offset 43 (the
        // session id length, among the fixed fields) and inside the extension list after
        // the SNI (the key share).
        let splits: [&[usize]; 4] = [
            &[3],
            &[sni_at + 3],
            &[2, sni_at + 5],
            &[4, 43, buf.len() - 10],
        ];
        for cuts in splits {
            let mut fed = Vec::new();
            let mut from = 0;
            for &cut in cuts {
                fed.extend_from_slice(&buf[from..cut]);
                from = cut;
                assert_eq!(
                    parse_client_hello(&fed),
                    ParseOutcome::NeedMore,
                    "cut {cut}"
                );
            }
            fed.extend_from_slice(&buf[from..]);
            assert_eq!(
                complete(&fed).server_name.as_deref(),
                Some("awkward.example")
            );
        }
    }

    #[test]
    fn post_quantum_client_hello_over_1500_bytes() {
        let buf = ClientHelloBuilder::new()
            .sni("pq.example")
            .alpn(&["h2", "http/1.1"])
            .tls13()
            .grease()
            .key_share(X25519_MLKEM768, 1216)
            .key_share(X25519, 32)
            .ech(218)
            .build();
        assert!(buf.len() > 1500, "{} bytes", buf.len());
        // Split like a 1448-byte MSS would.
        assert_eq!(parse_client_hello(&buf[..1448]), ParseOutcome::NeedMore);
        let info = complete(&buf);
        assert_eq!(info.server_name.as_deref(), Some("pq.example"));
        assert_eq!(info.length, buf.len());
    }

    #[test]
    fn fragmented_over_two_records() {
        let builder = ClientHelloBuilder::new()
            .sni("frag.example")
            .tls13()
            .key_share(X25519_MLKEM768, 1216);
        let handshake_len = builder.handshake().len();
        let buf = builder.max_fragment(handshake_len / 2 + 1).build();
        assert_eq!(buf.len(), handshake_len + 2 * RECORD_HEADER_LEN);
        let info = assert_prefixes_need_more(&buf);
        assert_eq!(info.server_name.as_deref(), Some("frag.example"));
        assert_eq!(info.length, buf.len());
    }

    #[test]
    fn fragmented_inside_the_handshake_header() {
        // A 2-byte first record splits the 4-byte handshake header itself.
        let buf = ClientHelloBuilder::new()
            .sni("tiny.example")
            .tls13()
            .fragments(&[2, 1, 300])
            .build();
        let info = assert_prefixes_need_more(&buf);
        assert_eq!(info.server_name.as_deref(), Some("tiny.example"));
    }

    #[test]
    fn sixteen_kib_client_hello() {
        let buf = ClientHelloBuilder::new()
            .sni("big.example")
            .tls13()
            .padding(16 * 1024)
            .build();
        assert!(buf.len() > 16 * 1024);
        let info = complete(&buf);
        assert_eq!(info.server_name.as_deref(), Some("big.example"));
        assert_eq!(info.length, buf.len());
    }

    #[test]
    fn length_excludes_following_bytes() {
        let mut buf = ClientHelloBuilder::new()
            .sni("early.example")
            .tls13()
            .build();
        let hello_len = buf.len();
        // TLS 1.3 early data / a ChangeCipherSpec record may follow in the same segment.
        buf.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
        assert_eq!(complete(&buf).length, hello_len);
    }

    #[test]
    fn invalid_sni_is_dropped() {
        for bad in [
            "bad name.example",
            "nul\0.example",
            "a..b",
            "ünï.example",
            "a/b.example",
        ] {
            let buf = ClientHelloBuilder::new()
                .sni(bad)
                .tls13()
                .alpn(&["h2"])
                .build();
            let info = complete(&buf);
            assert_eq!(info.server_name, None, "{bad:?}");
            assert_eq!(info.alpn, ["h2"], "later extensions still read for {bad:?}");
        }
        let info = complete(&ClientHelloBuilder::new().sni("dot.example.").build());
        assert_eq!(info.server_name.as_deref(), Some("dot.example"));
    }

    #[test]
    fn malformed_extension_does_not_hide_sni() {
        // record_size_limit (28) needs 2 bytes; tls-parser's list parser would stop here.
        let buf = ClientHelloBuilder::new()
            .raw_extension(28, &[])
            .sni("after.example")
            .tls13()
            .build();
        assert_eq!(complete(&buf).server_name.as_deref(), Some("after.example"));
    }

    #[test]
    fn truncated_then_garbage() {
        let buf = ClientHelloBuilder::new().sni("t.example").tls13().build();
        let mut bad = buf[..buf.len() / 2].to_vec();
        // The record claims the rest, so junk in place of it is a valid-looking prefix
        // until the record ends; then the next "record" header is junk.
        bad.extend(std::iter::repeat_n(0xa5, buf.len()));
        assert!(not_recognised(&bad));
    }

    #[test]
    fn garbage_is_rejected() {
        let mut junk = vec![0u8; 4096];
        let mut x: u32 = 0x1234_5678;
        for b in &mut junk {
            // xorshift: deterministic noise.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x.to_le_bytes()[0];
        }
        assert!(not_recognised(&junk));
        assert!(not_recognised(&[0u8; 64]));
        let mut after_type = vec![0x16];
        after_type.extend_from_slice(&junk);
        assert!(not_recognised(&after_type));
        assert!(not_recognised(b"\x16\x03\x01\x00\x00"), "empty record");
        assert!(
            not_recognised(b"\x16\x03\x01\x00\x10\x02"),
            "ServerHello first"
        );
        assert!(
            not_recognised(b"\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x09"),
            "bad version"
        );
        assert!(not_recognised(b"\x15\x03\x01\x00\x02\x02\x28"), "alert");
    }

    #[test]
    fn random_headers_never_panic() {
        // Every 0x16 0x03 xx header with a random-ish tail: must not panic.
        let tail = ClientHelloBuilder::new()
            .sni("fuzz.example")
            .tls13()
            .build();
        for minor in 0..=4u8 {
            for cut in 0..tail.len() {
                let mut buf = vec![0x16, 0x03, minor];
                buf.extend(
                    tail.iter()
                        .skip(cut)
                        .map(|b| b.rotate_left(u32::from(minor))),
                );
                let _ = parse_client_hello(&buf);
            }
        }
        // Flip each byte of a valid ClientHello in turn.
        for i in 0..tail.len() {
            let mut buf = tail.clone();
            buf[i] ^= 0xff;
            let _ = parse_client_hello(&buf);
        }
    }

    #[test]
    fn huge_declared_lengths() {
        assert!(
            not_recognised(b"\x16\x03\x01\xff\xff\x01"),
            "record > 16 KiB"
        );
        assert!(
            not_recognised(b"\x16\x03\x01\x40\x00\x01\xff\xff\xff"),
            "handshake 16 MiB"
        );
        assert!(
            not_recognised(b"\x16\x03\x01\x40\x00\x01\x01\x00\x01"),
            "64 KiB + 1"
        );
        // Exactly 64 KiB is still a valid prefix.
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x40\x00\x01\x01\x00\x00\x03\x03"),
            ParseOutcome::NeedMore
        );
    }

    #[test]
    fn inner_length_overflow_is_malformed() {
        let builder = ClientHelloBuilder::new().sni("x.example").tls13();
        let mut buf = builder.build();
        // The extensions block length precedes the extensions, which end the buffer.
        let ext_len_at = buf.len() - builder.extensions_len() - 2;
        buf[ext_len_at] = 0xff;
        assert!(not_recognised(&buf));
    }
}
