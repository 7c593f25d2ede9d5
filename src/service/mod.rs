//! The Kafka service (`cxstream run`): interaction events in, alerts, journey summaries and
//! dead letters out, exactly once (Kafka transactions) or at least once
//! (`processing.guarantee`), with shard state kept in a changelog topic.
//!
//! - [`consumer`]: one OS thread polls the consumer group and follows rebalances (restoring
//!   assigned shards before their input is read).
//! - [`changelog`]: the changelog topic: creation, restore, transactional producers.
//! - [`shard`]: one task per assigned partition owns that partition's [`crate::engine::Engine`]
//!   (no locks on the hot path); tasks are spread over the runtime's worker threads.
//! - [`ledger`]: which input offset a commit records (the oldest event not yet applied; the
//!   shard's commit waits for the outputs before it to be acknowledged).
//! - [`records`]: the bytes and headers written to each output topic.
//! - [`producer`]: the producer, whose delivery reports go back to the shard that sent each
//!   record.
//!
//! Queues between the consumer, shards and producer are bounded: a shard stops taking input
//! while `service.max_in_flight` outputs await acknowledgement, and a full shard queue pauses
//! its partition, so a slow broker slows consumption instead of growing memory.

pub mod changelog;
mod consumer;
pub mod http;
pub mod ledger;
mod producer;
pub mod records;
mod shard;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::Producer as _;

use producer::Producer;
use tokio::sync::{oneshot, watch};

pub use consumer::Status;
pub use shard::idle_watermark;

use crate::config::{Config, Guarantee};
use crate::telemetry;

/// librdkafka settings of the service's consumer: cxstream's defaults, then the user's
/// `[kafka.common]` and `[kafka.consumer]`, then the settings the delivery guarantee needs.
pub fn consumer_config(c: &Config) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("auto.offset.reset", "earliest")
        .set("auto.commit.interval.ms", "1000")
        // Consumer lag and broker health for the metrics, every 5 s.
        .set("statistics.interval.ms", "5000")
        // Incremental rebalancing: when an instance joins or leaves, only the partitions that
        // move are revoked; the others keep their shards and state.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // At most ~16 MiB fetched ahead per consumer: bounded memory under backpressure.
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.queue.backoff.ms", "10");
    for (k, v) in c.kafka.common.0.iter().chain(&c.kafka.consumer.0) {
        cc.set(k, v);
    }
    cc.set("bootstrap.servers", &c.kafka.brokers)
        .set("group.id", &c.kafka.group_id)
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // With exactly_once, offsets are committed only in the shards' transactions.
        .set(
            "enable.auto.commit",
            (c.processing.guarantee == Guarantee::AtLeastOnce).to_string(),
        )
        .set("isolation.level", "read_committed");
    cc
}

/// librdkafka settings of the service's producer (and the simulator's).
pub fn producer_config(c: &Config) -> ClientConfig {
    let mut cc = ClientConfig::new();
    // Same partitioner as the Java client: a key lands on the same partition whichever
    // client produced it. Outputs wait at most 2 ms for a batch to fill (librdkafka's default
    // is 5): at half the maximum rate the p99 from event to alert was 2-7 ms lower and the
    // maximum rate did not change (BENCHMARKS.md, "Latency"); `[kafka.producer]` overrides it.
    cc.set("partitioner", "murmur2_random")
        .set("linger.ms", "2");
    for (k, v) in c.kafka.common.0.iter().chain(&c.kafka.producer.0) {
        cc.set(k, v);
    }
    cc.set("bootstrap.servers", &c.kafka.brokers);
    cc
}

/// A running service. Create it inside a Tokio runtime; stop it with [`Service::stop`].
pub struct Service {
    stop: Arc<AtomicBool>,
    http_addr: std::net::SocketAddr,
    http_stop: Option<oneshot::Sender<()>>,
    upkeep: tokio::task::JoinHandle<()>,
    /// The consumer thread's word that every shard stopped and committed (`true`: cleanly).
    done: oneshot::Receiver<bool>,
    /// Ends once the consumer has closed (left the group).
    closed: oneshot::Receiver<()>,
    producer: Producer,
    status: watch::Receiver<Status>,
    shutdown_timeout: Duration,
}

/// How a stopped service ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    /// Every shard finished, every output was acknowledged and the input offsets committed.
    pub clean: bool,
    pub took: Duration,
}

impl Service {
    /// Serves `/metrics`, `/healthz` and `/readyz` on `http.listen`, connects (librdkafka
    /// retries unreachable brokers with backoff), joins the consumer group and starts consuming.
    pub async fn start(config: &Config) -> anyhow::Result<Service> {
        telemetry::service_starting(
            &config.kafka.brokers,
            &config.kafka.group_id,
            &config.topics.input,
        );
        let producer =
            Producer::new(&producer_config(config)).context("cannot create the Kafka producer")?;
        changelog::ensure_topic(config, &producer).await?;
        let env = Arc::new(shard::ShardEnv::new(config, producer.clone()));
        let (status_tx, status) = watch::channel(Status::default());
        let metrics = telemetry::prometheus();
        let t = &config.topics;
        // The shards' compiled catalog names the journey series (compiled once).
        telemetry::describe(
            &env.rules.catalog,
            &[&t.alerts, &t.journeys, &t.dead_letter],
        );
        let upkeep = metrics.clone();
        let (http_stop, http_stopped) = oneshot::channel::<()>();
        let http_addr = http::serve(&config.http.listen, metrics, status.clone(), async move {
            let _ = http_stopped.await;
        })
        .await?;
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        telemetry::http_listening(http_addr);
        // Shards get most of the shutdown budget; the rest is for the final commit and flush.
        let stop_timeout = config.service.shutdown_timeout.mul_f64(0.8);
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = consumer::Ctx::new(
            tokio::runtime::Handle::current(),
            env,
            config.service.shard_queue,
            stop_timeout,
            status_tx,
            stop.clone(),
        );
        let consumer: BaseConsumer<consumer::Ctx> = consumer_config(config)
            .create_with_context(ctx)
            .context("cannot create the Kafka consumer")?;
        let (done_tx, done) = oneshot::channel();
        let (closed_tx, closed) = oneshot::channel();
        let topics = config.topics.input.clone();
        std::thread::Builder::new()
            .name("cx-consumer".into())
            .spawn(move || {
                consumer::consume(consumer, &topics, done_tx);
                let _ = closed_tx.send(());
            })
            .context("cannot start the consumer thread")?;
        Ok(Service {
            stop,
            http_addr,
            http_stop: Some(http_stop),
            upkeep,
            done,
            closed,
            producer,
            status,
            shutdown_timeout: config.service.shutdown_timeout,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http_addr
    }

    /// Partitions owned, updated on every rebalance.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Runs until `shutdown` completes (e.g. SIGTERM), then stops cleanly.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> RunReport {
        tokio::select! {
            _ = shutdown => self.stop().await,
            // The consumer thread ended by itself (it could not subscribe, or a shard died):
            // it has committed what was done; flush and report failure.
            ended = &mut self.done => {
                let _ = ended;
                self.finish(Instant::now(), false).await
            }
        }
    }

    /// Stops fetching, lets every shard finish its queued messages and flush, waits for the
    /// broker to acknowledge every output, commits the offsets, leaves the group and flushes
    /// the producer, all within `service.shutdown_timeout`.
    pub async fn stop(mut self) -> RunReport {
        let started = Instant::now();
        telemetry::shutting_down(self.shutdown_timeout);
        self.stop.store(true, Ordering::Release);
        let clean = (&mut self.done).await.unwrap_or(false);
        self.finish(started, clean).await
    }

    async fn finish(mut self, started: Instant, clean: bool) -> RunReport {
        // Everything is committed by now; closing the consumer only leaves the group. It is
        // awaited within the budget but not beyond: librdkafka can hang in a rebalance
        // callback during close (confluentinc/librdkafka#4884), and the group then notices
        // the departure at the session timeout instead.
        let left = self.shutdown_timeout.saturating_sub(started.elapsed());
        if tokio::time::timeout(left, &mut self.closed).await.is_err() {
            telemetry::consumer_close_timed_out();
        }
        let left = self.shutdown_timeout.saturating_sub(started.elapsed());
        let producer = self.producer;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(left).is_ok())
            .await
            .unwrap_or(false);
        if let Some(s) = self.http_stop.take() {
            let _ = s.send(());
        }
        self.upkeep.abort();
        let report = RunReport {
            clean: clean && flushed,
            took: started.elapsed(),
        };
        telemetry::stopped(report.clean, report.took);
        report
    }
}
