//! The journey engine: a pure, synchronous state machine over events and event time.
//!
//! Feed it events with [`Engine::ingest`] and time with [`Engine::advance_to`]; it appends
//! alerts and journey summaries to the output vector it is given. It reads no clock and does
//! no I/O, so the Kafka service, replay and benchmarks all run exactly this code.
//!
//! ## Time and order
//! The watermark is the highest event time seen minus `allowed_lateness`. Accepted events wait
//! in a reorder buffer and are applied in (event time, event id) order once the watermark has
//! passed them; timers (drop-off, slow step) fire in the same order, a timer before an event
//! of the same time. So events that arrive out of order by at most `allowed_lateness` give
//! exactly the same outputs as the same events in order. Events older than the watermark are
//! late: counted, not applied.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::alert::{AlertType, JourneyOutcome, Output, Scorer};
use crate::config::Config;
use crate::dedup::Dedup;
use crate::event::{millis, Event, Millis};
use crate::friction::{build_alert, FrictionRules, Subject};
use crate::id::StoredId;
use crate::identity::{IdentityIndex, IdentityRules, Key, KeyKind, Symbols};
use crate::journey::{Activity, Catalog};
use crate::profile::Profile;

/// How often (in event time) a sweep for idle profiles starts.
const SWEEP_EVERY: Millis = 3_600_000;
/// Profile slots the sweep looks at per applied item (see [`Engine::maybe_sweep`]).
const SWEEP_STEP: usize = 32;
/// Profiles compared per eviction at `max_profiles` (see [`Engine::evict`]).
const EVICTION_SAMPLE: usize = 64;

/// Everything the engine needs from configuration, compiled once.
#[derive(Debug, Clone)]
pub struct Rules {
    pub catalog: Catalog,
    pub identity: IdentityRules,
    pub friction: FrictionRules,
    pub scorer: Scorer,
    pub allowed_lateness: Millis,
    pub dedup_window: Millis,
    pub profile_ttl: Millis,
    pub survey_attribution: Millis,
    pub max_profiles: usize,
}

impl Rules {
    /// Compiles a validated configuration.
    pub fn new(c: &Config) -> Rules {
        Rules {
            catalog: Catalog::new(&c.journeys),
            identity: IdentityRules::new(&c.identity.never_link, c.identity.max_identifiers),
            friction: FrictionRules::new(&c.friction),
            scorer: Scorer::new(&c.scoring),
            allowed_lateness: millis(c.engine.allowed_lateness),
            dedup_window: millis(c.engine.dedup_window),
            profile_ttl: millis(c.engine.profile_ttl),
            survey_attribution: millis(c.engine.survey_attribution),
            max_profiles: c.engine.max_profiles,
        }
    }
}

/// What happened to an ingested event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// Buffered; it is applied once the watermark passes it, unless its event id was seen
    /// within the dedup window by then (counted in [`EngineStats::duplicates`] then).
    Accepted,
    /// Older than the watermark: not applied.
    Late,
    /// Every identifier it carries is on the never-link list: it cannot be attributed.
    Unlinkable,
}

/// Counters of what the engine saw and did. Plain numbers: telemetry reads them at the edge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub accepted: u64,
    pub late: u64,
    pub duplicates: u64,
    pub unlinkable: u64,
    pub unknown_channel: u64,
    pub unknown_action: u64,
    pub profiles_created: u64,
    pub profiles_expired: u64,
    /// Profiles evicted because the shard held `max_profiles`.
    pub profiles_evicted: u64,
    pub identity_links: u64,
    pub identity_merges: u64,
    pub guardrail_never_link: u64,
    pub guardrail_identifier_cap: u64,
    pub guardrail_customer_conflict: u64,
    pub symbol_overflow: u64,
    pub journeys_started: u64,
    /// By [`AlertType`] index.
    pub alerts: [u64; 8],
    /// By [`JourneyOutcome`] index (completed, abandoned, expired).
    pub journeys_closed: [u64; 3],
    /// Per journey (catalog order): instances opened.
    pub started_by_journey: Vec<u64>,
    /// Per journey: instances that disappeared into another instance when profiles merged.
    pub merged_by_journey: Vec<u64>,
    /// Per journey: instances closed (completed, abandoned or expired).
    pub ended_by_journey: Vec<u64>,
    /// Per journey, per step: instances that entered the step for the first time (the funnel).
    pub steps_reached: Vec<Vec<u64>>,
}

impl EngineStats {
    fn for_catalog(c: &Catalog) -> EngineStats {
        EngineStats {
            started_by_journey: vec![0; c.journeys.len()],
            merged_by_journey: vec![0; c.journeys.len()],
            ended_by_journey: vec![0; c.journeys.len()],
            steps_reached: c.journeys.iter().map(|j| vec![0; j.steps.len()]).collect(),
            ..EngineStats::default()
        }
    }
}

/// Counts of what an engine's state holds (see [`Engine::census`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Census {
    pub profiles: usize,
    /// Room in the profile table (slots), used or not.
    pub profile_slots: usize,
    pub open: usize,
    pub closed: usize,
    /// Profiles with extra state (closed journeys or detector history), and those with history.
    pub extras: usize,
    pub histories: usize,
    /// Entries the histories have room for: contacts, clicks, errors outside journeys,
    /// cooldowns.
    pub history_room: [usize; 4],
    pub index_keys: usize,
    pub dedup_ids: usize,
    pub timers: usize,
    pub buffered: usize,
}

/// The engine's state for one shard of profiles.
pub struct Engine {
    rules: Rules,
    watermark: Millis,
    max_seen: Millis,
    /// Buffered events in application order (see [`Parked`]).
    pending: TimeQueue<Parked>,
    /// The buffered events themselves, in reusable slots (no allocation per event).
    parked: Vec<Option<Event>>,
    free_parked: Vec<u32>,
    timers: TimeQueue<Timer>,
    dedup: Dedup,
    profiles: Vec<Option<Profile>>,
    free: Vec<u32>,
    index: IdentityIndex,
    symbols: Symbols,
    next_sweep: Millis,
    /// The next slot of the idle-profile sweep under way, if one is.
    sweep_slot: Option<u32>,
    stats: EngineStats,
    /// Reused buffers (no allocation per event).
    keys: Vec<Key>,
    slots: Vec<u32>,
    touched: Vec<(usize, u8, Activity)>,
    /// What changed since the last checkpoint (see [`snapshot`]); `None` unless tracking.
    changes: Option<snapshot::Changes>,
}

impl Engine {
    pub fn new(rules: Rules) -> Engine {
        Engine {
            stats: EngineStats::for_catalog(&rules.catalog),
            dedup: Dedup::new(rules.dedup_window),
            rules,
            watermark: Millis::MIN,
            max_seen: Millis::MIN,
            pending: TimeQueue::new(),
            parked: Vec::new(),
            free_parked: Vec::new(),
            timers: TimeQueue::new(),
            profiles: Vec::new(),
            free: Vec::new(),
            index: IdentityIndex::default(),
            symbols: Symbols::default(),
            next_sweep: Millis::MIN,
            sweep_slot: None,
            keys: Vec::new(),
            slots: Vec::new(),
            touched: Vec::new(),
            changes: None,
        }
    }

    pub fn from_config(c: &Config) -> Engine {
        Engine::new(Rules::new(c))
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }
    pub fn rules(&self) -> &Rules {
        &self.rules
    }
    /// Events older than this are late. `Millis::MIN` before the first event.
    pub fn watermark(&self) -> Millis {
        self.watermark
    }
    /// Highest event time seen. `Millis::MIN` before the first event.
    pub fn max_event_time(&self) -> Millis {
        self.max_seen
    }
    pub fn profile_count(&self) -> usize {
        self.profiles.len() - self.free.len()
    }
    pub fn open_journeys(&self) -> usize {
        self.profiles.iter().flatten().map(|p| p.open.len()).sum()
    }
    /// Drop-off and slow-step checks scheduled.
    pub fn scheduled_timers(&self) -> usize {
        self.timers.len()
    }
    /// Events accepted but not yet applied (waiting for the watermark).
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// What the state is made of (counts; the memory benchmark prints them with the sizes).
    pub fn census(&self) -> Census {
        let mut c = Census {
            profile_slots: self.profiles.capacity(),
            index_keys: self.index.len(),
            dedup_ids: self.dedup.len(),
            timers: self.timers.len(),
            buffered: self.pending.len(),
            ..Census::default()
        };
        for p in self.profiles.iter().flatten() {
            c.profiles += 1;
            c.open += p.open.len();
            let Some(x) = &p.extra else { continue };
            c.extras += 1;
            c.closed += x.closed.len();
            if let Some(h) = &x.history {
                c.histories += 1;
                c.history_room[0] += h.contacts.capacity();
                c.history_room[1] += h.clicks.capacity();
                c.history_room[2] += h.loose_errors.capacity();
                c.history_room[3] += h.cooldowns.capacity();
            }
        }
        c
    }

    /// Offers one event. Outputs of everything the watermark has passed are appended to `out`.
    pub fn ingest(&mut self, event: Event, out: &mut Vec<Output>) -> Ingest {
        let t = event.occurred_at;
        if t < self.watermark {
            self.stats.late += 1;
            return Ingest::Late;
        }
        let Some(key) = self.rules.identity.first_key(&event) else {
            self.stats.unlinkable += 1;
            return Ingest::Unlinkable;
        };
        let id_hash = xxh3_64(event.event_id.as_bytes());
        let slot = self.park(event);
        self.pending.push(Parked {
            at: t,
            id: id_hash,
            slot,
            key,
        });
        if t > self.max_seen {
            self.max_seen = t;
            self.advance_to(t.saturating_sub(self.rules.allowed_lateness), out);
        }
        Ingest::Accepted
    }

    /// Parks an event until the watermark reaches it: returns its slot.
    fn park(&mut self, event: Event) -> u32 {
        match self.free_parked.pop() {
            Some(s) => {
                self.parked[s as usize] = Some(event);
                s
            }
            None => {
                self.parked.push(Some(event));
                (self.parked.len() - 1) as u32
            }
        }
    }

    /// Drops a parked event (applied or a duplicate) and frees its slot.
    fn unpark(&mut self, slot: u32) {
        self.parked[slot as usize] = None;
        self.free_parked.push(slot);
    }

    /// Moves the watermark to `w` (never backwards): buffered events older than `w` are
    /// applied and timers due before `w` fire, all in time order. The Kafka service calls this
    /// when a partition goes quiet; see also [`Engine::flush`] and [`Engine::drain`].
    pub fn advance_to(&mut self, w: Millis, out: &mut Vec<Output>) {
        if w <= self.watermark {
            return;
        }
        self.watermark = w;
        // Items of each queue already read ahead (see [`warm`]).
        let (mut events_ahead, mut timers_ahead) = (0, 0);
        loop {
            let next_event = self.pending.peek_time(w);
            let next_timer = self.timers.peek_time(w);
            match (next_event, next_timer) {
                (_, Some(d)) if next_event.is_none_or(|t| d <= t) => {
                    self.read_ahead_timers(&mut timers_ahead);
                    let Some(timer) = self.timers.take_peeked() else {
                        break;
                    };
                    self.maybe_sweep(d);
                    self.fire(timer, out);
                }
                (Some(t), _) => {
                    self.read_ahead_events(&mut events_ahead);
                    let Some(Parked { slot, id, key, .. }) = self.pending.take_peeked() else {
                        break;
                    };
                    if !self.dedup.insert(t, id) {
                        self.stats.duplicates += 1;
                        self.unpark(slot);
                        continue;
                    }
                    // The event is applied where it is parked (an event is a few hundred
                    // bytes: moving it out cost more than the slot table's loan).
                    let parked = std::mem::take(&mut self.parked);
                    let Some(event) = &parked[slot as usize] else {
                        self.parked = parked;
                        break;
                    };
                    self.stats.accepted += 1;
                    self.stats.unknown_channel += u64::from(event.unknown_channel);
                    self.stats.unknown_action += u64::from(event.unknown_action);
                    if let Some(c) = &mut self.changes {
                        c.applied(t, id);
                    }
                    self.maybe_sweep(t);
                    let current = self.apply(event, key, out);
                    self.parked = parked;
                    self.unpark(slot);
                    while self.profile_count() > self.rules.max_profiles
                        && self.evict(t, current, out)
                    {}
                }
                _ => break,
            }
        }
        self.dedup.expire(w);
    }

    /// End of input: applies every buffered event (the watermark moves just past the latest
    /// event time). Timers due by then fire; later ones stay pending.
    pub fn flush(&mut self, out: &mut Vec<Output>) {
        if self.max_seen != Millis::MIN {
            self.advance_to(self.max_seen.saturating_add(1), out);
        }
    }

    /// Closes everything: applies all buffered events and fires every timer, so every open
    /// journey ends (as a drop-off at its deadline).
    pub fn drain(&mut self, out: &mut Vec<Output>) {
        self.advance_to(Millis::MAX, out);
    }

    // ------------------------------------------------------------ identity

    fn new_profile(&mut self, p: Profile) -> u32 {
        self.stats.profiles_created += 1;
        match self.free.pop() {
            Some(s) => {
                self.touch(s);
                self.profiles[s as usize] = Some(p);
                s
            }
            None => {
                let s = push_slot(&mut self.profiles, Some(p), self.rules.max_profiles);
                self.touch(s);
                s
            }
        }
    }

    /// Notes that the profile in `slot` changes (or is removed). Call it *before* changing
    /// the slot: a checkpoint under way that has yet to write it writes it now, as it was.
    fn touch(&mut self, slot: u32) {
        if let Some(c) = &mut self.changes {
            if c.touch(slot) {
                c.write_early(&self.profiles, slot, &self.rules, &self.symbols);
            }
        }
    }

    fn profile(&self, slot: u32) -> &Profile {
        self.profiles[slot as usize].as_ref().expect("slot in use")
    }

    fn profile_mut(&mut self, slot: u32) -> &mut Profile {
        self.profiles[slot as usize].as_mut().expect("slot in use")
    }

    /// Finds (or creates) the event's profile, linking and merging as the event's identifiers say.
    /// `first`: the event's first key ([`IdentityRules::first_key`]).
    fn resolve(&mut self, e: &Event, first: u64, t: Millis) -> u32 {
        let mut keys = std::mem::take(&mut self.keys);
        let mut cands = std::mem::take(&mut self.slots);
        self.stats.guardrail_never_link +=
            u64::from(self.rules.identity.keys_after(e, first, &mut keys));
        // Fast path (almost every event): the first key's profile already holds all the
        // event's keys, so there is nothing to link or merge. One index probe instead of one
        // per key. (Keys are customer-first, so a customer key is always the one probed.)
        if let Some(s) = keys.first().and_then(|k| self.index.get(k.hash)) {
            let p = self.profile(s);
            if keys[1..].iter().all(|k| p.keys.contains(&k.hash)) {
                self.keys = keys;
                self.slots = cands;
                return s;
            }
        }
        cands.clear();
        let customer = keys
            .iter()
            .find(|k| k.kind == KeyKind::Customer)
            .map(|k| k.hash);
        for k in &keys {
            if let Some(s) = self.index.get(k.hash) {
                if !cands.contains(&s) {
                    cands.push(s);
                }
            }
        }
        let mut primary = customer.and_then(|h| self.index.get(h));
        if primary.is_none() {
            primary = if customer.is_some() {
                // A customer seen for the first time adopts the anonymous profile it logs in from.
                cands
                    .iter()
                    .copied()
                    .find(|&s| !self.profile(s).has_customer)
            } else {
                cands
                    .iter()
                    .copied()
                    .find(|&s| self.profile(s).has_customer)
                    .or(cands.first().copied())
            };
        }
        let primary = match primary {
            Some(s) => {
                self.touch(s); // before it changes below
                s
            }
            None => self.new_profile(Profile::new(
                IdentityRules::profile_id(e),
                customer.is_some(),
                t,
            )),
        };
        if let (Some(c), false) = (&e.customer_id, self.profile(primary).has_customer) {
            if customer.is_some() {
                let p = self.profile_mut(primary);
                p.id = StoredId::new(c);
                p.has_customer = true;
            }
        }
        let cap = self.rules.identity.max_identifiers;
        for &s in &cands {
            if s == primary {
                continue;
            }
            if self.profile(s).has_customer {
                // Two customer ids never merge (a shared device, a household tablet...).
                self.stats.guardrail_customer_conflict += 1;
            } else if self.profile(primary).keys.len() + self.profile(s).keys.len() > cap {
                self.stats.guardrail_identifier_cap += 1;
            } else {
                self.merge(s, primary, t);
            }
        }
        for k in &keys {
            if self.index.get(k.hash).is_none() {
                if self.profile(primary).keys.len() < cap {
                    self.index.set(k.hash, primary);
                    let keys = &mut self.profile_mut(primary).keys;
                    keys.reserve_exact(1); // most profiles hold 1-3 keys: no growth slack
                    keys.push(k.hash);
                    self.stats.identity_links += 1;
                } else {
                    self.stats.guardrail_identifier_cap += 1;
                }
            }
        }
        self.keys = keys;
        self.slots = cands;
        primary
    }

    fn merge(&mut self, from: u32, into: u32, t: Millis) {
        self.touch(from);
        self.touch(into);
        let Some(other) = self.profiles[from as usize].take() else {
            return;
        };
        self.free.push(from);
        self.stats.identity_merges += 1;
        for &k in &other.keys {
            self.index.set(k, into);
        }
        let survivors = &self.profiles[into as usize]
            .as_ref()
            .expect("slot in use")
            .open;
        for inst in &other.open {
            if survivors.iter().any(|i| i.journey == inst.journey) {
                self.stats.merged_by_journey[usize::from(inst.journey)] += 1;
            }
        }
        let moved = self.profile_mut(into).absorb(other);
        // Re-arm timers of instances that now live in `into` (the old ones find nothing).
        for id in moved {
            let p = self.profile(into);
            let Some(inst) = p.open.iter().find(|i| i.id == id) else {
                continue;
            };
            let def = &self.rules.catalog.journeys[usize::from(inst.journey)];
            let mut arm = vec![Timer {
                due: inst.last + def.abandon_after,
                instance: id,
                kind: DROP_OFF,
                slot: into,
            }];
            if self.rules.friction.slow_step && !inst.has_fired(AlertType::SlowStep) {
                for (s, sla) in def.sla.iter().enumerate() {
                    if let (Some(sla), Some(first)) = (sla, inst.first_entry(s as u8)) {
                        if first + sla > t {
                            arm.push(Timer {
                                due: first + sla,
                                instance: id,
                                kind: s as u8 + 1,
                                slot: into,
                            });
                        }
                    }
                }
            }
            for t in arm {
                self.timers.push(t);
            }
        }
    }

    // ------------------------------------------------------------ timers

    fn fire(&mut self, timer: Timer, out: &mut Vec<Output>) {
        self.touch(timer.slot);
        let Engine {
            rules,
            profiles,
            symbols,
            timers,
            stats,
            ..
        } = self;
        let Some(p) = profiles
            .get_mut(timer.slot as usize)
            .and_then(|p| p.as_mut())
        else {
            return; // the profile was merged away or expired: a stale timer
        };
        let Some(idx) = p.open.iter().position(|i| i.id == timer.instance) else {
            return; // the instance closed (or merged under another id)
        };
        let def = &rules.catalog.journeys[usize::from(p.open[idx].journey)];
        let (ty, step) = if timer.kind == DROP_OFF {
            let deadline = p.open[idx].last + def.abandon_after;
            if deadline > timer.due {
                timers.push(Timer {
                    due: deadline,
                    ..timer
                });
                return;
            }
            (AlertType::DropOff, p.open[idx].furthest)
        } else {
            // slow_step: the step's SLA ran out and no later step was reached.
            let step = timer.kind - 1;
            if p.open[idx].furthest > step {
                return;
            }
            (AlertType::SlowStep, step)
        };
        if p.open[idx].fire(ty) {
            let inst = &p.open[idx];
            let due = timer.due.to_string();
            let evidence = inst.evidence((ty == AlertType::SlowStep).then_some(step));
            let alert = build_alert(
                &rules.scorer,
                symbols,
                p,
                ty,
                Subject::timer(def, inst, step, &due),
                timer.due,
                evidence,
            );
            stats.alerts[ty as usize] += 1;
            out.push(Output::Alert(alert));
        }
        if ty == AlertType::DropOff {
            close(
                p,
                idx,
                def,
                symbols,
                stats,
                JourneyOutcome::Abandoned,
                timer.due,
                out,
            );
        }
    }

    // ------------------------------------------------------------ retention

    /// Makes room when the shard holds more than `max_profiles`: evicts one profile, closing
    /// its open journeys as `expired` at `now`. It is the longest idle (ties by slot) of
    /// [`EVICTION_SAMPLE`] profiles sampled at evenly spread slots from an offset hashed from
    /// `now` and the table's size, so the choice is deterministic; in a smaller table, of all
    /// of them. `current` (the profile of the event just applied) is never chosen. False if
    /// there was nothing else to evict.
    ///
    /// Sampling approximates "least recently seen" (the one chosen is among the longest-idle
    /// ~1.5% on average) at a bounded cost per eviction. The exact choice needed a pass over
    /// every profile: batched to once per 1% of the cap, that was a ~100 ms pause of the shard
    /// at a million profiles, every 10,000 new ones.
    fn evict(&mut self, now: Millis, current: u32, out: &mut Vec<Output>) -> bool {
        let len = self.profiles.len();
        let idle = |profiles: &[Option<Profile>], s: usize| {
            profiles[s]
                .as_ref()
                .filter(|_| s != current as usize)
                .map(|p| (p.last_seen, s as u32))
        };
        let sampled = if len <= EVICTION_SAMPLE {
            None
        } else {
            let offset = xxh3_64_with_seed(&now.to_le_bytes(), len as u64) as usize % len;
            let step = len / EVICTION_SAMPLE;
            (0..EVICTION_SAMPLE)
                .filter_map(|i| idle(&self.profiles, (offset + i * step) % len))
                .min()
        };
        // A small table, or a sample of free slots only (a sparse table): look at them all.
        let Some((_, slot)) =
            sampled.or_else(|| (0..len).filter_map(|s| idle(&self.profiles, s)).min())
        else {
            return false;
        };
        let mut p = self.forget(slot);
        for idx in (0..p.open.len()).rev() {
            let def = &self.rules.catalog.journeys[usize::from(p.open[idx].journey)];
            close(
                &mut p,
                idx,
                def,
                &self.symbols,
                &mut self.stats,
                JourneyOutcome::Expired,
                now,
                out,
            );
        }
        self.stats.profiles_evicted += 1;
        // Its timers find nothing when they fire (they check the instance id).
        true
    }

    /// Takes the profile out of `slot` (which must hold one), unlinks its identifiers and
    /// frees the slot.
    fn forget(&mut self, slot: u32) -> Profile {
        self.touch(slot);
        let p = self.profiles[slot as usize].take().expect("slot in use");
        for &k in &p.keys {
            self.index.remove_if(k, slot);
        }
        self.free.push(slot);
        p
    }

    /// Forgets profiles idle for `profile_ttl` with nothing open. Every hour of event time a
    /// sweep starts; it looks at [`SWEEP_STEP`] slots per applied item until it has seen them
    /// all, so it never holds the shard up (one pass over a million profiles took ~9 ms). It
    /// runs at item times (not at watermark moves), so it happens at the same points whatever
    /// the arrival order.
    fn maybe_sweep(&mut self, now: Millis) {
        if self.next_sweep == Millis::MIN {
            self.next_sweep = now.saturating_add(SWEEP_EVERY);
            return;
        }
        if now >= self.next_sweep {
            self.next_sweep = now.saturating_add(SWEEP_EVERY);
            // A sweep still under way (few items per hour) goes on where it is.
            self.sweep_slot.get_or_insert(0);
        }
        let Some(from) = self.sweep_slot else {
            return;
        };
        let cutoff = now.saturating_sub(self.rules.profile_ttl);
        let end = (from as usize + SWEEP_STEP).min(self.profiles.len());
        for slot in from as usize..end {
            let expired = matches!(&self.profiles[slot], Some(p) if p.open.is_empty() && p.last_seen < cutoff);
            if expired {
                self.forget(slot as u32);
                self.stats.profiles_expired += 1;
            }
        }
        self.sweep_slot = (end < self.profiles.len()).then_some(end as u32);
    }
}

/// Profile slots a shard grows by doubling; past them it reserves room for `max_profiles`
/// at once. Small: the doubling to 65,536 slots (3 MB copied, 6 MB faulted in) still held a
/// fresh shard up for ~5 ms (`examples/fresh_growth.rs`); the doubling to 4,096 copies
/// 200 KB.
const DOUBLING_SLOTS: usize = 1 << 12;

/// Makes room for `slots` profile slots and more. Up to [`DOUBLING_SLOTS`] it makes none (the
/// caller's pushes double the room); past them the room goes to `max_profiles + 1` (the most
/// a shard holds: a new profile takes its slot before the longest idle one is evicted to make
/// up for it) in one step, and never grows again. Each doubling copied every profile into a
/// new block and faulted that block's pages in, holding the shard up: 48 MB copied and 96 MB
/// faulted in when half a million profiles became a million. The room reserved is address
/// space only: a slot's memory is faulted in when a profile first takes it, as it was while
/// doubling. Small shards (tests, demos) never reserve it.
fn reserve_slots(profiles: &mut Vec<Option<Profile>>, slots: usize, max_profiles: usize) {
    // Should the system refuse that much address space (a huge `max_profiles`), the slots
    // go on doubling.
    let room = slot_room(slots, max_profiles);
    let _ = profiles.try_reserve_exact(room.saturating_sub(profiles.len()));
}

/// Appends a profile slot, making room as [`reserve_slots`] does when there is none: returns
/// the new slot.
fn push_slot(profiles: &mut Vec<Option<Profile>>, p: Option<Profile>, max_profiles: usize) -> u32 {
    if profiles.len() == profiles.capacity() {
        let len = profiles.len();
        reserve_slots(profiles, len, max_profiles);
    }
    profiles.push(p);
    (profiles.len() - 1) as u32
}

/// The room for `len` profile slots that [`reserve_slots`] makes: `len` itself while the
/// slots double (the caller's push then doubles them).
fn slot_room(len: usize, max_profiles: usize) -> usize {
    if len >= DOUBLING_SLOTS {
        len.max(max_profiles.saturating_add(1))
    } else {
        len
    }
}

#[allow(clippy::too_many_arguments)]
fn close(
    p: &mut Profile,
    idx: usize,
    def: &crate::journey::JourneyDef,
    symbols: &Symbols,
    stats: &mut EngineStats,
    outcome: JourneyOutcome,
    ended: Millis,
    out: &mut Vec<Output>,
) {
    let (seg, tier) = (symbols.name(p.segment), symbols.name(p.tier));
    out.push(Output::Journey(p.open[idx].summary(
        def,
        p.output_ids(),
        seg,
        tier,
        outcome,
        ended,
        1,
    )));
    stats.journeys_closed[outcome as usize] += 1;
    stats.ended_by_journey[usize::from(p.open[idx].journey)] += 1;
    p.close(idx, outcome, ended);
}

mod apply;
mod queue;
pub mod snapshot;
mod warm;

use queue::{Parked, TimeQueue, Timer, DROP_OFF};
#[cfg(test)]
mod tests;
