//! `cxstream demo`: the whole pipeline on one machine. Without `--brokers` it starts
//! librdkafka's in-process mock cluster (it speaks the real Kafka protocol), creates the
//! topics, runs the simulator into it and the real service on it, and prints each alert as it
//! arrives.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;

use crate::alert::Alert;
use crate::config::Config;
use crate::loadgen::{produce, Load};
use crate::service::{producer_config, Service};
use crate::sim::{SimConfig, Simulator};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct Demo {
    pub config: Config,
    /// Use these brokers instead of an in-process mock cluster.
    pub brokers: Option<String>,
    pub rate: u32,
    pub customers: u64,
    pub seed: u64,
    pub duration: Option<Duration>,
    pub input_partitions: i32,
}

/// One readable line per alert.
pub fn alert_line(a: &Alert) -> String {
    let place = match (a.journey.is_empty(), a.step.is_empty()) {
        (false, false) => format!("{} @ {}", a.journey, a.step),
        (false, true) => a.journey.to_string(),
        (true, _) if !a.touchpoint.is_empty() => format!("(no journey) @ {}", a.touchpoint),
        _ => "(profile)".to_string(),
    };
    let channels: Vec<&str> = a.channels.iter().map(|c| c.as_str()).collect();
    let via = if channels.is_empty() {
        String::new()
    } else {
        format!(" via {}", channels.join(">"))
    };
    format!(
        "{} {:<8} {:<18} {:<40} {} [{}{}] score {:.1}{via}",
        crate::event::format_millis(a.occurred_at),
        a.severity.as_str().to_uppercase(),
        a.alert_type.as_str(),
        place,
        a.profile_id,
        a.tier,
        if a.segment.is_empty() {
            String::new()
        } else {
            format!("/{}", a.segment)
        },
        a.score,
    )
}

/// Runs the demo until `stop` completes (or the duration passes). Returns alerts seen by type.
pub async fn run(
    mut demo: Demo,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    // The mock cluster lives as long as the demo.
    let mock = match &demo.brokers {
        Some(b) => {
            demo.config.kafka.brokers = b.clone();
            None
        }
        None => {
            let mock = MockCluster::new(1)?;
            demo.config.kafka.brokers = mock.bootstrap_servers();
            for t in &demo.config.topics.input {
                mock.create_topic(t, demo.input_partitions, 1)?;
            }
            let t = &demo.config.topics;
            for out in [&t.alerts, &t.journeys, &t.dead_letter] {
                mock.create_topic(out, 1, 1)?;
            }
            // The mock cannot create topics on request: the changelog is made here.
            let changelog = t.changelog(&demo.config.kafka.group_id);
            mock.create_topic(&changelog, demo.input_partitions, 1)?;
            eprintln!(
                "demo: in-process Kafka mock cluster at {}",
                demo.config.kafka.brokers
            );
            Some(mock)
        }
    };
    // The simulated traffic's event time runs far faster than the wall clock (see below):
    // within a minute it is hours ahead of its records' timestamps.
    demo.config.input.max_ahead = Duration::from_secs(100 * 365 * 86_400);
    let config = &demo.config;
    let service = Service::start(config).await?;
    eprintln!(
        "demo: Prometheus metrics at http://{}/metrics (health: /healthz, /readyz)",
        service.http_addr()
    );

    let printer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set(
            "group.id",
            format!("{}-demo-printer", config.kafka.group_id),
        )
        .set("auto.offset.reset", "earliest")
        .create()?;
    printer.subscribe(&[config.topics.alerts.as_str()])?;

    let producer = producer_config(config).create()?;
    let sim = Simulator::new(SimConfig {
        seed: demo.seed,
        customers: demo.customers.max(1),
        start: crate::clock::now_millis(),
        // A session per customer about every hour of event time: at the default rate and
        // customer count, event time runs over 100x faster than the wall clock (a 30 s run
        // ends ~57 minutes of event time on), so 30-minute drop-offs show within half a
        // minute.
        session_gap: 3_600_000,
        disorder: 1_000,
    });
    let load = Load {
        rate: Some(demo.rate),
        events: None,
        duration: demo.duration,
        format: crate::config::OutputFormat::Json,
    };
    let topic = config.topics.input[0].clone();
    let mut seen = BTreeMap::new();
    {
        let traffic = produce(&producer, &topic, sim, load, stop);
        tokio::pin!(traffic);
        let mut alerts = printer.stream();
        loop {
            tokio::select! {
                r = &mut traffic => {
                    let n = r?;
                    eprintln!("demo: {n} events produced; stopping");
                    break;
                }
                Some(m) = alerts.next() => {
                    let m = m?;
                    let parsed = m.payload().and_then(|p| serde_json::from_slice::<Alert>(p).ok());
                    let kind = m
                        .headers()
                        .and_then(|h| h.iter().find(|h| h.key == "type").and_then(|h| h.value))
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    *seen.entry(kind.clone()).or_insert(0) += 1;
                    match parsed {
                        Some(a) => println!("{}", alert_line(&a)),
                        None => println!("{kind} alert (non-JSON payload)"),
                    }
                }
            }
        }
    }
    let report = service.stop().await;
    eprintln!(
        "demo: service stopped ({}), alerts by type: {seen:?}",
        if report.clean { "clean" } else { "NOT clean" }
    );
    // Clients first: closing them needs the (mock) brokers.
    drop(printer);
    drop(producer);
    drop(mock);
    Ok(seen)
}
