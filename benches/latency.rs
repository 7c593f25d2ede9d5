//! Latency: from an event being produced to the alert it triggers being readable downstream
//! (a `read_committed` consumer of the alerts topic), at a steady input rate.
//!
//! Event times are the wall clock at produce time, so the watermark follows real time as in
//! production. Only alerts an event triggers are timed (each alert's last evidence event is
//! its trigger); drop-off and slow-step alerts are fired by timers, not events, and are not.
//!
//! Run: `cargo bench --bench latency` with `CXSTREAM_BENCH_RATE` (events/s, default 20,000),
//! `CXSTREAM_BENCH_EVENTS` (default 20 seconds' worth), `CXSTREAM_BENCH_LATENESS` (`engine.allowed_lateness`,
//! default the config's 5s; e.g. `0s`), `CXSTREAM_BENCH_GUARANTEE` (`exactly_once`, the
//! default, or `at_least_once`), `CXSTREAM_BENCH_COMMIT` (`engine.commit_interval`),
//! `CXSTREAM_BENCH_LINGER_MS` (the service producer's `linger.ms`) and
//! `CXSTREAM_BENCH_CHECKPOINT_STEP` (`service.checkpoint_step`; a huge value writes each
//! `at_least_once` checkpoint at once) and `CXSTREAM_BENCH_CUSTOMERS` (default: one per 20
//! events).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compact_str::CompactString;
use cxstream::config::OutputFormat;
use cxstream::event::Event;
use cxstream::loadgen::encode;
use cxstream::sim::{person_key, SimConfig, Simulator};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

mod common;
use common::{bench_config, env_or, start_owning};

const PARTITIONS: i32 = 4;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() {
    let rate: u64 = env_or("CXSTREAM_BENCH_RATE", 20_000);
    let total: u64 = env_or("CXSTREAM_BENCH_EVENTS", rate * 20);
    let seconds = total as f64 / rate as f64;
    let mock = MockCluster::new(1).unwrap();
    let mut config = bench_config(&mock.bootstrap_servers(), "lat");
    if let Ok(l) = std::env::var("CXSTREAM_BENCH_LATENESS") {
        config.engine.allowed_lateness = humantime::parse_duration(&l).expect("a duration");
    }
    if let Ok(c) = std::env::var("CXSTREAM_BENCH_COMMIT") {
        config.engine.commit_interval = humantime::parse_duration(&c).expect("a duration");
    }
    config.service.checkpoint_step = env_or(
        "CXSTREAM_BENCH_CHECKPOINT_STEP",
        config.service.checkpoint_step,
    );
    // The mock cluster answers a fetch only after `fetch.wait.max.ms` (500 ms by default)
    // even when data is waiting, which a real broker does not: that alone put the median at
    // ~270 ms. A real broker's fetches return as soon as one message is there.
    config
        .kafka
        .consumer
        .0
        .insert("fetch.wait.max.ms".into(), "5".into());
    // The service producer's `linger.ms` (librdkafka's default: 5 ms).
    if let Ok(l) = std::env::var("CXSTREAM_BENCH_LINGER_MS") {
        config.kafka.producer.0.insert("linger.ms".into(), l);
    }
    let tag = config.kafka.group_id.clone();
    let t = config.topics.clone();
    for (name, n) in [
        (t.input[0].clone(), PARTITIONS),
        (t.alerts.clone(), PARTITIONS),
        (t.journeys.clone(), PARTITIONS),
        (t.dead_letter.clone(), 1),
        (t.changelog(&config.kafka.group_id), PARTITIONS),
    ] {
        mock.create_topic(&name, n, 1).unwrap();
    }

    // The load generator does all it can before the clock starts: at 100,000 events/s the
    // simulator, id formatting and a locked map of send times took more CPU than the service
    // itself did per event, on the same two cores (`perf`: the main thread ~25% of samples,
    // the service's workers ~30%). What is left in the loop is setting the event time,
    // encoding and handing the record to librdkafka.
    let mut sim = Simulator::new(SimConfig {
        seed: 11,
        // About 20 events per customer over the run: sessions long enough for friction.
        customers: env_or("CXSTREAM_BENCH_CUSTOMERS", (total / 20).max(50)),
        ..SimConfig::default()
    });
    let mut events: Vec<(Event, CompactString)> = (0..total)
        .map(|_| {
            let e = sim.next().expect("the simulator is endless");
            let key = person_key(&e);
            (e, key)
        })
        .collect();
    // Event id -> position in `events`; read-only once the run starts.
    let position: Arc<HashMap<String, usize>> = Arc::new(
        events
            .iter()
            .enumerate()
            .map(|(i, (e, _))| (e.event_id.to_string(), i))
            .collect(),
    );
    // When each event was handed to the producer: nanoseconds after `epoch`, plus one (0: not
    // sent yet). Written by the generator, read by the reader, no lock.
    let epoch = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (position, sent_at, latencies, reading) = (
            position.clone(),
            sent_at.clone(),
            latencies.clone(),
            reading.clone(),
        );
        let brokers = mock.bootstrap_servers();
        let topic = t.alerts.clone();
        std::thread::spawn(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", format!("lat-reader-{tag}"))
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", "read_committed")
                .set("fetch.wait.max.ms", "5")
                .create()
                .unwrap();
            c.subscribe(&[topic.as_str()]).unwrap();
            while reading.load(Ordering::Acquire) {
                let Some(Ok(m)) = c.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let arrived = epoch.elapsed();
                let alert: cxstream::alert::Alert =
                    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
                if matches!(alert.alert_type.as_str(), "drop_off" | "slow_step") {
                    continue;
                }
                let Some(trigger) = alert.evidence.last() else {
                    continue;
                };
                let Some(&i) = position.get(trigger.as_str()) else {
                    continue;
                };
                let at = sent_at[i].load(Ordering::Acquire);
                if at > 0 {
                    let at = Duration::from_nanos(at - 1);
                    latencies.lock().unwrap().push(arrived.saturating_sub(at));
                }
            }
        })
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let service = start_owning(&config, PARTITIONS).await;
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("linger.ms", "1")
            .create()
            .unwrap();
        let started = Instant::now();
        let mut n = 0usize;
        while n < events.len() {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as usize;
            while n < due.min(events.len()) {
                let (e, key) = &mut events[n];
                e.occurred_at = cxstream::clock::now_millis();
                let payload = encode(e, OutputFormat::Protobuf);
                let mut rec = BaseRecord::<[u8], [u8]>::to(&t.input[0])
                    .key(key.as_bytes())
                    .payload(&payload);
                sent_at[n].store(epoch.elapsed().as_nanos() as u64 + 1, Ordering::Release);
                // A full local queue: serve delivery reports until there is room.
                while let Err((err, back)) = producer.send(rec) {
                    assert!(
                        matches!(err, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
                        "{err}"
                    );
                    producer.poll(Duration::from_millis(1));
                    rec = back;
                }
                n += 1;
            }
            producer.poll(Duration::ZERO);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let behind = started.elapsed().as_secs_f64() - seconds;
        producer.flush(Duration::from_secs(30)).unwrap();
        // Let the last commits and reads happen.
        tokio::time::sleep(config.engine.commit_interval + config.engine.allowed_lateness + Duration::from_secs(2)).await;
        reading.store(false, Ordering::Release);
        assert!(service.stop().await.clean);
        println!("latency: produced {total} events at {rate}/s over {seconds:.1} s (producer {behind:.1} s behind at the end)");
    });
    reader.join().unwrap();
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    if l.is_empty() {
        println!("latency: no event-triggered alert was read (too few events?)");
        return;
    }
    println!(
        "latency: {:?}, allowed_lateness {:?}, commit_interval {:?}: {} alerts, p50 {:.1?}, p99 {:.1?}, p99.9 {:.1?}, max {:.1?}",
        config.processing.guarantee,
        config.engine.allowed_lateness,
        config.engine.commit_interval,
        l.len(),
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        percentile(&l, 0.999),
        l[l.len() - 1]
    );
}
