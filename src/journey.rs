//! Journey definitions (compiled from config) and the state of one open journey instance.
//!
//! An instance's memory is kept small on purpose (it is the unit that scales to millions):
//! step times are 32-bit offsets from the start, rarely used state sits behind one `Option<Box>`,
//! and evidence is a short ring of recent event ids.

use compact_str::CompactString;
use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::alert::{AlertType, JourneyOutcome, JourneySummary, StepTiming, SurveyScore};
use crate::config::JourneySpec;
use crate::event::{millis, Channel, ChannelSet, Millis, Survey};
use crate::id::StoredId;

/// How many recent activity event ids an instance keeps as evidence.
pub const RECENT_EVENTS: usize = 3;

/// Sentinel for "step not entered" in [`StepState::first`].
pub(crate) const NOT_ENTERED: u32 = u32::MAX;

/// A journey definition, compiled for fast matching.
#[derive(Debug, Clone)]
pub struct JourneyDef {
    pub name: CompactString,
    pub steps: Vec<CompactString>,
    /// Bit i set: step i may open an instance.
    pub entry_mask: u64,
    pub abandon_after: Millis,
    /// Per step: the SLA from first entry to reaching a later step.
    pub sla: Vec<Option<Millis>>,
    /// Per step: weight in alert scores.
    pub weight: Vec<f64>,
}

impl JourneyDef {
    pub fn last_step(&self) -> u8 {
        (self.steps.len() - 1) as u8
    }
    pub fn is_entry(&self, step: u8) -> bool {
        self.entry_mask & (1 << step) != 0
    }
}

/// All journeys plus an index from touchpoint to the (journey, step) pairs it is.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub journeys: Vec<JourneyDef>,
    by_touchpoint: HashMap<CompactString, Vec<(u16, u8)>>,
}

impl Catalog {
    /// Compiles validated journey specs (see [`crate::config::Config::validate`]).
    pub fn new(specs: &[JourneySpec]) -> Catalog {
        let mut c = Catalog::default();
        for (ji, s) in specs.iter().enumerate() {
            let idx = |name: &str| s.steps.iter().position(|x| x == name);
            let entry_mask = match &s.entry_steps {
                None => 1,
                Some(list) => list
                    .iter()
                    .filter_map(|n| idx(n))
                    .fold(0u64, |m, i| m | (1 << i)),
            };
            let def = JourneyDef {
                name: s.name.as_str().into(),
                steps: s.steps.iter().map(|x| x.as_str().into()).collect(),
                entry_mask,
                abandon_after: millis(s.abandon_after),
                sla: s
                    .steps
                    .iter()
                    .map(|st| s.step_sla.get(st).map(|d| millis(*d)))
                    .collect(),
                weight: s
                    .steps
                    .iter()
                    .map(|st| s.step_weight.get(st).copied().unwrap_or(1.0))
                    .collect(),
            };
            for (si, st) in s.steps.iter().enumerate() {
                c.by_touchpoint
                    .entry(st.as_str().into())
                    .or_default()
                    .push((ji as u16, si as u8));
            }
            c.journeys.push(def);
        }
        c
    }

    /// The step `touchpoint` is in `journey`, if it is one of its steps.
    pub fn step_of(&self, journey: u16, touchpoint: &str) -> Option<u8> {
        self.steps_for(touchpoint)
            .iter()
            .find(|(j, _)| *j == journey)
            .map(|(_, s)| *s)
    }

    /// The (journey, step) pairs a touchpoint is, in journey order.
    pub fn steps_for(&self, touchpoint: &str) -> &[(u16, u8)] {
        self.by_touchpoint
            .get(touchpoint)
            .map_or(&[], |v| v.as_slice())
    }
}

/// Per-step state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepState {
    /// First entry, in ms after the instance started (saturating at ~49 days); NOT_ENTERED if never.
    pub(crate) first: u32,
    /// How many times the step was entered (saturating).
    pub entries: u8,
}

/// Per-step state of an instance, inline for journeys of up to five steps (no allocation of
/// its own, and in the same cache lines as the rest of the instance).
pub type Steps = SmallVec<[StepState; 5]>;

/// Rarely needed instance state, allocated on first use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceExtra {
    /// Error events within the repeated_error window: (time, event id).
    pub errors: Vec<(Millis, CompactString)>,
    /// Survey answers attributed to this instance, the latest [`SURVEYS_KEPT`].
    pub surveys: Vec<(Survey, CompactString)>,
}

/// Survey answers an instance keeps (and its summary lists), the latest. Kept whole, a
/// client sending answers by the ten thousand grew its profile's state and its summary past
/// what a Kafka record may hold (`message.max.bytes`), and its partition could never commit
/// again.
pub const SURVEYS_KEPT: usize = 32;

impl InstanceExtra {
    /// Records a survey answer, dropping the oldest beyond [`SURVEYS_KEPT`].
    pub fn add_survey(&mut self, survey: Survey, id: CompactString) {
        crate::profile::push_bounded(&mut self.surveys, (survey, id), SURVEYS_KEPT);
    }

    fn keep_surveys(&mut self) {
        let over = self.surveys.len().saturating_sub(SURVEYS_KEPT);
        self.surveys.drain(..over);
    }
}

/// One open (or recently closed) journey instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Deterministic id: hash of journey name and the opening event id.
    pub id: u64,
    pub journey: u16,
    /// Step of the latest activity (to detect entering a step).
    pub current: u8,
    pub furthest: u8,
    pub channels: ChannelSet,
    /// Alert types already fired for this instance (each fires at most once).
    pub fired: u8,
    pub started: Millis,
    pub last: Millis,
    pub steps: Steps,
    /// The latest activity events: the evidence for alerts.
    pub recent: Recent,
    /// Latest `value` seen on activity; NaN when none.
    pub value: f64,
    pub extra: Option<Box<InstanceExtra>>,
}

/// The latest activity events of an instance as (step, event id), oldest first. Inline: an
/// instance's evidence costs no allocation of its own. A ring: once full, a push overwrites
/// the oldest in place (rotating the ids cost a `memmove` call per activity event, ~1% of the
/// engine's time at 1M profiles).
#[derive(Debug, Clone, Default)]
pub struct Recent {
    ids: [StoredId; RECENT_EVENTS],
    steps: [u8; RECENT_EVENTS],
    len: u8,
    /// Where the oldest is.
    start: u8,
}

impl Recent {
    /// Appends an event, dropping the oldest when full.
    pub fn push(&mut self, step: u8, id: StoredId) {
        let (len, start) = (usize::from(self.len), usize::from(self.start));
        let i = if len == RECENT_EVENTS {
            self.start = ((start + 1) % RECENT_EVENTS) as u8;
            start
        } else {
            self.len += 1;
            (start + len) % RECENT_EVENTS
        };
        self.ids[i] = id;
        self.steps[i] = step;
    }

    /// Reads the ring near its start and its end, for the engine's read-ahead: the ring is 80
    /// of an instance's 176 bytes, and rustc lays it out away from the fields read already.
    pub(crate) fn warm(&self) -> u64 {
        let first = matches!(self.ids[0], StoredId::Uuid(_));
        u64::from(first) ^ u64::from(self.start)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u8, &StoredId)> {
        (0..usize::from(self.len)).map(|k| {
            let i = (usize::from(self.start) + k) % RECENT_EVENTS;
            (self.steps[i], &self.ids[i])
        })
    }
}

/// Equal when they hold the same events in the same order, wherever the ring starts.
impl PartialEq for Recent {
    fn eq(&self, other: &Recent) -> bool {
        self.iter().eq(other.iter())
    }
}

/// What applying one activity event did to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// The event entered its step (the previous activity was on another step).
    pub entered: bool,
    /// It was the first entry into that step.
    pub first_entry: bool,
}

impl Instance {
    pub fn open(def: &JourneyDef, journey: u16, id: u64, t: Millis) -> Instance {
        Instance {
            id,
            journey,
            current: u8::MAX,
            furthest: 0,
            channels: ChannelSet::default(),
            fired: 0,
            started: t,
            last: t,
            steps: smallvec::smallvec![
                StepState {
                    first: NOT_ENTERED,
                    entries: 0
                };
                def.steps.len()
            ],
            recent: Recent::default(),
            value: f64::NAN,
            extra: None,
        }
    }

    pub fn id_string(&self) -> CompactString {
        crate::alert::hex(u128::from(self.id), 16)
    }

    pub fn has_fired(&self, t: AlertType) -> bool {
        self.fired & t.bit() != 0
    }

    /// Marks `t` fired; returns false if it had fired already.
    pub fn fire(&mut self, t: AlertType) -> bool {
        let first = !self.has_fired(t);
        self.fired |= t.bit();
        first
    }

    pub fn extra(&mut self) -> &mut InstanceExtra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub fn first_entry(&self, step: u8) -> Option<Millis> {
        let s = self.steps.get(usize::from(step))?;
        (s.first != NOT_ENTERED).then(|| self.started + Millis::from(s.first))
    }

    fn offset(&self, t: Millis) -> u32 {
        u32::try_from((t - self.started).max(0))
            .unwrap_or(NOT_ENTERED - 1)
            .min(NOT_ENTERED - 1)
    }

    /// Applies an activity event on `step`.
    pub fn apply(
        &mut self,
        step: u8,
        t: Millis,
        channel: Channel,
        event_id: &CompactString,
        value: Option<f64>,
    ) -> Activity {
        let entered = self.current != step;
        let mut first_entry = false;
        if entered {
            let off = self.offset(t);
            let s = &mut self.steps[usize::from(step)];
            if s.first == NOT_ENTERED {
                s.first = off;
                first_entry = true;
            }
            s.entries = s.entries.saturating_add(1);
            self.current = step;
        }
        self.furthest = self.furthest.max(step);
        self.last = self.last.max(t);
        self.channels.insert(channel);
        if let Some(v) = value {
            self.value = v;
        }
        self.recent.push(step, StoredId::new(event_id));
        Activity {
            entered,
            first_entry,
        }
    }

    /// Merges another instance of the same journey into this one (identity merge): earliest
    /// start, steps unioned, furthest step kept, one set of fired detectors.
    pub fn absorb(&mut self, other: Instance) {
        let (self_last, other_last) = (self.last, other.last);
        let start = self.started.min(other.started);
        let mut steps = self.steps.clone();
        for (i, s) in steps.iter_mut().enumerate() {
            let a = self.first_entry(i as u8);
            let b = other.first_entry(i as u8);
            let first = match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (x, y) => x.or(y),
            };
            s.first = first.map_or(NOT_ENTERED, |f| {
                u32::try_from(f - start)
                    .unwrap_or(NOT_ENTERED - 1)
                    .min(NOT_ENTERED - 1)
            });
            s.entries = s.entries.saturating_add(other.steps[i].entries);
        }
        if other.started < self.started || (other.started == self.started && other.id < self.id) {
            self.id = other.id;
        }
        self.started = start;
        self.steps = steps;
        if other.last > self.last {
            self.current = other.current;
            if !other.value.is_nan() {
                self.value = other.value;
            }
        }
        self.last = self.last.max(other.last);
        self.furthest = self.furthest.max(other.furthest);
        self.channels.0 |= other.channels.0;
        self.fired |= other.fired;
        // Interleave the two evidence rings by which instance was active last.
        let mine = std::mem::take(&mut self.recent);
        let (older, newer) = if other_last > self_last {
            (&mine, &other.recent)
        } else {
            (&other.recent, &mine)
        };
        for (step, id) in older.iter().chain(newer.iter()) {
            self.recent.push(step, id.clone());
        }
        if let Some(o) = other.extra {
            let e = self.extra();
            e.errors.extend(o.errors);
            e.errors.sort();
            e.surveys.extend(o.surveys);
            e.keep_surveys();
        }
    }

    /// Recent event ids, oldest first (optionally only those on `step`).
    pub fn evidence(&self, step: Option<u8>) -> Vec<CompactString> {
        self.recent
            .iter()
            .filter(|(s, _)| step.is_none_or(|x| *s == x))
            .map(|(_, id)| id.to_compact())
            .collect()
    }

    /// The summary of this instance.
    #[allow(clippy::too_many_arguments)]
    pub fn summary(
        &self,
        def: &JourneyDef,
        (profile_id, customer_id): (CompactString, CompactString),
        segment: &str,
        tier: &str,
        outcome: JourneyOutcome,
        ended: Millis,
        revision: u32,
    ) -> JourneySummary {
        let mut entered: SmallVec<[(Millis, usize); 8]> = (0..self.steps.len())
            .filter_map(|i| self.first_entry(i as u8).map(|t| (t, i)))
            .collect();
        entered.sort();
        let steps = entered
            .iter()
            .enumerate()
            .map(|(k, &(t, i))| StepTiming {
                step: def.steps[i].clone(),
                first_entered_at: t,
                entries: u32::from(self.steps[i].entries),
                seconds: entered
                    .get(k + 1)
                    .map(|(next, _)| (next - t) as f64 / 1000.0),
            })
            .collect();
        let surveys = self
            .extra
            .iter()
            .flat_map(|e| e.surveys.iter())
            .map(|(s, id)| SurveyScore {
                kind: s.kind,
                score: s.score,
                event_id: id.clone(),
            })
            .collect();
        JourneySummary {
            journey_instance_id: self.id_string(),
            journey: def.name.clone(),
            profile_id,
            customer_id,
            outcome,
            started_at: self.started,
            ended_at: ended,
            furthest_step: def.steps[usize::from(self.furthest)].clone(),
            steps,
            channels: self.channels.to_vec(),
            friction: AlertType::from_mask(self.fired),
            surveys,
            value: (!self.value.is_nan()).then_some(self.value),
            segment: segment.into(),
            tier: tier.into(),
            revision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> JourneyDef {
        let spec: JourneySpec = toml::from_str(
            r#"name = "j"
steps = ["a", "b", "c"]
entry_steps = ["a", "b"]
step_sla = { b = "1m" }"#,
        )
        .unwrap();
        Catalog::new(&[spec]).journeys.remove(0)
    }

    #[test]
    fn recent_keeps_the_latest_events_oldest_first() {
        let mut r = Recent::default();
        let mut pushed = Vec::new();
        for n in 0u8..8 {
            // Every other id a UUID: both forms share the ring.
            let id = if n % 2 == 0 {
                format!("e{n}")
            } else {
                format!("0000000{n}-7d1c-4b5e-9a2f-00000000000{n}")
            };
            r.push(n, StoredId::new(&id));
            pushed.push((n, id));
            let kept = &pushed[pushed.len().saturating_sub(RECENT_EVENTS)..];
            let got: Vec<_> = r.iter().map(|(s, id)| (s, id.to_string())).collect();
            assert_eq!(got, kept, "after {} pushes", n + 1);
            // The same events pushed into a fresh ring (starting elsewhere) are equal.
            let mut fresh = Recent::default();
            for (s, id) in kept {
                fresh.push(*s, StoredId::new(id));
            }
            assert_eq!(fresh, r);
        }
        let mut other = r.clone();
        other.push(9, StoredId::new("e9"));
        assert_ne!(other, r);
    }

    #[test]
    fn entries_are_counted_only_when_the_step_changes() {
        let d = def();
        let mut i = Instance::open(&d, 0, 1, 1000);
        let id = CompactString::new("e");
        assert_eq!(
            i.apply(0, 1000, Channel::Web, &id, None),
            Activity {
                entered: true,
                first_entry: true
            }
        );
        assert_eq!(
            i.apply(0, 1500, Channel::Web, &id, None),
            Activity {
                entered: false,
                first_entry: false
            }
        );
        assert_eq!(
            i.apply(1, 2000, Channel::MobileApp, &id, Some(5.0)),
            Activity {
                entered: true,
                first_entry: true
            }
        );
        assert_eq!(
            i.apply(0, 3000, Channel::Web, &id, None),
            Activity {
                entered: true,
                first_entry: false
            }
        );
        assert_eq!(i.steps[0].entries, 2);
        assert_eq!(i.furthest, 1);
        assert_eq!(i.first_entry(1), Some(2000));
        assert_eq!(i.value, 5.0);
        assert!(d.is_entry(1) && !d.is_entry(2));
    }

    #[test]
    fn absorb_takes_earliest_start_and_unions_steps() {
        let d = def();
        let (e1, e2) = (CompactString::new("e1"), CompactString::new("e2"));
        let mut a = Instance::open(&d, 0, 10, 5000);
        a.apply(1, 5000, Channel::Web, &e1, None);
        let mut b = Instance::open(&d, 0, 20, 1000);
        b.apply(0, 1000, Channel::Chat, &e2, None);
        b.fire(AlertType::RageClick);
        a.absorb(b);
        assert_eq!((a.id, a.started, a.furthest), (20, 1000, 1));
        assert_eq!(a.first_entry(0), Some(1000));
        assert_eq!(a.first_entry(1), Some(5000));
        assert!(a.has_fired(AlertType::RageClick));
        assert_eq!(a.channels.iter().count(), 2);
        let s = a.summary(
            &d,
            ("p".into(), "".into()),
            "",
            "",
            JourneyOutcome::Abandoned,
            9000,
            1,
        );
        assert_eq!(s.steps.len(), 2);
        assert_eq!(s.steps[0].seconds, Some(4.0));
        assert_eq!(s.furthest_step, "b");
    }
}
