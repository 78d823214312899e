//! The daemon's side of desktop prompts (`notify_socket`): a Unix socket any local user's
//! `nprot notify` agent connects to. Each connection's uid comes from SO_PEERCRED, never
//! from what the agent says; an agent is sent the prompts of its own account's flows only
//! (events name the account in `InitiatingProcessAccountName`, by the same user-database
//! look-up as here), and may ask to bypass what it was warned about.
//!
//! Threads, so nothing here waits on the daemon's runtime or its verdict loop: the
//! [`NotifySink`] (on the verdict thread) only filters and queues, bounded, counting what
//! a full queue drops; a dispatcher thread writes prompts to the agents (a write that
//! does not finish within [`WRITE_TIMEOUT`] drops the agent); an accept thread and one
//! thread per agent read the agents' Allow requests and answer them in order.

use std::{
    collections::VecDeque,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::{
        fs::PermissionsExt as _,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc as std_mpsc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use log::{debug, info, warn};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::wire::{self, AllowAsk, Answer, Kind, Prompt};
use crate::events::sink::Sink;

/// Default path of the notify socket (`nprot notify`'s default too).
pub const DEFAULT_NOTIFY_SOCKET: &str = "/run/nprot/notify.sock";
/// Prompts queued for the dispatcher; past that the sink drops (and counts).
const QUEUE: usize = 256;
/// Agents connected at once, and per uid: every local user may connect, so each one's
/// share of threads and memory is bounded.
const MAX_AGENTS: usize = 64;
const MAX_AGENTS_PER_UID: usize = 4;
/// How long a write to one agent may take before that agent is dropped: a stuck agent
/// must not hold up the prompts of the others.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Warned targets remembered per agent, which it may ask to bypass.
const WARNED_KEPT: usize = 64;
/// Requests queued for the daemon's loop.
const REQUESTS: usize = 16;

/// An agent's "Allow" on a Warn prompt: its user asks for the bypass of `target`.
#[derive(Debug)]
pub struct AllowRequest {
    /// The agent's uid (SO_PEERCRED), not anything the agent says.
    pub uid: u32,
    /// That uid's account name.
    pub account: String,
    /// What was warned (the prompt's target: a host name, URL or address).
    pub target: String,
    /// The daemon's answer: what was granted, or why not.
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// The listening socket and the requests its agents make.
pub struct NotifyServer {
    /// Allow requests, for the daemon's loop.
    pub requests: mpsc::Receiver<AllowRequest>,
}

/// One connected agent.
struct Agent {
    id: u64,
    uid: u32,
    account: String,
    /// The write half (a clone of the connection), shared by the dispatcher (prompts) and
    /// the agent's reader thread (answers) so that lines never interleave.
    writer: Mutex<UnixStream>,
    /// Targets this agent was warned about, newest last: what it may ask to bypass.
    warned: Mutex<VecDeque<String>>,
}

impl Agent {
    /// Writes one line; an error (or a timeout) means the agent is gone.
    fn send(&self, line: &[u8]) -> io::Result<()> {
        let mut w = lock(&self.writer);
        w.write_all(line)?;
        w.flush()
    }

    /// Closes the connection both ways, which also ends its reader thread.
    fn close(&self) {
        let _ = lock(&self.writer).shutdown(std::net::Shutdown::Both);
    }

    fn was_warned(&self, target: &str) -> bool {
        lock(&self.warned).iter().any(|t| t == target)
    }

    fn remember_warned(&self, target: &str) {
        let mut w = lock(&self.warned);
        w.retain(|t| t != target);
        if w.len() == WARNED_KEPT {
            w.pop_front();
        }
        w.push_back(target.to_owned());
    }
}

/// Counters shared by the threads and the sink.
#[derive(Default)]
struct Counters {
    /// Prompts a full queue dropped.
    dropped: AtomicU64,
    /// Prompts written to an agent.
    sent: AtomicU64,
    /// Connections refused (over the limits, or of a uid with no account).
    refused: AtomicU64,
    /// Allow requests passed to the daemon.
    allow_requests: AtomicU64,
}

/// What the threads share.
struct Shared {
    agents: Mutex<Vec<Arc<Agent>>>,
    /// `agents.len()`, read by the sink without taking the lock: no agent, no parsing.
    connected: AtomicUsize,
    counters: Counters,
    stopped: AtomicBool,
}

impl Shared {
    fn remove(&self, id: u64) {
        let mut agents = lock(&self.agents);
        if let Some(pos) = agents.iter().position(|a| a.id == id) {
            let agent = agents.swap_remove(pos);
            agent.close();
            debug!(
                "desktop agent of {} (uid {}) gone",
                agent.account, agent.uid
            );
        }
        self.connected.store(agents.len(), Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked holding the lock left plain data behind, still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NotifyServer {
    /// Listens on `path` (any local user may connect); the sink takes the daemon's event
    /// lines and passes each agent those of its own user's flows.
    pub fn start(path: &Path) -> anyhow::Result<(NotifyServer, NotifySink)> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            // Agents run as any user: they must reach the socket (the daemon's umask may
            // be 077).
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot open up {}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "{} is in use: another nprot daemon serves desktop agents there",
                    path.display()
                );
            }
            // Left by a daemon that did not stop cleanly: nothing listens on it.
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot bind the notify socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .with_context(|| format!("cannot open up {}", path.display()))?;

        let shared = Arc::new(Shared {
            agents: Mutex::new(Vec::new()),
            connected: AtomicUsize::new(0),
            counters: Counters::default(),
            stopped: AtomicBool::new(false),
        });
        let (requests_tx, requests) = mpsc::channel(REQUESTS);
        let (queue_tx, queue_rx) = std_mpsc::sync_channel(QUEUE);
        {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("nprot-notify-accept".into())
                .spawn(move || accept_loop(&listener, &shared, &requests_tx))
                .context("cannot start the notify socket's thread")?;
        }
        {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("nprot-notify-send".into())
                .spawn(move || dispatch(&queue_rx, &shared))
                .context("cannot start the notify socket's thread")?;
        }
        let sink = NotifySink {
            path: path.to_owned(),
            queue: Some(queue_tx),
            shared,
        };
        Ok((NotifyServer { requests }, sink))
    }
}

fn accept_loop(
    listener: &UnixListener,
    shared: &Arc<Shared>,
    requests: &mpsc::Sender<AllowRequest>,
) {
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        if shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!("notify socket: accept failed: {e}");
                // EMFILE and the like: do not spin on it.
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        next_id += 1;
        let (reader, agent) = match admit(stream, next_id, shared) {
            Ok(admitted) => admitted,
            Err(e) => {
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                info!("notify socket: {e:#}");
                continue;
            }
        };
        let spawned = thread::Builder::new()
            .name("nprot-notify-agent".into())
            .spawn({
                let (agent, shared, requests) =
                    (Arc::clone(&agent), Arc::clone(shared), requests.clone());
                move || {
                    serve_agent(reader, &agent, &shared, &requests);
                    shared.remove(agent.id);
                }
            });
        if let Err(e) = spawned {
            warn!("notify socket: cannot start a thread for an agent: {e}");
            shared.remove(agent.id);
        }
    }
}

/// Registers a new connection as an agent of its peer's account, within the limits;
/// returns the read half with it.
fn admit(stream: UnixStream, id: u64, shared: &Shared) -> anyhow::Result<(UnixStream, Arc<Agent>)> {
    let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .context("cannot read an agent's credentials (SO_PEERCRED)")?;
    let uid = cred.uid();
    let refuse = |stream: &UnixStream, why: &str| {
        // Best effort: the agent shows why it was turned away.
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = (&*stream).write_all(&answer_line(&Answer::Error(why.to_owned())));
    };
    let Some(account) = account_of(uid) else {
        refuse(
            &stream,
            "your uid has no account name: no event could name it",
        );
        bail!("agent of uid {uid} refused: no account name for it");
    };
    stream
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .context("cannot set an agent's write timeout")?;
    let writer = stream
        .try_clone()
        .context("cannot clone an agent's socket")?;
    let mut agents = lock(&shared.agents);
    let of_uid = agents.iter().filter(|a| a.uid == uid).count();
    if agents.len() >= MAX_AGENTS || of_uid >= MAX_AGENTS_PER_UID {
        drop(agents);
        refuse(&stream, "too many desktop agents connected");
        bail!(
            "agent of {account} (uid {uid}) refused: {of_uid} of its own connected, limit {MAX_AGENTS_PER_UID}, {MAX_AGENTS} in all"
        );
    }
    let agent = Arc::new(Agent {
        id,
        uid,
        account,
        writer: Mutex::new(writer),
        warned: Mutex::new(VecDeque::new()),
    });
    agents.push(Arc::clone(&agent));
    shared.connected.store(agents.len(), Ordering::Relaxed);
    info!("desktop agent of {} (uid {uid}) connected", agent.account);
    Ok((stream, agent))
}

/// The user name of `uid`, as process attribution names it in events.
fn account_of(uid: u32) -> Option<String> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
    Some(user.name)
}

fn answer_line(answer: &Answer) -> Vec<u8> {
    let mut line = serde_json::to_vec(answer).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Reads the agent's Allow requests until it goes, answering each in turn.
fn serve_agent(
    stream: UnixStream,
    agent: &Agent,
    shared: &Shared,
    requests: &mpsc::Sender<AllowRequest>,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // One byte more than a line may have: a longer one is cut and refused.
        let limit = (wire::MAX_LINE + 1) as u64;
        match (&mut reader).take(limit).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            // Over-long, or the agent closed mid-line: either way not a request.
            let _ = agent.send(&answer_line(&Answer::Error("line too long".into())));
            return;
        }
        let answer = match serde_json::from_slice::<AllowAsk>(&line) {
            Err(e) => Answer::Error(format!("bad request: {e}")),
            Ok(ask) => ask_daemon(agent, ask.allow, shared, requests),
        };
        if agent.send(&answer_line(&answer)).is_err() {
            return;
        }
    }
}

/// Passes an Allow to the daemon's loop and waits for its answer. Only what this agent
/// was warned about may be asked for: a prompt is how a user learns of a Warn.
fn ask_daemon(
    agent: &Agent,
    target: String,
    shared: &Shared,
    requests: &mpsc::Sender<AllowRequest>,
) -> Answer {
    if !agent.was_warned(&target) {
        return Answer::Error(format!(
            "{target} was not warned to you: only a Warn prompt's target can be allowed"
        ));
    }
    let (reply, answer) = oneshot::channel();
    let request = AllowRequest {
        uid: agent.uid,
        account: agent.account.clone(),
        target,
        reply,
    };
    info!(
        "desktop agent of {} (uid {}) asks to bypass {}",
        request.account, request.uid, request.target
    );
    shared
        .counters
        .allow_requests
        .fetch_add(1, Ordering::Relaxed);
    // A plain thread, not the runtime's: blocking here is what it is for.
    if requests.blocking_send(request).is_err() {
        return Answer::Error("the daemon is stopping".into());
    }
    match answer.blocking_recv() {
        Ok(Ok(granted)) => Answer::Ok(granted),
        Ok(Err(refused)) => Answer::Error(refused),
        Err(_) => Answer::Error("the daemon is stopping".into()),
    }
}

/// A prompt for the agents of `account`.
struct Queued {
    account: String,
    prompt: Prompt,
}

/// Writes each queued prompt to the agents of its account; drops those a write fails on.
fn dispatch(queue: &std_mpsc::Receiver<Queued>, shared: &Shared) {
    while let Ok(Queued { account, prompt }) = queue.recv() {
        let mut line = serde_json::to_vec(&prompt).unwrap_or_default();
        line.push(b'\n');
        // Written outside the lock: a slow agent must not hold up accepting others.
        let agents: Vec<Arc<Agent>> = lock(&shared.agents)
            .iter()
            .filter(|a| a.account == account)
            .cloned()
            .collect();
        for agent in agents {
            if prompt.kind == Kind::Warned {
                agent.remember_warned(&prompt.target);
            }
            match agent.send(&line) {
                Ok(()) => {
                    shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    info!(
                        "desktop agent of {} (uid {}) dropped: {e}",
                        agent.account, agent.uid
                    );
                    shared.remove(agent.id);
                }
            }
        }
    }
}

/// The events sink that feeds connected agents. It removes the socket when the daemon
/// stops.
pub struct NotifySink {
    path: PathBuf,
    /// None once finished.
    queue: Option<std_mpsc::SyncSender<Queued>>,
    shared: Arc<Shared>,
}

impl Sink for NotifySink {
    fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
        // Nobody to tell: skip the parsing.
        if self.shared.connected.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        for line in lines.split(|&b| b == b'\n') {
            let Some((account, prompt)) = wire::prompt_of(line) else {
                continue;
            };
            match queue.try_send(Queued { account, prompt }) {
                Ok(()) => {}
                // Full; or the dispatcher is gone (it never returns while the queue is
                // open): counted rather than failing the batch, which other sinks took.
                Err(std_mpsc::TrySendError::Full(_) | std_mpsc::TrySendError::Disconnected(_)) => {
                    self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("desktop agents on {}", self.path.display())
    }

    fn dropped(&self) -> u64 {
        self.shared.counters.dropped.load(Ordering::Relaxed)
    }

    fn stats(&self) -> Value {
        let c = &self.shared.counters;
        json!({
            "agents": self.shared.connected.load(Ordering::Relaxed),
            "prompts_sent": c.sent.load(Ordering::Relaxed),
            "prompts_dropped": c.dropped.load(Ordering::Relaxed),
            "agents_refused": c.refused.load(Ordering::Relaxed),
            "allow_requests": c.allow_requests.load(Ordering::Relaxed),
        })
    }

    fn finish(&mut self) {
        self.close();
    }
}

impl NotifySink {
    /// Stops taking prompts, closes the agents' connections and removes the socket.
    fn close(&mut self) {
        if self.queue.take().is_none() {
            return;
        }
        self.shared.stopped.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
        for agent in lock(&self.shared.agents).drain(..) {
            agent.close();
        }
        self.shared.connected.store(0, Ordering::Relaxed);
    }
}

impl Drop for NotifySink {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{io::BufRead as _, time::Instant};

    use super::*;

    /// A Blocked event line of `account`'s flow to `host`, by a `action` indicator.
    fn event(account: &str, host: &str, action: &str) -> String {
        json!({
            "ActionType": "ExploitGuardNetworkProtectionBlocked",
            "RemoteIP": "192.0.2.1", "RemotePort": 443,
            "InitiatingProcessFileName": "curl",
            "InitiatingProcessAccountName": account,
            "RemoteUrl": host,
            "AdditionalFields": {
                "IsAudit": false, "IndicatorId": "i", "IndicatorValue": host,
                "Action": action, "DisplayName": "t"
            }
        })
        .to_string()
            + "\n"
    }

    fn temp_socket(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nprot-notify-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("run").join("notify.sock")
    }

    /// Waits (20 ms polls, 5 s at most) until `n` agents are connected.
    fn wait_agents(sink: &NotifySink, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.shared.connected.load(Ordering::Relaxed) != n {
            assert!(Instant::now() < deadline, "{n} agents never connected");
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn an_agent_gets_its_accounts_prompts_and_may_allow_only_what_it_was_warned() {
        let me = nix::unistd::geteuid().as_raw();
        let Some(account) = account_of(me) else {
            eprintln!("skipped: uid {me} has no account name");
            return;
        };
        let path = temp_socket("allow");
        let (mut server, mut sink) = NotifyServer::start(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        // Nobody connected: lines are not even parsed, nothing is queued.
        sink.write_batch(event(&account, "early.example", "Block").as_bytes())
            .unwrap();

        let agent = UnixStream::connect(&path).unwrap();
        agent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut lines = BufReader::new(agent.try_clone().unwrap()).lines();
        wait_agents(&sink, 1);
        let batch = event("someone-else", "other.example", "Warn")
            + r#"{"ActionType":"ConnectionSuccess"}"#
            + "\n"
            + &event(&account, "w.example", "Warn");
        sink.write_batch(batch.as_bytes()).unwrap();
        // Another account's prompt, had it been sent, would have come first.
        let first: wire::FromDaemon =
            serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        let wire::FromDaemon::Prompt(prompt) = first else {
            panic!("not a prompt: {first:?}");
        };
        assert_eq!(
            (prompt.kind, prompt.target.as_str()),
            (Kind::Warned, "w.example")
        );

        (&agent)
            .write_all(b"{\"allow\":\"other.example\"}\n")
            .unwrap();
        let refused = lines.next().unwrap().unwrap();
        assert!(refused.contains("was not warned to you"), "{refused}");

        let daemon = thread::spawn(move || {
            let request = server.requests.blocking_recv().unwrap();
            let seen = (request.uid, request.account.clone(), request.target.clone());
            request.reply.send(Ok("granted".into())).unwrap();
            seen
        });
        (&agent).write_all(b"{\"allow\":\"w.example\"}\n").unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), r#"{"ok":"granted"}"#);
        assert_eq!(
            daemon.join().unwrap(),
            (me, account.clone(), "w.example".to_owned())
        );

        (&agent).write_all(b"not json\n").unwrap();
        assert!(lines.next().unwrap().unwrap().contains("bad request"));
        let stats = sink.stats();
        assert_eq!(
            (
                stats["agents"].as_u64(),
                stats["prompts_sent"].as_u64(),
                stats["allow_requests"].as_u64()
            ),
            (Some(1), Some(1), Some(1)),
            "{stats}"
        );

        sink.finish();
        assert!(!path.exists(), "the socket outlived the daemon");
        // The agent sees the end of its connection.
        assert!(lines.next().is_none_or(|l| l.is_err()));
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn a_stuck_agent_costs_counted_drops_and_is_dropped() {
        let me = nix::unistd::geteuid().as_raw();
        let Some(account) = account_of(me) else {
            eprintln!("skipped: uid {me} has no account name");
            return;
        };
        let path = temp_socket("stuck");
        let (_server, mut sink) = NotifyServer::start(&path).unwrap();
        // Connected, never reading.
        let _agent = UnixStream::connect(&path).unwrap();
        wait_agents(&sink, 1);
        let line = event(&account, "b.example", "Block");
        let batch = line.repeat(20_000);
        // The socket buffer fills, the dispatcher's write waits, the queue fills: the
        // sink drops, counts, and never waits.
        let started = Instant::now();
        sink.write_batch(batch.as_bytes()).unwrap();
        // (Waiting on a write per prompt would take hours; parsing takes milliseconds.)
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the sink waited"
        );
        assert!(sink.dropped() > 0, "{}", sink.stats());
        // Then the write times out and the agent is let go.
        wait_agents(&sink, 0);
        drop(sink);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }
}
