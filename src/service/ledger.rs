//! Which input offset of one partition may be committed: the at-least-once bookkeeping.
//!
//! An offset is done when its event has been applied by the engine (the watermark passed it,
//! or it was rejected, late or a duplicate at once) and every output produced while it was
//! the oldest unfinished offset has been acknowledged by the broker. Outputs are charged to
//! the oldest unfinished offset, not to the message being processed: an event released from
//! the reorder buffer by a later message causes outputs that must hold back the *earlier*
//! offset's commit. Offsets finish in order, so the commit position only moves forward and
//! never past an event whose effects are not yet safely in Kafka.
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
    /// Outputs charged to this entry and not yet acknowledged.
    unacked: u32,
}

/// The commit bookkeeping of one partition.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: VecDeque<Entry>,
    /// Next offset to commit: everything before it is done.
    done_until: Option<i64>,
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
            unacked: 0,
        });
    }

    /// Charges one output to the oldest unfinished offset and returns its token for
    /// [`Ledger::ack`]. `None` when every consumed offset is done (the output comes from an
    /// idle advance over state whose inputs are already committed).
    pub fn charge(&mut self) -> Option<i64> {
        let front = self.entries.front_mut()?;
        front.unacked += 1;
        Some(front.offset)
    }

    /// An output charged to `token` was acknowledged by the broker.
    pub fn ack(&mut self, token: i64) {
        // Entries are sorted by offset; charged entries are near the front.
        if let Ok(i) = self.entries.binary_search_by_key(&token, |e| e.offset) {
            let e = &mut self.entries[i];
            debug_assert!(e.unacked > 0);
            e.unacked = e.unacked.saturating_sub(1);
        }
    }

    /// Retires finished offsets given the engine's watermark. Returns the new commit position
    /// (next offset to read) when it moved.
    pub fn advance(&mut self, watermark: Millis) -> Option<i64> {
        let before = self.done_until;
        while let Some(e) = self.entries.front() {
            let applied = e.pending_until.is_none_or(|t| t < watermark);
            if !applied || e.unacked > 0 {
                break;
            }
            self.done_until = Some(e.offset + 1);
            self.entries.pop_front();
        }
        (self.done_until != before)
            .then_some(self.done_until)
            .flatten()
    }

    /// Where to read again from after a restore of state as it is now: the oldest offset
    /// whose event is still buffered (not applied at `watermark`), or `next` (the next offset
    /// to consume). Outputs need not be acknowledged yet: a commit records this position only
    /// once everything produced before it is.
    pub fn resume_at(&self, next: i64, watermark: Millis) -> i64 {
        self.entries
            .iter()
            .find(|e| e.pending_until.is_some_and(|t| t >= watermark))
            .map_or(next, |e| e.offset)
    }

    /// Next offset to commit, once anything is done.
    pub fn done_until(&self) -> Option<i64> {
        self.done_until
    }

    /// Offsets consumed and not yet done.
    pub fn unfinished(&self) -> usize {
        self.entries.len()
    }

    /// Outputs waiting for acknowledgement.
    pub fn unacked(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.unacked)).sum()
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
        assert_eq!(l.advance(1_000), None, "watermark not past the event yet");
        assert_eq!(l.advance(1_001), Some(12));
        assert_eq!(l.unfinished(), 0);
        assert_eq!(l.advance(5_000), None, "nothing new");
    }

    #[test]
    fn an_offset_waits_for_the_outputs_charged_while_it_was_oldest() {
        let mut l = Ledger::new();
        l.push(0, Some(100));
        l.push(1, Some(50));
        // Message 2 moves the watermark: events 0 and 1 are applied, their outputs are
        // charged to offset 0 (the oldest unfinished), not to 2.
        l.push(2, Some(9_000));
        let a = l.charge().unwrap();
        let b = l.charge().unwrap();
        assert_eq!((a, b), (0, 0));
        assert_eq!(l.advance(200), None, "outputs not acknowledged");
        l.ack(a);
        assert_eq!(l.advance(200), None);
        l.ack(b);
        assert_eq!(
            l.advance(200),
            Some(2),
            "offset 2's event is still buffered"
        );
        assert_eq!(l.done_until(), Some(2));
    }

    #[test]
    fn a_later_buffered_event_never_lets_the_commit_pass_an_earlier_one() {
        let mut l = Ledger::new();
        l.push(0, Some(5_000)); // late-ish event time, buffered long
        l.push(1, None);
        l.push(2, Some(10));
        assert_eq!(l.advance(100), None, "offset 0 blocks 1 and 2");
        assert_eq!(l.advance(5_001), Some(3));
    }

    #[test]
    fn the_resume_position_is_the_oldest_event_still_buffered_acknowledged_or_not() {
        let mut l = Ledger::new();
        l.push(0, Some(100));
        l.push(1, None);
        l.push(2, Some(9_000));
        l.push(3, Some(50));
        let _unacked = l.charge();
        assert_eq!(l.resume_at(4, 10), 0, "nothing applied yet");
        assert_eq!(
            l.resume_at(4, 200),
            2,
            "0, 1 and 3 applied; 0's output still in flight"
        );
        assert_eq!(l.resume_at(4, 9_001), 4, "everything applied");
    }

    #[test]
    fn outputs_with_nothing_unfinished_are_not_charged() {
        let mut l = Ledger::new();
        assert_eq!(l.charge(), None);
        l.push(7, None);
        assert_eq!(l.advance(0), Some(8));
        assert_eq!(l.charge(), None);
        assert_eq!(l.unacked(), 0);
    }
}
