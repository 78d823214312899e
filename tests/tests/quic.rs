//! QUIC: the sensor reads HTTP/3 ClientHellos out of QUIC Initials, from real clients
//! (aioquic, Chromium) to a real aioquic HTTP/3 server, and in block mode a blocked name
//! gets no answer over UDP. `quic = "block"` refuses QUIC altogether.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{collections::BTreeSet, process::Command, time::Duration};

use nprot_tests::{
    BLOCKED, ClientServer, Env,
    events::ev,
    frames::Tcpdump,
    indicators::indicator,
    nginx::QUIC_HOST,
    process::run_with_timeout,
    quic::{
        ChromiumOpts, ClientOpts, QuicReply, QuicServer, QuicVersion, ServerOpts, chromium_load,
        marker, quic_get,
    },
    sensor::sensor_binary,
    wait_event,
};
use serde_json::Value;

const ALLOWED: &str = QUIC_HOST;
const BLOCKED_NAME: &str = "blocked.quic.example";
const AUDITED: &str = "ExploitGuardNetworkProtectionAudited";

/// The environment (no sensor yet) and an HTTP/3 server on both server addresses with
/// `opts`, serving nginx's certificate of [`QUIC_HOST`] (which Chromium pins) for it and
/// every other name.
fn with_server(opts: &ServerOpts) -> (Env, QuicServer) {
    let env = Env::start_without_sensor().expect("test environment");
    let nginx = env.nginx.as_ref().expect("nginx");
    let server = QuicServer::start(
        env.server_ns(),
        &[env.server_ip(false), env.server_ip(true)],
        nginx.cert_dir(),
        &[QUIC_HOST],
        opts,
    )
    .expect("HTTP/3 server");
    (env, server)
}

/// A Block on [`BLOCKED_NAME`].
fn block_blocked_name() -> Value {
    indicator("q", "DomainName", BLOCKED_NAME, "Block")
}

/// [`with_server`], and the sensor in `mode` with `args` and [`block_blocked_name`].
fn start(mode: &str, args: &[&str]) -> (Env, QuicServer) {
    let (mut env, server) = with_server(&ServerOpts::default());
    env.enforce(mode, &[block_blocked_name()], args)
        .expect("sensor");
    (env, server)
}

/// Starts the sensor with a config file of `text`.
fn start_with_config(env: &mut Env, text: &str) {
    let config = env.dir().join("nprot.toml");
    std::fs::write(&config, text).expect("config");
    env.start_sensor(&["--config", &config.to_string_lossy()])
        .expect("sensor");
}

fn get(env: &Env, name: &str, v6: bool, opts: &ClientOpts) -> QuicReply {
    quic_get(&env.topo.client_ns, env.topo.server_ip(v6), name, opts).expect("quic client")
}

fn quick() -> ClientOpts {
    ClientOpts {
        timeout: Duration::from_secs(3),
        ..ClientOpts::default()
    }
}

fn ssl_udp_for(name: &'static str) -> impl Fn(&Value) -> bool {
    move |e: &Value| {
        ev::is(e, "SslConnectionInspected")
            && e["Protocol"] == "Udp"
            && e["AdditionalFields"]["server_name"] == name
    }
}

#[test]
fn an_allowed_http3_request_is_inspected_and_answered() {
    let (env, server) = start("block", &[]);
    for v6 in [false, true] {
        let reply = get(&env, ALLOWED, v6, &quick())
            .response()
            .expect("an answer");
        assert_eq!(reply.status, 200);
        assert!(reply.body.contains(&marker(ALLOWED)), "{}", reply.body);
    }
    let e = wait_event(&env, "the QUIC ClientHello", ssl_udp_for(ALLOWED));
    let f = &e["AdditionalFields"];
    assert_eq!(f["quic_version"], "v1", "{e}");
    assert_eq!(f["alpn"][0], "h3", "{e}");
    assert_eq!(e["RemotePort"], 443, "{e}");
    let success = wait_event(&env, "the QUIC connection's success", |e| {
        ev::is(e, "ConnectionSuccess") && e["Protocol"] == "Udp"
    });
    assert_eq!(success["RemotePort"], 443, "{success}");
    assert!(
        server
            .requests()
            .unwrap()
            .iter()
            .all(|r| r.authority == ALLOWED),
        "only the allowed name was asked for"
    );
    let stats = env.stats().unwrap();
    let quic = &stats["quic"];
    assert!(quic["flows"].as_u64() >= Some(2), "{stats}");
    assert_eq!(quic["inspected"], quic["flows"], "{stats}");
    assert_eq!(quic["blocked"], 0, "{stats}");
}

#[test]
fn a_blocked_name_gets_no_answer_over_quic() {
    let (env, server) = start("block", &[]);
    for version in [None, Some(QuicVersion::V2)] {
        let opts = ClientOpts { version, ..quick() };
        match get(&env, BLOCKED_NAME, false, &opts) {
            QuicReply::NoAnswer(_) => {}
            other => panic!("a blocked name answered ({version:?}): {other:?}"),
        }
    }
    let blocked = wait_event(&env, "the Blocked event", |e| {
        ev::is(e, BLOCKED) && e["RemoteUrl"] == BLOCKED_NAME
    });
    assert_eq!(blocked["Protocol"], "Udp", "{blocked}");
    let v2 = wait_event(&env, "the v2 ClientHello", |e| {
        ssl_udp_for(BLOCKED_NAME)(e) && e["AdditionalFields"]["quic_version"] == "v2"
    });
    assert_eq!(v2["AdditionalFields"]["alpn"][0], "h3", "{v2}");
    // The server never got the request: its answer (and so the handshake) was held,
    // then dropped.
    assert!(
        server.requests().unwrap().is_empty(),
        "{:?}",
        server.requests()
    );
    let stats = env.stats().unwrap();
    assert!(stats["quic"]["blocked"].as_u64() >= Some(2), "{stats}");
    assert!(stats["quic"]["dropped"].as_u64() >= Some(2), "{stats}");
    // An allowed name still goes through afterwards.
    let reply = get(&env, ALLOWED, false, &quick())
        .response()
        .expect("an answer");
    assert_eq!(reply.status, 200);
}

#[test]
fn audit_mode_logs_a_blocked_name_and_lets_it_through() {
    let (env, server) = start("audit", &[]);
    let reply = get(&env, BLOCKED_NAME, false, &quick())
        .response()
        .expect("audit mode answers");
    assert_eq!(reply.status, 200);
    let audited = wait_event(&env, "the audited Block", |e| ev::is(e, AUDITED));
    assert_eq!(audited["RemoteUrl"], BLOCKED_NAME, "{audited}");
    assert_eq!(server.requests().unwrap().len(), 1);
}

#[test]
fn quic_block_refuses_every_initial() {
    let (mut env, _server) = with_server(&ServerOpts::default());
    start_with_config(&mut env, "mode = \"block\"\nquic = \"block\"\n");
    match get(&env, ALLOWED, false, &quick()) {
        QuicReply::NoAnswer(_) => {}
        other => panic!("QUIC went through with quic = block: {other:?}"),
    }
    let stats = env.stats().unwrap();
    assert!(stats["quic"]["refused"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["quic"]["flows"], 0, "{stats}");
}

/// The `:authority` of every request the server got, in order.
fn authorities(server: &QuicServer) -> Vec<String> {
    server
        .requests()
        .unwrap()
        .into_iter()
        .map(|r| r.authority)
        .collect()
}

/// Chromium forced to HTTP/3, pinning `server`'s certificate.
fn chromium_opts(server: &QuicServer) -> ChromiumOpts {
    ChromiumOpts {
        force_quic: true,
        spki: vec![server.cert.spki.clone()],
        timeout: Duration::from_secs(25),
        ..ChromiumOpts::default()
    }
}

/// The SNIs of the `SslConnectionInspected` events over UDP in `events`.
fn quic_snis(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| ev::is(e, "SslConnectionInspected") && e["Protocol"] == "Udp")
        .filter_map(|e| {
            e["AdditionalFields"]["server_name"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Chromium, forced to HTTP/3: an allowed page loads over QUIC and is reported; a blocked
/// one does not load (no answer over QUIC, and no TCP fallback when forced) and is
/// reported Blocked. A recording of both loads, replayed, names the same SNIs.
#[test]
fn chromium_loads_an_allowed_page_over_http3_and_not_a_blocked_one() {
    const CHROMIUM_BLOCKED: &str = BLOCKED_NAME;
    let (mut env, server) = with_server(&ServerOpts::default());
    let indicators = [block_blocked_name()];
    env.enforce("block", &indicators, &[]).expect("sensor");
    let pcap = env.dir().join("chromium.pcap");
    let mut dump = Tcpdump::start(
        env.client_ns(),
        &pcap,
        &["-i", &env.topo.client_if, "udp", "port", "443"],
    )
    .expect("tcpdump");
    let opts = chromium_opts(&server);
    let load = |name: &str| {
        chromium_load(
            env.client_ns(),
            env.server_ip(false),
            name,
            env.dir(),
            &opts,
        )
        .expect("chromium")
    };

    let allowed = load(QUIC_HOST);
    assert!(allowed.has(&marker(QUIC_HOST)), "{allowed:?}");
    wait_event(&env, "Chromium's QUIC ClientHello", ssl_udp_for(QUIC_HOST));

    let blocked = load(CHROMIUM_BLOCKED);
    eprintln!(
        "Chromium, blocked over QUIC: {:?} after {:?}",
        blocked.net_error(),
        blocked.elapsed
    );
    assert!(!blocked.dom.contains("<p id=\"proto\">"), "{blocked:?}");
    assert!(blocked.net_error().is_some(), "{}", blocked.stderr);
    let event = wait_event(&env, "the Blocked event", |e| {
        ev::is(e, BLOCKED) && e["RemoteUrl"] == CHROMIUM_BLOCKED
    });
    assert_eq!(event["Protocol"], "Udp", "{event}");
    let asked = authorities(&server);
    assert!(
        asked.iter().all(|a| a == QUIC_HOST) && !asked.is_empty(),
        "{asked:?}"
    );
    dump.stop().expect("tcpdump stop");

    let live = quic_snis(&env.events().events().expect("events"));
    assert_eq!(
        live,
        [QUIC_HOST.to_owned(), CHROMIUM_BLOCKED.to_owned()].into(),
        "live"
    );
    let file = nprot_tests::indicators::write_file(env.dir(), "replay.json", &indicators)
        .expect("indicators");
    let out = run_with_timeout(
        Command::new(sensor_binary().unwrap())
            .arg("replay")
            .arg(&pcap)
            .arg("--indicators")
            .arg(&file)
            .args(["--mode", "block"]),
        Duration::from_secs(30),
    )
    .expect("nprot replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let replayed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(quic_snis(&replayed), live, "replay: {stderr}");
    assert!(
        replayed
            .iter()
            .any(|e| ev::is(e, BLOCKED) && e["RemoteUrl"] == CHROMIUM_BLOCKED),
        "{stderr}"
    );
}

/// `quic = "block"`: Chromium forced to HTTP/3 gets nowhere (its Initials are dropped and
/// counted, the server never asked), and the same page loads over TCP, where it is
/// inspected. (Chromium forced to QUIC never falls back by itself, and unforced it only
/// takes QUIC from an Alt-Svc with a publicly trusted certificate: see tests/README.md.)
#[test]
fn quic_block_leaves_chromium_the_tcp_path() {
    let (mut env, server) = with_server(&ServerOpts::default());
    start_with_config(&mut env, "mode = \"block\"\nquic = \"block\"\n");
    let mut opts = chromium_opts(&server);
    let load = |opts: &ChromiumOpts| {
        chromium_load(
            env.client_ns(),
            env.server_ip(false),
            QUIC_HOST,
            env.dir(),
            opts,
        )
        .expect("chromium")
    };
    let forced = load(&opts);
    eprintln!(
        "Chromium, QUIC refused: {:?} after {:?}",
        forced.net_error(),
        forced.elapsed
    );
    assert!(!forced.has(&marker(QUIC_HOST)), "{forced:?}");
    assert!(server.requests().unwrap().is_empty());
    let stats = env.stats().unwrap();
    assert!(stats["quic"]["refused"].as_u64() >= Some(1), "{stats}");

    opts.force_quic = false;
    let over_tcp = load(&opts);
    assert!(over_tcp.net_error().is_none(), "{}", over_tcp.stderr);
    assert!(!over_tcp.dom.is_empty(), "{over_tcp:?}");
    let e = wait_event(&env, "the TLS ClientHello over TCP", |e| {
        ev::is(e, "SslConnectionInspected")
            && e["Protocol"] == "Tcp"
            && e["AdditionalFields"]["server_name"] == QUIC_HOST
    });
    assert_eq!(e["RemotePort"], 443, "{e}");
}

/// A server that first answers with a Retry: the client's second Initial (new DCID, new
/// keys, the ClientHello again) belongs to the same flow, which is judged once.
#[test]
fn a_retry_keeps_one_judged_flow() {
    let (mut env, server) = with_server(&ServerOpts {
        retry: true,
        ..ServerOpts::default()
    });
    env.enforce("block", &[block_blocked_name()], &[])
        .expect("sensor");
    let reply = get(&env, ALLOWED, false, &quick())
        .response()
        .expect("an answer");
    assert_eq!(reply.status, 200);
    match get(&env, BLOCKED_NAME, false, &quick()) {
        QuicReply::NoAnswer(_) => {}
        other => panic!("a blocked name answered after a Retry: {other:?}"),
    }
    wait_event(&env, "the Blocked event", |e| {
        ev::is(e, BLOCKED) && e["RemoteUrl"] == BLOCKED_NAME
    });
    let inspected: Vec<Value> = env
        .events()
        .events()
        .unwrap()
        .into_iter()
        .filter(|e| ssl_udp_for(ALLOWED)(e))
        .collect();
    assert_eq!(inspected.len(), 1, "{inspected:?}");
    assert_eq!(server.requests().unwrap().len(), 1);
}

/// Sends `count` datagrams of garbage dressed as v1 client Initials (and a version
/// negotiation, a v1 Retry, an unknown version and a truncated header) from the client
/// namespace: the daemon counts each flow invalid and keeps running.
const GARBAGE_PY: &str = r#"
import os, socket, sys
dst, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
def send(payload):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.sendto(payload, (dst, port))
    s.close()
for i in range(count):
    dcid = os.urandom(8)
    body = bytes([0xc3]) + (1).to_bytes(4, "big") + bytes([8]) + dcid + bytes([0, 0])
    # Length varint claiming more than there is, then noise.
    body += bytes([0x7f, 0xff]) + os.urandom(1250 - len(body) - 2)
    send(body)
send(bytes([0xc0]) + bytes(4) + bytes([8]) + os.urandom(8) + bytes([0]) + os.urandom(1200))
send(bytes([0xf0]) + (1).to_bytes(4, "big") + bytes([8]) + os.urandom(1220))
send(bytes([0xc0]) + bytes.fromhex("0a0a0a0a") + bytes([8]) + os.urandom(1220))
send(bytes([0xc0, 0, 0, 0, 1, 30]) + os.urandom(1220))
print("sent")
"#;

#[test]
fn garbled_initials_are_counted_and_never_stop_the_sensor() {
    let (env, _server) = start("block", &[]);
    let out = nprot_tests::netns::netns_cmd(&env.topo.client_ns, nprot_tests::clients::python3())
        .args(["-c", GARBAGE_PY])
        .arg(env.topo.server_ip(false).to_string())
        .args(["443", "20"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = env
        .wait_stats(
            |s| s["quic"]["invalid"].as_u64() >= Some(20),
            Duration::from_secs(10),
        )
        .unwrap();
    let quic = &stats["quic"];
    assert_eq!(quic["invalid"], 20, "{stats}");
    // Only the 20 dressed as v1 Initials opened flows; the rest are not Initials a
    // server takes (the version negotiation, the Retry, the unknown version, the
    // connection ID too long).
    assert_eq!(quic["flows"], 20, "{stats}");
    assert_eq!(quic["inspected"], 0, "{stats}");
    // Still inspecting.
    let reply = get(&env, ALLOWED, false, &quick())
        .response()
        .expect("an answer");
    assert_eq!(reply.status, 200);
    wait_event(
        &env,
        "the ClientHello after the garbage",
        ssl_udp_for(ALLOWED),
    );
}

/// A gateway guarding its client side: forwarded QUIC flows are judged and a blocked
/// name's datagrams are dropped in the router, over IPv4 and IPv6.
#[test]
fn a_gateway_judges_forwarded_quic() {
    let mut env = nprot_tests::GatewayEnv::start_without_sensor().expect("gateway environment");
    let server = QuicServer::start(
        &env.net.server_ns,
        &[env.server_ip(false), env.server_ip(true)],
        env.dir(),
        &[ALLOWED, BLOCKED_NAME],
        &ServerOpts::default(),
    )
    .expect("HTTP/3 server");
    let guarded = env.net.router_client_if.clone();
    env.enforce("block", &[block_blocked_name()], &[&guarded], &[])
        .expect("sensor in the router");
    for v6 in [false, true] {
        let addr = env.server_ip(v6);
        let reply = quic_get(&env.net.client_ns, addr, ALLOWED, &quick())
            .unwrap()
            .response()
            .expect("an answer through the router");
        assert_eq!(reply.status, 200);
        match quic_get(&env.net.client_ns, addr, BLOCKED_NAME, &quick()).unwrap() {
            QuicReply::NoAnswer(_) => {}
            other => panic!("a blocked name answered through the router: {other:?}"),
        }
    }
    let events = env.events();
    let blocked = events
        .wait_for(
            |e| {
                ev::is(e, BLOCKED)
                    && e["RemoteUrl"] == BLOCKED_NAME
                    && e["RemoteIP"] == env.server_ip(true).to_string()
            },
            Duration::from_secs(5),
        )
        .expect("the Blocked event over IPv6");
    assert_eq!(
        blocked["AdditionalFields"]["direction"], "Forwarded",
        "{blocked}"
    );
    let asked = authorities(&server);
    assert_eq!(asked, [ALLOWED, ALLOWED], "{asked:?}");
}

/// An L3-only device (TUN, packets start at the IP header): QUIC over it is judged and a
/// blocked name dropped, as on Ethernet.
#[test]
fn quic_over_an_l3_only_device_is_judged() {
    let mut env = Env::start_without_sensor().expect("test environment");
    let tun = env.start_tunnel().expect("TUN tunnel");
    let server = QuicServer::start(
        &env.topo.server_ns,
        &[tun.server_ip()],
        env.dir(),
        &[ALLOWED, BLOCKED_NAME],
        &ServerOpts::default(),
    )
    .expect("HTTP/3 server on the tunnel address");
    env.enforce_on("block", &[block_blocked_name()], &[&tun.client_dev], &[])
        .expect("sensor on the tunnel");
    let reply = quic_get(&tun.client_ns, tun.server_ip(), ALLOWED, &quick())
        .unwrap()
        .response()
        .expect("an answer over the tunnel");
    assert_eq!(reply.status, 200);
    wait_event(
        &env,
        "the ClientHello over the tunnel",
        ssl_udp_for(ALLOWED),
    );
    match quic_get(&tun.client_ns, tun.server_ip(), BLOCKED_NAME, &quick()).unwrap() {
        QuicReply::NoAnswer(_) => {}
        other => panic!("a blocked name answered over the tunnel: {other:?}"),
    }
    wait_event(&env, "the Blocked event over the tunnel", |e| {
        ev::is(e, BLOCKED) && e["RemoteUrl"] == BLOCKED_NAME
    });
    assert_eq!(server.requests().unwrap().len(), 1);
}
