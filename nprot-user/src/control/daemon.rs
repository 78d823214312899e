//! The sensor daemon: capture → reassembly/parse → events, driven by one tokio task.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use log::{debug, info, warn};
use nprot_common::{
    CAPTURE_FLOW_MAX_DEFAULT, FlowKey, SensorConfig, VerdictEntry, prefilter::Filter,
    quic::QuicMode, stat,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::interval,
};

use crate::{
    capture::{
        self, ConnectHooks, HookCounters, Sensor, TcAttach,
        attribution::{
            Attribution, AttributionReport, AttributionThread, Resolver, open_cgroup2_root,
        },
    },
    control::{
        cli::RunArgs,
        config::{self, Config, EventsConfig, ProcessCgroup, Protocol},
        fleet::{
            FleetConfig,
            bucket::{EVENTS_SUBJECT, FleetPolicy},
            sensor::{SensorLink, Update},
        },
        metrics::{Latency, MetricsServer, Snapshot},
        notify::server::{AllowRequest, NotifyServer},
        protocol::{
            AddedReply, BypassReply, FlowAccount, InterfaceStatus, ModeReply, QuicAccount,
            RemovedReply, Request, Response, RunReport, StatusReply,
        },
        sdnotify, socket,
        state::State,
    },
    datapath::{
        backlog::{BACKLOG_CHUNK, Backlog},
        dns_block::{DnsBlock, NameMap},
        names::{DnsNames, EchAction, NameSettings},
        pipeline::{KnownProxy, OversizedAction, Pipeline, PipelineStats, VerdictTarget},
        prefilter::{Prefilter, SummaryTarget},
    },
    events::{
        EventFactory, Grant, GrantedVia,
        collector::{CollectorConfig, CollectorSink, Transport},
        monotonic_ns,
        outbox::{Outbox, OutboxSink},
        rfc3339_micros,
        rotate::RotatingFileSink,
        sink::{Fanout, FileSink, Sink, StdoutSink},
    },
    histogram::LatencySummary,
    mode::Mode,
    policy::{
        self, Action, Indicator, IndicatorError, IndicatorType, Indicators, Policy, Subject,
        Target, load_json,
    },
    record::Record,
};

/// Reassembly state of a flow that sent nothing for this long is dropped.
const STREAM_IDLE: Duration = Duration::from_secs(30);
/// A verdict its flow has not picked up for this long is stale (the flow ended first).
/// Far above any wait for a flow's next packet, so a live flow never loses one.
const VERDICT_STALE: Duration = Duration::from_mins(1);
/// How long a user's bypass of a Warn lasts when its indicator says nothing.
const DEFAULT_BYPASS: Duration = Duration::from_hours(24);
/// Housekeeping rounds between two sweeps of stale verdicts.
const VERDICT_SWEEP_EVERY: u32 = 10;
/// How often records that woke nobody (handshake outcomes) are drained.
const DRAIN: Duration = Duration::from_millis(50);
/// How often counters are checked and idle streams expired, in drain ticks.
const HOUSEKEEPING_TICKS: u32 = 20;

/// What `nprot run` was asked to do: the config file with the flags laid over it.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Interfaces to guard.
    pub interfaces: Vec<String>,
    /// Where events go: the config's `[events]` with `--events FILE` as `events.file`.
    /// Read at start only (a reload does not rebuild the sinks).
    pub events: EventsConfig,
    /// Network-protection level given on the command line; it wins over the saved one.
    pub mode: Option<Mode>,
    /// The config file's mode, used when neither a flag nor `nprot mode` set one.
    pub config_mode: Mode,
    /// Indicator files and the action their plain-list entries get; loaded at start and
    /// on SIGHUP.
    pub indicators: Vec<(PathBuf, Action)>,
    /// Device groups this sensor belongs to.
    pub device_groups: Vec<String>,
    /// Fail-open bound on a pending verdict.
    pub verdict_timeout: Duration,
    /// Idle time after which a flow entry is retired.
    pub flow_idle_timeout: Duration,
    /// Where to write the final counters and latency figures (JSON) on exit.
    pub stats: Option<PathBuf>,
    /// SCHED_FIFO priority for the verdict loop; 0 for normal scheduling.
    pub rt_priority: u8,
    /// Where run-time changes (mode, indicators) are persisted.
    pub state_dir: PathBuf,
    /// The root-only control socket.
    pub control_socket: PathBuf,
    /// The config file read at start, re-read on SIGHUP.
    pub config_file: Option<PathBuf>,
    /// The flags as given: laid over the config again on SIGHUP.
    pub args: RunArgs,
    /// Forward proxies named in the config.
    pub proxies: Vec<KnownProxy>,
    /// Where the process-attribution hooks attach.
    pub process_cgroup: ProcessCgroup,
    /// Bound of the attribution's process cache.
    pub process_cache: usize,
    /// What block mode does with a request head that cannot be judged in full.
    pub oversized: OversizedAction,
    /// What is done with QUIC.
    pub quic: QuicMode,
    /// What names from DNS and ECH evidence may decide.
    pub names: NameSettings,
    /// Block mode pre-filters flows in the kernel.
    pub prefilter: bool,
    /// Whether the verdict loop busy-polls the ring buffer: `ring_poll` resolved for this
    /// host's CPUs at start (it is not reloaded).
    pub busy_poll: bool,
    /// `[fleet]`, read at start only.
    pub fleet: Option<FleetConfig>,
    /// Where `/metrics` is served, if anywhere (read at start only).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// What a blocked plain-HTTP request gets.
    pub block_page: config::BlockPage,
    /// Who may bypass a Warn.
    pub warn_bypass: config::WarnBypass,
    /// Where `nprot notify` agents connect (read at start only).
    pub notify_socket: Option<PathBuf>,
}

impl RunOptions {
    /// Lays the flags of `nprot run` over the config file (`--config`, else the default
    /// path if it exists, else built-in defaults).
    pub fn from_args(args: RunArgs) -> anyhow::Result<RunOptions> {
        let config_file = match args.config.clone() {
            Some(path) => Some(path),
            None => Some(PathBuf::from(config::DEFAULT_PATH)).filter(|p| p.exists()),
        };
        let config = match &config_file {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        RunOptions::merge(args, config_file, config)
    }

    /// The flags laid over `config` (read from `config_file`): the one place where what
    /// wins over what is decided, at start and on every reload.
    fn merge(
        args: RunArgs,
        config_file: Option<PathBuf>,
        config: Config,
    ) -> anyhow::Result<RunOptions> {
        let kept = args.clone();
        let interfaces = if args.interfaces.is_empty() {
            config.interfaces.clone()
        } else {
            args.interfaces
        };
        if interfaces.is_empty() {
            anyhow::bail!(
                "no interface to guard: pass --interface IF or set `interfaces` in the config"
            );
        }
        let indicators = if args.indicators.is_empty() {
            config
                .indicator_files()
                .map(|(p, a)| (p.to_owned(), a))
                .collect()
        } else {
            args.indicators
                .into_iter()
                .map(|p| (p, config.list_action))
                .collect()
        };
        let mut device_groups = config.device_groups.clone();
        device_groups.extend(args.device_groups);
        let names = config.name_settings();
        Ok(RunOptions {
            interfaces,
            events: merged_events(&config, args.events.as_deref()),
            mode: args.mode,
            config_mode: config.mode,
            indicators,
            device_groups,
            verdict_timeout: Duration::from_millis(
                args.verdict_timeout_ms.unwrap_or(config.verdict_timeout_ms),
            ),
            flow_idle_timeout: Duration::from_secs(config.flow_idle_timeout_s),
            stats: args.stats,
            rt_priority: args.rt_priority.unwrap_or(config.rt_priority),
            state_dir: args.state_dir.unwrap_or(config.state_dir),
            control_socket: args.control_socket.unwrap_or(config.control_socket),
            config_file,
            args: kept,
            proxies: config.proxies.clone(),
            process_cgroup: args.process_cgroup.unwrap_or(config.process_cgroup),
            process_cache: config.process_cache,
            oversized: config.oversized,
            quic: config.quic,
            names,
            prefilter: config.prefilter,
            busy_poll: config
                .ring_poll
                .busy(std::thread::available_parallelism().map_or(1, std::num::NonZero::get)),
            fleet: config.fleet.clone(),
            metrics_listen: args.metrics_listen.or(config.metrics_listen),
            block_page: args.block_page.unwrap_or(config.block_page),
            warn_bypass: args.warn_bypass.unwrap_or(config.warn_bypass),
            notify_socket: config.notify_socket.clone(),
        })
    }
}

/// The config's `[events]` with `--events FILE` laid over `events.file`.
fn merged_events(config: &Config, events_flag: Option<&std::path::Path>) -> EventsConfig {
    let mut events = config.events.clone();
    if let Some(file) = events_flag {
        events.file = Some(file.to_owned());
    }
    events
}

/// The sinks `[events]` asks for: stdout, the (rotating) file, one sender per collector.
///
/// Collector senders are OS threads started here: call this before the verdict loop
/// switches to SCHED_FIFO, so they keep normal scheduling. A collector that cannot be
/// reached does not fail this: its sink queues, reconnects and counts what it drops. A
/// file that cannot be opened does (a misconfigured path is the operator's to fix).
pub fn build_sinks(events: &EventsConfig) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if events.stdout_enabled() {
        sinks.push(Box::new(StdoutSink));
    }
    if let Some(path) = &events.file {
        let keep = usize::try_from(events.file_keep).unwrap_or(usize::MAX);
        let opened = if events.file_max_bytes == 0 {
            FileSink::open(path).map(|s| Box::new(s) as Box<dyn Sink>)
        } else {
            RotatingFileSink::open(path, events.file_max_bytes, keep)
                .map(|s| Box::new(s) as Box<dyn Sink>)
        };
        sinks.push(opened.with_context(|| format!("cannot open event file {}", path.display()))?);
    }
    for c in &events.collector {
        let transport = match c.protocol {
            Protocol::Tcp => Transport::Tcp,
            Protocol::Udp => Transport::Udp,
        };
        let mut config = CollectorConfig::new(transport, &c.address.to_string());
        config.queue = c.buffer_events;
        let sink = CollectorSink::start(config)
            .with_context(|| format!("cannot start the sender for collector {}", c.address))?;
        sinks.push(Box::new(sink));
    }
    if sinks.is_empty() {
        // The config refuses this; a caller building options by hand gets the same answer.
        anyhow::bail!("no event sink: events would go nowhere");
    }
    Ok(sinks)
}

/// Sends an sd_notify(3) message if systemd asked for them; a failure is logged, never
/// fatal (the sensor guards the host whether or not systemd hears about it).
fn notify(state: &str) {
    match sdnotify::notify(state) {
        Ok(_) => {}
        Err(e) => warn!("sd_notify {:?}: {e}", state.lines().next().unwrap_or("")),
    }
}

impl FlowAccount {
    fn new(kernel: &[u64; stat::COUNT as usize], stale_verdicts: u64, hook: Option<u64>) -> Self {
        let k = |i: u32| kernel[i as usize];
        FlowAccount {
            connect_hook_connects: hook,
            tracked: k(stat::FLOWS_NEW),
            tracked_local: k(stat::FLOWS_NEW_LOCAL),
            not_tracked: k(stat::FLOW_INSERT_FAILED),
            midstream: k(stat::FLOWS_MIDSTREAM),
            syn_retransmits: k(stat::SYN_RETRANSMITS),
            superseded: k(stat::FLOWS_SUPERSEDED),
            closed: k(stat::FLOWS_CLOSED),
            expired: k(stat::FLOWS_EXPIRED),
            records_lost: k(stat::CONNECTION_RECORDS_LOST),
            stale_verdicts,
        }
    }
}

impl QuicAccount {
    fn new(kernel: &[u64; stat::COUNT as usize], pipeline: &PipelineStats) -> Self {
        let k = |i: u32| kernel[i as usize];
        QuicAccount {
            flows: k(stat::QUIC_FLOWS),
            restarts: k(stat::QUIC_RESTARTS),
            not_tracked: k(stat::QUIC_NOT_TRACKED),
            inspected: pipeline.quic_inspected,
            invalid: pipeline.quic_invalid,
            gave_up: pipeline.quic_gave_up,
            overflows: pipeline.quic_overflows,
            blocked: k(stat::QUIC_BLOCKED),
            dropped: k(stat::QUIC_DROPPED),
            refused: k(stat::QUIC_REFUSED),
        }
    }
}

/// The live sensor takes verdicts into its kernel map.
impl VerdictTarget for Sensor {
    fn set_verdict(&mut self, key: &FlowKey, verdict: VerdictEntry) -> anyhow::Result<()> {
        Sensor::set_verdict(self, key, verdict).map_err(Into::into)
    }

    fn set_page(&mut self, key: &FlowKey, page: &nprot_common::PageEntry) -> anyhow::Result<()> {
        Sensor::set_page(self, key, page).map_err(Into::into)
    }
}

/// Loads the indicator files (JSON, CSV or lists); all of them or none. Only those for
/// this sensor's `device_groups` are kept; returns them and how many they are.
fn load_files(
    files: &[(PathBuf, Action)],
    device_groups: &[String],
) -> anyhow::Result<(Indicators, usize)> {
    let mut all = Indicators::new();
    for (path, list_action) in files {
        let started = Instant::now();
        let loaded = policy::load_any(path, *list_action)?;
        for warning in &loaded.warnings {
            warn!("{}: {warning}", path.display());
        }
        info!(
            "loaded {} indicators from {} in {:.0?}",
            loaded.indicators.len(),
            path.display(),
            started.elapsed()
        );
        if all.is_empty() {
            all = loaded.indicators;
        } else {
            for ind in loaded.indicators.iter() {
                all.push(&ind.to_indicator())
                    .with_context(|| format!("{}", path.display()))?;
            }
        }
    }
    all.retain_device_groups(device_groups);
    let len = all.len();
    Ok((all, len))
}

/// Puts the calling thread (the verdict loop) under SCHED_FIFO at `priority`.
fn set_realtime(priority: u8) {
    if priority == 0 {
        return;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // By hand: nix has no sched_setscheduler.
    // SAFETY: plain syscall on the calling thread with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) } != 0 {
        warn!(
            "cannot run the verdict loop at SCHED_FIFO priority {priority} ({}); verdicts may lose races against fast servers",
            std::io::Error::last_os_error()
        );
    }
}

/// Feeds a record put off in the backlog through the pipeline. It decoded when it was put
/// off; should it not now, it is counted with the undecodable ones.
fn handle_put_off(
    pipeline: &mut Pipeline,
    verdicts: &mut dyn VerdictTarget,
    decode_errors: &mut u64,
    bytes: &[u8],
) {
    match Record::decode(bytes) {
        Ok(rec) => pipeline.on_record(&rec, verdicts),
        Err(e) => {
            *decode_errors += 1;
            warn!("undecodable ring-buffer record: {e}");
        }
    }
}

/// The kernel settings for a mode, with `prefilter` (the pre-filter's bits, block mode
/// only: [`Prefilter::bits`]).
fn kernel_config(mode: Mode, opts: &RunOptions, prefilter: u8) -> SensorConfig {
    SensorConfig {
        capture: u8::from(mode != Mode::Disabled),
        hold: u8::from(mode == Mode::Block),
        capture_flow_max: CAPTURE_FLOW_MAX_DEFAULT,
        verdict_timeout_ns: opts.verdict_timeout.as_nanos() as u64,
        flow_idle_timeout_ns: opts.flow_idle_timeout.as_nanos() as u64,
        quic: opts.quic as u8,
        dns_block: u8::from(mode == Mode::Block),
        prefilter: if mode == Mode::Block { prefilter } else { 0 },
        ..SensorConfig::default()
    }
}

impl NameMap for Sensor {
    fn put(&mut self, hash: u64, value: u8) -> anyhow::Result<()> {
        Ok(self.set_dns_name(hash, value)?)
    }
    fn remove(&mut self, hash: u64) -> anyhow::Result<()> {
        Ok(self.remove_dns_name(hash)?)
    }
}

impl SummaryTarget for Sensor {
    fn load_prefilter(&mut self) -> Result<(), String> {
        Sensor::load_prefilter(self).map_err(|e| e.to_string())
    }
    fn write_prefilter(&mut self, buffer: u8, filter: &Filter) -> Result<(), String> {
        Sensor::write_prefilter(self, buffer, filter).map_err(|e| e.to_string())
    }
}

/// What the control handlers need of the kernel side: the live [`Sensor`], or a stand-in
/// in tests (which run without root and without eBPF). Its [`NameMap`] is `DNS_NAMES`,
/// its [`SummaryTarget`] the pre-filter's maps.
trait Kernel: NameMap + SummaryTarget {
    /// Writes the kernel's settings (a mode change).
    fn set_config(&mut self, config: SensorConfig) -> Result<(), String>;
    /// The guarded interfaces and how each is attached.
    fn interfaces(&self) -> &[(String, &'static str)];
    /// The kernel's counters, `None` if they cannot be read.
    fn counters(&self) -> Option<[u64; stat::COUNT as usize]>;
    /// Verdicts removed so far because their flow had ended.
    fn stale_verdict_count(&self) -> u64;
}

impl Kernel for Sensor {
    fn set_config(&mut self, config: SensorConfig) -> Result<(), String> {
        self.configure(config).map_err(|e| e.to_string())
    }
    fn interfaces(&self) -> &[(String, &'static str)] {
        &self.attached
    }
    fn counters(&self) -> Option<[u64; stat::COUNT as usize]> {
        self.kernel_stats().ok()
    }
    fn stale_verdict_count(&self) -> u64 {
        self.stale_verdicts
    }
}

/// The running sensor: everything the verdict loop and the control socket act on. The
/// control handlers work on any [`Kernel`]; the verdict loop needs the [`Sensor`].
struct Daemon<K = Sensor> {
    opts: RunOptions,
    sensor: K,
    pipeline: Pipeline,
    fanout: Fanout,
    state: State,
    mode: Mode,
    /// How many of the policy's indicators come from the files (they come first): a
    /// change of the run-time ones re-merges that prefix, so that the files' indicators
    /// are held once, in the policy, not twice.
    file_len: usize,
    indicator_load: Duration,
    decode_errors: u64,
    reported_drops: u64,
    housekeeping_rounds: u32,
    started: Instant,
    /// Process attribution, when the connect hooks are attached.
    attribution: Option<Attributing>,
    /// What the kernel's DNS name map holds (DNS blocking, block mode).
    dns_block: DnsBlock,
    /// What the kernel pre-filter's summary holds (block mode).
    prefilter: Prefilter,
    /// Records put off behind those a verdict waits for.
    backlog: Backlog,
    /// The fleet policy in force (empty without `[fleet]`).
    fleet: FleetPolicy,
    /// The running link to the fleet.
    fleet_link: Option<SensorLink>,
    /// Refused fleet keys already logged, with their reason.
    fleet_reported: HashMap<String, String>,
    /// The `/metrics` endpoint.
    metrics: Option<MetricsServer>,
}

/// The running process attribution: its thread, its tables and the hooks' counters.
struct Attributing {
    resolver: Resolver,
    counters: HookCounters,
    _thread: AttributionThread,
}

/// Attaches the connect hooks and starts the attribution thread, or says in one line
/// why flows will carry no process.
fn start_attribution(
    sensor: &mut Sensor,
    pipeline: &mut Pipeline,
    opts: &RunOptions,
) -> Option<Attributing> {
    let opened = match &opts.process_cgroup {
        ProcessCgroup::Off => {
            info!("process attribution off (process_cgroup = off)");
            return None;
        }
        ProcessCgroup::Path(p) => std::fs::File::open(p)
            .map(|f| (f, p.display().to_string()))
            .map_err(|e| format!("cannot open {}: {e}", p.display())),
        ProcessCgroup::Auto => open_cgroup2_root(),
    };
    let hooks = opened.and_then(|(dir, shown)| {
        sensor
            .attach_connect_hooks(&dir, &shown)
            .map(|hooks| (hooks, shown))
    });
    let (
        ConnectHooks {
            connects,
            owners,
            counters,
        },
        cgroup,
    ) = match hooks {
        Ok(hooks) => hooks,
        Err(e) => {
            warn!("process attribution off: {e}; events carry no InitiatingProcess columns");
            return None;
        }
    };
    let resolver = Resolver::new(std::path::Path::new("/proc"), opts.process_cache);
    // The verdict loop never asks the user database; the usual account is known up front.
    resolver.warm_account(0);
    let thread = match AttributionThread::start(connects, resolver.clone(), opts.rt_priority) {
        Ok(t) => t,
        Err(e) => {
            warn!("process attribution off: cannot start its thread: {e}");
            return None;
        }
    };
    pipeline.set_processes(Box::new(Attribution::new(resolver.clone(), owners)));
    info!("process attribution: connect hooks on {cgroup}");
    Some(Attributing {
        resolver,
        counters,
        _thread: thread,
    })
}

/// Runs the sensor until SIGINT or SIGTERM; everything is detached when it returns.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // Sinks first: collector senders are threads, and must be spawned before this thread
    // goes SCHED_FIFO (threads inherit the policy).
    let mut sinks = build_sinks(&opts.events)?;
    // The fleet's thread too, and its events go to the stream through an outbox.
    let fleet_link = match &opts.fleet {
        Some(config) => {
            let outbox = Outbox::new(config.event_buffer);
            sinks.push(Box::new(OutboxSink::new(
                outbox.clone(),
                format!("fleet stream {EVENTS_SUBJECT}.{}", config.device_name()),
            )));
            let link = SensorLink::start(config.clone(), Some(outbox))?;
            info!(
                "fleet: device {} at {}",
                link.device(),
                config.servers.join(", ")
            );
            Some(link)
        }
        None => None,
    };
    for sink in &sinks {
        info!("events to {}", sink.describe());
    }
    let agents = match &opts.notify_socket {
        Some(path) => {
            let (server, sink) = NotifyServer::start(path)?;
            sinks.push(Box::new(sink));
            info!("desktop agents on {}", path.display());
            Some(server)
        }
        None => None,
    };
    let fanout = Fanout::new(sinks);
    let metrics = match opts.metrics_listen {
        Some(addr) => {
            let server = MetricsServer::start(addr)?;
            info!("metrics on http://{addr}/metrics");
            Some(server)
        }
        None => None,
    };

    // Bad indicator files or state stop the start: no sensor with half a policy.
    let state = State::load(&opts.state_dir)?;
    // The fleet policy last applied: enforced from the start, NATS or not.
    let mut fleet = FleetPolicy::load(&opts.state_dir, &opts.device_groups)?;
    if !fleet.is_empty() {
        info!(
            "fleet: {} keys of revision {} from {}",
            fleet.len(),
            fleet.revision(),
            opts.state_dir.display()
        );
    }
    let mode = effective_mode(&opts, &state, &fleet);
    let load_started = Instant::now();
    let (files, file_len) = load_files(&opts.indicators, &opts.device_groups)?;
    let policy = Policy::new(compose(&state, files, &mut fleet)?, &opts.device_groups);
    let indicator_load = load_started.elapsed();

    // Signals first: a SIGTERM during start-up must still detach cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;

    let (calls_tx, mut calls) = mpsc::channel(16);
    let _socket = socket::serve(&opts.control_socket, calls_tx)?;

    let attach = if opts.args.force_clsact {
        TcAttach::Clsact
    } else {
        TcAttach::Auto
    };
    let mut sensor = Sensor::start(&opts.interfaces, kernel_config(mode, &opts, 0), attach)?;
    let ring = sensor.take_records().context("ring buffer already taken")?;
    // SAFETY: the AsyncFd owns the ring buffer, so the fd outlives its registration.
    let mut ring: AsyncFd<RingBuf<MapData>> =
        unsafe { AsyncFd::register(ring) }.context("registering the ring buffer with tokio")?;
    let mut pipeline = Pipeline::new(
        EventFactory::for_this_host(),
        crate::datapath::pipeline::STREAM_LIMIT,
        Arc::new(policy),
        mode,
    );
    pipeline.set_known_proxies(opts.proxies.clone());
    pipeline.set_flow_idle_timeout(opts.flow_idle_timeout.as_nanos() as u64);
    pipeline.set_oversized(opts.oversized);
    pipeline.set_name_settings(opts.names.clone());
    pipeline.pages.enabled = opts.block_page == config::BlockPage::Page;
    pipeline.pages.user_bypass = opts.warn_bypass == config::WarnBypass::User;
    let attribution = start_attribution(&mut sensor, &mut pipeline, &opts);
    let guarded: Vec<String> = sensor
        .attached
        .iter()
        .map(|(i, m)| format!("{i} ({m})"))
        .collect();
    let mut daemon = Daemon {
        opts,
        sensor,
        pipeline,
        fanout,
        state,
        mode,
        file_len,
        indicator_load,
        decode_errors: 0,
        reported_drops: 0,
        housekeeping_rounds: 0,
        started: Instant::now(),
        attribution,
        dns_block: DnsBlock::default(),
        prefilter: Prefilter::default(),
        backlog: Backlog::default(),
        fleet,
        fleet_link,
        fleet_reported: HashMap::new(),
        metrics,
    };
    daemon.sync_summaries();
    daemon.publish_metrics();
    daemon.beat();
    // The daemon takes the link's updates in its loop; a sensor without a fleet waits on
    // a channel nobody sends on.
    let (_no_fleet, no_updates) = mpsc::channel(1);
    let mut fleet_updates = daemon.fleet_link.as_mut().map_or(no_updates, |l| {
        std::mem::replace(&mut l.updates, mpsc::channel(1).1)
    });
    let (_no_agents, no_requests) = mpsc::channel(1);
    let mut allow_requests = agents.map_or(no_requests, |n| n.requests);
    // Ready once the kernel holds what it needs of the policy (DNS names, the
    // pre-filter's summary).
    info!(
        "nprot ready: guarding {} in {} mode; control socket {}",
        guarded.join(", "),
        daemon.mode,
        daemon.opts.control_socket.display()
    );
    // The programs are attached and the control socket is up.
    let status = format!("guarding {} in {} mode", guarded.join(", "), daemon.mode);
    notify(&format!("READY=1\nSTATUS={status}"));
    let watchdog = sdnotify::watchdog_interval();
    if let Some(every) = watchdog {
        info!("systemd watchdog: WATCHDOG=1 every {every:?}");
    }

    daemon.refresh_local_addrs();
    let busy = daemon.opts.busy_poll;
    if busy {
        // A spinning SCHED_FIFO thread would starve whatever shares its core.
        info!("the verdict loop busy-polls the ring buffer, at normal priority");
    } else {
        set_realtime(daemon.opts.rt_priority);
    }
    let mut tick = interval(DRAIN);
    let mut ticks = 0u32;
    let mut last_watchdog = Instant::now();
    loop {
        tokio::select! {
            guard = ring.readable_mut(), if !busy => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                daemon.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            // Busy polling: drain, then yield, which lets the runtime poll its other
            // sources (socket, signals, timers) without sleeping, and come straight back.
            () = tokio::task::yield_now(), if busy => {
                daemon.drain(ring.get_mut());
            }
            _ = tick.tick() => {
                daemon.drain(ring.get_mut());
                ticks += 1;
                if ticks.is_multiple_of(HOUSEKEEPING_TICKS) {
                    daemon.housekeeping();
                }
                // From the verdict loop itself: a loop that stalls stops the pings.
                if let Some(every) = watchdog
                    && last_watchdog.elapsed() >= every
                {
                    notify("WATCHDOG=1");
                    last_watchdog = Instant::now();
                }
            }
            Some((request, reply)) = calls.recv() => {
                let _ = reply.send(daemon.handle(request));
            }
            Some(update) = fleet_updates.recv() => daemon.apply_fleet(update),
            Some(request) = allow_requests.recv() => daemon.user_bypass(request),
            _ = sighup.recv() => {
                notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_ns() / 1000));
                daemon.reload();
                notify(&format!("READY=1\nSTATUS=guarding {} in {} mode", guarded.join(", "), daemon.mode));
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    notify("STOPPING=1\nSTATUS=detaching");
    // What is already in the ring still gets reported; collectors get their close time
    // to deliver what they hold, and the totals include what they could not.
    daemon.drain(ring.get_mut());
    daemon.fanout.close();
    if let Some(link) = &mut daemon.fleet_link {
        let lost = link.stop(Instant::now() + Duration::from_secs(2));
        if lost > 0 {
            warn!("fleet: {lost} events not delivered to the stream before the stop");
        }
    }
    daemon.report_totals();
    if let Some(path) = daemon.opts.stats.clone() {
        let json = serde_json::to_vec_pretty(&daemon.report())?;
        std::fs::write(&path, json)
            .with_context(|| format!("cannot write stats to {}", path.display()))?;
    }
    drop(ring);
    drop(daemon);
    info!("nprot stopped: programs detached");
    Ok(())
}

impl Daemon {
    /// Feeds every record in the ring through the pipeline and publishes the events:
    /// those a verdict waits for at once, the others (put off in the backlog) in chunks
    /// between looks at the ring, each flow's records in ring order.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        loop {
            while let Some(item) = ring.next() {
                match Record::decode(&item) {
                    Ok(rec) => {
                        let (pipeline, sensor) = (&mut self.pipeline, &mut self.sensor);
                        let decode_errors = &mut self.decode_errors;
                        let first =
                            self.backlog
                                .admit(rec.tuple.key(), rec.awaited(), &item, |b| {
                                    handle_put_off(pipeline, sensor, decode_errors, b);
                                });
                        if first {
                            self.pipeline.on_record(&rec, &mut self.sensor);
                            if !self.pipeline.grants.is_empty() {
                                self.grant_continues();
                            }
                        }
                    }
                    Err(e) => {
                        self.decode_errors += 1;
                        warn!("undecodable ring-buffer record: {e}");
                    }
                }
            }
            let (pipeline, sensor) = (&mut self.pipeline, &mut self.sensor);
            let decode_errors = &mut self.decode_errors;
            let more = self.backlog.handle_oldest(BACKLOG_CHUNK, |b| {
                handle_put_off(pipeline, sensor, decode_errors, b);
            });
            if !self.pipeline.grants.is_empty() {
                self.grant_continues();
            }
            if !more {
                break;
            }
        }
        self.fanout.publish(&mut self.pipeline.events);
    }

    /// Grants the bypasses Continue links asked for (if users may bypass), then lets the
    /// redirects that answer the links go: the next load already passes.
    fn grant_continues(&mut self) {
        for granted in std::mem::take(&mut self.pipeline.grants) {
            let by = granted
                .account
                .clone()
                .unwrap_or_else(|| granted.grant.client.to_string());
            if self.opts.warn_bypass == config::WarnBypass::User {
                let grant = Grant {
                    via: GrantedVia::ContinueLink,
                    by: Some(by.clone()),
                };
                if let Err(e) = self.bypass(&granted.grant.target, None, grant) {
                    info!(
                        "Continue link of {} followed by {by}: {e}",
                        granted.grant.target
                    );
                }
            }
            self.pipeline.deliver_granted(&granted, &mut self.sensor);
        }
    }

    fn refresh_local_addrs(&mut self) {
        match capture::local_addrs() {
            Ok(addrs) => self.pipeline.set_local_addrs(addrs),
            Err(e) => warn!("cannot list this host's addresses: {e}"),
        }
    }

    fn housekeeping(&mut self) {
        self.housekeeping_rounds += 1;
        self.beat();
        self.publish_metrics();
        if self.housekeeping_rounds.is_multiple_of(VERDICT_SWEEP_EVERY) {
            let n = self.sensor.sweep_stale_verdicts(VERDICT_STALE);
            if n > 0 {
                debug!("removed {n} verdicts whose flows ended before picking them up");
            }
        }
        self.refresh_local_addrs();
        let now = SystemTime::now();
        if self.dns_block.due(now) || self.prefilter.due(now) {
            self.sync_summaries();
        }
        self.pipeline
            .expire(monotonic_ns(), STREAM_IDLE.as_nanos() as u64);
        if let Ok(k) = self.sensor.kernel_stats() {
            let drops = k[stat::RINGBUF_DROPS as usize];
            if drops > self.reported_drops {
                warn!(
                    "ring buffer full: {} records lost ({drops} in all)",
                    drops - self.reported_drops
                );
                self.reported_drops = drops;
            }
        }
    }
}

impl<K: Kernel> Daemon<K> {
    fn report(&mut self) -> RunReport {
        let kernel = self.sensor.counters();
        let hook = self.attribution.as_ref().map(|a| a.counters.get());
        RunReport {
            mode: self.mode,
            indicators: self.pipeline.policy().len(),
            indicator_load_ms: self.indicator_load.as_secs_f64() * 1e3,
            verdict_latency: LatencySummary::from(&self.pipeline.verdict_latency),
            wake_latency: LatencySummary::from(&self.pipeline.wake_latency),
            pipeline: self.pipeline.stats(),
            kernel: kernel
                .map(|k| stat::NAMES.iter().map(|n| (*n).to_owned()).zip(k).collect())
                .unwrap_or_default(),
            flows: kernel
                .map(|k| FlowAccount::new(&k, self.sensor.stale_verdict_count(), hook.map(|h| h.0)))
                .unwrap_or_default(),
            quic: kernel
                .map(|k| QuicAccount::new(&k, &self.pipeline.stats()))
                .unwrap_or_default(),
            prefilter: self.prefilter.report.clone(),
            busy_poll: self.opts.busy_poll,
            fleet: self.fleet_link.as_ref().map(|link| {
                let mut v = link.stats();
                v["revision"] = self.fleet.revision().into();
                v["keys"] = self.fleet.len().into();
                v["refused"] = serde_json::json!(self.fleet.refused());
                v["mode"] = serde_json::json!(self.fleet.mode().map(|(m, k)| (m.as_str(), k)));
                v
            }),
            events_written: self.fanout.written,
            events_dropped: self.fanout.dropped(),
            sinks: self.fanout.sink_stats(),
            decode_errors: self.decode_errors,
            attribution: self.attribution.as_ref().map(|a| {
                let (kernel_connects, kernel_ring_drops) = hook.unwrap_or_default();
                AttributionReport {
                    stats: a.resolver.stats(),
                    kernel_connects,
                    kernel_ring_drops,
                }
            }),
        }
    }

    /// Answers one control request. Changes are persisted before they are applied, so
    /// what runs is always what a restart would bring back.
    fn handle(&mut self, request: Request) -> Response {
        let reply = match request {
            Request::Status => Ok(Response::reply(&self.status())),
            Request::Stats => Ok(Response::reply(&self.report())),
            Request::Mode { mode } => self.set_mode(&mode).map(|r| Response::reply(&r)),
            Request::IndicatorAdd { json } => self
                .add_indicators(&json, "json", None)
                .map(|r| Response::reply(&r)),
            Request::IndicatorImport {
                format,
                text,
                action,
            } => self
                .add_indicators(&text, &format, action.as_deref())
                .map(|r| Response::reply(&r)),
            Request::IndicatorRemove { ids } => {
                self.remove_indicators(&ids).map(|r| Response::reply(&r))
            }
            Request::Bypass { target, for_secs } => {
                let grant = Grant {
                    via: GrantedVia::Admin,
                    by: None,
                };
                self.bypass(&target, Some(for_secs), grant)
                    .map(|r| Response::reply(&r))
            }
            // The indicator file format, serialised straight from the policy (it may
            // hold millions); the CLI reads it as `protocol::IndicatorList`.
            Request::IndicatorList => Ok(Response::reply(self.pipeline.policy().indicators())),
        };
        reply.unwrap_or_else(Response::error)
    }

    fn status(&self) -> StatusReply {
        StatusReply {
            mode: self.mode,
            interfaces: self
                .sensor
                .interfaces()
                .iter()
                .map(|(name, attach)| InterfaceStatus {
                    name: name.clone(),
                    attach: (*attach).to_owned(),
                })
                .collect(),
            indicators: self.pipeline.policy().len(),
            runtime_indicators: self.state.indicators.len(),
            indicator_files: self.opts.indicators.clone(),
            state_dir: self.opts.state_dir.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            pid: std::process::id(),
        }
    }

    fn set_mode(&mut self, mode: &str) -> Result<ModeReply, String> {
        let mode: Mode = mode.parse()?;
        if let Some((_, key)) = self.fleet.mode() {
            return Err(format!(
                "the mode is set by the fleet ({key}): change it with `nprot fleet mode`"
            ));
        }
        let mut next = self.state.clone();
        next.mode = Some(mode);
        // The kernel first: a mode it refuses must not come back from the state file at
        // the next start. If saving fails, the kernel goes back to the running mode.
        let bits = self.prefilter.bits();
        self.sensor
            .set_config(kernel_config(mode, &self.opts, bits))?;
        if let Err(e) = next.save(&self.opts.state_dir) {
            let config = kernel_config(self.mode, &self.opts, bits);
            if let Err(back) = self.sensor.set_config(config) {
                warn!("mode {mode} not saved, and the kernel keeps it: {back}");
            }
            return Err(e.to_string());
        }
        self.state = next;
        self.mode = mode;
        self.pipeline.set_mode(mode);
        self.sync_summaries();
        info!("mode set to {mode}");
        Ok(ModeReply { mode })
    }

    fn add_indicators(
        &mut self,
        text: &str,
        format: &str,
        list_action: Option<&str>,
    ) -> Result<AddedReply, String> {
        let list_action = match list_action {
            Some(a) => Action::from_name(a).ok_or_else(|| format!("unknown action '{a}'"))?,
            None => Action::Block,
        };
        let loaded = match format {
            "json" => load_json(text),
            "csv" => policy::load_defender_csv(text),
            "list" => policy::load_list(text, list_action),
            other => return Err(format!("unknown indicator format '{other}'")),
        }
        .map_err(|e| e.to_string())?;
        let mut indicators: Vec<_> = loaded.indicators.iter().map(|i| i.to_indicator()).collect();
        let from_files = self.claimed_by_files(&indicators)?;
        indicators.retain(|i| !from_files.contains(&i.id));
        let mut next = self.state.clone();
        let mut done = next.upsert(indicators);
        done.unchanged += from_files.len();
        self.apply_state(next)?;
        for id in &done.replaced {
            info!("indicator {id} replaced through the control socket");
        }
        info!(
            "{} indicators added, {} replaced through the control socket",
            done.added,
            done.replaced.len()
        );
        Ok(AddedReply {
            added: done.added,
            unchanged: done.unchanged,
            replaced: done.replaced.len(),
            replaced_ids: done.replaced,
            warnings: loaded.warnings,
        })
    }

    /// The ids of `incoming` that an indicator file defines, each with the same row (an
    /// export imported again: nothing to add). A different row under a file's id is
    /// refused: the file is where that indicator is changed, and two rows with one id
    /// would make the next export unloadable.
    fn claimed_by_files(&self, incoming: &[Indicator]) -> Result<HashSet<String>, String> {
        let by_id: HashMap<&str, &Indicator> =
            incoming.iter().map(|i| (i.id.as_str(), i)).collect();
        let mut same = HashSet::new();
        for file_row in self
            .pipeline
            .policy()
            .indicators()
            .iter()
            .take(self.file_len)
        {
            let Some(new) = by_id.get(file_row.id()) else {
                continue;
            };
            if **new != file_row.to_indicator() {
                return Err(format!(
                    "indicator {} is defined by an indicator file; change it there, or give the new one another id",
                    file_row.id()
                ));
            }
            same.insert(file_row.id().to_owned());
        }
        Ok(same)
    }

    /// A bypass of a Warn: an Allowed indicator for `target` that expires after
    /// `for_secs` (`nprot bypass`), or a user's, after the Warn indicator's
    /// `bypass_duration_s` (else [`DEFAULT_BYPASS`]).
    /// Allowed beats Warn among equally specific indicators, so the warned target passes
    /// until then; a target that is blocked, not warned, cannot be bypassed.
    fn bypass(
        &mut self,
        target: &str,
        for_secs: Option<u64>,
        grant: Grant,
    ) -> Result<BypassReply, String> {
        let kind = if target.contains("://") {
            IndicatorType::Url
        } else if target.parse::<IpAddr>().is_ok() || target.contains('/') {
            IndicatorType::IpAddress
        } else {
            IndicatorType::DomainName
        };
        let mut allow = Indicator::new(kind, target, Action::Allowed).map_err(|e| e.to_string())?;
        let subject_host;
        let subject = match &allow.target {
            Target::Ip(net) => Subject {
                ip: net.addr(),
                host: None,
                http_path: None,
            },
            Target::Domain(d) => {
                subject_host = d.clone();
                Subject {
                    ip: IpAddr::from([0u8, 0, 0, 0]),
                    host: Some(&subject_host),
                    http_path: None,
                }
            }
            Target::Url { host, path, https } => Subject {
                ip: IpAddr::from([0u8, 0, 0, 0]),
                host: Some(host),
                http_path: (!https).then_some(path.as_str()),
            },
        };
        let now = SystemTime::now();
        let policy = self.pipeline.policy();
        let (warned_by, for_secs) = match policy.decide(&subject, now).winner {
            Some(w) if w.action() == Action::Warn => {
                let for_secs = for_secs.unwrap_or_else(|| {
                    w.bypass_duration_s()
                        .map_or(DEFAULT_BYPASS.as_secs(), u64::from)
                });
                ((w.id().to_owned(), w.value().to_owned()), for_secs)
            }
            Some(w) => {
                return Err(format!(
                    "{target} is not warned but decided by {:?} indicator {}; only Warn indicators can be bypassed",
                    w.action(),
                    w.id()
                ));
            }
            None => return Err(format!("no Warn indicator matches {target}")),
        };
        let until = now + Duration::from_secs(for_secs);
        allow.id = format!("bypass:{target}");
        allow.expiration = Some(until);
        allow.title = Some(format!("bypass of {}", warned_by.0));
        let mut next = self.state.clone();
        next.upsert(vec![allow]);
        self.apply_state(next)?;
        let id = format!("bypass:{target}");
        self.pipeline
            .log(|f| f.bypass(target, (&warned_by.0, &warned_by.1), &id, until, grant));
        self.fanout.publish(&mut self.pipeline.events);
        info!(
            "{target} bypassed for {for_secs} s (Warn indicator {})",
            warned_by.0
        );
        Ok(BypassReply {
            id,
            until: rfc3339_micros(until),
            warned_by: warned_by.0,
        })
    }

    /// A desktop agent's Allow on a Warn prompt: granted if `warn_bypass = "user"`, for
    /// the warning indicator's bypass duration, and logged with the agent's account.
    fn user_bypass(&mut self, request: AllowRequest) {
        let answer = if self.opts.warn_bypass == config::WarnBypass::User {
            let grant = Grant {
                via: GrantedVia::DesktopPrompt,
                by: Some(request.account.clone()),
            };
            self.bypass(&request.target, None, grant)
                .map(|r| format!("{} allowed until {}", request.target, r.until))
        } else {
            Err("bypasses need an administrator here (warn_bypass = \"admin\")".to_owned())
        };
        if let Err(e) = &answer {
            info!(
                "bypass of {} asked by {} (uid {}) refused: {e}",
                request.target, request.account, request.uid
            );
        }
        let _ = request.reply.send(answer);
    }

    fn remove_indicators(&mut self, ids: &[String]) -> Result<RemovedReply, String> {
        let mut next = self.state.clone();
        let missing = next.remove(ids);
        if missing.len() == ids.len() {
            return Err(format!(
                "no run-time indicator with id {}",
                missing.join(", ")
            ));
        }
        self.apply_state(next)?;
        Ok(RemovedReply {
            removed: ids.len() - missing.len(),
            not_found: missing,
        })
    }

    /// Builds the policy for `next`, persists `next`, then switches to both.
    fn apply_state(&mut self, next: State) -> Result<(), String> {
        let mut files = self.pipeline.policy().indicators().clone();
        files.truncate(self.file_len);
        let mut fleet = self.fleet.clone();
        let merged = compose(&next, files, &mut fleet).map_err(|e| e.to_string())?;
        let policy = Policy::new(merged, &self.opts.device_groups);
        next.save(&self.opts.state_dir).map_err(|e| e.to_string())?;
        self.fleet = fleet;
        self.state = next;
        self.pipeline.set_policy(Arc::new(policy));
        self.sync_summaries();
        Ok(())
    }

    /// Brings what the kernel holds of the policy (the DNS name map, the pre-filter's
    /// summary) to the running policy and mode: on every policy or mode change, and when
    /// an indicator in either expires. Both are done before the change is answered.
    fn sync_summaries(&mut self) {
        self.sync_dns_names();
        self.sync_prefilter();
    }

    /// Writes the pre-filter's summary of the running policy into the buffer not in
    /// force, then points the kernel at it (block mode, `prefilter = "on"`); otherwise
    /// switches the pre-filter off. A summary that cannot be written switches it off too:
    /// a stale one never stays in force.
    fn sync_prefilter(&mut self) {
        if self.mode != Mode::Block || !self.opts.prefilter {
            if self.prefilter.bits() != 0 {
                self.prefilter_off(false);
            }
            return;
        }
        let names = &self.opts.names;
        let ech = names.ech == EchAction::Block || names.dns_names == DnsNames::Enforce;
        let now = SystemTime::now();
        let result = self
            .prefilter
            .stage(&mut self.sensor, self.pipeline.policy(), ech, now)
            .and_then(|(buffer, bits)| {
                let config = kernel_config(self.mode, &self.opts, bits);
                self.sensor.set_config(config).map(|()| buffer)
            });
        match result {
            Ok(buffer) => {
                self.prefilter.in_force(buffer);
                let r = &self.prefilter.report;
                debug!(
                    "kernel pre-filter: {} indicators in buffer {buffer} ({:.1} ms)",
                    r.keys, r.rebuild_ms
                );
            }
            Err(e) => {
                warn!("kernel pre-filter switched off, every flow waits for the daemon: {e}");
                self.prefilter_off(true);
            }
        }
    }

    /// Clears the pre-filter's bits in the kernel (after an error, counted, if `error`).
    fn prefilter_off(&mut self, error: bool) {
        self.prefilter.off(error);
        if let Err(e) = self
            .sensor
            .set_config(kernel_config(self.mode, &self.opts, 0))
        {
            warn!("cannot switch the kernel pre-filter off: {e}");
        }
    }

    /// Writes the kernel's DNS name map for the running policy and mode (every policy
    /// or mode change, and when an indicator in it expires).
    fn sync_dns_names(&mut self) {
        self.dns_block.sync(
            &mut self.sensor,
            self.pipeline.policy(),
            self.mode,
            SystemTime::now(),
        );
        debug!("DNS name map: {} names", self.dns_block.len());
    }

    /// SIGHUP: re-reads the config file (indicator sources, device groups, mode) and the
    /// indicator files. Anything invalid keeps the running state and says why.
    fn reload(&mut self) {
        let started = Instant::now();
        let mut opts = self.opts.clone();
        let result = (|| -> anyhow::Result<(usize, Policy)> {
            if let Some(path) = &self.opts.config_file {
                let config = Config::load(path)?;
                let fresh = RunOptions::merge(self.opts.args.clone(), Some(path.clone()), config)?;
                let running = &self.opts;
                if (&fresh.interfaces, &fresh.state_dir, &fresh.control_socket)
                    != (
                        &running.interfaces,
                        &running.state_dir,
                        &running.control_socket,
                    )
                {
                    warn!("interfaces, state_dir and control_socket change only on restart");
                }
                if fresh.events != running.events {
                    warn!("[events] changed: sinks are not rebuilt on reload; restart to apply");
                }
                // What a reload applies; everything else is read at start only.
                opts.indicators = fresh.indicators;
                opts.device_groups = fresh.device_groups;
                opts.config_mode = fresh.config_mode;
                opts.proxies = fresh.proxies;
                opts.oversized = fresh.oversized;
                opts.quic = fresh.quic;
                opts.prefilter = fresh.prefilter;
                opts.block_page = fresh.block_page;
                opts.warn_bypass = fresh.warn_bypass;
            }
            let (files, file_len) = load_files(&opts.indicators, &opts.device_groups)?;
            let mut fleet = self.fleet.clone();
            let merged = compose(&self.state, files, &mut fleet)?;
            self.fleet = fleet;
            Ok((file_len, Policy::new(merged, &opts.device_groups)))
        })();
        match result {
            Ok((file_len, policy)) => {
                self.file_len = file_len;
                info!(
                    "reloaded: {} indicators in force ({:.0?})",
                    policy.len(),
                    started.elapsed()
                );
                self.pipeline.set_policy(Arc::new(policy));
                self.pipeline.set_known_proxies(opts.proxies.clone());
                self.pipeline.set_oversized(opts.oversized);
                self.pipeline.set_name_settings(opts.names.clone());
                self.pipeline.pages.enabled = opts.block_page == config::BlockPage::Page;
                self.pipeline.pages.user_bypass = opts.warn_bypass == config::WarnBypass::User;
                let mode = effective_mode(&opts, &self.state, &self.fleet);
                let quic_changed = opts.quic != self.opts.quic;
                self.opts = opts;
                if mode != self.mode || quic_changed {
                    let config = kernel_config(mode, &self.opts, self.prefilter.bits());
                    match self.sensor.set_config(config) {
                        Ok(()) => {
                            if mode != self.mode {
                                self.mode = mode;
                                self.pipeline.set_mode(mode);
                                info!("mode set to {mode} by the config");
                            }
                            if quic_changed {
                                info!("quic set to {}", config::quic_str(self.opts.quic));
                            }
                        }
                        Err(e) => warn!("mode or quic from the config not applied: {e}"),
                    }
                }
                self.sync_summaries();
            }
            Err(e) => warn!("reload refused, the running policy stays: {e:#}"),
        }
    }
}

impl<K: Kernel> Daemon<K> {
    /// Applies what the fleet's bucket holds now: the policy is rebuilt and swapped, the
    /// mode follows the fleet's, and what was applied is persisted; a refused key is
    /// logged once per value and keeps its last good value.
    fn apply_fleet(&mut self, update: Update) {
        let started = Instant::now();
        // Applied to a copy: the fleet's state changes only with the policy it makes.
        let mut fleet = self.fleet.clone();
        let changed = match update {
            Update::Snapshot { changes, revision } => fleet.replace(&changes, revision),
            Update::Changes(changes) => fleet.apply(&changes),
        };
        if changed {
            let mut files = self.pipeline.policy().indicators().clone();
            files.truncate(self.file_len);
            match compose(&self.state, files, &mut fleet) {
                Ok(merged) => {
                    self.fleet = fleet;
                    let policy = Policy::new(merged, &self.opts.device_groups);
                    self.pipeline.set_policy(Arc::new(policy));
                }
                Err(e) => warn!("fleet: policy not applied: {e}"),
            }
            let mode = effective_mode(&self.opts, &self.state, &self.fleet);
            if mode != self.mode {
                match self
                    .sensor
                    .set_config(kernel_config(mode, &self.opts, self.prefilter.bits()))
                {
                    Ok(()) => {
                        self.mode = mode;
                        self.pipeline.set_mode(mode);
                        info!("mode set to {mode} by the fleet");
                    }
                    Err(e) => warn!("fleet: mode {mode} not applied: {e}"),
                }
            }
            self.sync_summaries();
            info!(
                "fleet: revision {} applied, {} keys, {} indicators in force ({:.0?})",
                self.fleet.revision(),
                self.fleet.len(),
                self.pipeline.policy().len(),
                started.elapsed()
            );
        } else {
            // Nothing in force changed; the revision seen and the refusals did.
            self.fleet = fleet;
        }
        if let Err(e) = self.fleet.save(&self.opts.state_dir) {
            warn!("fleet: cannot persist the applied policy: {e}");
        }
        for (key, why) in self.fleet.refused() {
            if self.fleet_reported.get(key) != Some(why) {
                warn!("fleet: {key} refused, its last good value stays: {why}");
                self.fleet_reported.insert(key.clone(), why.clone());
            }
        }
        let refused = self.fleet.refused();
        self.fleet_reported.retain(|k, _| refused.contains_key(k));
        self.beat();
    }

    /// Tells the fleet link what the next heartbeat says.
    fn beat(&self) {
        let Some(link) = &self.fleet_link else {
            return;
        };
        let stats = self.pipeline.stats();
        let kernel = self.sensor.counters();
        let flows = kernel.map_or(0, |k| k[stat::FLOWS_NEW as usize]);
        link.set_heartbeat(serde_json::json!({
            "groups": self.opts.device_groups,
            "revision": self.fleet.revision(),
            "mode": self.mode.as_str(),
            "fleet_mode": self.fleet.mode().map(|(_, k)| k),
            "indicators": self.pipeline.policy().len(),
            "fleet_keys": self.fleet.len(),
            "refused": self.fleet.refused().len(),
            "counters": {
                "flows": flows,
                "blocked": stats.blocked,
                "events_written": self.fanout.written,
                "events_dropped": self.fanout.dropped(),
            },
        }));
    }
}

/// The mode in force: the fleet's, else `--mode`, else the last `nprot mode`, else the
/// config's.
fn effective_mode(opts: &RunOptions, state: &State, fleet: &FleetPolicy) -> Mode {
    fleet
        .mode()
        .map(|(m, _)| m)
        .or(opts.mode)
        .or(state.mode)
        .unwrap_or(opts.config_mode)
}

/// The policy's indicators: the files', then the run-time ones, then the fleet's. A
/// fleet indicator whose id a local one already has is refused (by key) and left out.
fn compose(
    state: &State,
    files: Indicators,
    fleet: &mut FleetPolicy,
) -> Result<Indicators, IndicatorError> {
    let mut all = state.merged(files)?;
    // The fleet's ids (few) checked against the local ones (up to millions) in one pass,
    // without a set of the local ones.
    let mut taken: HashSet<&str> = HashSet::new();
    if !fleet.is_empty() {
        let fleet_ids: HashSet<&str> = fleet.indicators().map(|(_, i)| i.id.as_str()).collect();
        taken.extend(all.iter().filter_map(|i| fleet_ids.get(i.id()).copied()));
    }
    let mut refuse = Vec::new();
    for (key, ind) in fleet.indicators() {
        if !taken.insert(ind.id.as_str()) {
            refuse.push((
                key.to_owned(),
                format!("id {:?} is taken by another indicator", ind.id),
            ));
            continue;
        }
        if let Err(e) = all.push(ind) {
            refuse.push((key.to_owned(), e.to_string()));
        }
    }
    for (key, why) in refuse {
        fleet.refuse(&key, why);
    }
    Ok(all)
}

impl Daemon {
    /// Hands `/metrics` what the next scrapes show.
    fn publish_metrics(&mut self) {
        if self.metrics.is_none() {
            return;
        }
        let snapshot = Snapshot {
            report: serde_json::to_value(self.report()).unwrap_or_default(),
            verdict: Latency::from(&self.pipeline.verdict_latency),
            wake: Latency::from(&self.pipeline.wake_latency),
        };
        if let Some(m) = &self.metrics {
            m.update(snapshot);
        }
    }

    fn report_totals(&self) {
        let p = self.pipeline.stats();
        info!(
            "pipeline: records={} tls={} http={} not_recognised={} gave_up={} oversized={} heads_not_captured={} blocked={} audited={} reassembly_overflows={} verdict_errors={} decode_errors={}",
            p.records,
            p.tls_inspected,
            p.http_inspected,
            p.not_recognised,
            p.gave_up,
            p.oversized,
            p.heads_not_captured,
            p.blocked,
            p.audited,
            p.reassembly_overflows,
            p.verdict_errors,
            self.decode_errors
        );
        info!(
            "verdict latency: {}",
            self.pipeline.verdict_latency.summary()
        );
        info!(
            "  of which wake-up: {}",
            self.pipeline.wake_latency.summary()
        );
        info!(
            "events: written={} dropped={}",
            self.fanout.written,
            self.fanout.dropped()
        );
        for sink in self.fanout.sink_stats().as_array().into_iter().flatten() {
            info!(
                "  {}: dropped={} {}",
                sink["sink"].as_str().unwrap_or("?"),
                sink["dropped"],
                sink["stats"]
            );
        }
        if let Ok(k) = self.sensor.kernel_stats() {
            let parts: Vec<String> = stat::NAMES
                .iter()
                .zip(k)
                .map(|(name, v)| format!("{name}={v}"))
                .collect();
            info!("kernel: {}", parts.join(" "));
            let hook = self.attribution.as_ref().map(|a| a.counters.get().0);
            let flows = FlowAccount::new(&k, self.sensor.stale_verdicts, hook);
            info!(
                "flows: {}",
                serde_json::to_string(&flows).unwrap_or_default()
            );
            let quic = QuicAccount::new(&k, &self.pipeline.stats());
            info!("quic: {}", serde_json::to_string(&quic).unwrap_or_default());
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::needless_pass_by_value,
    clippy::float_cmp,
    reason = "test helpers and exact reported figures"
)]
mod tests {
    //! The control handlers, without root and without eBPF: a [`Daemon`] over a stand-in
    //! kernel, with indicator files and a state directory of its own.

    use std::{
        io,
        sync::{Arc, Mutex},
        time::UNIX_EPOCH,
    };

    use clap::Parser as _;
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        control::{
            cli::{Cli, Command},
            protocol::{IndicatorList, decode},
        },
        events::Clock,
    };

    /// The kernel side: records what it is told, refuses when `fail` is set.
    #[derive(Default)]
    struct FakeKernel {
        attached: Vec<(String, &'static str)>,
        configs: Vec<SensorConfig>,
        fail: bool,
        dns_names: HashMap<u64, u8>,
        /// Pre-filter summaries written: (buffer, filter).
        summaries: Vec<(u8, Filter)>,
    }

    impl NameMap for FakeKernel {
        fn put(&mut self, hash: u64, value: u8) -> anyhow::Result<()> {
            self.dns_names.insert(hash, value);
            Ok(())
        }
        fn remove(&mut self, hash: u64) -> anyhow::Result<()> {
            self.dns_names.remove(&hash);
            Ok(())
        }
    }

    impl SummaryTarget for FakeKernel {
        fn load_prefilter(&mut self) -> Result<(), String> {
            Ok(())
        }
        fn write_prefilter(&mut self, buffer: u8, filter: &Filter) -> Result<(), String> {
            self.summaries.push((buffer, filter.clone()));
            Ok(())
        }
    }

    impl Kernel for FakeKernel {
        fn set_config(&mut self, config: SensorConfig) -> Result<(), String> {
            if self.fail {
                return Err("cannot write the sensor config: no such map".into());
            }
            self.configs.push(config);
            Ok(())
        }
        fn interfaces(&self) -> &[(String, &'static str)] {
            &self.attached
        }
        fn counters(&self) -> Option<[u64; stat::COUNT as usize]> {
            let mut k = [0; stat::COUNT as usize];
            k[stat::FLOWS_NEW as usize] = 5;
            Some(k)
        }
        fn stale_verdict_count(&self) -> u64 {
            2
        }
    }

    /// A sink that keeps the lines it is given.
    struct Memory(Arc<Mutex<Vec<u8>>>);

    impl Sink for Memory {
        fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
            self.0.lock().unwrap().extend_from_slice(lines);
            Ok(())
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    /// A directory of its own, removed at the end.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const FILE: &str = r#"{"indicators": [
        {"id": "f1", "type": "DomainName", "value": "blocked.example", "action": "Block"},
        {"id": "w1", "type": "DomainName", "value": "warned.example", "action": "Warn"}
    ]}"#;

    struct Fixture {
        daemon: Daemon<FakeKernel>,
        events: Arc<Mutex<Vec<u8>>>,
        dir: Scratch,
    }

    impl Fixture {
        /// A daemon in audit mode guarding eth0, with `FILE` as its indicator file.
        fn new(name: &str) -> Fixture {
            let dir = Scratch(
                std::env::temp_dir().join(format!("nprot-daemon-{}-{name}", std::process::id())),
            );
            let _ = std::fs::remove_dir_all(&dir.0);
            std::fs::create_dir_all(&dir.0).unwrap();
            let file = dir.0.join("indicators.json");
            std::fs::write(&file, FILE).unwrap();
            let state_dir = dir.0.join("state");
            let Command::Run(args) = Cli::try_parse_from([
                "nprot".as_ref(),
                "run".as_ref(),
                "-i".as_ref(),
                "eth0".as_ref(),
                "--indicators".as_ref(),
                file.as_os_str(),
                "--state-dir".as_ref(),
                state_dir.as_os_str(),
            ])
            .unwrap()
            .command
            else {
                panic!("not a run command");
            };
            let opts = RunOptions::merge(args, None, Config::default()).unwrap();
            let state = State::load(&opts.state_dir).unwrap();
            let (files, file_len) = load_files(&opts.indicators, &opts.device_groups).unwrap();
            let policy = Policy::new(state.merged(files).unwrap(), &opts.device_groups);
            let events = Arc::new(Mutex::new(Vec::new()));
            let pipeline = Pipeline::new(
                EventFactory::new("h", "d", Clock::anchored(UNIX_EPOCH)),
                crate::datapath::pipeline::STREAM_LIMIT,
                Arc::new(policy),
                Mode::Audit,
            );
            let daemon = Daemon {
                opts,
                sensor: FakeKernel {
                    attached: vec![("eth0".into(), "tcx")],
                    ..FakeKernel::default()
                },
                pipeline,
                fanout: Fanout::new(vec![Box::new(Memory(events.clone()))]),
                state,
                mode: Mode::Audit,
                file_len,
                indicator_load: Duration::from_millis(3),
                decode_errors: 0,
                reported_drops: 0,
                housekeeping_rounds: 0,
                started: Instant::now(),
                attribution: None,
                dns_block: DnsBlock::default(),
                prefilter: Prefilter::default(),
                backlog: Backlog::default(),
                fleet: FleetPolicy::default(),
                fleet_link: None,
                fleet_reported: HashMap::new(),
                metrics: None,
            };
            Fixture {
                daemon,
                events,
                dir,
            }
        }

        /// The reply to `request`, which must be carried out.
        fn ok<T: serde::de::DeserializeOwned>(&mut self, request: Request) -> T {
            let response = self.daemon.handle(request);
            assert!(response.ok, "{response:?}");
            assert_eq!(response.error, None);
            decode(&response.data).unwrap()
        }

        /// The refusal of `request`, which must change nothing: not the policy, the
        /// state on disk, the mode or the kernel's settings.
        fn refused(&mut self, request: Request) -> String {
            let before = self.snapshot();
            let response = self.daemon.handle(request);
            assert!(!response.ok, "{response:?}");
            assert_eq!(response.data, Value::Null);
            assert_eq!(
                self.snapshot(),
                before,
                "a refused request changed something"
            );
            response.error.unwrap()
        }

        fn snapshot(&self) -> (Value, Option<Mode>, Vec<String>, Mode, usize) {
            let on_disk = State::load(&self.daemon.opts.state_dir).unwrap();
            let ids = on_disk.indicators.iter().map(|i| i.id.clone()).collect();
            (
                serde_json::to_value(self.daemon.pipeline.policy().indicators()).unwrap(),
                on_disk.mode,
                ids,
                self.daemon.mode,
                self.daemon.sensor.configs.len(),
            )
        }

        fn ids(&mut self) -> Vec<String> {
            let list: IndicatorList = self.ok(Request::IndicatorList);
            list.indicators.into_iter().map(|i| i.id).collect()
        }
    }

    fn add(indicators: Value) -> Request {
        Request::IndicatorAdd {
            json: json!({ "indicators": indicators }).to_string(),
        }
    }

    #[test]
    fn status_says_what_runs() {
        let mut f = Fixture::new("status");
        let s: StatusReply = f.ok(Request::Status);
        assert_eq!(s.mode, Mode::Audit);
        assert_eq!(
            s.interfaces,
            vec![InterfaceStatus {
                name: "eth0".into(),
                attach: "tcx".into()
            }]
        );
        assert_eq!((s.indicators, s.runtime_indicators), (2, 0));
        assert_eq!(s.indicator_files, f.daemon.opts.indicators);
        assert_eq!(s.state_dir, f.dir.0.join("state"));
        assert_eq!(s.pid, std::process::id());
    }

    #[test]
    fn stats_report_the_counters() {
        let mut f = Fixture::new("stats");
        let r: RunReport = f.ok(Request::Stats);
        assert_eq!((r.mode, r.indicators), (Mode::Audit, 2));
        assert_eq!(r.indicator_load_ms, 3.0);
        assert_eq!(r.kernel["flows_new"], 5);
        assert_eq!(r.kernel.len(), stat::NAMES.len());
        assert_eq!((r.flows.tracked, r.flows.stale_verdicts), (5, 2));
        assert_eq!(r.flows.connect_hook_connects, None);
        assert!(r.attribution.is_none());
        assert_eq!(r.sinks[0]["sink"], "memory");
    }

    #[test]
    fn mode_is_persisted_then_applied() {
        let mut f = Fixture::new("mode");
        let r: ModeReply = f.ok(Request::Mode {
            mode: "block".into(),
        });
        assert_eq!(r.mode, Mode::Block);
        assert_eq!(f.daemon.mode, Mode::Block);
        let written = f.daemon.sensor.configs.last().unwrap();
        assert_eq!((written.capture, written.hold), (1, 1));
        assert_eq!(
            State::load(&f.daemon.opts.state_dir).unwrap().mode,
            Some(Mode::Block)
        );
        let _: ModeReply = f.ok(Request::Mode {
            mode: "disabled".into(),
        });
        let written = f.daemon.sensor.configs.last().unwrap();
        assert_eq!((written.capture, written.hold), (0, 0));
    }

    /// The kernel's DNS name map follows the mode and every policy change.
    #[test]
    fn the_dns_name_map_follows_mode_and_policy() {
        use nprot_common::name_hash::hash_name;
        let mut f = Fixture::new("dns-names");
        assert!(f.daemon.sensor.dns_names.is_empty(), "audit mode: empty");
        let _: ModeReply = f.ok(Request::Mode {
            mode: "block".into(),
        });
        assert_eq!(f.daemon.sensor.configs.last().unwrap().dns_block, 1);
        let names = &f.daemon.sensor.dns_names;
        assert_eq!(names.get(&hash_name("blocked.example")), Some(&1));
        assert_eq!(names.get(&hash_name("warned.example")), Some(&1));
        let _: Value = f.ok(add(json!([
            {"id": "a1", "type": "DomainName", "value": "ok.blocked.example", "action": "Allowed"}
        ])));
        assert_eq!(
            f.daemon
                .sensor
                .dns_names
                .get(&hash_name("ok.blocked.example")),
            Some(&0)
        );
        let _: ModeReply = f.ok(Request::Mode {
            mode: "audit".into(),
        });
        assert_eq!(f.daemon.sensor.configs.last().unwrap().dns_block, 0);
        assert!(f.daemon.sensor.dns_names.is_empty());
    }

    #[test]
    fn the_prefilter_summary_is_in_force_before_a_change_is_answered() {
        use nprot_common::{name_hash::hash_name, prefilter};
        let mut f = Fixture::new("prefilter");
        assert!(
            f.daemon.sensor.summaries.is_empty(),
            "audit mode: no summary"
        );
        let _: ModeReply = f.ok(Request::Mode {
            mode: "block".into(),
        });
        // The config in force points at the buffer last written, and that one holds the
        // policy: after each change, before its answer.
        let in_force = |f: &Fixture| {
            let bits = f.daemon.sensor.configs.last().unwrap().prefilter;
            assert_ne!(bits & prefilter::CONFIG_ON, 0);
            let buffer = u8::from(bits & prefilter::CONFIG_BUFFER_1 != 0);
            let (written, filter) = f.daemon.sensor.summaries.last().unwrap().clone();
            assert_eq!(
                written, buffer,
                "the config points at the buffer just written"
            );
            filter
        };
        let filter = in_force(&f);
        assert!(filter.may_hold(hash_name("blocked.example")));
        assert!(!filter.may_hold(hash_name("new.example")));
        let _: Value = f.ok(add(json!([
            {"id": "n1", "type": "DomainName", "value": "new.example", "action": "Block"}
        ])));
        let filter = in_force(&f);
        assert!(filter.may_hold(hash_name("new.example")));
        let (first, second) = (
            f.daemon.sensor.summaries[0].0,
            f.daemon.sensor.summaries[1].0,
        );
        assert_ne!(
            first, second,
            "a change is written into the buffer not in force"
        );
        let _: Value = f.ok(Request::IndicatorRemove {
            ids: vec!["n1".into()],
        });
        assert!(!in_force(&f).may_hold(hash_name("new.example")));
        let report: RunReport = f.ok(Request::Stats);
        assert!(report.prefilter.enabled);
        assert_eq!(report.prefilter.rebuilds, 3);
        let _: ModeReply = f.ok(Request::Mode {
            mode: "audit".into(),
        });
        assert_eq!(f.daemon.sensor.configs.last().unwrap().prefilter, 0);
        let report: RunReport = f.ok(Request::Stats);
        assert!(!report.prefilter.enabled);
    }

    #[test]
    fn a_bad_mode_changes_nothing() {
        let mut f = Fixture::new("bad-mode");
        let e = f.refused(Request::Mode {
            mode: "Block".into(),
        });
        assert!(e.contains("unknown mode 'Block'"), "{e}");
        let e = f.refused(Request::Mode {
            mode: String::new(),
        });
        assert!(e.contains("unknown mode"), "{e}");
    }

    /// The kernel refusing the new settings leaves the running mode as it was, and the
    /// saved one (`refused` compares the state on disk): a restart does not bring it back.
    #[test]
    fn a_mode_the_kernel_refuses_is_not_applied() {
        let mut f = Fixture::new("mode-kernel");
        f.daemon.sensor.fail = true;
        let e = f.refused(Request::Mode {
            mode: "block".into(),
        });
        assert!(e.contains("no such map"), "{e}");
        assert_eq!(f.daemon.mode, Mode::Audit);
        assert_eq!(f.daemon.state.mode, None);
        let s: StatusReply = f.ok(Request::Status);
        assert_eq!(s.mode, Mode::Audit);
    }

    #[test]
    fn indicators_are_added_replaced_and_persisted() {
        let mut f = Fixture::new("add");
        let a =
            json!({"id": "r1", "type": "IpAddress", "value": "198.51.100.7", "action": "Block"});
        let r: AddedReply = f.ok(add(json!([a])));
        assert_eq!(
            r,
            AddedReply {
                added: 1,
                ..AddedReply::default()
            }
        );
        assert_eq!(f.ids(), ["f1", "w1", "r1"]);
        let on_disk = State::load(&f.daemon.opts.state_dir).unwrap();
        assert_eq!(on_disk.indicators.len(), 1);

        // The same row again: unchanged; another row under its id: replaced, by name.
        let r: AddedReply = f.ok(add(json!([a])));
        assert_eq!((r.added, r.unchanged, r.replaced), (0, 1, 0));
        let b =
            json!({"id": "r1", "type": "IpAddress", "value": "198.51.100.8", "action": "Audit"});
        let r: AddedReply = f.ok(add(json!([b])));
        assert_eq!((r.added, r.replaced), (0, 1));
        assert_eq!(r.replaced_ids, ["r1"]);
        let s: StatusReply = f.ok(Request::Status);
        assert_eq!((s.indicators, s.runtime_indicators), (3, 1));
    }

    #[test]
    fn a_bad_indicator_leaves_the_running_policy_unchanged() {
        let mut f = Fixture::new("bad-add");
        let _: AddedReply = f.ok(add(json!([
            {"id": "r1", "type": "DomainName", "value": "one.example", "action": "Block"}
        ])));
        // One bad row among good ones: none of them is taken.
        let e = f.refused(add(json!([
            {"id": "r2", "type": "DomainName", "value": "two.example", "action": "Block"},
            {"id": "r3", "type": "IpAddress", "value": "not an address", "action": "Block"}
        ])));
        assert!(!e.is_empty());
        f.refused(Request::IndicatorAdd {
            json: "{not json".into(),
        });
        f.refused(add(json!([
            {"id": "r4", "type": "Colour", "value": "red", "action": "Block"}
        ])));
        assert_eq!(f.ids(), ["f1", "w1", "r1"]);
    }

    #[test]
    fn a_file_indicator_is_changed_in_its_file_only() {
        let mut f = Fixture::new("file-id");
        let e = f.refused(add(json!([
            {"id": "f1", "type": "DomainName", "value": "blocked.example", "action": "Audit"}
        ])));
        assert!(
            e.contains("indicator f1 is defined by an indicator file"),
            "{e}"
        );
        // An export imported again: the file's rows are unchanged, not added twice.
        let list = serde_json::to_string(f.daemon.pipeline.policy().indicators()).unwrap();
        let r: AddedReply = f.ok(Request::IndicatorImport {
            format: "json".into(),
            text: list,
            action: None,
        });
        assert_eq!((r.added, r.unchanged), (0, 2));
        assert_eq!(f.ids(), ["f1", "w1"]);
    }

    #[test]
    fn imports_read_lists_with_their_action() {
        let mut f = Fixture::new("import");
        let r: AddedReply = f.ok(Request::IndicatorImport {
            format: "list".into(),
            text: "# ads\nads.example\n203.0.113.0/24\n".into(),
            action: Some("Audit".into()),
        });
        assert_eq!(r.added, 2);
        let list: IndicatorList = f.ok(Request::IndicatorList);
        let added: Vec<_> = list.indicators[2..]
            .iter()
            .map(|i| (i.kind, i.action, i.value.as_str()))
            .collect();
        assert_eq!(
            added,
            [
                (IndicatorType::DomainName, Action::Audit, "ads.example"),
                (IndicatorType::IpAddress, Action::Audit, "203.0.113.0/24")
            ]
        );
        let e = f.refused(Request::IndicatorImport {
            format: "list".into(),
            text: "more.example\n".into(),
            action: Some("audit".into()),
        });
        assert_eq!(e, "unknown action 'audit'");
        let e = f.refused(Request::IndicatorImport {
            format: "xml".into(),
            text: "<indicators/>".into(),
            action: None,
        });
        assert_eq!(e, "unknown indicator format 'xml'");
    }

    #[test]
    fn indicators_are_removed_by_id() {
        let mut f = Fixture::new("remove");
        let _: AddedReply = f.ok(add(json!([
            {"id": "r1", "type": "DomainName", "value": "one.example", "action": "Block"},
            {"id": "r2", "type": "DomainName", "value": "two.example", "action": "Block"}
        ])));
        let e = f.refused(Request::IndicatorRemove {
            ids: vec!["nope".into()],
        });
        assert_eq!(e, "no run-time indicator with id nope");
        // A file's indicator is not a run-time one.
        f.refused(Request::IndicatorRemove {
            ids: vec!["f1".into()],
        });
        let r: RemovedReply = f.ok(Request::IndicatorRemove {
            ids: vec!["r1".into(), "nope".into()],
        });
        assert_eq!(
            r,
            RemovedReply {
                removed: 1,
                not_found: vec!["nope".into()]
            }
        );
        assert_eq!(f.ids(), ["f1", "w1", "r2"]);
        let on_disk = State::load(&f.daemon.opts.state_dir).unwrap();
        assert_eq!(on_disk.indicators.len(), 1);
    }

    #[test]
    fn the_list_is_the_indicator_file_format() {
        let mut f = Fixture::new("list");
        let response = f.daemon.handle(Request::IndicatorList);
        assert!(response.ok);
        // What `nprot indicator export` prints loads back as an indicator file.
        let loaded = load_json(&response.data.to_string()).unwrap();
        assert_eq!(loaded.indicators.len(), 2);
        let list: IndicatorList = decode(&response.data).unwrap();
        assert_eq!(list.indicators[1].kind, IndicatorType::DomainName);
        assert_eq!(list.indicators[1].action, Action::Warn);
        assert_eq!(list.indicators[1].value, "warned.example");
    }

    #[test]
    fn a_warned_target_is_bypassed_and_logged() {
        let mut f = Fixture::new("bypass");
        let r: BypassReply = f.ok(Request::Bypass {
            target: "warned.example".into(),
            for_secs: 3600,
        });
        assert_eq!(r.id, "bypass:warned.example");
        assert_eq!(r.warned_by, "w1");
        assert!(
            crate::time::parse_system_time(&r.until).is_ok(),
            "{}",
            r.until
        );
        assert_eq!(f.ids(), ["f1", "w1", "bypass:warned.example"]);
        let events = String::from_utf8(f.events.lock().unwrap().clone()).unwrap();
        assert_eq!(events.lines().count(), 1, "{events}");
        assert!(events.contains("bypass:warned.example"), "{events}");
        // Under the bypass it is Allowed, not warned: no second bypass of it.
        let e = f.refused(Request::Bypass {
            target: "warned.example".into(),
            for_secs: 60,
        });
        assert!(e.contains("not warned"), "{e}");
    }

    #[test]
    fn only_warned_targets_can_be_bypassed() {
        let mut f = Fixture::new("bypass-refused");
        let e = f.refused(Request::Bypass {
            target: "blocked.example".into(),
            for_secs: 60,
        });
        assert!(
            e.contains("not warned but decided by Block indicator f1"),
            "{e}"
        );
        let e = f.refused(Request::Bypass {
            target: "198.51.100.1".into(),
            for_secs: 60,
        });
        assert_eq!(e, "no Warn indicator matches 198.51.100.1");
        f.refused(Request::Bypass {
            target: "http://".into(),
            for_secs: 60,
        });
        assert!(f.events.lock().unwrap().is_empty());
    }

    /// SIGHUP: a broken indicator file keeps the running policy; a fixed one is taken.
    #[test]
    fn a_reload_takes_valid_files_only() {
        let mut f = Fixture::new("reload");
        let _: AddedReply = f.ok(add(json!([
            {"id": "r1", "type": "DomainName", "value": "one.example", "action": "Block"}
        ])));
        let file = f.daemon.opts.indicators[0].0.clone();
        std::fs::write(&file, "{\"indicators\": [").unwrap();
        f.daemon.reload();
        assert_eq!(f.ids(), ["f1", "w1", "r1"]);
        std::fs::write(
            &file,
            r#"{"indicators": [{"id": "f9", "type": "DomainName", "value": "new.example", "action": "Block"}]}"#,
        )
        .unwrap();
        f.daemon.reload();
        assert_eq!(f.ids(), ["f9", "r1"]);
        // The run-time indicators still follow the files' new length.
        let r: RemovedReply = f.ok(Request::IndicatorRemove {
            ids: vec!["r1".into()],
        });
        assert_eq!(r.removed, 1);
        assert_eq!(f.ids(), ["f9"]);
    }
}
