#![no_std]
// This file exists to give the crate a library target, which lets `nprot-user` name it as a
// build dependency so that cargo rebuilds the user side when the eBPF code changes.
