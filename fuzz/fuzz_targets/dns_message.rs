//! The DNS message parser on arbitrary bytes: no panic, and a parsed message is sane
//! (names without the root's trailing dot, min_ttl the answers' smallest TTL, resolved addresses
//! taken from the answers) and serialises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nprot::datapath::parse::dns::{
    AnswerData, DnsError, MAX_MESSAGE_LEN, parse_message, resolved_addresses,
};

fuzz_target!(|data: &[u8]| {
    let msg = match parse_message(data) {
        Ok(msg) => msg,
        Err(DnsError::TooLong(len)) => {
            assert!(len > MAX_MESSAGE_LEN && len == data.len());
            return;
        }
        Err(_) => return,
    };
    // A dot left at the end is a label's own (escaped) byte, never the root's.
    let name_ok =
        |n: &str| n == "." || (!n.is_empty() && (!n.ends_with('.') || n.ends_with("\\.")));
    if let Some(q) = &msg.query {
        assert!(name_ok(&q.name), "question name {:?}", q.name);
    }
    for a in &msg.answers {
        assert!(name_ok(&a.name), "owner name {:?}", a.name);
        if let AnswerData::Cname(target) = &a.data {
            assert!(name_ok(target), "CNAME target {target:?}");
        }
    }
    assert_eq!(msg.min_ttl, msg.answers.iter().map(|a| a.ttl).min());
    for (addr, ttl) in resolved_addresses(&msg) {
        assert!(
            msg.answers
                .iter()
                .any(|a| a.data == AnswerData::Addr(addr) && a.ttl >= ttl),
            "{addr} not among the answers"
        );
    }
    let _ = serde_json::to_string(&msg).expect("a message serialises");
});
