//! The HTTP/1.x request-head parser on arbitrary bytes: no panic, and the same
//! incremental contract as TLS (a head split anywhere is still found); and the chunked
//! body walker: no panic, and an end it finds lies within the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nprot::datapath::parse::{
    ParseOutcome, Parsed,
    http::{ChunkStep, MethodMatch, chunk_step, match_method, parse_http_request},
    parse_client_payload,
};

fuzz_target!(|data: &[u8]| {
    match chunk_step(data) {
        ChunkStep::End(n) => assert!(n >= 3 && n as usize <= data.len(), "end {n}"),
        ChunkStep::Chunk(n) => assert!(n >= 4, "chunk {n}"),
        ChunkStep::NeedMore | ChunkStep::Bad(_) => {}
    }
    let outcome = parse_http_request(data);
    if matches!(match_method(data), MethodMatch::Method(_)) {
        assert_eq!(
            parse_client_payload(data),
            outcome,
            "dispatcher and HTTP parser disagree"
        );
    }
    let ParseOutcome::Complete(Parsed::Http(req)) = outcome else {
        return;
    };
    assert!(
        req.header_len > 0 && req.header_len <= data.len(),
        "header_len {}",
        req.header_len
    );
    // What the pipeline derives from a request must not panic either.
    let _ = req.url();
    let _ = req.total_len();
    let exact = parse_http_request(&data[..req.header_len]);
    assert_eq!(exact, ParseOutcome::Complete(Parsed::Http(req.clone())));
    for cut in [req.header_len - 1, req.header_len / 2] {
        assert_eq!(
            parse_http_request(&data[..cut]),
            ParseOutcome::NeedMore,
            "prefix of {cut} of a {}-byte head",
            req.header_len
        );
    }
});
