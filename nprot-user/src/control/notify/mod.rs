//! Desktop prompts: the daemon's [`server`] side (a socket any local user's
//! `nprot notify` agent connects to, fed by a [`server::NotifySink`]) and the agent.

pub mod server;
