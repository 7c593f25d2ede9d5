//! Looking ahead: loading the state the next buffered events and timers will touch, several
//! items at a time, before they are applied.
//!
//! At a million profiles the engine is bound by memory: the parked event, the identity index,
//! the profile and its open journeys are each a cache miss (~100 ns on our machine), and
//! applying events one after another takes those misses one after another. The reorder
//! buffer and the timer queue know what comes next, so their state is read ahead in stages
//! (every parked event with its dedup slot and index probe, then every profile, then what the
//! profiles point to): within a stage the loads do not depend on each other, and the processor
//! overlaps them. It only reads, and nothing depends on what it finds but the timing.

use std::hint::black_box;

use super::Engine;
use crate::event::Event;
use crate::profile::Profile;

/// Items of each queue read ahead at a time. The engine reads again when half of them have
/// been used, for this many items after the half still ahead: an item is first read 16 to 24
/// items before its turn, and again 8 to 16 before it (from the cache by then). Reading each
/// item once, 8 to 16 ahead, was ~15% slower, once 16 to 24 ahead ~3% slower; with 32 here
/// (first read 32 to 48 ahead) no faster than 16 (BENCHMARKS.md, run 9).
const LOOKAHEAD: usize = 16;

/// Counts an item about to be taken from a queue of which `ahead` items were read ahead.
/// When it is time to read ahead again, returns how many of the next items to skip.
fn due(ahead: &mut usize) -> Option<usize> {
    let due = (*ahead <= LOOKAHEAD / 2).then_some(*ahead);
    if due.is_some() {
        *ahead = LOOKAHEAD;
    }
    *ahead -= 1;
    due
}

impl Engine {
    /// Before the next buffered event is taken: reads ahead when it is time to.
    pub(super) fn read_ahead_events(&self, ahead: &mut usize) {
        if let Some(skip) = due(ahead) {
            self.warm_events(skip);
        }
    }

    /// Before the next timer is taken: reads ahead when it is time to.
    pub(super) fn read_ahead_timers(&self, ahead: &mut usize) {
        if let Some(skip) = due(ahead) {
            self.warm_timers(skip);
        }
    }

    /// Reads ahead for [`LOOKAHEAD`] buffered events after the next `skip`.
    fn warm_events(&self, skip: usize) {
        let mut events = [None; LOOKAHEAD];
        let mut slots = [u32::MAX; LOOKAHEAD];
        let mut sum = 0u64;
        // The parked event, its id's place in the dedup table and its identity index probe
        // (by the key hashed on arrival) do not depend on each other.
        for ((e, s), p) in events
            .iter_mut()
            .zip(&mut slots)
            .zip(self.pending.upcoming(skip, LOOKAHEAD))
        {
            *e = self.parked.get(p.slot as usize).and_then(Option::as_ref);
            sum = sum.wrapping_add(e.map_or(0, touch_event) ^ self.dedup.home(p.id));
            *s = self.index.get(p.key).unwrap_or(u32::MAX);
        }
        for e in events.iter().flatten() {
            // Other identities: inline in another of the event's cache lines, or in a
            // buffer of their own when there are several.
            let other = e.identities.first();
            sum = sum.wrapping_add(other.map_or(0, |(kind, _)| kind.len() as u64));
        }
        self.warm_profiles(&slots, sum);
    }

    /// Reads ahead for [`LOOKAHEAD`] timers after the next `skip`.
    fn warm_timers(&self, skip: usize) {
        let mut slots = [u32::MAX; LOOKAHEAD];
        for (s, t) in slots.iter_mut().zip(self.timers.upcoming(skip, LOOKAHEAD)) {
            *s = t.slot;
        }
        self.warm_profiles(&slots, 0);
    }

    fn warm_profiles(&self, slots: &[u32; LOOKAHEAD], mut sum: u64) {
        let mut profiles: [Option<&Profile>; LOOKAHEAD] = [None; LOOKAHEAD];
        for (p, &s) in profiles.iter_mut().zip(slots) {
            *p = self.profiles.get(s as usize).and_then(Option::as_ref);
            sum = sum.wrapping_add(p.map_or(0, |p| p.last_seen as u64));
        }
        for p in profiles.iter().flatten() {
            // The keys span the profile's second cache line (or a buffer of their own).
            let (first, last) = (p.keys.first(), p.keys.last());
            sum = sum.wrapping_add(first.zip(last).map_or(0, |(a, b)| a ^ b));
            for i in &p.open {
                // An instance spans three cache lines: its steps and evidence ring are
                // written when an event is applied.
                sum = sum.wrapping_add(
                    i.id ^ i.last as u64
                        ^ u64::from(i.journey)
                        ^ i.steps.len() as u64
                        ^ i.recent.warm(),
                );
            }
            if let Some(x) = &p.extra {
                let closed = x.closed.first().map_or(0, |c| c.ended as u64);
                let clicks = x.history.as_ref().map_or(0, |h| h.clicks.len());
                sum = sum.wrapping_add(closed ^ clicks as u64);
            }
        }
        black_box(sum);
    }
}

/// Reads a few fields spread over the event (an event spans several cache lines).
fn touch_event(e: &Event) -> u64 {
    e.occurred_at as u64
        ^ e.event_id.len() as u64
        ^ e.touchpoint.len() as u64
        ^ e.identities.len() as u64
        ^ u64::from(e.element.is_some())
        ^ u64::from(e.tier.is_some())
}
