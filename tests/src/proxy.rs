//! A real forward proxy from Debian — tinyproxy, or squid where a test needs kept-alive
//! client connections (tinyproxy closes after each request) — between client and
//! server: it runs in the router namespace of a [`GatewayEnv`] and resolves the test's
//! names to the server through a hosts file (squid's `hosts_file`; for tinyproxy
//! `/etc/netns/<ns>/hosts`, which `ip netns exec` binds over `/etc/hosts`). The sensor
//! runs in the client namespace, so for it every flow goes to the proxy and only the
//! bytes tell where to.
//!
//! ```text
//!  client ns (curl, sensor) ── router ns (proxy :8888) ── server ns (nginx)
//! ```

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    clients::url_host,
    gateway::GatewayEnv,
    netns::{netns_cmd, wait_tcp_ready_in},
    nginx::TLS_HOSTS,
    process::{run_with_timeout, terminate},
};

/// The proxy's port.
pub const PROXY_PORT: u16 = 8888;
/// How long tinyproxy gets to listen.
const PROXY_READY: Duration = Duration::from_secs(5);
/// Bound on one curl run (several transfers).
const CURL_TIMEOUT: Duration = Duration::from_secs(20);

/// Which proxy runs in the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// tinyproxy: one request per client connection.
    Tinyproxy,
    /// squid: kept-alive client connections.
    Squid,
}

/// A gateway topology with a forward proxy in the router.
pub struct ProxyEnv {
    /// Client, router (proxy) and server namespaces, nginx, the sensor once started.
    pub gw: GatewayEnv,
    proxy: Option<Child>,
    /// `/etc/netns/<router ns>`, removed on drop.
    netns_etc: PathBuf,
}

/// One transfer of a curl run through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The client's port towards the proxy: equal across transfers that shared a connection.
    pub local_port: u16,
    /// The response status (0 if none).
    pub http_code: u16,
    /// Response body bytes the client received.
    pub size_download: u64,
    /// curl's exit code for this transfer (0 = success, 56 = connection reset, …).
    pub exit_code: i32,
    /// New connections this transfer opened (0 when it reused one).
    pub num_connects: u32,
    /// curl's error message for this transfer (`%{errormsg}`; empty on success).
    pub errormsg: String,
}

impl ProxyEnv {
    /// Builds the topology, starts nginx and the proxy; the sensor is started with
    /// [`ProxyEnv::enforce`].
    pub fn start(kind: ProxyKind) -> Result<ProxyEnv> {
        let gw = GatewayEnv::start_without_sensor()?;
        let netns_etc = PathBuf::from("/etc/netns").join(&gw.net.router_ns);
        let mut env = ProxyEnv {
            gw,
            proxy: None,
            netns_etc,
        };
        fs::create_dir_all(&env.netns_etc)
            .with_context(|| format!("create {}", env.netns_etc.display()))?;
        let server = env.gw.server_ip(false);
        let hosts = format!(
            "127.0.0.1 localhost\n{server} {} www.bad.example\n",
            TLS_HOSTS.join(" ")
        );
        fs::write(env.netns_etc.join("hosts"), &hosts).context("hosts file of the router")?;
        env.start_proxy(kind, &hosts)?;
        Ok(env)
    }

    fn start_proxy(&mut self, kind: ProxyKind, hosts: &str) -> Result<()> {
        let dir = self.gw.dir().join("proxy");
        fs::create_dir_all(&dir)?;
        let mut cmd = match kind {
            ProxyKind::Tinyproxy => {
                let conf = dir.join("tinyproxy.conf");
                // No Listen line: every address of the router namespace (v4 and v6).
                let config = format!(
                    "Port {PROXY_PORT}\nTimeout 30\nMaxClients 64\nLogLevel Info\n\
                     Allow 198.18.1.0/24\nAllow 2001:db8:11::/64\n\
                     ConnectPort 443\nConnectPort 8443\nDisableViaHeader Yes\n"
                );
                fs::write(&conf, config)?;
                let mut cmd = netns_cmd(&self.gw.net.router_ns, "tinyproxy");
                cmd.arg("-d").arg("-c").arg(&conf);
                cmd
            }
            ProxyKind::Squid => {
                // Squid drops to its own user: it must write its logs here.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
                fs::write(dir.join("hosts"), hosts)?;
                let d = dir.display();
                let config = format!(
                    "http_port {PROXY_PORT}\n\
                     acl clients src 198.18.1.0/24 2001:db8:11::/64\n\
                     http_access allow clients\nhttp_access deny all\n\
                     cache deny all\ncache_mem 8 MB\npinger_enable off\n\
                     pid_filename {d}/squid.pid\naccess_log stdio:{d}/access.log\n\
                     cache_log {d}/proxy.log\ncache_store_log none\n\
                     hosts_file {d}/hosts\ndns_nameservers 127.0.0.1\n\
                     coredump_dir {d}\nshutdown_lifetime 0 seconds\n"
                );
                let conf = dir.join("squid.conf");
                fs::write(&conf, config)?;
                let mut cmd = netns_cmd(&self.gw.net.router_ns, "squid");
                cmd.arg("-N").arg("-f").arg(&conf);
                cmd
            }
        };
        let log = fs::File::create(dir.join("proxy.out"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {kind:?} (apt packages tinyproxy, squid)"))?;
        self.proxy = Some(child);
        let addrs = [false, true].map(|v6| SocketAddr::new(self.proxy_ip(v6), PROXY_PORT));
        wait_tcp_ready_in(&self.gw.net.client_ns, &addrs, PROXY_READY)
            .with_context(|| format!("{kind:?} not listening; log:\n{}", self.proxy_log()))
    }

    /// The proxy's address the client uses.
    pub fn proxy_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.gw.net.router_client_v6.into()
        } else {
            self.gw.net.router_client_v4.into()
        }
    }

    /// `ip:port` of the proxy as events name it (`proxy_authority`).
    pub fn proxy_authority(&self, v6: bool) -> String {
        SocketAddr::new(self.proxy_ip(v6), PROXY_PORT).to_string()
    }

    /// Starts the sensor in the client namespace on the client's interface, with
    /// `indicators` in `mode`.
    pub fn enforce(&mut self, mode: &str, indicators: &[Value], extra_args: &[&str]) -> Result<()> {
        let ns = self.gw.net.client_ns.clone();
        let dev = self.gw.net.client_if.clone();
        self.gw
            .enforce_in(&ns, mode, indicators, &[&dev], extra_args)
    }

    /// Runs one curl through the proxy for all `urls` (one connection to the proxy
    /// where curl can reuse it), each body discarded; one [`Transfer`] per URL.
    pub fn curl(&self, v6: bool, urls: &[&str], extra: &[&str]) -> Result<Vec<Transfer>> {
        let proxy = format!("http://{}:{PROXY_PORT}", url_host(self.proxy_ip(v6)));
        let mut cmd = netns_cmd(&self.gw.net.client_ns, "curl");
        cmd.args(["-sS", "-k", "--max-time", "5", "-x", &proxy])
            .args([
                "-w",
                "transfer: %{local_port} %{http_code} %{size_download} %{exitcode} %{num_connects} \
                 %{errormsg}\n",
            ])
            .args(extra);
        for url in urls {
            cmd.args(["-o", "/dev/null", url]);
        }
        let out = run_with_timeout(&mut cmd, CURL_TIMEOUT)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let transfers: Vec<Transfer> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("transfer: "))
            .map(parse_transfer)
            .collect::<Result<_>>()?;
        if transfers.len() != urls.len() {
            bail!(
                "curl reported {} transfers for {} URLs ({}): {stdout}{}",
                transfers.len(),
                urls.len(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(transfers)
    }

    /// `openssl s_client -proxy` through the proxy: CONNECT to `connect`
    /// (`host:port`), then a ClientHello with `sni`; stdin closed. Returns its output.
    pub fn openssl_via_proxy(&self, connect: &str, sni: &str) -> Result<std::process::Output> {
        let proxy = SocketAddr::new(self.proxy_ip(false), PROXY_PORT).to_string();
        let mut cmd = netns_cmd(&self.gw.net.client_ns, "openssl");
        cmd.args(["s_client", "-proxy", &proxy, "-connect", connect])
            .args(["-servername", sni])
            .stdin(Stdio::null());
        run_with_timeout(&mut cmd, CURL_TIMEOUT)
    }

    /// What the proxy logged.
    pub fn proxy_log(&self) -> String {
        let dir = self.gw.dir().join("proxy");
        ["proxy.out", "proxy.log", "access.log"]
            .iter()
            .filter_map(|f| fs::read_to_string(dir.join(f)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sensor stderr, events and the proxy's log, for assertion messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "{}\n--- proxy log ---\n{}",
            self.gw.diagnostics(),
            self.proxy_log()
        )
    }
}

fn parse_transfer(line: &str) -> Result<Transfer> {
    // Five numbers, then the error message (which has spaces, or is empty).
    let f: Vec<&str> = line.splitn(6, ' ').collect();
    let num = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("curl trailer {line:?}: field {i}"))
    };
    Ok(Transfer {
        local_port: u16::try_from(num(0)?)?,
        http_code: u16::try_from(num(1)?)?,
        size_download: num(2)?,
        exit_code: i32::try_from(num(3)?)?,
        num_connects: u32::try_from(num(4)?)?,
        errormsg: f.get(5).map_or("", |m| m.trim()).to_owned(),
    })
}

impl Drop for ProxyEnv {
    fn drop(&mut self) {
        if let Some(mut child) = self.proxy.take() {
            let _ = terminate(&mut child, Duration::from_secs(2));
        }
        let _ = fs::remove_dir_all(&self.netns_etc);
        // Only if no other namespace has files there.
        let _ = fs::remove_dir("/etc/netns");
    }
}
