//! The TLS ClientHello parser on arbitrary bytes: no panic, and the incremental
//! contract the pipeline relies on (a ClientHello split anywhere is still found).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nprot::datapath::parse::{ParseOutcome, Parsed, parse_client_payload, tls::parse_client_hello};

fuzz_target!(|data: &[u8]| {
    let outcome = parse_client_hello(data);
    // The content dispatcher must agree whenever it hands the bytes to the TLS parser.
    let dispatched = parse_client_payload(data);
    if data.first() == Some(&0x16) && !matches!(dispatched, ParseOutcome::NotRecognised(_)) {
        assert_eq!(dispatched, outcome, "dispatcher and TLS parser disagree");
    }
    let ParseOutcome::Complete(Parsed::Tls(info)) = outcome else {
        return;
    };
    assert!(
        info.length > 0 && info.length <= data.len(),
        "length {}",
        info.length
    );
    if let Some(name) = &info.server_name {
        assert!(
            name.len() <= 253 && !name.ends_with('.'),
            "server_name {name:?}"
        );
        assert_eq!(
            name,
            &name.to_ascii_lowercase(),
            "server_name not lowercase"
        );
    }
    // `length` covers the whole ClientHello: the bytes after it change nothing, and every
    // shorter prefix is a valid prefix (NeedMore), or a split ClientHello would escape.
    let exact = parse_client_hello(&data[..info.length]);
    assert_eq!(exact, ParseOutcome::Complete(Parsed::Tls(info.clone())));
    for cut in [info.length - 1, info.length / 2, 5.min(info.length - 1)] {
        assert_eq!(
            parse_client_hello(&data[..cut]),
            ParseOutcome::NeedMore,
            "prefix of {cut} of a {}-byte ClientHello",
            info.length
        );
    }
});
