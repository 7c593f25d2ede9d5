//! End to end through Kafka: the full `cxstream run` path (consumer thread, shards, producer,
//! at-least-once commits) against the ceiling of a bare rdkafka consumer that only counts the
//! same pre-produced messages on the same broker, in one run.
//!
//! Run: `cargo bench --bench pipeline` (librdkafka's in-process mock cluster), or with
//! `CXSTREAM_BENCH_BROKERS=host:port` for an external broker. `CXSTREAM_BENCH_EVENTS`
//! (default 100,000) events of the simulator's mix over 4 partitions, protobuf encoded.
//! `CXSTREAM_BENCH_WORKERS` sets the runtime's worker threads (default: all cores).

use std::time::{Duration, Instant};

use cxstream::config::OutputFormat;
use cxstream::event::{Action, Channel, Event};
use cxstream::loadgen::encode;
use cxstream::service::Service;
use cxstream::sim::{person_key, SimConfig, Simulator};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

mod common;
use common::{bench_config, create_topics, env_or};

const PARTITIONS: i32 = 4;

fn partition_of(key: &str) -> i32 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % PARTITIONS as u64) as i32
}

fn main() {
    let n: usize = env_or("CXSTREAM_BENCH_EVENTS", 100_000);
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
    let input = config.topics.input[0].clone();

    rt.block_on(async {
        let t = &config.topics;
        let changelog = t.changelog(&config.kafka.group_id);
        create_topics(
            mock.as_ref(),
            &brokers,
            &[
                (&input, PARTITIONS, false),
                (&t.alerts, 1, false),
                (&t.journeys, 1, false),
                (&t.dead_letter, 1, false),
                (&changelog, PARTITIONS, true),
            ],
        )
        .await;

        // Pre-produce: the simulator's mix, then a far-future sentinel per partition.
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "20")
            .create()
            .unwrap();
        let mut per_partition = [0i64; PARTITIONS as usize];
        let mut deliveries = Vec::with_capacity(n);
        let sim = Simulator::new(SimConfig {
            seed: 3,
            customers: (n as u64 / 20).max(100),
            disorder: 2_000,
            ..SimConfig::default()
        });
        let mut events: Vec<(i32, String, Vec<u8>)> = sim
            .take(n)
            .map(|e| {
                let key = person_key(&e).to_string();
                (partition_of(&key), key, encode(&e, OutputFormat::Protobuf))
            })
            .collect();
        for p in 0..PARTITIONS {
            let mut s = Event::new(
                &format!("sentinel-{p}"),
                1_900_000_000_000,
                Channel::Web,
                "home",
                Action::View,
            );
            s.customer_id = Some(format!("sentinel-{p}").into());
            events.push((
                p,
                format!("sentinel-{p}"),
                encode(&s, OutputFormat::Protobuf),
            ));
        }
        // In chunks that fit the producer's queue, each awaited before the next.
        for chunk in events.chunks(50_000) {
            for (p, key, payload) in chunk {
                per_partition[*p as usize] += 1;
                let r = FutureRecord::to(&input)
                    .partition(*p)
                    .key(key)
                    .payload(payload);
                deliveries.push(producer.send_result(r).map_err(|e| e.0).unwrap());
            }
            for d in deliveries.drain(..) {
                d.await.unwrap().unwrap();
            }
            eprintln!("pre-produced {} events", per_partition.iter().sum::<i64>());
        }
        let total: i64 = per_partition.iter().sum();

        // The ceiling: a bare consumer counting every message.
        let bare: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("bare-{tag}"))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&input, p, Offset::Beginning)
                .unwrap();
        }
        bare.assign(&tpl).unwrap();
        let started = Instant::now();
        let mut seen = 0i64;
        while seen < total {
            if let Some(m) = bare.poll(Duration::from_millis(100)) {
                m.unwrap();
                seen += 1;
            }
        }
        let bare_rate = total as f64 / started.elapsed().as_secs_f64();
        drop(bare);

        // cxstream: from owning the partitions (the group join is not counted) until every
        // offset before the sentinels is committed.
        let service = Service::start(&config).await.unwrap();
        let mut status = service.status();
        status
            .wait_for(|s| s.assigned.len() == PARTITIONS as usize)
            .await
            .unwrap();
        let started = Instant::now();
        // Committed: the position in each shard's last committed changelog meta record.
        loop {
            let c = config.clone();
            let input = input.clone();
            let got = tokio::task::spawn_blocking(move || {
                cxstream::service::changelog::committed_metas(&c, &input, PARTITIONS)
            })
            .await
            .unwrap()
            .unwrap();
            let done = got.iter().enumerate().all(|(p, m)| {
                m.last()
                    .is_some_and(|m| m.input_offset >= per_partition[p] - 1)
            });
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        let rate = total as f64 / took.as_secs_f64();
        let report = service.stop().await;
        assert!(report.clean);
        println!(
            "pipeline: {total} events, {workers} worker threads: bare consumer {:.0} msg/s; \
             cxstream run {:?} (decode, engine, outputs, state and offsets committed) {:.0} events/s \
             = {:.0}% of the bare consumer ({:.1} s from assignment)",
            bare_rate,
            config.processing.guarantee,
            rate,
            100.0 * rate / bare_rate,
            took.as_secs_f64()
        );
    });
}
