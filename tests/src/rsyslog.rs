//! A real rsyslog (Debian's `rsyslog`) as a SIEM collector for the sink tests: `imtcp` on
//! 127.0.0.1 inside a network namespace of its own, every message written raw (`%rawmsg%`)
//! to a file, nothing else loaded.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::MutexGuard,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    begin_test,
    netns::{add_namespace, delete_namespaces, in_netns, netns_cmd, wait_tcp_ready_in},
    process::{terminate, wait_timeout},
    remove_test_dir, require_root,
};

/// How long rsyslog gets to start listening or to stop.
const RSYSLOG_TIMEOUT: Duration = Duration::from_secs(10);

/// One sink test's world: a network namespace with only loopback (`np-<pid>-<n>-c`, so a
/// killed run's leftover is cleaned like the other tests'), and a temp dir.
pub struct SinkEnv {
    /// The namespace.
    pub ns: String,
    dir: PathBuf,
    created: bool,
    _serial: MutexGuard<'static, ()>,
}

impl SinkEnv {
    /// Creates the namespace and the temp dir.
    pub fn start() -> Result<SinkEnv> {
        require_root()?;
        let (serial, n, dir) = begin_test()?;
        let ns = format!("np-{}-{n}-c", std::process::id());
        let mut env = SinkEnv {
            ns,
            dir,
            created: false,
            _serial: serial,
        };
        add_namespace(&env.ns)?;
        env.created = true;
        Ok(env)
    }

    /// The temp dir (removed on drop unless `NPROT_KEEP_TMP` is set).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` on a thread inside the namespace; threads it spawns stay there (a
    /// collector sink's sender).
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(&self.ns, f)
    }

    /// Starts rsyslog listening on 127.0.0.1:`port` in the namespace.
    pub fn start_rsyslog(&self, port: u16) -> Result<Rsyslog> {
        Rsyslog::start(&self.ns, &self.dir.join("rsyslog"), port)
    }
}

impl Drop for SinkEnv {
    fn drop(&mut self) {
        if self.created {
            for e in delete_namespaces(&[&self.ns]) {
                eprintln!("nprot-tests cleanup: {e}");
            }
        }
        remove_test_dir(&self.dir);
    }
}

/// rsyslogd in the foreground (`-n`) with a minimal configuration.
pub struct Rsyslog {
    ns: String,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Where every received message goes, one per line.
    pub output: PathBuf,
}

impl Rsyslog {
    /// Writes the configuration into `dir`, starts rsyslogd and waits until it accepts
    /// connections.
    pub fn start(ns: &str, dir: &Path, port: u16) -> Result<Rsyslog> {
        fs::create_dir_all(dir.join("work"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let output = dir.join("received.log");
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="collect") {{
    action(type="omfile" file="{output}" template="raw" flushOnTXEnd="on")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="collect")
"#,
            work = dir.join("work").display(),
            output = output.display(),
        );
        fs::write(dir.join("rsyslog.conf"), conf)?;
        let mut rsyslog = Rsyslog {
            ns: ns.to_owned(),
            dir: dir.to_owned(),
            port,
            child: None,
            output,
        };
        rsyslog.restart()?;
        Ok(rsyslog)
    }

    /// Starts rsyslogd (again) with the same configuration and output file.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("rsyslog is already running");
        }
        which("rsyslogd")?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.stderr"))?;
        let child = netns_cmd(&self.ns, "rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start rsyslogd")?;
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        if let Err(e) = wait_tcp_ready_in(&self.ns, &[addr], RSYSLOG_TIMEOUT) {
            bail!("rsyslogd did not listen: {e:#}\n{}", self.stderr());
        }
        Ok(())
    }

    /// SIGTERM, and waits for rsyslogd to exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("rsyslog is not running");
        };
        crate::process::signal(child.id(), nix::sys::signal::Signal::SIGTERM)?;
        if let Some(status) = wait_timeout(&mut child, RSYSLOG_TIMEOUT)? {
            Ok(status)
        } else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("rsyslogd ignored SIGTERM for {RSYSLOG_TIMEOUT:?}")
        }
    }

    /// The received messages so far, one per line (a last line still being written is
    /// left out).
    pub fn received(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.output).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        complete.lines().map(str::to_owned).collect()
    }

    /// What rsyslogd printed.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
    }

    /// Waits until `done(received)` holds or `timeout` passes; returns the last lines.
    pub fn wait_received(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.received();
            if done(&lines) || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(e) = terminate(&mut child, Duration::from_secs(3))
        {
            eprintln!("nprot-tests cleanup: rsyslogd: {e:#}");
        }
    }
}

fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        || Path::new("/usr/sbin").join(program).is_file();
    if !found {
        bail!("{program} not found: install Debian's rsyslog (`cargo xtask setup`)");
    }
    Ok(())
}

/// Runs `systemd-analyze verify` on `unit`; returns its combined output, failing if it
/// exits non-zero.
pub fn systemd_analyze_verify(unit: &Path) -> Result<String> {
    let out = crate::process::run_with_timeout(
        Command::new("systemd-analyze").arg("verify").arg(unit),
        Duration::from_mins(1),
    )
    .context("systemd-analyze (Debian package systemd) must be installed")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("systemd-analyze verify {} failed:\n{text}", unit.display());
    }
    Ok(text)
}
