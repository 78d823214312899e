//! End-to-end tests of the evasions a careful attacker tries on a TCP sensor (issue 12,
//! item 4), in block mode with a `DomainName` Block on bad.example: each technique is
//! shown not to walk a blocked request around inspection (a reset to the client, no
//! response byte, the Blocked event), and — where the server's view matters — the
//! sensor is shown to judge what the server's stack actually delivered.
//!
//! Traffic is built with scapy (Debian `python3-scapy`) in the client namespace:
//! packets forged next to a real socket's connection, or whole conversations made of
//! frames (the client's own stack is then kept quiet with [`frames::drop_kernel_resets`]).
//!
//! Run as root, serially: `cargo test -p nprot-tests --test evasion -- --test-threads=1`.
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
    BLOCKED, ClientServer, Env, Value, ev,
    frames::{self, HostEcho},
    nginx::BODY_ROOT,
    start_blocking_bad, wait_event as wait,
};

/// Bound on one frame script (scapy's import alone takes about two seconds).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);

fn kernel_stat(env: &Env, name: &str) -> u64 {
    let stats = env.stats().expect("stats");
    stats["kernel"][name].as_u64().unwrap_or(0)
}

/// The sensor's counters, for failure messages.
fn stats_text(env: &Env) -> String {
    match env.stats() {
        Ok(s) => format!("kernel: {}\npipeline: {}", s["kernel"], s["pipeline"]),
        Err(e) => format!("no stats: {e:#}"),
    }
}

fn port_of(v: &Value) -> u16 {
    v["sport"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no local port in {v}"))
}

/// The arguments every script gets: interface, addresses, the server veth's MAC.
fn base_args(env: &Env, v6: bool) -> Value {
    serde_json::json!({
        "iface": env.topo.client_if,
        "client": env.client_ip(v6).to_string(),
        "server": env.server_ip(v6).to_string(),
        "peer_mac": frames::mac_of(env.server_ns(), &env.topo.server_if).expect("server MAC"),
    })
}

fn run(env: &Env, script: &str, args: &Value) -> Value {
    frames::run_script(env.client_ns(), env.dir(), script, args, SCRIPT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", env.diagnostics()))
}

/// A blocked request on a real socket: reset, not one response byte; and its event.
#[track_caller]
fn assert_socket_blocked(env: &Env, what: &str, r: &Value) {
    assert!(
        r["end"] == "reset" && r["received"] == 0,
        "{what}: the blocked request must be reset with 0 bytes: {r}\n{}\n{}",
        env.diagnostics(),
        stats_text(env)
    );
    let port = port_of(r);
    let blocked = wait(env, &format!("the block of {what}"), |e| {
        ev::is(e, BLOCKED) && ev::local_port(e, port)
    });
    assert_eq!(blocked["RemoteUrl"], "http://bad.example/", "{blocked}");
}

/// An allowed request on a real socket: the whole response arrives.
#[track_caller]
fn assert_socket_allowed(env: &Env, what: &str, r: &Value) {
    let body = r["body"].as_str().unwrap_or("");
    assert!(
        r["end"] == "eof" && body.starts_with("HTTP/1.1 200") && body.contains(BODY_ROOT),
        "{what}: the allowed request must get its response: {r}\n{}",
        env.diagnostics()
    );
}

/// Python: a real socket connects; the SYN-ACK on the wire gives both sides' next
/// sequence numbers; a forged packet (`trick`) with the socket's four-tuple is sent
/// after connect and before the request (or between its two halves, `split`); the
/// server's answers to it are recorded; then the request, read to the end.
const TRICK_PY: &str = r#"
import json, socket, sys, time
from nprot_frames import *
cfg = json.loads(sys.argv[1])
port = Port(cfg["iface"])
results = []
for case in cfg["cases"]:
    fam = socket.AF_INET6 if ":" in cfg["server"] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(5)
    s.connect((cfg["server"], 80))
    sport = s.getsockname()[1]
    def from_server(seg):
        return seg["sport"] == 80 and seg["dport"] == sport
    port.poll(0.1)
    synack = [g for g in port.segments("wire", from_server) if g["syn"]]
    if not synack:
        sys.exit("no SYN-ACK seen for port %d: %r" % (sport, [(g["sport"], g["dport"], g["flags"]) for g in port.segments("wire", lambda g: True)]))
    snd_nxt, rcv_nxt = synack[0]["ack"], (synack[0]["seq"] + 1) % (1 << 32)
    c = TcpClient(port, cfg["peer_mac"], cfg["client"], cfg["server"], 80, sport=sport)
    c.rcv = rcv_nxt
    req = ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % case["host"]).encode()
    halves = [req[:26], req[26:]] if case.get("split") else [req]
    if case.get("split"):
        s.sendall(halves[0])
        time.sleep(0.1)
    sent = len(halves[0]) if case.get("split") else 0
    seq = (snd_nxt + sent) % (1 << 32)
    trick = case["trick"]
    forged = None
    if trick == "syn":
        forged = (snd_nxt + 0x12345678) % (1 << 32)
        c.send("S", seq=forged, ack=0, options=[("MSS", 1400)])
    elif trick == "bad-checksum-rst":
        p = Ether(bytes(c.frame("RA", seq=seq)))
        p[TCP].chksum ^= 0x5555
        port.send(p)
    elif trick == "out-of-window-fin":
        c.send("FA", seq=(seq + 0x40000000) % (1 << 32))
    elif trick == "bad-checksum-rst+syn":
        p = Ether(bytes(c.frame("RA", seq=seq)))
        p[TCP].chksum ^= 0x5555
        port.send(p)
        time.sleep(0.05)
        forged = (snd_nxt + 0x12345678) % (1 << 32)
        c.send("S", seq=forged, ack=0, options=[("MSS", 1400)])
    elif trick != "none":
        sys.exit("unknown trick " + trick)
    before = len(port.segments("wire", from_server))
    port.poll(0.3)
    answers = port.segments("wire", from_server)[before:]
    got, end = b"", "eof"
    try:
        s.sendall(halves[-1])
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
    results.append({
        "sport": sport, "trick": trick, "host": case["host"], "end": end,
        "received": len(got), "body": got.decode("latin-1"),
        # How the server answered the forged packet: flags of each segment, and
        # whether one was a SYN-ACK for the forged SYN.
        "answers": [a["flags"] for a in answers],
        "syn_ack_for_forged": forged is not None and any(
            a["syn"] and a["ack"] == (forged + 1) % (1 << 32) for a in answers),
    })
print(json.dumps(results))
"#;

fn tricks(env: &Env, cases: &[(&str, &str, bool)]) -> Vec<Value> {
    let mut args = base_args(env, false);
    args["cases"] = cases
        .iter()
        .map(|(trick, host, split)| serde_json::json!({"trick": trick, "host": host, "split": split}))
        .collect();
    let out = run(env, TRICK_PY, &args);
    out.as_array().cloned().unwrap_or_else(|| panic!("{out}"))
}

/// Forged SYN: a SYN with another ISN on an established connection. The server
/// answers it with a challenge ACK (RFC 5961) and goes on with the connection; so must
/// the sensor (the SYN is deferred until a SYN-ACK acknowledges it, which never comes).
#[test]
fn forged_syn_with_another_isn_does_not_restart_inspection() {
    let env = start_blocking_bad();
    let out = tricks(
        &env,
        &[
            ("syn", "good.example", false),
            ("syn", "bad.example", false),
        ],
    );
    for r in &out {
        let answers = r["answers"].as_array().cloned().unwrap_or_default();
        assert!(
            r["syn_ack_for_forged"] == false
                && answers
                    .iter()
                    .any(|f| f.as_u64().is_some_and(|f| f & 0x12 == 0x10)),
            "the server must answer the forged SYN with a challenge ACK only: {r}"
        );
    }
    assert_socket_allowed(&env, "the request after a forged SYN", &out[0]);
    assert_socket_blocked(&env, "the request after a forged SYN", &out[1]);
    assert!(
        kernel_stat(&env, "syns_deferred") >= 2,
        "{}",
        env.stats().expect("stats")
    );
    assert_eq!(kernel_stat(&env, "flows_superseded"), 0);
}

/// Ignored RST or FIN: a reset the server drops for its bad TCP checksum, and a FIN out of the
/// window, each sent before the request. The server ignores both (the allowed request
/// after them is answered); the sensor reports a close but must go on inspecting.
#[test]
fn ignored_rst_and_fin_before_the_request_do_not_end_inspection() {
    let env = start_blocking_bad();
    let out = tricks(
        &env,
        &[
            ("bad-checksum-rst", "good.example", false),
            ("bad-checksum-rst", "bad.example", false),
            ("out-of-window-fin", "good.example", false),
            ("out-of-window-fin", "bad.example", false),
        ],
    );
    eprintln!("{out:#?}");
    assert_socket_allowed(&env, "the request after a bad-checksum RST", &out[0]);
    assert_socket_blocked(&env, "the request after a bad-checksum RST", &out[1]);
    assert_socket_allowed(&env, "the request after an out-of-window FIN", &out[2]);
    assert_socket_blocked(&env, "the request after an out-of-window FIN", &out[3]);
}

/// Ignored RST or FIN again, the ignored reset or FIN sent between the two halves of the
/// request.
#[test]
fn ignored_rst_inside_the_request_does_not_end_inspection() {
    let env = start_blocking_bad();
    let out = tricks(
        &env,
        &[
            ("bad-checksum-rst", "good.example", true),
            ("bad-checksum-rst", "bad.example", true),
            ("out-of-window-fin", "bad.example", true),
        ],
    );
    eprintln!("{out:#?}");
    assert_socket_allowed(&env, "a split request around a bad-checksum RST", &out[0]);
    assert_socket_blocked(&env, "a split request around a bad-checksum RST", &out[1]);
    assert_socket_blocked(&env, "a split request around an out-of-window FIN", &out[2]);
}

/// Forged SYN and ignored RST together: an ignored reset, then a SYN with another ISN.
#[test]
fn forged_syn_after_an_ignored_rst_does_not_restart_inspection() {
    let env = start_blocking_bad();
    let out = tricks(
        &env,
        &[
            ("bad-checksum-rst+syn", "good.example", false),
            ("bad-checksum-rst+syn", "bad.example", false),
        ],
    );
    eprintln!("{out:#?}");
    assert_socket_allowed(&env, "the request after a bad RST and a SYN", &out[0]);
    assert_socket_blocked(&env, "the request after a bad RST and a SYN", &out[1]);
}

/// Python: conversations made of frames with a real server. Each case connects (its
/// own headers on every packet), sends its segments `[offset, hex]` (offsets from the
/// first data byte) `gap` seconds apart, and waits for the server's answer; reported is
/// what the wire carried from the server and what the client's stack was handed.
const CONVERSATION_PY: &str = r#"
import json, sys, time
from nprot_frames import *
cfg = json.loads(sys.argv[1])
port = Port(cfg["iface"])
out = []
for case in cfg["cases"]:
    headers = headers_for(case["headers"], cfg["client"], cfg["server"])
    c = TcpClient(port, cfg["peer_mac"], cfg["client"], cfg["server"], case["dport"], headers=headers)
    c.connect()
    for off, data in case["segments"]:
        time.sleep(case["gap"])
        if case["fragment"]:
            c.send_fragmented("PA", bytes.fromhex(data), off, case["fragment"])
        else:
            c.send("PA", bytes.fromhex(data), off=off)
    r = c.await_answer(3.0)
    sent = port.segments("out", lambda g: g["sport"] == c.sport and g["payload"] and not g["rst"])
    r["sent_ihl"] = sorted(set(g["ihl"] for g in sent))
    r["sent_ext"] = sorted(set(tuple(g["ext"]) for g in sent))
    r["name"] = case["name"]
    out.append(r)
print(json.dumps(out))
"#;

/// One scripted conversation: its name, the headers of its packets, the server port,
/// its segments as (offset, bytes) in sending order, and the most bytes of a segment one
/// IP fragment carries (0: not fragmented).
struct Conv<'a> {
    name: &'a str,
    headers: &'a str,
    dport: u16,
    segments: Vec<(usize, Vec<u8>)>,
    fragment: usize,
}

fn conversations(env: &Env, v6: bool, convs: &[Conv<'_>]) -> Vec<Value> {
    frames::drop_kernel_resets(env.client_ns()).expect("drop the client stack's resets");
    let mut args = base_args(env, v6);
    args["cases"] = convs
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "headers": c.headers,
                "dport": c.dport,
                "gap": 0.05,
                "fragment": c.fragment,
                "segments": c.segments.iter()
                    .map(|(off, b)| serde_json::json!([off, nprot_tests::tls::hex(b)]))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let out = run(env, CONVERSATION_PY, &args);
    eprintln!("{out:#}");
    out.as_array().cloned().unwrap_or_else(|| panic!("{out}"))
}

fn request(host: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The request for `host` in one segment.
fn whole(host: &str) -> Vec<(usize, Vec<u8>)> {
    vec![(0, request(host))]
}

/// A scripted conversation that was blocked: the server answered (its response is on the
/// wire), but the client's stack got a reset and not one byte of it; and the event.
#[track_caller]
fn assert_frames_blocked(env: &Env, r: &Value, url: &str) {
    let (wire, stack) = (&r["wire"], &r["stack"]);
    assert!(
        wire["data_bytes"].as_u64().unwrap_or(0) > 0,
        "{}: the server must have answered (else nothing was shown): {r}\n{}",
        r["name"],
        env.diagnostics()
    );
    assert!(
        stack["data_bytes"] == 0 && stack["rst"].as_u64().unwrap_or(0) > 0,
        "{}: the client's stack must get a reset and no response byte: {r}\n{}\n{}",
        r["name"],
        env.diagnostics(),
        stats_text(env)
    );
    let port = port_of(r);
    let blocked = wait(env, &format!("the block of {}", r["name"]), |e| {
        ev::is(e, BLOCKED) && ev::local_port(e, port)
    });
    assert_eq!(blocked["RemoteUrl"], url, "{blocked}");
}

/// A scripted conversation that was allowed: the response reached the client's stack.
#[track_caller]
fn assert_frames_allowed(env: &Env, r: &Value, starts: &str) {
    let stack = &r["stack"];
    assert!(
        stack["rst"] == 0
            && stack["data_bytes"].as_u64().unwrap_or(0) > 0
            && stack["first"].as_str().unwrap_or("").starts_with(starts),
        "{}: the response must reach the client's stack: {r}\n{}",
        r["name"],
        env.diagnostics()
    );
}

/// IPv6 extension headers: hop-by-hop and destination-options headers before TCP (with
/// an atomic fragment header, a routing header with no segment left, or four more
/// destination-options headers after them), on every packet of a conversation with nginx.
#[test]
fn ipv6_extension_headers_before_tcp_do_not_hide_the_request() {
    let env = start_blocking_bad();
    let conv = |name, headers, host| Conv {
        name,
        headers,
        dport: 80,
        segments: whole(host),
        fragment: 0,
    };
    let out = conversations(
        &env,
        true,
        &[
            conv("hbh+dst, allowed", "ipv6-hbh-dst", "good.example"),
            conv("hbh+dst, blocked", "ipv6-hbh-dst", "bad.example"),
            conv("hbh+dst+frag, blocked", "ipv6-hbh-dst-frag", "bad.example"),
            conv("hbh+dst+routing, blocked", "ipv6-hbh-dst-rt", "bad.example"),
            // Six in all: as many as the sensor walks.
            conv("hbh+5 dst, blocked", "ipv6-dst*5", "bad.example"),
        ],
    );
    let exts = [
        serde_json::json!([[0, 60]]),
        serde_json::json!([[0, 60]]),
        serde_json::json!([[0, 60, 44]]),
        serde_json::json!([[0, 60, 43]]),
        serde_json::json!([[0, 60, 60, 60, 60, 60]]),
    ];
    for (r, ext) in out.iter().zip(exts) {
        assert_eq!(r["sent_ext"], ext, "{r}");
    }
    assert_frames_allowed(&env, &out[0], "HTTP/1.1 200");
    for r in &out[1..] {
        assert_frames_blocked(&env, r, "http://bad.example/");
    }
}

/// Seven extension headers (hop-by-hop and six destination options) are within the
/// kernel's walk (`nprot_common::encap::MAX_IPV6_EXT` = 8): the request is judged.
#[test]
fn seven_ipv6_extension_headers_do_not_hide_the_request() {
    let env = start_blocking_bad();
    let out = conversations(
        &env,
        true,
        &[Conv {
            name: "hbh+6 dst, blocked",
            headers: "ipv6-dst*6",
            dport: 80,
            segments: whole("bad.example"),
            fragment: 0,
        }],
    );
    assert_frames_blocked(&env, &out[0], "http://bad.example/");
}

/// More extension headers than the walk reads: Linux still delivers the segment, and the
/// sensor cannot see it, but says so (`headers_too_deep`).
#[test]
#[ignore = "sensor limit, counted: beyond the kernel's bounded walk of IPv6 extension \
            headers (nprot_common::encap::MAX_IPV6_EXT) a packet is not tracked; it is counted \
            as headers_too_deep, but the request passes unjudged"]
fn more_ipv6_extension_headers_than_the_walk_bound_do_not_hide_the_request() {
    let env = start_blocking_bad();
    let out = conversations(
        &env,
        true,
        &[Conv {
            name: "hbh+8 dst, blocked",
            headers: "ipv6-dst*8",
            dport: 80,
            segments: whole("bad.example"),
            fragment: 0,
        }],
    );
    assert!(kernel_stat(&env, "headers_too_deep") > 0);
    assert_frames_blocked(&env, &out[0], "http://bad.example/");
}

/// IP fragments: the request segment cut into fragments of 24 bytes of it each (the first
/// carries the TCP header and 4 bytes of data); the server's stack reassembles them.
#[test]
#[ignore = "sensor limit, counted: the kernel reads only a TCP segment's first IP \
            fragment (counted as tcp_fragments), so a fragmented request waits for bytes that \
            never come and its response is released at the verdict timeout (fail_open)"]
fn fragmented_request_segments_are_judged() {
    let env = start_blocking_bad();
    for v6 in [false, true] {
        let conv = |name, host| Conv {
            name,
            headers: "plain",
            dport: 80,
            segments: whole(host),
            fragment: 24,
        };
        let out = conversations(
            &env,
            v6,
            &[
                conv("fragments, allowed", "good.example"),
                conv("fragments, blocked", "bad.example"),
            ],
        );
        assert_frames_allowed(&env, &out[0], "HTTP/1.1 200");
        assert_frames_blocked(&env, &out[1], "http://bad.example/");
    }
}

/// IPv4 options: a 28-byte IPv4 header (Router Alert and NOP options) on every
/// packet of a conversation with nginx.
#[test]
fn ipv4_options_do_not_hide_the_request() {
    let env = start_blocking_bad();
    let conv = |name, host| Conv {
        name,
        headers: "ipv4-options",
        dport: 80,
        segments: whole(host),
        fragment: 0,
    };
    let out = conversations(
        &env,
        false,
        &[
            conv("options, allowed", "good.example"),
            conv("options, blocked", "bad.example"),
        ],
    );
    assert_eq!(out[1]["sent_ihl"], serde_json::json!([28]), "{}", out[1]);
    assert_frames_allowed(&env, &out[0], "HTTP/1.1 200");
    assert_frames_blocked(&env, &out[1], "http://bad.example/");
}

/// Python: real sockets whose every packet carries sticky options: IPv6 hop-by-hop and
/// destination options (`IPV6_HOPOPTS`, `IPV6_DSTOPTS`), IPv4 options (`IP_OPTIONS`:
/// Router Alert and NOPs). Each sends its request and reads to the end.
const STICKY_PY: &str = r#"
import json, socket, sys
from nprot_frames import *
cfg = json.loads(sys.argv[1])
port = Port(cfg["iface"])
IPV6_HOPOPTS, IPV6_DSTOPTS = 54, 59
# An 8-byte extension header: next header (set by the kernel), length 0, PadN of 4.
EXT = bytes([0, 0, 1, 4, 0, 0, 0, 0])
out = []
for server, host in cfg["cases"]:
    v6 = ":" in server
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_HOPOPTS, EXT)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, EXT)
    else:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([0x94, 4, 0, 0, 1, 1, 1, 0]))
    s.settimeout(5)
    s.connect((server, 80))
    sport = s.getsockname()[1]
    got, end = b"", "eof"
    try:
        s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode())
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
    port.poll(0.05)
    sent = port.segments("out", lambda g: g["sport"] == sport and g["payload"] and not g["rst"])
    out.append({"sport": sport, "host": host, "end": end, "received": len(got),
                "body": got.decode("latin-1"),
                "sent_ihl": sorted(set(g["ihl"] for g in sent)),
                "sent_ext": sorted(set(tuple(g["ext"]) for g in sent))})
print(json.dumps(out))
"#;

/// IPv6 extension headers and IPv4 options with a real client: the kernel adds the options to every packet of the
/// connection (SYN included).
#[test]
fn sticky_ip_options_on_real_sockets_do_not_hide_the_request() {
    let env = start_blocking_bad();
    let mut args = base_args(&env, false);
    let (v4, v6) = (
        env.server_ip(false).to_string(),
        env.server_ip(true).to_string(),
    );
    args["cases"] = serde_json::json!([
        [v6, "good.example"],
        [v6, "bad.example"],
        [v4, "good.example"],
        [v4, "bad.example"]
    ]);
    let out = run(&env, STICKY_PY, &args);
    eprintln!("{out:#}");
    for r in &out.as_array().cloned().unwrap_or_default()[..2] {
        assert_eq!(r["sent_ext"], serde_json::json!([[0, 60]]), "{r}");
    }
    for r in &out.as_array().cloned().unwrap_or_default()[2..] {
        assert_eq!(r["sent_ihl"], serde_json::json!([28]), "{r}");
    }
    assert_socket_allowed(&env, "IPv6 with extension headers", &out[0]);
    assert_socket_blocked(&env, "IPv6 with extension headers", &out[1]);
    assert_socket_allowed(&env, "IPv4 with options", &out[2]);
    assert_socket_blocked(&env, "IPv4 with options", &out[3]);
}

/// Segments out of order. The request in three segments sent last first:
/// the server's stack puts them back in order, and so must the sensor.
#[test]
fn out_of_order_segments_are_reassembled() {
    let env = start_blocking_bad();
    let split = |host: &str, order: &[usize]| {
        let r = request(host);
        let parts = [
            (0, r[..10].to_vec()),
            (10, r[10..27].to_vec()),
            (27, r[27..].to_vec()),
        ];
        order.iter().map(|&i| parts[i].clone()).collect::<Vec<_>>()
    };
    let conv = |name, host, order: &[usize]| Conv {
        name,
        headers: "plain",
        dport: 80,
        segments: split(host, order),
        fragment: 0,
    };
    let out = conversations(
        &env,
        false,
        &[
            conv("3-2-1, allowed", "good.example", &[2, 1, 0]),
            conv("3-2-1, blocked", "bad.example", &[2, 1, 0]),
            conv("2-3-1, blocked", "bad.example", &[1, 2, 0]),
            conv("1-3-2, blocked", "bad.example", &[0, 2, 1]),
        ],
    );
    assert_frames_allowed(&env, &out[0], "HTTP/1.1 200");
    for r in &out[1..] {
        assert_frames_blocked(&env, r, "http://bad.example/");
    }
}

/// Port of the [`HostEcho`] server.
const ECHO_PORT: u16 = 8081;

/// One overlap scenario: its name and its segments in sending order, with offsets from
/// the first data byte.
type Overlap = (&'static str, Vec<(usize, Vec<u8>)>);

/// Runs overlap scenarios against a [`HostEcho`] server: for each, what the server's
/// stack delivered decides the expectation. The sensor must have judged that same host
/// (its `HttpConnectionInspected` event), and blocked the connection exactly when it is
/// bad.example. Returns the host the server saw per scenario.
fn overlaps_as_the_server_reads_them(scenarios: &[Overlap]) -> Vec<String> {
    let env = start_blocking_bad();
    let echo = HostEcho::start_in(env.server_ns(), env.server_ip(false), ECHO_PORT, env.dir())
        .expect("host-echo server");
    let convs: Vec<Conv<'_>> = scenarios
        .iter()
        .map(|(name, segments)| Conv {
            name,
            headers: "plain",
            dport: echo.port(),
            segments: segments.clone(),
            fragment: 0,
        })
        .collect();
    let out = conversations(&env, false, &convs);
    let mut seen = Vec::new();
    for r in &out {
        let port = port_of(r);
        let server = echo
            .wait_for(port, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{}: {e:#}", r["name"]));
        let host = server["host"].as_str().unwrap_or("").to_owned();
        let judged = wait(&env, &format!("{} inspected", r["name"]), |e| {
            ev::is(e, "HttpConnectionInspected") && ev::local_port(e, port)
        });
        assert_eq!(
            judged["AdditionalFields"]["host"], host,
            "{}: the sensor must judge the Host the server's stack delivered\nserver got: \
             {server}\nsensor judged: {judged}\n{r}",
            r["name"]
        );
        if host == "bad.example" {
            // The URL is built from the Host header, which names no port.
            assert_frames_blocked(&env, r, "http://bad.example/");
        } else {
            assert_frames_allowed(&env, r, "HTTP/1.1 200");
            assert!(
                r["stack"]["data_bytes"].as_u64().unwrap_or(0) > 0,
                "{r}\n{}",
                env.diagnostics()
            );
        }
        seen.push(host);
    }
    seen
}

const HEAD: &str = "GET / HTTP/1.1\r\nHost: ";
const TAIL: &str = "\r\nConnection: close\r\n\r\n";

fn seg(off: usize, text: &str) -> (usize, Vec<u8>) {
    (off, text.as_bytes().to_vec())
}

/// Overlapping segments whose bytes differ, in order: a first segment naming one host, then a retransmission of the
/// same bytes naming another (of the same length), then the end of the head. Linux keeps
/// the bytes it already has (the retransmitted range is trimmed), whichever host that is.
#[test]
fn overlapping_retransmission_is_judged_as_the_server_reads_it() {
    let first = |a: &str, b: &str| {
        vec![
            seg(0, &format!("{HEAD}{a}")),
            seg(0, &format!("{HEAD}{b}")),
            seg(HEAD.len() + a.len(), TAIL),
        ]
    };
    let seen = overlaps_as_the_server_reads_them(&[
        (
            "bad first, www retransmitted",
            first("bad.example", "www.example"),
        ),
        (
            "www first, bad retransmitted",
            first("www.example", "bad.example"),
        ),
        // The retransmission covers more than the first copy: only its new bytes count.
        (
            "bad first, longer www retransmission",
            vec![
                seg(0, &format!("{HEAD}bad.exa")),
                seg(0, &format!("{HEAD}www.example{TAIL}")),
            ],
        ),
    ]);
    assert_eq!(seen, ["bad.example", "www.example", "bad.example"]);
}

/// Overlapping segments whose bytes differ, out of order: overlapping segments beyond a gap, then the gap filled.
/// Linux keeps the first of two copies of the same range, lets a longer segment with the
/// same start replace a shorter one, and lets an in-order segment win over the part of a
/// queued one it overlaps.
#[test]
fn overlapping_out_of_order_segments_are_judged_as_the_server_reads_them() {
    let p = HEAD.len();
    let seen = overlaps_as_the_server_reads_them(&[
        (
            "same range twice beyond a gap, bad first",
            vec![
                seg(p, &format!("bad.example{TAIL}")),
                seg(p, &format!("www.example{TAIL}")),
                seg(0, HEAD),
            ],
        ),
        (
            "in-order segment overlapping a queued one",
            vec![
                seg(p, &format!("www.example{TAIL}")),
                seg(0, &format!("{HEAD}bad.example")),
            ],
        ),
        (
            "longer queued segment with the same start",
            vec![
                seg(p, "www.ex"),
                seg(p, &format!("bad.example{TAIL}")),
                seg(0, HEAD),
            ],
        ),
        (
            "queued segment starting earlier over a later one",
            vec![
                seg(p + 4, &format!("xample{TAIL}")),
                seg(p, &format!("www.example{TAIL}")),
                seg(0, HEAD),
            ],
        ),
    ]);
    assert_eq!(
        seen,
        ["bad.example", "bad.example", "bad.example", "www.example"]
    );
}
