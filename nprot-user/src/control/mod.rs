//! Running the sensor: the [`daemon`] that drives the data path, its control [`socket`],
//! the [`cli`] and the [`admin`] commands that talk to it, the persisted [`state`],
//! [`sdnotify`] for systemd, and the latency histograms of [`stats`].

pub mod admin;
pub mod cli;
pub mod daemon;
pub mod sdnotify;
pub mod socket;
pub mod state;
pub mod stats;
