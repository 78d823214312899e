//! The daemon's side of desktop prompts (`notify_socket`). STUB: the real server is
//! being written; this one accepts no agent.

use std::{io, path::Path};

use tokio::sync::{mpsc, oneshot};

use crate::events::sink::Sink;

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

impl NotifyServer {
    /// Listens on `path` (any local user may connect); the sink takes the daemon's event
    /// lines and passes each agent those of its own user's flows.
    pub fn start(path: &Path) -> anyhow::Result<(NotifyServer, NotifySink)> {
        let _ = path;
        let (_tx, requests) = mpsc::channel(16);
        Ok((NotifyServer { requests }, NotifySink))
    }
}

/// The events sink that feeds connected agents.
pub struct NotifySink;

impl Sink for NotifySink {
    fn write_batch(&mut self, _lines: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        "desktop agents".into()
    }
}
