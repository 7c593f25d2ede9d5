//! The timer queue: drop-off and slow-step checks, popped in (due, instance, kind) order.
//!
//! A binary heap over a million timers pays ~20 cache misses per pop. Timers here are coarse
//! (minutes to days) and mostly pushed near "now", so they go into one-second buckets in a
//! hash map. The bucket being consumed is sorted once, when it comes due, and popped from its
//! end (one cache-friendly read per pop, where even a small heap's sift-down touched a dozen
//! lines that the rest of the engine's work had evicted in between); the few timers pushed
//! into the current second meanwhile wait in a small heap beside it. Pushing is one hash
//! lookup; popping takes the smaller of the two heads.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hashbrown::HashMap;

use crate::event::Millis;

/// Width of a bucket.
const RESOLUTION: Millis = 1000;
/// Empty buckets probed one by one before searching the map for the next non-empty one.
const SCAN_LIMIT: u32 = 4096;

/// Timer kinds: drop-off, or slow step on step `kind - 1`.
pub(super) const DROP_OFF: u8 = 0;

/// A scheduled check on one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    pub due: Millis,
    pub instance: u64,
    pub kind: u8,
    pub slot: u32,
}

#[derive(Debug, Default)]
pub(super) struct TimerQueue {
    /// The current bucket, sorted latest first (popped from the end).
    near: Vec<Timer>,
    /// Timers pushed into the current bucket after it was sorted.
    late: BinaryHeap<Reverse<Timer>>,
    /// End of the current bucket: timers due before it go to `late`.
    near_end: Millis,
    /// Later timers by bucket number (due / RESOLUTION); every bucket is >= `next_bucket`.
    far: HashMap<Millis, Vec<Timer>>,
    next_bucket: Millis,
    far_len: usize,
}

impl TimerQueue {
    pub(super) fn new() -> Self {
        TimerQueue {
            near_end: Millis::MIN,
            next_bucket: Millis::MIN,
            ..Default::default()
        }
    }

    pub(super) fn push(&mut self, t: Timer) {
        if t.due < self.near_end {
            self.late.push(Reverse(t));
            return;
        }
        let b = t.due.div_euclid(RESOLUTION);
        if self.far_len == 0 || b < self.next_bucket {
            self.next_bucket = if self.far_len == 0 {
                b
            } else {
                self.next_bucket.min(b)
            };
        }
        self.far.entry(b).or_default().push(t);
        self.far_len += 1;
    }

    /// The earliest timer, moving the next bucket in when the current one is used up.
    fn peek(&mut self) -> Option<Timer> {
        while self.near.is_empty() && self.late.is_empty() && self.far_len > 0 {
            let mut scanned = 0;
            while !self.far.contains_key(&self.next_bucket) {
                scanned += 1;
                if scanned >= SCAN_LIMIT {
                    self.next_bucket = *self.far.keys().min().expect("far_len > 0");
                } else {
                    self.next_bucket += 1;
                }
            }
            let b = self.next_bucket;
            let mut timers = self.far.remove(&b).expect("present");
            self.far_len -= timers.len();
            timers.sort_unstable_by(|a, b| b.cmp(a));
            self.near = timers;
            self.near_end = (b + 1).saturating_mul(RESOLUTION);
            self.next_bucket = b + 1;
        }
        match (self.near.last(), self.late.peek()) {
            (Some(n), Some(l)) => Some((*n).min(l.0)),
            (n, l) => n.copied().or(l.map(|l| l.0)),
        }
    }

    /// The earliest due time.
    pub(super) fn peek_due(&mut self) -> Option<Millis> {
        self.peek().map(|t| t.due)
    }

    pub(super) fn pop(&mut self) -> Option<Timer> {
        let first = self.peek()?;
        if self.near.last() == Some(&first) {
            self.near.pop()
        } else {
            self.late.pop().map(|t| t.0)
        }
    }

    pub(super) fn len(&self) -> usize {
        self.near.len() + self.late.len() + self.far_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the pushes (interleaved with pops), timers come out in order.
        #[test]
        fn pops_in_order(ops in prop::collection::vec((any::<bool>(), 0i64..100_000, 0u64..4), 1..300)) {
            let mut q = TimerQueue::new();
            let mut reference = BinaryHeap::new();
            let mut floor = 0;
            for (push, due, inst) in ops {
                if push {
                    // Pushes are never earlier than what was already popped (time moves on).
                    let t = Timer { due: floor + due, instance: inst, kind: 0, slot: 0 };
                    q.push(t);
                    reference.push(Reverse(t));
                } else {
                    let a = q.pop();
                    let b = reference.pop().map(|r| r.0);
                    prop_assert_eq!(a, b);
                    if let Some(t) = a {
                        floor = t.due;
                    }
                }
                prop_assert_eq!(q.len(), reference.len());
            }
            while let Some(b) = reference.pop() {
                prop_assert_eq!(q.pop(), Some(b.0));
            }
            prop_assert_eq!(q.pop(), None);
        }
    }

    #[test]
    fn far_apart_timers_are_found_without_scanning_every_second() {
        let mut q = TimerQueue::new();
        q.push(Timer {
            due: 0,
            instance: 1,
            kind: 0,
            slot: 0,
        });
        q.push(Timer {
            due: 400 * 86_400_000,
            instance: 2,
            kind: 0,
            slot: 0,
        });
        assert_eq!(q.pop().map(|t| t.instance), Some(1));
        assert_eq!(q.pop().map(|t| t.instance), Some(2));
    }
}
