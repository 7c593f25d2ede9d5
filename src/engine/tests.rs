//! Engine behaviour, one scenario per rule. Time is always given; nothing sleeps.

use super::*;
use crate::alert::{Alert, JourneySummary};
use crate::event::{Action, Channel, Outcome, Survey, SurveyKind};
use crate::journey::Instance;

pub(crate) const CONFIG: &str = r#"
[engine]
allowed_lateness = "5s"
[[journeys]]
name = "online_checkout"
steps = ["cart.view", "checkout.start", "checkout.shipping", "checkout.payment", "order.confirmed"]
abandon_after = "30m"
step_sla = { "checkout.payment" = "5m" }
step_weight = { "checkout.payment" = 3.0 }
[[journeys]]
name = "support"
steps = ["help.article", "support.contact", "support.resolved"]
entry_steps = ["help.article", "support.contact"]
abandon_after = "2h"
[scoring]
tier_multiplier = { gold = 1.5 }
"#;

const T0: Millis = 1_800_000_000_000;

/// An event `secs` seconds after T0, by anonymous id `who` unless changed.
pub(crate) fn ev(
    id: &str,
    secs: f64,
    who: &str,
    channel: Channel,
    touchpoint: &str,
    action: Action,
) -> Event {
    let mut e = Event::new(
        id,
        T0 + (secs * 1000.0) as Millis,
        channel,
        touchpoint,
        action,
    );
    e.anonymous_id = Some(who.into());
    e
}

fn web(id: &str, secs: f64, who: &str, tp: &str) -> Event {
    ev(id, secs, who, Channel::Web, tp, Action::View)
}

pub(crate) struct Run {
    pub engine: Engine,
    pub out: Vec<Output>,
}

impl Run {
    pub(crate) fn new(config: &str) -> Run {
        Run {
            engine: Engine::from_config(&Config::from_toml(config).unwrap()),
            out: vec![],
        }
    }
    fn feed(&mut self, events: impl IntoIterator<Item = Event>) -> &mut Self {
        for e in events {
            self.engine.ingest(e, &mut self.out);
        }
        self
    }
    fn drain(&mut self) -> &mut Self {
        self.engine.drain(&mut self.out);
        self
    }
    fn at(&mut self, secs: f64) -> &mut Self {
        self.engine
            .advance_to(T0 + (secs * 1000.0) as Millis, &mut self.out);
        self
    }
    fn alerts(&self) -> Vec<&Alert> {
        self.out
            .iter()
            .filter_map(|o| {
                if let Output::Alert(a) = o {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    }
    fn of(&self, t: AlertType) -> Vec<&Alert> {
        self.alerts()
            .into_iter()
            .filter(|a| a.alert_type == t)
            .collect()
    }
    fn journeys(&self) -> Vec<&JourneySummary> {
        self.out
            .iter()
            .filter_map(|o| {
                if let Output::Journey(j) = o {
                    Some(j)
                } else {
                    None
                }
            })
            .collect()
    }
}

fn checkout(who: &str, start: f64, upto: usize) -> Vec<Event> {
    [
        "cart.view",
        "checkout.start",
        "checkout.shipping",
        "checkout.payment",
        "order.confirmed",
    ][..upto]
        .iter()
        .enumerate()
        .map(|(i, tp)| web(&format!("{who}-{i}"), start + i as f64 * 10.0, who, tp))
        .collect()
}

#[test]
fn a_completed_journey_emits_one_summary_with_step_timings() {
    let mut r = Run::new(CONFIG);
    r.feed(checkout("a", 0.0, 5)).drain();
    assert!(r.alerts().is_empty(), "{:?}", r.alerts());
    let j = r.journeys();
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].outcome, JourneyOutcome::Completed);
    assert_eq!(j[0].furthest_step, "order.confirmed");
    assert_eq!(j[0].steps.len(), 5);
    assert_eq!(j[0].steps[0].seconds, Some(10.0));
    assert_eq!(j[0].ended_at - j[0].started_at, 40_000);
    assert_eq!(j[0].channels, vec![Channel::Web]);
}

#[test]
fn drop_off_fires_at_last_activity_plus_abandon_after() {
    let mut r = Run::new(CONFIG);
    r.feed(checkout("a", 0.0, 3));
    r.at(20.0 + 1800.0);
    assert!(
        r.of(AlertType::DropOff).is_empty(),
        "deadline not yet passed"
    );
    r.at(20.0 + 1800.0 + 0.001);
    let d = r.of(AlertType::DropOff);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].occurred_at, T0 + 1_820_000);
    assert_eq!(d[0].step, "checkout.shipping");
    assert_eq!(d[0].evidence, vec!["a-0", "a-1", "a-2"]);
    assert_eq!(d[0].journey, "online_checkout");
    assert_eq!(r.journeys()[0].outcome, JourneyOutcome::Abandoned);
    assert_eq!(
        r.journeys()[0].journey_instance_id,
        d[0].journey_instance_id
    );
}

#[test]
fn activity_moves_the_drop_off_deadline() {
    let mut r = Run::new(CONFIG);
    r.feed(checkout("a", 0.0, 2))
        .feed([web("late", 1700.0, "a", "checkout.start")]);
    r.at(1800.0 + 11.0);
    assert!(r.of(AlertType::DropOff).is_empty());
    r.drain();
    assert_eq!(r.of(AlertType::DropOff)[0].occurred_at, T0 + 3_500_000);
    assert_eq!(r.of(AlertType::DropOff).len(), 1);
}

#[test]
fn repeated_error_fires_once_per_instance_with_the_errors_as_evidence() {
    let mut r = Run::new(CONFIG);
    let mut evs = checkout("a", 0.0, 4);
    for i in 0..4 {
        let mut e = ev(
            &format!("err{i}"),
            40.0 + f64::from(i),
            "a",
            Channel::Web,
            "checkout.payment",
            Action::Submit,
        );
        e.outcome = Some(Outcome::Failure);
        evs.push(e);
    }
    r.feed(evs).drain();
    let a = r.of(AlertType::RepeatedError);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].evidence, vec!["err0", "err1", "err2"]);
    assert_eq!(a[0].step, "checkout.payment");
    assert_eq!(
        a[0].factors.step_weight, 3.0,
        "a moment of truth weighs more"
    );
    assert_eq!(a[0].occurred_at, T0 + 42_000);
}

#[test]
fn errors_spread_beyond_the_window_do_not_fire() {
    let mut r = Run::new(CONFIG);
    let mut evs = checkout("a", 0.0, 2);
    for i in 0..3 {
        evs.push(ev(
            &format!("err{i}"),
            20.0 + f64::from(i) * 400.0,
            "a",
            Channel::Web,
            "checkout.start",
            Action::Error,
        ));
    }
    r.feed(evs).drain();
    assert!(r.of(AlertType::RepeatedError).is_empty());
}

#[test]
fn step_loop_counts_entries_not_repeated_events() {
    let mut r = Run::new(CONFIG);
    let mut evs = checkout("a", 0.0, 3);
    // Same step three events in a row: one entry.
    evs.extend((0..3).map(|i| {
        web(
            &format!("s{i}"),
            30.0 + f64::from(i),
            "a",
            "checkout.shipping",
        )
    }));
    r.feed(evs.clone()).drain();
    assert!(r.of(AlertType::StepLoop).is_empty());
    let mut r = Run::new(CONFIG);
    let mut evs = checkout("b", 0.0, 3);
    for (i, tp) in [
        "checkout.start",
        "checkout.shipping",
        "checkout.start",
        "checkout.shipping",
    ]
    .iter()
    .enumerate()
    {
        evs.push(web(&format!("l{i}"), 30.0 + i as f64, "b", tp));
    }
    r.feed(evs).drain();
    let a = r.of(AlertType::StepLoop);
    assert_eq!(a.len(), 1);
    assert_eq!(
        a[0].step, "checkout.start",
        "start entered a third time first (b-1, l0, l2)"
    );
    assert_eq!(a[0].occurred_at, T0 + 32_000);
}

#[test]
fn channel_escalation_links_a_web_failure_to_a_call() {
    let mut r = Run::new(CONFIG);
    let mut evs = checkout("a", 0.0, 4);
    evs.push(ev(
        "call",
        40.0 + 600.0,
        "a",
        Channel::ContactCenter,
        "ivr.menu",
        Action::Contact,
    ));
    r.feed(evs).drain();
    let a = r.of(AlertType::ChannelEscalation);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].journey, "online_checkout");
    assert_eq!(
        a[0].step, "",
        "the call's touchpoint is not a checkout step"
    );
    assert_eq!(a[0].evidence.last().map(|e| e.as_str()), Some("call"));

    // Too late after the last activity: no escalation.
    let mut r = Run::new(CONFIG);
    let mut evs = checkout("a", 0.0, 4);
    evs.push(ev(
        "call",
        30.0 + 1801.0,
        "a",
        Channel::ContactCenter,
        "ivr.menu",
        Action::Contact,
    ));
    r.feed(evs).drain();
    assert!(r.of(AlertType::ChannelEscalation).is_empty());
}

#[test]
fn channel_escalation_also_follows_an_abandoned_journey() {
    let config = CONFIG.replace("abandon_after = \"30m\"", "abandon_after = \"10m\"");
    let mut r = Run::new(&config);
    let mut evs = checkout("a", 0.0, 2);
    evs.push(ev(
        "chat",
        10.0 + 900.0,
        "a",
        Channel::Chat,
        "chat.start",
        Action::Contact,
    ));
    r.feed(evs).drain();
    assert_eq!(r.of(AlertType::DropOff).len(), 1);
    let a = r.of(AlertType::ChannelEscalation);
    assert_eq!(a.len(), 1);
    assert_eq!(
        a[0].journey_instance_id,
        r.of(AlertType::DropOff)[0].journey_instance_id
    );
}

#[test]
fn repeat_contact_counts_across_journeys_and_restarts() {
    let mut r = Run::new(CONFIG);
    let evs: Vec<_> = (0..7)
        .map(|i| {
            ev(
                &format!("c{i}"),
                f64::from(i) * 86_400.0 * 0.5,
                "a",
                Channel::ContactCenter,
                "support.contact",
                Action::Contact,
            )
        })
        .collect();
    r.feed(evs).drain();
    let a = r.of(AlertType::RepeatContact);
    assert_eq!(a.len(), 2, "contacts 3 and 6");
    assert_eq!(a[0].journey, "");
    assert_eq!(a[0].evidence, vec!["c0", "c1", "c2"]);
    assert_eq!(a[1].evidence, vec!["c3", "c4", "c5"]);
}

#[test]
fn slow_step_fires_by_timer_at_first_entry_plus_sla() {
    let mut r = Run::new(CONFIG);
    let mut evs = checkout("a", 0.0, 4); // payment entered at 30s
    evs.push(web("back", 100.0, "a", "checkout.shipping"));
    evs.push(web("again", 200.0, "a", "checkout.payment"));
    r.feed(evs);
    r.at(30.0 + 300.0);
    assert!(r.of(AlertType::SlowStep).is_empty());
    r.at(30.0 + 300.0 + 0.001);
    let a = r.of(AlertType::SlowStep);
    assert_eq!(a.len(), 1, "re-entry does not restart the clock");
    assert_eq!(a[0].occurred_at, T0 + 330_000);
    assert_eq!(a[0].step, "checkout.payment");

    let mut r = Run::new(CONFIG);
    r.feed(checkout("b", 0.0, 5)).drain();
    assert!(
        r.of(AlertType::SlowStep).is_empty(),
        "reaching a later step in time"
    );
}

#[test]
fn a_survey_after_completion_attaches_to_that_journey() {
    let mut r = Run::new(CONFIG);
    let mut s = ev(
        "nps",
        3600.0,
        "a",
        Channel::Email,
        "survey.nps",
        Action::Survey,
    );
    s.survey = Some(Survey {
        kind: SurveyKind::Nps,
        score: 3,
    });
    r.feed(checkout("a", 0.0, 5)).feed([s]).drain();
    let a = r.of(AlertType::NegativeFeedback);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].journey, "online_checkout");
    let j = r.journeys();
    assert_eq!(j.len(), 2);
    assert_eq!((j[0].revision, j[1].revision), (1, 2));
    assert_eq!(j[1].surveys.len(), 1);
    assert_eq!(j[1].surveys[0].score, 3);
    assert_eq!(j[1].friction, vec![AlertType::NegativeFeedback]);
}

#[test]
fn a_positive_survey_is_recorded_without_alert() {
    let mut r = Run::new(CONFIG);
    let mut s = ev(
        "csat",
        35.0,
        "a",
        Channel::Web,
        "survey.csat",
        Action::Survey,
    );
    s.survey = Some(Survey {
        kind: SurveyKind::Csat,
        score: 5,
    });
    let mut evs = checkout("a", 0.0, 4);
    evs.push(s);
    evs.extend(checkout("a", 40.0, 5).into_iter().skip(4));
    r.feed(evs).drain();
    assert!(r.alerts().is_empty());
    let j = r.journeys();
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].surveys[0].kind, SurveyKind::Csat);
}

#[test]
fn rage_click_in_a_journey_and_outside_with_cooldown() {
    let mut r = Run::new(CONFIG);
    let click = |id: &str, secs: f64, tp: &str| {
        let mut e = ev(id, secs, "a", Channel::Web, tp, Action::Click);
        e.element = Some("pay-button".into());
        e
    };
    let mut evs = checkout("a", 0.0, 4);
    evs.extend((0..5).map(|i| {
        click(
            &format!("p{i}"),
            40.0 + f64::from(i) * 0.5,
            "checkout.payment",
        )
    }));
    // Outside any journey: twice within the hour alerts once, again after an hour.
    evs.extend((0..4).map(|i| click(&format!("h{i}"), 100.0 + f64::from(i) * 0.5, "home")));
    evs.extend((0..4).map(|i| click(&format!("i{i}"), 200.0 + f64::from(i) * 0.5, "home")));
    evs.extend((0..4).map(|i| click(&format!("j{i}"), 4000.0 + f64::from(i) * 0.5, "home")));
    r.feed(evs).drain();
    let a = r.of(AlertType::RageClick);
    assert_eq!(a.len(), 3, "{a:#?}");
    assert_eq!(a[0].journey, "online_checkout");
    assert_eq!(a[0].evidence, vec!["p0", "p1", "p2", "p3"]);
    assert_eq!(
        (a[1].journey.as_str(), a[1].touchpoint.as_str()),
        ("", "home")
    );
    assert_eq!(a[2].evidence[0], "j0");
}

#[test]
fn clicks_slower_than_the_window_are_not_rage() {
    let mut r = Run::new(CONFIG);
    r.feed((0..6).map(|i| {
        ev(
            &format!("c{i}"),
            f64::from(i) * 1.1,
            "a",
            Channel::Web,
            "home",
            Action::Click,
        )
    }))
    .drain();
    assert!(r.of(AlertType::RageClick).is_empty());
}

#[test]
fn login_links_anonymous_browsing_to_the_customer() {
    let mut r = Run::new(CONFIG);
    let mut evs = checkout("anon", 0.0, 2);
    let mut login = web("login", 15.0, "anon", "checkout.shipping");
    login.customer_id = Some("c-42".into());
    login.tier = Some("gold".into());
    evs.push(login);
    let mut later = web("pay", 30.0, "ignored", "checkout.payment");
    later.anonymous_id = None;
    later.customer_id = Some("c-42".into());
    evs.push(later);
    r.feed(evs).drain();
    let d = r.of(AlertType::DropOff);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].profile_id, "c-42");
    assert_eq!(d[0].customer_id, "c-42");
    assert_eq!(d[0].step, "checkout.payment");
    assert_eq!(d[0].tier, "gold");
    assert_eq!(d[0].factors.tier_multiplier, 1.5);
    assert_eq!(r.engine.stats().identity_merges, 0, "one profile all along");
    assert_eq!(r.engine.profile_count(), 1);
}

#[test]
fn linking_two_profiles_merges_their_journeys_into_one() {
    let mut r = Run::new(CONFIG);
    // Same person on two devices, each with an open checkout.
    let mut evs = checkout("web-a", 0.0, 2);
    let mut app = checkout("app-b", 5.0, 3);
    for e in &mut app {
        e.channel = Channel::MobileApp;
    }
    evs.extend(app);
    // Logging in on both devices links them through the customer id.
    for (i, who) in ["web-a", "app-b"].iter().enumerate() {
        let mut e = ev(
            &format!("login{i}"),
            40.0 + i as f64,
            who,
            Channel::Web,
            "account.login",
            Action::Identify,
        );
        e.customer_id = Some("c-1".into());
        evs.push(e);
    }
    r.feed(evs).drain();
    assert_eq!(r.engine.stats().identity_merges, 1);
    let d = r.of(AlertType::DropOff);
    assert_eq!(d.len(), 1, "at most one drop-off for the merged instance");
    assert_eq!(d[0].step, "checkout.shipping", "furthest step kept");
    assert_eq!(d[0].profile_id, "c-1");
    let j = r.journeys();
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].started_at, T0, "earliest start");
    assert_eq!(j[0].channels, vec![Channel::Web, Channel::MobileApp]);
    assert_eq!(
        j[0].steps[0].entries, 2,
        "cart.view entered once on each device"
    );
}

#[test]
fn guardrails_refuse_placeholder_ids_caps_and_customer_conflicts() {
    let config = format!("{CONFIG}\n[identity]\nmax_identifiers = 2\n");
    let mut r = Run::new(&config);
    // "unknown" never links: these are two different people.
    let mut a = web("a", 0.0, "unknown", "home");
    a.customer_id = Some("c-1".into());
    let mut b = web("b", 1.0, "unknown", "home");
    b.customer_id = Some("c-2".into());
    // A device shared by two customers: never merges them.
    let mut c = web("c", 2.0, "x", "home");
    c.identities = smallvec::smallvec![("device_id".into(), "tablet".into())];
    c.anonymous_id = None;
    c.customer_id = Some("c-1".into());
    let mut d = web("d", 3.0, "x", "home");
    d.identities = smallvec::smallvec![("device_id".into(), "tablet".into())];
    d.anonymous_id = None;
    d.customer_id = Some("c-2".into());
    // Past the cap of 2 identifiers.
    let mut e = web("e", 4.0, "anon-3", "home");
    e.customer_id = Some("c-1".into());
    // Only placeholders: cannot be attributed.
    let mut f = web("f", 5.0, "null", "home");
    f.identities = smallvec::smallvec![("device_id".into(), "0".into())];
    let mut out = vec![];
    for x in [a, b, c, d, e] {
        assert_eq!(r.engine.ingest(x, &mut out), Ingest::Accepted);
    }
    assert_eq!(r.engine.ingest(f, &mut out), Ingest::Unlinkable);
    r.drain();
    let s = r.engine.stats();
    assert_eq!(r.engine.profile_count(), 2);
    assert_eq!(s.guardrail_never_link, 2);
    assert_eq!(s.guardrail_customer_conflict, 1);
    assert_eq!(s.guardrail_identifier_cap, 1);
    assert_eq!(s.unlinkable, 1);
}

#[test]
fn late_and_duplicate_events_are_counted_and_ignored() {
    let mut r = Run::new(CONFIG);
    let mut out = vec![];
    assert_eq!(
        r.engine.ingest(web("a", 100.0, "a", "home"), &mut out),
        Ingest::Accepted
    );
    assert_eq!(
        r.engine.ingest(web("b", 96.0, "a", "home"), &mut out),
        Ingest::Accepted,
        "within 5s lateness"
    );
    assert_eq!(
        r.engine.ingest(web("c", 94.9, "a", "home"), &mut out),
        Ingest::Late
    );
    // A copy of a buffered event is buffered too, and dropped when the watermark reaches it.
    assert_eq!(
        r.engine.ingest(web("a", 100.0, "a", "home"), &mut out),
        Ingest::Accepted
    );
    assert_eq!(r.engine.buffered(), 3);
    r.engine.flush(&mut out);
    assert_eq!(r.engine.buffered(), 0);
    let s = r.engine.stats();
    assert_eq!((s.late, s.duplicates, s.accepted), (1, 1, 2));
    // Once applied, a copy is behind the watermark: late.
    assert_eq!(
        r.engine.ingest(web("a", 100.0, "a", "home"), &mut out),
        Ingest::Late
    );
}

/// Copies of one event id with different event times: the earliest is applied, whichever
/// arrived first, so that the outcome does not depend on the order of arrival.
#[test]
fn of_copies_of_an_event_the_earliest_is_applied_whatever_their_order() {
    for first in [100.0, 98.0] {
        let mut r = Run::new(CONFIG);
        r.feed([
            web("a", first, "a", "cart.view"),
            web("a", 198.0 - first, "a", "cart.view"),
        ])
        .drain();
        assert_eq!(r.engine.stats().duplicates, 1);
        let started: Vec<_> = r.journeys().iter().map(|j| j.started_at).collect();
        assert_eq!(
            started,
            [T0 + 98_000],
            "the copy at 98 s opens the checkout, {first} s first"
        );
    }
}

#[test]
fn idle_profiles_are_forgotten_after_their_ttl() {
    let config = format!("{CONFIG}\n[engine]\nprofile_ttl = \"7d\"\n")
        .replace("[engine]\nallowed_lateness = \"5s\"\n", "");
    let mut r = Run::new(&config);
    r.feed([
        web("a", 0.0, "a", "home"),
        web("b", 8.0 * 86_400.0, "b", "home"),
        web("c", 8.0 * 86_400.0 + 3601.0, "b", "home"),
    ]);
    r.engine.flush(&mut r.out);
    assert_eq!(r.engine.stats().profiles_expired, 1);
    assert_eq!(r.engine.profile_count(), 1);
}

#[test]
fn the_idle_sweep_looks_at_a_few_slots_per_event_not_all_at_once() {
    let config = format!("{CONFIG}\n[engine]\nprofile_ttl = \"7d\"\n")
        .replace("[engine]\nallowed_lateness = \"5s\"\n", "");
    let mut r = Run::new(&config);
    r.feed((0..100).map(|i| web(&format!("e{i}"), f64::from(i), &format!("c{i}"), "home")));
    // Eight days later: a sweep starts, one SWEEP_STEP of slots per applied event.
    let later = 8.0 * 86_400.0;
    r.feed([web("x0", later, "x", "home")]);
    r.engine.flush(&mut r.out);
    assert_eq!(r.engine.stats().profiles_expired, SWEEP_STEP as u64);
    r.feed((1..4).map(|i| web(&format!("x{i}"), later + f64::from(i), "x", "home")));
    r.engine.flush(&mut r.out);
    assert_eq!(r.engine.stats().profiles_expired, 100);
    assert_eq!(r.engine.profile_count(), 1);
}

#[test]
fn out_of_order_within_lateness_gives_the_same_outputs() {
    let mut evs: Vec<Event> = checkout("a", 0.0, 4)
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.occurred_at = T0 + i as Millis * 2000;
            e
        })
        .collect();
    evs.push(ev(
        "call",
        7.0,
        "a",
        Channel::ContactCenter,
        "support.contact",
        Action::Contact,
    ));
    let mut ordered = Run::new(CONFIG);
    ordered.feed(evs.clone()).drain();
    evs.swap(0, 1);
    evs.swap(3, 4);
    let mut shuffled = Run::new(CONFIG);
    shuffled.feed(evs).drain();
    assert_eq!(ordered.out, shuffled.out);
    assert!(!ordered.out.is_empty());
}

#[test]
fn state_structs_stay_small() {
    // Memory per open journey is a product promise (BENCHMARKS.md): watch the inline sizes.
    eprintln!(
        "Profile {} Instance {} Timer {} Event {}",
        std::mem::size_of::<Profile>(),
        std::mem::size_of::<Instance>(),
        std::mem::size_of::<Timer>(),
        std::mem::size_of::<Event>()
    );
    // Steps are inline up to five (no allocation of their own): 144 bytes + a 40-byte box before.
    assert!(std::mem::size_of::<Instance>() <= 176);
    // Three identifier keys inline, open instances behind a 16-byte boxed slice.
    assert!(std::mem::size_of::<Option<Profile>>() <= 96);
}

#[test]
fn at_max_profiles_the_longest_idle_profile_is_evicted_and_its_journey_expires() {
    let config = CONFIG.replace("[engine]\n", "[engine]\nmax_profiles = 3\n");
    let mut r = Run::new(&config);
    r.feed([
        web("a1", 0.0, "a", "cart.view"),
        web("b1", 10.0, "b", "cart.view"),
        web("c1", 20.0, "c", "cart.view"),
        web("a2", 30.0, "a", "checkout.start"), // a is now more recent than b
        web("d1", 40.0, "d", "cart.view"),      // a fourth profile: b (idle longest) goes
        web("z", 100.0, "z", "home"),
    ]);
    assert_eq!(r.engine.stats().profiles_evicted, 1);
    assert_eq!(r.engine.profile_count(), 3);
    let j = r.journeys();
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].outcome, JourneyOutcome::Expired);
    assert_eq!(j[0].profile_id, "b");
    assert_eq!(j[0].ended_at, T0 + 40_000);
    // b's drop-off timer finds nothing; the others still drop off.
    r.drain();
    let drops: Vec<_> = r
        .of(AlertType::DropOff)
        .iter()
        .map(|a| a.profile_id.to_string())
        .collect();
    assert!(!drops.contains(&"b".to_string()), "{drops:?}");
    assert_eq!(
        r.engine.stats().profiles_evicted,
        2,
        "z's arrival evicted one more"
    );
    // b comes back: a new profile, nothing of the old state.
    let mut r2 = Run::new(&config);
    r2.feed([web("b1", 0.0, "b", "cart.view")]);
    assert_eq!(r2.engine.stats().profiles_evicted, 0);
}

#[test]
fn in_a_large_shard_eviction_samples_and_takes_the_longest_idle_of_the_sample() {
    // Above EVICTION_SAMPLE profiles the choice is from a sample (no pass over the shard):
    // 1,500 customers arrive one after another into a shard capped at 1,000; exact LRU would
    // evict c0..c499. Every profile evicted must still be among the oldest: none of the
    // newest quarter of the first thousand, and never one that arrived after the cap was hit.
    let config = CONFIG.replace("[engine]\n", "[engine]\nmax_profiles = 1000\n");
    let mut r = Run::new(&config);
    r.feed((0..1500).map(|i| {
        let who = format!("c{i}");
        web(&format!("e{i}"), f64::from(i) * 0.01, &who, "cart.view")
    }));
    r.engine.flush(&mut r.out);
    assert_eq!(r.engine.profile_count(), 1000);
    assert_eq!(r.engine.stats().profiles_evicted, 500);
    let evicted: Vec<u32> = r
        .journeys()
        .iter()
        .filter(|j| j.outcome == JourneyOutcome::Expired)
        .map(|j| j.profile_id[1..].parse().expect("c<n>"))
        .collect();
    assert_eq!(evicted.len(), 500);
    let newest = evicted.iter().max().expect("evictions");
    assert!(*newest < 750, "evicted c{newest}: {evicted:?}");
}

#[test]
fn uuid_ids_come_out_exactly_as_they_went_in() {
    // Lowercase UUIDs are kept packed (crate::id); an upper-case one as text. Both must read
    // back unchanged in every output that carries them.
    for customer in [
        "3f2b8c1e-7d1c-4b5e-9a2f-0c4d5e6f7a8b",
        "3F2B8C1E-7D1C-4B5E-9A2F-0C4D5E6F7A8B",
    ] {
        let mut r = Run::new(CONFIG);
        let evs: Vec<Event> = checkout("anon", 0.0, 3)
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.event_id = format!("0000000{i}-aaaa-4bbb-8ccc-dddddddddddd").into();
                e.customer_id = Some(customer.into());
                e
            })
            .collect();
        r.feed(evs).drain();
        let d = r.of(AlertType::DropOff);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].profile_id, customer);
        assert_eq!(d[0].customer_id, customer);
        assert_eq!(
            d[0].evidence,
            (0..3)
                .map(|i| format!("0000000{i}-aaaa-4bbb-8ccc-dddddddddddd"))
                .collect::<Vec<_>>()
        );
        let j = r.journeys();
        assert_eq!(j.len(), 1);
        assert_eq!(j[0].profile_id, customer);
        assert_eq!(j[0].customer_id, customer);
    }
}

#[test]
fn the_census_counts_what_the_state_holds() {
    // One open checkout per customer, two keys and three event ids each, nothing closed.
    let c = crate::sim::open_checkouts(300, false).census();
    assert_eq!(
        (c.profiles, c.open, c.closed, c.extras, c.histories),
        (300, 300, 0, 0, 0)
    );
    assert_eq!((c.index_keys, c.dedup_ids), (600, 900));
    assert!(c.profile_slots >= 300);
}

#[test]
fn profile_slots_double_then_take_room_for_max_profiles_in_one_step() {
    let max = DOUBLING_SLOTS * 3;
    let mut slots: Vec<Option<Profile>> = Vec::new();
    let push = |slots: &mut Vec<Option<Profile>>| push_slot(slots, None, max);
    while slots.len() <= DOUBLING_SLOTS {
        push(&mut slots);
    }
    assert_eq!(slots.capacity(), max + 1);
    // Never moved again up to max_profiles and the one new profile over it.
    let at = slots.as_ptr();
    while slots.len() <= max {
        push(&mut slots);
    }
    assert_eq!(slots.as_ptr(), at);
    // A restored shard gets the same room.
    assert_eq!(slot_room(DOUBLING_SLOTS + 1, max), max + 1);
    assert_eq!(slot_room(100, max), 100);
    // Room the system cannot give (here: more than the address space): the slots go on
    // doubling.
    let before = slots.capacity();
    let len = slots.len();
    reserve_slots(&mut slots, len, usize::MAX);
    assert_eq!(slots.capacity(), before);
    push(&mut slots);
    assert!(slots.capacity() > before);
}

#[test]
fn a_shard_at_max_profiles_keeps_its_profile_slots_where_they_are() {
    // A new profile takes a slot before the longest idle one is evicted: at the cap the
    // shard briefly holds max_profiles + 1, which must not double the slots (a copy of
    // every profile, twice the room) the first time it happens.
    let max = DOUBLING_SLOTS + 8;
    let config = CONFIG.replace("[engine]\n", &format!("[engine]\nmax_profiles = {max}\n"));
    let mut r = Run::new(&config);
    let customer = |i: usize| {
        web(
            &format!("e{i}"),
            i as f64 * 0.01,
            &format!("c{i}"),
            "cart.view",
        )
    };
    r.feed((0..max).map(customer));
    r.engine.flush(&mut r.out);
    let (at, room) = (r.engine.profiles.as_ptr(), r.engine.profiles.capacity());
    assert_eq!(room, max + 1);
    r.feed((max..max + 100).map(customer));
    r.engine.flush(&mut r.out);
    assert_eq!(r.engine.stats().profiles_evicted, 100);
    assert_eq!(r.engine.profiles.as_ptr(), at);
    assert_eq!(r.engine.profiles.capacity(), room);
}

/// One client flooding a journey: 20,000 errors on a step and 20,000 survey answers, all
/// inside the detectors' windows. Its profile's changelog record and its journey summary
/// stay small: a record over the producer's `message.max.bytes` (1,000,000 bytes by
/// default) could never be written, and its partition would never commit again.
#[test]
fn a_flood_from_one_client_keeps_its_state_and_summary_small() {
    let mut r = Run::new(CONFIG);
    r.engine.track_changes();
    let mut evs = vec![web("open", 0.0, "bot", "cart.view")];
    for i in 0..20_000 {
        let t = 1.0 + f64::from(i) * 0.01; // 200 s: inside repeated_error's 10 minutes
        let err = ev(
            &format!("err-{i}"),
            t,
            "bot",
            Channel::Web,
            "cart.view",
            Action::Error,
        );
        let mut s = ev(
            &format!("nps-{i}"),
            t + 0.005,
            "bot",
            Channel::Web,
            "survey.nps",
            Action::Survey,
        );
        s.survey = Some(Survey {
            kind: SurveyKind::Nps,
            score: 9,
        });
        evs.extend([err, s]);
    }
    r.feed(evs).at(300.0);
    let records = r.engine.checkpoint(snapshot::InputPosition::default());
    // The dedup window's records are written in batches of their own size (~360 KB at most).
    let profile = records
        .iter()
        .filter(|r| matches!(r.key, snapshot::StateKey::Profile(_)))
        .map(|r| r.value.as_ref().map_or(0, Vec::len))
        .max();
    assert!(
        profile < Some(16 * 1024),
        "profile record: {profile:?} bytes"
    );
    r.drain();
    let j = r.journeys();
    let summary = serde_json::to_vec(j.last().expect("a summary"))
        .unwrap()
        .len();
    assert!(summary < 16 * 1024, "summary: {summary} bytes");
    assert_eq!(r.of(AlertType::RepeatedError).len(), 1);
}
