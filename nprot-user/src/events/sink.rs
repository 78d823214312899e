//! Sinks: where event lines go. A batch is serialised once and handed to every sink.
//!
//! Sinks run on the verdict loop's thread, so `write_batch` must not wait on the network:
//! stdout and files are written in place; collectors ([`super::collector`]) only queue.

use std::{
    error::Error,
    fmt,
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use super::{
    Event,
    append::{AppendLog, open_append},
};

/// A destination for newline-delimited JSON events.
pub trait Sink: Send {
    /// Writes a batch of complete lines and makes it durable enough for the sink's kind.
    /// An error means the whole batch was lost (the caller counts it), unless it carries
    /// a [`PartlyLost`] saying how many of its last lines were; a sink that loses lines
    /// later (in the background) returns `Ok` and counts them in [`Sink::dropped`].
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

/// The error of a batch a sink took only in part: its first lines were written, its
/// last `lost` were not (a rotating file that filled up after a rotation).
#[derive(Debug)]
pub struct PartlyLost {
    /// Lines (events) at the end of the batch that did not reach the sink.
    pub lost: u64,
    /// Why.
    pub cause: io::Error,
}

impl PartlyLost {
    /// As the `io::Error` `write_batch` returns.
    pub fn into_io(self) -> io::Error {
        io::Error::new(self.cause.kind(), self)
    }
}

impl fmt::Display for PartlyLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "last {} lines of the batch: {}", self.lost, self.cause)
    }
}

impl Error for PartlyLost {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.cause)
    }
}

/// Events of a batch of `n` that `err`, returned by `write_batch`, says were lost.
fn lost_of(err: &io::Error, n: u64) -> u64 {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<PartlyLost>())
        .map_or(n, |p| p.lost.min(n))
}

/// Lines in `buf`; a tail without a final newline counts as one.
pub(crate) fn count_lines(buf: &[u8]) -> u64 {
    // Each piece ends with its newline, but the last may have none; an empty buffer has
    // no pieces.
    buf.split_inclusive(|&b| b == b'\n').count() as u64
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

/// A file opened for appending, flushed after every batch; a batch is appended whole or
/// not at all (see [`super::append`]).
pub struct FileSink {
    path: PathBuf,
    log: AppendLog<File>,
}

impl FileSink {
    /// Opens (or creates) `path` for appending.
    pub fn open(path: &Path) -> io::Result<FileSink> {
        Ok(FileSink {
            path: path.to_owned(),
            log: AppendLog::new(open_append(path)?),
        })
    }
}

impl Sink for FileSink {
    fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
        self.log.append(lines).map(drop)
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn stats(&self) -> Value {
        json!({ "truncate_errors": self.log.truncate_errors() })
    }
}

/// Serialises events and fans them out to sinks, counting what could not be written.
pub struct Fanout {
    sinks: Vec<Box<dyn Sink>>,
    /// Per sink, in the order of `sinks`.
    counts: Vec<SinkCounts>,
    buf: Vec<u8>,
    /// Events that reached every sink, counted once per event: with one sink,
    /// `written` + [`Fanout::dropped`] is every event published.
    pub written: u64,
}

/// What one sink's `write_batch` calls delivered and lost.
#[derive(Debug, Default, Clone, Copy)]
struct SinkCounts {
    written: u64,
    lost: u64,
    /// Events lost since the sink last took a batch whole: logged once when the outage
    /// starts and once when it ends, not per batch (a full disk fails every batch).
    outage: u64,
}

impl Fanout {
    /// Fans out to `sinks`.
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Fanout {
        let counts = vec![SinkCounts::default(); sinks.len()];
        Fanout {
            sinks,
            counts,
            buf: Vec::with_capacity(64 * 1024),
            written: 0,
        }
    }

    /// Events that a sink failed to take or lost later, summed over sinks: events of
    /// batches `write_batch` failed plus every sink's own [`Sink::dropped`] (a
    /// collector's sender drops in the background), as of now.
    pub fn dropped(&self) -> u64 {
        self.counts.iter().map(|c| c.lost).sum::<u64>()
            + self.sinks.iter().map(|s| s.dropped()).sum::<u64>()
    }

    /// At shutdown: lets every sink deliver what it holds ([`Sink::finish`]).
    pub fn close(&mut self) {
        for sink in &mut self.sinks {
            sink.finish();
        }
    }

    /// Every sink's name and counters, for `nprot stats`: `written` (events its
    /// `write_batch` took) and `dropped` (events it failed to take or lost later).
    pub fn sink_stats(&self) -> Value {
        Value::Array(
            self.sinks
                .iter()
                .zip(&self.counts)
                .map(|(s, c)| {
                    json!({
                        "sink": s.describe(),
                        "written": c.written,
                        "dropped": c.lost + s.dropped(),
                        "stats": s.stats(),
                    })
                })
                .collect(),
        )
    }

    /// Writes `events` as one batch to every sink; drains `events`.
    pub fn publish(&mut self, events: &mut Vec<Event>) {
        self.buf.clear();
        let mut n = 0u64;
        for event in events.iter() {
            // Serialising our own plain types cannot fail; skip rather than panic if it did.
            if serde_json::to_writer(&mut self.buf, event).is_ok() {
                self.buf.push(b'\n');
                n += 1;
            }
        }
        events.clear();
        if n == 0 {
            return;
        }
        let mut most_lost = 0;
        for (sink, counts) in self.sinks.iter_mut().zip(&mut self.counts) {
            let lost = match sink.write_batch(&self.buf) {
                Ok(()) => 0,
                Err(e) => {
                    let lost = lost_of(&e, n);
                    if counts.outage == 0 {
                        log::warn!(
                            "{}: {lost} events lost: {e}; counting losses until it takes events again",
                            sink.describe()
                        );
                    }
                    lost
                }
            };
            if lost == 0 && counts.outage > 0 {
                log::info!(
                    "{}: takes events again, {} lost meanwhile",
                    sink.describe(),
                    counts.outage
                );
                counts.outage = 0;
            }
            counts.outage += lost;
            counts.lost += lost;
            counts.written += n - lost;
            most_lost = most_lost.max(lost);
        }
        self.written += n - most_lost;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::UNIX_EPOCH,
    };

    use super::*;
    use crate::events::{ActionType, Clock, Direction, EventFactory, FlowEnds};

    /// What a [`Scripted`] sink does with its next batches.
    #[derive(Debug, Clone, Copy)]
    enum Take {
        All,
        Nothing,
        /// Loses the last N lines.
        AllBut(u64),
    }

    /// A sink that follows a script (then takes everything) and keeps what it took.
    struct Scripted {
        script: Vec<Take>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Sink for Scripted {
        fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
            let full = || io::Error::new(io::ErrorKind::StorageFull, "disk full");
            let take = if self.script.is_empty() {
                Take::All
            } else {
                self.script.remove(0)
            };
            let mut got = self.got.lock().unwrap();
            match take {
                Take::All => got.extend_from_slice(lines),
                Take::Nothing => return Err(full()),
                Take::AllBut(lost) => {
                    let keep = count_lines(lines) - lost;
                    let end = lines
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| **b == b'\n')
                        .nth(keep as usize - 1)
                        .map_or(0, |(i, _)| i + 1);
                    got.extend_from_slice(&lines[..end]);
                    return Err(PartlyLost {
                        lost,
                        cause: full(),
                    }
                    .into_io());
                }
            }
            Ok(())
        }

        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    fn scripted(script: &[Take]) -> (Box<dyn Sink>, Arc<Mutex<Vec<u8>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Scripted {
            script: script.to_vec(),
            got: got.clone(),
        };
        (Box::new(sink), got)
    }

    fn events(f: &mut EventFactory, n: usize) -> Vec<Event> {
        let flow = FlowEnds {
            client: ("198.18.0.1".parse().unwrap(), 40000),
            server: ("198.18.0.2".parse().unwrap(), 443),
            direction: Direction::Outbound,
            transport: crate::events::Transport::Tcp,
        };
        (0..n)
            .map(|_| f.connection(ActionType::ConnectionSuccess, 0, &flow))
            .collect()
    }

    fn report_ids(bytes: &[u8]) -> Vec<u64> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("a whole JSON line");
                v["ReportId"].as_u64().unwrap()
            })
            .collect()
    }

    #[test]
    fn written_counts_only_what_reached_the_sink() {
        let mut f = EventFactory::new("h", "id", Clock::anchored(UNIX_EPOCH));
        let (sink, got) = scripted(&[Take::All, Take::Nothing, Take::AllBut(1), Take::All]);
        let mut fanout = Fanout::new(vec![sink]);
        for n in [2, 3, 3, 1] {
            fanout.publish(&mut events(&mut f, n));
        }
        // 9 events: batch 2 (3) lost whole, the last of batch 3 lost.
        assert_eq!((fanout.written, fanout.dropped()), (5, 4));
        assert_eq!(report_ids(&got.lock().unwrap()), [1, 2, 6, 7, 9]);
        let stats = fanout.sink_stats();
        assert_eq!(
            (&stats[0]["written"], &stats[0]["dropped"]),
            (&5.into(), &4.into())
        );
    }

    #[test]
    fn each_sink_counts_its_own_losses() {
        let mut f = EventFactory::new("h", "id", Clock::anchored(UNIX_EPOCH));
        let (good, good_got) = scripted(&[]);
        let (bad, _) = scripted(&[Take::Nothing, Take::AllBut(2)]);
        let mut fanout = Fanout::new(vec![good, bad]);
        for n in [4, 4, 4] {
            fanout.publish(&mut events(&mut f, n));
        }
        // `written` is what every sink took; the good sink has all 12.
        assert_eq!((fanout.written, fanout.dropped()), (6, 6));
        assert_eq!(report_ids(&good_got.lock().unwrap()).len(), 12);
        let stats = fanout.sink_stats();
        assert_eq!(stats[0]["written"], 12);
        assert_eq!(stats[0]["dropped"], 0);
        assert_eq!(stats[1]["written"], 6);
        assert_eq!(stats[1]["dropped"], 6);
    }

    #[test]
    fn a_full_file_loses_whole_batches_and_counts_them() {
        let Ok(sink) = FileSink::open(Path::new("/dev/full")) else {
            return; // no /dev/full in this sandbox
        };
        let mut f = EventFactory::new("h", "id", Clock::anchored(UNIX_EPOCH));
        let mut fanout = Fanout::new(vec![Box::new(sink)]);
        fanout.publish(&mut events(&mut f, 3));
        fanout.publish(&mut events(&mut f, 2));
        assert_eq!((fanout.written, fanout.dropped()), (0, 5));
        assert_eq!(fanout.sink_stats()[0]["stats"]["truncate_errors"], 0);
    }

    #[test]
    fn a_file_sink_appends_whole_lines() {
        let dir = std::env::temp_dir().join(format!("nprot-filesink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("e.jsonl");
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, "{\"old\":1}\n").unwrap();
        let mut f = EventFactory::new("h", "id", Clock::anchored(UNIX_EPOCH));
        let mut fanout = Fanout::new(vec![Box::new(FileSink::open(&path).unwrap())]);
        fanout.publish(&mut events(&mut f, 2));
        let text = std::fs::read(&path).unwrap();
        assert_eq!(report_ids(&text[10..]), [1, 2]);
        assert_eq!(fanout.written, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lines_are_counted_with_or_without_a_final_newline() {
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a\n"), 1);
        assert_eq!(count_lines(b"a\nb"), 2);
        assert_eq!(count_lines(b"\n\n"), 2);
        let plain = io::Error::other("x");
        assert_eq!(lost_of(&plain, 7), 7);
        let partly = PartlyLost {
            lost: 3,
            cause: io::Error::other("x"),
        };
        assert_eq!(lost_of(&partly.into_io(), 7), 3);
    }
}
