//! Command-line interface of the `nprot` binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Track connections only; do not capture or parse client payload.
    #[arg(long)]
    pub no_inspect: bool,
}
