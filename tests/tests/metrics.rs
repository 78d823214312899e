//! `/metrics` (issue 18, part 4): scraped from the client namespace, checked with
//! Prometheus's own `promtool check metrics`, and its counters move as flows pass.
//!
//! Run as root: `cargo xtask test` (or `cargo test -p nprot-tests --test metrics`).
// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Write as _,
    process::Stdio,
    time::{Duration, Instant},
};

use nprot_tests::{ClientServer as _, Env, assert_reset, indicators::indicator, netns::netns_cmd};

const LISTEN: &str = "127.0.0.1:9477";

/// One scrape, from the sensor's namespace.
fn scrape(env: &Env) -> String {
    let out = netns_cmd(&env.topo.client_ns, "curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://{LISTEN}/metrics"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "scrape: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The value of the sample line `name` (with its labels, as written), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `ok` holds (the figures are refreshed once a second).
fn scrape_until(env: &Env, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(env);
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} never seen in:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_pass_promtool_and_move_with_the_flows() {
    let env = Env::start_enforcing(
        "block",
        &[indicator("bad", "DomainName", "bad.example", "Block")],
        &["--metrics-listen", LISTEN],
    )
    .expect("sensor enforcing");
    let before = scrape_until(&env, "the first snapshot", |t| {
        sample(t, "nprot_indicators") == Some(1.0)
    });
    let flows = sample(&before, "nprot_kernel_flows_new_total").unwrap();
    let blocked = sample(&before, "nprot_pipeline_blocked_total").unwrap();

    let good = env
        .curl_https_any("good.example", 443, false, "/good")
        .unwrap();
    assert_eq!(good.exit_code, Some(0), "{good:?}");
    let bad = env
        .curl_https_any("bad.example", 443, false, "/good")
        .unwrap();
    assert_reset("bad.example", &bad, || env.diagnostics());

    let after = scrape_until(&env, "the two flows counted", |t| {
        sample(t, "nprot_kernel_flows_new_total") >= Some(flows + 2.0)
            && sample(t, "nprot_pipeline_blocked_total") >= Some(blocked + 1.0)
    });
    assert_eq!(
        sample(&after, "nprot_mode{mode=\"block\"}"),
        Some(1.0),
        "{after}"
    );
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("nprot_sink_written_total{sink=")),
        "{after}"
    );
    assert!(
        sample(&after, "nprot_verdict_latency_seconds_count") >= Some(1.0),
        "the blocked flow's verdict was waited for: {after}"
    );

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(after.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{after}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let missing = netns_cmd(&env.topo.client_ns, "curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{LISTEN}/other"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&missing.stdout), "404");
}
