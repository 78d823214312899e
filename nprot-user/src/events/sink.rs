//! Sinks: where event lines go. A batch is serialised once and handed to every sink.
//!
//! Sinks run on the verdict loop's thread, so `write_batch` must not wait on the network:
//! stdout and files are written in place; collectors ([`super::collector`]) only queue.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use super::Event;

/// A destination for newline-delimited JSON events.
pub trait Sink: Send {
    /// Writes a batch of complete lines and makes it durable enough for the sink's kind.
    /// An error means the whole batch was lost (the caller counts it); a sink that loses
    /// only some lines returns `Ok` and counts them in [`Sink::dropped`] instead.
    fn write_batch(&mut self, lines: &[u8]) -> io::Result<()>;
    /// Names the sink in logs.
    fn describe(&self) -> String;
    /// Events this sink lost on its own so far (a full queue, a line too long for a
    /// datagram, …): not included in the batches `write_batch` failed.
    fn dropped(&self) -> u64 {
        0
    }
    /// The sink's own counters, for `nprot stats` (`null` when it has none).
    fn stats(&self) -> Value {
        Value::Null
    }
    /// At shutdown: delivers what the sink still holds, within its own time bound, and
    /// counts the rest in [`Sink::dropped`]. The sink takes no more batches afterwards.
    fn finish(&mut self) {}
}

/// Standard output.
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(lines)?;
        out.flush()
    }

    fn describe(&self) -> String {
        "stdout".into()
    }
}

/// A file opened for appending, flushed after every batch.
pub struct FileSink {
    path: PathBuf,
    file: File,
}

impl FileSink {
    /// Opens (or creates) `path` for appending.
    pub fn open(path: &Path) -> io::Result<FileSink> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileSink {
            path: path.to_owned(),
            file,
        })
    }
}

impl Sink for FileSink {
    fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
        // One write per batch: with O_APPEND a reader never sees half a line from us.
        self.file.write_all(lines)?;
        self.file.flush()
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// Serialises events and fans them out to sinks, counting what could not be written.
pub struct Fanout {
    sinks: Vec<Box<dyn Sink>>,
    buf: Vec<u8>,
    /// Events written, counted once per event.
    pub written: u64,
    /// Events in batches whose `write_batch` failed, summed over sinks.
    failed: u64,
}

impl Fanout {
    /// Fans out to `sinks`.
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Fanout {
        Fanout {
            sinks,
            buf: Vec::with_capacity(64 * 1024),
            written: 0,
            failed: 0,
        }
    }

    /// Events that a sink failed to take or lost later, summed over sinks: batches
    /// `write_batch` failed plus every sink's own [`Sink::dropped`] (a collector's
    /// sender drops in the background), as of now.
    pub fn dropped(&self) -> u64 {
        self.failed + self.sinks.iter().map(|s| s.dropped()).sum::<u64>()
    }

    /// At shutdown: lets every sink deliver what it holds ([`Sink::finish`]).
    pub fn close(&mut self) {
        for sink in &mut self.sinks {
            sink.finish();
        }
    }

    /// Every sink's name and counters, for `nprot stats`.
    pub fn sink_stats(&self) -> Value {
        Value::Array(
            self.sinks
                .iter()
                .map(|s| json!({"sink": s.describe(), "dropped": s.dropped(), "stats": s.stats()}))
                .collect(),
        )
    }

    /// Writes `events` as one batch to every sink; drains `events`.
    pub fn publish(&mut self, events: &mut Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.buf.clear();
        for event in events.iter() {
            // Serialising our own plain types cannot fail; skip rather than panic if it did.
            if serde_json::to_writer(&mut self.buf, event).is_ok() {
                self.buf.push(b'\n');
            }
        }
        let n = events.len() as u64;
        events.clear();
        for sink in &mut self.sinks {
            if let Err(e) = sink.write_batch(&self.buf) {
                self.failed += n;
                log::warn!("{}: {n} events lost: {e}", sink.describe());
            }
        }
        self.written += n;
    }
}
