//! Identity stitching: which profile an event belongs to.
//!
//! Every identifier (customer id, anonymous id, or `kind:value` from `identities`) is reduced
//! to a 64-bit stable hash, its *key*. Keys that appear together in one event are linked into
//! one profile. Two profiles with different customer ids never merge: a customer id is
//! authoritative, and a shared device must not fuse two customers. Guardrails (the
//! never-link list and the per-profile cap) refuse links and are counted.
//!
//! 64-bit keys trade an astronomically small collision chance (about 1 in 10^8 for a
//! million identifiers alive at once) for 8 bytes per identifier.

use compact_str::CompactString;
use hashbrown::{HashMap, HashTable};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::event::Event;

/// The role of an identifier in an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Customer,
    Anonymous,
    Other,
}

/// An identifier's key and role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub hash: u64,
    pub kind: KeyKind,
}

/// Identity settings, compiled.
#[derive(Debug, Clone)]
pub struct IdentityRules {
    never_link: Vec<CompactString>,
    never_link_max_len: usize,
    /// Lower-cased first bytes of the never-link values (1 = some value starts with it).
    never_link_first: [u8; 256],
    pub max_identifiers: usize,
}

impl IdentityRules {
    pub fn new(never_link: &[String], max_identifiers: usize) -> IdentityRules {
        IdentityRules {
            never_link: never_link.iter().map(|s| s.as_str().into()).collect(),
            never_link_max_len: never_link.iter().map(String::len).max().unwrap_or(0),
            never_link_first: {
                let mut t = [0u8; 256];
                for v in never_link.iter().filter_map(|v| v.as_bytes().first()) {
                    t[usize::from(v.to_ascii_lowercase())] = 1;
                }
                t
            },
            max_identifiers,
        }
    }

    fn linkable(&self, value: &str) -> bool {
        // Most real identifiers are longer than any placeholder, or start with a byte no
        // placeholder starts with: they skip the comparisons.
        let first = value
            .as_bytes()
            .first()
            .map_or(0, |b| b.to_ascii_lowercase());
        if value.len() > self.never_link_max_len
            || (!value.is_empty() && self.never_link_first[usize::from(first)] == 0)
        {
            return true;
        }
        !self
            .never_link
            .iter()
            .any(|n| n.eq_ignore_ascii_case(value))
    }

    /// Calls `f` with the event's identifiers in key order (customer first, then anonymous,
    /// then other identities in kind order), each with its hash seed, kind prefix and kind,
    /// until `f` returns false. (A chain of iterators cost ~100 instructions an event more.)
    fn each_identifier<'e>(
        e: &'e Event,
        mut f: impl FnMut(u64, &'e str, &'e str, KeyKind) -> bool,
    ) {
        if let Some(c) = &e.customer_id {
            if !f(1, "", c, KeyKind::Customer) {
                return;
            }
        }
        if let Some(a) = &e.anonymous_id {
            if !f(2, "", a, KeyKind::Anonymous) {
                return;
            }
        }
        for (k, v) in &e.identities {
            if !f(3, k, v, KeyKind::Other) {
                return;
            }
        }
    }

    /// The identity's kind seeds the value's hash: "device_id"/"x" and "email"/"x" differ.
    fn hash(seed: u64, prefix: &str, value: &str) -> u64 {
        let seed = if prefix.is_empty() {
            seed
        } else {
            xxh3_64_with_seed(prefix.as_bytes(), seed)
        };
        xxh3_64_with_seed(value.as_bytes(), seed)
    }

    /// Fills `out` with the linkable keys of an event (customer first, then anonymous, then
    /// other identities in kind order). Returns how many identifiers the never-link list stopped.
    pub fn keys(&self, e: &Event, out: &mut Vec<Key>) -> u32 {
        self.fill_keys(e, None, out)
    }

    /// [`IdentityRules::keys`] when the first key is known already (the engine computes it
    /// once, when the event arrives): it is not hashed again.
    pub fn keys_after(&self, e: &Event, first: u64, out: &mut Vec<Key>) -> u32 {
        self.fill_keys(e, Some(first), out)
    }

    fn fill_keys(&self, e: &Event, mut first: Option<u64>, out: &mut Vec<Key>) -> u32 {
        out.clear();
        let mut stopped = 0;
        Self::each_identifier(e, |seed, prefix, value, kind| {
            if self.linkable(value) {
                let hash = first
                    .take()
                    .unwrap_or_else(|| Self::hash(seed, prefix, value));
                debug_assert_eq!(hash, Self::hash(seed, prefix, value), "a stale first key");
                out.push(Key { hash, kind });
            } else {
                stopped += 1;
            }
            true
        });
        stopped
    }

    /// The hash of the first of [`IdentityRules::keys`]: the one an event's profile is
    /// looked up by. `None` when no identifier is linkable.
    pub fn first_key(&self, e: &Event) -> Option<u64> {
        let mut key = None;
        Self::each_identifier(e, |seed, prefix, value, _| {
            if self.linkable(value) {
                key = Some(Self::hash(seed, prefix, value));
            }
            key.is_none()
        });
        key
    }

    /// The id a new profile gets: its customer id, else its first anonymous identifier.
    pub fn profile_id(e: &Event) -> &str {
        e.customer_id
            .as_deref()
            .or(e.anonymous_id.as_deref())
            .or_else(|| e.identities.first().map(|(_, v)| v.as_str()))
            .unwrap_or_default()
    }
}

/// Key to profile slot. Keys are already hashes, so they index the table as they are (no
/// second hash per probe), and an entry is 12 bytes, not the 16 a `(u64, u32)` pair pads to.
#[derive(Debug, Clone, Default)]
pub struct IdentityIndex {
    map: HashTable<IndexEntry>,
}

/// A key (split in halves, so that the entry aligns to 4 bytes) and its profile slot.
#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    key: [u32; 2],
    slot: u32,
}

impl IndexEntry {
    fn new(key: u64, slot: u32) -> IndexEntry {
        IndexEntry {
            key: [key as u32, (key >> 32) as u32],
            slot,
        }
    }
    fn key(&self) -> u64 {
        u64::from(self.key[0]) | (u64::from(self.key[1]) << 32)
    }
}

impl IdentityIndex {
    pub fn get(&self, key: u64) -> Option<u32> {
        self.map.find(key, |e| e.key() == key).map(|e| e.slot)
    }
    pub fn set(&mut self, key: u64, slot: u32) {
        match self.map.entry(key, |e| e.key() == key, IndexEntry::key) {
            hashbrown::hash_table::Entry::Occupied(mut e) => e.get_mut().slot = slot,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(IndexEntry::new(key, slot));
            }
        }
    }
    /// Removes `key` if it still points to `slot`.
    pub fn remove_if(&mut self, key: u64, slot: u32) {
        if let Ok(e) = self.map.find_entry(key, |e| e.key() == key) {
            if e.get().slot == slot {
                e.remove();
            }
        }
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Interns low-cardinality labels (segment, tier) to 16-bit symbols; 0 means "none".
/// Bounded: past [`Symbols::CAP`] distinct values new ones are stored as none (and counted).
#[derive(Debug, Clone)]
pub struct Symbols {
    names: Vec<CompactString>,
    index: HashMap<CompactString, u16>,
}

impl Default for Symbols {
    fn default() -> Self {
        Symbols {
            names: vec![CompactString::default()],
            index: HashMap::new(),
        }
    }
}

impl Symbols {
    pub const CAP: usize = 4096;

    /// The symbol of `s`, or `None` when the table is full.
    pub fn intern(&mut self, s: &str) -> Option<u16> {
        if let Some(&i) = self.index.get(s) {
            return Some(i);
        }
        if self.names.len() >= Self::CAP {
            return None;
        }
        let i = self.names.len() as u16;
        self.names.push(s.into());
        self.index.insert(s.into(), i);
        Some(i)
    }

    pub fn name(&self, sym: u16) -> &str {
        self.names.get(usize::from(sym)).map_or("", |s| s.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_json;

    fn rules() -> IdentityRules {
        IdentityRules::new(
            &["", "0", "unknown", "null", "undefined"].map(String::from),
            8,
        )
    }

    #[test]
    fn keys_are_typed_and_skip_placeholders() {
        let e = decode_json(
            br#"{"event_id":"e","occurred_at":"2026-01-01T00:00:00Z","customer_id":"c1","anonymous_id":"UNKNOWN",
            "identities":{"device_id":"d1","email":"null"},"channel":"web","touchpoint":"t","action":"view"}"#,
        )
        .unwrap();
        let mut keys = Vec::new();
        let stopped = rules().keys(&e, &mut keys);
        assert_eq!(stopped, 2);
        assert_eq!(
            keys.iter().map(|k| k.kind).collect::<Vec<_>>(),
            vec![KeyKind::Customer, KeyKind::Other]
        );
        // The same value as customer id and as anonymous id are different identifiers.
        let mut e2 = e.clone();
        e2.customer_id = None;
        e2.anonymous_id = Some("c1".into());
        let mut k2 = Vec::new();
        rules().keys(&e2, &mut k2);
        assert_ne!(keys[0].hash, k2[0].hash);
    }

    #[test]
    fn the_first_key_is_the_first_linkable_identifier() {
        let e = decode_json(
            br#"{"event_id":"e","occurred_at":"2026-01-01T00:00:00Z","customer_id":"null","anonymous_id":"0",
            "identities":{"email":"x@y","device_id":"d1"},"channel":"web","touchpoint":"t","action":"view"}"#,
        )
        .unwrap();
        let mut keys = Vec::new();
        rules().keys(&e, &mut keys);
        // Identities in kind order: device_id before email.
        assert_eq!(keys.len(), 2);
        assert_eq!(rules().first_key(&e), Some(keys[0].hash));
        // Given the first key, the same keys come out, and the same count of stopped ones.
        let mut given = Vec::new();
        let first = keys[0].hash;
        assert_eq!(rules().keys_after(&e, first, &mut given), 2);
        assert_eq!(given, keys);
        let mut only_placeholders = e.clone();
        only_placeholders.identities.clear();
        assert_eq!(rules().first_key(&only_placeholders), None);
    }

    #[test]
    fn symbols_are_bounded() {
        let mut s = Symbols::default();
        assert_eq!(s.intern("gold"), Some(1));
        assert_eq!(s.intern("gold"), Some(1));
        assert_eq!(s.name(1), "gold");
        assert_eq!(s.name(0), "");
        for i in 0..Symbols::CAP {
            s.intern(&i.to_string());
        }
        assert_eq!(s.intern("one-too-many"), None);
    }
}
