//! Empty library target of the eBPF crate (the programs are its binary).
//!
//! It exists so that `nprot-user` can name this crate as a build dependency, which makes
//! cargo rebuild the user side when the eBPF code changes.
#![no_std]
