//! The Kafka service's part of the configuration: brokers and client settings, topics, wire
//! formats and shutdown. The engine never reads these; only `cxstream run`, `simulate` and
//! `demo` do.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::decode::Format;

/// `[kafka]`: where the brokers are and how the clients talk to them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The consumer group: every cxstream instance of one deployment shares it.
    pub group_id: String,
    /// librdkafka settings for both clients (security, SASL, SSL...), passed as they are.
    pub common: ClientProps,
    /// librdkafka settings for the consumer only.
    pub consumer: ClientProps,
    /// librdkafka settings for the producer only.
    pub producer: ClientProps,
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            brokers: "127.0.0.1:9092".into(),
            group_id: "cxstream".into(),
            common: ClientProps::default(),
            consumer: ClientProps::default(),
            producer: ClientProps::default(),
        }
    }
}

/// librdkafka properties. Values may be strings, numbers or booleans; unquoted dotted keys
/// (TOML tables, or `CXSTREAM__KAFKA__COMMON__SASL.MECHANISM` in the environment) are joined
/// back into their dotted librdkafka name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientProps(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for ClientProps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fn flatten<E: serde::de::Error>(
            prefix: &str,
            v: toml::Value,
            out: &mut BTreeMap<String, String>,
        ) -> Result<(), E> {
            let s = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let key = if prefix.is_empty() {
                            k
                        } else {
                            format!("{prefix}.{k}")
                        };
                        flatten(&key, v, out)?;
                    }
                    return Ok(());
                }
                other => {
                    return Err(E::custom(format!(
                        "{prefix}: expected a string, number or boolean, found {}",
                        other.type_str()
                    )))
                }
            };
            out.insert(prefix.to_string(), s);
            Ok(())
        }
        let table = toml::Table::deserialize(d)?;
        let mut out = BTreeMap::new();
        flatten::<D::Error>("", toml::Value::Table(table), &mut out)?;
        Ok(ClientProps(out))
    }
}

/// `[topics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsSection {
    /// Interaction events are read from these.
    pub input: Vec<String>,
    pub alerts: String,
    pub journeys: String,
    /// Rejected input, unchanged, with the reason and its origin in headers.
    pub dead_letter: String,
    /// The compacted topic shard state is kept in; default `<kafka.group_id>-state`. Created
    /// at start if missing, with as many partitions as the input topic.
    pub changelog: Option<String>,
}

impl TopicsSection {
    /// The changelog topic's name.
    pub fn changelog(&self, group_id: &str) -> String {
        self.changelog
            .clone()
            .unwrap_or_else(|| format!("{group_id}-state"))
    }
}

impl Default for TopicsSection {
    fn default() -> Self {
        TopicsSection {
            input: vec!["cx.interactions".into()],
            alerts: "cx.alerts".into(),
            journeys: "cx.journeys".into(),
            dead_letter: "cx.dead-letter".into(),
            changelog: None,
        }
    }
}

/// `[input]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputSection {
    /// json | protobuf | auto (detected per message).
    pub format: Format,
    /// An event whose `occurred_at` is more than this after its Kafka record's timestamp is
    /// dead-lettered (`future_timestamp`) instead of moving the watermark ahead of the world.
    #[serde(with = "humantime_serde")]
    pub max_ahead: Duration,
}

impl Default for InputSection {
    fn default() -> Self {
        InputSection {
            format: Format::Auto,
            max_ahead: Duration::from_secs(3600),
        }
    }
}

/// How alerts and journey summaries are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    #[default]
    Json,
    Protobuf,
}

/// `[output]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    pub format: OutputFormat,
}

/// `[service]`: process-level settings of `cxstream run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSection {
    /// On SIGTERM/SIGINT: the longest the service takes to finish in-flight work, flush and
    /// commit before it exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Outputs a shard may have waiting for broker acknowledgement before it stops taking
    /// input (backpressure).
    pub max_in_flight: usize,
    /// Messages queued between the consumer and one shard (and as many more held back before
    /// the partition is paused). Large enough that a shard catching up on a backlog does not
    /// make its partition flap between paused and fetching (each resume refetches).
    pub shard_queue: usize,
    /// Changed profiles an `at_least_once` checkpoint writes at most between two batches of
    /// input: a checkpoint is written a little at a time (at an even pace over half of
    /// `engine.commit_interval`), so that a large one does not hold the shard's input up.
    pub checkpoint_step: usize,
}

impl Default for ServiceSection {
    fn default() -> Self {
        ServiceSection {
            shutdown_timeout: Duration::from_secs(30),
            max_in_flight: 10_000,
            shard_queue: 8_192,
            checkpoint_step: 256,
        }
    }
}

/// `[processing]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingSection {
    pub guarantee: Guarantee,
}

/// What a crash may cost (`processing.guarantee`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Outputs, state changes and input offsets commit in one Kafka transaction per commit
    /// interval: a `read_committed` reader sees every output exactly once, whatever crashes.
    #[default]
    ExactlyOnce,
    /// No transactions (for brokers without them): after a crash, outputs since the last
    /// commit are produced again (with the same ids).
    AtLeastOnce,
}

/// `[http]`: the operations endpoint (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Listen address, e.g. "0.0.0.0:9464" (port 0: any free port).
    pub listen: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "0.0.0.0:9464".into(),
        }
    }
}

/// `[metrics]`: label values allowed into metrics (everything else is reported as `other`),
/// so a producer's typo or a free-text field can never explode the series count.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub segments: Vec<String>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            segments: vec!["consumer".into(), "business".into()],
        }
    }
}

/// librdkafka settings cxstream owns: overriding them would break the delivery guarantee.
const OWNED_CONSUMER_KEYS: [&str; 8] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "enable.partition.eof",
    "isolation.level",
    "transactional.id",
    "partition.assignment.strategy",
];

fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks of the service sections, in the same shape as the engine's.
pub(super) fn validate(c: &super::Config, err: &mut dyn FnMut(String, String)) {
    if c.kafka.brokers.trim().is_empty() {
        err("kafka.brokers".into(), "must not be empty".into());
    }
    if c.kafka.group_id.trim().is_empty() {
        err("kafka.group_id".into(), "must not be empty".into());
    }
    for (section, props) in [
        ("common", &c.kafka.common),
        ("consumer", &c.kafka.consumer),
        ("producer", &c.kafka.producer),
    ] {
        for key in props.0.keys() {
            if OWNED_CONSUMER_KEYS.contains(&key.as_str()) {
                err(
                    format!("kafka.{section}.{key:?}"),
                    "is set by cxstream (use kafka.brokers / kafka.group_id; offsets, transactions and rebalancing follow processing.guarantee)".into(),
                );
            }
        }
    }
    let t = &c.topics;
    if t.input.is_empty() {
        err("topics.input".into(), "needs at least one topic".into());
    }
    let outputs = [
        ("topics.alerts", &t.alerts),
        ("topics.journeys", &t.journeys),
        ("topics.dead_letter", &t.dead_letter),
    ];
    for (i, name) in t.input.iter().enumerate() {
        if !valid_topic(name) {
            err(format!("topics.input[{i}]"), format!("{name:?} is not a valid topic name (letters, digits, '.', '_', '-'; at most 249)"));
        }
        for (key, out) in outputs {
            if name == out {
                err(
                    key.into(),
                    format!("{out:?} is also an input topic: outputs would be read back as input"),
                );
            }
        }
    }
    for (key, name) in outputs {
        if !valid_topic(name) {
            err(
                key.into(),
                format!("{name:?} is not a valid topic name (letters, digits, '.', '_', '-'; at most 249)"),
            );
        }
    }
    if c.http.listen.parse::<std::net::SocketAddr>().is_err() {
        err(
            "http.listen".into(),
            format!(
                "{:?} is not an address like \"0.0.0.0:9464\"",
                c.http.listen
            ),
        );
    }
    if c.metrics.segments.len() > 50 {
        err(
            "metrics.segments".into(),
            "at most 50 segments (each one multiplies the journey series)".into(),
        );
    }
    let s = &c.service;
    if s.shutdown_timeout.is_zero() {
        err(
            "service.shutdown_timeout".into(),
            "must be greater than zero".into(),
        );
    }
    if s.max_in_flight == 0 {
        err("service.max_in_flight".into(), "must be at least 1".into());
    }
    if s.shard_queue == 0 {
        err("service.shard_queue".into(), "must be at least 1".into());
    }
    if s.checkpoint_step == 0 {
        err(
            "service.checkpoint_step".into(),
            "must be at least 1".into(),
        );
    }
    if let Some(name) = &t.changelog {
        if !valid_topic(name) {
            err(
                "topics.changelog".into(),
                format!("{name:?} is not a valid topic name (letters, digits, '.', '_', '-'; at most 249)"),
            );
        }
    }
    if c.engine.commit_interval < Duration::from_millis(10) {
        err(
            "engine.commit_interval".into(),
            "must be at least 10ms".into(),
        );
    }
    if c.engine.idle_advance.is_zero() {
        err(
            "engine.idle_advance".into(),
            "must be greater than zero".into(),
        );
    }
}
