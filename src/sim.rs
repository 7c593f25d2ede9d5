//! A deterministic generator of realistic omnichannel traffic for the example journeys
//! (`examples/cxstream.toml`): anonymous browsing then login, app and web sessions, contact
//! centre calls and chats, surveys and purchases, with a share of drop-offs, error loops,
//! escalations, rage clicks, slow steps and repeat contacts.
//!
//! Same seed, same events. Events come out in event-time order; `disorder` shuffles them
//! within a bound to exercise the reorder buffer. Pure: no clock, no I/O.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use compact_str::{format_compact, CompactString};

use crate::event::{Action, Channel, Event, Millis, Outcome, Survey, SurveyKind};

/// Generator settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Number of distinct customers.
    pub customers: u64,
    /// Event time of the first event.
    pub start: Millis,
    /// Mean event-time gap between a customer's sessions.
    pub session_gap: Millis,
    /// Max event-time displacement of events (0 = strictly ordered).
    pub disorder: Millis,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            customers: 1000,
            start: 1_795_000_000_000,
            session_gap: 3_600_000,
            disorder: 0,
        }
    }
}

/// One scripted event, `after` ms after the previous one in its session.
#[derive(Debug, Clone)]
struct Step {
    after: Millis,
    channel: Channel,
    touchpoint: &'static str,
    action: Action,
    failure: bool,
    survey: Option<Survey>,
    element: Option<&'static str>,
    value: Option<f64>,
    /// The customer is identified (logged in) from this step on.
    login: bool,
}

fn step(after_s: f64, channel: Channel, touchpoint: &'static str, action: Action) -> Step {
    Step {
        after: (after_s * 1000.0) as Millis,
        channel,
        touchpoint,
        action,
        failure: false,
        survey: None,
        element: None,
        value: None,
        login: false,
    }
}

/// A customer session being played.
struct Session {
    customer: u64,
    session: u64,
    steps: std::vec::IntoIter<Step>,
    identified: bool,
    digital: Channel,
}

/// The generator. An iterator of events in event-time order (or within `disorder` of it).
pub struct Simulator {
    cfg: SimConfig,
    rng: fastrand::Rng,
    agenda: BinaryHeap<Reverse<(Millis, u64)>>,
    sessions: Vec<Option<Session>>,
    counter: u64,
    held: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    held_events: Vec<Option<Event>>,
    free_held: Vec<usize>,
    held_seq: u64,
}

const CHECKOUT: [&str; 5] = [
    "cart.view",
    "checkout.start",
    "checkout.shipping",
    "checkout.payment",
    "order.confirmed",
];

impl Simulator {
    pub fn new(cfg: SimConfig) -> Simulator {
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let mut agenda = BinaryHeap::new();
        let spread = cfg.session_gap.max(1);
        for c in 0..cfg.customers {
            agenda.push(Reverse((cfg.start + rng.i64(0..spread), c)));
        }
        Simulator {
            sessions: (0..cfg.customers).map(|_| None).collect(),
            cfg,
            rng,
            agenda,
            counter: 0,
            held: BinaryHeap::new(),
            held_events: Vec::new(),
            free_held: Vec::new(),
            held_seq: 0,
        }
    }

    fn digital(&mut self) -> Channel {
        if self.rng.bool() {
            Channel::Web
        } else {
            Channel::MobileApp
        }
    }

    /// Writes a session script for one customer.
    fn script(&mut self) -> (Vec<Step>, Channel) {
        let d = self.digital();
        let r = &mut self.rng;
        let mut s = vec![step(0.0, d, "home", Action::View)];
        let browse = |s: &mut Vec<Step>, r: &mut fastrand::Rng| {
            for _ in 0..r.usize(0..3) {
                s.push(step(r.f64() * 40.0 + 5.0, d, "product.view", Action::View));
            }
        };
        browse(&mut s, r);
        let mut login = step(r.f64() * 20.0 + 2.0, d, "account.login", Action::Identify);
        login.login = true;
        let roll = r.u32(0..100);
        let checkout_upto = |r: &mut fastrand::Rng, s: &mut Vec<Step>, upto: usize| {
            for (i, tp) in CHECKOUT[..upto].iter().enumerate() {
                let mut st = step(
                    r.f64() * 50.0 + 10.0,
                    d,
                    tp,
                    if i == 4 {
                        Action::Purchase
                    } else {
                        Action::View
                    },
                );
                if i >= 3 {
                    st.value = Some((r.f64() * 300.0 * 100.0).round() / 100.0 + 5.0);
                }
                s.push(st);
            }
        };
        match roll {
            // Browse, log in, buy; some answer a survey afterwards.
            0..=34 => {
                s.push(login);
                checkout_upto(r, &mut s, 5);
                if r.u32(0..100) < 30 {
                    let mut q = step(
                        r.f64() * 3600.0 + 600.0,
                        Channel::Email,
                        "survey.nps",
                        Action::Survey,
                    );
                    q.survey = Some(Survey {
                        kind: SurveyKind::Nps,
                        score: r.i32(5..11),
                    });
                    s.push(q);
                }
            }
            // Drop-off somewhere in checkout (some still anonymous).
            35..=49 => {
                if r.bool() {
                    s.push(login);
                }
                let upto = r.usize(1..5);
                checkout_upto(r, &mut s, upto);
            }
            // Payment errors, then a call to the contact centre (escalation), then a bad survey.
            50..=57 => {
                s.push(login);
                checkout_upto(r, &mut s, 4);
                for _ in 0..r.usize(2..5) {
                    let mut e = step(r.f64() * 20.0 + 5.0, d, "checkout.payment", Action::Submit);
                    e.failure = true;
                    s.push(e);
                }
                s.push(step(
                    r.f64() * 600.0 + 60.0,
                    Channel::ContactCenter,
                    "support.contact",
                    Action::Contact,
                ));
                if r.bool() {
                    s.push(step(
                        r.f64() * 300.0 + 60.0,
                        Channel::ContactCenter,
                        "support.resolved",
                        Action::Other,
                    ));
                }
                let mut q = step(
                    r.f64() * 1800.0 + 300.0,
                    Channel::Sms,
                    "survey.csat",
                    Action::Survey,
                );
                q.survey = Some(Survey {
                    kind: SurveyKind::Csat,
                    score: r.i32(1..4),
                });
                s.push(q);
            }
            // Rage clicks on the pay button, then buy or leave.
            58..=62 => {
                s.push(login);
                checkout_upto(r, &mut s, 4);
                for _ in 0..r.usize(4..8) {
                    let mut c = step(r.f64() * 0.6 + 0.1, d, "checkout.payment", Action::Click);
                    c.element = Some("pay-button");
                    s.push(c);
                }
                if r.bool() {
                    checkout_upto(r, &mut s, 5);
                }
            }
            // Slow payment: over the 5 minute SLA, then completes.
            63..=67 => {
                s.push(login);
                checkout_upto(r, &mut s, 4);
                s.push(step(
                    360.0 + r.f64() * 300.0,
                    d,
                    "order.confirmed",
                    Action::Purchase,
                ));
            }
            // Looping between shipping and payment.
            68..=72 => {
                s.push(login);
                checkout_upto(r, &mut s, 3);
                for _ in 0..3 {
                    s.push(step(
                        r.f64() * 30.0 + 5.0,
                        d,
                        "checkout.payment",
                        Action::View,
                    ));
                    s.push(step(
                        r.f64() * 30.0 + 5.0,
                        d,
                        "checkout.shipping",
                        Action::View,
                    ));
                }
            }
            // Delivery tracking; some never see "delivered" in time.
            73..=82 => {
                s.push(login);
                s.push(step(
                    r.f64() * 60.0,
                    Channel::Email,
                    "order.shipped",
                    Action::View,
                ));
                for _ in 0..r.usize(1..4) {
                    s.push(step(
                        r.f64() * 7200.0 + 600.0,
                        Channel::MobileApp,
                        "delivery.tracking",
                        Action::View,
                    ));
                }
                if r.u32(0..100) < 80 {
                    s.push(step(
                        r.f64() * 3600.0,
                        Channel::Sms,
                        "order.delivered",
                        Action::View,
                    ));
                } else {
                    s.push(step(
                        r.f64() * 600.0,
                        Channel::Chat,
                        "support.contact",
                        Action::Contact,
                    ));
                }
            }
            // Support: help pages, chatbot, chat or call; some call again and again.
            83..=94 => {
                s.push(login);
                s.push(step(r.f64() * 30.0, d, "help.article", Action::View));
                if r.bool() {
                    s.push(step(
                        r.f64() * 60.0,
                        Channel::Chatbot,
                        "help.chatbot",
                        Action::View,
                    ));
                }
                let contacts = if r.u32(0..100) < 25 { 3 } else { 1 };
                for _ in 0..contacts {
                    let ch = if r.bool() {
                        Channel::Chat
                    } else {
                        Channel::ContactCenter
                    };
                    s.push(step(
                        r.f64() * 1200.0 + 60.0,
                        ch,
                        "support.contact",
                        Action::Contact,
                    ));
                }
                if r.u32(0..100) < 70 {
                    s.push(step(
                        r.f64() * 600.0 + 30.0,
                        Channel::ContactCenter,
                        "support.resolved",
                        Action::Other,
                    ));
                }
                let mut q = step(
                    r.f64() * 600.0 + 60.0,
                    Channel::Email,
                    "survey.ces",
                    Action::Survey,
                );
                q.survey = Some(Survey {
                    kind: SurveyKind::Ces,
                    score: r.i32(1..8),
                });
                s.push(q);
            }
            // Errors on the login page, outside any journey.
            _ => {
                for _ in 0..r.usize(2..5) {
                    let mut e = step(r.f64() * 10.0 + 2.0, d, "account.login", Action::Error);
                    e.failure = true;
                    s.push(e);
                }
            }
        }
        (s, d)
    }

    fn make_event(&mut self, sess_idx: usize, st: &Step, t: Millis) -> Event {
        self.counter += 1;
        let sess = self.sessions[sess_idx].as_mut().expect("live session");
        if st.login {
            sess.identified = true;
        }
        let c = sess.customer;
        let identified = sess.identified;
        let device = format_compact!("d-{c:x}-{}", (sess.session % 2));
        let digital = st.channel == sess.digital;
        Event {
            event_id: format_compact!("e-{:x}-{:x}", self.cfg.seed, self.counter),
            occurred_at: t,
            customer_id: (identified || !digital).then(|| format_compact!("c-{c}")),
            anonymous_id: digital.then(|| format_compact!("a-{c:x}-{:x}", sess.session)),
            identities: if digital {
                smallvec::smallvec![(CompactString::const_new("device_id"), device)]
            } else {
                smallvec::SmallVec::new()
            },
            channel: st.channel,
            touchpoint: CompactString::const_new(st.touchpoint),
            action: st.action,
            outcome: st.failure.then_some(Outcome::Failure),
            error_code: st
                .failure
                .then(|| CompactString::const_new("card_declined")),
            survey: st.survey,
            value: st.value,
            segment: Some(CompactString::const_new(if c % 5 == 0 {
                "business"
            } else {
                "consumer"
            })),
            tier: Some(CompactString::const_new(match c % 20 {
                0 => "platinum",
                1..=3 => "gold",
                4..=8 => "silver",
                _ => "standard",
            })),
            element: st.element.map(CompactString::const_new),
            unknown_channel: false,
            unknown_action: false,
        }
    }

    /// The next event in strict event-time order.
    fn next_ordered(&mut self) -> Option<Event> {
        loop {
            let Reverse((t, c)) = self.agenda.pop()?;
            let idx = c as usize;
            if self.sessions[idx].is_none() {
                let (steps, digital) = self.script();
                let session = self.rng.u64(..);
                self.sessions[idx] = Some(Session {
                    customer: c,
                    session,
                    steps: steps.into_iter(),
                    identified: false,
                    digital,
                });
            }
            let next = self.sessions[idx].as_mut().and_then(|s| s.steps.next());
            match next {
                Some(st) => {
                    let e = self.make_event(idx, &st, t);
                    let after = self.sessions[idx]
                        .as_ref()
                        .and_then(|s| s.steps.as_slice().first().map(|n| n.after));
                    match after {
                        Some(a) => self.agenda.push(Reverse((t + a.max(1), c))),
                        None => {
                            self.sessions[idx] = None;
                            let gap = self.rng.i64(
                                self.cfg.session_gap / 2..=self.cfg.session_gap.max(1) * 3 / 2,
                            );
                            self.agenda.push(Reverse((t + gap.max(1), c)));
                        }
                    }
                    return Some(e);
                }
                None => {
                    self.sessions[idx] = None;
                    self.agenda
                        .push(Reverse((t + self.cfg.session_gap.max(1), c)));
                }
            }
        }
    }
}

impl Iterator for Simulator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.cfg.disorder == 0 {
            return self.next_ordered();
        }
        // Hold each event until the stream is `disorder` past its (jittered) release time.
        loop {
            let head = self.held.peek().map(|r| r.0 .0);
            let newest = self.agenda.peek().map(|r| r.0 .0);
            if let Some(h) = head {
                if newest.is_none_or(|n| n >= h) {
                    let Reverse((_, _, slot)) = self.held.pop()?;
                    self.free_held.push(slot);
                    return self.held_events[slot].take();
                }
            }
            let e = self.next_ordered()?;
            let release = e.occurred_at + self.rng.i64(0..=self.cfg.disorder);
            let slot = match self.free_held.pop() {
                Some(s) => {
                    self.held_events[s] = Some(e);
                    s
                }
                None => {
                    self.held_events.push(Some(e));
                    self.held_events.len() - 1
                }
            };
            self.held_seq += 1;
            self.held.push(Reverse((release, self.held_seq, slot)));
        }
    }
}

/// The partitioning key of a simulated event: its person (`c-N`), whichever identifiers the
/// event carries, as producers must key events so that one person's events share a partition.
pub fn person_key(e: &Event) -> CompactString {
    if let Some(c) = &e.customer_id {
        return c.clone();
    }
    // Anonymous and device ids embed the customer number in hex: `a-{c:x}-…`, `d-{c:x}-…`.
    let id = e
        .anonymous_id
        .as_deref()
        .or_else(|| e.identities.first().map(|(_, v)| v.as_str()))
        .unwrap_or_default();
    let hex = id
        .get(2..)
        .and_then(|r| r.split('-').next())
        .unwrap_or_default();
    match u64::from_str_radix(hex, 16) {
        Ok(c) => format_compact!("c-{c}"),
        Err(_) => CompactString::from(id),
    }
}

/// An engine on the example config holding `n` profiles, each with one open checkout: a
/// login, `cart.view` and `checkout.start` per customer, 10,000 events per second of event
/// time, or more above 1M customers so that they span at most 5 minutes (all within the dedup
/// window, none abandoned), with `engine.max_profiles` raised to `n` if below. The state the
/// memory and restore benchmarks measure; `tracked`: the engine records changes from the
/// start (as the service's shards do), so its checkpoint holds the dedup window too.
pub fn open_checkouts(n: u64, tracked: bool) -> crate::engine::Engine {
    open_checkouts_with(n, tracked, false)
}

/// [`open_checkouts`], with the event, customer and anonymous ids as 36-character UUIDs
/// when `uuid_ids` (as many producers send them) instead of short ids.
pub fn open_checkouts_with(n: u64, tracked: bool, uuid_ids: bool) -> crate::engine::Engine {
    let mut config = crate::config::Config::example();
    config.engine.max_profiles = config.engine.max_profiles.max(n as usize);
    let mut engine = crate::engine::Engine::from_config(&config);
    if tracked {
        engine.track_changes();
    }
    let mut out = Vec::new();
    let t0 = 1_800_000_000_000i64;
    let per_ms = (n / 100_000).max(10) as i64;
    let mut id = 0u64;
    for c in 0..n {
        for (tp, action) in [
            ("account.login", Action::Identify),
            ("cart.view", Action::View),
            ("checkout.start", Action::View),
        ] {
            id += 1;
            let event_id = if uuid_ids {
                format!("{id:08x}-5f3e-4c1a-9b2d-{c:012x}")
            } else {
                format!("e-{id:x}")
            };
            let mut e = Event::new(
                &event_id,
                t0 + (id as i64) / per_ms,
                Channel::Web,
                tp,
                action,
            );
            let (customer, anonymous) = if uuid_ids {
                (
                    format!("{c:08x}-1111-4c1a-9b2d-000000000000"),
                    format!("{c:08x}-2222-4c1a-9b2d-000000000000"),
                )
            } else {
                (format!("c-{c}"), format!("a-{c:x}-5f3e"))
            };
            e.customer_id = Some(customer.into());
            e.anonymous_id = Some(anonymous.into());
            e.segment = Some("consumer".into());
            e.tier = Some("gold".into());
            engine.ingest(e, &mut out);
        }
        out.clear();
    }
    engine.flush(&mut out);
    engine
}

/// The simulator [`warmed`] runs: `customers`, seed 42, 2 s of disorder.
pub fn warmed_config(customers: u64) -> SimConfig {
    SimConfig {
        seed: 42,
        customers,
        disorder: 2000,
        ..SimConfig::default()
    }
}

/// An engine on the example config that has seen 90% of `customers` (the simulator's last
/// customers start their first session late), and the simulator to continue from: the warm,
/// realistic state benchmarks and profiling start from. Outputs are discarded.
pub fn warmed(customers: u64) -> (crate::engine::Engine, Simulator) {
    let mut engine = crate::engine::Engine::from_config(&crate::config::Config::example());
    let mut sim = Simulator::new(warmed_config(customers));
    let mut out = Vec::new();
    while engine.profile_count() < customers as usize * 9 / 10 {
        for e in sim.by_ref().take(10_000) {
            engine.ingest(e, &mut out);
        }
        out.clear();
    }
    (engine, sim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_of_a_person_has_the_same_key() {
        let mut keys = std::collections::HashMap::new();
        for e in Simulator::new(SimConfig::default()).take(5_000) {
            let k = person_key(&e);
            if let Some(c) = &e.customer_id {
                assert_eq!(&k, c);
            }
            for id in e
                .anonymous_id
                .iter()
                .chain(e.identities.iter().map(|(_, v)| v))
            {
                assert_eq!(keys.entry(id.clone()).or_insert_with(|| k.clone()), &k);
            }
        }
        assert!(keys.len() > 100);
    }

    #[test]
    fn open_checkouts_hold_one_profile_and_one_open_checkout_per_customer_whatever_the_ids() {
        for uuid_ids in [false, true] {
            let e = open_checkouts_with(300, false, uuid_ids);
            assert_eq!(
                (e.profile_count(), e.open_journeys()),
                (300, 300),
                "{uuid_ids}"
            );
        }
    }

    #[test]
    fn same_seed_same_events_and_time_order() {
        let cfg = SimConfig {
            customers: 50,
            ..SimConfig::default()
        };
        let a: Vec<_> = Simulator::new(cfg.clone()).take(500).collect();
        let b: Vec<_> = Simulator::new(cfg).take(500).collect();
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].occurred_at <= w[1].occurred_at));
        let ids: std::collections::HashSet<_> = a.iter().map(|e| e.event_id.clone()).collect();
        assert_eq!(ids.len(), a.len(), "event ids are unique");
    }

    #[test]
    fn disorder_stays_within_its_bound() {
        let cfg = SimConfig {
            customers: 50,
            disorder: 2000,
            ..SimConfig::default()
        };
        let evs: Vec<_> = Simulator::new(cfg).take(2000).collect();
        let mut max = Millis::MIN;
        let mut displaced = 0;
        for e in &evs {
            assert!(
                e.occurred_at >= max.saturating_sub(2000),
                "displaced more than the bound"
            );
            if e.occurred_at < max {
                displaced += 1;
            }
            max = max.max(e.occurred_at);
        }
        assert!(displaced > 0, "some events are out of order");
    }
}
