//! systemd's readiness protocol (`sd_notify(3)`), without libsystemd: one datagram to the
//! Unix socket named by `$NOTIFY_SOCKET`.
//!
//! The daemon sends `READY=1` once its programs are attached, `WATCHDOG=1` at least every
//! half `WatchdogSec` (see [`watchdog_interval`]), `RELOADING=1` / `READY=1` around a
//! SIGHUP reload and `STOPPING=1` on shutdown; `STATUS=…` lines can ride along.

use std::{
    env,
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

/// Sends `state` (e.g. `"READY=1\nSTATUS=guarding eth0"`) to `$NOTIFY_SOCKET`.
/// `Ok(false)` when the variable is unset or empty: not started by systemd with
/// `Type=notify`, nothing to do. Names starting with `@` are abstract sockets.
pub fn notify(state: &str) -> io::Result<bool> {
    notify_socket(env::var_os("NOTIFY_SOCKET").as_deref(), state)
}

/// [`notify`] with the value of `$NOTIFY_SOCKET` given (`None`: unset).
fn notify_socket(socket: Option<&OsStr>, state: &str) -> io::Result<bool> {
    match socket {
        Some(path) if !path.is_empty() => {
            let path = path.to_str().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")
            })?;
            notify_to(path, state).map(|()| true)
        }
        _ => Ok(false),
    }
}

/// Sends `state` to the notification socket `socket` (a path, or `@name` for an abstract
/// socket).
pub fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None if socket.starts_with('/') => SocketAddr::from_pathname(socket)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET {socket:?} is neither a path nor @abstract"),
            ));
        }
    };
    let sock = UnixDatagram::unbound()?;
    // Sent from the verdict loop: a receiver that does not read must not stall it.
    sock.set_nonblocking(true)?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification datagram truncated",
        ));
    }
    Ok(())
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, if the watchdog is on and
/// meant for this process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = env::var_os("WATCHDOG_USEC");
    let pid = env::var_os("WATCHDOG_PID");
    watchdog_interval_for(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] with the values of `$WATCHDOG_USEC` and `$WATCHDOG_PID` given
/// (`None`: unset) and this process's id. A value that is not UTF-8 counts as unset, as
/// `env::var` makes it.
fn watchdog_interval_for(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    own_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.to_str()?.parse().ok()?;
    if let Some(pid) = pid.and_then(OsStr::to_str)
        && pid.parse::<u32>().ok()? != own_pid
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    // The environment is read only by the public functions; these tests give the values
    // to the inner ones, so they never touch the process environment that other tests
    // (in parallel threads) read.
    #[test]
    fn notifies_path_and_abstract_sockets() {
        let dir = env::temp_dir().join(format!("nprot-sdnotify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();

        assert!(
            !notify_socket(None, "READY=1").unwrap(),
            "no socket, nothing sent"
        );
        assert!(
            !notify_socket(Some(OsStr::new("")), "READY=1").unwrap(),
            "an empty variable is no socket"
        );

        assert!(notify_socket(Some(path.as_os_str()), "READY=1\nSTATUS=guarding lo").unwrap());
        assert_eq!(recv(&listener), "READY=1\nSTATUS=guarding lo");

        let name = format!("nprot-sdnotify-test-{}", std::process::id());
        let abs = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = UnixDatagram::bind_addr(&abs).unwrap();
        let abstract_name = OsString::from(format!("@{name}"));
        assert!(notify_socket(Some(&abstract_name), "WATCHDOG=1").unwrap());
        assert_eq!(recv(&abstract_listener), "WATCHDOG=1");

        assert!(notify_socket(Some(OsStr::new("relative/path")), "READY=1").is_err());
        let missing = dir.join("missing.sock");
        assert!(
            notify_socket(Some(missing.as_os_str()), "READY=1").is_err(),
            "nobody listening"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn non_utf8_socket_name_is_an_error() {
        use std::os::unix::ffi::OsStrExt;
        let name = OsStr::from_bytes(b"/tmp/\xff.sock");
        let err = notify_socket(Some(name), "READY=1").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process() {
        let me = 4242;
        let usec = Some(OsStr::new("30000000"));
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval_for(usec, None, me), half);
        assert_eq!(
            watchdog_interval_for(usec, Some(OsStr::new("1")), me),
            None,
            "meant for another process"
        );
        assert_eq!(
            watchdog_interval_for(usec, Some(OsStr::new("4242")), me),
            half
        );
        assert_eq!(
            watchdog_interval_for(usec, Some(OsStr::new("x")), me),
            None,
            "an unreadable pid is not ours"
        );
        assert_eq!(watchdog_interval_for(None, None, me), None);
        assert_eq!(watchdog_interval_for(Some(OsStr::new("0")), None, me), None);
        assert_eq!(
            watchdog_interval_for(Some(OsStr::new("soon")), None, me),
            None
        );
    }
}
