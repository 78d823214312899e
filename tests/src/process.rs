//! Running commands with a time bound, and stopping the processes the harness started.

use std::{
    io::Read,
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Poll interval while waiting for a process to exit.
const POLL: Duration = Duration::from_millis(10);

/// Runs `cmd` with stdin closed, capturing stdout and stderr; kills it (SIGKILL) if it is
/// still running after `timeout` and returns an error that includes what it printed.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let out_reader = spawn_reader(child.stdout.take());
    let err_reader = spawn_reader(child.stderr.take());
    let status = wait_timeout(&mut child, timeout)?;
    let timed_out = status.is_none();
    let status = if let Some(status) = status {
        status
    } else {
        // Ignore errors: the process may have exited just now.
        let _ = child.kill();
        child
            .wait()
            .with_context(|| format!("cannot reap {shown}"))?
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if timed_out {
        bail!(
            "{shown} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Like [`run_with_timeout`], and fails unless the command exits 0.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = run_with_timeout(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn spawn_reader<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error only truncates what is shown.
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waitpid")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// Sends `signal` (a [`Signal`] or a signal number) to the process `pid` (one process,
/// never a group).
pub fn signal<S>(pid: u32, signal: S) -> Result<()>
where
    S: TryInto<Signal>,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let signal = signal.try_into().context("not a signal")?;
    let pid = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
    kill(pid, signal).with_context(|| format!("kill({pid}, {signal})"))
}

/// Stops a child the harness started: SIGTERM, then SIGKILL if it has not exited after
/// `grace`. Returns how it exited.
pub fn terminate(child: &mut Child, grace: Duration) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait().context("waitpid")? {
        return Ok(status);
    }
    // The process may exit between try_wait and kill; that is fine.
    let _ = signal(child.id(), Signal::SIGTERM);
    if let Some(status) = wait_timeout(child, grace)? {
        return Ok(status);
    }
    let _ = child.kill();
    child.wait().context("waitpid after SIGKILL")
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    // No signal: kill only checks for existence.
    i32::try_from(pid).is_ok_and(|pid| kill(Pid::from_raw(pid), None).is_ok())
}
