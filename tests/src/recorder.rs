//! A server that records how each of its connections ended: the server side's view of a
//! reset. It runs in a namespace of the test (python3), answers the first bytes of every
//! connection with a small HTTP response — so that the server sends payload, as a real
//! server does, and a sensor in the path has a server packet to hold or reset — and then
//! keeps reading until end of stream, a reset, or `linger` without anything happening.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{clients::python3, netns::netns_cmd, process::terminate};

/// How long [`ConnRecorder::start`] waits for the listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval while waiting for a record.
const POLL: Duration = Duration::from_millis(10);

/// The body of the recorder's response.
pub const RECORDER_BODY: &str = "nprot-test recorder";

/// Python: listen on every `ADDR PORT` pair; for each connection reply once (on the first
/// bytes) and read until EOF, reset or `linger` idle seconds; print one JSON line per
/// connection: peer port, bytes received, how it ended, milliseconds since accept.
const RECORDER_PY: &str = r#"
import json, socket, sys, threading, time
linger, body = float(sys.argv[1]), sys.argv[2].encode() + b"\n"
pairs = sys.argv[3:]
reply = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
         b"Connection: close\r\n\r\n" % len(body)) + body
out = threading.Lock()
def report(rec):
    with out:
        print(json.dumps(rec), flush=True)
def serve(c, peer):
    t0 = time.monotonic()
    got, end = 0, ""
    c.settimeout(linger)
    try:
        while True:
            d = c.recv(65536)
            if not d:
                end = "eof"
                break
            if got == 0:
                c.sendall(reply)
            got += len(d)
    except ConnectionResetError:
        end = "reset"
    except socket.timeout:
        end = "open"
    except OSError as e:
        end = "error: %s" % e
    report({"peer": peer[0], "peer_port": peer[1], "received": got, "end": end,
            "after_ms": int((time.monotonic() - t0) * 1000)})
    c.close()
def accept_loop(ls):
    while True:
        c, peer = ls.accept()
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()
for i in range(0, len(pairs), 2):
    host, port = pairs[i], int(pairs[i + 1])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(64)
    threading.Thread(target=accept_loop, args=(ls,), daemon=True).start()
with out:
    print("ready", flush=True)
threading.Event().wait()
"#;

/// How a recorded connection ended, seen from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEnd {
    /// The peer closed the stream (recv returned no bytes).
    Eof,
    /// The connection was reset (`ConnectionResetError`).
    Reset,
    /// Still open: nothing happened for the recorder's `linger`.
    Open,
    /// Another socket error.
    Error(String),
}

/// One connection the recorder saw.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    /// The peer's address as the server saw it.
    pub peer: String,
    /// The peer's port (the client's local port, when nothing translates it).
    pub peer_port: u16,
    /// Bytes received from the peer.
    pub received: u64,
    /// How the connection ended.
    pub end: ConnEnd,
    /// Time from accept to the end (for [`ConnEnd::Open`]: to giving up).
    pub after: Duration,
}

/// A running recorder; killed when dropped.
#[derive(Debug)]
pub struct ConnRecorder {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    addrs: Vec<SocketAddr>,
}

impl ConnRecorder {
    /// Starts the recorder in the namespace `ns`, listening on each of `addrs`, and waits
    /// (at most 5 s) until it listens. A connection with nothing happening for `linger`
    /// is recorded as [`ConnEnd::Open`].
    pub fn start(ns: &str, addrs: &[SocketAddr], linger: Duration) -> Result<ConnRecorder> {
        let mut cmd = netns_cmd(ns, python3());
        cmd.args(["-c", RECORDER_PY])
            .arg(linger.as_secs_f64().to_string())
            .arg(RECORDER_BODY);
        for addr in addrs {
            cmd.arg(addr.ip().to_string()).arg(addr.port().to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .context("cannot start the connection recorder")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        for (pipe, mark) in [
            (
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                "",
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                "[stderr] ",
            ),
        ] {
            let Some(pipe) = pipe else { continue };
            let lines = Arc::clone(&lines);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(format!("{mark}{line}"));
                }
            });
        }
        let mut recorder = ConnRecorder {
            child: Some(child),
            lines,
            addrs: addrs.to_vec(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !recorder.lines().iter().any(|l| l == "ready") {
            let exited = match recorder.child.as_mut() {
                Some(child) => child.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() >= deadline {
                bail!(
                    "connection recorder on {addrs:?} not ready (exited: {exited}):\n{}",
                    recorder.log()
                );
            }
            thread::sleep(POLL);
        }
        Ok(recorder)
    }

    /// Where it listens.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Everything the recorder printed, for failure messages.
    pub fn log(&self) -> String {
        self.lines().join("\n")
    }

    /// Every connection recorded so far.
    pub fn records(&self) -> Vec<ConnRecord> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| {
                let end = match v["end"].as_str()? {
                    "eof" => ConnEnd::Eof,
                    "reset" => ConnEnd::Reset,
                    "open" => ConnEnd::Open,
                    other => ConnEnd::Error(other.to_owned()),
                };
                Some(ConnRecord {
                    peer: v["peer"].as_str()?.to_owned(),
                    peer_port: u16::try_from(v["peer_port"].as_u64()?).ok()?,
                    received: v["received"].as_u64()?,
                    end,
                    after: Duration::from_millis(v["after_ms"].as_u64()?),
                })
            })
            .collect()
    }

    /// Waits up to `timeout` for the record of the connection from `peer_port`.
    pub fn wait_for(&self, peer_port: u16, timeout: Duration) -> Result<ConnRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self
                .records()
                .into_iter()
                .find(|r| r.peer_port == peer_port)
            {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the recorder on {:?} has not seen the connection from port {peer_port} \
                     end within {timeout:?}; its output:\n{}",
                    self.addrs,
                    self.log()
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for ConnRecorder {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(e) = terminate(&mut child, Duration::from_secs(1))
        {
            eprintln!("nprot-tests cleanup: connection recorder: {e:#}");
        }
    }
}
