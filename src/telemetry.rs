//! Internal events: every log line the service writes about its own operation is emitted here,
//! not sprinkled through the pipeline code. Each function is one event with bounded fields
//! (topic, partition, reason labels): never a customer or event id.

use std::time::Duration;

use rdkafka::error::KafkaError;
use tracing::{debug, error, info, warn};

pub fn service_starting(brokers: &str, group: &str, topics: &[String]) {
    info!(%brokers, %group, ?topics, "cxstream service starting");
}

pub fn http_listening(addr: std::net::SocketAddr) {
    info!(%addr, "serving /metrics, /healthz, /readyz");
}

pub fn partition_assigned(topic: &str, partition: i32) {
    info!(%topic, partition, "partition assigned: shard started");
}

pub fn partition_revoked(topic: &str, partition: i32, commit: Option<i64>) {
    info!(%topic, partition, ?commit, "partition revoked: shard committed and dropped");
}

pub fn assigned_while_stopping(partitions: usize) {
    info!(
        partitions,
        "partitions assigned while stopping: taken without a shard, handed back on leaving"
    );
}

pub fn consumer_close_timed_out() {
    warn!("the consumer did not close within the shutdown timeout (everything was committed): the group notices the departure at its session timeout");
}

pub fn shard_died(topic: &str, partition: i32) {
    error!(%topic, partition, "shard task ended unexpectedly: stopping the service (its input stays uncommitted)");
}

pub fn shard_stop_timed_out(topic: &str, partition: i32) {
    warn!(%topic, partition, "shard did not finish in time: its uncommitted input will be read again");
}

pub fn rejected(topic: &str, partition: i32, offset: i64, reason: &str, detail: &str) {
    debug!(%topic, partition, offset, %reason, %detail, "input rejected: sent to the dead-letter topic");
}

pub fn consumer_error(e: &KafkaError) {
    warn!(error = %e, "consumer error (librdkafka retries with backoff)");
}

pub fn produce_failed(topic: &str, e: &KafkaError, retry_in: Duration) {
    warn!(%topic, error = %e, ?retry_in, "produce failed: retrying (the input offset stays uncommitted)");
}

pub fn client_error(e: &KafkaError, reason: &str) {
    error!(error = %e, %reason, "librdkafka error");
}

pub fn commit_failed(e: &KafkaError) {
    warn!(error = %e, "offset commit failed: the next commit will include these offsets");
}

pub fn backpressure(topic: &str, partition: i32, paused: bool) {
    debug!(%topic, partition, paused, "shard queue full: partition paused until it drains");
}

pub fn offset_gap(topic: &str, partition: i32, expected: i64, got: i64) {
    debug!(%topic, partition, expected, got, "offset gap in the input (compaction or transaction markers)");
}

pub fn idle_advance(topic: &str, partition: i32, watermark: i64) {
    debug!(%topic, partition, watermark, "partition quiet: watermark advanced with the wall clock");
}

pub fn rebalance_error(code: rdkafka::types::RDKafkaRespErr) {
    error!(?code, "rebalance error");
}

pub fn changelog_created(topic: &str, partitions: usize) {
    info!(%topic, partitions, "changelog topic created (compacted)");
}

pub fn restored(
    topic: &str,
    partition: i32,
    r: &crate::engine::snapshot::RestoreReport,
    took: Duration,
) {
    info!(%topic, partition, records = r.records, bytes = r.bytes, profiles = r.profiles,
        open_journeys = r.open_journeys, resume_at = ?r.position.map(|p| p.resume_at), ?took,
        "shard restored from the changelog");
    if r.dropped_journeys > 0 {
        warn!(%topic, partition, dropped = r.dropped_journeys, "restored journey instances of journeys no longer configured (or whose steps changed) were dropped");
    }
    if r.ignored > 0 {
        info!(%topic, partition, ignored = r.ignored, "changelog records of an unfinished commit ignored");
    }
    histogram!("cx_restore_seconds").record(took.as_secs_f64());
    counter!("cx_restore_records_total").increment(r.records);
}

pub fn restore_failed(topic: &str, partition: i32, e: &anyhow::Error) {
    error!(%topic, partition, error = format!("{e:#}"), "cannot restore the shard: stopping the service (nothing of the partition is processed)");
}

pub fn commit_error(topic: &str, partition: i32, e: &anyhow::Error) {
    error!(%topic, partition, error = format!("{e:#}"), "commit failed: stopping the service; the partition resumes from its last commit");
}

pub fn changelog_written(records: usize, bytes: usize) {
    counter!("cx_changelog_records_total").increment(records as u64);
    counter!("cx_changelog_bytes_total").increment(bytes as u64);
}

pub fn transaction(committed: bool) {
    counter!("cx_transactions_total", "result" => if committed { "commit" } else { "abort" })
        .increment(1);
}

pub fn shutting_down(timeout: Duration) {
    info!(
        ?timeout,
        "shutdown requested: finishing in-flight work, flushing, committing"
    );
}

pub fn stopped(clean: bool, took: Duration) {
    if clean {
        info!(
            ?took,
            "stopped: every output acknowledged and its input committed"
        );
    } else {
        error!(?took, "stopped before everything was acknowledged: uncommitted input will be read again on restart");
    }
}

// ------------------------------------------------------------------------------- metrics
//
// Every metric is documented in docs/metrics.md (a test checks the catalogue against a real
// scrape). Label values come from config (journey and step names, listed segments) or from
// closed enums (channel, action, type, severity, outcome, reason): never an id.

use std::sync::OnceLock;

use compact_str::CompactString;
use hashbrown::HashMap;
use metrics::{counter, gauge, histogram, Counter, Histogram, Label};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::alert::{AlertKind, JourneyOutcome, Output};
use crate::engine::{Engine, EngineStats};
use crate::event::{Action, Channel};
use crate::journey::Catalog;

/// Seconds buckets shared by the latency and duration histograms.
const SECONDS: [f64; 16] = [
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    86400.0,
];
/// One bucket per score point: NPS 0-10, CSAT 1-5, CES 1-7.
const SCORES: [f64; 11] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];

/// Installs the process-wide Prometheus recorder (once; later calls share it).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (then ours just renders empty).
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A Prometheus recorder with our histogram buckets.
fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("cx_survey_score".into()), &SCORES))
        .expect("bucket lists are non-empty")
        .build_recorder()
}

/// The bounded sets output labels come from: free-form segment values mapped onto the
/// configured list (`other` for the rest), and the journeys and steps of the config, numbered
/// so that a per-output series can be found by a number instead of its label strings.
#[derive(Debug, Clone)]
pub struct Labels {
    segments: Vec<String>,
    /// Journeys by name: their number (from 1; 0 stands for none) and their steps.
    journeys: HashMap<CompactString, (u64, Vec<CompactString>)>,
}

impl Labels {
    pub fn new(segments: &[String], catalog: &Catalog) -> Labels {
        let journeys = catalog
            .journeys
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.clone(), (i as u64 + 1, j.steps.clone())))
            .collect();
        Labels {
            segments: segments.to_vec(),
            journeys,
        }
    }

    pub fn segment<'a>(&'a self, s: &str) -> &'a str {
        self.segment_name(self.segment_number(s))
    }

    /// The label of a [`Labels::segment_number`].
    fn segment_name(&self, n: u64) -> &str {
        match n {
            0 => "unknown",
            1 => "other",
            n => &self.segments[n as usize - 2],
        }
    }

    /// 0 for unknown (empty), 1 for other, then the configured segments from 2.
    fn segment_number(&self, s: &str) -> u64 {
        if s.is_empty() {
            0
        } else {
            self.segments
                .iter()
                .position(|x| x == s)
                .map_or(1, |i| i as u64 + 2)
        }
    }

    /// A journey's number (0 for none, the empty name) and its steps; `None` for a name the
    /// config does not have (state written under another config).
    fn journey(&self, name: &str) -> Option<Known<'_>> {
        if name.is_empty() {
            return Some(Known {
                number: 0,
                steps: &[],
            });
        }
        self.journeys.get(name).map(|(number, steps)| Known {
            number: *number,
            steps,
        })
    }
}

/// A journey of the config, as [`Labels::journey`] numbers it.
#[derive(Clone, Copy)]
struct Known<'a> {
    number: u64,
    steps: &'a [CompactString],
}

impl Known<'_> {
    /// A step's number among the journey's steps (from 1; 0 for none, the empty name),
    /// `None` for a name that is not one of them.
    fn step(&self, step: &str) -> Option<u64> {
        if step.is_empty() {
            return Some(0);
        }
        self.steps
            .iter()
            .position(|s| s == step)
            .map(|i| i as u64 + 1)
    }
}

/// The per-output metrics, numbered for [`series_id`].
#[derive(Clone, Copy)]
enum Metric {
    Alerts,
    Friction,
    Ended,
    Duration,
    StepDuration,
    Survey,
}

/// A per-output series as one number: its metric, then each label value as its number in
/// its bounded set (enums by value, journeys and steps as [`Labels`] numbers them). `None`
/// when a value does not fit in the 12 bits each has (a config of over 4,095 journeys or
/// steps): the series is then found by its label strings, as any unnumbered one is.
fn series_id<const N: usize>(metric: Metric, values: [Option<u64>; N]) -> Option<u64> {
    const BITS: u32 = 12;
    values.iter().try_fold(metric as u64, |id, v| {
        v.filter(|&v| v < 1 << BITS).map(|v| id << BITS | v)
    })
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "none"
    } else {
        s
    }
}

/// Label values of one series: at most 4, each a fixed name or a journey or step name from
/// the config (bounded sets, so the memo stays small).
type SeriesKey = (&'static str, [CompactString; 4]);

/// Metric handles by series, looked up in the registry once per shard and series: looking
/// them up per output (hashing the key, allocating its labels) took ~9% of a shard's CPU.
#[derive(Default)]
struct Handles {
    counters: HashMap<SeriesKey, Counter>,
    histograms: HashMap<SeriesKey, Histogram>,
    /// The per-output series by [`series_id`]: a number hashes in a few instructions, where
    /// the label strings took ~150 a lookup, about 900 an output (`examples/output_speed.rs`).
    counters_by_id: HashMap<u64, Counter>,
    histograms_by_id: HashMap<u64, Histogram>,
}

/// A series by borrowed label values: it hashes and compares as its [`SeriesKey`] does, so
/// looking a series up builds no key (only registering a new one does).
#[derive(Hash)]
struct SeriesRef<'a>(&'static str, [&'a str; 4]);

impl<'a> SeriesRef<'a> {
    fn new<const N: usize>(name: &'static str, labels: &[(&'static str, &'a str); N]) -> Self {
        let mut values = [""; 4];
        for (v, (_, l)) in values.iter_mut().zip(labels) {
            *v = l;
        }
        SeriesRef(name, values)
    }

    fn to_key(&self) -> SeriesKey {
        (self.0, self.1.map(CompactString::from))
    }
}

impl hashbrown::Equivalent<SeriesKey> for SeriesRef<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        self.0 == key.0 && self.1.iter().zip(&key.1).all(|(a, b)| *a == b.as_str())
    }
}

fn owned<const N: usize>(labels: &[(&'static str, &str); N]) -> Vec<Label> {
    labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect()
}

/// The handle of series (`name`, `labels`) in `memo`, registered by `register` the first time.
fn memoised<'m, H, const N: usize>(
    memo: &'m mut HashMap<SeriesKey, H>,
    name: &'static str,
    labels: [(&'static str, &str); N],
    register: impl FnOnce(&'static str, Vec<Label>) -> H,
) -> &'m H {
    let series = SeriesRef::new(name, &labels);
    match memo.entry_ref(&series) {
        hashbrown::hash_map::EntryRef::Occupied(e) => e.into_mut(),
        hashbrown::hash_map::EntryRef::Vacant(e) => {
            e.insert_with_key(series.to_key(), register(name, owned(&labels)))
        }
    }
}

/// A handle by its series number (`id`), taken from the memo by label strings the first time;
/// by the strings alone when the series has no number.
fn numbered<'m, H: Clone, const N: usize>(
    by_id: &'m mut HashMap<u64, H>,
    memo: &'m mut HashMap<SeriesKey, H>,
    id: Option<u64>,
    name: &'static str,
    labels: [(&'static str, &str); N],
    register: impl FnOnce(&'static str, Vec<Label>) -> H,
) -> &'m H {
    match id {
        Some(id) => by_id
            .entry(id)
            .or_insert_with(|| memoised(memo, name, labels, register).clone()),
        None => memoised(memo, name, labels, register),
    }
}

impl Handles {
    fn histogram<const N: usize>(
        &mut self,
        name: &'static str,
        labels: [(&'static str, &str); N],
    ) -> &Histogram {
        memoised(&mut self.histograms, name, labels, |n, l| histogram!(n, l))
    }

    /// A counter found by its [`series_id`] when it has one, else by its label strings.
    fn counter_by<const N: usize>(
        &mut self,
        id: Option<u64>,
        name: &'static str,
        labels: [(&'static str, &str); N],
    ) -> &Counter {
        let register = |n, l| counter!(n, l);
        numbered(
            &mut self.counters_by_id,
            &mut self.counters,
            id,
            name,
            labels,
            register,
        )
    }

    /// [`Handles::histogram`] found by its [`series_id`] when it has one.
    fn histogram_by<const N: usize>(
        &mut self,
        id: Option<u64>,
        name: &'static str,
        labels: [(&'static str, &str); N],
    ) -> &Histogram {
        let register = |n, l| histogram!(n, l);
        numbered(
            &mut self.histograms_by_id,
            &mut self.histograms,
            id,
            name,
            labels,
            register,
        )
    }

    fn survey(
        &mut self,
        journey: (&str, Option<u64>),
        s: &crate::alert::SurveyScore,
        outcome: JourneyOutcome,
        friction: bool,
    ) {
        let id = series_id(
            Metric::Survey,
            [
                journey.1,
                Some(s.kind as u64),
                Some(outcome as u64),
                Some(u64::from(friction)),
            ],
        );
        let labels = [
            ("journey", journey.0),
            ("kind", s.kind.as_str()),
            ("outcome", outcome.as_str()),
            ("friction", if friction { "true" } else { "false" }),
        ];
        self.histogram_by(id, "cx_survey_score", labels)
            .record(f64::from(s.score));
    }
}

/// One shard's metrics: per-event tallies kept locally (no registry lookup per event) and
/// engine counters turned into deltas, both published by [`ShardMetrics::publish`].
pub struct ShardMetrics {
    topic: String,
    partition: String,
    consumed: u64,
    events: [[u64; 9]; 11],
    last: EngineStats,
    labels: Labels,
    handles: Handles,
}

impl ShardMetrics {
    pub fn new(topic: &str, partition: i32, labels: Labels) -> ShardMetrics {
        gauge!("cx_shards").increment(1.0);
        ShardMetrics {
            topic: topic.into(),
            partition: partition.to_string(),
            consumed: 0,
            events: [[0; 9]; 11],
            last: EngineStats::default(),
            labels,
            handles: Handles::default(),
        }
    }

    /// A decoded event (before the engine decides whether it is late or a duplicate).
    pub fn event(&mut self, channel: Channel, action: Action) {
        self.events[channel as usize][action as usize] += 1;
    }

    pub fn consumed(&mut self) {
        self.consumed += 1;
    }

    pub fn rejected(&self, reason: &'static str) {
        counter!("cx_events_rejected_total", "reason" => reason).increment(1);
        counter!("cx_dead_letters_total", "reason" => reason).increment(1);
    }

    pub fn late(&self) {
        counter!("cx_events_late_total").increment(1);
        counter!("cx_dead_letters_total", "reason" => "late").increment(1);
    }

    /// Alerts and journey summaries as the engine emits them.
    pub fn outputs(&mut self, outs: &[Output]) {
        let h = &mut self.handles;
        for o in outs {
            match o {
                Output::Alert(a) => {
                    let (kind, ty) = (a.kind.as_str(), a.alert_type.as_str());
                    let id = series_id(
                        Metric::Alerts,
                        [Some(a.alert_type as u64), Some(a.severity as u64)],
                    );
                    let labels = [
                        ("kind", kind),
                        ("type", ty),
                        ("severity", a.severity.as_str()),
                    ];
                    h.counter_by(id, "cx_alerts_total", labels).increment(1);
                    if a.kind == AlertKind::Friction {
                        let journey = self.labels.journey(&a.journey);
                        let step = journey.and_then(|j| j.step(&a.step));
                        let id = series_id(
                            Metric::Friction,
                            [journey.map(|j| j.number), Some(a.alert_type as u64), step],
                        );
                        let labels = [
                            ("journey", or_none(&a.journey)),
                            ("type", ty),
                            ("step", or_none(&a.step)),
                        ];
                        h.counter_by(id, "cx_friction_detections_total", labels)
                            .increment(1);
                    }
                }
                Output::Journey(j) => {
                    let name = j.journey.as_str();
                    let known = self.labels.journey(name);
                    let number = known.map(|k| k.number);
                    let outcome = j.outcome;
                    let had_friction = j.friction.iter().any(|f| f.kind() == AlertKind::Friction);
                    if j.revision == 1 {
                        let segment = self.labels.segment_number(&j.segment);
                        let id = series_id(
                            Metric::Ended,
                            [
                                number,
                                Some(outcome as u64),
                                known.and_then(|k| k.step(&j.furthest_step)),
                                Some(segment),
                            ],
                        );
                        let labels = [
                            ("journey", name),
                            ("outcome", outcome.as_str()),
                            ("step", j.furthest_step.as_str()),
                            ("segment", self.labels.segment_name(segment)),
                        ];
                        h.counter_by(id, "cx_journeys_ended_total", labels)
                            .increment(1);
                        let secs = (j.ended_at - j.started_at) as f64 / 1000.0;
                        let id = series_id(Metric::Duration, [number, Some(outcome as u64)]);
                        let labels = [("journey", name), ("outcome", outcome.as_str())];
                        h.histogram_by(id, "cx_journey_duration_seconds", labels)
                            .record(secs);
                        for st in &j.steps {
                            if let Some(s) = st.seconds {
                                let step = known.and_then(|k| k.step(&st.step));
                                let id = series_id(Metric::StepDuration, [number, step]);
                                let labels = [("journey", name), ("step", st.step.as_str())];
                                h.histogram_by(id, "cx_journey_step_duration_seconds", labels)
                                    .record(s);
                            }
                        }
                        for s in &j.surveys {
                            h.survey((name, number), s, outcome, had_friction);
                        }
                    } else if let Some(s) = j.surveys.last() {
                        // A later revision adds exactly one survey answer.
                        h.survey((name, number), s, outcome, had_friction);
                    }
                }
            }
        }
    }

    /// An output acknowledged by the broker, `latency` after its input was consumed.
    pub fn acknowledged(&mut self, latency: Duration) {
        self.handles
            .histogram("cx_processing_latency_seconds", [])
            .record(latency.as_secs_f64());
    }

    /// Publishes what accumulated since the last call (called about once a second).
    pub fn publish(&mut self, engine: &Engine, catalog: &Catalog, watermark_lag: Option<Duration>) {
        counter!("cx_messages_consumed_total", "topic" => self.topic.clone())
            .increment(std::mem::take(&mut self.consumed));
        for (c, row) in self.events.iter_mut().enumerate() {
            for (a, n) in row.iter_mut().enumerate() {
                if *n > 0 {
                    counter!("cx_events_total", "channel" => Channel::ALL[c].as_str(), "action" => Action::ALL[a].as_str()).increment(*n);
                    *n = 0;
                }
            }
        }
        let s = engine.stats();
        let l = &self.last;
        let d = |now: u64, before: u64| now.saturating_sub(before);
        counter!("cx_events_duplicate_total").increment(d(s.duplicates, l.duplicates));
        counter!("cx_events_unknown_label_total", "field" => "channel")
            .increment(d(s.unknown_channel, l.unknown_channel));
        counter!("cx_events_unknown_label_total", "field" => "action")
            .increment(d(s.unknown_action, l.unknown_action));
        counter!("cx_identity_links_total").increment(d(s.identity_links, l.identity_links));
        counter!("cx_identity_merges_total").increment(d(s.identity_merges, l.identity_merges));
        counter!("cx_profiles_evicted_total").increment(d(s.profiles_evicted, l.profiles_evicted));
        for (g, now, before) in [
            ("never_link", s.guardrail_never_link, l.guardrail_never_link),
            (
                "identifier_cap",
                s.guardrail_identifier_cap,
                l.guardrail_identifier_cap,
            ),
            (
                "customer_conflict",
                s.guardrail_customer_conflict,
                l.guardrail_customer_conflict,
            ),
        ] {
            counter!("cx_identity_guardrail_total", "guardrail" => g).increment(d(now, before));
        }
        for (j, def) in catalog.journeys.iter().enumerate() {
            let name = def.name.to_string();
            let at = |v: &Vec<u64>| v.get(j).copied().unwrap_or(0);
            let started = d(at(&s.started_by_journey), at(&l.started_by_journey));
            let gone = d(at(&s.merged_by_journey), at(&l.merged_by_journey))
                + d(at(&s.ended_by_journey), at(&l.ended_by_journey));
            counter!("cx_journeys_started_total", "journey" => name.clone()).increment(started);
            gauge!("cx_journeys_active", "journey" => name.clone())
                .increment(started as f64 - gone as f64);
            for (k, step) in def.steps.iter().enumerate() {
                let reached = |st: &EngineStats| {
                    st.steps_reached
                        .get(j)
                        .and_then(|v| v.get(k))
                        .copied()
                        .unwrap_or(0)
                };
                let (now, before) = (reached(s), reached(l));
                if now > before {
                    counter!("cx_journey_steps_reached_total", "journey" => name.clone(), "step" => step.to_string()).increment(now - before);
                }
            }
        }
        let part = [
            ("topic", self.topic.clone()),
            ("partition", self.partition.clone()),
        ];
        gauge!("cx_profiles", &part).set(engine.profile_count() as f64);
        gauge!("cx_state_bytes", &part).set(approx_state_bytes(engine) as f64);
        if let Some(lag) = watermark_lag {
            gauge!("cx_event_time_lag_seconds", &part).set(lag.as_secs_f64());
        }
        self.last = s.clone();
    }

    /// The shard is dropped (revoked or shut down): its per-partition gauges go. Call after a
    /// last [`ShardMetrics::publish`].
    pub fn close(&self, engine: &Engine, catalog: &Catalog) {
        gauge!("cx_shards").decrement(1.0);
        let part = [
            ("topic", self.topic.clone()),
            ("partition", self.partition.clone()),
        ];
        gauge!("cx_profiles", &part).set(0.0);
        gauge!("cx_state_bytes", &part).set(0.0);
        // Its open journeys are no longer held here.
        let s = engine.stats();
        for (j, def) in catalog.journeys.iter().enumerate() {
            let at = |v: &Vec<u64>| v.get(j).copied().unwrap_or(0) as f64;
            let open = at(&s.started_by_journey) - at(&s.merged_by_journey) - ended(s, j);
            gauge!("cx_journeys_active", "journey" => def.name.to_string()).decrement(open);
        }
    }
}

/// Instances of journey `j` that ended, by the engine's own count.
fn ended(s: &EngineStats, j: usize) -> f64 {
    s.ended_by_journey.get(j).copied().unwrap_or(0) as f64
}

/// Rough state size: ~470 bytes per profile (467 measured with an open journey by
/// `cargo bench --bench memory`, BENCHMARKS.md), plus estimates of ~300 bytes per event in
/// the reorder buffer and 32 per scheduled timer.
fn approx_state_bytes(engine: &Engine) -> u64 {
    engine.profile_count() as u64 * 470
        + engine.buffered() as u64 * 300
        + engine.scheduled_timers() as u64 * 32
}

pub fn produce_error(topic: &str) {
    counter!("cx_produce_errors_total", "topic" => topic.to_string()).increment(1);
}

pub fn commit(ok: bool) {
    counter!("cx_commits_total", "result" => if ok { "ok" } else { "error" }).increment(1);
}

pub fn rebalance(kind: &'static str) {
    counter!("cx_rebalances_total", "kind" => kind).increment(1);
}

/// librdkafka's statistics (every `statistics.interval.ms`): consumer lag per partition and
/// broker round-trip times.
pub fn kafka_stats(stats: &rdkafka::Statistics) {
    for (topic, t) in &stats.topics {
        for (p, part) in &t.partitions {
            if *p >= 0 && part.consumer_lag >= 0 {
                gauge!("cx_kafka_consumer_lag", "topic" => topic.clone(), "partition" => p.to_string()).set(part.consumer_lag as f64);
            }
        }
    }
    for b in stats.brokers.values() {
        if b.nodeid >= 0 {
            if let Some(rtt) = &b.rtt {
                gauge!("cx_kafka_broker_rtt_seconds", "broker" => b.nodeid.to_string())
                    .set(rtt.avg as f64 / 1e6);
            }
        }
    }
    gauge!("cx_kafka_client_queue_messages", "client" => stats.client_type.clone())
        .set(stats.msg_cnt as f64);
}

/// Every metric with its help text, so that a scrape shows each one (at zero) from the start,
/// and dashboards and alert rules never query a series that does not exist yet.
pub fn describe(catalog: &Catalog, output_topics: &[&str]) {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "cx_journeys_started_total",
        "Journey instances opened, by journey."
    );
    describe_counter!("cx_journeys_ended_total", "Journey instances closed, by journey, outcome (completed, abandoned, expired), furthest step and segment.");
    describe_gauge!(
        "cx_journeys_active",
        "Journey instances open now, by journey."
    );
    describe_counter!(
        "cx_journey_steps_reached_total",
        "Journey instances that reached a step for the first time: the live funnel."
    );
    describe_histogram!(
        "cx_journey_duration_seconds",
        Unit::Seconds,
        "Journey instance duration from start to end (event time), by journey and outcome."
    );
    describe_histogram!(
        "cx_journey_step_duration_seconds",
        Unit::Seconds,
        "Time from first entering a step to first entering the next step reached (event time)."
    );
    describe_counter!(
        "cx_friction_detections_total",
        "Friction detected, by journey (none outside journeys), type and step."
    );
    describe_counter!(
        "cx_alerts_total",
        "Alerts emitted, by kind, type and severity."
    );
    describe_histogram!("cx_survey_score", "Survey answers (NPS 0-10, CSAT 1-5, CES 1-7), by journey, kind, journey outcome and whether the journey had friction.");
    describe_counter!(
        "cx_messages_consumed_total",
        "Input messages consumed, by topic."
    );
    describe_counter!(
        "cx_events_total",
        "Decoded input events, by channel and action."
    );
    describe_counter!(
        "cx_events_rejected_total",
        "Input rejected (dead-lettered) by reason, late events aside."
    );
    describe_counter!(
        "cx_events_late_total",
        "Events older than the watermark: not applied, dead-lettered."
    );
    describe_counter!(
        "cx_events_duplicate_total",
        "Events whose event_id was already seen within the dedup window (counted when the watermark reaches them)."
    );
    describe_counter!(
        "cx_events_unknown_label_total",
        "Events whose channel or action was not a known value (mapped to other)."
    );
    describe_counter!(
        "cx_identity_links_total",
        "Identifiers linked into an existing profile."
    );
    describe_counter!(
        "cx_profiles_evicted_total",
        "Profiles evicted at engine.max_profiles (their open journeys closed as expired)."
    );
    describe_counter!(
        "cx_identity_merges_total",
        "Profiles merged because an event linked them."
    );
    describe_counter!(
        "cx_identity_guardrail_total",
        "Links refused by a guardrail: never_link, identifier_cap, customer_conflict."
    );
    describe_counter!(
        "cx_dead_letters_total",
        "Records written to the dead-letter topic, by reason."
    );
    describe_gauge!(
        "cx_kafka_consumer_lag",
        "Messages behind the partition's end (librdkafka statistics)."
    );
    describe_gauge!(
        "cx_event_time_lag_seconds",
        Unit::Seconds,
        "Wall clock minus the shard's watermark."
    );
    describe_histogram!(
        "cx_processing_latency_seconds",
        Unit::Seconds,
        "From consuming a message to the broker acknowledging an output it caused."
    );
    describe_counter!(
        "cx_produce_errors_total",
        "Failed produce attempts, by topic (at_least_once retries each; exactly_once aborts the transaction)."
    );
    describe_counter!(
        "cx_commits_total",
        "Consumer offset commits (at_least_once), by result."
    );
    describe_counter!(
        "cx_transactions_total",
        "Kafka transactions (exactly_once), by result (commit, abort)."
    );
    describe_counter!(
        "cx_changelog_records_total",
        "State change records written to the changelog topic."
    );
    describe_counter!(
        "cx_changelog_bytes_total",
        Unit::Bytes,
        "Bytes of state written to the changelog topic."
    );
    describe_histogram!(
        "cx_restore_seconds",
        Unit::Seconds,
        "Time to rebuild a shard from the changelog when its partition is assigned."
    );
    describe_counter!(
        "cx_restore_records_total",
        "Changelog records read to rebuild shards."
    );
    describe_counter!(
        "cx_rebalances_total",
        "Consumer group rebalances, by kind (assign, revoke)."
    );
    describe_gauge!("cx_shards", "Partitions (shards) owned by this instance.");
    describe_gauge!(
        "cx_profiles",
        "Customer profiles held in memory, by partition."
    );
    describe_gauge!(
        "cx_state_bytes",
        Unit::Bytes,
        "Approximate memory held by a shard's state."
    );
    describe_gauge!(
        "cx_kafka_broker_rtt_seconds",
        Unit::Seconds,
        "Average broker round-trip time (librdkafka statistics)."
    );
    describe_gauge!(
        "cx_kafka_client_queue_messages",
        "Messages waiting in librdkafka's queues, by client."
    );

    for def in &catalog.journeys {
        let name = def.name.to_string();
        counter!("cx_journeys_started_total", "journey" => name.clone()).absolute(0);
        gauge!("cx_journeys_active", "journey" => name.clone()).increment(0.0);
        for step in &def.steps {
            counter!("cx_journey_steps_reached_total", "journey" => name.clone(), "step" => step.to_string()).absolute(0);
        }
    }
    for reason in crate::decode::RejectReason::ALL {
        counter!("cx_events_rejected_total", "reason" => reason.as_str()).absolute(0);
        counter!("cx_dead_letters_total", "reason" => reason.as_str()).absolute(0);
    }
    counter!("cx_events_rejected_total", "reason" => "unlinkable").absolute(0);
    counter!("cx_dead_letters_total", "reason" => "unlinkable").absolute(0);
    counter!("cx_dead_letters_total", "reason" => "late").absolute(0);
    for c in [
        "cx_events_late_total",
        "cx_events_duplicate_total",
        "cx_identity_links_total",
        "cx_identity_merges_total",
        "cx_profiles_evicted_total",
    ] {
        counter!(c).absolute(0);
    }
    for g in ["never_link", "identifier_cap", "customer_conflict"] {
        counter!("cx_identity_guardrail_total", "guardrail" => g).absolute(0);
    }
    for t in output_topics {
        counter!("cx_produce_errors_total", "topic" => t.to_string()).absolute(0);
    }
    for r in ["ok", "error"] {
        counter!("cx_commits_total", "result" => r).absolute(0);
    }
    for r in ["commit", "abort"] {
        counter!("cx_transactions_total", "result" => r).absolute(0);
    }
    for c in [
        "cx_changelog_records_total",
        "cx_changelog_bytes_total",
        "cx_restore_records_total",
    ] {
        counter!(c).absolute(0);
    }
    for k in ["assign", "revoke"] {
        counter!("cx_rebalances_total", "kind" => k).absolute(0);
    }
    gauge!("cx_shards").increment(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_counted_by_series_number_render_as_counted_by_label_strings() {
        // Simulated traffic, drained so that every journey ends: alerts of every type,
        // summaries with step timings and survey answers.
        let config = crate::config::Config::example();
        let mut engine = Engine::from_config(&config);
        let mut outs = Vec::new();
        for e in crate::sim::Simulator::new(crate::sim::warmed_config(300)).take(20_000) {
            engine.ingest(e, &mut outs);
        }
        engine.drain(&mut outs);
        let summaries = outs.iter().filter(|o| matches!(o, Output::Journey(_)));
        assert!(
            summaries.count() > 100 && outs.len() > 500,
            "{}",
            outs.len()
        );
        let segments = ["consumer".to_string()];
        let render = |catalog: &Catalog| {
            let recorder = recorder();
            let handle = recorder.handle();
            let ids = metrics::with_local_recorder(&recorder, || {
                let mut m = ShardMetrics::new("events", 0, Labels::new(&segments, catalog));
                m.outputs(&outs);
                m.outputs(&outs[..outs.len() / 2]);
                (
                    m.handles.counters_by_id.len(),
                    m.handles.histograms_by_id.len(),
                )
            });
            // The exposition lists series in the registry's (hash) order: compare them sorted.
            let mut lines: Vec<String> = handle.render().lines().map(String::from).collect();
            lines.sort();
            (lines, ids)
        };
        let (by_number, numbered) = render(&engine.rules().catalog);
        // No journey known: every series of a journey is found by its label strings (only
        // alerts by type and severity, and friction outside journeys, are still numbered).
        let (by_strings, fewer) = render(&Catalog::default());
        assert!(
            numbered.0 > 20 && numbered.1 > 20,
            "{numbered:?} series found by number"
        );
        assert!(fewer.0 < numbered.0 / 2 && fewer.1 == 0, "{fewer:?}");
        let has = |prefix: &str| by_number.iter().any(|l| l.starts_with(prefix));
        assert!(has(
            "cx_journey_step_duration_seconds_bucket{journey=\"online_checkout\""
        ));
        assert!(has("cx_friction_detections_total{journey=\"none\""));
        assert!(has("cx_survey_score_count{journey=\"support\""));
        let differ = by_number.iter().zip(&by_strings).find(|(a, b)| a != b);
        assert_eq!(differ, None);
        assert_eq!(by_number.len(), by_strings.len());
    }

    #[test]
    fn series_numbers_keep_each_label_in_its_place() {
        let id = |m, v: [u64; 3]| series_id(m, v.map(Some));
        assert_ne!(
            id(Metric::Friction, [1, 2, 3]),
            id(Metric::Friction, [1, 3, 2])
        );
        assert_ne!(
            id(Metric::Friction, [1, 2, 3]),
            id(Metric::Ended, [1, 2, 3])
        );
        assert_ne!(
            id(Metric::Friction, [0, 0, 1]),
            id(Metric::Friction, [0, 1, 0])
        );
        // A value too large for its bits, or a name not in the config: found by strings.
        assert_eq!(id(Metric::Friction, [1, 4096, 3]), None);
        assert_eq!(series_id(Metric::Friction, [Some(1), None]), None);
        assert!(id(Metric::Friction, [4095, 4095, 4095]).is_some());
    }

    #[test]
    fn a_series_is_registered_once_and_found_by_borrowed_labels() {
        let mut memo: HashMap<SeriesKey, u32> = HashMap::new();
        let mut registered = Vec::new();
        let mut look = |memo: &mut HashMap<SeriesKey, u32>, journey: &str, step: &str| {
            let labels = [("journey", journey), ("step", step)];
            *memoised(memo, "cx_test", labels, |_, l| {
                registered.push(l);
                registered.len() as u32
            })
        };
        assert_eq!(look(&mut memo, "checkout", "cart.view"), 1);
        // Built from other strings with the same contents: found, not registered again.
        let (journey, step) = (String::from("checkout"), String::from("cart.view"));
        assert_eq!(look(&mut memo, &journey, &step), 1);
        assert_eq!(look(&mut memo, "checkout", "checkout.start"), 2);
        // Label values that shift between positions are another series.
        assert_eq!(look(&mut memo, "checkoutcart.view", ""), 3);
        assert_eq!(look(&mut memo, "checkout", "cart.view"), 1);
        assert_eq!(memo.len(), 3);
        assert_eq!(registered.len(), 3);
        assert_eq!(
            registered[0],
            vec![
                Label::new("journey", "checkout"),
                Label::new("step", "cart.view")
            ]
        );
    }
}
