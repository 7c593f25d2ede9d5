//! Durable engine state: what changed since the last checkpoint, as changelog records, and an
//! engine rebuilt from those records. Pure: the service writes the records to a compacted
//! topic and reads them back; tests and the restore benchmark feed them in memory.
//!
//! A checkpoint is incremental. It holds a record per profile slot that changed (its state, or
//! a tombstone when the slot was freed), one batch of the event ids applied since the previous
//! checkpoint (the duplicate filter), tombstones for batches the dedup window has passed, and
//! last the shard's meta record (watermark, slot count, input offset). A restore applies the
//! records of complete checkpoints only: whatever follows the last meta record of a partition
//! is a checkpoint that never finished, and is ignored (and overwritten by the next one).
//!
//! A checkpoint can be written a little at a time while events go on being applied
//! ([`Engine::begin_checkpoint`], [`Engine::checkpoint_step`]): it notes which profiles
//! changed and writes them in steps, and a profile about to change before its turn is written
//! first, as it was (copy on write). Every change goes through `Engine::touch` *before* it is
//! made, which is what makes this work; the records are then the state at the instant the
//! checkpoint began, as if written at once.
//!
//! What is *not* stored, because it can be rebuilt: the identity index (from each profile's
//! keys), the timers (from each open instance: drop-off at last activity + `abandon_after`,
//! slow step at first entry + SLA, for those not yet due), interned labels, and the reorder
//! buffer: its events are read again from the input, from the meta record's `input_offset`
//! (the oldest event not yet applied). Events after it that *were* applied are in the
//! restored duplicate filter, which holds applied events only, so they are not applied twice.

use hashbrown::HashMap;
use prost::Message;

use super::{Engine, Rules, Timer, DROP_OFF};
use crate::alert::{AlertType, JourneyOutcome};
use crate::event::{Millis, Survey, SurveyKind};
use crate::id::StoredId;
use crate::journey::{Instance, InstanceExtra, Recent, StepState};
use crate::profile::{Closed, History, OpenList, Profile, ProfileExtra};
use crate::proto::state as pb;

/// Most event ids in one dedup batch record (~18 bytes each encoded: ~360 KB).
const DEDUP_BATCH: usize = 20_000;

/// What identifies a changelog record within one input partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateKey {
    Profile(u32),
    Dedup(u64),
    Meta,
}

impl StateKey {
    /// The record key: `<topic>/p<slot>`, `<topic>/d<seq>` or `<topic>/m`. The topic prefix
    /// keeps shards of different input topics apart in a shared changelog partition.
    pub fn encode(self, topic: &str) -> Vec<u8> {
        match self {
            StateKey::Profile(s) => format!("{topic}/p{s}"),
            StateKey::Dedup(n) => format!("{topic}/d{n}"),
            StateKey::Meta => format!("{topic}/m"),
        }
        .into_bytes()
    }

    /// Parses a record key of `topic`; `None` for another topic's records or a foreign key.
    pub fn parse(topic: &str, key: &[u8]) -> Option<StateKey> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(topic)?;
        let rest = rest.strip_prefix('/')?;
        match rest.split_at_checked(1)? {
            ("m", "") => Some(StateKey::Meta),
            ("p", n) => n.parse().ok().map(StateKey::Profile),
            ("d", n) => n.parse().ok().map(StateKey::Dedup),
            _ => None,
        }
    }
}

/// One changelog record: a key and its new value (`None`: tombstone).
#[derive(Debug, Clone, PartialEq)]
pub struct StateRecord {
    pub key: StateKey,
    pub value: Option<Vec<u8>>,
}

/// Where the input stands at a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputPosition {
    /// Next input offset to read after a restore: the oldest event not yet applied.
    pub resume_at: i64,
    /// Offsets below this were read already: a replay does not dead-letter them again.
    pub replay_until: i64,
    /// Wall clock (ms) when the newest message arrived, as the service saw it (the engine
    /// only stores it).
    pub arrived_at: Millis,
    /// Which incarnation of the shard wrote the checkpoint (the service's random id).
    pub writer: u64,
}

/// Change tracking, switched on by [`Engine::track_changes`].
#[derive(Debug, Default)]
pub(super) struct Changes {
    dirty: Vec<u32>,
    /// Per slot: [`DIRTY`] (listed in `dirty`) and [`PENDING`] (still to be written by the
    /// checkpoint under way).
    marks: Vec<u8>,
    /// (event time, id hash) of events applied since the last checkpoint.
    applied: Vec<(Millis, u64)>,
    /// Live dedup batches: (sequence number, latest event time in it).
    batches: std::collections::VecDeque<(u64, Millis)>,
    next_batch: u64,
    /// Checkpoints begun (restored from the meta record).
    commits: u64,
    /// Records overwriting what an unfinished checkpoint found at restore wrote.
    stale: Vec<StateRecord>,
    /// The checkpoint under way: the slots it may still have to write, and its meta record.
    pending: Vec<u32>,
    meta: Option<StateRecord>,
    /// Records of the checkpoint under way written ahead of their turn: a pending profile's
    /// state just before it first changed (copy on write).
    early: Vec<StateRecord>,
    /// Where a profile record is encoded before it is copied out at its exact size.
    scratch: Vec<u8>,
}

/// Changed since the last checkpoint began.
const DIRTY: u8 = 1;
/// Changed before the checkpoint under way began, and not written by it yet.
const PENDING: u8 = 2;

impl Changes {
    /// Marks `slot` as changed; true if the checkpoint under way has yet to write its state
    /// (the caller writes it now, before changing it, and this clears the mark).
    pub(super) fn touch(&mut self, slot: u32) -> bool {
        let i = slot as usize;
        if i >= self.marks.len() {
            self.marks.resize(i + 1, 0);
        }
        let m = self.marks[i];
        if m & DIRTY == 0 {
            self.dirty.push(slot);
        }
        self.marks[i] = DIRTY;
        m & PENDING != 0
    }

    pub(super) fn applied(&mut self, t: Millis, id: u64) {
        self.applied.push((t, id));
    }

    /// Writes the state of `slot` now, ahead of its turn in the checkpoint under way.
    pub(super) fn write_early(
        &mut self,
        profiles: &[Option<Profile>],
        slot: u32,
        rules: &Rules,
        symbols: &crate::identity::Symbols,
    ) {
        let record = profile_record(profiles, slot, rules, symbols, &mut self.scratch);
        self.early.push(record);
    }
}

/// The changelog record of the profile in `slot` as it is now (a tombstone for a free slot).
pub(super) fn profile_record(
    profiles: &[Option<Profile>],
    slot: u32,
    rules: &Rules,
    symbols: &crate::identity::Symbols,
    scratch: &mut Vec<u8>,
) -> StateRecord {
    let value = profiles
        .get(slot as usize)
        .and_then(|p| p.as_ref())
        .map(|p| {
            scratch.clear();
            wire::profile(scratch, p, rules, symbols);
            scratch.as_slice().to_vec()
        });
    StateRecord {
        key: StateKey::Profile(slot),
        value,
    }
}

/// What a restore found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub records: u64,
    pub bytes: u64,
    pub profiles: u64,
    pub open_journeys: u64,
    /// Instances of journeys no longer configured (or whose steps changed): dropped.
    pub dropped_journeys: u64,
    /// Records of an unfinished checkpoint, ignored.
    pub ignored: u64,
    /// Where to read the input from; `None` when there was no state.
    pub position: Option<InputPosition>,
}

/// A restore in progress: feed it a partition's records in log order, then [`Restore::finish`].
#[derive(Default)]
pub struct Restore {
    profiles: HashMap<u32, Option<Vec<u8>>>,
    batches: HashMap<u64, Option<Vec<u8>>>,
    meta: Option<pb::ShardMeta>,
    /// Records since the last meta record: applied when the next meta arrives.
    staged: Vec<(StateKey, Option<Vec<u8>>)>,
    report: RestoreReport,
}

/// A changelog record that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("changelog record {key:?} is not valid shard state: {source}")]
pub struct StateError {
    key: StateKey,
    source: prost::DecodeError,
}

impl Restore {
    pub fn new() -> Restore {
        Restore::default()
    }

    /// Builds an engine from records already in memory (a log, in order).
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = &'a StateRecord>,
        rules: Rules,
    ) -> Result<(Engine, RestoreReport), StateError> {
        let mut r = Restore::new();
        for rec in records {
            r.feed(rec.key, rec.value.clone())?;
        }
        r.finish(rules)
    }

    /// One record, in log order. A meta record completes the checkpoint it ends.
    pub fn feed(&mut self, key: StateKey, value: Option<Vec<u8>>) -> Result<(), StateError> {
        self.report.records += 1;
        self.report.bytes += value.as_ref().map_or(0, |v| v.len() as u64);
        if key != StateKey::Meta {
            self.staged.push((key, value));
            return Ok(());
        }
        let bytes = value.unwrap_or_default();
        let meta =
            pb::ShardMeta::decode(bytes.as_slice()).map_err(|source| StateError { key, source })?;
        for (k, v) in self.staged.drain(..) {
            match k {
                StateKey::Profile(s) => {
                    self.profiles.insert(s, v);
                }
                StateKey::Dedup(n) => {
                    self.batches.insert(n, v);
                }
                StateKey::Meta => {}
            }
        }
        self.meta = Some(meta);
        Ok(())
    }

    /// Builds the engine. It tracks changes from here on; keys of an unfinished checkpoint are
    /// rewritten by its first checkpoint.
    pub fn finish(self, rules: Rules) -> Result<(Engine, RestoreReport), StateError> {
        let mut report = self.report;
        report.ignored = self.staged.len() as u64;
        let mut engine = Engine::new(rules);
        engine.track_changes();
        let Some(meta) = self.meta else {
            // No finished checkpoint: start empty, but clear what an unfinished one wrote.
            let c = engine.changes.as_mut().expect("tracking");
            c.stale = self
                .staged
                .iter()
                .map(|(key, _)| StateRecord {
                    key: *key,
                    value: None,
                })
                .collect();
            return Ok((engine, report));
        };
        report.position = Some(InputPosition {
            resume_at: meta.input_offset,
            replay_until: meta.replay_until,
            arrived_at: meta.arrived_at,
            writer: meta.writer,
        });
        engine.watermark = meta.watermark;
        engine.max_seen = meta.max_seen;
        engine.next_sweep = meta.next_sweep;
        engine.sweep_slot = meta.sweep_slot.checked_sub(1);
        let catalog = engine.rules.catalog.clone();
        let journeys: HashMap<&str, u16> = catalog
            .journeys
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.as_str(), i as u16))
            .collect();
        let slots = meta.slots as usize;
        // The room a shard that grew to this size had: not copied into a larger block on the
        // first new profile after the restore.
        let mut profiles: Vec<Option<Profile>> = Vec::new();
        super::reserve_slots(&mut profiles, slots, engine.rules.max_profiles);
        profiles.resize_with(slots, || None);
        for (slot, value) in self.profiles {
            let (Some(bytes), Some(place)) = (value, profiles.get_mut(slot as usize)) else {
                continue;
            };
            let key = StateKey::Profile(slot);
            let state = pb::ProfileState::decode(bytes.as_slice())
                .map_err(|source| StateError { key, source })?;
            let (p, dropped) = profile_from(state, &journeys, &engine.rules, &mut engine.symbols);
            report.dropped_journeys += dropped;
            *place = Some(p);
        }
        let mut dedup: Vec<(u64, pb::DedupBatch)> = Vec::new();
        for (seq, value) in self.batches {
            if let Some(bytes) = value {
                let key = StateKey::Dedup(seq);
                let b = pb::DedupBatch::decode(bytes.as_slice())
                    .map_err(|source| StateError { key, source })?;
                dedup.push((seq, b));
            }
        }
        dedup.sort_by_key(|(seq, _)| *seq);
        let c = engine.changes.as_mut().expect("tracking");
        c.next_batch = meta.dedup_seq;
        c.commits = meta.commit_seq;
        for (seq, b) in &dedup {
            for (t, id) in b.times.iter().zip(&b.ids) {
                engine.dedup.insert(*t, *id);
            }
            c.batches.push_back((*seq, b.max_time));
        }
        engine.dedup.expire(engine.watermark);
        for (k, _) in &self.staged {
            match *k {
                StateKey::Profile(s) if (s as usize) < slots => {
                    c.touch(s);
                }
                // A live batch the unfinished checkpoint overwrote: written again as restored.
                StateKey::Dedup(n) => {
                    let value = dedup
                        .iter()
                        .find(|(seq, _)| *seq == n)
                        .map(|(_, b)| b.encode_to_vec());
                    c.stale.push(StateRecord { key: *k, value });
                }
                key => c.stale.push(StateRecord { key, value: None }),
            }
        }
        for (slot, p) in profiles.iter().enumerate() {
            match p {
                None => engine.free.push(slot as u32),
                Some(p) => {
                    report.profiles += 1;
                    report.open_journeys += p.open.len() as u64;
                    for &k in &p.keys {
                        engine.index.set(k, slot as u32);
                    }
                }
            }
        }
        // Lowest free slot first.
        engine.free.reverse();
        engine.profiles = profiles;
        for slot in 0..engine.profiles.len() {
            engine.arm_restored(slot as u32);
        }
        Ok((engine, report))
    }
}

impl Engine {
    /// Starts recording what changes, for [`Engine::checkpoint`].
    pub fn track_changes(&mut self) {
        if self.changes.is_none() {
            let mut c = Changes::default();
            // Everything held so far is new to the changelog.
            for (slot, p) in self.profiles.iter().enumerate() {
                if p.is_some() {
                    c.touch(slot as u32);
                }
            }
            self.changes = Some(c);
        }
    }

    /// The number the next checkpoint will have (1 for the first).
    pub fn next_commit(&self) -> u64 {
        self.changes.as_ref().map_or(0, |c| c.commits) + 1
    }

    /// Profile slots changed since the last checkpoint began.
    pub fn changed_profiles(&self) -> usize {
        self.changes.as_ref().map_or(0, |c| c.dirty.len())
    }

    /// The records that bring the changelog up to date with this engine, meta record last.
    /// Call with the input position the state reflects. Starts tracking if it was off.
    /// (All at once: [`Engine::begin_checkpoint`] spreads the work out.)
    pub fn checkpoint(&mut self, position: InputPosition) -> Vec<StateRecord> {
        let mut out = self.begin_checkpoint(position);
        self.checkpoint_step(usize::MAX, &mut out);
        out
    }

    /// Begins a checkpoint of the state as it is now, to be written a little at a time by
    /// [`Engine::checkpoint_step`] while events go on being applied. Returns the records that
    /// are ready at once (the dedup window's, and those overwriting what an unfinished
    /// checkpoint found at restore wrote). Call with the input position the state
    /// reflects. A checkpoint still under way is finished first (its records come first).
    ///
    /// Profiles are written lazily: one that changes before its turn is written just before
    /// it changes (copy on write), so every record is the state at this moment and the
    /// checkpoint is as consistent as one written all at once.
    pub fn begin_checkpoint(&mut self, position: InputPosition) -> Vec<StateRecord> {
        self.track_changes();
        let mut out = Vec::new();
        self.checkpoint_step(usize::MAX, &mut out);
        let mut c = self.changes.take().expect("tracking");
        out.append(&mut c.stale);
        for &slot in &c.dirty {
            c.marks[slot as usize] = PENDING;
        }
        std::mem::swap(&mut c.pending, &mut c.dirty);
        // `checkpoint_step` pops: written in the order they changed.
        c.pending.reverse();
        // Batches of at most DEDUP_BATCH ids: a record stays far below Kafka's default 1 MB
        // message limit however many events a commit interval holds.
        for chunk in c.applied.chunks(DEDUP_BATCH) {
            let batch = pb::DedupBatch {
                max_time: chunk.iter().map(|a| a.0).max().unwrap_or(Millis::MIN),
                times: chunk.iter().map(|a| a.0).collect(),
                ids: chunk.iter().map(|a| a.1).collect(),
            };
            let seq = c.next_batch;
            c.next_batch += 1;
            c.batches.push_back((seq, batch.max_time));
            out.push(StateRecord {
                key: StateKey::Dedup(seq),
                value: Some(batch.encode_to_vec()),
            });
        }
        c.applied.clear();
        // A batch is dropped once every id in it is past the window (the filter forgot them).
        let horizon = self.watermark.saturating_sub(self.rules.dedup_window);
        while let Some(&(seq, max_time)) = c.batches.front() {
            if max_time >= horizon {
                break;
            }
            c.batches.pop_front();
            out.push(StateRecord {
                key: StateKey::Dedup(seq),
                value: None,
            });
        }
        let meta = pb::ShardMeta {
            watermark: self.watermark,
            max_seen: self.max_seen,
            next_sweep: self.next_sweep,
            sweep_slot: self.sweep_slot.map_or(0, |s| s + 1),
            slots: self.profiles.len() as u32,
            input_offset: position.resume_at,
            replay_until: position.replay_until,
            dedup_seq: c.next_batch,
            arrived_at: position.arrived_at,
            commit_seq: c.commits + 1,
            writer: position.writer,
        };
        c.commits += 1;
        c.meta = Some(StateRecord {
            key: StateKey::Meta,
            value: Some(meta.encode_to_vec()),
        });
        self.changes = Some(c);
        out
    }

    /// Profiles the checkpoint under way has still to write at most (some of them may have
    /// been written early, when they changed).
    pub fn checkpoint_remaining(&self) -> usize {
        self.changes.as_ref().map_or(0, |c| c.pending.len())
    }

    /// Whether a checkpoint begun by [`Engine::begin_checkpoint`] has records still to write.
    pub fn checkpoint_under_way(&self) -> bool {
        self.changes.as_ref().is_some_and(|c| c.meta.is_some())
    }

    /// Appends to `out` the profiles of the checkpoint under way that changed since the last
    /// step (written as they were before), then up to `max` more of its profiles, and, once
    /// every one is written, its meta record. Returns true when the checkpoint is finished (or
    /// none was under way).
    pub fn checkpoint_step(&mut self, max: usize, out: &mut Vec<StateRecord>) -> bool {
        let Some(c) = &mut self.changes else {
            return true;
        };
        out.append(&mut c.early);
        let Some(meta) = c.meta.take() else {
            return true;
        };
        let mut written = 0;
        while written < max {
            let Some(slot) = c.pending.pop() else {
                break;
            };
            let mark = &mut c.marks[slot as usize];
            if *mark & PENDING == 0 {
                continue; // written early, when it changed
            }
            *mark &= !PENDING;
            out.push(profile_record(
                &self.profiles,
                slot,
                &self.rules,
                &self.symbols,
                &mut c.scratch,
            ));
            written += 1;
        }
        if c.pending.is_empty() {
            out.push(meta);
            true
        } else {
            c.meta = Some(meta);
            false
        }
    }

    /// Schedules the timers of a restored profile's open instances that are not yet due.
    fn arm_restored(&mut self, slot: u32) {
        let Some(p) = self.profiles[slot as usize].as_ref() else {
            return;
        };
        for inst in &p.open {
            let def = &self.rules.catalog.journeys[usize::from(inst.journey)];
            self.timers.push(Timer {
                due: inst.last + def.abandon_after,
                instance: inst.id,
                kind: DROP_OFF,
                slot,
            });
            if !self.rules.friction.slow_step || inst.has_fired(AlertType::SlowStep) {
                continue;
            }
            for (s, sla) in def.sla.iter().enumerate() {
                if let (Some(sla), Some(first)) = (sla, inst.first_entry(s as u8)) {
                    // Timers due before the watermark have fired already.
                    if first + sla >= self.watermark && inst.furthest <= s as u8 {
                        self.timers.push(Timer {
                            due: first + sla,
                            instance: inst.id,
                            kind: s as u8 + 1,
                            slot,
                        });
                    }
                }
            }
        }
    }
}

/// A profile from its record, and how many of its instances belong to no configured journey.
fn profile_from(
    s: pb::ProfileState,
    journeys: &HashMap<&str, u16>,
    rules: &Rules,
    symbols: &mut crate::identity::Symbols,
) -> (Profile, u64) {
    let mut dropped = 0;
    let mut label = |v: &str| {
        if v.is_empty() {
            0
        } else {
            symbols.intern(v).unwrap_or(0)
        }
    };
    let mut open = Vec::with_capacity(s.open.len());
    for i in s.open {
        match instance_from(i, journeys, rules) {
            Some(i) => open.push(i),
            None => dropped += 1,
        }
    }
    let mut p = Profile {
        id: StoredId::new(&s.id),
        has_customer: s.has_customer,
        segment: label(&s.segment),
        tier: label(&s.tier),
        last_seen: s.last_seen,
        keys: s.keys.into(),
        open: OpenList::from(open),
        extra: None,
    };
    let has_history = !(s.contacts.is_empty()
        && s.clicks.is_empty()
        && s.loose_errors.is_empty()
        && s.cooldowns.is_empty());
    if has_history || !s.closed.is_empty() {
        let e = ProfileExtra {
            closed: s
                .closed
                .into_iter()
                .filter_map(|c| {
                    let inst = instance_from(c.inst?, journeys, rules)?;
                    Some(Closed {
                        inst,
                        outcome: *JourneyOutcome::ALL.get(c.outcome as usize)?,
                        ended: c.ended,
                        revision: c.revision,
                    })
                })
                .collect(),
            history: has_history.then(|| {
                Box::new(History {
                    contacts: s
                        .contacts
                        .into_iter()
                        .map(|c| (c.time, c.event_id.into()))
                        .collect(),
                    clicks: s
                        .clicks
                        .into_iter()
                        .map(|c| (c.key, c.time, c.event_id.into()))
                        .collect(),
                    loose_errors: s
                        .loose_errors
                        .into_iter()
                        .map(|c| (c.key, c.time, c.event_id.into()))
                        .collect(),
                    cooldowns: s.cooldowns.into_iter().map(|c| (c.key, c.time)).collect(),
                })
            }),
        };
        p.extra = Some(Box::new(e));
    }
    (p, dropped)
}

fn instance_from(
    s: pb::InstanceState,
    journeys: &HashMap<&str, u16>,
    rules: &Rules,
) -> Option<Instance> {
    let journey = *journeys.get(s.journey.as_str())?;
    let def = &rules.catalog.journeys[usize::from(journey)];
    if s.step_first.len() != def.steps.len() || s.step_entries.len() != def.steps.len() {
        return None;
    }
    let steps: crate::journey::Steps = s
        .step_first
        .iter()
        .zip(&s.step_entries)
        .map(|(&first, &entries)| StepState { first, entries })
        .collect();
    let mut recent = Recent::default();
    for (step, id) in s.recent_steps.iter().zip(s.recent_ids) {
        recent.push(*step, StoredId::new(&id));
    }
    let extra = (!(s.errors.is_empty() && s.surveys.is_empty())).then(|| {
        Box::new(InstanceExtra {
            errors: s
                .errors
                .into_iter()
                .map(|e| (e.time, e.event_id.into()))
                .collect(),
            surveys: s
                .surveys
                .into_iter()
                .filter_map(|v| {
                    let kind = *SurveyKind::ALL.get(v.kind as usize)?;
                    Some((
                        Survey {
                            kind,
                            score: v.score,
                        },
                        v.event_id.into(),
                    ))
                })
                .collect(),
        })
    });
    Some(Instance {
        id: s.id,
        journey,
        current: u8::try_from(s.current).unwrap_or(u8::MAX),
        furthest: u8::try_from(s.furthest).unwrap_or(0),
        channels: crate::event::ChannelSet(s.channels as u16),
        fired: s.fired as u8,
        started: s.started,
        last: s.last,
        steps,
        recent,
        value: s.value.unwrap_or(f64::NAN),
        extra,
    })
}

mod wire;

#[cfg(test)]
mod tests;
