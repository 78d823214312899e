//! A raw HTTP server in the server namespace that answers the first bytes of every
//! connection at once with a large response, without waiting for a complete request:
//! the worst case for a sensor that must not leak response bytes before its verdict.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    clients::python3,
    netns::{netns_cmd, wait_tcp_ready_in},
    process::terminate,
};

/// Python: listen on ADDR:PORT; for each connection, as soon as recv() returns bytes,
/// sendall(HEADER + BODY_LEN bytes of 'x') and close. A connection closed before sending
/// anything (a readiness probe) gets nothing.
const BULK_PY: &str = r#"
import socket, sys, threading
host, port, head, n = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), int(sys.argv[4])
reply = head + b"x" * n
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
ls = socket.socket(fam, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((host, port))
ls.listen(64)
def serve(c):
    try:
        if c.recv(65536):
            c.sendall(reply)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A running bulk server; killed when dropped.
#[derive(Debug)]
pub struct BulkServer {
    child: Option<Child>,
    addr: SocketAddr,
    response_len: u64,
}

impl BulkServer {
    /// Starts the server on `addr:port` in the namespace `ns` with a `body_len`-byte
    /// body, and waits (at most 5 s) until it accepts connections (probed from `ns`).
    pub fn start_in(ns: &str, addr: IpAddr, port: u16, body_len: u64) -> Result<BulkServer> {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {body_len}\r\nConnection: close\r\n\r\n"
        );
        let mut cmd = netns_cmd(ns, python3());
        cmd.args(["-c", BULK_PY])
            .arg(addr.to_string())
            .arg(port.to_string())
            .arg(crate::tls::hex(head.as_bytes()))
            .arg(body_len.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().context("cannot start the bulk server")?;
        let server = BulkServer {
            child: Some(child),
            addr: SocketAddr::new(addr, port),
            response_len: head.len() as u64 + body_len,
        };
        // Probe from the server namespace: the probes do not cross the guarded veth.
        wait_tcp_ready_in(ns, &[server.addr], Duration::from_secs(5))
            .context("bulk server not ready")?;
        Ok(server)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes of one complete response (header and body).
    pub fn response_len(&self) -> u64 {
        self.response_len
    }
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(e) = terminate(&mut child, Duration::from_secs(1))
        {
            eprintln!("nprot-tests cleanup: bulk server: {e:#}");
        }
    }
}
