//! End-to-end tests of the sensor on other topologies than "client host with one veth":
//! a gateway that forwards the flows it guards (client ↔ router ↔ server), an L3-only
//! device (TUN: packets start at the IP header), and one sensor guarding two interfaces
//! at once.
//!
//! Run as root, serially: `cargo xtask test` (or
//! `cargo test -p nprot-tests --test topologies -- --test-threads=1`).
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use nprot_tests::{
    Barrier, ClientServer, ConnEnd, ConnRecord, ConnRecorder, CurlRun, EVENT_TIMEOUT, Env,
    EventLog, GatewayEnv, TunnelLink, Value, assert_absent_so_far, assert_reset, clients, ev,
    indicators::{indicator, with},
    netns::link_type,
    nginx::{BODY_BAD, BODY_GOOD},
    recorder::RECORDER_BODY,
};

const BLOCKED: &str = "ExploitGuardNetworkProtectionBlocked";
const AUDITED: &str = "ExploitGuardNetworkProtectionAudited";
/// Port of the [`ConnRecorder`] (nginx has 80, 443, 8080 and 8443).
const RECORDER_PORT: u16 = 8081;
/// A recorder connection with nothing happening for this long is recorded as still open.
const RECORDER_LINGER: Duration = Duration::from_secs(3);
/// The server must see a blocked connection reset within this time: a held server
/// packet is retransmitted after one RTO (≥ 200 ms) and then reset, so 2 s is ample.
const SERVER_RESET_WITHIN: Duration = Duration::from_secs(2);
/// ARPHRD types the sensor runs its Ethernet variant on (DESIGN / decisions.md).
const ETHERNET_KINDS: [u32; 2] = [1, 772];

/// `bad.example` → Block, titled.
fn block_bad_example() -> Value {
    with(
        indicator("i1", "DomainName", "bad.example", "Block"),
        "title",
        "Bad site",
    )
}

/// Waits for an event matching `pred`; panics with every event and the sensor's stderr.
fn wait(events: &EventLog, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    events
        .wait_for_described(what, pred, EVENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The value at `key` (a JSON pointer if it starts with `/`).
fn get<'a>(event: &'a Value, key: &str) -> &'a Value {
    if key.starts_with('/') {
        event.pointer(key).unwrap_or(&Value::Null)
    } else {
        &event[key]
    }
}

/// Asserts `event[key] == expected`, showing the event and everything logged otherwise.
#[track_caller]
fn check<T>(events: &EventLog, event: &Value, key: &str, expected: T)
where
    Value: PartialEq<T>,
    T: std::fmt::Debug,
{
    let actual = get(event, key);
    assert!(
        *actual == expected,
        "{key}: expected {expected:?}, got {actual}\nevent: {event}\n{}",
        events.dump()
    );
}

/// An event of type `action` of the flow whose client port is `client_port`, whichever
/// side the sensor calls local.
fn flow_event(action: &str, client_port: u16) -> impl Fn(&Value) -> bool + '_ {
    move |e| {
        ev::is(e, action) && (ev::local_port(e, client_port) || ev::remote_port(e, client_port))
    }
}

/// Any verdict event (blocked or audited) of the flow from `client_port`.
fn verdict_for(client_port: u16) -> impl Fn(&Value) -> bool {
    move |e| {
        (ev::is(e, BLOCKED) || ev::is(e, AUDITED))
            && (ev::local_port(e, client_port) || ev::remote_port(e, client_port))
    }
}

/// The endpoints of a flow as an event must report them.
struct Sides {
    local_ip: IpAddr,
    local_port: u16,
    remote_ip: IpAddr,
    remote_port: u16,
    direction: &'static str,
}

impl Sides {
    /// A flow the sensor's host originates: the client is local (`Outbound`).
    fn outbound(client: SocketAddr, server: SocketAddr) -> Sides {
        Sides {
            local_ip: client.ip(),
            local_port: client.port(),
            remote_ip: server.ip(),
            remote_port: server.port(),
            direction: "Outbound",
        }
    }

    /// A flow routed through the sensor's host (its SYN came in through an ingress hook
    /// and was for neither of the host's addresses): the client is reported local, the
    /// server remote, and the direction is `Forwarded` (docs/decisions.md).
    fn syn_on_ingress(client: SocketAddr, server: SocketAddr) -> Sides {
        Sides {
            local_ip: client.ip(),
            local_port: client.port(),
            remote_ip: server.ip(),
            remote_port: server.port(),
            direction: "Forwarded",
        }
    }
}

/// Checks the endpoint fields and the direction of a flow or verdict event.
#[track_caller]
fn check_sides(events: &EventLog, event: &Value, sides: &Sides) {
    check(events, event, "LocalIP", sides.local_ip.to_string());
    check(events, event, "LocalPort", sides.local_port);
    check(events, event, "RemoteIP", sides.remote_ip.to_string());
    check(events, event, "RemotePort", sides.remote_port);
    check(events, event, "Protocol", "Tcp");
    check(
        events,
        event,
        "/AdditionalFields/direction",
        sides.direction,
    );
}

/// Checks the ExploitGuardNetworkProtectionBlocked event for `bad.example` (indicator i1).
#[track_caller]
fn check_blocked(events: &EventLog, event: &Value, sides: &Sides, url: &str) {
    check(events, event, "Table", "DeviceEvents");
    check_sides(events, event, sides);
    check(events, event, "RemoteUrl", url);
    check(
        events,
        event,
        "/AdditionalFields/ResponseCategory",
        "CustomBlockList",
    );
    check(events, event, "/AdditionalFields/IsAudit", false);
    check(events, event, "/AdditionalFields/IndicatorId", "i1");
    check(
        events,
        event,
        "/AdditionalFields/IndicatorValue",
        "bad.example",
    );
    check(events, event, "/AdditionalFields/Action", "Block");
    check(events, event, "/AdditionalFields/DisplayName", "Bad site");
    check(events, event, "/AdditionalFields/Mode", "Block");
}

/// Asserts that curl succeeded with status 200 and `body`.
#[track_caller]
fn assert_ok(diagnostics: &str, what: &str, r: &CurlRun, body: &str) {
    assert!(
        r.exit_code == Some(0) && r.http_code == 200 && r.body.trim() == body,
        "{what}: expected 200 with body {body:?}; got {r:?}\n{diagnostics}"
    );
}

/// Waits for the recorder's record of the connection from `client_port` and asserts that
/// the server's connection ended in a reset within [`SERVER_RESET_WITHIN`] of its accept.
/// (Whether the application read the request first is a race: the server's ACK of the
/// request can be the packet that the sensor resets, before the application reads.)
#[track_caller]
fn assert_server_saw_reset(
    recorder: &ConnRecorder,
    diagnostics: impl Fn() -> String,
    what: &str,
    client_port: u16,
) -> ConnRecord {
    let rec = recorder
        .wait_for(client_port, RECORDER_LINGER + Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", diagnostics()));
    assert!(
        rec.end == ConnEnd::Reset && rec.after <= SERVER_RESET_WITHIN,
        "{what}: the server's connection should have been reset within \
         {SERVER_RESET_WITHIN:?}; it recorded {rec:?}\n{}",
        diagnostics()
    );
    rec
}

/// Waits for the recorder's record of an allowed connection: request received, response
/// sent, and the client closed normally.
#[track_caller]
fn assert_server_saw_eof(
    recorder: &ConnRecorder,
    diagnostics: impl Fn() -> String,
    what: &str,
    client_port: u16,
) {
    let rec = recorder
        .wait_for(client_port, RECORDER_LINGER + Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", diagnostics()));
    assert!(
        rec.end == ConnEnd::Eof && rec.received > 0,
        "{what}: the server should have seen the request and a normal close; it recorded \
         {rec:?}\n{}",
        diagnostics()
    );
}

/// A sensor in the router namespace guards the router's client-facing veth; the client's
/// flows to the server are forwarded through it. Allowed flows work and are inspected;
/// blocked flows are reset for the client *and* for the server (nginx's socket goes away,
/// and a recorder server sees ECONNRESET), over IPv4 and IPv6.
#[test]
fn gateway_forwarded_flows_are_inspected_and_reset() {
    let mut env = GatewayEnv::start_without_sensor().expect("gateway environment");
    env.start_recorder(RECORDER_PORT, RECORDER_LINGER)
        .expect("connection recorder");
    let guarded = env.net.router_client_if.clone();
    env.enforce("block", &[block_bad_example()], &[&guarded], &[])
        .expect("sensor in the router");
    let events = env.events().clone();
    let diagnostics = || env.diagnostics();

    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let client = env.client_ip(v6);
        let server = env.server_ip(v6);
        let sides = |client_port: u16, server_port: u16| {
            Sides::syn_on_ingress(
                SocketAddr::new(client, client_port),
                SocketAddr::new(server, server_port),
            )
        };

        // Allowed TLS through the gateway.
        let good = env
            .curl_https_any("good.example", 443, v6, "/good")
            .expect("curl good.example");
        assert_ok(
            &diagnostics(),
            &format!("https://good.example via the router ({family})"),
            &good,
            BODY_GOOD,
        );
        let e = wait(
            &events,
            &format!("SslConnectionInspected for good.example ({family})"),
            flow_event("SslConnectionInspected", good.local_port),
        );
        check(&events, &e, "Table", "DeviceNetworkEvents");
        check_sides(&events, &e, &sides(good.local_port, 443));
        check(&events, &e, "RemoteUrl", "good.example");
        check(&events, &e, "/AdditionalFields/server_name", "good.example");
        let e = wait(
            &events,
            &format!("ConnectionSuccess for good.example ({family})"),
            flow_event("ConnectionSuccess", good.local_port),
        );
        check_sides(&events, &e, &sides(good.local_port, 443));
        assert_absent_so_far(
            &env,
            &events,
            &format!("verdict event for good.example ({family})"),
            verdict_for(good.local_port),
        );

        // Blocked TLS: the client is reset with no byte of the response, the verdict is
        // logged, and nginx's end of the connection is torn down too.
        let bad = env
            .curl_https_any("bad.example", 443, v6, "/bad/")
            .expect("curl bad.example");
        assert_reset(
            &format!("https://bad.example via the router ({family})"),
            &bad,
            diagnostics,
        );
        let e = wait(
            &events,
            &format!("Blocked event for bad.example ({family})"),
            flow_event(BLOCKED, bad.local_port),
        );
        check_blocked(&events, &e, &sides(bad.local_port, 443), "bad.example");
        if let Err(e) = env.wait_server_socket_gone(bad.local_port, SERVER_RESET_WITHIN) {
            panic!(
                "blocked https://bad.example ({family}): the reset did not reach nginx: \
                 {e:#}\n{}",
                diagnostics()
            );
        }

        // The server's view, recorded: a blocked request ends in a reset, an allowed one
        // in a normal close.
        let recorder = env.recorder().expect("recorder");
        let bad = env
            .curl_http_any("bad.example", RECORDER_PORT, v6, "/", &[])
            .expect("curl bad.example:8081");
        assert_reset(
            &format!("http://bad.example:{RECORDER_PORT} via the router ({family})"),
            &bad,
            diagnostics,
        );
        assert_server_saw_reset(
            recorder,
            diagnostics,
            &format!("blocked http://bad.example:{RECORDER_PORT} ({family})"),
            bad.local_port,
        );
        let e = wait(
            &events,
            &format!("Blocked event for bad.example:{RECORDER_PORT} ({family})"),
            flow_event(BLOCKED, bad.local_port),
        );
        check_blocked(
            &events,
            &e,
            &sides(bad.local_port, RECORDER_PORT),
            &format!("http://bad.example:{RECORDER_PORT}/"),
        );

        let good = env
            .curl_http_any("good.example", RECORDER_PORT, v6, "/", &[])
            .expect("curl good.example:8081");
        assert_ok(
            &diagnostics(),
            &format!("http://good.example:{RECORDER_PORT} via the router ({family})"),
            &good,
            RECORDER_BODY,
        );
        assert_server_saw_eof(
            recorder,
            diagnostics,
            &format!("allowed http://good.example:{RECORDER_PORT} ({family})"),
            good.local_port,
        );
        let e = wait(
            &events,
            &format!("HttpConnectionInspected for good.example:{RECORDER_PORT} ({family})"),
            flow_event("HttpConnectionInspected", good.local_port),
        );
        check_sides(&events, &e, &sides(good.local_port, RECORDER_PORT));
        check(
            &events,
            &e,
            "RemoteUrl",
            format!("http://good.example:{RECORDER_PORT}/"),
        );
    }
}

/// curl from the client namespace to `name` over the tunnel.
fn curl_tunnel(env: &Env, tun: &TunnelLink, scheme: &str, name: &str, path: &str) -> CurlRun {
    let port = if scheme == "https" { 443 } else { 80 };
    let url = format!("{scheme}://{name}{path}");
    clients::curl_any(&env.topo, name, port, tun.server_ip(), &url, &[])
        .unwrap_or_else(|e| panic!("curl {url} over the tunnel: {e:#}"))
}

/// Asserts that `dev` is not a device the sensor treats as Ethernet.
#[track_caller]
fn assert_l3_only(ns: &str, dev: &str) -> u32 {
    let kind = link_type(ns, dev).expect("link type of the tunnel");
    assert!(
        !ETHERNET_KINDS.contains(&kind),
        "{dev} has ARPHRD type {kind}: not an L3-only device"
    );
    kind
}

/// The sensor guards an L3-only device (a TUN tunnel between the client and the server:
/// ARPHRD 65534, no link-layer header, so the `nprot_l3_*` programs): HTTP and TLS over it
/// are inspected with the tunnel's addresses, and blocked requests are reset for the
/// client and for the server.
#[test]
fn l3_only_device_is_guarded() {
    let mut env = Env::start_without_sensor().expect("test environment");
    let tun = env.start_tunnel().expect("TUN tunnel");
    let kind = assert_l3_only(&tun.client_ns, &tun.client_dev);
    eprintln!("{} has ARPHRD type {kind}", tun.client_dev);
    let recorder = ConnRecorder::start(
        &env.topo.server_ns,
        &[SocketAddr::new(tun.server_ip(), RECORDER_PORT)],
        RECORDER_LINGER,
    )
    .expect("connection recorder on the tunnel address");
    env.enforce_on("block", &[block_bad_example()], &[&tun.client_dev], &[])
        .expect("sensor on the tunnel");
    let events = env.events().clone();
    let diagnostics = || {
        format!(
            "{}\nrecorder output:\n{}",
            env.diagnostics(),
            recorder.log()
        )
    };
    let client = |port: u16| SocketAddr::new(tun.client_ip(), port);
    let server = |port: u16| SocketAddr::new(tun.server_ip(), port);

    // Plain HTTP, Host good.example, to the tunnel address.
    let good = curl_tunnel(&env, &tun, "http", "good.example", "/good");
    assert_ok(
        &diagnostics(),
        "http://good.example over TUN",
        &good,
        BODY_GOOD,
    );
    let e = wait(
        &events,
        "HttpConnectionInspected over the tunnel",
        flow_event("HttpConnectionInspected", good.local_port),
    );
    check_sides(
        &events,
        &e,
        &Sides::outbound(client(good.local_port), server(80)),
    );
    check(&events, &e, "RemoteUrl", "http://good.example/good");
    check(&events, &e, "/AdditionalFields/host", "good.example");
    check(&events, &e, "/AdditionalFields/uri", "/good");
    wait(
        &events,
        "ConnectionSuccess over the tunnel",
        flow_event("ConnectionSuccess", good.local_port),
    );
    // The barrier goes over the tunnel too: the sensor guards only the tunnel device.
    let barrier = Barrier::run(&events, "a later request over the tunnel", || {
        let r = curl_tunnel(&env, &tun, "http", "good.example", "/good");
        assert_ok(
            &diagnostics(),
            "http://good.example over TUN (barrier)",
            &r,
            BODY_GOOD,
        );
        r.local_port
    });
    barrier.assert_absent(
        &events,
        "verdict event for good.example over the tunnel",
        verdict_for(good.local_port),
    );

    // Host bad.example: reset, nothing delivered, verdict logged.
    let bad = curl_tunnel(&env, &tun, "http", "bad.example", "/bad/");
    assert_reset("http://bad.example over TUN", &bad, diagnostics);
    let e = wait(
        &events,
        "Blocked event over the tunnel",
        flow_event(BLOCKED, bad.local_port),
    );
    check_blocked(
        &events,
        &e,
        &Sides::outbound(client(bad.local_port), server(80)),
        "http://bad.example/bad/",
    );

    // TLS over the tunnel: SNI seen, bad.example reset.
    let good = curl_tunnel(&env, &tun, "https", "good.example", "/good");
    assert_ok(
        &diagnostics(),
        "https://good.example over TUN",
        &good,
        BODY_GOOD,
    );
    let e = wait(
        &events,
        "SslConnectionInspected over the tunnel",
        flow_event("SslConnectionInspected", good.local_port),
    );
    check_sides(
        &events,
        &e,
        &Sides::outbound(client(good.local_port), server(443)),
    );
    check(&events, &e, "RemoteUrl", "good.example");
    let bad = curl_tunnel(&env, &tun, "https", "bad.example", "/bad/");
    assert_reset("https://bad.example over TUN", &bad, diagnostics);
    wait(
        &events,
        "Blocked event for TLS over the tunnel",
        flow_event(BLOCKED, bad.local_port),
    );

    // The reset reflected on an L3 device reaches the server too.
    let url = format!("http://bad.example:{RECORDER_PORT}/");
    let bad = clients::curl_any(
        &env.topo,
        "bad.example",
        RECORDER_PORT,
        tun.server_ip(),
        &url,
        &[],
    )
    .expect("curl the recorder over the tunnel");
    assert_reset(&format!("{url} over TUN"), &bad, diagnostics);
    assert_server_saw_reset(
        &recorder,
        diagnostics,
        &format!("blocked {url} over TUN"),
        bad.local_port,
    );
}

/// One sensor guards two interfaces of different kinds at once — the client's veth
/// (Ethernet variant) and a TUN tunnel (L3 variant) — reports and enforces on both, and
/// detaches from both on SIGTERM.
#[test]
fn two_interfaces_guarded_at_once() {
    let mut env = Env::start_without_sensor().expect("test environment");
    let tun = env.start_tunnel().expect("TUN tunnel");
    assert_l3_only(&tun.client_ns, &tun.client_dev);
    let veth = env.topo.client_if.clone();
    env.enforce_on(
        "block",
        &[block_bad_example()],
        &[&veth, &tun.client_dev],
        &[],
    )
    .expect("sensor on the veth and the tunnel");
    let events = env.events().clone();
    let diagnostics = || env.diagnostics();
    for dev in [&veth, &tun.client_dev] {
        let on = env.client_attachments_of(dev).expect("attachments");
        assert!(
            on.any(),
            "the running sensor has nothing attached to {dev}:\n{on}"
        );
    }

    // A flow on each interface (each crosses only one of them), allowed and blocked.
    let via_veth = env
        .curl_https_any("good.example", 443, false, "/good")
        .expect("curl over the veth");
    assert_ok(
        &diagnostics(),
        "https://good.example over the veth",
        &via_veth,
        BODY_GOOD,
    );
    let via_tun = curl_tunnel(&env, &tun, "http", "good.example", "/good");
    assert_ok(
        &diagnostics(),
        "http://good.example over the tunnel",
        &via_tun,
        BODY_GOOD,
    );
    let e = wait(
        &events,
        "SslConnectionInspected for the veth flow",
        flow_event("SslConnectionInspected", via_veth.local_port),
    );
    check_sides(
        &events,
        &e,
        &Sides::outbound(
            SocketAddr::new(env.client_ip(false), via_veth.local_port),
            SocketAddr::new(env.server_ip(false), 443),
        ),
    );
    let e = wait(
        &events,
        "HttpConnectionInspected for the tunnel flow",
        flow_event("HttpConnectionInspected", via_tun.local_port),
    );
    check_sides(
        &events,
        &e,
        &Sides::outbound(
            SocketAddr::new(tun.client_ip(), via_tun.local_port),
            SocketAddr::new(tun.server_ip(), 80),
        ),
    );

    let bad_veth = env
        .curl_https_any("bad.example", 443, true, "/bad/")
        .expect("curl bad.example over the veth");
    assert_reset(
        "https://bad.example over the veth (IPv6)",
        &bad_veth,
        diagnostics,
    );
    let bad_tun = curl_tunnel(&env, &tun, "http", "bad.example", "/bad/");
    assert_reset("http://bad.example over the tunnel", &bad_tun, diagnostics);
    for (what, port) in [
        ("veth", bad_veth.local_port),
        ("tunnel", bad_tun.local_port),
    ] {
        wait(
            &events,
            &format!("Blocked event for the {what} flow"),
            flow_event(BLOCKED, port),
        );
    }

    // SIGTERM: a clean exit, nothing left on either interface, traffic unaffected.
    let status = env
        .sensor_mut()
        .expect("sensor")
        .stop(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        status.success(),
        "sensor exit after SIGTERM: {status}\n{}",
        env.diagnostics()
    );
    for dev in [&veth, &tun.client_dev] {
        let after = env.client_attachments_of(dev).expect("attachments");
        assert!(
            !after.any(),
            "programs left on {dev} after the sensor exited:\n{after}"
        );
    }
    let after = curl_tunnel(&env, &tun, "http", "bad.example", "/bad/");
    assert_ok(
        &env.diagnostics(),
        "http://bad.example over the tunnel after the sensor stopped",
        &after,
        BODY_BAD,
    );
}

/// Events of type `action` of the flow from `client_port`, counted.
fn count(events: &EventLog, action: &str, client_port: u16) -> usize {
    let pred = flow_event(action, client_port);
    events
        .events()
        .unwrap_or_else(|e| panic!("{e:#}"))
        .iter()
        .filter(|e| pred(e))
        .count()
}

/// The router guards both of its veths, so every forwarded flow crosses two guarded
/// interfaces (client-facing ingress, then server-facing egress, and back). Enforcement
/// must work as with one interface, each flow must be reported once — not once per
/// interface it crosses — and the sensor must detach from both on SIGTERM.
#[test]
fn gateway_guarding_both_router_interfaces_reports_each_flow_once() {
    let mut env = GatewayEnv::start_without_sensor().expect("gateway environment");
    env.start_recorder(RECORDER_PORT, RECORDER_LINGER)
        .expect("connection recorder");
    let (rc, rs) = (
        env.net.router_client_if.clone(),
        env.net.router_server_if.clone(),
    );
    env.enforce("block", &[block_bad_example()], &[&rc, &rs], &[])
        .expect("sensor on both router interfaces");
    for dev in [&rc, &rs] {
        let on = env.router_attachments(dev).expect("attachments");
        assert!(on.any(), "nothing attached to {dev}:\n{on}");
    }
    let events = env.events().clone();
    let diagnostics = || env.diagnostics();

    let good = env
        .curl_https_any("good.example", 443, false, "/good")
        .expect("curl good.example");
    assert_ok(&diagnostics(), "https://good.example", &good, BODY_GOOD);
    let bad = env
        .curl_https_any("bad.example", 443, false, "/bad/")
        .expect("curl bad.example");
    assert_reset("https://bad.example", &bad, diagnostics);
    if let Err(e) = env.wait_server_socket_gone(bad.local_port, SERVER_RESET_WITHIN) {
        panic!("the reset did not reach nginx: {e:#}\n{}", diagnostics());
    }
    let recorded = env
        .curl_http_any("bad.example", RECORDER_PORT, false, "/", &[])
        .expect("curl bad.example:8081");
    assert_reset("http://bad.example:8081", &recorded, diagnostics);
    assert_server_saw_reset(
        env.recorder().expect("recorder"),
        diagnostics,
        "blocked http://bad.example:8081",
        recorded.local_port,
    );
    wait(
        &events,
        "SslConnectionInspected for good.example",
        flow_event("SslConnectionInspected", good.local_port),
    );
    for port in [bad.local_port, recorded.local_port] {
        wait(
            &events,
            &format!("Blocked event for port {port}"),
            flow_event(BLOCKED, port),
        );
    }

    // Stopping flushes every event; then count them.
    let status = env
        .sensor_mut()
        .expect("sensor")
        .stop(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "sensor exit after SIGTERM: {status}");
    for dev in [&rc, &rs] {
        let after = env.router_attachments(dev).expect("attachments");
        assert!(!after.any(), "programs left on {dev}:\n{after}");
    }
    let counts = [
        ("ConnectionSuccess", good.local_port),
        ("SslConnectionInspected", good.local_port),
        ("ConnectionSuccess", bad.local_port),
        ("SslConnectionInspected", bad.local_port),
        (BLOCKED, bad.local_port),
        ("HttpConnectionInspected", recorded.local_port),
        (BLOCKED, recorded.local_port),
    ]
    .map(|(action, port)| (action, port, count(&events, action, port)));
    assert!(
        counts.iter().all(|&(_, _, n)| n == 1),
        "each flow should be reported once; (event, client port, count): {counts:?}\n{}",
        events.dump()
    );
}

/// Resumes a process stopped with SIGSTOP when dropped (also on panic).
struct Stalled(u32);

impl Stalled {
    fn new(pid: u32) -> Stalled {
        nprot_tests::process::signal(pid, libc::SIGSTOP).expect("SIGSTOP");
        Stalled(pid)
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = nprot_tests::process::signal(self.0, libc::SIGCONT);
    }
}

/// A gateway sensor and a sensor on the client host, in series. While the client's
/// sensor has no verdict yet (its daemon is stalled: SIGSTOP), the gateway's reset — a
/// RST that carries the server's payload bytes — must still reach the client at once: a
/// RST is a control segment, not server payload to hold back.
#[test]
fn gateway_reset_passes_a_client_sensor_with_a_pending_verdict() {
    let mut env = GatewayEnv::start_without_sensor().expect("gateway environment");
    env.start_recorder(RECORDER_PORT, RECORDER_LINGER)
        .expect("connection recorder");
    let rc = env.net.router_client_if.clone();
    env.enforce("block", &[block_bad_example()], &[&rc], &[])
        .expect("sensor in the router");
    let indicators = env.dir().join("indicators.json");
    let client_events = env.dir().join("client-events.jsonl");
    let mut endpoint = nprot_tests::Sensor::start_in(
        &env.net.client_ns,
        &[&env.net.client_if],
        &client_events,
        &[
            "--mode",
            "block",
            "--indicators",
            &indicators.to_string_lossy(),
        ],
    )
    .expect("sensor on the client host");
    let diagnostics = || env.diagnostics();
    let recorder = env.recorder().expect("recorder");
    let url = format!("http://bad.example:{RECORDER_PORT}");

    // Control: both sensors running.
    let r = env
        .curl_http_any("bad.example", RECORDER_PORT, false, "/", &[])
        .expect("curl");
    assert_reset(&format!("{url} through both sensors"), &r, diagnostics);
    assert_server_saw_reset(recorder, diagnostics, &url, r.local_port);

    let stalled = Stalled::new(endpoint.pid().expect("client sensor pid"));
    let started = std::time::Instant::now();
    let r = env
        .curl_http_any(
            "bad.example",
            RECORDER_PORT,
            false,
            "/",
            &["--max-time", "3"],
        )
        .expect("curl");
    let took = started.elapsed();
    assert_server_saw_reset(recorder, diagnostics, &url, r.local_port);
    let what = format!(
        "{url} with the client's sensor stalled: the gateway reset the flow (the server saw \
         it), so the client should see a reset within {SERVER_RESET_WITHIN:?}"
    );
    assert_reset(&what, &r, diagnostics);
    assert!(
        took < SERVER_RESET_WITHIN,
        "{what}; it took {took:?}: {r:?}\n{}",
        diagnostics()
    );
    drop(stalled);
    let _ = endpoint.stop(Duration::from_secs(3));
}
