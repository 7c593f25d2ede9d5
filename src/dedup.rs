//! The duplicate filter: remembers event ids (as 64-bit hashes) for `dedup_window` of event time.
//!
//! One hash map answers "seen?" with a single probe. Each id is stored with its time bucket (a
//! quarter of the window wide). When a bucket expires, its ids are removed in one sequential
//! pass over the table, not one random access per id (with millions of ids, each of those was
//! a cache miss, and listing the ids by bucket cost as much memory as the table). An id is
//! remembered for at least the window after its event time, and at most a quarter window
//! more. Once the watermark has passed an event's time plus the window, a copy of it would be
//! late anyway, so forgetting it then changes nothing.

use hashbrown::HashMap;

use crate::event::Millis;

#[derive(Debug, Clone)]
pub struct Dedup {
    bucket_len: Millis,
    window: Millis,
    /// id -> bucket number of its event time.
    seen: HashMap<u64, Millis>,
    /// Ids of buckets below this have been forgotten.
    floor: Millis,
}

impl Dedup {
    pub fn new(window: Millis) -> Dedup {
        let window = window.max(4);
        Dedup {
            bucket_len: window / 4,
            window,
            seen: HashMap::new(),
            floor: Millis::MIN,
        }
    }

    /// Records `id` at event time `t`; false if it was already seen.
    pub fn insert(&mut self, t: Millis, id: u64) -> bool {
        match self.seen.entry(id) {
            hashbrown::hash_map::Entry::Occupied(_) => false,
            hashbrown::hash_map::Entry::Vacant(e) => {
                e.insert(t.div_euclid(self.bucket_len));
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
            self.seen.retain(|_, b| *b >= floor);
            self.floor = floor;
        }
    }

    /// Number of remembered ids.
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
        assert_eq!(d.len(), 1);
        // Bucket 5 is 1250..=1499: kept while the horizon (watermark - window) is at its last
        // millisecond, forgotten one millisecond later.
        d.expire(2499);
        assert!(!d.insert(2499, 7));
        d.expire(2500);
        assert!(d.insert(2500, 7));
    }
}
