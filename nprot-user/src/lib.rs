//! nprot user space: the daemon and CLI of a transparent network-protection sensor.
//!
//! Data flows one way: [`capture`] (kernel records) → [`reassembly`] → [`parse`] →
//! [`pipeline`] ([`policy`] match, [`verdict`] under the mode) → [`events`] (JSON lines to
//! sinks). [`daemon`] drives it live; [`replay`] drives it from a capture file.

pub mod admin;
pub mod attribution;
pub mod capture;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
pub mod parse;
pub mod pipeline;
pub mod policy;
pub mod reassembly;
pub mod replay;
pub mod sdnotify;
pub mod state;
pub mod stats;
pub mod verdict;
