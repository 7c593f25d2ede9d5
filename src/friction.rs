//! The friction detectors' settings and the pieces of detection that look back over history.
//!
//! Detection is driven by [`crate::engine`], which knows which journey instances an event is
//! activity of. This module holds the windowed counting (pure functions over small vectors)
//! and alert construction, so each detector's rule reads in one place.

use compact_str::CompactString;
use xxhash_rust::xxh3::xxh3_64;

use crate::alert::{stable_id, Alert, AlertType, Scorer};
use crate::config::{FrictionSection, NegativeFeedback};
use crate::event::{millis, Event, Millis, Survey, SurveyKind};
use crate::identity::Symbols;
use crate::journey::{Instance, JourneyDef};
use crate::profile::{push_bounded, Profile};

/// A count-within-window threshold in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Threshold {
    pub count: usize,
    pub within: Millis,
}

/// Detector settings, compiled; `None` means the detector is off.
#[derive(Debug, Clone)]
pub struct FrictionRules {
    pub repeated_error: Option<Threshold>,
    pub step_loop: Option<u8>,
    pub channel_escalation: Option<Millis>,
    pub repeat_contact: Option<Threshold>,
    pub slow_step: bool,
    pub negative_feedback: Option<NegativeFeedback>,
    pub rage_click: Option<Threshold>,
    pub cooldown: Millis,
}

impl FrictionRules {
    pub fn new(f: &FrictionSection) -> FrictionRules {
        let th = |c: crate::config::CountWithin| {
            c.enabled.then_some(Threshold {
                count: c.count as usize,
                within: millis(c.within),
            })
        };
        FrictionRules {
            repeated_error: th(f.repeated_error),
            step_loop: f
                .step_loop
                .enabled
                .then_some(f.step_loop.count.min(255) as u8),
            channel_escalation: f
                .channel_escalation
                .enabled
                .then(|| millis(f.channel_escalation.within)),
            repeat_contact: th(f.repeat_contact),
            slow_step: f.slow_step.enabled,
            negative_feedback: f.negative_feedback.enabled.then_some(f.negative_feedback),
            rage_click: th(f.rage_click),
            cooldown: millis(f.outside_journey_cooldown),
        }
    }

    /// Whether a survey answer counts as negative feedback.
    pub fn is_negative(&self, s: Survey) -> bool {
        let Some(n) = self.negative_feedback else {
            return false;
        };
        match s.kind {
            SurveyKind::Nps => s.score <= n.nps_max,
            SurveyKind::Csat => s.score <= n.csat_max,
            SurveyKind::Ces => s.score >= n.ces_min,
        }
    }
}

/// Stable key for a touchpoint (and optionally an element) in profile-level histories.
pub fn touchpoint_key(touchpoint: &str, element: Option<&str>) -> u64 {
    match element {
        None => xxh3_64(touchpoint.as_bytes()),
        Some(el) => {
            let mut b = Vec::with_capacity(touchpoint.len() + el.len() + 1);
            b.extend_from_slice(touchpoint.as_bytes());
            b.push(0);
            b.extend_from_slice(el.as_bytes());
            xxh3_64(&b)
        }
    }
}

/// Event ids an alert carries as evidence, at most (the latest).
pub const EVIDENCE_MAX: usize = 10;

/// Entries a keyed history holds across its keys, at most (the oldest go first). Only a
/// flood reaches it: more than this many clicks (or errors outside journeys) by one profile
/// within the detector's window, on different touchpoints and elements.
pub const KEYED_HISTORY_MAX: usize = 1024;

/// Entries of one kind a history keeps: the threshold's count, and no fewer than the
/// evidence an alert carries. Keeping only the latest this many changes nothing: the count
/// reaches the threshold exactly when it did, and an alert's evidence is the latest ids.
/// Kept whole, a flood from one client (tens of thousands of errors within the window) grew
/// its profile's state past what a Kafka record may hold (`message.max.bytes`), and its
/// partition could never commit again.
fn kept(th: Threshold) -> usize {
    th.count.max(EVIDENCE_MAX)
}

/// Appends `(key, t, id)` to a history, drops what fell out of the window, and returns the
/// event ids for `key` still in it (oldest first) when they reach the threshold.
pub fn count_keyed(
    history: &mut Vec<(u64, Millis, CompactString)>,
    key: u64,
    t: Millis,
    id: &CompactString,
    th: Threshold,
) -> Option<Vec<CompactString>> {
    history.retain(|(_, at, _)| *at > t - th.within);
    if history.iter().filter(|(k, _, _)| *k == key).count() >= kept(th) {
        let oldest = history.iter().position(|(k, _, _)| *k == key);
        history.remove(oldest.expect("counted above"));
    }
    push_bounded(history, (key, t, id.clone()), KEYED_HISTORY_MAX);
    let ids: Vec<CompactString> = history
        .iter()
        .filter(|(k, _, _)| *k == key)
        .map(|(_, _, id)| id.clone())
        .collect();
    (ids.len() >= th.count).then_some(ids)
}

/// The same for an un-keyed history.
pub fn count_window(
    history: &mut Vec<(Millis, CompactString)>,
    t: Millis,
    id: &CompactString,
    th: Threshold,
) -> Option<Vec<CompactString>> {
    history.retain(|(at, _)| *at > t - th.within);
    push_bounded(history, (t, id.clone()), kept(th));
    (history.len() >= th.count).then(|| history.iter().map(|(_, id)| id.clone()).collect())
}

/// Friction outside journeys: true (and the cooldown starts) unless this profile already had
/// an alert of this type on this touchpoint within the cooldown.
pub fn cooldown_allows(
    p: &mut Profile,
    ty: AlertType,
    touchpoint: &str,
    t: Millis,
    cooldown: Millis,
) -> bool {
    let key = touchpoint_key(touchpoint, None) ^ (ty as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let list = &mut p.extra().history().cooldowns;
    list.retain(|(_, until)| *until > t);
    if list.iter().any(|(k, _)| *k == key) {
        return false;
    }
    // A flood over this many touchpoints within the cooldown: the oldest go first.
    push_bounded(list, (key, t.saturating_add(cooldown)), COOLDOWNS_MAX);
    true
}

/// Cooldowns (friction outside journeys, one per type and touchpoint) a profile holds, at
/// most.
pub const COOLDOWNS_MAX: usize = 1024;

/// What an alert is about, beyond its type and time.
pub struct Subject<'a> {
    /// The instance and its journey, or `None` for friction outside any journey.
    pub journey: Option<(&'a JourneyDef, &'a Instance)>,
    /// The step it is about, when it is a step of the journey.
    pub step: Option<u8>,
    pub touchpoint: &'a str,
    /// What makes the id unique beyond type and instance: the trigger event id, or a time.
    pub trigger: &'a str,
}

impl<'a> Subject<'a> {
    /// Friction outside any journey, triggered by the event `e`.
    pub fn outside(e: &'a Event) -> Self {
        Subject {
            journey: None,
            step: None,
            touchpoint: &e.touchpoint,
            trigger: &e.event_id,
        }
    }

    /// Friction on a journey instance, triggered by the event `e`.
    pub fn on(def: &'a JourneyDef, inst: &'a Instance, step: Option<u8>, e: &'a Event) -> Self {
        Subject {
            journey: Some((def, inst)),
            step,
            touchpoint: &e.touchpoint,
            trigger: &e.event_id,
        }
    }

    /// A timer on a journey instance's step (drop-off, slow step), identified by its due time.
    pub fn timer(def: &'a JourneyDef, inst: &'a Instance, step: u8, due: &'a str) -> Self {
        Subject {
            journey: Some((def, inst)),
            step: Some(step),
            touchpoint: &def.steps[usize::from(step)],
            trigger: due,
        }
    }
}

/// Builds an alert: scores it and gives it a deterministic id.
pub fn build_alert(
    scorer: &Scorer,
    symbols: &Symbols,
    p: &Profile,
    ty: AlertType,
    subject: Subject<'_>,
    occurred_at: Millis,
    mut evidence: Vec<CompactString>,
) -> Alert {
    let tier = symbols.name(p.tier);
    let (def, inst) = subject.journey.unzip();
    let step_weight = match (def, subject.step) {
        (Some(d), Some(s)) => d.weight[usize::from(s)],
        _ => 1.0,
    };
    let (score, factors, severity) = scorer.score(ty, step_weight, tier);
    let instance_id = inst.map(|i| i.id_string()).unwrap_or_default();
    let (profile_id, customer_id) = p.output_ids();
    let scope = if instance_id.is_empty() {
        profile_id.as_str()
    } else {
        instance_id.as_str()
    };
    let step = match (def, subject.step) {
        (Some(d), Some(s)) => d.steps[usize::from(s)].clone(),
        _ => CompactString::default(),
    };
    evidence.dedup();
    if evidence.len() > EVIDENCE_MAX {
        evidence.drain(..evidence.len() - EVIDENCE_MAX);
    }
    Alert {
        alert_id: stable_id(&[
            ty.as_str().as_bytes(),
            scope.as_bytes(),
            subject.touchpoint.as_bytes(),
            subject.trigger.as_bytes(),
        ]),
        kind: ty.kind(),
        alert_type: ty,
        severity,
        score,
        factors,
        profile_id,
        customer_id,
        journey: def.map(|d| d.name.clone()).unwrap_or_default(),
        journey_instance_id: instance_id,
        step,
        touchpoint: subject.touchpoint.into(),
        channels: inst.map(|i| i.channels.to_vec()).unwrap_or_default(),
        occurred_at,
        evidence,
        segment: symbols.name(p.segment).into(),
        tier: tier.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windowed_counts_fire_at_the_threshold_and_forget_old_events() {
        let th = Threshold {
            count: 3,
            within: 1000,
        };
        let mut h = Vec::new();
        let id = |s: &str| CompactString::new(s);
        assert!(count_keyed(&mut h, 1, 0, &id("a"), th).is_none());
        assert!(
            count_keyed(&mut h, 2, 100, &id("x"), th).is_none(),
            "other keys do not count"
        );
        assert!(count_keyed(&mut h, 1, 500, &id("b"), th).is_none());
        assert_eq!(
            count_keyed(&mut h, 1, 900, &id("c"), th),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        // 'a' (t=0) is out of the window at t=1000 (window is (t - within, t]).
        assert_eq!(
            count_keyed(&mut h, 1, 1000, &id("d"), th),
            Some(vec!["b".into(), "c".into(), "d".into()])
        );
        let mut w = Vec::new();
        assert!(count_window(&mut w, 0, &id("a"), th).is_none());
        assert!(count_window(&mut w, 2000, &id("b"), th).is_none());
        assert_eq!(w.len(), 1);
    }

    /// The model: of every event so far, the ids of `key`'s within the window at `t`, when
    /// they reach the threshold (what a history with no bound gave).
    fn in_window(
        seen: &[(u64, Millis, CompactString)],
        key: u64,
        t: Millis,
        th: Threshold,
    ) -> Option<Vec<CompactString>> {
        let ids: Vec<_> = seen
            .iter()
            .filter(|(k, at, _)| *k == key && *at > t - th.within)
            .map(|(_, _, id)| id.clone())
            .collect();
        (ids.len() >= th.count).then_some(ids)
    }

    /// What an alert keeps of the ids: the latest [`EVIDENCE_MAX`].
    fn latest(ids: Vec<CompactString>) -> Vec<CompactString> {
        ids[ids.len().saturating_sub(EVIDENCE_MAX)..].to_vec()
    }

    proptest::proptest! {
        /// Bounded, the histories fire exactly when an unbounded one does, with the same
        /// evidence, below the flood bound across keys.
        #[test]
        fn bounded_histories_fire_as_unbounded_ones_do(
            steps in proptest::collection::vec((0u64..4, 0i64..40), 1..400),
            count in 1usize..30,
            within in 1i64..2_000,
        ) {
            let th = Threshold { count, within };
            let (mut keyed, mut window) = (Vec::new(), Vec::new());
            let (mut seen, mut seen_all) = (Vec::new(), Vec::new());
            let mut t = 0;
            for (i, (key, dt)) in steps.into_iter().enumerate() {
                t += dt;
                let id = CompactString::new(format!("e{i}"));
                seen.push((key, t, id.clone()));
                seen_all.push((0, t, id.clone()));
                let want = in_window(&seen, key, t, th).map(latest);
                proptest::prop_assert_eq!(count_keyed(&mut keyed, key, t, &id, th).map(latest), want);
                let want = in_window(&seen_all, 0, t, th).map(latest);
                proptest::prop_assert_eq!(count_window(&mut window, t, &id, th).map(latest), want);
                proptest::prop_assert!(window.len() <= count.max(EVIDENCE_MAX));
            }
        }
    }

    #[test]
    fn a_flood_keeps_histories_within_their_bounds() {
        let th = Threshold {
            count: 4,
            within: 1_000_000,
        };
        let mut h = Vec::new();
        for i in 0..5_000u64 {
            let id = CompactString::new(format!("e{i}"));
            count_keyed(&mut h, i % 3_000, i as Millis, &id, th);
        }
        assert_eq!(h.len(), KEYED_HISTORY_MAX);
        let mut p = Profile::new("p", false, 0);
        for i in 0..5_000 {
            cooldown_allows(
                &mut p,
                AlertType::RageClick,
                &format!("tp{i}"),
                i,
                1_000_000,
            );
        }
        assert_eq!(p.extra().history().cooldowns.len(), COOLDOWNS_MAX);
    }

    #[test]
    fn negative_thresholds_follow_each_scale() {
        let r = FrictionRules::new(&FrictionSection::default());
        let s = |kind, score| Survey { kind, score };
        assert!(r.is_negative(s(SurveyKind::Nps, 6)) && !r.is_negative(s(SurveyKind::Nps, 7)));
        assert!(r.is_negative(s(SurveyKind::Csat, 2)) && !r.is_negative(s(SurveyKind::Csat, 3)));
        assert!(r.is_negative(s(SurveyKind::Ces, 5)) && !r.is_negative(s(SurveyKind::Ces, 4)));
    }

    #[test]
    fn cooldown_suppresses_per_type_and_touchpoint() {
        let mut p = Profile::new("p", false, 0);
        assert!(cooldown_allows(
            &mut p,
            AlertType::RageClick,
            "home",
            0,
            3600
        ));
        assert!(!cooldown_allows(
            &mut p,
            AlertType::RageClick,
            "home",
            3599,
            3600
        ));
        assert!(cooldown_allows(
            &mut p,
            AlertType::RepeatedError,
            "home",
            10,
            3600
        ));
        assert!(cooldown_allows(
            &mut p,
            AlertType::RageClick,
            "login",
            10,
            3600
        ));
        assert!(cooldown_allows(
            &mut p,
            AlertType::RageClick,
            "home",
            3600,
            3600
        ));
    }
}
