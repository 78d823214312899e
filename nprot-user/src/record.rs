//! What the kernel reports about a flow, decoded from the ring buffer (live) or made by the
//! replay tracker (offline): the one input type of the data path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nprot_common::{
    FAMILY_V4, FlowTuple, RECORD_BUDGET_SPENT, RECORD_CANDIDATE, RECORD_DNS_FORGED, RECORD_EGRESS,
    RECORD_FROM_SERVER, RECORD_PREALLOWED, RECORD_TRUNCATED, RawAddr, RecordHeader, RecordKind,
};
use thiserror::Error;

/// One thing the kernel reported about a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// What happened.
    pub kind: RecordKind,
    /// The flow, oriented client → server.
    pub tuple: FlowTuple,
    /// Monotonic ns when the kernel saw the packet.
    pub ts_ns: u64,
    /// The SYN left through an egress hook: the initiator is on this side.
    pub outbound: bool,
    /// TCP sequence number of `payload[0]`.
    pub seq: u32,
    /// Sequence number of the client's first payload byte.
    pub client_data_seq: u32,
    /// Where the client bytes still to be decided start (see `RecordHeader::stream_seq`).
    pub stream_seq: u32,
    /// Captured client payload (payload records only).
    pub payload: &'a [u8],
    /// The segment was longer than what was captured.
    pub truncated: bool,
    /// The kernel will capture nothing more of this flow.
    pub budget_spent: bool,
    /// The payload is the server's (a DNS response), not the client's.
    pub from_server: bool,
    /// A DNS query the kernel answered with NXDOMAIN (block mode): the payload is that
    /// answer (the query in replay).
    pub dns_forged: bool,
    /// Socket cookie of the local socket, 0 if unknown.
    pub socket_cookie: u64,
    /// Interface the flow was first seen on.
    pub ifindex: u32,
    /// What the kernel pre-filter made of these bytes.
    pub prefilter: Prefiltered,
}

/// What the kernel pre-filter made of a record's client bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Prefiltered {
    /// Not judged (the pre-filter is off, or these are not first bytes), or undecided.
    #[default]
    No,
    /// Nothing in force could match: the flow went on without waiting for the verdict.
    Allowed,
    /// Something may match: the flow waits for the verdict.
    Candidate,
}

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    /// The record is shorter than a `RecordHeader`; holds its length.
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    /// The header's kind byte is no `RecordKind`; holds it.
    #[error("record kind {0} is unknown")]
    Kind(u8),
    /// The header announces more payload bytes (`len`) than follow it.
    #[error("record announces {announced} payload bytes but carries {carried}")]
    Length {
        /// Payload bytes the header announces (`len`).
        announced: u32,
        /// Payload bytes the record carries after its header.
        carried: usize,
    },
}

impl<'a> Record<'a> {
    /// Whether a verdict may wait for this record: payload the kernel did not pre-allow
    /// (the kernel wakes the daemon for exactly these). The latency figures count only
    /// these, and the daemon handles them before anything put off.
    pub fn awaited(&self) -> bool {
        self.kind == RecordKind::Payload && self.prefilter != Prefiltered::Allowed
    }

    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &'a [u8]) -> Result<Record<'a>, RecordError> {
        let hdr_len = size_of::<RecordHeader>();
        if bytes.len() < hdr_len {
            return Err(RecordError::Short(bytes.len()));
        }
        // SAFETY: RecordHeader is plain data valid for any bits; the length is checked.
        let hdr: RecordHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let kind = RecordKind::from_raw(hdr.kind).ok_or(RecordError::Kind(hdr.kind))?;
        let payload = &bytes[hdr_len..];
        if payload.len() < hdr.len as usize {
            return Err(RecordError::Length {
                announced: hdr.len,
                carried: payload.len(),
            });
        }
        Ok(Record::from_header(
            &hdr,
            kind,
            &payload[..hdr.len as usize],
        ))
    }

    /// The record a header of `kind` and its captured `payload` describe.
    pub fn from_header(hdr: &RecordHeader, kind: RecordKind, payload: &'a [u8]) -> Record<'a> {
        Record {
            kind,
            tuple: hdr.tuple,
            ts_ns: hdr.ts_ns,
            outbound: hdr.flags & RECORD_EGRESS != 0,
            seq: hdr.seq,
            client_data_seq: hdr.client_data_seq,
            stream_seq: hdr.stream_seq,
            payload,
            truncated: hdr.flags & RECORD_TRUNCATED != 0,
            budget_spent: hdr.flags & RECORD_BUDGET_SPENT != 0,
            from_server: hdr.flags & RECORD_FROM_SERVER != 0,
            dns_forged: hdr.flags & RECORD_DNS_FORGED != 0,
            socket_cookie: hdr.socket_cookie,
            ifindex: hdr.ifindex,
            prefilter: if hdr.flags & RECORD_PREALLOWED != 0 {
                Prefiltered::Allowed
            } else if hdr.flags & RECORD_CANDIDATE != 0 {
                Prefiltered::Candidate
            } else {
                Prefiltered::No
            },
        }
    }
}

/// Converts an address as the kernel read it off the wire.
pub fn ip_addr(family: u8, raw: &RawAddr) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(raw[0].to_ne_bytes()))
    } else {
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(raw) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// The inverse of [`ip_addr`], for tests and offline tools.
pub fn raw_addr(addr: IpAddr) -> (u8, RawAddr) {
    match addr {
        IpAddr::V4(v4) => (FAMILY_V4, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut raw = [0u32; 4];
            for (word, chunk) in raw.iter_mut().zip(o.chunks_exact(4)) {
                *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
            (nprot_common::FAMILY_V6, raw)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(hdr: &RecordHeader) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-data struct.
        unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref::<RecordHeader>(hdr).cast::<u8>(),
                size_of::<RecordHeader>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_payload_record() {
        let (family, client) = raw_addr("198.18.0.1".parse().unwrap());
        let (_, server) = raw_addr("198.18.0.2".parse().unwrap());
        let hdr = RecordHeader {
            tuple: FlowTuple {
                client_addr: client,
                server_addr: server,
                client_port: 40000,
                server_port: 443,
                family,
                proto: nprot_common::PROTO_TCP,
                _pad: [0; 2],
            },
            len: 3,
            kind: RecordKind::Payload as u8,
            flags: RECORD_EGRESS | RECORD_TRUNCATED,
            seq: 1001,
            ..Default::default()
        };
        let mut bytes = header_bytes(&hdr);
        bytes.extend_from_slice(b"abc");
        let rec = Record::decode(&bytes).unwrap();
        assert_eq!(rec.payload, b"abc");
        assert!(rec.outbound && rec.truncated && !rec.budget_spent);
        assert_eq!(
            ip_addr(rec.tuple.family, &rec.tuple.server_addr).to_string(),
            "198.18.0.2"
        );
    }

    #[test]
    fn rejects_short_and_inconsistent_records() {
        assert_eq!(Record::decode(&[0u8; 7]), Err(RecordError::Short(7)));
        let hdr = RecordHeader {
            len: 10,
            kind: RecordKind::Payload as u8,
            ..Default::default()
        };
        assert!(matches!(
            Record::decode(&header_bytes(&hdr)),
            Err(RecordError::Length {
                announced: 10,
                carried: 0
            })
        ));
        let hdr = RecordHeader {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(
            Record::decode(&header_bytes(&hdr)),
            Err(RecordError::Kind(99))
        );
    }

    #[test]
    fn ipv6_round_trip() {
        let addr: IpAddr = "2001:db8:1::2".parse().unwrap();
        let (family, raw) = raw_addr(addr);
        assert_eq!(ip_addr(family, &raw), addr);
    }
}
