//! `nprot fleet …`: the operator's side. Writes indicators and modes into the policy
//! bucket (every sensor watching applies them) and reads the sensors' heartbeats. Only
//! operator credentials may write the bucket; the server refuses anyone else
//! (docs/fleet.md, `packaging/nats/nprot-fleet.conf`).

use std::{
    collections::BTreeMap,
    io::{self, Write as _},
    time::Duration,
};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use super::{
    FleetConfig,
    bucket::{self, EVENTS_STREAM, EVENTS_SUBJECT, Key, POLICY_BUCKET, STATUS_BUCKET},
    sensor::unix_s,
};
use crate::{
    control::{
        cli::{FleetArgs, FleetCommand, FleetIndicatorCommand},
        config::Config,
    },
    mode::Mode,
    policy::{Action, derived_id, import::load_any},
};

/// Runs one `nprot fleet` command.
pub fn run(args: &FleetArgs) -> anyhow::Result<()> {
    if let FleetCommand::SensorUser { device, password } = &args.command {
        let block = sensor_user(device, password).map_err(anyhow::Error::msg)?;
        return say(false, &Value::Null, &block);
    }
    let config = fleet_config(args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = config.connect("nprot fleet", None).await?;
        let js = jetstream::new(client.clone());
        let out = command(&js, args).await;
        let _ = client.flush().await;
        out
    })
}

/// `[fleet]` of `--config`, with the flags over it.
fn fleet_config(args: &FleetArgs) -> anyhow::Result<FleetConfig> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?
            .fleet
            .with_context(|| format!("{}: no [fleet] section", path.display()))?,
        None => FleetConfig {
            servers: Vec::new(),
            device: None,
            user: None,
            password: None,
            credentials: None,
            nkey: None,
            tls_ca: None,
            tls: false,
            event_buffer: 1,
            heartbeat_s: 1,
        },
    };
    if !args.servers.is_empty() {
        config.servers.clone_from(&args.servers);
    }
    if args.user.is_some() || args.credentials.is_some() {
        config.user.clone_from(&args.user);
        config.password.clone_from(&args.password);
        config.credentials.clone_from(&args.credentials);
        config.nkey = None;
    }
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("{e} (give --server, or --config with [fleet])"))?;
    Ok(config)
}

async fn policy(js: &jetstream::Context) -> anyhow::Result<kv::Store> {
    // A cluster busy electing the stream's leader answers a lookup late (a timeout, also
    // of kind GetBucket): asked again a few times before it counts as missing.
    let mut attempt = 1;
    loop {
        match js.get_key_value(POLICY_BUCKET).await {
            Ok(store) => return Ok(store),
            Err(e)
                if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket && attempt < 3 =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("bucket {POLICY_BUCKET} (run `nprot fleet init` first)")
                });
            }
        }
    }
}

async fn command(js: &jetstream::Context, args: &FleetArgs) -> anyhow::Result<()> {
    match &args.command {
        FleetCommand::Init { replicas } => init(js, *replicas).await,
        FleetCommand::Mode { mode, group } => {
            let key = Key::mode(group).map_err(anyhow::Error::msg)?;
            let kv = policy(js).await?;
            if mode == "none" {
                kv.delete(&key)
                    .await
                    .with_context(|| format!("deleting {key}"))?;
                return say(
                    args.json,
                    &json!({ "deleted": key }),
                    &format!("{key} removed"),
                );
            }
            let mode: Mode = mode.parse().map_err(anyhow::Error::msg)?;
            let revision = kv
                .put(&key, mode.as_str().to_owned().into())
                .await
                .with_context(|| format!("writing {key}"))?;
            say(
                args.json,
                &json!({ "key": key, "mode": mode.as_str(), "revision": revision }),
                &format!("{key} = {mode} (revision {revision})"),
            )
        }
        FleetCommand::Indicator(cmd) => indicator(js, args.json, cmd).await,
        FleetCommand::Status { stale_s } => status(js, args.json, *stale_s).await,
        FleetCommand::SensorUser { .. } => Ok(()),
        FleetCommand::Events { device } => events(js, device.as_deref()).await,
    }
}

/// Creates what the fleet needs, keeping what exists.
async fn init(js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    for (bucket, history) in [(POLICY_BUCKET, 5), (STATUS_BUCKET, 1)] {
        js.get_or_create_stream(kv_stream(bucket, history, replicas))
            .await
            .with_context(|| format!("creating bucket {bucket}"))?;
    }
    js.get_or_create_stream(stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec![format!("{EVENTS_SUBJECT}.>")],
        num_replicas: replicas,
        duplicate_window: Duration::from_mins(2),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating stream {EVENTS_STREAM}"))?;
    writeln!(
        io::stdout(),
        "fleet ready: buckets {POLICY_BUCKET}, {STATUS_BUCKET}; stream {EVENTS_STREAM} ({replicas} replicas)"
    )?;
    Ok(())
}

async fn indicator(
    js: &jetstream::Context,
    as_json: bool,
    cmd: &FleetIndicatorCommand,
) -> anyhow::Result<()> {
    let kv = policy(js).await?;
    match cmd {
        FleetIndicatorCommand::Add { spec, group } => {
            let ind = spec.to_json();
            let id = match &spec.id {
                Some(id) => id.clone(),
                None => derive_id(&ind, group)?,
            };
            let revision = put_indicator(&kv, group, &id, ind).await?;
            say(
                as_json,
                &json!({ "key": Key::indicator(group, &id).unwrap_or_default(), "revision": revision }),
                &format!("added {id} for {group} (revision {revision})"),
            )
        }
        FleetIndicatorCommand::Remove { ids, group } => {
            let mut removed = Vec::new();
            for id in ids {
                let key = Key::indicator(group, id).map_err(anyhow::Error::msg)?;
                if kv
                    .get(&key)
                    .await
                    .with_context(|| format!("reading {key}"))?
                    .is_none()
                {
                    bail!("no fleet indicator {id} for {group}");
                }
                kv.delete(&key)
                    .await
                    .with_context(|| format!("deleting {key}"))?;
                removed.push(key);
            }
            say(
                as_json,
                &json!({ "removed": removed }),
                &format!("removed {}", removed.len()),
            )
        }
        FleetIndicatorCommand::List { group } => {
            let mut keys = kv.keys().await.context("listing keys")?;
            let mut list = BTreeMap::new();
            while let Some(key) = keys.next().await {
                let key = key.context("listing keys")?;
                let Ok(Key::Indicator { group: g, .. }) = Key::parse(&key) else {
                    continue;
                };
                if group.as_ref().is_some_and(|want| *want != g) {
                    continue;
                }
                if let Some(v) = kv
                    .get(&key)
                    .await
                    .with_context(|| format!("reading {key}"))?
                {
                    let v: Value = serde_json::from_slice(&v)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&v).into()));
                    list.insert(key, v);
                }
            }
            let mut out = io::stdout().lock();
            if as_json {
                writeln!(out, "{}", json!(list))?;
            } else {
                for (k, v) in &list {
                    writeln!(out, "{k}  {v}")?;
                }
            }
            Ok(())
        }
        FleetIndicatorCommand::Import { file, group } => {
            // Every entry is checked before the first is written.
            let loaded = load_any(file, Action::Block)?;
            let entries: Vec<_> = loaded.indicators.iter().map(|i| i.to_indicator()).collect();
            let mut puts = Vec::with_capacity(entries.len());
            for ind in &entries {
                let mut v = serde_json::to_value(ind)?;
                if let Some(o) = v.as_object_mut() {
                    o.remove("device_groups");
                    o.remove("id");
                }
                Key::indicator(group, &ind.id).map_err(|e| {
                    anyhow::anyhow!("{}: indicator {:?}: {e}", file.display(), ind.id)
                })?;
                puts.push((ind.id.clone(), v));
            }
            let mut last = 0;
            for (id, v) in puts {
                last = put_indicator(&kv, group, &id, v).await?;
            }
            say(
                as_json,
                &json!({ "imported": entries.len(), "revision": last }),
                &format!("imported {} for {group} (revision {last})", entries.len()),
            )
        }
    }
}

/// The subjects a sensor named `device` may publish to: read the policy (stream info,
/// its watch's consumer, direct gets), write only its own heartbeat key and events
/// subject. Everything else, the policy bucket's own subjects among it, is refused.
pub fn sensor_publish_subjects(device: &str) -> Vec<String> {
    let kv = format!("KV_{POLICY_BUCKET}");
    vec![
        "$JS.API.INFO".into(),
        format!("$JS.API.STREAM.INFO.{kv}"),
        format!("$JS.API.STREAM.INFO.KV_{STATUS_BUCKET}"),
        format!("$JS.API.CONSUMER.CREATE.{kv}"),
        format!("$JS.API.CONSUMER.CREATE.{kv}.>"),
        format!("$JS.API.CONSUMER.INFO.{kv}.>"),
        format!("$JS.API.CONSUMER.DELETE.{kv}.>"),
        format!("$JS.API.DIRECT.GET.{kv}.>"),
        "$JS.FC.>".into(),
        format!("$KV.{STATUS_BUCKET}.{device}"),
        format!("{EVENTS_SUBJECT}.{device}"),
    ]
}

/// The `users` entry of a nats-server `authorization` block for sensor `device`
/// (`nprot fleet sensor-user`).
pub fn sensor_user(device: &str, password: &str) -> Result<String, String> {
    bucket::check_token("device", device)?;
    if password.is_empty() || password.contains(['"', '\\', '\n']) {
        return Err(
            "the password must be non-empty, without quotes, backslashes or newlines".into(),
        );
    }
    let publish = sensor_publish_subjects(device)
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "{{ user: \"{device}\", password: \"{password}\", permissions: {{ publish: {{ allow: [{publish}] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }} }}"
    ))
}

/// The stream behind key-value bucket `bucket`, as the KV API creates it. Made by hand:
/// async-nats's `create_key_value` first reads account limits in a form nats-server 2.9
/// (Debian 12's) does not send, and fails.
fn kv_stream(bucket: &str, history: i64, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The id `nprot indicator add` would give: from the type, value and action.
fn derive_id(ind: &Value, group: &str) -> anyhow::Result<String> {
    let text = json!({ "indicators": [ind] }).to_string();
    let loaded = crate::policy::load_json(&text)?;
    let first = loaded
        .indicators
        .iter()
        .next()
        .context("no indicator given")?;
    let groups: Vec<&str> = if group == bucket::ALL {
        vec![]
    } else {
        vec![group]
    };
    Ok(derived_id(&first.target(), first.action(), &groups, None))
}

/// Checks `ind` as a sensor will, then writes it; returns the bucket revision.
async fn put_indicator(kv: &kv::Store, group: &str, id: &str, ind: Value) -> anyhow::Result<u64> {
    let key = Key::indicator(group, id).map_err(anyhow::Error::msg)?;
    let body = serde_json::to_vec(&ind)?;
    let parsed = Key::parse(&key).map_err(anyhow::Error::msg)?;
    bucket::parse_entry(&parsed, &body).map_err(|e| anyhow::anyhow!("indicator {id}: {e}"))?;
    kv.put(&key, body.into())
        .await
        .with_context(|| format!("writing {key}"))
}

async fn status(js: &jetstream::Context, as_json: bool, stale_s: u64) -> anyhow::Result<()> {
    let revision = super::bucket_state(js, POLICY_BUCKET).await?.last_sequence;
    let kv = js
        .get_key_value(STATUS_BUCKET)
        .await
        .with_context(|| format!("bucket {STATUS_BUCKET} (run `nprot fleet init` first)"))?;
    let mut keys = kv.keys().await.context("listing sensors")?;
    let now = unix_s();
    let mut sensors = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.context("listing sensors")?;
        let Some(v) = kv
            .get(&key)
            .await
            .with_context(|| format!("reading {key}"))?
        else {
            continue;
        };
        let mut beat: Value = serde_json::from_slice(&v).unwrap_or_else(|_| json!({}));
        let age = now - beat["ts"].as_f64().unwrap_or(0.0);
        let applied = beat["revision"].as_u64().unwrap_or(0);
        beat["device"] = json!(key);
        beat["age_s"] = json!((age * 10.0).round() / 10.0);
        beat["stale"] = json!(age > stale_s as f64);
        beat["behind"] = json!(applied < revision);
        sensors.push(beat);
    }
    if as_json {
        return say(
            true,
            &json!({ "revision": revision, "sensors": sensors }),
            "",
        );
    }
    let mut out = io::stdout().lock();
    writeln!(out, "policy revision {revision}; {} sensors", sensors.len())?;
    for s in &sensors {
        writeln!(
            out,
            "{:<20} heartbeat {:>6.1}s ago{}  revision {}{}  mode {}  flows {}  blocked {}",
            s["device"].as_str().unwrap_or("?"),
            s["age_s"].as_f64().unwrap_or(f64::NAN),
            if s["stale"] == true { " (stale)" } else { "" },
            s["revision"],
            if s["behind"] == true { " (behind)" } else { "" },
            s["mode"].as_str().unwrap_or("?"),
            s["counters"]["flows"],
            s["counters"]["blocked"],
        )?;
    }
    Ok(())
}

/// Prints every event in the stream (of one device, or all), oldest first, one JSON
/// line each, until the stream has no more.
async fn events(js: &jetstream::Context, device: Option<&str>) -> anyhow::Result<()> {
    let stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .with_context(|| format!("stream {EVENTS_STREAM} (run `nprot fleet init` first)"))?;
    let filter = match device {
        Some(d) => {
            bucket::check_token("device", d).map_err(anyhow::Error::msg)?;
            format!("{EVENTS_SUBJECT}.{d}")
        }
        None => format!("{EVENTS_SUBJECT}.>"),
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            filter_subject: filter,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .context("reading the stream")?;
    let mut out = io::stdout().lock();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .context("reading the stream")?;
        let mut got = 0;
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(|e| anyhow::anyhow!("reading the stream: {e}"))?;
            got += 1;
            let written = out
                .write_all(&msg.payload)
                .and_then(|()| out.write_all(b"\n"));
            match written {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                other => other.context("cannot write to standard output")?,
            }
        }
        if got == 0 {
            break;
        }
    }
    match out.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}

fn say(as_json: bool, data: &Value, human: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    let r = if as_json {
        writeln!(out, "{data}")
    } else {
        writeln!(out, "{human}")
    };
    match r.and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}
