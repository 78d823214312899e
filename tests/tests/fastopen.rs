//! End-to-end tests of TCP Fast Open (issue 12): a request carried in the SYN is captured
//! and judged like any first segment; in block mode a blocked one is reset before its
//! response.
//!
//! Run as root, serially: `cargo xtask test` (or
//! `cargo test -p nprot-tests --test fastopen -- --test-threads=1`).
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use nprot_tests::{
    BLOCKED, ClientServer, Env, ev, indicators::indicator, netns::sysctl, nginx::BODY_GOOD,
    wait_event as wait,
};

fn syn_payloads(env: &Env) -> u64 {
    let stats = env.stats().expect("stats");
    stats["kernel"]["syn_payloads"].as_u64().unwrap_or(0)
}

#[test]
fn fast_open_requests_are_judged_in_both_families() {
    let env = Env::start_enforcing(
        "block",
        &[indicator("i1", "DomainName", "bad.example", "Block")],
        &[],
    )
    .expect("test environment with the sensor");
    // Client and server both do Fast Open (1: client, 2: server).
    for ns in [env.client_ns(), env.server_ns()] {
        sysctl(ns, "net/ipv4/tcp_fastopen", "3").expect("tcp_fastopen");
    }
    for v6 in [false, true] {
        // The first connection fetches the server's cookie; the next ones send data in
        // their SYN.
        let tfo = ["--tcp-fastopen"];
        let first = env
            .curl_http_any("good.example", 80, v6, "/good", &tfo)
            .expect("curl");
        assert_eq!(first.http_code, 200, "{first:?}");
        let before = syn_payloads(&env);
        let good = env
            .curl_http_any("good.example", 80, v6, "/good", &tfo)
            .expect("curl");
        assert!(
            good.http_code == 200 && good.body.contains(BODY_GOOD),
            "{good:?}"
        );
        wait(&env, "the Fast Open request", |e| {
            ev::is(e, "HttpConnectionInspected") && ev::local_port(e, good.local_port)
        });
        assert!(
            syn_payloads(&env) > before,
            "the request went in the SYN\n{}",
            env.diagnostics()
        );

        let bad = env
            .curl_http_any("bad.example", 80, v6, "/", &tfo)
            .expect("curl");
        // The reset may come before curl asks for its peer (exit 56 either way).
        assert!(
            bad.exit_code == Some(56) && bad.http_code == 0 && bad.body_len == 0,
            "a blocked Fast Open request is reset with 0 bytes: {bad:?}\n{}",
            env.diagnostics()
        );
        let blocked = wait(&env, "the block", |e| {
            ev::is(e, BLOCKED) && ev::local_port(e, bad.local_port)
        });
        assert_eq!(blocked["RemoteUrl"], "http://bad.example/");
    }
}
