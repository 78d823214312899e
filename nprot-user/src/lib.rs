//! nprot user space: the daemon and CLI of a transparent network-protection sensor.
//!
//! Data flows one way through the stages:
//! [`datapath`] (kernel records → reassembly → parse → pipeline, which asks [`policy`] and
//! applies the mode) → [`events`] (JSON lines to sinks). [`control`] runs it live (daemon,
//! control socket, admin CLI, persisted state); [`replay`] runs the same data path from a
//! capture file. [`config`] and [`time`] are shared by every stage.

pub mod config;
pub mod control;
pub mod datapath;
pub mod events;
pub mod policy;
pub mod process;
pub mod replay;
pub mod time;
