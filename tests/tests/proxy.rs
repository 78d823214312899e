//! Forward proxies end to end: curl and openssl in the client namespace reach nginx only
//! through a real tinyproxy in the router; the sensor, in the client namespace, sees
//! flows to the proxy and must report and police the real targets behind it.
//!
//! Run as root, serially: `cargo xtask test` (or
//! `cargo test -p nprot-tests --test proxy -- --test-threads=1`).
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use nprot_tests::{
    Barrier, EVENT_TIMEOUT, ProxyEnv, Transfer, Value, assert_reset, ev,
    indicators::indicator,
    nginx::{BODY_BAD, BODY_GOOD},
    proxy::{PROXY_PORT, ProxyKind},
};

const BLOCKED: &str = "ExploitGuardNetworkProtectionBlocked";
const AUDITED: &str = "ExploitGuardNetworkProtectionAudited";
const HTTP: &str = "HttpConnectionInspected";
const SSL: &str = "SslConnectionInspected";

fn block_bad() -> Vec<Value> {
    vec![indicator("bad", "DomainName", "bad.example", "Block")]
}

/// Waits for the event of `action` on the client's connection from `port` to the proxy
/// whose `RemoteUrl` is `url`.
fn wait_target(env: &ProxyEnv, action: &str, port: u16, url: &str) -> Value {
    env.gw
        .events()
        .wait_for_described(
            &format!("{action} for {url} from client port {port}"),
            |e| ev::is(e, action) && ev::local_port(e, port) && e["RemoteUrl"] == url,
            EVENT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", env.diagnostics()))
}

/// The event names the proxy as the remote end and marks it as a proxy flow.
#[track_caller]
fn assert_via_proxy(env: &ProxyEnv, event: &Value, v6: bool) {
    let ok = event["RemoteIP"] == env.proxy_ip(v6).to_string()
        && event["RemotePort"] == PROXY_PORT
        && event["AdditionalFields"]["proxy"] == true
        && event["AdditionalFields"]["proxy_authority"] == env.proxy_authority(v6);
    assert!(
        ok,
        "not reported as via the proxy: {event}\n{}",
        env.diagnostics()
    );
}

#[track_caller]
fn assert_ok(env: &ProxyEnv, t: &Transfer, body: &str) {
    assert!(
        t.exit_code == 0 && t.http_code == 200 && t.size_download == body.len() as u64 + 1,
        "expected {body:?} through the proxy, got {t:?}\n{}",
        env.diagnostics()
    );
}

/// HTTPS through CONNECT: the allowed name works and its tunnel's ClientHello is
/// reported behind the proxy; the blocked name is reset at its CONNECT.
#[test]
fn connect_tunnels_are_judged_on_the_real_target() {
    let mut env = ProxyEnv::start(ProxyKind::Tinyproxy).expect("proxy topology");
    env.enforce("block", &block_bad(), &[]).expect("sensor");

    let good = env
        .curl(false, &["https://good.example/good"], &[])
        .unwrap();
    assert_ok(&env, &good[0], BODY_GOOD);
    let port = good[0].local_port;
    let connect = wait_target(&env, HTTP, port, "good.example:443");
    assert_via_proxy(&env, &connect, false);
    assert_eq!(connect["AdditionalFields"]["method"], "CONNECT");
    let hello = wait_target(&env, SSL, port, "good.example");
    assert_via_proxy(&env, &hello, false);
    assert_eq!(
        hello["AdditionalFields"]["connect_target"],
        "good.example:443"
    );
    assert!(
        hello["AdditionalFields"].get("fronting").is_none(),
        "{hello}"
    );

    for v6 in [false, true] {
        let bad = env.curl(v6, &["https://bad.example/bad/"], &[]).unwrap();
        assert_reset("https://bad.example/bad/ via CONNECT", &bad[0], || {
            env.diagnostics()
        });
        let blocked = wait_target(&env, BLOCKED, bad[0].local_port, "bad.example:443");
        assert_eq!(blocked["RemoteIP"], env.proxy_ip(v6).to_string());
        assert_eq!(blocked["AdditionalFields"]["IndicatorId"], "bad");
    }
}

/// A CONNECT to one name and a ClientHello for another in its tunnel: the mismatch is
/// reported (`fronting`) and the tunnelled name is judged too, so it is reset.
#[test]
fn fronting_in_a_tunnel_is_flagged_and_judged() {
    let mut env = ProxyEnv::start(ProxyKind::Squid).expect("proxy topology");
    env.enforce("block", &block_bad(), &[]).expect("sensor");

    let out = env
        .openssl_via_proxy("good.example:443", "bad.example")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("Server certificate"),
        "the handshake completed:\n{stdout}"
    );
    let events = env.gw.events();
    let hello = events
        .wait_for_described(
            "the tunnelled ClientHello",
            |e| ev::is(e, SSL) && e["RemoteUrl"] == "bad.example",
            EVENT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_via_proxy(&env, &hello, false);
    let f = &hello["AdditionalFields"];
    assert!(
        f["fronting"] == true && f["connect_target"] == "good.example:443",
        "{hello}"
    );
    let port = hello["LocalPort"].as_u64().unwrap() as u16;
    wait_target(&env, HTTP, port, "good.example:443");
    let blocked = wait_target(&env, BLOCKED, port, "bad.example");
    assert_eq!(blocked["AdditionalFields"]["IndicatorId"], "bad");
}

/// Several absolute-form requests on one kept-alive connection to the proxy: each is
/// reported with its own target; the blocked one resets the connection (and with it
/// whatever else it carried), and the next request opens a new one.
#[test]
fn kept_alive_proxy_connection_judges_every_request() {
    let mut env = ProxyEnv::start(ProxyKind::Squid).expect("proxy topology");
    env.enforce("block", &block_bad(), &[]).expect("sensor");

    let urls = [
        "http://good.example/good",
        "http://good.example/",
        "http://bad.example/bad/",
        "http://good.example/good",
    ];
    let t = env.curl(false, &urls, &[]).unwrap();
    assert_ok(&env, &t[0], BODY_GOOD);
    assert!(
        t[1].exit_code == 0 && t[1].local_port == t[0].local_port && t[1].num_connects == 0,
        "the second request did not reuse the proxy connection: {t:?}\n{}",
        env.diagnostics()
    );
    // curl sends it on the kept-alive connection; reset there, curl retries it once on a
    // fresh connection (a reused connection that dies before answering), reset again.
    assert_reset(
        "http://bad.example/bad/ on the kept-alive connection",
        &t[2],
        || env.diagnostics(),
    );
    assert_ok(&env, &t[3], BODY_GOOD);
    assert_eq!(t[3].num_connects, 1, "{t:?}");

    let port = t[0].local_port;
    for url in [
        "http://good.example/good",
        "http://good.example/",
        "http://bad.example/bad/",
    ] {
        let event = wait_target(&env, HTTP, port, url);
        assert_via_proxy(&env, &event, false);
        assert_eq!(event["AdditionalFields"]["method"], "GET");
    }
    let blocked = wait_target(&env, BLOCKED, port, "http://bad.example/bad/");
    assert_eq!(blocked["AdditionalFields"]["IndicatorId"], "bad");
    wait_target(&env, HTTP, t[3].local_port, "http://good.example/good");
}

/// Audit mode: the same targets are reported, the blocked ones as audited, and nothing
/// is reset — not the tunnel, not the kept-alive connection.
#[test]
fn audit_mode_reports_real_targets_without_resetting() {
    let mut env = ProxyEnv::start(ProxyKind::Squid).expect("proxy topology");
    env.enforce("audit", &block_bad(), &[]).expect("sensor");

    let tls = env.curl(false, &["https://bad.example/bad/"], &[]).unwrap();
    assert_ok(&env, &tls[0], BODY_BAD);
    wait_target(&env, AUDITED, tls[0].local_port, "bad.example:443");
    let hello = wait_target(&env, SSL, tls[0].local_port, "bad.example");
    assert_via_proxy(&env, &hello, false);

    let urls = ["http://bad.example/bad/", "http://good.example/good"];
    let t = env.curl(true, &urls, &[]).unwrap();
    assert_ok(&env, &t[0], BODY_BAD);
    assert_ok(&env, &t[1], BODY_GOOD);
    assert_eq!(t[1].local_port, t[0].local_port, "{t:?}");
    wait_target(&env, AUDITED, t[0].local_port, "http://bad.example/bad/");
    let good = wait_target(&env, HTTP, t[0].local_port, "http://good.example/good");
    assert_via_proxy(&env, &good, true);
    // A later request through the proxy; once it is reported, so is everything before.
    let barrier = Barrier::run(env.gw.events(), "a later request via the proxy", || {
        let t = env.curl(false, &["http://good.example/good"], &[]).unwrap();
        assert_ok(&env, &t[0], BODY_GOOD);
        t[0].local_port
    });
    barrier.assert_absent(env.gw.events(), "a Blocked event in audit mode", |e| {
        ev::is(e, BLOCKED)
    });
}
