//! The sensor under test: `nprot run` in the client namespace (or another one, guarding
//! other interfaces: [`Sensor::start_in`]).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    netns::{Topology, netns_cmd},
    process::{signal, terminate, wait_timeout},
};

/// The line the sensor prints on stderr once its programs are attached.
pub const READY_MARKER: &str = "nprot ready";
/// How long the sensor may take to attach.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The `nprot` binary: `$NPROT_BIN`, else `<workspace>/target/debug/nprot`.
pub fn sensor_binary() -> Result<PathBuf> {
    let path = if let Some(p) = std::env::var_os("NPROT_BIN") {
        PathBuf::from(p)
    } else {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest
            .parent()
            .unwrap_or(manifest)
            .join("target/debug/nprot")
    };
    if !path.is_file() {
        bail!(
            "sensor binary {} not found: build it (`cargo xtask build`) or set NPROT_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// Lines the sensor wrote to stderr, shared with the thread that reads them.
#[derive(Debug, Clone, Default)]
pub struct StderrLog {
    inner: Arc<(Mutex<StderrState>, Condvar)>,
}

#[derive(Debug, Default)]
struct StderrState {
    lines: Vec<String>,
    closed: bool,
}

impl StderrLog {
    /// Everything read so far, one line per line.
    pub fn text(&self) -> String {
        let state = self
            .inner
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.lines.join("\n")
    }

    fn push(&self, line: String) {
        let (lock, cvar) = &*self.inner;
        lock.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .lines
            .push(line);
        cvar.notify_all();
    }

    fn close(&self) {
        let (lock, cvar) = &*self.inner;
        lock.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .closed = true;
        cvar.notify_all();
    }

    /// Waits up to `timeout` until the writer has closed its end (the process exited).
    fn wait_closed(&self, timeout: Duration) -> bool {
        let (lock, cvar) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut state = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = cvar
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Waits until a line containing `needle` appears. Returns false on timeout or when
    /// stderr is closed without it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let (lock, cvar) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut state = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if state.lines.iter().any(|l| l.contains(needle)) {
                return true;
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return false;
            }
            state = cvar
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// How [`Sensor::launch`] ended.
#[derive(Debug)]
pub enum Launch {
    /// The sensor printed `nprot ready` and runs.
    Ready(Sensor),
    /// The sensor exited without printing `nprot ready`.
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// Everything it wrote to stderr (and stdout, marked `[stdout]`).
        stderr: String,
    },
}

/// A running sensor.
#[derive(Debug)]
pub struct Sensor {
    child: Option<Child>,
    stderr: StderrLog,
    exit: Option<ExitStatus>,
}

impl Sensor {
    /// Starts `nprot run --interface <client veth> --events <events>` (plus `extra_args`)
    /// in the client namespace and waits for `nprot ready` on its stderr.
    pub fn start(topo: &Topology, events: &Path, extra_args: &[&str]) -> Result<Sensor> {
        Sensor::start_in(&topo.client_ns, &[&topo.client_if], events, extra_args)
    }

    /// Starts `nprot run --interface IF… --events <events>` (one `--interface` per entry
    /// of `interfaces`, plus `extra_args`) in the namespace `ns` and waits for
    /// `nprot ready` on its stderr.
    pub fn start_in(
        ns: &str,
        interfaces: &[&str],
        events: &Path,
        extra_args: &[&str],
    ) -> Result<Sensor> {
        match Sensor::launch_in(ns, interfaces, events, extra_args, READY_TIMEOUT)? {
            Launch::Ready(sensor) => Ok(sensor),
            Launch::Exited { status, stderr } => bail!(
                "sensor exited ({status}) before printing `{READY_MARKER}`; \
                 args {extra_args:?}; stderr:\n{stderr}"
            ),
        }
    }

    /// Starts the sensor like [`Sensor::start`] and waits up to `timeout` for either
    /// `nprot ready` or its exit, whichever comes first; an error if neither happens (the
    /// sensor is then stopped).
    pub fn launch(
        topo: &Topology,
        events: &Path,
        extra_args: &[&str],
        timeout: Duration,
    ) -> Result<Launch> {
        Sensor::launch_in(
            &topo.client_ns,
            &[&topo.client_if],
            events,
            extra_args,
            timeout,
        )
    }

    /// [`Sensor::launch`] in the namespace `ns`, guarding `interfaces`.
    pub fn launch_in(
        ns: &str,
        interfaces: &[&str],
        events: &Path,
        extra_args: &[&str],
        timeout: Duration,
    ) -> Result<Launch> {
        let deadline = Instant::now() + timeout;
        let mut sensor = Sensor::spawn(ns, interfaces, events, extra_args, &[])?;
        if sensor.stderr.wait_for(READY_MARKER, timeout) {
            return Ok(Launch::Ready(sensor));
        }
        // Stderr closed (the sensor exits) or the time is up: wait out the rest.
        let status = match sensor.child.as_mut() {
            Some(child) => wait_timeout(child, deadline.saturating_duration_since(Instant::now()))?,
            None => None,
        };
        if let Some(status) = status {
            sensor.exit = Some(status);
            sensor.child = None;
            // The reader thread closes the log at end of file, right after exit.
            sensor.stderr.wait_closed(Duration::from_secs(1));
            Ok(Launch::Exited {
                status,
                stderr: sensor.stderr.text(),
            })
        } else {
            let state = sensor.stop(Duration::from_secs(2));
            bail!(
                "sensor neither printed `{READY_MARKER}` nor exited within {timeout:?} \
                 (stopped: {state:?}); args {extra_args:?}; stderr:\n{}",
                sensor.stderr.text()
            )
        }
    }

    /// Spawns `nprot run` in the namespace `ns` with stderr and stdout collected into
    /// one [`StderrLog`] and the environment variables `envs` added; does not wait for
    /// anything (tests of readiness wait on their own signal).
    pub fn spawn(
        ns: &str,
        interfaces: &[&str],
        events: &Path,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Sensor> {
        let bin = sensor_binary()?;
        let mut cmd = netns_cmd(ns, &bin.to_string_lossy());
        // `ip netns exec` execs the program: the variables reach it, and its pid is ours.
        cmd.envs(envs.iter().copied());
        cmd.arg("run");
        for interface in interfaces {
            cmd.args(["--interface", interface]);
        }
        // State and control socket beside the events, unless the test names its own: a
        // test sensor never touches the host's /var/lib/nprot or /run/nprot.
        if !extra_args.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(events.with_extension("state"));
        }
        if !extra_args.contains(&"--control-socket") {
            cmd.arg("--control-socket").arg(control_socket_for(events));
        }
        // The tests of enforcement assert resets; those of the block page ask for it.
        if !extra_args.iter().any(|a| a.starts_with("--block-page")) {
            cmd.arg("--block-page=reset");
        }
        cmd.arg("--events")
            .arg(events)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let stderr = StderrLog::default();
        if let Some(pipe) = child.stderr.take() {
            let log = stderr.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    match line {
                        Ok(line) => log.push(line),
                        Err(_) => break,
                    }
                }
                log.close();
            });
        }
        if let Some(pipe) = child.stdout.take() {
            // Stdout is not part of the contract; keep it in the same log, marked.
            let log = stderr.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.push(format!("[stdout] {line}"));
                }
            });
        }
        Ok(Sensor {
            child: Some(child),
            stderr,
            exit: None,
        })
    }

    /// The sensor's stderr (shared; keeps growing while it runs).
    pub fn stderr(&self) -> &StderrLog {
        &self.stderr
    }

    /// The sensor's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the sensor process has exited (without reaping it for good: the status
    /// is kept for [`Sensor::stop`]).
    pub fn has_exited(&mut self) -> bool {
        if self.exit.is_some() {
            return true;
        }
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exit = Some(status);
            return true;
        }
        false
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit. Returns the exit status;
    /// an error if the sensor had to be killed.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            self.child = None;
            return Ok(status);
        }
        let Some(mut child) = self.child.take() else {
            bail!("sensor was not running");
        };
        if let Some(status) = child.try_wait()? {
            self.exit = Some(status);
            return Ok(status);
        }
        // It may exit between try_wait and kill.
        let _ = signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        if let Some(status) = wait_timeout(&mut child, timeout)? {
            self.exit = Some(status);
            Ok(status)
        } else {
            let status = terminate(&mut child, Duration::ZERO)?;
            self.exit = Some(status);
            bail!(
                "sensor did not exit within {timeout:?} of SIGTERM; killed ({status}); \
                 stderr:\n{}",
                self.stderr.text()
            )
        }
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(e) = terminate(&mut child, Duration::from_secs(3))
        {
            eprintln!("nprot-tests cleanup: sensor: {e:#}");
        }
    }
}

/// Where a test sensor writing `events` puts its control socket: beside the events, so
/// that two sensors of one test never share one.
pub fn control_socket_for(events: &Path) -> PathBuf {
    events.with_extension("sock")
}
