//! Command-line interface of the `nprot` binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::mode::Mode;

/// nprot: a transparent network-protection sensor.
#[derive(Debug, Parser)]
#[command(name = "nprot", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sensor on one or more interfaces until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Show the running sensor's mode, interfaces and indicator counts.
    Status(ClientArgs),
    /// Show the running sensor's counters and verdict-latency percentiles.
    Stats(ClientArgs),
    /// Switch the running sensor's enforcement mode (persisted).
    Mode {
        /// disabled, audit or block.
        mode: Mode,
        /// Where the daemon is, and how to print its answer.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage the running sensor's indicators (persisted).
    #[command(subcommand)]
    Indicator(IndicatorCommand),
    /// Allow a target that a Warn indicator resets, for a while (persisted, logged).
    Bypass {
        /// The warned domain, URL or IP address.
        target: String,
        /// How long: e.g. 90s, 30m, 24h, 7d.
        #[arg(long = "for", value_name = "DURATION", default_value = "24h")]
        duration: String,
        /// Where the daemon is, and how to print its answer.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replay a capture file (pcap or pcapng, e.g. from `tcpdump -w`) through the same
    /// inspection and policy, printing the events as JSON lines on stdout.
    Replay(ReplayArgs),
    /// Manage the fleet's policy in NATS JetStream, and see every sensor's state.
    Fleet(FleetArgs),
    /// Desktop prompts: show this user's blocked and warned flows as desktop
    /// notifications (run one per desktop session, as the user).
    Notify {
        /// The daemon's notify socket (its `notify_socket`).
        #[arg(long, value_name = "PATH", default_value = crate::control::notify::server::DEFAULT_NOTIFY_SOCKET)]
        socket: PathBuf,
    },
}

/// `nprot fleet …`: where the NATS servers are, and as whom.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// A config file whose `[fleet]` says where the servers are and as whom.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A NATS server URL (repeat for several); replaces the config's `fleet.servers`.
    #[arg(long = "server", value_name = "URL")]
    pub servers: Vec<String>,
    /// NATS user (with `--password`).
    #[arg(long)]
    pub user: Option<String>,
    /// NATS password; also read from `NPROT_FLEET_PASSWORD`.
    #[arg(long, env = "NPROT_FLEET_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// A NATS credentials file.
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Print answers as JSON.
    #[arg(long)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: FleetCommand,
}

/// `nprot fleet …` commands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Create the policy and status buckets and the events stream where missing.
    Init {
        /// Copies of each kept in the cluster (1, 3 or 5).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// Manage the fleet's indicators.
    #[command(subcommand)]
    Indicator(FleetIndicatorCommand),
    /// Set the mode of a device group's sensors (or of every sensor: `all`).
    Mode {
        /// disabled, audit or block; `none` removes the group's mode.
        mode: String,
        /// The device group.
        #[arg(long, default_value = "all")]
        group: String,
    },
    /// Print the nats-server `authorization` user entry for a sensor: it may read the
    /// policy and write only its own heartbeat and events (no server is contacted).
    SensorUser {
        /// The sensor's `fleet.device`.
        #[arg(long)]
        device: String,
        /// Its password.
        #[arg(long, env = "NPROT_SENSOR_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Print the events in the fleet's stream, oldest first, one JSON line each.
    Events {
        /// Only this sensor's.
        #[arg(long)]
        device: Option<String>,
    },
    /// Every sensor's last heartbeat, the policy revision it applied, its mode and
    /// counters, and which are behind.
    Status {
        /// Heartbeats older than this many seconds count as stale.
        #[arg(long, default_value_t = 10)]
        stale_s: u64,
    },
}

/// `nprot fleet indicator …`.
#[derive(Debug, Subcommand)]
pub enum FleetIndicatorCommand {
    /// Add (or replace, by id) one indicator for a device group.
    Add {
        /// The indicator.
        #[command(flatten)]
        spec: IndicatorSpec,
        /// The device group (`all`: every sensor).
        #[arg(long, default_value = "all")]
        group: String,
    },
    /// Remove indicators by id.
    Remove {
        /// Ids of the indicators to remove.
        #[arg(required = true)]
        ids: Vec<String>,
        /// The device group.
        #[arg(long, default_value = "all")]
        group: String,
    },
    /// List the fleet's indicators (every group, or one).
    List {
        /// Only this device group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Import an indicator file (all entries or none: each is checked first).
    Import {
        /// The indicator file (JSON or Defender CSV).
        file: PathBuf,
        /// The device group.
        #[arg(long, default_value = "all")]
        group: String,
    },
}

/// Arguments of `nprot run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML, docs/config.md); flags override its keys. Without this
    /// flag /etc/nprot/nprot.toml is read if it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to guard (repeat for several); replaces the config's `interfaces`.
    #[arg(short, long = "interface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Append events (JSON lines) to FILE, rotated by size; replaces the config's
    /// `events.file` (collectors stay; stdout only if `events.stdout = true`).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Network-protection level: disabled (no inspection), audit (log only), block.
    /// Without it, the mode last set by `nprot mode`, else the config's (else audit).
    #[arg(long, value_name = "MODE")]
    pub mode: Option<Mode>,
    /// Indicators to enforce (JSON, Defender CSV, or a plain list of domains/IPs/CIDRs
    /// blocked; repeat for several); replaces the config's; reloaded on SIGHUP. The sensor
    /// does not start if one is invalid.
    #[arg(long, value_name = "FILE")]
    pub indicators: Vec<PathBuf>,
    /// Where run-time changes (mode, indicators added by the CLI) are kept
    /// [config: state_dir, default /var/lib/nprot].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The root-only control socket the CLI talks to
    /// [config: control_socket, default /run/nprot/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// A device group this sensor belongs to (repeat for several); adds to the config's.
    #[arg(long = "device-group", value_name = "GROUP")]
    pub device_groups: Vec<String>,
    /// Release a flow whose verdict takes longer than this (fail-open), in milliseconds
    /// [config: verdict_timeout_ms, default 500].
    #[arg(long, value_name = "MS")]
    pub verdict_timeout_ms: Option<u64>,
    /// SCHED_FIFO priority of the verdict loop (1-99; 0 keeps normal scheduling). The
    /// verdict must beat the server's answer, so the daemon must run the moment a record
    /// arrives, whatever else the host is doing [config: rt_priority, default 10].
    #[arg(long, value_name = "PRIO", value_parser = clap::value_parser!(u8).range(0..=99))]
    pub rt_priority: Option<u8>,
    /// Process attribution: the cgroup v2 directory whose processes are attributed
    /// (`auto`: the root of the cgroup v2 mount), or `off`
    /// [config: process_cgroup, default auto].
    #[arg(long, value_name = "DIR|auto|off")]
    pub process_cgroup: Option<crate::control::config::ProcessCgroup>,
    /// Serve `/metrics` (Prometheus text format) on ADDR, e.g. 127.0.0.1:9477
    /// [config: metrics_listen, default none].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// What a blocked plain-HTTP request gets in block mode: `page` (a page, or a redirect
    /// to the indicator's redirect_url) or `reset` [config: block_page, default page].
    #[arg(long, value_name = "page|reset")]
    pub block_page: Option<crate::control::config::BlockPage>,
    /// Who may bypass a Warn: `admin` (nprot bypass) or `user` (also the page's Continue
    /// link, the desktop prompt's Allow) [config: warn_bypass, default admin].
    #[arg(long, value_name = "admin|user")]
    pub warn_bypass: Option<crate::control::config::WarnBypass>,
    /// On exit, write counters and verdict-latency percentiles to FILE (JSON).
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
    /// Attach with the clsact qdisc even where TCX links exist (for tests of the
    /// older kernels' path).
    #[arg(long, hide = true)]
    pub force_clsact: bool,
}

/// `nprot replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Capture file (pcap or pcapng); `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Indicators to match (JSON, as for `nprot run`).
    #[arg(long, value_name = "FILE")]
    pub indicators: Option<PathBuf>,
    /// Network-protection level to replay under: disabled, audit, block.
    #[arg(long, value_name = "MODE", default_value = "audit")]
    pub mode: Mode,
    /// A device group the sensor belongs to (repeat for several).
    #[arg(long = "device-group", value_name = "GROUP")]
    pub device_groups: Vec<String>,
}

/// Options of every command that talks to the daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = crate::control::socket::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The fields of an indicator that `indicator add` and `fleet indicator add` take.
#[derive(Debug, Clone, clap::Args)]
pub struct IndicatorSpec {
    /// IpAddress, DomainName or Url.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,
    /// The address, CIDR, domain or URL.
    #[arg(long)]
    pub value: String,
    /// Allowed, Audit, Warn or Block.
    #[arg(long)]
    pub action: String,
    /// The indicator's id (derived from its type and value when not given).
    #[arg(long)]
    pub id: Option<String>,
    /// A title for events and lists.
    #[arg(long)]
    pub title: Option<String>,
    /// RFC 3339, e.g. 2027-01-01T00:00:00Z.
    #[arg(long)]
    pub expiration: Option<String>,
    /// Block/Warn: redirect a blocked plain-HTTP request here (302) instead of the page.
    #[arg(long, value_name = "URL")]
    pub redirect_url: Option<String>,
    /// Warn: how long a user's bypass lasts, in seconds (default a day).
    #[arg(long, value_name = "SECONDS")]
    pub bypass_duration_s: Option<u32>,
}

impl IndicatorSpec {
    /// The indicator file's JSON object for these fields (without `id`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut ind = serde_json::json!({
            "type": self.kind, "value": self.value, "action": self.action,
        });
        for (key, v) in [
            ("title", &self.title),
            ("expiration", &self.expiration),
            ("redirect_url", &self.redirect_url),
        ] {
            if let Some(v) = v {
                ind[key] = serde_json::json!(v);
            }
        }
        if let Some(secs) = self.bypass_duration_s {
            ind["bypass_duration_s"] = serde_json::json!(secs);
        }
        ind
    }
}

/// `nprot indicator …`.
#[derive(Debug, Subcommand)]
pub enum IndicatorCommand {
    /// Add (or replace, by id) one indicator.
    Add {
        /// The indicator.
        #[command(flatten)]
        spec: IndicatorSpec,
        /// Apply to one program only: its executable's file name (`curl`) or absolute
        /// path (`/usr/bin/curl`).
        #[arg(long)]
        process: Option<String>,
        /// Where the daemon is, and how to print its answer.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove run-time indicators by id.
    Remove {
        /// Ids of the indicators to remove.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Where the daemon is, and how to print its answer.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the indicators in force.
    List(ClientArgs),
    /// Import an indicator file (all entries or none): JSON, Defender CSV (`.csv`), or a
    /// plain list / hosts file (anything else) whose entries get `--list-action`.
    Import {
        /// The indicator file.
        file: PathBuf,
        /// Action for the entries of a plain list.
        #[arg(long, default_value = "Block")]
        list_action: String,
        /// Where the daemon is, and how to print its answer.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the indicators in force as an indicator file (JSON).
    Export(ClientArgs),
}
