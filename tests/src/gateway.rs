//! A routed topology: client ↔ router ↔ server, three namespaces and two veth pairs, with
//! IPv4 and IPv6 forwarding in the router. The sensor runs in the router and sees the
//! client's flows as forwarded traffic, as a gateway sensor does.
//!
//! ```text
//!  client ns                 router ns (forwarding)                 server ns
//!  np<pid>c<n> ──veth── np<pid>rc<n>        np<pid>rs<n> ──veth── np<pid>s<n>
//!  198.18.1.2/24           198.18.1.1/24    198.18.2.1/24           198.18.2.2/24
//!  2001:db8:11::2/64       2001:db8:11::1   2001:db8:12::1          2001:db8:12::2/64
//! ```
//!
//! The client and the server have default routes (both families) via the router; these
//! addresses are the only ones in the three namespaces. Names are unique per test
//! (`np-<pid>-<n>-c|r|s`); everything is removed on drop, also on panic.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::MutexGuard,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    ClientServer, bpf,
    events::EventLog,
    netns::{add_namespace, delete_namespaces, ip, sysctl},
    nginx::Nginx,
    process::run_ok,
    recorder::ConnRecorder,
    sensor::{Sensor, StderrLog},
};

/// The three namespaces, the two veth pairs and their addresses.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// The test's number (the `<n>` in the names).
    pub n: u32,
    /// Client namespace (`np-<pid>-<n>-c`); curl runs here.
    pub client_ns: String,
    /// Router namespace (`np-<pid>-<n>-r`), forwarding; the sensor runs here.
    pub router_ns: String,
    /// Server namespace (`np-<pid>-<n>-s`); nginx runs here.
    pub server_ns: String,
    /// The client's veth.
    pub client_if: String,
    /// The router's veth towards the client.
    pub router_client_if: String,
    /// The router's veth towards the server.
    pub router_server_if: String,
    /// The server's veth.
    pub server_if: String,
    /// `198.18.1.2`
    pub client_v4: Ipv4Addr,
    /// `2001:db8:11::2`
    pub client_v6: Ipv6Addr,
    /// `198.18.1.1` (the client's gateway)
    pub router_client_v4: Ipv4Addr,
    /// `2001:db8:11::1`
    pub router_client_v6: Ipv6Addr,
    /// `198.18.2.1` (the server's gateway)
    pub router_server_v4: Ipv4Addr,
    /// `2001:db8:12::1`
    pub router_server_v6: Ipv6Addr,
    /// `198.18.2.2`
    pub server_v4: Ipv4Addr,
    /// `2001:db8:12::2`
    pub server_v6: Ipv6Addr,
    created: bool,
}

impl Gateway {
    /// Creates the namespaces, links, addresses, routes and forwarding for test `n`.
    /// Dropping the value deletes the namespaces again (also after a partial failure).
    pub fn create(n: u32) -> Result<Gateway> {
        let pid = std::process::id();
        let v6 = |net: u16, host: u16| Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, host);
        let mut gw = Gateway {
            n,
            client_ns: format!("np-{pid}-{n}-c"),
            router_ns: format!("np-{pid}-{n}-r"),
            server_ns: format!("np-{pid}-{n}-s"),
            client_if: format!("np{pid}c{n}"),
            router_client_if: format!("np{pid}rc{n}"),
            router_server_if: format!("np{pid}rs{n}"),
            server_if: format!("np{pid}s{n}"),
            client_v4: Ipv4Addr::new(198, 18, 1, 2),
            client_v6: v6(0x11, 2),
            router_client_v4: Ipv4Addr::new(198, 18, 1, 1),
            router_client_v6: v6(0x11, 1),
            router_server_v4: Ipv4Addr::new(198, 18, 2, 1),
            router_server_v6: v6(0x12, 1),
            server_v4: Ipv4Addr::new(198, 18, 2, 2),
            server_v6: v6(0x12, 2),
            created: false,
        };
        if gw.router_client_if.len() > 15 {
            bail!("interface name {} is too long", gw.router_client_if);
        }
        gw.created = true;
        gw.build()?;
        Ok(gw)
    }

    fn build(&self) -> Result<()> {
        for ns in [&self.client_ns, &self.router_ns, &self.server_ns] {
            add_namespace(ns)?;
        }
        sysctl(&self.router_ns, "net/ipv4/ip_forward", "1")?;
        sysctl(&self.router_ns, "net/ipv6/conf/all/forwarding", "1")?;
        for (ns_a, if_a, ns_b, if_b) in [
            (
                &self.client_ns,
                &self.client_if,
                &self.router_ns,
                &self.router_client_if,
            ),
            (
                &self.router_ns,
                &self.router_server_if,
                &self.server_ns,
                &self.server_if,
            ),
        ] {
            ip(&[
                "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns",
                ns_b,
            ])?;
        }
        let ends = [
            (
                &self.client_ns,
                &self.client_if,
                self.client_v4,
                self.client_v6,
            ),
            (
                &self.router_ns,
                &self.router_client_if,
                self.router_client_v4,
                self.router_client_v6,
            ),
            (
                &self.router_ns,
                &self.router_server_if,
                self.router_server_v4,
                self.router_server_v6,
            ),
            (
                &self.server_ns,
                &self.server_if,
                self.server_v4,
                self.server_v6,
            ),
        ];
        // Links up first, addresses after: IPv6 neighbour discovery then works at once.
        for (ns, dev, _, _) in ends {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        for (ns, dev, v4, v6) in ends {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            let v6 = format!("{v6}/64");
            ip(&["-n", ns, "-6", "addr", "add", &v6, "dev", dev, "nodad"])?;
        }
        for (ns, via4, via6) in [
            (
                &self.client_ns,
                self.router_client_v4,
                self.router_client_v6,
            ),
            (
                &self.server_ns,
                self.router_server_v4,
                self.router_server_v6,
            ),
        ] {
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &via4.to_string(),
            ])?;
            ip(&[
                "-n",
                ns,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &via6.to_string(),
            ])?;
        }
        Ok(())
    }

    /// The client's address of the given family.
    pub fn client_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.client_v6)
        } else {
            IpAddr::V4(self.client_v4)
        }
    }

    /// The server's address of the given family.
    pub fn server_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.server_v6)
        } else {
            IpAddr::V4(self.server_v4)
        }
    }

    /// Kills every process left in the namespaces and deletes them; errors are collected
    /// (this runs from `Drop`).
    pub fn destroy(&mut self) -> Vec<String> {
        if !self.created {
            return Vec::new();
        }
        self.created = false;
        delete_namespaces(&[&self.client_ns, &self.router_ns, &self.server_ns])
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for e in self.destroy() {
            eprintln!("nprot-tests cleanup: {e}");
        }
    }
}

/// A TCP socket as `ss -tan` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketLine {
    /// `ESTAB`, `SYN-RECV`, `FIN-WAIT-1`, `TIME-WAIT`, …
    pub state: String,
    /// Local address:port as printed.
    pub local: String,
    /// Peer address:port as printed.
    pub peer: String,
}

/// The TCP sockets (listeners excluded) in the namespace `ns` whose peer port is `port`.
pub fn sockets_with_peer_port(ns: &str, port: u16) -> Result<Vec<SocketLine>> {
    let out = run_ok(
        Command::new("ip").args(["netns", "exec", ns, "ss", "-Htan"]),
        Duration::from_secs(5),
    )?;
    let suffix = format!(":{port}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            match cols[..] {
                [state, _, _, local, peer, ..] if state != "LISTEN" && peer.ends_with(&suffix) => {
                    Some(SocketLine {
                        state: state.to_owned(),
                        local: local.to_owned(),
                        peer: peer.to_owned(),
                    })
                }
                _ => None,
            }
        })
        .collect())
}

/// One gateway test's world: the [`Gateway`] topology, nginx in the server namespace
/// (listening on the server's addresses; readiness is probed from the client, through
/// the router), optionally a [`ConnRecorder`] in the server namespace and the sensor in
/// the router namespace, and a temp dir.
pub struct GatewayEnv {
    /// Namespaces, interfaces and addresses.
    pub net: Gateway,
    /// nginx in the server namespace.
    pub nginx: Option<Nginx>,
    /// The connection recorder in the server namespace, if started.
    pub recorder: Option<ConnRecorder>,
    /// The sensor (in the router namespace), if started.
    pub sensor: Option<Sensor>,
    events: EventLog,
    dir: PathBuf,
    // Declared last so it is released after everything else is torn down.
    _serial: MutexGuard<'static, ()>,
}

impl ClientServer for GatewayEnv {
    fn client_ns(&self) -> &str {
        &self.net.client_ns
    }

    fn server_ns(&self) -> &str {
        &self.net.server_ns
    }

    fn server_ip(&self, v6: bool) -> IpAddr {
        self.net.server_ip(v6)
    }
}

impl GatewayEnv {
    /// Builds the topology and starts nginx, without the sensor.
    pub fn start_without_sensor() -> Result<GatewayEnv> {
        crate::require_root()?;
        let (serial, n, dir) = crate::begin_test()?;
        let mut env = GatewayEnv {
            net: Gateway::create(n).context("cannot build the gateway network")?,
            nginx: None,
            recorder: None,
            sensor: None,
            events: EventLog::new(&dir.join("events.jsonl"), StderrLog::default()),
            dir,
            _serial: serial,
        };
        let addrs = [env.net.server_ip(false), env.net.server_ip(true)];
        env.nginx = Some(
            Nginx::start_in(&env.net.server_ns, &env.net.client_ns, &addrs, &env.dir)
                .context("nginx behind the router")?,
        );
        Ok(env)
    }

    /// Starts a [`ConnRecorder`] on `port` of both server addresses.
    pub fn start_recorder(&mut self, port: u16, linger: Duration) -> Result<&ConnRecorder> {
        if self.recorder.is_some() {
            bail!("recorder already started");
        }
        let addrs = [false, true].map(|v6| SocketAddr::new(self.net.server_ip(v6), port));
        let recorder = ConnRecorder::start(&self.net.server_ns, &addrs, linger)?;
        Ok(self.recorder.insert(recorder))
    }

    /// The recorder, or an error if it was not started.
    pub fn recorder(&self) -> Result<&ConnRecorder> {
        self.recorder.as_ref().context("recorder not started")
    }

    /// Starts the sensor in the router namespace guarding `interfaces` (events to
    /// `<dir>/events.jsonl`) and waits for it to be ready.
    pub fn start_sensor(&mut self, interfaces: &[&str], extra_args: &[&str]) -> Result<()> {
        let ns = self.net.router_ns.clone();
        self.start_sensor_in(&ns, interfaces, extra_args)
    }

    /// Starts the sensor in the namespace `ns` (one of this topology's) guarding
    /// `interfaces` there, like [`GatewayEnv::start_sensor`].
    pub fn start_sensor_in(
        &mut self,
        ns: &str,
        interfaces: &[&str],
        extra_args: &[&str],
    ) -> Result<()> {
        if self.sensor.is_some() {
            bail!("sensor already started");
        }
        let sensor = Sensor::start_in(ns, interfaces, self.events.path(), extra_args)?;
        self.events = EventLog::new(self.events.path(), sensor.stderr().clone());
        self.sensor = Some(sensor);
        Ok(())
    }

    /// Writes `indicators` to `<dir>/indicators.json` and starts the sensor in the router
    /// with `--mode MODE --indicators <that file>` plus `extra_args`.
    pub fn enforce(
        &mut self,
        mode: &str,
        indicators: &[Value],
        interfaces: &[&str],
        extra_args: &[&str],
    ) -> Result<()> {
        let ns = self.net.router_ns.clone();
        self.enforce_in(&ns, mode, indicators, interfaces, extra_args)
    }

    /// [`GatewayEnv::enforce`] with the sensor in the namespace `ns`.
    pub fn enforce_in(
        &mut self,
        ns: &str,
        mode: &str,
        indicators: &[Value],
        interfaces: &[&str],
        extra_args: &[&str],
    ) -> Result<()> {
        let file = crate::indicators::write_file(&self.dir, "indicators.json", indicators)?;
        let file = file.to_string_lossy().into_owned();
        let mut args = vec!["--mode", mode, "--indicators", &file];
        args.extend_from_slice(extra_args);
        self.start_sensor_in(ns, interfaces, &args)
    }

    /// The sensor, or an error if it was not started.
    pub fn sensor_mut(&mut self) -> Result<&mut Sensor> {
        self.sensor.as_mut().context("sensor not started")
    }

    /// The sensor's event file.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// The per-test temp dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The client's address of the given family.
    pub fn client_ip(&self, v6: bool) -> IpAddr {
        self.net.client_ip(v6)
    }

    /// The server's address of the given family.
    pub fn server_ip(&self, v6: bool) -> IpAddr {
        self.net.server_ip(v6)
    }

    /// What is attached to the router's interface `dev`.
    pub fn router_attachments(&self, dev: &str) -> Result<bpf::Attachments> {
        bpf::attachments(&self.net.router_ns, dev)
    }

    /// Waits up to `timeout` until the server namespace has no TCP socket left whose peer
    /// is the client port `port` (a reset removes it at once); returns how long that
    /// took, or an error listing the sockets still there.
    pub fn wait_server_socket_gone(&self, port: u16, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let left = sockets_with_peer_port(&self.net.server_ns, port)?;
            if left.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                bail!(
                    "the server still has a socket for client port {port} after {timeout:?}: \
                     {left:?}"
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sensor stderr and the events so far, for `expect` messages.
    pub fn diagnostics(&self) -> String {
        let mut s = self.events.dump();
        if let Some(recorder) = &self.recorder {
            s.push_str("\nrecorder output:\n");
            s.push_str(&recorder.log());
        }
        s
    }
}

impl Drop for GatewayEnv {
    fn drop(&mut self) {
        if let Some(sensor) = self.sensor.as_mut()
            && let Err(e) = sensor.stop(Duration::from_secs(3))
        {
            eprintln!("nprot-tests cleanup: {e:#}");
        }
        self.sensor = None;
        self.recorder = None;
        self.nginx = None;
        for e in self.net.destroy() {
            eprintln!("nprot-tests cleanup: {e}");
        }
        crate::remove_test_dir(&self.dir);
    }
}
