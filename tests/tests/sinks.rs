//! Event sinks end to end: the TCP collector sink against a real rsyslog that is stopped
//! and started again mid-stream, the daemon's configured sinks with real traffic, the
//! event file on a disk that fills up, and the systemd unit under `systemd-analyze verify`.
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nprot::events::{
    ActionType, Clock, Direction, Event, EventFactory, FlowEnds,
    collector::{CollectorConfig, CollectorCounters, CollectorHandle, CollectorSink, Transport},
    sink::{Fanout, Sink},
};
use nprot_tests::{
    Env, ev,
    rsyslog::{Rsyslog, SinkEnv, systemd_analyze_verify},
    sensor::{control_socket_for, sensor_binary},
};

const PORT: u16 = 10514;
/// Events per batch, and the pause between batches: a steady stream.
const BATCH: u64 = 5;
const PAUSE: Duration = Duration::from_millis(5);

struct Stream {
    factory: EventFactory,
    flow: FlowEnds,
    fanout: Fanout,
    handle: CollectorHandle,
    published: u64,
}

impl Stream {
    /// A collector sink to rsyslog, started inside the namespace (its sender thread
    /// stays there), behind a `Fanout` as in the daemon.
    fn start(env: &SinkEnv, queue: usize) -> Stream {
        let mut config = CollectorConfig::new(Transport::Tcp, &format!("127.0.0.1:{PORT}"));
        config.queue = queue;
        let sink = env
            .in_ns(move || CollectorSink::start(config))
            .expect("namespace")
            .expect("collector sink");
        let handle = sink.handle();
        Stream {
            factory: EventFactory::new("sensor.test", "sink-test", Clock::now()),
            flow: FlowEnds {
                client: ("198.18.0.1".parse().unwrap(), 40000),
                server: ("198.18.0.2".parse().unwrap(), 443),
                direction: Direction::Outbound,
                transport: nprot::events::Transport::Tcp,
            },
            fanout: Fanout::new(vec![Box::new(sink) as Box<dyn Sink>]),
            handle,
            published: 0,
        }
    }

    /// Publishes events up to `ReportId` `last`, in small batches, `PAUSE` apart.
    fn publish_until(&mut self, last: u64) {
        while self.published < last {
            let n = BATCH.min(last - self.published);
            let mut events: Vec<Event> = (0..n)
                .map(|_| {
                    self.factory
                        .connection(ActionType::ConnectionSuccess, 0, &self.flow)
                })
                .collect();
            self.published += n;
            self.fanout.publish(&mut events);
            // Not a synchronisation: the pause makes a steady stream, as from a sensor.
            std::thread::sleep(PAUSE);
        }
    }
}

/// Report ids seen, how often each, and the lines that are not whole events.
fn tally(lines: &[String]) -> (BTreeMap<u64, usize>, Vec<String>) {
    let mut seen = BTreeMap::new();
    let mut fragments = Vec::new();
    for line in lines {
        match serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["ReportId"].as_u64())
        {
            Some(id) => *seen.entry(id).or_insert(0) += 1,
            None => fragments.push(line.clone()),
        }
    }
    (seen, fragments)
}

fn describe(rsyslog: &Rsyslog, handle: &CollectorHandle) -> String {
    format!("counters {handle:?}\nrsyslogd:\n{}", rsyslog.stderr())
}

/// rsyslog stopped with SIGTERM in the middle of a steady stream, events published while
/// it is down, rsyslog started again: every event arrives exactly once, whole.
#[test]
fn tcp_collector_delivers_exactly_once_across_an_rsyslog_restart() {
    let env = SinkEnv::start().expect("sink test environment");
    let mut rsyslog = env.start_rsyslog(PORT).expect("rsyslog");
    let mut stream = Stream::start(&env, 10_000);

    stream.publish_until(300);
    // Mid-stream: the sender has a chunk in flight or awaiting confirmation.
    let status = rsyslog.stop().expect("stop rsyslog");
    eprintln!(
        "rsyslogd stopped ({status}) after {} events",
        stream.published
    );
    stream.publish_until(500);
    assert!(
        !stream.handle.counters().connected,
        "{}",
        describe(&rsyslog, &stream.handle)
    );
    rsyslog.restart().expect("restart rsyslog");
    stream.publish_until(800);

    let total = stream.published;
    // The sink settles first (a chunk counts as sent only once its confirmation time is
    // over, after rsyslog may already have written it), then rsyslog's file is read.
    wait_until("every event settled", &stream.handle, |c| {
        c.sent + c.dropped == total && c.queued == 0
    });
    let counters = stream.handle.counters();
    let lines = rsyslog.wait_received(Duration::from_secs(30), |lines| {
        tally(lines).0.len() as u64 >= total
    });
    let (seen, fragments) = tally(&lines);
    let missing: Vec<u64> = (1..=total).filter(|id| !seen.contains_key(id)).collect();
    let twice: Vec<(&u64, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty() && fragments.is_empty(),
        "missing {missing:?}\nduplicated {twice:?}\nfragments {fragments:?}\n{}",
        describe(&rsyslog, &stream.handle)
    );
    assert_eq!(seen.len() as u64, total);
    assert_eq!(counters.dropped, 0, "{counters:?}");
    assert_eq!(counters.sent, total, "{counters:?}");
    assert!(counters.reconnects >= 1, "{counters:?}");
    assert_eq!(stream.fanout.dropped(), 0);
    eprintln!("delivered {total} events exactly once; {counters:?}");
}

/// With a small queue and rsyslog down for longer than it holds, the oldest queued events
/// give way to newer ones: every event either arrives exactly once or is counted as
/// dropped, and what arrives from the outage is its newest events.
///
/// The queue bounds what is held, the chunk being written and confirmed included, and the
/// sender writes one chunk per round trip + `confirm` (50 ms): a healthy collector takes
/// at most `QUEUE` events per ~50 ms. The stream here is about 1000 events/s, so the
/// queue must hold well over 50 of them for the phases with rsyslog up to lose nothing
/// (with `QUEUE` = 50 they lost a third: see docs/decisions.md, *Sinks*).
#[test]
fn tcp_collector_counts_what_exceeds_its_bound() {
    const QUEUE: u64 = 200;
    const BEFORE: u64 = 100;
    const OUTAGE: u64 = 1000;
    const AFTER: u64 = 100;
    let env = SinkEnv::start().expect("sink test environment");
    let mut rsyslog = env.start_rsyslog(PORT).expect("rsyslog");
    let mut stream = Stream::start(&env, QUEUE as usize);

    stream.publish_until(BEFORE);
    wait_until("the first events delivered", &stream.handle, |c| {
        c.sent + c.dropped == BEFORE
    });
    let before = stream.handle.counters();
    assert_eq!(
        (before.sent, before.dropped),
        (BEFORE, 0),
        "rsyslog up, the queue big enough for the stream: nothing may be dropped"
    );
    rsyslog.stop().expect("stop rsyslog");
    stream.publish_until(BEFORE + OUTAGE);
    let while_down = stream.handle.counters();
    assert_eq!(
        (while_down.dropped, while_down.queued, while_down.sent),
        (OUTAGE - QUEUE, QUEUE, BEFORE),
        "the queue keeps the newest {QUEUE} and counts the rest"
    );
    rsyslog.restart().expect("restart rsyslog");
    wait_until(
        "the queue delivered after the restart",
        &stream.handle,
        |c| c.connected && c.queued == 0,
    );
    stream.publish_until(BEFORE + OUTAGE + AFTER);

    let total = stream.published;
    wait_until("every event settled", &stream.handle, |c| {
        c.sent + c.dropped == total && c.queued == 0
    });
    let c = stream.handle.counters();
    let lines = rsyslog.wait_received(Duration::from_secs(30), |lines| {
        tally(lines).0.len() as u64 >= c.sent
    });
    let (seen, fragments) = tally(&lines);
    let twice: Vec<(&u64, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty() && fragments.is_empty(),
        "duplicated {twice:?}\nfragments {fragments:?}\n{}",
        describe(&rsyslog, &stream.handle)
    );
    assert_eq!(
        (c.sent, c.dropped),
        (total - (OUTAGE - QUEUE), OUTAGE - QUEUE)
    );
    assert_eq!(
        seen.len() as u64,
        c.sent,
        "{}",
        describe(&rsyslog, &stream.handle)
    );
    // Before the outage and after the restart everything arrived, and of the outage its
    // newest QUEUE events; none of the dropped ones.
    let expected: Vec<u64> = (1..=BEFORE)
        .chain(BEFORE + OUTAGE - QUEUE + 1..=total)
        .collect();
    let arrived: Vec<u64> = seen.keys().copied().collect();
    assert!(
        arrived == expected,
        "arrived {} instead of {}; {c:?}",
        ranges(&arrived),
        ranges(&expected)
    );
    assert_eq!(
        stream.fanout.dropped(),
        c.dropped,
        "nprot stats sees the drops"
    );
    eprintln!("{c:?}");
}

/// `1-100, 901-1200`: sorted ids as runs.
fn ranges(ids: &[u64]) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &id in ids {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == id => *end = id,
            _ => runs.push((id, id)),
        }
    }
    let parts: Vec<String> = runs.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    parts.join(", ")
}

/// Waits up to 20 s for `cond` on the collector's counters, showing them on a time-out.
fn wait_until(
    what: &str,
    handle: &CollectorHandle,
    mut cond: impl FnMut(&CollectorCounters) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = handle.counters();
        if cond(&c) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out: {what}; {c:?}");
        // Poll interval of a wait on the counters (deadline above).
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// `systemd-analyze verify` accepts the unit. `/usr/bin/nprot` is not installed here, so
/// a copy of the unit points at the built binary (verify checks that it is executable).
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(workspace().join("packaging/nprot.service"))
        .expect("packaging/nprot.service");
    for required in [
        "Type=notify",
        "WatchdogSec=30",
        "ExecStart=/usr/bin/nprot run --config /etc/nprot/nprot.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_RESOURCE CAP_SYS_NICE\n",
        "LimitMEMLOCK=infinity",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(required), "unit lacks {required:?}");
    }
    assert!(!unit.contains("CAP_SYS_ADMIN\n") && !unit.contains("RestrictRealtime=yes"));

    let binary = sensor_binary()
        .or_else(|_| std::env::current_exe())
        .expect("an executable for ExecStart");
    let dir = std::env::temp_dir().join(format!("nprot-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("nprot.service");
    let local = unit.replace(
        "ExecStart=/usr/bin/nprot ",
        &format!("ExecStart={} ", binary.display()),
    );
    std::fs::write(&copy, local).unwrap();
    let result = systemd_analyze_verify(&copy);
    let _ = std::fs::remove_dir_all(&dir);
    let text = result.expect("systemd-analyze verify");
    // Warnings (unknown keys, bad values) do not change the exit code: none may name us.
    assert!(!text.contains("nprot.service"), "{text}");
}

/// `nprot … --socket SOCK --json` against the test's sensor, parsed.
fn nprot_json(env: &Env, args: &[&str]) -> serde_json::Value {
    let bin = sensor_binary().expect("sensor binary");
    let out = Command::new(bin)
        .args(args)
        .arg("--socket")
        .arg(control_socket_for(env.events().path()))
        .output()
        .expect("run nprot");
    assert!(
        out.status.success(),
        "nprot {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("nprot --json prints JSON")
}

/// The sink named `name` in `nprot stats --json`.
fn sink_named<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["sinks"]
        .as_array()
        .and_then(|sinks| sinks.iter().find(|s| s["sink"] == name))
        .unwrap_or_else(|| panic!("no sink {name:?} in {stats}"))
}

/// The real daemon, configured by file with a TCP collector (rsyslog in the sensor's
/// namespace) and one nobody listens on: real curl traffic is logged to the event file and
/// to rsyslog, each event exactly once, the unreachable collector neither stops the sensor
/// nor loses what it holds, and `nprot stats` shows every sink's counters.
#[test]
fn daemon_sends_its_events_to_rsyslog_and_reports_sink_counters() {
    const DOWN_PORT: u16 = 10515;
    let mut env = Env::start_without_sensor().expect("env");
    let rsyslog = Rsyslog::start(&env.topo.client_ns, &env.dir().join("rsyslog"), PORT)
        .expect("rsyslog in the sensor's namespace");
    let config = env.dir().join("nprot.toml");
    std::fs::write(
        &config,
        format!(
            "[[events.collector]]\naddress = \"127.0.0.1:{PORT}\"\nprotocol = \"tcp\"\nbuffer_events = 1000\n\n\
             [[events.collector]]\naddress = \"127.0.0.1:{DOWN_PORT}\"\nbuffer_events = 1000\n"
        ),
    )
    .expect("write config");
    // The harness adds `--events <dir>/events.jsonl`: a file sink beside the collectors.
    env.start_sensor(&["--config", &config.to_string_lossy()])
        .expect("sensor with collectors, one of them unreachable");

    let https = env
        .curl_https("good.example", 443, false, "/good")
        .expect("curl https");
    let http = env
        .curl_http("good.example", 80, false, "/good", &[])
        .expect("curl http");
    for (what, port, action) in [
        ("TLS", https.local_port, "SslConnectionInspected"),
        ("HTTP", http.local_port, "HttpConnectionInspected"),
    ] {
        env.events()
            .wait_for_described(
                &format!("{what} event from port {port}"),
                |e| ev::is(e, action) && ev::local_port(e, port),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    // Every event of the file reaches rsyslog, once and whole.
    let in_file: Vec<u64> = env
        .events()
        .events()
        .expect("event file")
        .iter()
        .filter_map(|e| e["ReportId"].as_u64())
        .collect();
    assert!(in_file.len() >= 4, "{in_file:?}");
    let lines = rsyslog.wait_received(Duration::from_secs(10), |lines| {
        let seen = tally(lines).0;
        in_file.iter().all(|id| seen.contains_key(id))
    });
    let (seen, fragments) = tally(&lines);
    assert!(fragments.is_empty(), "{fragments:?}");
    let at_rsyslog: Vec<u64> = seen.keys().copied().collect();
    let mut expected = in_file.clone();
    expected.sort_unstable();
    assert_eq!(at_rsyslog, expected, "rsyslog:\n{}", rsyslog.stderr());
    assert!(seen.values().all(|&n| n == 1), "duplicates: {seen:?}");
    let sample = lines
        .iter()
        .find(|l| l.contains("\"SslConnectionInspected\""))
        .expect("the TLS event at rsyslog");
    let sample: serde_json::Value = serde_json::from_str(sample).expect("JSON");
    assert_eq!(sample["RemoteUrl"], "good.example");

    // The counters: a chunk counts as sent once its confirmation time is over.
    let n = in_file.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = nprot_json(&env, &["stats", "--json"]);
        let up = sink_named(&stats, &format!("tcp collector 127.0.0.1:{PORT}"));
        if up["stats"]["sent"].as_u64() >= Some(n) {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "collector never counted {n} sent: {stats}"
        );
        // Poll interval of a wait on the `sent` counter (deadline above).
        std::thread::sleep(Duration::from_millis(100));
    };
    let written = stats["events_written"].as_u64().expect("events_written");
    assert!(written >= n, "{stats}");
    assert_eq!(stats["events_dropped"], 0, "{stats}");
    let up = sink_named(&stats, &format!("tcp collector 127.0.0.1:{PORT}"));
    assert_eq!(up["dropped"], 0, "{up}");
    assert_eq!(up["stats"]["connected"], true, "{up}");
    assert_eq!(up["stats"]["reconnects"], 0, "{up}");
    let down = sink_named(&stats, &format!("tcp collector 127.0.0.1:{DOWN_PORT}"));
    assert_eq!(down["stats"]["connected"], false, "{down}");
    assert_eq!(down["stats"]["sent"], 0, "{down}");
    assert_eq!(
        down["dropped"], 0,
        "held, not dropped, within its bound: {down}"
    );
    assert!(down["stats"]["queued"].as_u64() >= Some(n), "{down}");
    let file = stats["sinks"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["sink"].as_str().is_some_and(|n| n.starts_with("file ")))
        })
        .unwrap_or_else(|| panic!("no file sink: {stats}"));
    assert_eq!(file["dropped"], 0, "{file}");
    assert!(
        !stats["sinks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["sink"] == "stdout"),
        "stdout is off when a file or collector is configured: {stats}"
    );

    // The table for people names each sink with its counters.
    let bin = sensor_binary().expect("sensor binary");
    let table = Command::new(bin)
        .args(["stats", "--socket"])
        .arg(control_socket_for(env.events().path()))
        .output()
        .expect("nprot stats");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!(
            "sink      tcp collector 127.0.0.1:{PORT}  dropped 0"
        )) && table.contains(&format!(
            "sink      tcp collector 127.0.0.1:{DOWN_PORT}  dropped 0  connected false"
        )),
        "{table}"
    );
}

/// A small tmpfs on a temp dir of its own, unmounted and removed on drop (also when the
/// test fails). The unmount is lazy: the sensor may still hold a file on it.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs> {
        let dir = std::env::temp_dir().join(format!("nprot-tmpfs-{}", std::process::id()));
        // Left over from a killed run of the same pid: ignore "not mounted".
        let _ = Command::new("umount").arg("-l").arg(&dir).output();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "nprot-test",
            ])
            .arg(&dir)
            .output()
            .context("cannot run mount")?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            bail!(
                "mount tmpfs on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `name` until the disk is full, then gives `room` bytes back (whole pages);
    /// returns its size.
    fn fill(&self, name: &str, room: u64) -> Result<u64> {
        let path = self.dir.join(name);
        let mut file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let chunk = vec![b'x'; 64 * 1024];
        let mut size = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => size += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
            }
        }
        size = size.saturating_sub(room);
        file.set_len(size)
            .with_context(|| format!("truncating {}", path.display()))?;
        Ok(size)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        match Command::new("umount").arg("-l").arg(&self.dir).output() {
            Ok(out) if out.status.success() => {
                if let Err(e) = std::fs::remove_dir(&self.dir) {
                    eprintln!(
                        "nprot-tests cleanup: cannot remove {}: {e}",
                        self.dir.display()
                    );
                }
            }
            Ok(out) => eprintln!(
                "nprot-tests cleanup: umount {}: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("nprot-tests cleanup: cannot run umount: {e}"),
        }
    }
}

/// `count` plain HTTP requests from the client namespace; their local ports.
fn http_flows(env: &Env, count: usize) -> Vec<u16> {
    (0..count)
        .map(|_| {
            env.curl_http("good.example", 80, false, "/good", &[])
                .expect("curl http")
                .local_port
        })
        .collect()
}

/// Polls `nprot stats --json` (up to 20 s) until `cond` holds, and returns those stats.
fn wait_for_stats(
    env: &Env,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = nprot_json(env, &["stats", "--json"]);
        if cond(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "timed out: {what}; {stats}");
        // Poll interval of a wait on the stats (deadline above).
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn counter(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {stats}"))
}

/// Every line of the file, which must be whole JSON objects, one per line; their
/// `ReportId`s in file order.
fn whole_json_lines(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = String::from_utf8(bytes).expect("the event file is UTF-8");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the file ends in a partial line: {:?}",
        &text[text.rfind('\n').map_or(0, |i| i + 1)..]
    );
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["ReportId"].as_u64())
                .unwrap_or_else(|| panic!("line {} is not a whole event: {line}", i + 1))
        })
        .collect()
}

/// `events: written=W dropped=D` from the totals the sensor logs on exit.
fn exit_totals(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| l.split_once("events: written=").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no exit totals in:\n{stderr}"));
    let (written, dropped) = line
        .split_once(" dropped=")
        .unwrap_or_else(|| panic!("exit totals: {line}"));
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("exit totals {line:?}: {e}"))
    };
    (parse(written), parse(dropped))
}

/// The event file on a 1 MB tmpfs: traffic with room, then with the disk full (a filler
/// file took the rest), then with the filler deleted. Every line of the file is a whole
/// event, `events_written` counts the lines, and the lost events are counted, in
/// `nprot stats` and in the exit totals: written + dropped = every `ReportId` issued.
#[test]
fn a_full_disk_loses_whole_batches_and_counts_them() {
    const BEFORE: usize = 5;
    const FULL: usize = 30;
    const AFTER: usize = 5;
    let mut env = Env::start_without_sensor().expect("env");
    let disk = Tmpfs::mount("1m").expect("tmpfs");
    // The harness names the event file; a symlink puts it on the small disk.
    let on_disk = disk.path().join("events.jsonl");
    std::os::unix::fs::symlink(&on_disk, env.events().path()).expect("symlink the event file");
    env.start_sensor(&[]).expect("sensor");

    let before = http_flows(&env, BEFORE);
    for port in &before {
        env.events()
            .wait_for_described(
                &format!("HTTP event from port {port}"),
                |e| ev::is(e, "HttpConnectionInspected") && ev::local_port(e, *port),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let stats = nprot_json(&env, &["stats", "--json"]);
    assert_eq!(counter(&stats, "events_dropped"), 0, "{stats}");

    // A few pages left: some batches fit, one is cut short by the full disk.
    let filler = disk.fill("filler", 10_000).expect("fill the disk");
    eprintln!("filler: {filler} bytes");
    let _ = http_flows(&env, FULL);
    let full = wait_for_stats(&env, "the flows with the disk full inspected", |s| {
        s["pipeline"]["http_inspected"].as_u64() >= Some((BEFORE + FULL) as u64)
            && s["events_dropped"].as_u64() > Some(0)
    });
    let ids = whole_json_lines(&on_disk);
    assert_eq!(ids.len() as u64, counter(&full, "events_written"), "{full}");

    std::fs::remove_file(disk.path().join("filler")).expect("free the disk");
    let after = http_flows(&env, AFTER);
    for port in &after {
        env.events()
            .wait_for_described(
                &format!("HTTP event from port {port} after the disk was freed"),
                |e| ev::is(e, "HttpConnectionInspected") && ev::local_port(e, *port),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let stats = nprot_json(&env, &["stats", "--json"]);
    let (written, dropped) = (
        counter(&stats, "events_written"),
        counter(&stats, "events_dropped"),
    );
    let ids = whole_json_lines(&on_disk);
    assert_eq!(ids.len() as u64, written, "{stats}");
    assert_eq!(
        dropped,
        counter(&full, "events_dropped"),
        "nothing lost after: {stats}"
    );
    let file = stats["sinks"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["sink"].as_str().is_some_and(|n| n.starts_with("file ")))
        })
        .unwrap_or_else(|| panic!("no file sink: {stats}"));
    assert_eq!(
        (&file["written"], &file["dropped"]),
        (&written.into(), &dropped.into()),
        "{file}"
    );

    let sensor = env.sensor_mut().expect("sensor");
    sensor.stop(Duration::from_secs(5)).expect("sensor exits");
    let stderr = sensor.stderr().text();
    let (written, dropped) = exit_totals(&stderr);
    let ids = whole_json_lines(&on_disk);
    assert_eq!(ids.len() as u64, written, "exit totals vs the file");
    // Report ids are issued 1, 2, … one per event: the gaps are the lost events.
    let issued = ids.iter().copied().max().unwrap_or(0);
    let present: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(present.len(), ids.len(), "an event written twice");
    let missing = (1..=issued).filter(|id| !present.contains(id)).count() as u64;
    assert_eq!(
        (written + dropped, missing),
        (issued, dropped),
        "written + dropped = events produced; stderr:\n{stderr}"
    );
    assert!(dropped > 0, "the full disk lost nothing?");
    // Logged when an outage starts and ends, not per batch (a nearly full disk may
    // still take a smaller batch, so there can be several).
    let (starts, ends) = (
        stderr.matches("events lost").count(),
        stderr.matches("lost meanwhile").count(),
    );
    assert!(
        starts >= 1 && starts == ends && (starts as u64) < dropped,
        "{starts} outages logged, {ends} ends:\n{stderr}"
    );
    eprintln!("{written} events written, {dropped} lost to the full disk");
    drop(disk);
}
