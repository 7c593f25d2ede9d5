//! The consumer thread: polls the group's partitions, hands each message to its partition's
//! shard and follows rebalances: an assigned partition's shard is restored from the changelog
//! and its input read from the restored position; a revoked partition's shard commits and is
//! dropped. With `at_least_once` it also stores the offsets shards commit.
//!
//! It runs on its own OS thread, so rebalance callbacks may block while shards finish without
//! stalling the async runtime the shards run on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::{ClientContext, Offset};
use tokio::sync::{mpsc, oneshot, watch};

use super::changelog;
use super::shard::{Shard, ShardEnv, ShardExit, ShardMsg, ShardStart};
use crate::config::Guarantee;
use crate::telemetry;

/// What the service tells its owner (tests, the demo, readiness) about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Partitions currently owned, as (topic, partition).
    pub assigned: Vec<(String, i32)>,
    /// Why the brokers are unreachable, while they are (librdkafka keeps retrying).
    pub broker_down: Option<String>,
}

type StopReply = std::sync::mpsc::SyncSender<ShardExit>;

/// The consumer thread's handle on one shard.
struct ShardHandle {
    tx: mpsc::Sender<ShardMsg>,
    stop: oneshot::Sender<StopReply>,
    /// Messages polled while the shard's queue was full (the partition is paused meanwhile).
    stash: VecDeque<ShardMsg>,
    paused: bool,
    /// Next offset to hand over: anything below it was handed over already.
    next: i64,
    progress: Arc<AtomicI64>,
    stored: i64,
}

/// Shards by (topic, partition). hashbrown's hasher, and looked up by [`Partition`] (borrowed):
/// the map is read for every message polled, where SipHash and the topic's `Arc` clone showed.
type Shards = hashbrown::HashMap<(Arc<str>, i32), ShardHandle>;

/// A (topic, partition) key, borrowed: hashes and compares as the map's owned key does.
#[derive(Hash)]
struct Partition<'a>(&'a str, i32);

impl hashbrown::Equivalent<(Arc<str>, i32)> for Partition<'_> {
    fn equivalent(&self, key: &(Arc<str>, i32)) -> bool {
        *key.0 == *self.0 && key.1 == self.1
    }
}

/// State shared by the poll loop and the rebalance callbacks (both run on the consumer
/// thread: the lock is never contended, it only satisfies `Sync`).
pub(crate) struct Ctx {
    runtime: tokio::runtime::Handle,
    env: Arc<ShardEnv>,
    shard_queue: usize,
    stop_timeout: Duration,
    shards: Mutex<Shards>,
    status: watch::Sender<Status>,
    /// Set when the service is told to stop (the poll loop ends at its next turn).
    stop: Arc<AtomicBool>,
}

impl Ctx {
    pub(crate) fn new(
        runtime: tokio::runtime::Handle,
        env: Arc<ShardEnv>,
        shard_queue: usize,
        stop_timeout: Duration,
        status: watch::Sender<Status>,
        stop: Arc<AtomicBool>,
    ) -> Ctx {
        Ctx {
            runtime,
            env,
            shard_queue,
            stop_timeout,
            shards: Mutex::new(Shards::new()),
            status,
            stop,
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn shards(&self) -> std::sync::MutexGuard<'_, Shards> {
        self.shards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A shard task ended on its own, or one cannot go on: the service stops rather than
    /// keep consuming a partition nobody processes.
    fn failed(&self) -> bool {
        self.env.failed.load(Ordering::Acquire)
    }

    /// Rebuilds the shards of newly assigned partitions from the changelog, in parallel
    /// (blocking the consumer thread meanwhile: no input is read before state is back).
    /// With `exactly_once` each gets its transactional producer first, which fences the
    /// partition's previous owner and aborts its unfinished transaction.
    fn prepare(&self, parts: &[(String, i32)]) -> Vec<Option<ShardStart>> {
        let env = &self.env;
        std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .iter()
                .map(|(topic, partition)| {
                    scope.spawn(move || -> anyhow::Result<ShardStart> {
                        let producer = match env.guarantee() {
                            Guarantee::ExactlyOnce => Some(changelog::transactional_producer(
                                &env.config,
                                topic,
                                *partition,
                            )?),
                            Guarantee::AtLeastOnce => None,
                        };
                        let (engine, report, took) =
                            changelog::restore(&env.config, env.rules.clone(), topic, *partition)?;
                        telemetry::restored(topic, *partition, &report, took);
                        Ok(ShardStart {
                            engine,
                            producer,
                            position: report.position,
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .zip(parts)
                .map(|(h, (topic, partition))| {
                    let result = h
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("the restore panicked")));
                    match result {
                        Ok(start) => Some(start),
                        Err(e) => {
                            telemetry::restore_failed(topic, *partition, &e);
                            self.env.failed.store(true, Ordering::Release);
                            None
                        }
                    }
                })
                .collect()
        })
    }

    fn start_shard(&self, shards: &mut Shards, topic: &str, partition: i32, start: ShardStart) {
        let topic: Arc<str> = Arc::from(topic);
        if shards.contains_key(&Partition(&topic, partition)) {
            return;
        }
        let (tx, rx) = mpsc::channel(self.shard_queue);
        let (stop, stop_rx) = oneshot::channel();
        let progress = Arc::new(AtomicI64::new(-1));
        let shard = Shard::new(
            topic.clone(),
            partition,
            self.env.clone(),
            start,
            progress.clone(),
            Instant::now(),
        );
        self.runtime.spawn(shard.run(rx, stop_rx));
        telemetry::partition_assigned(&topic, partition);
        shards.insert(
            (topic, partition),
            ShardHandle {
                tx,
                stop,
                stash: VecDeque::new(),
                paused: false,
                next: i64::MIN,
                progress,
                stored: -1,
            },
        );
    }

    /// Stops the given shards (all when `which` is `None`), waits for them to flush and for
    /// their outputs to be acknowledged, then stores and commits their final offsets.
    /// Returns whether every one of them finished in time.
    fn stop_shards(&self, consumer: &BaseConsumer<Ctx>, which: Option<&[(String, i32)]>) -> bool {
        let mut shards = self.shards();
        let keys: Vec<_> = shards
            .keys()
            .filter(|(t, p)| which.is_none_or(|w| w.iter().any(|(wt, wp)| **wt == **t && wp == p)))
            .cloned()
            .collect();
        if keys.is_empty() {
            return true;
        }
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(keys.len());
        let mut waiting = std::collections::HashSet::new();
        for key in keys {
            if let Some(h) = shards.remove(&key) {
                // Stashed messages are not processed: they stay uncommitted and are read
                // again by the partition's next owner.
                let _ = h.stop.send(reply_tx.clone());
                waiting.insert(key);
            }
        }
        drop(shards);
        let deadline = Instant::now() + self.stop_timeout;
        let mut tpl = TopicPartitionList::new();
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(exit) = reply_rx.recv_timeout(left) else {
                break;
            };
            waiting.remove(&(exit.topic.clone(), exit.partition));
            telemetry::partition_revoked(&exit.topic, exit.partition, exit.commit);
            if let Some(next) = exit.commit {
                let _ = tpl.add_partition_offset(&exit.topic, exit.partition, Offset::Offset(next));
            }
        }
        for (topic, partition) in &waiting {
            telemetry::shard_stop_timed_out(topic, *partition);
        }
        // With exactly_once the offsets were committed in the shards' transactions.
        if tpl.count() > 0 && self.env.guarantee() == Guarantee::AtLeastOnce {
            if let Err(e) = consumer.store_offsets(&tpl) {
                telemetry::commit_failed(&e);
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                telemetry::commit_failed(&e);
            }
        }
        self.publish_status();
        waiting.is_empty()
    }

    fn publish_status(&self) {
        let mut assigned: Vec<_> = self
            .shards()
            .keys()
            .map(|(t, p)| (t.to_string(), *p))
            .collect();
        assigned.sort();
        self.status.send_modify(|s| s.assigned = assigned);
    }

    /// Hands a polled message to its shard, or stashes it (pausing the partition) when the
    /// shard's queue is full. Returns whether the message was stashed.
    fn dispatch(
        &self,
        consumer: &BaseConsumer<Ctx>,
        topic: &Arc<str>,
        partition: i32,
        msg: ShardMsg,
    ) -> bool {
        let mut shards = self.shards();
        let Some(h) = shards.get_mut(&Partition(topic, partition)) else {
            // Not assigned (any more): the message stays uncommitted for the owner.
            return false;
        };
        if msg.offset < h.next {
            return false; // re-fetched after a pause: already handed over
        }
        if h.next != i64::MIN && msg.offset > h.next {
            // Legitimate with compaction or transaction markers; worth seeing otherwise.
            telemetry::offset_gap(topic, partition, h.next, msg.offset);
        }
        h.next = msg.offset + 1;
        let msg = if h.stash.is_empty() {
            match h.tx.try_send(msg) {
                Ok(()) => return false,
                Err(mpsc::error::TrySendError::Full(msg)) => msg,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.shard_died(topic, partition);
                    return false;
                }
            }
        } else {
            msg
        };
        h.stash.push_back(msg);
        // The stash absorbs short bursts; only a shard that stays behind gets its partition
        // paused. Pausing drops what librdkafka prefetched and resuming refetches it, so
        // pausing at the first full queue made the partition flap (end to end 2-4x slower,
        // BENCHMARKS.md). Buffered per shard: at most `shard_queue` queued + as many stashed.
        if h.stash.len() >= self.shard_queue && !h.paused {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, partition);
            h.paused = consumer.pause(&tpl).is_ok();
            telemetry::backpressure(topic, partition, h.paused);
        }
        true
    }

    /// Moves stashed messages into shard queues that have room; resumes drained partitions.
    /// Returns whether anything is still stashed or paused.
    fn unstash(&self, consumer: &BaseConsumer<Ctx>) -> bool {
        let mut shards = self.shards();
        let mut any = false;
        for ((topic, partition), h) in shards.iter_mut() {
            while let Some(m) = h.stash.pop_front() {
                match h.tx.try_send(m) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(m)) => {
                        h.stash.push_front(m);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        h.stash.clear();
                        self.shard_died(topic, *partition);
                    }
                }
            }
            // Resumed while half the stash is left, so that the refetch (a round trip, longer
            // behind a fetch the broker holds for caught-up partitions) arrives before the
            // shard runs dry (BENCHMARKS.md).
            if h.paused && h.stash.len() <= self.shard_queue / 2 {
                // Fetching resumes explicitly at the next offset not yet handed over, rather
                // than wherever librdkafka's fetcher stood when the partition was paused
                // (messages it had fetched meanwhile are dropped on pause).
                if let Err(e) = consumer.seek(
                    topic,
                    *partition,
                    Offset::Offset(h.next),
                    Duration::from_secs(5),
                ) {
                    telemetry::consumer_error(&e);
                    continue; // stay paused; retried on the next round
                }
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, *partition);
                h.paused = consumer.resume(&tpl).is_err();
            }
            any |= !h.stash.is_empty() || h.paused;
        }
        any
    }

    fn shard_died(&self, topic: &str, partition: i32) {
        if !self.env.failed.swap(true, Ordering::AcqRel) {
            telemetry::shard_died(topic, partition);
        }
    }

    /// With `exactly_once`, refreshes the group metadata (its generation) that transactions
    /// commit offsets with; with `at_least_once`, stores the offsets shards committed
    /// (librdkafka's auto-commit sends them).
    fn store_progress(&self, consumer: &BaseConsumer<Ctx>) {
        if self.env.guarantee() == Guarantee::ExactlyOnce {
            *self
                .env
                .group
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = consumer.group_metadata().map(Arc::new);
            return;
        }
        let mut shards = self.shards();
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), h) in shards.iter_mut() {
            let next = h.progress.load(Ordering::Acquire);
            if next > h.stored {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(next));
                h.stored = next;
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.store_offsets(&tpl) {
                telemetry::commit_failed(&e);
            }
        }
    }
}

impl ClientContext for Ctx {
    fn stats(&self, stats: rdkafka::Statistics) {
        telemetry::kafka_stats(&stats);
        if stats.brokers.values().any(|b| b.state == "UP") {
            self.status
                .send_if_modified(|s| s.broker_down.take().is_some());
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            let why = format!("all brokers down: {reason}");
            self.status.send_modify(|s| s.broker_down = Some(why));
        }
        telemetry::client_error(&error, reason);
    }
}

impl ConsumerContext for Ctx {
    /// Replaces the default handler to restore shards *before* the assignment takes effect,
    /// so that each partition is assigned at the offset its restored state resumes from.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr as E;
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        match err {
            E::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                telemetry::rebalance("assign");
                let starts = if self.stopping() {
                    // The group handed out partitions while this instance is leaving it: they
                    // are taken (a rebalance must be answered) but get no restore and no
                    // shard. Their messages are dropped uncommitted; leaving hands them back.
                    telemetry::assigned_while_stopping(parts.len());
                    Vec::new()
                } else {
                    self.store_progress(consumer);
                    self.prepare(&parts)
                };
                for ((topic, partition), start) in parts.iter().zip(&starts) {
                    if let Some(p) = start.as_ref().and_then(|s| s.position) {
                        let _ = tpl.set_partition_offset(
                            topic,
                            *partition,
                            Offset::Offset(p.resume_at),
                        );
                    }
                }
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    telemetry::consumer_error(&e);
                }
                let mut shards = self.shards();
                for ((topic, partition), start) in parts.iter().zip(starts) {
                    if let Some(start) = start {
                        self.start_shard(&mut shards, topic, *partition, start);
                    }
                }
                drop(shards);
                self.publish_status();
            }
            E::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                telemetry::rebalance("revoke");
                self.store_progress(consumer);
                self.stop_shards(consumer, Some(&parts));
                let unassigned = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = unassigned {
                    telemetry::consumer_error(&e);
                }
            }
            other => {
                telemetry::rebalance_error(other);
                if !cooperative {
                    let _ = consumer.unassign();
                }
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => telemetry::commit(true),
            // "No offset": nothing new to commit, not a failure.
            Err(e)
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
            Err(e) => {
                telemetry::commit(false);
                telemetry::commit_failed(&e);
            }
        }
    }
}

/// The poll loop. Once the service is told to stop (or cannot go on), stops every shard,
/// commits their offsets, says on `committed` whether all of that went cleanly, then leaves
/// the group and closes the consumer.
pub(crate) fn consume(
    consumer: BaseConsumer<Ctx>,
    topics: &[String],
    committed: oneshot::Sender<bool>,
) {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&names) {
        telemetry::consumer_error(&e);
        let _ = committed.send(false);
        return;
    }
    let ctx = consumer.context();
    // Topic names as shared strings: no allocation per message to find its shard.
    let mut names: Vec<Arc<str>> = topics.iter().map(|t| Arc::from(t.as_str())).collect();
    let mut last_store = Instant::now();
    let mut stashed = false;
    let mut last_error: Option<Instant> = None;
    // Messages polled in a row since the last empty poll. While they keep coming, the loop
    // polls without a timeout and looks at the clock every 64 messages only: clock reads are
    // ~a quarter of this thread's time when messages flow (most of them librdkafka's own, one
    // set per poll), and a timed poll and the progress check added more.
    let mut streak: u32 = 0;
    while !ctx.stopping() && !ctx.failed() {
        if stashed {
            stashed = ctx.unstash(&consumer);
        }
        if streak % 64 == 0 && last_store.elapsed() >= Duration::from_millis(100) {
            ctx.store_progress(&consumer);
            last_store = Instant::now();
        }
        let wait = match (stashed, streak) {
            (true, _) => 5,
            (false, 0) => 100,
            (false, _) => 0,
        };
        let polled = consumer.poll(Duration::from_millis(wait));
        streak = if polled.is_some() {
            streak.wrapping_add(1).max(1)
        } else {
            0
        };
        match polled {
            None => {}
            Some(Ok(m)) => {
                let msg = ShardMsg {
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                };
                let topic = match names.iter().find(|t| ***t == *m.topic()) {
                    Some(t) => t.clone(),
                    None => {
                        let t: Arc<str> = Arc::from(m.topic());
                        names.push(t.clone());
                        t
                    }
                };
                let partition = m.partition();
                drop(m);
                stashed |= ctx.dispatch(&consumer, &topic, partition, msg);
            }
            // librdkafka reconnects by itself; say so at most every 10 s.
            Some(Err(e)) if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) => {
                telemetry::consumer_error(&e);
                last_error = Some(Instant::now());
            }
            Some(Err(_)) => {}
        }
    }
    ctx.store_progress(&consumer);
    let clean = ctx.stop_shards(&consumer, None) && !ctx.failed();
    let _ = committed.send(clean);
    consumer.unsubscribe();
    // Dropping the consumer closes it: it leaves the group.
    drop(consumer);
}
