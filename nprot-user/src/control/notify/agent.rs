//! `nprot notify`: the desktop agent, one per desktop session, unprivileged. It connects
//! to the daemon's notify socket, which sends it the prompts of its own user's flows, and
//! shows each as a freedesktop notification (org.freedesktop.Notifications on the session
//! bus): "blocked: NAME (title)", or "warned: NAME (title)" with an Allow action. Allow
//! asks the daemon for the bypass (the daemon decides, `warn_bypass`); its answer is shown
//! as a notification of its own. The agent reconnects, with backoff, to a daemon that
//! restarts, and logs to stderr.

use std::{
    collections::{HashMap, VecDeque},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use log::{debug, info, warn};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncWriteExt as _, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    signal::unix::{SignalKind, signal},
};
use zbus::{
    MatchRule, MessageStream, message::Type as MessageType, names::OwnedUniqueName, zvariant::Value,
};

use super::wire::{self, AllowAsk, Answer, FromDaemon, Kind, Prompt};

const BUS_NAME: &str = "org.freedesktop.Notifications";
const OBJECT: &str = "/org/freedesktop/Notifications";
const INTERFACE: &str = "org.freedesktop.Notifications";
/// The action key of a Warn prompt's Allow button.
pub const ALLOW_ACTION: &str = "allow";
/// The first wait before reconnecting to the daemon, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Warn prompts on screen whose Allow is remembered; older ones are forgotten (their
/// Allow then says so) so that a flood of warnings cannot grow the agent without bound.
const PROMPTS_KEPT: usize = 256;

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(socket: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the agent's runtime")?;
    rt.block_on(Agent::run(socket.to_owned()))
}

/// A notification the agent showed.
#[derive(Debug, Clone)]
struct Shown {
    kind: Kind,
    target: String,
}

/// The agent's state: the session bus, what it shows, what it asked the daemon.
struct Agent {
    socket: PathBuf,
    bus: zbus::Connection,
    /// The notification server that answered the last Notify: only its signals count
    /// (any client of the session bus can send one).
    server: Option<OwnedUniqueName>,
    /// Notifications on screen, by id.
    shown: HashMap<u32, Shown>,
    /// Ids of `shown`, oldest first (for the bound).
    order: VecDeque<u32>,
    /// Targets asked for, oldest first: the daemon answers in order.
    pending: VecDeque<String>,
}

/// The daemon's connection: lines in, lines out.
struct Daemon {
    lines: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Agent {
    async fn run(socket: PathBuf) -> anyhow::Result<()> {
        let bus = zbus::Connection::session().await.context(
            "cannot connect to the session bus (is DBUS_SESSION_BUS_ADDRESS set? run this in a desktop session)",
        )?;
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .interface(INTERFACE)?
            .path(OBJECT)?
            .build();
        let mut signals = MessageStream::for_match_rule(rule, &bus, Some(64))
            .await
            .context("cannot subscribe to the notification server's signals")?;
        let mut agent = Agent {
            socket,
            bus,
            server: None,
            shown: HashMap::new(),
            order: VecDeque::new(),
            pending: VecDeque::new(),
        };
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut daemon: Option<Daemon> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut reported = false;
        loop {
            if daemon.is_none() {
                match agent.connect().await {
                    Ok(d) => {
                        info!(
                            "connected to the nprot daemon at {}",
                            agent.socket.display()
                        );
                        daemon = Some(d);
                        backoff = FIRST_BACKOFF;
                        reported = false;
                    }
                    Err(e) => {
                        // Said once per outage; the retries after it are quiet.
                        if reported {
                            debug!("{e:#}; retrying in {backoff:?}");
                        } else {
                            warn!("{e:#}; retrying (up to every {MAX_BACKOFF:?})");
                            reported = true;
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
                () = tokio::time::sleep(backoff), if daemon.is_none() => {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                line = next_line(daemon.as_mut()) => {
                    if let Ok(Some(line)) = line {
                        agent.on_line(&line).await;
                    } else {
                        if let Err(e) = &line {
                            warn!("the daemon's connection failed: {e:#}");
                        } else {
                            warn!("the nprot daemon closed the connection; reconnecting");
                        }
                        daemon = None;
                        // Asked but not answered: the new daemon knows nothing of it.
                        for target in std::mem::take(&mut agent.pending) {
                            agent.tell(&format!("{target}: no answer, the nprot daemon went away")).await;
                        }
                    }
                }
                msg = signals.next() => match msg {
                    Some(Ok(msg)) => {
                        if let Some(target) = agent.signal(&msg) {
                            agent.allow(daemon.as_mut(), target).await;
                        }
                    }
                    Some(Err(e)) => debug!("unreadable signal: {e}"),
                    None => bail!("the session bus closed the connection"),
                },
            }
        }
    }

    /// Connects to the daemon, checking that root serves the socket (a prompt or an
    /// answer from anyone else would be a lie).
    async fn connect(&self) -> anyhow::Result<Daemon> {
        let stream = UnixStream::connect(&self.socket).await.with_context(|| {
            format!("cannot reach the nprot daemon at {}", self.socket.display())
        })?;
        let cred = stream
            .peer_cred()
            .context("cannot read the daemon's credentials")?;
        if cred.uid() != 0 {
            bail!(
                "{} is served by uid {}, not root: not the nprot daemon",
                self.socket.display(),
                cred.uid()
            );
        }
        let owner = std::fs::metadata(&self.socket).map(|m| m.uid()).ok();
        if owner.is_some_and(|uid| uid != 0) {
            bail!(
                "{} is not root's: not the nprot daemon's",
                self.socket.display()
            );
        }
        let (read, write) = stream.into_split();
        Ok(Daemon {
            lines: BufReader::new(read),
            write,
        })
    }

    /// Handles one line of the daemon's.
    async fn on_line(&mut self, line: &[u8]) {
        match serde_json::from_slice::<FromDaemon>(line) {
            Ok(FromDaemon::Prompt(prompt)) => self.prompt(prompt).await,
            Ok(FromDaemon::Answer(answer)) => {
                let Some(target) = self.pending.pop_front() else {
                    // Not an answer to us: the daemon refusing the connection, say.
                    match answer {
                        Answer::Ok(m) => info!("the daemon says: {m}"),
                        Answer::Error(m) => warn!("the daemon says: {m}"),
                    }
                    return;
                };
                let text = match answer {
                    Answer::Ok(granted) => {
                        info!("bypass of {target} granted: {granted}");
                        format!("allowed: {granted}")
                    }
                    Answer::Error(why) => {
                        warn!("bypass of {target} refused: {why}");
                        format!("not allowed: {target}\n{why}")
                    }
                };
                self.tell(&text).await;
            }
            Err(e) => warn!(
                "unreadable line from the daemon ({e}): {}",
                String::from_utf8_lossy(line).trim_end()
            ),
        }
    }

    /// Shows a prompt. One notification per target and kind stays on screen: a repeat
    /// (a browser retrying) replaces it rather than piling up.
    async fn prompt(&mut self, prompt: Prompt) {
        let replaces = self
            .shown
            .iter()
            .find(|(_, s)| s.kind == prompt.kind && s.target == prompt.target)
            .map_or(0, |(id, _)| *id);
        let (actions, timeout): (&[&str], i32) = match prompt.kind {
            Kind::Blocked => (&[], -1),
            // A question waits for its answer: no expiry.
            Kind::Warned => (&[ALLOW_ACTION, "Allow"], 0),
        };
        info!("{}", prompt.body().replace('\n', ", "));
        match self
            .notify(replaces, &prompt.body(), actions, timeout)
            .await
        {
            Ok(id) => {
                if replaces != 0 && replaces != id {
                    self.forget(replaces);
                }
                if !self.shown.contains_key(&id) {
                    self.order.push_back(id);
                }
                self.shown.insert(
                    id,
                    Shown {
                        kind: prompt.kind,
                        target: prompt.target,
                    },
                );
                while self.order.len() > PROMPTS_KEPT {
                    if let Some(old) = self.order.pop_front() {
                        self.shown.remove(&old);
                    }
                }
            }
            Err(e) => warn!("cannot show a notification: {e:#}"),
        }
    }

    /// A notification without actions (answers, errors).
    async fn tell(&mut self, text: &str) {
        if let Err(e) = self.notify(0, text, &[], -1).await {
            warn!("cannot show a notification: {e:#}");
        }
    }

    /// org.freedesktop.Notifications.Notify; returns the notification's id.
    async fn notify(
        &mut self,
        replaces: u32,
        body: &str,
        actions: &[&str],
        timeout_ms: i32,
    ) -> anyhow::Result<u32> {
        let hints: HashMap<&str, Value<'_>> = HashMap::from([("urgency", Value::U8(1))]);
        let reply = self
            .bus
            .call_method(
                Some(BUS_NAME),
                OBJECT,
                Some(INTERFACE),
                "Notify",
                &(
                    "nprot", replaces, "", "nprot", body, actions, hints, timeout_ms,
                ),
            )
            .await
            .context("Notify failed (is a notification server running?)")?;
        let id: u32 = reply
            .body()
            .deserialize()
            .context("the notification server's answer to Notify is not an id")?;
        self.server = reply.header().sender().map(|s| s.to_owned().into());
        Ok(id)
    }

    /// Handles a signal of the notification server: returns the target whose Allow was
    /// chosen, if it was.
    fn signal(&mut self, msg: &zbus::Message) -> Option<String> {
        let header = msg.header();
        let from_server = match (&self.server, header.sender()) {
            (Some(server), Some(sender)) => server.as_str() == sender.as_str(),
            _ => false,
        };
        if !from_server {
            return None;
        }
        match header.member()?.as_str() {
            "ActionInvoked" => {
                let (id, action): (u32, String) = msg.body().deserialize().ok()?;
                let shown = self.shown.get(&id)?;
                (action == ALLOW_ACTION && shown.kind == Kind::Warned).then(|| shown.target.clone())
            }
            "NotificationClosed" => {
                let (id, _reason): (u32, u32) = msg.body().deserialize().ok()?;
                self.forget(id);
                None
            }
            _ => None,
        }
    }

    fn forget(&mut self, id: u32) {
        self.shown.remove(&id);
        self.order.retain(|&i| i != id);
    }

    /// Asks the daemon for the bypass of `target`; the answer comes as a line later.
    async fn allow(&mut self, daemon: Option<&mut Daemon>, target: String) {
        info!("Allow chosen for {target}: asking the daemon");
        let Some(daemon) = daemon else {
            self.tell(&format!(
                "{target}: cannot ask, the nprot daemon is not reachable"
            ))
            .await;
            return;
        };
        let mut line = match serde_json::to_vec(&AllowAsk {
            allow: target.clone(),
        }) {
            Ok(line) => line,
            Err(e) => {
                warn!("cannot encode the request: {e}");
                return;
            }
        };
        line.push(b'\n');
        match daemon.write.write_all(&line).await {
            Ok(()) => self.pending.push_back(target),
            // The read side sees the connection go and reconnects.
            Err(e) => {
                warn!("cannot ask the daemon: {e}");
                self.tell(&format!("{target}: cannot ask, the nprot daemon went away"))
                    .await;
            }
        }
    }
}

/// The next line of the daemon's, at most [`wire::MAX_LINE`] bytes (a longer one is an
/// error); pending forever without a daemon, so that `select!` waits on the rest.
async fn next_line(daemon: Option<&mut Daemon>) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(daemon) = daemon else {
        return std::future::pending().await;
    };
    read_bounded_line(&mut daemon.lines).await
}

/// One newline-terminated line of at most [`wire::MAX_LINE`] bytes; `None` at the end.
async fn read_bounded_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> anyhow::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await.context("read from the daemon")?;
        if buf.is_empty() {
            return Ok(None);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if line.len() > wire::MAX_LINE {
            bail!("the daemon sent a line over {} bytes", wire::MAX_LINE);
        }
        if done {
            return Ok(Some(line));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn lines_are_read_whole_and_bounded() {
        let input: &[u8] = b"{\"a\":1}\n{\"b\":2}\n";
        let mut r = BufReader::with_capacity(4, input);
        assert_eq!(
            read_bounded_line(&mut r).await.unwrap().unwrap(),
            b"{\"a\":1}\n"
        );
        assert_eq!(
            read_bounded_line(&mut r).await.unwrap().unwrap(),
            b"{\"b\":2}\n"
        );
        assert!(read_bounded_line(&mut r).await.unwrap().is_none());
        let long = vec![b'x'; wire::MAX_LINE + 10];
        let mut r = BufReader::new(&long[..]);
        assert!(read_bounded_line(&mut r).await.is_err());
    }
}
