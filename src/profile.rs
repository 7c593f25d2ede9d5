//! A profile: one person as far as identity stitching knows, with their open journeys and
//! the short histories the profile-level detectors look back over.

use compact_str::CompactString;
use smallvec::SmallVec;

use crate::alert::JourneyOutcome;
use crate::event::Millis;
use crate::id::StoredId;
use crate::journey::Instance;

/// How many closed instances a profile remembers (for escalation after a drop-off, and for
/// attaching late survey answers).
pub const CLOSED_KEEP: usize = 4;

/// A profile's identifier keys: most profiles have one to three (customer id, anonymous
/// id, a device id), kept inline in the profile, where the lookup that checks an event's
/// keys finds them without another memory access. (Two inline, in the simulator's traffic
/// 87% of profiles kept theirs in a buffer of their own: a miss per event, and ~30 bytes.)
pub type Keys = SmallVec<[u64; 3]>;

/// A profile's open journey instances, exactly as many as there are: a boxed slice is 16
/// bytes in the profile where a vector was 24 (its capacity was always its length), and a
/// profile with nothing open holds no allocation. Opening and closing an instance reallocate
/// it (a few per event at most, next to the instance's own 176 bytes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenList(Box<[Instance]>);

impl OpenList {
    pub fn push(&mut self, inst: Instance) {
        let mut v = std::mem::take(&mut self.0).into_vec();
        v.reserve_exact(1);
        v.push(inst);
        self.0 = v.into_boxed_slice();
    }

    /// Removes the instance at `idx`; the last one takes its place.
    pub fn swap_remove(&mut self, idx: usize) -> Instance {
        let mut v = std::mem::take(&mut self.0).into_vec();
        let inst = v.swap_remove(idx);
        self.0 = v.into_boxed_slice();
        inst
    }
}

impl std::ops::Deref for OpenList {
    type Target = [Instance];
    fn deref(&self) -> &[Instance] {
        &self.0
    }
}

impl std::ops::DerefMut for OpenList {
    fn deref_mut(&mut self) -> &mut [Instance] {
        &mut self.0
    }
}

impl From<Vec<Instance>> for OpenList {
    fn from(v: Vec<Instance>) -> OpenList {
        OpenList(v.into_boxed_slice())
    }
}

impl IntoIterator for OpenList {
    type Item = Instance;
    type IntoIter = std::vec::IntoIter<Instance>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_vec().into_iter()
    }
}

impl<'a> IntoIterator for &'a OpenList {
    type Item = &'a Instance;
    type IntoIter = std::slice::Iter<'a, Instance>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Appends to one of a profile's short lists (closed journeys, detector histories), growing it
/// one entry at a time: most profiles' lists hold one or two entries, and a vector's first
/// push reserves room for four (for closed journeys, ~770 bytes).
pub(crate) fn push_exact<T>(list: &mut Vec<T>, item: T) {
    if list.len() == list.capacity() {
        list.reserve_exact(1);
    }
    list.push(item);
}

/// [`push_exact`] into a list kept to its latest `max` entries: the oldest go first.
pub(crate) fn push_bounded<T>(list: &mut Vec<T>, item: T, max: usize) {
    let over = (list.len() + 1).saturating_sub(max);
    list.drain(..over.min(list.len()));
    push_exact(list, item);
}

/// A journey instance after it closed.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub inst: Instance,
    pub outcome: JourneyOutcome,
    pub ended: Millis,
    /// Revision of the last summary emitted for it.
    pub revision: u32,
}

/// Profile state that most profiles never need, allocated on first use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileExtra {
    pub closed: Vec<Closed>,
    /// The detectors' histories, allocated on first use too: in the simulator's traffic, 63%
    /// of the profiles with extra state had closed journeys only (and carried four empty
    /// vectors, 96 bytes).
    pub history: Option<Box<History>>,
}

impl ProfileExtra {
    pub fn history(&mut self) -> &mut History {
        self.history.get_or_insert_with(Default::default)
    }
}

/// What the profile-level detectors look back over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// `contact` actions for repeat_contact: (time, event id).
    pub contacts: Vec<(Millis, CompactString)>,
    /// Recent clicks for rage_click: (touchpoint+element key, time, event id).
    pub clicks: Vec<(u64, Millis, CompactString)>,
    /// Errors outside any journey: (touchpoint key, time, event id).
    pub loose_errors: Vec<(u64, Millis, CompactString)>,
    /// Friction outside journeys already alerted: (type+touchpoint key, quiet until).
    pub cooldowns: Vec<(u64, Millis)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The customer id once known, otherwise the first anonymous identifier.
    pub id: StoredId,
    pub has_customer: bool,
    /// Latest segment and tier seen, as symbols (0 = none).
    pub segment: u16,
    pub tier: u16,
    pub last_seen: Millis,
    /// Identifier keys linked to this profile (see [`crate::identity`]).
    pub keys: Keys,
    pub open: OpenList,
    pub extra: Option<Box<ProfileExtra>>,
}

impl Profile {
    pub fn new(id: &str, has_customer: bool, t: Millis) -> Profile {
        Profile {
            id: StoredId::new(id),
            has_customer,
            segment: 0,
            tier: 0,
            last_seen: t,
            keys: Keys::new(),
            open: OpenList::default(),
            extra: None,
        }
    }

    /// The ids an output carries: the profile id, and the customer id once known (else
    /// empty). The id is written out once for both.
    pub fn output_ids(&self) -> (CompactString, CompactString) {
        let id = self.id.to_compact();
        let customer = if self.has_customer {
            id.clone()
        } else {
            CompactString::default()
        };
        (id, customer)
    }

    pub fn extra(&mut self) -> &mut ProfileExtra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub fn closed(&self) -> &[Closed] {
        self.extra.as_ref().map_or(&[], |e| e.closed.as_slice())
    }

    /// Moves an open instance to the closed list.
    pub fn close(&mut self, idx: usize, outcome: JourneyOutcome, ended: Millis) {
        let inst = self.open.swap_remove(idx);
        let closed = &mut self.extra().closed;
        if closed.len() == CLOSED_KEEP {
            closed.remove(0);
        }
        push_exact(
            closed,
            Closed {
                inst,
                outcome,
                ended,
                revision: 1,
            },
        );
    }

    /// Merges `other` into this profile. Returns the ids of instances whose timers must be
    /// re-armed (they moved to this profile's slot).
    pub fn absorb(&mut self, other: Profile) -> Vec<u64> {
        self.keys.extend_from_slice(&other.keys);
        self.last_seen = self.last_seen.max(other.last_seen);
        if self.segment == 0 {
            self.segment = other.segment;
        }
        if self.tier == 0 {
            self.tier = other.tier;
        }
        let mut moved = Vec::new();
        for inst in other.open {
            match self.open.iter_mut().find(|i| i.journey == inst.journey) {
                Some(mine) => {
                    mine.absorb(inst);
                    moved.push(mine.id);
                }
                None => {
                    moved.push(inst.id);
                    self.open.push(inst);
                }
            }
        }
        if let Some(o) = other.extra {
            let e = self.extra();
            e.closed.extend(o.closed);
            e.closed.sort_by_key(|c| (c.ended, c.inst.id));
            let drop = e.closed.len().saturating_sub(CLOSED_KEEP);
            e.closed.drain(..drop);
            if let Some(o) = o.history {
                let h = e.history();
                h.contacts.extend(o.contacts);
                h.contacts.sort();
                h.clicks.extend(o.clicks);
                h.clicks.sort_by_key(|c| c.1);
                h.loose_errors.extend(o.loose_errors);
                h.loose_errors.sort_by_key(|c| c.1);
                h.cooldowns.extend(o.cooldowns);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JourneySpec;
    use crate::journey::{Catalog, JourneyDef};

    fn def() -> JourneyDef {
        let spec: JourneySpec = toml::from_str("name = \"j\"\nsteps = [\"a\", \"b\"]").unwrap();
        Catalog::new(&[spec]).journeys.remove(0)
    }

    #[test]
    fn the_open_list_pushes_and_swap_removes_as_a_vector_does() {
        let def = def();
        let mut open = OpenList::default();
        let mut v = Vec::new();
        for id in 0..4 {
            open.push(Instance::open(&def, 0, id, 0));
            v.push(Instance::open(&def, 0, id, 0));
        }
        // (Compared by id: an instance with no value holds NaN, unequal to itself.)
        let ids = |i: &[Instance]| i.iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(open.swap_remove(1).id, v.swap_remove(1).id);
        assert_eq!(open.swap_remove(2).id, v.swap_remove(2).id);
        assert_eq!(ids(&open), ids(&v));
        assert_eq!(ids(&open.into_iter().collect::<Vec<_>>()), ids(&v));
    }

    /// A closed list is allocated for what it holds: a vector's first push reserved room for
    /// four closed journeys (~770 bytes), most of it never used by profiles that close one.
    #[test]
    fn the_closed_list_grows_one_at_a_time_up_to_its_bound() {
        let def = def();
        let mut p = Profile::new("c-1", true, 0);
        for k in 0..6u64 {
            p.open.push(Instance::open(&def, 0, k, k as Millis));
            p.close(0, JourneyOutcome::Completed, k as Millis);
            assert!(p.open.is_empty());
            let held = (k as usize + 1).min(CLOSED_KEEP);
            assert_eq!(p.closed().len(), held);
            assert_eq!(p.extra.as_ref().map(|e| e.closed.capacity()), Some(held));
            // The oldest is dropped first.
            assert_eq!(p.closed()[0].inst.id, k + 1 - held as u64);
        }
    }
}
