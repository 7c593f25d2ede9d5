//! Applying one event: identity, journey activity, and the event-driven friction detectors.
//! (Timer-driven detection, drop-off and slow step, is in the parent module.)

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::{close, Engine, Timer, DROP_OFF};
use crate::alert::{AlertType, JourneyOutcome, Output};
use crate::event::{Action, Event, Millis};
use crate::friction::{self, build_alert, Subject};
use crate::journey::Instance;
use crate::profile::Profile;

impl Engine {
    /// Applies one event whose first key is `key`; returns the slot of the profile it went to.
    pub(super) fn apply(&mut self, e: &Event, key: u64, out: &mut Vec<Output>) -> u32 {
        let t = e.occurred_at;
        let slot = self.resolve(e, key, t);
        self.touch(slot);
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
            if let Some(v) = label.as_deref().filter(|v| symbols.name(*sym) != *v) {
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
                         evidence: Vec<compact_str::CompactString>,
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
                let step = rules.catalog.step_of(inst.journey, &e.touchpoint);
                let mut ev = inst.evidence(None);
                ev.push(e.event_id.clone());
                let subject = Subject::on(def, inst, step, e);
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
                    p.open.push(Instance::open(def, j, id, t));
                    stats.journeys_started += 1;
                    stats.started_by_journey[usize::from(j)] += 1;
                    timers.push(Timer {
                        due: t + def.abandon_after,
                        instance: id,
                        kind: DROP_OFF,
                        slot,
                    });
                    p.open.len() - 1
                }
                None => continue,
            };
            let inst = &mut p.open[idx];
            let act = inst.apply(s, t, e.channel, &e.event_id, e.value);
            if act.first_entry {
                stats.steps_reached[usize::from(j)][usize::from(s)] += 1;
            }
            if let (true, true, Some(sla)) =
                (act.first_entry, fr.slow_step, def.sla[usize::from(s)])
            {
                timers.push(Timer {
                    due: t + sla,
                    instance: inst.id,
                    kind: s + 1,
                    slot,
                });
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
                    let subject = Subject::on(def, inst, Some(s), e);
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
                    let subject = Subject::on(def, &p.open[idx], Some(s), e);
                    alert(p, AlertType::RepeatedError, subject, t, ev, out);
                }
            }
        }

        // Friction outside any journey: errors on a touchpoint no open instance has as a step.
        if let (Some(th), true, true) = (fr.repeated_error, e.is_error(), touched.is_empty()) {
            let key = friction::touchpoint_key(&e.touchpoint, None);
            let hit = friction::count_keyed(
                &mut p.extra().history().loose_errors,
                key,
                t,
                &e.event_id,
                th,
            );
            if let Some(ev) = hit.filter(|_| {
                friction::cooldown_allows(
                    p,
                    AlertType::RepeatedError,
                    &e.touchpoint,
                    t,
                    fr.cooldown,
                )
            }) {
                let subject = Subject::outside(e);
                alert(p, AlertType::RepeatedError, subject, t, ev, out);
            }
        }

        // rage_click: clicks on one touchpoint and element, within seconds.
        if let (Some(th), Action::Click) = (fr.rage_click, e.action) {
            let key =
                friction::touchpoint_key(&e.touchpoint, Some(e.element.as_deref().unwrap_or("")));
            if let Some(ev) =
                friction::count_keyed(&mut p.extra().history().clicks, key, t, &e.event_id, th)
            {
                if touched.is_empty() {
                    if friction::cooldown_allows(
                        p,
                        AlertType::RageClick,
                        &e.touchpoint,
                        t,
                        fr.cooldown,
                    ) {
                        let subject = Subject::outside(e);
                        alert(p, AlertType::RageClick, subject, t, ev, out);
                    }
                } else {
                    for &(idx, s, _) in &touched {
                        if p.open[idx].fire(AlertType::RageClick) {
                            let inst = &p.open[idx];
                            let def = &journeys[usize::from(inst.journey)];
                            let subject = Subject::on(def, inst, Some(s), e);
                            alert(p, AlertType::RageClick, subject, t, ev.clone(), out);
                        }
                    }
                }
            }
        }

        // repeat_contact: contacts by the profile across journeys; the count restarts after an alert.
        if let (Some(th), Action::Contact) = (fr.repeat_contact, e.action) {
            if let Some(ev) =
                friction::count_window(&mut p.extra().history().contacts, t, &e.event_id, th)
            {
                p.extra().history().contacts.clear();
                let subject = Subject::outside(e);
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
                    inst.extra().add_survey(survey, e.event_id.clone());
                    let fire = negative && inst.fire(AlertType::NegativeFeedback);
                    let inst = if is_closed {
                        &p.closed()[k].inst
                    } else {
                        &p.open[k]
                    };
                    let def = &journeys[usize::from(inst.journey)];
                    if fire {
                        let step = rules.catalog.step_of(inst.journey, &e.touchpoint);
                        let subject = Subject::on(def, inst, step, e);
                        alert(
                            p,
                            AlertType::NegativeFeedback,
                            subject,
                            t,
                            vec![e.event_id.clone()],
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
                            p.output_ids(),
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
                    let subject = Subject::outside(e);
                    alert(
                        p,
                        AlertType::NegativeFeedback,
                        subject,
                        t,
                        vec![e.event_id.clone()],
                        out,
                    );
                }
                None => {}
            }
        }

        // Completion: reaching the last step closes the instance (highest index first: swap_remove).
        touched.sort_by_key(|a| std::cmp::Reverse(a.0));
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
        slot
    }
}
