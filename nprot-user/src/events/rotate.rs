//! An event file with size-based rotation: `events.jsonl` → `events.jsonl.1` → … →
//! `events.jsonl.KEEP`, the oldest removed.
//!
//! Rotation happens only between lines, before a write that would take the file past its
//! limit, so a line is never split across two files and nothing is lost to rotation: if a
//! rename or the reopen fails, the sink keeps appending to the file it has (past the
//! limit), counts a `rotation_error` and tries again once it has grown by another
//! `max_bytes`. A single line longer than the limit gets a file of its own.
//!
//! Each file's part of a batch is appended whole or not at all ([`super::append`]); when
//! a part fails, it and the rest of the batch are lost and counted, what went before
//! stays (a [`PartlyLost`] error).

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use super::{
    append::{AppendLog, open_append},
    sink::{PartlyLost, Sink, count_lines},
};

/// A file opened for appending, flushed after every batch and rotated by size.
pub struct RotatingFileSink {
    path: PathBuf,
    log: AppendLog<File>,
    /// Bytes in the current file.
    size: u64,
    max_bytes: u64,
    /// After a failed rotation: how far past `max_bytes` the file may grow before the
    /// next attempt.
    grace: u64,
    keep: usize,
    /// The file we append to was renamed to `path.1`, but no new `path` could be opened:
    /// the next rotation only opens one (shifting again would move our own file).
    detached: bool,
    /// How a new `path` is opened (a seam for tests of a failing reopen).
    opener: fn(&Path) -> io::Result<File>,
    rotations: u64,
    rotation_errors: u64,
    truncate_errors: u64,
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
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFileSink {
            path: path.to_owned(),
            log: AppendLog::new(file),
            size,
            max_bytes,
            grace: 0,
            keep,
            detached: false,
            opener: open_append,
            rotations: 0,
            rotation_errors: 0,
            truncate_errors: 0,
        })
    }

    /// How often the file was rotated since it was opened.
    pub fn rotations(&self) -> u64 {
        self.rotations
    }

    /// Rotations that failed (and were retried later) since the file was opened.
    pub fn rotation_errors(&self) -> u64 {
        self.rotation_errors
    }

    /// `path.N`.
    pub fn rotated_path(&self, n: usize) -> PathBuf {
        numbered(&self.path, n)
    }

    /// Shifts `path.(keep-1)` → `path.keep` … `path` → `path.1` and opens a new `path`.
    /// On an error no file is lost and the sink still appends to the file it had.
    fn rotate(&mut self) -> io::Result<()> {
        // A torn line must not be rotated away where no later cut reaches it.
        self.log.settle()?;
        if !self.detached {
            self.shift_rotated()?;
            // Renaming over `path.1` replaces (removes) the oldest copy when keep is 1.
            fs::rename(&self.path, numbered(&self.path, 1))?;
            self.detached = true;
        }
        match (self.opener)(&self.path) {
            Ok(file) => {
                self.size = file.metadata().map_or(0, |m| m.len());
                self.truncate_errors += self.log.truncate_errors();
                self.log = AppendLog::new(file);
                self.detached = false;
                self.rotations += 1;
                Ok(())
            }
            Err(e) => {
                // Put our file back, so that `path` keeps receiving the events; if that
                // fails too they still go to it (now `path.1`) through the open handle.
                if fs::rename(numbered(&self.path, 1), &self.path).is_ok() {
                    self.detached = false;
                }
                Err(e)
            }
        }
    }

    /// Moves `path.1` … up by one, only as far as the first free number: a retry after
    /// a shift that failed half-way removes no file the first attempt kept.
    fn shift_rotated(&self) -> io::Result<()> {
        let top = (1..self.keep)
            .find(|&n| fs::symlink_metadata(numbered(&self.path, n)).is_err())
            .unwrap_or(self.keep);
        for n in (1..top).rev() {
            match fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The size the current file may reach before the next rotation (attempt).
    fn limit(&self) -> u64 {
        self.max_bytes.saturating_add(self.grace)
    }

    /// Rotates if `incoming` more bytes would take a non-empty file past the limit.
    fn rotate_for(&mut self, incoming: u64) {
        if self.size == 0 || self.size.saturating_add(incoming) <= self.limit() {
            return;
        }
        match self.rotate() {
            Ok(()) => self.grace = 0,
            Err(e) => {
                self.rotation_errors += 1;
                // Keep appending: a file past its limit beats lost events.
                self.grace = self.size;
                log::warn!(
                    "cannot rotate {}: {e}; appending past the size limit",
                    self.path.display()
                );
            }
        }
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
            let room = self.limit().saturating_sub(self.size);
            let fits = whole_lines_within(rest, room);
            let take = if fits > 0 {
                fits
            } else {
                self.rotate_for(rest.len() as u64);
                let fresh = whole_lines_within(rest, self.limit().saturating_sub(self.size));
                // A line longer than the limit gets a file of its own.
                if fresh > 0 { fresh } else { first_line(rest) }
            };
            let (now, later) = rest.split_at(take);
            match self.log.append(now) {
                Ok(end) => self.size = end,
                // Nothing of the batch written: the caller counts it whole.
                Err(e) if rest.len() == lines.len() => return Err(e),
                Err(cause) => {
                    let lost = count_lines(rest);
                    return Err(PartlyLost { lost, cause }.into_io());
                }
            }
            rest = later;
        }
        Ok(())
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
            "truncate_errors": self.truncate_errors + self.log.truncate_errors(),
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
            let text: String = (0..=(batch % 4)).map(|i| line(batch * 10 + i)).collect();
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

    /// `path.KEEP` … `path.1`, then `path`: everything the sink kept, oldest first.
    fn all_files(sink: &RotatingFileSink, path: &Path) -> String {
        (1..=sink.keep)
            .rev()
            .map(|n| read(&sink.rotated_path(n)))
            .chain([read(path)])
            .collect()
    }

    fn assert_whole_lines(text: &str) {
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        for l in text.lines() {
            assert!(l.len() == 10 && l.starts_with("{\"n\":"), "{l:?}");
        }
    }

    /// A non-empty directory: renaming a file over it fails (also as root).
    fn obstacle(path: &Path) {
        fs::create_dir_all(path).unwrap();
        fs::write(path.join("x"), "x").unwrap();
    }

    #[test]
    fn a_failed_rename_keeps_the_file_and_is_retried() {
        let dir = tempdir("rename-fails");
        let path = dir.join("e.jsonl");
        let mut sink = RotatingFileSink::open(&path, 25, 1).unwrap();
        obstacle(&sink.rotated_path(1));
        let mut all = String::new();
        for n in 0..3 {
            sink.write_batch(line(n).as_bytes()).unwrap();
            all.push_str(&line(n));
        }
        // The third line could not rotate: it went on past the limit.
        assert_eq!((sink.rotations(), sink.rotation_errors()), (0, 1));
        assert_eq!(read(&path), all);
        // The next attempt waits until the file has grown by another limit.
        sink.write_batch(line(3).as_bytes()).unwrap();
        assert_eq!(sink.rotation_errors(), 1);
        all.push_str(&line(3));
        fs::remove_dir_all(sink.rotated_path(1)).unwrap();
        // Line 4 finds the file past its grace and rotates it.
        for n in 4..6 {
            sink.write_batch(line(n).as_bytes()).unwrap();
            all.push_str(&line(n));
        }
        assert_eq!((sink.rotations(), sink.rotation_errors()), (1, 1));
        assert_eq!(read(&path), line(4) + &line(5));
        assert_eq!(read(&sink.rotated_path(1)) + &read(&path), all);
        assert_whole_lines(&read(&path));
        assert_eq!(sink.stats()["rotation_errors"], 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_shift_that_fails_half_way_loses_no_file() {
        let dir = tempdir("shift-fails");
        let path = dir.join("e.jsonl");
        let mut sink = RotatingFileSink::open(&path, 15, 3).unwrap();
        let mut all = String::new();
        for n in 0..3 {
            sink.write_batch(line(n).as_bytes()).unwrap();
            all.push_str(&line(n));
        }
        // path.2 and path.1 hold lines 0 and 1; path.2 cannot move over path.3.
        assert_eq!(sink.rotations(), 2);
        obstacle(&sink.rotated_path(3));
        sink.write_batch(line(3).as_bytes()).unwrap();
        all.push_str(&line(3));
        assert_eq!(sink.rotation_errors(), 1);
        assert_eq!(read(&sink.rotated_path(2)), line(0));
        assert_eq!(read(&sink.rotated_path(1)), line(1));
        assert_eq!(read(&path), line(2) + &line(3));
        fs::remove_dir_all(sink.rotated_path(3)).unwrap();
        sink.write_batch(line(4).as_bytes()).unwrap();
        all.push_str(&line(4));
        assert_eq!((sink.rotations(), sink.rotation_errors()), (3, 1));
        assert_eq!(all_files(&sink, &path), all);
        let _ = fs::remove_dir_all(&dir);
    }

    fn refuse(_: &Path) -> io::Result<File> {
        Err(io::Error::other("cannot open"))
    }

    /// Refuses, and leaves a directory where the file was to be put back.
    fn refuse_and_block(path: &Path) -> io::Result<File> {
        obstacle(path);
        Err(io::Error::other("cannot open"))
    }

    #[test]
    fn a_failed_reopen_puts_the_file_back() {
        let dir = tempdir("reopen-fails");
        let path = dir.join("e.jsonl");
        let mut sink = RotatingFileSink::open(&path, 15, 2).unwrap();
        sink.opener = refuse;
        sink.write_batch(line(0).as_bytes()).unwrap();
        sink.write_batch(line(1).as_bytes()).unwrap();
        assert_eq!((sink.rotations(), sink.rotation_errors()), (0, 1));
        assert!(!sink.rotated_path(1).exists());
        assert_eq!(read(&path), line(0) + &line(1));
        sink.opener = open_append;
        sink.write_batch(line(2).as_bytes()).unwrap();
        assert_eq!(sink.rotations(), 1);
        assert_eq!(read(&sink.rotated_path(1)), line(0) + &line(1));
        assert_eq!(read(&path), line(2));
        // Back to one line per file.
        sink.write_batch(line(3).as_bytes()).unwrap();
        assert_eq!(read(&sink.rotated_path(2)), line(0) + &line(1));
        assert_eq!(read(&sink.rotated_path(1)), line(2));
        assert_eq!(read(&path), line(3));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_cannot_be_put_back_is_still_written_then_rotated_once() {
        let dir = tempdir("detached");
        let path = dir.join("e.jsonl");
        let mut sink = RotatingFileSink::open(&path, 15, 3).unwrap();
        sink.opener = refuse_and_block;
        sink.write_batch(line(0).as_bytes()).unwrap();
        sink.write_batch(line(1).as_bytes()).unwrap();
        // Renamed to path.1, not put back: the lines still go to it.
        assert!(sink.detached);
        assert_eq!(read(&sink.rotated_path(1)), line(0) + &line(1));
        fs::remove_dir_all(&path).unwrap();
        sink.opener = open_append;
        sink.write_batch(line(2).as_bytes()).unwrap();
        // The retry only opens a new path: path.1 is not shifted away.
        assert_eq!((sink.rotations(), sink.rotation_errors()), (1, 1));
        assert!(!sink.detached);
        assert_eq!(read(&sink.rotated_path(1)), line(0) + &line(1));
        assert!(!sink.rotated_path(2).exists());
        assert_eq!(read(&path), line(2));
        sink.write_batch(line(3).as_bytes()).unwrap();
        assert_eq!(
            all_files(&sink, &path),
            (0..4).map(line).collect::<String>()
        );
        let _ = fs::remove_dir_all(&dir);
    }

    fn dev_full(_: &Path) -> io::Result<File> {
        open_append(Path::new("/dev/full"))
    }

    #[test]
    fn a_batch_that_fills_the_disk_after_a_rotation_is_lost_from_there_on() {
        if !Path::new("/dev/full").exists() {
            return;
        }
        let dir = tempdir("full-after-rotation");
        let path = dir.join("e.jsonl");
        let mut sink = RotatingFileSink::open(&path, 25, 2).unwrap();
        sink.opener = dev_full;
        let batch: String = (0..5).map(line).collect();
        let err = sink.write_batch(batch.as_bytes()).unwrap_err();
        let partly = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<PartlyLost>())
            .expect("a partial loss");
        // Two lines fit the first file; after the rotation the "disk" is full.
        assert_eq!(partly.lost, 3);
        assert_eq!(read(&sink.rotated_path(1)), line(0) + &line(1));
        // Nothing written at all: the plain error, the whole batch lost.
        let err = sink.write_batch(line(5).as_bytes()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::ENOSPC as i32));
        let _ = fs::remove_dir_all(&dir);
    }
}
