//! An event file with size-based rotation: `events.jsonl` → `events.jsonl.1` → … →
//! `events.jsonl.KEEP`, the oldest removed.
//!
//! Rotation happens only between lines, before a write that would take the file past its
//! limit, so a line is never split across two files and nothing is lost to rotation: if
//! renaming or reopening fails, the sink keeps appending to the file it has (past the
//! limit) and tries again once it has grown by another `max_bytes`. A single line longer
//! than the limit gets a file of its own.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use super::sink::Sink;

/// A file opened for appending, flushed after every batch and rotated by size.
pub struct RotatingFileSink {
    path: PathBuf,
    file: File,
    /// Bytes in the current file.
    size: u64,
    max_bytes: u64,
    keep: usize,
    rotations: u64,
    rotation_errors: u64,
}

impl RotatingFileSink {
    /// Opens (or creates) `path` for appending; it is rotated before it would grow past
    /// `max_bytes`, keeping `keep` old files (`path.1` newest … `path.KEEP` oldest).
    /// `max_bytes` and `keep` must be at least 1: rotation that throws the current file
    /// away would lose events.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<RotatingFileSink> {
        if max_bytes == 0 || keep == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "rotation needs max_bytes ≥ 1 and keep ≥ 1",
            ));
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFileSink {
            path: path.to_owned(),
            file,
            size,
            max_bytes,
            keep,
            rotations: 0,
            rotation_errors: 0,
        })
    }

    /// How often the file was rotated since it was opened.
    pub fn rotations(&self) -> u64 {
        self.rotations
    }

    /// `path.N`.
    pub fn rotated_path(&self, n: usize) -> PathBuf {
        numbered(&self.path, n)
    }

    /// Shifts `path.(keep-1)` → `path.keep` … `path` → `path.1` and opens a new `path`.
    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..self.keep).rev() {
            let from = numbered(&self.path, n);
            match fs::rename(&from, numbered(&self.path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        // Renaming over `path.1` replaces (removes) the oldest copy when keep is 1.
        fs::rename(&self.path, numbered(&self.path, 1))?;
        // Until this succeeds `self.file` still appends to what is now `path.1`: late,
        // but not lost.
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        self.rotations += 1;
        Ok(())
    }

    /// Rotates if `incoming` more bytes would take a non-empty file past the limit.
    fn rotate_for(&mut self, incoming: u64) {
        if self.size == 0 || self.size + incoming <= self.max_bytes {
            return;
        }
        if let Err(e) = self.rotate() {
            self.rotation_errors += 1;
            // Keep appending: a file past its limit beats lost events.
            self.size = 0;
            log::warn!(
                "cannot rotate {}: {e}; appending past the size limit",
                self.path.display()
            );
        }
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl Sink for RotatingFileSink {
    fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
        let mut rest = lines;
        while !rest.is_empty() {
            // The longest run of whole lines that fits the room left, or, in a file that
            // cannot take even one, the room a fresh file has.
            let room = self.max_bytes.saturating_sub(self.size);
            let fits = whole_lines_within(rest, room);
            let take = if fits > 0 {
                fits
            } else {
                self.rotate_for(rest.len() as u64);
                let fresh = whole_lines_within(rest, self.max_bytes.saturating_sub(self.size));
                // A line longer than the limit gets a file of its own.
                if fresh > 0 { fresh } else { first_line(rest) }
            };
            let (now, later) = rest.split_at(take);
            self.append(now)?;
            rest = later;
        }
        self.file.flush()
    }

    fn describe(&self) -> String {
        format!(
            "file {} (rotated at {} bytes, {} kept)",
            self.path.display(),
            self.max_bytes,
            self.keep
        )
    }

    fn stats(&self) -> Value {
        json!({
            "rotations": self.rotations,
            "rotation_errors": self.rotation_errors,
            "size": self.size,
        })
    }
}

/// Length of the longest prefix of `buf` made of whole lines and at most `room` bytes
/// long. Without a final newline, the tail counts as a line.
fn whole_lines_within(buf: &[u8], room: u64) -> usize {
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if buf.len() <= room {
        return buf.len();
    }
    buf[..room]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1)
}

fn first_line(buf: &[u8]) -> usize {
    buf.iter()
        .position(|&b| b == b'\n')
        .map_or(buf.len(), |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nprot-rotate-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    fn line(n: usize) -> String {
        format!("{{\"n\":{n:04}}}\n") // 11 bytes
    }

    #[test]
    fn rotates_between_lines_and_loses_nothing() {
        let dir = tempdir("between");
        let path = dir.join("events.jsonl");
        // 11-byte lines, 40-byte files: three lines per file.
        let mut sink = RotatingFileSink::open(&path, 40, 3).unwrap();
        let mut all = String::new();
        for batch in 0..7 {
            // Batches of 1, 2, 3 … lines: some fit, some straddle a rotation.
            let text: String = (0..batch % 4 + 1).map(|i| line(batch * 10 + i)).collect();
            sink.write_batch(text.as_bytes()).unwrap();
            all.push_str(&text);
        }
        let files: Vec<String> = (0..=3)
            .rev()
            .map(|n| {
                read(&if n == 0 {
                    path.clone()
                } else {
                    sink.rotated_path(n)
                })
            })
            .collect();
        for f in &files {
            assert!(f.len() <= 40, "{f:?}");
            assert!(f.is_empty() || f.ends_with('\n'), "split line in {f:?}");
        }
        let total = all.len();
        let joined: String = files.concat();
        // With 3 files kept, the oldest lines may be gone, but what is there is the tail
        // of the stream, in order, and whole.
        assert!(
            all.ends_with(&joined),
            "{joined:?} is not the tail of {all:?}"
        );
        assert!(sink.rotations() >= 4, "{}", sink.rotations());
        assert!(!sink.rotated_path(4).exists());
        assert!(joined.len() > total - 4 * 40);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn nothing_is_lost_while_within_keep() {
        let dir = tempdir("keep");
        let path = dir.join("e.jsonl");
        let mut sink = RotatingFileSink::open(&path, 25, 10).unwrap();
        let mut all = String::new();
        for n in 0..12 {
            let text = line(n);
            sink.write_batch(text.as_bytes()).unwrap();
            all.push_str(&text);
        }
        // Two lines per file: 6 files, path.5 the oldest.
        assert_eq!(sink.rotations(), 5);
        let joined: String = (1..=5)
            .rev()
            .map(|n| read(&sink.rotated_path(n)))
            .chain([read(&path)])
            .collect();
        assert_eq!(joined, all);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_big_batch_is_split_at_line_boundaries() {
        let dir = tempdir("big");
        let path = dir.join("e.jsonl");
        let mut sink = RotatingFileSink::open(&path, 30, 5).unwrap();
        let text: String = (0..8).map(line).collect();
        sink.write_batch(text.as_bytes()).unwrap();
        // 8 lines of 11 bytes at 2 per 30-byte file: 4 files.
        assert_eq!(read(&path), line(6) + &line(7));
        assert_eq!(read(&sink.rotated_path(3)), line(0) + &line(1));
        assert_eq!(sink.rotations(), 3);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_oversized_line_gets_a_file_of_its_own() {
        let dir = tempdir("oversized");
        let path = dir.join("e.jsonl");
        let mut sink = RotatingFileSink::open(&path, 15, 3).unwrap();
        let long = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(30));
        let text = line(1) + &long + &line(2);
        sink.write_batch(text.as_bytes()).unwrap();
        assert_eq!(read(&sink.rotated_path(2)), line(1));
        assert_eq!(read(&sink.rotated_path(1)), long);
        assert_eq!(read(&path), line(2));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_existing_file_counts_towards_the_limit() {
        let dir = tempdir("existing");
        let path = dir.join("e.jsonl");
        fs::write(&path, line(0) + &line(1)).unwrap();
        let mut sink = RotatingFileSink::open(&path, 30, 2).unwrap();
        sink.write_batch(line(2).as_bytes()).unwrap();
        assert_eq!(read(&sink.rotated_path(1)), line(0) + &line(1));
        assert_eq!(read(&path), line(2));
        assert!(RotatingFileSink::open(&path, 30, 0).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
