//! End-to-end tests of the capture → parse → events slice: real clients in the client
//! namespace talk to nginx in the server namespace while the sensor guards the client's
//! veth; each test waits for the events the sensor must log.
//!
//! Run as root, serially: `cargo xtask test` (or
//! `cargo test -p nprot-tests -- --test-threads=1`).
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::time::Duration;

use nprot_tests::{EVENT_TIMEOUT, Env, HelloSpec, Value, assert_absent_so_far, client_hello, ev};

fn start() -> Env {
    Env::start().expect("test environment with the sensor")
}

/// Waits for an event matching `pred`; panics with every event and the sensor's stderr.
fn wait(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    env.events()
        .wait_for_described(what, pred, EVENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

use nprot_tests::check_field as check;

/// Checks the fields every flow event from the client namespace carries.
#[track_caller]
fn check_flow(env: &Env, event: &Value, v6: bool, local_port: Option<u16>, remote_port: u16) {
    check(env, event, "Table", "DeviceNetworkEvents");
    check(env, event, "Protocol", "Tcp");
    check(env, event, "LocalIP", env.client_ip(v6).to_string());
    check(env, event, "RemoteIP", env.server_ip(v6).to_string());
    check(env, event, "RemotePort", remote_port);
    if let Some(port) = local_port {
        check(env, event, "LocalPort", port);
    }
    assert!(
        event["Timestamp"].as_str().is_some_and(|t| t.contains('T')),
        "Timestamp: {event}"
    );
    assert!(event["ReportId"].is_number(), "ReportId: {event}");
}

/// Checks an SslConnectionInspected event for `sni` from a TLS 1.3 client.
#[track_caller]
fn check_ssl(env: &Env, event: &Value, sni: &str, alpn: &str) {
    check(env, event, "RemoteUrl", sni);
    check(env, event, "/AdditionalFields/server_name", sni);
    check(env, event, "/AdditionalFields/direction", "Outbound");
    check(env, event, "/AdditionalFields/tls_version", "TLS 1.3");
    check(env, event, "/AdditionalFields/ech", "none");
    let offered = event["AdditionalFields"]["alpn"].as_array();
    assert!(
        offered.is_some_and(|a| a.iter().any(|p| p == alpn)),
        "alpn should contain {alpn:?}: {event}"
    );
}

fn ssl_for_port(local_port: u16) -> impl Fn(&Value) -> bool {
    move |e| ev::is(e, "SslConnectionInspected") && ev::local_port(e, local_port)
}

fn http_for_port(local_port: u16) -> impl Fn(&Value) -> bool {
    move |e| ev::is(e, "HttpConnectionInspected") && ev::local_port(e, local_port)
}

fn success_for(local_port: u16, remote_port: u16) -> impl Fn(&Value) -> bool {
    move |e| {
        ev::is(e, "ConnectionSuccess")
            && ev::local_port(e, local_port)
            && ev::remote_port(e, remote_port)
    }
}

#[test]
fn tls_sni_is_reported() {
    let env = start();
    let good = env
        .curl_https("good.example", 443, false, "/good")
        .expect("curl good.example");
    let bad = env
        .curl_https("bad.example", 443, false, "/bad/")
        .expect("curl bad.example");
    assert_ne!(good.local_port, bad.local_port);
    for (name, r) in [("good.example", &good), ("bad.example", &bad)] {
        let e = wait(
            &env,
            &format!("SslConnectionInspected from port {}", r.local_port),
            ssl_for_port(r.local_port),
        );
        check_flow(&env, &e, false, Some(r.local_port), 443);
        check_ssl(&env, &e, name, "http/1.1");
        let e = wait(
            &env,
            &format!("ConnectionSuccess from port {}", r.local_port),
            success_for(r.local_port, 443),
        );
        check_flow(&env, &e, false, Some(r.local_port), 443);
    }
    // ReportId increases from line to line.
    let ids: Vec<u64> = env
        .events()
        .events()
        .expect("events")
        .iter()
        .map(|e| e["ReportId"].as_u64().expect("numeric ReportId"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ReportId not increasing: {ids:?}\n{}",
        env.diagnostics()
    );
}

#[test]
fn openssl_s_client_sni() {
    let env = start();
    let out = env
        .openssl_s_client(443, false, "good.example")
        .expect("openssl s_client");
    assert!(
        out.status.success(),
        "s_client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = wait(&env, "SslConnectionInspected for good.example", |e| {
        ev::is(e, "SslConnectionInspected") && ev::field(e, "server_name", "good.example")
    });
    check_flow(&env, &e, false, None, 443);
    check(&env, &e, "RemoteUrl", "good.example");
    check(&env, &e, "/AdditionalFields/direction", "Outbound");
    let port = u16::try_from(e["LocalPort"].as_u64().unwrap_or(0)).unwrap_or(0);
    wait(
        &env,
        "ConnectionSuccess for the s_client flow",
        success_for(port, 443),
    );
}

#[test]
fn tls_on_non_standard_port() {
    let env = start();
    let r = env
        .curl_https("good.example", 8443, false, "/good")
        .expect("curl :8443");
    let e = wait(
        &env,
        "SslConnectionInspected on 8443",
        ssl_for_port(r.local_port),
    );
    check_flow(&env, &e, false, Some(r.local_port), 8443);
    check_ssl(&env, &e, "good.example", "http/1.1");
}

#[test]
fn http_host_and_url() {
    let env = start();
    let ua = "nprot-e2e/1.0 (test)";
    let r = env
        .curl_http("good.example", 80, false, "/good", &["-A", ua])
        .expect("curl http :80");
    assert_eq!(r.http_code, 200, "{r:?}");
    let e = wait(
        &env,
        "HttpConnectionInspected on 80",
        http_for_port(r.local_port),
    );
    check_flow(&env, &e, false, Some(r.local_port), 80);
    check(&env, &e, "RemoteUrl", "http://good.example/good");
    check(&env, &e, "/AdditionalFields/method", "GET");
    check(&env, &e, "/AdditionalFields/host", "good.example");
    check(&env, &e, "/AdditionalFields/uri", "/good");
    check(&env, &e, "/AdditionalFields/user_agent", ua);
    check(&env, &e, "/AdditionalFields/direction", "Outbound");
    check(&env, &e, "/AdditionalFields/proxy", false);
    wait(
        &env,
        "ConnectionSuccess on 80",
        success_for(r.local_port, 80),
    );

    // Plain HTTP on a non-standard port, curl's own User-Agent.
    let r = env
        .curl_http("bad.example", 8080, false, "/bad/page?q=1", &[])
        .expect("curl http :8080");
    assert_eq!(r.http_code, 200, "{r:?}");
    let e = wait(
        &env,
        "HttpConnectionInspected on 8080",
        http_for_port(r.local_port),
    );
    check_flow(&env, &e, false, Some(r.local_port), 8080);
    check(
        &env,
        &e,
        "RemoteUrl",
        "http://bad.example:8080/bad/page?q=1",
    );
    check(&env, &e, "/AdditionalFields/method", "GET");
    check(&env, &e, "/AdditionalFields/uri", "/bad/page?q=1");
    let host = ev::field_str(&e, "host");
    assert!(
        host == "bad.example" || host == "bad.example:8080",
        "host: {e}"
    );
    assert!(
        ev::field_str(&e, "user_agent").starts_with("curl/"),
        "user_agent: {e}"
    );
    wait(
        &env,
        "ConnectionSuccess on 8080",
        success_for(r.local_port, 8080),
    );
}

#[test]
fn ipv6_tls_and_http() {
    let env = start();
    let tls = env
        .curl_https("good.example", 443, true, "/good")
        .expect("curl https over IPv6");
    let e = wait(
        &env,
        "SslConnectionInspected over IPv6",
        ssl_for_port(tls.local_port),
    );
    check_flow(&env, &e, true, Some(tls.local_port), 443);
    check_ssl(&env, &e, "good.example", "http/1.1");
    let e = wait(
        &env,
        "ConnectionSuccess over IPv6",
        success_for(tls.local_port, 443),
    );
    check_flow(&env, &e, true, Some(tls.local_port), 443);

    let http = env
        .curl_http("bad.example", 80, true, "/bad/", &["-A", "v6-agent"])
        .expect("curl http over IPv6");
    let e = wait(
        &env,
        "HttpConnectionInspected over IPv6",
        http_for_port(http.local_port),
    );
    check_flow(&env, &e, true, Some(http.local_port), 80);
    check(&env, &e, "RemoteUrl", "http://bad.example/bad/");
    check(&env, &e, "/AdditionalFields/host", "bad.example");
    check(&env, &e, "/AdditionalFields/uri", "/bad/");
    check(&env, &e, "/AdditionalFields/user_agent", "v6-agent");
}

#[test]
fn closed_port_gives_connection_failed() {
    let env = start();
    for v6 in [false, true] {
        let port = env.connect_refused(9, v6).expect("refused connect");
        let e = wait(
            &env,
            &format!("ConnectionFailed from port {port} (v6: {v6})"),
            |e| ev::is(e, "ConnectionFailed") && ev::local_port(e, port),
        );
        check_flow(&env, &e, v6, Some(port), 9);
        // A later connection that succeeds: its ConnectionSuccess comes after any the
        // refused one could have had.
        assert_absent_so_far(
            &env,
            env.events(),
            "ConnectionSuccess for a refused connection",
            success_for(port, 9),
        );
    }
}

#[test]
fn large_client_hello_in_one_write() {
    let env = start();
    let mut spec = HelloSpec::new("big.example");
    spec.pq_key_share = true;
    spec.padding = 300;
    let hello = client_hello(&spec);
    assert!(hello.bytes.len() > 1500 && hello.sni_name > 1448);
    let r = env
        .send_chunks(443, false, &[&hello.bytes], Duration::ZERO)
        .expect("send large ClientHello");
    let e = wait(
        &env,
        "SslConnectionInspected for big.example",
        ssl_for_port(r.local_port),
    );
    check_flow(&env, &e, false, Some(r.local_port), 443);
    check_ssl(&env, &e, "big.example", "h2");
    check(
        &env,
        &e,
        "/AdditionalFields/alpn",
        serde_json::json!(["h2", "http/1.1"]),
    );
}

#[test]
fn client_hello_split_over_three_segments() {
    let env = start();
    let hello = client_hello(&HelloSpec::new("split.example"));
    let b = &hello.bytes;
    // First cut inside the extension list (well before server_name), second inside the
    // host name ("split" | ".example").
    let first = usize::midpoint(hello.extensions_start, hello.sni_extension);
    let second = hello.sni_name + "split".len();
    assert!(hello.extensions_start < first && first < hello.sni_extension);
    let r = env
        .send_chunks(
            8443,
            false,
            &[&b[..first], &b[first..second], &b[second..]],
            Duration::from_millis(50),
        )
        .expect("send split ClientHello");
    let e = wait(
        &env,
        "SslConnectionInspected for split.example",
        ssl_for_port(r.local_port),
    );
    check_flow(&env, &e, false, Some(r.local_port), 8443);
    check_ssl(&env, &e, "split.example", "http/1.1");
}

#[test]
fn sensor_exit_leaves_no_filter() {
    let mut env = start();
    let running = env.client_attachments().expect("list attachments");
    assert!(
        running.any(),
        "the running sensor has nothing attached to {}:\n{running}",
        env.topo.client_if
    );
    // Traffic while attached, so the programs have state to tear down.
    env.curl_https("good.example", 443, false, "/")
        .expect("curl while the sensor runs");
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
    let after = env.client_attachments().expect("list attachments");
    assert!(
        !after.any(),
        "programs left on {} after the sensor exited:\n{after}",
        env.topo.client_if
    );
}
