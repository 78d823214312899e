//! `nprot-bench`: measures the guarded path against an unguarded baseline in the same
//! run, on the end-to-end topology (client and server namespaces joined by veth, nginx
//! and iperf3 in the server namespace, the sensor on the client veth).
//!
//! Figures: bulk throughput, new connections per second (HTTP request + close and TLS
//! ClientHello + close) with 10^6 indicators in block mode, verdict latency percentiles
//! from the sensor's own histogram, indicator-set scale (load time, daemon RSS, match
//! cost), ring-buffer drops, held packets and fail-open releases during the flood, new
//! QUIC connections per second (aioquic HTTP/3 GET) and the daemon's decrypt-and-parse
//! time of a Chromium-like QUIC ClientHello (two Initial datagrams); the kernel
//! pre-filter (share decided in the kernel, summary size and rebuild time, floods with 1 %
//! blocked), daemon-decided verdicts with and without busy polling, and K `iptables -m
//! string` rules side by side.
//! Run through `cargo xtask bench [--quick]`, which builds in release first.
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::{
    fmt::Write as _,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use nprot::{
    datapath::parse::quic::{
        InitialReader, QuicOutcome, QuicVersion,
        testdata::{chromium_client_hello, chromium_like_datagrams},
    },
    policy::{Policy, Subject, load_file},
};
use nprot_tests::{
    Env, HelloSpec, client_hello,
    netns::in_netns,
    nginx::QUIC_HOST,
    quic::{ClientOpts, QuicServer, ServerOpts, quic_bench},
};
use serde_json::{Value, json};

/// How long each measurement runs.
struct Plan {
    bulk: Duration,
    flood: Duration,
    repeats: usize,
    indicators: usize,
    /// HTTP/3 connections per QUIC measurement.
    quic_connections: u32,
    /// `iptables -m string` rules of the side-by-side alternative.
    string_rules: usize,
    /// Changes put to the fleet's bucket while [`FLEET_WATCHERS`] watch it.
    fleet_changes: usize,
}

/// Watchers of the fleet's policy bucket in the propagation figure.
const FLEET_WATCHERS: usize = 1000;

const FULL: Plan = Plan {
    bulk: Duration::from_secs(4),
    flood: Duration::from_secs(4),
    repeats: 3,
    indicators: 1_000_000,
    quic_connections: 100,
    string_rules: 1000,
    fleet_changes: 10,
};

/// CI's quick mode: every figure, small numbers.
const QUICK: Plan = Plan {
    bulk: Duration::from_secs(1),
    flood: Duration::from_secs(1),
    repeats: 1,
    indicators: 20_000,
    quic_connections: 15,
    string_rules: 1000,
    fleet_changes: 3,
};

/// The one name of the indicator set the benchmark's traffic does match (a Block):
/// one connection in [`BLOCKED_EVERY`] of the mixed floods asks for it.
const BLOCKED_NAME: &str = "blocked.bench.example";
const BLOCKED_EVERY: u64 = 100;

/// Sensor variants whose every flow the daemon decides (`prefilter = "off"`): how the
/// verdict loop waits for records, as `ring_poll` says.
const DAEMON_VARIANTS: [&str; 2] = ["wait", "busy"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from("bench-results/bench.json"), PathBuf::from);
    let plan = if quick { QUICK } else { FULL };
    let results = run(&plan)?;
    print_table(&results);
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&out, serde_json::to_vec_pretty(&results)?)?;
    println!("written to {}", out.display());
    check_complete(&results)
}

fn run(plan: &Plan) -> Result<Value> {
    let mut env = Env::start_without_sensor()?;
    let dir = env.dir().to_owned();
    let indicators = dir.join("indicators.json");
    write_indicators(&indicators, plan.indicators)?;
    tune_client_namespace(&env)?;
    let _iperf = start_iperf_server(&env)?;

    let scale = indicator_scale(&indicators)?;
    let quic_initial_us = quic_initial_us();
    let nginx = env.nginx.as_ref().context("nginx")?;
    let _quic_server = QuicServer::start(
        &env.topo.server_ns,
        &[env.topo.server_ip(false)],
        nginx.cert_dir(),
        &[QUIC_HOST],
        &ServerOpts::default(),
    )?;
    let ind = indicators.to_string_lossy().into_owned();

    // Alternate baseline and guarded runs so that drift hits both alike.
    let mut bulk = (Vec::new(), Vec::new());
    let mut http = (Vec::new(), Vec::new());
    let mut tls = (Vec::new(), Vec::new());
    let mut kept = (Vec::new(), Vec::new());
    let mut quic = (Vec::new(), Vec::new());
    let mut mixed = (Vec::new(), Vec::new());
    let mut strings = (Vec::new(), Vec::new());
    let mut shares = Vec::new();
    let mut sensor_runs = Vec::new();
    let mut daemon_runs: Vec<Vec<Value>> = vec![Vec::new(); DAEMON_VARIANTS.len()];
    let mut blocked_answered = 0;
    for round in 0..plan.repeats {
        bulk.0.push(iperf(&env, plan.bulk)?);
        http.0
            .push(flood(&env, Flood::Http, plan.flood, None)?.rate);
        tls.0.push(flood(&env, Flood::Tls, plan.flood, None)?.rate);
        kept.0.push(keep_alive(&env, plan.flood)?);
        quic.0.push(quic_conn_per_s(&env, plan.quic_connections)?);
        {
            let _rules = StringRules::install(&env, plan.string_rules)?;
            strings
                .0
                .push(flood(&env, Flood::Http, plan.flood, None)?.rate);
            strings
                .1
                .push(flood(&env, Flood::Tls, plan.flood, None)?.rate);
        }

        // The sensor as shipped: block mode, the pre-filter on.
        let stats = dir.join(format!("stats-{round}.json"));
        let (run, report) = guarded(&mut env, &stats, &["--indicators", &ind], |env| {
            let rss = sensor_rss(env)?;
            let bulk = iperf(env, plan.bulk)?;
            // The kernel's share is read over the no-match floods alone.
            let before = env.stats()?;
            let cpu = sensor_cpu_s(env)?;
            let progs = ProgStats::start()?;
            let h = flood(env, Flood::Http, plan.flood, None)?;
            let progs = progs.finish()?;
            let cpu_http = sensor_cpu_s(env)? - cpu;
            let t = flood(env, Flood::Tls, plan.flood, None)?;
            let share = kernel_share(&before, &env.stats()?);
            let before = env.stats()?;
            let kept = keep_alive(env, plan.flood)?;
            let kept_requeued = kernel_delta(&before, &env.stats()?, "requeued");
            let quic = quic_conn_per_s(env, plan.quic_connections)?;
            let before = env.stats()?;
            let mh = flood(env, Flood::Http, plan.flood, Some(BLOCKED_EVERY))?;
            let mt = flood(env, Flood::Tls, plan.flood, Some(BLOCKED_EVERY))?;
            let after = env.stats()?;
            Ok(json!({
                "rss_mib": rss, "bulk": bulk, "http": h.rate, "tls": t.rate,
                "kept": kept, "quic": quic, "kernel_share": share,
                "daemon_cpu_us_per_http_flow": cpu_http * 1e6 / h.made.max(1) as f64,
                "kernel_us_per_http_flow": progs.run_ns as f64 / 1e3 / h.made.max(1) as f64,
                "kernel_ns_per_packet": progs.run_ns as f64 / progs.runs.max(1) as f64,
                "mixed_http": mh.rate, "mixed_tls": mt.rate,
                "blocked": mh.blocked + mt.blocked,
                "blocked_max_ms": mh.blocked_max_ms.max(mt.blocked_max_ms),
                "kept_requeued": kept_requeued,
                "mixed_requeued": kernel_delta(&before, &after, "requeued"),
                "mixed_held_dropped": kernel_delta(&before, &after, "held_packets"),
                "blocked_answered": mh.blocked_answered + mt.blocked_answered,
                "flood_connections": h.made + t.made + mh.made + mt.made,
            }))
        })?;
        let f = |k: &str| run[k].as_f64().unwrap_or(f64::NAN);
        bulk.1.push(f("bulk"));
        http.1.push(f("http"));
        tls.1.push(f("tls"));
        kept.1.push(f("kept"));
        quic.1.push(f("quic"));
        mixed.0.push(f("mixed_http"));
        mixed.1.push(f("mixed_tls"));
        shares.push(f("kernel_share"));
        blocked_answered += run["blocked_answered"].as_u64().unwrap_or(0);
        sensor_runs.push(json!({ "run": run, "report": report }));

        // Every flow decided by the daemon: how long the verdict takes, sleeping or
        // busy-polling between records.
        for (i, poll) in DAEMON_VARIANTS.iter().enumerate() {
            let config = dir.join(format!("daemon-{poll}.toml"));
            fs::write(
                &config,
                format!("prefilter = \"off\"\nring_poll = \"{poll}\"\n"),
            )?;
            let config = config.to_string_lossy().into_owned();
            let stats = dir.join(format!("stats-{poll}-{round}.json"));
            let args = ["--indicators", &ind, "--config", &config];
            let (run, report) = guarded(&mut env, &stats, &args, |env| {
                let h = flood(env, Flood::Http, plan.flood, None)?;
                let t = flood(env, Flood::Tls, plan.flood, None)?;
                Ok(json!({ "http": h.rate, "tls": t.rate }))
            })?;
            if report["busy_poll"].as_bool() != Some(*poll == "busy") {
                bail!("ring_poll = {poll:?} not in force: {}", report["busy_poll"]);
            }
            daemon_runs[i].push(json!({
                "http": run["http"], "tls": run["tls"],
                "verdict_latency": report["verdict_latency"],
                "wake_latency": report["wake_latency"],
            }));
        }
    }

    // The fleet: a change to the policy bucket reaching 1000 watchers.
    let fleet = nprot_tests::fleet_scale::propagation(
        &dir.join("fleet"),
        FLEET_WATCHERS,
        plan.fleet_changes,
    )?;

    let last = sensor_runs.last().context("no sensor run")?;
    let report = &last["report"];
    let flows = report["kernel"]["flows_new"].as_f64().unwrap_or(0.0);
    let ratio = |guarded: &[f64], base: &[f64], target: f64| {
        json!({
            "baseline": median(base), "guarded": median(guarded),
            "ratio": median(guarded) / median(base), "target": target,
        })
    };
    let daemon_decided: Vec<Value> = DAEMON_VARIANTS
        .iter()
        .zip(&daemon_runs)
        .map(|(poll, runs)| {
            let pick = |pointer: &str| -> Vec<f64> {
                runs.iter()
                    .filter_map(|r| r.pointer(pointer).and_then(Value::as_f64))
                    .collect()
            };
            json!({
                "ring_poll": poll,
                "http": ratio(&pick("/http"), &http.0, 0.90),
                "tls": ratio(&pick("/tls"), &tls.0, 0.90),
                "verdict_p50_us": median(&pick("/verdict_latency/p50_us")),
                "verdict_p99_us": median(&pick("/verdict_latency/p99_us")),
                "wake_p50_us": median(&pick("/wake_latency/p50_us")),
                "wake_p99_us": median(&pick("/wake_latency/p99_us")),
            })
        })
        .collect();
    Ok(json!({
        "quick": plan.indicators != FULL.indicators,
        "rounds": plan.repeats,
        "throughput_gbit": ratio(&bulk.1, &bulk.0, 0.97),
        "http_conn_per_s": ratio(&http.1, &http.0, 0.97),
        "tls_conn_per_s": ratio(&tls.1, &tls.0, 0.97),
        "keepalive_req_per_s": ratio(&kept.1, &kept.0, 0.95),
        "quic_conn_per_s": ratio(&quic.1, &quic.0, 0.90),
        // Connections/s of the allowed flows while 1 in BLOCKED_EVERY is blocked.
        "mixed_http_conn_per_s": ratio(&mixed.0, &http.0, 0.95),
        "mixed_tls_conn_per_s": ratio(&mixed.1, &tls.0, 0.95),
        "blocked_answered": blocked_answered,
        "iptables_string": {
            "rules": plan.string_rules,
            "http": ratio(&strings.0, &http.0, 0.0),
            "tls": ratio(&strings.1, &tls.0, 0.0),
        },
        "kernel_share": { "median": median(&shares), "target": 0.99 },
        "daemon_decided": daemon_decided,
        "prefilter": report["prefilter"].clone(),
        "quic_initial_us": { "per_client_hello": quic_initial_us, "target": 10.0 },
        "fleet_propagation": fleet.to_json(),
        "quic": report["quic"].clone(),
        "verdict_latency_us": report["verdict_latency"].clone(),
        "indicators": {
            "count": report["indicators"].clone(),
            "sensor_load_ms": report["indicator_load_ms"].clone(),
            "sensor_rss_mib": last["run"]["rss_mib"].clone(),
            "in_process_load_ms": scale.load_ms,
            "match_ns": scale.match_ns,
        },
        "flood": {
            "flows": flows,
            // Every connection of the floods must be tracked or counted as not tracked
            // (iperf's few connections come on top).
            "connections": last["run"]["flood_connections"].clone(),
            "tracked": report["flows"]["tracked"].clone(),
            "not_tracked": report["flows"]["not_tracked"].clone(),
            "records_lost": report["flows"]["records_lost"].clone(),
            "events_dropped": report["events_dropped"].clone(),
            "ringbuf_drops": report["kernel"]["ringbuf_drops"].clone(),
            "held_packets": report["kernel"]["held_packets"].clone(),
            "fail_open": report["kernel"]["fail_open"].clone(),
            "flows_reset": report["kernel"]["flows_reset"].clone(),
            "gave_up": report["pipeline"]["gave_up"].clone(),
        },
        "runs": sensor_runs,
    }))
}

/// Starts the sensor in block mode with `args`, runs `body` against it, stops it and
/// returns what `body` measured with the sensor's exit report (`--stats`).
fn guarded(
    env: &mut Env,
    stats: &Path,
    args: &[&str],
    body: impl FnOnce(&Env) -> Result<Value>,
) -> Result<(Value, Value)> {
    let stats_arg = stats.to_string_lossy().into_owned();
    let mut all = vec!["--mode", "block", "--stats", &stats_arg];
    all.extend_from_slice(args);
    env.start_sensor(&all)?;
    let measured = body(env);
    let mut sensor = env.sensor.take().context("sensor vanished")?;
    let status = sensor.stop(Duration::from_secs(10))?;
    let measured = measured?;
    if !status.success() {
        bail!("sensor exited with {status}: {}", sensor.stderr().text());
    }
    let report: Value = serde_json::from_slice(
        &fs::read(stats).with_context(|| format!("sensor wrote no {}", stats.display()))?,
    )?;
    Ok((measured, report))
}

/// How much a kernel counter grew between two `nprot stats`.
fn kernel_delta(before: &Value, after: &Value, name: &str) -> f64 {
    let at = |s: &Value| s["kernel"][name].as_f64().unwrap_or(0.0);
    at(after) - at(before)
}

/// The share of flows the kernel decided between two `nprot stats`: pre-allowed of
/// every flow whose first payload the pre-filter read.
fn kernel_share(before: &Value, after: &Value) -> f64 {
    let delta = |name: &str| kernel_delta(before, after, name);
    let allowed = delta("prefilter_allowed");
    allowed / (allowed + delta("prefilter_candidates") + delta("prefilter_undecided"))
}

/// `K` iptables rules in the client namespace that reset a connection whose packets
/// contain a name (`-m string --algo bm`), installed with `iptables-restore`: what an
/// admin writes without a proxy. Removed on drop.
struct StringRules<'a>(&'a Env);

impl<'a> StringRules<'a> {
    fn install(env: &'a Env, k: usize) -> Result<StringRules<'a>> {
        let mut rules = String::from("*filter\n:OUTPUT ACCEPT [0:0]\n");
        for i in 0..k {
            // Writing to a String cannot fail.
            let _ = writeln!(
                rules,
                "-A OUTPUT -p tcp -m string --algo bm --string \"d{}.bench-blocked.example\" -j REJECT --reject-with tcp-reset",
                i * 10
            );
        }
        rules.push_str("COMMIT\n");
        let mut child = env
            .topo
            .client_cmd("iptables-restore")
            .stdin(Stdio::piped())
            .spawn()
            .context("cannot run iptables-restore (cargo xtask setup installs iptables)")?;
        child
            .stdin
            .take()
            .context("iptables-restore stdin")?
            .write_all(rules.as_bytes())?;
        if !child.wait()?.success() {
            bail!("iptables-restore refused {k} string rules");
        }
        Ok(StringRules(env))
    }
}

impl Drop for StringRules<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .topo
            .client_cmd("iptables")
            .args(["-F", "OUTPUT"])
            .status();
    }
}

/// Indicators that never match the benchmark's own traffic: 60 % domains, 20 % IPv4
/// addresses and blocks, 10 % IPv6, 10 % URLs, all outside the test prefixes; and
/// [`BLOCKED_NAME`], which only the mixed floods ask for.
fn write_indicators(path: &Path, n: usize) -> Result<()> {
    let mut f = std::io::BufWriter::new(fs::File::create(path)?);
    f.write_all(b"{\"indicators\":[\n")?;
    write!(
        f,
        "{{\"id\":\"blocked\",\"type\":\"DomainName\",\"value\":\"{BLOCKED_NAME}\",\"action\":\"Block\"}}"
    )?;
    for i in 0..n {
        f.write_all(b",\n")?;
        let (kind, value) = match i % 10 {
            0..=5 => ("DomainName", format!("d{i}.bench-blocked.example")),
            6 => (
                "IpAddress",
                format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            ),
            7 => (
                "IpAddress",
                format!("172.{}.{}.0/24", 16 + (i >> 16) % 16, (i >> 8) & 255),
            ),
            8 => ("IpAddress", format!("2001:db8:ffff:{:x}::/64", i & 0xffff)),
            _ => ("Url", format!("http://u{i}.bench-blocked.example/p/{i}")),
        };
        write!(
            f,
            "{{\"id\":\"b{i}\",\"type\":\"{kind}\",\"value\":\"{value}\",\"action\":\"Block\"}}"
        )?;
    }
    f.write_all(b"\n]}\n")?;
    f.flush()?;
    Ok(())
}

struct Scale {
    load_ms: f64,
    match_ns: f64,
}

/// Load time and match cost of the indicator set, measured in this process.
fn indicator_scale(path: &Path) -> Result<Scale> {
    let started = Instant::now();
    let loaded = load_file(path)?;
    let policy = Policy::new(loaded.indicators, &[]);
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let hosts: Vec<String> = (0..100_000)
        .map(|i| match i % 2 {
            0 => format!("www.d{}.bench-blocked.example", i * 10),
            _ => format!("miss{i}.example"),
        })
        .collect();
    let now = SystemTime::now();
    let started = Instant::now();
    let mut matched = 0usize;
    for (i, host) in hosts.iter().enumerate() {
        let subject = Subject {
            ip: format!("198.18.{}.{}", (i >> 8) & 255, i & 255).parse()?,
            host: Some(host),
            http_path: Some("/index.html"),
        };
        matched += usize::from(policy.decide(&subject, now).winner.is_some());
    }
    let match_ns = started.elapsed().as_nanos() as f64 / hosts.len() as f64;
    if matched == 0 {
        bail!("no benchmark lookup matched: the indicator set is not what the bench expects");
    }
    Ok(Scale { load_ms, match_ns })
}

/// Microseconds the daemon takes to read a Chromium-like ClientHello out of its two QUIC
/// Initial datagrams (keys, header protection, AEAD, CRYPTO reassembly, TLS parse):
/// the median of 21 batches of 200, measured in this process.
fn quic_initial_us() -> f64 {
    let hello = chromium_client_hello("bench.quic.example");
    let datagrams = chromium_like_datagrams(QuicVersion::V1, &[0x42; 8], &hello);
    let mut batches: Vec<f64> = (0..21)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..200 {
                let mut reader = InitialReader::new();
                let mut outcome = QuicOutcome::NeedMore;
                for d in &datagrams {
                    outcome = reader.push(d);
                }
                assert!(matches!(outcome, QuicOutcome::ClientHello { .. }));
            }
            started.elapsed().as_secs_f64() * 1e6 / 200.0
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[batches.len() / 2]
}

/// New HTTP/3 connections per second (aioquic: handshake, one GET, close, in sequence).
fn quic_conn_per_s(env: &Env, count: u32) -> Result<f64> {
    let run = quic_bench(
        &env.topo.client_ns,
        env.topo.server_ip(false),
        QUIC_HOST,
        count,
        false,
        &ClientOpts::default(),
    )?;
    if run.ok == 0 || run.elapsed.is_zero() {
        bail!("no HTTP/3 connection succeeded: {run:?}");
    }
    Ok(run.ok as f64 / run.elapsed.as_secs_f64())
}

/// Room for a connection flood: reuse of TIME_WAIT ports, a wide port range.
fn tune_client_namespace(env: &Env) -> Result<()> {
    for (key, value) in [
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.ip_local_port_range", "10000 65000"),
    ] {
        let status = env
            .topo
            .client_cmd("sysctl")
            .args(["-qw", &format!("{key}={value}")])
            .status()?;
        if !status.success() {
            bail!("sysctl {key} failed in the client namespace");
        }
    }
    Ok(())
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_iperf_server(env: &Env) -> Result<Reaped> {
    let server = env.server_ip(false);
    let child = env
        .topo
        .server_cmd("iperf3")
        .args(["-s", "-B", &server.to_string(), "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start iperf3 (cargo xtask setup installs it)")?;
    let reaped = Reaped(child);
    env.topo
        .wait_tcp_ready(&[SocketAddr::new(server, 5201)], Duration::from_secs(5))?;
    Ok(reaped)
}

/// Bulk TCP throughput client → server, in Gbit/s.
fn iperf(env: &Env, duration: Duration) -> Result<f64> {
    let out = env
        .topo
        .client_cmd("iperf3")
        .args(["-J", "-c", &env.server_ip(false).to_string(), "-p", "5201"])
        .args(["-t", &duration.as_secs().max(1).to_string()])
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .with_context(|| format!("iperf3 gave no throughput: {}", v["error"]))
}

#[derive(Clone, Copy)]
enum Flood {
    /// Plain HTTP request, read the response, close.
    Http,
    /// TLS ClientHello, read the server's first bytes, close.
    Tls,
}

/// What a flood did.
struct FloodRun {
    /// Allowed connections per second.
    rate: f64,
    /// Connections made, allowed and blocked.
    made: u64,
    /// Connections that asked for [`BLOCKED_NAME`].
    blocked: u64,
    /// Of which got response bytes (must be none).
    blocked_answered: u64,
    /// How long the slowest blocked connection took to end, in ms.
    blocked_max_ms: f64,
}

/// New connections per second from two client threads in the client namespace; with
/// `blocked_every`, one connection in that many asks for [`BLOCKED_NAME`] instead and
/// must be reset before any answer.
fn flood(
    env: &Env,
    kind: Flood,
    duration: Duration,
    blocked_every: Option<u64>,
) -> Result<FloodRun> {
    let server = env.server_ip(false);
    let request = |name: &str| match kind {
        Flood::Http => {
            format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").into_bytes()
        }
        Flood::Tls => client_hello(&HelloSpec::new(name)).bytes,
    };
    let addr = SocketAddr::new(server, if matches!(kind, Flood::Http) { 80 } else { 443 });
    let (good, bad) = (request("good.example"), request(BLOCKED_NAME));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let blocked = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (ns, good, bad) = (env.topo.client_ns.clone(), good.clone(), bad.clone());
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            let (blocked, answered) = (blocked.clone(), answered.clone());
            let slowest_us = slowest_us.clone();
            thread::spawn(move || {
                in_netns(&ns, || {
                    let mut buf = [0u8; 16 * 1024];
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        if blocked_every.is_some_and(|every| n.is_multiple_of(every)) {
                            blocked.fetch_add(1, Ordering::Relaxed);
                            let t = Instant::now();
                            if one_connection(addr, &bad, &mut buf).is_ok() {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            let us = t.elapsed().as_micros() as u64;
                            slowest_us.fetch_max(us, Ordering::Relaxed);
                            continue;
                        }
                        match one_connection(addr, &good, &mut buf) {
                            Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
        })
        .collect();
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("flood worker panicked"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    let done = done.load(Ordering::Relaxed);
    if failed > done / 100 {
        bail!("{failed} of {} connections failed", done + failed);
    }
    let blocked = blocked.load(Ordering::Relaxed);
    Ok(FloodRun {
        rate: done as f64 / elapsed,
        made: done + failed + blocked,
        blocked,
        blocked_answered: answered.load(Ordering::Relaxed),
        blocked_max_ms: slowest_us.load(Ordering::Relaxed) as f64 / 1e3,
    })
}

/// HTTP requests per second over kept-alive connections (two client threads, one
/// connection each, reopened only if it fails): every request is judged by the sensor.
fn keep_alive(env: &Env, duration: Duration) -> Result<f64> {
    let addr = SocketAddr::new(env.server_ip(false), 80);
    let request = b"GET / HTTP/1.1\r\nHost: good.example\r\n\r\n";
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let ns = env.topo.client_ns.clone();
            let (done, stop) = (done.clone(), stop.clone());
            thread::spawn(move || {
                in_netns(&ns, || {
                    let mut buf = vec![0u8; 16 * 1024];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                        else {
                            continue;
                        };
                        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                        let _ = s.set_nodelay(true);
                        while !stop.load(Ordering::Relaxed)
                            && s.write_all(request).is_ok()
                            && read_response(&mut s, &mut buf).is_ok()
                        {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
        })
        .collect();
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("keep-alive worker panicked"))??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Reads one HTTP response whose body has a Content-Length.
fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
        let got = &buf[..have];
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if have >= end + 4 + len {
                return Ok(());
            }
        }
        if have == buf.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

fn one_connection(addr: SocketAddr, request: &[u8], buf: &mut [u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_nodelay(true)?;
    s.write_all(request)?;
    // The first bytes of the answer are what the sensor may hold back; wait for them.
    let n = s.read(buf)?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Run time of the sensor's eBPF programs over a measurement (`kernel.bpf_stats_enabled`
/// while it lasts).
struct ProgStats {
    before: (u64, u64),
}

/// What [`ProgStats`] measured: nanoseconds in the programs, and program runs.
struct ProgRuns {
    run_ns: u64,
    runs: u64,
}

impl ProgStats {
    fn start() -> Result<ProgStats> {
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
        Ok(ProgStats {
            before: Self::read()?,
        })
    }

    fn finish(self) -> Result<ProgRuns> {
        let after = Self::read();
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
        let after = after?;
        Ok(ProgRuns {
            run_ns: after.0.saturating_sub(self.before.0),
            runs: after.1.saturating_sub(self.before.1),
        })
    }

    /// Summed `run_time_ns` and `run_cnt` of every loaded `nprot_*` program.
    fn read() -> Result<(u64, u64)> {
        let out = std::process::Command::new("bpftool")
            .args(["prog", "show", "--json"])
            .output()
            .context("running bpftool")?;
        let progs: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
        Ok(progs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("nprot_")))
            .fold((0, 0), |(ns, n), p| {
                (
                    ns + p["run_time_ns"].as_u64().unwrap_or(0),
                    n + p["run_cnt"].as_u64().unwrap_or(0),
                )
            }))
    }
}

/// The running sensor's process id.
fn sensor_pid(env: &Env) -> Result<u32> {
    env.sensor
        .as_ref()
        .and_then(nprot_tests::Sensor::pid)
        .context("sensor not running")
}

/// CPU time (user + system) the running sensor has used, in seconds.
fn sensor_cpu_s(env: &Env) -> Result<f64> {
    let pid = sensor_pid(env)?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis; utime and stime are the 12th and
    // 13th of them, in clock ticks.
    let rest = stat.rsplit_once(')').context("odd /proc/PID/stat")?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let mut tick = || -> Result<f64> {
        fields
            .next()
            .and_then(|t| t.parse().ok())
            .context("no utime/stime in /proc/PID/stat")
    };
    let ticks = tick()? + tick()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// Resident and peak memory of the running sensor, in MiB.
fn sensor_rss(env: &Env) -> Result<Value> {
    let pid = sensor_pid(env)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<f64> {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Ok(json!({ "rss": field("VmRSS:"), "peak": field("VmHWM:") }))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn print_table(r: &Value) {
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>8} {:>8}",
        "figure", "baseline", "guarded", "ratio", "target"
    );
    for (name, key, unit) in [
        ("bulk throughput", "throughput_gbit", "Gbit/s"),
        (
            "new connections, HTTP request + close",
            "http_conn_per_s",
            "/s",
        ),
        (
            "new connections, TLS ClientHello + close",
            "tls_conn_per_s",
            "/s",
        ),
        (
            "kept-alive HTTP requests (each judged)",
            "keepalive_req_per_s",
            "/s",
        ),
        (
            "new QUIC connections, HTTP/3 GET (aioquic)",
            "quic_conn_per_s",
            "/s",
        ),
        (
            "HTTP, 1 % blocked: allowed connections",
            "mixed_http_conn_per_s",
            "/s",
        ),
        (
            "TLS, 1 % blocked: allowed connections",
            "mixed_tls_conn_per_s",
            "/s",
        ),
        (
            "iptables -m string (K rules), HTTP",
            "/iptables_string/http",
            "/s",
        ),
        (
            "iptables -m string (K rules), TLS",
            "/iptables_string/tls",
            "/s",
        ),
        (
            "daemon decides all (ring_poll wait), HTTP",
            "/daemon_decided/0/http",
            "/s",
        ),
        (
            "daemon decides all (ring_poll wait), TLS",
            "/daemon_decided/0/tls",
            "/s",
        ),
        (
            "daemon decides all (ring_poll busy), HTTP",
            "/daemon_decided/1/http",
            "/s",
        ),
        (
            "daemon decides all (ring_poll busy), TLS",
            "/daemon_decided/1/tls",
            "/s",
        ),
    ] {
        let f = if key.starts_with('/') {
            r.pointer(key).unwrap_or(&Value::Null)
        } else {
            &r[key]
        };
        println!(
            "{:<44} {:>12.2} {:>12.2} {:>8.3} {:>8}  {unit}",
            name,
            f["baseline"].as_f64().unwrap_or(f64::NAN),
            f["guarded"].as_f64().unwrap_or(f64::NAN),
            f["ratio"].as_f64().unwrap_or(f64::NAN),
            format!("≥{}", f["target"]),
        );
    }
    println!(
        "(median of {} alternating rounds; iptables rows: K = {}, no sensor, no target)",
        r["rounds"], r["iptables_string"]["rules"]
    );
    let k = &r["kernel_share"];
    let p = &r["prefilter"];
    println!(
        "kernel pre-filter: {:.2} % of no-match flows decided in the kernel (target ≥ 99 %); summary {} keys, {:.1} MiB in the kernel (target ≤ 16), rebuilt in {} ms (target ≤ 1000)",
        k["median"].as_f64().unwrap_or(f64::NAN) * 100.0,
        p["keys"],
        p["summary_bytes"].as_f64().unwrap_or(f64::NAN) / 1_048_576.0,
        p["rebuild_ms"],
    );
    let run = &r["runs"][r["runs"]
        .as_array()
        .map_or(0, |a| a.len().saturating_sub(1))]["run"];
    let num = |k: &str| run[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "cost of a pre-allowed HTTP flow (last run): daemon CPU {:.1} µs, eBPF programs {:.1} µs ({:.0} ns per run)",
        num("daemon_cpu_us_per_http_flow"),
        num("kernel_us_per_http_flow"),
        num("kernel_ns_per_packet"),
    );
    println!(
        "blocked flows of the mixed floods answered with response bytes: {} (target 0); slowest reset {:.1} ms; held answers requeued {} / dropped {} (mixed floods), requeued {} (kept-alive)",
        r["blocked_answered"],
        num("blocked_max_ms"),
        num("mixed_requeued"),
        num("mixed_held_dropped"),
        num("kept_requeued"),
    );
    for d in r["daemon_decided"].as_array().into_iter().flatten() {
        println!(
            "daemon-decided verdicts, ring_poll {}: verdict p50 {:.1} µs, p99 {:.1} µs (target ≤ 100); wake-up p50 {:.1} µs, p99 {:.1} µs",
            d["ring_poll"].as_str().unwrap_or("?"),
            d["verdict_p50_us"].as_f64().unwrap_or(f64::NAN),
            d["verdict_p99_us"].as_f64().unwrap_or(f64::NAN),
            d["wake_p50_us"].as_f64().unwrap_or(f64::NAN),
            d["wake_p99_us"].as_f64().unwrap_or(f64::NAN),
        );
    }
    let l = &r["verdict_latency_us"];
    println!(
        "verdict latency (capture → verdict written): p50 {} µs, p99 {} µs (target ≤ 100), p99.9 {} µs, n={}",
        l["p50_us"], l["p99_us"], l["p999_us"], l["count"]
    );
    let fp = &r["fleet_propagation"];
    println!(
        "fleet: a change to the policy bucket reached {} watchers ({} changes): p50 {:.1} ms, p99 {:.1} ms (target ≤ 1000), max {:.1} ms; nats-server memory {:.1} MiB",
        fp["watchers"],
        fp["changes"],
        fp["p50_ms"].as_f64().unwrap_or(f64::NAN),
        fp["p99_ms"].as_f64().unwrap_or(f64::NAN),
        fp["max_ms"].as_f64().unwrap_or(f64::NAN),
        fp["server_mib"].as_f64().unwrap_or(f64::NAN),
    );
    let i = &r["indicators"];
    println!(
        "indicators: {} loaded by the sensor in {} ms (target ≤ 2000), sensor RSS {} MiB (target ≤ 200), match {:.0} ns/lookup",
        i["count"],
        i["sensor_load_ms"],
        i["sensor_rss_mib"]["peak"],
        i["match_ns"].as_f64().unwrap_or(f64::NAN)
    );
    let q = &r["quic"];
    println!(
        "QUIC: ClientHello from two Initials decrypted and parsed in {:.2} µs (target ≤ 10); last run: {} flows, {} inspected, {} invalid, {} gave up",
        r["quic_initial_us"]["per_client_hello"]
            .as_f64()
            .unwrap_or(f64::NAN),
        q["flows"],
        q["inspected"],
        q["invalid"],
        q["gave_up"]
    );
    let f = &r["flood"];
    println!(
        "during the guarded runs: {} flows, ring-buffer drops {}, held packets {}, fail-open {}, gave up {}",
        f["flows"], f["ringbuf_drops"], f["held_packets"], f["fail_open"], f["gave_up"]
    );
    println!(
        "flood accounting (last run): {} connections made; tracked {} + not tracked {}; connection records lost {}, events dropped {}",
        f["connections"], f["tracked"], f["not_tracked"], f["records_lost"], f["events_dropped"]
    );
}

/// The quick mode asserts only that every figure was produced.
fn check_complete(r: &Value) -> Result<()> {
    let figures = [
        "/throughput_gbit/ratio",
        "/http_conn_per_s/ratio",
        "/tls_conn_per_s/ratio",
        "/keepalive_req_per_s/ratio",
        "/quic_conn_per_s/ratio",
        "/mixed_http_conn_per_s/ratio",
        "/mixed_tls_conn_per_s/ratio",
        "/iptables_string/http/ratio",
        "/iptables_string/tls/ratio",
        "/kernel_share/median",
        "/prefilter/summary_bytes",
        "/prefilter/rebuild_ms",
        "/daemon_decided/0/verdict_p99_us",
        "/daemon_decided/1/verdict_p99_us",
        "/quic_initial_us/per_client_hello",
        "/verdict_latency_us/p99_us",
        "/indicators/sensor_load_ms",
        "/indicators/sensor_rss_mib/peak",
        "/indicators/match_ns",
        "/flood/ringbuf_drops",
        "/flood/held_packets",
        "/flood/fail_open",
        "/fleet_propagation/p99_ms",
        "/fleet_propagation/server_mib",
    ];
    let missing: Vec<&str> = figures
        .iter()
        .copied()
        .filter(|p| {
            r.pointer(p)
                .and_then(Value::as_f64)
                .is_none_or(|v| !v.is_finite())
        })
        .collect();
    if !missing.is_empty() {
        bail!("benchmark figures missing: {}", missing.join(", "));
    }
    // Nothing is lost silently: every flood connection is tracked or counted.
    let made = r.pointer("/flood/connections").and_then(Value::as_u64);
    let accounted = ["/flood/tracked", "/flood/not_tracked"]
        .iter()
        .map(|p| r.pointer(p).and_then(Value::as_u64))
        .sum::<Option<u64>>();
    match (made, accounted) {
        (Some(made), Some(accounted)) if accounted >= made => {}
        _ => bail!(
            "flood connections not all accounted for: made {made:?}, tracked + not tracked {accounted:?}"
        ),
    }
    // A blocked flow must never deliver response bytes, at any speed.
    if r["blocked_answered"].as_u64() != Some(0) {
        bail!(
            "blocked flows answered with response bytes: {}",
            r["blocked_answered"]
        );
    }
    if r.pointer("/verdict_latency_us/count")
        .and_then(Value::as_u64)
        == Some(0)
    {
        bail!("the sensor recorded no verdicts during the flood");
    }
    Ok(())
}
