//! The duplicate filter: remembers event ids (as 64-bit hashes) for `dedup_window` of event time.
//!
//! One hash set answers "seen?" with a single probe; ids are also listed by time bucket (a
//! quarter of the window wide) so that expiry removes exactly the ids of whole buckets, with
//! no scan. An id is remembered for at least the window after its event time, and at most a
//! quarter window more. Once the watermark has passed an event's time plus the window, a copy
//! of it would be late anyway, so forgetting it then changes nothing.

use std::collections::VecDeque;

use hashbrown::HashSet;

use crate::event::Millis;

#[derive(Debug, Clone)]
pub struct Dedup {
    bucket_len: Millis,
    window: Millis,
    seen: HashSet<u64>,
    /// (bucket number, ids first seen in it), ordered by bucket number.
    buckets: VecDeque<(Millis, Vec<u64>)>,
}

impl Dedup {
    pub fn new(window: Millis) -> Dedup {
        let window = window.max(4);
        Dedup {
            bucket_len: window / 4,
            window,
            seen: HashSet::new(),
            buckets: VecDeque::new(),
        }
    }

    /// Records `id` at event time `t`; false if it was already seen.
    pub fn insert(&mut self, t: Millis, id: u64) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        let b = t.div_euclid(self.bucket_len);
        // Almost always the newest bucket: search from the back.
        let pos = self
            .buckets
            .iter()
            .rposition(|(n, _)| *n <= b)
            .map_or(0, |i| i + 1);
        if pos == 0 || self.buckets[pos - 1].0 != b {
            self.buckets.insert(pos, (b, Vec::new()));
            self.buckets[pos].1.push(id);
        } else {
            self.buckets[pos - 1].1.push(id);
        }
        true
    }

    /// Forgets ids whose event time is older than `watermark - window`.
    pub fn expire(&mut self, watermark: Millis) {
        let horizon = watermark.saturating_sub(self.window);
        while let Some((n, _)) = self.buckets.front() {
            // The bucket's last millisecond is (n + 1) * len - 1.
            if (n + 1).saturating_mul(self.bucket_len) > horizon {
                break;
            }
            if let Some((_, ids)) = self.buckets.pop_front() {
                for id in ids {
                    self.seen.remove(&id);
                }
            }
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
    }
}
