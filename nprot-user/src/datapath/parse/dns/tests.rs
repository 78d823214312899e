use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::{
    op::{Message, OpCode, Query, ResponseCode},
    rr::{
        Record,
        rdata::{
            A, AAAA, CNAME, HTTPS, TXT,
            svcb::{Alpn, EchConfigList, IpHint},
        },
    },
};

use super::*;
use crate::datapath::parse::testdata::ech_config_list;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn query_msg(qname: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.id = 0x1234;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    m
}

fn response(qname: &str, qtype: RecordType, answers: Vec<Record>) -> Message {
    let mut m = Message::response(0x1234, OpCode::Query);
    m.add_query(Query::query(name(qname), qtype));
    m.add_answers(answers);
    m
}

fn rec(owner: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name(owner), ttl, data)
}

fn https(priority: u16, target: &str, alpn: &[&str], ech: bool) -> RData {
    // In key order (alpn 1, ipv4hint 4, ech 5), as the wire format requires.
    let mut params = vec![(
        SvcParamKey::Alpn,
        SvcParamValue::Alpn(Alpn(alpn.iter().map(|s| (*s).to_owned()).collect())),
    )];
    params.push((
        SvcParamKey::Ipv4Hint,
        SvcParamValue::Ipv4Hint(IpHint(vec![A(Ipv4Addr::new(198, 18, 5, 6))])),
    ));
    if ech {
        params.push((
            SvcParamKey::EchConfigList,
            SvcParamValue::EchConfigList(EchConfigList(vec![0x00, 0x04, 0xfe, 0x0d, 0x00, 0x00])),
        ));
    }
    RData::HTTPS(HTTPS(SVCB::new(priority, name(target), params)))
}

fn wire(m: &Message) -> Vec<u8> {
    m.to_vec().unwrap()
}

/// The CNAME chain response of the brief: www.example.test CNAME cdn.example.test A 198.18.5.5.
fn cname_chain() -> Vec<u8> {
    wire(&response(
        "www.example.test.",
        RecordType::A,
        vec![
            rec(
                "www.example.test.",
                300,
                RData::CNAME(CNAME(name("cdn.example.test."))),
            ),
            rec(
                "cdn.example.test.",
                600,
                RData::A(A(Ipv4Addr::new(198, 18, 5, 5))),
            ),
        ],
    ))
}

/// A richer response for the robustness tests: a CNAME, an HTTPS record with params, an
/// address of each family and a TXT record.
fn rich_response() -> Vec<u8> {
    wire(&response(
        "www.example.test.",
        RecordType::HTTPS,
        vec![
            rec(
                "www.example.test.",
                300,
                RData::CNAME(CNAME(name("cdn.example.test."))),
            ),
            rec("cdn.example.test.", 60, https(1, ".", &["h3", "h2"], true)),
            rec(
                "cdn.example.test.",
                60,
                RData::A(A(Ipv4Addr::new(198, 18, 5, 5))),
            ),
            rec(
                "cdn.example.test.",
                60,
                RData::AAAA(AAAA(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5))),
            ),
            rec(
                "cdn.example.test.",
                60,
                RData::TXT(TXT::new(vec!["v=test".to_owned()])),
            ),
        ],
    ))
}

/// A response as a resolver sends it, written by hand: www.example.test A, the answer's
/// owner a compression pointer to the question (0xc00c).
const HAND_A_RESPONSE: &[u8] = &[
    0xab, 0xcd, 0x81, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // header
    3, b'w', b'w', b'w', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 4, b't', b'e', b's', b't', 0,
    0x00, 0x01, 0x00, 0x01, // question
    0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x0e, 0x10, 0x00, 0x04, 198, 18, 5, 5,
];

#[test]
fn hand_written_response() {
    let m = parse_message(HAND_A_RESPONSE).unwrap();
    assert_eq!(m.id, 0xabcd);
    assert!(m.response);
    assert!(!m.truncated);
    assert_eq!(m.rcode, "NOERROR");
    let q = m.query.as_ref().unwrap();
    assert_eq!(
        q,
        &Question {
            name: "www.example.test".to_owned(),
            qtype: "A".into(),
            qtype_code: 1,
            qclass: 1
        }
    );
    assert_eq!(
        m.answers,
        vec![Answer {
            name: "www.example.test".to_owned(),
            rtype: "A".into(),
            rtype_code: 1,
            ttl: 3600,
            data: AnswerData::Addr(IpAddr::V4(Ipv4Addr::new(198, 18, 5, 5))),
        }]
    );
    assert_eq!(m.min_ttl, Some(3600));
    assert_eq!(
        resolved_addresses(&m),
        vec![(IpAddr::V4(Ipv4Addr::new(198, 18, 5, 5)), 3600)]
    );
}

#[test]
fn a_query() {
    let m = parse_message(&wire(&query_msg("WWW.Example.TEST.", RecordType::A))).unwrap();
    assert_eq!(m.id, 0x1234);
    assert!(!m.response);
    let q = m.query.as_ref().unwrap();
    assert_eq!(q.name, "www.example.test");
    assert_eq!(q.qtype, "A");
    assert_eq!(q.qtype_code, 1);
    assert!(m.answers.is_empty());
    assert_eq!(m.min_ttl, None);
    assert!(resolved_addresses(&m).is_empty());
}

#[test]
fn a_and_aaaa_responses() {
    let v4 = Ipv4Addr::new(198, 18, 5, 1);
    let m = parse_message(&wire(&response(
        "a.example.test.",
        RecordType::A,
        vec![
            rec("a.example.test.", 120, RData::A(A(v4))),
            rec(
                "a.example.test.",
                90,
                RData::A(A(Ipv4Addr::new(198, 18, 5, 2))),
            ),
        ],
    )))
    .unwrap();
    assert!(m.response);
    assert_eq!(m.answers.len(), 2);
    assert_eq!(m.min_ttl, Some(90));
    assert_eq!(
        resolved_addresses(&m),
        vec![
            (IpAddr::V4(v4), 120),
            (IpAddr::V4(Ipv4Addr::new(198, 18, 5, 2)), 90)
        ]
    );

    let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    let m = parse_message(&wire(&response(
        "a.example.test.",
        RecordType::AAAA,
        vec![rec("a.example.test.", 45, RData::AAAA(AAAA(v6)))],
    )))
    .unwrap();
    assert_eq!(m.query.as_ref().unwrap().qtype, "AAAA");
    assert_eq!(m.query.as_ref().unwrap().qtype_code, 28);
    assert_eq!(m.answers[0].rtype, "AAAA");
    assert_eq!(m.answers[0].data, AnswerData::Addr(IpAddr::V6(v6)));
    assert_eq!(resolved_addresses(&m), vec![(IpAddr::V6(v6), 45)]);
}

#[test]
fn cname_chain_resolves_with_the_chains_min_ttl() {
    let m = parse_message(&cname_chain()).unwrap();
    assert_eq!(m.answers.len(), 2);
    assert_eq!(m.answers[0].rtype, "CNAME");
    assert_eq!(
        m.answers[0].data,
        AnswerData::Cname("cdn.example.test".to_owned())
    );
    assert_eq!(m.min_ttl, Some(300));
    assert_eq!(
        resolved_addresses(&m),
        vec![(IpAddr::V4(Ipv4Addr::new(198, 18, 5, 5)), 300)]
    );
}

#[test]
fn cname_chain_edge_cases() {
    let addr = RData::A(A(Ipv4Addr::new(198, 18, 5, 7)));
    // Answers of other names are not the query's.
    let m = parse_message(&wire(&response(
        "www.example.test.",
        RecordType::A,
        vec![rec("other.example.test.", 60, addr.clone())],
    )))
    .unwrap();
    assert!(resolved_addresses(&m).is_empty());

    // A loop stops (and gives nothing).
    let m = parse_message(&wire(&response(
        "a.example.test.",
        RecordType::A,
        vec![
            rec(
                "a.example.test.",
                60,
                RData::CNAME(CNAME(name("b.example.test."))),
            ),
            rec(
                "b.example.test.",
                60,
                RData::CNAME(CNAME(name("a.example.test."))),
            ),
        ],
    )))
    .unwrap();
    assert!(resolved_addresses(&m).is_empty());

    // A chain of MAX_CNAME_HOPS hops resolves, one more does not.
    let chain = |hops: usize| {
        let mut answers: Vec<Record> = (0..hops)
            .map(|i| {
                rec(
                    &format!("n{i}.example.test."),
                    1000 - i as u32,
                    RData::CNAME(CNAME(name(&format!("n{}.example.test.", i + 1)))),
                )
            })
            .collect();
        answers.push(rec(&format!("n{hops}.example.test."), 2000, addr.clone()));
        parse_message(&wire(&response("n0.example.test.", RecordType::A, answers))).unwrap()
    };
    let m = chain(MAX_CNAME_HOPS);
    assert_eq!(
        resolved_addresses(&m),
        vec![(
            IpAddr::V4(Ipv4Addr::new(198, 18, 5, 7)),
            1000 - (MAX_CNAME_HOPS as u32 - 1)
        )]
    );
    assert!(resolved_addresses(&chain(MAX_CNAME_HOPS + 1)).is_empty());

    // Case does not matter.
    let m = parse_message(&wire(&response(
        "WWW.example.test.",
        RecordType::A,
        vec![
            rec(
                "www.EXAMPLE.test.",
                60,
                RData::CNAME(CNAME(name("CDN.example.test."))),
            ),
            rec("cdn.example.TEST.", 30, addr),
        ],
    )))
    .unwrap();
    assert_eq!(resolved_addresses(&m).len(), 1);
}

#[test]
fn nxdomain() {
    let mut r = response("nope.example.test.", RecordType::A, Vec::new());
    r.metadata.response_code = ResponseCode::NXDomain;
    let m = parse_message(&wire(&r)).unwrap();
    assert_eq!(m.rcode, "NXDOMAIN");
    assert_eq!(m.rcode_code, 3);
    assert!(m.answers.is_empty());
    assert_eq!(m.min_ttl, None);
    assert!(resolved_addresses(&m).is_empty());

    for (code, text) in [
        (ResponseCode::ServFail, "SERVFAIL"),
        (ResponseCode::Refused, "REFUSED"),
        (ResponseCode::FormErr, "FORMERR"),
    ] {
        r.metadata.response_code = code;
        assert_eq!(parse_message(&wire(&r)).unwrap().rcode, text);
    }
}

#[test]
fn https_record_with_and_without_ech() {
    let m = parse_message(&wire(&response(
        "svc.example.test.",
        RecordType::HTTPS,
        vec![rec(
            "svc.example.test.",
            60,
            https(1, ".", &["h3", "h2"], true),
        )],
    )))
    .unwrap();
    assert_eq!(m.query.as_ref().unwrap().qtype, "HTTPS");
    assert_eq!(m.query.as_ref().unwrap().qtype_code, 65);
    assert_eq!(m.answers[0].rtype, "HTTPS");
    assert_eq!(
        m.answers[0].data,
        AnswerData::Svcb {
            priority: 1,
            target: ".".to_owned(),
            alpn: vec!["h3".to_owned(), "h2".to_owned()],
            ech: true,
            ech_public_names: vec![],
        }
    );

    let m = parse_message(&wire(&response(
        "svc.example.test.",
        RecordType::HTTPS,
        vec![rec(
            "svc.example.test.",
            60,
            https(2, "Pool.Example.test.", &["h2"], false),
        )],
    )))
    .unwrap();
    assert_eq!(
        m.answers[0].data,
        AnswerData::Svcb {
            priority: 2,
            target: "pool.example.test".to_owned(),
            alpn: vec!["h2".to_owned()],
            ech: false,
            ech_public_names: vec![],
        }
    );

    // SVCB proper (type 64) reads the same way.
    let RData::HTTPS(HTTPS(svcb)) = https(1, "svc.example.test.", &["dot"], true) else {
        unreachable!()
    };
    let m = parse_message(&wire(&response(
        "_dns.resolver.test.",
        RecordType::SVCB,
        vec![rec("_dns.resolver.test.", 60, RData::SVCB(svcb))],
    )))
    .unwrap();
    assert_eq!(m.answers[0].rtype, "SVCB");
    assert!(matches!(
        &m.answers[0].data,
        AnswerData::Svcb { ech: true, alpn, .. } if alpn == &["dot"]
    ));
}

#[test]
fn ech_public_names_are_read_from_the_config_list() {
    assert_eq!(
        public_names(&ech_config_list(0xfe0d, "Cover.Example.")),
        ["cover.example"]
    );
    // Another version is skipped; two configurations give two names.
    let mut two = ech_config_list(0xfe0d, "a.example");
    let other = ech_config_list(0xfe0a, "old.example");
    let b = ech_config_list(0xfe0d, "b.example");
    let mut body = two.split_off(2);
    body.extend_from_slice(&other[2..]);
    body.extend_from_slice(&b[2..]);
    let mut list = (body.len() as u16).to_be_bytes().to_vec();
    list.extend_from_slice(&body);
    assert_eq!(public_names(&list), ["a.example", "b.example"]);
    // Every cut and a bad name give what could be read, never a panic.
    let full = ech_config_list(0xfe0d, "cover.example");
    for n in 0..full.len() {
        assert!(public_names(&full[..n]).is_empty(), "cut at {n}");
    }
    assert!(public_names(&ech_config_list(0xfe0d, "bad name")).is_empty());
    // In an HTTPS answer.
    let params = vec![(
        SvcParamKey::EchConfigList,
        SvcParamValue::EchConfigList(EchConfigList(full)),
    )];
    let m = parse_message(&wire(&response(
        "secret.example.test.",
        RecordType::HTTPS,
        vec![rec(
            "secret.example.test.",
            60,
            RData::HTTPS(HTTPS(SVCB::new(1, name("."), params))),
        )],
    )))
    .unwrap();
    assert!(matches!(
        &m.answers[0].data,
        AnswerData::Svcb { ech: true, ech_public_names, .. } if ech_public_names == &["cover.example"]
    ));
}

#[test]
fn other_types() {
    let m = parse_message(&rich_response()).unwrap();
    assert_eq!(m.answers.len(), 5);
    assert_eq!(m.answers[4].rtype, "TXT");
    assert_eq!(m.answers[4].data, AnswerData::Other(16));
    assert_eq!(m.min_ttl, Some(60));
    // The A and the AAAA at the end of the chain.
    assert_eq!(resolved_addresses(&m).len(), 2);

    let m = parse_message(&wire(&query_msg(
        "x.example.test.",
        RecordType::Unknown(65280),
    )))
    .unwrap();
    assert_eq!(m.query.as_ref().unwrap().qtype, "TYPE65280");
    assert_eq!(m.query.as_ref().unwrap().qtype_code, 65280);
}

#[test]
fn idna_and_root_names() {
    let m = parse_message(&wire(&query_msg("xn--bcher-kva.Example.", RecordType::A))).unwrap();
    assert_eq!(m.query.unwrap().name, "xn--bcher-kva.example");
    let m = parse_message(&wire(&query_msg(".", RecordType::NS))).unwrap();
    assert_eq!(m.query.unwrap().name, ".");
}

#[test]
fn no_question() {
    let r = Message::error_msg(7, OpCode::Query, ResponseCode::FormErr);
    let m = parse_message(&wire(&r)).unwrap();
    assert_eq!(m.query, None);
    assert_eq!(m.rcode, "FORMERR");
    assert!(resolved_addresses(&m).is_empty());
}

#[test]
fn serialises() {
    let m = parse_message(&cname_chain()).unwrap();
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json["query"]["name"], "www.example.test");
    assert_eq!(json["answers"][0]["data"]["cname"], "cdn.example.test");
    assert_eq!(json["answers"][1]["data"]["addr"], "198.18.5.5");
    assert_eq!(json["rcode"], "NOERROR");
}

#[test]
fn every_truncation_is_an_error() {
    for full in [rich_response(), cname_chain(), HAND_A_RESPONSE.to_vec()] {
        assert!(parse_message(&full).is_ok());
        for len in 0..full.len() {
            let r = parse_message(&full[..len]);
            assert!(r.is_err(), "prefix of {len} bytes parsed: {r:?}");
        }
        assert_eq!(parse_message(&full[..5]), Err(DnsError::Truncated));
        // Cut inside a header, name or fixed field: Truncated. (Cut inside record data,
        // the decoder may first notice a short read of the data: Malformed.)
        assert_eq!(
            parse_message(&full[..HEADER_LEN + 3]),
            Err(DnsError::Truncated)
        );
    }
}

#[test]
fn byte_flips_never_panic() {
    for full in [rich_response(), HAND_A_RESPONSE.to_vec()] {
        for i in 0..full.len() {
            for pattern in [0x01, 0x80, 0xc0, 0x3f, 0xff] {
                let mut m = full.clone();
                m[i] ^= pattern;
                if let Ok(msg) = parse_message(&m) {
                    let _ = resolved_addresses(&msg);
                }
                m[i] = pattern;
                if let Ok(msg) = parse_message(&m) {
                    let _ = resolved_addresses(&msg);
                }
            }
        }
    }
}

/// A header with the given counts (a response, ID 1).
fn header(qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    let mut h = vec![0x00, 0x01, 0x81, 0x80];
    for c in [qd, an, ns, ar] {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

#[test]
fn compression_pointer_loops_are_errors() {
    // The question name is a pointer to itself.
    let mut m = header(1, 0, 0, 0);
    m.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
    assert!(matches!(parse_message(&m), Err(DnsError::BadPointer(_))));

    // A label, then a pointer back to that label (a name that would repeat forever).
    let mut m = header(1, 0, 0, 0);
    m.extend_from_slice(&[1, b'a', 0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
    assert!(matches!(parse_message(&m), Err(DnsError::BadPointer(_))));

    // A forward pointer (to a name that points back).
    let mut m = header(1, 1, 0, 0);
    m.extend_from_slice(&[0xc0, 0x12, 0x00, 0x01, 0x00, 0x01]);
    m.extend_from_slice(&[
        0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4,
    ]);
    assert!(matches!(parse_message(&m), Err(DnsError::BadPointer(_))));

    // In an answer's owner and a CNAME's target alike.
    let mut m = HAND_A_RESPONSE.to_vec();
    let owner = HAND_A_RESPONSE.len() - 16;
    m[owner + 1] = owner as u8;
    assert!(matches!(parse_message(&m), Err(DnsError::BadPointer(_))));
}

#[test]
fn over_large_counts_are_refused_before_decoding() {
    for (qd, an, ns, ar) in [
        (0xffff, 0, 0, 0),
        (1, 0xffff, 0xffff, 0xffff),
        (1, 256, 0, 0),
        (0, 0, 0, 257),
    ] {
        let m = header(qd, an, ns, ar);
        let total = usize::from(qd) + usize::from(an) + usize::from(ns) + usize::from(ar);
        assert_eq!(parse_message(&m), Err(DnsError::TooManyRecords(total)));
    }
    // 256 declared but absent records: merely truncated.
    assert_eq!(
        parse_message(&header(1, 255, 0, 0)),
        Err(DnsError::Truncated)
    );
}

#[test]
fn over_large_message_is_refused() {
    let mut m = HAND_A_RESPONSE.to_vec();
    m.resize(MAX_MESSAGE_LEN + 1, 0);
    assert_eq!(
        parse_message(&m),
        Err(DnsError::TooLong(MAX_MESSAGE_LEN + 1))
    );
    // Trailing bytes within the limit are ignored.
    m.truncate(MAX_MESSAGE_LEN);
    assert!(parse_message(&m).is_ok());
}

#[test]
fn names_over_255_bytes_are_refused() {
    let mut m = header(1, 0, 0, 0);
    for _ in 0..4 {
        m.push(63);
        m.extend_from_slice(&[b'a'; 63]);
    }
    m.extend_from_slice(&[0, 0x00, 0x01, 0x00, 0x01]);
    assert_eq!(parse_message(&m), Err(DnsError::NameTooLong));

    // 253 characters (255 bytes on the wire) are fine.
    let mut m = header(1, 0, 0, 0);
    for len in [63, 63, 63, 61] {
        m.push(len);
        m.extend(std::iter::repeat_n(b'a', usize::from(len)));
    }
    m.extend_from_slice(&[0, 0x00, 0x01, 0x00, 0x01]);
    assert_eq!(parse_message(&m).unwrap().query.unwrap().name.len(), 253);
}

#[test]
fn labels_over_63_bytes_are_malformed() {
    let mut m = header(1, 0, 0, 0);
    m.push(0x40);
    m.extend_from_slice(&[b'a'; 64]);
    m.extend_from_slice(&[0, 0x00, 0x01, 0x00, 0x01]);
    assert!(matches!(parse_message(&m), Err(DnsError::Malformed(_))));
}

/// Bytes that are not letters, digits or hyphens stay escaped, a dot inside a label too,
/// so the text is never taken for another name (found by the fuzz target: a label ending
/// in a dot).
#[test]
fn odd_label_bytes_are_escaped() {
    for (labels, text) in [
        (&[&b"a.b"[..], b"test"][..], r"a\.b.test"),
        (&[&b"a."[..]][..], r"a\."),
        (&[&b"A\0z"[..]][..], r"a\000z"),
    ] {
        let mut m = header(1, 0, 0, 0);
        for l in labels {
            m.push(l.len() as u8);
            m.extend_from_slice(l);
        }
        m.extend_from_slice(&[0, 0x00, 0x01, 0x00, 0x01]);
        assert_eq!(parse_message(&m).unwrap().query.unwrap().name, text);
    }
}
