//! The NATS cluster harness on its own, without the sensor: a three-node JetStream cluster
//! reached from another namespace, surviving the loss of a node and taking it back.
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use nprot_tests::{
    fleet::{NatsCluster, RECOVERY_TIMEOUT},
    netns, require_root,
};

/// A namespace named like the harness's client namespaces (`np-<pid>-0-c`: the harness's
/// own numbers start at 1) and a temp dir, both removed on drop, also when a step fails.
struct Scratch {
    ns: String,
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("nprot-fleet-{pid}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove an old temp dir");
        }
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        // Made before the namespace: a half-made namespace is deleted too.
        let scratch = Scratch {
            ns: format!("np-{pid}-0-c"),
            dir,
        };
        netns::add_namespace(&scratch.ns).expect("client namespace");
        scratch
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for e in netns::delete_namespaces(&[&self.ns]) {
            eprintln!("nprot-tests cleanup: {e}");
        }
        if std::env::var_os("NPROT_KEEP_TMP").is_some() {
            eprintln!("nprot-tests: kept {}", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!(
                "nprot-tests cleanup: cannot remove {}: {e}",
                self.dir.display()
            );
        }
    }
}

#[test]
fn nats_cluster_survives_a_killed_node() {
    require_root().expect("root");
    // Declared first, dropped last: the cluster (and its veth) goes before the namespace.
    let scratch = Scratch::new();
    let mut cluster = NatsCluster::start(&scratch.dir, 3, "").expect("3-node NATS cluster");
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.url(2), format!("nats://{}:4224", cluster.ip));

    let client_ip = cluster
        .attach(&scratch.ns)
        .expect("attach the client namespace");
    let IpAddr::V4(v4) = client_ip else {
        panic!("attach gave {client_ip}, not IPv4");
    };
    assert_eq!(
        v4.octets(),
        [198, 19, cluster.ip.octets()[2], 10],
        "first attached address"
    );

    let targets: Vec<SocketAddr> = (0..3).map(|i| cluster.client_addr(i)).collect();
    netns::wait_tcp_ready_in(&scratch.ns, &targets, Duration::from_secs(5)).unwrap_or_else(|e| {
        panic!(
            "client ports not reachable from {}: {e:#}\n{}",
            scratch.ns,
            cluster.log_tail()
        )
    });

    cluster.kill(1);
    assert!(!cluster.is_running(1), "n1 still runs after kill");
    assert!(cluster.is_running(0) && cluster.is_running(2), "n0, n2 run");
    let leader = cluster
        .wait_ready(RECOVERY_TIMEOUT)
        .unwrap_or_else(|e| panic!("n0 and n2 have no meta leader: {e:#}"));
    assert!(
        matches!(leader.as_deref(), Some("n0" | "n2")),
        "meta leader with n1 down: {leader:?}\n{}",
        cluster.log_tail()
    );

    cluster
        .restart(1)
        .unwrap_or_else(|e| panic!("restart n1: {e:#}"));
    assert!(cluster.is_running(1), "n1 runs after restart");
    assert!(
        cluster.is_healthy(1),
        "n1 healthy after restart\n{}",
        cluster.log_tail()
    );
    let seen = cluster.meta_leader(1).expect("n1's /jsz");
    assert!(
        seen.is_some(),
        "n1 knows the meta leader after restart\n{}",
        cluster.log_tail()
    );
    netns::wait_tcp_ready_in(
        &scratch.ns,
        &[cluster.client_addr(1)],
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("n1's client port after restart: {e:#}"));
}
