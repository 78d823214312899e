//! Clients run in the client namespace (the `_in` variants in any namespace): curl,
//! `openssl s_client`, and python3 raw TCP.

use std::{net::IpAddr, process::Output, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    netns::{Topology, netns_cmd},
    process::run_with_timeout,
};

/// Outer bound on any client command (curl itself has `--max-time 5`).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a curl run returned.
#[derive(Debug, Clone)]
pub struct CurlOutcome {
    /// curl's local (ephemeral) port, from `-w %{local_port}`.
    pub local_port: u16,
    /// The HTTP status code (0 if there was no response).
    pub http_code: u16,
    /// The response body.
    pub body: String,
    /// curl's stderr.
    pub stderr: String,
}

/// The python3 to use: Debian's if present (no pyenv shims), else the one on PATH.
pub fn python3() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// An address as a URL host / `--resolve` target: IPv6 in brackets.
pub fn url_host(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// Runs `curl -sS -k --max-time 5 --resolve NAME:PORT:ADDR EXTRA… URL` in the client
/// namespace, where `url` is `SCHEME://NAME[:PORT]/PATH`. Fails unless curl exits 0.
pub fn curl(
    topo: &Topology,
    name: &str,
    port: u16,
    addr: IpAddr,
    url: &str,
    extra: &[&str],
) -> Result<CurlOutcome> {
    let run = curl_any(topo, name, port, addr, url, extra)?;
    if run.exit_code != Some(0) {
        bail!(
            "curl {url} failed (exit {:?}): {}{}",
            run.exit_code,
            run.stderr,
            run.body
        );
    }
    Ok(CurlOutcome {
        local_port: run.local_port,
        http_code: run.http_code,
        body: run.body,
        stderr: run.stderr,
    })
}

/// What a curl run returned, whatever its exit status ([`curl_any`]).
#[derive(Debug, Clone)]
pub struct CurlRun {
    /// curl's exit code (`None` if it was killed by a signal): 0 on success, 7 for a
    /// refused connect, 35 for a TLS handshake failure (a reset included), 56 for a
    /// reset while receiving.
    pub exit_code: Option<i32>,
    /// curl's local (ephemeral) port, from `-w %{local_port}` (0 if it never connected).
    pub local_port: u16,
    /// The HTTP status code (0 if there was no response).
    pub http_code: u16,
    /// Body bytes curl received, from `-w %{size_download}`.
    pub size_download: u64,
    /// Bytes curl wrote to stdout before the `-w` trailer (the body as delivered).
    pub body_len: usize,
    /// The response body (lossy UTF-8).
    pub body: String,
    /// curl's stderr.
    pub stderr: String,
}

impl CurlRun {
    /// Whether curl failed because the connection was reset (exit 35 or 56 and
    /// "Connection reset by peer" on stderr).
    pub fn was_reset(&self) -> bool {
        matches!(self.exit_code, Some(35 | 56)) && self.stderr.contains("reset by peer")
    }
}

/// Runs curl like [`curl`] but returns whatever happened, failed transfers included (an
/// error only if curl could not run or printed no `-w` trailer).
pub fn curl_any(
    topo: &Topology,
    name: &str,
    port: u16,
    addr: IpAddr,
    url: &str,
    extra: &[&str],
) -> Result<CurlRun> {
    curl_any_in(&topo.client_ns, name, port, addr, url, extra)
}

/// [`curl_any`] run in the namespace `ns`.
pub fn curl_any_in(
    ns: &str,
    name: &str,
    port: u16,
    addr: IpAddr,
    url: &str,
    extra: &[&str],
) -> Result<CurlRun> {
    let mut cmd = netns_cmd(ns, "curl");
    cmd.args(["-sS", "-k", "--max-time", "5", "--resolve"])
        .arg(format!("{name}:{port}:{}", url_host(addr)))
        .args(["-w", "\n%{local_port} %{http_code} %{size_download}"])
        .args(extra)
        .arg(url);
    let out = run_with_timeout(&mut cmd, CLIENT_TIMEOUT)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let split = out.stdout.iter().rposition(|&b| b == b'\n');
    let (body, trailer) = match split {
        Some(at) => (&out.stdout[..at], &out.stdout[at + 1..]),
        None => (&out.stdout[..0], &out.stdout[..]),
    };
    let trailer = String::from_utf8_lossy(trailer);
    let mut parts = trailer.split_whitespace();
    let local_port = parts.next().and_then(|p| p.parse().ok()).with_context(|| {
        format!(
            "no local port in curl output ({}): {stderr}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let http_code = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let size_download = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Ok(CurlRun {
        exit_code: out.status.code(),
        local_port,
        http_code,
        size_download,
        body_len: body.len(),
        body: String::from_utf8_lossy(body).into_owned(),
        stderr,
    })
}

/// Runs `openssl s_client -connect ADDR:PORT -servername SNI` with stdin closed in the
/// client namespace (it completes the handshake, sees end of input and quits).
pub fn openssl_s_client(topo: &Topology, addr: IpAddr, port: u16, sni: &str) -> Result<Output> {
    let mut cmd = topo.client_cmd("openssl");
    cmd.args(["s_client", "-connect"])
        .arg(format!("{}:{port}", url_host(addr)))
        .args(["-servername", sni]);
    run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
}

/// Python: connect with TCP_NODELAY, print the local port, send each hex chunk with its
/// own send() call with a pause between them, then print the first bytes of the answer.
const SEND_CHUNKS_PY: &str = r#"
import socket, sys, time
host, port, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
chunks = [bytes.fromhex(h) for h in sys.argv[4:]]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(5)
s.connect((host, port))
print(s.getsockname()[1], flush=True)
for i, c in enumerate(chunks):
    if i:
        time.sleep(pause)
    n = s.send(c)
    if n != len(c):
        sys.exit("short send: %d of %d" % (n, len(c)))
try:
    print(s.recv(16).hex(), flush=True)
except OSError as e:
    print("recv: %s" % e, flush=True)
s.close()
"#;

/// Python: bind an ephemeral port, print it, connect; exits 0 only if refused.
const CONNECT_REFUSED_PY: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", 0))
print(s.getsockname()[1], flush=True)
s.settimeout(5)
try:
    s.connect((host, port))
except ConnectionRefusedError:
    print("refused", flush=True)
    sys.exit(0)
sys.exit("connect did not fail with ECONNREFUSED")
"#;

/// What [`send_chunks`] saw.
#[derive(Debug, Clone)]
pub struct RawOutcome {
    /// The client's local port.
    pub local_port: u16,
    /// Hex of the first bytes the server answered (empty if it closed), or a recv error.
    pub reply: String,
}

/// Connects from the client namespace to `addr:port` and sends `chunks`, one `send()`
/// each (TCP_NODELAY), sleeping `pause` between them.
pub fn send_chunks(
    topo: &Topology,
    addr: IpAddr,
    port: u16,
    chunks: &[&[u8]],
    pause: Duration,
) -> Result<RawOutcome> {
    let mut cmd = topo.client_cmd(python3());
    cmd.args(["-c", SEND_CHUNKS_PY])
        .arg(addr.to_string())
        .arg(port.to_string())
        .arg(pause.as_secs_f64().to_string())
        .args(chunks.iter().map(|c| crate::tls::hex(c)));
    let out = run_with_timeout(&mut cmd, CLIENT_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "raw sender failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut lines = stdout.lines();
    let local_port = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no local port in {stdout:?}"))?;
    Ok(RawOutcome {
        local_port,
        reply: lines.next().unwrap_or("").trim().to_owned(),
    })
}

/// Connects from the client namespace to a closed `addr:port`; returns the local port.
/// Fails unless the connection is refused.
pub fn connect_refused(topo: &Topology, addr: IpAddr, port: u16) -> Result<u16> {
    let mut cmd = topo.client_cmd(python3());
    cmd.args(["-c", CONNECT_REFUSED_PY])
        .arg(addr.to_string())
        .arg(port.to_string());
    let out = run_with_timeout(&mut cmd, CLIENT_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "connect to {addr}:{port} was not refused ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no local port in {stdout:?}"))
}

/// Python: connect (TCP_NODELAY), send each hex chunk with its own sendall() call with a
/// pause between them, then read until end of stream, a reset, the per-read timeout or
/// `limit` bytes; print one JSON object describing what happened.
const EXCHANGE_PY: &str = r#"
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
pause, timeout, limit = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
chunks = [bytes.fromhex(h) for h in sys.argv[6:]]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(timeout)
s.connect((host, port))
res = {"local_port": s.getsockname()[1], "sent": 0, "received": 0, "first": "", "end": ""}
first = b""
phase = "send"
try:
    for i, c in enumerate(chunks):
        if i:
            time.sleep(pause)
        s.sendall(c)
        res["sent"] += len(c)
    phase = "recv"
    while True:
        d = s.recv(65536)
        if not d:
            res["end"] = "eof"
            break
        first += d[:16 - len(first)]
        res["received"] += len(d)
        if res["received"] >= limit:
            res["end"] = "limit"
            break
except ConnectionResetError:
    res["end"] = "reset"
except socket.timeout:
    res["end"] = "timeout"
except OSError as e:
    res["end"] = "error: %s" % e
res["phase"] = phase
res["first"] = first.hex()
s.close()
print(json.dumps(res), flush=True)
"#;

/// How a raw [`exchange_in`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeEnd {
    /// The peer closed the stream (recv returned no bytes).
    Eof,
    /// The connection was reset (`ConnectionResetError`).
    Reset,
    /// A read waited longer than the timeout.
    Timeout,
    /// The byte limit was reached (the connection was still open).
    Limit,
    /// Another socket error.
    Error(String),
}

/// What [`exchange_in`] saw.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The client's local port.
    pub local_port: u16,
    /// Bytes sent before the exchange ended.
    pub sent: u64,
    /// Bytes received from the server.
    pub received: u64,
    /// Hex of the first (up to 16) bytes received.
    pub first: String,
    /// How it ended.
    pub end: ExchangeEnd,
    /// Whether it ended while still sending (`true`) or while reading.
    pub during_send: bool,
}

/// Connects from the namespace `ns` to `addr:port`, sends `chunks` (one `sendall()`
/// each, TCP_NODELAY, `pause` apart), then reads until end of stream, a reset, a read
/// that waits longer than `read_timeout`, or `limit` bytes.
pub fn exchange_in(
    ns: &str,
    addr: IpAddr,
    port: u16,
    chunks: &[&[u8]],
    pause: Duration,
    read_timeout: Duration,
    limit: u64,
) -> Result<Exchange> {
    let mut cmd = netns_cmd(ns, python3());
    cmd.args(["-c", EXCHANGE_PY])
        .arg(addr.to_string())
        .arg(port.to_string())
        .arg(pause.as_secs_f64().to_string())
        .arg(read_timeout.as_secs_f64().to_string())
        .arg(limit.to_string())
        .args(chunks.iter().map(|c| crate::tls::hex(c)));
    let out = run_with_timeout(&mut cmd, CLIENT_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "raw exchange with {addr}:{port} failed ({}): {stdout}{stderr}",
            out.status
        );
    }
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("raw exchange printed no JSON: {stdout}{stderr}"))?;
    let end = match v["end"].as_str().unwrap_or("") {
        "eof" => ExchangeEnd::Eof,
        "reset" => ExchangeEnd::Reset,
        "timeout" => ExchangeEnd::Timeout,
        "limit" => ExchangeEnd::Limit,
        other => ExchangeEnd::Error(other.to_owned()),
    };
    Ok(Exchange {
        local_port: v["local_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| format!("no local port in {stdout}"))?,
        sent: v["sent"].as_u64().unwrap_or(0),
        received: v["received"].as_u64().unwrap_or(0),
        first: v["first"].as_str().unwrap_or("").to_owned(),
        end,
        during_send: v["phase"] == "send",
    })
}

/// `http://NAME[:PORT]PATH`, the port left out when it is 80.
pub fn http_url(name: &str, port: u16, path: &str) -> String {
    if port == 80 {
        format!("http://{name}{path}")
    } else {
        format!("http://{name}:{port}{path}")
    }
}
