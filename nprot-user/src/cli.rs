//! Command-line interface of the `nprot` binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::verdict::Mode;

/// nprot: a transparent network-protection sensor.
#[derive(Debug, Parser)]
#[command(name = "nprot", version, about)]
pub struct Cli {
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
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage the running sensor's indicators (persisted).
    #[command(subcommand)]
    Indicator(IndicatorCommand),
    /// Replay a capture file (pcap or pcapng, e.g. from `tcpdump -w`) through the same
    /// inspection and policy, printing the events as JSON lines on stdout.
    Replay(ReplayArgs),
}

/// Arguments of `nprot run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Interface to guard (repeat for several).
    #[arg(short, long = "interface", value_name = "IF", required = true)]
    pub interfaces: Vec<String>,
    /// Append events (JSON lines) to FILE instead of writing them to stdout.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Network-protection level: disabled (no inspection), audit (log only), block.
    /// Without it, the mode last set by `nprot mode` (else audit).
    #[arg(long, value_name = "MODE")]
    pub mode: Option<Mode>,
    /// Indicators to enforce (JSON, DESIGN §5; repeat for several); reloaded on SIGHUP.
    /// The sensor does not start if one is invalid.
    #[arg(long, value_name = "FILE")]
    pub indicators: Vec<PathBuf>,
    /// Where run-time changes (mode, indicators added by the CLI) are kept.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/nprot")]
    pub state_dir: PathBuf,
    /// The root-only control socket the CLI talks to.
    #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    /// A device group this sensor belongs to (repeat for several).
    #[arg(long = "device-group", value_name = "GROUP")]
    pub device_groups: Vec<String>,
    /// Release a flow whose verdict takes longer than this (fail-open), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub verdict_timeout_ms: u64,
    /// SCHED_FIFO priority of the verdict loop (1-99; 0 keeps normal scheduling). The
    /// verdict must beat the server's answer, so the daemon must run the moment a record
    /// arrives, whatever else the host is doing.
    #[arg(long, value_name = "PRIO", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=99))]
    pub rt_priority: u8,
    /// On exit, write counters and verdict-latency percentiles to FILE (JSON).
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
}

/// Arguments of `nprot replay`.
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
    #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `nprot indicator …`.
#[derive(Debug, Subcommand)]
pub enum IndicatorCommand {
    /// Add (or replace, by id) one indicator.
    Add {
        /// IpAddress, DomainName or Url.
        #[arg(long = "type", value_name = "TYPE")]
        kind: String,
        /// The address, CIDR, domain or URL.
        #[arg(long)]
        value: String,
        /// Allowed, Audit, Warn or Block.
        #[arg(long)]
        action: String,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        title: Option<String>,
        /// RFC 3339, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expiration: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove run-time indicators by id.
    Remove {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the indicators in force.
    List(ClientArgs),
    /// Import a JSON indicator file (all entries or none).
    Import {
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the indicators in force as an indicator file (JSON).
    Export(ClientArgs),
}
