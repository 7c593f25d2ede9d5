//! `cxstream simulate --brokers`: produces the simulator's traffic to a Kafka topic, keyed by
//! person, at a steady rate.

use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use prost::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::OutputFormat;
use crate::decode::{to_json, to_proto};
use crate::event::Event;
use crate::sim::{person_key, Simulator};

/// How much to produce.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Events per second (`None`: as fast as the broker takes them).
    pub rate: Option<u32>,
    /// Stop after this many events.
    pub events: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub format: OutputFormat,
}

/// Encodes one event as producers would.
pub fn encode(e: &Event, format: OutputFormat) -> Vec<u8> {
    match format {
        OutputFormat::Json => serde_json::to_vec(&to_json(e)).expect("JSON values serialize"),
        OutputFormat::Protobuf => to_proto(e).encode_to_vec(),
    }
}

/// Produces events from `sim` to `topic` until the load says stop or `stop` completes;
/// returns how many were acknowledged.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    sim: Simulator,
    load: Load,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<u64> {
    tokio::pin!(stop);
    let started = Instant::now();
    let limit = load.events.unwrap_or(u64::MAX);
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut inflight = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sim = sim.take(usize::try_from(limit).unwrap_or(usize::MAX));
    'outer: loop {
        if load.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        // Events due by now at the requested rate (everything when unpaced).
        let due = match load.rate {
            Some(r) => (started.elapsed().as_secs_f64() * f64::from(r)) as u64,
            None => sent + 1_000,
        };
        while sent < due.min(limit) {
            let Some(e) = sim.next() else {
                break 'outer;
            };
            let key = person_key(&e);
            let payload = encode(&e, load.format);
            loop {
                let record = FutureRecord::to(topic)
                    .key(key.as_bytes())
                    .payload(&payload);
                match producer.send_result(record) {
                    Ok(f) => {
                        inflight.push(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if let Some(r) = inflight.next().await {
                            acked += u64::from(matches!(r, Ok(Ok(_))));
                        }
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
            sent += 1;
        }
        if sent >= limit {
            break;
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
            Some(r) = inflight.next(), if !inflight.is_empty() => {
                acked += u64::from(matches!(r, Ok(Ok(_))));
            }
        }
    }
    while let Some(r) = inflight.next().await {
        acked += u64::from(matches!(r, Ok(Ok(_))));
    }
    if acked < sent {
        anyhow::bail!(
            "{} of {sent} events were not acknowledged by the broker",
            sent - acked
        );
    }
    Ok(acked)
}
