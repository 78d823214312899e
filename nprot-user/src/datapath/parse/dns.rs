//! DNS messages (RFC 1035, RFC 9460): what a client asked and what its resolver answered.
//!
//! [`parse_message`] reads one DNS message, the payload of a UDP datagram or one
//! TCP-framed message without its 2-byte length prefix, into a [`DnsMessage`]: the header
//! fields that matter to a sensor, the first question and the answer section (addresses,
//! CNAME targets, HTTPS/SVCB service bindings). [`resolved_addresses`] follows a response's
//! CNAME chain from the question to the addresses it ends at, which is what a name cache
//! keyed by (client, address) stores.
//!
//! The wire format (names, compression pointers, record data) is decoded by
//! `hickory-proto`; this module bounds its input ([`MAX_MESSAGE_LEN`], [`MAX_RECORDS`])
//! before handing it over and maps its errors to [`DnsError`]. Nothing here panics on
//! network input. Compression pointers must point strictly backwards, so a pointer loop
//! is an error ([`DnsError::BadPointer`]), never a hang.

use std::{borrow::Cow, net::IpAddr};

use hickory_proto::{
    op::{Header, Message, MessageType},
    rr::{
        Name, RData, RecordType,
        rdata::svcb::{SVCB, SvcParamKey, SvcParamValue},
    },
    serialize::binary::{BinDecodable, BinDecoder, DecodeError},
};
use serde::Serialize;

/// The longest message taken ([`DnsError::TooLong`]): what a TCP length prefix can frame.
pub const MAX_MESSAGE_LEN: usize = 65_535;
/// The most records (questions, answers, authority and additional records together) a
/// message may declare in its header ([`DnsError::TooManyRecords`]).
pub const MAX_RECORDS: usize = 256;
/// The most CNAME hops [`resolved_addresses`] follows from the question name.
pub const MAX_CNAME_HOPS: usize = 16;
/// Length of the fixed DNS header.
const HEADER_LEN: usize = 12;

/// Why a DNS message could not be read.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The message ends before what its header or a record says it holds (also: shorter
    /// than the 12-byte header).
    #[error("DNS message truncated")]
    Truncated,
    /// Longer than [`MAX_MESSAGE_LEN`] (the length is given).
    #[error("DNS message of {0} bytes exceeds {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    /// The header declares more than [`MAX_RECORDS`] records in all (the count is given).
    #[error("DNS message declares {0} records, more than {MAX_RECORDS}")]
    TooManyRecords(usize),
    /// A name longer than 255 bytes on the wire.
    #[error("DNS name longer than 255 bytes")]
    NameTooLong,
    /// A compression pointer that does not point strictly before the name it is in (a
    /// pointer loop among them).
    #[error("bad DNS compression pointer: {0}")]
    BadPointer(String),
    /// Anything else the decoder refused (the decoder's reason is given).
    #[error("malformed DNS message: {0}")]
    Malformed(String),
}

impl From<DecodeError> for DnsError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::InsufficientBytes => Self::Truncated,
            DecodeError::DomainNameTooLong(_) => Self::NameTooLong,
            DecodeError::PointerNotPriorToLabel { .. }
            | DecodeError::LabelOverlapsWithOther { .. } => Self::BadPointer(e.to_string()),
            other => Self::Malformed(other.to_string()),
        }
    }
}

/// The question of a DNS message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Question {
    /// The name asked for, see [`name_text`] (lowercase, no trailing dot, IDNA labels as
    /// on the wire: `xn--…`).
    pub name: String,
    /// The type asked for as text: "A", "AAAA", "CNAME", "HTTPS", "SVCB", "TXT", …, or
    /// "TYPE65280" for a type without a name.
    pub qtype: Cow<'static, str>,
    /// The type's code (1 for A, 28 for AAAA, 65 for HTTPS, …).
    pub qtype_code: u16,
    /// The class's code (1 for IN).
    pub qclass: u16,
}

/// What an answer record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerData {
    /// An A or AAAA record's address.
    Addr(IpAddr),
    /// A CNAME record's target name (as [`Question::name`]).
    Cname(String),
    /// An HTTPS or SVCB record (RFC 9460).
    Svcb {
        /// SvcPriority: 0 for AliasMode, otherwise ServiceMode's preference.
        priority: u16,
        /// TargetName (as [`Question::name`]; "." for the root, which in ServiceMode means
        /// the owner name).
        target: String,
        /// The ALPN protocol ids of the `alpn` SvcParam, in order ("h3", "h2", …).
        alpn: Vec<String>,
        /// Whether an `ech` SvcParam (key 5, an ECHConfigList) is present.
        ech: bool,
        /// The public names (outer SNIs) of its ECH configurations that could be read.
        ech_public_names: Vec<String>,
    },
    /// Any other type: its code.
    Other(u16),
}

/// One record of the answer section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// The owner name (as [`Question::name`]).
    pub name: String,
    /// The record type as text (as [`Question::qtype`]).
    pub rtype: Cow<'static, str>,
    /// The record type's code.
    pub rtype_code: u16,
    /// Time to live, in seconds.
    pub ttl: u32,
    /// The record data.
    pub data: AnswerData,
}

/// One parsed DNS message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsMessage {
    /// The message ID, which pairs a response with its query.
    pub id: u16,
    /// Whether this is a response (the QR bit).
    pub response: bool,
    /// Whether the responder truncated the message (the TC bit; the client retries over
    /// TCP).
    pub truncated: bool,
    /// The first question (None in a message without one, as some error responses are).
    pub query: Option<Question>,
    /// Response code as text ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP",
    /// "REFUSED", …, or "RCODE42"), including the extended bits of an EDNS OPT record.
    pub rcode: Cow<'static, str>,
    /// The response code's value.
    pub rcode_code: u16,
    /// Answer-section records, in order.
    pub answers: Vec<Answer>,
    /// The smallest TTL among the answers (None without answers).
    pub min_ttl: Option<u32>,
}

/// Parse one DNS message (a UDP payload, or one TCP-framed message without its length
/// prefix).
///
/// The whole message must decode, every section, or it is refused: a truncated or
/// garbled response yields an error, never a partial answer.
pub fn parse_message(bytes: &[u8]) -> Result<DnsMessage, DnsError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(DnsError::TooLong(bytes.len()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(DnsError::Truncated);
    }
    let header = Header::read(&mut BinDecoder::new(bytes))?;
    let c = header.counts;
    let records = usize::from(c.queries)
        + usize::from(c.answers)
        + usize::from(c.authorities)
        + usize::from(c.additionals);
    if records > MAX_RECORDS {
        return Err(DnsError::TooManyRecords(records));
    }
    let msg = Message::from_vec(bytes)?;

    let query = msg.queries.first().map(|q| {
        let qtype = q.query_type();
        Question {
            name: name_text(q.name()),
            qtype: type_text(qtype),
            qtype_code: qtype.into(),
            qclass: q.query_class().into(),
        }
    });
    let answers: Vec<Answer> = msg
        .answers
        .iter()
        .map(|r| {
            let rtype = r.record_type();
            Answer {
                name: name_text(&r.name),
                rtype: type_text(rtype),
                rtype_code: rtype.into(),
                ttl: r.ttl,
                data: answer_data(&r.data, rtype),
            }
        })
        .collect();
    let rcode_code = u16::from(msg.metadata.response_code);
    Ok(DnsMessage {
        id: msg.metadata.id,
        response: msg.metadata.message_type == MessageType::Response,
        truncated: msg.metadata.truncation,
        query,
        rcode: rcode_text(rcode_code),
        rcode_code,
        min_ttl: answers.iter().map(|a| a.ttl).min(),
        answers,
    })
}

/// A DNS query sent over TCP (RFC 1035 §4.2.2: each message behind a 2-byte length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpQuery {
    /// The query.
    pub message: DnsMessage,
    /// Bytes of the stream it took, its length prefix included.
    pub frame_len: usize,
}

/// Reads the next length-prefixed DNS message of a client's TCP stream to port 53.
///
/// Port 53 rather than content decides that a TCP flow is DNS, as for UDP: a DNS
/// message has no marker to detect it by.
pub fn parse_tcp_query(buf: &[u8]) -> super::ParseOutcome {
    use super::{ParseOutcome, Parsed};
    let Some(len) = buf
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return ParseOutcome::NeedMore;
    };
    let Some(body) = buf.get(2..2 + len) else {
        return ParseOutcome::NeedMore;
    };
    match parse_message(body) {
        Ok(message) if !message.response => ParseOutcome::Complete(Parsed::Dns(TcpQuery {
            message,
            frame_len: 2 + len,
        })),
        Ok(_) => ParseOutcome::NotRecognised("a DNS response from the client"),
        Err(_) => ParseOutcome::NotRecognised("malformed DNS message over TCP"),
    }
}

/// The addresses a response's CNAME chain resolves the question name to, each with the
/// smallest TTL along the chain (the CNAMEs' and its own).
///
/// Starting at the question name, takes the A and AAAA answers owned by the current name;
/// without any, follows the current name's CNAME (at most [`MAX_CNAME_HOPS`] hops). A chain
/// that breaks off, loops or runs longer gives nothing, and so does a message without a
/// question. The response code is not looked at: the caller decides which responses count.
pub fn resolved_addresses(msg: &DnsMessage) -> Vec<(IpAddr, u32)> {
    let Some(question) = &msg.query else {
        return Vec::new();
    };
    let mut name = question.name.as_str();
    let mut chain_ttl = u32::MAX;
    for _ in 0..=MAX_CNAME_HOPS {
        let found: Vec<(IpAddr, u32)> = msg
            .answers
            .iter()
            .filter(|a| a.name == name)
            .filter_map(|a| match a.data {
                AnswerData::Addr(addr) => Some((addr, a.ttl.min(chain_ttl))),
                _ => None,
            })
            .collect();
        if !found.is_empty() {
            return found;
        }
        let next = msg.answers.iter().find_map(|a| match &a.data {
            AnswerData::Cname(target) if a.name == name => Some((target, a.ttl)),
            _ => None,
        });
        match next {
            Some((target, ttl)) => {
                name = target;
                chain_ttl = chain_ttl.min(ttl);
            }
            None => return Vec::new(),
        }
    }
    Vec::new()
}

/// A name as text: lowercase, no trailing dot, "." for the root; IDNA labels stay in
/// their `xn--` form and bytes that are not printable ASCII are escaped (`\DDD`).
pub fn name_text(name: &Name) -> String {
    if name.is_root() {
        return ".".to_owned();
    }
    let mut text = name.to_lowercase().to_ascii();
    if text.ends_with('.') {
        text.pop();
    }
    text
}

/// A record type's mnemonic, or "TYPEnnn" (RFC 3597) for one without.
fn type_text(t: RecordType) -> Cow<'static, str> {
    match t {
        RecordType::Unknown(code) => Cow::Owned(format!("TYPE{code}")),
        known => Cow::Borrowed(known.into()),
    }
}

/// A response code's mnemonic (as dig prints it), or "RCODEnnn".
fn rcode_text(code: u16) -> Cow<'static, str> {
    Cow::Borrowed(match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        11 => "DSOTYPENI",
        16 => "BADVERS",
        17 => "BADKEY",
        18 => "BADTIME",
        19 => "BADMODE",
        20 => "BADNAME",
        21 => "BADALG",
        22 => "BADTRUNC",
        23 => "BADCOOKIE",
        other => return Cow::Owned(format!("RCODE{other}")),
    })
}

/// The part of a record's data a [`DnsMessage`] keeps.
fn answer_data(data: &RData, rtype: RecordType) -> AnswerData {
    match data {
        RData::A(a) => AnswerData::Addr(IpAddr::V4(a.0)),
        RData::AAAA(a) => AnswerData::Addr(IpAddr::V6(a.0)),
        RData::CNAME(c) => AnswerData::Cname(name_text(&c.0)),
        RData::HTTPS(h) => svcb_data(&h.0),
        RData::SVCB(s) => svcb_data(s),
        _ => AnswerData::Other(rtype.into()),
    }
}

/// The priority, target, ALPN ids and `ech` presence of an HTTPS or SVCB record.
fn svcb_data(s: &SVCB) -> AnswerData {
    let mut alpn = Vec::new();
    let mut ech = false;
    let mut ech_public_names = Vec::new();
    for (key, value) in &s.svc_params {
        match value {
            SvcParamValue::Alpn(ids) => alpn.extend(ids.0.iter().cloned()),
            SvcParamValue::EchConfigList(list) => ech_public_names.extend(public_names(&list.0)),
            _ => {}
        }
        if matches!(key, SvcParamKey::EchConfigList) {
            ech = true;
        }
    }
    AnswerData::Svcb {
        priority: s.svc_priority,
        target: name_text(&s.target_name),
        alpn,
        ech,
        ech_public_names,
    }
}

/// The ECHConfig version this reads (RFC 9849 §4); configurations of other versions are
/// skipped by their length, as clients do.
const ECH_VERSION: u16 = 0xfe0d;

/// The `public_name` of every version-`0xfe0d` configuration of an ECHConfigList
/// (RFC 9849 §4: `u16` list length, then `u16` version, `u16` length, contents). No
/// maintained crate exposes this (rustls keeps its ECHConfig parser private), and the
/// walk is a few length-prefixed fields; what does not parse yields nothing.
pub fn public_names(list: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let Some(body) = prefixed16(list).map(|(body, _)| body) else {
        return names;
    };
    let mut rest = body;
    while rest.len() >= 4 {
        let version = u16::from_be_bytes([rest[0], rest[1]]);
        let Some((contents, after)) = prefixed16(&rest[2..]) else {
            break;
        };
        if version == ECH_VERSION
            && let Some(name) = config_public_name(contents)
        {
            names.push(name);
        }
        rest = after;
    }
    names
}

/// The public name of one ECHConfigContents: `HpkeKeyConfig` (config id, KEM id, public
/// key, cipher suites), maximum name length, then the name.
fn config_public_name(c: &[u8]) -> Option<String> {
    let after_ids = c.get(3..)?;
    let (_key, rest) = prefixed16(after_ids)?;
    let (_suites, rest) = prefixed16(rest)?;
    let len = usize::from(*rest.get(1)?);
    let name = rest.get(2..2 + len)?;
    let text = std::str::from_utf8(name).ok()?;
    let valid = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then(|| text.trim_end_matches('.').to_ascii_lowercase())
}

/// A `u16`-length-prefixed field and what follows it.
fn prefixed16(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
    let body = b.get(2..2 + len)?;
    Some((body, &b[2 + len..]))
}

#[cfg(test)]
mod tests;
