//! End-to-end tests of every-request inspection (DESIGN §1 step 8): on a kept-alive
//! HTTP/1.x connection to a server, each request is reported and judged; a blocked one
//! is reset before any byte of its response reaches the client, and the responses before
//! it are delivered.
//!
//! Run as root, serially: `cargo xtask test` (or
//! `cargo test -p nprot-tests --test requests -- --test-threads=1`).
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use anyhow::{Context, Result};
use nprot_tests::{
    BLOCKED, Env, Value, ev,
    indicators::indicator,
    netns::netns_cmd,
    nginx::{BODY_BAD, BODY_GOOD},
    wait_event as wait,
};

/// A `Url` Block on one path of a server whose other paths are fine.
fn start() -> Env {
    Env::start_enforcing(
        "block",
        &[indicator("u1", "Url", "http://good.example/bad/", "Block")],
        &[],
    )
    .expect("test environment with the sensor")
}

fn inspected(uri: &'static str, depth: u64) -> impl Fn(&Value) -> bool {
    move |e| {
        ev::is(e, "HttpConnectionInspected")
            && e["AdditionalFields"]["uri"] == uri
            && e["AdditionalFields"]["trans_depth"] == depth
    }
}

/// curl fetching `paths` of good.example in order, on one connection where it can.
fn curl_paths(env: &Env, paths: &[&str]) -> Result<(String, String)> {
    let server = env.server_ip(false);
    let out = netns_cmd(&env.topo.client_ns, "curl")
        .args(["-sS", "--max-time", "5", "--resolve"])
        .arg(format!("good.example:80:{server}"))
        .args(paths.iter().map(|p| format!("http://good.example{p}")))
        .output()
        .context("running curl")?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn keep_alive_good_then_bad_resets_the_bad_request_only() {
    let env = start();
    let (body, stderr) = curl_paths(&env, &["/good", "/bad/"]).expect("curl");
    assert!(
        body.contains(BODY_GOOD) && !body.contains(BODY_BAD),
        "the first response arrives, not one byte of the blocked one: {body:?} {stderr}\n{}",
        env.diagnostics()
    );
    assert!(stderr.contains("reset"), "{stderr}");
    let first = wait(&env, "/good, first request", inspected("/good", 1));
    let second = wait(&env, "/bad/, second request", inspected("/bad/", 2));
    assert_eq!(
        first["LocalPort"], second["LocalPort"],
        "one connection: {first} {second}"
    );
    let blocked = wait(&env, "the block", |e| ev::is(e, BLOCKED));
    assert_eq!(blocked["RemoteUrl"], "http://good.example/bad/");
    assert_eq!(blocked["LocalPort"], second["LocalPort"]);
}

#[test]
fn keep_alive_bad_then_good_blocks_and_the_retry_passes() {
    let env = start();
    let (body, _) = curl_paths(&env, &["/bad/", "/good"]).expect("curl");
    assert!(!body.contains(BODY_BAD), "{body:?}\n{}", env.diagnostics());
    assert!(body.contains(BODY_GOOD), "{body:?}\n{}", env.diagnostics());
    wait(&env, "the block", |e| ev::is(e, BLOCKED));
    // After the reset curl opens a new connection for the next URL: its first request.
    wait(&env, "/good on a new connection", inspected("/good", 1));
}

/// Python's http.client on one connection: `/good`, `/good` again, then `/bad/`.
const HTTP_CLIENT_PY: &str = r#"
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], 80, timeout=5)
out = []
for path in ["/good", "/good", "/bad/"]:
    try:
        c.request("GET", path, headers={"Host": "good.example"})
        r = c.getresponse()
        out.append([path, r.status, r.read().decode()])
    except (ConnectionResetError, http.client.RemoteDisconnected) as e:
        out.append([path, "reset", type(e).__name__])
        break
print(json.dumps(out))
"#;

#[test]
fn python_http_client_keep_alive_is_judged_per_request() {
    let env = start();
    let out = netns_cmd(&env.topo.client_ns, nprot_tests::clients::python3())
        .args(["-c", HTTP_CLIENT_PY])
        .arg(env.server_ip(false).to_string())
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v[0][1], 200, "{v}");
    assert_eq!(v[1][1], 200, "{v}");
    assert_eq!(v[2][1], "reset", "{v}\n{}", env.diagnostics());
    for (uri, depth) in [("/good", 1), ("/good", 2), ("/bad/", 3)] {
        wait(
            &env,
            &format!("{uri} as request {depth}"),
            inspected(uri, depth),
        );
    }
}

/// A POST with a chunked body, then a blocked request on the same connection.
const CHUNKED_PY: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
body = b"5\r\nhello\r\n1a\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n"
s.sendall(b"POST /good HTTP/1.1\r\nHost: good.example\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
first = s.recv(65536)
s.sendall(b"GET /bad/ HTTP/1.1\r\nHost: good.example\r\n\r\n")
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
print(len(first), len(got), end)
"#;

#[test]
fn the_request_after_a_chunked_body_is_judged() {
    let env = start();
    let out = netns_cmd(&env.topo.client_ns, nprot_tests::clients::python3())
        .args(["-c", CHUNKED_PY])
        .arg(env.server_ip(false).to_string())
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = text.split_whitespace().collect();
    assert!(
        parts.len() == 3 && parts[0] != "0" && parts[1] == "0" && parts[2] == "reset",
        "the POST is answered, the request after its body reset with 0 bytes: {text} {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.diagnostics()
    );
    wait(&env, "the POST", |e| {
        ev::is(e, "HttpConnectionInspected") && e["AdditionalFields"]["method"] == "POST"
    });
    wait(&env, "/bad/ after the body", inspected("/bad/", 2));
    let stats = env.stats().expect("stats");
    assert_eq!(stats["pipeline"]["requests_gave_up"], 0, "{stats:#}");
}
