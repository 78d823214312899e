//! An L3-only device between the client and the server namespace: a TUN device
//! (`IFF_TUN`, ARPHRD 65534 "none": packets start at the IP header, no link-layer header)
//! in each namespace, joined by a small python3 relay per side that carries each packet
//! as one UDP datagram over the existing veth — a point-to-point tunnel like WireGuard's,
//! without the crypto.
//!
//! TUN is used because it is always there (`CONFIG_TUN`), whereas the kernel tunnels
//! (`ipip`, `gre`, `sit`, `ip6tnl`) are optional and often missing on test kernels
//! (absent on the machine these tests were written on, which has no loadable modules).
//!
//! Inner addresses: client `198.18.3.1/30`, server `198.18.3.2/30` (the veth subnets of
//! [`Topology`] start at `198.18.10.0/24`, so they never overlap).

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    clients::python3,
    netns::{Topology, in_netns, ip, netns_cmd},
    process::terminate,
};

/// Client end of the tunnel.
pub const TUNNEL_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
/// Server end of the tunnel.
pub const TUNNEL_SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
/// Prefix length of the inner addresses.
pub const TUNNEL_PREFIX: u8 = 30;
/// The UDP port the relays use on the veth.
pub const RELAY_PORT: u16 = 4790;
/// MTU of the tunnel devices: a full packet plus the UDP/IP overhead fits the veth's 1500.
pub const TUNNEL_MTU: u32 = 1400;

/// How long the relays and the first packet through the tunnel may take.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Python: create the TUN device DEV (`IFF_TUN | IFF_NO_PI`), bind a UDP socket to
/// LOCAL:PORT connected to REMOTE:PORT, print "ready", then copy packets both ways. The
/// device disappears when the process exits.
const RELAY_PY: &str = r#"
import fcntl, os, select, socket, struct, sys
dev, local, remote, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
tun = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
fam = socket.AF_INET6 if ":" in local else socket.AF_INET
u = socket.socket(fam, socket.SOCK_DGRAM)
u.bind((local, port))
u.connect((remote, port))
print("ready", flush=True)
while True:
    ready, _, _ = select.select([tun, u], [], [])
    if tun in ready:
        try:
            u.send(os.read(tun, 65535))
        except OSError:
            pass
    if u in ready:
        try:
            os.write(tun, u.recv(65535))
        except OSError:
            pass
"#;

/// Names and addresses of a tunnel (cheap to clone; the [`Tunnel`] owns the relays).
#[derive(Debug, Clone)]
pub struct TunnelLink {
    /// Namespace of the client end.
    pub client_ns: String,
    /// Namespace of the server end.
    pub server_ns: String,
    /// The TUN device in the client namespace (`np<pid>t<n>`).
    pub client_dev: String,
    /// The TUN device in the server namespace (`np<pid>u<n>`).
    pub server_dev: String,
    /// [`TUNNEL_CLIENT`].
    pub client_addr: Ipv4Addr,
    /// [`TUNNEL_SERVER`].
    pub server_addr: Ipv4Addr,
}

impl TunnelLink {
    /// The server end as an `IpAddr`.
    pub fn server_ip(&self) -> IpAddr {
        IpAddr::V4(self.server_addr)
    }

    /// The client end as an `IpAddr`.
    pub fn client_ip(&self) -> IpAddr {
        IpAddr::V4(self.client_addr)
    }
}

/// A running tunnel: the two relays. Dropping it stops them, which removes the devices.
#[derive(Debug)]
pub struct Tunnel {
    /// Names and addresses.
    pub link: TunnelLink,
    relays: Vec<Child>,
}

impl Tunnel {
    /// Creates the tunnel between the namespaces of `topo` (relays over its veth
    /// addresses), configures both ends and waits (at most 5 s) until a TCP connect from
    /// the client end to the server end is answered (accepted or refused).
    pub fn start(topo: &Topology) -> Result<Tunnel> {
        let pid = std::process::id();
        let link = TunnelLink {
            client_ns: topo.client_ns.clone(),
            server_ns: topo.server_ns.clone(),
            client_dev: format!("np{pid}t{}", topo.n),
            server_dev: format!("np{pid}u{}", topo.n),
            client_addr: TUNNEL_CLIENT,
            server_addr: TUNNEL_SERVER,
        };
        if link.client_dev.len() > 15 {
            bail!("interface name {} is too long", link.client_dev);
        }
        let mut tunnel = Tunnel {
            link,
            relays: Vec::new(),
        };
        let ends = [
            (
                tunnel.link.client_ns.clone(),
                tunnel.link.client_dev.clone(),
                topo.client_v4,
                topo.server_v4,
                tunnel.link.client_addr,
            ),
            (
                tunnel.link.server_ns.clone(),
                tunnel.link.server_dev.clone(),
                topo.server_v4,
                topo.client_v4,
                tunnel.link.server_addr,
            ),
        ];
        for (ns, dev, local, remote, _) in &ends {
            tunnel.start_relay(ns, dev, *local, *remote)?;
        }
        for (ns, dev, _, _, inner) in &ends {
            let mtu = TUNNEL_MTU.to_string();
            ip(&["-n", ns, "link", "set", dev, "mtu", &mtu, "up"])?;
            let addr = format!("{inner}/{TUNNEL_PREFIX}");
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
        }
        tunnel
            .wait_reachable(SocketAddr::new(tunnel.link.server_ip(), 9))
            .context("the tunnel carries no TCP")?;
        Ok(tunnel)
    }

    /// Starts one relay and waits for its "ready" line (the device then exists).
    fn start_relay(
        &mut self,
        ns: &str,
        dev: &str,
        local: Ipv4Addr,
        remote: Ipv4Addr,
    ) -> Result<()> {
        let mut cmd = netns_cmd(ns, python3());
        cmd.args(["-c", RELAY_PY, dev])
            .arg(local.to_string())
            .arg(remote.to_string())
            .arg(RELAY_PORT.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start the tunnel relay for {dev}"))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        self.relays.push(child);
        let (tx, rx) = mpsc::channel();
        if let Some(pipe) = stdout {
            thread::spawn(move || {
                let mut first = String::new();
                let _ = BufReader::new(pipe).read_line(&mut first);
                let _ = tx.send(first);
            });
        }
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.trim() == "ready" => Ok(()),
            other => {
                // Without "ready" the relay has failed (or hangs): show why.
                if let Some(child) = self.relays.last_mut() {
                    let _ = terminate(child, Duration::from_millis(200));
                }
                let mut err = String::new();
                if let Some(mut pipe) = stderr {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
                }
                bail!("tunnel relay for {dev} in {ns} did not start ({other:?}): {err}")
            }
        }
    }

    /// Polls TCP connects from the client namespace to `target` until one is accepted or
    /// refused: either answer has crossed the tunnel both ways.
    fn wait_reachable(&self, target: SocketAddr) -> Result<()> {
        in_netns(&self.link.client_ns, move || -> Result<()> {
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                match TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
                    Ok(_) => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
                    Err(e) if Instant::now() >= deadline => {
                        bail!("{target} not reachable within {READY_TIMEOUT:?}: {e}")
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        })?
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for relay in &mut self.relays {
            if let Err(e) = terminate(relay, Duration::from_secs(1)) {
                eprintln!("nprot-tests cleanup: tunnel relay: {e:#}");
            }
        }
    }
}
