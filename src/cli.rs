//! The command line: argument definitions and the file plumbing of each command. `main.rs`
//! only parses and dispatches, so every command is testable as a library call.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use prost::Message;

use crate::config::Config;
use crate::decode::{to_json, to_proto, Format};
use crate::engine::Engine;
use crate::replay::{replay, Sinks};
use crate::sim::{SimConfig, Simulator};

#[derive(Debug, Parser)]
#[command(
    name = "cxstream",
    version,
    about = "Streaming customer-experience event processor"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine over a recorded event file (backtest rules on real data).
    Replay(ReplayArgs),
    /// Validate a configuration file and report every error with its key path.
    CheckConfig {
        /// The configuration file (TOML).
        file: PathBuf,
    },
    /// Generate realistic omnichannel traffic for the example journeys.
    Simulate(SimulateArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    /// One JSON event per line.
    Json,
    /// Length-delimited binary protobuf (`cx.v1.InteractionEvent`).
    Protobuf,
}

impl From<FileFormat> for Format {
    fn from(f: FileFormat) -> Format {
        match f {
            FileFormat::Json => Format::Json,
            FileFormat::Protobuf => Format::Protobuf,
        }
    }
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The configuration file (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// The recorded events.
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long, value_enum, default_value = "json")]
    pub format: FileFormat,
    /// Write alerts here (JSON lines) instead of stdout.
    #[arg(long)]
    pub alerts: Option<PathBuf>,
    /// Write journey summaries here (JSON lines).
    #[arg(long)]
    pub journeys: Option<PathBuf>,
    /// At end of input, close every open journey (drop-offs and due timers fire).
    #[arg(long)]
    pub drain: bool,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Write events to this file ("-" for stdout).
    #[arg(long)]
    pub output: PathBuf,
    /// How many events to write.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// How many distinct customers.
    #[arg(long, default_value_t = 1_000)]
    pub customers: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Shuffle events by up to this much event time (e.g. "2s"), to exercise allowed_lateness.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub disorder: std::time::Duration,
    #[arg(long, value_enum, default_value = "json")]
    pub format: FileFormat,
}

fn create(path: &Path) -> anyhow::Result<Box<dyn Write>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufWriter::new(io::stdout().lock())));
    }
    let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Box::new(BufWriter::new(f)))
}

/// `cxstream replay`: returns the process exit code.
pub fn run_replay(a: &ReplayArgs) -> anyhow::Result<i32> {
    let config = Config::load(&a.config)?;
    let mut engine = Engine::from_config(&config);
    let file =
        File::open(&a.input).with_context(|| format!("cannot open {}", a.input.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut input = BufReader::with_capacity(1 << 16, file);
    let mut alerts = match &a.alerts {
        Some(p) => create(p)?,
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    let mut journeys = a.journeys.as_deref().map(create).transpose()?;
    let bar = if io::stderr().is_terminal() && size > 8 << 20 {
        let b = indicatif::ProgressBar::new(size);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let sinks = Sinks {
        alerts: &mut alerts,
        journeys: journeys.as_mut().map(|j| j as &mut dyn Write),
    };
    let report = replay(
        &mut engine,
        &mut input,
        a.format.into(),
        sinks,
        a.drain,
        &mut |n| {
            if let Some(b) = &bar {
                b.set_position(n);
            }
        },
    );
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = report.with_context(|| format!("replaying {}", a.input.display()))?;
    alerts.flush().context("writing alerts")?;
    if let Some(j) = journeys.as_mut() {
        j.flush().context("writing journey summaries")?;
    }
    eprint!("{report}");
    Ok(0)
}

/// `cxstream check-config`: 0 when valid, 1 with every error listed otherwise.
pub fn run_check_config(file: &Path) -> anyhow::Result<i32> {
    match Config::load(file) {
        Ok(c) => {
            println!("{}: ok ({} journeys)", file.display(), c.journeys.len());
            Ok(0)
        }
        Err(e) => {
            eprint!("{e}");
            Ok(1)
        }
    }
}

/// `cxstream simulate` to a file.
pub fn run_simulate(a: &SimulateArgs) -> anyhow::Result<i32> {
    let cfg = SimConfig {
        seed: a.seed,
        customers: a.customers.max(1),
        disorder: a.disorder.as_millis() as i64,
        ..SimConfig::default()
    };
    let mut out = create(&a.output)?;
    let mut buf = Vec::new();
    for e in Simulator::new(cfg).take(a.events as usize) {
        match a.format {
            FileFormat::Json => {
                serde_json::to_writer(&mut out, &to_json(&e))?;
                out.write_all(b"\n")?;
            }
            FileFormat::Protobuf => {
                buf.clear();
                to_proto(&e).encode_length_delimited(&mut buf)?;
                out.write_all(&buf)?;
            }
        }
    }
    out.flush()?;
    Ok(0)
}
