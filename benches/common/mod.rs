//! Helpers shared by the Kafka benchmarks (each bench uses a subset).
#![allow(dead_code)]

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::ClientConfig;

/// The allocator the `cxstream` binary ships with, so the Kafka benchmarks measure what runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The example config on `brokers` with a fresh group and topics named `<prefix>-…-<tag>`,
/// metrics on a free port, and `CXSTREAM_BENCH_GUARANTEE` (`at_least_once`; default
/// `exactly_once`).
pub(crate) fn bench_config(brokers: &str, prefix: &str) -> cxstream::config::Config {
    let tag = format!("{:x}", fastrand::u64(..));
    let mut c = cxstream::config::Config::example();
    c.kafka.brokers = brokers.to_string();
    c.kafka.group_id = format!("{prefix}-{tag}");
    c.topics.input = vec![format!("{prefix}-in-{tag}")];
    c.topics.alerts = format!("{prefix}-alerts-{tag}");
    c.topics.journeys = format!("{prefix}-journeys-{tag}");
    c.topics.dead_letter = format!("{prefix}-dlq-{tag}");
    c.http.listen = "127.0.0.1:0".into();
    if std::env::var("CXSTREAM_BENCH_GUARANTEE").as_deref() == Ok("at_least_once") {
        c.processing.guarantee = cxstream::config::Guarantee::AtLeastOnce;
    }
    // The service producer's `linger.ms` (the service's default: 2 ms).
    if let Ok(l) = std::env::var("CXSTREAM_BENCH_LINGER_MS") {
        c.kafka.producer.0.insert("linger.ms".into(), l);
    }
    c
}

/// A setting from the environment, or its default.
pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Creates `(name, partitions, compacted)` topics on the mock cluster, or through the admin
/// API on an external broker (`brokers`).
pub(crate) async fn create_topics(
    mock: Option<&MockCluster<'_, DefaultProducerContext>>,
    brokers: &str,
    topics: &[(&str, i32, bool)],
) {
    match mock {
        Some(m) => {
            for (name, partitions, _) in topics {
                m.create_topic(name, *partitions, 1).unwrap();
            }
        }
        None => {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()
                .unwrap();
            let new: Vec<_> = topics
                .iter()
                .map(|(name, partitions, compacted)| {
                    let t = NewTopic::new(name, *partitions, TopicReplication::Fixed(1));
                    if *compacted {
                        t.set("cleanup.policy", "compact")
                    } else {
                        t
                    }
                })
                .collect();
            admin
                .create_topics(&new, &AdminOptions::new())
                .await
                .unwrap();
        }
    }
}

/// Starts the service on `config` and returns once it owns all `partitions` of its input
/// (group joined, shards restored).
pub(crate) async fn start_owning(
    config: &cxstream::config::Config,
    partitions: i32,
) -> cxstream::service::Service {
    let service = cxstream::service::Service::start(config).await.unwrap();
    service
        .status()
        .wait_for(|s| s.assigned.len() == partitions as usize)
        .await
        .unwrap();
    service
}
