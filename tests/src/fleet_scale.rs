//! The fleet at scale, for `cargo xtask bench`: many watchers of the policy bucket in one
//! process, against a real nats-server with JetStream, and how long a change takes to
//! reach each of them.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{fleet::NatsCluster, netns::in_netns, sensor::sensor_binary};

/// What [`propagation`] measured.
#[derive(Debug)]
pub struct ScaleRun {
    /// Watchers that took every change.
    pub watchers: usize,
    /// Changes put.
    pub changes: usize,
    /// Milliseconds from sending a put to each watcher's delivery of it, sorted.
    pub delays_ms: Vec<f64>,
    /// The server's resident memory at the end, in MiB (`/varz` `mem`).
    pub server_mib: f64,
}

impl ScaleRun {
    /// The `q` quantile of the delays (0..=1).
    pub fn quantile(&self, q: f64) -> f64 {
        let n = self.delays_ms.len();
        if n == 0 {
            return f64::NAN;
        }
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
        self.delays_ms[i]
    }

    /// As JSON for the bench report.
    pub fn to_json(&self) -> Value {
        json!({
            "watchers": self.watchers,
            "changes": self.changes,
            "p50_ms": self.quantile(0.5),
            "p99_ms": self.quantile(0.99),
            "max_ms": self.quantile(1.0),
            "target_p99_ms": 1000.0,
            "server_mib": self.server_mib,
        })
    }
}

/// Connections the watchers share.
const CONNECTIONS: usize = 20;

/// `watchers` watches of one key of the policy bucket (spread over [`CONNECTIONS`]
/// connections, as many sensors' worth), then `changes` puts, one after another: each is
/// awaited at every watcher before the next. The bucket is made by `nprot fleet init`.
pub fn propagation(dir: &Path, watchers: usize, changes: usize) -> Result<ScaleRun> {
    let cluster = NatsCluster::start(dir, 1, "")?;
    let url = cluster.url(0);
    let init = crate::netns::netns_cmd(&cluster.ns, &sensor_binary()?.to_string_lossy())
        .args(["fleet", "--server", &url, "init"])
        .output()
        .context("running nprot fleet init")?;
    if !init.status.success() {
        bail!(
            "nprot fleet init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let delays = in_netns(&cluster.ns, || -> Result<Vec<f64>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(watch_and_put(&url, watchers, changes))
    })??;
    let server_mib = cluster.monitor(0, "/varz")?["mem"]
        .as_f64()
        .unwrap_or(f64::NAN)
        / 1_048_576.0;
    let mut delays_ms = delays;
    delays_ms.sort_by(f64::total_cmp);
    Ok(ScaleRun {
        watchers,
        changes,
        delays_ms,
        server_mib,
    })
}

async fn watch_and_put(url: &str, watchers: usize, changes: usize) -> Result<Vec<f64>> {
    let mut stores = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let client = async_nats::connect(url).await.context("connecting")?;
        let js = async_nats::jetstream::new(client);
        stores.push(
            js.get_key_value("nprot-policy")
                .await
                .context("the policy bucket")?,
        );
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    for w in 0..watchers {
        let mut watch = stores[w % CONNECTIONS]
            .watch("mode.bench")
            .await
            .with_context(|| format!("watcher {w}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(entry)) = watch.next().await {
                let value = String::from_utf8_lossy(&entry.value).into_owned();
                if tx.send((value, Instant::now())).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut delays = Vec::with_capacity(watchers * changes);
    for round in 0..changes {
        let value = if round % 2 == 0 { "audit" } else { "block" };
        let tag = value.to_owned();
        let put = Instant::now();
        stores[0]
            .put("mode.bench", tag.clone().into())
            .await
            .context("the change")?;
        let mut seen = 0;
        let deadline = put + Duration::from_secs(10);
        while seen < watchers {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((v, at))) if v == tag => {
                    seen += 1;
                    delays.push(at.duration_since(put).as_secs_f64() * 1e3);
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("the watchers ended"),
                Err(_) => {
                    bail!("change {round}: only {seen} of {watchers} watchers had it after 10 s")
                }
            }
        }
    }
    Ok(delays)
}
