//! A NATS JetStream cluster for the fleet tests: N real `nats-server` nodes (Debian's
//! package) in a network namespace of their own, `np-<pid>-<k>-nats`.
//!
//! ```text
//!  np-<pid>-<k>-nats                                     another namespace (attach)
//!  natsbr0 198.19.<o>.1/24 ── att<j> ──veth── np<pid>n<k>a<j> 198.19.<o>.<10+j>/24
//!  node i: client 198.19.<o>.1:4222+i, monitoring :8222+i, routes :6222+i
//! ```
//!
//! `<k>` is the harness's test counter (shared with [`crate::Topology`] numbers, so it is
//! unique in the process) and `<o> = k % 250 + 1`. Every node listens on the bridge's one
//! address, on its own ports; node `i` is `server_name: n<i>`, stores JetStream data in
//! `<dir>/nats-<i>-store` and logs to `<dir>/nats-<i>.log`. [`NatsCluster::attach`] joins
//! another namespace (a sensor's client namespace, say) to the bridge with a veth pair of
//! its own: not the interface a sensor guards, so NATS traffic is not inspected.
//! Everything is removed when the [`NatsCluster`] is dropped, also when a test panics.

use std::{
    fmt::Write as _,
    fs,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Once, atomic::Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    netns::{add_namespace, delete_namespaces, in_netns, ip, netns_cmd},
    process::terminate,
    require_root,
};

/// The cluster's name (`cluster { name: … }`).
pub const CLUSTER_NAME: &str = "nprot-test";
/// Node `i`'s client port is `CLIENT_PORT + i`.
pub const CLIENT_PORT: u16 = 4222;
/// Node `i`'s HTTP monitoring port is `MONITOR_PORT + i`.
pub const MONITOR_PORT: u16 = 8222;
/// Node `i`'s cluster (route) port is `ROUTE_PORT + i`.
pub const ROUTE_PORT: u16 = 6222;
/// How long [`NatsCluster::start`] waits for readiness (a fresh cluster elects its meta
/// leader within a second here).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`NatsCluster::restart`] and [`NatsCluster::restart_all`] wait: a cluster
/// recovering its Raft state elects with randomised election timeouts of several seconds,
/// and split votes repeat them (a full restart of 3 nodes took 4–20 s here, once more).
pub const RECOVERY_TIMEOUT: Duration = Duration::from_mins(1);
/// The most nodes a cluster may have (the port ranges stay apart, the log stays readable).
pub const MAX_NODES: usize = 32;

/// The bridge in the cluster's namespace.
const BRIDGE: &str = "natsbr0";
/// Interval between readiness probes (each failed `/healthz` also logs a warning).
const POLL: Duration = Duration::from_millis(100);
/// Bound for one monitoring request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(1);
/// Lines of each node's log in [`NatsCluster::log_tail`].
const TAIL_LINES: usize = 30;
/// What nats-server logs for each `/healthz` that fails.
const HEALTHCHECK_WARNING: &str = "Healthcheck failed";
/// Host part of the first attached namespace's address.
const FIRST_ATTACHED_HOST: u8 = 10;

static STALE_CLEANUP: Once = Once::new();

/// The `nats-server` binary: the first on `PATH`, else `/usr/bin/nats-server`.
pub fn nats_server_binary() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    let path = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/nats-server"));
    if !path.is_file() {
        bail!("nats-server not installed: run cargo xtask setup");
    }
    Ok(path)
}

/// One node: its files and, while it runs, its process.
#[derive(Debug)]
struct Node {
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A namespace joined to the bridge by [`NatsCluster::attach`].
#[derive(Debug)]
struct Attachment {
    ns: String,
    far_if: String,
}

/// What one probe of a node's monitoring endpoint found.
#[derive(Debug, Default)]
struct Probe {
    /// `/healthz` answered 200 with `"status":"ok"`.
    healthy: bool,
    /// `/jsz`'s `meta_cluster.leader`, when non-empty.
    leader: Option<String>,
    /// Why the node is not (yet) ready, for the error message.
    problem: String,
}

/// N `nats-server` nodes with JetStream, clustered (when N > 1), in their own namespace.
#[derive(Debug)]
pub struct NatsCluster {
    /// The namespace the nodes run in, `np-<pid>-<k>-nats`.
    pub ns: String,
    /// The cluster's number (the `<k>` in the names).
    pub n: u32,
    /// The bridge's address, `198.19.<o>.1`: every node listens on it.
    pub ip: Ipv4Addr,
    nodes: Vec<Node>,
    attached: Vec<Attachment>,
    created: bool,
}

impl NatsCluster {
    /// Creates the namespace and its bridge, writes `<dir>/nats-<i>.conf` for each of
    /// `nodes` nodes (with `authorization`, e.g. an `authorization { … }` or
    /// `accounts { … }` block, inserted verbatim at top level; empty for none), starts
    /// them and waits (at most [`READY_TIMEOUT`]) until every node reports JetStream
    /// healthy and, for a cluster, all agree on a meta leader. `dir` is created if
    /// missing and left in place (it is the caller's). Dropping the value stops
    /// everything, also after a partial failure.
    pub fn start(dir: &Path, nodes: usize, authorization: &str) -> Result<NatsCluster> {
        require_root()?;
        let bin = nats_server_binary()?;
        if nodes == 0 || nodes > MAX_NODES {
            bail!("a NATS cluster has 1 to {MAX_NODES} nodes, not {nodes}");
        }
        STALE_CLEANUP.call_once(remove_stale_nats_namespaces);
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let n = crate::COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
        let octet = u8::try_from(n % 250 + 1).unwrap_or(1);
        let mut cluster = NatsCluster {
            ns: format!("np-{}-{n}-nats", std::process::id()),
            n,
            ip: Ipv4Addr::new(198, 19, octet, 1),
            nodes: Vec::new(),
            attached: Vec::new(),
            // Before anything exists: a failure half-way still deletes what was made.
            created: true,
        };
        cluster.build()?;
        for i in 0..nodes {
            let conf = dir.join(format!("nats-{i}.conf"));
            let store = dir.join(format!("nats-{i}-store"));
            fs::create_dir_all(&store)
                .with_context(|| format!("cannot create {}", store.display()))?;
            fs::write(&conf, cluster.config(i, nodes, &store, authorization))
                .with_context(|| format!("cannot write {}", conf.display()))?;
            let log = dir.join(format!("nats-{i}.log"));
            // A fresh log per start; restarts append to it.
            fs::write(&log, "").with_context(|| format!("cannot create {}", log.display()))?;
            cluster.nodes.push(Node {
                conf,
                log,
                child: None,
            });
        }
        let started = Instant::now();
        for i in 0..nodes {
            cluster.spawn(&bin, i)?;
        }
        cluster
            .wait_ready(READY_TIMEOUT)
            .with_context(|| format!("NATS cluster {} did not become ready", cluster.ns))?;
        eprintln!(
            "nprot-tests: NATS cluster {} ({nodes} nodes, {}) ready in {:?}",
            cluster.ns,
            cluster.ip,
            started.elapsed()
        );
        Ok(cluster)
    }

    fn build(&self) -> Result<()> {
        add_namespace(&self.ns)?;
        ip(&["-n", &self.ns, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &self.ns, "link", "set", BRIDGE, "up"])?;
        ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{}/24", self.ip),
            "dev",
            BRIDGE,
        ])
    }

    /// Node `i`'s configuration file.
    fn config(&self, i: usize, nodes: usize, store: &Path, authorization: &str) -> String {
        let ip = self.ip;
        let (client, monitor, route) = (
            port(CLIENT_PORT, i),
            port(MONITOR_PORT, i),
            port(ROUTE_PORT, i),
        );
        // A JSON string is a valid NATS configuration string.
        let store = Value::from(store.to_string_lossy()).to_string();
        let mut c = String::new();
        // writeln! into a String cannot fail.
        let _ = writeln!(
            c,
            "# Written by nprot-tests (tests/src/fleet.rs).
server_name: n{i}
listen: \"{ip}:{client}\"
http: \"{ip}:{monitor}\"
jetstream {{
  store_dir: {store}
}}"
        );
        if nodes > 1 {
            let _ = writeln!(
                c,
                "cluster {{
  name: {CLUSTER_NAME}
  listen: \"{ip}:{route}\"
  routes: ["
            );
            // One per line: on one line NATS wants commas between them.
            for other in (0..nodes).filter(|&o| o != i) {
                let _ = writeln!(c, "    \"nats-route://{ip}:{}\"", port(ROUTE_PORT, other));
            }
            let _ = writeln!(c, "  ]\n}}");
        }
        let _ = writeln!(c, "{authorization}");
        c
    }

    /// Starts node `i` with its configuration, stdout and stderr appended to its log.
    fn spawn(&mut self, bin: &Path, i: usize) -> Result<()> {
        let ns = self.ns.clone();
        let node = self.node_mut(i)?;
        if node.child.is_some() {
            bail!("NATS node n{i} is already running");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("cannot open {}", node.log.display()))?;
        let err = log.try_clone().context("cannot duplicate the log file")?;
        let mut cmd = netns_cmd(&ns, &bin.to_string_lossy());
        // `ip netns exec` execs the program: the child's pid is nats-server's.
        cmd.arg("-c")
            .arg(&node.conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        node.child = Some(
            cmd.spawn()
                .with_context(|| format!("cannot start {cmd:?}"))?,
        );
        Ok(())
    }

    fn node(&self, i: usize) -> Result<&Node> {
        self.nodes
            .get(i)
            .with_context(|| format!("no NATS node n{i} (the cluster has {})", self.nodes.len()))
    }

    fn node_mut(&mut self, i: usize) -> Result<&mut Node> {
        let len = self.nodes.len();
        self.nodes
            .get_mut(i)
            .with_context(|| format!("no NATS node n{i} (the cluster has {len})"))
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s `server_name`, `n<i>` (what `meta_cluster.leader` names).
    pub fn server_name(i: usize) -> String {
        format!("n{i}")
    }

    /// Node `i`'s client address, `198.19.<o>.1:4222+i`.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), port(CLIENT_PORT, i))
    }

    /// Node `i`'s HTTP monitoring address, `198.19.<o>.1:8222+i`.
    pub fn monitor_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), port(MONITOR_PORT, i))
    }

    /// `nats://198.19.<o>.1:<4222+i>` for every node, in order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// Node `i`'s client URL, `nats://198.19.<o>.1:<4222+i>`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://{}", self.client_addr(i))
    }

    /// Node `i`'s log file, `<dir>/nats-<i>.log`.
    pub fn log_path(&self, i: usize) -> Option<&Path> {
        self.nodes.get(i).map(|n| n.log.as_path())
    }

    /// Whether node `i`'s process exists and has not exited (a zombie counts as exited).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes
            .get(i)
            .and_then(|n| n.child.as_ref())
            .is_some_and(|c| process_running(c.id()))
    }

    /// Kills node `i` (SIGKILL) and reaps it; nothing if it is not running or does not
    /// exist. Its store is left as it is, for [`NatsCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        let Some(mut child) = self.nodes.get_mut(i).and_then(|n| n.child.take()) else {
            return;
        };
        // It may have exited already: kill and wait reap it either way.
        let _ = child.kill();
        if let Err(e) = child.wait() {
            eprintln!("nprot-tests: cannot reap NATS node n{i}: {e}");
        }
    }

    /// Starts node `i` again with the same configuration and store, and waits (at most
    /// [`RECOVERY_TIMEOUT`]) until it and every other running node are healthy and agree on
    /// a meta leader, which needs a majority of the nodes running.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.node(i)?;
        if self.is_running(i) {
            bail!("NATS node n{i} is already running");
        }
        // Reap an exited process before starting the new one.
        self.kill(i);
        let bin = nats_server_binary()?;
        self.note_in_log(i, "restarted");
        self.spawn(&bin, i)?;
        self.wait_ready(RECOVERY_TIMEOUT)
            .with_context(|| format!("NATS node n{i} not ready after its restart"))?;
        Ok(())
    }

    /// Starts every node that is not running (after [`NatsCluster::stop_all`], say) and
    /// waits like [`NatsCluster::restart`].
    pub fn restart_all(&mut self) -> Result<()> {
        let bin = nats_server_binary()?;
        for i in 0..self.nodes.len() {
            if !self.is_running(i) {
                self.kill(i);
                self.note_in_log(i, "restarted");
                self.spawn(&bin, i)?;
            }
        }
        self.wait_ready(RECOVERY_TIMEOUT)
            .context("NATS cluster not ready after restarting its nodes")?;
        Ok(())
    }

    /// Stops every node: SIGTERM (nats-server shuts down cleanly), SIGKILL after 5 s.
    pub fn stop_all(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(mut child) = node.child.take()
                && let Err(e) = terminate(&mut child, Duration::from_secs(5))
            {
                eprintln!("nprot-tests: cannot stop NATS node n{i}: {e:#}");
            }
        }
    }

    /// Joins the namespace `ns` to the cluster's bridge with a new veth pair
    /// (`np<pid>n<k>a<j>` in `ns`, `att<j>` on the bridge), gives the far end
    /// `198.19.<o>.<10+j>/24` (`j` counts this cluster's attachments from 0), brings both
    /// ends up and returns that address. The pair is deleted with the cluster.
    pub fn attach(&mut self, ns: &str) -> Result<IpAddr> {
        let j = self.attached.len();
        let host = u8::try_from(j)
            .ok()
            .and_then(|j| j.checked_add(FIRST_ATTACHED_HOST))
            .filter(|&h| h < 255)
            .with_context(|| format!("too many namespaces attached to {}", self.ns))?;
        let far_if = format!("np{}n{}a{j}", std::process::id(), self.n);
        let near_if = format!("att{j}");
        if far_if.len() > 15 {
            bail!("interface name {far_if} is too long");
        }
        let addr = Ipv4Addr::new(198, 19, self.ip.octets()[2], host);
        ip(&[
            "link", "add", &far_if, "netns", ns, "type", "veth", "peer", "name", &near_if, "netns",
            &self.ns,
        ])
        .with_context(|| format!("cannot attach {ns} to {}", self.ns))?;
        // From here on the pair exists: Drop deletes it.
        self.attached.push(Attachment {
            ns: ns.to_owned(),
            far_if: far_if.clone(),
        });
        ip(&[
            "-n", &self.ns, "link", "set", &near_if, "master", BRIDGE, "up",
        ])?;
        ip(&["-n", ns, "link", "set", &far_if, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &far_if,
        ])?;
        Ok(IpAddr::V4(addr))
    }

    /// Node `i`'s monitoring endpoint `path` (e.g. `/jsz?streams=true`, `/varz`), parsed
    /// as JSON, whatever the HTTP status (`/healthz` answers 503 with a JSON body).
    pub fn monitor(&self, i: usize, path: &str) -> Result<Value> {
        self.node(i)?;
        let addr = self.monitor_addr(i);
        let path = path.to_owned();
        let (status, body) = in_netns(&self.ns, move || http_get(addr, &path))??;
        serde_json::from_str(&body)
            .with_context(|| format!("{addr}: HTTP {status}, not JSON: {body:?}"))
    }

    /// Whether node `i`'s `/healthz` answers 200 `ok` (JetStream enabled and, in a
    /// cluster, current with the meta leader).
    pub fn is_healthy(&self, i: usize) -> bool {
        self.node(i).is_ok() && self.probe(&[i]).first().is_some_and(|p| p.healthy)
    }

    /// The meta leader's `server_name` as node `i` sees it (`/jsz`'s
    /// `meta_cluster.leader`; `None` while there is none, or for a single node). A node
    /// may name a leader that has just been killed until it notices.
    pub fn meta_leader(&self, i: usize) -> Result<Option<String>> {
        let jsz = self.monitor(i, "/jsz")?;
        Ok(leader_of(&jsz))
    }

    /// Waits until every running node is healthy and (for a cluster) all of them name the
    /// same meta leader, itself a running node; returns its `server_name` (`None` for a
    /// single node). Fails at once if a node has exited, else after `timeout`, naming the
    /// first node that is not ready and showing the tail of its log.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        let clustered = self.nodes.len() > 1;
        loop {
            let running: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].child.is_some())
                .collect();
            if running.is_empty() {
                bail!("no NATS node of {} is running", self.ns);
            }
            if let Some(&gone) = running.iter().find(|&&i| !self.is_running(i)) {
                bail!(
                    "NATS node n{gone} exited; its log:\n{}",
                    self.node_log_tail(gone)
                );
            }
            let probes = self.probe(&running);
            let leader = probes.first().and_then(|p| p.leader.clone());
            let mut not_ready = None;
            for (&i, p) in running.iter().zip(&probes) {
                let problem = if !p.healthy {
                    p.problem.clone()
                } else if !clustered {
                    continue;
                } else if p.leader != leader {
                    format!(
                        "sees meta leader {:?}, n{} sees {leader:?}",
                        p.leader, running[0]
                    )
                } else if !running
                    .iter()
                    .any(|&r| leader.as_deref() == Some(Self::server_name(r).as_str()))
                {
                    format!("sees meta leader {leader:?}, which is not running")
                } else {
                    continue;
                };
                not_ready = Some((i, problem));
                break;
            }
            let Some((i, problem)) = not_ready else {
                return Ok(leader);
            };
            if Instant::now() >= deadline {
                bail!(
                    "NATS node n{i} not ready within {timeout:?}: {problem}; its log:\n{}",
                    self.node_log_tail(i)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Probes `/jsz` and `/healthz` of each of `nodes`, from inside the namespace.
    fn probe(&self, nodes: &[usize]) -> Vec<Probe> {
        let addrs: Vec<SocketAddr> = nodes.iter().map(|&i| self.monitor_addr(i)).collect();
        let clustered = self.nodes.len() > 1;
        let probed = in_netns(&self.ns, move || {
            addrs
                .iter()
                .map(|&addr| probe_node(addr, clustered))
                .collect()
        });
        probed.unwrap_or_else(|e| {
            nodes
                .iter()
                .map(|_| Probe {
                    problem: format!("cannot enter the namespace: {e:#}"),
                    ..Probe::default()
                })
                .collect()
        })
    }

    /// Appends a marker line to node `i`'s log (best effort: it is only for reading).
    fn note_in_log(&self, i: usize, what: &str) {
        if let Some(node) = self.nodes.get(i)
            && let Ok(mut f) = fs::OpenOptions::new().append(true).open(&node.log)
        {
            let _ = writeln!(f, "----- nprot-tests: n{i} {what} -----");
        }
    }

    /// The last lines of node `i`'s log, without the warnings of failed health checks.
    fn node_log_tail(&self, i: usize) -> String {
        let Some(node) = self.nodes.get(i) else {
            return String::new();
        };
        let text = match fs::read_to_string(&node.log) {
            Ok(text) => text,
            Err(e) => return format!("(cannot read {}: {e})", node.log.display()),
        };
        // The harness's own polling makes these; they would crowd out the rest.
        let (polls, lines): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|l| l.contains(HEALTHCHECK_WARNING));
        let mut tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
        if !polls.is_empty() {
            let _ = write!(
                tail,
                "\n({} `{HEALTHCHECK_WARNING}` lines of the harness's polling left out)",
                polls.len()
            );
        }
        tail
    }

    /// The last ~30 lines of every node's log (failed health checks, which the harness's
    /// polling causes, left out), each under a header, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let state = if self.is_running(i) {
                "running"
            } else {
                "stopped"
            };
            let _ = writeln!(
                out,
                "--- NATS node n{i} ({state}), {}:\n{}",
                node.log.display(),
                self.node_log_tail(i)
            );
        }
        out
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if !self.created {
            return;
        }
        self.created = false;
        // Deleting one end deletes the pair; done first, since the kernel removes the
        // devices of a deleted namespace asynchronously.
        for a in &self.attached {
            let ns_exists = Path::new("/run/netns").join(&a.ns).exists();
            if ns_exists
                && ip(&["-n", &a.ns, "link", "show", "dev", &a.far_if]).is_ok()
                && let Err(e) = ip(&["-n", &a.ns, "link", "del", "dev", &a.far_if])
            {
                eprintln!("nprot-tests cleanup: {e:#}");
            }
        }
        for e in delete_namespaces(&[&self.ns]) {
            eprintln!("nprot-tests cleanup: {e}");
        }
    }
}

/// `base + i` (nodes are at most [`MAX_NODES`], so this stays below the next range).
fn port(base: u16, i: usize) -> u16 {
    base + u16::try_from(i).unwrap_or(u16::MAX - base)
}

/// Whether `pid` exists and is neither a zombie nor dead (`/proc/<pid>/stat`'s state).
fn process_running(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S …`: the state follows the last ')' (comm may contain one).
    let state = stat
        .rfind(')')
        .and_then(|at| stat[at + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z" | "X" | "x"))
}

/// `meta_cluster.leader` of a `/jsz` answer, when non-empty.
fn leader_of(jsz: &Value) -> Option<String> {
    jsz.pointer("/meta_cluster/leader")
        .and_then(Value::as_str)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

/// `/jsz` and then `/healthz` of the node whose monitoring listens on `addr` (call inside
/// the namespace). In a cluster `/healthz` is asked only once the node knows a meta
/// leader: every failed health check writes a warning to the node's log, and an election
/// can take many polls.
fn probe_node(addr: SocketAddr, clustered: bool) -> Probe {
    let mut probe = Probe::default();
    match http_get(addr, "/jsz") {
        Ok((200, body)) => match serde_json::from_str::<Value>(&body) {
            Ok(jsz) => probe.leader = leader_of(&jsz),
            Err(e) => probe.problem = format!("/jsz: {e}: {body:?}"),
        },
        Ok((status, body)) => probe.problem = format!("/jsz: HTTP {status} {}", body.trim()),
        Err(e) => probe.problem = format!("/jsz: {e:#}"),
    }
    if !probe.problem.is_empty() {
        return probe;
    }
    if clustered && probe.leader.is_none() {
        return Probe {
            problem: "no meta leader".to_owned(),
            ..Probe::default()
        };
    }
    match http_get(addr, "/healthz") {
        Ok((200, body)) if body.contains("\"ok\"") => probe.healthy = true,
        Ok((status, body)) => probe.problem = format!("/healthz: HTTP {status} {}", body.trim()),
        Err(e) => probe.problem = format!("/healthz: {e:#}"),
    }
    probe
}

/// A plain HTTP/1.0 GET (the server closes the connection after the answer); returns the
/// status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .with_context(|| format!("cannot send to {addr}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("no answer from {addr}{path}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr}{path}: not an HTTP answer: {answer:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{addr}{path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Deletes namespaces left by killed runs, a [`NatsCluster`]'s (`np-<pid>-<n>-nats`)
/// among them ([`crate::netns::remove_stale_namespaces`]).
pub fn remove_stale_nats_namespaces() {
    crate::netns::remove_stale_namespaces();
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{NatsCluster, leader_of, process_running};
    use crate::netns::stale_owner;

    #[test]
    fn stale_owner_parses_only_cluster_names() {
        assert_eq!(stale_owner("np-123-4-nats"), Some(123));
        assert_eq!(stale_owner("np-123-4-c"), Some(123));
        assert_eq!(stale_owner("np-abc-4-nats"), None);
        assert_eq!(stale_owner("np-1-x-nats"), None);
        assert_eq!(stale_owner("np-1-2-nats-d"), None);
    }

    #[test]
    fn leader_needs_a_name() {
        let jsz = |v: &str| serde_json::from_str(v).unwrap();
        assert_eq!(
            leader_of(&jsz(r#"{"meta_cluster":{"leader":"n1"}}"#)),
            Some("n1".to_owned())
        );
        assert_eq!(leader_of(&jsz(r#"{"meta_cluster":{"leader":""}}"#)), None);
        assert_eq!(leader_of(&jsz(r#"{"meta_cluster":{}}"#)), None);
        assert_eq!(leader_of(&jsz("{}")), None);
    }

    #[test]
    fn this_process_runs() {
        assert!(process_running(std::process::id()));
        assert!(!process_running(u32::MAX));
    }

    #[test]
    fn config_has_routes_to_the_others_only() {
        let cluster = NatsCluster {
            ns: "np-1-1-nats".to_owned(),
            n: 1,
            ip: "198.19.2.1".parse().unwrap(),
            nodes: Vec::new(),
            attached: Vec::new(),
            created: false,
        };
        let auth = "authorization { token: \"s3cret\" }";
        let c = cluster.config(1, 3, Path::new("/tmp/x/nats-1-store"), auth);
        assert!(c.contains("server_name: n1\n"), "{c}");
        assert!(c.contains("listen: \"198.19.2.1:4223\""), "{c}");
        assert!(c.contains("http: \"198.19.2.1:8223\""), "{c}");
        assert!(c.contains("store_dir: \"/tmp/x/nats-1-store\""), "{c}");
        assert!(c.contains("listen: \"198.19.2.1:6223\""), "{c}");
        assert!(c.contains("\"nats-route://198.19.2.1:6222\"\n"), "{c}");
        assert!(c.contains("\"nats-route://198.19.2.1:6224\"\n"), "{c}");
        assert!(
            !c.contains("nats-route://198.19.2.1:6223"),
            "no route to itself: {c}"
        );
        assert!(c.contains(auth), "{c}");
        let single = cluster.config(0, 1, Path::new("/s"), "");
        assert!(!single.contains("cluster"), "{single}");
    }
}
