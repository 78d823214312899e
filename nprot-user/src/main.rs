//! The `nprot` binary.

use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use nprot::{
    control::{
        admin,
        cli::{Cli, Command},
        daemon::{self, RunOptions},
        fleet,
    },
    replay::{self, ReplayOptions},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => RunOptions::from_args(args).and_then(run_daemon),
        Command::Status(c) => admin::status(&c),
        Command::Stats(c) => admin::stats(&c),
        Command::Mode { mode, client } => admin::mode(&client, mode),
        Command::Indicator(cmd) => admin::indicator(cmd),
        Command::Bypass {
            target,
            duration,
            client,
        } => admin::bypass(&client, &target, &duration),
        Command::Fleet(args) => fleet::operator::run(&args),
        Command::Notify { socket } => nprot::control::notify::agent::run(&socket),
        Command::Replay(args) => replay::run(&ReplayOptions {
            file: args.file,
            indicators: args.indicators,
            mode: args.mode,
            device_groups: args.device_groups,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming what went wrong and why. `eprintln!` would panic on a
            // closed stderr; then there is nobody left to tell.
            let _ = writeln!(std::io::stderr(), "nprot: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_daemon(opts: RunOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(daemon::run(opts))
}
