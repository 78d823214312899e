//! The kernel pre-filter program (issue 16). The daemon does not switch the pre-filter on
//! yet and so does not load the program at start; this keeps it under the kernel's
//! verifier, whose instruction budget its walks are written against (see
//! `nprot_common::prefilter`): a change that makes it unloadable fails here.
//!
//! Run as root: `cargo xtask test` (or `cargo test -p nprot-tests --test prefilter`).
// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nprot::capture::{Sensor, TcAttach};
use nprot_common::SensorConfig;

#[test]
fn the_prefilter_program_passes_the_verifier_and_takes_its_slot() {
    // No interface: nothing is attached, only loaded.
    let mut sensor =
        Sensor::start(&[], SensorConfig::default(), TcAttach::Auto).expect("the programs load");
    sensor
        .load_prefilter()
        .expect("the verifier accepts the pre-filter program");
}
