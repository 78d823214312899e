//! End-to-end tests of the clsact fallback: kernels before 6.6 have no TCX links, and
//! there the sensor adds a clsact qdisc and attaches its programs as tc filters. The
//! hidden `nprot run --force-clsact` takes that path on any kernel, so it is tested here
//! too: requests are reported and enforced as with TCX, the qdisc the sensor added is
//! there while it runs and gone once it stops, no TCX link is used, and a clsact qdisc
//! someone else added is shared and left in place.
//!
//! Run as root, serially: `cargo xtask test` (or
//! `cargo test -p nprot-tests --test clsact -- --test-threads=1`).
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::{process::Command, time::Duration};

use nprot_tests::{
    BLOCKED, ClientServer, CurlRun, Env, Value,
    bpf::Attachments,
    clients, ev,
    indicators::indicator,
    netns::netns_cmd,
    nginx::{BODY_BAD, BODY_GOOD},
    process::run_ok,
    sensor::{control_socket_for, sensor_binary},
    wait_event,
};

const FORCE_CLSACT: &str = "--force-clsact";

fn block_bad_example() -> Value {
    indicator("i1", "DomainName", "bad.example", "Block")
}

/// `tc qdisc show dev DEV` in the namespace `ns`.
fn qdiscs(ns: &str, dev: &str) -> String {
    let out = run_ok(
        netns_cmd(ns, "tc").args(["qdisc", "show", "dev", dev]),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("tc qdisc show dev {dev}: {e:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has_clsact(ns: &str, dev: &str) -> bool {
    qdiscs(ns, dev)
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("clsact"))
}

/// Adds a clsact qdisc to `dev` in `ns`, as another tool would.
fn add_clsact(ns: &str, dev: &str) {
    run_ok(
        netns_cmd(ns, "tc").args(["qdisc", "add", "dev", dev, "clsact"]),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("tc qdisc add dev {dev} clsact: {e:#}"));
}

/// What the running sensor put on `dev`: tc filters on both hooks, no TCX program.
#[track_caller]
fn assert_tc_filters_only(env: &Env, dev: &str, on: &Attachments) {
    assert!(
        on.tcx_ingress.is_empty() && on.tcx_egress.is_empty(),
        "TCX programs on {dev} although the sensor was told to use clsact:\n{on}\n{}",
        env.diagnostics()
    );
    assert!(
        !on.tc_ingress.trim().is_empty() && !on.tc_egress.trim().is_empty(),
        "no tc filter on both hooks of {dev}:\n{on}\n{}",
        env.diagnostics()
    );
}

/// `nprot status --json` of the running sensor.
fn status(env: &Env) -> Value {
    let out = Command::new(sensor_binary().expect("sensor binary"))
        .args(["status", "--json", "--socket"])
        .arg(control_socket_for(env.events().path()))
        .output()
        .expect("run nprot status");
    assert!(
        out.status.success(),
        "nprot status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("nprot status --json prints JSON")
}

/// Every guarded interface is reported as attached with clsact.
#[track_caller]
fn assert_status_clsact(env: &Env, devs: &[&str]) {
    let status = status(env);
    let interfaces = status["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("no interfaces in the status: {status}"));
    for dev in devs {
        let entry = interfaces
            .iter()
            .find(|i| i["name"] == *dev)
            .unwrap_or_else(|| panic!("{dev} not in the status: {status}"));
        assert_eq!(entry["attach"], "clsact", "{status}");
    }
}

#[track_caller]
fn assert_reset(env: &Env, what: &str, r: &CurlRun) {
    assert!(
        r.was_reset() && r.http_code == 0 && r.size_download == 0 && r.body_len == 0,
        "{what}: expected a connection reset with no response byte; got {r:?}\n{}",
        env.diagnostics()
    );
}

#[track_caller]
fn assert_ok(env: &Env, what: &str, r: &CurlRun, body: &str) {
    assert!(
        r.exit_code == Some(0) && r.http_code == 200 && r.body.trim() == body,
        "{what}: expected 200 with body {body:?}; got {r:?}\n{}",
        env.diagnostics()
    );
}

/// Stops the sensor with SIGTERM and expects a clean exit.
fn stop(env: &mut Env) {
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
}

/// On the client veth with `--force-clsact`: allowed requests are reported, blocked ones
/// reset before a response byte, over IPv4 and IPv6; the qdisc and the filters the sensor
/// added are there while it runs (and no TCX link) and gone once it stops.
#[test]
fn clsact_fallback_reports_blocks_and_cleans_up() {
    let mut env = Env::start_without_sensor().expect("test environment");
    let (ns, veth) = (env.topo.client_ns.clone(), env.topo.client_if.clone());
    assert!(!has_clsact(&ns, &veth), "{}", qdiscs(&ns, &veth));
    env.enforce("block", &[block_bad_example()], &[FORCE_CLSACT])
        .expect("sensor with --force-clsact");

    assert!(
        has_clsact(&ns, &veth),
        "no clsact qdisc on {veth} while the sensor runs:\n{}\n{}",
        qdiscs(&ns, &veth),
        env.diagnostics()
    );
    let on = env.client_attachments().expect("attachments");
    assert_tc_filters_only(&env, &veth, &on);
    assert_status_clsact(&env, &[&veth]);
    assert!(
        env.sensor_mut()
            .expect("sensor")
            .stderr()
            .text()
            .contains(&format!("guarding {veth} (Ethernet, clsact)")),
        "{}",
        env.diagnostics()
    );

    for v6 in [false, true] {
        let good = env
            .curl_https_any("good.example", 443, v6, "/good")
            .expect("curl good.example");
        assert_ok(&env, "https://good.example", &good, BODY_GOOD);
        let e = wait_event(&env, "SslConnectionInspected for good.example", |e| {
            ev::is(e, "SslConnectionInspected") && ev::local_port(e, good.local_port)
        });
        assert_eq!(e["RemoteUrl"], "good.example", "{e}");

        let bad = env
            .curl_https_any("bad.example", 443, v6, "/bad/")
            .expect("curl bad.example");
        assert_reset(&env, "https://bad.example", &bad);
        wait_event(&env, "Blocked event for bad.example", |e| {
            ev::is(e, BLOCKED) && ev::local_port(e, bad.local_port)
        });
    }

    stop(&mut env);
    assert!(
        !has_clsact(&ns, &veth),
        "the clsact qdisc the sensor added is left on {veth}:\n{}\n{}",
        qdiscs(&ns, &veth),
        env.diagnostics()
    );
    let after = env.client_attachments().expect("attachments");
    assert!(
        !after.any(),
        "programs left on {veth} after the sensor exited:\n{after}"
    );
}

/// The L3 variant takes the fallback too: on a TUN tunnel beside the veth, a blocked
/// request over the tunnel is reset and an allowed one passes; both qdiscs go at exit.
#[test]
fn clsact_fallback_on_an_l3_device() {
    let mut env = Env::start_without_sensor().expect("test environment");
    let tun = env.start_tunnel().expect("TUN tunnel");
    let (ns, veth) = (env.topo.client_ns.clone(), env.topo.client_if.clone());
    env.enforce_on(
        "block",
        &[block_bad_example()],
        &[&veth, &tun.client_dev],
        &[FORCE_CLSACT],
    )
    .expect("sensor on the veth and the tunnel with --force-clsact");
    for dev in [&veth, &tun.client_dev] {
        assert!(has_clsact(&ns, dev), "{}", qdiscs(&ns, dev));
        let on = env.client_attachments_of(dev).expect("attachments");
        assert_tc_filters_only(&env, dev, &on);
    }
    assert_status_clsact(&env, &[&veth, &tun.client_dev]);

    let curl_tunnel = |env: &Env, name: &str, path: &str| {
        let url = format!("http://{name}{path}");
        clients::curl_any(&env.topo, name, 80, tun.server_ip(), &url, &[])
            .unwrap_or_else(|e| panic!("curl {url} over the tunnel: {e:#}"))
    };
    let good = curl_tunnel(&env, "good.example", "/good");
    assert_ok(
        &env,
        "http://good.example over the tunnel",
        &good,
        BODY_GOOD,
    );
    wait_event(&env, "HttpConnectionInspected over the tunnel", |e| {
        ev::is(e, "HttpConnectionInspected") && ev::local_port(e, good.local_port)
    });
    let bad = curl_tunnel(&env, "bad.example", "/bad/");
    assert_reset(&env, "http://bad.example over the tunnel", &bad);

    stop(&mut env);
    for dev in [&veth, &tun.client_dev] {
        assert!(!has_clsact(&ns, dev), "{}", qdiscs(&ns, dev));
        let after = env.client_attachments_of(dev).expect("attachments");
        assert!(!after.any(), "programs left on {dev}:\n{after}");
    }
    let after = curl_tunnel(&env, "bad.example", "/bad/");
    assert_ok(
        &env,
        "the tunnel after the sensor stopped",
        &after,
        BODY_BAD,
    );
}

/// A clsact qdisc that was there before the sensor belongs to someone else: the sensor
/// attaches beside it (the kernel's EEXIST is not an error) and leaves it when it stops,
/// taking only its own filters.
#[test]
fn existing_clsact_qdisc_is_shared_and_left() {
    let mut env = Env::start_without_sensor().expect("test environment");
    let (ns, veth) = (env.topo.client_ns.clone(), env.topo.client_if.clone());
    add_clsact(&ns, &veth);
    env.enforce("block", &[block_bad_example()], &[FORCE_CLSACT])
        .expect("sensor with --force-clsact beside an existing clsact qdisc");
    let on = env.client_attachments().expect("attachments");
    assert_tc_filters_only(&env, &veth, &on);

    let bad = env
        .curl_https_any("bad.example", 443, false, "/bad/")
        .expect("curl bad.example");
    assert_reset(&env, "https://bad.example", &bad);

    stop(&mut env);
    assert!(
        has_clsact(&ns, &veth),
        "the sensor removed a clsact qdisc it had not added:\n{}",
        qdiscs(&ns, &veth)
    );
    let after = env.client_attachments().expect("attachments");
    assert!(
        !after.any(),
        "the sensor's filters are left on {veth}:\n{after}"
    );
}
