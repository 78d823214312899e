//! End-to-end tests of enforcement (DESIGN §1 steps 4–5, §3, §4): the sensor guards the
//! client's veth with an indicator file and a mode; in block mode a matching flow must be
//! reset with no response byte reaching the client, allowed flows must work, and the
//! verdicts must be logged as `ExploitGuardNetworkProtection{Blocked,Audited}` events.
//!
//! Every test here fails against a sensor that inspects but never enforces: either a
//! client that must be reset gets its response, or an event that only enforcement logs
//! is missing.
//!
//! Run as root, serially: `cargo xtask test` (or
//! `cargo test -p nprot-tests --test enforce -- --test-threads=1`).
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use nprot_tests::{
    ClientServer, CurlRun, EVENT_TIMEOUT, Env, Exchange, ExchangeEnd, HelloSpec, Launch, Value,
    assert_absent_so_far, assert_reset, client_hello, ev,
    indicators::{indicator, with, write_file, write_raw},
    nginx::{BODY_BAD, BODY_GOOD, BODY_ROOT},
    sensor::READY_MARKER,
};

const BLOCKED: &str = "ExploitGuardNetworkProtectionBlocked";
const AUDITED: &str = "ExploitGuardNetworkProtectionAudited";

fn start(mode: &str, indicators: &[Value]) -> Env {
    Env::start_enforcing(mode, indicators, &[]).expect("test environment with the sensor")
}

/// `bad.example` → Block, titled.
fn block_bad_example() -> Value {
    with(
        indicator("i1", "DomainName", "bad.example", "Block"),
        "title",
        "Bad site",
    )
}

/// Waits for an event matching `pred`; panics with every event and the sensor's stderr.
fn wait(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    env.events()
        .wait_for_described(what, pred, EVENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Panics if an event matching `pred` was reported for anything done so far (checked
/// against a later, allowed flow: [`assert_absent_so_far`]).
#[track_caller]
fn absent(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) {
    assert_absent_so_far(env, env.events(), what, pred);
}

use nprot_tests::check_field as check;

/// The event of type `action` for the flow from `local_port`.
fn action_for(action: &str, local_port: u16) -> impl Fn(&Value) -> bool + '_ {
    move |e| ev::is(e, action) && ev::local_port(e, local_port)
}

/// Any verdict event (blocked or audited) for the flow from `local_port`.
fn verdict_for(local_port: u16) -> impl Fn(&Value) -> bool {
    move |e| (ev::is(e, BLOCKED) || ev::is(e, AUDITED)) && ev::local_port(e, local_port)
}

fn inspected_for(local_port: u16) -> impl Fn(&Value) -> bool {
    move |e| {
        (ev::is(e, "SslConnectionInspected") || ev::is(e, "HttpConnectionInspected"))
            && ev::local_port(e, local_port)
    }
}

/// What a verdict event must say.
struct Verdict<'a> {
    action_type: &'a str,
    indicator_id: &'a str,
    indicator_value: &'a str,
    action: &'a str,
    title: Option<&'a str>,
    mode: &'a str,
    /// `RemoteUrl`, if it is to be checked.
    url: Option<&'a str>,
    v6: bool,
    remote_port: u16,
}

impl<'a> Verdict<'a> {
    /// [`block_bad_example`]'s Blocked event for a flow to `url` on `remote_port`.
    fn bad_example_blocked(url: &'a str, v6: bool, remote_port: u16) -> Verdict<'a> {
        Verdict {
            action_type: BLOCKED,
            indicator_id: "i1",
            indicator_value: "bad.example",
            action: "Block",
            title: Some("Bad site"),
            mode: "Block",
            url: Some(url),
            v6,
            remote_port,
        }
    }
}

/// Waits for the verdict event of the flow from `local_port`, checks it against `want`
/// and against the flow's inspection event, and returns it.
#[track_caller]
fn check_verdict(env: &Env, local_port: u16, want: &Verdict) -> Value {
    let e = wait(
        env,
        &format!("{} from port {local_port}", want.action_type),
        action_for(want.action_type, local_port),
    );
    check(env, &e, "Table", "DeviceEvents");
    check(env, &e, "LocalIP", env.client_ip(want.v6).to_string());
    check(env, &e, "RemoteIP", env.server_ip(want.v6).to_string());
    check(env, &e, "LocalPort", local_port);
    check(env, &e, "RemotePort", want.remote_port);
    if let Some(url) = want.url {
        check(env, &e, "RemoteUrl", url);
    }
    check(
        env,
        &e,
        "/AdditionalFields/ResponseCategory",
        "CustomBlockList",
    );
    check(
        env,
        &e,
        "/AdditionalFields/IsAudit",
        want.action_type == AUDITED,
    );
    check(env, &e, "/AdditionalFields/IndicatorId", want.indicator_id);
    check(
        env,
        &e,
        "/AdditionalFields/IndicatorValue",
        want.indicator_value,
    );
    check(env, &e, "/AdditionalFields/Action", want.action);
    match want.title {
        Some(title) => check(env, &e, "/AdditionalFields/DisplayName", title),
        None => check(env, &e, "/AdditionalFields/DisplayName", Value::Null),
    }
    check(env, &e, "/AdditionalFields/Mode", want.mode);
    assert!(
        e["Timestamp"].as_str().is_some_and(|t| t.contains('T')) && e["ReportId"].is_number(),
        "Timestamp / ReportId: {e}"
    );
    if want.url.is_some() {
        // The flow was inspected too, and the verdict names the same direction.
        let inspected = wait(
            env,
            &format!("inspection event from port {local_port}"),
            inspected_for(local_port),
        );
        let direction = &inspected["AdditionalFields"]["direction"];
        check(env, &e, "/AdditionalFields/direction", direction.clone());
    }
    e
}

/// Asserts that curl succeeded with status 200 and `body`.
#[track_caller]
fn assert_ok(env: &Env, what: &str, r: &CurlRun, body: &str) {
    assert!(
        r.exit_code == Some(0) && r.http_code == 200 && r.body.trim() == body,
        "{what}: expected 200 with body {body:?}; got {r:?}\n{}",
        env.diagnostics()
    );
}

/// Asserts that a raw client saw its connection end (reset or closed) without a single
/// response byte.
#[track_caller]
fn assert_nothing_received(env: &Env, what: &str, x: &Exchange) {
    assert!(
        x.received == 0 && matches!(x.end, ExchangeEnd::Reset | ExchangeEnd::Eof),
        "{what}: expected a reset (or close) with 0 bytes received; got {x:?}\n{}",
        env.diagnostics()
    );
}

/// Test 1 (IPv4) and 6 (IPv6): bad.example is reset with a Blocked event, good.example
/// on the same server works and has no verdict event.
fn blocked_name_and_allowed_name(v6: bool) {
    let env = start("block", &[block_bad_example()]);

    let bad = env
        .curl_https_any("bad.example", 443, v6, "/bad/")
        .expect("curl bad.example");
    assert_reset("https://bad.example", &bad, || env.diagnostics());
    check_verdict(
        &env,
        bad.local_port,
        &Verdict::bad_example_blocked("bad.example", v6, 443),
    );

    let good = env
        .curl_https_any("good.example", 443, v6, "/good")
        .expect("curl good.example");
    assert_ok(&env, "https://good.example", &good, BODY_GOOD);
    let e = wait(
        &env,
        "SslConnectionInspected for good.example",
        inspected_for(good.local_port),
    );
    check(&env, &e, "RemoteUrl", "good.example");
    wait(&env, "ConnectionSuccess for good.example", |e| {
        ev::is(e, "ConnectionSuccess") && ev::local_port(e, good.local_port)
    });
    absent(
        &env,
        "verdict event for good.example",
        verdict_for(good.local_port),
    );
}

#[test]
fn https_blocked_name_is_reset_allowed_name_works() {
    blocked_name_and_allowed_name(false);
}

#[test]
fn ipv6_blocked() {
    blocked_name_and_allowed_name(true);
}

#[test]
fn http_url_path_blocked_good_path_passes() {
    let url = "http://good.example/bad/";
    let env = start("block", &[indicator("u1", "Url", url, "Block")]);

    let bad = env
        .curl_http_any("good.example", 80, false, "/bad/x", &[])
        .expect("curl good.example/bad/x");
    assert_reset("http://good.example/bad/x", &bad, || env.diagnostics());
    check_verdict(
        &env,
        bad.local_port,
        &Verdict {
            action_type: BLOCKED,
            indicator_id: "u1",
            indicator_value: url,
            action: "Block",
            title: None,
            mode: "Block",
            url: Some("http://good.example/bad/x"),
            v6: false,
            remote_port: 80,
        },
    );

    // Another path on the same host, and the same path on another host, pass.
    for (host, path, body) in [
        ("good.example", "/good", BODY_GOOD),
        ("bad.example", "/bad/x", BODY_BAD),
    ] {
        let r = env
            .curl_http_any(host, 80, false, path, &[])
            .expect("curl http");
        assert_ok(&env, &format!("http://{host}{path}"), &r, body);
        let e = wait(
            &env,
            &format!("HttpConnectionInspected for {host}{path}"),
            inspected_for(r.local_port),
        );
        check(&env, &e, "RemoteUrl", format!("http://{host}{path}"));
        absent(
            &env,
            &format!("verdict event for {host}{path}"),
            verdict_for(r.local_port),
        );
    }
}

#[test]
fn ip_indicator_blocks() {
    let mut env = Env::start_without_sensor().expect("test environment");
    let IpAddr::V4(v4) = env.server_ip(false) else {
        unreachable!("server_ip(false) is IPv4")
    };
    let [a, b, c, _] = v4.octets();
    let cidr = format!("{a}.{b}.{c}.0/24");
    let v6 = env.server_ip(true).to_string();
    env.enforce(
        "block",
        &[
            indicator("net4", "IpAddress", &cidr, "Block"),
            indicator("ip6", "IpAddress", &v6, "Block"),
        ],
        &[],
    )
    .expect("sensor");

    for (family_v6, id, value) in [(false, "net4", &cidr), (true, "ip6", &v6)] {
        let r = env
            .curl_https_any("good.example", 443, family_v6, "/good")
            .expect("curl good.example");
        // An address is known before any payload: a sensor may already answer the SYN with
        // a reset (curl: "connection refused", exit 7, local port unknown).
        let refused_at_connect = r.exit_code == Some(7) && r.size_download == 0;
        if !refused_at_connect {
            assert_reset(&format!("https to {value}"), &r, || env.diagnostics());
        }
        let e = wait(&env, &format!("Blocked event for {value}"), |e| {
            ev::is(e, BLOCKED)
                && ev::field(e, "IndicatorValue", value)
                && (refused_at_connect || ev::local_port(e, r.local_port))
        });
        check(&env, &e, "Table", "DeviceEvents");
        check(&env, &e, "RemoteIP", env.server_ip(family_v6).to_string());
        check(&env, &e, "/AdditionalFields/IndicatorId", id);
        check(&env, &e, "/AdditionalFields/IsAudit", false);
        check(&env, &e, "/AdditionalFields/Action", "Block");
        check(&env, &e, "/AdditionalFields/Mode", "Block");
        check(&env, &e, "RemotePort", 443);
    }
}

#[test]
fn audit_mode_lets_all_through_and_logs_audited() {
    let env = start("audit", &[block_bad_example()]);

    let bad = env
        .curl_https_any("bad.example", 443, false, "/bad/")
        .expect("curl bad.example");
    assert_ok(&env, "https://bad.example in audit mode", &bad, BODY_BAD);
    check_verdict(
        &env,
        bad.local_port,
        &Verdict {
            action_type: AUDITED,
            mode: "Audit",
            ..Verdict::bad_example_blocked("bad.example", false, 443)
        },
    );

    let good = env
        .curl_https_any("good.example", 443, false, "/good")
        .expect("curl good.example");
    assert_ok(&env, "https://good.example in audit mode", &good, BODY_GOOD);
    wait(
        &env,
        "SslConnectionInspected for good.example",
        inspected_for(good.local_port),
    );
    absent(
        &env,
        "verdict event for good.example",
        verdict_for(good.local_port),
    );
    absent(&env, "Blocked event in audit mode", |e| ev::is(e, BLOCKED));
}

#[test]
fn warn_resets_in_block_mode() {
    let env = start(
        "block",
        &[indicator("w1", "DomainName", "warn.example", "Warn")],
    );
    let r = env
        .curl_https_any("warn.example", 443, false, "/")
        .expect("curl warn.example");
    assert_reset("https://warn.example", &r, || env.diagnostics());
    check_verdict(
        &env,
        r.local_port,
        &Verdict {
            action_type: BLOCKED,
            indicator_id: "w1",
            indicator_value: "warn.example",
            action: "Warn",
            title: None,
            mode: "Block",
            url: Some("warn.example"),
            v6: false,
            remote_port: 443,
        },
    );
    let good = env
        .curl_https_any("good.example", 443, false, "/")
        .expect("curl good.example");
    assert_ok(&env, "https://good.example", &good, BODY_ROOT);
}

#[test]
fn audit_indicator_passes_and_is_logged_in_block_mode() {
    let env = start(
        "block",
        &[indicator("a1", "DomainName", "audit.example", "Audit")],
    );
    let r = env
        .curl_https_any("audit.example", 443, false, "/")
        .expect("curl audit.example");
    assert_ok(&env, "https://audit.example", &r, BODY_ROOT);
    check_verdict(
        &env,
        r.local_port,
        &Verdict {
            action_type: AUDITED,
            indicator_id: "a1",
            indicator_value: "audit.example",
            action: "Audit",
            title: None,
            mode: "Block",
            url: Some("audit.example"),
            v6: false,
            remote_port: 443,
        },
    );
    absent(
        &env,
        "Blocked event for an Audit indicator",
        action_for(BLOCKED, r.local_port),
    );
}

#[test]
fn subdomain_blocked_lookalike_allowed() {
    let env = start("block", &[block_bad_example()]);
    let sub = env
        .curl_https_any("www.bad.example", 443, false, "/")
        .expect("curl www.bad.example");
    assert_reset("https://www.bad.example", &sub, || env.diagnostics());
    check_verdict(
        &env,
        sub.local_port,
        &Verdict::bad_example_blocked("www.bad.example", false, 443),
    );
    // Same suffix, not a subdomain.
    let lookalike = env
        .curl_https_any("notbad.example", 443, false, "/")
        .expect("curl notbad.example");
    assert_ok(&env, "https://notbad.example", &lookalike, BODY_ROOT);
    wait(
        &env,
        "SslConnectionInspected for notbad.example",
        inspected_for(lookalike.local_port),
    );
    absent(
        &env,
        "verdict event for notbad.example",
        verdict_for(lookalike.local_port),
    );
}

#[test]
fn more_specific_allowed_and_expired_indicators_pass() {
    let env = start(
        "block",
        &[
            block_bad_example(),
            indicator("ok", "DomainName", "ok.bad.example", "Allowed"),
            indicator("u1", "Url", "http://good.example/bad/", "Block"),
            indicator("u2", "Url", "http://good.example/bad/ok/", "Allowed"),
            with(
                indicator("old", "DomainName", "warn.example", "Block"),
                "expiration",
                "2000-01-01T00:00:00Z",
            ),
        ],
    );
    // Each pair: an allowed flow, then the blocked flow that proves the broader indicator
    // is in force.
    let ok = env
        .curl_https_any("ok.bad.example", 443, false, "/")
        .expect("curl ok.bad.example");
    assert_ok(&env, "https://ok.bad.example (Allowed)", &ok, BODY_ROOT);
    let blocked = env
        .curl_https_any("x.bad.example", 443, false, "/")
        .expect("curl x.bad.example");
    assert_reset("https://x.bad.example", &blocked, || env.diagnostics());

    let ok_path = env
        .curl_http_any("good.example", 80, false, "/bad/ok/x", &[])
        .expect("curl /bad/ok/x");
    assert_ok(
        &env,
        "http://good.example/bad/ok/x (Allowed)",
        &ok_path,
        BODY_BAD,
    );
    let blocked_path = env
        .curl_http_any("good.example", 80, false, "/bad/no", &[])
        .expect("curl /bad/no");
    assert_reset("http://good.example/bad/no", &blocked_path, || {
        env.diagnostics()
    });

    let expired = env
        .curl_https_any("warn.example", 443, false, "/")
        .expect("curl warn.example");
    assert_ok(&env, "https://warn.example (expired)", &expired, BODY_ROOT);

    wait(
        &env,
        "Blocked event for x.bad.example",
        action_for(BLOCKED, blocked.local_port),
    );
    wait(
        &env,
        "Blocked event for /bad/no",
        action_for(BLOCKED, blocked_path.local_port),
    );
    for (what, port) in [
        ("ok.bad.example", ok.local_port),
        ("/bad/ok/x", ok_path.local_port),
        ("warn.example", expired.local_port),
    ] {
        wait(&env, &format!("inspection of {what}"), inspected_for(port));
        absent(
            &env,
            &format!("Blocked event for {what}"),
            action_for(BLOCKED, port),
        );
    }
}

#[test]
fn device_group_scoping() {
    let env = Env::start_enforcing(
        "block",
        &[
            with(
                indicator("lab", "DomainName", "bad.example", "Block"),
                "device_groups",
                serde_json::json!(["lab"]),
            ),
            with(
                indicator("other", "DomainName", "warn.example", "Block"),
                "device_groups",
                serde_json::json!(["other"]),
            ),
        ],
        &["--device-group", "lab"],
    )
    .expect("test environment with the sensor");
    let bad = env
        .curl_https_any("bad.example", 443, false, "/")
        .expect("curl bad.example");
    assert_reset("https://bad.example (group lab)", &bad, || {
        env.diagnostics()
    });
    let other = env
        .curl_https_any("warn.example", 443, false, "/")
        .expect("curl warn.example");
    assert_ok(
        &env,
        "https://warn.example (group other)",
        &other,
        BODY_ROOT,
    );
    let e = wait(
        &env,
        "Blocked event for bad.example",
        action_for(BLOCKED, bad.local_port),
    );
    check(&env, &e, "/AdditionalFields/IndicatorId", "lab");
    wait(
        &env,
        "inspection of warn.example",
        inspected_for(other.local_port),
    );
    absent(
        &env,
        "verdict event for warn.example",
        verdict_for(other.local_port),
    );
}

#[test]
fn split_client_hello_still_blocked() {
    let env = start("block", &[block_bad_example()]);
    let read_timeout = Duration::from_secs(3);
    let pause = Duration::from_millis(50);
    for (sni, blocked) in [("bad.example", true), ("good.example", false)] {
        let hello = client_hello(&HelloSpec::new(sni));
        let b = &hello.bytes;
        // Cuts inside the extension list and inside the host name.
        let first = usize::midpoint(hello.extensions_start, hello.sni_extension);
        let second = hello.sni_name + 3;
        let x = env
            .exchange(
                443,
                false,
                &[&b[..first], &b[first..second], &b[second..]],
                pause,
                read_timeout,
                1,
            )
            .expect("split ClientHello");
        if blocked {
            assert_nothing_received(&env, "split ClientHello for bad.example", &x);
            check_verdict(
                &env,
                x.local_port,
                &Verdict::bad_example_blocked("bad.example", false, 443),
            );
        } else {
            // The control: the same split hello for an allowed name gets a handshake record.
            assert!(
                x.end == ExchangeEnd::Limit && x.first.starts_with("16"),
                "split ClientHello for good.example: expected a ServerHello, got {x:?}\n{}",
                env.diagnostics()
            );
            wait(
                &env,
                "SslConnectionInspected for the split good.example hello",
                inspected_for(x.local_port),
            );
            absent(
                &env,
                "verdict event for good.example",
                verdict_for(x.local_port),
            );
        }
    }
}

#[test]
fn no_leak_from_instant_large_response() {
    const PORT: u16 = 8081;
    const BODY: u64 = 2 << 20;
    let env = start("block", &[block_bad_example()]);
    let server = env
        .start_bulk_server(PORT, false, BODY)
        .expect("bulk server");
    let request = |host: &str| format!("GET / HTTP/1.1\r\nHost: {host}:{PORT}\r\n\r\n");
    let read_timeout = Duration::from_secs(3);

    // Control: the server really sends the whole response at once to an allowed host.
    let req = request("good.example");
    let allowed = env
        .exchange(
            PORT,
            false,
            &[req.as_bytes()],
            Duration::ZERO,
            read_timeout,
            u64::MAX,
        )
        .expect("allowed request");
    assert!(
        allowed.end == ExchangeEnd::Eof && allowed.received == server.response_len(),
        "allowed host: expected all {} bytes then EOF, got {allowed:?}\n{}",
        server.response_len(),
        env.diagnostics()
    );

    let req = request("bad.example");
    let blocked = env
        .exchange(
            PORT,
            false,
            &[req.as_bytes()],
            Duration::ZERO,
            read_timeout,
            u64::MAX,
        )
        .expect("blocked request");
    assert_nothing_received(&env, "raw request with Host bad.example", &blocked);
    check_verdict(
        &env,
        blocked.local_port,
        &Verdict::bad_example_blocked(&format!("http://bad.example:{PORT}/"), false, PORT),
    );

    // The same with curl, counting what it downloaded.
    let r = env
        .curl_http_any("bad.example", PORT, false, "/", &[])
        .expect("curl bad.example:8081");
    assert_reset("curl http://bad.example:8081/", &r, || env.diagnostics());
    let r = env
        .curl_http_any("good.example", PORT, false, "/", &[])
        .expect("curl good.example:8081");
    assert!(
        r.exit_code == Some(0) && r.size_download == BODY && r.body_len as u64 == BODY,
        "curl http://good.example:8081/: expected {BODY} bytes, got exit {:?}, \
         size_download {}, body {} bytes, stderr {}\n{}",
        r.exit_code,
        r.size_download,
        r.body_len,
        r.stderr,
        env.diagnostics()
    );
    wait(
        &env,
        "HttpConnectionInspected for the allowed host",
        inspected_for(allowed.local_port),
    );
    absent(
        &env,
        "verdict event for the allowed host",
        verdict_for(allowed.local_port),
    );
}

/// An invalid indicator file for [`bad_indicator_file_refused`].
struct BadFile {
    name: &'static str,
    /// A bad indicator (written after a valid one), or the raw file text.
    content: Result<Value, &'static str>,
    /// What the error must mention (the reason); empty: nothing in particular.
    reason: &'static str,
    /// Words that name the bad entry (its id or value); its position works too.
    entry: [&'static str; 2],
}

#[test]
fn bad_indicator_file_refused() {
    let env = Env::start_without_sensor().expect("test environment");
    let good = indicator("fine", "DomainName", "good.example", "Allowed");
    let cases = [
        BadFile {
            name: "action.json",
            content: Ok(indicator("bad-action", "DomainName", "bad.example", "Blok")),
            reason: "Blok",
            entry: ["bad-action", "bad.example"],
        },
        BadFile {
            name: "type.json",
            content: Ok(indicator("bad-type", "Hostname", "bad.example", "Block")),
            reason: "Hostname",
            entry: ["bad-type", "bad.example"],
        },
        BadFile {
            name: "ip.json",
            content: Ok(indicator("bad-ip", "IpAddress", "198.18.0.300", "Block")),
            reason: "198.18.0.300",
            entry: ["bad-ip", "198.18.0.300"],
        },
        BadFile {
            name: "expiration.json",
            content: Ok(with(
                indicator("bad-expiry", "DomainName", "bad.example", "Block"),
                "expiration",
                "next tuesday",
            )),
            reason: "next tuesday",
            entry: ["bad-expiry", "bad.example"],
        },
        BadFile {
            name: "truncated.json",
            content: Err(r#"{"indicators": [{"type": "#),
            reason: "",
            entry: ["", ""],
        },
    ];
    let bound = Duration::from_secs(5);
    for BadFile {
        name,
        content,
        reason,
        entry,
    } in cases
    {
        let path = match content {
            Ok(bad) => write_file(env.dir(), name, &[good.clone(), bad]),
            Err(text) => write_raw(env.dir(), name, text),
        }
        .expect("write indicator file");
        let path = path.to_string_lossy().into_owned();
        let started = Instant::now();
        let launch = env
            .launch_sensor(&["--mode", "block", "--indicators", &path], bound)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let (status, stderr) = match launch {
            Launch::Exited { status, stderr } => (status, stderr),
            Launch::Ready(sensor) => panic!(
                "{name}: the sensor started with an invalid indicator file; stderr:\n{}",
                sensor.stderr().text()
            ),
        };
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("nprot: error:"))
            .collect();
        assert!(
            !status.success() && errors.len() == 1 && !stderr.contains(READY_MARKER),
            "{name}: expected a non-zero exit with one `nprot: error:` line and no \
             `{READY_MARKER}`; got {status} after {:?}, stderr:\n{stderr}",
            started.elapsed()
        );
        let error = errors[0];
        if !reason.is_empty() {
            let names_entry = entry.iter().any(|e| error.contains(e))
                || ["#2", "[1]", "indicator 2", "entry 2"]
                    .iter()
                    .any(|e| error.contains(e));
            assert!(
                error.contains(reason) && names_entry,
                "{name}: the error should name the entry ({entry:?} or its position) and \
                 the reason ({reason:?}): {error}"
            );
        }
    }
    let left = env.client_attachments().expect("attachments");
    assert!(
        !left.any(),
        "a sensor that refused to start left programs attached:\n{left}"
    );
}
