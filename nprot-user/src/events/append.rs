//! Appending whole batches or nothing: an event file never holds a partial line.
//!
//! A write that fails part-way (a full disk takes what fits, then says `ENOSPC`) is cut
//! back to the length the file had before it, so the next batch starts on a line of its
//! own. If even that cut fails, it is retried before the next write, and nothing is
//! appended to the torn line until it succeeds (those batches are lost and counted too).
//! A lost batch is not kept for a retry: the verdict loop must not hold an unbounded
//! backlog while a disk stays full (docs/decisions.md, *Sinks*).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::Path,
};

/// What an [`AppendLog`] writes to: a file opened with `O_APPEND`, or a fake in tests.
pub trait Storage {
    /// The current length, where the next append lands.
    fn end(&mut self) -> io::Result<u64>;
    /// Appends all of `bytes`; on an error some of them may have been written.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Cuts the storage back to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

impl Storage for File {
    fn end(&mut self) -> io::Result<u64> {
        // fstat, not our own count: an external `logrotate copytruncate` may have cut it.
        Ok(self.metadata()?.len())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)?;
        self.flush()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

/// Opens (or creates) `path` for appending.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// An append-only log that takes each `append` whole or not at all.
pub struct AppendLog<S: Storage = File> {
    storage: S,
    /// The length to cut back to before anything else is written: a failed append left
    /// bytes past it that could not be removed yet.
    torn_at: Option<u64>,
    /// Failed cuts, for `nprot stats`: each one left a torn line until a later cut.
    truncate_errors: u64,
}

impl<S: Storage> AppendLog<S> {
    /// A log over `storage`, appended to at its end.
    pub fn new(storage: S) -> AppendLog<S> {
        AppendLog {
            storage,
            torn_at: None,
            truncate_errors: 0,
        }
    }

    /// Appends `bytes` whole and returns the new length, or leaves the log as it was
    /// and returns the error.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<u64> {
        // Never append after half a line: the batch waits for (or is lost with) the cut.
        self.settle()?;
        let good = self.storage.end()?;
        match self.storage.append(bytes) {
            Ok(()) => Ok(good + bytes.len() as u64),
            Err(e) => {
                if let Err(cut) = self.cut_back(good) {
                    self.torn_at = Some(good);
                    log::warn!("cannot cut a failed write back to {good} bytes: {cut}");
                }
                Err(e)
            }
        }
    }

    /// Cuts off what a failed append left, if an earlier cut failed; an error if it
    /// still cannot (before the file is closed or rotated away, and before each append).
    pub fn settle(&mut self) -> io::Result<()> {
        if let Some(good) = self.torn_at {
            self.cut_back(good)?;
            self.torn_at = None;
        }
        Ok(())
    }

    /// Failed attempts to cut a failed write back so far.
    pub fn truncate_errors(&self) -> u64 {
        self.truncate_errors
    }

    fn cut_back(&mut self, good: u64) -> io::Result<()> {
        let result = match self.storage.end() {
            // Only ever shrink: a file someone else cut shorter must not grow zeros.
            Ok(now) if now > good => self.storage.truncate(good),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.truncate_errors += 1;
        }
        result
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Storage with room for `capacity` bytes: an append takes what fits, then fails
    /// with `StorageFull`, like a write(2) loop on a full disk.
    #[derive(Debug, Default)]
    pub(crate) struct Disk {
        pub data: Vec<u8>,
        pub capacity: usize,
        /// `truncate` fails while this is set.
        pub truncate_fails: bool,
        /// `end` fails while this is set.
        pub end_fails: bool,
    }

    impl Storage for &mut Disk {
        fn end(&mut self) -> io::Result<u64> {
            if self.end_fails {
                return Err(io::Error::other("fstat failed"));
            }
            Ok(self.data.len() as u64)
        }

        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            let room = self.capacity.saturating_sub(self.data.len());
            let n = room.min(bytes.len());
            self.data.extend_from_slice(&bytes[..n]);
            if n < bytes.len() {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            Ok(())
        }

        fn truncate(&mut self, len: u64) -> io::Result<()> {
            if self.truncate_fails {
                return Err(io::Error::other("truncate failed"));
            }
            self.data.truncate(len as usize);
            Ok(())
        }
    }

    fn text(disk: &Disk) -> &str {
        std::str::from_utf8(&disk.data).unwrap()
    }

    #[test]
    fn a_write_that_does_not_fit_is_cut_back_whole() {
        let mut disk = Disk {
            capacity: 20,
            ..Disk::default()
        };
        let mut log = AppendLog::new(&mut disk);
        assert_eq!(log.append(b"{\"n\":1}\n").unwrap(), 8);
        let err = log.append(b"{\"n\":2}\n{\"n\":3}\n").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        // Space freed: the next batch starts on a line of its own.
        log.storage.capacity = 100;
        assert_eq!(log.append(b"{\"n\":4}\n").unwrap(), 16);
        assert_eq!(text(log.storage), "{\"n\":1}\n{\"n\":4}\n");
    }

    #[test]
    fn a_failed_cut_is_retried_before_the_next_append() {
        let mut disk = Disk {
            capacity: 12,
            truncate_fails: true,
            ..Disk::default()
        };
        let mut log = AppendLog::new(&mut disk);
        log.append(b"{\"n\":1}\n").unwrap();
        log.append(b"{\"n\":2}\n").unwrap_err();
        assert_eq!(log.truncate_errors(), 1);
        assert_eq!(log.storage.data.len(), 12, "the torn bytes are still there");
        // Room again, but the cut still fails: the batch is refused, not glued on.
        log.storage.capacity = 100;
        log.append(b"{\"n\":3}\n").unwrap_err();
        assert_eq!(log.truncate_errors(), 2);
        log.storage.truncate_fails = false;
        assert_eq!(log.append(b"{\"n\":4}\n").unwrap(), 16);
        assert_eq!(text(log.storage), "{\"n\":1}\n{\"n\":4}\n");
    }

    #[test]
    fn a_file_cut_shorter_by_someone_else_is_not_extended() {
        let mut disk = Disk {
            capacity: 100,
            ..Disk::default()
        };
        let mut log = AppendLog::new(&mut disk);
        log.append(b"{\"n\":1}\n{\"n\":2}\n").unwrap();
        // copytruncate, then a write that fails without writing anything.
        log.storage.data.clear();
        log.storage.capacity = 0;
        log.append(b"{\"n\":3}\n").unwrap_err();
        assert!(log.storage.data.is_empty());
        assert_eq!(log.truncate_errors(), 0);
        log.storage.capacity = 100;
        assert_eq!(log.append(b"{\"n\":4}\n").unwrap(), 8);
    }

    #[test]
    fn an_unknown_length_fails_the_batch_before_writing() {
        let mut disk = Disk {
            capacity: 100,
            end_fails: true,
            ..Disk::default()
        };
        let mut log = AppendLog::new(&mut disk);
        log.append(b"{\"n\":1}\n").unwrap_err();
        assert!(log.storage.data.is_empty());
    }

    #[test]
    fn dev_full_fails_and_leaves_nothing_torn() {
        let Ok(file) = open_append(Path::new("/dev/full")) else {
            return; // no /dev/full in this sandbox
        };
        let mut log = AppendLog::new(file);
        let err = log.append(b"{\"n\":1}\n").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::ENOSPC as i32));
        assert_eq!(log.truncate_errors(), 0);
        assert!(log.torn_at.is_none());
    }
}
