//! `nprot-bench`: measures the guarded path against an unguarded baseline in the same
//! run, on the end-to-end topology (client and server namespaces joined by veth, nginx
//! and iperf3 in the server namespace, the sensor on the client veth).
//!
//! Figures: bulk throughput, new connections per second (HTTP request + close and TLS
//! ClientHello + close) with 10^6 indicators in block mode, verdict latency percentiles
//! from the sensor's own histogram, indicator-set scale (load time, daemon RSS, match
//! cost), ring-buffer drops, held packets and fail-open releases during the flood, new
//! QUIC connections per second (aioquic HTTP/3 GET) and the daemon's decrypt-and-parse
//! time of a Chromium-like QUIC ClientHello (two Initial datagrams).
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
}

const FULL: Plan = Plan {
    bulk: Duration::from_secs(4),
    flood: Duration::from_secs(4),
    repeats: 2,
    indicators: 1_000_000,
    quic_connections: 100,
};

/// CI's quick mode: every figure, small numbers.
const QUICK: Plan = Plan {
    bulk: Duration::from_secs(1),
    flood: Duration::from_secs(1),
    repeats: 1,
    indicators: 20_000,
    quic_connections: 15,
};

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

    // Alternate baseline and guarded runs so that drift hits both alike.
    let mut bulk = (Vec::new(), Vec::new());
    let mut http = (Vec::new(), Vec::new());
    let mut tls = (Vec::new(), Vec::new());
    let mut kept = (Vec::new(), Vec::new());
    let mut quic = (Vec::new(), Vec::new());
    let mut sensor_runs = Vec::new();
    for round in 0..plan.repeats {
        bulk.0.push(iperf(&env, plan.bulk)?);
        http.0.push(flood(&env, Flood::Http, plan.flood)?.0);
        tls.0.push(flood(&env, Flood::Tls, plan.flood)?.0);
        kept.0.push(keep_alive(&env, plan.flood)?);
        quic.0.push(quic_conn_per_s(&env, plan.quic_connections)?);

        let stats = dir.join(format!("stats-{round}.json"));
        let ind = indicators.to_string_lossy().into_owned();
        let stats_arg = stats.to_string_lossy().into_owned();
        env.start_sensor(&[
            "--mode",
            "block",
            "--indicators",
            &ind,
            "--stats",
            &stats_arg,
        ])?;
        let rss = sensor_rss(&env)?;
        bulk.1.push(iperf(&env, plan.bulk)?);
        let (http_rate, http_made) = flood(&env, Flood::Http, plan.flood)?;
        let (tls_rate, tls_made) = flood(&env, Flood::Tls, plan.flood)?;
        http.1.push(http_rate);
        tls.1.push(tls_rate);
        kept.1.push(keep_alive(&env, plan.flood)?);
        quic.1.push(quic_conn_per_s(&env, plan.quic_connections)?);
        let mut sensor = env.sensor.take().context("sensor vanished")?;
        let status = sensor.stop(Duration::from_secs(10))?;
        if !status.success() {
            bail!("sensor exited with {status}: {}", sensor.stderr().text());
        }
        let report: Value = serde_json::from_slice(
            &fs::read(&stats).with_context(|| format!("sensor wrote no {}", stats.display()))?,
        )?;
        sensor_runs.push(json!({
            "rss_mib": rss,
            "report": report,
            "flood_connections": http_made + tls_made,
        }));
    }

    let last = sensor_runs.last().context("no sensor run")?;
    let report = &last["report"];
    let flows = report["kernel"]["flows_new"].as_f64().unwrap_or(0.0);
    Ok(json!({
        "quick": plan.indicators != FULL.indicators,
        "throughput_gbit": {
            "baseline": median(&bulk.0), "guarded": median(&bulk.1),
            "ratio": median(&bulk.1) / median(&bulk.0), "target": 0.97,
        },
        "http_conn_per_s": {
            "baseline": median(&http.0), "guarded": median(&http.1),
            "ratio": median(&http.1) / median(&http.0), "target": 0.90,
        },
        "tls_conn_per_s": {
            "baseline": median(&tls.0), "guarded": median(&tls.1),
            "ratio": median(&tls.1) / median(&tls.0), "target": 0.90,
        },
        "keepalive_req_per_s": {
            "baseline": median(&kept.0), "guarded": median(&kept.1),
            "ratio": median(&kept.1) / median(&kept.0), "target": 0.95,
        },
        "quic_conn_per_s": {
            "baseline": median(&quic.0), "guarded": median(&quic.1),
            "ratio": median(&quic.1) / median(&quic.0), "target": 0.90,
        },
        "quic_initial_us": { "per_client_hello": quic_initial_us, "target": 10.0 },
        "quic": report["quic"].clone(),
        "verdict_latency_us": report["verdict_latency"].clone(),
        "indicators": {
            "count": report["indicators"].clone(),
            "sensor_load_ms": report["indicator_load_ms"].clone(),
            "sensor_rss_mib": last["rss_mib"].clone(),
            "in_process_load_ms": scale.load_ms,
            "match_ns": scale.match_ns,
        },
        "flood": {
            "flows": flows,
            // Every connection of the floods must be tracked or counted as not tracked
            // (iperf's few connections come on top).
            "connections": last["flood_connections"].clone(),
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

/// Indicators that never match the benchmark's own traffic: 60 % domains, 20 % IPv4
/// addresses and blocks, 10 % IPv6, 10 % URLs, all outside the test prefixes.
fn write_indicators(path: &Path, n: usize) -> Result<()> {
    let mut f = std::io::BufWriter::new(fs::File::create(path)?);
    f.write_all(b"{\"indicators\":[\n")?;
    for i in 0..n {
        if i > 0 {
            f.write_all(b",\n")?;
        }
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

/// New connections per second from two client threads in the client namespace, and
/// how many were made.
fn flood(env: &Env, kind: Flood, duration: Duration) -> Result<(f64, u64)> {
    let server = env.server_ip(false);
    let (addr, request) = match kind {
        Flood::Http => (
            SocketAddr::new(server, 80),
            b"GET / HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        Flood::Tls => (
            SocketAddr::new(server, 443),
            client_hello(&HelloSpec::new("good.example")).bytes,
        ),
    };
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (ns, request) = (env.topo.client_ns.clone(), request.clone());
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            thread::spawn(move || {
                in_netns(&ns, || {
                    let mut buf = [0u8; 16 * 1024];
                    while !stop.load(Ordering::Relaxed) {
                        match one_connection(addr, &request, &mut buf) {
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
    Ok((done as f64 / elapsed, done + failed))
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

/// Resident and peak memory of the running sensor, in MiB.
fn sensor_rss(env: &Env) -> Result<Value> {
    let pid = env
        .sensor
        .as_ref()
        .and_then(nprot_tests::Sensor::pid)
        .context("sensor not running")?;
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
    ] {
        let f = &r[key];
        println!(
            "{:<44} {:>12.2} {:>12.2} {:>8.3} {:>8}  {unit}",
            name,
            f["baseline"].as_f64().unwrap_or(f64::NAN),
            f["guarded"].as_f64().unwrap_or(f64::NAN),
            f["ratio"].as_f64().unwrap_or(f64::NAN),
            format!("≥{}", f["target"]),
        );
    }
    let l = &r["verdict_latency_us"];
    println!(
        "verdict latency (capture → verdict written): p50 {} µs, p99 {} µs (target ≤ 100), p99.9 {} µs, n={}",
        l["p50_us"], l["p99_us"], l["p999_us"], l["count"]
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
        "/quic_initial_us/per_client_hello",
        "/verdict_latency_us/p99_us",
        "/indicators/sensor_load_ms",
        "/indicators/sensor_rss_mib/peak",
        "/indicators/match_ns",
        "/flood/ringbuf_drops",
        "/flood/held_packets",
        "/flood/fail_open",
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
    if r.pointer("/verdict_latency_us/count")
        .and_then(Value::as_u64)
        == Some(0)
    {
        bail!("the sensor recorded no verdicts during the flood");
    }
    Ok(())
}
