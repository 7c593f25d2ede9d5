//! The `cxstream` binary: parses the command line and hands over to the library.

use clap::Parser;

/// mimalloc: ~20% faster than glibc malloc on the engine's many small, short-lived allocations
/// (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cxstream::cli::{
    init_logging, run_check_config, run_demo, run_replay, run_service, run_simulate, Cli, Command,
};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let code = match &cli.command {
        Command::Replay(a) => run_replay(a)?,
        Command::CheckConfig { file } => run_check_config(file)?,
        Command::Simulate(a) => run_simulate(a)?,
        Command::Run(a) => run_service(a)?,
        Command::Demo(a) => run_demo(a)?,
    };
    std::process::exit(code);
}
