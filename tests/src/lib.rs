//! End-to-end test harness for nprot.
//!
//! Each test gets an [`Env`]: a client and a server network namespace joined by a veth
//! pair ([`netns::Topology`]), nginx with TLS and HTTP vhosts in the server namespace
//! ([`nginx::Nginx`]), and optionally the sensor (`nprot run`) guarding the client's veth
//! ([`sensor::Sensor`]), whose JSON-lines events are read through [`events::EventLog`].
//! Clients ([`clients`]) run in the client namespace. An `Env` can add an L3-only
//! [`tunnel::Tunnel`] (TUN) between the two namespaces. Routed tests use a
//! [`gateway::GatewayEnv`] instead: client ↔ router ↔ server, the sensor in the router.
//! Everything is removed when the `Env` is dropped, also when a test panics. Tests are
//! serialised by a global lock.
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]
#![warn(missing_docs)]

pub mod assert;
pub mod barrier;
pub mod bpf;
pub mod bulk;
pub mod clients;
pub mod desktop;
pub mod dns;
pub mod events;
pub mod fleet;
pub mod fleet_scale;
pub mod frames;
pub mod gateway;
pub mod indicators;
pub mod netns;
pub mod nginx;
pub mod process;
pub mod proxy;
pub mod quic;
pub mod recorder;
pub mod rsyslog;
pub mod sensor;
pub mod tls;
pub mod tunnel;
pub mod world;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Mutex, MutexGuard, Once,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
pub use assert::{ClientResult, assert_reset};
pub use barrier::Barrier;
pub use bulk::BulkServer;
pub use clients::{CurlOutcome, CurlRun, Exchange, ExchangeEnd, RawOutcome};
pub use events::{EventLog, ev};
pub use gateway::{Gateway, GatewayEnv};
pub use netns::Topology;
pub use nginx::Nginx;
pub use proxy::{ProxyEnv, Transfer};
pub use recorder::{ConnEnd, ConnRecord, ConnRecorder};
pub use sensor::{Launch, Sensor, StderrLog};
pub use serde_json::Value;
pub use tls::{ClientHello, HelloSpec, client_hello};
pub use tunnel::{Tunnel, TunnelLink};
pub use world::ClientServer;

/// Default time to wait for an event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number no other test world of this process has: for tests that build several
/// [`netns::Topology`]s of their own (the fleet's).
pub fn next_test_number() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst) + 1
}
static STALE_CLEANUP: Once = Once::new();

/// Fails unless the process runs as root.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("end-to-end tests need root: run `cargo xtask test` as root");
    }
    Ok(())
}

/// Takes the global test lock (held until the guard is dropped), removes namespaces left
/// by killed runs (once per process), and returns the lock with this test's number and
/// its fresh, empty temp dir `<tmp>/nprot-e2e-<pid>-<n>`.
pub(crate) fn begin_test() -> Result<(MutexGuard<'static, ()>, u32, PathBuf)> {
    let serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    STALE_CLEANUP.call_once(netns::remove_stale_namespaces);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
    let dir = std::env::temp_dir().join(format!("nprot-e2e-{}-{n}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove old {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok((serial, n, dir))
}

/// Removes a test's temp dir unless `NPROT_KEEP_TMP` is set (from `Drop`).
pub(crate) fn remove_test_dir(dir: &Path) {
    if std::env::var_os("NPROT_KEEP_TMP").is_some() {
        eprintln!("nprot-tests: kept {}", dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("nprot-tests cleanup: cannot remove {}: {e}", dir.display());
    }
}

/// One test's world: namespaces, nginx, the sensor (optional), a temp dir.
pub struct Env {
    /// Namespaces, interfaces and addresses.
    pub topo: Topology,
    /// nginx in the server namespace.
    pub nginx: Option<Nginx>,
    /// The sensor, if started.
    pub sensor: Option<Sensor>,
    /// An L3 tunnel between the namespaces, if started ([`Env::start_tunnel`]).
    pub tunnel: Option<Tunnel>,
    events: EventLog,
    dir: PathBuf,
    // Declared last so it is released after everything else is torn down.
    _serial: MutexGuard<'static, ()>,
}

impl ClientServer for Env {
    fn client_ns(&self) -> &str {
        &self.topo.client_ns
    }

    fn server_ns(&self) -> &str {
        &self.topo.server_ns
    }

    fn server_ip(&self, v6: bool) -> IpAddr {
        self.topo.server_ip(v6)
    }
}

impl Env {
    /// Builds the topology, starts nginx and the sensor, and waits until both are ready.
    pub fn start() -> Result<Env> {
        Self::start_with(&[])
    }

    /// [`Env::start`] passing `extra_args` to `nprot run`.
    pub fn start_with(extra_args: &[&str]) -> Result<Env> {
        require_root()?;
        // Fail before building anything if there is no sensor to test.
        sensor::sensor_binary()?;
        let mut env = Self::start_without_sensor()?;
        env.start_sensor(extra_args)?;
        Ok(env)
    }

    /// Builds the topology, starts nginx and starts the sensor enforcing `indicators`
    /// under `mode` (see [`Env::enforce`]).
    pub fn start_enforcing(mode: &str, indicators: &[Value], extra_args: &[&str]) -> Result<Env> {
        require_root()?;
        sensor::sensor_binary()?;
        let mut env = Self::start_without_sensor()?;
        env.enforce(mode, indicators, extra_args)?;
        Ok(env)
    }

    /// Builds the topology and starts nginx, without the sensor.
    pub fn start_without_sensor() -> Result<Env> {
        require_root()?;
        let (serial, n, dir) = begin_test()?;
        // From here on a failure drops `env`, which cleans up what exists.
        let mut env = Env {
            topo: Topology::create(n).context("cannot build the test network")?,
            nginx: None,
            sensor: None,
            tunnel: None,
            events: EventLog::new(&dir.join("events.jsonl"), StderrLog::default()),
            dir,
            _serial: serial,
        };
        env.nginx = Some(Nginx::start(&env.topo, &env.dir)?);
        Ok(env)
    }

    /// Starts the sensor on the client veth (events to `<dir>/events.jsonl`) and waits
    /// for it to be ready.
    pub fn start_sensor(&mut self, extra_args: &[&str]) -> Result<()> {
        let client_if = self.topo.client_if.clone();
        self.start_sensor_on(&[&client_if], extra_args)
    }

    /// Starts the sensor in the client namespace guarding `interfaces` (one `--interface`
    /// each, e.g. the client veth and a [`Tunnel`] device) and waits for it to be ready.
    pub fn start_sensor_on(&mut self, interfaces: &[&str], extra_args: &[&str]) -> Result<()> {
        if self.sensor.is_some() {
            bail!("sensor already started");
        }
        let sensor = Sensor::start_in(
            &self.topo.client_ns,
            interfaces,
            self.events.path(),
            extra_args,
        )?;
        self.events = EventLog::new(self.events.path(), sensor.stderr().clone());
        self.sensor = Some(sensor);
        Ok(())
    }

    /// Spawns the sensor on the client veth (events to `<dir>/events.jsonl`) with the
    /// environment variables `envs` added, and returns at once, without waiting for it to
    /// be ready (see [`Sensor::spawn`]). It is kept in the `Env` and stopped with it.
    pub fn spawn_sensor_with_env(
        &mut self,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<&mut Sensor> {
        if self.sensor.is_some() {
            bail!("sensor already started");
        }
        let client_if = self.topo.client_if.clone();
        let sensor = Sensor::spawn(
            &self.topo.client_ns,
            &[&client_if],
            self.events.path(),
            extra_args,
            envs,
        )?;
        self.events = EventLog::new(self.events.path(), sensor.stderr().clone());
        Ok(self.sensor.insert(sensor))
    }

    /// Writes `indicators` to `<dir>/indicators.json` and starts the sensor with
    /// `--mode MODE --indicators <that file>` plus `extra_args`.
    pub fn enforce(&mut self, mode: &str, indicators: &[Value], extra_args: &[&str]) -> Result<()> {
        let client_if = self.topo.client_if.clone();
        self.enforce_on(mode, indicators, &[&client_if], extra_args)
    }

    /// [`Env::enforce`] guarding `interfaces` in the client namespace.
    pub fn enforce_on(
        &mut self,
        mode: &str,
        indicators: &[Value],
        interfaces: &[&str],
        extra_args: &[&str],
    ) -> Result<()> {
        let file = indicators::write_file(&self.dir, "indicators.json", indicators)?;
        let file = file.to_string_lossy().into_owned();
        let mut args = vec!["--mode", mode, "--indicators", &file];
        args.extend_from_slice(extra_args);
        self.start_sensor_on(interfaces, &args)
    }

    /// Starts an L3-only tunnel between the client and the server namespace (see
    /// [`Tunnel`]) and returns its names and addresses. Start it before the sensor that is
    /// to guard it; it is removed with the `Env`, after the sensor has stopped.
    pub fn start_tunnel(&mut self) -> Result<TunnelLink> {
        if self.tunnel.is_some() {
            bail!("tunnel already started");
        }
        let tunnel = Tunnel::start(&self.topo)?;
        let link = tunnel.link.clone();
        self.tunnel = Some(tunnel);
        Ok(link)
    }

    /// Starts the sensor (events to the usual file) and waits up to `timeout` for
    /// `nprot ready` or its exit, whichever comes first: for tests of a sensor that must
    /// refuse to start. A [`Launch::Ready`] sensor is not kept in the `Env`; it is
    /// stopped when that value is dropped.
    pub fn launch_sensor(&self, extra_args: &[&str], timeout: Duration) -> Result<Launch> {
        if self.sensor.is_some() {
            bail!("sensor already started");
        }
        Sensor::launch(&self.topo, self.events.path(), extra_args, timeout)
    }

    /// The sensor, or an error if it was not started.
    pub fn sensor_mut(&mut self) -> Result<&mut Sensor> {
        self.sensor.as_mut().context("sensor not started")
    }

    /// The sensor's event file.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// The per-test temp dir (removed on drop unless `NPROT_KEEP_TMP` is set).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's address of the given family.
    pub fn server_ip(&self, v6: bool) -> IpAddr {
        self.topo.server_ip(v6)
    }

    /// The client's address of the given family.
    pub fn client_ip(&self, v6: bool) -> IpAddr {
        self.topo.client_ip(v6)
    }

    /// `curl -k https://NAME:PORT/PATH` resolved to the server's address of the family.
    pub fn curl_https(&self, name: &str, port: u16, v6: bool, path: &str) -> Result<CurlOutcome> {
        let url = format!("https://{name}:{port}{path}");
        clients::curl(&self.topo, name, port, self.server_ip(v6), &url, &[])
    }

    /// `curl http://NAME[:PORT]/PATH` (port omitted when 80) with extra curl arguments.
    pub fn curl_http(
        &self,
        name: &str,
        port: u16,
        v6: bool,
        path: &str,
        extra: &[&str],
    ) -> Result<CurlOutcome> {
        let url = clients::http_url(name, port, path);
        clients::curl(&self.topo, name, port, self.server_ip(v6), &url, extra)
    }

    /// `openssl s_client -connect SERVER:PORT -servername SNI </dev/null`.
    pub fn openssl_s_client(&self, port: u16, v6: bool, sni: &str) -> Result<std::process::Output> {
        clients::openssl_s_client(&self.topo, self.server_ip(v6), port, sni)
    }

    /// Raw TCP: send `chunks` to the server, one `send()` each, `pause` apart.
    pub fn send_chunks(
        &self,
        port: u16,
        v6: bool,
        chunks: &[&[u8]],
        pause: Duration,
    ) -> Result<RawOutcome> {
        clients::send_chunks(&self.topo, self.server_ip(v6), port, chunks, pause)
    }

    /// Connects to a closed port of the server; returns the client's local port.
    pub fn connect_refused(&self, port: u16, v6: bool) -> Result<u16> {
        clients::connect_refused(&self.topo, self.server_ip(v6), port)
    }

    /// What is attached to the client veth (TCX, tc, XDP, bpftool's view).
    pub fn client_attachments(&self) -> Result<bpf::Attachments> {
        bpf::attachments(&self.topo.client_ns, &self.topo.client_if)
    }

    /// What is attached to the device `dev` of the client namespace (e.g. a tunnel).
    pub fn client_attachments_of(&self, dev: &str) -> Result<bpf::Attachments> {
        bpf::attachments(&self.topo.client_ns, dev)
    }

    /// Sensor stderr and the events so far, for `expect` messages.
    pub fn diagnostics(&self) -> String {
        self.events.dump()
    }

    /// `nprot stats --json` of the running sensor, through its control socket.
    pub fn stats(&self) -> Result<Value> {
        let socket = sensor::control_socket_for(self.events.path());
        let out = std::process::Command::new(sensor::sensor_binary()?)
            .args(["stats", "--json", "--socket"])
            .arg(&socket)
            .output()
            .context("running nprot stats")?;
        if !out.status.success() {
            bail!(
                "nprot stats failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("nprot stats --json printed no JSON")
    }

    /// Awaits `nprot stats` counters that satisfy `pred` (asked every 20 ms, within
    /// `timeout`); returns the last stats either way, for the caller's assertions.
    pub fn wait_stats(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Result<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let stats = self.stats()?;
            if pred(&stats) || std::time::Instant::now() >= deadline {
                return Ok(stats);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(sensor) = self.sensor.as_mut()
            && let Err(e) = sensor.stop(Duration::from_secs(3))
        {
            eprintln!("nprot-tests cleanup: {e:#}");
        }
        self.sensor = None;
        self.nginx = None;
        self.tunnel = None;
        for e in self.topo.destroy() {
            eprintln!("nprot-tests cleanup: {e}");
        }
        remove_test_dir(&self.dir);
    }
}

/// Asserts `event[key] == expected` (`key` may be a JSON pointer such as
/// `/AdditionalFields/server_name`), showing the event and the test's diagnostics otherwise.
#[track_caller]
pub fn check_field<T>(env: &Env, event: &Value, key: &str, expected: T)
where
    Value: PartialEq<T>,
    T: std::fmt::Debug,
{
    let actual = if key.starts_with('/') {
        event.pointer(key).unwrap_or(&Value::Null)
    } else {
        &event[key]
    };
    assert!(
        *actual == expected,
        "{key}: expected {expected:?}, got {actual}\nevent: {event}\n{}",
        env.diagnostics()
    );
}

/// ActionType of an enforced block.
pub const BLOCKED: &str = "ExploitGuardNetworkProtectionBlocked";

/// An environment whose sensor blocks `bad.example` (a DomainName Block, id `i1`).
#[allow(
    clippy::expect_used,
    reason = "a test helper: an environment that cannot start fails the test that asked for it"
)]
pub fn start_blocking_bad() -> Env {
    Env::start_enforcing(
        "block",
        &[indicators::indicator(
            "i1",
            "DomainName",
            "bad.example",
            "Block",
        )],
        &[],
    )
    .expect("test environment with the sensor")
}

/// Asserts that the sensor reported no event matching `unwanted` for anything the test did
/// so far: makes a [`Barrier::http`] flow from the client of `world`, waits for its events
/// in `events` and checks the events written before them.
#[track_caller]
pub fn assert_absent_so_far(
    world: &impl ClientServer,
    events: &EventLog,
    what: &str,
    unwanted: impl Fn(&Value) -> bool,
) {
    Barrier::http(world, events).assert_absent(events, what, unwanted);
}

/// Waits for the event `what` matching `pred`; panics with every event and the sensor's
/// stderr.
#[track_caller]
pub fn wait_event(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    env.events()
        .wait_for_described(what, pred, EVENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

#[cfg(test)]
mod self_check {
    //! Checks of the harness itself; they need root but not the sensor.

    use super::*;

    /// Topology, nginx, curl (TLS vhosts, HTTP locations, both families), openssl,
    /// the raw ClientHello sender and a refused connect all work without a sensor.
    #[test]
    fn harness_self_check() {
        let env = Env::start_without_sensor().expect("harness environment");
        for v6 in [false, true] {
            for host in nginx::TLS_HOSTS {
                for port in nginx::TLS_PORTS {
                    let r = env.curl_https(host, port, v6, "/good").expect("curl https");
                    assert_eq!(r.http_code, 200, "{r:?}");
                    assert_eq!(r.body.trim(), nginx::BODY_GOOD);
                    assert!(r.local_port > 1024, "{r:?}");
                }
            }
            for port in nginx::HTTP_PORTS {
                let r = env
                    .curl_http("good.example", port, v6, "/bad/x", &["-A", "ua/1"])
                    .expect("curl http");
                assert_eq!((r.http_code, r.body.trim()), (200, nginx::BODY_BAD));
                let r = env
                    .curl_http("bad.example", port, v6, "/", &[])
                    .expect("curl /");
                assert_eq!((r.http_code, r.body.trim()), (200, nginx::BODY_ROOT));
            }
        }
        // The vhost's own certificate is served for its SNI.
        let out = env
            .openssl_s_client(443, false, "bad.example")
            .expect("openssl s_client");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("CN = bad.example"), "{text}");

        // Our ClientHellos are well-formed: nginx answers with a handshake record (0x16),
        // not an alert (0x15).
        let mut big = HelloSpec::new("big.example");
        big.pq_key_share = true;
        big.padding = 300;
        let big = client_hello(&big);
        let r = env
            .send_chunks(443, false, &[&big.bytes], Duration::ZERO)
            .expect("large hello");
        assert!(r.reply.starts_with("16"), "{r:?}");
        let small = client_hello(&HelloSpec::new("split.example"));
        let b = &small.bytes;
        let (a, c) = (small.extensions_start + 10, small.sni_name + 3);
        let r = env
            .send_chunks(
                8443,
                true,
                &[&b[..a], &b[a..c], &b[c..]],
                Duration::from_millis(50),
            )
            .expect("split hello");
        assert!(r.reply.starts_with("16"), "{r:?}");

        let port = env.connect_refused(9, false).expect("refused connect");
        assert!(port > 0);
        env.connect_refused(9, true).expect("refused connect v6");

        // Nothing is attached without a sensor; a TCX link we make ourselves is seen.
        let before = env.client_attachments().expect("attachments");
        assert!(!before.any(), "{before}");
        let (ns, dev) = (env.topo.client_ns.clone(), env.topo.client_if.clone());
        let during = netns::in_netns(&env.topo.client_ns, move || {
            let link_in = bpf::attach_pass_program(&dev, bpf::BPF_TCX_INGRESS)?;
            let link_out = bpf::attach_pass_program(&dev, bpf::BPF_TCX_EGRESS)?;
            let seen = bpf::attachments(&ns, &dev);
            drop((link_in, link_out));
            seen
        })
        .expect("netns")
        .expect("attach a test TCX program");
        eprintln!("with a test TCX link attached:\n{during}");
        assert_eq!(
            (during.tcx_ingress.len(), during.tcx_egress.len()),
            (1, 1),
            "{during}"
        );
        assert!(during.any());
        let after = env.client_attachments().expect("attachments");
        assert!(!after.any(), "closing the link detaches: {after}");
    }
}
