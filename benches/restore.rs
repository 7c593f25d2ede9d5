//! Restore speed: how long a shard with `CXSTREAM_BENCH_PROFILES` open journeys (default
//! 1,000,000; one profile each, the memory benchmark's state) takes to come back.
//!
//! 1. From its changelog records in memory (decode and rebuild: index, timers, dedup), the
//!    median of 3 runs.
//! 2. Through Kafka with the service's own restore (`cxstream::service::changelog::restore`):
//!    on an external broker (`CXSTREAM_BENCH_BROKERS=host:port`) at the full size; on the
//!    in-process mock cluster only at `CXSTREAM_BENCH_MOCK_JOURNEYS` (default 20,000), because
//!    the mock keeps at most 5 MiB per partition and drops older records.
//!
//! Run: `cargo bench --bench restore`.

use std::time::{Duration, Instant};

use cxstream::config::Config;
use cxstream::engine::snapshot::{InputPosition, Restore, StateRecord};
use cxstream::engine::Rules;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

mod common;
use common::{create_topics, env_or};

fn records(n: u64) -> Vec<StateRecord> {
    let mut engine = cxstream::sim::open_checkouts(n, true);
    assert_eq!(engine.open_journeys() as u64, n);
    let started = Instant::now();
    let records = engine.checkpoint(InputPosition::default());
    let took = started.elapsed();
    println!(
        "restore: writing the checkpoint took {took:.2?} ({:.2} µs per profile)",
        took.as_secs_f64() * 1e6 / n as f64
    );
    records
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: u64 = env_or("CXSTREAM_BENCH_PROFILES", 1_000_000);
    let config = Config::example();
    let rules = Rules::new(&config);

    let recs = records(n);
    let bytes: usize = recs
        .iter()
        .map(|r| r.value.as_ref().map_or(0, Vec::len))
        .sum();
    println!(
        "restore: {n} open journeys = {} changelog records, {bytes} bytes ({:.0} bytes per journey)",
        recs.len(),
        bytes as f64 / n as f64
    );
    let mut runs = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let (engine, report) = Restore::from_records(&recs, rules.clone()).unwrap();
        runs.push(started.elapsed());
        assert_eq!(report.open_journeys, n);
        assert_eq!(engine.scheduled_timers() as u64, n);
        std::hint::black_box(engine);
    }
    let mem = median(runs.clone());
    println!(
        "restore: from memory (decode + rebuild), median of 3: {mem:.2?} ({:.0} journeys/s); runs {runs:.2?}",
        n as f64 / mem.as_secs_f64()
    );
    drop(recs);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let external = std::env::var("CXSTREAM_BENCH_BROKERS")
        .ok()
        .filter(|b| !b.is_empty());
    let kafka_n = if external.is_some() {
        n
    } else {
        env_or("CXSTREAM_BENCH_MOCK_JOURNEYS", 20_000u64).min(n)
    };
    let mock = external.is_none().then(|| MockCluster::new(1).unwrap());
    let brokers = external.unwrap_or_else(|| mock.as_ref().unwrap().bootstrap_servers());
    let mut c = config.clone();
    c.kafka.brokers = brokers.clone();
    c.kafka.group_id = format!("bench-restore-{:x}", fastrand::u64(..));
    let changelog = c.topics.changelog(&c.kafka.group_id);
    let input = c.topics.input[0].clone();
    let recs = records(kafka_n);
    rt.block_on(async {
        create_topics(mock.as_ref(), &brokers, &[(&changelog, 1, true)]).await;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "20")
            .create()
            .unwrap();
        let mut pending = Vec::with_capacity(recs.len());
        for r in &recs {
            let key = r.key.encode(&input);
            let mut rec = FutureRecord::<[u8], [u8]>::to(&changelog)
                .key(&key)
                .partition(0);
            if let Some(v) = &r.value {
                rec = rec.payload(v);
            }
            pending.push(producer.send_result(rec).map_err(|e| e.0).unwrap());
        }
        for p in pending {
            p.await.unwrap().unwrap();
        }
    });
    let (engine, report, took) =
        cxstream::service::changelog::restore(&c, rules.clone(), &input, 0).unwrap();
    assert_eq!(report.open_journeys, kafka_n, "every journey restored");
    std::hint::black_box(engine);
    println!(
        "restore: through Kafka ({}), {kafka_n} open journeys, {} records: {took:.2?} ({:.0} journeys/s)",
        if mock.is_some() { "mock cluster" } else { "external broker" },
        report.records,
        kafka_n as f64 / took.as_secs_f64()
    );
}
