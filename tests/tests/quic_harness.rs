//! The QUIC/HTTP3 harness on its own, without the sensor: the aioquic server and client
//! (versions, Retry, a connection bench), Debian's Chromium loading a page over HTTP/3
//! (and what its client Initials look like on the wire), and what Chromium does when UDP
//! 443 is dropped.
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::time::Duration;

use nprot_tests::{
    ClientServer, Env,
    frames::Tcpdump,
    nginx::{BODY_ROOT, QUIC_HOST},
    quic::{
        ChromiumOpts, ClientOpts, DropAt, QuicReply, QuicServer, QuicVersion, ServerOpts,
        chromium_load, chromium_version, drop_udp, initials, marker, quic_bench, quic_get,
    },
};

/// nginx (TCP, `quic.example` among its hosts) and the HTTP/3 server on UDP 443 of both
/// server addresses, with nginx's `quic.example` certificate.
fn start(opts: &ServerOpts) -> (Env, QuicServer) {
    let env = Env::start_without_sensor().expect("environment");
    let server = start_quic(&env, opts);
    (env, server)
}

fn start_quic(env: &Env, opts: &ServerOpts) -> QuicServer {
    let nginx = env.nginx.as_ref().expect("nginx");
    QuicServer::start(
        env.server_ns(),
        &[env.server_ip(false), env.server_ip(true)],
        nginx.cert_dir(),
        &[QUIC_HOST],
        opts,
    )
    .expect("quic server")
}

fn chromium_opts(server: &QuicServer, force_quic: bool) -> ChromiumOpts {
    ChromiumOpts {
        force_quic,
        spki: vec![server.cert.spki.clone()],
        ..ChromiumOpts::default()
    }
}

#[test]
fn aioquic_client_gets_the_page_over_h3() {
    let (env, server) = start(&ServerOpts::default());
    let verified = ClientOpts {
        ca: Some(server.cert.cert.clone()),
        ..ClientOpts::default()
    };
    for (v6, version) in [(false, QuicVersion::V1), (true, QuicVersion::V2)] {
        let opts = ClientOpts {
            version: Some(version),
            ..verified.clone()
        };
        let r = quic_get(env.client_ns(), env.server_ip(v6), QUIC_HOST, &opts)
            .unwrap()
            .response()
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains(&marker(QUIC_HOST)), "{r:?}");
        assert_eq!(r.body_len, r.body.len());
        assert_eq!(r.version, version.name());
    }
    let log = server.requests().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(
        log.iter()
            .all(|q| q.authority == QUIC_HOST && q.path == "/" && q.method == "GET"),
        "{log:?}"
    );
    assert_eq!(
        log.iter().map(|q| q.version.as_str()).collect::<Vec<_>>(),
        ["v1", "v2"]
    );

    // Nothing listening: "no answer", not a failure of another kind.
    let closed = ClientOpts {
        port: 4443,
        timeout: Duration::from_secs(1),
        ..ClientOpts::default()
    };
    let r = quic_get(env.client_ns(), env.server_ip(false), QUIC_HOST, &closed).unwrap();
    assert!(matches!(r, QuicReply::NoAnswer(_)), "{r:?}");
}

#[test]
fn server_options_retry_and_version() {
    let env = Env::start_without_sensor().expect("environment");
    let retry = start_quic(
        &env,
        &ServerOpts {
            retry: true,
            port: Some(8443),
            ..ServerOpts::default()
        },
    );
    let v2_only = start_quic(
        &env,
        &ServerOpts {
            version: Some(QuicVersion::V2),
            port: Some(444),
            ..ServerOpts::default()
        },
    );
    let at = |port, version| ClientOpts {
        port,
        version,
        timeout: Duration::from_secs(2),
        ..ClientOpts::default()
    };
    let r = quic_get(
        env.client_ns(),
        env.server_ip(false),
        QUIC_HOST,
        &at(8443, None),
    )
    .unwrap()
    .response()
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(retry.requests().unwrap().len(), 1);

    let r = quic_get(
        env.client_ns(),
        env.server_ip(true),
        QUIC_HOST,
        &at(444, Some(QuicVersion::V2)),
    )
    .unwrap()
    .response()
    .unwrap();
    assert_eq!(r.version, "v2");
    // A v1-only client gets Version Negotiation and no response.
    let r = quic_get(
        env.client_ns(),
        env.server_ip(true),
        QUIC_HOST,
        &at(444, Some(QuicVersion::V1)),
    )
    .unwrap();
    assert!(!matches!(r, QuicReply::Response(_)), "{r:?}");
    assert_eq!(v2_only.requests().unwrap().len(), 1);
}

#[test]
fn quic_connection_bench() {
    let (env, _server) = start(&ServerOpts::default());
    let b = quic_bench(
        env.client_ns(),
        env.server_ip(false),
        QUIC_HOST,
        20,
        true,
        &ClientOpts::default(),
    )
    .unwrap();
    assert_eq!((b.count, b.ok, b.failed), (20, 20, 0), "{b:?}");
    eprintln!(
        "quic bench: {} handshakes in {:?} ({:.1}/s)",
        b.ok,
        b.elapsed,
        b.ok as f64 / b.elapsed.as_secs_f64()
    );
}

/// Chromium, forced onto QUIC for the origin, loads the page over HTTP/3 (both families);
/// the IPv4 load is recorded and its client Initials decrypted: one v1 connection with an
/// 8-byte DCID whose ClientHello (with its post-quantum key share, about 1.9 kB) spans
/// two Initial datagrams.
#[test]
fn chromium_loads_the_page_over_h3() {
    let (env, server) = start(&ServerOpts::default());
    eprintln!("{}", chromium_version().unwrap());
    let pcap = env.dir().join("chromium.pcap");
    let mut dump = Tcpdump::start(
        env.client_ns(),
        &pcap,
        &["-i", &env.topo.client_if, "udp", "port", "443"],
    )
    .unwrap();
    let opts = chromium_opts(&server, true);
    let run = chromium_load(
        env.client_ns(),
        env.server_ip(false),
        QUIC_HOST,
        env.dir(),
        &opts,
    )
    .unwrap();
    dump.stop().unwrap();
    assert!(run.has(&marker(QUIC_HOST)), "{run:?}");
    eprintln!("chromium h3 load: {:?}", run.elapsed);
    let log = server.requests().unwrap();
    let page = log
        .iter()
        .find(|q| q.path == "/")
        .unwrap_or_else(|| panic!("no request for / in {log:?}"));
    assert_eq!(page.authority, QUIC_HOST);
    assert!(page.user_agent.contains("HeadlessChrome"), "{page:?}");
    assert_eq!(page.version, "v1");

    let report = initials(&pcap, 443).unwrap();
    eprintln!("client Initials: {:?}", report.datagrams);
    assert!(report.client_hello_complete, "{:?}", report.raw);
    assert_eq!(report.sni.as_deref(), Some(QUIC_HOST));
    let first = &report.datagrams[0];
    assert_eq!(
        (first.version.as_str(), first.dcid_len),
        ("v1", 8),
        "{first:?}"
    );
    assert!(
        report.datagrams.iter().all(|d| d.size >= 1200),
        "{report:?}"
    );
    assert!(
        report.client_hello_len.unwrap() > 1200,
        "{:?}",
        report.client_hello_len
    );
    assert_eq!(report.client_hello_datagrams, 2, "{:?}", report.raw);

    let run = chromium_load(
        env.client_ns(),
        env.server_ip(true),
        QUIC_HOST,
        env.dir(),
        &opts,
    )
    .unwrap();
    assert!(run.has(&marker(QUIC_HOST)), "{run:?}");
    assert!(!env.nginx.as_ref().unwrap().access_log().contains("GET / "));
}

/// With QUIC dropped silently on the way (the server namespace drops UDP 443 on arrival),
/// a forced origin does not fall back: the load fails with `ERR_QUIC_PROTOCOL_ERROR`
/// (after Chromium's handshake timeout, a few seconds) and TCP is never tried. Without
/// forcing, Chromium uses TCP (nginx) at once, as it does when QUIC works: Alt-Svc is no
/// way to QUIC here, since Chromium accepts QUIC from Alt-Svc only with certificates of
/// publicly trusted roots.
#[test]
fn chromium_forced_quic_does_not_fall_back_when_dropped() {
    let (env, server) = start(&ServerOpts::default());
    let nginx = env.nginx.as_ref().unwrap();

    let unforced = chromium_opts(&server, false);
    let run = chromium_load(
        env.client_ns(),
        env.server_ip(false),
        QUIC_HOST,
        env.dir(),
        &unforced,
    )
    .unwrap();
    assert!(run.has(BODY_ROOT), "{run:?}");
    assert!(
        nginx.access_log().contains("GET / HTTP/1.1"),
        "{}",
        nginx.access_log()
    );
    assert!(server.requests().unwrap().is_empty());

    drop_udp(env.server_ns(), 443, DropAt::Ingress).unwrap();
    let forced = chromium_opts(&server, true);
    let before = nginx.access_log().lines().count();
    let run = chromium_load(
        env.client_ns(),
        env.server_ip(false),
        QUIC_HOST,
        env.dir(),
        &forced,
    )
    .unwrap();
    eprintln!(
        "forced QUIC, dropped: {:?} after {:?}",
        run.net_error(),
        run.elapsed
    );
    assert!(
        !run.has(&marker(QUIC_HOST)) && !run.has(BODY_ROOT),
        "{run:?}"
    );
    assert!(!run.timed_out, "{run:?}");
    assert_eq!(
        run.net_error().as_deref(),
        Some("net::ERR_QUIC_PROTOCOL_ERROR")
    );
    assert_eq!(nginx.access_log().lines().count(), before, "TCP was tried");
    assert!(server.requests().unwrap().is_empty());

    // The way back for a test that needs the page: load again without forcing.
    let run = chromium_load(
        env.client_ns(),
        env.server_ip(false),
        QUIC_HOST,
        env.dir(),
        &unforced,
    )
    .unwrap();
    eprintln!("unforced after the drop: TCP in {:?}", run.elapsed);
    assert!(run.has(BODY_ROOT), "{run:?}");
}

/// Dropped on the client's own way out, `sendmsg` fails with EPERM and a forced load gives
/// up at once with `ERR_QUIC_HANDSHAKE_FAILED`, again without trying TCP.
#[test]
fn chromium_forced_quic_fails_fast_when_sending_is_refused() {
    let (env, server) = start(&ServerOpts::default());
    drop_udp(env.client_ns(), 443, DropAt::Egress).unwrap();
    let run = chromium_load(
        env.client_ns(),
        env.server_ip(false),
        QUIC_HOST,
        env.dir(),
        &chromium_opts(&server, true),
    )
    .unwrap();
    eprintln!(
        "forced QUIC, refused locally: {:?} after {:?}",
        run.net_error(),
        run.elapsed
    );
    assert_eq!(
        run.net_error().as_deref(),
        Some("net::ERR_QUIC_HANDSHAKE_FAILED"),
        "{run:?}"
    );
    assert!(!env.nginx.as_ref().unwrap().access_log().contains("GET / "));
}
