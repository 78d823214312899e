//! Reading the sensor's JSON-lines event file.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::sensor::StderrLog;

/// How often the event file is re-read while waiting.
const POLL: Duration = Duration::from_millis(20);

/// The event file the sensor appends to, plus its stderr for failure messages.
#[derive(Debug, Clone)]
pub struct EventLog {
    path: PathBuf,
    stderr: StderrLog,
}

impl EventLog {
    /// An event log at `path`; `stderr` is quoted in failure messages.
    pub fn new(path: &Path, stderr: StderrLog) -> EventLog {
        EventLog {
            path: path.to_owned(),
            stderr,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every complete line of the file, parsed. A line that is not a JSON object is an
    /// error (the sensor must write JSON lines); a missing file is no events yet.
    pub fn events(&self) -> Result<Vec<Value>> {
        let text = match std::fs::read(&self.path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => bail!("cannot read {}: {e}", self.path.display()),
        };
        // Only lines that end in '\n' are complete; the last may be mid-write.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        let mut events = Vec::new();
        for (i, line) in complete.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(v) if v.is_object() => events.push(v),
                Ok(_) | Err(_) => bail!(
                    "line {} of {} is not a JSON object: {line}\nsensor stderr:\n{}",
                    i + 1,
                    self.path.display(),
                    self.stderr.text()
                ),
            }
        }
        Ok(events)
    }

    /// Re-reads the file until an event matches `pred` and returns it; fails after
    /// `timeout` with every event seen and the sensor's stderr.
    pub fn wait_for(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Result<Value> {
        self.wait_for_described("a matching event", pred, timeout)
    }

    /// [`EventLog::wait_for`] with a description of the awaited event for the error.
    pub fn wait_for_described(
        &self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events()?;
            if let Some(ev) = events.iter().find(|ev| pred(ev)) {
                return Ok(ev.clone());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.report(&events)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Checks that no event matching `pred` appears for `during`; returns the offending
    /// event in the error otherwise.
    pub fn assert_absent(
        &self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
        during: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + during;
        loop {
            let events = self.events()?;
            if let Some(ev) = events.iter().find(|ev| pred(ev)) {
                bail!("unexpected {what}: {ev}\n{}", self.report(&events));
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
            thread::sleep(POLL);
        }
    }

    /// All events (one per line) and the sensor's stderr, for failure messages.
    pub fn report(&self, events: &[Value]) -> String {
        let mut s = format!("{} events in {}:\n", events.len(), self.path.display());
        for ev in events {
            s.push_str(&ev.to_string());
            s.push('\n');
        }
        s.push_str("sensor stderr:\n");
        s.push_str(&self.stderr.text());
        s
    }

    /// [`EventLog::report`] of the current file content.
    pub fn dump(&self) -> String {
        match self.events() {
            Ok(events) => self.report(&events),
            Err(e) => format!("{e:#}"),
        }
    }
}

/// Predicates over events, to combine in `wait_for` closures.
pub mod ev {
    use serde_json::Value;

    /// `ActionType == action`.
    pub fn is(ev: &Value, action: &str) -> bool {
        ev["ActionType"] == action
    }

    /// `RemotePort == port`.
    pub fn remote_port(ev: &Value, port: u16) -> bool {
        ev["RemotePort"] == port
    }

    /// `LocalPort == port`.
    pub fn local_port(ev: &Value, port: u16) -> bool {
        ev["LocalPort"] == port
    }

    /// `AdditionalFields.<key> == value` (string).
    pub fn field(ev: &Value, key: &str, value: &str) -> bool {
        ev["AdditionalFields"][key] == value
    }

    /// The string at `AdditionalFields.<key>`, or "" if absent.
    pub fn field_str<'a>(ev: &'a Value, key: &str) -> &'a str {
        ev["AdditionalFields"][key].as_str().unwrap_or("")
    }
}
