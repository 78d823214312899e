//! Builder of TLS ClientHello records for tests and benchmarks, written byte by byte so
//! that tests do not depend on the parser they check.
#![allow(
    clippy::expect_used,
    reason = "a test-data builder: a length that does not fit its field is a bug in the test"
)]

/// Named group X25519 (RFC 8446).
pub const X25519: u16 = 0x001d;
/// Named group X25519MLKEM768 (hybrid post-quantum; 1184 + 32 byte client share).
pub const X25519_MLKEM768: u16 = 0x11ec;

const GREASE_CIPHER: u16 = 0x0a0a;
const GREASE_EXTENSION_FIRST: u16 = 0x2a2a;
const GREASE_EXTENSION_LAST: u16 = 0xdada;
const GREASE_VERSION: u16 = 0x7a7a;
const GREASE_GROUP: u16 = 0x4a4a;

/// Builds the bytes of a ClientHello, wrapped in one or more TLS handshake records.
#[derive(Debug, Clone)]
pub struct ClientHelloBuilder {
    legacy_version: u16,
    record_version: u16,
    tls13: bool,
    grease: bool,
    with_extensions: bool,
    /// Extensions in call order (server_name, ALPN, raw ones, ECH, padding).
    extensions: Vec<(u16, Vec<u8>)>,
    key_shares: Vec<(u16, usize)>,
    /// Sizes of the first records' payloads; the rest goes in records of `max_fragment`.
    fragments: Vec<usize>,
    max_fragment: usize,
}

fn u16_bytes(v: usize) -> [u8; 2] {
    u16::try_from(v)
        .expect("test length fits u16")
        .to_be_bytes()
}

/// `data` prefixed by its length as a u8.
fn vec8(data: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::try_from(data.len()).expect("test length fits u8")];
    out.extend_from_slice(data);
    out
}

/// `data` prefixed by its length as a big-endian u16.
fn vec16(data: &[u8]) -> Vec<u8> {
    let mut out = u16_bytes(data.len()).to_vec();
    out.extend_from_slice(data);
    out
}

fn u16_list(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

impl Default for ClientHelloBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientHelloBuilder {
    /// A TLS 1.2 ClientHello with three cipher suites, a session id and no extensions yet.
    pub fn new() -> Self {
        Self {
            legacy_version: 0x0303,
            record_version: 0x0301,
            tls13: false,
            grease: false,
            with_extensions: true,
            extensions: Vec::new(),
            key_shares: Vec::new(),
            fragments: Vec::new(),
            max_fragment: 16 * 1024,
        }
    }

    /// Add a server_name extension with one host_name.
    pub fn sni(self, name: &str) -> Self {
        let entry = [&[0u8][..], &vec16(name.as_bytes())].concat();
        self.raw_extension(0x0000, &vec16(&entry))
    }

    /// Add an ALPN extension.
    pub fn alpn(self, protocols: &[&str]) -> Self {
        let list: Vec<u8> = protocols.iter().flat_map(|p| vec8(p.as_bytes())).collect();
        self.raw_extension(0x0010, &vec16(&list))
    }

    /// Offer TLS 1.3 (supported_versions 1.3 + 1.2 and, unless set, an X25519 key share).
    pub fn tls13(mut self) -> Self {
        self.tls13 = true;
        self
    }

    /// Add GREASE cipher suite, extensions, version and group.
    pub fn grease(mut self) -> Self {
        self.grease = true;
        self
    }

    /// Add an encrypted_client_hello extension with a payload of `len` bytes.
    pub fn ech(self, len: usize) -> Self {
        self.raw_extension(0xfe0d, &vec![0x5e; len])
    }

    /// Add a key share entry of `len` bytes for `group`.
    pub fn key_share(mut self, group: u16, len: usize) -> Self {
        self.key_shares.push((group, len));
        self
    }

    /// Add a padding extension (RFC 7685) of `len` zero bytes.
    pub fn padding(self, len: usize) -> Self {
        self.raw_extension(0x0015, &vec![0; len])
    }

    /// Add an extension with arbitrary content.
    pub fn raw_extension(mut self, ext_type: u16, data: &[u8]) -> Self {
        self.extensions.push((ext_type, data.to_vec()));
        self
    }

    /// Set the ClientHello legacy_version.
    pub fn legacy_version(mut self, version: u16) -> Self {
        self.legacy_version = version;
        self
    }

    /// Omit the extensions block entirely (SSL 3.0 style).
    pub fn no_extensions(mut self) -> Self {
        self.with_extensions = false;
        self
    }

    /// Split the handshake into records of at most `len` bytes.
    pub fn max_fragment(mut self, len: usize) -> Self {
        self.max_fragment = len;
        self
    }

    /// Give the first records these payload sizes.
    pub fn fragments(mut self, sizes: &[usize]) -> Self {
        self.fragments = sizes.to_vec();
        self
    }

    /// The extensions block content (without its length prefix).
    fn extensions(&self) -> Vec<u8> {
        let mut exts: Vec<(u16, Vec<u8>)> = Vec::new();
        if self.grease {
            exts.push((GREASE_EXTENSION_FIRST, Vec::new()));
        }
        exts.extend(self.extensions.iter().cloned());
        let mut groups = vec![X25519, 0x0017];
        if self.grease {
            groups.insert(0, GREASE_GROUP);
        }
        exts.push((0x000a, vec16(&u16_list(&groups))));
        exts.push((0x000d, vec16(&u16_list(&[0x0403, 0x0804, 0x0401]))));
        if self.tls13 {
            let mut versions = vec![0x0304, 0x0303];
            if self.grease {
                versions.insert(0, GREASE_VERSION);
            }
            exts.push((0x002b, vec8(&u16_list(&versions))));
        }
        let mut shares = self.key_shares.clone();
        if self.tls13 && shares.is_empty() {
            shares.push((X25519, 32));
        }
        if !shares.is_empty() {
            let list: Vec<u8> = shares
                .iter()
                .flat_map(|&(group, len)| {
                    [&group.to_be_bytes()[..], &vec16(&vec![0x42; len])].concat()
                })
                .collect();
            exts.push((0x0033, vec16(&list)));
        }
        if self.grease {
            exts.push((GREASE_EXTENSION_LAST, vec![0]));
        }
        exts.iter()
            .flat_map(|(ext_type, data)| [&ext_type.to_be_bytes()[..], &vec16(data)].concat())
            .collect()
    }

    /// Length of the extensions block content.
    pub fn extensions_len(&self) -> usize {
        self.extensions().len()
    }

    /// The ClientHello handshake message, its 4-byte header included.
    pub fn handshake(&self) -> Vec<u8> {
        let mut body = self.legacy_version.to_be_bytes().to_vec();
        body.extend((0u8..32).map(|i| i.wrapping_mul(7)));
        body.extend(vec8(&[0x33; 32]));
        let mut ciphers = vec![0x1301, 0x1302, 0xc02f];
        if self.grease {
            ciphers.insert(0, GREASE_CIPHER);
        }
        body.extend(vec16(&u16_list(&ciphers)));
        body.extend(vec8(&[0]));
        if self.with_extensions {
            body.extend(vec16(&self.extensions()));
        }
        let len = u32::try_from(body.len()).expect("test length fits u32");
        let mut msg = vec![0x01];
        msg.extend_from_slice(&len.to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    /// The ClientHello wrapped in TLS handshake records.
    pub fn build(&self) -> Vec<u8> {
        let handshake = self.handshake();
        let mut out = Vec::new();
        let mut rest = &handshake[..];
        let mut sizes = self.fragments.iter();
        while !rest.is_empty() {
            let size = sizes
                .next()
                .copied()
                .unwrap_or(self.max_fragment)
                .min(rest.len());
            let (fragment, tail) = rest.split_at(size);
            out.push(0x16);
            out.extend_from_slice(&self.record_version.to_be_bytes());
            out.extend_from_slice(&u16_bytes(fragment.len()));
            out.extend_from_slice(fragment);
            rest = tail;
        }
        out
    }
}

/// An ECHConfigList (RFC 9849 §4) of one X25519 / HKDF-SHA256 / AES-128-GCM configuration
/// of `version` (0xfe0d is RFC 9849's) whose public name is `public_name`, as an HTTPS
/// record's `ech` parameter carries it.
pub fn ech_config_list(version: u16, public_name: &str) -> Vec<u8> {
    let mut contents = vec![7, 0x00, 0x20]; // config_id, kem_id = X25519
    contents.extend_from_slice(&32u16.to_be_bytes());
    contents.extend_from_slice(&[0x42; 32]);
    contents.extend_from_slice(&[0x00, 0x04, 0x00, 0x01, 0x00, 0x01]);
    contents.push(0); // maximum_name_length
    contents.push(u8::try_from(public_name.len()).expect("a public name fits a byte"));
    contents.extend_from_slice(public_name.as_bytes());
    contents.extend_from_slice(&[0x00, 0x00]); // no extensions
    let mut config = version.to_be_bytes().to_vec();
    let len = u16::try_from(contents.len()).expect("a configuration fits 64 KiB");
    config.extend_from_slice(&len.to_be_bytes());
    config.extend_from_slice(&contents);
    let len = u16::try_from(config.len()).expect("a list fits 64 KiB");
    let mut list = len.to_be_bytes().to_vec();
    list.extend_from_slice(&config);
    list
}
