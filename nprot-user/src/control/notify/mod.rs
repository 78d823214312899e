//! Desktop prompts: the daemon's [`server`] side (a socket any local user's
//! `nprot notify` agent connects to, fed by a [`server::NotifySink`]), the [`agent`] that
//! shows them as freedesktop notifications, and the [`wire`] form between the two.

pub mod agent;
pub mod server;
pub mod wire;
