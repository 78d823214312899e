//! nginx in the server namespace: TLS vhosts `good.example`, `bad.example` and
//! `quic.example` on 443 and 8443, plain HTTP on 80 and 8080, IPv4 and IPv6.

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    netns::{Topology, netns_cmd, wait_tcp_ready_in},
    process::{run_ok, terminate},
};

/// Path of the Debian nginx binary.
pub const NGINX_BIN: &str = "/usr/sbin/nginx";
/// The name the QUIC tests serve over both HTTP/3 ([`crate::quic::QuicServer`], UDP) and
/// nginx (TCP), with the same certificate: the TCP side of a browser's fallback.
pub const QUIC_HOST: &str = "quic.example";
/// The TLS virtual hosts, each with its own self-signed certificate.
pub const TLS_HOSTS: [&str; 3] = ["good.example", "bad.example", QUIC_HOST];
/// Ports nginx serves TLS on.
pub const TLS_PORTS: [u16; 2] = [443, 8443];
/// Ports nginx serves plain HTTP on.
pub const HTTP_PORTS: [u16; 2] = [80, 8080];
/// Body of `/`.
pub const BODY_ROOT: &str = "nprot-test root";
/// Body of `/good`.
pub const BODY_GOOD: &str = "nprot-test good";
/// Body of `/bad/` and everything below it.
pub const BODY_BAD: &str = "nprot-test bad";

/// A running nginx master (with its workers) in the server namespace.
#[derive(Debug)]
pub struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
}

impl Nginx {
    /// Writes certificates and a config under `dir` (which must exist), starts nginx in
    /// the server namespace of `topo` and waits (at most 5 s) until every listener
    /// accepts a connection from the client namespace.
    pub fn start(topo: &Topology, dir: &Path) -> Result<Nginx> {
        Nginx::start_in(
            &topo.server_ns,
            &topo.client_ns,
            &[topo.server_ip(false), topo.server_ip(true)],
            dir,
        )
    }

    /// Starts nginx (listening on every address) in the namespace `server_ns` like
    /// [`Nginx::start`], and waits (at most 5 s) until every listener accepts a connection
    /// to each of `addrs` from the namespace `probe_ns`.
    pub fn start_in(
        server_ns: &str,
        probe_ns: &str,
        addrs: &[IpAddr],
        dir: &Path,
    ) -> Result<Nginx> {
        let dir = dir.join("nginx");
        for sub in ["", "logs", "tmp", "html"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        for host in TLS_HOSTS {
            make_cert(&dir, host)?;
        }
        let conf = dir.join("nginx.conf");
        fs::write(&conf, config(&dir)).context("cannot write nginx.conf")?;
        let stderr = fs::File::create(dir.join("logs/stderr.log"))?;

        let mut cmd = netns_cmd(server_ns, NGINX_BIN);
        cmd.arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().context("cannot start nginx")?;
        let nginx = Nginx {
            child: Some(child),
            dir,
        };

        let mut targets = Vec::new();
        for &addr in addrs {
            for port in TLS_PORTS.into_iter().chain(HTTP_PORTS) {
                targets.push(SocketAddr::new(addr, port));
            }
        }
        if let Err(e) = wait_tcp_ready_in(probe_ns, &targets, Duration::from_secs(5)) {
            return Err(e.context(format!("nginx not ready; {}", nginx.logs())));
        }
        Ok(nginx)
    }

    /// The directory holding the certificates: `<host>.crt` and `<host>.key` for each of
    /// [`TLS_HOSTS`].
    pub fn cert_dir(&self) -> &Path {
        &self.dir
    }

    /// nginx's access log (one line per request), empty if there is none yet.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.join("logs/access.log")).unwrap_or_default()
    }

    /// nginx's error log and stderr, for failure messages.
    pub fn logs(&self) -> String {
        let read = |p: &str| fs::read_to_string(self.dir.join(p)).unwrap_or_default();
        format!(
            "nginx error.log:\n{}\nnginx stderr:\n{}",
            read("logs/error.log"),
            read("logs/stderr.log")
        )
    }

    /// Stops nginx: SIGTERM (fast shutdown, the master ends its workers), SIGKILL after
    /// 2 s. Workers left behind are killed with the namespace.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(2))?;
        }
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("nprot-tests cleanup: nginx: {e:#}");
        }
    }
}

/// Makes `<host>.crt` and `<host>.key` in `dir`: a self-signed P-256 certificate whose
/// subject alternative name is `host`.
fn make_cert(dir: &Path, host: &str) -> Result<()> {
    make_cert_for(dir, host, &[host])
}

/// Makes `<stem>.crt` and `<stem>.key` in `dir`: a self-signed P-256 certificate (valid
/// two days) for every name of `names` (subject alternative names; the first is the CN).
pub fn make_cert_for(dir: &Path, stem: &str, names: &[&str]) -> Result<()> {
    let cn = names.first().copied().unwrap_or(stem);
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "2", "-subj"])
            .arg(format!("/CN={cn}"))
            .arg("-addext")
            .arg(format!("subjectAltName={}", sans.join(",")))
            .arg("-keyout")
            .arg(dir.join(format!("{stem}.key")))
            .arg("-out")
            .arg(dir.join(format!("{stem}.crt"))),
        Duration::from_secs(10),
    )
    .with_context(|| format!("cannot make a certificate for {names:?}"))?;
    Ok(())
}

/// The nginx configuration; every path is inside `dir`.
fn config(dir: &Path) -> String {
    let d = dir.display();
    let mut c = String::new();
    // writeln! into a String cannot fail.
    let _ = writeln!(
        c,
        "worker_processes 1;
user root root;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/logs/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type text/plain;
    keepalive_timeout 5s;
    large_client_header_buffers 4 128k;"
    );
    let locations = format!(
        "        location = / {{ return 200 \"{BODY_ROOT}\\n\"; }}
        location = /good {{ return 200 \"{BODY_GOOD}\\n\"; }}
        location /bad/ {{ return 200 \"{BODY_BAD}\\n\"; }}
        location / {{ return 404; }}"
    );
    for host in TLS_HOSTS {
        let _ = writeln!(c, "    server {{");
        for port in TLS_PORTS {
            let _ = writeln!(c, "        listen {port} ssl;");
            let _ = writeln!(c, "        listen [::]:{port} ssl;");
        }
        let _ = writeln!(
            c,
            "        server_name {host};
        ssl_certificate {d}/{host}.crt;
        ssl_certificate_key {d}/{host}.key;
        ssl_protocols TLSv1.2 TLSv1.3;
{locations}
    }}"
        );
    }
    let _ = writeln!(c, "    server {{");
    // Fast Open is accepted (it takes effect only where `net.ipv4.tcp_fastopen` allows it).
    for port in HTTP_PORTS {
        let _ = writeln!(c, "        listen {port} fastopen=64;");
        let _ = writeln!(c, "        listen [::]:{port} fastopen=64;");
    }
    let _ = writeln!(
        c,
        "        server_name good.example bad.example;
{locations}
    }}
}}"
    );
    c
}
