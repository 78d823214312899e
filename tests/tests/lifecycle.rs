//! End-to-end tests of the flow lifecycle (DESIGN §1 step 7): a new connection on a
//! four-tuple the sensor has seen before is a new flow, inspected and judged like any
//! other, and a flood of short connections is reported in full or counted.
//!
//! Run as root, serially: `cargo xtask test` (or
//! `cargo test -p nprot-tests --test lifecycle -- --test-threads=1`).
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nprot_tests::{
    BLOCKED, Env, Value, ev,
    netns::{netns_cmd, sysctl},
    nginx::BODY_ROOT,
    start_blocking_bad, wait_event as wait,
};

/// One HTTP/1.0 request from an explicitly bound local port (SO_REUSEADDR), read to the
/// end: prints `bytes_received end` where end is `eof`, `reset` or `timeout`. HTTP/1.0
/// makes nginx close first, so the port is free again at once on the client side.
const BOUND_GET_PY: &str = r#"
import socket, sys
host, port, lport, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.settimeout(5)
s.bind(("", lport))
s.connect((host, port))
s.sendall(("GET / HTTP/1.0\r\nHost: %s\r\n\r\n" % name).encode())
got, end = b"", "eof"
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += d
except ConnectionResetError:
    end = "reset"
except socket.timeout:
    end = "timeout"
s.close()
sys.stdout.write("%d %s\n" % (len(got), end))
sys.stdout.write(got.decode("latin-1"))
"#;

/// What [`bound_get`] saw.
struct Got {
    received: usize,
    end: String,
    body: String,
}

/// `GET /` for `name` from local port `lport` to the server's port 80.
fn bound_get(env: &Env, lport: u16, name: &str) -> Result<Got> {
    let out = netns_cmd(&env.topo.client_ns, nprot_tests::clients::python3())
        .args(["-c", BOUND_GET_PY])
        .arg(env.server_ip(false).to_string())
        .arg("80")
        .arg(lport.to_string())
        .arg(name)
        .output()
        .context("running the bound client")?;
    if !out.status.success() {
        bail!(
            "bound client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once('\n').unwrap_or((&text, ""));
    let mut parts = head.split_whitespace();
    Ok(Got {
        received: parts.next().and_then(|n| n.parse().ok()).unwrap_or(0),
        end: parts.next().unwrap_or("").to_owned(),
        body: body.to_owned(),
    })
}

fn http_for(host: &'static str, lport: u16) -> impl Fn(&Value) -> bool {
    move |e| {
        ev::is(e, "HttpConnectionInspected")
            && ev::local_port(e, lport)
            && e["AdditionalFields"]["host"] == host
    }
}

/// How many events of `action` from `lport` there are now.
fn count(env: &Env, action: &str, lport: u16) -> usize {
    env.events()
        .events()
        .unwrap_or_default()
        .iter()
        .filter(|e| ev::is(e, action) && ev::local_port(e, lport))
        .count()
}

#[track_caller]
fn assert_allowed(env: &Env, got: &Got) {
    assert!(
        got.end == "eof" && got.body.contains(BODY_ROOT.trim()),
        "the allowed request must get its body: {} bytes, {}\n{}",
        got.received,
        got.end,
        env.diagnostics()
    );
}

#[track_caller]
fn assert_blocked(env: &Env, got: &Got) {
    assert!(
        got.end == "reset" && got.received == 0,
        "the blocked request must be reset with 0 bytes: {} bytes, {}\n{}",
        got.received,
        got.end,
        env.diagnostics()
    );
}

#[test]
fn reused_port_allowed_then_blocked() {
    let env = start_blocking_bad();
    let lport = 47001;
    let ok = bound_get(&env, lport, "good.example").expect("first request");
    assert_allowed(&env, &ok);
    wait(
        &env,
        "good.example inspected",
        http_for("good.example", lport),
    );

    let bad = bound_get(&env, lport, "bad.example").expect("second request");
    assert_blocked(&env, &bad);
    wait(
        &env,
        "bad.example inspected",
        http_for("bad.example", lport),
    );
    let blocked = wait(&env, "the block", |e| {
        ev::is(e, BLOCKED) && ev::local_port(e, lport)
    });
    assert_eq!(blocked["RemoteUrl"], "http://bad.example/", "{blocked}");
    assert_eq!(count(&env, "ConnectionSuccess", lport), 2);
    let stats = env.stats().expect("stats");
    assert_eq!(stats["flows"]["superseded"], 0, "{stats:#}");
}

#[test]
fn reused_port_blocked_then_allowed() {
    let env = start_blocking_bad();
    let lport = 47002;
    let bad = bound_get(&env, lport, "bad.example").expect("first request");
    assert_blocked(&env, &bad);
    wait(&env, "the block", |e| {
        ev::is(e, BLOCKED) && ev::local_port(e, lport)
    });

    let ok = bound_get(&env, lport, "good.example").expect("second request");
    assert_allowed(&env, &ok);
    wait(
        &env,
        "good.example inspected",
        http_for("good.example", lport),
    );
    assert_eq!(count(&env, "ConnectionSuccess", lport), 2);
}

/// A bounded asyncio client: `total` HTTP/1.0 requests, `parallel` at a time, each on a
/// fresh connection; prints how many completed with a 200 and how many failed.
const FLOOD_PY: &str = r#"
import asyncio, sys
host, port, total, parallel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ok = failed = 0
async def one():
    global ok, failed
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        w.write(b"GET /good HTTP/1.0\r\nHost: good.example\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 10)
        w.close()
        if data.startswith(b"HTTP/1.1 200"):
            ok += 1
        else:
            failed += 1
    except Exception:
        failed += 1
async def worker(n):
    for _ in range(n):
        await one()
async def main():
    per, extra = divmod(total, parallel)
    await asyncio.gather(*(worker(per + (i < extra)) for i in range(parallel)))
asyncio.run(main())
print(ok, failed)
"#;

fn kernel_counter(stats: &Value, name: &str) -> u64 {
    stats["kernel"][name].as_u64().unwrap_or(0)
}

/// Every line of the events file that is a `ConnectionSuccess` to port 80 (counted
/// without parsing: the file holds tens of thousands of events).
fn connections_reported(env: &Env) -> usize {
    std::fs::read_to_string(env.events().path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"ConnectionSuccess\"") && l.contains("\"RemotePort\":80,"))
        .count()
}

#[test]
fn flood_of_short_connections_is_reported_or_counted() {
    const TOTAL: u64 = 20_000;
    let env = Env::start_enforcing("audit", &[], &[]).expect("test environment with the sensor");
    // Enough ports and quick reuse: the flood recycles the client's ephemeral ports,
    // which is what used to hide flows.
    sysctl(
        &env.topo.client_ns,
        "net/ipv4/ip_local_port_range",
        "20000 60999",
    )
    .expect("port range");
    let before = env.stats().expect("stats before");
    let started = Instant::now();
    let out = netns_cmd(&env.topo.client_ns, nprot_tests::clients::python3())
        .args(["-c", FLOOD_PY])
        .arg(env.server_ip(false).to_string())
        .args(["80", &TOTAL.to_string(), "200"])
        .output()
        .expect("flood client");
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap_or(0));
    let (ok, failed) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert_eq!(
        (ok, failed),
        (TOTAL, 0),
        "flood client: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "flood: {TOTAL} connections in {elapsed:.1?} ({:.0}/s)",
        TOTAL as f64 / elapsed.as_secs_f64()
    );

    // Wait until every connection is reported or counted as lost.
    let deadline = Instant::now() + Duration::from_mins(2);
    let (reported, stats) = loop {
        let stats = env.stats().expect("stats");
        let lost = stats["flows"]["records_lost"].as_u64().unwrap_or(0)
            + stats["events_dropped"].as_u64().unwrap_or(0);
        let reported = connections_reported(&env) as u64;
        if reported + lost >= TOTAL || Instant::now() > deadline {
            break (reported, stats);
        }
        // Poll interval of a wait on the counters (deadline above).
        std::thread::sleep(Duration::from_millis(200));
    };
    let delta = |name: &str| kernel_counter(&stats, name) - kernel_counter(&before, name);
    let tracked = delta("flows_new");
    let not_tracked = delta("flow_insert_failed");
    let records_lost = delta("connection_records_lost");
    let events_lost = stats["events_dropped"].as_u64().unwrap_or(0);
    eprintln!(
        "flood: tracked {tracked}, not tracked {not_tracked}, reported {reported}, records lost {records_lost}, events lost {events_lost}, flows {}",
        stats["flows"]
    );
    assert_eq!(
        tracked + not_tracked,
        TOTAL,
        "every connection is tracked or counted: {stats:#}"
    );
    assert_eq!(
        reported + records_lost + events_lost,
        TOTAL,
        "every connection is reported or counted: {stats:#}"
    );
    // The table (262,144 entries) is far from full: nothing may be lost.
    assert_eq!(
        (not_tracked, records_lost, events_lost),
        (0, 0, 0),
        "{stats:#}"
    );
    assert!(
        delta("flows_closed") >= TOTAL,
        "every flow's end is seen on the fast path: {stats:#}"
    );
}
