//! A sensor's side of the fleet, on a thread of its own (`nprot-fleet`, with its own
//! tokio runtime, at normal priority: NATS can never stall the verdict loop):
//! - watches the policy bucket and hands the daemon what changed ([`Update`]), a whole
//!   snapshot after every (re)connect and batches of changes after it;
//! - puts this sensor's heartbeat into the status bucket;
//! - publishes the events queued in an [`Outbox`] to `nprot.events.<device>`, each with a
//!   message id (`<device>.<start>.<seq>`), resending with the same id until the stream
//!   acknowledges it, so a resend after a reconnect is dropped by JetStream as a
//!   duplicate.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv::Operation};
use futures_util::StreamExt as _;
use log::{debug, info, warn};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    FleetConfig,
    bucket::{Change, EVENTS_SUBJECT, POLICY_BUCKET, STATUS_BUCKET},
};
use crate::events::outbox::Outbox;

/// What the policy bucket holds now, for the daemon.
#[derive(Debug)]
pub enum Update {
    /// Every key's last change, after a (re)connect; keys not in it are gone.
    Snapshot {
        /// The changes.
        changes: Vec<Change>,
        /// The bucket's revision at the snapshot.
        revision: u64,
    },
    /// Changes since, in order.
    Changes(Vec<Change>),
}

/// Counters of the link, for `nprot stats`.
#[derive(Debug, Default)]
struct Counters {
    connected: AtomicBool,
    /// Connections made, the first included (the client's event callback counts them).
    connects: Arc<AtomicU64>,
    snapshots: AtomicU64,
    watch_errors: AtomicU64,
    heartbeats: AtomicU64,
    heartbeat_errors: AtomicU64,
    events_published: AtomicU64,
    events_duplicates: AtomicU64,
    publish_errors: AtomicU64,
}

/// The running link to the fleet.
pub struct SensorLink {
    /// Policy updates, in order; read by the daemon's loop.
    pub updates: mpsc::Receiver<Update>,
    heartbeat: Arc<Mutex<Value>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    outbox: Option<Outbox>,
    device: String,
    thread: Option<JoinHandle<()>>,
}

/// How long a batch of changes waits for more before it goes to the daemon.
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Events published before their acknowledgements are awaited.
const PUBLISH_BATCH: usize = 256;
/// How often the thread looks at the stop flag and the connection's state.
const POLL: Duration = Duration::from_millis(50);
/// Pause after a failed step before it is tried again.
const RETRY: Duration = Duration::from_millis(250);

impl SensorLink {
    /// Starts the thread. `outbox`: events to publish (none: events stay local).
    pub fn start(config: FleetConfig, outbox: Option<Outbox>) -> anyhow::Result<SensorLink> {
        let device = config.device_name();
        let (tx, updates) = mpsc::channel(64);
        let heartbeat = Arc::new(Mutex::new(json!({ "device": device })));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Worker {
            config,
            device: device.clone(),
            tx,
            heartbeat: Arc::clone(&heartbeat),
            counters: Arc::clone(&counters),
            stop: Arc::clone(&stop),
            outbox: outbox.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("nprot-fleet".into())
            .spawn(move || ctx.run())
            .context("starting the fleet thread")?;
        Ok(SensorLink {
            updates,
            heartbeat,
            counters,
            stop,
            outbox,
            device,
            thread: Some(thread),
        })
    }

    /// The name this sensor has in the fleet.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// What the next heartbeat says (the device name is added).
    pub fn set_heartbeat(&self, mut beat: Value) {
        beat["device"] = Value::String(self.device.clone());
        *self
            .heartbeat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = beat;
    }

    /// The link's counters.
    pub fn stats(&self) -> Value {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (dropped, _, queued) = self.outbox.as_ref().map_or((0, 0, 0), Outbox::counts);
        json!({
            "device": self.device,
            "connected": c.connected.load(Ordering::Relaxed),
            "connects": n(&c.connects),
            "snapshots": n(&c.snapshots),
            "watch_errors": n(&c.watch_errors),
            "heartbeats": n(&c.heartbeats),
            "heartbeat_errors": n(&c.heartbeat_errors),
            "events_published": n(&c.events_published),
            "events_duplicates": n(&c.events_duplicates),
            "events_dropped": dropped,
            "events_queued": queued,
            "publish_errors": n(&c.publish_errors),
        })
    }

    /// Stops the thread after giving queued events until `deadline` to go out; those
    /// still queued then are counted as dropped (the sink's `dropped`, the exit totals).
    /// Returns how many.
    pub fn stop(&mut self, deadline: Instant) -> usize {
        if let Some(outbox) = &self.outbox {
            outbox.close();
            while outbox.counts().2 > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.outbox.as_ref().map_or(0, Outbox::abandon)
    }
}

impl Drop for SensorLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Worker {
    config: FleetConfig,
    device: String,
    tx: mpsc::Sender<Update>,
    heartbeat: Arc<Mutex<Value>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    outbox: Option<Outbox>,
}

impl Worker {
    fn run(self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                warn!("fleet: cannot start a runtime: {e}");
                return;
            }
        };
        rt.block_on(self.serve());
    }

    async fn serve(self) {
        let name = format!("nprot {}", self.device);
        // While NATS is away the first connect waits; a stop must not.
        let client = tokio::select! {
            c = self.config.connect(&name, Some(Arc::clone(&self.counters.connects))) => match c {
                Ok(c) => c,
                Err(e) => {
                    warn!("fleet: {e:#}");
                    return;
                }
            },
            () = stopped(&self.stop) => return,
        };
        let js = jetstream::new(client.clone());
        let watch = tokio::spawn(watch_policy(
            js.clone(),
            self.tx.clone(),
            Arc::clone(&self.counters),
        ));
        let beat = tokio::spawn(heartbeats(
            js.clone(),
            self.device.clone(),
            Duration::from_secs(self.config.heartbeat_s),
            Arc::clone(&self.heartbeat),
            Arc::clone(&self.counters),
        ));
        let publish = self.outbox.clone().map(|outbox| {
            tokio::spawn(publish_events(
                js.clone(),
                self.device.clone(),
                outbox,
                Arc::clone(&self.counters),
                Arc::clone(&self.stop),
            ))
        });
        while !self.stop.load(Ordering::Relaxed) {
            self.counters.connected.store(
                client.connection_state() == async_nats::connection::State::Connected,
                Ordering::Relaxed,
            );
            tokio::time::sleep(POLL).await;
        }
        watch.abort();
        beat.abort();
        if let Some(p) = publish {
            p.abort();
        }
        let _ = client.flush().await;
    }
}

/// Resolves once `stop` is set.
async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(POLL).await;
    }
}

/// Watches the policy bucket for ever: a snapshot, then changes; starts again after any
/// error (the bucket missing, a lost connection the ordered consumer did not survive).
async fn watch_policy(js: jetstream::Context, tx: mpsc::Sender<Update>, counters: Arc<Counters>) {
    let mut reported = false;
    loop {
        match watch_once(&js, &tx, &counters).await {
            Ok(()) => return, // the daemon is gone
            Err(e) => {
                counters.watch_errors.fetch_add(1, Ordering::Relaxed);
                if reported {
                    debug!("fleet: policy watch: {e:#}");
                } else {
                    warn!("fleet: policy watch: {e:#} (retrying)");
                    reported = true;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn change_of(entry: &jetstream::kv::Entry) -> Change {
    match entry.operation {
        Operation::Put => Change::Put {
            key: entry.key.clone(),
            value: entry.value.to_vec(),
            revision: entry.revision,
        },
        Operation::Delete | Operation::Purge => Change::Delete {
            key: entry.key.clone(),
            revision: entry.revision,
        },
    }
}

async fn watch_once(
    js: &jetstream::Context,
    tx: &mpsc::Sender<Update>,
    counters: &Counters,
) -> anyhow::Result<()> {
    // A new connection (to another node, or after an outage) starts over with a fresh
    // snapshot rather than trusting a consumer that may have lived on the lost node.
    let connects = counters.connects.load(Ordering::Relaxed);
    let kv = js
        .get_key_value(POLICY_BUCKET)
        .await
        .with_context(|| format!("bucket {POLICY_BUCKET}"))?;
    let state = super::bucket_state(js, POLICY_BUCKET).await?;
    let revision = state.last_sequence;
    let mut watch = kv
        .watch_with_history(">")
        .await
        .context("watching the bucket")?;
    let mut changes = Vec::new();
    if state.messages > 0 {
        loop {
            let entry = watch
                .next()
                .await
                .context("the watch ended")?
                .context("reading the bucket")?;
            changes.push(change_of(&entry));
            if entry.delta == 0 {
                break;
            }
        }
    }
    let revision = changes
        .iter()
        .map(Change::revision)
        .fold(revision, u64::max);
    counters.snapshots.fetch_add(1, Ordering::Relaxed);
    info!(
        "fleet: policy snapshot, {} keys, revision {revision}",
        changes.len()
    );
    if tx
        .send(Update::Snapshot { changes, revision })
        .await
        .is_err()
    {
        return Ok(());
    }
    loop {
        let first = loop {
            if counters.connects.load(Ordering::Relaxed) != connects {
                anyhow::bail!("reconnected to NATS: watching again");
            }
            if let Ok(next) = tokio::time::timeout(POLL, watch.next()).await {
                break next
                    .context("the watch ended")?
                    .context("reading the bucket")?;
            }
        };
        let mut batch = vec![change_of(&first)];
        // A burst (an import) goes to the daemon as one change of policy.
        while let Ok(Some(next)) = tokio::time::timeout(BATCH_WINDOW, watch.next()).await {
            batch.push(change_of(&next.context("reading the bucket")?));
        }
        if tx.send(Update::Changes(batch)).await.is_err() {
            return Ok(());
        }
    }
}

async fn heartbeats(
    js: jetstream::Context,
    device: String,
    every: Duration,
    beat: Arc<Mutex<Value>>,
    counters: Arc<Counters>,
) {
    let mut store = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if store.is_none() {
            store = js.get_key_value(STATUS_BUCKET).await.ok();
        }
        let Some(kv) = &store else {
            counters.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut value = beat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        value["ts"] = json!(unix_s());
        let body = serde_json::to_vec(&value).unwrap_or_default();
        match kv.put(&device, body.into()).await {
            Ok(_) => {
                counters.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
                debug!("fleet: heartbeat to {STATUS_BUCKET}: {e}");
            }
        }
    }
}

/// Seconds since the Unix epoch, as a float.
pub fn unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

async fn publish_events(
    js: jetstream::Context,
    device: String,
    outbox: Outbox,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let subject = format!("{EVENTS_SUBJECT}.{device}");
    // Distinguishes this run's sequence numbers from the last run's.
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let mut reported = false;
    while !stop.load(Ordering::Relaxed) {
        let waiting = outbox.clone();
        let lines = tokio::task::spawn_blocking(move || {
            waiting.peek(PUBLISH_BATCH, Duration::from_millis(200))
        })
        .await
        .unwrap_or_default();
        let Some(last) = lines.last().map(|l| l.seq) else {
            continue;
        };
        let result: anyhow::Result<()> = async {
            let mut acks = Vec::with_capacity(lines.len());
            for line in &lines {
                let msg = jetstream::message::PublishMessage::build()
                    .message_id(format!("{device}.{run}.{}", line.seq))
                    .payload(line.bytes.clone().into());
                acks.push(js.send_publish(subject.clone(), msg).await?);
            }
            for ack in acks {
                let ack = ack.await?;
                if ack.duplicate {
                    counters.events_duplicates.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.events_published.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                outbox.delivered(last);
                reported = false;
            }
            Err(e) => {
                counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                if !reported {
                    warn!("fleet: publishing events to {subject}: {e:#} (resending)");
                    reported = true;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
