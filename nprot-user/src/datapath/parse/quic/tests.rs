//! Tests of the Initial reader: RFC 9001 and RFC 9369 sample packets, then packets built
//! by [`testdata`](super::testdata).

use super::{
    initial::{Keys, RawKeys, parse_long_header},
    testdata::{
        InitialBuilder, PING, ack_ecn_frame, chromium_client_hello, chromium_like_datagrams,
        crypto_frame,
    },
    *,
};

/// RFC 9001 A.2 / RFC 9369 A.2: the client's original Destination Connection ID.
const RFC_DCID: [u8; 8] = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn rfc9001_initial() -> Vec<u8> {
    unhex(include_str!("vectors/rfc9001-a2-client-initial.hex"))
}

fn rfc9369_initial() -> Vec<u8> {
    unhex(include_str!("vectors/rfc9369-a2-client-initial.hex"))
}

/// The unprotected payload of both samples: one CRYPTO frame, then 917 bytes of PADDING.
fn rfc_payload() -> Vec<u8> {
    let mut payload = unhex(include_str!("vectors/rfc9001-a2-crypto-frame.hex"));
    payload.resize(1162, 0);
    payload
}

fn hello(outcome: &QuicOutcome) -> (QuicVersion, &ClientHelloInfo) {
    match outcome {
        QuicOutcome::ClientHello { version, info } => (*version, info),
        other => panic!("expected a ClientHello, got {other:?}"),
    }
}

fn feed(datagrams: &[Vec<u8>]) -> QuicOutcome {
    let mut reader = InitialReader::new();
    let mut outcome = QuicOutcome::NeedMore;
    for d in datagrams {
        outcome = reader.push(d);
    }
    outcome
}

#[test]
fn rfc9001_a1_keys() {
    let keys = RawKeys::client(QuicVersion::V1, &RFC_DCID).unwrap();
    assert_eq!(keys.key.to_vec(), unhex("1f369613dd76d5467730efcbe3b1a22d"));
    assert_eq!(keys.iv.to_vec(), unhex("fa044b2f42a3fd3b46fb255c"));
    assert_eq!(keys.hp.to_vec(), unhex("9f50449e04a0e810283a1e9933adedd2"));
}

#[test]
fn rfc9369_a1_keys() {
    let keys = RawKeys::client(QuicVersion::V2, &RFC_DCID).unwrap();
    assert_eq!(keys.key.to_vec(), unhex("8b1a0bc121284290a29e0971b5cd045d"));
    assert_eq!(keys.iv.to_vec(), unhex("91f73e2351d8fa91660e909f"));
    assert_eq!(keys.hp.to_vec(), unhex("45b95e15235d6f45a6b19cbcb0294ba9"));
}

fn check_rfc_sample(version: QuicVersion, packet: &[u8], unprotected_header: &str) {
    assert_eq!(packet.len(), 1200);
    let header = parse_long_header(packet).unwrap();
    assert_eq!(header.version, version);
    assert_eq!(header.dcid, RFC_DCID);
    assert_eq!((header.pn_offset, header.packet_len), (18, 1200));
    let keys = Keys::client(version, &RFC_DCID).unwrap();
    let mut opened = packet.to_vec();
    let (pn, range) = keys.open(&mut opened, 18, None).unwrap();
    assert_eq!(pn, 2);
    assert_eq!(opened[..22], unhex(unprotected_header)[..]);
    assert_eq!(opened[range], rfc_payload()[..]);

    assert!(looks_like_client_initial(packet));
    let mut reader = InitialReader::new();
    let outcome = reader.push(packet);
    let (got_version, info) = hello(&outcome);
    assert_eq!(got_version, version);
    assert_eq!(reader.version(), Some(version));
    assert_eq!(info.server_name.as_deref(), Some("example.com"));
    assert_eq!(info.alpn, ["alpn"]);
    assert_eq!(info.tls_version, "TLS 1.3");
    assert_eq!(info.length, 241);
    assert!(!info.ech && !info.grease);
    // Final: the same outcome again, whatever comes next.
    assert_eq!(reader.push(b"junk"), outcome);
    assert!(reader.same_connection(packet));

    // The builder protects the same plaintext into exactly the published bytes.
    let built = InitialBuilder::new(version, &RFC_DCID).packet(2, &rfc_payload(), 0);
    assert_eq!(built, packet);
}

#[test]
fn rfc9001_a2_client_initial() {
    check_rfc_sample(
        QuicVersion::V1,
        &rfc9001_initial(),
        "c300000001088394c8f03e5157080000449e00000002",
    );
}

#[test]
fn rfc9369_a2_client_initial() {
    check_rfc_sample(
        QuicVersion::V2,
        &rfc9369_initial(),
        "d36b3343cf088394c8f03e5157080000449e00000002",
    );
}

#[test]
fn chromium_split_over_two_datagrams_in_any_order() {
    let ch = chromium_client_hello("www.Chromium.example");
    assert!(ch.len() > 1800, "{}", ch.len());
    for version in [QuicVersion::V1, QuicVersion::V2] {
        let dgs = chromium_like_datagrams(version, &[0xa5; 8], &ch);
        assert!(dgs.iter().all(|d| d.len() == 1250));
        assert!(dgs.iter().all(|d| looks_like_client_initial(d)));
        for order in [[0, 1], [1, 0]] {
            let mut reader = InitialReader::new();
            assert_eq!(reader.push(&dgs[order[0]]), QuicOutcome::NeedMore);
            // A duplicate changes nothing.
            assert_eq!(reader.push(&dgs[order[0]]), QuicOutcome::NeedMore);
            let outcome = reader.push(&dgs[order[1]]);
            let (v, info) = hello(&outcome);
            assert_eq!(v, version);
            assert_eq!(info.server_name.as_deref(), Some("www.chromium.example"));
            assert_eq!(info.alpn, ["h3"]);
            assert!(info.ech && info.grease);
            assert_eq!(info.length, ch.len());
            assert!(dgs.iter().all(|d| reader.same_connection(d)));
        }
    }
}

#[test]
fn coalesced_packets_and_overlapping_frames() {
    let ch = chromium_client_hello("coalesced.example");
    let b = InitialBuilder::new(QuicVersion::V1, &[7; 12]).pn_len(1);
    // Initial 1: an ACK, the second half; Initial 2: all of it again with different bytes
    // over the first half's end (first-seen bytes win), then the first half.
    let half = ch.len() / 2;
    let mut one = ack_ecn_frame(0);
    one.extend(crypto_frame(half as u64, &ch[half..]));
    let mut junk = vec![0xee; 40];
    junk.truncate(ch.len() - half);
    let mut two = crypto_frame(half as u64, &junk);
    two.push(PING);
    two.extend(crypto_frame(0, &ch[..half]));
    let mut datagram = b.packet(0, &one, 0);
    datagram.extend(b.other_packet(0b01 << 4, 50)); // 0-RTT, skipped
    datagram.extend(b.packet(1, &two, 0));
    datagram.extend(b.other_packet(0b10 << 4, 30)); // Handshake, skipped
    datagram.extend([0; 60]); // datagram padding
    let outcome = feed(&[datagram]);
    assert_eq!(
        hello(&outcome).1.server_name.as_deref(),
        Some("coalesced.example")
    );
}

#[test]
fn short_header_ends_a_datagram() {
    let ch = chromium_client_hello("short.example");
    let b = InitialBuilder::new(QuicVersion::V1, &[1; 8]);
    let mut datagram = b.packet(0, &crypto_frame(0, &ch[..100]), 0);
    // A 1-RTT packet, then what would complete the ClientHello: never read.
    datagram.push(0x40);
    datagram.extend(b.packet(1, &crypto_frame(100, &ch[100..]), 0));
    assert_eq!(feed(&[datagram]), QuicOutcome::NeedMore);
}

#[test]
fn retry_restarts_on_the_new_dcid() {
    let ch = chromium_client_hello("retry.example");
    let old = InitialBuilder::new(QuicVersion::V2, &[1; 8]);
    let new = InitialBuilder::new(QuicVersion::V2, &[2; 16]).token(&[9; 40]);
    let mut reader = InitialReader::new();
    let first = old.packet(0, &crypto_frame(0, &ch[..600]), 1200);
    assert_eq!(reader.push(&first), QuicOutcome::NeedMore);
    // After the Retry: the whole ClientHello again under keys of the new DCID, split.
    let again = chromium_like_datagrams(QuicVersion::V2, &[2; 16], &ch);
    assert_eq!(reader.push(&again[1]), QuicOutcome::NeedMore);
    let outcome = reader.push(&again[0]);
    assert_eq!(
        hello(&outcome).1.server_name.as_deref(),
        Some("retry.example")
    );
    assert!(reader.same_connection(&again[0]));
    assert!(!reader.same_connection(&first));
    assert!(reader.same_connection(&new.packet(5, &[PING], 1200)));
    assert!(!reader.same_connection(b"\x40junk"));
}

#[test]
fn undecryptable_later_datagrams_are_ignored() {
    let ch = chromium_client_hello("spoof.example");
    let dgs = chromium_like_datagrams(QuicVersion::V1, &[3; 8], &ch);
    let mut reader = InitialReader::new();
    assert_eq!(reader.push(&dgs[0]), QuicOutcome::NeedMore);
    let mut spoofed = dgs[1].clone();
    spoofed[100] ^= 1;
    assert_eq!(reader.push(&spoofed), QuicOutcome::NeedMore);
    hello(&reader.push(&dgs[1]));
}

#[test]
fn errors_are_matchable() {
    let mut v1 = rfc9001_initial();
    let cases: Vec<(Vec<u8>, QuicError)> = vec![
        (vec![0x40, 1, 2, 3], QuicError::NotLongHeader),
        (vec![0; 1200], QuicError::NotLongHeader),
        (
            [&[0xc0, 0xfa, 0xce, 0xb0, 0x0c][..], &v1[5..]].concat(),
            QuicError::UnknownVersion(0xface_b00c),
        ),
        (
            [&[0x80, 0, 0, 0, 0][..], &v1[5..]].concat(),
            QuicError::VersionNegotiation,
        ),
        ([&[0xf0][..], &v1[1..]].concat(), QuicError::Retry),
        (
            [&[0xc0, 0x6b, 0x33, 0x43, 0xcf][..], &v1[5..]].concat(),
            QuicError::Retry,
        ),
        ([&[0x80][..], &v1[1..]].concat(), QuicError::FixedBitUnset),
        (
            InitialBuilder::new(QuicVersion::V1, &[4; 8]).other_packet(0b10 << 4, 50),
            QuicError::NotInitial,
        ),
        (v1[..1199].to_vec(), QuicError::Truncated),
        (v1[..10].to_vec(), QuicError::Truncated),
        ([&v1[..5], &[21], &[0; 30]].concat(), QuicError::BadLength),
        (
            InitialBuilder::new(QuicVersion::V1, &[4; 8]).packet(0, &[0x08, 0, 0], 0),
            QuicError::FrameNotAllowed(0x08),
        ),
        (
            InitialBuilder::new(QuicVersion::V1, &[4; 8]).packet(0, &crypto_frame(70_000, &[1]), 0),
            QuicError::CryptoTooFar,
        ),
        (
            InitialBuilder::new(QuicVersion::V1, &[4; 8]).packet(
                0,
                &crypto_frame(0, &[0x02, 0, 0, 0]),
                0,
            ),
            QuicError::NotClientHello,
        ),
    ];
    for (datagram, error) in cases {
        let mut reader = InitialReader::new();
        assert_eq!(
            reader.push(&datagram),
            QuicOutcome::Invalid(error),
            "{error}"
        );
        assert_eq!(reader.push(&rfc9001_initial()), QuicOutcome::Invalid(error));
    }
    v1[30] ^= 0x10;
    assert_eq!(feed(&[v1]), QuicOutcome::Invalid(QuicError::DecryptFailed));
    let bad_hello = crypto_frame(0, &[0x01, 0, 0, 2, 0x03, 0x03]);
    assert!(matches!(
        feed(&[InitialBuilder::new(QuicVersion::V1, &[4; 8]).packet(0, &bad_hello, 0)]),
        QuicOutcome::Invalid(QuicError::Tls(_))
    ));
}

#[test]
fn datagram_budget_is_bounded() {
    let b = InitialBuilder::new(QuicVersion::V1, &[5; 8]);
    let mut reader = InitialReader::new();
    for pn in 0..MAX_DATAGRAMS as u64 - 1 {
        assert_eq!(
            reader.push(&b.packet(pn, &[PING], 1200)),
            QuicOutcome::NeedMore
        );
    }
    assert_eq!(
        reader.push(&b.packet(99, &[PING], 1200)),
        QuicOutcome::Invalid(QuicError::TooManyDatagrams)
    );
}

#[test]
fn looks_like_client_initial_is_a_header_check() {
    assert!(looks_like_client_initial(&rfc9001_initial()));
    assert!(looks_like_client_initial(&rfc9369_initial()));
    for bad in [
        &b""[..],
        b"\xc0\0\0\0",
        b"\xc0\0\0\0\x02",
        b"\x40\0\0\0\x01",
        b"\x80\0\0\0\x01",
        b"\xd0\0\0\0\x01",
        b"\xc0\x6b\x33\x43\xcf",
    ] {
        assert!(!looks_like_client_initial(bad), "{bad:?}");
    }
}

fn assert_not_hello(outcome: &QuicOutcome, what: &str) {
    assert!(
        matches!(outcome, QuicOutcome::NeedMore | QuicOutcome::Invalid(_)),
        "{what}: {outcome:?}"
    );
}

#[test]
fn flipped_and_truncated_initials_never_panic() {
    for packet in [rfc9001_initial(), rfc9369_initial()] {
        for i in 0..packet.len() {
            for bit in [0x01, 0x80] {
                let mut flipped = packet.clone();
                flipped[i] ^= bit;
                assert_not_hello(&feed(&[flipped]), &format!("flip {bit:#x} at {i}"));
            }
        }
        for cut in 0..packet.len() {
            assert_not_hello(&feed(&[packet[..cut].to_vec()]), &format!("cut at {cut}"));
        }
    }
    // The same on the second datagram of a split ClientHello, after the first.
    let dgs = chromium_like_datagrams(QuicVersion::V1, &[6; 8], &chromium_client_hello("a.b"));
    for i in (0..dgs[1].len()).step_by(7) {
        let mut flipped = dgs[1].clone();
        flipped[i] ^= 0x04;
        assert_not_hello(&feed(&[dgs[0].clone(), flipped]), &format!("flip at {i}"));
        assert_not_hello(
            &feed(&[dgs[0].clone(), dgs[1][..i].to_vec()]),
            &format!("cut at {i}"),
        );
    }
}

/// The two datagrams of [`chromium_like_datagrams`] for "www.example.com" (v1, DCID
/// 5a×8), kept as hex for the fuzz seeds (`fuzz/seeds.py`): the builder is deterministic,
/// so they must not drift. `NPROT_WRITE_QUIC_VECTORS=1` rewrites the file.
#[test]
fn chromium_like_vector_is_stable() {
    use std::fmt::Write as _;

    let dgs = chromium_like_datagrams(
        QuicVersion::V1,
        &[0x5a; 8],
        &chromium_client_hello("www.example.com"),
    );
    let text: String = dgs
        .iter()
        .map(|d| {
            let hex = d.iter().fold(String::new(), |mut out, b| {
                let _ = write!(out, "{b:02x}");
                out
            });
            let lines: Vec<&str> = hex
                .as_bytes()
                .chunks(64)
                .map(|l| std::str::from_utf8(l).unwrap())
                .collect();
            lines.join("\n") + "\n"
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/datapath/parse/quic/vectors/chromium-like-v1-2-datagrams.hex"
    );
    if std::env::var_os("NPROT_WRITE_QUIC_VECTORS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    assert_eq!(std::fs::read_to_string(path).unwrap(), text);
    let parsed: Vec<Vec<u8>> = text.split("\n\n").map(unhex).collect();
    assert_eq!(parsed, dgs);
    hello(&feed(&parsed));
}
