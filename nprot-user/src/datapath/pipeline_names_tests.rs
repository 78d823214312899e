//! The pipeline with names from DNS: flows that name nothing on the wire, DNS over TCP,
//! and what ECH evidence changes.

use std::{net::Ipv4Addr, time::UNIX_EPOCH};

use hickory_proto::{
    op::{Message, Query},
    rr::{
        Name, RData, Record as DnsRecord, RecordType,
        rdata::{
            A, HTTPS, SVCB,
            svcb::{EchConfigList, SvcParamKey, SvcParamValue},
        },
    },
};
use nprot_common::{FlowTuple, PROTO_TCP, PROTO_UDP, RecordKind, Verdict, VerdictEntry};
use serde_json::Value;

use super::{Pipeline, VerdictTarget};
use crate::{
    datapath::{
        names::{DnsNames, EchAction, NameSettings},
        parse::testdata::{ClientHelloBuilder, ech_config_list},
    },
    events::{Clock, EventFactory},
    mode::Mode,
    policy::Policy,
    record::{Record, raw_addr},
};

#[derive(Default)]
struct Verdicts(Vec<Verdict>);

impl VerdictTarget for Verdicts {
    fn set_verdict(&mut self, _key: &nprot_common::FlowKey, e: VerdictEntry) -> anyhow::Result<()> {
        self.0.push(Verdict::from_raw(e.verdict));
        Ok(())
    }
}

const SERVER: &str = "198.18.0.2";

fn tuple(proto: u8, server_port: u16) -> FlowTuple {
    let (family, client_addr) = raw_addr("198.18.0.1".parse().unwrap());
    let (_, server_addr) = raw_addr(SERVER.parse().unwrap());
    FlowTuple {
        client_addr,
        server_addr,
        client_port: 40000,
        server_port,
        family,
        proto,
        _pad: [0; 2],
    }
}

fn payload(proto: u8, port: u16, bytes: &[u8], from_server: bool) -> Record<'_> {
    Record {
        kind: RecordKind::Payload,
        tuple: tuple(proto, port),
        ts_ns: 1_000,
        outbound: true,
        seq: 100,
        client_data_seq: 100,
        stream_seq: 100,
        payload: bytes,
        truncated: false,
        budget_spent: false,
        from_server,
        socket_cookie: 0,
        ifindex: 1,
        prefilter: crate::record::Prefiltered::No,
        dns_forged: false,
    }
}

fn pipeline(indicators: &[(&str, &str, &str)], mode: Mode, settings: NameSettings) -> Pipeline {
    let list: Vec<String> = indicators
        .iter()
        .map(|(id, kind, value)| {
            format!(r#"{{"id":"{id}","type":"{kind}","value":"{value}","action":"Block"}}"#)
        })
        .collect();
    let loaded =
        crate::policy::load_json(&format!(r#"{{"indicators":[{}]}}"#, list.join(","))).unwrap();
    let mut p = Pipeline::new(
        EventFactory::new("h", "d", Clock::anchored(UNIX_EPOCH)),
        4096,
        std::sync::Arc::new(Policy::new(loaded.indicators, &[])),
        mode,
    );
    p.set_name_settings(settings);
    p
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// A resolver's answer to the client: `qname` (type `qtype`) with these records.
fn answer(qname: &str, qtype: RecordType, records: Vec<DnsRecord>) -> Vec<u8> {
    let mut m = Message::response(7, hickory_proto::op::OpCode::Query);
    m.add_query(Query::query(name(qname), qtype));
    m.add_answers(records);
    m.to_vec().unwrap()
}

fn a_record(owner: &str) -> DnsRecord {
    DnsRecord::from_rdata(
        name(owner),
        60,
        RData::A(A(SERVER.parse::<Ipv4Addr>().unwrap())),
    )
}

/// Feeds the client's lookup of `qname` (answered with `records`) to `p`.
fn resolve(p: &mut Pipeline, qname: &str, qtype: RecordType, records: Vec<DnsRecord>) {
    let mut q = Message::query();
    q.metadata.id = 7;
    q.add_query(Query::query(name(qname), qtype));
    let query = q.to_vec().unwrap();
    let response = answer(qname, qtype, records);
    let mut v = Verdicts::default();
    p.on_record(&payload(PROTO_UDP, 53, &query, false), &mut v);
    p.on_record(&payload(PROTO_UDP, 53, &response, true), &mut v);
    assert!(v.0.is_empty(), "DNS over UDP gets no verdict from here");
}

fn events(p: &mut Pipeline) -> Vec<Value> {
    p.events
        .drain(..)
        .map(|e| serde_json::to_value(&e).unwrap())
        .collect()
}

fn action_types(evs: &[Value]) -> Vec<&str> {
    evs.iter()
        .map(|e| e["ActionType"].as_str().unwrap())
        .collect()
}

const SSH: &[u8] = b"SSH-2.0-OpenSSH_9.2p1\r\n";

#[test]
fn a_flow_no_parser_knows_is_judged_by_its_address() {
    let mut p = pipeline(
        &[("ip", "IpAddress", SERVER)],
        Mode::Block,
        NameSettings::default(),
    );
    let mut v = Verdicts::default();
    p.on_record(&payload(PROTO_TCP, 22, SSH, false), &mut v);
    assert_eq!(v.0, [Verdict::Block]);
    let evs = events(&mut p);
    assert_eq!(action_types(&evs), ["ExploitGuardNetworkProtectionBlocked"]);
    assert_eq!(evs[0]["AdditionalFields"]["IndicatorId"], "ip");
    assert_eq!(p.stats().unnamed_judged, 1);
}

#[test]
fn a_name_from_dns_decides_only_with_enforce() {
    let rules = [("d", "DomainName", "ssh.example.test")];
    for (setting, expect) in [
        (DnsNames::Log, Verdict::Allow),
        (DnsNames::Enforce, Verdict::Block),
    ] {
        let settings = NameSettings {
            dns_names: setting,
            ..NameSettings::default()
        };
        let mut p = pipeline(&rules, Mode::Block, settings);
        resolve(
            &mut p,
            "ssh.example.test.",
            RecordType::A,
            vec![a_record("ssh.example.test.")],
        );
        let evs = events(&mut p);
        assert_eq!(action_types(&evs), ["DnsConnectionInspected"]);
        assert_eq!(evs[0]["AdditionalFields"]["rcode"], "NOERROR");
        let mut v = Verdicts::default();
        p.on_record(&payload(PROTO_TCP, 22, SSH, false), &mut v);
        assert_eq!(v.0, [expect], "{setting:?}");
        let evs = events(&mut p);
        if expect == Verdict::Block {
            assert_eq!(evs[0]["RemoteUrl"], "ssh.example.test");
            assert_eq!(p.stats().dns_name_judged, 1);
        } else {
            assert!(evs.is_empty(), "{evs:?}");
        }
    }
}

#[test]
fn a_name_on_the_wire_wins_over_the_one_from_dns() {
    let rules = [("d", "DomainName", "resolved.test")];
    let settings = NameSettings {
        dns_names: DnsNames::Enforce,
        ..NameSettings::default()
    };
    let mut p = pipeline(&rules, Mode::Block, settings);
    resolve(
        &mut p,
        "resolved.test.",
        RecordType::A,
        vec![a_record("resolved.test.")],
    );
    events(&mut p);
    // The request names another host: judged by it, and not given the DNS name.
    let mut v = Verdicts::default();
    let req = b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n";
    p.on_record(&payload(PROTO_TCP, 80, req, false), &mut v);
    assert_eq!(
        v.0,
        [Verdict::Continue],
        "allowed; the next request is awaited"
    );
    let evs = events(&mut p);
    assert_eq!(action_types(&evs), ["HttpConnectionInspected"]);
    assert!(evs[0]["AdditionalFields"].get("dns_name").is_none());
    // A Host-less HTTP/1.0 request names nothing: it gets the DNS name, and is blocked.
    let mut p = pipeline(
        &rules,
        Mode::Block,
        NameSettings {
            dns_names: DnsNames::Enforce,
            ..NameSettings::default()
        },
    );
    resolve(
        &mut p,
        "resolved.test.",
        RecordType::A,
        vec![a_record("resolved.test.")],
    );
    events(&mut p);
    let mut v = Verdicts::default();
    p.on_record(
        &payload(PROTO_TCP, 80, b"GET / HTTP/1.0\r\n\r\n", false),
        &mut v,
    );
    assert_eq!(v.0, [Verdict::Block]);
    let evs = events(&mut p);
    assert_eq!(evs[0]["AdditionalFields"]["dns_name"], "resolved.test");
    assert_eq!(evs[0]["AdditionalFields"]["dns_derived"], true);
}

fn ech_hello(p: &mut Pipeline, sni: &str) -> (Vec<Verdict>, Vec<Value>) {
    let hello = ClientHelloBuilder::new().sni(sni).ech(200).build();
    let mut v = Verdicts::default();
    p.on_record(&payload(PROTO_TCP, 443, &hello, false), &mut v);
    (v.0, events(p))
}

#[test]
fn ech_is_real_only_with_evidence_and_only_real_ech_is_blocked() {
    let settings = NameSettings {
        ech: EchAction::Block,
        ..NameSettings::default()
    };
    // A GREASE-looking extension to a plain site: reported, never blocked.
    let mut p = pipeline(&[], Mode::Block, settings.clone());
    resolve(
        &mut p,
        "plain.test.",
        RecordType::A,
        vec![a_record("plain.test.")],
    );
    events(&mut p);
    let (v, evs) = ech_hello(&mut p, "plain.test");
    assert_eq!(v, [Verdict::Allow]);
    assert_eq!(evs[0]["AdditionalFields"]["ech"], "grease_or_real");
    assert!(evs[0]["AdditionalFields"].get("dns_name").is_none());

    // The client looked up secret.test's HTTPS record (ECH, public name cover.test),
    // and its address: the ClientHello shows cover.test, it is real ECH.
    let https = RData::HTTPS(HTTPS(SVCB::new(
        1,
        name("."),
        vec![(
            SvcParamKey::EchConfigList,
            SvcParamValue::EchConfigList(EchConfigList(ech_config_list(0xfe0d, "cover.test"))),
        )],
    )));
    for (mode, verdict, last) in [
        (
            Mode::Audit,
            Verdict::Allow,
            "ExploitGuardNetworkProtectionAudited",
        ),
        (
            Mode::Block,
            Verdict::Block,
            "ExploitGuardNetworkProtectionBlocked",
        ),
    ] {
        let mut p = pipeline(&[], mode, settings.clone());
        resolve(
            &mut p,
            "secret.test.",
            RecordType::HTTPS,
            vec![DnsRecord::from_rdata(
                name("secret.test."),
                60,
                https.clone(),
            )],
        );
        let evs = events(&mut p);
        assert_eq!(
            evs[0]["AdditionalFields"]["answers"][0],
            "HTTPS 1 . ech=cover.test"
        );
        resolve(
            &mut p,
            "secret.test.",
            RecordType::A,
            vec![a_record("secret.test.")],
        );
        events(&mut p);
        let (v, evs) = ech_hello(&mut p, "cover.test");
        assert_eq!(v, [verdict]);
        let ssl = &evs[0]["AdditionalFields"];
        assert_eq!(ssl["ech"], "real");
        assert_eq!(ssl["ech_evidence"], "dns_https_record");
        assert_eq!(
            ssl["dns_name"], "secret.test",
            "the hidden name, as the client resolved it"
        );
        assert_eq!(
            evs[0]["RemoteUrl"], "cover.test",
            "the wire name stays the URL"
        );
        assert_eq!(action_types(&evs)[1], last);
        assert_eq!(
            evs[1]["AdditionalFields"]["ResponseCategory"],
            "EncryptedClientHello"
        );
    }
}

#[test]
fn a_configured_public_name_is_evidence_and_allow_only_reports() {
    let settings = NameSettings {
        ech_public_names: ["cover.test".to_owned()].into(),
        ..NameSettings::default()
    };
    let mut p = pipeline(&[], Mode::Block, settings);
    let (v, evs) = ech_hello(&mut p, "cover.test");
    assert_eq!(v, [Verdict::Allow]);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["AdditionalFields"]["ech"], "real");
    assert_eq!(
        evs[0]["AdditionalFields"]["ech_evidence"],
        "ech_public_names"
    );
    assert_eq!(p.stats().ech_real, 1);
}

/// A query over TCP: its 2-byte length, then the message.
fn tcp_query(qname: &str) -> Vec<u8> {
    let mut q = Message::query();
    q.add_query(Query::query(name(qname), RecordType::A));
    let msg = q.to_vec().unwrap();
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&msg);
    framed
}

#[test]
fn dns_over_tcp_queries_are_reported_and_judged_one_by_one() {
    let mut p = pipeline(
        &[("d", "DomainName", "blocked.test")],
        Mode::Block,
        NameSettings::default(),
    );
    let mut bytes = tcp_query("allowed.test.");
    let second = tcp_query("www.blocked.test.");
    // The first query and half the second in one segment.
    bytes.extend_from_slice(&second[..10]);
    let mut v = Verdicts::default();
    p.on_record(&payload(PROTO_TCP, 53, &bytes, false), &mut v);
    assert_eq!(
        v.0,
        [Verdict::Continue],
        "the first query is allowed, the flow goes on"
    );
    let evs = events(&mut p);
    assert_eq!(action_types(&evs), ["DnsConnectionInspected"]);
    assert_eq!(evs[0]["Protocol"], "Tcp");
    assert_eq!(evs[0]["AdditionalFields"]["query"], "allowed.test");
    assert_eq!(evs[0]["AdditionalFields"]["rcode"], Value::Null);
    let mut rest = payload(PROTO_TCP, 53, &second[10..], false);
    rest.seq = 100 + bytes.len() as u32;
    p.on_record(&rest, &mut v);
    assert_eq!(v.0, [Verdict::Continue, Verdict::Block]);
    let evs = events(&mut p);
    assert_eq!(
        action_types(&evs),
        [
            "DnsConnectionInspected",
            "ExploitGuardNetworkProtectionBlocked"
        ]
    );
    assert_eq!(evs[1]["RemoteUrl"], "www.blocked.test");
    assert_eq!(p.stats().dns_tcp_queries, 2);
    // Not DNS on port 53 is judged like any unknown protocol.
    let mut p = pipeline(
        &[("ip", "IpAddress", SERVER)],
        Mode::Block,
        NameSettings::default(),
    );
    let mut v = Verdicts::default();
    p.on_record(
        &payload(PROTO_TCP, 53, &[0, 3, 0xff, 0xff, 0xff], false),
        &mut v,
    );
    assert_eq!(v.0, [Verdict::Block]);
}

#[test]
fn a_server_that_speaks_first_is_judged_by_its_address() {
    for (rules, expect) in [
        (&[("ip", "IpAddress", SERVER)][..], Verdict::Block),
        (&[][..], Verdict::Allow),
    ] {
        let mut p = pipeline(rules, Mode::Block, NameSettings::default());
        let mut rec = payload(PROTO_TCP, 25, &[], true);
        rec.kind = RecordKind::ServerFirst;
        let mut v = Verdicts::default();
        p.on_record(&rec, &mut v);
        assert_eq!(v.0, [expect]);
        assert_eq!(p.stats().server_first, 1);
        let evs = events(&mut p);
        assert_eq!(evs.len(), usize::from(expect == Verdict::Block), "{evs:?}");
    }
}
