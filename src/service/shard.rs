//! One shard: the engine state of one input partition, owned by one task. It decodes and
//! applies the partition's messages in offset order, produces what the engine emits, and every
//! `engine.commit_interval` commits its outputs, its state changes (to the changelog) and its
//! input position together:
//!
//! - `exactly_once`: everything since the last commit is in the shard's open transaction; the
//!   commit adds the changelog records and the input offset and commits the transaction.
//! - `at_least_once`: the commit writes the changelog records; once they and every output sent
//!   before the checkpoint are acknowledged it writes the meta record, and once that is
//!   acknowledged it publishes the offset for the consumer to commit. The shard goes on
//!   processing meanwhile (a commit that stopped it stalled its input for three broker round
//!   trips every `commit_interval`), and writes the changed profiles at an even pace over
//!   half the commit interval, at most `service.checkpoint_step` at a time, between batches of
//!   input (the engine writes one that is about to change first, as it was): written all at
//!   once, a checkpoint of 5,000 changed profiles held the shard's input for 13-25 ms, and one
//!   of 100,000 would hold it for a quarter of a second; written as fast as the shard had room
//!   for, it took the cores in bursts that raised every alert's latency.
//!
//! The input position committed is the oldest event still in the reorder buffer (see
//! [`Ledger::resume_at`]): those events are read again after a restore. Messages below the
//! restored `replay_until` were handled before; their rejections are not dead-lettered twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::Offset;
use tokio::sync::{mpsc, oneshot};

use super::ledger::Ledger;
use super::producer::{Acked, Delivered, Failed, Producer, Sent, Unsent};
use super::records::{dead_letter, output_record, Dest, Origin, OutRecord};
use crate::alert::Output;
use crate::config::{Config, Guarantee};
use crate::decode::{check_ahead, decode};
use crate::engine::snapshot::{InputPosition, StateRecord};
use crate::engine::{Engine, Ingest, Rules};
use crate::event::{millis, Millis};
use crate::telemetry;

/// A consumed message, handed from the consumer thread to its shard.
#[derive(Debug)]
pub(crate) struct ShardMsg {
    pub(crate) offset: i64,
    /// The record's timestamp (ms), when it has one.
    pub(crate) timestamp: Option<i64>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
}

/// What a shard starts from: its restored engine, its producer, where its input resumes.
pub(crate) struct ShardStart {
    pub(crate) engine: Engine,
    /// The shard's transactional producer (`exactly_once`), a transaction already begun.
    pub(crate) producer: Option<Producer>,
    pub(crate) position: Option<InputPosition>,
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
    /// The shared producer (`at_least_once`); with `exactly_once` each shard has its own.
    pub(crate) producer: Producer,
    /// The service's configuration (topics, formats, limits are read from it).
    pub(crate) config: Config,
    /// The consumer group's current generation, for `send_offsets_to_transaction`; refreshed
    /// by the consumer thread.
    pub(crate) group: std::sync::Mutex<Option<Arc<ConsumerGroupMetadata>>>,
    /// Set by a shard that cannot go on: the consumer thread stops the service.
    pub(crate) failed: std::sync::atomic::AtomicBool,
    /// The engine rules, compiled once for every shard.
    pub(crate) rules: Rules,
    changelog: String,
    labels: telemetry::Labels,
    /// The producer's `message.max.bytes` (librdkafka's default unless configured): a dead
    /// letter is cut to fit it.
    max_message_bytes: usize,
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

impl ShardEnv {
    pub(crate) fn new(c: &Config, producer: Producer) -> ShardEnv {
        let rules = Rules::new(c);
        ShardEnv {
            producer,
            config: c.clone(),
            group: std::sync::Mutex::new(None),
            failed: std::sync::atomic::AtomicBool::new(false),
            changelog: c.topics.changelog(&c.kafka.group_id),
            labels: telemetry::Labels::new(&c.metrics.segments, &rules.catalog),
            rules,
            max_message_bytes: super::producer_config(c)
                .get("message.max.bytes")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES),
        }
    }

    fn topic(&self, d: Dest) -> &str {
        let t = &self.config.topics;
        match d {
            Dest::Alerts => &t.alerts,
            Dest::Journeys => &t.journeys,
            Dest::DeadLetter => &t.dead_letter,
        }
    }

    pub(crate) fn guarantee(&self) -> Guarantee {
        self.config.processing.guarantee
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

/// A record to produce: an output (with the `source.commit` header value: which commit of
/// which shard it belongs to), or a changelog record (`None` value: tombstone).
enum Outgoing {
    Output(OutRecord, Arc<str>),
    State {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
}

/// The first wait before an undelivered record is produced again (`at_least_once`); it
/// doubles with each failure, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The wait before a record is offered again to a producer whose queue was full (not a
/// failure: the queue drains at the broker's pace).
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);

/// How often records waiting to be produced again are looked at.
const RESEND_TICK: Duration = Duration::from_millis(10);

/// An `at_least_once` commit under way. Records are sent in numbered epochs; a checkpoint
/// closes the current one once its last profile is written. Once every record of epoch
/// `epoch` and before is acknowledged, the meta record is sent (closing another epoch), and
/// once that is acknowledged too the input position is published.
struct PendingCommit {
    /// `None` while the engine's checkpoint still has profiles to write.
    epoch: Option<u64>,
    /// The meta record, until sent.
    meta: Option<StateRecord>,
    resume_at: i64,
    /// When the checkpoint began, and how many profiles it had to write then: it is written
    /// at an even pace over [`SPREAD`] of the commit interval.
    began: Instant,
    profiles: usize,
}

/// The part of `engine.commit_interval` over which an `at_least_once` checkpoint is spread
/// while input flows. Written as fast as the shard had room for, a checkpoint took the cores
/// in bursts (every profile that changed in the interval, encoded and produced to the
/// changelog within a few hundred milliseconds), and the latency of every alert rose during
/// each (BENCHMARKS.md).
const SPREAD: f64 = 0.5;

/// Input quiet for this long (its end, or a pause): a checkpoint under way is written as fast
/// as the shard has room for, as there is no input for it to hold up. Paced, the last commit
/// after a burst of input ended up to half a commit interval later.
const QUIET: Duration = Duration::from_millis(10);

/// Messages a shard takes from its queue in one go before it looks at deliveries, commits
/// and stop requests again (one `select!` round per message cost more than the message).
const BATCH: usize = 64;

pub(crate) struct Shard {
    topic: Arc<str>,
    partition: i32,
    env: Arc<ShardEnv>,
    engine: Engine,
    producer: Producer,
    transactional: bool,
    ledger: Ledger,
    /// Delivery reports of the records this shard produced (see [`super::producer`]).
    reports: mpsc::UnboundedSender<Delivered>,
    delivered: mpsc::UnboundedReceiver<Delivered>,
    /// Records produced and not yet acknowledged (or given up on), waiting ones included.
    unacked: usize,
    /// Records to produce again, and when.
    waiting: Vec<(Instant, Unsent)>,
    out: Vec<Output>,
    last_arrival: Instant,
    /// Until a message arrives: wall clock of the newest message, as restored (idle advance
    /// then counts the downtime as quiet time).
    restored_arrival: Option<Millis>,
    /// Next input offset to consume (`None` until known).
    next_offset: Option<i64>,
    /// Offsets below this were handled by a previous owner (restored).
    replay_until: i64,
    /// Something happened since the last commit.
    changed: bool,
    /// Why the shard cannot go on (a failed transactional delivery).
    failure: Option<String>,
    /// This incarnation's random id, in its commits and its outputs' `source.commit` header.
    writer: u64,
    /// The `source.commit` header of outputs until the next commit (see `commit_tag`).
    tag: Arc<str>,
    /// Input position published for the consumer to commit (`at_least_once`; -1: none yet).
    progress: Arc<AtomicI64>,
    /// The epoch records are sent in now, unacknowledged records per epoch, and the
    /// `at_least_once` commit under way.
    epoch: u64,
    outstanding: BTreeMap<u64, usize>,
    pending: Option<PendingCommit>,
    metrics: telemetry::ShardMetrics,
}

impl Shard {
    pub(crate) fn new(
        topic: Arc<str>,
        partition: i32,
        env: Arc<ShardEnv>,
        start: ShardStart,
        progress: Arc<AtomicI64>,
        now: Instant,
    ) -> Shard {
        let transactional = start.producer.is_some();
        let (reports, delivered) = mpsc::unbounded_channel();
        let mut shard = Shard {
            metrics: telemetry::ShardMetrics::new(&topic, partition, env.labels.clone()),
            engine: start.engine,
            producer: start.producer.unwrap_or_else(|| env.producer.clone()),
            transactional,
            topic,
            partition,
            env,
            ledger: Ledger::new(),
            reports,
            delivered,
            unacked: 0,
            waiting: Vec::new(),
            out: Vec::new(),
            last_arrival: now,
            restored_arrival: start.position.map(|p| p.arrived_at),
            next_offset: start.position.map(|p| p.resume_at),
            replay_until: start.position.map_or(i64::MIN, |p| p.replay_until),
            changed: false,
            failure: None,
            writer: fastrand::u64(..),
            tag: Arc::from(""),
            progress,
            epoch: 0,
            outstanding: BTreeMap::new(),
            pending: None,
        };
        shard.refresh_tag();
        shard
    }

    /// The shard's task: runs until told to stop (or its consumer is gone), then finishes
    /// what was handed over, commits, and reports where its partition may be committed.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<ShardMsg>,
        mut stop: oneshot::Receiver<std::sync::mpsc::SyncSender<ShardExit>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Shards start their commit cycles at random phases: a commit waits for the broker,
        // and shards that all waited at once left the cores idle (BENCHMARKS.md).
        let every = self.env.config.engine.commit_interval;
        let first = tokio::time::Instant::now() + every.mul_f64(fastrand::f64().max(0.01));
        let mut commit = tokio::time::interval_at(first, every);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pace = tokio::time::interval(Duration::from_millis(1));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut resend = resend_interval();
        let reply = loop {
            tokio::select! {
                // Timers before input: with a backlog, input is always ready, and a commit or
                // metrics tick placed after it never ran until the backlog was gone (no commit
                // for the whole catch-up; with `exactly_once` one ever-growing transaction).
                biased;
                reply = &mut stop => break reply.ok(),
                _ = commit.tick() => {
                    if let Err(e) = self.commit(false).await {
                        self.fail(&e);
                        break None;
                    }
                }
                _ = tick.tick() => {
                    self.idle(Instant::now());
                    self.publish_metrics();
                }
                Some(d) = self.delivered.recv() => self.take_reports(d),
                _ = resend.tick(), if !self.waiting.is_empty() => self.resend(Instant::now()),
                msg = rx.recv(), if self.unacked < self.env.config.service.max_in_flight => match msg {
                    Some(m) => self.take(m, &mut rx),
                    // The consumer dropped its handle: either it sent a stop request just
                    // before (both go together in `stop_shards`; this turn polled `stop`
                    // before the request and the input after the handle was dropped) or it
                    // is gone, which ends `stop` too.
                    None => break (&mut stop).await.ok(),
                },
                // Nothing else to do. With input quiet, the checkpoint under way goes on a
                // step per turn (the yield lets the other shards on this worker thread run in
                // between): nothing waits for the cores, and the commit ends sooner.
                () = tokio::task::yield_now(), if self.writing_checkpoint() && self.quiet(Instant::now()) => {
                    self.write_checkpoint(self.env.config.service.checkpoint_step);
                }
                // With input flowing, at its pace (input batches move it on too).
                _ = pace.tick(), if self.writing_checkpoint() => {
                    self.step_checkpoint(Instant::now());
                }
            }
        };
        // Finish what was handed over and commit it. The reorder buffer is not flushed: its
        // events are read again by the partition's next owner, which restores this state.
        let mut committed = None;
        if self.failure.is_none() && !self.env.failed.load(Ordering::Acquire) {
            while let Ok(m) = rx.try_recv() {
                self.process(m, Instant::now());
            }
            match self.commit(true).await {
                Ok(at) => committed = at,
                Err(e) => self.fail(&e),
            }
        }
        self.publish_metrics();
        self.metrics.close(&self.engine, &self.env.rules.catalog);
        if let Some(reply) = reply {
            let _ = reply.send(ShardExit {
                topic: self.topic.clone(),
                partition: self.partition,
                commit: committed,
            });
        }
    }

    fn fail(&mut self, e: &anyhow::Error) {
        telemetry::commit_error(&self.topic, self.partition, e);
        self.env.failed.store(true, Ordering::Release);
    }

    /// Processes `first` and what else is queued, up to [`BATCH`] messages or the in-flight
    /// limit, then writes the profiles of a checkpoint under way that are due.
    fn take(&mut self, first: ShardMsg, rx: &mut mpsc::Receiver<ShardMsg>) {
        let now = Instant::now();
        self.process(first, now);
        let limit = self.env.config.service.max_in_flight;
        for _ in 1..BATCH {
            if self.unacked >= limit {
                break;
            }
            match rx.try_recv() {
                Ok(m) => self.process(m, now),
                Err(_) => break,
            }
        }
        self.step_checkpoint(now);
    }

    /// Takes a delivery report, and any others already in.
    fn take_reports(&mut self, d: Delivered) {
        self.report(d);
        while let Ok(d) = self.delivered.try_recv() {
            self.report(d);
        }
    }

    fn report(&mut self, d: Delivered) {
        match d {
            Ok(Acked { epoch, latency }) => {
                if let Some(latency) = latency {
                    self.metrics.acknowledged(latency);
                }
                self.settled(epoch);
            }
            Err(f) => self.not_sent(*f),
        }
    }

    /// A record of `epoch` is acknowledged, or given up on.
    fn settled(&mut self, epoch: u64) {
        self.unacked -= 1;
        if let Some(n) = self.outstanding.get_mut(&epoch) {
            *n -= 1;
            if *n == 0 {
                self.outstanding.remove(&epoch);
                self.advance_commit();
            }
        }
    }

    /// A record librdkafka refused or did not deliver. With `at_least_once` it is produced
    /// again after a backoff: an output is never given up on (its input stays uncommitted
    /// meanwhile). In a transaction (where librdkafka already retried) a failure is final:
    /// the transaction must abort.
    fn not_sent(
        &mut self,
        Failed {
            error: e,
            mut unsent,
        }: Failed,
    ) {
        let now = Instant::now();
        if let KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) = e {
            self.waiting.push((now + QUEUE_FULL_WAIT, unsent));
            return;
        }
        let backoff = unsent.sent.backoff;
        telemetry::produce_failed(unsent.topic(), &e, backoff);
        telemetry::produce_error(unsent.topic());
        if !self.transactional {
            unsent.sent.backoff = (backoff * 2).min(MAX_BACKOFF);
            self.waiting.push((now + backoff, unsent));
        } else {
            if self.failure.is_none() {
                self.failure = Some("a record of the open transaction was not delivered".into());
            }
            self.settled(unsent.sent.epoch);
        }
    }

    /// Produces again the waiting records that are due.
    fn resend(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].0 > now {
                i += 1;
                continue;
            }
            let (_, unsent) = self.waiting.swap_remove(i);
            if let Err(f) = unsent.send(&self.producer) {
                self.not_sent(*f);
            }
        }
    }

    fn process(&mut self, m: ShardMsg, now: Instant) {
        self.last_arrival = now;
        if m.offset >= self.replay_until {
            self.restored_arrival = None; // new input: the restored arrival time is history
        }
        self.next_offset = Some(m.offset + 1);
        self.changed = true;
        self.metrics.consumed();
        let payload = m.payload.as_deref().unwrap_or_default();
        let input = &self.env.config.input;
        let decoded = decode(payload, input.format).and_then(|e| {
            if let Some(written) = m.timestamp {
                check_ahead(e.occurred_at, written, input.max_ahead)?;
            }
            Ok(e)
        });
        let reject = match decoded {
            Err(r) => Some((r.reason.as_str(), r.detail)),
            Ok(event) => {
                let t = event.occurred_at;
                self.metrics.event(event.channel, event.action);
                match self.engine.ingest(event, &mut self.out) {
                    Ingest::Accepted => {
                        self.ledger.push(m.offset, Some(t));
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
            // A replayed message that is rejected now was handled before: events applied
            // before the restore are behind the restored watermark (late), and rejections
            // were dead-lettered then.
            if m.offset >= self.replay_until {
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
                let max = self.env.max_message_bytes;
                let rec = dead_letter(m.key.as_deref(), payload, reason, &detail, from, max);
                self.send(Outgoing::Output(rec, self.tag.clone()), now);
            }
        }
        self.send_outputs(now);
    }

    fn idle(&mut self, now: Instant) {
        let mut quiet = now.saturating_duration_since(self.last_arrival);
        if quiet < self.env.config.engine.idle_advance {
            return; // not quiet here (a restored shard may be catching up on a backlog)
        }
        if let Some(at) = self.restored_arrival {
            let since = crate::clock::now_millis().saturating_sub(at);
            quiet = quiet.max(Duration::from_millis(since.max(0) as u64));
        }
        let w = idle_watermark(
            self.engine.max_event_time(),
            quiet,
            self.env.config.engine.idle_advance,
            self.env.rules.allowed_lateness,
        );
        if let Some(w) = w {
            if w > self.engine.watermark() {
                telemetry::idle_advance(&self.topic, self.partition, w);
                self.engine.advance_to(w, &mut self.out);
                self.changed = true;
                self.send_outputs(now);
            }
        }
    }

    fn send_outputs(&mut self, cause: Instant) {
        if self.out.is_empty() {
            return;
        }
        let format = self.env.config.output.format;
        let outs = std::mem::take(&mut self.out);
        self.metrics.outputs(&outs);
        for o in &outs {
            self.send(
                Outgoing::Output(output_record(o, format), self.tag.clone()),
                cause,
            );
        }
        self.out = outs;
        self.out.clear();
    }

    /// Sets the `source.commit` tag for outputs from now until the next commit. Called when the
    /// shard starts and after each checkpoint: no string is built per output.
    fn refresh_tag(&mut self) {
        self.tag = Arc::from(commit_tag(
            &self.topic,
            self.partition,
            self.engine.next_commit(),
            self.writer,
        ));
    }

    /// Fails the commit if a transactional delivery failed, aborting the transaction.
    fn check_deliveries(&mut self) -> anyhow::Result<()> {
        match self.failure.take() {
            Some(f) => {
                self.abort();
                anyhow::bail!("{f}")
            }
            None => Ok(()),
        }
    }

    /// Produces `rec`; `cause` is when the message that caused it was consumed. Its delivery
    /// report comes back through `self.delivered`.
    fn send(&mut self, rec: Outgoing, cause: Instant) {
        let epoch = self.epoch;
        *self.outstanding.entry(epoch).or_default() += 1;
        self.unacked += 1;
        let (topic, key, payload, headers, tag, partition) = match &rec {
            Outgoing::Output(r, tag) => (
                self.env.topic(r.dest),
                r.key.as_deref(),
                Some(r.payload.as_slice()),
                r.headers.as_slice(),
                Some(tag.as_bytes()),
                None,
            ),
            Outgoing::State { key, value } => (
                self.env.changelog.as_str(),
                Some(key.as_slice()),
                value.as_deref(),
                &[][..],
                None,
                Some(self.partition),
            ),
        };
        let sent = Box::new(Sent {
            to: self.reports.clone(),
            epoch,
            cause: tag.is_some().then_some(cause),
            partition,
            backoff: FIRST_BACKOFF,
        });
        let mut record = BaseRecord::with_opaque_to(topic, sent);
        if let Some(tag) = tag {
            let mut h = OwnedHeaders::new_with_capacity(headers.len() + 1);
            for (key, value) in headers {
                h = h.insert(Header {
                    key,
                    value: Some(value.as_ref()),
                });
            }
            h = h.insert(Header {
                key: "source.commit",
                value: Some(tag),
            });
            record.headers = Some(h);
        }
        record.payload = payload;
        record.key = key;
        record.partition = partition;
        if let Err((error, record)) = self.producer.send(record) {
            self.not_sent(Failed {
                error,
                unsent: Unsent::from_record(record),
            });
        }
    }

    /// Waits until every record produced is acknowledged (or, in a transaction, failed).
    async fn drain_deliveries(&mut self) {
        let mut resend = resend_interval();
        while self.unacked > 0 {
            tokio::select! {
                Some(d) = self.delivered.recv() => self.take_reports(d),
                _ = resend.tick(), if !self.waiting.is_empty() => self.resend(Instant::now()),
            }
        }
    }

    /// Commits outputs, state changes and input position together (see the module docs).
    /// Returns the input position committed, if anything is committed. An `at_least_once`
    /// commit that is not the last only starts here (see [`PendingCommit`]).
    async fn commit(&mut self, last: bool) -> anyhow::Result<Option<i64>> {
        if !self.transactional && !last {
            if self.pending.is_none() {
                self.begin_commit();
            }
            return Ok(None); // one under way: this tick is skipped
        }
        // The last commit (or a transaction): everything is acknowledged first. Draining also
        // finishes an `at_least_once` commit under way (its meta record is sent on the way).
        self.write_checkpoint(usize::MAX);
        self.drain_deliveries().await;
        debug_assert!(self.pending.is_none(), "drained with a commit under way");
        self.check_deliveries()?;
        let Some(next) = self.next_offset else {
            return Ok(None); // nothing read, nothing restored: nothing to commit
        };
        let (resume_at, records) = self.take_checkpoint(next, false);
        let Some(mut records) = records else {
            if last && self.transactional {
                self.end_transaction(resume_at, true).await?;
            }
            return Ok(Some(resume_at));
        };
        let now = Instant::now();
        if self.transactional {
            for r in records {
                self.send_state(r, now);
            }
            // Delivered before the commit: a record waiting for room in a full producer
            // queue is not in the transaction yet, and a failed one must abort it.
            self.drain_deliveries().await;
            self.check_deliveries()?;
            self.end_transaction(resume_at, last).await?;
        } else {
            // The meta record goes last, once everything before it is acknowledged: a restore
            // ignores records after the last meta record.
            let meta = records.pop();
            for r in records {
                self.send_state(r, now);
            }
            self.drain_deliveries().await;
            if let Some(meta) = meta {
                self.send_state(meta, now);
                self.drain_deliveries().await;
            }
            self.progress.store(resume_at, Ordering::Release);
        }
        Ok(Some(resume_at))
    }

    /// The input position to commit at, and the changelog records of what changed since the
    /// last checkpoint (the meta record last), or `None` if nothing did. `lazily`: only the
    /// first records; [`Shard::write_checkpoint`] writes the rest.
    fn take_checkpoint(&mut self, next: i64, lazily: bool) -> (i64, Option<Vec<StateRecord>>) {
        let resume_at = self.ledger.resume_at(next, self.engine.watermark());
        if !self.changed && self.engine.changed_profiles() == 0 {
            return (resume_at, None);
        }
        self.changed = false;
        let arrived_at = self.restored_arrival.unwrap_or_else(|| {
            let ago = Instant::now().saturating_duration_since(self.last_arrival);
            crate::clock::now_millis().saturating_sub(millis(ago))
        });
        let position = InputPosition {
            resume_at,
            replay_until: self.replay_until.max(next),
            arrived_at,
            writer: self.writer,
        };
        let records = if lazily {
            self.engine.begin_checkpoint(position)
        } else {
            self.engine.checkpoint(position)
        };
        self.refresh_tag();
        changelog_written(&records);
        (resume_at, Some(records))
    }

    /// Writes the profiles of the checkpoint under way that are due by `now` (it is spread
    /// evenly over [`SPREAD`] of the commit interval), at most `service.checkpoint_step`.
    fn step_checkpoint(&mut self, now: Instant) {
        let Some(p) = &self.pending else {
            return;
        };
        let due = profiles_due(
            p.profiles,
            self.engine.checkpoint_remaining(),
            now.saturating_duration_since(p.began),
            self.env.config.engine.commit_interval.mul_f64(SPREAD),
        );
        self.write_checkpoint(due.min(self.env.config.service.checkpoint_step));
    }

    /// Whether no input has come for [`QUIET`].
    fn quiet(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_arrival) >= QUIET
    }

    fn writing_checkpoint(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.epoch.is_none())
    }

    /// Sends up to `max` more profiles of the checkpoint under way (and those written early);
    /// once it is finished, closes its epoch and moves the commit on.
    fn write_checkpoint(&mut self, max: usize) {
        if !self.writing_checkpoint() {
            return;
        }
        let mut records = Vec::new();
        let done = self.engine.checkpoint_step(max, &mut records);
        changelog_written(&records);
        let meta = if done { records.pop() } else { None };
        let now = Instant::now();
        for r in records {
            self.send_state(r, now);
        }
        if done {
            if let Some(p) = &mut self.pending {
                p.meta = meta;
                p.epoch = Some(self.epoch);
            }
            self.epoch += 1;
            self.advance_commit();
        }
    }

    /// Starts an `at_least_once` commit: begins a checkpoint and sends what is ready of it
    /// (the dedup window's records); [`Shard::step_checkpoint`] sends the profiles at an even
    /// pace and closes the epoch, and [`Shard::advance_commit`] finishes the commit as
    /// acknowledgements come in.
    fn begin_commit(&mut self) {
        let Some(next) = self.next_offset else {
            return; // nothing read, nothing restored: nothing to commit
        };
        let (resume_at, Some(records)) = self.take_checkpoint(next, true) else {
            return;
        };
        let now = Instant::now();
        for r in records {
            self.send_state(r, now);
        }
        self.pending = Some(PendingCommit {
            epoch: None,
            meta: None,
            resume_at,
            began: now,
            profiles: self.engine.checkpoint_remaining(),
        });
        self.step_checkpoint(now);
    }

    /// Moves the commit under way on once every record of its epoch and before is
    /// acknowledged: sends the meta record (and closes the epoch it is sent in, which may hold
    /// outputs of later events too), then, once that epoch is acknowledged, publishes the
    /// input position.
    fn advance_commit(&mut self) {
        let Some(PendingCommit {
            epoch: Some(epoch), ..
        }) = &self.pending
        else {
            return; // none, or still writing profiles
        };
        if self.outstanding.range(..=*epoch).next().is_some() {
            return;
        }
        let p = self.pending.as_mut().expect("matched above");
        match p.meta.take() {
            Some(meta) => {
                p.epoch = Some(self.epoch);
                self.send_state(meta, Instant::now());
                self.epoch += 1;
            }
            None => {
                self.progress.store(p.resume_at, Ordering::Release);
                self.pending = None;
            }
        }
    }

    fn send_state(&mut self, r: StateRecord, now: Instant) {
        let key = r.key.encode(&self.topic);
        self.send(
            Outgoing::State {
                key,
                value: r.value,
            },
            now,
        );
    }

    /// Adds the input position to the open transaction and commits it; begins the next one
    /// unless this is the last. On failure the transaction is aborted.
    async fn end_transaction(&mut self, resume_at: i64, last: bool) -> anyhow::Result<()> {
        let group = self
            .env
            .group
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no consumer group metadata yet"))?;
        let producer = self.producer.clone();
        let (topic, partition) = (self.topic.to_string(), self.partition);
        let timeout = self.env.config.service.shutdown_timeout;
        let result = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(resume_at))?;
            producer.send_offsets_to_transaction(&tpl, &group, timeout)?;
            producer.commit_transaction(timeout)?;
            if !last {
                producer.begin_transaction()?;
            }
            Ok(())
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
        telemetry::transaction(result.is_ok());
        if result.is_err() {
            self.abort();
        }
        result
    }

    /// Aborts the open transaction (best effort: the service stops after this).
    fn abort(&mut self) {
        if self.transactional {
            let _ = self.producer.abort_transaction(Duration::from_secs(5));
            telemetry::transaction(false);
        }
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
}

/// How many of a checkpoint's `profiles` are due to be written, `elapsed` into a `spread`
/// over which they are written at an even pace, with `remaining` still to write.
fn profiles_due(profiles: usize, remaining: usize, elapsed: Duration, spread: Duration) -> usize {
    let done = elapsed.as_secs_f64() / spread.as_secs_f64();
    // What may still be left to write by now: none once the spread is over.
    let left = (profiles as f64 * (1.0 - done).max(0.0)) as usize;
    remaining.saturating_sub(left)
}

/// `<input topic>/<partition>/<commit number>/<writer>`: which commit (with `exactly_once`,
/// which transaction) of which shard incarnation an output belongs to.
fn commit_tag(topic: &str, partition: i32, commit: u64, writer: u64) -> String {
    format!("{topic}/{partition}/{commit}/{writer:x}")
}

fn resend_interval() -> tokio::time::Interval {
    let mut resend = tokio::time::interval(RESEND_TICK);
    resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    resend
}

fn changelog_written(records: &[StateRecord]) {
    if records.is_empty() {
        return;
    }
    let bytes: usize = records
        .iter()
        .map(|r| r.value.as_ref().map_or(0, Vec::len))
        .sum();
    telemetry::changelog_written(records.len(), bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stop_shards` sends the stop request and then drops the handle, closing the input: a
    /// shard that polls its stop request just before the first and its input just after the
    /// second must still answer the request (it broke off without a reply, and the consumer
    /// waited out the whole stop timeout, leaving the partition uncommitted).
    #[tokio::test(flavor = "current_thread")]
    async fn a_shard_whose_input_closes_before_its_stop_request_arrives_still_answers_it() {
        let mut config = Config::example();
        config.kafka.brokers = "127.0.0.1:9".into(); // never contacted: nothing is produced
        let producer = Producer::new(&crate::service::producer_config(&config)).unwrap();
        let env = Arc::new(ShardEnv::new(&config, producer));
        let start = ShardStart {
            engine: Engine::new(env.rules.clone()),
            producer: None,
            position: None,
        };
        let progress = Arc::new(AtomicI64::new(-1));
        let shard = Shard::new(Arc::from("in"), 7, env, start, progress, Instant::now());
        let (tx, rx) = mpsc::channel(4);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(shard.run(rx, stop_rx));
        // The input closes first, and the shard gets turns to see it with no request yet
        // (the race, made deterministic on one thread).
        drop(tx);
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
        let _ = stop_tx.send(reply_tx);
        task.await.unwrap();
        let exit = reply_rx.try_recv().expect("the stop request was answered");
        assert_eq!((&*exit.topic, exit.partition, exit.commit), ("in", 7, None));
    }

    #[test]
    fn a_checkpoint_is_due_at_an_even_pace_and_whole_once_its_spread_is_over() {
        let spread = Duration::from_millis(500);
        let at = |ms| Duration::from_millis(ms);
        assert_eq!(profiles_due(1000, 1000, at(0), spread), 0);
        assert_eq!(profiles_due(1000, 1000, at(100), spread), 200);
        // Written ahead of the pace (or early, as profiles changed): nothing more is due yet.
        assert_eq!(profiles_due(1000, 700, at(100), spread), 0);
        assert_eq!(profiles_due(1000, 700, at(250), spread), 200);
        assert_eq!(profiles_due(1000, 700, at(500), spread), 700);
        assert_eq!(profiles_due(1000, 700, at(5000), spread), 700);
        assert_eq!(profiles_due(0, 0, at(0), spread), 0);
        // A spread of nothing (a zero commit interval): everything at once.
        assert_eq!(profiles_due(10, 10, at(0), Duration::ZERO), 10);
    }

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
