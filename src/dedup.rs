//! The duplicate filter: remembers event ids (as 64-bit hashes) for `dedup_window` of event time.
//!
//! Each id is stored with its time bucket (a quarter of the window wide). An id is remembered
//! for at least the window after its event time, and at most a quarter window more. Once the
//! watermark has passed an event's time plus the window, a copy of it would be late anyway, so
//! forgetting it then changes nothing.
//!
//! Forgetting costs no pause. When the watermark moves the floor past a bucket, that bucket's
//! ids count as forgotten at once (an id found with a bucket below the floor is taken as new),
//! and a sweep removes them from the table a few slots per inserted id, walking the table in
//! order. Removing them all in one pass over the table held the shard up every quarter window:
//! ~30 ms at four million ids (BENCHMARKS.md, "Pauses").
//!
//! The table is our own: open addressing with linear probing over the ids, at most three
//! quarters full, their buckets in a second array beside it, one byte each: an offset from a
//! base bucket (see [`Dedup::rebase`]). A byte is enough because only the window and a quarter
//! (five or six buckets) is remembered at a time, and it keeps that array an eighth of the
//! ids' size (4 MB at four million slots, mostly in the cache) and 7 bytes a slot off the
//! memory: ~29 bytes per open journey in the memory benchmark. Almost every event brings a new
//! id, so almost every lookup is a miss that reads ids up to an empty slot, in one or two
//! adjacent cache lines: one memory access per event where a table with separate control
//! bytes (hashbrown's) takes two, at a million ids and more neither in the cache. The ids are
//! hashes already, so an id's low bits are its home slot.

use crate::event::Millis;

/// Table slots the sweep looks at per new id. The table has about 2.7 slots per id at most
/// (three eighths full just after it grows), and a quarter window brings about a fifth of the
/// ids remembered (the window and a quarter): a sweep needs ~14 slots per new id to end within
/// the quarter. (Should it fall behind, the forgotten ids left make the table grow sooner,
/// and growing drops them.)
const SWEEP_PER_INSERT: usize = 16;

/// The id of a free slot. Id 0 is stored as 1 (a 2^-64 chance of a false duplicate, far below
/// that of two event ids with the same 64-bit hash).
const EMPTY: u64 = 0;

/// Slots of a new table.
const MIN_SLOTS: usize = 1024;

#[derive(Debug, Clone)]
pub struct Dedup {
    bucket_len: Millis,
    window: Millis,
    /// Event id hashes by slot; a power of two in length, at most three quarters used.
    ids: Vec<u64>,
    /// The bucket number of each slot's event time, as an offset from `base`.
    buckets: Vec<u8>,
    /// The bucket an offset of 0 stands for.
    base: Millis,
    /// The latest bucket of an id recorded.
    top: Millis,
    /// Slots holding an id: remembered ones, and forgotten ones not yet swept.
    used: usize,
    /// Ids of buckets below this are forgotten (some may still be in the table).
    floor: Millis,
    /// The sweep's next table slot; `None` when no sweep is under way.
    sweep: Option<usize>,
    /// The floor moved during the sweep under way: sweep again when it ends.
    sweep_again: bool,
}

impl Dedup {
    pub fn new(window: Millis) -> Dedup {
        let window = window.max(4);
        Dedup {
            bucket_len: window / 4,
            window,
            ids: vec![EMPTY; MIN_SLOTS],
            buckets: vec![0; MIN_SLOTS],
            base: 0,
            top: Millis::MIN,
            used: 0,
            floor: Millis::MIN,
            sweep: None,
            sweep_again: false,
        }
    }

    fn mask(&self) -> usize {
        self.ids.len() - 1
    }

    /// Where a stored id's probe starts: its low bits (ids are hashes already).
    fn home_slot(&self, id: u64) -> usize {
        id as usize & self.mask()
    }

    /// An event id as stored: id 0 as 1 (0 marks a free slot).
    fn stored(id: u64) -> u64 {
        id.max(1)
    }

    /// What is in `id`'s home slot: reading it loads the table where [`Dedup::insert`] will
    /// look for `id` (see the engine's read-ahead).
    pub fn home(&self, id: u64) -> u64 {
        let i = self.home_slot(Self::stored(id));
        self.ids[i] ^ u64::from(self.buckets[i])
    }

    /// Whether a slot's bucket offset is at or above the floor.
    fn live(&self, offset: u8) -> bool {
        self.base + Millis::from(offset) >= self.floor
    }

    /// Moves the base so that `bucket` fits in an offset, to the floor's bucket minus one
    /// where it can (forgotten ids then read offset 0 or more below the floor, still
    /// forgotten). It cannot when the ids remembered span more than 256 buckets: before the
    /// first expiry, or with an `allowed_lateness` of more than ~60 windows. The base then
    /// goes to 255 below the latest bucket, forgotten ids are dropped first (so that they do
    /// not come back), and ids below it read as of the base's bucket: remembered longer, never
    /// shorter. At the default settings this is one pass over the one-byte offsets
    /// (vectorised) per ~250 buckets, ~60 windows of event time.
    fn rebase(&mut self, bucket: Millis) {
        let top = self.top.max(bucket);
        let below_floor = self.floor.saturating_sub(1);
        let base = (top - 255).max(bucket.min(below_floor));
        if base > below_floor && self.floor != Millis::MIN {
            self.rebuild(self.ids.len());
        }
        if base >= self.base {
            let down = u8::try_from(base - self.base).unwrap_or(u8::MAX);
            for b in &mut self.buckets {
                *b = b.saturating_sub(down);
            }
        } else {
            // Every stored bucket is at most `top`, at most 255 above the new base.
            let up = (self.base - base) as u8;
            for b in &mut self.buckets {
                *b += up;
            }
        }
        self.base = base;
    }

    /// Records `id` at event time `t`; false if it was already seen.
    pub fn insert(&mut self, t: Millis, id: u64) -> bool {
        let id = Self::stored(id);
        let bucket = t.div_euclid(self.bucket_len);
        if bucket > self.base + 255 || (bucket < self.base && bucket + 255 >= self.top) {
            self.rebase(bucket);
        }
        self.top = self.top.max(bucket);
        // Still below the base (see `rebase`): remembered as of the base's bucket.
        let bucket = (bucket - self.base).max(0) as u8;
        if (self.used + 1) * 4 > self.ids.len() * 3 {
            self.grow();
        }
        let mask = self.mask();
        let mut i = self.home_slot(id);
        loop {
            match self.ids[i] {
                EMPTY => break,
                k if k == id => {
                    if self.live(self.buckets[i]) {
                        return false;
                    }
                    // Forgotten but not yet swept: remembered again from now.
                    self.buckets[i] = bucket;
                    return true;
                }
                _ => i = (i + 1) & mask,
            }
        }
        self.ids[i] = id;
        self.buckets[i] = bucket;
        self.used += 1;
        self.sweep_some(SWEEP_PER_INSERT);
        true
    }

    /// Makes room: twice as large, or as large as it is when forgotten ids were most of what
    /// filled it.
    fn grow(&mut self) {
        let remembered = self
            .ids
            .iter()
            .zip(&self.buckets)
            .filter(|&(&id, &b)| id != EMPTY && self.live(b))
            .count();
        let len = if remembered * 8 <= self.ids.len() * 3 {
            self.ids.len()
        } else {
            self.ids.len() * 2
        };
        self.rebuild(len);
    }

    /// Rebuilds the table with `len` slots and the remembered ids only (no sweep is needed
    /// after it).
    fn rebuild(&mut self, len: usize) {
        let ids = std::mem::replace(&mut self.ids, vec![EMPTY; len]);
        let buckets = std::mem::replace(&mut self.buckets, vec![0; len]);
        let mask = len - 1;
        self.used = 0;
        for (id, b) in ids.into_iter().zip(buckets) {
            if id == EMPTY || !self.live(b) {
                continue;
            }
            let mut i = self.home_slot(id);
            while self.ids[i] != EMPTY {
                i = (i + 1) & mask;
            }
            self.ids[i] = id;
            self.buckets[i] = b;
            self.used += 1;
        }
        self.sweep = None;
        self.sweep_again = false;
    }

    /// Forgets ids whose event time is older than `watermark - window`: every id of a
    /// bucket whose last millisecond is before that.
    pub fn expire(&mut self, watermark: Millis) {
        let horizon = watermark.saturating_sub(self.window);
        // Bucket n's last millisecond is (n + 1) * len - 1: it is forgotten when that is
        // before the horizon, that is for every n below horizon / len (rounded down).
        let floor = horizon.div_euclid(self.bucket_len);
        if floor > self.floor {
            self.floor = floor;
            match self.sweep {
                None => self.sweep = Some(0),
                Some(_) => self.sweep_again = true,
            }
        }
    }

    /// Moves the sweep on by up to `slots` table slots, removing forgotten ids.
    fn sweep_some(&mut self, slots: usize) {
        let Some(from) = self.sweep else {
            return;
        };
        let end = (from + slots).min(self.ids.len());
        let mut i = from;
        while i < end {
            if self.ids[i] != EMPTY && !self.live(self.buckets[i]) {
                // Another id may move into slot `i`: look at it again.
                self.remove(i);
            } else {
                i += 1;
            }
        }
        self.sweep = if end < self.ids.len() {
            Some(end)
        } else if std::mem::take(&mut self.sweep_again) {
            Some(0)
        } else {
            None
        };
    }

    /// Empties slot `hole`, moving back the ids after it that could not be found otherwise
    /// (an id must be reachable from its home slot without crossing an empty one).
    fn remove(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let id = self.ids[j];
            if id == EMPTY {
                break;
            }
            let home = self.home_slot(id);
            // It may move back to the hole when the hole is between its home and it.
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.ids[hole] = id;
                self.buckets[hole] = self.buckets[j];
                hole = j;
            }
        }
        self.ids[hole] = EMPTY;
        self.used -= 1;
    }

    /// Number of ids in the table: the remembered ones, and forgotten ones not yet swept.
    pub fn len(&self) -> usize {
        self.used
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a map of id to bucket: the same answers through inserts, expiry, sweeps,
        /// growth, and ids crowded onto the last three home slots (long runs that wrap around
        /// the end of the table).
        #[test]
        fn answers_as_a_map_does(
            ops in prop::collection::vec((0u8..12, 0u64..3000, 0i64..300), 1..3000),
            crowded in any::<bool>(),
        ) {
            let mut d = Dedup::new(100);
            let mut model: HashMap<u64, Millis> = HashMap::new();
            let mut watermark = 0;
            for (op, x, dt) in ops {
                if op == 0 {
                    watermark += dt;
                    d.expire(watermark);
                    continue;
                }
                let id = if crowded { (x << 32) | (0xFFFF_FFFF - x % 3) } else { x + 1 };
                let t = watermark + dt - 100;
                let bucket = t.div_euclid(d.bucket_len);
                let fresh = model.get(&id).is_none_or(|&b| b < d.floor);
                prop_assert_eq!(d.insert(t, id), fresh, "id {} at {}", id, t);
                if fresh {
                    model.insert(id, bucket);
                }
            }
            prop_assert_eq!(d.used, d.ids.iter().filter(|&&id| id != EMPTY).count());
            let remembered = model.values().filter(|&&b| b >= d.floor).count();
            prop_assert!(d.len() >= remembered);
            for (&id, &b) in &model {
                prop_assert_eq!(d.insert(watermark, id), b < d.floor);
            }
        }
    }

    #[test]
    fn remembers_for_the_window_then_forgets() {
        let mut d = Dedup::new(1000);
        assert!(d.insert(100, 7));
        assert!(!d.insert(900, 7));
        assert!(d.insert(50, 8), "out-of-order times are fine");
        d.expire(1099);
        assert!(!d.insert(1099, 7), "still within the window");
        d.expire(1400);
        assert!(d.insert(1400, 7), "forgotten after window + a quarter");
        // Bucket 5 is 1250..=1499: kept while the horizon (watermark - window) is at its last
        // millisecond, forgotten one millisecond later.
        d.expire(2499);
        assert!(!d.insert(2499, 7));
        d.expire(2500);
        assert!(d.insert(2500, 7));
    }

    /// A filter (window 1000) that saw ids 1 to `n` at time 0, all forgotten since.
    fn forgotten(n: u64) -> Dedup {
        let mut d = Dedup::new(1000);
        for id in 1..=n {
            assert!(d.insert(0, id));
        }
        d.expire(1250);
        d
    }

    #[test]
    fn a_table_full_of_forgotten_ids_is_rebuilt_without_growing() {
        let mut d = forgotten(700);
        // No sweep has run yet: the next ids fill the table, which is rebuilt, not doubled.
        d.sweep = None;
        for id in 701..=800 {
            assert!(d.insert(1250, id));
        }
        assert_eq!(d.ids.len(), MIN_SLOTS);
        assert_eq!(d.len(), 100);
        for id in 701..=800 {
            assert!(!d.insert(1250, id), "{id} is remembered");
        }
    }

    #[test]
    fn ids_spanning_more_buckets_than_an_offset_holds_are_never_forgotten_early() {
        // Window 4: one bucket per millisecond. Without an expiry, or with one far behind
        // (as with an `allowed_lateness` of many windows), the ids span 1,000 buckets.
        for expire_first in [false, true] {
            let mut d = Dedup::new(4);
            if expire_first {
                d.expire(4);
            }
            for t in 0..1000 {
                assert!(d.insert(t, t as u64 + 1));
            }
            for t in 0..1000 {
                assert!(!d.insert(t, t as u64 + 1), "id of {t} remembered");
            }
            d.expire(504);
            for t in 500..1000 {
                assert!(!d.insert(t, t as u64 + 1), "id of {t} within the window");
            }
            d.expire(2000);
            for t in 0..1000 {
                assert!(d.insert(2000, t as u64 + 1), "id of {t} forgotten at last");
            }
        }
    }

    #[test]
    fn forgotten_ids_stay_forgotten_when_the_base_moves() {
        let mut d = Dedup::new(1000);
        assert!(d.insert(0, 1));
        // 300 buckets on, bucket 0 is forgotten (not swept out yet), and the next id's
        // bucket moves the base past it.
        d.expire(300 * 250);
        d.sweep = None;
        assert!(d.insert(300 * 250, 2));
        assert!(d.base > 0);
        assert_eq!(d.len(), 2, "not swept out");
        assert!(d.insert(300 * 250, 1), "still forgotten");
        assert!(!d.insert(300 * 250, 2));
        // The same when the next id is further on than an offset reaches from the floor
        // (remembered ids may then span more than 256 buckets).
        let mut d = Dedup::new(4);
        assert!(d.insert(0, 1));
        d.expire(10);
        d.sweep = None;
        assert!(d.insert(1000, 2));
        assert!(d.insert(1000, 1), "still forgotten");
    }

    #[test]
    fn id_zero_is_an_id_like_any_other() {
        let mut d = Dedup::new(1000);
        assert!(d.insert(0, 0));
        assert!(!d.insert(0, 0));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn forgotten_ids_are_swept_out_a_few_slots_per_insert() {
        let mut d = forgotten(10_000);
        assert_eq!(d.len(), 10_000, "nothing removed at once");
        // Ids of the next buckets sweep the table as they are inserted.
        for id in 10_001..=20_000 {
            assert!(d.insert(1250, id));
        }
        assert_eq!(d.len(), 10_000, "every forgotten id swept");
        assert!(d.sweep.is_none());
        for id in 1..=10_000 {
            assert!(d.insert(1250, id), "{id} was forgotten");
        }
        for id in 1..=20_000 {
            assert!(!d.insert(1250, id), "{id} is remembered");
        }
    }
}
