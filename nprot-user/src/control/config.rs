//! The daemon's configuration file (DESIGN §5): TOML, [`DEFAULT_PATH`] unless `--config`
//! names another. Every key is optional (see [`Config::default`]) and documented in
//! `docs/config.md`; unknown keys are refused, so that a typo is not silently ignored.
//!
//! Errors name the file, the line and column, and the key:
//! `/etc/nprot/nprot.toml: line 14, column 12: events.file_keep: must be at least 1`.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    str::FromStr,
};

use nprot_common::quic::QuicMode;
use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor, value::MapAccessDeserializer},
};
use toml::de::{DeTable, DeValue};

use crate::{
    datapath::{
        names::{DnsNames, EchAction, NameSettings},
        pipeline::{KnownProxy, OversizedAction},
    },
    mode::Mode,
    policy::Action,
};

/// Where the daemon looks for its configuration without `--config`.
pub const DEFAULT_PATH: &str = "/etc/nprot/nprot.toml";

/// The longest Unix socket path (`sun_path` holds 108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The daemon's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Network-protection level: `disabled`, `audit` or `block`.
    #[serde(deserialize_with = "de_mode")]
    pub mode: Mode,
    /// Interfaces to guard.
    #[serde(deserialize_with = "de_interfaces")]
    pub interfaces: Vec<String>,
    /// Where state (mode, indicators added at run time, bypasses) persists.
    #[serde(deserialize_with = "de_path")]
    pub state_dir: PathBuf,
    /// Device groups this sensor belongs to.
    #[serde(deserialize_with = "de_groups")]
    pub device_groups: Vec<String>,
    /// Indicator files loaded at start and on SIGHUP, in order.
    pub indicators: Vec<IndicatorSource>,
    /// The action of the entries of plain lists that do not set their own.
    #[serde(deserialize_with = "de_action")]
    pub list_action: Action,
    /// The root-only control socket of `nprot status`, `mode`, `indicator`, ….
    #[serde(deserialize_with = "de_socket_path")]
    pub control_socket: PathBuf,
    /// Release a flow whose verdict takes longer than this (fail-open), in milliseconds.
    #[serde(deserialize_with = "de_timeout")]
    pub verdict_timeout_ms: u64,
    /// A flow that sent nothing for this long is retired when it next sends (it is then
    /// tracked mid-stream, uninspected, and counted), in seconds.
    #[serde(deserialize_with = "de_flow_idle_timeout")]
    pub flow_idle_timeout_s: u64,
    /// SCHED_FIFO priority of the verdict loop (1–99; 0 keeps normal scheduling).
    #[serde(deserialize_with = "de_rt_priority")]
    pub rt_priority: u8,
    /// Forward proxies this network uses: `"ip"` or `"ip:port"` (`"[v6]:port"`). Proxy
    /// flows are found by their requests either way; events say whether the proxy is one
    /// of these (`proxy_known`).
    #[serde(deserialize_with = "de_proxies")]
    pub proxies: Vec<KnownProxy>,
    /// Where events go.
    pub events: EventsConfig,
    /// The cgroup v2 directory the process-attribution hooks attach to.
    #[serde(deserialize_with = "de_process_cgroup")]
    pub process_cgroup: ProcessCgroup,
    /// Processes the attribution keeps in its cache at most.
    #[serde(deserialize_with = "de_process_cache")]
    pub process_cache: usize,
    /// What block mode does with an HTTP request head that cannot be judged in full
    /// (over 64 KiB, or not all captured): `allow` or `block`.
    #[serde(deserialize_with = "de_oversized")]
    pub oversized: OversizedAction,
    /// What is done with QUIC: `inspect` (judge its ClientHellos, the default), `block`
    /// (drop every client Initial so that clients fall back to TCP) or `off` (UDP is not
    /// tracked at all).
    #[serde(deserialize_with = "de_quic")]
    pub quic: QuicMode,
    /// Whether Domain indicators apply to a flow that names nothing on the wire through
    /// the name its client resolved in DNS: `log` (report `dns_name` only, the default)
    /// or `enforce`.
    #[serde(deserialize_with = "de_from_str")]
    pub dns_names: DnsNames,
    /// What block mode does with a flow known to use real Encrypted ClientHello:
    /// `allow` (report it, the default) or `block`.
    #[serde(deserialize_with = "de_from_str")]
    pub ech: EchAction,
    /// Outer (public) names known to front ECH: a ClientHello with an ECH extension
    /// showing one of these is real ECH.
    #[serde(deserialize_with = "de_ech_public_names")]
    pub ech_public_names: Vec<String>,
    /// Whether block mode lets the kernel pass a flow at once whose name and address
    /// can match no indicator (the kernel pre-filter): `on` (the default) or `off`.
    #[serde(deserialize_with = "de_on_off")]
    pub prefilter: bool,
    /// How the verdict loop waits for records: `wait` (sleep until the ring buffer
    /// wakes it), `busy` (poll it without sleeping, on a core of its own) or `auto`
    /// (the default: `busy` only with at least [`RingPoll::BUSY_MIN_CPUS`] CPUs).
    #[serde(deserialize_with = "de_from_str")]
    pub ring_poll: RingPoll,
    /// The fleet (`[fleet]`, docs/fleet.md): policy from NATS JetStream, heartbeats and
    /// events to it. None: a sensor on its own.
    pub fleet: Option<crate::control::fleet::FleetConfig>,
    /// Serve `/metrics` (Prometheus text format) here, e.g. `127.0.0.1:9477`; unset: no
    /// metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// What a blocked or warned plain-HTTP request gets in block mode: `page` (a page
    /// saying so, or a redirect to the indicator's `redirect_url`; the default) or
    /// `reset` (a bare reset, as for HTTPS).
    #[serde(deserialize_with = "de_from_str")]
    pub block_page: BlockPage,
    /// Who may bypass a Warn: `admin` (`nprot bypass` only, the default) or `user` (also
    /// the page's Continue link and the desktop prompt's Allow).
    #[serde(deserialize_with = "de_from_str")]
    pub warn_bypass: WarnBypass,
    /// The socket `nprot notify` agents connect to (any local user may; each gets the
    /// events of its own flows). Unset: no desktop prompts.
    pub notify_socket: Option<PathBuf>,
}

/// What a blocked plain-HTTP request gets (`block_page`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockPage {
    /// A page (403), or a 302 to the indicator's `redirect_url`.
    #[default]
    Page,
    /// A bare reset.
    Reset,
}

impl FromStr for BlockPage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "page" => Ok(BlockPage::Page),
            "reset" => Ok(BlockPage::Reset),
            other => Err(format!("{other:?} is neither \"page\" nor \"reset\"")),
        }
    }
}

/// Who may bypass a Warn indicator (`warn_bypass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WarnBypass {
    /// Only an administrator, with `nprot bypass`.
    #[default]
    Admin,
    /// Also the user warned: the page's Continue link, the desktop prompt's Allow.
    User,
}

impl FromStr for WarnBypass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(WarnBypass::Admin),
            "user" => Ok(WarnBypass::User),
            other => Err(format!("{other:?} is neither \"admin\" nor \"user\"")),
        }
    }
}

/// How the verdict loop waits for ring-buffer records (`ring_poll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingPoll {
    /// `busy` with at least [`RingPoll::BUSY_MIN_CPUS`] CPUs online, else `wait`.
    Auto,
    /// Sleep in epoll until the kernel wakes the loop.
    Wait,
    /// Poll the ring without sleeping: no wake-up on the verdict path, one core spent.
    Busy,
}

impl RingPoll {
    /// Fewest online CPUs for which `auto` busy-polls: with two, a spinning verdict
    /// loop takes half of the machine from the traffic it guards (measured in
    /// docs/decisions.md).
    pub const BUSY_MIN_CPUS: usize = 4;

    /// Whether the loop busy-polls on a host with `cpus` CPUs.
    pub fn busy(self, cpus: usize) -> bool {
        match self {
            RingPoll::Auto => cpus >= Self::BUSY_MIN_CPUS,
            RingPoll::Wait => false,
            RingPoll::Busy => true,
        }
    }
}

impl FromStr for RingPoll {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(RingPoll::Auto),
            "wait" => Ok(RingPoll::Wait),
            "busy" => Ok(RingPoll::Busy),
            other => Err(format!(
                "{other:?} is not a ring_poll: \"auto\", \"wait\" or \"busy\""
            )),
        }
    }
}

fn de_on_off<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match String::deserialize(d)?.as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(de::Error::custom(format!(
            "{other:?} is neither \"on\" nor \"off\""
        ))),
    }
}

fn de_from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    String::deserialize(d)?.parse().map_err(de::Error::custom)
}

fn de_ech_public_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .into_iter()
        .map(|n| {
            let name = n.trim_end_matches('.').to_ascii_lowercase();
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if valid {
                Ok(name)
            } else {
                Err(de::Error::custom(format!("{n:?} is not a DNS name")))
            }
        })
        .collect()
}

fn de_oversized<'de, D: Deserializer<'de>>(d: D) -> Result<OversizedAction, D::Error> {
    String::deserialize(d)?.parse().map_err(de::Error::custom)
}

fn de_quic<'de, D: Deserializer<'de>>(d: D) -> Result<QuicMode, D::Error> {
    parse_quic(&String::deserialize(d)?).map_err(de::Error::custom)
}

/// The `quic` setting from its config spelling.
pub fn parse_quic(s: &str) -> Result<QuicMode, String> {
    match s {
        "inspect" => Ok(QuicMode::Inspect),
        "block" => Ok(QuicMode::Block),
        "off" => Ok(QuicMode::Off),
        other => Err(format!(
            "{other:?} is none of \"inspect\", \"block\" and \"off\""
        )),
    }
}

/// The config spelling of a `quic` setting.
pub fn quic_str(mode: QuicMode) -> &'static str {
    match mode {
        QuicMode::Inspect => "inspect",
        QuicMode::Block => "block",
        QuicMode::Off => "off",
    }
}

impl Config {
    /// The name settings (`dns_names`, `ech`, `ech_public_names`).
    pub fn name_settings(&self) -> NameSettings {
        NameSettings {
            dns_names: self.dns_names,
            ech: self.ech,
            ech_public_names: self.ech_public_names.iter().cloned().collect(),
        }
    }
}

/// Where the `connect4`/`connect6` hooks of process attribution attach.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProcessCgroup {
    /// The root of the cgroup v2 hierarchy, found in `/proc/self/mounts`.
    #[default]
    Auto,
    /// No attribution.
    Off,
    /// This cgroup v2 directory (and the cgroups below it).
    Path(PathBuf),
}

impl FromStr for ProcessCgroup {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ProcessCgroup::Auto),
            "off" => Ok(ProcessCgroup::Off),
            p if p.starts_with('/') => Ok(ProcessCgroup::Path(PathBuf::from(p))),
            other => Err(format!(
                "{other:?} is neither \"auto\", \"off\" nor an absolute path of a cgroup v2 directory"
            )),
        }
    }
}

fn de_process_cache<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v = i64::deserialize(d)?;
    if !(16..=1_000_000).contains(&v) {
        return Err(de::Error::custom(format!(
            "{v} is out of range: 16 to 1000000 processes"
        )));
    }
    Ok(v as usize)
}

fn de_process_cgroup<'de, D: Deserializer<'de>>(d: D) -> Result<ProcessCgroup, D::Error> {
    String::deserialize(d)?.parse().map_err(de::Error::custom)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Audit,
            interfaces: Vec::new(),
            state_dir: PathBuf::from("/var/lib/nprot"),
            device_groups: Vec::new(),
            indicators: Vec::new(),
            list_action: Action::Block,
            control_socket: PathBuf::from("/run/nprot/control.sock"),
            verdict_timeout_ms: 500,
            flow_idle_timeout_s: nprot_common::FLOW_IDLE_TIMEOUT_NS_DEFAULT / 1_000_000_000,
            rt_priority: 10,
            proxies: Vec::new(),
            events: EventsConfig::default(),
            process_cgroup: ProcessCgroup::Auto,
            process_cache: crate::capture::attribution::PROCESS_CACHE_MAX,
            oversized: OversizedAction::Allow,
            quic: QuicMode::Inspect,
            dns_names: DnsNames::Log,
            ech: EchAction::Allow,
            ech_public_names: Vec::new(),
            prefilter: true,
            ring_poll: RingPoll::Auto,
            fleet: None,
            metrics_listen: None,
            block_page: BlockPage::Page,
            warn_bypass: WarnBypass::Admin,
            notify_socket: None,
        }
    }
}

/// One indicator file: `"path"`, or `{ path = "…", action = "Allowed" }` to give the
/// entries of a plain list an action other than [`Config::list_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndicatorSource {
    /// The file; its format follows from the extension (`.json`, `.csv`, else a list).
    pub path: PathBuf,
    /// The action of a plain list's entries; `None` for [`Config::list_action`].
    pub action: Option<Action>,
}

/// The `[events]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Write events to standard output; unset means "only if there is no other sink".
    pub stdout: Option<bool>,
    /// Append events to this file.
    #[serde(deserialize_with = "de_opt_path")]
    pub file: Option<PathBuf>,
    /// Rotate the file when it would grow past this many bytes; 0 never rotates.
    pub file_max_bytes: u64,
    /// Rotated files kept (`events.jsonl.1` … `.N`).
    #[serde(deserialize_with = "de_at_least_one")]
    pub file_keep: u32,
    /// Network collectors (`[[events.collector]]`).
    pub collector: Vec<CollectorConfig>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            stdout: None,
            file: None,
            file_max_bytes: 100 * 1024 * 1024,
            file_keep: 5,
            collector: Vec::new(),
        }
    }
}

impl EventsConfig {
    /// Whether events go to standard output: as set, or by default only when neither a
    /// file nor a collector is configured.
    pub fn stdout_enabled(&self) -> bool {
        self.stdout
            .unwrap_or(self.file.is_none() && self.collector.is_empty())
    }
}

/// One `[[events.collector]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// `IP:port` (IPv6 as `[addr]:port`); host names are not resolved.
    #[serde(deserialize_with = "de_socket_addr")]
    pub address: SocketAddr,
    /// Transport.
    #[serde(default)]
    pub protocol: Protocol,
    /// Events held while the collector is unreachable; older ones are dropped (counted)
    /// beyond this.
    #[serde(
        default = "default_buffer_events",
        deserialize_with = "de_buffer_events"
    )]
    pub buffer_events: usize,
}

fn default_buffer_events() -> usize {
    10_000
}

/// A collector's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Newline-delimited JSON over TCP; reconnects.
    #[default]
    Tcp,
    /// One datagram per event.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// Not TOML, or a key or value that is not allowed.
    #[error("{}", describe(path.as_deref(), *line, *column, key.as_deref(), message))]
    Invalid {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column (in characters), when known.
        column: Option<usize>,
        /// The dotted key, e.g. `events.collector[0].address`, when known.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
}

fn describe(
    path: Option<&Path>,
    line: Option<usize>,
    column: Option<usize>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut parts = Vec::new();
    if let Some(p) = path {
        parts.push(p.display().to_string());
    }
    match (line, column) {
        (Some(l), Some(c)) => parts.push(format!("line {l}, column {c}")),
        (Some(l), None) => parts.push(format!("line {l}")),
        _ => {}
    }
    if let Some(k) = key {
        parts.push(k.to_string());
    }
    parts.push(message.to_string());
    parts.join(": ")
}

impl Config {
    /// Parses a configuration; relative paths are left as written.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let doc = DeTable::parse(text).map_err(|e| error_at(text, None, &e))?;
        let doc = doc.get_ref();
        let config: Config = toml::from_str(text).map_err(|e| error_at(text, Some(doc), &e))?;
        config.check(text, doc)?;
        Ok(config)
    }

    /// Reads and parses the file at `path`. Relative paths in it are taken relative to
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let mut config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Invalid {
                line,
                column,
                key,
                message,
                ..
            } => ConfigError::Invalid {
                path: Some(path.to_path_buf()),
                line,
                column,
                key,
                message,
            },
            e @ ConfigError::Io { .. } => e,
        })?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok(config)
    }

    /// Makes every relative path relative to `dir`.
    pub fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        fix(&mut self.control_socket);
        for s in &mut self.indicators {
            fix(&mut s.path);
        }
        if let Some(f) = &mut self.events.file {
            fix(f);
        }
        if let Some(fleet) = &mut self.fleet {
            for p in [&mut fleet.credentials, &mut fleet.nkey, &mut fleet.tls_ca]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
    }

    /// The indicator files with the action their plain-list entries get.
    pub fn indicator_files(&self) -> impl Iterator<Item = (&Path, Action)> + '_ {
        self.indicators
            .iter()
            .map(|s| (s.path.as_path(), s.action.unwrap_or(self.list_action)))
    }

    /// Checks that involve more than one key.
    fn check(&self, text: &str, doc: &DeTable<'_>) -> Result<(), ConfigError> {
        let e = &self.events;
        if e.stdout == Some(false) && e.file.is_none() && e.collector.is_empty() {
            let span = lookup(doc, &["events", "stdout"]);
            return Err(invalid(
                text,
                span,
                Some("events.stdout".into()),
                "false, but there is no events.file and no [[events.collector]]: events would go nowhere".into(),
            ));
        }
        if let Some(fleet) = &self.fleet
            && let Err(message) = fleet.validate()
        {
            let span = lookup(doc, &["fleet"]);
            return Err(invalid(text, span, Some("fleet".into()), message));
        }
        Ok(())
    }
}

/// A [`ConfigError::Invalid`] at byte `span` of `text`.
fn invalid(
    text: &str,
    span: Option<Range<usize>>,
    key: Option<String>,
    message: String,
) -> ConfigError {
    let (line, column) = match span {
        Some(s) => {
            let (l, c) = position(text, s.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    ConfigError::Invalid {
        path: None,
        line,
        column,
        key,
        message,
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Turns a toml error into ours, finding the key from the error's position in `doc`.
fn error_at(text: &str, doc: Option<&DeTable<'_>>, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let key = match (doc, &span) {
        (Some(doc), Some(s)) => key_at(doc, s.start),
        _ => None,
    };
    invalid(text, span, key, e.message().trim().to_string())
}

/// The dotted path of the innermost key whose key or value spans `pos`. The span of a
/// table given by a `[header]` covers only the header, so every table is searched.
fn key_at(doc: &DeTable<'_>, pos: usize) -> Option<String> {
    fn in_table(table: &DeTable<'_>, pos: usize, prefix: &str) -> Option<String> {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            if let Some(inner) = in_value(v.get_ref(), pos, &path) {
                return Some(inner);
            }
            if k.span().contains(&pos) || v.span().contains(&pos) {
                return Some(path);
            }
        }
        None
    }
    fn in_value(v: &DeValue<'_>, pos: usize, path: &str) -> Option<String> {
        match v {
            DeValue::Table(t) => in_table(t, pos, path),
            DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                let path = format!("{path}[{i}]");
                in_value(item.get_ref(), pos, &path)
                    .or_else(|| item.span().contains(&pos).then_some(path))
            }),
            _ => None,
        }
    }
    in_table(doc, pos, "")
}

/// The span of the value at `keys` in `doc`.
fn lookup(doc: &DeTable<'_>, keys: &[&str]) -> Option<Range<usize>> {
    let (first, rest) = keys.split_first()?;
    let (_, v) = doc.iter().find(|(k, _)| k.get_ref() == first)?;
    match (rest.is_empty(), v.get_ref()) {
        (true, _) => Some(v.span()),
        (false, DeValue::Table(t)) => lookup(t, rest),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Value checks, run while deserialising so that errors carry the value's position.

fn de_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
    let s = String::deserialize(d)?;
    Mode::from_str(&s).map_err(de::Error::custom)
}

fn de_action<'de, D: Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
    let s = String::deserialize(d)?;
    Action::from_str(&s).map_err(de::Error::custom)
}

/// Linux's rules for interface names (`dev_valid_name`).
fn check_interface(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty interface name".into());
    }
    if name.len() > 15 {
        return Err(format!("interface name {name:?} is longer than 15 bytes"));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

fn de_interfaces<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    for (i, name) in list.iter().enumerate() {
        check_interface(name).map_err(de::Error::custom)?;
        if list[..i].contains(name) {
            return Err(de::Error::custom(format!(
                "interface {name:?} is listed twice"
            )));
        }
    }
    Ok(list)
}

fn de_groups<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    if list.iter().any(|g| g.trim().is_empty()) {
        return Err(de::Error::custom("empty device group name"));
    }
    Ok(list)
}

/// `ip`, `ip:port` or `[v6]:port`.
fn parse_proxy(s: &str) -> Result<KnownProxy, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(KnownProxy { ip, port: None });
    }
    match s.parse::<SocketAddr>() {
        Ok(addr) => Ok(KnownProxy {
            ip: addr.ip(),
            port: Some(addr.port()),
        }),
        Err(_) => Err(format!(
            "proxy {s:?}: expected an IP address, ip:port or [ipv6]:port"
        )),
    }
}

fn de_proxies<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KnownProxy>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_proxy(s))
        .collect::<Result<_, _>>()
        .map_err(de::Error::custom)
}

fn path_from(s: String) -> Result<PathBuf, String> {
    if s.is_empty() {
        Err("empty path".into())
    } else if s.contains('\0') {
        Err("a path cannot contain NUL".into())
    } else {
        Ok(PathBuf::from(s))
    }
}

fn de_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    path_from(String::deserialize(d)?).map_err(de::Error::custom)
}

fn de_opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    de_path(d).map(Some)
}

fn de_socket_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let p = de_path(d)?;
    let len = p.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(de::Error::custom(format!(
            "a Unix socket path is at most {MAX_SOCKET_PATH} bytes long; this one has {len}"
        )));
    }
    Ok(p)
}

fn de_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = i64::deserialize(d)?;
    if !(1..=60_000).contains(&v) {
        return Err(de::Error::custom(format!(
            "{v} is out of range: 1 to 60000 milliseconds"
        )));
    }
    Ok(v as u64)
}

/// Longest flow idle timeout: a week, the order of conntrack's established timeout.
const MAX_FLOW_IDLE_S: i64 = 7 * 24 * 3600;

fn de_flow_idle_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = i64::deserialize(d)?;
    if !(1..=MAX_FLOW_IDLE_S).contains(&v) {
        return Err(de::Error::custom(format!(
            "{v} is out of range: 1 to {MAX_FLOW_IDLE_S} seconds"
        )));
    }
    Ok(v as u64)
}

fn de_rt_priority<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let v = i64::deserialize(d)?;
    u8::try_from(v).ok().filter(|p| *p <= 99).ok_or_else(|| {
        de::Error::custom(format!(
            "{v} is out of range: 0 (normal scheduling) or 1 to 99 (SCHED_FIFO)"
        ))
    })
}

fn de_at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    u32::try_from(v)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| de::Error::custom(format!("must be at least 1, not {v}")))
}

fn de_buffer_events<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v = i64::deserialize(d)?;
    usize::try_from(v)
        .ok()
        .filter(|n| (1..=100_000_000).contains(n))
        .ok_or_else(|| de::Error::custom(format!("{v} is out of range: 1 to 100000000")))
}

fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    let addr: SocketAddr = s.parse().map_err(|_| {
        de::Error::custom(format!(
            "{s:?} is not an IP address and port (e.g. \"198.18.0.9:514\" or \"[2001:db8::9]:514\"; host names are not resolved)"
        ))
    })?;
    if addr.port() == 0 {
        return Err(de::Error::custom(format!("{s:?}: port 0 is not allowed")));
    }
    Ok(addr)
}

impl<'de> Deserialize<'de> for IndicatorSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(deserialize_with = "de_path")]
            path: PathBuf,
            #[serde(default, deserialize_with = "de_opt_action")]
            action: Option<Action>,
        }

        fn de_opt_action<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Action>, D::Error> {
            de_action(d).map(Some)
        }

        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IndicatorSource;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a file name, or a table { path = \"…\", action = \"…\" }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<IndicatorSource, E> {
                Ok(IndicatorSource {
                    path: path_from(v.to_string()).map_err(E::custom)?,
                    action: None,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<IndicatorSource, A::Error> {
                let t = Table::deserialize(MapAccessDeserializer::new(map))?;
                Ok(IndicatorSource {
                    path: t.path,
                    action: t.action,
                })
            }
        }

        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ```toml blocks of a Markdown file.
    fn toml_blocks(md: &str) -> Vec<String> {
        let mut blocks = Vec::new();
        let mut current: Option<String> = None;
        for line in md.lines() {
            match &mut current {
                None if line.trim_start() == "```toml" => current = Some(String::new()),
                Some(b) if line.trim_start() == "```" => {
                    blocks.push(std::mem::take(b));
                    current = None;
                }
                Some(b) => {
                    b.push_str(line);
                    b.push('\n');
                }
                None => {}
            }
        }
        blocks
    }

    fn err(text: &str) -> String {
        match Config::parse(text) {
            Ok(c) => panic!("accepted {text:?}: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    const EXAMPLE: &str = r#"
mode = "block"
interfaces = ["eth0", "eth1"]
state_dir = "/var/lib/nprot"
device_groups = ["servers"]
indicators = [
    "/etc/nprot/indicators.json",
    "/etc/nprot/defender.csv",
    { path = "/etc/nprot/allow.txt", action = "Allowed" },
]
list_action = "Warn"
control_socket = "/run/nprot/control.sock"
verdict_timeout_ms = 250
rt_priority = 20
proxies = ["198.18.1.1:3128", "2001:db8::1", "[2001:db8::2]:8080"]
oversized = "block"

[events]
stdout = false
file = "/var/log/nprot/events.jsonl"
file_max_bytes = 1048576
file_keep = 3

[[events.collector]]
address = "198.18.0.9:514"
protocol = "tcp"
buffer_events = 5000

[[events.collector]]
address = "[2001:db8::9]:5140"
protocol = "udp"
"#;

    #[test]
    fn example_parses() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.mode, Mode::Block);
        assert_eq!(c.interfaces, ["eth0", "eth1"]);
        assert_eq!(c.device_groups, ["servers"]);
        assert_eq!(c.list_action, Action::Warn);
        let files: Vec<_> = c
            .indicator_files()
            .map(|(p, a)| (p.to_str().unwrap(), a))
            .collect();
        assert_eq!(
            files,
            [
                ("/etc/nprot/indicators.json", Action::Warn),
                ("/etc/nprot/defender.csv", Action::Warn),
                ("/etc/nprot/allow.txt", Action::Allowed),
            ]
        );
        assert_eq!(c.verdict_timeout_ms, 250);
        assert_eq!(c.rt_priority, 20);
        assert_eq!(c.oversized, OversizedAction::Block);
        let proxy = |ip: &str, port| KnownProxy {
            ip: ip.parse().unwrap(),
            port,
        };
        assert_eq!(
            c.proxies,
            [
                proxy("198.18.1.1", Some(3128)),
                proxy("2001:db8::1", None),
                proxy("2001:db8::2", Some(8080)),
            ]
        );
        assert_eq!(c.events.stdout, Some(false));
        assert!(!c.events.stdout_enabled());
        assert_eq!(
            c.events.file.as_deref(),
            Some(Path::new("/var/log/nprot/events.jsonl"))
        );
        assert_eq!(
            (c.events.file_max_bytes, c.events.file_keep),
            (1_048_576, 3)
        );
        assert_eq!(
            c.events.collector,
            [
                CollectorConfig {
                    address: "198.18.0.9:514".parse().unwrap(),
                    protocol: Protocol::Tcp,
                    buffer_events: 5000,
                },
                CollectorConfig {
                    address: "[2001:db8::9]:5140".parse().unwrap(),
                    protocol: Protocol::Udp,
                    buffer_events: 10_000,
                },
            ]
        );
    }

    #[test]
    fn documented_examples_parse() {
        let doc = include_str!("../../../docs/config.md");
        let blocks = toml_blocks(doc);
        assert!(!blocks.is_empty());
        for b in &blocks {
            Config::parse(b).unwrap_or_else(|e| panic!("docs/config.md example: {e}\n{b}"));
        }
        let packaged = Config::parse(include_str!("../../../packaging/nprot.toml")).unwrap();
        assert_eq!(
            packaged.events.file.as_deref(),
            Some(Path::new("/var/log/nprot/events.jsonl"))
        );
    }

    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../../../docs/config.md");
        // The unknown-field error lists every key of a table.
        for (table, probe) in [
            ("", "zzz = 1"),
            ("events", "[events]\nzzz = 1"),
            ("events.collector", "[[events.collector]]\nzzz = 1"),
            ("indicators", "indicators = [{ zzz = 1 }]"),
        ] {
            let e = err(probe);
            let expected = e.split_once("expected ").unwrap_or_else(|| panic!("{e}")).1;
            let expected = expected.strip_prefix("one of ").unwrap_or(expected);
            let keys: Vec<&str> = expected
                .split(", ")
                .flat_map(|k| k.split(" or "))
                .map(|k| k.trim().trim_matches('`'))
                .collect();
            assert!(keys.len() >= 2, "{table}: {keys:?}");
            for k in keys {
                let full = if table.is_empty() {
                    k.to_string()
                } else {
                    format!("{table}.{k}")
                };
                assert!(
                    doc.contains(&format!("`{full}`")),
                    "`{full}` is not in docs/config.md"
                );
            }
        }
    }

    #[test]
    fn every_key_is_optional() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.mode, Mode::Audit);
        assert!(c.events.stdout_enabled());
        assert_eq!(c.state_dir, Path::new("/var/lib/nprot"));
        assert_eq!(c.control_socket, Path::new("/run/nprot/control.sock"));
        assert_eq!((c.verdict_timeout_ms, c.rt_priority), (500, 10));
        assert_eq!(c.oversized, OversizedAction::Allow);
        assert_eq!(
            (c.events.file_max_bytes, c.events.file_keep),
            (104_857_600, 5)
        );
        let c = Config::parse("[events]\n").unwrap();
        assert_eq!(c, Config::default());
        // A file or collector turns stdout off unless asked for.
        let c = Config::parse("[events]\nfile = \"e.jsonl\"").unwrap();
        assert!(!c.events.stdout_enabled());
        let c = Config::parse("[events]\nfile = \"e.jsonl\"\nstdout = true").unwrap();
        assert!(c.events.stdout_enabled());
        let c = Config::parse("[[events.collector]]\naddress = \"127.0.0.1:9\"").unwrap();
        assert!(!c.events.stdout_enabled());
        assert_eq!(c.events.collector[0].protocol, Protocol::Tcp);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = err("mode = \"audit\"\nmodee = \"block\"\n");
        assert!(
            e.starts_with("line 2, column 1: modee: unknown field `modee`, expected one of `mode`"),
            "{e}"
        );
        let e = err("[events]\nstdout = true\nfiles = \"x\"\n");
        assert!(
            e.starts_with("line 3, column 1: events.files: unknown field `files`"),
            "{e}"
        );
        let e = err("[[events.collector]]\naddress = \"127.0.0.1:9\"\nproto = \"udp\"\n");
        assert!(
            e.starts_with("line 3, column 1: events.collector[0].proto: unknown field `proto`"),
            "{e}"
        );
        let e = err("indicators = [{ path = \"a.txt\", actoin = \"Block\" }]");
        assert!(
            e.starts_with("line 1, column 33: indicators[0].actoin: unknown field `actoin`"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for (text, want) in [
            (
                "mode = \"enforce\"",
                "line 1, column 8: mode: unknown mode 'enforce': expected disabled, audit or block",
            ),
            (
                "mode = 1",
                "line 1, column 8: mode: invalid type: integer `1`, expected a string",
            ),
            (
                "oversized = \"reset\"",
                "line 1, column 13: oversized: \"reset\" is neither \"allow\" nor \"block\"",
            ),
            (
                "rt_priority = 100",
                "line 1, column 15: rt_priority: 100 is out of range: 0 (normal scheduling) or 1 to 99 (SCHED_FIFO)",
            ),
            (
                "rt_priority = -1",
                "line 1, column 15: rt_priority: -1 is out of range: 0 (normal scheduling) or 1 to 99 (SCHED_FIFO)",
            ),
            (
                "verdict_timeout_ms = 0",
                "line 1, column 22: verdict_timeout_ms: 0 is out of range: 1 to 60000 milliseconds",
            ),
            (
                "\n[events]\nfile_keep = 0",
                "line 3, column 13: events.file_keep: must be at least 1, not 0",
            ),
            (
                "[[events.collector]]\naddress = \"collector.example:514\"",
                "line 2, column 11: events.collector[0].address: \"collector.example:514\" is not an IP address and port",
            ),
            (
                "[[events.collector]]\naddress = \"198.18.0.9\"",
                "line 2, column 11: events.collector[0].address: \"198.18.0.9\" is not an IP address and port",
            ),
            (
                "[[events.collector]]\naddress = \"198.18.0.9:514\"\nprotocol = \"sctp\"",
                "line 3, column 12: events.collector[0].protocol: unknown variant `sctp`, expected `tcp` or `udp`",
            ),
            (
                "[[events.collector]]\naddress = \"198.18.0.9:514\"\nbuffer_events = 0",
                "line 3, column 17: events.collector[0].buffer_events: 0 is out of range",
            ),
            (
                "[[events.collector]]\nprotocol = \"udp\"",
                "line 1, column 1: events.collector[0]: missing field `address`",
            ),
            (
                "interfaces = [\"eth0\", \"a/b\"]",
                "line 1, column 14: interfaces: \"a/b\" is not a valid interface name",
            ),
            (
                "interfaces = [\"eth0\", \"eth0\"]",
                "line 1, column 14: interfaces: interface \"eth0\" is listed twice",
            ),
            (
                "interfaces = [\"abcdefghijklmnop\"]",
                "line 1, column 14: interfaces: interface name \"abcdefghijklmnop\" is longer than 15 bytes",
            ),
            (
                "interfaces = \"eth0\"",
                "line 1, column 14: interfaces: invalid type: string \"eth0\", expected a sequence",
            ),
            (
                "proxies = [\"proxy.example:3128\"]",
                "line 1, column 11: proxies: proxy \"proxy.example:3128\": expected an IP address, ip:port or [ipv6]:port",
            ),
            (
                "device_groups = [\" \"]",
                "line 1, column 17: device_groups: empty device group name",
            ),
            (
                "list_action = \"block\"",
                "line 1, column 15: list_action: unknown action \"block\" (expected Allowed, Audit, Warn or Block)",
            ),
            (
                "indicators = [\"\"]",
                "line 1, column 15: indicators[0]: empty path",
            ),
            (
                "indicators = [3]",
                "line 1, column 15: indicators[0]: invalid type: integer `3`, expected a file name, or a table",
            ),
            (
                "indicators = [{ action = \"Block\" }]",
                "line 1, column 15: indicators[0]: missing field `path`",
            ),
            (
                "state_dir = \"\"",
                "line 1, column 13: state_dir: empty path",
            ),
            (
                &format!("control_socket = \"/{}\"", "s".repeat(107)),
                "line 1, column 18: control_socket: a Unix socket path is at most 107 bytes long; this one has 108",
            ),
            (
                "[events]\nstdout = false",
                "line 2, column 10: events.stdout: false, but there is no events.file and no [[events.collector]]: events would go nowhere",
            ),
            (
                "[events]\nstdout = \"no\"",
                "line 2, column 10: events.stdout: invalid type: string \"no\", expected a boolean",
            ),
        ] {
            let e = err(text);
            assert!(e.starts_with(want), "{text:?}:\n got  {e}\n want {want}");
        }
    }

    #[test]
    fn ring_poll_busy_polls_only_where_asked_or_with_cores_to_spare() {
        assert_eq!(Config::default().ring_poll, RingPoll::Auto);
        assert!(!RingPoll::Auto.busy(2));
        assert!(RingPoll::Auto.busy(RingPoll::BUSY_MIN_CPUS));
        assert!(RingPoll::Busy.busy(1));
        assert!(!RingPoll::Wait.busy(64));
        let Ok(c) = Config::parse("ring_poll = \"busy\"\n") else {
            panic!("ring_poll = busy rejected");
        };
        assert_eq!(c.ring_poll, RingPoll::Busy);
        let e = err("ring_poll = \"spin\"\n");
        assert!(e.contains("\"spin\" is not a ring_poll"), "{e}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = err("mode = \"audit\"\ninterfaces = [\"eth0\"\n");
        assert_eq!(e, "line 2, column 21: unclosed array, expected `]`");
        let e = err("mode = \"audit\"\nmode = \"block\"\n");
        assert!(e.starts_with("line 2, column 1: "), "{e}");
        assert!(e.contains("duplicate key"), "{e}");
    }

    #[test]
    fn load_names_the_file_and_resolves_relative_paths() {
        let dir = std::env::temp_dir().join(format!("nprot-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nprot.toml");
        std::fs::write(
            &path,
            "indicators = [\"lists/block.txt\", \"/abs/a.json\"]\nstate_dir = \"state\"\n[events]\nfile = \"ev.jsonl\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.indicators[0].path, dir.join("lists/block.txt"));
        assert_eq!(c.indicators[1].path, Path::new("/abs/a.json"));
        assert_eq!(c.state_dir, dir.join("state"));
        assert_eq!(
            c.events.file.as_deref(),
            Some(dir.join("ev.jsonl").as_path())
        );
        assert_eq!(c.control_socket, Path::new("/run/nprot/control.sock"));

        std::fs::write(&path, "mode = \"audit\"\n\n[events]\nfile_keep = 0\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: line 4, column 13: events.file_keep: must be at least 1, not 0",
                path.display()
            )
        );
        let missing = dir.join("missing.toml");
        let e = Config::load(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
