//! Content detection and parsing of the first client bytes of a TCP flow.
//!
//! The kernel captures client→server payload by content, not by port, so this module
//! decides from the bytes alone whether a flow speaks TLS or HTTP/1.x and extracts the
//! destination the client asked for (SNI, Host, absolute URI, CONNECT target).
//!
//! Every parser is incremental in the simplest way: the caller passes all in-order bytes
//! captured so far and calls again with a longer buffer after [`ParseOutcome::NeedMore`].
//! Parsers never panic on network input and never allocate more than a small bound.
//!
//! [`quic`] reads the ClientHello from a QUIC client's Initial packets (UDP), datagram by
//! datagram, with a per-flow [`quic::InitialReader`].

pub mod dns;
pub mod http;
pub mod quic;
pub mod tls;

/// ClientHello builder for tests and benchmarks (not part of the API).
#[doc(hidden)]
#[cfg(any(test, feature = "testdata"))]
pub mod testdata;

/// What the first client bytes of a flow turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A TLS ClientHello.
    Tls(tls::ClientHelloInfo),
    /// An HTTP/1.x request head.
    Http(http::HttpRequest),
    /// A DNS query over TCP (a flow to port 53).
    Dns(dns::TcpQuery),
}

/// Result of parsing the in-order client bytes captured so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseOutcome {
    /// The bytes hold a complete ClientHello or request head.
    Complete(Parsed),
    /// The bytes so far are a valid prefix; more are needed (e.g. a ClientHello split over segments).
    NeedMore,
    /// Not TLS nor HTTP, or malformed: inspection of this flow ends. The &'static str says why (for debug logs).
    NotRecognised(&'static str),
    /// A valid start of an HTTP request head that does not end within
    /// [`http::MAX_HEAD_LEN`]: it cannot be judged in full (see
    /// [`http::parse_head_prefix`] for what its start says).
    Oversized,
}

/// TLS record content type of a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Detect by content (never by port) and parse. `buf` = contiguous client→server bytes from the flow's first payload byte.
pub fn parse_client_payload(buf: &[u8]) -> ParseOutcome {
    let Some(&first) = buf.first() else {
        return ParseOutcome::NeedMore;
    };
    if first == TLS_HANDSHAKE_RECORD {
        // Record version major 3, minor SSL 3.0..TLS 1.3: anything else is not TLS.
        let plausible = buf.get(1).is_none_or(|&major| major == 0x03)
            && buf.get(2).is_none_or(|&minor| minor <= 0x04);
        if !plausible {
            return ParseOutcome::NotRecognised("0x16 without a TLS record version");
        }
        return tls::parse_client_hello(buf);
    }
    match http::match_method(buf) {
        http::MethodMatch::Method(_) => http::parse_http_request(buf),
        http::MethodMatch::Prefix => ParseOutcome::NeedMore,
        http::MethodMatch::No => ParseOutcome::NotRecognised("neither TLS nor HTTP"),
    }
}

#[cfg(test)]
mod tests {
    use super::{testdata::ClientHelloBuilder, *};

    #[test]
    fn empty_and_tiny_prefixes_need_more() {
        for buf in [
            &b""[..],
            b"\x16",
            b"\x16\x03",
            b"G",
            b"GE",
            b"CONNEC",
            b"OPTIONS",
        ] {
            assert_eq!(parse_client_payload(buf), ParseOutcome::NeedMore, "{buf:?}");
        }
    }

    #[test]
    fn detects_tls_and_http_by_content() {
        let ch = ClientHelloBuilder::new().sni("tls.example").build();
        match parse_client_payload(&ch) {
            ParseOutcome::Complete(Parsed::Tls(info)) => {
                assert_eq!(info.server_name.as_deref(), Some("tls.example"));
            }
            other => panic!("expected TLS, got {other:?}"),
        }
        match parse_client_payload(b"HEAD / HTTP/1.0\r\n\r\n") {
            ParseOutcome::Complete(Parsed::Http(req)) => assert_eq!(req.method, "HEAD"),
            other => panic!("expected HTTP, got {other:?}"),
        }
    }

    #[test]
    fn rejects_other_protocols() {
        let cases: [&[u8]; 7] = [
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"\x00\x00\x00\x00",
            b"\x16\x02\x01",
            b"\x16\x03\x09",
            b"get / HTTP/1.1\r\n\r\n",
            b"GETX / HTTP/1.1\r\n",
            b"\x17\x03\x03\x00\x10",
        ];
        for buf in cases {
            assert!(
                matches!(parse_client_payload(buf), ParseOutcome::NotRecognised(_)),
                "{buf:?}"
            );
        }
    }
}
