//! DNS: lookups through a real resolver (dnsmasq in the server namespace, dig in the
//! client's) are reported as `DnsConnectionInspected`, and a flow to an address the
//! client just resolved carries the name (`dns_name`, marked derived).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::IpAddr;

use nprot_tests::{
    ClientServer, Env,
    dns::{Dnsmasq, Record, dig},
    events::ev,
    wait_event,
};
use serde_json::Value;

/// An HTTPS record (RFC 9460): priority 1, target ".", alpn h3,h2, and an `ech` param.
const HTTPS_WITH_ECH: &[u8] = &[
    0, 1, 0, // priority 1, target "."
    0, 1, 0, 6, 2, b'h', b'3', 2, b'h', b'2', // alpn
    0, 5, 0, 6, 0, 4, 0xde, 0xad, 0xbe, 0xef, // ech
];
/// The same without `ech`.
const HTTPS_PLAIN: &[u8] = &[0, 1, 0, 0, 1, 0, 3, 2, b'h', b'2'];

/// The environment with the sensor (audit mode) and dnsmasq on the server's IPv4
/// address serving a few names that point at the server.
fn start() -> (Env, Dnsmasq) {
    let mut env = Env::start_without_sensor().expect("test environment");
    let server = env.server_ip(false);
    let records = [
        Record::Host {
            name: "ssh.example.test".into(),
            addrs: vec![server, env.server_ip(true)],
            ttl: 60,
        },
        Record::Host {
            name: "cdn.example.test".into(),
            addrs: vec![server],
            ttl: 30,
        },
        Record::Cname {
            alias: "www.example.test".into(),
            target: "cdn.example.test".into(),
        },
        Record::Raw {
            name: "ech.example.test".into(),
            rtype: 65,
            rdata: HTTPS_WITH_ECH.to_vec(),
        },
        Record::Raw {
            name: "plain.example.test".into(),
            rtype: 65,
            rdata: HTTPS_PLAIN.to_vec(),
        },
    ];
    let resolver = Dnsmasq::start(env.server_ns(), server, &records, env.dir()).expect("dnsmasq");
    env.start_sensor(&["--mode", "audit"]).expect("sensor");
    (env, resolver)
}

fn dns_for(name: &'static str, qtype: &'static str) -> impl Fn(&Value) -> bool {
    move |e: &Value| {
        ev::is(e, "DnsConnectionInspected")
            && e["AdditionalFields"]["query"] == name
            && e["AdditionalFields"]["qtype"] == qtype
    }
}

#[test]
fn lookups_are_reported_with_their_answers() {
    let (env, resolver) = start();
    let ns = env.client_ns();
    let server = resolver.addr;
    let a = dig(ns, server, "ssh.example.test", "A").unwrap();
    assert_eq!(a.status, "NOERROR", "{a:?}");
    let e = wait_event(&env, "the A lookup", dns_for("ssh.example.test", "A"));
    let f = &e["AdditionalFields"];
    assert_eq!(f["rcode"], "NOERROR", "{e}");
    assert_eq!(f["answers"][0], server.to_string(), "{e}");
    assert_eq!(f["ttl"], 60, "{e}");
    assert_eq!(e["Protocol"], "Udp", "{e}");
    assert_eq!(e["RemotePort"], 53, "{e}");
    assert_eq!(e["RemoteUrl"], "ssh.example.test", "{e}");

    dig(ns, server, "ssh.example.test", "AAAA").unwrap();
    let e = wait_event(&env, "the AAAA lookup", dns_for("ssh.example.test", "AAAA"));
    assert_eq!(
        e["AdditionalFields"]["answers"][0],
        env.server_ip(true).to_string(),
        "{e}"
    );

    dig(ns, server, "www.example.test", "A").unwrap();
    let e = wait_event(&env, "the CNAME chain", dns_for("www.example.test", "A"));
    let answers = e["AdditionalFields"]["answers"].as_array().unwrap();
    assert_eq!(answers[0], "CNAME cdn.example.test", "{e}");
    assert_eq!(answers[1], server.to_string(), "{e}");

    dig(ns, server, "ech.example.test", "HTTPS").unwrap();
    let e = wait_event(
        &env,
        "the HTTPS record",
        dns_for("ech.example.test", "HTTPS"),
    );
    assert_eq!(e["AdditionalFields"]["ech_config"], true, "{e}");
    assert!(
        e["AdditionalFields"]["answers"][0]
            .as_str()
            .unwrap()
            .contains("alpn=h3,h2"),
        "{e}"
    );
    dig(ns, server, "plain.example.test", "HTTPS").unwrap();
    let e = wait_event(
        &env,
        "the plain HTTPS record",
        dns_for("plain.example.test", "HTTPS"),
    );
    assert_eq!(e["AdditionalFields"]["ech_config"], false, "{e}");

    let nx = dig(ns, server, "nothing.example.test", "A").unwrap();
    assert_eq!(nx.status, "NXDOMAIN");
    let e = wait_event(&env, "the NXDOMAIN", dns_for("nothing.example.test", "A"));
    assert_eq!(e["AdditionalFields"]["rcode"], "NXDOMAIN", "{e}");

    let stats = env.stats().unwrap();
    let p = &stats["pipeline"];
    assert_eq!(p["dns_queries"], 6, "{stats}");
    assert_eq!(p["dns_responses"], 6, "{stats}");
    assert_eq!(p["dns_malformed"], 0, "{stats}");
    assert!(
        stats["kernel"]["dns_captured"].as_u64() >= Some(12),
        "{stats}"
    );
}

/// A TCP flow to an address the client resolved a moment before (here a bare connect that
/// sends nothing, as SSH's server speaks first) carries the name, marked derived; a flow
/// to an address nobody resolved does not.
#[test]
fn a_flow_to_a_resolved_address_carries_its_name() {
    let (env, resolver) = start();
    let ns = env.client_ns();
    dig(ns, resolver.addr, "ssh.example.test", "AAAA").unwrap();
    wait_event(&env, "the lookup", dns_for("ssh.example.test", "AAAA"));
    for v6 in [true, false] {
        connect(&env, env.server_ip(v6), 80);
    }
    let named = wait_event(&env, "the named connection", |e| {
        ev::is(e, "ConnectionSuccess") && e["RemoteIP"] == env.server_ip(true).to_string()
    });
    let f = &named["AdditionalFields"];
    assert_eq!(f["dns_name"], "ssh.example.test", "{named}");
    assert_eq!(f["dns_derived"], true, "{named}");
    assert_eq!(named["RemoteUrl"], "ssh.example.test", "{named}");
    // Only the AAAA was asked for: the IPv4 flow has no name.
    let unnamed = wait_event(&env, "the unnamed connection", |e| {
        ev::is(e, "ConnectionSuccess") && e["RemoteIP"] == env.server_ip(false).to_string()
    });
    assert!(
        unnamed["AdditionalFields"].get("dns_name").is_none(),
        "{unnamed}"
    );
    assert!(
        unnamed.get("RemoteUrl").is_none_or(Value::is_null),
        "{unnamed}"
    );
    let stats = env.stats().unwrap();
    assert_eq!(stats["pipeline"]["dns_named_flows"], 1, "{stats}");
}

/// Opens a TCP connection from the client namespace and closes it without sending.
fn connect(env: &Env, addr: IpAddr, port: u16) {
    let out = nprot_tests::netns::netns_cmd(env.client_ns(), nprot_tests::clients::python3())
        .args([
            "-c",
            "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 3); s.close()",
        ])
        .arg(addr.to_string())
        .arg(port.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "connect to {addr}:{port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
