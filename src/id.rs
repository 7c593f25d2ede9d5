//! Ids kept in long-lived state (a profile's id, the event ids an instance keeps as evidence).
//!
//! Many producers use UUIDs for customer and event ids: 36 characters, too long for a
//! `CompactString`'s 24 inline bytes, so each was an allocation of its own, and three of them
//! per open journey (its profile's id and two evidence ids in the memory benchmark run with
//! UUID ids: 513 bytes per open journey against 418 with short ids). A lowercase hyphenated
//! UUID is kept as its 16 bytes instead, inline in the same 24 bytes; any other id as text.
//! Either way it reads back exactly as it came (property-tested), so outputs and alert ids do
//! not change.

use compact_str::CompactString;

/// An id kept in long-lived state: a profile's id, an instance's evidence event ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredId {
    Uuid([u8; 16]),
    Text(CompactString),
}

impl Default for StoredId {
    fn default() -> Self {
        StoredId::Text(CompactString::default())
    }
}

impl StoredId {
    pub fn new(id: &str) -> StoredId {
        if id.len() == 36 {
            if let Ok(u) = uuid::Uuid::try_parse(id) {
                // Only the form that formats back to the same text (not upper case).
                let mut buf = [0u8; 36];
                if u.hyphenated().encode_lower(&mut buf) == id {
                    return StoredId::Uuid(*u.as_bytes());
                }
            }
        }
        StoredId::Text(id.into())
    }

    /// The id's text, handed to `f` (a UUID is written on the stack).
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            StoredId::Text(s) => f(s),
            StoredId::Uuid(b) => {
                let mut buf = [0u8; 36];
                f(uuid::Uuid::from_bytes(*b)
                    .hyphenated()
                    .encode_lower(&mut buf))
            }
        }
    }

    pub fn to_compact(&self) -> CompactString {
        self.with_str(|s| CompactString::from(s))
    }
}

impl std::fmt::Display for StoredId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_as_they_came_and_uuids_stay_inline() {
        assert_eq!(std::mem::size_of::<StoredId>(), 24);
        let uuid = "3f2b8c1e-7d1c-4b5e-9a2f-0c4d5e6f7a8b";
        assert!(matches!(StoredId::new(uuid), StoredId::Uuid(_)));
        // Other spellings that parse as UUIDs are kept as text, so that they read back as is.
        for id in [
            "3F2B8C1E-7D1C-4B5E-9A2F-0C4D5E6F7A8B",
            "3f2b8c1e7d1c4b5e9a2f0c4d5e6f7a8b",
            "{3f2b8c1e-7d1c-4b5e-9a2f-0c4d5e6f7a8b}",
            "urn:uuid:3f2b8c1e-7d1c-4b5e-9a2f-0c4d5e6f7a8b",
            "3f2b8c1e-7d1c-4b5e-9a2f-0c4d5e6f7a8",
            "e-1001",
            "",
        ] {
            let e = StoredId::new(id);
            assert!(matches!(e, StoredId::Text(_)), "{id}");
            assert_eq!(e.to_string(), id);
        }
        assert_eq!(StoredId::new(uuid).to_compact(), uuid);
    }

    proptest::proptest! {
        #[test]
        fn ids_round_trip(
            text in ".{0,40}",
            bytes in proptest::prelude::any::<[u8; 16]>(),
        ) {
            proptest::prop_assert_eq!(StoredId::new(&text).to_string(), text);
            let uuid = uuid::Uuid::from_bytes(bytes).hyphenated().to_string();
            let e = StoredId::new(&uuid);
            proptest::prop_assert_eq!(&e, &StoredId::Uuid(bytes));
            proptest::prop_assert_eq!(e.to_string(), uuid);
        }
    }
}
