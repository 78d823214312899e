//! Sinks: where event lines go. A batch is serialised once and handed to every sink.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::Event;

/// A destination for newline-delimited JSON events.
pub trait Sink: Send {
    /// Writes a batch of complete lines and makes it durable enough for the sink's kind.
    fn write_batch(&mut self, lines: &[u8]) -> io::Result<()>;
    /// Names the sink in logs.
    fn describe(&self) -> String;
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
    /// Events that a sink failed to take, summed over sinks.
    pub dropped: u64,
    /// Events written, counted once per event.
    pub written: u64,
}

impl Fanout {
    /// Fans out to `sinks`.
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Fanout {
        Fanout {
            sinks,
            buf: Vec::with_capacity(64 * 1024),
            dropped: 0,
            written: 0,
        }
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
                self.dropped += n;
                log::warn!("{}: {n} events lost: {e}", sink.describe());
            }
        }
        self.written += n;
    }
}
