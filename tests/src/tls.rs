//! A TLS 1.3 ClientHello builder for raw-socket tests (large hellos, split hellos).
#![allow(
    clippy::expect_used,
    reason = "a test-data builder: a length that does not fit its field is a bug in the test"
)]

use std::fmt::Write as _;

/// What to put in a ClientHello.
#[derive(Debug, Clone)]
pub struct HelloSpec {
    /// The server_name (SNI).
    pub sni: String,
    /// ALPN protocols, in order; none means no ALPN extension.
    pub alpn: Vec<String>,
    /// Add an X25519MLKEM768-sized key share (1216 bytes) before the X25519 one, as
    /// current browsers do; this alone makes the hello about 1.4 kB.
    pub pq_key_share: bool,
    /// Bytes of padding-extension payload (0 = no padding extension).
    pub padding: usize,
}

impl HelloSpec {
    /// A hello for `sni` offering ALPN `h2`, `http/1.1`, no post-quantum share, no padding.
    pub fn new(sni: &str) -> HelloSpec {
        HelloSpec {
            sni: sni.to_owned(),
            alpn: vec!["h2".to_owned(), "http/1.1".to_owned()],
            pq_key_share: false,
            padding: 0,
        }
    }
}

/// A built ClientHello record and where its parts are, for splitting it.
#[derive(Debug, Clone)]
pub struct ClientHello {
    /// The whole TLS record (header included).
    pub bytes: Vec<u8>,
    /// Offset of the first extension (start of the extension list, after its length).
    pub extensions_start: usize,
    /// Offset of the server_name extension (its type field).
    pub sni_extension: usize,
    /// Offset of the host name bytes inside the server_name extension.
    pub sni_name: usize,
}

const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_SUPPORTED_GROUPS: u16 = 0x000a;
const EXT_SIGNATURE_ALGORITHMS: u16 = 0x000d;
const EXT_ALPN: u16 = 0x0010;
const EXT_PADDING: u16 = 0x0015;
const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
const EXT_PSK_MODES: u16 = 0x002d;
const EXT_KEY_SHARE: u16 = 0x0033;

/// Builds a ClientHello record. Extension order: supported_versions, supported_groups,
/// signature_algorithms, key_share, psk_key_exchange_modes, ALPN, padding, server_name.
/// The server_name comes last so that, in a large hello, it lies past the first
/// 1448-byte segment, and a split inside the extension list falls before it.
pub fn client_hello(spec: &HelloSpec) -> ClientHello {
    let mut exts: Vec<(u16, Vec<u8>)> = Vec::new();
    exts.push((EXT_SUPPORTED_VERSIONS, vec![4, 0x03, 0x04, 0x03, 0x03]));
    let mut groups = Vec::new();
    if spec.pq_key_share {
        groups.push(0x11ecu16);
    }
    groups.extend([0x001d, 0x0017]);
    exts.push((EXT_SUPPORTED_GROUPS, u16_list(&groups)));
    exts.push((
        EXT_SIGNATURE_ALGORITHMS,
        u16_list(&[0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501]),
    ));
    let mut shares = Vec::new();
    if spec.pq_key_share {
        push_share(&mut shares, 0x11ec, 1216);
    }
    push_share(&mut shares, 0x001d, 32);
    exts.push((EXT_KEY_SHARE, with_u16_len(&shares)));
    exts.push((EXT_PSK_MODES, vec![1, 1]));
    if !spec.alpn.is_empty() {
        let mut list = Vec::new();
        for proto in &spec.alpn {
            list.push(u8::try_from(proto.len()).expect("ALPN protocol too long"));
            list.extend_from_slice(proto.as_bytes());
        }
        exts.push((EXT_ALPN, with_u16_len(&list)));
    }
    if spec.padding > 0 {
        exts.push((EXT_PADDING, vec![0; spec.padding]));
    }
    let mut sni = vec![0u8]; // name_type host_name
    sni.extend_from_slice(&u16_be(spec.sni.len()));
    sni.extend_from_slice(spec.sni.as_bytes());
    exts.push((EXT_SERVER_NAME, with_u16_len(&sni)));

    // Handshake body.
    let mut body = vec![0x03, 0x03]; // legacy_version TLS 1.2
    body.extend(pattern(32, 0x11)); // random
    body.push(32); // legacy_session_id
    body.extend(pattern(32, 0x22));
    body.extend_from_slice(&with_u16_len(&u16_list_raw(&[
        0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030,
    ])));
    body.extend_from_slice(&[1, 0]); // compression: null
    let ext_list_len_at = body.len();
    body.extend_from_slice(&[0, 0]);
    let extensions_start_in_body = body.len();
    let mut sni_ext_in_body = 0;
    for (ty, data) in &exts {
        if *ty == EXT_SERVER_NAME {
            sni_ext_in_body = body.len();
        }
        body.extend_from_slice(&ty.to_be_bytes());
        body.extend_from_slice(&u16_be(data.len()));
        body.extend_from_slice(data);
    }
    let ext_len = body.len() - extensions_start_in_body;
    body[ext_list_len_at..ext_list_len_at + 2].copy_from_slice(&u16_be(ext_len));

    // Handshake header (type 1, 24-bit length) and record header.
    let hs_len = body.len();
    let mut hs = vec![1, (hs_len >> 16) as u8, (hs_len >> 8) as u8, hs_len as u8];
    hs.extend_from_slice(&body);
    let mut bytes = vec![0x16, 0x03, 0x01];
    bytes.extend_from_slice(&u16_be(hs.len()));
    bytes.extend_from_slice(&hs);

    let prefix = 5 + 4;
    ClientHello {
        bytes,
        extensions_start: prefix + extensions_start_in_body,
        sni_extension: prefix + sni_ext_in_body,
        // type(2) len(2) list_len(2) name_type(1) name_len(2)
        sni_name: prefix + sni_ext_in_body + 9,
    }
}

fn u16_be(n: usize) -> [u8; 2] {
    u16::try_from(n)
        .expect("TLS field longer than 65535 bytes")
        .to_be_bytes()
}

fn with_u16_len(data: &[u8]) -> Vec<u8> {
    let mut v = u16_be(data.len()).to_vec();
    v.extend_from_slice(data);
    v
}

fn u16_list_raw(items: &[u16]) -> Vec<u8> {
    items.iter().flat_map(|i| i.to_be_bytes()).collect()
}

fn u16_list(items: &[u16]) -> Vec<u8> {
    with_u16_len(&u16_list_raw(items))
}

fn push_share(out: &mut Vec<u8>, group: u16, len: usize) {
    out.extend_from_slice(&group.to_be_bytes());
    out.extend_from_slice(&u16_be(len));
    // Any 32 bytes are an X25519 public key; the bigger share only has to be the right size.
    out.extend(pattern(len, 0x40));
}

fn pattern(len: usize, seed: u8) -> impl Iterator<Item = u8> {
    (0..len).map(move |i| seed.wrapping_add((i % 251) as u8))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut out, b| {
            // Writing to a String cannot fail.
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be16(b: &[u8], at: usize) -> usize {
        usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
    }

    #[test]
    fn lengths_are_consistent() {
        for spec in [HelloSpec::new("split.example"), {
            let mut s = HelloSpec::new("big.example");
            s.pq_key_share = true;
            s.padding = 300;
            s
        }] {
            let h = client_hello(&spec);
            let b = &h.bytes;
            assert_eq!(b[0], 0x16);
            assert_eq!(be16(b, 3), b.len() - 5, "record length");
            assert_eq!(b[5], 1, "ClientHello");
            let hs_len = (usize::from(b[6]) << 16) | be16(b, 7);
            assert_eq!(hs_len, b.len() - 9, "handshake length");
            assert_eq!(
                be16(b, h.extensions_start - 2),
                b.len() - h.extensions_start
            );
            // Walk the extensions: they must tile the list exactly.
            let mut at = h.extensions_start;
            let mut saw_sni = false;
            while at < b.len() {
                let (ty, len) = (be16(b, at), be16(b, at + 2));
                if ty == 0 {
                    assert_eq!(at, h.sni_extension);
                    saw_sni = true;
                }
                at += 4 + len;
            }
            assert_eq!(at, b.len());
            assert!(saw_sni);
            let name = &b[h.sni_name..h.sni_name + spec.sni.len()];
            assert_eq!(name, spec.sni.as_bytes());
            assert_eq!(
                h.sni_name + spec.sni.len(),
                b.len(),
                "SNI is the last extension"
            );
        }
    }

    #[test]
    fn large_hello_puts_sni_past_first_segment() {
        let mut spec = HelloSpec::new("big.example");
        spec.pq_key_share = true;
        spec.padding = 300;
        let h = client_hello(&spec);
        assert!(h.bytes.len() > 1500, "{}", h.bytes.len());
        assert!(h.sni_name > 1448, "{}", h.sni_name);
    }
}
