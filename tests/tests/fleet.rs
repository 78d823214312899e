//! The fleet (issue 17): a 3-node nats-server cluster with JetStream in its own
//! namespace, and five sensors, each guarding its own client/server pair, that take
//! their policy from the cluster's bucket and publish their events to its stream.
//!
//! Run as root: `cargo xtask test` (or `cargo test -p nprot-tests --test fleet --
//! --test-threads=1`).
// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Mutex,
    time::{Duration, Instant},
};

use nprot_tests::{
    CurlRun, Nginx, Sensor, Topology, Value, assert_reset,
    clients::curl_any_in,
    fleet::NatsCluster,
    netns::{ip, netns_cmd},
    next_test_number,
    nginx::BODY_GOOD,
    sensor::{control_socket_for, sensor_binary},
};

/// One fleet test at a time: each builds many namespaces.
static SERIAL: Mutex<()> = Mutex::new(());

const OPERATOR: (&str, &str) = ("operator", "operator-secret");

fn password(device: &str) -> String {
    format!("pw-{device}")
}

/// The nats-server authorization: the operator may do anything; each sensor gets what
/// `nprot fleet sensor-user` prints for it.
fn authorization(devices: &[String]) -> String {
    let mut users = vec![format!(
        "{{ user: \"{}\", password: \"{}\" }}",
        OPERATOR.0, OPERATOR.1
    )];
    for d in devices {
        let out = Command::new(sensor_binary().unwrap())
            .args([
                "fleet",
                "sensor-user",
                "--device",
                d,
                "--password",
                &password(d),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "sensor-user: {out:?}");
        users.push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    }
    format!(
        "authorization {{ users = [\n  {}\n] }}\n",
        users.join(",\n  ")
    )
}

/// `nprot fleet …` as the operator, from the cluster's namespace.
fn fleet(cluster: &NatsCluster, args: &[&str]) -> Output {
    let mut cmd = netns_cmd(&cluster.ns, &sensor_binary().unwrap().to_string_lossy());
    cmd.arg("fleet");
    for url in cluster.urls() {
        cmd.args(["--server", &url]);
    }
    cmd.args(["--user", OPERATOR.0, "--password", OPERATOR.1]);
    cmd.args(args).output().unwrap()
}

#[track_caller]
fn fleet_ok(cluster: &NatsCluster, args: &[&str]) -> String {
    let out = fleet(cluster, args);
    assert!(
        out.status.success(),
        "nprot fleet {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.log_tail()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A client/server pair with its sensor in the fleet.
struct Member {
    device: String,
    topo: Topology,
    _nginx: Nginx,
    sensor: Option<Sensor>,
    dir: PathBuf,
    /// The sensor's end of its link to the cluster.
    nats_if: String,
}

impl Member {
    fn new(cluster: &mut NatsCluster, root: &Path, device: &str) -> Member {
        let topo = Topology::create(next_test_number()).unwrap();
        let dir = root.join(device);
        std::fs::create_dir_all(&dir).unwrap();
        let nginx = Nginx::start(&topo, &dir).unwrap();
        let before: Vec<String> = links(&topo.client_ns);
        cluster.attach(&topo.client_ns).unwrap();
        let nats_if = links(&topo.client_ns)
            .into_iter()
            .find(|l| !before.contains(l))
            .expect("the link to the cluster");
        let servers: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
        std::fs::write(
            dir.join("nprot.toml"),
            format!(
                "device_groups = [\"web\"]\n[fleet]\nservers = [{}]\ndevice = \"{device}\"\nuser = \"{device}\"\npassword = \"{}\"\n",
                servers.join(", "),
                password(device)
            ),
        )
        .unwrap();
        let mut m = Member {
            device: device.to_owned(),
            topo,
            _nginx: nginx,
            sensor: None,
            dir,
            nats_if,
        };
        m.start();
        m
    }

    fn events(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    fn start(&mut self) {
        let config = self.dir.join("nprot.toml");
        let config = config.to_string_lossy();
        self.sensor = Some(
            Sensor::start_in(
                &self.topo.client_ns,
                &[&self.topo.client_if],
                &self.events(),
                &["--config", &config, "--mode", "block"],
            )
            .unwrap(),
        );
    }

    fn stop(&mut self) {
        if let Some(mut s) = self.sensor.take() {
            s.stop(Duration::from_secs(10)).unwrap();
        }
    }

    fn stats(&self) -> Value {
        let out = Command::new(sensor_binary().unwrap())
            .args(["stats", "--json", "--socket"])
            .arg(control_socket_for(&self.events()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: nprot stats: {out:?}",
            self.device
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait_stats(&self, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what} not within {timeout:?}: {}\n{}",
                self.device,
                s["fleet"],
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn curl(&self, name: &str) -> CurlRun {
        let url = format!("https://{name}/good");
        curl_any_in(
            &self.topo.client_ns,
            name,
            443,
            self.topo.server_ip(false),
            &url,
            &[],
        )
        .unwrap()
    }

    fn passes(&self, name: &str) -> bool {
        let r = self.curl(name);
        r.exit_code == Some(0) && r.body.trim() == BODY_GOOD
    }

    /// Curls `name` until it is reset; how long that took from `since`.
    fn until_blocked(&self, name: &str, since: Instant, timeout: Duration) -> Duration {
        loop {
            let r = self.curl(name);
            if r.exit_code != Some(0) {
                assert_reset(&format!("{}: {name}", self.device), &r, || {
                    self.diagnostics()
                });
                return since.elapsed();
            }
            assert!(
                since.elapsed() < timeout,
                "{}: {name} still passes after {timeout:?}\n{}",
                self.device,
                self.diagnostics()
            );
        }
    }

    fn diagnostics(&self) -> String {
        self.sensor
            .as_ref()
            .map(|s| s.stderr().text())
            .unwrap_or_default()
    }

    /// Cuts (or restores) the sensor's link to the cluster.
    fn link(&self, up: bool) {
        ip(&[
            "-n",
            &self.topo.client_ns,
            "link",
            "set",
            &self.nats_if,
            if up { "up" } else { "down" },
        ])
        .unwrap();
    }
}

fn links(ns: &str) -> Vec<String> {
    let out = netns_cmd(ns, "ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

fn root_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nprot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every member blocks `name`, each measured from `since`; returns the slowest.
fn all_block(members: &[Member], name: &str, since: Instant, timeout: Duration) -> Duration {
    std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .iter()
            .map(|m| scope.spawn(move || m.until_blocked(name, since, timeout)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

/// A raw write to the policy bucket as `user`, bypassing the CLI's checks.
fn raw_put(
    cluster: &NatsCluster,
    user: (&str, &str),
    key: &str,
    value: &[u8],
) -> Result<u64, String> {
    let urls = cluster.urls();
    let ns = cluster.ns.clone();
    let (user, pass) = (user.0.to_owned(), user.1.to_owned());
    let (key, value) = (key.to_owned(), value.to_vec());
    nprot_tests::netns::in_netns(&ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = async_nats::ConnectOptions::with_user_and_password(user, pass)
                .request_timeout(Some(Duration::from_secs(2)))
                .connect(urls)
                .await
                .map_err(|e| e.to_string())?;
            let js = async_nats::jetstream::new(client);
            let kv = js
                .get_key_value("nprot-policy")
                .await
                .map_err(|e| e.to_string())?;
            kv.put(key, value.into()).await.map_err(|e| e.to_string())
        })
    })
    .unwrap()
}

#[test]
fn a_fleet_of_five_sensors_takes_one_policy() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = root_dir("fleet");
    let devices: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
    let mut cluster = NatsCluster::start(&root.join("nats"), 3, &authorization(&devices)).unwrap();
    fleet_ok(&cluster, &["init", "--replicas", "3"]);
    let mut members: Vec<Member> = devices
        .iter()
        .map(|d| Member::new(&mut cluster, &root, d))
        .collect();
    for m in &members {
        m.wait_stats("the first policy snapshot", Duration::from_secs(15), |s| {
            s["fleet"]["snapshots"].as_u64() >= Some(1) && s["fleet"]["connected"] == true
        });
        assert!(m.passes("bad.example"), "{}: nothing blocked yet", m.device);
    }

    // One Block for every sensor: in force everywhere within a second.
    fleet_ok(
        &cluster,
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
            "c2",
        ],
    );
    let returned = Instant::now();
    let slowest = all_block(&members, "bad.example", returned, Duration::from_secs(5));
    eprintln!(
        "fleet: the last of 5 sensors blocked its first flow {slowest:?} after the CLI returned"
    );
    assert!(slowest <= Duration::from_secs(1), "took {slowest:?}");
    for m in &members {
        assert!(
            m.passes("good.example"),
            "{}: good.example still passes",
            m.device
        );
    }

    // One node killed: a second change still reaches every sensor.
    cluster.kill(1);
    fleet_ok(
        &cluster,
        &[
            "indicator",
            "add",
            "--type",
            "DomainName",
            "--value",
            "www.bad.example",
            "--action",
            "Allowed",
            "--id",
            "carve",
        ],
    );
    let since = Instant::now();
    std::thread::scope(|scope| {
        for m in &members {
            scope.spawn(move || {
                let deadline = since + Duration::from_secs(15);
                while !m.passes("www.bad.example") {
                    assert!(
                        Instant::now() < deadline,
                        "{}: the Allowed carve-out never came\n{}",
                        m.device,
                        m.diagnostics()
                    );
                }
            });
        }
    });
    eprintln!(
        "fleet: a change with a node down reached all 5 in {:?}",
        since.elapsed()
    );

    // A sensor cut off during a change catches up when it reconnects.
    let cut = &members[4];
    cut.link(false);
    let revision = fleet_ok(
        &cluster,
        &[
            "--json",
            "indicator",
            "add",
            "--type",
            "DomainName",
            "--value",
            "good.example",
            "--action",
            "Block",
            "--id",
            "late",
        ],
    );
    let revision: Value = serde_json::from_str(revision.trim()).unwrap();
    let revision = revision["revision"].as_u64().unwrap();
    all_block(
        &members[..4],
        "good.example",
        Instant::now(),
        Duration::from_secs(5),
    );
    assert!(
        cut.stats()["fleet"]["revision"].as_u64() < Some(revision),
        "the cut-off sensor cannot have the change"
    );
    cut.link(true);
    cut.wait_stats("catching up after the cut", Duration::from_secs(20), |s| {
        s["fleet"]["revision"].as_u64() >= Some(revision)
    });
    cut.until_blocked("good.example", Instant::now(), Duration::from_secs(2));
    cluster.restart(1).unwrap();

    // A bad entry: reported by key on every sensor; the key's last good value stays.
    raw_put(&cluster, OPERATOR, "ind.all.c2", b"{not json").unwrap();
    for m in &members {
        let s = m.wait_stats("the bad entry reported", Duration::from_secs(5), |s| {
            s["fleet"]["refused"]["ind.all.c2"].is_string()
        });
        assert!(
            s["fleet"]["refused"]["ind.all.c2"]
                .as_str()
                .unwrap()
                .contains("not JSON"),
            "{}",
            s["fleet"]
        );
        m.until_blocked("bad.example", Instant::now(), Duration::from_secs(1));
    }

    // A sensor's credentials cannot write the policy: the server refuses the put.
    let refused = raw_put(
        &cluster,
        ("s0", &password("s0")),
        "ind.all.evil",
        br#"{"type":"DomainName","value":"bad.example","action":"Allowed"}"#,
    );
    assert!(refused.is_err(), "a sensor wrote the policy: {refused:?}");
    eprintln!(
        "fleet: a sensor's put was refused: {}",
        refused.unwrap_err()
    );
    let listed = fleet_ok(&cluster, &["--json", "indicator", "list"]);
    assert!(!listed.contains("ind.all.evil"), "{listed}");

    // Status: every sensor, none behind once heartbeats caught up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s: Value =
            serde_json::from_str(fleet_ok(&cluster, &["--json", "status"]).trim()).unwrap();
        let sensors = s["sensors"].as_array().cloned().unwrap_or_default();
        if sensors.len() == 5
            && sensors
                .iter()
                .all(|x| x["behind"] == false && x["stale"] == false)
        {
            break s;
        }
        assert!(Instant::now() < deadline, "sensors behind: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["sensors"][0]["mode"], "block", "{status}");

    // Events: every sensor's, exactly once in the stream, across the node's restart.
    for m in &mut members {
        m.stop();
    }
    for m in &members {
        let local = std::fs::read_to_string(m.events()).unwrap();
        let mut local: Vec<&str> = local.lines().filter(|l| !l.is_empty()).collect();
        let streamed = fleet_ok(&cluster, &["events", "--device", &m.device]);
        let mut streamed: Vec<&str> = streamed.lines().filter(|l| !l.is_empty()).collect();
        assert!(
            local.len() >= 10,
            "{}: too few events to tell: {}",
            m.device,
            local.len()
        );
        local.sort_unstable();
        streamed.sort_unstable();
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for l in &local {
            *counts.entry(l).or_default() += 1;
        }
        for l in &streamed {
            *counts.entry(l).or_default() -= 1;
        }
        let off: Vec<_> = counts.iter().filter(|(_, n)| **n != 0).take(3).collect();
        assert!(
            off.is_empty(),
            "{}: {} events local, {} in the stream; differing: {off:?}",
            m.device,
            local.len(),
            streamed.len()
        );
    }
    drop(members);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&root);
}

/// A sensor restarted while NATS is down enforces the fleet policy it last applied.
#[test]
fn a_sensor_restarted_with_nats_down_keeps_its_fleet_policy() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = root_dir("fleet-down");
    let devices = vec!["solo".to_owned()];
    let mut cluster = NatsCluster::start(&root.join("nats"), 1, &authorization(&devices)).unwrap();
    fleet_ok(&cluster, &["init"]);
    let mut m = Member::new(&mut cluster, &root, "solo");
    m.wait_stats("the first snapshot", Duration::from_secs(15), |s| {
        s["fleet"]["snapshots"].as_u64() >= Some(1)
    });
    fleet_ok(
        &cluster,
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
            "c2",
        ],
    );
    m.until_blocked("bad.example", Instant::now(), Duration::from_secs(2));
    // An import for the sensor's group: every entry checked, then written.
    let file = root.join("import.json");
    std::fs::write(
        &file,
        r#"{"indicators":[{"id":"i1","type":"DomainName","value":"www.good.example","action":"Block"},
            {"id":"i2","type":"Url","value":"http://good.example/x","action":"Block"}]}"#,
    )
    .unwrap();
    let bad_file = root.join("bad-import.json");
    std::fs::write(
        &bad_file,
        r#"{"indicators":[{"id":"ok","type":"DomainName","value":"x.example","action":"Block"},
            {"id":"bad","type":"DomainName","value":"","action":"Block"}]}"#,
    )
    .unwrap();
    let refused = fleet(
        &cluster,
        &[
            "indicator",
            "import",
            &bad_file.to_string_lossy(),
            "--group",
            "web",
        ],
    );
    assert!(!refused.status.success(), "a bad file was imported");
    let imported = fleet_ok(
        &cluster,
        &[
            "indicator",
            "import",
            &file.to_string_lossy(),
            "--group",
            "web",
        ],
    );
    assert!(imported.contains("imported 2 for web"), "{imported}");
    let listed = fleet_ok(&cluster, &["--json", "indicator", "list", "--group", "web"]);
    assert!(
        listed.contains("ind.web.i1")
            && listed.contains("ind.web.i2")
            && !listed.contains("ind.web.ok"),
        "{listed}"
    );
    m.until_blocked("www.good.example", Instant::now(), Duration::from_secs(2));
    assert!(m.passes("good.example"), "the URL indicator is for /x only");
    m.stop();
    cluster.stop_all();
    m.start();
    let s = m.stats();
    assert_eq!(
        s["fleet"]["connected"], false,
        "NATS is down: {}",
        s["fleet"]
    );
    assert_eq!(s["fleet"]["keys"], 3, "{}", s["fleet"]);
    m.until_blocked("bad.example", Instant::now(), Duration::from_secs(1));
    assert!(m.passes("good.example"));
    drop(m);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&root);
}
