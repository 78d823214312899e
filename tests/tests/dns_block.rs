//! DNS blocking (issue 15): in block mode a query for a blocked name is answered
//! NXDOMAIN by the kernel at once (dnsmasq, which has an A record for it, never sees
//! it), an Allowed subdomain and other names get their real answers, and the block is
//! reported with its indicator; audit mode gives the real answer and an Audited event.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use nprot_tests::{
    BLOCKED, ClientServer, Env, GatewayEnv,
    dns::{Dnsmasq, Record, dig},
    events::ev,
    indicators::{indicator, with},
    sensor::{control_socket_for, sensor_binary},
    wait_event,
};
use serde_json::Value;

const AUDITED: &str = "ExploitGuardNetworkProtectionAudited";

/// The environment with dnsmasq on the server's IPv4 address serving `www.blocked.test`,
/// `ok.blocked.test` and `fine.example.test`, and the sensor in `mode` blocking
/// `blocked.test` (id `blk`) with `ok.blocked.test` allowed (id `ok`).
fn start(mode: &str) -> (Env, Dnsmasq) {
    start_on(mode, false)
}

/// [`start`] with the resolver on the server's IPv6 address if `v6`.
fn start_on(mode: &str, v6: bool) -> (Env, Dnsmasq) {
    let mut env = Env::start_without_sensor().expect("test environment");
    let server = env.server_ip(v6);
    let records =
        ["www.blocked.test", "ok.blocked.test", "fine.example.test"].map(|name| Record::Host {
            name: name.into(),
            addrs: vec![server],
            ttl: 60,
        });
    let resolver = Dnsmasq::start(env.server_ns(), server, &records, env.dir()).expect("dnsmasq");
    env.enforce(
        mode,
        &[
            indicator("blk", "DomainName", "blocked.test", "Block"),
            indicator("ok", "DomainName", "ok.blocked.test", "Allowed"),
        ],
        &[],
    )
    .expect("sensor");
    (env, resolver)
}

/// `dig` and the wall time around it.
fn timed_dig(env: &Env, resolver: &Dnsmasq, name: &str) -> (nprot_tests::dns::DigResult, Duration) {
    let started = Instant::now();
    let got = dig(env.client_ns(), resolver.addr, name, "A").unwrap();
    (got, started.elapsed())
}

fn dns_for(name: &'static str) -> impl Fn(&Value) -> bool {
    move |e: &Value| ev::is(e, "DnsConnectionInspected") && e["AdditionalFields"]["query"] == name
}

fn protection_for(action: &'static str, name: &'static str) -> impl Fn(&Value) -> bool {
    move |e: &Value| ev::is(e, action) && e["RemoteUrl"] == name
}

fn nprot(socket: &Path, args: &[&str]) {
    let out = Command::new(sensor_binary().unwrap())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nprot {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_blocked_name_gets_nxdomain_from_the_kernel_at_once() {
    let (env, resolver) = start("block");
    // A cold dig pays for its own start: the process, not the answer, dominates.
    let (got, wall) = timed_dig(&env, &resolver, "www.blocked.test");
    assert_eq!(got.status, "NXDOMAIN", "{got:?}");
    assert!(got.answers.is_empty(), "{got:?}");
    eprintln!(
        "blocked lookup: dig query time {:?}, wall {wall:?}",
        got.query_time
    );
    assert!(wall < Duration::from_millis(100), "took {wall:?}");
    assert!(got.query_time < Duration::from_millis(50), "{got:?}");

    // The name itself, in another case, too.
    let (got, _) = timed_dig(&env, &resolver, "Blocked.TEST");
    assert_eq!(got.status, "NXDOMAIN", "{got:?}");

    // An allowed subdomain and another name get their real answers.
    let (ok, _) = timed_dig(&env, &resolver, "ok.blocked.test");
    assert_eq!(ok.status, "NOERROR", "{ok:?}");
    assert_eq!(ok.answers.len(), 1, "{ok:?}");
    assert!(
        ok.answers[0].ends_with(&env.server_ip(false).to_string()),
        "{ok:?}"
    );
    let (fine, _) = timed_dig(&env, &resolver, "fine.example.test");
    assert_eq!(fine.status, "NOERROR", "{fine:?}");
    assert_eq!(fine.answers.len(), 1, "{fine:?}");

    // The resolver never saw the blocked queries, and did see the others.
    let log = resolver.log_text();
    assert!(!log.contains("www.blocked.test"), "{log}");
    assert!(
        !log.to_ascii_lowercase().contains("query[a] blocked.test"),
        "{log}"
    );
    assert!(log.contains("ok.blocked.test"), "{log}");

    let blocked = wait_event(
        &env,
        "the Blocked event",
        protection_for(BLOCKED, "www.blocked.test"),
    );
    let f = &blocked["AdditionalFields"];
    assert_eq!(f["IndicatorId"], "blk", "{blocked}");
    assert_eq!(f["IndicatorValue"], "blocked.test", "{blocked}");
    assert_eq!(blocked["Protocol"], "Udp", "{blocked}");
    assert_eq!(blocked["RemotePort"], 53, "{blocked}");
    let lookup = wait_event(&env, "the forged lookup", dns_for("www.blocked.test"));
    assert_eq!(lookup["AdditionalFields"]["rcode"], "NXDOMAIN", "{lookup}");
    assert_eq!(lookup["AdditionalFields"]["forged"], true, "{lookup}");
    let real = wait_event(&env, "the allowed lookup", dns_for("ok.blocked.test"));
    assert_eq!(real["AdditionalFields"]["rcode"], "NOERROR", "{real}");
    assert!(real["AdditionalFields"].get("forged").is_none(), "{real}");
    // The forged answer passes the ingress hook on its way to the socket: it is not
    // reported a second time as a response.
    let lookups = env
        .events()
        .events()
        .unwrap()
        .into_iter()
        .filter(|e| dns_for("www.blocked.test")(e))
        .count();
    assert_eq!(lookups, 1, "{}", env.events().dump());

    let stats = env
        .wait_stats(
            |s| s["pipeline"]["dns_blocked"] == 2,
            Duration::from_secs(3),
        )
        .unwrap();
    assert_eq!(stats["kernel"]["dns_forged"], 2, "{stats}");
    assert_eq!(stats["kernel"]["dns_forge_skipped"], 0, "{stats}");
    assert_eq!(stats["pipeline"]["dns_blocked"], 2, "{stats}");
    assert_eq!(stats["pipeline"]["dns_block_missed"], 0, "{stats}");
    assert_eq!(stats["pipeline"]["dns_malformed"], 0, "{stats}");
}

/// An indicator that expires leaves the kernel's name map by itself (housekeeping sees
/// the expiry): the name resolves again.
#[test]
fn an_expired_indicator_stops_blocking_the_name() {
    let mut env = Env::start_without_sensor().expect("test environment");
    let server = env.server_ip(false);
    let records = [Record::Host {
        name: "soon.test".into(),
        addrs: vec![server],
        ttl: 60,
    }];
    let resolver = Dnsmasq::start(env.server_ns(), server, &records, env.dir()).expect("dnsmasq");
    let until = std::time::SystemTime::now() + Duration::from_secs(3);
    env.enforce(
        "block",
        &[with(
            indicator("soon", "DomainName", "soon.test", "Block"),
            "expiration",
            nprot::time::format(until),
        )],
        &[],
    )
    .expect("sensor");
    let (got, _) = timed_dig(&env, &resolver, "soon.test");
    assert_eq!(got.status, "NXDOMAIN", "{got:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, _) = timed_dig(&env, &resolver, "soon.test");
        if got.status == "NOERROR" {
            assert!(
                std::time::SystemTime::now() >= until,
                "{got:?} before the expiry"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still blocked after its expiry: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Over IPv6 the UDP checksum is mandatory: the forged answer must carry a right one.
#[test]
fn a_blocked_name_gets_nxdomain_over_ipv6_too() {
    let (env, resolver) = start_on("block", true);
    let (got, wall) = timed_dig(&env, &resolver, "www.blocked.test");
    assert_eq!(got.status, "NXDOMAIN", "{got:?}");
    assert!(wall < Duration::from_millis(100), "took {wall:?}");
    let (ok, _) = timed_dig(&env, &resolver, "ok.blocked.test");
    assert_eq!(ok.status, "NOERROR", "{ok:?}");
    assert!(!resolver.log_text().contains("www.blocked.test"));
    wait_event(
        &env,
        "the Blocked event",
        protection_for(BLOCKED, "www.blocked.test"),
    );
    let stats = env.stats().unwrap();
    assert_eq!(stats["kernel"]["dns_forged"], 1, "{stats}");
}

/// A gateway guarding its client side answers a forwarded client's query itself: the
/// answer goes back out of the interface the query came in on, over IPv4 and IPv6.
#[test]
fn a_gateway_answers_a_forwarded_clients_blocked_query() {
    let mut env = GatewayEnv::start_without_sensor().expect("gateway environment");
    let mut resolvers = Vec::new();
    for v6 in [false, true] {
        let server = env.server_ip(v6);
        let records = [Record::Host {
            name: "www.blocked.test".into(),
            addrs: vec![server],
            ttl: 60,
        }];
        let dir = env.dir().join(if v6 { "v6" } else { "v4" });
        std::fs::create_dir_all(&dir).unwrap();
        resolvers
            .push(Dnsmasq::start(&env.net.server_ns, server, &records, &dir).expect("dnsmasq"));
    }
    let guarded = env.net.router_client_if.clone();
    env.enforce(
        "block",
        &[indicator("blk", "DomainName", "blocked.test", "Block")],
        &[&guarded],
        &[],
    )
    .expect("sensor in the router");
    for resolver in &resolvers {
        let started = Instant::now();
        let got = dig(&env.net.client_ns, resolver.addr, "www.blocked.test", "A").unwrap();
        let wall = started.elapsed();
        assert_eq!(got.status, "NXDOMAIN", "{got:?} from {}", resolver.addr);
        assert!(wall < Duration::from_millis(100), "took {wall:?}");
        assert!(!resolver.log_text().contains("www.blocked.test"));
        let other = dig(
            &env.net.client_ns,
            resolver.addr,
            "other.blocked-not.test",
            "A",
        )
        .unwrap();
        assert_eq!(other.status, "NXDOMAIN", "{other:?}");
        assert!(resolver.log_text().contains("other.blocked-not.test"));
    }
    env.events()
        .wait_for(
            |e| ev::is(e, BLOCKED) && e["RemoteUrl"] == "www.blocked.test",
            Duration::from_secs(5),
        )
        .unwrap();
}

#[test]
fn audit_mode_gives_the_real_answer_and_an_audited_event() {
    let (env, resolver) = start("audit");
    let (got, _) = timed_dig(&env, &resolver, "www.blocked.test");
    assert_eq!(got.status, "NOERROR", "{got:?}");
    assert_eq!(got.answers.len(), 1, "{got:?}");
    let audited = wait_event(
        &env,
        "the Audited event",
        protection_for(AUDITED, "www.blocked.test"),
    );
    assert_eq!(
        audited["AdditionalFields"]["IndicatorId"], "blk",
        "{audited}"
    );
    let lookup = wait_event(&env, "the real lookup", dns_for("www.blocked.test"));
    assert_eq!(lookup["AdditionalFields"]["rcode"], "NOERROR", "{lookup}");
    assert!(resolver.log_text().contains("www.blocked.test"));
    let stats = env.stats().unwrap();
    assert_eq!(stats["kernel"]["dns_forged"], 0, "{stats}");

    // Switched to block mode at run time, the kernel answers from the next query on;
    // back in audit mode, the resolver does again.
    let socket = control_socket_for(env.events().path());
    nprot(&socket, &["mode", "block"]);
    let (got, wall) = timed_dig(&env, &resolver, "www.blocked.test");
    assert_eq!(got.status, "NXDOMAIN", "{got:?}");
    assert!(wall < Duration::from_millis(100), "took {wall:?}");
    nprot(&socket, &["mode", "audit"]);
    let (got, _) = timed_dig(&env, &resolver, "www.blocked.test");
    assert_eq!(got.status, "NOERROR", "{got:?}");
    let stats = env.stats().unwrap();
    assert_eq!(stats["kernel"]["dns_forged"], 1, "{stats}");
}
