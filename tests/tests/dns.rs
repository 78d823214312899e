//! DNS: lookups through a real resolver (dnsmasq in the server namespace, dig in the
//! client's) are reported as `DnsConnectionInspected`, and a flow to an address the
//! client just resolved carries the name (`dns_name`, marked derived).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::IpAddr;

use nprot::datapath::parse::testdata::ech_config_list;
use nprot_tests::{
    ClientServer, Env,
    dns::{Dnsmasq, NamespaceResolver, Record, dig, dig_tcp},
    events::ev,
    indicators::{indicator, write_file},
    quic::{ChromiumOpts, chromium_load},
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
    let (mut env, resolver) = start_resolver();
    env.start_sensor(&["--mode", "audit"]).expect("sensor");
    (env, resolver)
}

/// The sensor in block mode with `config` (TOML) and Block indicators on `blocked`.
fn start_blocking(config: &str, blocked: &[&str]) -> (Env, Dnsmasq) {
    let (mut env, resolver) = start_resolver();
    let indicators: Vec<Value> = blocked
        .iter()
        .enumerate()
        .map(|(i, name)| indicator(&format!("b{i}"), "DomainName", name, "Block"))
        .collect();
    let file = write_file(env.dir(), "indicators.json", &indicators).expect("indicators");
    let conf = env.dir().join("nprot.toml");
    std::fs::write(&conf, format!("mode = \"block\"\n{config}")).expect("config");
    env.start_sensor(&[
        "--config",
        &conf.to_string_lossy(),
        "--indicators",
        &file.to_string_lossy(),
    ])
    .expect("sensor");
    (env, resolver)
}

/// dnsmasq on the server's IPv4 address, the sensor not started yet.
fn start_resolver() -> (Env, Dnsmasq) {
    let env = Env::start_without_sensor().expect("test environment");
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
        Record::Host {
            name: "plain.example.test".into(),
            addrs: vec![server],
            ttl: 60,
        },
        Record::Host {
            name: "secret.example.test".into(),
            addrs: vec![server],
            ttl: 60,
        },
        Record::Raw {
            name: "secret.example.test".into(),
            rtype: 65,
            rdata: {
                // priority 1, target ".", ech = the list.
                let list = ech_config_list(0xfe0d, "cover.example.test");
                let mut rdata = vec![0, 1, 0, 0, 5];
                rdata.extend_from_slice(&(list.len() as u16).to_be_bytes());
                rdata.extend_from_slice(&list);
                rdata
            },
        },
        Record::Host {
            name: "www.blocked.example.test".into(),
            addrs: vec![server],
            ttl: 60,
        },
    ];
    let resolver = Dnsmasq::start(env.server_ns(), server, &records, env.dir()).expect("dnsmasq");
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

/// A server on port 2222 (both families) that exchanges SSH banners and closes:
/// `server_first` sends its banner before reading the client's (as sshd does), else it
/// answers the client's.
fn banner_server(env: &Env, server_first: bool) -> std::process::Child {
    let child = nprot_tests::netns::netns_cmd(env.server_ns(), nprot_tests::clients::python3())
        .args([
            "-c",
            &format!(
                "FIRST = {}\n{SERVER}",
                if server_first { "True" } else { "False" }
            ),
        ])
        .spawn()
        .expect("python3 server");
    nprot_tests::netns::wait_tcp_ready_in(
        env.server_ns(),
        &[std::net::SocketAddr::new(env.server_ip(false), 2222)],
        std::time::Duration::from_secs(5),
    )
    .expect("banner server ready");
    child
}

/// The banner server's code, after `FIRST = True|False`.
const SERVER: &str = r"
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(('::', 2222))
s.listen(16)
while True:
    c, _ = s.accept()
    c.settimeout(3)
    try:
        if FIRST:
            c.sendall(b'SSH-2.0-nprot-test\r\n')
        c.recv(256)
        if not FIRST:
            c.sendall(b'SSH-2.0-nprot-test\r\n')
        c.recv(4096)
    except OSError:
        pass
    c.close()
";

/// `ssh` from the client namespace to `name` (an address, or a name the namespace
/// resolves) on port 2222; its stderr.
fn ssh(env: &Env, name: &str) -> String {
    let out = nprot_tests::netns::netns_cmd(env.client_ns(), "ssh")
        .args([
            "-4",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            "-p",
            "2222",
        ])
        .arg(format!("nobody@{name}"))
        .arg("true")
        .output()
        .expect("ssh");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A client that reads first (as an SMTP or FTP client does) from `name` (an address, or
/// a name the namespace resolves) port 2222, then answers; what went wrong, if anything.
fn listener(env: &Env, name: &str) -> String {
    let out = nprot_tests::netns::netns_cmd(env.client_ns(), nprot_tests::clients::python3())
        .args([
            "-c",
            r"
import socket, sys
addr = socket.getaddrinfo(sys.argv[1], 2222, socket.AF_INET, socket.SOCK_STREAM)[0][4]
s = socket.create_connection(addr, 3)
s.settimeout(3)
try:
    banner = s.recv(256)
    s.sendall(b'SSH-2.0-reader\r\n')
    print('got', banner, file=sys.stderr)
except ConnectionResetError:
    print('connection reset', file=sys.stderr)
",
            name,
        ])
        .output()
        .expect("python3 client");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A flow to a name its client resolved before the name was blocked (the client keeps
/// the address; a fresh lookup now gets NXDOMAIN from the kernel), by a protocol no parser
/// knows (`ssh`, or one whose server speaks first): with `dns_names = "enforce"` the
/// Block resets it, whichever side speaks first; with `log` it only carries the name.
#[test]
fn an_ssh_flow_is_judged_by_its_dns_name_only_with_enforce() {
    for (setting, blocked, server_first) in [
        ("enforce", true, true),
        ("enforce", true, false),
        ("log", false, true),
    ] {
        let (env, resolver) = start_blocking(&format!("dns_names = \"{setting}\"\n"), &[]);
        let ns = env.client_ns();
        let a = dig(ns, resolver.addr, "ssh.example.test", "A").unwrap();
        assert_eq!(a.status, "NOERROR", "{a:?}");
        wait_event(&env, "the lookup", dns_for("ssh.example.test", "A"));
        add_block(&env, "b0", "ssh.example.test");
        let again = dig(ns, resolver.addr, "ssh.example.test", "A").unwrap();
        assert_eq!(again.status, "NXDOMAIN", "blocked from now on: {again:?}");
        let target = env.server_ip(false).to_string();
        let mut server = banner_server(&env, server_first);
        let stderr = if server_first {
            listener(&env, &target)
        } else {
            ssh(&env, &target)
        };
        let _ = server.kill();
        let _ = server.wait();
        let stats = env.stats().unwrap();
        let p = &stats["pipeline"];
        assert!(
            p["unnamed_judged"].as_u64() >= Some(1),
            "{setting}: {stderr}\n{stats}"
        );
        if blocked {
            assert!(
                stderr.contains("reset"),
                "{setting}: the client said {stderr}"
            );
            let e = wait_event(&env, "the block", |e| {
                ev::is(e, "ExploitGuardNetworkProtectionBlocked")
                    && e["RemoteUrl"] == "ssh.example.test"
                    && e["RemotePort"] == 2222
            });
            assert_eq!(e["AdditionalFields"]["IndicatorId"], "b0", "{e}");
            assert_eq!(p["dns_name_judged"], 1, "{stats}");
            if server_first {
                assert_eq!(p["server_first"], 1, "{stats}");
                assert_eq!(stats["kernel"]["flows_server_first"], 1, "{stats}");
            }
        } else {
            assert!(
                !stderr.contains("reset"),
                "{setting}: the client said {stderr}"
            );
            assert!(stderr.contains("nprot-test"), "{stderr}");
            let e = wait_event(&env, "the named connection", |e| {
                ev::is(e, "ConnectionSuccess") && e["RemotePort"] == 2222
            });
            assert_eq!(e["AdditionalFields"]["dns_name"], "ssh.example.test", "{e}");
            let tcp_blocks = env
                .events()
                .events()
                .unwrap()
                .iter()
                .filter(|e| ev::is(e, "ExploitGuardNetworkProtectionBlocked"))
                .filter(|e| e["Protocol"] == "Tcp")
                .count();
            assert_eq!(tcp_blocks, 0, "log only: no TCP flow blocked");
        }
    }
}

/// `nprot indicator add` of a Block on `name` through the sensor's control socket.
fn add_block(env: &Env, id: &str, name: &str) {
    let out = std::process::Command::new(nprot_tests::sensor::sensor_binary().unwrap())
        .args([
            "indicator",
            "add",
            "--type",
            "DomainName",
            "--value",
            name,
            "--action",
            "Block",
            "--id",
            id,
            "--socket",
        ])
        .arg(nprot_tests::sensor::control_socket_for(env.events().path()))
        .output()
        .expect("nprot indicator add");
    assert!(
        out.status.success(),
        "nprot indicator add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// DNS over TCP (`dig +tcp`): each query is reported with `Protocol` `Tcp`, and a
/// blocked name resets the lookup's connection at once.
#[test]
fn dns_over_tcp_is_reported_and_a_blocked_lookup_reset() {
    let (env, resolver) = start_blocking("", &["blocked.example.test"]);
    let ns = env.client_ns();
    let ok = dig_tcp(ns, resolver.addr, "cdn.example.test", "A").unwrap();
    assert_eq!(ok.status, "OK", "{ok:?}");
    assert_eq!(ok.answers, [resolver.addr.to_string()], "{ok:?}");
    let e = wait_event(&env, "the TCP lookup", |e| {
        dns_for("cdn.example.test", "A")(e) && e["Protocol"] == "Tcp"
    });
    assert!(e["AdditionalFields"]["rcode"].is_null(), "{e}");
    let started = std::time::Instant::now();
    let blocked = dig_tcp(ns, resolver.addr, "www.blocked.example.test", "A").unwrap();
    let took = started.elapsed();
    assert!(blocked.status.contains("connection reset"), "{blocked:?}");
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    let e = wait_event(&env, "the blocked TCP lookup", |e| {
        ev::is(e, "ExploitGuardNetworkProtectionBlocked")
            && e["RemoteUrl"] == "www.blocked.example.test"
    });
    assert_eq!(e["Protocol"], "Tcp", "{e}");
    let stats = env.stats().unwrap();
    assert_eq!(stats["pipeline"]["dns_tcp_queries"], 2, "{stats}");
}

/// Chromium sends an ECH extension to every site (GREASE): to a plain site `ech` is
/// `grease_or_real`; to a name whose HTTPS record the client fetched with an ECH
/// configuration it is `real`, and `ech = "block"` resets only that one.
#[test]
fn chromium_ech_is_real_only_with_evidence_and_only_real_ech_is_blocked() {
    let (env, resolver) = start_blocking("ech = \"block\"\n", &[]);
    let ns = env.client_ns();
    let _resolv = NamespaceResolver::set(ns, resolver.addr).unwrap();
    let opts = ChromiumOpts {
        force_quic: false,
        system_resolver: true,
        timeout: std::time::Duration::from_secs(20),
        ..ChromiumOpts::default()
    };
    let server = env.server_ip(false);
    chromium_load(ns, server, "plain.example.test", env.dir(), &opts).unwrap();
    let plain = wait_event(&env, "Chromium's ClientHello to the plain site", |e| {
        ev::is(e, "SslConnectionInspected") && e["RemoteUrl"] == "plain.example.test"
    });
    assert_eq!(
        plain["AdditionalFields"]["ech"], "grease_or_real",
        "{plain}"
    );

    let https = dig(ns, resolver.addr, "secret.example.test", "HTTPS").unwrap();
    assert_eq!(https.status, "NOERROR", "{https:?}");
    wait_event(
        &env,
        "the HTTPS record",
        dns_for("secret.example.test", "HTTPS"),
    );
    chromium_load(ns, server, "secret.example.test", env.dir(), &opts).unwrap();
    let secret = wait_event(&env, "Chromium's ClientHello to the ECH site", |e| {
        ev::is(e, "SslConnectionInspected") && e["AdditionalFields"]["ech"] == "real"
    });
    let f = &secret["AdditionalFields"];
    assert_eq!(f["ech_evidence"], "dns_https_record", "{secret}");
    assert_eq!(f["dns_name"], "secret.example.test", "{secret}");
    let blocked = wait_event(&env, "the ECH block", |e| {
        ev::is(e, "ExploitGuardNetworkProtectionBlocked")
    });
    assert_eq!(
        blocked["AdditionalFields"]["ResponseCategory"], "EncryptedClientHello",
        "{blocked}"
    );
    let events = env.events().events().unwrap();
    let blocks = events
        .iter()
        .filter(|e| ev::is(e, "ExploitGuardNetworkProtectionBlocked"))
        .filter(|e| e["RemoteUrl"] == "plain.example.test")
        .count();
    assert_eq!(blocks, 0, "the plain site was not blocked");
    let stats = env.stats().unwrap();
    assert!(
        stats["pipeline"]["ech_blocked"].as_u64() >= Some(1),
        "{stats}"
    );
}
