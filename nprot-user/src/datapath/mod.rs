//! The data path, in the order a flow goes through it: [`reassembly`] orders the client
//! bytes of the [`record`](crate::record)s capture hands in (for QUIC, [`quic`] collects
//! each flow's Initials), [`parse`] reads TLS and HTTP heads and QUIC Initials, and
//! [`pipeline`] matches them against the policy and turns the decision into a
//! [`verdict`] and events. [`backlog`] decides the order records are handled in: those a
//! verdict waits for first.

pub mod backlog;
pub mod dns_block;
pub mod names;
pub mod page;
pub mod parse;
pub mod pipeline;
pub mod prefilter;
pub mod quic;
pub mod reassembly;
pub mod verdict;
