//! Desktop sessions for the `nprot notify` tests: a throw-away user account
//! ([`TestUser`]), and for it a [`Session`]: a private session bus (`dbus-daemon` with a
//! config of its own, no service activation), optionally an X server (`Xvfb`) with a real
//! notification server on it (`dunst`), and a `dbus-monitor` that records what is said on
//! the bus about notifications. Everything runs as the user except Xvfb (root, open to
//! every client: the display exists only for dunst). Dropping a session stops what it
//! started, then removes the account; accounts left by a killed run are removed by the
//! next one.

use std::{
    io::{BufRead as _, BufReader, Read},
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Condvar, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    CurlRun,
    process::{pid_alive, run_ok, run_with_timeout, terminate},
};

/// Prefix of the accounts the tests create (`nprot-nt-<pid>-<tag>`).
pub const USER_PREFIX: &str = "nprot-nt-";
/// How long a session's daemons may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Time bound of a one-shot command (useradd, dbus-send, dunstctl).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Interface of the marker signal that tells when the monitor is listening.
const MARK_INTERFACE: &str = "org.nprot.Test";

/// A local account made for one test, removed on drop.
#[derive(Debug)]
pub struct TestUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
}

impl TestUser {
    /// Creates the account `nprot-nt-<pid>-<tag>` (no home, no login shell), after
    /// removing those of runs that are gone.
    pub fn create(tag: &str) -> Result<TestUser> {
        remove_stale_users();
        let name = format!("{USER_PREFIX}{}-{tag}", std::process::id());
        run_ok(
            Command::new("useradd").args([
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ]),
            COMMAND_TIMEOUT,
        )
        .with_context(|| format!("cannot create the test user {name}"))?;
        let user = TestUser {
            uid: 0,
            name: name.clone(),
        };
        // From here on a failure drops `user`, which removes the account.
        let mut user = user;
        let found = nix::unistd::User::from_name(&name)
            .with_context(|| format!("cannot look {name} up"))?
            .with_context(|| format!("{name} was created but cannot be found"))?;
        user.uid = found.uid.as_raw();
        Ok(user)
    }

    /// `runuser -u USER -- env VARS… PROGRAM`: `program` run as this user with exactly
    /// the environment in `envs` added (runuser keeps root's otherwise).
    pub fn cmd(&self, envs: &[(&str, String)], program: &str) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", &self.name, "--", "env"]);
        for (k, v) in envs {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.arg(program);
        cmd
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Only accounts this module made carry the prefix: never anyone else's.
        if !self.name.starts_with(USER_PREFIX) {
            return;
        }
        if let Err(e) = run_ok(
            Command::new("userdel").args(["--force", &self.name]),
            COMMAND_TIMEOUT,
        ) {
            eprintln!("nprot-tests cleanup: {e:#}");
        }
    }
}

/// Removes the test accounts of runs whose process is gone.
fn remove_stale_users() {
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return;
    };
    for name in passwd.lines().filter_map(|l| l.split(':').next()) {
        let Some(rest) = name.strip_prefix(USER_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| pid != std::process::id() && !pid_alive(pid)) {
            let _ = run_with_timeout(
                Command::new("userdel").args(["--force", name]),
                COMMAND_TIMEOUT,
            );
        }
    }
}

/// Lines a child process printed, shared with the thread that reads them.
#[derive(Debug, Clone, Default)]
pub struct LineLog {
    inner: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl LineLog {
    /// Reads `from` line by line into a new log, on a thread of its own.
    fn reading(from: impl Read + Send + 'static) -> LineLog {
        let log = LineLog::default();
        let writer = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(from).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*writer.inner;
                lock.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
                cvar.notify_all();
            }
        });
        log
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        self.inner
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("\n")
    }

    /// Waits up to `timeout` until the text read so far satisfies `pred`; returns
    /// whether it did.
    pub fn wait_for(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let (lock, cvar) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut lines = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if pred(&lines.join("\n")) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            lines = cvar
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A process of a session, with what it printed.
#[derive(Debug)]
struct Started {
    what: String,
    child: Child,
    stdout: LineLog,
    stderr: LineLog,
}

/// A user's desktop session: its bus, maybe a display and dunst, a monitor, and what the
/// test starts in it ([`Session::spawn`]).
#[derive(Debug)]
pub struct Session {
    /// The session bus's address (`DBUS_SESSION_BUS_ADDRESS`).
    pub bus: String,
    /// The X display (`:N`), with dunst on it, if the session has one.
    pub display: Option<String>,
    /// The session's directory (HOME of its processes), owned by the user.
    pub dir: PathBuf,
    monitor: LineLog,
    /// Started processes, stopped in reverse order on drop.
    started: Vec<Started>,
    /// Declared last: removed once its processes are gone.
    pub user: TestUser,
}

impl Session {
    /// Starts `user`'s session in `dir` (created, given to the user): its bus, with
    /// Xvfb and dunst if `with_dunst`, and a dbus-monitor of the notification interface.
    pub fn start(user: TestUser, dir: &Path, with_dunst: bool) -> Result<Session> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::os::unix::fs::chown(dir, Some(user.uid), None)
            .with_context(|| format!("cannot give {} to {}", dir.display(), user.name))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let socket = dir.join("bus");
        let config = dir.join("bus.conf");
        // A session bus without service activation: a Notify with no server fails at
        // once instead of starting one.
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )?;
        let mut session = Session {
            bus: format!("unix:path={}", socket.display()),
            display: None,
            dir: dir.to_owned(),
            monitor: LineLog::default(),
            started: Vec::new(),
            user,
        };
        let mut daemon = session.cmd("dbus-daemon");
        daemon
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork");
        session.spawn("dbus-daemon", daemon)?;
        session.wait_until("the session bus answers", |s| {
            s.bus_call(&["org.freedesktop.DBus.GetId"]).is_ok()
        })?;

        if with_dunst {
            let display = free_display()?;
            let mut xvfb = Command::new("Xvfb");
            xvfb.args([
                &display,
                "-nolisten",
                "tcp",
                "-ac",
                "-screen",
                "0",
                "640x480x24",
            ]);
            session.spawn_raw("Xvfb", xvfb)?;
            let x_socket = PathBuf::from(format!("/tmp/.X11-unix/X{}", &display[1..]));
            session.display = Some(display);
            session.wait_until("Xvfb listens", |_| x_socket.exists())?;
            let dunstrc = dir.join("dunstrc");
            // Notifications stay until closed: the test decides when they go.
            std::fs::write(
                &dunstrc,
                "[global]\n    history_length = 100\n[urgency_normal]\n    timeout = 0\n",
            )?;
            let mut dunst = session.cmd("dunst");
            dunst.arg("-config").arg(&dunstrc);
            session.spawn("dunst", dunst)?;
            session.wait_until("dunst owns org.freedesktop.Notifications", |s| {
                s.bus_call(&[
                    "org.freedesktop.DBus.NameHasOwner",
                    "string:org.freedesktop.Notifications",
                ])
                .is_ok_and(|out| out.contains("true"))
            })?;
        }

        let mut monitor = session.cmd("dbus-monitor");
        monitor.args([
            "--session",
            "interface='org.freedesktop.Notifications'",
            &format!("interface='{MARK_INTERFACE}'"),
        ]);
        session.spawn("dbus-monitor", monitor)?;
        session.monitor = session.stdout_of("dbus-monitor").unwrap_or_default();
        // The monitor listens once it prints a signal sent after it started.
        let send = || {
            let mut cmd = session.cmd("dbus-send");
            cmd.args([
                "--session",
                "--type=signal",
                "/",
                &format!("{MARK_INTERFACE}.Ready"),
            ]);
            run_ok(&mut cmd, COMMAND_TIMEOUT)
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            send()?;
            if session
                .monitor
                .wait_for(|t| t.contains("member=Ready"), Duration::from_millis(200))
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!("dbus-monitor never listened:\n{}", session.diagnostics());
            }
        }
        Ok(session)
    }

    /// The environment of the session's processes.
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        let mut envs = vec![
            ("DBUS_SESSION_BUS_ADDRESS", self.bus.clone()),
            ("HOME", self.dir.display().to_string()),
            ("XDG_RUNTIME_DIR", self.dir.display().to_string()),
            ("RUST_LOG", "info".to_owned()),
        ];
        if let Some(display) = &self.display {
            envs.push(("DISPLAY", display.clone()));
        }
        envs
    }

    /// `program` as the session's user, in its environment.
    pub fn cmd(&self, program: &str) -> Command {
        self.user.cmd(&self.envs(), program)
    }

    /// Starts `cmd` (made by [`Session::cmd`]) and keeps it, named `what`, until the
    /// session ends.
    pub fn spawn(&mut self, what: &str, cmd: Command) -> Result<()> {
        self.spawn_raw(what, cmd)
    }

    fn spawn_raw(&mut self, what: &str, mut cmd: Command) -> Result<()> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {what}: {cmd:?}"))?;
        let stdout = child
            .stdout
            .take()
            .map(LineLog::reading)
            .unwrap_or_default();
        let stderr = child
            .stderr
            .take()
            .map(LineLog::reading)
            .unwrap_or_default();
        self.started.push(Started {
            what: what.to_owned(),
            child,
            stdout,
            stderr,
        });
        Ok(())
    }

    /// The standard output of the process started as `what`.
    pub fn stdout_of(&self, what: &str) -> Option<LineLog> {
        self.started
            .iter()
            .find(|s| s.what == what)
            .map(|s| s.stdout.clone())
    }

    /// The standard error of the process started as `what`.
    pub fn stderr_of(&self, what: &str) -> Option<LineLog> {
        self.started
            .iter()
            .find(|s| s.what == what)
            .map(|s| s.stderr.clone())
    }

    /// What dbus-monitor printed of the notification interface so far.
    pub fn monitor(&self) -> &LineLog {
        &self.monitor
    }

    /// Runs `dunstctl ARGS…` in the session; its stdout.
    pub fn dunstctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.cmd("dunstctl");
        cmd.args(args);
        let out = run_ok(&mut cmd, COMMAND_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `cmd` (made by [`Session::cmd`]) to its end.
    pub fn run(&self, mut cmd: Command) -> Result<Output> {
        run_with_timeout(&mut cmd, COMMAND_TIMEOUT)
    }

    /// A method of the bus itself (`dbus-send --print-reply`); its reply as printed.
    fn bus_call(&self, method_and_args: &[&str]) -> Result<String> {
        let mut cmd = self.cmd("dbus-send");
        cmd.args([
            "--session",
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
        ])
        .args(method_and_args);
        let out = run_ok(&mut cmd, COMMAND_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Polls `ready` every 20 ms until it holds, or fails after [`START_TIMEOUT`] (or
    /// as soon as a started process has exited) with everything they printed.
    fn wait_until(&mut self, what: &str, ready: impl Fn(&Session) -> bool) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready(self) {
                return Ok(());
            }
            let exited: Vec<String> = self
                .started
                .iter_mut()
                .filter_map(|s| {
                    s.child
                        .try_wait()
                        .ok()
                        .flatten()
                        .map(|st| format!("{} exited ({st})", s.what))
                })
                .collect();
            if !exited.is_empty() || Instant::now() >= deadline {
                bail!(
                    "{what}: not within {START_TIMEOUT:?}; {}\n{}",
                    exited.join(", "),
                    self.diagnostics()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// What every started process printed, for failure messages.
    pub fn diagnostics(&self) -> String {
        self.started
            .iter()
            .map(|s| {
                format!(
                    "--- {} ({}) stderr:\n{}\n--- stdout:\n{}\n",
                    s.what,
                    self.user.name,
                    s.stderr.text(),
                    s.stdout.text()
                )
            })
            .collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        while let Some(mut s) = self.started.pop() {
            if let Err(e) = terminate(&mut s.child, Duration::from_secs(2)) {
                eprintln!("nprot-tests cleanup: {}: {e:#}", s.what);
            }
        }
    }
}

/// An X display number no server uses (no socket, no lock file).
fn free_display() -> Result<String> {
    (90..200)
        .find(|n| {
            !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                && !Path::new(&format!("/tmp/.X{n}-lock")).exists()
        })
        .map(|n| format!(":{n}"))
        .context("no free X display between :90 and :199")
}

/// `curl -k https://NAME/` run as `user` in the namespace `ns` (a real unprivileged
/// process, so that the sensor attributes the flow to that account), resolved to `addr`;
/// whatever happened, a reset included.
pub fn curl_as(ns: &str, user: &TestUser, name: &str, addr: IpAddr) -> Result<CurlRun> {
    let mut cmd = crate::netns::netns_cmd(ns, "runuser");
    cmd.args([
        "-u",
        &user.name,
        "--",
        "curl",
        "-sS",
        "-k",
        "--max-time",
        "5",
    ])
    .arg("--resolve")
    .arg(format!("{name}:443:{addr}"))
    .args(["-w", "\n%{local_port} %{http_code} %{size_download}"])
    .arg(format!("https://{name}/"));
    let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, trailer) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut parts = trailer.split_whitespace().map(str::parse::<u64>);
    let mut next = || parts.next().and_then(Result::ok).unwrap_or(0);
    let (local_port, http_code, size_download) = (next(), next(), next());
    Ok(CurlRun {
        exit_code: out.status.code(),
        local_port: local_port as u16,
        http_code: http_code as u16,
        size_download,
        body_len: body.len(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
