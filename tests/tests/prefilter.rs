//! The kernel pre-filter (issue 16): in block mode the kernel reads the SNI or Host of a
//! flow's first segment and lets the flow go on at once when nothing in force can match
//! it. These tests hold it to being a superset: every kind of indicator that matches is
//! still blocked with no response byte, a change is in force for the very next flow, an
//! expired indicator lets its name be pre-allowed again, and what the kernel cannot read
//! in one segment goes to the daemon. Each would fail with a pre-filter that pre-allowed
//! too much (a block missed) or nothing at all (`prefilter_allowed` stays 0).
//!
//! Run as root: `cargo xtask test` (or `cargo test -p nprot-tests --test prefilter`).
// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, SystemTime},
};

use aya::{
    EbpfLoader,
    maps::Array,
    programs::{ProgramFd, SchedClassifier},
};
use nprot::capture::{EBPF_OBJECT, Sensor, TcAttach};
use nprot_common::{
    SensorConfig,
    name_hash::for_each_suffix,
    names::{HASH_TEST, HASH_TEST_KEYS, PROG_HASH_TEST, SCRATCH},
    prefilter::ALLOWED,
};
use nprot_tests::{
    ClientServer as _, CurlRun, EVENT_TIMEOUT, Env, ExchangeEnd, HelloSpec, Value, assert_reset,
    client_hello,
    indicators::{indicator, with},
    nginx::BODY_GOOD,
    sensor::{control_socket_for, sensor_binary},
};

#[test]
fn the_prefilter_program_passes_the_verifier_and_takes_its_slot() {
    // No interface: nothing is attached, only loaded.
    let mut sensor =
        Sensor::start(&[], SensorConfig::default(), TcAttach::Auto).expect("the programs load");
    sensor
        .load_prefilter()
        .expect("the verifier accepts the pre-filter program");
}

/// A counter of `nprot stats` (`section.name`), 0 if absent.
fn counter(stats: &Value, section: &str, name: &str) -> u64 {
    stats[section][name].as_u64().unwrap_or(0)
}

/// Waits until the kernel has counted `n` pre-filter judgements of `kind` (`allowed`,
/// `candidates`, `undecided`) in all; returns the stats.
fn wait_judged(env: &Env, kind: &str, n: u64) -> Value {
    let name = format!("prefilter_{kind}");
    env.wait_stats(|s| counter(s, "kernel", &name) >= n, EVENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name} never reached {n}: {e:#}\n{}", env.diagnostics()))
}

#[track_caller]
fn assert_ok(env: &Env, what: &str, r: &CurlRun) {
    assert!(
        r.exit_code == Some(0) && r.http_code == 200 && r.body.trim() == BODY_GOOD,
        "{what}: expected 200 with {BODY_GOOD:?}; got {r:?}\n{}",
        env.diagnostics()
    );
}

/// A stats snapshot, with the summary in force and no pre-allowed flow the policy blocks.
fn stats(env: &Env) -> Value {
    let s = env.stats().expect("nprot stats");
    assert_eq!(s["prefilter"]["enabled"], true, "{s}");
    assert_eq!(counter(&s, "pipeline", "prefilter_misses"), 0, "{s}");
    s
}

/// Every kind of name indicator that matches is a candidate, never pre-allowed: the
/// flow is reset with no response byte. A name nothing matches is decided in the kernel.
#[test]
fn names_that_match_are_never_pre_allowed() {
    let env = Env::start_enforcing(
        "block",
        &[
            indicator("exact", "DomainName", "bad.example", "Block"),
            indicator("parent", "DomainName", "parent.example", "Block"),
            indicator("url", "Url", "http://url.example/good", "Block"),
            with(
                indicator("scoped", "DomainName", "scoped.example", "Block"),
                "process",
                "curl",
            ),
            indicator("warned", "DomainName", "warned.example", "Warn"),
        ],
        &[],
    )
    .expect("sensor enforcing");
    let before = stats(&env);
    assert_eq!(before["prefilter"]["keys"], 5, "{before}");

    let good = env
        .curl_https_any("good.example", 443, false, "/good")
        .unwrap();
    assert_ok(&env, "https://good.example", &good);
    let s = wait_judged(&env, "allowed", 1);
    assert_eq!(counter(&s, "kernel", "prefilter_candidates"), 0, "{s}");

    let blocked: [(&str, CurlRun); 5] = [
        (
            "bad.example (exact)",
            env.curl_https_any("bad.example", 443, false, "/good")
                .unwrap(),
        ),
        (
            "www.parent.example (parent)",
            env.curl_https_any("www.parent.example", 443, false, "/good")
                .unwrap(),
        ),
        (
            "url.example/good (URL)",
            env.curl_http_any("url.example", 80, false, "/good", &[])
                .unwrap(),
        ),
        (
            "scoped.example (curl only)",
            env.curl_https_any("scoped.example", 443, false, "/good")
                .unwrap(),
        ),
        (
            "warned.example (Warn)",
            env.curl_https_any("warned.example", 443, true, "/good")
                .unwrap(),
        ),
    ];
    for (what, run) in &blocked {
        assert_reset(what, run, || env.diagnostics());
    }
    let s = wait_judged(&env, "candidates", 5);
    assert_eq!(counter(&s, "kernel", "prefilter_allowed"), 1, "{s}");
    assert_eq!(
        counter(&s, "pipeline", "prefilter_false_positives"),
        0,
        "{s}"
    );
    stats(&env);
}

/// IP and CIDR indicators: the server's address makes its flow a candidate whatever
/// name it carries.
#[test]
fn addresses_that_match_are_never_pre_allowed() {
    let mut env = Env::start_without_sensor().expect("test environment");
    let v4 = env.server_ip(false).to_string();
    let std::net::IpAddr::V6(v6) = env.server_ip(true) else {
        panic!("no IPv6 server address");
    };
    let s = v6.segments();
    let v6_net = format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]);
    env.enforce(
        "block",
        &[
            indicator("ip", "IpAddress", &v4, "Block"),
            indicator("cidr", "IpAddress", &v6_net, "Block"),
        ],
        &[],
    )
    .expect("sensor enforcing");
    for v6 in [false, true] {
        let r = env
            .curl_https_any("good.example", 443, v6, "/good")
            .unwrap();
        assert_reset(
            &format!("good.example over IPv{}", if v6 { 6 } else { 4 }),
            &r,
            || env.diagnostics(),
        );
    }
    let s = wait_judged(&env, "candidates", 2);
    assert_eq!(counter(&s, "kernel", "prefilter_allowed"), 0, "{s}");
    stats(&env);
}

/// A name added with the CLI is blocked on the next flow; removed, it is pre-allowed
/// again.
#[test]
fn a_change_is_in_force_for_the_very_next_flow() {
    let env = Env::start_enforcing("block", &[], &[]).expect("sensor enforcing");
    let first = env
        .curl_https_any("good.example", 443, false, "/good")
        .unwrap();
    assert_ok(&env, "good.example before the change", &first);
    wait_judged(&env, "allowed", 1);

    let socket = control_socket_for(env.events().path());
    let nprot = |args: &[&str]| {
        let out = std::process::Command::new(sensor_binary().unwrap())
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "nprot {args:?}: {out:?}");
    };
    nprot(&[
        "indicator",
        "add",
        "--type",
        "DomainName",
        "--value",
        "good.example",
        "--action",
        "Block",
        "--id",
        "cli",
    ]);
    let next = env
        .curl_https_any("good.example", 443, false, "/good")
        .unwrap();
    assert_reset("good.example right after the CLI added it", &next, || {
        env.diagnostics()
    });

    nprot(&["indicator", "remove", "cli"]);
    let after = env
        .curl_https_any("good.example", 443, false, "/good")
        .unwrap();
    assert_ok(&env, "good.example after its removal", &after);
    let s = wait_judged(&env, "allowed", 2);
    assert_eq!(counter(&s, "kernel", "prefilter_candidates"), 1, "{s}");
    assert_eq!(s["prefilter"]["rebuilds"], 3, "{s}");
}

/// An indicator that expires leaves the summary by itself (housekeeping sees it): its
/// name is pre-allowed again.
#[test]
fn an_expired_indicator_is_pre_allowed_again() {
    let until = SystemTime::now() + Duration::from_secs(6);
    let env = Env::start_enforcing(
        "block",
        &[with(
            indicator("soon", "DomainName", "good.example", "Block"),
            "expiration",
            nprot::time::format(until),
        )],
        &[],
    )
    .expect("sensor enforcing");
    let r = env
        .curl_https_any("good.example", 443, false, "/good")
        .unwrap();
    assert!(
        SystemTime::now() < until,
        "the test machine is too slow for this test"
    );
    assert_reset("good.example before its expiry", &r, || env.diagnostics());
    let s = env
        .wait_stats(|s| s["prefilter"]["rebuilds"] == 2, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("no rebuild at the expiry: {e:#}\n{}", env.diagnostics()));
    assert_eq!(s["prefilter"]["keys"], 0, "{s}");
    assert!(SystemTime::now() >= until);
    let r = env
        .curl_https_any("good.example", 443, false, "/good")
        .unwrap();
    assert_ok(&env, "good.example after its expiry", &r);
    wait_judged(&env, "allowed", 1);
}

/// A ClientHello whose SNI is in its second segment cannot be judged in the kernel: the
/// flow waits for the daemon, which blocks it.
#[test]
fn an_sni_in_the_second_segment_goes_to_the_daemon() {
    let env = Env::start_enforcing(
        "block",
        &[indicator("exact", "DomainName", "bad.example", "Block")],
        &[],
    )
    .expect("sensor enforcing");
    let hello = client_hello(&HelloSpec::new("bad.example"));
    let b = &hello.bytes;
    let cut = hello.sni_extension;
    let r = env
        .exchange(
            443,
            false,
            &[&b[..cut], &b[cut..]],
            Duration::from_millis(50),
            Duration::from_secs(3),
            u64::MAX,
        )
        .expect("send a split ClientHello");
    assert!(
        r.received == 0 && matches!(r.end, ExchangeEnd::Reset | ExchangeEnd::Eof),
        "expected a reset with no byte received: {r:?}\n{}",
        env.diagnostics()
    );
    let s = wait_judged(&env, "undecided", 1);
    assert_eq!(counter(&s, "kernel", "prefilter_allowed"), 0, "{s}");
    assert!(counter(&s, "pipeline", "blocked") >= 1, "{s}");
}

/// Python's http.client on one kept-alive connection: `KEPT` requests for good.example,
/// then one for bad.example; prints what each got.
const KEPT_ALIVE_PY: &str = r#"
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], 80, timeout=5)
out = []
for host in ["good.example"] * int(sys.argv[2]) + ["bad.example"]:
    try:
        c.request("GET", "/good", headers={"Host": host})
        r = c.getresponse()
        out.append([host, r.status, r.read().decode()])
    except (ConnectionResetError, http.client.RemoteDisconnected) as e:
        out.append([host, "reset", type(e).__name__])
        break
print(json.dumps(out))
"#;

/// Requests after the first on a kept-alive connection, each sent as soon as the last
/// answer came (before the daemon's Continue for it), are judged in the kernel too: all
/// pre-allowed, each still reported; a blocked name on the same connection is a
/// candidate and reset with no response byte. Without the pre-filter starting again at a
/// request's end, only the first request would count as pre-allowed.
#[test]
fn kept_alive_requests_are_each_judged_in_the_kernel() {
    const KEPT: u64 = 20;
    let env = Env::start_enforcing(
        "block",
        &[indicator("exact", "DomainName", "bad.example", "Block")],
        &[],
    )
    .expect("sensor enforcing");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &env.topo.client_ns])
        .arg(nprot_tests::clients::python3())
        .args(["-c", KEPT_ALIVE_PY])
        .arg(env.server_ip(false).to_string())
        .arg(KEPT.to_string())
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    for i in 0..KEPT as usize {
        assert_eq!(
            v[i][1],
            200,
            "request {}: {v}\n{}",
            i + 1,
            env.diagnostics()
        );
        assert_eq!(v[i][2].as_str().map(str::trim), Some(BODY_GOOD), "{v}");
    }
    assert_eq!(v[KEPT as usize][1], "reset", "{v}\n{}", env.diagnostics());
    let s = wait_judged(&env, "candidates", 1);
    assert_eq!(counter(&s, "kernel", "prefilter_allowed"), KEPT, "{s}");
    assert_eq!(counter(&s, "kernel", "prefilter_undecided"), 0, "{s}");
    for depth in 1..=KEPT {
        nprot_tests::wait_event(&env, &format!("request {depth} reported"), |e| {
            nprot_tests::ev::is(e, "HttpConnectionInspected")
                && e["AdditionalFields"]["trans_depth"] == depth
                && e["AdditionalFields"]["host"] == "good.example"
        });
    }
    nprot_tests::wait_event(&env, "bad.example blocked", |e| {
        nprot_tests::ev::is(e, nprot_tests::BLOCKED) && e["RemoteUrl"] == "http://bad.example/good"
    });
    stats(&env);
}

/// The part of `union bpf_attr` that `BPF_PROG_TEST_RUN` reads (linux/bpf.h); libc and
/// aya have no binding for it.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs `prog` once on `packet`; returns its return value.
fn test_run(prog: &ProgramFd, packet: &[u8]) -> std::io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_in: packet.as_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a valid BPF_PROG_TEST_RUN attribute whose data pointer and size
    // describe `packet`, which outlives the call; the kernel writes only into `attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            size_of::<TestRunAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr.retval)
}

/// A random DNS name of 1 to 253 bytes: labels of 1 to 63 letters, digits and hyphens in
/// both cases, ending in a letter (a name ending in a digit is taken for an IP literal).
fn random_name(state: &mut u64) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-";
    let mut next = |n: u64| {
        // xorshift64: reproducible, and no crate for it.
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state % n
    };
    let target = 1 + next(253) as usize;
    let mut name = Vec::with_capacity(target);
    while name.len() < target {
        if !name.is_empty() {
            name.push(b'.');
        }
        let label = (1 + next(63) as usize).min(253 - name.len().min(252));
        for _ in 0..label {
            name.push(CHARS[next(CHARS.len() as u64) as usize]);
        }
        if name.len() >= 251 {
            break;
        }
    }
    name.truncate(253);
    while name.last().is_some_and(|b| !b.is_ascii_alphabetic()) {
        name.pop();
    }
    if name.is_empty() {
        name.push(b'x');
    }
    String::from_utf8(name).unwrap()
}

/// The same 10^5 random names hash identically in the kernel (the pre-filter's walk over a
/// ClientHello's SNI, run by `BPF_PROG_TEST_RUN`) and in user space (`name_hash`, as the
/// daemon's matcher and summary take it): every label suffix, in the same order.
#[test]
fn names_hash_the_same_in_the_kernel_and_in_user_space() {
    nprot_tests::require_root().unwrap();
    let cpus = aya::util::nr_cpus().unwrap() as u32;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(SCRATCH, cpus)
        .load(EBPF_OBJECT)
        .unwrap();
    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROG_HASH_TEST)
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().unwrap();
    let fd = prog.fd().unwrap().try_clone().unwrap();
    let mut keys: Array<_, u64> = Array::try_from(ebpf.take_map(HASH_TEST).unwrap()).unwrap();

    let mut state = 0x9e37_79b9_7f4a_7c15;
    let mut packet = Vec::new();
    let mut probes = 0usize;
    for i in 0..100_000 {
        let name = random_name(&mut state);
        let hello = client_hello(&HelloSpec::new(&name));
        packet.clear();
        // An Ethernet header of an experimental type: the kernel passes the rest as is.
        packet.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x88, 0xb5]);
        packet.extend_from_slice(&hello.bytes);
        keys.set(0, 0, 0).unwrap();
        let outcome = test_run(&fd, &packet).unwrap();
        assert_eq!(outcome, u32::from(ALLOWED), "name {i} {name:?}: not judged");
        let mut want = Vec::new();
        for_each_suffix(&name, |h, _| want.push(h));
        let count = keys.get(&0, 0).unwrap();
        assert!(count <= u64::from(HASH_TEST_KEYS));
        let got: Vec<u64> = (1..=count as u32)
            .map(|k| keys.get(&k, 0).unwrap())
            .collect();
        assert_eq!(got, want, "name {i} {name:?}");
        probes += got.len();
    }
    eprintln!("10^5 names, {probes} suffix hashes: kernel and user space agree");
}
