//! Arbitrary bytes as a capture file through `nprot replay`'s entry point: the pcap and
//! pcapng readers, link layers, IP/TCP decoding, the user-space flow tracker and the
//! whole pipeline (reassembly, parsers, policy, verdicts, event serialisation).
#![no_main]

use std::{
    sync::{Arc, OnceLock},
    time::UNIX_EPOCH,
};

use libfuzzer_sys::fuzz_target;
use nprot::{
    events::{Clock, EventFactory},
    mode::Mode,
    policy::{Policy, load_json},
    replay::Replay,
};

/// One name and one address blocked, so that verdicts flow back into the tracker.
fn policy() -> Arc<Policy> {
    static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();
    POLICY
        .get_or_init(|| {
            let text = r#"{"indicators": [
                {"id": "d", "type": "DomainName", "value": "bad.example", "action": "Block"},
                {"id": "u", "type": "Url", "value": "http://good.example/bad", "action": "Block"},
                {"id": "i", "type": "IpAddress", "value": "198.18.9.66", "action": "Block"},
                {"id": "a", "type": "DomainName", "value": "audit.example", "action": "Audit"}
            ]}"#;
            Arc::new(Policy::new(load_json(text).unwrap().indicators, &[]))
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let factory = EventFactory::new("host", "id", Clock::anchored(UNIX_EPOCH));
    let mut replay = Replay::new(factory, policy(), Mode::Block);
    // A corrupt file is an error, never a panic; events are serialised as they would be
    // printed.
    let _ = replay.run(data, |events| {
        for e in events.drain(..) {
            serde_json::to_vec(&e).expect("an event serialises");
        }
        Ok(())
    });
    let summary = replay.summary();
    assert!(summary.tcp_segments <= summary.packets);
    let _ = summary.to_string();
});
