//! Absence checks without a fixed waiting time: to show that the sensor did *not* report
//! something about an earlier flow, make a later flow it must report (the barrier), wait
//! for that flow's events, and check that the unwanted event is not among the events
//! written before them.
//!
//! This holds because the sensor reports in order: the kernel hands every record to one
//! ring buffer, one verdict loop handles them in that order, and its sinks append events
//! in the order they were made. Once a later connection's `ConnectionSuccess` and its
//! inspection event are in the file, whatever the sensor had to say about a connection
//! that ended before the barrier began is in the file too, above them.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::{
    EVENT_TIMEOUT,
    events::{EventLog, ev},
    world::ClientServer,
};

/// How often the event file is re-read while waiting for the barrier.
const POLL: Duration = Duration::from_millis(20);

/// The barrier's events: the connection and its inspection.
const BARRIER_EVENTS: [&str; 2] = ["ConnectionSuccess", "HttpConnectionInspected"];

/// A later flow the sensor must report, made after everything whose absence is checked
/// ([`Barrier::assert_absent`]).
#[derive(Debug, Clone)]
pub struct Barrier {
    what: String,
    /// The barrier client's port (`LocalPort`, or `RemotePort` where the sensor sees the
    /// flow inbound, as on a gateway).
    client_port: u16,
    /// How many events the file had before the barrier flow began.
    from: usize,
}

impl Barrier {
    /// `curl http://good.example/good` from the client of `world`, which must be answered
    /// 200: an allowed request under every indicator set of the tests. Its events will be
    /// in `events`.
    #[track_caller]
    pub fn http(world: &impl ClientServer, events: &EventLog) -> Barrier {
        Barrier::run(events, "the barrier flow http://good.example/good", || {
            let r = world
                .curl_http_any("good.example", 80, false, "/good", &[])
                .unwrap_or_else(|e| panic!("barrier curl: {e:#}"));
            assert!(
                r.exit_code == Some(0) && r.http_code == 200,
                "the barrier flow http://good.example/good failed: {r:?}\n{}",
                events.dump()
            );
            r.local_port
        })
    }

    /// A barrier flow made by `make`, which returns the client's port of an allowed plain
    /// HTTP connection that it completed (so that the sensor reports a
    /// `ConnectionSuccess` and an `HttpConnectionInspected` for it).
    pub fn run(events: &EventLog, what: &str, make: impl FnOnce() -> u16) -> Barrier {
        let from = events.events().map_or(0, |e| e.len());
        let client_port = make();
        Barrier {
            what: what.to_owned(),
            client_port,
            from,
        }
    }

    fn is_barrier_event(&self, action: &str, e: &Value) -> bool {
        ev::is(e, action)
            && (ev::local_port(e, self.client_port) || ev::remote_port(e, self.client_port))
    }

    /// Waits for the barrier's events; returns the events read and the index just past
    /// the last of them.
    pub fn wait(&self, events: &EventLog) -> Result<(Vec<Value>, usize)> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let all = events.events()?;
            let found: Option<Vec<usize>> = BARRIER_EVENTS
                .iter()
                .map(|action| {
                    all.iter()
                        .enumerate()
                        .skip(self.from)
                        .find(|(_, e)| self.is_barrier_event(action, e))
                        .map(|(i, _)| i)
                })
                .collect();
            if let Some(end) = found.and_then(|at| at.into_iter().max()) {
                return Ok((all, end));
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {EVENT_TIMEOUT:?} waiting for the events ({}) of {} \
                     from client port {}\n{}",
                    BARRIER_EVENTS.join(", "),
                    self.what,
                    self.client_port,
                    events.report(&all)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for the barrier's events and fails if an event matching `unwanted` was
    /// written before them.
    pub fn check_absent(
        &self,
        events: &EventLog,
        what: &str,
        unwanted: impl Fn(&Value) -> bool,
    ) -> Result<()> {
        let (all, end) = self.wait(events)?;
        if let Some(e) = all[..end].iter().find(|e| unwanted(e)) {
            bail!(
                "unexpected {what} (before {}): {e}\n{}",
                self.what,
                events.report(&all)
            );
        }
        Ok(())
    }

    /// [`Barrier::check_absent`], panicking with every event and the sensor's stderr.
    #[track_caller]
    pub fn assert_absent(&self, events: &EventLog, what: &str, unwanted: impl Fn(&Value) -> bool) {
        self.check_absent(events, what, unwanted)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::StderrLog;

    fn log_of(lines: &[&str]) -> (EventLog, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "nprot-barrier-{}-{}",
            std::process::id(),
            lines.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        std::fs::write(
            &path,
            lines.iter().flat_map(|l| [*l, "\n"]).collect::<String>(),
        )
        .unwrap();
        (EventLog::new(&path, StderrLog::default()), dir)
    }

    #[test]
    fn only_events_before_the_barrier_count() {
        let (events, dir) = log_of(&[
            r#"{"ActionType":"SslConnectionInspected","LocalPort":1000}"#,
            r#"{"ActionType":"Blocked","LocalPort":1000}"#,
            r#"{"ActionType":"ConnectionSuccess","LocalPort":2000}"#,
            r#"{"ActionType":"HttpConnectionInspected","LocalPort":2000}"#,
            r#"{"ActionType":"Late","LocalPort":1000}"#,
        ]);
        let barrier = Barrier {
            what: "test barrier".into(),
            client_port: 2000,
            from: 1,
        };
        assert_eq!(barrier.wait(&events).unwrap().1, 3);
        let blocked = |e: &Value| ev::is(e, "Blocked");
        assert!(barrier.check_absent(&events, "Blocked", blocked).is_err());
        let late = |e: &Value| ev::is(e, "Late");
        barrier.check_absent(&events, "Late", late).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
