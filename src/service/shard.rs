//! One shard: the engine state of one input partition, owned by one task. It decodes and
//! applies the partition's messages in offset order, produces what the engine emits, tracks
//! broker acknowledgements in a [`Ledger`] and publishes the offset that may be committed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{mpsc, oneshot};

use super::ledger::Ledger;
use super::records::{dead_letter, output_record, Dest, Origin, OutRecord};
use crate::alert::Output;
use crate::config::{Config, OutputFormat};
use crate::decode::{decode, Format};
use crate::engine::{Engine, Ingest, Rules};
use crate::event::{millis, Millis};
use crate::telemetry;

/// A consumed message, handed from the consumer thread to its shard.
#[derive(Debug)]
pub(crate) struct ShardMsg {
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
}

/// What a stopped shard reports: the offset its partition may be committed at.
#[derive(Debug, Clone)]
pub(crate) struct ShardExit {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) commit: Option<i64>,
}

/// What every shard shares: the producer and the settings.
pub(crate) struct ShardEnv {
    pub(crate) producer: FutureProducer,
    pub(crate) rules: Rules,
    pub(crate) input_format: Format,
    pub(crate) output_format: OutputFormat,
    alerts: String,
    journeys: String,
    dead_letter: String,
    idle_advance: Duration,
    max_in_flight: usize,
    labels: telemetry::Labels,
}

impl ShardEnv {
    pub(crate) fn new(c: &Config, producer: FutureProducer) -> ShardEnv {
        ShardEnv {
            producer,
            rules: Rules::new(c),
            input_format: c.input.format,
            output_format: c.output.format,
            alerts: c.topics.alerts.clone(),
            journeys: c.topics.journeys.clone(),
            dead_letter: c.topics.dead_letter.clone(),
            idle_advance: c.engine.idle_advance,
            max_in_flight: c.service.max_in_flight,
            labels: telemetry::Labels::new(&c.metrics.segments),
        }
    }

    fn topic(&self, d: Dest) -> &str {
        match d {
            Dest::Alerts => &self.alerts,
            Dest::Journeys => &self.journeys,
            Dest::DeadLetter => &self.dead_letter,
        }
    }
}

/// The watermark a quiet partition moves to: once no message has arrived for
/// `idle_advance`, event time is taken to run on with the wall clock from the newest event.
/// `None` while the partition is not quiet (or has seen no event).
pub fn idle_watermark(
    max_event_time: Millis,
    quiet_for: Duration,
    idle_advance: Duration,
    allowed_lateness: Millis,
) -> Option<Millis> {
    if max_event_time == Millis::MIN || quiet_for < idle_advance {
        return None;
    }
    Some(
        max_event_time
            .saturating_add(millis(quiet_for))
            .saturating_sub(allowed_lateness),
    )
}

type Delivery = Pin<Box<dyn Future<Output = Option<i64>> + Send>>;

pub(crate) struct Shard {
    topic: Arc<str>,
    partition: i32,
    env: Arc<ShardEnv>,
    engine: Engine,
    ledger: Ledger,
    deliveries: FuturesUnordered<Delivery>,
    out: Vec<Output>,
    last_arrival: Instant,
    /// Next offset to commit, read by the consumer thread (-1: none yet).
    progress: Arc<AtomicI64>,
    metrics: telemetry::ShardMetrics,
}

impl Shard {
    pub(crate) fn new(
        topic: Arc<str>,
        partition: i32,
        env: Arc<ShardEnv>,
        progress: Arc<AtomicI64>,
        now: Instant,
    ) -> Shard {
        Shard {
            metrics: telemetry::ShardMetrics::new(&topic, partition, env.labels.clone()),
            engine: Engine::new(env.rules.clone()),
            topic,
            partition,
            env,
            ledger: Ledger::new(),
            deliveries: FuturesUnordered::new(),
            out: Vec::new(),
            last_arrival: now,
            progress,
        }
    }

    /// The shard's task: runs until told to stop (or its consumer is gone), then flushes,
    /// waits for every acknowledgement and reports where its partition may be committed.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<ShardMsg>,
        mut stop: oneshot::Receiver<std::sync::mpsc::SyncSender<ShardExit>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let reply = loop {
            tokio::select! {
                biased;
                reply = &mut stop => break reply.ok(),
                Some(token) = self.deliveries.next(), if !self.deliveries.is_empty() => {
                    if let Some(t) = token {
                        self.ledger.ack(t);
                    }
                }
                msg = rx.recv(), if self.deliveries.len() < self.env.max_in_flight => match msg {
                    Some(m) => self.process(m, Instant::now()),
                    None => break None,
                },
                _ = tick.tick() => {
                    self.idle(Instant::now());
                    self.publish_metrics();
                }
            }
            self.publish_progress();
        };
        // Finish what was handed over, apply everything buffered, wait for the broker.
        while let Ok(m) = rx.try_recv() {
            self.process(m, Instant::now());
        }
        let now = Instant::now();
        self.engine.flush(&mut self.out);
        self.send_outputs(now);
        while let Some(token) = self.deliveries.next().await {
            if let Some(t) = token {
                self.ledger.ack(t);
            }
        }
        self.publish_progress();
        self.publish_metrics();
        self.metrics.close(&self.engine, &self.env.rules.catalog);
        if let Some(reply) = reply {
            let _ = reply.send(ShardExit {
                topic: self.topic.clone(),
                partition: self.partition,
                commit: self.ledger.done_until(),
            });
        }
    }

    fn process(&mut self, m: ShardMsg, now: Instant) {
        self.last_arrival = now;
        self.metrics.consumed();
        let payload = m.payload.as_deref().unwrap_or_default();
        let reject = match decode(payload, self.env.input_format) {
            Err(r) => Some((r.reason.as_str(), r.detail)),
            Ok(event) => {
                let t = event.occurred_at;
                self.metrics.event(event.channel, event.action);
                match self.engine.ingest(event, &mut self.out) {
                    Ingest::Accepted => {
                        self.ledger.push(m.offset, Some(t));
                        None
                    }
                    Ingest::Duplicate => {
                        self.ledger.push(m.offset, None);
                        None
                    }
                    Ingest::Late => Some((
                        "late",
                        format!(
                            "event time is behind the watermark ({})",
                            crate::event::format_millis(self.engine.watermark())
                        ),
                    )),
                    Ingest::Unlinkable => Some((
                        "unlinkable",
                        "every identifier is on identity.never_link".to_string(),
                    )),
                }
            }
        };
        if let Some((reason, detail)) = reject {
            self.ledger.push(m.offset, None);
            if reason == "late" {
                self.metrics.late();
            } else {
                self.metrics.rejected(reason);
            }
            telemetry::rejected(&self.topic, self.partition, m.offset, reason, &detail);
            let from = Origin {
                topic: &self.topic,
                partition: self.partition,
                offset: m.offset,
            };
            let rec = dead_letter(m.key.as_deref(), payload, reason, &detail, from);
            self.send(rec, now);
        }
        self.send_outputs(now);
    }

    fn idle(&mut self, now: Instant) {
        let quiet = now.saturating_duration_since(self.last_arrival);
        let w = idle_watermark(
            self.engine.max_event_time(),
            quiet,
            self.env.idle_advance,
            self.env.rules.allowed_lateness,
        );
        if let Some(w) = w {
            if w > self.engine.watermark() {
                telemetry::idle_advance(&self.topic, self.partition, w);
                self.engine.advance_to(w, &mut self.out);
                self.send_outputs(now);
            }
        }
    }

    fn send_outputs(&mut self, cause: Instant) {
        if self.out.is_empty() {
            return;
        }
        let format = self.env.output_format;
        let outs = std::mem::take(&mut self.out);
        self.metrics.outputs(&outs);
        for o in &outs {
            self.send(output_record(o, format), cause);
        }
        self.out = outs;
        self.out.clear();
    }

    /// Produces `rec`; `cause` is when the message that caused it was consumed.
    fn send(&mut self, rec: OutRecord, cause: Instant) {
        let token = self.ledger.charge();
        let env = self.env.clone();
        self.deliveries.push(Box::pin(async move {
            deliver(&env, rec).await;
            telemetry::output_acknowledged(cause.elapsed());
            token
        }));
    }

    fn publish_metrics(&mut self) {
        let w = self.engine.watermark();
        let lag = (w != Millis::MIN).then(|| {
            let behind = crate::clock::now_millis().saturating_sub(w);
            Duration::from_millis(behind.max(0) as u64)
        });
        self.metrics
            .publish(&self.engine, &self.env.rules.catalog, lag);
    }

    fn publish_progress(&mut self) {
        if let Some(next) = self.ledger.advance(self.engine.watermark()) {
            self.progress.store(next, Ordering::Release);
        }
    }
}

/// Produces one record, retrying with backoff until the broker acknowledges it: an output is
/// never given up on (its input offset stays uncommitted meanwhile).
async fn deliver(env: &ShardEnv, rec: OutRecord) {
    let topic = env.topic(rec.dest);
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (key, value) in &rec.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::to(topic)
            .payload(&rec.payload)
            .headers(headers);
        if let Some(k) = &rec.key {
            record = record.key(k);
        }
        let failure = match env.producer.send_result(record) {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => return,
                Ok(Err((e, _))) => Some(e),
                Err(_) => Some(KafkaError::Canceled),
            },
            // The producer's queue is full: wait for it to drain (not an error).
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => None,
            Err((e, _)) => Some(e),
        };
        if let Some(e) = failure {
            telemetry::produce_failed(topic, &e, backoff);
            telemetry::produce_error(topic);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_partition_moves_on_with_the_wall_clock_after_idle_advance() {
        let idle = Duration::from_secs(10);
        assert_eq!(idle_watermark(Millis::MIN, idle * 5, idle, 5_000), None);
        assert_eq!(
            idle_watermark(100_000, Duration::from_secs(9), idle, 5_000),
            None
        );
        assert_eq!(idle_watermark(100_000, idle, idle, 5_000), Some(105_000));
        assert_eq!(
            idle_watermark(100_000, Duration::from_secs(60), idle, 5_000),
            Some(155_000)
        );
    }
}
