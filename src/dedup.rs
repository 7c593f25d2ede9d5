//! The duplicate filter: remembers event ids (as 64-bit hashes) for `dedup_window` of event time.
//!
//! Ids live in time buckets a quarter of the window wide, so expiry drops whole buckets
//! instead of scanning. An id is remembered for at least the window after its event time, and
//! at most a quarter window more. Once the watermark has passed an event's time plus the
//! window, a copy of it would be late anyway, so forgetting it then changes nothing.

use std::collections::VecDeque;

use hashbrown::HashSet;

use crate::event::Millis;

#[derive(Debug, Clone)]
pub struct Dedup {
    bucket_len: Millis,
    window: Millis,
    /// (bucket number, ids), ordered by bucket number.
    buckets: VecDeque<(Millis, HashSet<u64>)>,
}

impl Dedup {
    pub fn new(window: Millis) -> Dedup {
        let window = window.max(4);
        Dedup {
            bucket_len: window / 4,
            window,
            buckets: VecDeque::new(),
        }
    }

    /// Records `id` at event time `t`; false if it was already seen.
    pub fn insert(&mut self, t: Millis, id: u64) -> bool {
        if self.buckets.iter().any(|(_, set)| set.contains(&id)) {
            return false;
        }
        let b = t.div_euclid(self.bucket_len);
        let pos = self.buckets.partition_point(|(n, _)| *n < b);
        if self.buckets.get(pos).is_none_or(|(n, _)| *n != b) {
            self.buckets.insert(pos, (b, HashSet::new()));
        }
        self.buckets[pos].1.insert(id);
        true
    }

    /// Forgets ids whose event time is older than `watermark - window`.
    pub fn expire(&mut self, watermark: Millis) {
        let horizon = watermark.saturating_sub(self.window);
        while let Some((n, _)) = self.buckets.front() {
            // The bucket's last millisecond is (n + 1) * len - 1.
            if (n + 1).saturating_mul(self.bucket_len) <= horizon {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// Number of remembered ids.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|(_, s)| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    }
}
