//! The QUIC Initial reader on arbitrary datagram sequences: no panic, final outcomes stay
//! final, and a found ClientHello is sane. The input is a list of datagrams, each
//! prefixed by its length as a big-endian u16 (a short last record: the rest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nprot::datapath::parse::quic::{InitialReader, QuicOutcome, looks_like_client_initial};

fuzz_target!(|data: &[u8]| {
    let mut reader = InitialReader::new();
    let mut rest = data;
    let mut last = QuicOutcome::NeedMore;
    let mut datagrams = Vec::new();
    while !rest.is_empty() {
        let (datagram, next) = match rest {
            [hi, lo, tail @ ..] => {
                let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
                tail.split_at(len)
            }
            _ => (rest, &[][..]),
        };
        rest = next;
        let _ = looks_like_client_initial(datagram);
        let outcome = reader.push(datagram);
        if last != QuicOutcome::NeedMore {
            assert_eq!(outcome, last, "a final outcome changed");
        }
        last = outcome;
        datagrams.push(datagram);
    }
    if let QuicOutcome::ClientHello { version, info } = &last {
        assert_eq!(reader.version(), Some(*version));
        assert!(
            info.length >= 4 && info.length <= 64 * 1024 + 4,
            "length {}",
            info.length
        );
        if let Some(name) = &info.server_name {
            assert!(
                name.len() <= 253 && !name.ends_with('.'),
                "server_name {name:?}"
            );
        }
        for d in &datagrams {
            let _ = reader.same_connection(d);
        }
    }
});
