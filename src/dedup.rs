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
//!
//! Growing costs no pause either. A full table is replaced by an empty one twice its size (or
//! its size, when forgotten ids filled it), and the old one is emptied into it a few slots
//! per inserted id; until then an id not found in the new table is looked up in the old one.
//! Rebuilt at once, the table of each shard held it up for tens of milliseconds at a few
//! hundred thousand ids, the latency benchmark's slowest alerts (BENCHMARKS.md). The new
//! table is made ready (emptied) a few slots per insert too, over the last 1/64 of the
//! table's size in inserts before it grows: emptied at once, it was written whole in one go,
//! every page of it faulted in there and then (4.7 MB at half a million slots; milliseconds
//! on a virtual machine). Only over that stretch does the next table take memory before it
//! is needed; started sooner, it would also stay allocated in a table whose fill holds still
//! just below the growth point.

use crate::event::Millis;

/// Table slots the sweep looks at per new id. The table has about 2.7 slots per id at most
/// (three eighths full just after it grows), and a quarter window brings about a fifth of the
/// ids remembered (the window and a quarter): a sweep needs ~14 slots per new id to end within
/// the quarter. (Should it fall behind, the forgotten ids left make the table grow sooner,
/// and growing drops them.)
const SWEEP_PER_INSERT: usize = 16;

/// Slots of the old table moved into the new one per inserted id while it grows. A move
/// ends before the new table can fill: a table grows at three quarters full, into one twice
/// its size (or its size, when at most three eighths of it was remembered), so the new one
/// holds at most 3/4 + 1/8 of the old one's size (3/8 + 1/8) when the move ends.
const MOVE_PER_INSERT: usize = 8;

/// Slots of the next table emptied per inserted id, from [`PREPARE_FROM`] full on. It must be
/// ready (twice as many slots) when the table is three quarters full, 1/64 of the table's
/// size in inserts later: 128 a insert would do, and forgotten ids swept meanwhile give some
/// of those inserts back (~1.4 KB written a insert over that stretch).
const PREPARE_PER_INSERT: usize = 160;

/// The fill, in 64ths, from which the next table is prepared: one 64th before it grows at
/// 48/64.
const PREPARE_FROM: usize = 47;

/// The fill, in 64ths, below which a next table prepared is dropped (forgotten ids swept
/// faster than new ones came): apart from [`PREPARE_FROM`], so that a fill going up and down
/// around it does not drop and start one again and again.
const PREPARE_DROP_BELOW: usize = 44;

/// Slots looked at to judge whether a full table was mostly forgotten ids. A pass over all
/// of them was most of what was left of the growth's pause: the longest insert at 3.1M ids
/// was ~11 ms with it, ~0.8 ms with the sample (`examples/table_growth.rs dedup`, one-off builds).
/// Either answer is safe: it only picks the new table's size.
const GROW_SAMPLE: usize = 4096;

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
    /// The table before the table grew, while its ids are moved into this one.
    moving: Option<Box<Moving>>,
    /// The next table, twice this one's size, while it is emptied ahead of growing.
    next: Option<Box<Next>>,
    /// Tables that had to be emptied all at once when they were needed (not ready, or not
    /// the size prepared): for the tests.
    emptied_at_once: u32,
}

/// The next table, being emptied a few slots per insert (see [`Dedup::prepare_some`]).
#[derive(Debug, Clone)]
struct Next {
    /// Its slots emptied so far; room for all of them is reserved, not written.
    ids: Vec<u64>,
    buckets: Vec<u8>,
    /// How many slots it will have.
    len: usize,
}

/// A table being moved into a new one (see [`Dedup::grow`]). It is not changed but for its
/// bucket offsets (which follow the base), so ids are found in it by the same probe.
#[derive(Debug, Clone)]
struct Moving {
    ids: Vec<u64>,
    buckets: Vec<u8>,
    /// The next slot to move.
    next: usize,
    /// Ids in the slots not moved yet.
    left: usize,
}

impl Moving {
    /// The bucket offset `id` is stored with, if it is here.
    fn find(&self, id: u64) -> Option<u8> {
        probe(&self.ids, id).ok().map(|i| self.buckets[i])
    }
}

/// The slot of `id` in a table's `ids` (`Ok`), or the free slot its probe ends at (`Err`):
/// linear probing from its home slot, its low bits (ids are hashes already).
#[inline]
fn probe(ids: &[u64], id: u64) -> Result<usize, usize> {
    let mask = ids.len() - 1;
    let mut i = id as usize & mask;
    loop {
        match ids[i] {
            EMPTY => return Err(i),
            k if k == id => return Ok(i),
            _ => i = (i + 1) & mask,
        }
    }
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
            moving: None,
            next: None,
            emptied_at_once: 0,
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
        let old = self.moving.as_deref_mut().map(|m| &mut m.buckets[..]);
        for buckets in [Some(&mut self.buckets[..]), old].into_iter().flatten() {
            if base >= self.base {
                let down = u8::try_from(base - self.base).unwrap_or(u8::MAX);
                for b in buckets {
                    *b = b.saturating_sub(down);
                }
            } else {
                // Every stored bucket is at most `top`, at most 255 above the new base.
                let up = (self.base - base) as u8;
                for b in buckets {
                    *b += up;
                }
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
        let i = match probe(&self.ids, id) {
            Ok(i) => {
                if self.live(self.buckets[i]) {
                    return false;
                }
                // Forgotten but not yet swept: remembered again from now.
                self.buckets[i] = bucket;
                return true;
            }
            Err(free) => free,
        };
        // Not moved yet from the table before it grew? (Found there forgotten, it is new,
        // and that copy is not moved.)
        if let Some(b) = self.moving.as_ref().and_then(|m| m.find(id)) {
            if self.live(b) {
                return false;
            }
        }
        self.ids[i] = id;
        self.buckets[i] = bucket;
        self.used += 1;
        // Checked here: the call (not inlined) cost ~24 instructions an insert just to find
        // no move under way, which is almost always.
        if self.moving.is_some() {
            self.move_some(MOVE_PER_INSERT);
        }
        self.sweep_some(SWEEP_PER_INSERT);
        self.prepare_some(PREPARE_PER_INSERT);
        true
    }

    /// From [`PREPARE_FROM`] on (and no move under way), empties `slots` more slots of the
    /// table this one will grow into: twice its size, as it grows while it fills. Only what
    /// is emptied is written, so its pages are faulted in a few at a time too.
    fn prepare_some(&mut self, slots: usize) {
        let len = self.ids.len() * 2;
        if self.used * 64 < self.ids.len() * PREPARE_DROP_BELOW {
            self.next = None;
        }
        if self.moving.is_some() || self.used * 64 <= self.ids.len() * PREPARE_FROM {
            return;
        }
        let next = self.next.get_or_insert_with(|| {
            Box::new(Next {
                ids: Vec::with_capacity(len),
                buckets: Vec::with_capacity(len),
                len,
            })
        });
        let n = slots.min(next.len - next.ids.len());
        next.ids.resize(next.ids.len() + n, EMPTY);
        next.buckets.resize(next.buckets.len() + n, 0);
    }

    /// Makes room: a table twice as large, or as large when forgotten ids were most of what
    /// filled it, into which the remembered ids are moved a few per insert.
    fn grow(&mut self) {
        // Never under way here (see MOVE_PER_INSERT); finished first should that change.
        self.finish_move();
        // How much of it is remembered, judged from evenly spaced slots.
        let stride = (self.ids.len() / GROW_SAMPLE).max(1);
        let (mut seen, mut remembered) = (0, 0);
        for i in (0..self.ids.len()).step_by(stride) {
            seen += 1;
            if self.ids[i] != EMPTY && self.live(self.buckets[i]) {
                remembered += 1;
            }
        }
        let len = if remembered * 8 <= seen * 3 {
            self.ids.len()
        } else {
            self.ids.len() * 2
        };
        self.begin_move(len);
    }

    /// Replaces the table with an empty one of `len` slots; the ids of the old one are moved
    /// into it by [`Dedup::move_some`]. The forgotten ones are not, so no sweep is needed.
    fn begin_move(&mut self, len: usize) {
        let (new_ids, new_buckets) = match self.next.take() {
            Some(mut next) if next.len == len => {
                if next.ids.len() < len {
                    // Not ready: a move or a rebuild took part of the run-up to growing.
                    self.emptied_at_once += 1;
                    next.ids.resize(len, EMPTY);
                    next.buckets.resize(len, 0);
                }
                (next.ids, next.buckets)
            }
            _ => {
                self.emptied_at_once += 1;
                (vec![EMPTY; len], vec![0; len])
            }
        };
        let ids = std::mem::replace(&mut self.ids, new_ids);
        let buckets = std::mem::replace(&mut self.buckets, new_buckets);
        self.moving = Some(Box::new(Moving {
            ids,
            buckets,
            next: 0,
            left: self.used,
        }));
        self.used = 0;
        self.sweep = None;
        self.sweep_again = false;
    }

    /// Moves the remembered ids of up to `slots` more slots of the old table into this one.
    fn move_some(&mut self, slots: usize) {
        let Some(mut m) = self.moving.take() else {
            return;
        };
        let end = m.next.saturating_add(slots).min(m.ids.len());
        for j in m.next..end {
            let (id, b) = (m.ids[j], m.buckets[j]);
            if id == EMPTY {
                continue;
            }
            m.left -= 1;
            if !self.live(b) {
                continue;
            }
            // Not in this table: an id found remembered in the old one is not inserted
            // again, and one found forgotten there stays forgotten (the floor only rises).
            let found = probe(&self.ids, id);
            debug_assert!(found.is_err(), "an id in both tables");
            let (Ok(i) | Err(i)) = found;
            self.ids[i] = id;
            self.buckets[i] = b;
            self.used += 1;
        }
        m.next = end;
        if end < m.ids.len() {
            self.moving = Some(m);
        }
    }

    /// Moves what is left of a table being moved.
    fn finish_move(&mut self) {
        self.move_some(usize::MAX);
    }

    /// Rebuilds the table at once with `len` slots and the remembered ids only (no sweep is
    /// needed after it).
    fn rebuild(&mut self, len: usize) {
        self.finish_move();
        self.begin_move(len);
        self.finish_move();
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

    /// Number of ids in the table: the remembered ones, and forgotten ones not yet swept
    /// (or, while the table grows, not yet passed over).
    pub fn len(&self) -> usize {
        self.used + self.moving.as_ref().map_or(0, |m| m.left)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        // The forgotten ids are dropped as the old table is passed over.
        d.finish_move();
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
    fn a_growing_table_moves_its_ids_a_few_slots_per_insert() {
        let mut d = Dedup::new(1000);
        for id in 1..=768 {
            assert!(d.insert(0, id));
        }
        assert!(d.moving.is_none());
        // The 769th id makes it grow: nothing is moved at once.
        assert!(d.insert(0, 769));
        assert_eq!(d.ids.len(), 2 * MIN_SLOTS);
        let m = d.moving.as_ref().expect("a move under way");
        assert_eq!((m.next, m.left), (MOVE_PER_INSERT, 768 - d.used + 1));
        assert_eq!(d.len(), 769);
        // Every id is still remembered while the move goes on (each answer moves it on).
        for id in 1..=769 {
            assert!(!d.insert(0, id), "{id} is remembered");
        }
        // A duplicate moves nothing: new ids end the move, MOVE_PER_INSERT slots each (the
        // 769th moved the first ones).
        let last = 768 + (MIN_SLOTS / MOVE_PER_INSERT) as u64;
        for id in 770..=last {
            assert!(d.moving.is_some(), "over before {id}");
            assert!(d.insert(0, id));
        }
        assert!(d.moving.is_none());
        assert_eq!(d.len(), last as usize);
        assert_eq!(d.used, d.ids.iter().filter(|&&id| id != EMPTY).count());
        for id in 1..=last {
            assert!(!d.insert(0, id), "{id} is remembered");
        }
    }

    #[test]
    fn the_next_table_is_ready_when_the_table_grows() {
        let mut d = Dedup::new(1000);
        let mut sizes = vec![d.ids.len()];
        for id in 1..=200_000u64 {
            assert!(d.insert(0, id.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            if d.ids.len() != *sizes.last().unwrap() {
                sizes.push(d.ids.len());
                // What was prepared is what it grew into, whole.
                assert!(d.next.is_none());
            }
            // Nothing is prepared before the last 64th of the fill.
            if d.next.is_some() {
                assert!(d.used * 64 > d.ids.len() * PREPARE_FROM);
            }
        }
        assert_eq!(
            sizes.len(),
            10,
            "grew from 1,024 to 524,288 slots: {sizes:?}"
        );
        assert_eq!(d.emptied_at_once, 0);
        // A table the size of the one prepared, but needed at once (a rebuild): emptied then.
        d.rebuild(d.ids.len());
        assert_eq!(d.emptied_at_once, 1);
        for id in 1..=200_000u64 {
            assert!(!d.insert(0, id.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        }
    }

    #[test]
    fn a_next_table_prepared_is_dropped_when_forgotten_ids_empty_the_table() {
        let mut d = Dedup::new(1000);
        let mut id = 0;
        while d.next.is_none() {
            id += 1;
            assert!(d.insert(0, id));
        }
        // Everything so far is forgotten; the sweep empties the table as new ids come.
        d.expire(10_000);
        for _ in 0..200 {
            id += 1;
            assert!(d.insert(10_000, id));
        }
        assert!(d.used * 64 < d.ids.len() * PREPARE_DROP_BELOW);
        assert!(d.next.is_none());
    }

    #[test]
    fn an_id_forgotten_in_the_old_table_is_new_while_it_moves_and_after() {
        let mut d = Dedup::new(1000);
        for id in 1..=400 {
            assert!(d.insert(0, id));
        }
        d.expire(1250);
        d.sweep = None;
        for id in 401..=769 {
            assert!(d.insert(1250, id));
        }
        // Grown at the same size (most of it forgotten), and moving.
        assert_eq!(d.ids.len(), MIN_SLOTS);
        assert!(d.moving.is_some());
        assert!(d.insert(1250, 5), "forgotten in the old table");
        assert!(!d.insert(1250, 5));
        assert!(!d.insert(1250, 600), "remembered in the old table");
        d.finish_move();
        assert!(d.moving.is_none());
        assert_eq!(d.len(), 370, "the remembered ids and id 5, once each");
        assert!(!d.insert(1250, 5));
        assert!(d.insert(1250, 6), "forgotten, not moved");
        for id in 401..=769 {
            assert!(!d.insert(1250, id), "{id} is remembered");
        }
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
