//! End-to-end tests of `nprot replay` (DESIGN §5): tcpdump records the client's traffic
//! while the live sensor guards it in block mode; replaying the recording with the same
//! indicators must log what the live sensor logged — the same SNI, Host and URL per flow
//! and the same Blocked verdicts — with the capture's timestamps.
//!
//! Three recordings cover the link layers a Linux capture has: Ethernet on the veth
//! (nanosecond pcap), and Linux cooked v1 (with IPv6) and v2 on `any`. A fourth is taken
//! on the underlay of a VXLAN tunnel while the live sensor guards the overlay device:
//! replay must decapsulate it to the same inner flows.
//!
//! Run as root, serially: `cargo test -p nprot-tests --test replay -- --test-threads=1`.
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nprot_tests::{
    ClientServer, CurlRun, EVENT_TIMEOUT, Env, Value, assert_reset,
    clients::curl_any,
    ev,
    frames::Tcpdump,
    indicators::{indicator, with},
    nginx::{BODY_GOOD, BODY_ROOT},
    process::run_with_timeout,
    sensor::sensor_binary,
};

const BLOCKED: &str = "ExploitGuardNetworkProtectionBlocked";
/// Bound on one `nprot replay` run.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// `bad.example` → Block, as in the enforcement tests.
fn block_bad_example() -> Value {
    with(
        indicator("i1", "DomainName", "bad.example", "Block"),
        "title",
        "Bad site",
    )
}

/// Runs `nprot replay ARGS…` (no namespace or privilege needed).
fn nprot_replay(args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(sensor_binary()?);
    cmd.arg("replay").args(args);
    run_with_timeout(&mut cmd, REPLAY_TIMEOUT)
}

/// Runs `nprot replay - ARGS…` with `input` on its standard input.
fn nprot_replay_stdin(input: &Path, args: &[&str]) -> Result<Output> {
    let bin = sensor_binary()?;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"f="$1"; shift; exec "$0" replay - "$@" < "$f""#])
        .arg(&bin)
        .arg(input)
        .args(args);
    run_with_timeout(&mut cmd, REPLAY_TIMEOUT)
}

/// The JSON lines of a successful replay; fails with its stderr otherwise.
fn replay_events(out: &Output) -> Result<Vec<Value>> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("nprot replay failed ({}):\n{stderr}", out.status);
    }
    let summary = stderr.lines().last().unwrap_or_default();
    if !summary.starts_with("nprot replay: ") {
        bail!("no summary line on stderr:\n{stderr}");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// What must agree between the live sensor and replay for one event.
type Key = (String, String, u64);

fn key(e: &Value) -> Key {
    (
        e["ActionType"].as_str().unwrap_or_default().to_owned(),
        e["RemoteUrl"].as_str().unwrap_or_default().to_owned(),
        e["LocalPort"].as_u64().unwrap_or_default(),
    )
}

/// Seconds since midnight of an RFC 3339 UTC timestamp, with its date.
fn time_of_day(ts: &str) -> Option<(&str, f64)> {
    let (date, time) = ts.split_once('T')?;
    let time = time.strip_suffix('Z')?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some((date, h * 3600.0 + m * 60.0 + s))
}

fn show(events: &[Value]) -> String {
    events.iter().fold(String::new(), |mut out, e| {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{e}");
        out
    })
}

#[track_caller]
fn assert_ok(what: &str, r: &CurlRun, body: &str) {
    assert!(
        r.exit_code == Some(0) && r.http_code == 200 && r.body.trim() == body,
        "{what}: expected 200 with {body:?}, got {r:?}"
    );
}

/// Records the live sensor in block mode with `tcpdump ARGS`, replays the file and
/// compares; returns the file for further checks.
fn live_and_replay(tcpdump_args: &[&str], v6: bool) -> (Env, PathBuf) {
    let mut env = Env::start_without_sensor().expect("test environment");
    let file = env.dir().join("capture.pcap");
    let mut args: Vec<&str> = tcpdump_args.to_vec();
    let client_if = env.topo.client_if.clone();
    if !args.contains(&"-i") {
        args.extend(["-i", &client_if]);
    }
    let mut dump = Tcpdump::start(&env.topo.client_ns, &file, &args).expect("tcpdump");
    env.enforce("block", &[block_bad_example()], &[])
        .expect("sensor");

    let good = env
        .curl_https_any("good.example", 443, v6, "/good")
        .expect("curl https good.example");
    assert_ok("https://good.example/good", &good, BODY_GOOD);
    let bad = env
        .curl_https_any("bad.example", 443, v6, "/")
        .expect("curl https bad.example");
    assert_reset("https://bad.example/", &bad, || env.diagnostics());
    let http = env
        .curl_http_any("good.example", 80, v6, "/", &[])
        .expect("curl http good.example");
    assert_ok("http://good.example/", &http, BODY_ROOT);
    let http_good = env
        .curl_http_any("good.example", 80, v6, "/good", &[])
        .expect("curl http good.example/good");
    assert_ok("http://good.example/good", &http_good, BODY_GOOD);

    // The live sensor's view of every flow, before the recording stops.
    let wait = |what: &str, action: &str, port: u16| {
        env.events()
            .wait_for_described(
                &format!("{what} ({action}, port {port})"),
                |e| ev::is(e, action) && ev::local_port(e, port),
                EVENT_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    wait("good.example", "SslConnectionInspected", good.local_port);
    wait("bad.example", BLOCKED, bad.local_port);
    wait("http root", "HttpConnectionInspected", http.local_port);
    wait(
        "http /good",
        "HttpConnectionInspected",
        http_good.local_port,
    );
    for port in [
        good.local_port,
        bad.local_port,
        http.local_port,
        http_good.local_port,
    ] {
        wait("handshake", "ConnectionSuccess", port);
    }
    let dump_log = dump.stop().expect("stop tcpdump");

    let indicators = env.dir().join("indicators.json");
    let out = nprot_replay(&[
        &file.to_string_lossy(),
        "--indicators",
        &indicators.to_string_lossy(),
        "--mode",
        "block",
    ])
    .expect("nprot replay");
    let replayed = replay_events(&out).unwrap_or_else(|e| panic!("{e:#}\ntcpdump:\n{dump_log}"));
    let live = env.events().events().expect("live events");

    let live_keys: BTreeSet<Key> = live.iter().map(key).collect();
    let replay_keys: BTreeSet<Key> = replayed.iter().map(key).collect();
    assert_eq!(
        live_keys,
        replay_keys,
        "replay must log what the live sensor logged\nlive:\n{}\nreplayed:\n{}\ntcpdump:\n{dump_log}\n\
         replay stderr:\n{}",
        show(&live),
        show(&replayed),
        String::from_utf8_lossy(&out.stderr)
    );
    // And what was expected in the first place.
    for want in [
        ("SslConnectionInspected", "good.example", good.local_port),
        ("SslConnectionInspected", "bad.example", bad.local_port),
        (BLOCKED, "bad.example", bad.local_port),
        (
            "HttpConnectionInspected",
            "http://good.example/",
            http.local_port,
        ),
        (
            "HttpConnectionInspected",
            "http://good.example/good",
            http_good.local_port,
        ),
    ] {
        let k = (want.0.to_owned(), want.1.to_owned(), u64::from(want.2));
        assert!(
            replay_keys.contains(&k),
            "{want:?} missing from replay:\n{}",
            show(&replayed)
        );
    }
    let blocked: Vec<&Value> = replayed.iter().filter(|e| ev::is(e, BLOCKED)).collect();
    assert_eq!(blocked.len(), 1, "{}", show(&replayed));
    assert_eq!(blocked[0]["AdditionalFields"]["IndicatorId"], "i1");
    assert_eq!(blocked[0]["AdditionalFields"]["Mode"], "Block");
    assert_eq!(
        blocked[0]["RemoteIP"],
        env.server_ip(v6).to_string(),
        "{}",
        blocked[0]
    );
    assert_eq!(blocked[0]["LocalIP"], env.client_ip(v6).to_string());

    // Replay stamps events with the capture's time: within a second of the live ones.
    let live_ts: BTreeMap<Key, &str> = live
        .iter()
        .map(|e| (key(e), e["Timestamp"].as_str().unwrap_or_default()))
        .collect();
    for e in &replayed {
        let (Some(live), Some(replay)) = (
            live_ts.get(&key(e)).and_then(|t| time_of_day(t)),
            e["Timestamp"].as_str().and_then(time_of_day),
        ) else {
            panic!("unparsable timestamps: {e}");
        };
        if live.0 == replay.0 {
            assert!(
                (live.1 - replay.1).abs() < 1.0,
                "live {live:?} vs replay {replay:?}: {e}"
            );
        }
    }
    (env, file)
}

#[test]
fn replay_of_an_ethernet_capture_matches_the_live_sensor() {
    let (env, file) = live_and_replay(&["--time-stamp-precision", "nano"], false);
    let magic = std::fs::read(&file).expect("capture file");
    assert_eq!(&magic[..4], &[0x4d, 0x3c, 0xb2, 0xa1], "nanosecond pcap");

    // The same file through standard input gives the same events.
    let indicators = env.dir().join("indicators.json");
    let ind = indicators.to_string_lossy();
    let by_path =
        nprot_replay(&[&file.to_string_lossy(), "--indicators", &ind]).expect("replay by path");
    let by_stdin = nprot_replay_stdin(&file, &["--indicators", &ind]).expect("replay from stdin");
    let a = replay_events(&by_path).expect("by path");
    let b = replay_events(&by_stdin).expect("from stdin");
    assert_eq!(a, b);
    // Default mode is audit: the block becomes an audited event.
    assert!(
        a.iter()
            .any(|e| ev::is(e, "ExploitGuardNetworkProtectionAudited")
                && e["RemoteUrl"] == "bad.example")
            && !a.iter().any(|e| ev::is(e, BLOCKED)),
        "{}",
        show(&a)
    );

    // A capture cut inside its last packet: the events before it, then an error naming
    // the offset of that packet.
    let cut = env.dir().join("cut.pcap");
    std::fs::write(&cut, &magic[..magic.len() - 3]).expect("write cut file");
    let out = nprot_replay(&[&cut.to_string_lossy()]).expect("replay cut file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("truncated packet record at offset "),
        "{stderr}"
    );
    assert!(!out.stdout.is_empty(), "events before the cut are printed");

    // Not a capture at all.
    let out = nprot_replay(&[&env.dir().join("indicators.json").to_string_lossy()])
        .expect("replay a JSON file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not a pcap or pcapng file: magic number 0x7b0a2020 at offset 0"),
        "{stderr}"
    );
}

#[test]
fn replay_of_a_cooked_capture_on_any_matches_the_live_sensor_ipv6() {
    // tcpdump 4.99 defaults to cooked v2 on `any`; v1 must be asked for.
    let (_env, file) = live_and_replay(&["-i", "any", "-y", "LINUX_SLL"], true);
    let head = std::fs::read(&file).expect("capture file");
    assert_eq!(
        u32::from_le_bytes([head[20], head[21], head[22], head[23]]),
        113
    );
}

#[test]
fn replay_of_a_cooked_v2_capture_matches_the_live_sensor() {
    let (_env, file) = live_and_replay(&["-i", "any", "-y", "LINUX_SLL2"], false);
    let head = std::fs::read(&file).expect("capture file");
    assert_eq!(
        u32::from_le_bytes([head[20], head[21], head[22], head[23]]),
        276
    );
}

/// The VXLAN device in both namespaces.
const VXLAN_DEV: &str = "npvx0";

/// Runs `ip ARGS…` in namespace `ns`; fails with its stderr.
fn ip_in(env: &Env, server: bool, args: &[&str]) -> Result<()> {
    let mut cmd = if server {
        env.topo.server_cmd("ip")
    } else {
        env.topo.client_cmd("ip")
    };
    cmd.args(args);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(5))?;
    if !out.status.success() {
        bail!(
            "ip {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A VXLAN overlay (VNI 42, UDP 4789 over the veth's IPv4 addresses) between the two
/// namespaces, `198.18.4.1/24` and `2001:db8:4::1/64` on the client, `.2`/`::2` on the
/// server (fixed subnets below `198.18.10.0`, free in these namespaces). Returns the
/// server's overlay addresses; the devices go with the namespaces.
fn vxlan_overlay(env: &Env) -> Result<(IpAddr, IpAddr)> {
    let t = &env.topo;
    for (server, local, remote, dev, host) in [
        (false, t.client_v4, t.server_v4, &t.client_if, 1),
        (true, t.server_v4, t.client_v4, &t.server_if, 2),
    ] {
        let (local, remote) = (local.to_string(), remote.to_string());
        ip_in(
            env,
            server,
            &[
                "link", "add", VXLAN_DEV, "type", "vxlan", "id", "42", "dstport", "4789", "local",
                &local, "remote", &remote, "dev", dev,
            ],
        )?;
        let v4 = format!("198.18.4.{host}/24");
        let v6 = format!("2001:db8:4::{host}/64");
        ip_in(env, server, &["addr", "add", &v4, "dev", VXLAN_DEV])?;
        ip_in(
            env,
            server,
            &["-6", "addr", "add", &v6, "dev", VXLAN_DEV, "nodad"],
        )?;
        ip_in(env, server, &["link", "set", VXLAN_DEV, "up"])?;
    }
    let v4: IpAddr = "198.18.4.2".parse()?;
    let v6: IpAddr = "2001:db8:4::2".parse()?;
    // nginx listens on every address, so the overlay's too.
    t.wait_tcp_ready(
        &[SocketAddr::new(v4, 443), SocketAddr::new(v6, 443)],
        Duration::from_secs(5),
    )?;
    Ok((v4, v6))
}

/// Issue 12: tcpdump on the veth records the VXLAN-encapsulated frames (Ethernet, IPv4,
/// UDP 4789, VXLAN, inner Ethernet, inner IPv4 or IPv6, TCP) while the live sensor guards
/// the overlay device itself; replaying the underlay recording logs the same inner flows
/// and the same Blocked verdict.
#[test]
fn replay_of_a_vxlan_underlay_capture_matches_the_live_sensor_on_the_overlay() {
    let mut env = Env::start_without_sensor().expect("test environment");
    let (server4, server6) = vxlan_overlay(&env).expect("vxlan overlay");
    let file = env.dir().join("underlay.pcap");
    let client_if = env.topo.client_if.clone();
    let mut dump =
        Tcpdump::start(&env.topo.client_ns, &file, &["-i", &client_if]).expect("tcpdump");
    env.enforce_on("block", &[block_bad_example()], &[VXLAN_DEV], &[])
        .expect("sensor on the overlay");

    let curl = |name: &str, port: u16, addr: IpAddr, url: &str| {
        curl_any(&env.topo, name, port, addr, url, &[]).expect("curl over the overlay")
    };
    let good = curl(
        "good.example",
        443,
        server4,
        "https://good.example:443/good",
    );
    assert_ok("https://good.example/good over VXLAN", &good, BODY_GOOD);
    let bad = curl("bad.example", 443, server4, "https://bad.example:443/");
    assert_reset("https://bad.example/ over VXLAN", &bad, || {
        env.diagnostics()
    });
    let bad6 = curl("bad.example", 443, server6, "https://bad.example:443/");
    assert_reset("https://bad.example/ over VXLAN, IPv6", &bad6, || {
        env.diagnostics()
    });
    let http = curl("good.example", 80, server4, "http://good.example:80/good");
    assert_ok("http://good.example/good over VXLAN", &http, BODY_GOOD);

    let wait = |what: &str, action: &str, port: u16| {
        env.events()
            .wait_for_described(
                &format!("{what} ({action}, port {port})"),
                |e| ev::is(e, action) && ev::local_port(e, port),
                EVENT_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    wait("good.example", "SslConnectionInspected", good.local_port);
    wait("bad.example", BLOCKED, bad.local_port);
    wait("bad.example v6", BLOCKED, bad6.local_port);
    wait("http /good", "HttpConnectionInspected", http.local_port);
    for port in [
        good.local_port,
        bad.local_port,
        bad6.local_port,
        http.local_port,
    ] {
        wait("handshake", "ConnectionSuccess", port);
    }
    let dump_log = dump.stop().expect("stop tcpdump");

    let indicators = env.dir().join("indicators.json");
    let out = nprot_replay(&[
        &file.to_string_lossy(),
        "--indicators",
        &indicators.to_string_lossy(),
        "--mode",
        "block",
    ])
    .expect("nprot replay");
    let replayed = replay_events(&out).unwrap_or_else(|e| panic!("{e:#}\ntcpdump:\n{dump_log}"));
    let live = env.events().events().expect("live events");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let live_keys: BTreeSet<Key> = live.iter().map(key).collect();
    let replay_keys: BTreeSet<Key> = replayed.iter().map(key).collect();
    assert_eq!(
        live_keys,
        replay_keys,
        "replay of the underlay must log what the live sensor logged on the overlay\n\
         live:\n{}\nreplayed:\n{}\ntcpdump:\n{dump_log}\nreplay stderr:\n{stderr}",
        show(&live),
        show(&replayed),
    );
    for want in [
        ("SslConnectionInspected", "good.example", good.local_port),
        (BLOCKED, "bad.example", bad.local_port),
        (BLOCKED, "bad.example", bad6.local_port),
        (
            "HttpConnectionInspected",
            "http://good.example/good",
            http.local_port,
        ),
    ] {
        let k = (want.0.to_owned(), want.1.to_owned(), u64::from(want.2));
        assert!(
            replay_keys.contains(&k),
            "{want:?} missing from replay:\n{}",
            show(&replayed)
        );
    }
    // The inner addresses, not the underlay's.
    let blocked: Vec<&Value> = replayed.iter().filter(|e| ev::is(e, BLOCKED)).collect();
    let remotes: BTreeSet<String> = blocked
        .iter()
        .map(|e| e["RemoteIP"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: BTreeSet<String> = [server4.to_string(), server6.to_string()].into();
    assert_eq!(remotes, want, "{}", show(&replayed));
    // Every TCP segment came out of the tunnel: "(N TCP, N tunnelled)".
    let summary = stderr.lines().last().unwrap_or_default();
    let counts: Vec<&str> = summary
        .split(['(', ')'])
        .nth(1)
        .unwrap_or_default()
        .split(", ")
        .collect();
    assert!(
        counts.len() == 2
            && counts[0].strip_suffix(" TCP") == counts[1].strip_suffix(" tunnelled")
            && counts[0] != "0 TCP",
        "{summary}"
    );
}
