//! nprot user space: the daemon and CLI of a transparent network-protection sensor.
//!
//! Data flows one way through the stages (see `shared/ARCHITECTURE.md`): [`capture`] loads
//! the eBPF programs and reads what they report (and names the process behind a flow);
//! [`datapath`] reassembles, parses and judges each flow, asking [`policy`], and hands
//! what happened to [`events`], which writes JSON lines to the sinks. [`control`] runs it
//! live (daemon, control socket, admin CLI, configuration, persisted state); [`replay`]
//! runs the same data path from a capture file. Below them all are the shared types:
//! [`record`] (what the kernel reports), [`mode`], [`process`], [`time`] and
//! [`histogram`].

pub mod capture;
pub mod control;
pub mod datapath;
pub mod events;
pub mod histogram;
pub mod mode;
pub mod policy;
pub mod process;
pub mod record;
pub mod replay;
pub mod time;
