//! The command line: argument definitions and the file plumbing of each command. `main.rs`
//! only parses and dispatches, so every command is testable as a library call.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use prost::Message;

use crate::config::{Config, OutputFormat};
use crate::decode::{to_json, to_proto, Format};
use crate::demo::Demo;
use crate::engine::Engine;
use crate::loadgen::{produce, Load};
use crate::replay::{replay, Sinks};
use crate::service::{producer_config, Service};
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
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=cxstream=debug).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Structured logs on stderr (librdkafka's own log lines included), `RUST_LOG` filtering.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
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
    /// Generate realistic omnichannel traffic for the example journeys, to a file or a topic.
    Simulate(SimulateArgs),
    /// The service: consume interaction events from Kafka, produce alerts and journey summaries.
    Run(RunArgs),
    /// The whole pipeline on this machine: an in-process Kafka (unless --brokers), simulated
    /// traffic, the service, and each alert printed as it arrives.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file (TOML). Any key can be overridden by a CXSTREAM__ environment
    /// variable, e.g. CXSTREAM__KAFKA__BROKERS=host:9092.
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Use these brokers instead of an in-process mock cluster (topics must exist).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Configuration (default: the example journeys, examples/cxstream.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Simulated events per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    #[arg(long, default_value_t = 2_000)]
    pub customers: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
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
#[command(group(clap::ArgGroup::new("sink").required(true).args(["output", "brokers"])))]
pub struct SimulateArgs {
    /// Write events to this file ("-" for stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Produce to Kafka at these brokers instead (keyed by person).
    #[arg(long, requires = "topic")]
    pub brokers: Option<String>,
    /// The topic to produce to (with --brokers).
    #[arg(long)]
    pub topic: Option<String>,
    /// Events per second (with --brokers; default: as fast as the broker takes them).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Stop after this long (with --brokers).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// How many events (default: 10000 to a file, unlimited to Kafka).
    #[arg(long)]
    pub events: Option<u64>,
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
    if let (Some(brokers), Some(topic)) = (&a.brokers, &a.topic) {
        return simulate_to_kafka(a, cfg, brokers, topic);
    }
    let Some(output) = &a.output else {
        anyhow::bail!("give --output FILE or --brokers B --topic T");
    };
    let mut out = create(output)?;
    let mut buf = Vec::new();
    for e in Simulator::new(cfg).take(a.events.unwrap_or(10_000) as usize) {
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn simulate_to_kafka(
    a: &SimulateArgs,
    cfg: SimConfig,
    brokers: &str,
    topic: &str,
) -> anyhow::Result<i32> {
    let mut config = Config::default();
    config.kafka.brokers = brokers.to_string();
    let format = match a.format {
        FileFormat::Json => OutputFormat::Json,
        FileFormat::Protobuf => OutputFormat::Protobuf,
    };
    let load = Load {
        rate: a.rate,
        events: a.events,
        duration: a.duration,
        format,
    };
    let sim = Simulator::new(SimConfig {
        start: crate::clock::now_millis(),
        ..cfg
    });
    runtime()?.block_on(async {
        let producer = producer_config(&config).create()?;
        let n = produce(&producer, topic, sim, load, shutdown_signal()).await?;
        eprintln!("simulate: {n} events produced to {topic}");
        Ok(0)
    })
}

/// `cxstream run`: the service, until SIGTERM/SIGINT. 0 after a clean stop.
pub fn run_service(a: &RunArgs) -> anyhow::Result<i32> {
    let config = Config::load(&a.config)?;
    runtime()?.block_on(async {
        let service = Service::start(&config).await?;
        let report = service.run_until(shutdown_signal()).await;
        Ok(if report.clean { 0 } else { 1 })
    })
}

/// `cxstream demo`.
pub fn run_demo(a: &DemoArgs) -> anyhow::Result<i32> {
    let mut config = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::from_toml_and_env(crate::config::EXAMPLE_TOML)?,
    };
    if a.brokers.is_none() {
        config.kafka.group_id = "cxstream-demo".into();
    }
    let demo = Demo {
        config,
        brokers: a.brokers.clone(),
        rate: a.rate.max(1),
        customers: a.customers,
        seed: a.seed,
        duration: a.duration,
        input_partitions: 4,
    };
    runtime()?.block_on(async {
        crate::demo::run(demo, shutdown_signal()).await?;
        Ok(0)
    })
}
