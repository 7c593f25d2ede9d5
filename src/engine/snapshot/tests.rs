use super::*;
use crate::alert::Output;
use crate::config::Config;
use crate::engine::Ingest;
use crate::event::Event;
use crate::service::ledger::Ledger;
use crate::sim::{SimConfig, Simulator};
use compact_str::CompactString;

/// The simulator's events, plus every 25th a resent earlier event id with a current time: a
/// duplicate only the restored dedup window can recognise (its original was applied long ago).
fn events(seed: u64, n: usize) -> Vec<Event> {
    let mut v: Vec<Event> = Simulator::new(SimConfig {
        seed,
        customers: 40,
        session_gap: 600_000,
        disorder: 3000,
        ..SimConfig::default()
    })
    .take(n)
    .collect();
    for i in (100..v.len()).step_by(25).rev() {
        let mut copy = v[i - 30].clone();
        copy.occurred_at = v[i].occurred_at;
        v.insert(i + 1, copy);
    }
    v
}

fn sorted(outs: &[Output]) -> Vec<String> {
    let mut v: Vec<String> = outs.iter().map(|o| format!("{o:?}")).collect();
    v.sort();
    v
}

/// Plays `events` as the input partition, checkpointing every `every` offsets into a log, and
/// "crashes" after the offsets in `crashes`: the engine is dropped, one is restored from the
/// log, and input is read again from the restored position. Returns every output.
/// A checkpoint writes `step` profiles after each event until it is done (`usize::MAX`: all
/// at once), as the service's `at_least_once` shards do.
fn run(
    events: &[Event],
    every: usize,
    step: usize,
    crashes: &[usize],
    rules: &Rules,
) -> Vec<Output> {
    let mut engine = Engine::new(rules.clone());
    engine.track_changes();
    let mut ledger = Ledger::new();
    let mut log: Vec<StateRecord> = Vec::new();
    let mut out = Vec::new();
    // Outputs since the last finished checkpoint are lost with a crash (never committed);
    // those before the checkpoint under way are committed when it finishes.
    let mut committed = Vec::new();
    let mut covered = Vec::new();
    let mut offset = 0usize;
    let mut crashes = crashes.to_vec();
    while offset < events.len() {
        let e = events[offset].clone();
        let t = e.occurred_at;
        match engine.ingest(e, &mut out) {
            Ingest::Accepted => ledger.push(offset as i64, Some(t)),
            _ => ledger.push(offset as i64, None),
        }
        offset += 1;
        if engine.checkpoint_step(step, &mut log) {
            committed.append(&mut covered);
        }
        if offset % every == 0 {
            // As the service does: the oldest offset not yet applied.
            let position = InputPosition {
                resume_at: ledger.resume_at(offset as i64, engine.watermark()),
                replay_until: offset as i64,
                arrived_at: 0,
                writer: 0,
            };
            log.extend(engine.begin_checkpoint(position));
            committed.append(&mut covered); // the previous checkpoint is finished now
            covered.append(&mut out);
            if engine.checkpoint_step(step, &mut log) {
                committed.append(&mut covered);
            }
        }
        if crashes.first() == Some(&offset) {
            crashes.remove(0);
            out.clear();
            covered.clear();
            let (restored, report) = Restore::from_records(&log, rules.clone()).unwrap();
            let position = report.position.expect("a checkpoint was written");
            engine = restored;
            ledger = Ledger::new();
            offset = position.resume_at as usize;
        }
    }
    engine.drain(&mut out);
    committed.append(&mut covered);
    committed.append(&mut out);
    committed
}

fn rules() -> Rules {
    Rules::new(&Config::example())
}

#[test]
fn a_restored_engine_continues_exactly_as_the_uninterrupted_one() {
    let rules = rules();
    for seed in [1, 2, 3] {
        let input = events(seed, 4000);
        let mut plain = Engine::new(rules.clone());
        let mut out = Vec::new();
        for e in &input {
            plain.ingest(e.clone(), &mut out);
        }
        assert!(
            plain.stats().duplicates > 100,
            "the input has duplicates: {}",
            plain.stats().duplicates
        );
        let expected = sorted(&run(&input, 50, usize::MAX, &[], &rules));
        assert!(expected.len() > 100, "the input exercises the engine");
        let crashes = [137, 900, 901, 2470, 3999];
        let got = sorted(&run(&input, 50, usize::MAX, &crashes, &rules));
        assert_eq!(got.len(), expected.len(), "seed {seed}");
        assert_eq!(got, expected, "seed {seed}");
        // Checkpoints written a profile at a time, with crashes while they are under way.
        let lazy = sorted(&run(&input, 50, 1, &[], &rules));
        assert_eq!(lazy, expected, "seed {seed}, lazily");
        let crashes = [137, 903, 904, 2470, 3999];
        let got = sorted(&run(&input, 50, 1, &crashes, &rules));
        assert_eq!(got, expected, "seed {seed}, lazily, crashing");
    }
}

#[test]
fn an_unfinished_checkpoint_is_ignored_and_overwritten() {
    let rules = rules();
    let input = events(7, 600);
    let mut a = Engine::new(rules.clone());
    let mut out = Vec::new();
    for e in &input[..300] {
        a.ingest(e.clone(), &mut out);
    }
    let mut log = a.checkpoint(InputPosition {
        resume_at: 1,
        replay_until: 300,
        arrived_at: 0,
        writer: 0,
    });
    let profiles = a.profile_count();
    for e in &input[300..] {
        a.ingest(e.clone(), &mut out);
    }
    let mut partial = a.checkpoint(InputPosition {
        resume_at: 2,
        replay_until: 600,
        arrived_at: 0,
        writer: 0,
    });
    partial.pop(); // the meta record never made it
    assert!(!partial.is_empty());
    log.extend(partial);
    let (mut b, report) = Restore::from_records(&log, rules.clone()).unwrap();
    assert_eq!(
        report.position,
        Some(InputPosition {
            resume_at: 1,
            replay_until: 300,
            arrived_at: 0,
            writer: 0,
        })
    );
    assert!(report.ignored > 0);
    assert_eq!(b.profile_count(), profiles);
    // The next checkpoint rewrites every key the unfinished one touched.
    let next = b.checkpoint(InputPosition {
        resume_at: 1,
        replay_until: 300,
        arrived_at: 0,
        writer: 0,
    });
    let partial_keys: Vec<StateKey> = log
        .iter()
        .skip_while(|r| r.key != StateKey::Meta)
        .skip(1)
        .map(|r| r.key)
        .collect();
    for k in partial_keys {
        assert!(next.iter().any(|r| r.key == k), "{k:?} rewritten");
    }
    // Restored again from the log as it now stands, the engine behaves as the first restore.
    log.extend(next);
    let (mut c, _) = Restore::from_records(&log, rules).unwrap();
    let (mut out_b, mut out_c) = (Vec::new(), Vec::new());
    for e in &input[1..] {
        b.ingest(e.clone(), &mut out_b);
        c.ingest(e.clone(), &mut out_c);
    }
    b.drain(&mut out_b);
    c.drain(&mut out_c);
    assert!(!out_b.is_empty());
    assert_eq!(sorted(&out_b), sorted(&out_c));
}

/// A checkpoint written a profile at a time while events go on being applied holds the
/// very records of one written all at once when it began: profiles that change before their
/// turn are written as they were (copy on write). Evictions and sweeps free slots meanwhile.
#[test]
fn a_checkpoint_written_while_events_go_on_is_the_one_written_when_it_began() {
    let mut rules = rules();
    rules.max_profiles = 25;
    rules.profile_ttl = 60_000;
    for seed in [1, 2, 3] {
        let input = events(seed, 6000);
        let mut lazy = Engine::new(rules.clone());
        let mut eager = Engine::new(rules.clone());
        lazy.track_changes();
        eager.track_changes();
        let (mut out_lazy, mut out_eager) = (Vec::new(), Vec::new());
        let mut expected: Option<Vec<StateRecord>> = None;
        let mut got = Vec::new();
        let (mut finished, mut changed_meanwhile) = (0, 0);
        for (offset, e) in input.iter().enumerate() {
            lazy.ingest(e.clone(), &mut out_lazy);
            eager.ingest(e.clone(), &mut out_eager);
            // Slowly (a profile every fifth event), so that sweeps and evictions fall inside.
            let step = usize::from(offset % 5 == 0);
            if lazy.checkpoint_step(step, &mut got) {
                if let Some(want) = expected.take() {
                    let as_map = |r: &[StateRecord]| {
                        let m: std::collections::BTreeMap<StateKey, Option<Vec<u8>>> =
                            r.iter().map(|r| (r.key, r.value.clone())).collect();
                        assert_eq!(m.len(), r.len(), "a key written twice");
                        m
                    };
                    assert_eq!(as_map(&got), as_map(&want), "seed {seed} at {offset}");
                    assert_eq!(got.last().map(|r| r.key), Some(StateKey::Meta));
                    // How many of them the events since changed (so were written early).
                    changed_meanwhile += want
                        .iter()
                        .filter(|r| match r.key {
                            StateKey::Profile(slot) => {
                                let now = profile_record(
                                    &eager.profiles,
                                    slot,
                                    &eager.rules,
                                    &eager.symbols,
                                    &mut Vec::new(),
                                );
                                now.value != r.value
                            }
                            _ => false,
                        })
                        .count();
                    finished += 1;
                    got.clear();
                }
            }
            if offset % 200 == 199 && !lazy.checkpoint_under_way() {
                let position = InputPosition {
                    resume_at: offset as i64,
                    ..InputPosition::default()
                };
                expected = Some(eager.checkpoint(position));
                got = lazy.begin_checkpoint(position);
            }
        }
        assert_eq!(sorted(&out_lazy), sorted(&out_eager));
        assert!(
            finished > 20,
            "seed {seed}: {finished} checkpoints compared"
        );
        assert!(
            changed_meanwhile > 50,
            "seed {seed}: {changed_meanwhile} profiles changed while their checkpoint was under way"
        );
        let (evicted, expired) = (lazy.stats().profiles_evicted, lazy.stats().profiles_expired);
        assert!(
            evicted > 0 && expired > 0,
            "seed {seed}: {evicted} evicted, {expired} expired"
        );
    }
}

#[test]
fn checkpoints_are_incremental() {
    let rules = rules();
    let input = events(9, 2000);
    let mut a = Engine::new(rules);
    let mut out = Vec::new();
    for e in &input {
        a.ingest(e.clone(), &mut out);
    }
    let first = a.checkpoint(InputPosition::default());
    assert!(first.len() > a.profile_count(), "everything is new");
    let again = a.checkpoint(InputPosition::default());
    assert_eq!(again.len(), 1, "nothing changed: only the meta record");
    let one = input.last().unwrap().clone();
    let mut e = one.clone();
    e.event_id = "another".into();
    e.occurred_at = a.max_event_time();
    a.ingest(e, &mut out);
    a.flush(&mut out);
    let third = a.checkpoint(InputPosition::default());
    assert!(
        third.len() <= 4,
        "one profile, one dedup batch, the meta: {third:?}"
    );
}

#[test]
fn keys_round_trip_and_stay_within_their_topic() {
    for k in [StateKey::Meta, StateKey::Profile(7), StateKey::Dedup(12)] {
        assert_eq!(
            StateKey::parse("cx.events", &k.encode("cx.events")),
            Some(k)
        );
        assert_eq!(StateKey::parse("cx.other", &k.encode("cx.events")), None);
    }
    assert_eq!(StateKey::parse("t", b"t/x1"), None);
    assert_eq!(StateKey::parse("t", b"t/pnope"), None);
}

#[test]
fn the_dedup_window_is_written_in_bounded_records() {
    let mut a = crate::sim::open_checkouts(15_000, true); // 45,000 events applied
    let recs = a.checkpoint(InputPosition::default());
    let batches: Vec<&StateRecord> = recs
        .iter()
        .filter(|r| matches!(r.key, StateKey::Dedup(_)))
        .collect();
    assert_eq!(batches.len(), 3, "45,000 ids in batches of at most 20,000");
    assert!(batches
        .iter()
        .all(|r| r.value.as_ref().unwrap().len() < 500_000));
}

// ------------------------------------------------------------ the profile record's bytes

// The owned prost message of a profile, as checkpoints once built it: the oracle that
// `wire::profile` writes the same bytes as.

fn prost_stamp(key: u64, time: Millis, id: &CompactString) -> pb::Stamp {
    pb::Stamp {
        key,
        time,
        event_id: id.to_string(),
    }
}

fn prost_profile(
    p: &Profile,
    rules: &Rules,
    symbols: &crate::identity::Symbols,
) -> pb::ProfileState {
    let mut s = pb::ProfileState {
        id: p.id.to_string(),
        has_customer: p.has_customer,
        segment: symbols.name(p.segment).to_string(),
        tier: symbols.name(p.tier).to_string(),
        last_seen: p.last_seen,
        keys: p.keys.to_vec(),
        open: p.open.iter().map(|i| prost_instance(i, rules)).collect(),
        ..Default::default()
    };
    if let Some(e) = &p.extra {
        s.closed = e
            .closed
            .iter()
            .map(|c| pb::ClosedState {
                inst: Some(prost_instance(&c.inst, rules)),
                outcome: c.outcome as u32,
                ended: c.ended,
                revision: c.revision,
            })
            .collect();
    }
    if let Some(e) = p.extra.as_ref().and_then(|e| e.history.as_ref()) {
        s.contacts = e
            .contacts
            .iter()
            .map(|(t, id)| prost_stamp(0, *t, id))
            .collect();
        s.clicks = e
            .clicks
            .iter()
            .map(|(k, t, id)| prost_stamp(*k, *t, id))
            .collect();
        s.loose_errors = e
            .loose_errors
            .iter()
            .map(|(k, t, id)| prost_stamp(*k, *t, id))
            .collect();
        s.cooldowns = e
            .cooldowns
            .iter()
            .map(|(k, until)| pb::Stamp {
                key: *k,
                time: *until,
                event_id: String::new(),
            })
            .collect();
    }
    s
}

fn prost_instance(i: &Instance, rules: &Rules) -> pb::InstanceState {
    let mut s = pb::InstanceState {
        id: i.id,
        journey: rules.catalog.journeys[usize::from(i.journey)]
            .name
            .to_string(),
        current: u32::from(i.current),
        furthest: u32::from(i.furthest),
        channels: u32::from(i.channels.0),
        fired: u32::from(i.fired),
        started: i.started,
        last: i.last,
        step_first: i.steps.iter().map(|s| s.first).collect(),
        step_entries: i.steps.iter().map(|s| s.entries).collect(),
        value: (!i.value.is_nan()).then_some(i.value),
        ..Default::default()
    };
    for (step, id) in i.recent.iter() {
        s.recent_steps.push(step);
        s.recent_ids.push(id.to_string());
    }
    if let Some(e) = &i.extra {
        s.errors = e
            .errors
            .iter()
            .map(|(t, id)| prost_stamp(0, *t, id))
            .collect();
        s.surveys = e
            .surveys
            .iter()
            .map(|(v, id)| pb::Survey {
                kind: v.kind as u32,
                score: v.score,
                event_id: id.to_string(),
            })
            .collect();
    }
    s
}

#[test]
fn profile_records_are_the_bytes_prost_writes() {
    let rules = rules();
    let mut engine = Engine::new(rules.clone());
    let mut out = Vec::new();
    for seed in [1, 2, 3] {
        for e in events(seed, 4000) {
            engine.ingest(e, &mut out);
        }
    }
    // Every part of the record is written at least once: each is counted where present.
    let mut present = [0usize; 9];
    for p in engine.profiles.iter().flatten() {
        let mut buf = Vec::new();
        wire::profile(&mut buf, p, &engine.rules, &engine.symbols);
        let expected = prost_profile(p, &engine.rules, &engine.symbols);
        assert_eq!(buf, expected.encode_to_vec(), "{p:?}");
        let instances = expected
            .open
            .iter()
            .chain(expected.closed.iter().filter_map(|c| c.inst.as_ref()));
        for (k, n) in [
            !expected.segment.is_empty(),
            !expected.open.is_empty(),
            !expected.closed.is_empty(),
            !expected.contacts.is_empty(),
            !expected.clicks.is_empty(),
            !expected.loose_errors.is_empty(),
            !expected.cooldowns.is_empty(),
        ]
        .into_iter()
        .enumerate()
        {
            present[k] += usize::from(n);
        }
        for i in instances {
            present[7] += usize::from(!i.errors.is_empty());
            present[8] += usize::from(!i.surveys.is_empty());
        }
    }
    assert!(present.iter().all(|&n| n > 0), "{present:?}");
}

#[test]
fn a_restored_engine_goes_on_with_the_idle_sweep_under_way() {
    use crate::engine::tests::ev;
    use crate::engine::SWEEP_STEP;
    use crate::event::{Action, Channel};
    let rules = rules();
    let home =
        |id: String, secs: f64, who: &str| ev(&id, secs, who, Channel::Web, "home", Action::View);
    let mut a = Engine::new(rules.clone());
    let mut out = Vec::new();
    for i in 0..100 {
        a.ingest(
            home(format!("e{i}"), f64::from(i), &format!("c{i}")),
            &mut out,
        );
    }
    // Eight days later (past `profile_ttl`): a sweep starts and has seen SWEEP_STEP slots.
    let later = 8.0 * 86_400.0;
    a.ingest(home("x0".into(), later, "x"), &mut out);
    a.flush(&mut out);
    assert_eq!(a.profile_count(), 100 - SWEEP_STEP + 1);
    let log = a.checkpoint(InputPosition {
        resume_at: 101,
        replay_until: 101,
        arrived_at: 0,
        writer: 0,
    });
    let (mut b, _) = Restore::from_records(&log, rules).unwrap();
    for engine in [&mut a, &mut b] {
        engine.ingest(home("x1".into(), later + 1.0, "x"), &mut out);
        engine.flush(&mut out);
    }
    assert_eq!(a.profile_count(), 100 - 2 * SWEEP_STEP + 1);
    assert_eq!(
        b.profile_count(),
        a.profile_count(),
        "the sweep went on after the restore"
    );
}
