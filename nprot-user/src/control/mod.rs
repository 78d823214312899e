//! Running the sensor: the [`daemon`] that wires capture, data path, policy and events
//! together under its [`config`], its control [`socket`] and [`protocol`], the [`cli`] and the [`admin`]
//! commands that talk to it, the persisted [`state`], [`sdnotify`] for systemd, the [`fleet`] on NATS JetStream, and [`notify`] for desktop prompts.

pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod metrics;
pub mod notify;
pub mod protocol;
pub mod sdnotify;
pub mod socket;
pub mod state;
