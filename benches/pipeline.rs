//! End to end through Kafka: the full `cxstream run` path (consumer thread, shards, producer,
//! commits per `CXSTREAM_BENCH_GUARANTEE`) against the ceiling of a bare rdkafka consumer that
//! only counts the same pre-produced messages on the same broker, in one run.
//!
//! Run: `cargo bench --bench pipeline` (librdkafka's in-process mock cluster), or with
//! `CXSTREAM_BENCH_BROKERS=host:port` for an external broker. `CXSTREAM_BENCH_EVENTS`
//! (default 400,000) events of the simulator's mix over `CXSTREAM_BENCH_PARTITIONS` (default
//! 16) partitions, protobuf encoded: the mock keeps at most 5 MiB per partition (about 25,000
//! of these events), so more events need more partitions.
//! `CXSTREAM_BENCH_WORKERS` sets the runtime's worker threads (default: all cores), and
//! `CXSTREAM_BENCH_LINGER_MS` the service producer's `linger.ms`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cxstream::config::OutputFormat;
use cxstream::engine::snapshot::StateKey;
use cxstream::event::{Action, Channel, Event};
use cxstream::loadgen::encode;
use cxstream::proto::state::ShardMeta;
use cxstream::sim::{person_key, SimConfig, Simulator};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

mod common;
use common::{bench_config, create_topics, env_or, start_owning};

fn partition_of(key: &str, partitions: i32) -> i32 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % partitions as u64) as i32
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        cxstream::cli::init_logging(cxstream::cli::LogFormat::Text); // the service's own logs
    }
    let n: usize = env_or("CXSTREAM_BENCH_EVENTS", 400_000);
    let partitions: i32 = env_or("CXSTREAM_BENCH_PARTITIONS", 16);
    let workers: usize = env_or(
        "CXSTREAM_BENCH_WORKERS",
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let external = std::env::var("CXSTREAM_BENCH_BROKERS")
        .ok()
        .filter(|b| !b.is_empty());
    let mock = external.is_none().then(|| MockCluster::new(1).unwrap());
    let brokers = match (&external, &mock) {
        (Some(b), _) => b.clone(),
        (None, Some(m)) => m.bootstrap_servers(),
        (None, None) => unreachable!("one of them is set"),
    };
    let mut config = bench_config(&brokers, "bench");
    let tag = config.kafka.group_id.clone();
    config.engine.idle_advance = Duration::from_secs(3600);
    config.service.shard_queue = env_or("CXSTREAM_BENCH_SHARD_QUEUE", config.service.shard_queue);
    config
        .kafka
        .consumer
        .0
        .insert("auto.commit.interval.ms".into(), "100".into());
    // The mock cluster lets a member that closed hold its place in the group until its session
    // times out (45 s by default; a plain rdkafka consumer closing and rejoining waits the
    // same): a short session keeps the restart below from waiting on that.
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ] {
        config.kafka.consumer.0.insert(k.into(), v.into());
    }
    let input = config.topics.input[0].clone();

    rt.block_on(async {
        let t = &config.topics;
        let changelog = t.changelog(&config.kafka.group_id);
        create_topics(
            mock.as_ref(),
            &brokers,
            &[
                (&input, partitions, false),
                (&t.alerts, 1, false),
                (&t.journeys, 1, false),
                (&t.dead_letter, 1, false),
                (&changelog, partitions, true),
            ],
        )
        .await;

        // Pre-produce the simulator's mix. The rest of the input (`n / 4` events, read after a
        // restart) follows later.
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "20")
            .create()
            .unwrap();
        let customers = (n as u64 / 20).max(100);
        let mut per_partition = vec![0i64; partitions as usize];
        let first_part: Vec<Event> = Simulator::new(SimConfig {
            seed: 3,
            customers,
            disorder: 2_000,
            ..SimConfig::default()
        })
        .take(n)
        .collect();
        let end_of_first = produce(
            &producer,
            &input,
            partitions,
            first_part,
            &mut per_partition,
        )
        .await;
        let total: i64 = per_partition.iter().sum();

        // The ceiling: a bare consumer counting every message, in three passes over the same
        // messages (a fresh consumer each), the fastest taken. A pass now and then stalls on
        // the mock for most of a second (0.3M msg/s against ~1.9M in the others): one pass
        // could report a ceiling below cxstream's own rate.
        let passes: Vec<(Duration, Duration)> = (0..BARE_PASSES)
            .map(|pass| {
                bare_pass(
                    &brokers,
                    &format!("bare-{tag}-{pass}"),
                    &input,
                    partitions,
                    total,
                )
            })
            .collect();
        let bare_took = passes.iter().map(|p| p.0).min().expect("passes");
        let bare_flowing = passes.iter().map(|p| p.1).min().expect("passes");
        let seconds = |pick: fn(&(Duration, Duration)) -> Duration| {
            passes
                .iter()
                .map(|p| format!("{:.2}", pick(p).as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        };

        // cxstream, until every offset before the sentinels is committed, as each shard's
        // newest changelog meta record says (the mock cluster does not store transactional
        // offset commits, so the group's offsets cannot tell with `exactly_once`): from owning
        // the partitions (the group join is not counted), and from its first output.
        let complete = total - i64::from(partitions); // the sentinels stay uncommitted
        let commits = Commits::follow(&brokers, &config, partitions);
        let service = start_owning(&config, partitions).await;
        let started = Instant::now();
        let (first_output, last_output) = commits
            .wait_for(complete)
            .expect("outputs were seen before the last commit");
        drop(commits);
        let took = started.elapsed();
        let flowing = last_output - first_output;
        let report = service.stop().await;
        assert!(report.clean);
        let per_s = |d: Duration| total as f64 / d.as_secs_f64();
        println!(
            "pipeline: {total} events, {partitions} partitions, {workers} worker threads, {:?}\n  \
             from assignment: bare consumer {:.0} msg/s (fastest of {} passes: {} s), \
             cxstream {:.0} events/s ({:.2} s until all committed) = {:.0}%\n  \
             once flowing: bare consumer {:.0} msg/s (first to last message, fastest of {}: \
             {} s), cxstream {:.0} events/s (first to last output, {:.2} s) = {:.0}%",
            config.processing.guarantee,
            per_s(bare_took),
            BARE_PASSES,
            seconds(|p| p.0),
            per_s(took),
            took.as_secs_f64(),
            100.0 * bare_took.as_secs_f64() / took.as_secs_f64(),
            per_s(bare_flowing),
            BARE_PASSES,
            seconds(|p| p.1),
            per_s(flowing),
            flowing.as_secs_f64(),
            100.0 * bare_flowing.as_secs_f64() / flowing.as_secs_f64(),
        );

        // Catch-up after a restart: while the service is down, a quarter as many events again
        // arrive (the same customers, later sessions; their journeys from before are still open
        // in the restored state). Timed from `Service::start` (group join, restore of every
        // shard, reading the backlog) until every new offset is committed.
        let later: Vec<Event> = Simulator::new(SimConfig {
            seed: 4,
            customers,
            start: end_of_first + 60_000,
            disorder: 2_000,
            ..SimConfig::default()
        })
        .take(n / 4)
        .collect();
        let backlog = later.len() + partitions as usize;
        produce(&producer, &input, partitions, later, &mut per_partition).await;
        let complete = per_partition.iter().sum::<i64>() - i64::from(partitions);
        let commits = Commits::follow(&brokers, &config, partitions);
        let started = Instant::now();
        let service = start_owning(&config, partitions).await;
        let assigned = started.elapsed();
        commits.wait_for(complete);
        drop(commits);
        let took = started.elapsed();
        let report = service.stop().await;
        assert!(report.clean);
        println!(
            "catch-up after a restart: {backlog} events behind, state of {customers} customers: \
             {:.2} s from start until all committed ({:.2} s until the partitions were assigned \
             with restored state), {:.0} events/s over the backlog",
            took.as_secs_f64(),
            assigned.as_secs_f64(),
            backlog as f64 / (took - assigned).as_secs_f64(),
        );
    });
}

/// What the follower saw.
enum Seen {
    /// The first output record (alert or journey summary) since the follower started.
    FirstOutput(Instant),
    /// A shard's meta record: events committed (the sum of the input positions), and when the
    /// newest output so far was seen.
    Committed(i64, Option<Instant>),
}

/// Follows the changelog and the output topics from a thread of its own.
struct Commits {
    rx: std::sync::mpsc::Receiver<Seen>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Commits {
    fn follow(brokers: &str, config: &cxstream::config::Config, partitions: i32) -> Commits {
        let t = &config.topics;
        let changelog = t.changelog(&config.kafka.group_id);
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("follow-{changelog}"))
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut tpl = from_beginning(&changelog, partitions);
        for output in [&t.alerts, &t.journeys] {
            tpl.add_partition_offset(output, 0, Offset::End).unwrap();
        }
        reader.assign(&tpl).unwrap();
        let input = t.input[0].clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut at = vec![0i64; partitions as usize];
            let mut last_output = None;
            while !stopped.load(Ordering::Acquire) {
                let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) else {
                    continue;
                };
                if m.topic() != changelog {
                    let now = Instant::now();
                    if last_output.replace(now).is_none() {
                        let _ = tx.send(Seen::FirstOutput(now));
                    }
                    continue;
                }
                if StateKey::parse(&input, m.key().unwrap_or_default()) != Some(StateKey::Meta) {
                    continue;
                }
                let meta = ShardMeta::decode(m.payload().unwrap_or_default()).unwrap();
                at[m.partition() as usize] = meta.input_offset;
                let _ = tx.send(Seen::Committed(at.iter().sum(), last_output));
            }
        });
        Commits {
            rx,
            stop,
            thread: Some(thread),
        }
    }

    /// Returns once `count` events are committed, with when the first and the last output
    /// (before that commit) were seen, if any was.
    fn wait_for(&self, count: i64) -> Option<(Instant, Instant)> {
        let mut first = None;
        loop {
            match self.rx.recv().expect("the follower stopped") {
                Seen::FirstOutput(at) => first = Some(at),
                Seen::Committed(n, last) if n >= count => {
                    return first.zip(last);
                }
                Seen::Committed(..) => {}
            }
        }
    }
}

impl Drop for Commits {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Produces `events` (keyed by person) and then a sentinel per partition 6 s after the newest
/// event: it moves every shard's watermark past all of them, and stays in the reorder buffer,
/// so a shard is done when its committed position is its sentinel's offset. Counts the
/// messages per partition into `per_partition`; returns the sentinels' event time.
async fn produce(
    producer: &FutureProducer,
    input: &str,
    partitions: i32,
    events: Vec<Event>,
    per_partition: &mut [i64],
) -> i64 {
    let sentinel_at = events.iter().map(|e| e.occurred_at).max().unwrap_or(0) + 6_000;
    let mut messages: Vec<(i32, String, Vec<u8>)> = events
        .iter()
        .map(|e| {
            let key = person_key(e).to_string();
            (
                partition_of(&key, partitions),
                key,
                encode(e, OutputFormat::Protobuf),
            )
        })
        .collect();
    for p in 0..partitions {
        let key = format!("sentinel-{p}");
        let mut s = Event::new(&key, sentinel_at, Channel::Web, "home", Action::View);
        s.customer_id = Some(key.as_str().into());
        messages.push((p, key, encode(&s, OutputFormat::Protobuf)));
    }
    // In chunks that fit the producer's queue, each awaited before the next.
    let mut deliveries = Vec::new();
    for chunk in messages.chunks(50_000) {
        for (p, key, payload) in chunk {
            per_partition[*p as usize] += 1;
            let r = FutureRecord::to(input)
                .partition(*p)
                .key(key)
                .payload(payload);
            deliveries.push(producer.send_result(r).map_err(|e| e.0).unwrap());
        }
        for d in deliveries.drain(..) {
            d.await.unwrap().unwrap();
        }
    }
    eprintln!("produced {} events", per_partition.iter().sum::<i64>());
    sentinel_at
}

/// Passes of the bare consumer over the pre-produced messages.
const BARE_PASSES: usize = 3;

/// One pass of the bare consumer: every message of `topic` read and counted, by a consumer of
/// its own. Returns the time from assignment to the last message and from the first message
/// to the last.
fn bare_pass(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    total: i64,
) -> (Duration, Duration) {
    let bare: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    bare.assign(&from_beginning(topic, partitions)).unwrap();
    let started = Instant::now();
    let mut first = None;
    let mut seen = 0i64;
    while seen < total {
        if let Some(m) = bare.poll(Duration::from_millis(100)) {
            m.unwrap();
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    (
        started.elapsed(),
        first.expect("messages were read").elapsed(),
    )
}

/// Every partition of `topic`, from its first offset.
fn from_beginning(topic: &str, partitions: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    tpl
}
