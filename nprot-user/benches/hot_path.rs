//! Micro-benchmarks of the verdict hot path's user-space steps: ClientHello, QUIC Initial
//! and HTTP parsing, and policy matching at 10^6 indicators (`cargo bench -p nprot-user`).
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::{hint::black_box, net::IpAddr, time::SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use nprot::{
    datapath::parse::{
        parse_client_payload,
        quic::{
            InitialReader, QuicOutcome, QuicVersion,
            testdata::{chromium_client_hello, chromium_like_datagrams},
        },
        testdata::{ClientHelloBuilder, X25519, X25519_MLKEM768},
    },
    policy::{Action, Indicator, IndicatorType, Indicators, Policy, Subject},
};

fn parsers(c: &mut Criterion) {
    let small = ClientHelloBuilder::new()
        .sni("www.example.com")
        .alpn(&["h2", "http/1.1"])
        .tls13()
        .key_share(X25519, 32)
        .build();
    let pq = ClientHelloBuilder::new()
        .sni("www.example.com")
        .alpn(&["h2", "http/1.1"])
        .tls13()
        .grease()
        .key_share(X25519_MLKEM768, 1216)
        .key_share(X25519, 32)
        .build();
    let http = b"GET /index.html?q=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n".to_vec();
    c.bench_function("parse ClientHello (~250 B)", |b| {
        b.iter(|| parse_client_payload(black_box(&small)));
    });
    c.bench_function("parse ClientHello, post-quantum (~1.7 KB)", |b| {
        b.iter(|| parse_client_payload(black_box(&pq)));
    });
    c.bench_function("parse HTTP GET", |b| {
        b.iter(|| parse_client_payload(black_box(&http)));
    });
}

/// A Chromium-like post-quantum ClientHello (~1.9 KB) over two QUIC Initial datagrams:
/// key derivation, header protection, AES-128-GCM, CRYPTO reassembly and TLS parsing.
fn quic(c: &mut Criterion) {
    let hello = chromium_client_hello("www.example.com");
    let datagrams = chromium_like_datagrams(QuicVersion::V1, &[0x5a; 8], &hello);
    c.bench_function("quic_initial_decrypt_parse", |b| {
        b.iter(|| {
            let mut reader = InitialReader::new();
            let mut outcome = QuicOutcome::NeedMore;
            for d in &datagrams {
                outcome = reader.push(black_box(d));
            }
            assert!(matches!(outcome, QuicOutcome::ClientHello { .. }));
            outcome
        });
    });
}

fn matcher(c: &mut Criterion) {
    let mut set = Indicators::new();
    for i in 0..1_000_000u32 {
        let (kind, value) = match i % 10 {
            0..=5 => (IndicatorType::DomainName, format!("d{i}.blocked.example")),
            6 => (
                IndicatorType::IpAddress,
                format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            ),
            7 => (
                IndicatorType::IpAddress,
                format!("172.{}.{}.0/24", 16 + (i >> 16) % 16, (i >> 8) & 255),
            ),
            8 => (
                IndicatorType::IpAddress,
                format!("2001:db8:ffff:{:x}::/64", i & 0xffff),
            ),
            _ => (
                IndicatorType::Url,
                format!("http://u{i}.blocked.example/p/{i}"),
            ),
        };
        let ind = Indicator::new(kind, &value, Action::Block).expect("valid indicator");
        set.push(&ind).expect("fits");
    }
    let policy = Policy::new(set, &[]);
    let now = SystemTime::now();
    let ip: IpAddr = "198.18.0.2".parse().expect("ip");
    let hit = Subject {
        ip,
        host: Some("www.d600.blocked.example"),
        http_path: Some("/"),
    };
    let miss = Subject {
        ip,
        host: Some("www.not-listed.example"),
        http_path: Some("/a/b"),
    };
    c.bench_function("match, 10^6 indicators, domain hit", |b| {
        b.iter(|| policy.decide(black_box(&hit), now).winner.is_some());
    });
    c.bench_function("match, 10^6 indicators, miss", |b| {
        b.iter(|| policy.decide(black_box(&miss), now).winner.is_some());
    });
}

criterion_group!(benches, parsers, quic, matcher);
criterion_main!(benches);
