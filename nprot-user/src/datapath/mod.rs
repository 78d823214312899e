//! The data path, in the order a flow goes through it: [`capture`] loads the eBPF programs
//! and reads their [`record`]s, [`attribution`] names the process behind a flow,
//! [`reassembly`] orders client bytes, [`parse`] reads TLS and HTTP heads, and [`pipeline`]
//! matches them against the policy and turns the decision into a [`verdict`] and events.

pub mod attribution;
pub mod capture;
pub mod parse;
pub mod pipeline;
pub mod reassembly;
pub mod record;
pub mod verdict;
