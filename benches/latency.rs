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
//! `at_least_once` checkpoint at once), `CXSTREAM_BENCH_CUSTOMERS` (default: one per 20
//! events), `CXSTREAM_BENCH_FETCH_WAIT_MS` (`fetch.wait.max.ms` of the service's consumer and
//! the reader, default 1; see below) and `CXSTREAM_BENCH_TIMELINE` (a file to write each timed
//! alert to: when its trigger was sent and its latency, in microseconds, a line each).
//!
//! It prints the percentiles of all timed alerts, and of those whose trigger was sent after
//! the first second of load (the steady state: the first second holds the clients' first
//! requests).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compact_str::CompactString;
use cxstream::decode::to_proto;
use cxstream::event::timestamp;
use cxstream::proto::InteractionEvent;
use cxstream::sim::{person_key, SimConfig, Simulator};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

mod common;
use common::{bench_config, env_or, start_owning};

const PARTITIONS: i32 = 4;
/// Alerts whose trigger was sent this long after the load began are also reported apart.
const WARM_UP: Duration = Duration::from_secs(1);

/// What the reader needs of an alert: serde skips the other fields without building them
/// (the reader shares the two cores with the service).
#[derive(serde::Deserialize)]
struct Timed<'a> {
    #[serde(rename = "type", borrow)]
    alert_type: Cow<'a, str>,
    #[serde(borrow)]
    evidence: Vec<Cow<'a, str>>,
}

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
    // A fetch that finds no data waits `fetch.wait.max.ms` (500 ms by default) on the mock
    // cluster even if data arrives meanwhile (librdkafka's `rd_kafka_mock_handle_Fetch` says
    // so: "we should cut the wait short and feed newly produced data"); a real broker answers
    // as soon as data is there. The default put the median at ~270 ms, 5 ms added ~5 ms a hop
    // (BENCHMARKS.md); 1 ms keeps the mock close to a real broker, at 1,000 empty fetches a
    // second per idle partition.
    let fetch_wait: u64 = env_or("CXSTREAM_BENCH_FETCH_WAIT_MS", 1);
    config
        .kafka
        .consumer
        .0
        .insert("fetch.wait.max.ms".into(), fetch_wait.to_string());
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
    // the service's workers ~30%). Each event is encoded here without its `occurred_at`; the
    // loop appends that one field (a protobuf message's fields may come in any order, and
    // two encodings concatenated read as one message), so what is left at send time is a
    // copy, a 14-byte encoding and the hand-over to librdkafka. Encoding whole events in the
    // loop took a third of the CPU at 200,000 events/s, on the cores the service runs on.
    let mut sim = Simulator::new(SimConfig {
        seed: 11,
        // About 20 events per customer over the run: sessions long enough for friction.
        customers: env_or("CXSTREAM_BENCH_CUSTOMERS", (total / 20).max(50)),
        ..SimConfig::default()
    });
    let mut position: HashMap<String, usize> = HashMap::with_capacity(total as usize);
    let events: Vec<(Vec<u8>, CompactString)> = (0..total as usize)
        .map(|i| {
            let e = sim.next().expect("the simulator is endless");
            position.insert(e.event_id.to_string(), i);
            let mut untimed = to_proto(&e);
            untimed.occurred_at = None;
            (untimed.encode_to_vec(), person_key(&e))
        })
        .collect();
    // Event id -> position in `events`; read-only once the run starts.
    let position = Arc::new(position);
    // When each event was handed to the producer: nanoseconds after `epoch`, plus one (0: not
    // sent yet). Written by the generator, read by the reader, no lock.
    let epoch = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    // Each timed alert: when its trigger was sent (after `epoch`) and how long it took.
    let timed: Arc<Mutex<Vec<(Duration, Duration)>>> = Arc::default();
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (position, sent_at, timed, reading) = (
            position.clone(),
            sent_at.clone(),
            timed.clone(),
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
                .set("fetch.wait.max.ms", fetch_wait.to_string())
                .create()
                .unwrap();
            c.subscribe(&[topic.as_str()]).unwrap();
            while reading.load(Ordering::Acquire) {
                let Some(Ok(m)) = c.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let arrived = epoch.elapsed();
                let alert: Timed = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
                if matches!(alert.alert_type.as_ref(), "drop_off" | "slow_step") {
                    continue;
                }
                let Some(trigger) = alert.evidence.last() else {
                    continue;
                };
                let Some(&i) = position.get(trigger.as_ref()) else {
                    continue;
                };
                let at = sent_at[i].load(Ordering::Acquire);
                if at > 0 {
                    let at = Duration::from_nanos(at - 1);
                    timed.lock().unwrap().push((at, arrived.saturating_sub(at)));
                }
            }
        })
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = rt.block_on(async {
        let service = start_owning(&config, PARTITIONS).await;
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("linger.ms", "1")
            .create()
            .unwrap();
        let started = Instant::now();
        let started_after = started - epoch;
        let mut n = 0usize;
        // librdkafka copies a payload on send, so one buffer serves every event.
        let mut payload = Vec::with_capacity(512);
        while n < events.len() {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as usize;
            while n < due.min(events.len()) {
                let (untimed, key) = &events[n];
                payload.clear();
                payload.extend_from_slice(untimed);
                InteractionEvent {
                    occurred_at: Some(timestamp(cxstream::clock::now_millis())),
                    ..Default::default()
                }
                .encode(&mut payload)
                .expect("a Vec grows");
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
        started_after
    });
    reader.join().unwrap();
    let timed = std::mem::take(&mut *timed.lock().unwrap());
    if let Ok(path) = std::env::var("CXSTREAM_BENCH_TIMELINE") {
        let lines: String = timed
            .iter()
            .map(|(at, l)| format!("{} {}\n", at.as_micros(), l.as_micros()))
            .collect();
        std::fs::write(&path, lines).expect("the timeline file is writable");
    }
    let label = format!(
        "{:?}, allowed_lateness {:?}, commit_interval {:?}",
        config.processing.guarantee, config.engine.allowed_lateness, config.engine.commit_interval
    );
    report(&label, "all alerts", timed.iter().map(|t| t.1).collect());
    // The first second: the service's first fetches and the producers' first requests
    // (connections, metadata) come before a steady state.
    report(
        &label,
        "after the first second",
        timed
            .iter()
            .filter(|t| t.0 >= started + WARM_UP)
            .map(|t| t.1)
            .collect(),
    );
}

/// Prints the percentiles of `l`.
fn report(label: &str, which: &str, mut l: Vec<Duration>) {
    l.sort();
    if l.is_empty() {
        println!("latency: no event-triggered alert was read (too few events?)");
        return;
    }
    println!(
        "latency: {label}: {which}: {} alerts, p50 {:.1?}, p99 {:.1?}, p99.9 {:.1?}, max {:.1?}",
        l.len(),
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        percentile(&l, 0.999),
        l[l.len() - 1]
    );
}
