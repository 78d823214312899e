//! Control plane: the daemon's root-only Unix socket and its wire form — one JSON request
//! per line, one JSON response per line — with the server half (the daemon) and the
//! client half (the `nprot` CLI). The messages are in [`super::protocol`].
//!
//! The socket is created mode 0600 in a directory of its own, and the server also checks
//! the peer's uid (SO_PEERCRED), so an unprivileged account is refused twice over.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

pub use super::protocol::{Request, Response};

/// Default path of the control socket.
pub const DEFAULT_SOCKET: &str = "/run/nprot/control.sock";

/// A request with the channel its answer goes back on.
pub type Call = (Request, oneshot::Sender<Response>);

/// Binds the control socket at `path` (root-only) and serves it, forwarding every request
/// to `calls`. Returns once bound; serving goes on in a task.
pub fn serve(path: &Path, calls: mpsc::Sender<Call>) -> anyhow::Result<SocketGuard> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A socket left by a crashed daemon: nothing listens on it any more.
    if path.exists() && StdUnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, calls.clone()));
                }
                Err(e) => log::warn!("control socket: accept failed: {e}"),
            }
        }
    });
    Ok(SocketGuard(path.to_owned()))
}

/// Removes the socket file when the daemon stops.
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = if uid == Some(0) {
            match serde_json::from_str::<Request>(&line) {
                Err(e) => Response::error(format!("bad request: {e}")),
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    if calls.send((request, tx)).await.is_err() {
                        return;
                    }
                    rx.await
                        .unwrap_or_else(|_| Response::error("the daemon is stopping"))
                }
            }
        } else {
            Response::error("permission denied: only root may use the nprot control socket")
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Sends one request to the daemon at `socket` and returns its answer (client side).
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let stream = StdUnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on {}: the control socket is root-only; run this as root",
            socket.display()
        ),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "no nprot daemon listens on {} ({e}); is `nprot run` running?",
            socket.display()
        ),
        _ => anyhow::anyhow!("cannot connect to {}: {e}", socket.display()),
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    if answer.is_empty() {
        bail!("the daemon closed the control connection without answering");
    }
    let response: Response =
        serde_json::from_str(&answer).context("the daemon's answer is not valid")?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn round_trip_over_a_socket() {
        let path = std::env::temp_dir().join(format!("nprot-ctl-{}.sock", std::process::id()));
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        let _guard = serve(&path, tx).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let _ = reply.send(Response::ok(serde_json::to_value(&req).unwrap()));
            }
        });
        let p = path.clone();
        let answer = tokio::task::spawn_blocking(move || call(&p, &Request::Status))
            .await
            .unwrap()
            .unwrap();
        // Tests run as root in CI; as another user the server must refuse.
        if nix::unistd::geteuid().is_root() {
            assert!(answer.ok, "{answer:?}");
            assert_eq!(answer.data["cmd"], "status");
        } else {
            assert!(answer.error.unwrap().contains("permission denied"));
        }
    }
}
