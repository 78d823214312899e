//! systemd's readiness protocol (`sd_notify(3)`), without libsystemd: one datagram to the
//! Unix socket named by `$NOTIFY_SOCKET`.
//!
//! The daemon sends `READY=1` once its programs are attached, `WATCHDOG=1` at least every
//! half `WatchdogSec` (see [`watchdog_interval`]), `RELOADING=1` / `READY=1` around a
//! SIGHUP reload and `STOPPING=1` on shutdown; `STATUS=…` lines can ride along.

use std::{
    env, io,
    os::{linux::net::SocketAddrExt, unix::net::SocketAddr, unix::net::UnixDatagram},
    time::Duration,
};

/// Sends `state` (e.g. `"READY=1\nSTATUS=guarding eth0"`) to `$NOTIFY_SOCKET`.
/// `Ok(false)` when the variable is unset or empty: not started by systemd with
/// `Type=notify`, nothing to do. Names starting with `@` are abstract sockets.
pub fn notify(state: &str) -> io::Result<bool> {
    match env::var_os("NOTIFY_SOCKET") {
        Some(path) if !path.is_empty() => {
            let path = path.into_string().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")
            })?;
            notify_to(&path, state).map(|()| true)
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
    let usec: u64 = env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    // One test touches the environment, so parallel tests do not race on it.
    #[test]
    fn notifies_path_and_abstract_sockets() {
        let dir = env::temp_dir().join(format!("nprot-sdnotify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();

        // SAFETY (edition 2024 marks these unsafe): no other test reads these variables.
        unsafe { env::remove_var("NOTIFY_SOCKET") };
        assert!(!notify("READY=1").unwrap(), "no socket, nothing sent");

        unsafe { env::set_var("NOTIFY_SOCKET", &path) };
        assert!(notify("READY=1\nSTATUS=guarding lo").unwrap());
        assert_eq!(recv(&listener), "READY=1\nSTATUS=guarding lo");

        let name = format!("nprot-sdnotify-test-{}", std::process::id());
        let abs = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = UnixDatagram::bind_addr(&abs).unwrap();
        unsafe { env::set_var("NOTIFY_SOCKET", format!("@{name}")) };
        assert!(notify("WATCHDOG=1").unwrap());
        assert_eq!(recv(&abstract_listener), "WATCHDOG=1");

        unsafe { env::set_var("NOTIFY_SOCKET", "relative/path") };
        assert!(notify("READY=1").is_err());
        unsafe { env::set_var("NOTIFY_SOCKET", dir.join("missing.sock")) };
        assert!(notify("READY=1").is_err(), "nobody listening");
        unsafe { env::remove_var("NOTIFY_SOCKET") };

        unsafe { env::set_var("WATCHDOG_USEC", "30000000") };
        unsafe { env::remove_var("WATCHDOG_PID") };
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(15)));
        unsafe { env::set_var("WATCHDOG_PID", "1") };
        assert_eq!(watchdog_interval(), None, "meant for another process");
        unsafe { env::set_var("WATCHDOG_PID", std::process::id().to_string()) };
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(15)));
        unsafe { env::remove_var("WATCHDOG_USEC") };
        unsafe { env::remove_var("WATCHDOG_PID") };
        assert_eq!(watchdog_interval(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
