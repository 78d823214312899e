//! DNS: Debian's dnsmasq as the resolver of a test network ([`Dnsmasq`], local records
//! only, nothing forwarded) and `dig` as a client ([`dig`]).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    netns::netns_cmd,
    process::{run_with_timeout, terminate},
};

/// The resolver binary (Debian's dnsmasq-base).
pub const DNSMASQ_BIN: &str = "/usr/sbin/dnsmasq";
/// How long [`Dnsmasq::start`] waits for the resolver to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A record the resolver serves.
#[derive(Debug, Clone)]
pub enum Record {
    /// A and/or AAAA records of a name (`--host-record`), with a TTL.
    Host {
        /// The name.
        name: String,
        /// Its addresses.
        addrs: Vec<IpAddr>,
        /// TTL in seconds.
        ttl: u32,
    },
    /// `alias CNAME target` (`--cname`; the target must be a [`Record::Host`]).
    Cname {
        /// The alias.
        alias: String,
        /// Its target.
        target: String,
    },
    /// Any record given as its type code and RDATA (`--dns-rr`), e.g. HTTPS (65).
    Raw {
        /// The owner name.
        name: String,
        /// The type code.
        rtype: u16,
        /// The RDATA.
        rdata: Vec<u8>,
    },
}

/// The dnsmasq resolver in a namespace; killed when dropped.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Option<Child>,
    /// Where it listens.
    pub addr: IpAddr,
    log: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq in `ns` on UDP and TCP port 53 of `addr`, serving `records` and
    /// answering NXDOMAIN for every other name (nothing is forwarded), logging to
    /// `dir/dnsmasq.log`; waits until it answers.
    pub fn start(ns: &str, addr: IpAddr, records: &[Record], dir: &Path) -> Result<Dnsmasq> {
        let log = dir.join("dnsmasq.log");
        let mut cmd = netns_cmd(ns, DNSMASQ_BIN);
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--user=root",
            "--port=53",
            "--log-queries",
            "--local=/test/",
            "--local=/example/",
        ])
        .arg(format!("--listen-address={addr}"))
        .arg(format!("--log-facility={}", log.display()))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
        for r in records {
            cmd.arg(match r {
                Record::Host { name, addrs, ttl } => {
                    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                    format!("--host-record={name},{},{ttl}", list.join(","))
                }
                Record::Cname { alias, target } => format!("--cname={alias},{target}"),
                Record::Raw { name, rtype, rdata } => {
                    let hex: String = rdata.iter().map(|b| format!("{b:02x}")).collect();
                    format!("--dns-rr={name},{rtype},{hex}")
                }
            });
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().context("cannot start dnsmasq")?;
        let mut server = Dnsmasq {
            child: Some(child),
            addr,
            log,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if dig(ns, addr, "ready.probe.test", "A").is_ok_and(|d| d.status == "NXDOMAIN") {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                let log = server.log_text();
                let _ = server.stop();
                bail!("dnsmasq on {addr} did not answer within {READY_TIMEOUT:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(2))?;
        }
        Ok(())
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("nprot-tests cleanup: dnsmasq: {e:#}");
        }
    }
}

/// What `dig` got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigResult {
    /// The response code (`NOERROR`, `NXDOMAIN`, …).
    pub status: String,
    /// Answer lines (`name TTL IN TYPE data`).
    pub answers: Vec<String>,
    /// How long the lookup took, as dig measured it.
    pub query_time: Duration,
}

/// `dig @server name qtype` from the namespace `ns` (one try, 2 s).
pub fn dig(ns: &str, server: IpAddr, name: &str, qtype: &str) -> Result<DigResult> {
    let out = run_with_timeout(
        netns_cmd(ns, "dig")
            .args([
                "+time=2",
                "+tries=1",
                "+noall",
                "+answer",
                "+comments",
                "+stats",
            ])
            .arg(format!("@{server}"))
            .args([name, qtype]),
        Duration::from_secs(10),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("dig {name} {qtype} failed ({}): {text}", out.status);
    }
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .context("no status in dig's output")?
        .to_owned();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let query_time = text
        .split("Query time: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::MAX, Duration::from_millis);
    Ok(DigResult {
        status,
        answers,
        query_time,
    })
}

/// `dig +tcp @server name qtype` from the namespace `ns`: the lookup over TCP.
pub fn dig_tcp(ns: &str, server: IpAddr, name: &str, qtype: &str) -> Result<DigResult> {
    let out = run_with_timeout(
        netns_cmd(ns, "dig")
            .args(["+tcp", "+time=2", "+tries=1", "+short"])
            .arg(format!("@{server}"))
            .args([name, qtype]),
        Duration::from_secs(10),
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(DigResult {
        status: if out.status.success() {
            "OK".to_owned()
        } else {
            format!("failed ({}): {text}", out.status)
        },
        answers: text.lines().map(str::to_owned).collect(),
        query_time: Duration::MAX,
    })
}

/// The namespace's resolver for programs run with `ip netns exec` (which bind-mounts
/// `/etc/netns/NS/resolv.conf` over `/etc/resolv.conf`), removed on drop.
pub struct NamespaceResolver {
    dir: PathBuf,
}

impl NamespaceResolver {
    /// Makes `addr` the resolver of programs run in `ns`.
    pub fn set(ns: &str, addr: IpAddr) -> Result<NamespaceResolver> {
        let dir = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let guard = NamespaceResolver { dir };
        std::fs::write(
            guard.dir.join("resolv.conf"),
            format!("nameserver {addr}\noptions timeout:2 attempts:1\n"),
        )
        .context("cannot write the namespace's resolv.conf")?;
        Ok(guard)
    }
}

impl Drop for NamespaceResolver {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("nprot-tests cleanup: {}: {e}", self.dir.display());
        }
    }
}
