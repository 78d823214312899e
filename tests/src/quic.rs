//! QUIC and HTTP/3: an aioquic HTTP/3 server in the server namespace ([`QuicServer`]),
//! an aioquic client ([`quic_get`], [`quic_bench`]), Debian's Chromium loading a page
//! headless ([`chromium_load`]), a silent UDP drop to make QUIC fail ([`drop_udp`]) and a
//! reader of recorded client Initials ([`initials`], with [`crate::frames::Tcpdump`]).
//!
//! The python scripts run with Debian's python3 and the aioquic that `cargo xtask setup`
//! installs into [`PYTHONPATH`]; they are passed with `-c`, so nothing is written for them.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::Value;

use crate::{
    clients::python3,
    netns::netns_cmd,
    nginx::make_cert_for,
    process::{run_ok, run_with_timeout, terminate, wait_timeout},
};

/// Where `cargo xtask setup` installs aioquic (`pip --target`, see xtask's `PIP_TARGET`).
pub const PYTHONPATH: &str = "/usr/local/lib/nprot-tests/python";
/// The HTTP/3 server (aioquic).
pub const SERVER_PY: &str = include_str!("quic_server.py");
/// The HTTP/3 client (aioquic).
pub const CLIENT_PY: &str = include_str!("quic_client.py");
/// The reader of client Initials in a pcap.
pub const PCAP_PY: &str = include_str!("quic_pcap.py");
/// Debian's Chromium.
pub const CHROMIUM_BIN: &str = "/usr/bin/chromium";
/// The UDP port of [`QuicServer`] unless told otherwise.
pub const QUIC_PORT: u16 = 443;
/// How long the server may take to bind.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code of `quic_client.py` when nothing answered in time.
const EXIT_NO_ANSWER: i32 = 2;

/// The marker the server's page carries for `name` (`<p id="proto">h3 NAME</p>`).
pub fn marker(name: &str) -> String {
    format!("<p id=\"proto\">h3 {name}</p>")
}

/// A QUIC version, as the scripts name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicVersion {
    /// QUIC version 1 (RFC 9000), `0x00000001`.
    V1,
    /// QUIC version 2 (RFC 9369), `0x6b3343cf`.
    V2,
}

impl QuicVersion {
    /// `v1` or `v2`.
    pub fn name(self) -> &'static str {
        match self {
            QuicVersion::V1 => "v1",
            QuicVersion::V2 => "v2",
        }
    }
}

/// A python3 command in the namespace `ns` with aioquic on its path, running `script`.
fn python_cmd(ns: &str, script: &str) -> Command {
    let mut cmd = netns_cmd(ns, python3());
    cmd.env("PYTHONPATH", PYTHONPATH)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .arg("-c")
        .arg(script);
    cmd
}

/// A certificate and its key, with the base64 SHA-256 of its SubjectPublicKeyInfo (what
/// Chromium's `--ignore-certificate-errors-spki-list` takes).
#[derive(Debug, Clone)]
pub struct QuicCert {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// `base64(sha256(SPKI DER))`.
    pub spki: String,
}

impl QuicCert {
    /// Uses `<dir>/<names[0]>.crt|.key` (e.g. one of nginx's, so that TCP and QUIC show
    /// the same key), making a self-signed one for all `names` if it does not exist.
    pub fn in_dir(dir: &Path, names: &[&str]) -> Result<QuicCert> {
        let stem = names.first().context("a certificate needs a name")?;
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        if !cert.exists() || !key.exists() {
            make_cert_for(dir, stem, names)?;
        }
        let spki = spki_sha256(&cert)?;
        Ok(QuicCert { cert, key, spki })
    }
}

/// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256
/// -binary | base64` of the certificate `cert`.
pub fn spki_sha256(cert: &Path) -> Result<String> {
    let script = "openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der \
                  | openssl dgst -sha256 -binary | base64";
    let out = run_ok(
        Command::new("sh").args(["-ec", script, "sh"]).arg(cert),
        Duration::from_secs(10),
    )?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if hash.len() != 44 {
        bail!("unexpected SPKI hash {hash:?} of {}", cert.display());
    }
    Ok(hash)
}

/// How [`QuicServer`] behaves.
#[derive(Debug, Clone, Default)]
pub struct ServerOpts {
    /// Answer each first Initial with a Retry (address validation).
    pub retry: bool,
    /// Accept only this version (others get Version Negotiation); `None`: v1 and v2.
    pub version: Option<QuicVersion>,
    /// UDP port; `None`: [`QUIC_PORT`].
    pub port: Option<u16>,
}

/// One request the server logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicRequest {
    /// `:authority`.
    pub authority: String,
    /// `:path`.
    pub path: String,
    /// `:method`.
    pub method: String,
    /// The connection's QUIC version (`v1` or `v2`).
    pub version: String,
    /// The `user-agent` header, empty if none.
    pub user_agent: String,
}

/// The aioquic HTTP/3 server in a namespace; killed when dropped.
#[derive(Debug)]
pub struct QuicServer {
    child: Option<std::process::Child>,
    log: PathBuf,
    stderr: PathBuf,
    /// The certificate it serves.
    pub cert: QuicCert,
    /// The UDP port it listens on.
    pub port: u16,
}

impl QuicServer {
    /// Starts the server in the namespace `ns` on UDP port 443 (or `opts.port`) of every
    /// address of `addrs`, serving the certificate of [`QuicCert::in_dir`]`(cert_dir,
    /// names)`, and waits (at most 10 s) until it prints `ready`. Its request log and
    /// stderr go to `cert_dir/quic-<port>.{jsonl,stderr}`.
    pub fn start(
        ns: &str,
        addrs: &[IpAddr],
        cert_dir: &Path,
        names: &[&str],
        opts: &ServerOpts,
    ) -> Result<QuicServer> {
        let cert = QuicCert::in_dir(cert_dir, names)?;
        let port = opts.port.unwrap_or(QUIC_PORT);
        let log = cert_dir.join(format!("quic-{port}.jsonl"));
        let stderr = cert_dir.join(format!("quic-{port}.stderr"));
        fs::write(&log, "").with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = python_cmd(ns, SERVER_PY);
        for addr in addrs {
            cmd.arg("--listen").arg(addr.to_string());
        }
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--cert")
            .arg(&cert.cert)
            .arg("--key")
            .arg(&cert.key)
            .arg("--log")
            .arg(&log)
            .arg("--quic-version")
            .arg(opts.version.map_or("both", QuicVersion::name));
        if opts.retry {
            cmd.arg("--retry");
        }
        let err_file = fs::File::create(&stderr)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err_file);
        let mut child = cmd.spawn().context("cannot start quic_server.py")?;
        let stdout = child.stdout.take();
        let mut server = QuicServer {
            child: Some(child),
            log,
            stderr,
            cert,
            port,
        };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            use std::io::{BufRead, BufReader};
            if let Some(pipe) = stdout {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.trim() == "ready" => Ok(server),
            other => {
                let _ = server.stop();
                bail!(
                    "quic_server.py not ready within {READY_TIMEOUT:?} ({other:?}); stderr:\n{}",
                    server.stderr_text()
                )
            }
        }
    }

    /// The requests logged so far, in order.
    pub fn requests(&self) -> Result<Vec<QuicRequest>> {
        let text = fs::read_to_string(&self.log)
            .with_context(|| format!("cannot read {}", self.log.display()))?;
        let field = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).with_context(|| format!("log line {l}"))?;
                Ok(QuicRequest {
                    authority: field(&v, "authority"),
                    path: field(&v, "path"),
                    method: field(&v, "method"),
                    version: field(&v, "version"),
                    user_agent: field(&v, "user_agent"),
                })
            })
            .collect()
    }

    /// What the server printed on stderr (tracebacks), for failure messages.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Stops the server (SIGTERM, SIGKILL after 2 s).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(2))?;
        }
        Ok(())
    }
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("nprot-tests cleanup: quic server: {e:#}");
        }
    }
}

/// How [`quic_get`] and [`quic_bench`] connect.
#[derive(Debug, Clone)]
pub struct ClientOpts {
    /// Verify the server against this CA (e.g. [`QuicCert::cert`]); `None`: no check.
    pub ca: Option<PathBuf>,
    /// Offer only this version; `None`: aioquic's default (v1).
    pub version: Option<QuicVersion>,
    /// The request path.
    pub path: String,
    /// UDP port.
    pub port: u16,
    /// How long one connection and request may take.
    pub timeout: Duration,
}

impl Default for ClientOpts {
    fn default() -> ClientOpts {
        ClientOpts {
            ca: None,
            version: None,
            path: "/".to_owned(),
            port: QUIC_PORT,
            timeout: Duration::from_secs(5),
        }
    }
}

/// An HTTP/3 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicResponse {
    /// `:status`.
    pub status: u16,
    /// Body length in bytes.
    pub body_len: usize,
    /// The body (lossy UTF-8).
    pub body: String,
    /// The connection's version, `v1` or `v2`.
    pub version: String,
}

/// What [`quic_get`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuicReply {
    /// A response.
    Response(QuicResponse),
    /// Nothing (or no complete response) within the timeout.
    NoAnswer(String),
    /// Another failure (TLS alert, connection closed, …).
    Failed(String),
}

impl QuicReply {
    /// The response, or an error describing what happened instead.
    pub fn response(self) -> Result<QuicResponse> {
        match self {
            QuicReply::Response(r) => Ok(r),
            other => bail!("no HTTP/3 response: {other:?}"),
        }
    }
}

fn client_cmd(ns: &str, addr: IpAddr, name: &str, opts: &ClientOpts) -> Command {
    let mut cmd = python_cmd(ns, CLIENT_PY);
    cmd.arg(addr.to_string())
        .arg(opts.port.to_string())
        .arg(name)
        .arg("--path")
        .arg(&opts.path)
        .arg("--timeout")
        .arg(opts.timeout.as_secs_f64().to_string());
    match &opts.ca {
        Some(ca) => cmd.arg("--ca").arg(ca),
        None => cmd.arg("--insecure"),
    };
    if let Some(v) = opts.version {
        cmd.arg("--quic-version").arg(v.name());
    }
    cmd
}

/// `GET https://NAME/PATH` over HTTP/3 from the namespace `ns` to `addr` (SNI and
/// `:authority` `name`).
pub fn quic_get(ns: &str, addr: IpAddr, name: &str, opts: &ClientOpts) -> Result<QuicReply> {
    let out = run_with_timeout(
        &mut client_cmd(ns, addr, name, opts),
        opts.timeout + Duration::from_secs(10),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line).with_context(|| {
        format!(
            "quic_client.py printed {stdout:?} ({}); stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let error = v["error"].as_str().unwrap_or_default().to_owned();
    Ok(match out.status.code() {
        Some(0) => QuicReply::Response(QuicResponse {
            status: v["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .context("no status")?,
            body_len: v["body_len"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or_default(),
            body: v["body"].as_str().unwrap_or_default().to_owned(),
            version: v["version"].as_str().unwrap_or_default().to_owned(),
        }),
        Some(EXIT_NO_ANSWER) => QuicReply::NoAnswer(error),
        _ => QuicReply::Failed(error),
    })
}

/// The result of [`quic_bench`].
#[derive(Debug, Clone, PartialEq)]
pub struct QuicBench {
    /// Connections attempted.
    pub count: u64,
    /// Connections that completed (handshake, and the GET unless handshake-only).
    pub ok: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Wall time of all of them.
    pub elapsed: Duration,
}

/// `count` QUIC connections one after the other from `ns` to `addr` (each a GET, or only
/// the handshake), for a connections-per-second figure. Bounded: `count` times the
/// per-connection timeout.
pub fn quic_bench(
    ns: &str,
    addr: IpAddr,
    name: &str,
    count: u32,
    handshake_only: bool,
    opts: &ClientOpts,
) -> Result<QuicBench> {
    let mut cmd = client_cmd(ns, addr, name, opts);
    cmd.arg("--count").arg(count.to_string());
    if handshake_only {
        cmd.arg("--handshake-only");
    }
    let out = run_with_timeout(&mut cmd, opts.timeout * count + Duration::from_secs(10))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("quic_client.py --count printed {stdout:?}"))?;
    Ok(QuicBench {
        count: v["count"].as_u64().unwrap_or_default(),
        ok: v["ok"].as_u64().unwrap_or_default(),
        failed: v["failed"].as_u64().unwrap_or_default(),
        elapsed: Duration::from_secs_f64(v["elapsed"].as_f64().unwrap_or_default()),
    })
}

/// How [`chromium_load`] runs Chromium.
#[derive(Debug, Clone)]
pub struct ChromiumOpts {
    /// `--origin-to-force-quic-on=NAME:443`: HTTP/3 at once, with no TCP fallback.
    pub force_quic: bool,
    /// SPKI hashes for `--ignore-certificate-errors-spki-list` (self-signed servers).
    pub spki: Vec<String>,
    /// Kill Chromium (its whole process group) after this long.
    pub timeout: Duration,
    /// More flags.
    pub extra: Vec<String>,
    /// Resolve names with the namespace's resolver (`/etc/netns/NS/resolv.conf`, see
    /// [`crate::dns::NamespaceResolver`]) instead of mapping the name to the address.
    pub system_resolver: bool,
    /// Load this URL rather than `https://NAME/`.
    pub url: Option<String>,
    /// Write a screenshot (PNG) here instead of dumping the DOM.
    pub screenshot: Option<PathBuf>,
}

impl Default for ChromiumOpts {
    fn default() -> ChromiumOpts {
        ChromiumOpts {
            force_quic: true,
            spki: Vec::new(),
            timeout: Duration::from_secs(30),
            extra: Vec::new(),
            system_resolver: false,
            url: None,
            screenshot: None,
        }
    }
}

/// One headless Chromium page load.
#[derive(Debug, Clone)]
pub struct ChromiumRun {
    /// `--dump-dom` output: the DOM after load (empty if the load failed).
    pub dom: String,
    /// Chromium's stderr.
    pub stderr: String,
    /// From start to exit (or kill).
    pub elapsed: Duration,
    /// Killed after [`ChromiumOpts::timeout`].
    pub timed_out: bool,
}

impl ChromiumRun {
    /// Whether the DOM holds `marker` (e.g. [`marker`]).
    pub fn has(&self, marker: &str) -> bool {
        self.dom.contains(marker)
    }

    /// The `net::ERR_…` of a failed load (`Page load failed: net::ERR_…` on stderr).
    pub fn net_error(&self) -> Option<String> {
        let at = self.stderr.find("Page load failed: ")?;
        let rest = &self.stderr[at + "Page load failed: ".len()..];
        Some(
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
        )
    }
}

/// The flags [`chromium_load`] passes, before the URL: headless, no sandbox (root), no
/// background traffic, a fresh profile in `profile`, `name` resolved to `addr`.
pub fn chromium_args(addr: IpAddr, name: &str, profile: &Path, opts: &ChromiumOpts) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-quic",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let target = match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    if !opts.system_resolver {
        args.push(format!("--host-resolver-rules=MAP {name} {target}"));
    }
    if opts.force_quic {
        args.push(format!("--origin-to-force-quic-on={name}:443"));
    }
    if !opts.spki.is_empty() {
        args.push(format!(
            "--ignore-certificate-errors-spki-list={}",
            opts.spki.join(",")
        ));
    }
    args.extend(opts.extra.iter().cloned());
    match &opts.screenshot {
        Some(png) => {
            args.push(format!("--screenshot={}", png.display()));
            args.push("--window-size=800,600".to_owned());
        }
        None => args.push("--dump-dom".to_owned()),
    }
    args
}

/// Loads `https://NAME/` with headless Chromium in the namespace `ns`, `name` mapped to
/// `addr`, with a fresh profile under `dir` (removed afterwards). Chromium runs in a
/// process group of its own, killed (SIGKILL) on timeout and after exit, so no renderer
/// or zygote outlives the call.
pub fn chromium_load(
    ns: &str,
    addr: IpAddr,
    name: &str,
    dir: &Path,
    opts: &ChromiumOpts,
) -> Result<ChromiumRun> {
    use std::{io::Read, os::unix::process::CommandExt};
    let profile = dir.join(format!(
        "chromium-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    fs::create_dir_all(&profile).with_context(|| format!("cannot create {}", profile.display()))?;
    let mut cmd = netns_cmd(ns, CHROMIUM_BIN);
    cmd.args(chromium_args(addr, name, &profile, opts))
        .arg(
            opts.url
                .clone()
                .unwrap_or_else(|| format!("https://{name}/")),
        )
        // No D-Bus session: Chromium's complaints about it are noise.
        .env("DBUS_SESSION_BUS_ADDRESS", "disabled:")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().context("cannot start chromium")?;
    let pgid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_timeout(&mut child, opts.timeout)?;
    let elapsed = start.elapsed();
    // The group is ours (process_group(0) above); it may already be empty.
    let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
    if status.is_none() {
        let _ = child.wait();
    }
    let run = ChromiumRun {
        dom: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed,
        timed_out: status.is_none(),
    };
    if let Err(e) = fs::remove_dir_all(&profile) {
        eprintln!("nprot-tests: cannot remove {}: {e}", profile.display());
    }
    Ok(run)
}

/// The Chromium version (`chromium --version`), e.g. `Chromium 156.0.8078.114 built on
/// Debian GNU/Linux 12 (bookworm)`.
pub fn chromium_version() -> Result<String> {
    let out = run_ok(
        Command::new(CHROMIUM_BIN).arg("--version"),
        Duration::from_secs(20),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Where [`drop_udp`] drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropAt {
    /// Arriving datagrams to the port (nftables prerouting): silent for the sender, which
    /// only sees no answer. Use it in the server namespace to emulate a path that drops
    /// QUIC; the client's Initials still leave its veth (where the sensor sees them).
    Ingress,
    /// Datagrams the namespace sends to the port (nftables output): the sender's
    /// `sendmsg` fails at once with `EPERM`, so a client gives up fast, and nothing
    /// reaches the veth.
    Egress,
}

/// Adds an nftables table `nprot_quic` to the namespace `ns` dropping UDP to `port` (as
/// [`DropAt`] says); it goes with the namespace.
pub fn drop_udp(ns: &str, port: u16, at: DropAt) -> Result<()> {
    let (hook, prio) = match at {
        DropAt::Ingress => ("prerouting", "-300"),
        DropAt::Egress => ("output", "0"),
    };
    let ruleset = format!(
        "table inet nprot_quic {{\n  chain drop_udp {{\n    type filter hook {hook} priority \
         {prio}; policy accept;\n    udp dport {port} drop\n  }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("nprot-quic-nft-{}-{ns}.nft", std::process::id()));
    fs::write(&file, ruleset)?;
    let result = run_ok(
        netns_cmd(ns, "nft").arg("-f").arg(&file),
        Duration::from_secs(10),
    );
    let _ = fs::remove_file(&file);
    result.map(drop)
}

/// One client datagram holding Initial packets, from [`initials`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialDatagram {
    /// UDP payload size.
    pub size: usize,
    /// `v1`, `v2`, or the version in hex.
    pub version: String,
    /// Destination connection ID length.
    pub dcid_len: usize,
    /// Source connection ID length.
    pub scid_len: usize,
    /// Total CRYPTO bytes in its Initial packets.
    pub crypto_bytes: usize,
}

/// The client Initials of a capture, decrypted.
#[derive(Debug, Clone)]
pub struct InitialReport {
    /// Every client datagram to the port with an Initial, in capture order.
    pub datagrams: Vec<InitialDatagram>,
    /// Length of the first ClientHello (handshake message, header included).
    pub client_hello_len: Option<usize>,
    /// Whether its CRYPTO stream was complete in the capture.
    pub client_hello_complete: bool,
    /// How many datagrams carry bytes of it.
    pub client_hello_datagrams: usize,
    /// Its server_name.
    pub sni: Option<String>,
    /// The whole JSON report of `quic_pcap.py` (CRYPTO ranges, packet numbers).
    pub raw: Value,
}

/// Decrypts the client Initials (to UDP `port`) of the pcap `file` with `quic_pcap.py`.
pub fn initials(file: &Path, port: u16) -> Result<InitialReport> {
    let mut cmd = Command::new(python3());
    cmd.env("PYTHONPATH", PYTHONPATH)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("-c")
        .arg(PCAP_PY)
        .arg(file)
        .arg("--port")
        .arg(port.to_string());
    let out = run_ok(&mut cmd, Duration::from_secs(30))?;
    let raw: Value = serde_json::from_slice(&out.stdout).context("quic_pcap.py output")?;
    let usize_of = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
    let datagrams = raw["datagrams"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|d| InitialDatagram {
            size: usize_of(&d["size"]).unwrap_or_default(),
            version: d["version"].as_str().unwrap_or_default().to_owned(),
            dcid_len: usize_of(&d["dcid_len"]).unwrap_or_default(),
            scid_len: usize_of(&d["scid_len"]).unwrap_or_default(),
            crypto_bytes: d["packets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .flat_map(|p| p["crypto"].as_array().cloned().unwrap_or_default())
                .filter_map(|c| usize_of(&c[1]))
                .sum(),
        })
        .collect();
    Ok(InitialReport {
        datagrams,
        client_hello_len: usize_of(&raw["client_hello_len"]),
        client_hello_complete: raw["client_hello_complete"].as_bool().unwrap_or(false),
        client_hello_datagrams: usize_of(&raw["client_hello_datagrams"]).unwrap_or_default(),
        sni: raw["sni"].as_str().map(str::to_owned),
        raw,
    })
}
