//! End-to-end tests of encapsulations (issue 12, item 5), in block mode with a
//! `DomainName` Block on bad.example, the sensor on the client veth (the underlay):
//!
//! - a real VXLAN tunnel between the test namespaces (the kernel has VXLAN devices):
//!   curl through it is inspected, and a blocked flow is reset;
//! - GRE, GENEVE, VXLAN, 802.1Q, QinQ and PPPoE frames built with scapy (the kernel has no
//!   such devices): each conversation is scripted on both veth ends with AF_PACKET
//!   sockets, and what the sensor let through is read after tc on the client side (see
//!   [`nprot_tests::frames`]) and on the server side;
//! - the same frames recorded with tcpdump and replayed (`nprot replay`).
//!
//! Run as root, serially: `cargo test -p nprot-tests --test encap -- --test-threads=1`.
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr, process::Command, time::Duration};

use nprot_tests::{
    BLOCKED, ClientServer, Env, Value,
    clients::curl_any,
    ev,
    frames::{self, Tcpdump},
    nginx::BODY_GOOD,
    process::{run_ok, run_with_timeout},
    sensor::sensor_binary,
    start_blocking_bad, wait_event as wait,
};

/// Bound on one frame script.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);
/// The scripted server's response.
const RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n";

fn kernel_stat(env: &Env, name: &str) -> u64 {
    let stats = env.stats().expect("stats");
    stats["kernel"][name].as_u64().unwrap_or(0)
}

fn stats_text(env: &Env) -> String {
    match env.stats() {
        Ok(s) => format!("kernel: {}\npipeline: {}", s["kernel"], s["pipeline"]),
        Err(e) => format!("no stats: {e:#}"),
    }
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Inner addresses of the VXLAN tunnel (used nowhere else).
const VX_CLIENT: (&str, &str) = ("198.18.250.1", "2001:db8:250::1");
const VX_SERVER: (&str, &str) = ("198.18.250.2", "2001:db8:250::2");

/// A VXLAN device (VNI 42, UDP 4789) on each veth end, with inner addresses
/// 198.18.250.1/2 and 2001:db8:250::1/2; returns once nginx answers through it. The
/// devices go with the namespaces.
fn add_vxlan(env: &Env) {
    let ends = [
        (
            env.client_ns(),
            &env.topo.client_if,
            env.client_ip(false),
            env.server_ip(false),
            VX_CLIENT,
        ),
        (
            env.server_ns(),
            &env.topo.server_if,
            env.server_ip(false),
            env.client_ip(false),
            VX_SERVER,
        ),
    ];
    for (ns, dev, local, remote, (v4, v6)) in ends {
        let (local, remote) = (local.to_string(), remote.to_string());
        ip(&[
            "-n", ns, "link", "add", "vx42", "type", "vxlan", "id", "42", "remote", &remote,
            "local", &local, "dstport", "4789", "dev", dev,
        ]);
        ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", "vx42"]);
        ip(&[
            "-n",
            ns,
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "vx42",
            "nodad",
        ]);
        ip(&["-n", ns, "link", "set", "vx42", "up"]);
    }
    let targets: Vec<std::net::SocketAddr> = [VX_SERVER.0, VX_SERVER.1]
        .iter()
        .map(|a| std::net::SocketAddr::new(a.parse().expect("address"), 80))
        .collect();
    env.topo
        .wait_tcp_ready(&targets, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("nginx not reachable through VXLAN: {e:#}"));
}

/// B.1: a real VXLAN tunnel; the sensor guards the underlay veth. Through the tunnel,
/// good.example is fetched and reported, bad.example is reset and reported, for HTTP
/// (IPv4 and IPv6 inside) and TLS.
#[test]
fn vxlan_tunnel_between_the_namespaces_is_inspected_and_blocked() {
    let env = start_blocking_bad();
    add_vxlan(&env);
    for inner in [VX_SERVER.0, VX_SERVER.1] {
        let addr: IpAddr = inner.parse().expect("address");
        let good = curl_any(
            &env.topo,
            "good.example",
            80,
            addr,
            "http://good.example/good",
            &[],
        )
        .expect("curl good.example");
        assert!(
            good.exit_code == Some(0) && good.http_code == 200 && good.body.trim() == BODY_GOOD,
            "good.example through VXLAN ({inner}): {good:?}\n{}",
            env.diagnostics()
        );
        let seen = wait(&env, "good.example through VXLAN", |e| {
            ev::is(e, "HttpConnectionInspected") && ev::local_port(e, good.local_port)
        });
        assert_eq!(seen["RemoteIP"], inner, "{seen}");
        assert_eq!(seen["RemoteUrl"], "http://good.example/good", "{seen}");

        let before = kernel_stat(&env, "tunneled_resets");
        let bad = curl_any(
            &env.topo,
            "bad.example",
            80,
            addr,
            "http://bad.example/",
            &[],
        )
        .expect("curl bad.example");
        assert!(
            bad.exit_code != Some(0) && bad.size_download == 0 && bad.body_len == 0,
            "bad.example through VXLAN ({inner}) must fail with 0 bytes: {bad:?}\n{}\n{}",
            env.diagnostics(),
            stats_text(&env)
        );
        let blocked = wait(&env, "the block through VXLAN", |e| {
            ev::is(e, BLOCKED) && ev::local_port(e, bad.local_port)
        });
        assert_eq!(blocked["RemoteUrl"], "http://bad.example/", "{blocked}");
        assert_eq!(blocked["RemoteIP"], inner, "{blocked}");
        assert!(
            kernel_stat(&env, "tunneled_resets") > before,
            "the inner flow is reset as a tunnelled one\n{}",
            stats_text(&env)
        );
    }
    // TLS through the tunnel: the SNI is judged.
    let addr: IpAddr = VX_SERVER.0.parse().expect("address");
    let tls = curl_any(
        &env.topo,
        "bad.example",
        443,
        addr,
        "https://bad.example/",
        &[],
    )
    .expect("curl https bad.example");
    assert!(
        tls.exit_code != Some(0) && tls.size_download == 0,
        "{tls:?}\n{}",
        env.diagnostics()
    );
    let blocked = wait(&env, "the TLS block through VXLAN", |e| {
        ev::is(e, BLOCKED) && ev::local_port(e, tls.local_port)
    });
    assert_eq!(blocked["RemoteUrl"], "bad.example", "{blocked}");
}

/// Python: scripted conversations through an encapsulation, both sides sent from here
/// (the server side from a socket made in the server namespace).
const ENCAP_PY: &str = r#"
import json, sys
from nprot_frames import *
cfg = json.loads(sys.argv[1])
client = Port(cfg["client_if"])
server = in_netns(cfg["server_ns"], lambda: Port(cfg["server_if"]))
underlay = (cfg["client_v4"], cfg["server_v4"])
out = []
for case in cfg["cases"]:
    wrap = Wrap(case["kind"], client, server, underlay)
    v6 = case["v6"]
    caddr, saddr = ("2001:db8:251::1", "2001:db8:251::2") if v6 else ("198.18.251.1", "198.18.251.2")
    req = ("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % case["host"]).encode()
    r = scripted_flow(client, server, wrap, caddr, saddr, case["cport"], req, cfg["response"].encode())
    r.update(case)
    out.append(r)
print(json.dumps(out))
"#;

/// One scripted conversation: the encapsulation (see `Wrap` in frames.py), the inner
/// family, the Host, and the client port (unique per test, to find its events).
struct Case {
    kind: &'static str,
    v6: bool,
    host: &'static str,
    cport: u16,
}

fn case(kind: &'static str, v6: bool, host: &'static str, cport: u16) -> Case {
    Case {
        kind,
        v6,
        host,
        cport,
    }
}

fn scripted(env: &Env, cases: &[Case]) -> Vec<Value> {
    let args = serde_json::json!({
        "client_if": env.topo.client_if,
        "server_if": env.topo.server_if,
        "server_ns": env.server_ns(),
        "client_v4": env.client_ip(false).to_string(),
        "server_v4": env.server_ip(false).to_string(),
        "response": RESPONSE,
        "cases": cases.iter().map(|c| serde_json::json!({
            "kind": c.kind, "v6": c.v6, "host": c.host, "cport": c.cport,
        })).collect::<Vec<_>>(),
    });
    let out = frames::run_script(env.client_ns(), env.dir(), ENCAP_PY, &args, SCRIPT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", env.diagnostics()));
    eprintln!("{out:#}");
    out.as_array().cloned().unwrap_or_else(|| panic!("{out}"))
}

fn cport(r: &Value) -> u16 {
    r["cport"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no port in {r}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Checks one scripted conversation: a blocked one (bad.example) has its Blocked event,
/// its response on the client's wire but only a reset (no data) in the client's stack,
/// and a reset reaching the server; an allowed one has its inspection event, the whole
/// response in the client's stack and no reset anywhere.
#[track_caller]
fn check(env: &Env, r: &Value) {
    let port = cport(r);
    let what = format!("{} (IPv6 inside: {}), {}", r["kind"], r["v6"], r["host"]);
    let inspected = wait(env, &format!("{what} inspected"), |e| {
        ev::is(e, "HttpConnectionInspected") && ev::local_port(e, port)
    });
    assert_eq!(
        inspected["AdditionalFields"]["host"], r["host"],
        "{inspected}"
    );
    let (stack, wire, server) = (&r["client_stack"], &r["client_wire"], &r["server_wire"]);
    if r["host"] == "bad.example" {
        let blocked = wait(env, &format!("the block of {what}"), |e| {
            ev::is(e, BLOCKED) && ev::local_port(e, port)
        });
        assert_eq!(blocked["RemoteUrl"], "http://bad.example/", "{blocked}");
        assert!(
            n(&wire["data_bytes"]) > 0,
            "{what}: the response must have been on the wire: {r}"
        );
        assert!(
            n(&stack["data_bytes"]) == 0 && n(&stack["rst"]) > 0,
            "{what}: the client's stack must get the response as a reset, not as data: {r}\n{}\n{}",
            env.diagnostics(),
            stats_text(env)
        );
        assert!(
            n(&server["rst"]) > 0,
            "{what}: a reset must reach the server: {r}\n{}",
            stats_text(env)
        );
    } else {
        assert!(
            n(&stack["data_bytes"]) == RESPONSE.len() as u64 && n(&stack["rst"]) == 0,
            "{what}: the response must reach the client's stack untouched: {r}\n{}",
            env.diagnostics()
        );
        assert!(
            n(&server["rst"]) == 0,
            "{what}: no reset for the server: {r}"
        );
        env.events()
            .assert_absent(
                "a block of an allowed flow",
                |e| ev::is(e, BLOCKED) && ev::local_port(e, port),
                Duration::ZERO,
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// Runs the cases and checks each; returns the results.
fn run_and_check(env: &Env, cases: &[Case]) -> Vec<Value> {
    let out = scripted(env, cases);
    assert_eq!(out.len(), cases.len());
    for r in &out {
        check(env, r);
    }
    out
}

/// GRE (RFC 2784/2890): no options, a key, checksum + key + sequence number, IPv6
/// inside, and an Ethernet frame inside (transparent bridging, 0x6558).
#[test]
fn gre_frames_are_judged_and_blocked() {
    let env = start_blocking_bad();
    run_and_check(
        &env,
        &[
            case("gre", false, "good.example", 41001),
            case("gre", false, "bad.example", 41002),
            case("gre-key", false, "good.example", 41003),
            case("gre-key", false, "bad.example", 41004),
            case("gre-csum-key-seq", false, "bad.example", 41005),
            case("gre", true, "bad.example", 41006),
            case("gre-eth", false, "bad.example", 41007),
        ],
    );
    assert!(
        kernel_stat(&env, "tunneled_resets") > 0,
        "{}",
        stats_text(&env)
    );
}

/// UDP tunnels: GENEVE (with an option; IPv4 and IPv6 inside; Ethernet inside) and
/// VXLAN frames.
#[test]
fn geneve_and_vxlan_frames_are_judged_and_blocked() {
    let env = start_blocking_bad();
    run_and_check(
        &env,
        &[
            case("geneve", false, "good.example", 42001),
            case("geneve", false, "bad.example", 42002),
            case("geneve", true, "bad.example", 42003),
            case("geneve-eth", false, "bad.example", 42004),
            case("vxlan", false, "good.example", 42005),
            case("vxlan", true, "bad.example", 42006),
        ],
    );
    assert!(
        kernel_stat(&env, "tunneled_resets") > 0,
        "{}",
        stats_text(&env)
    );
}

/// 802.1Q, QinQ (802.1ad + 802.1Q, and the older 0x9100 tag): reset like plain flows
/// (the server gets the reflected reset at once).
#[test]
fn vlan_tagged_frames_are_judged_and_blocked() {
    let env = start_blocking_bad();
    run_and_check(
        &env,
        &[
            case("dot1q", false, "good.example", 43001),
            case("dot1q", false, "bad.example", 43002),
            case("dot1q", true, "bad.example", 43003),
            case("qinq", false, "good.example", 43004),
            case("qinq", false, "bad.example", 43005),
            case("qinq9100", false, "bad.example", 43006),
        ],
    );
}

/// PPPoE session frames (PPP protocol 0x0021 and 0x0057).
#[test]
fn pppoe_frames_are_judged_and_blocked() {
    let env = start_blocking_bad();
    run_and_check(
        &env,
        &[
            case("pppoe", false, "good.example", 44001),
            case("pppoe", false, "bad.example", 44002),
            case("pppoe", true, "good.example", 44003),
            case("pppoe", true, "bad.example", 44004),
        ],
    );
}

/// Records scripted conversations with tcpdump on the client veth while the live sensor
/// judges them, replays the capture in block mode, and compares the Blocked and
/// inspection events per client port.
fn live_and_replay(cases: &[Case]) {
    let env = start_blocking_bad();
    let file = env.dir().join("capture.pcap");
    let mut dump =
        Tcpdump::start(env.client_ns(), &file, &["-i", &env.topo.client_if]).expect("tcpdump");
    run_and_check(&env, cases);
    let dump_log = dump.stop().expect("stop tcpdump");

    let indicators = env.dir().join("indicators.json");
    let mut cmd = Command::new(sensor_binary().expect("sensor binary"));
    cmd.arg("replay")
        .arg(&file)
        .arg("--indicators")
        .arg(&indicators)
        .args(["--mode", "block"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30)).expect("nprot replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nprot replay failed: {stderr}");
    let replayed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let ports: BTreeSet<u64> = cases.iter().map(|c| u64::from(c.cport)).collect();
    let keys = |events: &[Value]| -> BTreeSet<(String, String, u64)> {
        events
            .iter()
            .filter(|e| {
                (ev::is(e, BLOCKED) || ev::is(e, "HttpConnectionInspected"))
                    && e["LocalPort"].as_u64().is_some_and(|p| ports.contains(&p))
            })
            .map(|e| {
                (
                    e["ActionType"].as_str().unwrap_or("").to_owned(),
                    e["RemoteUrl"].as_str().unwrap_or("").to_owned(),
                    e["LocalPort"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let live = env.events().events().expect("live events");
    let (live_keys, replay_keys) = (keys(&live), keys(&replayed));
    let show = |v: &[Value]| {
        v.iter().fold(String::new(), |mut out, e| {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{e}");
            out
        })
    };
    assert_eq!(
        live_keys,
        replay_keys,
        "replay must give the live sensor's verdicts\nlive:\n{}\nreplayed:\n{}\nreplay stderr:\n\
         {stderr}\ntcpdump:\n{dump_log}",
        show(&live),
        show(&replayed)
    );
    let blocked = cases.iter().filter(|c| c.host == "bad.example").count();
    assert_eq!(
        replay_keys.iter().filter(|k| k.0 == BLOCKED).count(),
        blocked,
        "{replay_keys:?}"
    );
}

/// B.3 for VLAN tags, which replay decodes: the capture has the tags (libpcap puts back
/// those the kernel took off on ingress).
#[test]
fn replay_of_vlan_frames_matches_the_live_sensor() {
    live_and_replay(&[
        case("dot1q", false, "good.example", 45001),
        case("dot1q", false, "bad.example", 45002),
        case("qinq", true, "bad.example", 45003),
    ]);
}

/// B.3 for tunnels and PPPoE.
#[test]
fn replay_of_tunnelled_and_pppoe_frames_matches_the_live_sensor() {
    live_and_replay(&[
        case("gre", false, "bad.example", 46001),
        case("gre-key", false, "good.example", 46002),
        case("geneve", false, "bad.example", 46003),
        case("vxlan", false, "bad.example", 46004),
        case("pppoe", false, "bad.example", 46005),
    ]);
}
