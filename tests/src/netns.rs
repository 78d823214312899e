//! The test network: a client and a server network namespace joined by a veth pair.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

use crate::process::{pid_alive, run_ok, run_with_timeout, signal};

/// Bound for one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `f` on a fresh thread that has joined the network namespace `ns` (a name under
/// `/run/netns`). Sockets made in `f` belong to that namespace; the rest of the process
/// is not affected.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = format!("/run/netns/{ns}");
    thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T> {
                let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
                // Only this thread changes namespace, and it ends when `f` returns.
                setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns({path})"))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// Names and addresses of one test's network. Everything is unique per test
/// (process id and a counter), so a leftover of a crashed run never collides.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The test's number (the `<n>` in the names).
    pub n: u32,
    /// Client namespace (`np-<pid>-<n>-c`); the sensor and the clients run here.
    pub client_ns: String,
    /// Server namespace (`np-<pid>-<n>-s`); nginx runs here.
    pub server_ns: String,
    /// The veth end in the client namespace: the interface the sensor guards.
    pub client_if: String,
    /// The veth end in the server namespace.
    pub server_if: String,
    /// Client IPv4 address, `198.18.<octet>.1` (octet 10–249: the subnets below 10 are
    /// left to topologies with fixed addresses, such as [`crate::tunnel`]).
    pub client_v4: Ipv4Addr,
    /// Server IPv4 address, `198.18.<octet>.2`.
    pub server_v4: Ipv4Addr,
    /// Client IPv6 address, `2001:db8:<octet>::1`.
    pub client_v6: Ipv6Addr,
    /// Server IPv6 address, `2001:db8:<octet>::2`.
    pub server_v6: Ipv6Addr,
    created: bool,
}

impl Topology {
    /// Creates both namespaces, the veth pair and the addresses for test number `n`.
    /// Dropping the value deletes the namespaces again (also after a partial failure).
    pub fn create(n: u32) -> Result<Topology> {
        let pid = std::process::id();
        let octet = u8::try_from(n % 240 + 10).unwrap_or(10);
        let mut topo = Topology {
            n,
            client_ns: format!("np-{pid}-{n}-c"),
            server_ns: format!("np-{pid}-{n}-s"),
            client_if: format!("np{pid}c{n}"),
            server_if: format!("np{pid}s{n}"),
            client_v4: Ipv4Addr::new(198, 18, octet, 1),
            server_v4: Ipv4Addr::new(198, 18, octet, 2),
            client_v6: Ipv6Addr::new(0x2001, 0xdb8, u16::from(octet), 0, 0, 0, 0, 1),
            server_v6: Ipv6Addr::new(0x2001, 0xdb8, u16::from(octet), 0, 0, 0, 0, 2),
            created: false,
        };
        if topo.client_if.len() > 15 || topo.server_if.len() > 15 {
            bail!("interface name {} is too long", topo.client_if);
        }
        topo.created = true;
        topo.build()?;
        Ok(topo)
    }

    fn build(&self) -> Result<()> {
        add_namespace(&self.client_ns)?;
        add_namespace(&self.server_ns)?;
        ip(&[
            "link",
            "add",
            &self.client_if,
            "netns",
            &self.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            &self.server_if,
            "netns",
            &self.server_ns,
        ])?;
        let ends = [
            (
                &self.client_ns,
                &self.client_if,
                self.client_v4,
                self.client_v6,
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
            ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
        }
        Ok(())
    }

    /// The server's address of the given family.
    pub fn server_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.server_v6)
        } else {
            IpAddr::V4(self.server_v4)
        }
    }

    /// The client's address of the given family.
    pub fn client_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.client_v6)
        } else {
            IpAddr::V4(self.client_v4)
        }
    }

    /// A `Command` that runs `program` inside the client namespace.
    pub fn client_cmd(&self, program: &str) -> Command {
        netns_cmd(&self.client_ns, program)
    }

    /// A `Command` that runs `program` inside the server namespace.
    pub fn server_cmd(&self, program: &str) -> Command {
        netns_cmd(&self.server_ns, program)
    }

    /// Polls TCP connects from the client namespace to every `(address, port)` until all
    /// succeed or `timeout` passes.
    pub fn wait_tcp_ready(&self, targets: &[SocketAddr], timeout: Duration) -> Result<()> {
        wait_tcp_ready_in(&self.client_ns, targets, timeout)
    }

    /// Kills every process still inside either namespace (SIGKILL), then deletes the
    /// namespaces. Errors are collected, not fatal: this runs from `Drop`.
    pub fn destroy(&mut self) -> Vec<String> {
        if !self.created {
            return Vec::new();
        }
        self.created = false;
        delete_namespaces(&[&self.client_ns, &self.server_ns])
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for e in self.destroy() {
            eprintln!("nprot-tests cleanup: {e}");
        }
    }
}

/// Polls TCP connects from the namespace `ns` to every `(address, port)` until all
/// succeed or `timeout` passes.
pub fn wait_tcp_ready_in(ns: &str, targets: &[SocketAddr], timeout: Duration) -> Result<()> {
    let targets = targets.to_vec();
    in_netns(ns, move || -> Result<()> {
        let deadline = Instant::now() + timeout;
        for target in targets {
            loop {
                match TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
                    Ok(_) => break,
                    Err(e) if Instant::now() >= deadline => {
                        bail!("{target} not reachable within {timeout:?}: {e}")
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        Ok(())
    })?
}

/// Creates the namespace `ns` with IPv6 duplicate address detection off (link-local
/// addresses included: with it, neighbour discovery stalls for about a second after a
/// link comes up) and its loopback up.
pub fn add_namespace(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    for conf in ["all", "default"] {
        sysctl(ns, &format!("net/ipv6/conf/{conf}/accept_dad"), "0")?;
    }
    ip(&["-n", ns, "link", "set", "lo", "up"])
}

/// Writes `value` to `/proc/sys/<key>` inside the namespace `ns` (`key` like
/// `net/ipv4/ip_forward`).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    in_netns(ns, move || {
        std::fs::write(&path, value).with_context(|| format!("cannot write {path} in {ns}"))
    })?
}

/// Kills the processes left in each namespace and deletes it; errors are collected (this
/// runs from `Drop`).
pub fn delete_namespaces(namespaces: &[&str]) -> Vec<String> {
    let mut errors = Vec::new();
    for ns in namespaces {
        kill_netns_pids(ns);
        if let Err(e) = ip(&["netns", "del", ns]) {
            errors.push(format!("{e:#}"));
        }
    }
    errors
}

/// The ARPHRD type of `dev` in the namespace `ns`, from `/sys/class/net/DEV/type` (as the
/// sensor reads it: `ip netns exec` mounts that namespace's sysfs): 1 Ethernet, 772
/// loopback, 65534 none (tun), …
pub fn link_type(ns: &str, dev: &str) -> Result<u32> {
    let out = run_ok(
        netns_cmd(ns, "cat").arg(format!("/sys/class/net/{dev}/type")),
        IP_TIMEOUT,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("link type of {dev} in {ns}: {text:?}"))
}

/// A `Command` that runs `program` inside the namespace `ns` (`ip netns exec`).
pub fn netns_cmd(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

/// Runs `ip ARGS…`, failing with its stderr if it does not exit 0.
pub fn ip(args: &[&str]) -> Result<()> {
    run_ok(Command::new("ip").args(args), IP_TIMEOUT).map(drop)
}

/// Process ids inside the namespace `ns` (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<u32> {
    match run_with_timeout(Command::new("ip").args(["netns", "pids", ns]), IP_TIMEOUT) {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// SIGKILLs the processes left in a namespace the harness made, and waits (bounded) for
/// them to be gone.
fn kill_netns_pids(ns: &str) {
    let pids = netns_pids(ns);
    for &pid in &pids {
        let _ = signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&p| pid_alive(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

/// Deletes namespaces named like this harness's (`np-<pid>-<n>-c|r|s`) whose creating
/// process no longer exists: leftovers of a run that was killed before it could clean up.
pub fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = stale_owner(&name) else {
            continue;
        };
        if pid != std::process::id() && !pid_alive(pid) {
            kill_netns_pids(&name);
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// The pid in a name `np-<pid>-<n>-c`, `-r`, `-s` or `-nats` (a
/// [`crate::fleet::NatsCluster`]'s).
pub(crate) fn stale_owner(name: &str) -> Option<u32> {
    let mut parts = name.split('-');
    let (Some("np"), Some(pid), Some(n), Some("c" | "r" | "s" | "nats"), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::stale_owner;

    #[test]
    fn stale_owner_parses_only_harness_names() {
        assert_eq!(stale_owner("np-123-4-c"), Some(123));
        assert_eq!(stale_owner("np-123-4-s"), Some(123));
        assert_eq!(stale_owner("np-123-4-r"), Some(123));
        assert_eq!(stale_owner("np-123-4-x"), None);
        assert_eq!(stale_owner("np-abc-4-c"), None);
        assert_eq!(stale_owner("np-1-2-c-d"), None);
        assert_eq!(stale_owner("other"), None);
    }
}
