//! Hand-built frames for the evasion and encapsulation tests: TCP conversations made of
//! scapy frames sent with AF_PACKET sockets, in the test namespaces only.
//!
//! The python side is the module `nprot_frames` (`frames.py`, written next to each
//! script): [`run_script`] runs a script that imports it in a namespace and returns the
//! JSON it prints. Its `Port` reads each interface twice: an `ETH_P_ALL` socket sees
//! ingress frames *before* tc (the sensor's TCX programs), sockets bound to one ethertype
//! see them *after* tc, i.e. what the sensor let through to the stack.
//!
//! A conversation scripted on the client side against a real server needs the client's
//! own stack to keep quiet: it knows no such connection and would answer the server
//! with resets. [`drop_kernel_resets`] makes it drop them (nftables, in the namespace).
//!
//! Also here: [`HostEcho`], a server that records the `Host` each connection's request
//! head carried as the server's stack delivered it, and [`Tcpdump`] for captures.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    clients::python3,
    netns::{netns_cmd, wait_tcp_ready_in},
    process::{run_ok, run_with_timeout, signal, terminate, wait_timeout},
};

/// The python module `nprot_frames`.
pub const FRAMES_PY: &str = include_str!("frames.py");

/// Name of the nftables table [`drop_kernel_resets`] adds.
const NFT_TABLE: &str = "nprot_tests_norst";

/// Writes `nprot_frames.py` into `dir` and runs the python3 `script` in the namespace
/// `ns` with `args` (JSON) as its only argument, `dir` on its module path; returns the
/// JSON value printed on the last line of its stdout. Fails (with its stderr) if it
/// exits non-zero, prints no JSON or runs longer than `timeout`.
pub fn run_script(
    ns: &str,
    dir: &Path,
    script: &str,
    args: &Value,
    timeout: Duration,
) -> Result<Value> {
    let module = dir.join("nprot_frames.py");
    std::fs::write(&module, FRAMES_PY)
        .with_context(|| format!("cannot write {}", module.display()))?;
    // A file rather than `-c`: events name the process by its command line.
    let hash = script.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let file = dir.join(format!("frames-{hash:016x}.py"));
    std::fs::write(&file, script).with_context(|| format!("cannot write {}", file.display()))?;
    let mut cmd = netns_cmd(ns, python3());
    cmd.env("PYTHONPATH", dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(&file)
        .arg(args.to_string());
    let out = run_with_timeout(&mut cmd, timeout)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "frame script failed ({}) in {ns}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    last.and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| {
            format!("frame script printed no JSON\nstdout:\n{stdout}\nstderr:\n{stderr}")
        })
}

/// Makes the namespace `ns` drop the TCP resets its own stack sends (an nftables output
/// rule; frames sent on AF_PACKET sockets do not pass it, nor do the sensor's resets,
/// which are made in tc). Removed with the namespace.
pub fn drop_kernel_resets(ns: &str) -> Result<()> {
    let rules = format!(
        "table inet {NFT_TABLE} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
         tcp flags & rst == rst counter drop\n  }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("{NFT_TABLE}-{}-{ns}.nft", std::process::id()));
    std::fs::write(&file, rules).context("cannot write the nft rules")?;
    let res = run_ok(
        netns_cmd(ns, "nft").arg("-f").arg(&file),
        Duration::from_secs(10),
    );
    let _ = std::fs::remove_file(&file);
    res.context("nft (Debian package nftables, installed by `cargo xtask setup`)")?;
    Ok(())
}

/// The MAC address of `dev` in the namespace `ns`.
pub fn mac_of(ns: &str, dev: &str) -> Result<String> {
    let out = run_ok(
        netns_cmd(ns, "ip").args(["-j", "link", "show", "dev", dev]),
        Duration::from_secs(10),
    )?;
    let v: Value = serde_json::from_slice(&out.stdout).context("ip -j link printed no JSON")?;
    v[0]["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no address for {dev} in {v}"))
}

/// Python: a dual-stack HTTP server that, for each connection, reads the request head,
/// prints `{"peer_port", "host", "head"}` as one JSON line (what the server's stack
/// delivered), answers `host=<Host>` and closes.
const HOST_ECHO_PY: &str = r#"
import json, socket, sys, threading, time
port = int(sys.argv[1])
ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
ls.bind(("::", port))
ls.listen(64)
lock = threading.Lock()
def serve(c, peer):
    head = b""
    try:
        c.settimeout(5)
        while b"\r\n\r\n" not in head and len(head) < 65536:
            d = c.recv(65536)
            if not d:
                break
            head += d
        if not head:
            return
        host = ""
        for line in head.split(b"\r\n")[1:]:
            if line.lower().startswith(b"host:"):
                host = line[5:].strip().decode("latin-1")
        with lock:
            print(json.dumps({"peer_port": peer[1], "host": host,
                              "head": head.decode("latin-1")}), flush=True)
        body = ("host=%s\n" % host).encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                  % len(body) + body)
        time.sleep(0.5)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, peer = ls.accept()
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"#;

/// A server that records the `Host` of each connection's request as its stack delivered
/// it (python3, in the server namespace); killed when dropped.
#[derive(Debug)]
pub struct HostEcho {
    child: Option<Child>,
    log: PathBuf,
    port: u16,
}

impl HostEcho {
    /// Starts it on every address of the namespace `ns`, port `port`, logging to
    /// `dir/host-echo.jsonl`, and waits until `addr:port` accepts connections (probed from
    /// `ns`, so that no probe crosses a guarded interface).
    pub fn start_in(ns: &str, addr: IpAddr, port: u16, dir: &Path) -> Result<HostEcho> {
        let log = dir.join("host-echo.jsonl");
        let out = std::fs::File::create(&log).context("cannot create the host-echo log")?;
        let mut cmd = netns_cmd(ns, python3());
        cmd.args(["-c", HOST_ECHO_PY])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::inherit());
        let child = cmd.spawn().context("cannot start the host-echo server")?;
        let server = HostEcho {
            child: Some(child),
            log,
            port,
        };
        wait_tcp_ready_in(ns, &[SocketAddr::new(addr, port)], Duration::from_secs(5))
            .context("host-echo server not ready")?;
        Ok(server)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request head recorded so far.
    pub fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits up to `timeout` for the request of the connection from `peer_port`.
    pub fn wait_for(&self, peer_port: u16, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records();
            if let Some(r) = records.iter().find(|r| r["peer_port"] == peer_port) {
                return Ok(r.clone());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the server got no request head from port {peer_port} within {timeout:?}; it got: {records:?}"
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HostEcho {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(e) = terminate(&mut child, Duration::from_secs(1))
        {
            eprintln!("nprot-tests cleanup: host-echo server: {e:#}");
        }
    }
}

/// How long tcpdump may take to start capturing, and to exit after SIGINT.
const TCPDUMP_TIMEOUT: Duration = Duration::from_secs(10);

/// tcpdump writing a capture file in a namespace; stopped (SIGINT, then killed) on drop.
#[derive(Debug)]
pub struct Tcpdump {
    child: Option<Child>,
    stderr: mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Tcpdump {
    /// Starts `tcpdump -n -U --immediate-mode -w FILE ARGS…` in the namespace `ns` and
    /// waits until it says it is listening.
    pub fn start(ns: &str, file: &Path, args: &[&str]) -> Result<Tcpdump> {
        let mut cmd = netns_cmd(ns, "tcpdump");
        cmd.args(["-n", "-U", "--immediate-mode", "-w"])
            .arg(file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let (tx, rx) = mpsc::channel();
        if let Some(pipe) = child.stderr.take() {
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut dump = Tcpdump {
            child: Some(child),
            stderr: rx,
            lines: Vec::new(),
        };
        loop {
            match dump.stderr.recv_timeout(TCPDUMP_TIMEOUT) {
                Ok(line) => {
                    let ready = line.contains("listening on");
                    dump.lines.push(line);
                    if ready {
                        return Ok(dump);
                    }
                }
                Err(_) => bail!(
                    "tcpdump {args:?} did not start listening within {TCPDUMP_TIMEOUT:?}; \
                     stderr:\n{}",
                    dump.lines.join("\n")
                ),
            }
        }
    }

    /// Stops tcpdump with SIGINT (it flushes the file) and returns its stderr.
    pub fn stop(&mut self) -> Result<String> {
        let Some(mut child) = self.child.take() else {
            bail!("tcpdump already stopped");
        };
        signal(child.id(), nix::sys::signal::Signal::SIGINT)?;
        let Some(status) = wait_timeout(&mut child, TCPDUMP_TIMEOUT)? else {
            terminate(&mut child, Duration::ZERO)?;
            bail!("tcpdump did not exit within {TCPDUMP_TIMEOUT:?} of SIGINT");
        };
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(1)) {
            self.lines.push(line);
        }
        let text = self.lines.join("\n");
        if !status.success() {
            bail!("tcpdump exited with {status}; stderr:\n{text}");
        }
        Ok(text)
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child, Duration::from_secs(2));
        }
    }
}
