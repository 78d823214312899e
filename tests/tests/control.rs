//! End-to-end tests of the control plane: `nprot mode`, `nprot indicator …`, `nprot
//! status` against a running sensor, persistence across a restart, and the refusal of an
//! unprivileged account.
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::{
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::net::UnixDatagram,
    },
    path::Path,
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use nprot_tests::{
    ClientServer, CurlRun, Env, assert_reset,
    indicators::{indicator, write_file},
    process::signal,
    sensor::{READY_TIMEOUT, control_socket_for, sensor_binary},
};

fn nprot(socket: &Path, args: &[&str]) -> Output {
    let bin = sensor_binary().expect("sensor binary");
    std::process::Command::new(bin)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run nprot")
}

#[track_caller]
fn nprot_ok(socket: &Path, args: &[&str]) -> String {
    let out = nprot(socket, args);
    assert!(
        out.status.success(),
        "nprot {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn socket(env: &Env) -> std::path::PathBuf {
    control_socket_for(env.events().path())
}

fn curl_bad(env: &Env) -> CurlRun {
    env.curl_https_any("bad.example", 443, false, "/")
        .expect("curl runs")
}

#[track_caller]
fn assert_passes(env: &Env, run: &CurlRun) {
    assert_eq!(run.http_code, 200, "{run:?}\n{}", env.diagnostics());
}

#[test]
fn mode_switch_changes_the_next_flow() {
    let env = Env::start_enforcing(
        "audit",
        &[indicator("b", "DomainName", "bad.example", "Block")],
        &[],
    )
    .expect("env");
    let sock = socket(&env);
    assert_passes(&env, &curl_bad(&env));
    nprot_ok(&sock, &["mode", "block"]);
    let status = nprot_ok(&sock, &["status", "--json"]);
    assert!(status.contains("\"mode\":\"Block\""), "{status}");
    assert_reset("https://bad.example", &curl_bad(&env), || env.diagnostics());
    nprot_ok(&sock, &["mode", "audit"]);
    assert_passes(&env, &curl_bad(&env));
}

#[test]
fn indicator_added_by_cli_blocks_the_next_flow_and_persists() {
    // A file indicator stays in force through every run-time change.
    let file = indicator("file-1", "Url", "http://good.example/bad/", "Block");
    let mut env = Env::start_enforcing("block", &[file], &[]).expect("env");
    let sock = socket(&env);
    let file_blocks = |env: &Env| {
        let run = env
            .curl_http_any("good.example", 80, false, "/bad/", &[])
            .expect("curl runs");
        assert_reset("http://good.example/bad/", &run, || env.diagnostics());
    };
    file_blocks(&env);
    assert_passes(&env, &curl_bad(&env));
    let added = nprot_ok(
        &sock,
        &[
            "indicator",
            "add",
            "--type",
            "DomainName",
            "--value",
            "bad.example",
            "--action",
            "Block",
            "--id",
            "cli-1",
            "--title",
            "added by CLI",
        ],
    );
    assert!(added.contains("added 1"), "{added}");
    assert_reset("https://bad.example", &curl_bad(&env), || env.diagnostics());
    file_blocks(&env);
    let list = nprot_ok(&sock, &["indicator", "list"]);
    assert!(
        list.contains("cli-1") && list.contains("bad.example"),
        "{list}"
    );

    // The mode from the command line is not saved; the one set through the CLI is.
    nprot_ok(&sock, &["mode", "block"]);

    // Restart without --mode: the saved mode and run-time indicators come back.
    let status = env
        .sensor
        .take()
        .expect("sensor")
        .stop(Duration::from_secs(5))
        .expect("stop");
    assert!(status.success());
    let file = env.dir().join("indicators.json");
    let file = file.to_string_lossy().into_owned();
    env.start_sensor(&["--indicators", &file]).expect("restart");
    let status = nprot_ok(&sock, &["status", "--json"]);
    assert!(status.contains("\"mode\":\"Block\""), "{status}");
    assert_reset("https://bad.example", &curl_bad(&env), || env.diagnostics());

    // Removal takes effect at once, and an unknown id is a clear error.
    nprot_ok(&sock, &["indicator", "remove", "cli-1"]);
    assert_passes(&env, &curl_bad(&env));
    file_blocks(&env);
    let out = nprot(&sock, &["indicator", "remove", "cli-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run-time indicator with id cli-1"));
}

#[test]
fn invalid_indicator_is_refused_and_changes_nothing() {
    let env = Env::start_enforcing("block", &[], &[]).expect("env");
    let sock = socket(&env);
    let out = nprot(
        &sock,
        &[
            "indicator",
            "add",
            "--type",
            "DomainName",
            "--value",
            "bad.example",
            "--action",
            "Blok",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nprot: error:") && err.contains("Blok"),
        "{err}"
    );
    assert_passes(&env, &curl_bad(&env));
}

#[test]
fn unprivileged_account_is_refused() {
    let env = Env::start_enforcing("audit", &[], &[]).expect("env");
    let sock = socket(&env);
    let bin = sensor_binary().expect("sensor binary");
    // The test's directory must be reachable for the refusal to come from the socket.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["mode", "block", "--socket"])
        .arg(&sock)
        .output()
        .expect("setpriv");
    assert!(
        !out.status.success(),
        "an unprivileged mode change succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied") && err.contains("root"),
        "refusal should say why: {err}"
    );
    let status = nprot_ok(&sock, &["status", "--json"]);
    assert!(status.contains("\"mode\":\"Audit\""), "{status}");
}

#[test]
fn sighup_reloads_files_and_a_bad_file_keeps_the_running_policy() {
    let env = Env::start_enforcing(
        "block",
        &[indicator("b", "DomainName", "bad.example", "Block")],
        &[],
    )
    .expect("env");
    let file = env.dir().join("indicators.json");
    let sensor = env.sensor.as_ref().expect("sensor");
    let pid = sensor.pid().expect("pid") as i32;
    assert_reset("https://bad.example", &curl_bad(&env), || env.diagnostics());

    std::fs::write(&file, "{\"indicators\": [ {\"type\": \"DomainName\"").expect("write");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    assert!(
        sensor
            .stderr()
            .wait_for("reload refused", Duration::from_secs(5)),
        "{}",
        env.diagnostics()
    );
    assert_reset("https://bad.example", &curl_bad(&env), || env.diagnostics());

    std::fs::write(&file, "{\"indicators\": []}").expect("write");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    assert!(
        sensor
            .stderr()
            .wait_for("reloaded:", Duration::from_secs(5)),
        "{}",
        env.diagnostics()
    );
    assert_passes(&env, &curl_bad(&env));
}

/// A Defender CSV with a bad row is refused naming the line, and nothing of it applies;
/// the corrected file blocks.
#[test]
fn defender_csv_import_is_all_or_nothing() {
    let env = Env::start_enforcing("block", &[], &[]).expect("env");
    let sock = socket(&env);
    let header = "IndicatorType,IndicatorValue,ExpirationTime,Action,Severity,Title,Description,\
                  RecommendedActions,RbacGroups,Category,MitreTechniques,GenerateAlert";
    let good_row = "DomainName,bad.example,2099-01-01T00:00:00Z,Block,High,\"Bad, really\",\
                    Seen in phishing,Block it,,Phishing,T1566,TRUE";
    let bad = env.dir().join("bad.csv");
    std::fs::write(
        &bad,
        format!("{header}\r\n{good_row}\r\nDomainName,x.example,,Blok,,,,,,,,\r\n"),
    )
    .expect("write");
    let out = nprot(&sock, &["indicator", "import", &bad.to_string_lossy()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("Blok"), "{err}");
    assert_passes(&env, &curl_bad(&env));

    let good = env.dir().join("good.csv");
    std::fs::write(&good, format!("{header}\r\n{good_row}\r\n")).expect("write");
    let added = nprot_ok(&sock, &["indicator", "import", &good.to_string_lossy()]);
    assert!(added.contains("added 1"), "{added}");
    assert_reset("https://bad.example", &curl_bad(&env), || env.diagnostics());
}

/// Issue 11: the same value in two device groups (a Defender CSV without ids) is two
/// indicators with two ids over the socket too, and the export loads as a file.
#[test]
fn csv_import_keeps_one_value_in_two_groups_apart() {
    let groups = ["--device-group", "GroupA", "--device-group", "GroupB"];
    let env = Env::start_enforcing("block", &[], &groups).expect("env");
    let sock = socket(&env);
    let csv = env.dir().join("groups.csv");
    std::fs::write(
        &csv,
        "IndicatorType,IndicatorValue,Action,RbacGroups\n\
         DomainName,bad.example,Block,GroupA\n\
         DomainName,bad.example,Block,GroupB\n",
    )
    .expect("write");
    let added = nprot_ok(&sock, &["indicator", "import", &csv.to_string_lossy()]);
    assert!(added.starts_with("added 2, replaced 0"), "{added}");
    let export = nprot_ok(&sock, &["indicator", "export"]);
    let loaded = nprot::policy::load_json(&export)
        .unwrap_or_else(|e| panic!("the export does not load: {e}\n{export}"));
    let rows: Vec<_> = loaded
        .indicators
        .iter()
        .map(|r| {
            (
                r.id().to_owned(),
                r.value().to_owned(),
                r.device_groups().to_vec(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_ne!(rows[0].0, rows[1].0, "{rows:?}");
    assert_eq!(
        (rows[0].2.as_slice(), rows[1].2.as_slice()),
        (&["GroupA".to_owned()][..], &["GroupB".to_owned()][..])
    );
}

/// Issue 11: export → import → export is the identity on a running sensor: rows from an
/// indicator file and rows added at run time come back unchanged, nothing is doubled, and
/// a different row under a file's id is refused by id.
#[test]
fn export_import_export_is_the_identity() {
    let file_row = indicator("f1", "DomainName", "bad.example", "Block");
    let env = Env::start_enforcing("block", &[file_row], &[]).expect("env");
    let sock = socket(&env);
    nprot_ok(
        &sock,
        &[
            "indicator",
            "add",
            "--type",
            "DomainName",
            "--value",
            "other.example",
            "--action",
            "Audit",
        ],
    );
    let first = nprot_ok(&sock, &["indicator", "export"]);
    let path = env.dir().join("export.json");
    std::fs::write(&path, &first).expect("write");
    let again = nprot_ok(&sock, &["indicator", "import", &path.to_string_lossy()]);
    assert!(
        again.starts_with("added 0, replaced 0, unchanged 2"),
        "{again}"
    );
    let second = nprot_ok(&sock, &["indicator", "export"]);
    let rows = |text: &str| {
        let v: serde_json::Value = serde_json::from_str(text).expect("export is JSON");
        v["indicators"].as_array().cloned().unwrap_or_default()
    };
    assert_eq!(rows(&first).len(), 2, "{first}");
    assert_eq!(rows(&first), rows(&second), "{first}\n{second}");

    let clash = env.dir().join("clash.json");
    std::fs::write(
        &clash,
        r#"{"indicators": [{"id": "f1", "type": "DomainName", "value": "bad.example", "action": "Allowed"}]}"#,
    )
    .expect("write");
    let out = nprot(&sock, &["indicator", "import", &clash.to_string_lossy()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("f1") && err.contains("indicator file"),
        "{err}"
    );
    assert_reset("https://bad.example", &curl_bad(&env), || env.diagnostics());
}

/// A sensor configured by file alone: mode and a plain-list indicator file from the TOML.
#[test]
fn config_file_sets_mode_and_indicator_lists() {
    let mut env = Env::start_without_sensor().expect("env");
    let list = env.dir().join("blocked.txt");
    std::fs::write(&list, "# blocked names\n0.0.0.0 bad.example\n").expect("write");
    let config = env.dir().join("nprot.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"block\"\nindicators = [\"{}\"]\nrt_priority = 0\n",
            list.display()
        ),
    )
    .expect("write");
    env.start_sensor(&["--config", &config.to_string_lossy()])
        .expect("sensor from config");
    assert_reset("https://bad.example", &curl_bad(&env), || env.diagnostics());
    let status = nprot_ok(&socket(&env), &["status", "--json"]);
    assert!(status.contains("\"mode\":\"Block\""), "{status}");
}

/// Warn resets in block mode until the operator bypasses it; the bypass is logged and a
/// Block indicator cannot be bypassed.
#[test]
fn bypass_lets_a_warned_target_through_and_is_logged() {
    let env = Env::start_enforcing(
        "block",
        &[
            indicator("w", "DomainName", "warn.example", "Warn"),
            indicator("b", "DomainName", "bad.example", "Block"),
        ],
        &[],
    )
    .expect("env");
    let sock = socket(&env);
    let warn = || {
        env.curl_https_any("warn.example", 443, false, "/")
            .expect("curl")
    };
    assert_reset("https://warn.example", &warn(), || env.diagnostics());
    let out = nprot_ok(&sock, &["bypass", "warn.example", "--for", "1h"]);
    assert!(out.contains("bypassing Warn indicator w"), "{out}");
    assert_passes(&env, &warn());
    env.events()
        .wait_for_described(
            "a bypass event",
            |e| {
                nprot_tests::ev::is(e, "NetworkProtectionUserBypassEvent")
                    && e["AdditionalFields"]["IndicatorId"] == "w"
                    && e["RemoteUrl"] == "warn.example"
                    && e.get("LocalIP").is_none()
            },
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));

    let refused = nprot(&sock, &["bypass", "bad.example"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only Warn indicators can be bypassed")
    );
    assert_reset("https://bad.example", &curl_bad(&env), || env.diagnostics());
}

/// Reads notifications from `sock` until one contains `want`, for up to `timeout`;
/// returns it and every message seen before it (in order).
fn await_notification(
    sock: &UnixDatagram,
    want: &str,
    timeout: Duration,
) -> Result<(String, Vec<String>), Vec<String>> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(seen);
        }
        sock.set_read_timeout(Some(left)).expect("read timeout");
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == want) {
                    return Ok((msg, seen));
                }
                seen.push(msg);
            }
            Err(_) => return Err(seen),
        }
    }
}

/// A test world without the sensor, and a datagram socket bound in its directory as
/// systemd binds `$NOTIFY_SOCKET`, with its path.
fn env_with_notify_socket() -> (Env, UnixDatagram, String) {
    let env = Env::start_without_sensor().expect("env");
    let path = env.dir().join("notify.sock");
    let notify = UnixDatagram::bind(&path).expect("bind the notification socket");
    let path = path.to_string_lossy().into_owned();
    (env, notify, path)
}

/// systemd's `Type=notify` protocol, against a socket the test binds as systemd would:
/// READY=1 comes once the programs are attached and the control socket answers;
/// WATCHDOG=1 keeps coming at half WATCHDOG_USEC; a SIGHUP is framed by RELOADING=1 and
/// READY=1; SIGTERM sends STOPPING=1.
#[test]
fn sd_notify_ready_after_attach_then_watchdog_reload_and_stopping() {
    let (mut env, notify, path) = env_with_notify_socket();
    // 400 ms: the sensor pings every 200 ms.
    let envs = [
        ("NOTIFY_SOCKET", path.as_str()),
        ("WATCHDOG_USEC", "400000"),
    ];
    let pid = env
        .spawn_sensor_with_env(&[], &envs)
        .expect("spawn sensor")
        .pid()
        .expect("pid");

    let (ready, before) = await_notification(&notify, "READY=1", READY_TIMEOUT)
        .unwrap_or_else(|seen| panic!("no READY=1 (got {seen:?})\n{}", env.diagnostics()));
    // Checked the moment READY arrives: the filter is on the interface already.
    let attached = env.client_attachments().expect("attachments");
    assert!(
        attached.any(),
        "READY=1 before the programs were attached:\n{attached}"
    );
    assert!(before.is_empty(), "sent before READY=1: {before:?}");
    assert!(ready.contains("STATUS=guarding "), "{ready:?}");
    let status = nprot_ok(&socket(&env), &["status", "--json"]);
    assert!(status.contains("\"pid\""), "{status}");

    let started = Instant::now();
    for _ in 0..3 {
        await_notification(&notify, "WATCHDOG=1", Duration::from_secs(2))
            .unwrap_or_else(|seen| panic!("no WATCHDOG=1 (got {seen:?})"));
    }
    // Three pings at 200 ms take about 600 ms; well under the 400 ms × 3 systemd allows.
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );

    signal(pid, libc::SIGHUP).expect("SIGHUP");
    let (reloading, _) = await_notification(&notify, "RELOADING=1", Duration::from_secs(5))
        .unwrap_or_else(|seen| panic!("no RELOADING=1 (got {seen:?})"));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    await_notification(&notify, "READY=1", Duration::from_secs(5))
        .unwrap_or_else(|seen| panic!("no READY=1 after the reload (got {seen:?})"));

    let exit = env
        .sensor_mut()
        .expect("sensor")
        .stop(Duration::from_secs(5))
        .expect("clean stop");
    assert!(exit.success(), "{exit}");
    await_notification(&notify, "STOPPING=1", Duration::from_secs(1))
        .unwrap_or_else(|seen| panic!("no STOPPING=1 (got {seen:?})"));
}

/// Without WATCHDOG_USEC the sensor sends READY=1 and no watchdog pings.
#[test]
fn sd_notify_without_watchdog_sends_no_pings() {
    let (mut env, notify, path) = env_with_notify_socket();
    env.spawn_sensor_with_env(&[], &[("NOTIFY_SOCKET", path.as_str())])
        .expect("spawn sensor");
    await_notification(&notify, "READY=1", READY_TIMEOUT)
        .unwrap_or_else(|seen| panic!("no READY=1 (got {seen:?})\n{}", env.diagnostics()));
    // What would be three pings at the interval of the test above.
    match await_notification(&notify, "WATCHDOG=1", Duration::from_millis(700)) {
        Ok((msg, _)) => panic!("watchdog ping without WATCHDOG_USEC: {msg:?}"),
        Err(seen) => assert!(seen.is_empty(), "{seen:?}"),
    }
}

/// A pipe whose read end is already closed, as `nprot status | head -0` leaves stdout.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// Issue 11: every command that prints, with a closed stdout, ends quietly with exit 0
/// (docs/decisions.md) instead of panicking with 101 "failed printing to stdout".
#[test]
fn printing_commands_end_quietly_on_a_closed_stdout() {
    let env = Env::start_enforcing(
        "audit",
        &[indicator("w", "DomainName", "warn.example", "Warn")],
        &[],
    )
    .expect("env");
    let sock = socket(&env);
    let import = write_file(
        env.dir(),
        "import.json",
        &[indicator(
            "pipe-2",
            "DomainName",
            "imported.example",
            "Block",
        )],
    )
    .expect("write the import file");
    let import = import.to_string_lossy().into_owned();
    let add = [
        "indicator",
        "add",
        "--type",
        "DomainName",
        "--value",
        "added.example",
        "--action",
        "Block",
        "--id",
        "pipe-1",
    ];
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["status", "--json"],
        vec!["stats"],
        vec!["stats", "--json"],
        vec!["mode", "audit"],
        vec!["mode", "audit", "--json"],
        add.to_vec(),
        [&add[..], &["--json"]].concat(),
        vec!["indicator", "list"],
        vec!["indicator", "list", "--json"],
        vec!["indicator", "export"],
        vec!["indicator", "import", &import],
        vec!["bypass", "warn.example", "--for", "1h"],
        vec!["indicator", "remove", "pipe-2"],
    ];
    for args in &commands {
        let bin = sensor_binary().expect("sensor binary");
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("--socket")
            .arg(&sock)
            .stdout(closed_pipe())
            .output()
            .expect("run nprot");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "nprot {args:?}: {err}");
        assert!(!err.contains("panicked"), "nprot {args:?}: {err}");
        assert!(
            out.status.success() && err.is_empty(),
            "nprot {args:?} should end quietly with 0: {}: {err}",
            out.status
        );
    }
    // `nprot replay` prints events, not answers: a capture with one HTTP flow.
    let capture = env.dir().join("one-flow.pcap");
    std::fs::write(&capture, one_http_flow_pcap()).expect("write the capture");
    let out = std::process::Command::new(sensor_binary().expect("sensor binary"))
        .arg("replay")
        .arg(&capture)
        .stdout(closed_pipe())
        .output()
        .expect("run nprot replay");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("panicked") && !err.contains("error"),
        "nprot replay should end quietly with 0: {}: {err}",
        out.status
    );
    assert!(err.contains("1 flows"), "{err}");

    // The commands did their work; only their output went nowhere.
    let list = nprot_ok(&sock, &["indicator", "list"]);
    assert!(
        list.contains("pipe-1") && !list.contains("pipe-2") && list.contains("bypass:"),
        "{list}"
    );
}

/// A classic pcap (raw IPv4) of one HTTP flow: handshake, request, response.
fn one_http_flow_pcap() -> Vec<u8> {
    fn packet(from_client: bool, seq: u32, ack: u32, flags: u8, data: &[u8]) -> Vec<u8> {
        let (c, s) = ([198, 18, 9, 1], [198, 18, 9, 2]);
        let (src, dst, sport, dport) = if from_client {
            (c, s, 41001u16, 80u16)
        } else {
            (s, c, 80, 41001)
        };
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&(40 + data.len() as u16).to_be_bytes());
        p.extend_from_slice(&[0, 1, 0, 0, 64, 6, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ack.to_be_bytes());
        p.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend_from_slice(data);
        p
    }
    let request = b"GET /x HTTP/1.1\r\nHost: good.example\r\n\r\n";
    let packets = [
        packet(true, 100, 0, 0x02, b""),
        packet(false, 500, 101, 0x12, b""),
        packet(true, 101, 501, 0x10, b""),
        packet(true, 101, 501, 0x18, request),
        packet(
            false,
            501,
            101 + request.len() as u32,
            0x18,
            b"HTTP/1.1 200 OK\r\n\r\n",
        ),
    ];
    // Header: magic, version 2.4, zone, sigfigs, snaplen, link type 101 (raw IP).
    let mut file = Vec::new();
    for word in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65_535, 101] {
        file.extend_from_slice(&word.to_le_bytes());
    }
    for (i, p) in packets.iter().enumerate() {
        let len = p.len() as u32;
        for word in [1_795_000_000, i as u32, len, len] {
            file.extend_from_slice(&word.to_le_bytes());
        }
        file.extend_from_slice(p);
    }
    file
}
