//! Where one partition's input resumes after a restore: the oldest offset whose event is
//! still in the engine's reorder buffer.
//!
//! A message is finished once its event has been applied (the watermark passed its event
//! time) or at once when nothing is left to apply (rejected, late, duplicate). A later event
//! may be applied before an earlier one is (the reorder buffer releases by event time), so the
//! resume position is the oldest unfinished offset, never past it. Whether the outputs of
//! finished events are acknowledged is the commit's business (see the shard's commit epochs),
//! not the ledger's.
//!
//! Pure: no Kafka, no clock.

use std::collections::VecDeque;

use crate::event::Millis;

#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: i64,
    /// Event time of a buffered event: applied once the watermark is past it.
    /// `None`: nothing left to apply (rejected, late, duplicate).
    pending_until: Option<Millis>,
}

impl Entry {
    fn finished(&self, watermark: Millis) -> bool {
        self.pending_until.is_none_or(|t| t < watermark)
    }
}

/// The unfinished input of one partition.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: VecDeque<Entry>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Records a consumed message. `buffered_at` is the event time of an event the engine
    /// buffered (see [`crate::engine::Ingest::Accepted`]), `None` when nothing is left to apply.
    pub fn push(&mut self, offset: i64, buffered_at: Option<Millis>) {
        debug_assert!(self.entries.back().is_none_or(|e| e.offset < offset));
        self.entries.push_back(Entry {
            offset,
            pending_until: buffered_at,
        });
    }

    /// Drops the finished messages before the oldest unfinished one, given the engine's
    /// watermark, and returns where to read again from after a restore of state as it is
    /// now: the oldest unfinished offset, or `next` (the next offset to consume).
    pub fn resume_at(&mut self, next: i64, watermark: Millis) -> i64 {
        while self.entries.front().is_some_and(|e| e.finished(watermark)) {
            self.entries.pop_front();
        }
        self.entries.front().map_or(next, |e| e.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_waits_for_its_event_to_be_applied() {
        let mut l = Ledger::new();
        l.push(10, Some(1_000));
        l.push(11, None);
        assert_eq!(
            l.resume_at(12, 1_000),
            10,
            "watermark not past the event yet"
        );
        assert_eq!(l.resume_at(12, 1_001), 12);
    }

    #[test]
    fn a_later_applied_event_never_lets_the_position_pass_an_earlier_one() {
        let mut l = Ledger::new();
        l.push(0, Some(5_000)); // late-ish event time, buffered long
        l.push(1, None);
        l.push(2, Some(10));
        assert_eq!(l.resume_at(3, 100), 0, "offset 0 holds back 1 and 2");
        assert_eq!(l.resume_at(3, 5_001), 3);
    }

    #[test]
    fn the_position_is_the_oldest_event_still_buffered() {
        let mut l = Ledger::new();
        l.push(0, Some(100));
        l.push(1, None);
        l.push(2, Some(9_000));
        l.push(3, Some(50));
        assert_eq!(l.resume_at(4, 10), 0, "nothing applied yet");
        assert_eq!(l.resume_at(4, 200), 2, "0, 1 and 3 applied");
        assert_eq!(l.resume_at(4, 9_001), 4, "everything applied");
    }
}
