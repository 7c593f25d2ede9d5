//! The changelog topic: where each shard's state lives between owners.
//!
//! Each input partition's shard writes its state changes to the same-numbered partition of a
//! compacted topic (`<group_id>-state` unless `topics.changelog` says otherwise), keyed as
//! [`StateKey::encode`] describes; the records of one commit end with the shard's meta record,
//! which holds the input offset to resume at. A new owner rebuilds the shard from it before
//! reading any input ([`restore`]). With `exactly_once` the records are written in the
//! shard's transaction and read back `read_committed`, so a crashed commit is invisible; with
//! `at_least_once` the meta record is written only once everything before it is acknowledged,
//! and records after the last meta record are ignored.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::Producer as _;

use super::producer::Producer;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Offset;

use crate::config::Config;
use crate::engine::snapshot::{Restore, RestoreReport, StateKey};
use crate::engine::{Engine, Rules};
use crate::telemetry;

/// How long metadata and restore reads may go without progress before giving up.
const PATIENCE: Duration = Duration::from_secs(30);

/// Librdkafka settings shared by every client (brokers, security), without role defaults.
fn base_config(c: &Config) -> ClientConfig {
    let mut cc = ClientConfig::new();
    for (k, v) in &c.kafka.common.0 {
        cc.set(k, v);
    }
    cc.set("bootstrap.servers", &c.kafka.brokers);
    cc
}

/// Makes sure the changelog topic exists with a partition per input partition, creating it
/// (compacted) if missing. Brokers that cannot create topics (the mock cluster) need it made
/// beforehand; then only its partition count is checked.
pub(crate) async fn ensure_topic(c: &Config, producer: &Producer) -> anyhow::Result<()> {
    let name = c.topics.changelog(&c.kafka.group_id);
    let partitions = |topic: String| {
        let producer = producer.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let md = producer
                .client()
                .fetch_metadata(Some(&topic), PATIENCE)
                .with_context(|| format!("cannot read the metadata of topic {topic:?}"))?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map_or(0, |t| t.partitions().len()))
        })
    };
    let mut needed = 0;
    for input in &c.topics.input {
        let p = partitions(input.clone()).await??;
        if p == 0 {
            bail!("input topic {input:?} does not exist: create it before starting the service");
        }
        needed = needed.max(p);
    }
    let have = partitions(name.clone()).await??;
    if have == 0 {
        let admin: AdminClient<DefaultClientContext> = base_config(c)
            .create()
            .context("cannot create the Kafka admin client")?;
        let topic = NewTopic::new(&name, needed as i32, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact");
        let opts = AdminOptions::new().operation_timeout(Some(PATIENCE));
        match admin.create_topics([&topic], &opts).await {
            Ok(results) => match results.into_iter().next() {
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | Some(Ok(_)) | None => {}
                Some(Err((_, code))) => {
                    bail!("cannot create the changelog topic {name:?}: {code}")
                }
            },
            Err(e) => bail!("cannot create the changelog topic {name:?}: {e}"),
        }
        telemetry::changelog_created(&name, needed);
        return Ok(());
    }
    if have < needed {
        bail!(
            "changelog topic {name:?} has {have} partitions, the input has {needed}: \
             it needs at least as many (one per input partition)"
        );
    }
    Ok(())
}

/// The changelog reader's context: reaching the end of the partition is how a restore knows
/// it is complete, not an error worth logging.
struct EndAware;

impl rdkafka::ClientContext for EndAware {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            telemetry::client_error(&error, reason);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndAware {}

/// A `read_committed` reader of the changelog that reads partitions to their end (assigned, not
/// subscribed: the group id only names it).
fn reader(c: &Config, purpose: &str) -> anyhow::Result<BaseConsumer<EndAware>> {
    let mut cc = base_config(c);
    cc.set("group.id", format!("{}-{purpose}", c.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        // Large fetches: a partition is read from start to end as fast as it can be.
        .set("fetch.max.bytes", "104857600")
        .set("max.partition.fetch.bytes", "52428800")
        .set("queued.min.messages", "1000000")
        // The end is detected by an empty fetch: do not let the broker hold it back.
        .set("fetch.wait.max.ms", "10");
    cc.create_with_context(EndAware)
        .context("cannot create the changelog reader")
}

/// Rebuilds the shard of input `topic`/`partition` from the changelog. Blocking: run it off
/// the async runtime.
pub fn restore(
    c: &Config,
    rules: Rules,
    topic: &str,
    partition: i32,
) -> anyhow::Result<(Engine, RestoreReport, Duration)> {
    let started = Instant::now();
    let changelog = c.topics.changelog(&c.kafka.group_id);
    let consumer = reader(c, "restore")?;
    let (low, high) = consumer
        .fetch_watermarks(&changelog, partition, PATIENCE)
        .with_context(|| format!("cannot read the offsets of {changelog:?} [{partition}]"))?;
    let mut r = Restore::new();
    if high > low {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&changelog, partition, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let mut progress = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    progress = Instant::now();
                    if let Some(key) = m.key().and_then(|k| StateKey::parse(topic, k)) {
                        r.feed(key, m.payload().map(<[u8]>::to_vec))?;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => telemetry::consumer_error(&e),
                None => {}
            }
            if progress.elapsed() > PATIENCE {
                bail!("reading {changelog:?} [{partition}] made no progress for {PATIENCE:?}");
            }
        }
    }
    let (engine, report) = r.finish(rules)?;
    Ok((engine, report, started.elapsed()))
}

/// The committed meta records of each shard of input `topic` (partitions `0..partitions`), in
/// log order, as a `read_committed` reader of the changelog sees them: the last one says where
/// the partition's processing stands (input position, messages read, commit number). Blocking.
pub fn committed_metas(
    c: &Config,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<Vec<crate::proto::state::ShardMeta>>> {
    use prost::Message as _;
    let changelog = c.topics.changelog(&c.kafka.group_id);
    let consumer = reader(c, "positions")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&changelog, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = vec![Vec::new(); partitions as usize];
    let mut ended = 0;
    let started = Instant::now();
    while ended < partitions {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = m.key().and_then(|k| StateKey::parse(topic, k));
                if let (Some(StateKey::Meta), Some(slot)) =
                    (key, out.get_mut(m.partition() as usize))
                {
                    slot.push(crate::proto::state::ShardMeta::decode(
                        m.payload().unwrap_or_default(),
                    )?);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => ended += 1,
            Some(Err(e)) => telemetry::consumer_error(&e),
            None => {}
        }
        if started.elapsed() > PATIENCE {
            bail!("reading {changelog:?} made no progress for {PATIENCE:?}");
        }
    }
    Ok(out)
}

/// The transactional producer of one shard. Its `transactional.id` is the partition's, so a
/// new owner's [`Producer::init_transactions`] fences the previous owner (a zombie can no
/// longer commit) and aborts its unfinished transaction. Blocking.
pub(crate) fn transactional_producer(
    c: &Config,
    topic: &str,
    partition: i32,
) -> anyhow::Result<Producer> {
    let mut cc = super::producer_config(c);
    cc.set(
        "transactional.id",
        format!("{}-{topic}-{partition}", c.kafka.group_id),
    );
    let p = Producer::new(&cc).context("cannot create the transactional producer")?;
    p.init_transactions(PATIENCE)
        .with_context(|| format!("cannot initialise transactions for {topic} [{partition}]"))?;
    p.begin_transaction()
        .context("cannot begin a transaction")?;
    Ok(p)
}
