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

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use compact_str::CompactString;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::alert::{AlertType, JourneyOutcome, Output, Scorer};
use crate::config::Config;
use crate::dedup::Dedup;
use crate::event::{Action, Event, Millis};
use crate::friction::{self, build_alert, FrictionRules, Subject};
use crate::identity::{IdentityIndex, IdentityRules, Key, KeyKind, Symbols};
use crate::journey::{Activity, Catalog, Instance};
use crate::profile::Profile;

/// How often (in event time) idle profiles are swept out.
const SWEEP_EVERY: Millis = 3_600_000;

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
}

fn ms(d: std::time::Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX / 4)
}

impl Rules {
    /// Compiles a validated configuration.
    pub fn new(c: &Config) -> Rules {
        Rules {
            catalog: Catalog::new(&c.journeys),
            identity: IdentityRules {
                never_link: c
                    .identity
                    .never_link
                    .iter()
                    .map(|s| s.as_str().into())
                    .collect(),
                max_identifiers: c.identity.max_identifiers,
            },
            friction: FrictionRules::new(&c.friction),
            scorer: Scorer::new(&c.scoring),
            allowed_lateness: ms(c.engine.allowed_lateness),
            dedup_window: ms(c.engine.dedup_window),
            profile_ttl: ms(c.engine.profile_ttl),
            survey_attribution: ms(c.engine.survey_attribution),
        }
    }
}

/// What happened to an ingested event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// Buffered; it is applied once the watermark passes it.
    Accepted,
    /// Older than the watermark: not applied.
    Late,
    /// Its event id was seen within the dedup window: ignored.
    Duplicate,
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
}

/// A buffered event, ordered by (time, id hash, id).
#[derive(Debug)]
struct Pending {
    t: Millis,
    id_hash: u64,
    event: Box<Event>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.t, self.id_hash, &self.event.event_id).cmp(&(o.t, o.id_hash, &o.event.event_id))
    }
}

/// Timer kinds: drop-off, or slow step on step `kind - 1`.
const DROP_OFF: u8 = 0;

/// A scheduled check on one instance. At most one drop-off timer per instance is queued: an
/// instance's deadline moves with activity, and the timer re-arms itself when it finds the
/// deadline moved (instead of queueing a timer per event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    due: Millis,
    instance: u64,
    kind: u8,
    slot: u32,
}

/// The engine's state for one shard of profiles.
pub struct Engine {
    rules: Rules,
    watermark: Millis,
    max_seen: Millis,
    pending: BinaryHeap<Reverse<Pending>>,
    timers: BinaryHeap<Reverse<Timer>>,
    dedup: Dedup,
    profiles: Vec<Option<Profile>>,
    free: Vec<u32>,
    index: IdentityIndex,
    symbols: Symbols,
    next_sweep: Millis,
    stats: EngineStats,
    /// Reused buffers (no allocation per event).
    keys: Vec<Key>,
    slots: Vec<u32>,
    touched: Vec<(usize, u8, Activity)>,
}

impl Engine {
    pub fn new(rules: Rules) -> Engine {
        Engine {
            dedup: Dedup::new(rules.dedup_window),
            rules,
            watermark: Millis::MIN,
            max_seen: Millis::MIN,
            pending: BinaryHeap::new(),
            timers: BinaryHeap::new(),
            profiles: Vec::new(),
            free: Vec::new(),
            index: IdentityIndex::default(),
            symbols: Symbols::default(),
            next_sweep: Millis::MIN,
            stats: EngineStats::default(),
            keys: Vec::new(),
            slots: Vec::new(),
            touched: Vec::new(),
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
    /// Events accepted but not yet applied (waiting for the watermark).
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Offers one event. Outputs of everything the watermark has passed are appended to `out`.
    pub fn ingest(&mut self, event: Event, out: &mut Vec<Output>) -> Ingest {
        let t = event.occurred_at;
        if t < self.watermark {
            self.stats.late += 1;
            return Ingest::Late;
        }
        let mut keys = std::mem::take(&mut self.keys);
        self.rules.identity.keys(&event, &mut keys);
        let linkable = !keys.is_empty();
        self.keys = keys;
        if !linkable {
            self.stats.unlinkable += 1;
            return Ingest::Unlinkable;
        }
        let id_hash = xxh3_64(event.event_id.as_bytes());
        if !self.dedup.insert(t, id_hash) {
            self.stats.duplicates += 1;
            return Ingest::Duplicate;
        }
        self.stats.accepted += 1;
        self.stats.unknown_channel += u64::from(event.unknown_channel);
        self.stats.unknown_action += u64::from(event.unknown_action);
        self.pending.push(Reverse(Pending {
            t,
            id_hash,
            event: Box::new(event),
        }));
        if t > self.max_seen {
            self.max_seen = t;
            self.advance_to(t.saturating_sub(self.rules.allowed_lateness), out);
        }
        Accepted
    }

    /// Applies every buffered event that is at most `t` old... see [`Engine::flush`] and
    /// [`Engine::drain`]; this moves the watermark to `w` (never backwards): buffered events
    /// older than `w` are applied and timers due before `w` fire, all in time order.
    pub fn advance_to(&mut self, w: Millis, out: &mut Vec<Output>) {
        if w <= self.watermark {
            return;
        }
        self.watermark = w;
        loop {
            let next_event = self.pending.peek().map(|p| p.0.t).filter(|t| *t < w);
            let next_timer = self.timers.peek().map(|t| t.0.due).filter(|d| *d < w);
            match (next_event, next_timer) {
                (_, Some(d)) if next_event.is_none_or(|t| d <= t) => {
                    let Some(Reverse(timer)) = self.timers.pop() else {
                        break;
                    };
                    self.maybe_sweep(d);
                    self.fire(timer, out);
                }
                (Some(t), _) => {
                    let Some(Reverse(p)) = self.pending.pop() else {
                        break;
                    };
                    self.maybe_sweep(t);
                    self.apply(*p.event, out);
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
                self.profiles[s as usize] = Some(p);
                s
            }
            None => {
                self.profiles.push(Some(p));
                (self.profiles.len() - 1) as u32
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
    fn resolve(&mut self, e: &Event, t: Millis) -> u32 {
        let mut keys = std::mem::take(&mut self.keys);
        let mut cands = std::mem::take(&mut self.slots);
        self.stats.guardrail_never_link += u64::from(self.rules.identity.keys(e, &mut keys));
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
            Some(s) => s,
            None => self.new_profile(Profile::new(
                IdentityRules::profile_id(e),
                customer.is_some(),
                t,
            )),
        };
        if let (Some(c), false) = (&e.customer_id, self.profile(primary).has_customer) {
            if customer.is_some() {
                let p = self.profile_mut(primary);
                p.id = c.clone();
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
                    self.profile_mut(primary).keys.push(k.hash);
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
        let Some(other) = self.profiles[from as usize].take() else {
            return;
        };
        self.free.push(from);
        self.stats.identity_merges += 1;
        for &k in &other.keys {
            self.index.set(k, into);
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
            self.timers.extend(arm.into_iter().map(Reverse));
        }
    }

    // ------------------------------------------------------------ events

    fn apply(&mut self, e: Event, out: &mut Vec<Output>) {
        let t = e.occurred_at;
        let slot = self.resolve(&e, t);
        let mut touched = std::mem::take(&mut self.touched);
        touched.clear();
        let Engine {
            rules,
            profiles,
            symbols,
            timers,
            stats,
            ..
        } = self;
        let p = profiles[slot as usize].as_mut().expect("resolved slot");
        let fr = &rules.friction;
        let journeys = &rules.catalog.journeys;
        p.last_seen = p.last_seen.max(t);
        for (label, sym) in [(&e.segment, &mut p.segment), (&e.tier, &mut p.tier)] {
            if let Some(v) = label {
                match symbols.intern(v) {
                    Some(s) => *sym = s,
                    None => stats.symbol_overflow += 1,
                }
            }
        }
        let mut alert = |p: &Profile,
                         ty: AlertType,
                         subject: Subject<'_>,
                         at: Millis,
                         evidence: Vec<String>,
                         out: &mut Vec<Output>| {
            stats.alerts[ty as usize] += 1;
            out.push(Output::Alert(build_alert(
                &rules.scorer,
                symbols,
                p,
                ty,
                subject,
                at,
                evidence,
            )));
        };

        // channel_escalation: judged on the state before this contact is applied.
        if let (Some(within), Action::Contact, true) =
            (fr.channel_escalation, e.action, e.channel.is_assisted())
        {
            let eligible = |i: &Instance| {
                i.channels.has_digital()
                    && i.last >= t - within
                    && !i.has_fired(AlertType::ChannelEscalation)
            };
            let open = p
                .open
                .iter()
                .enumerate()
                .filter(|(_, i)| eligible(i))
                .map(|(k, i)| (i.last, i.id, k, false));
            let closed = p
                .closed()
                .iter()
                .enumerate()
                .filter(|(_, c)| c.outcome == JourneyOutcome::Abandoned && eligible(&c.inst));
            let best = open
                .chain(closed.map(|(k, c)| (c.inst.last, c.inst.id, k, true)))
                .max();
            if let Some((_, _, k, is_closed)) = best {
                let inst = if is_closed {
                    &mut p.extra().closed[k].inst
                } else {
                    &mut p.open[k]
                };
                inst.fire(AlertType::ChannelEscalation);
                let inst = if is_closed {
                    &p.closed()[k].inst
                } else {
                    &p.open[k]
                };
                let def = &journeys[usize::from(inst.journey)];
                let step = rules
                    .catalog
                    .steps_for(&e.touchpoint)
                    .iter()
                    .find(|(j, _)| *j == inst.journey)
                    .map(|x| x.1);
                let mut ev = inst.evidence(None);
                ev.push(e.event_id.to_string());
                let subject = Subject {
                    journey: Some((def, inst)),
                    step,
                    touchpoint: &e.touchpoint,
                    trigger: &e.event_id,
                };
                alert(p, AlertType::ChannelEscalation, subject, t, ev, out);
            }
        }

        // Journey activity: open or advance instances of every journey this touchpoint is a step of.
        for &(j, s) in rules.catalog.steps_for(&e.touchpoint) {
            let def = &journeys[usize::from(j)];
            let idx = match p.open.iter().position(|i| i.journey == j) {
                Some(i) => i,
                None if def.is_entry(s) => {
                    let id = xxh3_64_with_seed(e.event_id.as_bytes(), xxh3_64(def.name.as_bytes()));
                    if p.open.capacity() == p.open.len() {
                        p.open.reserve_exact(1);
                    }
                    p.open.push(Instance::open(def, j, id, t));
                    stats.journeys_started += 1;
                    timers.push(Reverse(Timer {
                        due: t + def.abandon_after,
                        instance: id,
                        kind: DROP_OFF,
                        slot,
                    }));
                    p.open.len() - 1
                }
                None => continue,
            };
            let inst = &mut p.open[idx];
            let act = inst.apply(s, t, e.channel, &e.event_id, e.value);
            if let (true, true, Some(sla)) =
                (act.first_entry, fr.slow_step, def.sla[usize::from(s)])
            {
                timers.push(Reverse(Timer {
                    due: t + sla,
                    instance: inst.id,
                    kind: s + 1,
                    slot,
                }));
            }
            touched.push((idx, s, act));
        }

        // Instance-level detectors.
        for &(idx, s, act) in &touched {
            let def = &journeys[usize::from(p.open[idx].journey)];
            if let Some(count) = fr.step_loop {
                let inst = &mut p.open[idx];
                if act.entered
                    && inst.steps[usize::from(s)].entries >= count
                    && inst.fire(AlertType::StepLoop)
                {
                    let inst = &p.open[idx];
                    let subject = Subject {
                        journey: Some((def, inst)),
                        step: Some(s),
                        touchpoint: &e.touchpoint,
                        trigger: &e.event_id,
                    };
                    alert(
                        p,
                        AlertType::StepLoop,
                        subject,
                        t,
                        inst.evidence(Some(s)),
                        out,
                    );
                }
            }
            if let (Some(th), true) = (fr.repeated_error, e.is_error()) {
                let inst = &mut p.open[idx];
                let hit = friction::count_window(&mut inst.extra().errors, t, &e.event_id, th);
                if let Some(ev) = hit.filter(|_| inst.fire(AlertType::RepeatedError)) {
                    let subject = Subject {
                        journey: Some((def, &p.open[idx])),
                        step: Some(s),
                        touchpoint: &e.touchpoint,
                        trigger: &e.event_id,
                    };
                    alert(p, AlertType::RepeatedError, subject, t, ev, out);
                }
            }
        }

        // Friction outside any journey: errors on a touchpoint no open instance has as a step.
        if let (Some(th), true, true) = (fr.repeated_error, e.is_error(), touched.is_empty()) {
            let key = friction::touchpoint_key(&e.touchpoint, None);
            let hit = friction::count_keyed(&mut p.extra().loose_errors, key, t, &e.event_id, th);
            if let Some(ev) = hit.filter(|_| {
                friction::cooldown_allows(
                    p,
                    AlertType::RepeatedError,
                    &e.touchpoint,
                    t,
                    fr.cooldown,
                )
            }) {
                let subject = Subject {
                    journey: None,
                    step: None,
                    touchpoint: &e.touchpoint,
                    trigger: &e.event_id,
                };
                alert(p, AlertType::RepeatedError, subject, t, ev, out);
            }
        }

        // rage_click: clicks on one touchpoint and element, within seconds.
        if let (Some(th), Action::Click) = (fr.rage_click, e.action) {
            let key =
                friction::touchpoint_key(&e.touchpoint, Some(e.element.as_deref().unwrap_or("")));
            if let Some(ev) = friction::count_keyed(&mut p.extra().clicks, key, t, &e.event_id, th)
            {
                if touched.is_empty() {
                    if friction::cooldown_allows(
                        p,
                        AlertType::RageClick,
                        &e.touchpoint,
                        t,
                        fr.cooldown,
                    ) {
                        let subject = Subject {
                            journey: None,
                            step: None,
                            touchpoint: &e.touchpoint,
                            trigger: &e.event_id,
                        };
                        alert(p, AlertType::RageClick, subject, t, ev, out);
                    }
                } else {
                    for &(idx, s, _) in &touched {
                        if p.open[idx].fire(AlertType::RageClick) {
                            let inst = &p.open[idx];
                            let def = &journeys[usize::from(inst.journey)];
                            let subject = Subject {
                                journey: Some((def, inst)),
                                step: Some(s),
                                touchpoint: &e.touchpoint,
                                trigger: &e.event_id,
                            };
                            alert(p, AlertType::RageClick, subject, t, ev.clone(), out);
                        }
                    }
                }
            }
        }

        // repeat_contact: contacts by the profile across journeys; the count restarts after an alert.
        if let (Some(th), Action::Contact) = (fr.repeat_contact, e.action) {
            if let Some(ev) = friction::count_window(&mut p.extra().contacts, t, &e.event_id, th) {
                p.extra().contacts.clear();
                let subject = Subject {
                    journey: None,
                    step: None,
                    touchpoint: &e.touchpoint,
                    trigger: &e.event_id,
                };
                alert(p, AlertType::RepeatContact, subject, t, ev, out);
            }
        }

        // Surveys attach to the open instance most recently active, else the latest closed one.
        if let Some(survey) = e.survey {
            let negative = fr.is_negative(survey);
            let open = p
                .open
                .iter()
                .enumerate()
                .map(|(k, i)| (i.last, i.id, k))
                .max();
            let closed = p
                .closed()
                .iter()
                .enumerate()
                .filter(|(_, c)| c.ended >= t - rules.survey_attribution)
                .map(|(k, c)| (c.ended, c.inst.id, k))
                .max();
            let target = match (open, closed) {
                (Some((_, _, k)), _) => Some((k, false)),
                (None, Some((_, _, k))) => Some((k, true)),
                (None, None) => None,
            };
            match target {
                Some((k, is_closed)) => {
                    let inst = if is_closed {
                        &mut p.extra().closed[k].inst
                    } else {
                        &mut p.open[k]
                    };
                    inst.extra().surveys.push((survey, e.event_id.clone()));
                    let fire = negative && inst.fire(AlertType::NegativeFeedback);
                    let inst = if is_closed {
                        &p.closed()[k].inst
                    } else {
                        &p.open[k]
                    };
                    let def = &journeys[usize::from(inst.journey)];
                    if fire {
                        let step = rules
                            .catalog
                            .steps_for(&e.touchpoint)
                            .iter()
                            .find(|(j, _)| *j == inst.journey)
                            .map(|x| x.1);
                        let subject = Subject {
                            journey: Some((def, inst)),
                            step,
                            touchpoint: &e.touchpoint,
                            trigger: &e.event_id,
                        };
                        alert(
                            p,
                            AlertType::NegativeFeedback,
                            subject,
                            t,
                            vec![e.event_id.to_string()],
                            out,
                        );
                    }
                    if is_closed {
                        // The summary already went out: re-emit it with the answer and a new revision.
                        let c = &mut p.extra().closed[k];
                        c.revision += 1;
                        let c = &p.closed()[k];
                        let (seg, tier) = (symbols.name(p.segment), symbols.name(p.tier));
                        out.push(Output::Journey(c.inst.summary(
                            def,
                            &p.id,
                            p.customer_id(),
                            seg,
                            tier,
                            c.outcome,
                            c.ended,
                            c.revision,
                        )));
                    }
                }
                None if negative
                    && friction::cooldown_allows(
                        p,
                        AlertType::NegativeFeedback,
                        &e.touchpoint,
                        t,
                        fr.cooldown,
                    ) =>
                {
                    let subject = Subject {
                        journey: None,
                        step: None,
                        touchpoint: &e.touchpoint,
                        trigger: &e.event_id,
                    };
                    alert(
                        p,
                        AlertType::NegativeFeedback,
                        subject,
                        t,
                        vec![e.event_id.to_string()],
                        out,
                    );
                }
                None => {}
            }
        }

        // Completion: reaching the last step closes the instance (highest index first: swap_remove).
        touched.sort_by(|a, b| b.0.cmp(&a.0));
        for &(idx, s, _) in &touched {
            let def = &journeys[usize::from(p.open[idx].journey)];
            if s == def.last_step() {
                close(
                    p,
                    idx,
                    def,
                    symbols,
                    stats,
                    JourneyOutcome::Completed,
                    t,
                    out,
                );
            }
        }
        self.touched = touched;
    }

    // ------------------------------------------------------------ timers

    fn fire(&mut self, timer: Timer, out: &mut Vec<Output>) {
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
            return;
        };
        let Some(idx) = p.open.iter().position(|i| i.id == timer.instance) else {
            return;
        };
        let def = &rules.catalog.journeys[usize::from(p.open[idx].journey)];
        if timer.kind == DROP_OFF {
            let deadline = p.open[idx].last + def.abandon_after;
            if deadline > timer.due {
                timers.push(Reverse(Timer {
                    due: deadline,
                    ..timer
                }));
                return;
            }
            p.open[idx].fire(AlertType::DropOff);
            let inst = &p.open[idx];
            let step = inst.furthest;
            let due = timer.due.to_string();
            let subject = Subject {
                journey: Some((def, inst)),
                step: Some(step),
                touchpoint: &def.steps[usize::from(step)],
                trigger: &due,
            };
            stats.alerts[AlertType::DropOff as usize] += 1;
            out.push(Output::Alert(build_alert(
                &rules.scorer,
                symbols,
                p,
                AlertType::DropOff,
                subject,
                timer.due,
                inst.evidence(None),
            )));
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
        } else {
            let step = timer.kind - 1;
            let inst = &mut p.open[idx];
            if inst.furthest <= step && inst.fire(AlertType::SlowStep) {
                let inst = &p.open[idx];
                let due = timer.due.to_string();
                let subject = Subject {
                    journey: Some((def, inst)),
                    step: Some(step),
                    touchpoint: &def.steps[usize::from(step)],
                    trigger: &due,
                };
                stats.alerts[AlertType::SlowStep as usize] += 1;
                out.push(Output::Alert(build_alert(
                    &rules.scorer,
                    symbols,
                    p,
                    AlertType::SlowStep,
                    subject,
                    timer.due,
                    inst.evidence(Some(step)),
                )));
            }
        }
    }

    // ------------------------------------------------------------ retention

    /// Forgets profiles idle for `profile_ttl` with nothing open. Runs at item times (not at
    /// watermark moves), so it happens at the same points whatever the arrival order.
    fn maybe_sweep(&mut self, now: Millis) {
        if self.next_sweep == Millis::MIN {
            self.next_sweep = now.saturating_add(SWEEP_EVERY);
            return;
        }
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now.saturating_add(SWEEP_EVERY);
        let cutoff = now.saturating_sub(self.rules.profile_ttl);
        for slot in 0..self.profiles.len() {
            let expired = matches!(&self.profiles[slot], Some(p) if p.open.is_empty() && p.last_seen < cutoff);
            if expired {
                let p = self.profiles[slot].take().expect("checked");
                for k in p.keys {
                    self.index.remove_if(k, slot as u32);
                }
                self.free.push(slot as u32);
                self.stats.profiles_expired += 1;
            }
        }
    }
}

use Ingest::Accepted;

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
        &p.id,
        p.customer_id(),
        seg,
        tier,
        outcome,
        ended,
        1,
    )));
    stats.journeys_closed[outcome as usize] += 1;
    p.close(idx, outcome, ended);
}

#[allow(dead_code)]
fn _assert_compact_string_is_small() {
    let _: [(); 24] = [(); std::mem::size_of::<CompactString>()];
}

#[cfg(test)]
mod tests;
