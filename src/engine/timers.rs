//! The timer queue: drop-off and slow-step checks, popped in (due, instance, kind) order.
//!
//! A binary heap over a million timers pays ~20 cache misses per pop. Timers here are coarse
//! (minutes to days) and mostly pushed near "now", so they go into one-second buckets in a
//! hash map; only the bucket being consumed is a (small, cache-resident) heap. Pushing is one
//! hash lookup; popping is a pop from the small heap, plus a bucket move once per second of
//! event time.

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
    /// Timers due before `near_end`, in order.
    near: BinaryHeap<Reverse<Timer>>,
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
            self.near.push(Reverse(t));
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

    /// The earliest due time, moving the next bucket in when the near heap is empty.
    pub(super) fn peek_due(&mut self) -> Option<Millis> {
        while self.near.is_empty() && self.far_len > 0 {
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
            let timers = self.far.remove(&b).expect("present");
            self.far_len -= timers.len();
            self.near.extend(timers.into_iter().map(Reverse));
            self.near_end = (b + 1).saturating_mul(RESOLUTION);
            self.next_bucket = b + 1;
        }
        self.near.peek().map(|t| t.0.due)
    }

    pub(super) fn pop(&mut self) -> Option<Timer> {
        self.peek_due()?;
        self.near.pop().map(|t| t.0)
    }

    pub(super) fn len(&self) -> usize {
        self.near.len() + self.far_len
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
