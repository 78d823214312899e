//! The sensor daemon: capture → reassembly/parse → events, driven by one tokio task.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use log::{info, warn};
use nprot_common::{CAPTURE_FLOW_MAX_DEFAULT, FlowKey, SensorConfig, Verdict, stat};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::interval,
};

use crate::{
    capture::{Record, Sensor},
    events::{
        EventFactory, monotonic_ns,
        sink::{Fanout, FileSink, Sink, StdoutSink},
    },
    pipeline::{Pipeline, PipelineStats, VerdictTarget},
    policy::{
        Policy,
        indicator::{self, Indicators},
    },
    stats::LatencySummary,
    verdict::Mode,
};

/// Reassembly state of a flow that sent nothing for this long is dropped.
const STREAM_IDLE: Duration = Duration::from_secs(30);
/// How often records that woke nobody (handshake outcomes) are drained.
const DRAIN: Duration = Duration::from_millis(50);
/// How often counters are checked and idle streams expired, in drain ticks.
const HOUSEKEEPING_TICKS: u32 = 20;

/// What `nprot run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Interfaces to guard.
    pub interfaces: Vec<String>,
    /// Event file; stdout when `None`.
    pub events: Option<PathBuf>,
    /// Network-protection level.
    pub mode: Mode,
    /// Indicator file (JSON).
    pub indicators: Option<PathBuf>,
    /// Device groups this sensor belongs to.
    pub device_groups: Vec<String>,
    /// Fail-open bound on a pending verdict.
    pub verdict_timeout: Duration,
    /// Where to write the final counters and latency figures (JSON) on exit.
    pub stats: Option<PathBuf>,
    /// SCHED_FIFO priority for the verdict loop; 0 for normal scheduling.
    pub rt_priority: u8,
}

/// Puts the calling thread (the verdict loop) under SCHED_FIFO at `priority`.
fn set_realtime(priority: u8) {
    if priority == 0 {
        return;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: plain syscall on the calling thread with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        warn!(
            "cannot run the verdict loop at SCHED_FIFO priority {priority} ({}); verdicts may lose races against fast servers",
            std::io::Error::last_os_error()
        );
    }
}

/// What the sensor did, as written by `--stats` on exit.
#[derive(Debug, serde::Serialize)]
pub struct RunReport {
    pub mode: Mode,
    pub indicators: usize,
    pub indicator_load_ms: f64,
    pub verdict_latency: LatencySummary,
    pub wake_latency: LatencySummary,
    pub pipeline: PipelineStats,
    pub kernel: std::collections::BTreeMap<&'static str, u64>,
    pub events_written: u64,
    pub events_dropped: u64,
    pub decode_errors: u64,
}

/// Loads the indicator file, or an empty policy without one.
fn load_policy(opts: &RunOptions) -> anyhow::Result<Policy> {
    let indicators = match &opts.indicators {
        Some(path) => {
            let started = Instant::now();
            let loaded = indicator::load_file(path)?;
            for warning in &loaded.warnings {
                warn!("{}: {warning}", path.display());
            }
            info!(
                "loaded {} indicators from {} in {:.0?}",
                loaded.indicators.len(),
                path.display(),
                started.elapsed()
            );
            loaded.indicators
        }
        None => Indicators::new(),
    };
    Ok(Policy::new(indicators, &opts.device_groups))
}

impl VerdictTarget for Sensor {
    fn set_verdict(&mut self, key: &FlowKey, verdict: Verdict) -> anyhow::Result<()> {
        Sensor::set_verdict(self, key, verdict).map_err(Into::into)
    }
}

/// Runs the sensor until SIGINT or SIGTERM; everything is detached when it returns.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let sink: Box<dyn Sink> = match &opts.events {
        Some(path) => Box::new(
            FileSink::open(path)
                .with_context(|| format!("cannot open event file {}", path.display()))?,
        ),
        None => Box::new(StdoutSink),
    };
    let mut fanout = Fanout::new(vec![sink]);

    // A bad indicator file stops the start: no sensor with half a policy.
    let load_started = Instant::now();
    let policy = Arc::new(load_policy(&opts)?);
    let indicator_load = load_started.elapsed();
    let indicator_count = policy.len();
    let config = SensorConfig {
        capture: u8::from(opts.mode != Mode::Disabled),
        hold: u8::from(opts.mode == Mode::Block),
        capture_flow_max: CAPTURE_FLOW_MAX_DEFAULT,
        verdict_timeout_ns: opts.verdict_timeout.as_nanos() as u64,
        ..SensorConfig::default()
    };
    // Signals first: a SIGTERM during start-up must still detach cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let mut sensor = Sensor::start(&opts.interfaces, config)?;
    let ring = sensor.take_records().context("ring buffer already taken")?;
    // SAFETY: the AsyncFd owns the ring buffer, so the fd outlives its registration.
    let mut ring: AsyncFd<RingBuf<MapData>> =
        unsafe { AsyncFd::register(ring) }.context("registering the ring buffer with tokio")?;
    let mut pipeline = Pipeline::new(
        EventFactory::for_this_host(),
        CAPTURE_FLOW_MAX_DEFAULT as usize,
        policy,
        opts.mode,
    );
    let guarded: Vec<String> = sensor
        .attached
        .iter()
        .map(|(i, m)| format!("{i} ({m})"))
        .collect();
    info!(
        "nprot ready: guarding {} in {} mode",
        guarded.join(", "),
        opts.mode
    );

    set_realtime(opts.rt_priority);
    let mut tick = interval(DRAIN);
    let mut ticks = 0u32;
    let mut reported_drops = 0u64;
    let mut decode_errors = 0u64;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                decode_errors += drain(guard.get_inner_mut(), &mut pipeline, &mut sensor);
                guard.clear_ready();
                fanout.publish(&mut pipeline.events);
            }
            _ = tick.tick() => {
                decode_errors += drain(ring.get_mut(), &mut pipeline, &mut sensor);
                fanout.publish(&mut pipeline.events);
                ticks += 1;
                if !ticks.is_multiple_of(HOUSEKEEPING_TICKS) {
                    continue;
                }
                pipeline.expire(monotonic_ns(), STREAM_IDLE.as_nanos() as u64);
                if let Ok(k) = sensor.kernel_stats() {
                    let drops = k[stat::RINGBUF_DROPS as usize];
                    if drops > reported_drops {
                        warn!("ring buffer full: {} records lost ({drops} in all)", drops - reported_drops);
                        reported_drops = drops;
                    }
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    // What is already in the ring still gets reported.
    decode_errors += drain(ring.get_mut(), &mut pipeline, &mut sensor);
    fanout.publish(&mut pipeline.events);
    report_totals(&sensor, &pipeline, &fanout, decode_errors);
    if let Some(path) = &opts.stats {
        let report = RunReport {
            mode: opts.mode,
            indicators: indicator_count,
            indicator_load_ms: indicator_load.as_secs_f64() * 1e3,
            verdict_latency: LatencySummary::from(&pipeline.verdict_latency),
            wake_latency: LatencySummary::from(&pipeline.wake_latency),
            pipeline: pipeline.stats(),
            kernel: sensor
                .kernel_stats()
                .map(|k| stat::NAMES.iter().copied().zip(k).collect())
                .unwrap_or_default(),
            events_written: fanout.written,
            events_dropped: fanout.dropped,
            decode_errors,
        };
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write stats to {}", path.display()))?;
    }
    drop(ring);
    drop(sensor);
    info!("nprot stopped: programs detached");
    Ok(())
}

/// Feeds every record in the ring through the pipeline; returns the undecodable ones.
fn drain(ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline, sensor: &mut Sensor) -> u64 {
    let mut errors = 0;
    while let Some(item) = ring.next() {
        match Record::decode(&item) {
            Ok(rec) => pipeline.on_record(&rec, sensor),
            Err(e) => {
                errors += 1;
                warn!("undecodable ring-buffer record: {e}");
            }
        }
    }
    errors
}

fn report_totals(sensor: &Sensor, pipeline: &Pipeline, fanout: &Fanout, decode_errors: u64) {
    let p = pipeline.stats();
    info!(
        "pipeline: records={} tls={} http={} not_recognised={} gave_up={} blocked={} audited={} reassembly_overflows={} verdict_errors={} decode_errors={decode_errors}",
        p.records,
        p.tls_inspected,
        p.http_inspected,
        p.not_recognised,
        p.gave_up,
        p.blocked,
        p.audited,
        p.reassembly_overflows,
        p.verdict_errors
    );
    info!("verdict latency: {}", pipeline.verdict_latency.summary());
    info!("  of which wake-up: {}", pipeline.wake_latency.summary());
    info!(
        "events: written={} dropped={}",
        fanout.written, fanout.dropped
    );
    if let Ok(k) = sensor.kernel_stats() {
        let parts: Vec<String> = stat::NAMES
            .iter()
            .zip(k)
            .map(|(name, v)| format!("{name}={v}"))
            .collect();
        info!("kernel: {}", parts.join(" "));
    }
}
