//! Process attribution: which program opened a flow (Defender's `InitiatingProcess*`
//! columns).
//!
//! The kernel's cgroup `connect4`/`connect6` hooks note, in the connecting task, its
//! process id, thread id, uid and `comm` under the socket's cookie (the `SOCKET_OWNERS`
//! map) and send the same through the `CONNECTS` ring buffer. The TC programs report the
//! cookie of locally originated flows. An attribution thread (not the verdict loop) reads
//! each connect record at once, while the process is most likely alive, adds what only
//! `/proc` knows (executable, command line, parent, user name) and publishes the result
//! under the cookie in a bounded table that the verdict loop reads without any I/O.
//!
//! Everything is bounded: the cookie table, the process cache (keyed by process id, with
//! the process start time and `comm` telling a reused pid or an `exec` apart) and the
//! user-name cache are two-generation LRU maps of fixed capacity.

use std::{
    collections::HashMap,
    fs,
    hash::Hash,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nprot_common::SocketOwner;
use serde::{Deserialize, Serialize};

use crate::process::ProcessInfo;

/// Cookies → processes kept at most (as many sockets as the kernel map remembers).
pub const COOKIE_TABLE_MAX: usize = nprot_common::MAX_SOCKET_OWNERS as usize;
/// Processes kept at most in the cache.
pub const PROCESS_CACHE_MAX: usize = 4096;
/// User names kept at most.
const USER_CACHE_MAX: usize = 1024;
/// Longest command line reported, in bytes; longer ones are cut (at a character
/// boundary) and end in `…`.
pub const MAX_COMMAND_LINE: usize = 4096;
/// A cached process seen again with the same pid and `comm` within this long is taken
/// as the same process without reading /proc: reusing its pid would need the pid counter
/// to wrap around in that time.
const TRUST: Duration = Duration::from_secs(1);

/// A map that holds at most `cap` entries: two generations of `cap / 2`; when the young
/// one is full the old one is dropped. A hit in the old generation moves the entry to the
/// young one, so what is used stays (an approximation of LRU at O(1) per operation).
#[derive(Debug)]
pub struct Bounded<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    half: usize,
    /// Entries dropped because the map was full.
    pub evicted: u64,
}

impl<K: Hash + Eq + Copy, V: Clone> Bounded<K, V> {
    /// A map of at most `cap` (≥ 2) entries.
    pub fn new(cap: usize) -> Self {
        Bounded {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (cap / 2).max(1),
            evicted: 0,
        }
    }

    /// The value of `k`, marked as recently used.
    pub fn get(&mut self, k: &K) -> Option<&V> {
        if !self.young.contains_key(k) {
            let v = self.old.remove(k)?;
            self.insert(*k, v);
        }
        self.young.get(k)
    }

    /// The value of `k` without touching its age.
    pub fn peek(&self, k: &K) -> Option<&V> {
        self.young.get(k).or_else(|| self.old.get(k))
    }

    /// Inserts or replaces `k`.
    pub fn insert(&mut self, k: K, v: V) {
        if self.young.len() >= self.half && !self.young.contains_key(&k) {
            self.evicted += self.old.len() as u64;
            self.old = std::mem::take(&mut self.young);
            self.young.reserve(self.half);
        }
        self.old.remove(&k);
        self.young.insert(k, v);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries it ever holds.
    pub fn capacity(&self) -> usize {
        self.half * 2
    }
}

/// The fields of `/proc/PID/stat` attribution uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The parent's process id.
    pub ppid: u32,
    /// Clock ticks after boot at which the process started.
    pub start_time: u64,
}

/// Parses `/proc/PID/stat`. The name in parentheses may hold spaces and parentheses
/// itself, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: state(3) ppid(4) … starttime(22).
    let ppid = fields.nth(1)?.parse().ok()?;
    let start_time = fields.nth(17)?.parse().ok()?;
    Some(ProcStat { ppid, start_time })
}

/// `/proc/PID/cmdline` as one line: arguments joined by spaces, at most
/// [`MAX_COMMAND_LINE`] bytes. `None` for an empty one (a kernel thread, or a process
/// that has exited).
pub fn parse_cmdline(bytes: &[u8]) -> Option<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return None;
    }
    let joined: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect();
    let text = String::from_utf8_lossy(&joined);
    if text.len() <= MAX_COMMAND_LINE {
        return Some(text.into_owned());
    }
    let mut end = MAX_COMMAND_LINE - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}…", &text[..end]))
}

/// The file name of a path (after the last `/`).
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The kernel's NUL-padded task name.
pub fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// The user name of `uid` from the system's user database (NSS), if it has one.
fn user_name(uid: u32) -> Option<String> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
    Some(user.name)
}

/// A cached process.
#[derive(Debug, Clone)]
struct Cached {
    info: Arc<ProcessInfo>,
    comm: [u8; 16],
    /// None when /proc/PID/stat could not be read (the process was gone).
    start_time: Option<u64>,
    verified: Instant,
}

/// Counters of the attribution, for `nprot stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributionStats {
    /// Connect records read from the kernel.
    pub connects: u64,
    /// Attributions served from the process cache without reading /proc.
    pub cache_hits: u64,
    /// Attributions confirmed by reading /proc/PID/stat only.
    pub stat_checks: u64,
    /// Processes read from /proc (executable, command line, parent).
    pub proc_reads: u64,
    /// Processes already gone when /proc was read: attributed from the kernel's
    /// pid, uid and task name only.
    pub proc_gone: u64,
    /// Flows whose cookie was not (yet) in the table and were attributed from the
    /// kernel map on the verdict loop.
    pub kernel_fallbacks: u64,
    /// Flows whose cookie was not (yet) in the table, attributed from the process
    /// cache through the kernel map.
    pub cache_fallbacks: u64,
    /// Flows attributed by reading /proc on the verdict loop, because a process-scoped
    /// indicator needed the executable before the attribution thread had it.
    pub sync_reads: u64,
    /// Flows with a socket cookie but no known owner.
    pub unknown: u64,
    /// Entries in the process cache, and its bound.
    pub process_cache: usize,
    /// The process cache's bound.
    pub process_cache_max: usize,
    /// Processes dropped from the cache to keep it within its bound.
    pub process_cache_evicted: u64,
    /// Entries in the cookie table, and its bound.
    pub cookie_table: usize,
    /// The cookie table's bound.
    pub cookie_table_max: usize,
}

/// The attribution's part of `nprot stats`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttributionReport {
    /// The attribution thread's own counters.
    #[serde(flatten)]
    pub stats: AttributionStats,
    /// TCP connects the kernel hooks saw.
    pub kernel_connects: u64,
    /// Connect records the kernel could not queue (ring buffer full).
    pub kernel_ring_drops: u64,
}

/// The state shared by the attribution thread and the verdict loop. Locked only for
/// map operations, never across I/O.
#[derive(Debug)]
struct Shared {
    cookies: Bounded<u64, Arc<ProcessInfo>>,
    processes: Bounded<u32, Cached>,
    users: Bounded<u32, Option<Arc<str>>>,
    stats: AttributionStats,
}

/// Reads processes from a /proc tree (the real one, or a fake one in tests) and keeps
/// what it found, bounded.
#[derive(Debug, Clone)]
pub struct Resolver {
    proc_root: PathBuf,
    shared: Arc<Mutex<Shared>>,
}

impl Resolver {
    /// A resolver reading `proc_root` (normally `/proc`) with a process cache of
    /// `process_cap` entries.
    pub fn new(proc_root: &Path, process_cap: usize) -> Resolver {
        Resolver {
            proc_root: proc_root.to_owned(),
            shared: Arc::new(Mutex::new(Shared {
                cookies: Bounded::new(COOKIE_TABLE_MAX),
                processes: Bounded::new(process_cap),
                users: Bounded::new(USER_CACHE_MAX),
                stats: AttributionStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Attributes a connect the kernel reported and publishes it under its cookie.
    pub fn on_connect(&self, owner: &SocketOwner, now: Instant) -> Arc<ProcessInfo> {
        self.count(|s| s.connects += 1);
        self.publish(owner, self.resolve(owner, now, true))
    }

    fn publish(&self, owner: &SocketOwner, info: Arc<ProcessInfo>) -> Arc<ProcessInfo> {
        self.lock().cookies.insert(owner.cookie, Arc::clone(&info));
        info
    }

    /// The process behind `cookie`, if the attribution thread has it. No I/O.
    pub fn lookup(&self, cookie: u64) -> Option<Arc<ProcessInfo>> {
        self.lock().cookies.peek(&cookie).cloned()
    }

    /// Counters, with the current sizes.
    pub fn stats(&self) -> AttributionStats {
        let s = self.lock();
        AttributionStats {
            process_cache: s.processes.len(),
            process_cache_max: s.processes.capacity(),
            process_cache_evicted: s.processes.evicted,
            cookie_table: s.cookies.len(),
            cookie_table_max: s.cookies.capacity(),
            ..s.stats
        }
    }

    fn count(&self, f: impl FnOnce(&mut AttributionStats)) {
        f(&mut self.lock().stats);
    }

    /// What is known about the process that made `owner`'s connect: from the cache when
    /// it is the same process (same pid, `comm` and start time), else from /proc, else
    /// from the kernel's record alone.
    /// `nss`: the user name may be looked up in the user database (which can mean
    /// I/O); otherwise only a cached one is used.
    pub fn resolve(&self, owner: &SocketOwner, now: Instant, nss: bool) -> Arc<ProcessInfo> {
        let tgid = owner.tgid;
        {
            let mut s = self.lock();
            if let Some(c) = s.processes.get(&tgid)
                && c.comm == owner.comm
                && now.saturating_duration_since(c.verified) < TRUST
            {
                let info = Arc::clone(&c.info);
                s.stats.cache_hits += 1;
                return info;
            }
        }
        let dir = self.proc_root.join(tgid.to_string());
        let stat = fs::read_to_string(dir.join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat);
        if let Some(stat) = stat {
            let mut s = self.lock();
            if let Some(c) = s.processes.get(&tgid)
                && c.comm == owner.comm
                && c.start_time == Some(stat.start_time)
            {
                let mut c = c.clone();
                c.verified = now;
                let info = Arc::clone(&c.info);
                s.processes.insert(tgid, c);
                s.stats.stat_checks += 1;
                return info;
            }
        }
        let exe = fs::read_link(dir.join("exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let command_line = fs::read(dir.join("cmdline"))
            .ok()
            .as_deref()
            .and_then(parse_cmdline);
        let gone = stat.is_none() || exe.is_none();
        let info = Arc::new(ProcessInfo {
            pid: tgid,
            parent_pid: stat.map(|s| s.ppid),
            file_name: match &exe {
                Some(path) => file_name(path).to_owned(),
                None => comm_str(&owner.comm),
            },
            folder_path: exe,
            command_line,
            account_name: if nss {
                self.account(owner.uid)
            } else {
                self.lock().users.peek(&owner.uid).cloned().flatten()
            },
            uid: owner.uid,
        });
        let mut s = self.lock();
        if gone {
            s.stats.proc_gone += 1;
        } else {
            s.stats.proc_reads += 1;
        }
        s.processes.insert(
            tgid,
            Cached {
                info: Arc::clone(&info),
                comm: owner.comm,
                start_time: stat.map(|s| s.start_time),
                verified: now,
            },
        );
        info
    }

    /// Looks `uid` up in the user database now, so that the verdict loop's fallback
    /// (which never does I/O) can name it.
    pub fn warm_account(&self, uid: u32) {
        self.account(uid);
    }

    /// The cached process that made `owner`'s connect, if it is known to be the same
    /// process (same pid and `comm`, confirmed within the trust window). No I/O.
    pub fn cached(&self, owner: &SocketOwner, now: Instant) -> Option<Arc<ProcessInfo>> {
        let s = self.lock();
        let c = s.processes.peek(&owner.tgid)?;
        (c.comm == owner.comm && now.saturating_duration_since(c.verified) < TRUST)
            .then(|| Arc::clone(&c.info))
    }

    /// The user name of `uid`, cached (including "has none").
    fn account(&self, uid: u32) -> Option<Arc<str>> {
        if let Some(name) = self.lock().users.get(&uid) {
            return name.clone();
        }
        let name: Option<Arc<str>> = user_name(uid).map(Into::into);
        self.lock().users.insert(uid, name.clone());
        name
    }

    /// Attributes from the kernel's record alone (no I/O): pid, task name, uid, and the
    /// user name if it is cached.
    pub fn from_kernel(&self, owner: &SocketOwner) -> Arc<ProcessInfo> {
        let mut s = self.lock();
        let account_name = s.users.peek(&owner.uid).cloned().flatten();
        s.stats.kernel_fallbacks += 1;
        Arc::new(ProcessInfo {
            pid: owner.tgid,
            parent_pid: None,
            file_name: comm_str(&owner.comm),
            folder_path: None,
            command_line: None,
            account_name,
            uid: owner.uid,
        })
    }
}

/// Where the pipeline learns who opened a flow.
pub trait ProcessSource {
    /// The process behind the local socket `cookie`. `need_exe`: a decision depends on
    /// the executable, so it is worth reading /proc now if nothing better is known.
    fn process(&mut self, cookie: u64, need_exe: bool) -> Option<Arc<ProcessInfo>>;
}

/// The live source: the table the attribution thread fills, then the kernel map.
pub struct Attribution {
    resolver: Resolver,
    owners: aya::maps::HashMap<aya::maps::MapData, u64, SocketOwner>,
}

impl Attribution {
    /// A source over `resolver` that falls back to the kernel's `SOCKET_OWNERS` map.
    pub fn new(
        resolver: Resolver,
        owners: aya::maps::HashMap<aya::maps::MapData, u64, SocketOwner>,
    ) -> Self {
        Attribution { resolver, owners }
    }
}

impl ProcessSource for Attribution {
    fn process(&mut self, cookie: u64, need_exe: bool) -> Option<Arc<ProcessInfo>> {
        if let Some(info) = self.resolver.lookup(cookie) {
            return Some(info);
        }
        // The attribution thread has not got to this connect yet (or lost it).
        let Ok(owner) = self.owners.get(&cookie, 0) else {
            self.resolver.count(|s| s.unknown += 1);
            return None;
        };
        // A process the thread already knows (its records wait in the ring unwoken).
        if let Some(info) = self.resolver.cached(&owner, Instant::now()) {
            self.resolver.count(|s| s.cache_fallbacks += 1);
            return Some(self.resolver.publish(&owner, info));
        }
        if need_exe {
            self.resolver.count(|s| s.sync_reads += 1);
            let info = self.resolver.resolve(&owner, Instant::now(), false);
            return Some(self.resolver.publish(&owner, info));
        }
        Some(self.resolver.from_kernel(&owner))
    }
}

/// The thread that reads connect records and attributes them.
pub struct AttributionThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl AttributionThread {
    /// Starts reading `ring` (the kernel's `CONNECTS`). With `rt_priority` > 0 the thread
    /// runs under SCHED_FIFO at priority 1, below the verdict loop but ahead of ordinary
    /// work, so that /proc is read before a short-lived process is gone.
    pub fn start(
        mut ring: aya::maps::RingBuf<aya::maps::MapData>,
        resolver: Resolver,
        rt_priority: u8,
    ) -> std::io::Result<AttributionThread> {
        use std::os::fd::AsFd;

        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("nprot-attrib".into())
            .spawn(move || {
                if rt_priority > 0 {
                    let param = libc::sched_param { sched_priority: 1 };
                    // By hand: nix has no sched_setscheduler.
                    // SAFETY: plain syscall on the calling thread with a valid parameter.
                    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) }
                        != 0
                    {
                        log::debug!(
                            "attribution thread stays at normal priority: {}",
                            std::io::Error::last_os_error()
                        );
                    }
                }
                while !stopping.load(Ordering::Relaxed) {
                    // The timeout bounds how long a stop waits and how long records that
                    // woke nobody wait. Whatever poll says, the ring is read.
                    let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(&mut fds, PollTimeout::from(50u8));
                    while let Some(item) = ring.next() {
                        if item.len() < size_of::<SocketOwner>() {
                            continue;
                        }
                        // SAFETY: SocketOwner is plain data valid for any bits; length checked.
                        let owner: SocketOwner =
                            unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                        drop(item);
                        resolver.on_connect(&owner, Instant::now());
                    }
                }
            })?;
        Ok(AttributionThread {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for AttributionThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mounts`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    cgroup2_in(&fs::read_to_string("/proc/self/mounts").ok()?)
}

/// Opens the root of the cgroup v2 hierarchy: where it is mounted, or, if this mount
/// namespace has no such mount (`ip netns exec` gives its command a fresh /sys without
/// cgroup mounts), through a private mount made for the purpose and detached again at
/// once (the open directory keeps the hierarchy reachable). Returns the directory and a
/// name for it.
pub fn open_cgroup2_root() -> Result<(fs::File, String), String> {
    if let Some(p) = cgroup2_mount() {
        let f = fs::File::open(&p).map_err(|e| format!("cannot open {}: {e}", p.display()))?;
        return Ok((f, p.display().to_string()));
    }
    let dir = std::env::temp_dir().join(format!("nprot-cgroup2-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = (|| {
        use nix::mount::{MntFlags, MsFlags, mount, umount2};
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("cgroup2"), &dir, Some("cgroup2"), flags, None::<&str>).map_err(|e| {
            format!(
                "no cgroup v2 hierarchy is mounted and mounting one failed: {}",
                std::io::Error::from(e)
            )
        })?;
        let opened = fs::File::open(&dir).map_err(|e| format!("cannot open cgroup2: {e}"));
        // The open directory, if any, stays valid after the detach.
        let _ = umount2(&dir, MntFlags::MNT_DETACH);
        opened
    })();
    let _ = fs::remove_dir(&dir);
    result.map(|f| (f, "the cgroup v2 root (private mount)".to_owned()))
}

fn cgroup2_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_ascii_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        // Octal escapes (`\040` for a space) as the kernel writes them.
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(dir)))
    })
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = b.get(i + 1..i + 4)
            && oct.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn stat_with_a_hostile_name() {
        let text = "4242 (a) b) (c d) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200 18446744073709551615\n";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                ppid: 17,
                start_time: 987_654
            })
        );
        assert_eq!(parse_stat("1 (x) S"), None);
        assert_eq!(parse_stat("no parens"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn cmdline_is_joined_and_bounded() {
        assert_eq!(
            parse_cmdline(b"curl\0-k\0https://a.example/\0").as_deref(),
            Some("curl -k https://a.example/")
        );
        assert_eq!(parse_cmdline(b"").as_deref(), None);
        assert_eq!(parse_cmdline(b"\0").as_deref(), None);
        let long = [b"x\0".as_slice(), &[b'\xc3', b'\xa9'].repeat(5000)].concat();
        let line = parse_cmdline(&long).unwrap();
        assert!(line.len() <= MAX_COMMAND_LINE && line.ends_with('…'));
        assert!(line.starts_with("x é"));
        assert_eq!(parse_cmdline(b"a\xff\0b").as_deref(), Some("a\u{fffd} b"));
    }

    #[test]
    fn names() {
        assert_eq!(file_name("/usr/bin/curl"), "curl");
        assert_eq!(file_name("curl"), "curl");
        assert_eq!(comm_str(b"python3\0\0\0\0\0\0\0\0\0"), "python3");
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn cgroup2_mount_is_found_and_unescaped() {
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n\
                      cgroup2 /sys/fs/cgroup/un\\040ified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_in(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/un ified"))
        );
        assert_eq!(cgroup2_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn bounded_map_never_exceeds_its_capacity_and_keeps_what_is_used() {
        let mut m: Bounded<u32, u32> = Bounded::new(100);
        for i in 0..10_000 {
            m.insert(i, i);
            // Key 7 is used all the time: it must survive.
            assert_eq!(m.get(&7).copied(), if i >= 7 { Some(7) } else { None });
            assert!(m.len() <= 100, "{} entries", m.len());
        }
        assert_eq!(m.capacity(), 100);
        assert!(m.evicted >= 9_800);
        assert_eq!(m.peek(&9_999), Some(&9_999));
        assert_eq!(m.peek(&10), None);
    }

    fn owner(tgid: u32, comm: &str) -> SocketOwner {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        SocketOwner {
            cookie: u64::from(tgid) * 10,
            tgid,
            pid: tgid,
            uid: 0,
            comm: c,
            ..Default::default()
        }
    }

    /// A fake /proc entry.
    fn fake_process(root: &Path, pid: u32, exe: &str, args: &[&str], start: u64) {
        let dir = root.join(pid.to_string());
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("stat"),
            format!("{pid} (x) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0\n"),
        )
        .unwrap();
        let mut cmd = args.join("\0");
        cmd.push('\0');
        fs::write(dir.join("cmdline"), cmd).unwrap();
        symlink(exe, dir.join("exe")).unwrap();
    }

    fn temp_root(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("nprot-proc-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        root
    }

    #[test]
    fn resolves_from_proc_and_falls_back_to_the_kernel_record() {
        let root = temp_root("resolve");
        fake_process(
            &root,
            100,
            "/usr/bin/curl",
            &["curl", "-k", "https://x/"],
            5,
        );
        let r = Resolver::new(&root, 16);
        let t0 = Instant::now();
        let info = r.on_connect(&owner(100, "curl"), t0);
        assert_eq!(info.pid, 100);
        assert_eq!(info.parent_pid, Some(1));
        assert_eq!(info.file_name, "curl");
        assert_eq!(info.folder_path.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(info.command_line.as_deref(), Some("curl -k https://x/"));
        assert_eq!(info.account_name.as_deref(), Some("root"));
        assert!(info.is_named("curl") && info.is_named("/usr/bin/curl"));
        assert!(!info.is_named("/bin/curl") && !info.is_named("Curl"));
        assert_eq!(r.lookup(1000), Some(Arc::clone(&info)));

        // Gone before it could be read: the kernel's name, pid and uid remain.
        let gone = r.on_connect(&owner(200, "python3"), t0);
        assert_eq!(gone.file_name, "python3");
        assert_eq!((gone.pid, gone.folder_path.as_deref()), (200, None));
        assert_eq!(gone.account_name.as_deref(), Some("root"));
        let s = r.stats();
        assert_eq!((s.proc_reads, s.proc_gone, s.connects), (1, 1, 2));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn cache_tells_reused_pids_and_exec_apart() {
        let root = temp_root("reuse");
        fake_process(&root, 100, "/usr/bin/curl", &["curl"], 5);
        let r = Resolver::new(&root, 16);
        let t0 = Instant::now();
        r.resolve(&owner(100, "curl"), t0, true);
        // Same process within the trust window: no /proc read at all.
        fs::remove_dir_all(root.join("100")).unwrap();
        assert_eq!(r.resolve(&owner(100, "curl"), t0, true).file_name, "curl");
        assert_eq!(r.stats().cache_hits, 1);
        // Later, the pid belongs to another process with the same name.
        fake_process(&root, 100, "/opt/curl", &["curl", "2"], 9);
        let later = t0 + TRUST * 2;
        let info = r.resolve(&owner(100, "curl"), later, true);
        assert_eq!(info.folder_path.as_deref(), Some("/opt/curl"));
        // Same start time after the window: confirmed by stat alone.
        r.resolve(&owner(100, "curl"), later + TRUST * 2, true);
        assert_eq!(r.stats().stat_checks, 1);
        // exec: same pid and start time, a new name.
        fake_process(&root, 100, "/usr/bin/wget", &["wget"], 9);
        let info = r.resolve(&owner(100, "wget"), later + TRUST * 2, true);
        assert_eq!(info.file_name, "wget");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn process_cache_stays_within_its_bound() {
        let root = temp_root("bound");
        let r = Resolver::new(&root, 64);
        let t0 = Instant::now();
        for pid in 1000..4000 {
            fake_process(&root, pid, "/usr/bin/true", &["true"], u64::from(pid));
            r.on_connect(&owner(pid, "true"), t0);
            fs::remove_dir_all(root.join(pid.to_string())).unwrap();
            let s = r.stats();
            assert!(s.process_cache <= 64, "{s:?}");
        }
        let s = r.stats();
        assert_eq!((s.process_cache_max, s.proc_reads), (64, 3000));
        assert!(s.process_cache_evicted >= 3000 - 64);
        let _ = fs::remove_dir_all(&root);
    }
}
