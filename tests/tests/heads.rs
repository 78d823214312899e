//! End-to-end tests of long HTTP request heads (issue 12, item 3): a head up to 64 KiB is
//! judged in full, wherever its `Host` is; a longer one follows the `oversized` setting
//! and its event says so. Also the request-line edge cases of item 6 (`OPTIONS *`,
//! HTTP/0.9).
//!
//! Run as root, serially: `cargo xtask test` (or
//! `cargo test -p nprot-tests --test heads -- --test-threads=1`).
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::time::Duration;

use nprot_tests::{
    ClientServer, CurlRun, EVENT_TIMEOUT, Env, Exchange, ExchangeEnd, Value, assert_reset, ev,
    indicators::{indicator, write_file},
    nginx::{BODY_GOOD, BODY_ROOT},
};

const BLOCKED: &str = "ExploitGuardNetworkProtectionBlocked";

/// `bad.example` → Block.
fn block_bad() -> Vec<Value> {
    vec![indicator("b1", "DomainName", "bad.example", "Block")]
}

#[track_caller]
fn wait(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    env.events()
        .wait_for_described(what, pred, EVENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The `HttpConnectionInspected` of the flow from `port`.
fn http_for(port: u16) -> impl Fn(&Value) -> bool {
    move |e| ev::is(e, "HttpConnectionInspected") && ev::local_port(e, port)
}

/// `X-Pad: <n bytes>` for curl's `-H`.
fn pad(n: usize) -> String {
    format!("X-Pad: {}", "p".repeat(n))
}

/// curl to port 80 of the server with `headers` (in this order, after curl's own
/// request line, and its Host unless one of them is a Host), whatever happened.
fn curl(env: &Env, name: &str, headers: &[String]) -> CurlRun {
    let mut extra: Vec<&str> = Vec::new();
    for h in headers {
        extra.extend(["-H", h.as_str()]);
    }
    env.curl_http_any(name, 80, false, "/", &extra)
        .expect("curl")
}

#[track_caller]
fn assert_ok(env: &Env, what: &str, r: &CurlRun, body: &str) {
    assert!(
        r.exit_code == Some(0) && r.http_code == 200 && r.body.trim() == body,
        "{what}: expected 200 with {body:?}; got {r:?}\n{}",
        env.diagnostics()
    );
}

/// `head` sent in 1400-byte writes 2 ms apart (TCP_NODELAY): every segment is small and
/// the sensor sees each before the next, as from a slow client.
fn send_slowly(env: &Env, head: &[u8]) -> Exchange {
    let chunks: Vec<&[u8]> = head.chunks(1400).collect();
    env.exchange(
        80,
        false,
        &chunks,
        Duration::from_millis(2),
        Duration::from_secs(2),
        1 << 20,
    )
    .expect("raw exchange")
}

/// A request for `/` of `host` with `pad` bytes of `X-Pad` before its Host.
fn head_with_host_after(pad: usize, host: &str) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nX-Pad: {}\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        "p".repeat(pad)
    )
    .into_bytes()
}

/// Writes a config file (block mode, `bad.example` blocked, `extra` lines) and starts
/// the sensor with it.
fn start_with_config(extra: &str) -> Env {
    let mut env = Env::start_without_sensor().expect("env");
    let indicators = write_file(env.dir(), "indicators.json", &block_bad()).expect("indicators");
    let config = env.dir().join("nprot.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"block\"\nindicators = [\"{}\"]\nrt_priority = 0\n{extra}\n",
            indicators.display()
        ),
    )
    .expect("write config");
    env.start_sensor(&["--config", &config.to_string_lossy()])
        .expect("sensor from config");
    env
}

/// curl writes the head at once: on the veth (TSO) the kernel sees it in segments of up to
/// 64 KiB and captures 4096 bytes of each, so the head is judged by its start (curl sends
/// Host, a custom one too, right after the request line). Where every byte is captured
/// the head is judged in full: see the slow sender below.
#[test]
fn a_blocked_name_behind_40_kb_of_headers_is_reset() {
    let env = Env::start_enforcing("block", &block_bad(), &[]).expect("env");
    let r = curl(
        &env,
        "bad.example",
        &[pad(40_000), "Host: bad.example".into()],
    );
    assert_reset("bad.example behind 40 KB", &r, || env.diagnostics());
    let e = wait(&env, "the request's event", http_for(r.local_port));
    assert_eq!(e["AdditionalFields"]["host"], "bad.example", "{e}");
    let b = wait(&env, "the block", |e| {
        ev::is(e, BLOCKED) && ev::local_port(e, r.local_port)
    });
    assert_eq!(b["RemoteUrl"], "http://bad.example/", "{b}");
    // The same padding before an allowed name passes.
    let ok = curl(
        &env,
        "good.example",
        &[pad(40_000), "Host: good.example".into()],
    );
    assert_ok(&env, "good.example behind 40 KB", &ok, BODY_ROOT);
}

#[test]
fn a_blocked_name_behind_40_kb_sent_slowly_is_reset() {
    let env = Env::start_enforcing("block", &block_bad(), &[]).expect("env");
    let x = send_slowly(&env, &head_with_host_after(40_000, "bad.example"));
    assert!(
        x.received == 0 && matches!(x.end, ExchangeEnd::Reset | ExchangeEnd::Eof),
        "expected a reset with 0 bytes; got {x:?}\n{}",
        env.diagnostics()
    );
    let e = wait(&env, "the request's event", http_for(x.local_port));
    assert_eq!(e["AdditionalFields"]["host"], "bad.example", "{e}");
    assert_eq!(
        e["AdditionalFields"].get("oversized"),
        None,
        "judged in full: {e}"
    );
    let stats = env.stats().expect("stats");
    assert!(
        stats["pipeline"]["budget_renewals"].as_u64() >= Some(2),
        "{stats}"
    );
    // Allowed, the same head gets its answer.
    let x = send_slowly(&env, &head_with_host_after(40_000, "good.example"));
    assert!(
        x.first.starts_with(&nprot_tests::tls::hex(b"HTTP/1.1 200")),
        "{x:?}\n{}",
        env.diagnostics()
    );
}

#[test]
fn an_oversized_head_is_allowed_by_default_and_says_so() {
    let env = Env::start_enforcing("block", &block_bad(), &[]).expect("env");
    let r = curl(&env, "good.example", &[pad(70_000)]);
    assert_ok(&env, "a 70 KB head", &r, BODY_ROOT);
    let e = wait(&env, "the oversized event", http_for(r.local_port));
    let f = &e["AdditionalFields"];
    assert_eq!(f["oversized"], true, "{e}");
    assert_eq!(f["oversized_action"], "allow", "{e}");
    assert_eq!(f["reset"], false, "{e}");
    // curl sends its Host first: the head's start names the host.
    assert_eq!(f["host"], "good.example", "{e}");
    assert!(
        f["reason"] == "head_too_long" || f["reason"] == "head_not_captured",
        "{e}"
    );
    // Sent slowly, every byte is captured: too long.
    let x = send_slowly(&env, &head_with_host_after(70_000, "good.example"));
    assert!(x.received > 0, "{x:?}\n{}", env.diagnostics());
    let e = wait(&env, "the second oversized event", http_for(x.local_port));
    assert_eq!(e["AdditionalFields"]["reason"], "head_too_long", "{e}");
    assert!(
        e["AdditionalFields"]["head_bytes"].as_u64() >= Some(65_536),
        "{e}"
    );
    let stats = env.stats().expect("stats");
    assert!(
        stats["pipeline"]["oversized"].as_u64() >= Some(1),
        "{stats}"
    );
}

#[test]
fn an_oversized_head_is_reset_with_oversized_block() {
    let env = start_with_config("oversized = \"block\"");
    let r = curl(&env, "good.example", &[pad(70_000)]);
    assert_reset("a 70 KB head with oversized = block", &r, || {
        env.diagnostics()
    });
    let e = wait(&env, "the oversized event", http_for(r.local_port));
    let f = &e["AdditionalFields"];
    assert_eq!(
        (&f["oversized"], &f["oversized_action"], &f["reset"]),
        (
            &Value::from(true),
            &Value::from("block"),
            &Value::from(true)
        ),
        "{e}"
    );
    // Heads that fit are untouched.
    let ok = env
        .curl_http_any("good.example", 80, false, "/good", &[])
        .expect("curl");
    assert_ok(&env, "a short head", &ok, BODY_GOOD);
}

#[test]
fn options_asterisk_and_http_0_9_are_reported() {
    let env = Env::start_enforcing("block", &block_bad(), &[]).expect("env");
    let r = env
        .curl_http_any(
            "good.example",
            80,
            false,
            "/",
            &["-X", "OPTIONS", "--request-target", "*"],
        )
        .expect("curl OPTIONS *");
    let e = wait(&env, "OPTIONS *", http_for(r.local_port));
    assert_eq!(e["RemoteUrl"], "http://good.example", "{e}");
    assert_eq!(e["AdditionalFields"]["uri"], "*", "{e}");

    let x = env
        .exchange(
            80,
            false,
            &[b"GET /good\r\n"],
            Duration::ZERO,
            Duration::from_secs(2),
            1 << 16,
        )
        .expect("HTTP/0.9 request");
    let e = wait(&env, "the HTTP/0.9 request", http_for(x.local_port));
    let server = env.server_ip(false);
    assert_eq!(e["RemoteUrl"], format!("http://{server}/good"), "{e}");
    assert_eq!(e["AdditionalFields"]["method"], "GET", "{e}");
    assert_eq!(e["AdditionalFields"]["host"], Value::Null, "{e}");
}
