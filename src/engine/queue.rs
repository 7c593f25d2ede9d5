//! Time-ordered queues: the drop-off and slow-step timers, and the reorder buffer of events
//! waiting for the watermark. Both pop in order of time (ties broken by the rest of the item).
//!
//! A binary heap over a million timers pays ~20 cache misses per pop, and even the reorder
//! buffer's few thousand events, small enough for the cache, were evicted by the rest of the
//! engine's work between pops. Items are mostly pushed a little ahead of "now" (timers minutes
//! to days, events up to the allowed lateness), so they go into one-second buckets in a hash
//! map. The bucket being consumed is sorted once, when time reaches it, and popped from its
//! end (one cache-friendly read per pop); the few items pushed into the current second
//! meanwhile wait in a small heap beside it. Pushing is one hash lookup; popping takes the
//! smaller of the two heads.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hashbrown::HashMap;

use crate::event::Millis;

/// Width of a bucket.
const RESOLUTION: Millis = 1000;
/// Empty buckets probed one by one before searching the map for the next non-empty one.
const SCAN_LIMIT: u32 = 4096;
/// Emptied buckets kept for reuse, and the largest kept (in items).
const SPARES: usize = 4;
const SPARE_MAX_ITEMS: usize = 4096;

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

/// An event waiting in the reorder buffer: its time, its id's hash, where it is parked, and
/// the key its profile is looked up by (hashed once, on arrival: the read-ahead and the
/// identity lookup use it). Applied in this order; two distinct ids with the same millisecond
/// and the same 64-bit hash would be ordered by slot, which depends on arrival: the one
/// (astronomically rare) case where arrival order can show through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Parked {
    pub at: Millis,
    pub id: u64,
    pub slot: u32,
    pub key: u64,
}

/// An item with a time, ordered by it first.
pub(super) trait Timed: Ord + Copy {
    fn time(&self) -> Millis;
}

impl Timed for Timer {
    fn time(&self) -> Millis {
        self.due
    }
}

impl Timed for Parked {
    fn time(&self) -> Millis {
        self.at
    }
}

#[derive(Debug)]
pub(super) struct TimeQueue<T> {
    /// The current bucket, sorted latest first (popped from the end).
    near: Vec<T>,
    /// Items pushed into the current bucket after it was sorted.
    late: BinaryHeap<Reverse<T>>,
    /// End of the current bucket: items before it go to `late`.
    near_end: Millis,
    /// Later items by bucket number (time / RESOLUTION); every bucket is >= `next_bucket`.
    far: HashMap<Millis, Vec<T>>,
    next_bucket: Millis,
    far_len: usize,
    /// Emptied buckets (a few small ones), for new ones: a bucket filled from empty grows by
    /// doubling, a reallocation and a copy each time (~250 instructions a step).
    spare: Vec<Vec<T>>,
}

impl<T: Timed> TimeQueue<T> {
    pub(super) fn new() -> Self {
        TimeQueue {
            near: Vec::new(),
            late: BinaryHeap::new(),
            near_end: Millis::MIN,
            far: HashMap::new(),
            next_bucket: Millis::MIN,
            far_len: 0,
            spare: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, t: T) {
        if t.time() < self.near_end {
            self.late.push(Reverse(t));
            return;
        }
        let b = t.time().div_euclid(RESOLUTION);
        if self.far_len == 0 || b < self.next_bucket {
            self.next_bucket = b;
        }
        self.far
            .entry(b)
            .or_insert_with(|| self.spare.pop().unwrap_or_default())
            .push(t);
        self.far_len += 1;
    }

    /// The earliest item before `before`, moving the next bucket in when the current one is
    /// used up. A bucket is moved in only once `before` reaches it: were it moved in early
    /// (an idle spell can put the next timer hours ahead), every item pushed before its end
    /// would go to the small heap, which would then hold most of the queue.
    fn peek(&mut self, before: Millis) -> Option<T> {
        // The last bucket that can hold an item before `before`.
        let last = before.saturating_sub(1).div_euclid(RESOLUTION);
        // Buckets in `far` are never empty: moving one in ends the search.
        if self.near.is_empty() && self.late.is_empty() && self.far_len > 0 {
            let mut scanned = 0;
            while self.next_bucket <= last && !self.far.contains_key(&self.next_bucket) {
                scanned += 1;
                if scanned >= SCAN_LIMIT {
                    self.next_bucket = *self.far.keys().min().expect("far_len > 0");
                } else {
                    self.next_bucket += 1;
                }
            }
            if self.next_bucket > last {
                return None;
            }
            let b = self.next_bucket;
            let items = self.far.remove(&b).expect("present");
            self.far_len -= items.len();
            // The emptied current bucket serves as the sort's second buffer.
            let (sorted, mut used) = sort_latest_first(
                items,
                b.saturating_mul(RESOLUTION),
                std::mem::take(&mut self.near),
            );
            self.near = sorted;
            if self.spare.len() < SPARES && (1..=SPARE_MAX_ITEMS).contains(&used.capacity()) {
                used.clear();
                self.spare.push(used);
            }
            self.near_end = (b + 1).saturating_mul(RESOLUTION);
            self.next_bucket = b + 1;
        }
        let first = match (self.near.last(), self.late.peek()) {
            (Some(n), Some(l)) => Some((*n).min(l.0)),
            (n, l) => n.copied().or(l.map(|l| l.0)),
        };
        first.filter(|t| t.time() < before)
    }

    /// The earliest item's time, if it is before `before`.
    pub(super) fn peek_time(&mut self, before: Millis) -> Option<Millis> {
        self.peek(before).map(|t| t.time())
    }

    /// Takes the earliest item if it is before `before` (the engine peeks first, then takes:
    /// the tests pop through the same two steps).
    #[cfg(test)]
    pub(super) fn pop(&mut self, before: Millis) -> Option<T> {
        self.peek(before)?;
        self.take_peeked()
    }

    /// Takes the earliest item, right after [`TimeQueue::peek_time`] found one before its
    /// bound (which moved its bucket in): without looking for it a second time.
    pub(super) fn take_peeked(&mut self) -> Option<T> {
        let from_late = match (self.near.last(), self.late.peek()) {
            (Some(n), Some(l)) => l.0 < *n,
            (n, _) => n.is_none(),
        };
        if from_late {
            self.late.pop().map(|t| t.0)
        } else {
            self.near.pop()
        }
    }

    /// The items of the current bucket that come next, after the first `skip` of them: a
    /// hint of what is popped soon (items pushed meanwhile may come before them).
    pub(super) fn upcoming(&self, skip: usize, n: usize) -> impl Iterator<Item = &T> {
        self.near.iter().rev().skip(skip).take(n)
    }

    pub(super) fn len(&self) -> usize {
        self.near.len() + self.late.len() + self.far_len
    }
}

/// Buckets with fewer items are sorted by comparison (the counting sort's fixed cost, a pass
/// over a counter per millisecond, is worth it above this).
const COUNTING_SORT_MIN: usize = 256;

/// Sorts the items of the bucket starting at `start` latest first, into `spare` (an empty
/// buffer): returns the sorted items and the other buffer, emptied.
///
/// Items of a bucket lie within [`RESOLUTION`] milliseconds of its start, so a counting sort
/// by millisecond orders a large bucket in two passes, and only items that share a
/// millisecond are then compared (by their whole value, as a comparison sort would). At a
/// service's rates a bucket holds tens of thousands of events or timers, and the shard waits
/// while it is sorted: 50,000 items took 2.6 ms by comparison, 1.4 ms so (1,500: 26 µs and
/// 10 µs; measured once, BENCHMARKS.md run 12).
fn sort_latest_first<T: Timed>(
    mut items: Vec<T>,
    start: Millis,
    mut spare: Vec<T>,
) -> (Vec<T>, Vec<T>) {
    const MS: usize = RESOLUTION as usize;
    let offset = |t: &T| {
        // Latest first: the last millisecond of the bucket sorts first.
        t.time()
            .checked_sub(start)
            .and_then(|d| usize::try_from(d).ok())
            .filter(|&d| d < MS)
            .map(|d| MS - 1 - d)
    };
    let by_comparison = |mut items: Vec<T>, spare| {
        items.sort_unstable_by(|a: &T, b: &T| b.cmp(a));
        (items, spare)
    };
    let Some(&first) = items.first() else {
        return (items, spare);
    };
    if items.len() < COUNTING_SORT_MIN {
        return by_comparison(items, spare);
    }
    // starts[k]: where the items of offset k go (then, once placed, where they end).
    let mut starts = [0usize; MS + 1];
    for t in &items {
        match offset(t) {
            Some(k) => starts[k + 1] += 1,
            None => return by_comparison(items, spare),
        }
    }
    for k in 1..=MS {
        starts[k] += starts[k - 1];
    }
    spare.clear();
    spare.resize(items.len(), first);
    for t in &items {
        let k = offset(t).unwrap_or(0);
        spare[starts[k]] = *t;
        starts[k] += 1;
    }
    let mut begin = 0;
    for &end in &starts[..MS] {
        if end - begin > 1 {
            spare[begin..end].sort_unstable_by(|a, b| b.cmp(a));
        }
        begin = end;
    }
    items.clear();
    (spare, items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the pushes and the bounds popped up to (interleaved), timers come out in
        /// order, and only those due before the bound.
        #[test]
        fn pops_in_order(ops in prop::collection::vec((any::<bool>(), 0i64..100_000, 0u64..4), 1..300)) {
            let mut q = TimeQueue::new();
            let mut reference = BinaryHeap::new();
            let mut floor = 0;
            for (push, at, inst) in ops {
                if push {
                    // Pushes are never earlier than what was already popped (time moves on).
                    let t = Timer { due: floor + at, instance: inst, kind: 0, slot: 0 };
                    q.push(t);
                    reference.push(Reverse(t));
                } else {
                    let before = floor + at;
                    let a = q.pop(before);
                    let b = reference.peek().filter(|r| r.0.due < before).map(|r| r.0);
                    if b.is_some() {
                        reference.pop();
                    }
                    prop_assert_eq!(a, b);
                    if let Some(t) = a {
                        floor = t.due;
                    }
                }
                prop_assert_eq!(q.len(), reference.len());
            }
            while let Some(b) = reference.pop() {
                prop_assert_eq!(q.pop(Millis::MAX), Some(b.0));
            }
            prop_assert_eq!(q.pop(Millis::MAX), None);
        }
    }

    proptest! {
        /// Large buckets are counting-sorted: the same order as a comparison sort, ties within
        /// a millisecond included, whatever the bucket's start (negative times too).
        #[test]
        fn a_bucket_sorts_as_a_comparison_sort_does(
            bucket in -5i64..5,
            items in prop::collection::vec((0i64..RESOLUTION, 0u64..8, 0u8..3), 0..1200),
        ) {
            let start = bucket * RESOLUTION;
            let items: Vec<Timer> = items
                .into_iter()
                .map(|(at, instance, kind)| Timer { due: start + at, instance, kind, slot: 0 })
                .collect();
            let mut want = items.clone();
            want.sort_unstable_by(|a, b| b.cmp(a));
            let (sorted, spare) = sort_latest_first(items, start, Vec::new());
            prop_assert_eq!(sorted, want);
            prop_assert!(spare.is_empty());
        }
    }

    #[test]
    fn items_outside_the_bucket_fall_back_to_a_comparison_sort() {
        let items: Vec<Timer> = (0..1000).map(|i| timer(i * 7 - 3000, i as u64)).collect();
        let mut want = items.clone();
        want.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(sort_latest_first(items, 0, Vec::new()).0, want);
    }

    #[test]
    fn a_large_bucket_pops_in_order() {
        let mut q = TimeQueue::new();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut due: Vec<Timer> = (0..5000)
            .map(|i| timer(5000 + rng.i64(0..RESOLUTION), i))
            .collect();
        for &t in &due {
            q.push(t);
        }
        due.sort();
        let popped: Vec<Timer> = std::iter::from_fn(|| q.pop(Millis::MAX)).collect();
        assert_eq!(popped, due);
    }

    fn timer(due: Millis, instance: u64) -> Timer {
        Timer {
            due,
            instance,
            kind: 0,
            slot: 0,
        }
    }

    #[test]
    fn a_far_bucket_is_not_moved_in_before_it_is_due() {
        let hour = 3_600_000;
        let mut q = TimeQueue::new();
        q.push(timer(0, 1));
        q.push(timer(3 * hour, 2));
        assert_eq!(q.pop(1).map(|t| t.instance), Some(1));
        assert_eq!(q.pop(2 * hour), None);
        // Timers due before the far one go to their buckets, not to the small heap.
        for i in 0..1000 {
            q.push(timer(hour + i * 1000, 10 + i as u64));
        }
        assert_eq!(q.late.len(), 0, "late heap");
        assert_eq!(q.pop(Millis::MAX).map(|t| t.instance), Some(10));
    }

    #[test]
    fn far_apart_timers_are_found_without_scanning_every_second() {
        let mut q = TimeQueue::new();
        q.push(timer(0, 1));
        q.push(timer(400 * 86_400_000, 2));
        assert_eq!(q.pop(Millis::MAX).map(|t| t.instance), Some(1));
        assert_eq!(q.pop(Millis::MAX).map(|t| t.instance), Some(2));
    }
}
