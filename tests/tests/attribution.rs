//! End-to-end tests of process attribution (issue 7): the cgroup connect hooks and the
//! attribution thread name the program behind each local flow in the
//! `InitiatingProcess*` columns; a process-scoped indicator applies to that program only;
//! the caches stay within their bounds; without the hooks the sensor runs and says so.
//!
//! Clients are started here with `ip netns exec`, which execs the client itself, so the
//! child's pid is the client's pid and this test process is its parent.
//!
//! Run as root, serially: `cargo test -p nprot-tests --test attribution -- --test-threads=1`.
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use nprot_tests::{
    EVENT_TIMEOUT, Env, Value,
    clients::python3,
    ev,
    indicators::{indicator, with},
    sensor::{control_socket_for, sensor_binary},
};

const CURL: &str = "/usr/bin/curl";

/// Waits for an event matching `pred`; panics with every event and the sensor's stderr.
fn wait(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    env.events()
        .wait_for_described(what, pred, EVENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `program args…` in the client namespace; returns its pid and what it printed.
/// Every client here bounds its own run time (curl `--max-time`, socket timeouts).
fn run_client(env: &Env, program: &str, args: &[&str]) -> (u32, Output) {
    let mut cmd = env.topo.client_cmd(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let pid = child.id();
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for {program}: {e}"));
    (pid, out)
}

/// The local port a client printed on its first line.
fn port_of(what: &str, out: &Output) -> u16 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{what} printed no local port ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn real_path(program: &str) -> PathBuf {
    std::fs::canonicalize(program).unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// curl to `https://NAME/` on the server (v4), printing its local port.
fn curl_args(env: &Env, name: &str) -> Vec<String> {
    [
        "-sS",
        "-k",
        "--max-time",
        "5",
        "--resolve",
        &format!("{name}:443:{}", env.server_ip(false)),
        "-o",
        "/dev/null",
        "-w",
        "%{local_port}\n",
        &format!("https://{name}/"),
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

/// Python: TLS to ADDR:443 with SNI NAME (no verification), GET /, print the local port
/// and then "ok <status line>" or "reset".
const TLS_GET_PY: &str = r#"
import socket, ssl, sys
addr, name = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection((addr, 443), timeout=5)
print(s.getsockname()[1], flush=True)
try:
    t = ctx.wrap_socket(s, server_hostname=name)
    t.sendall(b"GET / HTTP/1.1\r\nHost: " + name.encode() + b"\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        d = t.recv(4096)
        if not d:
            break
        data += d
    print("ok", data.split(b"\r\n")[0].decode(), flush=True)
except (ConnectionResetError, ssl.SSLError, OSError) as e:
    print("reset", e, flush=True)
"#;

/// Python: connect to ADDR:80, print the local port and exit at once (no payload, no
/// close: the kernel closes the socket when the process is gone).
const CONNECT_AND_EXIT_PY: &str = r"
import os, socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
print(s.getsockname()[1], flush=True)
os._exit(0)
";

/// Checks the `InitiatingProcess*` columns of `event`.
#[track_caller]
fn check_process(env: &Env, event: &Value, pid: u32, exe: &Path, command_line: Option<&str>) {
    let s = |k: &str| event[k].as_str().map(str::to_owned);
    let want_name = file_name(exe);
    let problems: Vec<String> = [
        (event["InitiatingProcessId"].as_u64() != Some(u64::from(pid)))
            .then(|| format!("InitiatingProcessId is not {pid}")),
        (s("InitiatingProcessFileName").as_deref() != Some(&want_name))
            .then(|| format!("InitiatingProcessFileName is not {want_name}")),
        (s("InitiatingProcessFolderPath").as_deref() != exe.to_str())
            .then(|| format!("InitiatingProcessFolderPath is not {}", exe.display())),
        (s("InitiatingProcessAccountName").as_deref() != Some("root"))
            .then(|| "InitiatingProcessAccountName is not root".to_owned()),
        (event["InitiatingProcessParentId"].as_u64() != Some(u64::from(std::process::id())))
            .then(|| format!("InitiatingProcessParentId is not {}", std::process::id())),
        command_line.and_then(|c| {
            (s("InitiatingProcessCommandLine").as_deref() != Some(c))
                .then(|| format!("InitiatingProcessCommandLine is not {c:?}"))
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        problems.is_empty(),
        "{}\nevent: {event}\n{}",
        problems.join("\n"),
        env.diagnostics()
    );
}

#[test]
fn curl_and_python3_are_named_in_the_events() {
    let env = Env::start().expect("test environment with the sensor");

    let args = curl_args(&env, "good.example");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (pid, out) = run_client(&env, CURL, &argv);
    assert!(out.status.success(), "curl failed: {out:?}");
    let port = port_of("curl", &out);
    let hello = wait(&env, "curl's SslConnectionInspected", |e| {
        ev::is(e, "SslConnectionInspected") && ev::local_port(e, port)
    });
    let command_line = format!("{CURL} {}", args.join(" "));
    check_process(&env, &hello, pid, &real_path(CURL), Some(&command_line));
    let success = wait(&env, "curl's ConnectionSuccess", |e| {
        ev::is(e, "ConnectionSuccess") && ev::local_port(e, port)
    });
    check_process(&env, &success, pid, &real_path(CURL), Some(&command_line));

    let server = env.server_ip(false).to_string();
    let (pid, out) = run_client(
        &env,
        python3(),
        &["-c", TLS_GET_PY, &server, "good.example"],
    );
    let port = port_of("python3", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok HTTP/1.1 200"),
        "python3 TLS client: {out:?}"
    );
    let hello = wait(&env, "python3's SslConnectionInspected", |e| {
        ev::is(e, "SslConnectionInspected") && ev::local_port(e, port)
    });
    let command_line = format!("{} -c {TLS_GET_PY} {server} good.example", python3());
    check_process(
        &env,
        &hello,
        pid,
        &real_path(python3()),
        Some(&command_line),
    );
}

#[test]
fn a_process_that_exits_right_after_connecting_is_attributed() {
    let env = Env::start().expect("test environment with the sensor");
    let server = env.server_ip(false).to_string();
    let (pid, out) = run_client(&env, python3(), &["-c", CONNECT_AND_EXIT_PY, &server]);
    assert!(out.status.success(), "python3 failed: {out:?}");
    let port = port_of("python3", &out);
    // The process is gone (reaped) before the event is even looked for.
    let success = wait(&env, "ConnectionSuccess of the exited process", |e| {
        ev::is(e, "ConnectionSuccess") && ev::local_port(e, port)
    });
    let exe = real_path(python3());
    // What the kernel hook took at connect time must be there whatever the timing.
    assert_eq!(
        success["InitiatingProcessId"].as_u64(),
        Some(u64::from(pid)),
        "{success}\n{}",
        env.diagnostics()
    );
    let name = success["InitiatingProcessFileName"].as_str().unwrap_or("");
    assert!(
        name == file_name(&exe) || name == "python3",
        "InitiatingProcessFileName {name:?}: {success}"
    );
    assert_eq!(
        success["InitiatingProcessAccountName"].as_str(),
        Some("root"),
        "{success}"
    );
    // The attribution thread reads /proc when the connect happens: normally it has
    // the executable too. Say so either way, it is the measure of the design.
    eprintln!(
        "exited process: folder path {:?}, command line {:?}",
        success["InitiatingProcessFolderPath"], success["InitiatingProcessCommandLine"]
    );
}

#[test]
fn a_process_scoped_block_stops_curl_but_not_python3() {
    let block_curl = with(
        with(
            indicator("curl-only", "DomainName", "bad.example", "Block"),
            "process",
            "curl",
        ),
        "title",
        "no bad.example for curl",
    );
    let env = Env::start_enforcing("block", &[block_curl], &[]).expect("sensor enforcing");

    let args = curl_args(&env, "bad.example");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (curl_pid, out) = run_client(&env, CURL, &argv);
    let curl_port = port_of("curl", &out);
    assert!(
        !out.status.success(),
        "curl to bad.example was not stopped: {out:?}\n{}",
        env.diagnostics()
    );
    let blocked = wait(&env, "the Blocked event of curl's flow", |e| {
        ev::is(e, "ExploitGuardNetworkProtectionBlocked") && ev::local_port(e, curl_port)
    });
    assert_eq!(blocked["AdditionalFields"]["IndicatorId"], "curl-only");
    check_process(&env, &blocked, curl_pid, &real_path(CURL), None);

    let server = env.server_ip(false).to_string();
    let (py_pid, out) = run_client(&env, python3(), &["-c", TLS_GET_PY, &server, "bad.example"]);
    let py_port = port_of("python3", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok HTTP/1.1 200"),
        "python3 to bad.example was stopped: {out:?}\n{}",
        env.diagnostics()
    );
    let hello = wait(&env, "python3's SslConnectionInspected", |e| {
        ev::is(e, "SslConnectionInspected") && ev::local_port(e, py_port)
    });
    check_process(&env, &hello, py_pid, &real_path(python3()), None);
    // The inspected event comes with any verdict event of the same flow.
    let events = env.events().events().expect("events");
    assert!(
        !events.iter().any(|e| {
            ev::is(e, "ExploitGuardNetworkProtectionBlocked") && ev::local_port(e, py_port)
        }),
        "python3's flow was blocked\n{}",
        env.events().report(&events)
    );
}

/// `nprot stats --json` of the test's sensor.
fn stats(env: &Env) -> Value {
    let out = std::process::Command::new(sensor_binary().expect("sensor binary"))
        .args(["stats", "--json", "--socket"])
        .arg(control_socket_for(env.events().path()))
        .output()
        .expect("run nprot stats");
    assert!(out.status.success(), "nprot stats: {out:?}");
    serde_json::from_slice(&out.stdout).expect("stats JSON")
}

#[test]
fn thousands_of_short_lived_processes_stay_within_the_cache_bound() {
    const BOUND: u64 = 256;
    const PROCESSES: u64 = 3000;
    let mut env = Env::start_without_sensor().expect("test environment");
    let config = env.dir().join("nprot.toml");
    std::fs::write(&config, format!("process_cache = {BOUND}\n")).expect("config");
    env.start_sensor(&["--config", &config.to_string_lossy()])
        .expect("sensor");

    let before = stats(&env)["attribution"]["connects"].as_u64().unwrap_or(0);
    // Each iteration is a fresh process (a subshell: new pid) that connects and exits.
    let server: IpAddr = env.server_ip(false);
    let script =
        format!("for i in $(seq {PROCESSES}); do (exec 3<>/dev/tcp/{server}/80) || exit 1; done");
    let started = Instant::now();
    let out = env
        .topo
        .client_cmd("bash")
        .args(["-c", &script])
        .output()
        .expect("bash loop");
    assert!(out.status.success(), "connect loop failed: {out:?}");
    let took = started.elapsed();

    // Wait until the attribution thread has read every connect, watching the bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last;
    loop {
        last = stats(&env);
        let a = &last["attribution"];
        let cache = a["process_cache"].as_u64().unwrap_or(u64::MAX);
        assert!(cache <= BOUND, "process cache above its bound: {a}");
        if a["connects"].as_u64().unwrap_or(0) >= before + PROCESSES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connects not all attributed: {a}"
        );
        // Poll interval of a wait on the connects counter (deadline above).
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = &last["attribution"];
    eprintln!("{PROCESSES} processes in {took:?}; attribution stats: {a}");
    assert_eq!(a["process_cache_max"].as_u64(), Some(BOUND), "{a}");
    assert!(
        a["process_cache_evicted"].as_u64().unwrap_or(0) >= PROCESSES - BOUND,
        "{a}"
    );
    assert!(
        a["cookie_table"].as_u64() <= a["cookie_table_max"].as_u64(),
        "{a}"
    );
    assert_eq!(a["kernel_ring_drops"].as_u64(), Some(0), "{a}");
}

#[test]
fn without_the_hooks_the_sensor_runs_and_says_so() {
    let env = Env::start_with(&["--process-cgroup", "/nonexistent/nprot-cgroup"])
        .expect("sensor without attribution");
    let stderr = env
        .sensor
        .as_ref()
        .map(|s| s.stderr().text())
        .unwrap_or_default();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("process attribution off"))
        .collect();
    assert_eq!(lines.len(), 1, "one line saying why:\n{stderr}");
    assert!(
        lines[0].contains("/nonexistent/nprot-cgroup"),
        "{}",
        lines[0]
    );

    let run = env
        .curl_https("good.example", 443, false, "/")
        .expect("curl works without attribution");
    let hello = wait(&env, "SslConnectionInspected", |e| {
        ev::is(e, "SslConnectionInspected") && ev::local_port(e, run.local_port)
    });
    assert!(
        hello.get("InitiatingProcessId").is_none()
            && hello.get("InitiatingProcessFileName").is_none(),
        "no attribution was expected: {hello}"
    );
    assert!(stats(&env).get("attribution").is_none());
}
