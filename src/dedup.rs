//! The duplicate filter: remembers event ids (as 64-bit hashes) for `dedup_window` of event time.
//!
//! One hash table answers "seen?" with a single probe. Each id is stored with its time bucket (a
//! quarter of the window wide). An id is remembered for at least the window after its event
//! time, and at most a quarter window more. Once the watermark has passed an event's time plus
//! the window, a copy of it would be late anyway, so forgetting it then changes nothing.
//!
//! Forgetting costs no pause. When the watermark moves the floor past a bucket, that bucket's
//! ids count as forgotten at once (an id found with a bucket below the floor is taken as new),
//! and a sweep removes them from the table a few slots per inserted id, walking the table in
//! order. Removing them all in one pass over the table held the shard up every quarter window:
//! ~30 ms at four million ids (BENCHMARKS.md, "Pauses").

use hashbrown::HashTable;

use crate::event::Millis;

/// Table slots the sweep looks at per new id. The table has at most ~2.3 slots per id (the
/// hash table's lowest load), and a quarter window brings about a fifth of the ids remembered
/// (the window and a quarter): a sweep needs ~12 slots per new id to end within the quarter.
const SWEEP_PER_INSERT: usize = 16;

#[derive(Debug, Clone)]
pub struct Dedup {
    bucket_len: Millis,
    window: Millis,
    /// (id, bucket number of its event time), found by the id (already a hash).
    seen: HashTable<(u64, Millis)>,
    /// Ids of buckets below this are forgotten (some may still be in `seen`).
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
            seen: HashTable::new(),
            floor: Millis::MIN,
            sweep: None,
            sweep_again: false,
        }
    }

    /// Records `id` at event time `t`; false if it was already seen.
    pub fn insert(&mut self, t: Millis, id: u64) -> bool {
        let bucket = t.div_euclid(self.bucket_len);
        match self.seen.find_mut(id, |e| e.0 == id) {
            Some(e) if e.1 >= self.floor => false,
            // Forgotten but not yet swept: remembered again from now.
            Some(e) => {
                e.1 = bucket;
                true
            }
            None => {
                self.seen.insert_unique(id, (id, bucket), |e| e.0);
                self.sweep_some(SWEEP_PER_INSERT);
                true
            }
        }
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
        // The table may have grown (and moved its ids) since the sweep began: ids it skips
        // wait for the next sweep, and still count as forgotten meanwhile.
        let end = (from + slots).min(self.seen.num_buckets());
        for i in from..end {
            if let Ok(e) = self.seen.get_bucket_entry(i) {
                if e.get().1 < self.floor {
                    e.remove();
                }
            }
        }
        self.sweep = if end < self.seen.num_buckets() {
            Some(end)
        } else if std::mem::take(&mut self.sweep_again) {
            Some(0)
        } else {
            None
        };
    }

    /// Number of ids in the table: the remembered ones, and forgotten ones not yet swept.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn forgotten_ids_are_swept_out_a_few_slots_per_insert() {
        let mut d = Dedup::new(1000);
        for id in 0..10_000 {
            assert!(d.insert(0, id));
        }
        d.expire(1250);
        assert_eq!(d.len(), 10_000, "nothing removed at once");
        // Ids of the next buckets sweep the table as they are inserted.
        for id in 10_000..20_000 {
            assert!(d.insert(1250, id));
        }
        assert_eq!(d.len(), 10_000, "every forgotten id swept");
        assert!(d.sweep.is_none());
        for id in 0..10_000 {
            assert!(d.insert(1250, id), "{id} was forgotten");
        }
        for id in 0..20_000 {
            assert!(!d.insert(1250, id), "{id} is remembered");
        }
    }
}
