//! End-to-end tests of the control plane: `nprot mode`, `nprot indicator …`, `nprot
//! status` against a running sensor, persistence across a restart, and the refusal of an
//! unprivileged account.

use std::{path::Path, process::Output, time::Duration};

use nprot_tests::{
    CurlRun, Env,
    indicators::indicator,
    sensor::{control_socket_for, sensor_binary},
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

#[track_caller]
fn assert_reset(env: &Env, run: &CurlRun) {
    assert!(
        run.was_reset() && run.body.is_empty(),
        "expected a reset with no body: {run:?}\n{}",
        env.diagnostics()
    );
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
    assert_reset(&env, &curl_bad(&env));
    nprot_ok(&sock, &["mode", "audit"]);
    assert_passes(&env, &curl_bad(&env));
}

#[test]
fn indicator_added_by_cli_blocks_the_next_flow_and_persists() {
    let mut env = Env::start_enforcing("block", &[], &[]).expect("env");
    let sock = socket(&env);
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
    assert_reset(&env, &curl_bad(&env));
    let list = nprot_ok(&sock, &["indicator", "list"]);
    assert!(
        list.contains("cli-1") && list.contains("bad.example"),
        "{list}"
    );

    // The mode from the command line is not saved; the one set through the CLI is.
    nprot_ok(&sock, &["mode", "block"]);

    // Restart with neither --mode nor indicators: the saved state comes back.
    let status = env
        .sensor
        .take()
        .expect("sensor")
        .stop(Duration::from_secs(5))
        .expect("stop");
    assert!(status.success());
    env.start_sensor(&[]).expect("restart");
    let status = nprot_ok(&sock, &["status", "--json"]);
    assert!(status.contains("\"mode\":\"Block\""), "{status}");
    assert_reset(&env, &curl_bad(&env));

    // Removal takes effect at once, and an unknown id is a clear error.
    nprot_ok(&sock, &["indicator", "remove", "cli-1"]);
    assert_passes(&env, &curl_bad(&env));
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
    assert_reset(&env, &curl_bad(&env));

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
    assert_reset(&env, &curl_bad(&env));

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
    assert_reset(&env, &curl_bad(&env));
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
    assert_reset(&env, &curl_bad(&env));
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
    assert_reset(&env, &warn());
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
    assert_reset(&env, &curl_bad(&env));
}
