//! The interaction event after decoding: validated, with enums for the bounded fields.
//!
//! Invariants: `event_id`, `touchpoint` are non-empty; at least one identifier is present;
//! `survey.score` is within its kind's range. Decoders in [`crate::decode`] guarantee them.

use compact_str::CompactString;

/// Event time in milliseconds since the Unix epoch. All engine time is event time.
pub type Millis = i64;

/// A configured duration as milliseconds (saturating far beyond any sensible window).
pub fn millis(d: std::time::Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX / 4)
}

/// Event time as a protobuf timestamp.
pub fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Formats event time as RFC 3339 with millisecond precision (`2026-11-22T10:00:03.120Z`).
pub fn format_millis(ms: Millis) -> String {
    with_millis_formatted(ms, str::to_string)
}

/// Calls `f` with event time formatted as [`format_millis`] does, without allocating for the
/// usual years 0 to 9999: outputs carry several timestamps each, and the formatter machinery
/// cost several times more than the digits themselves. The calendar is chrono's.
pub fn with_millis_formatted<R>(ms: Millis, f: impl FnOnce(&str) -> R) -> R {
    use chrono::{Datelike, Timelike};
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms) else {
        return f(&ms.to_string());
    };
    let (date, time) = (t.date_naive(), t.time());
    let Some(year) = u32::try_from(date.year()).ok().filter(|y| *y <= 9999) else {
        return f(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    };
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    let fields = [
        (year, 0, 4),
        (date.month(), 5, 2),
        (date.day(), 8, 2),
        (time.hour(), 11, 2),
        (time.minute(), 14, 2),
        (time.second(), 17, 2),
        (ms.rem_euclid(1000) as u32, 20, 3),
    ];
    for (mut v, at, width) in fields {
        for b in buf[at..at + width].iter_mut().rev() {
            *b = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    // Only ASCII digits and separators were written.
    f(std::str::from_utf8(&buf).unwrap_or_default())
}

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order (a value's index is its bit in masks).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable, lower-case label used in JSON, protobuf and metrics.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }

            /// Parses a label; `None` for anything not in the list.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($label => Some($name::$variant),)+ _ => None }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown {} {s:?}", stringify!($name))))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use label_enum;

label_enum!(
    /// Where the interaction happened. Unknown labels become `Other` (and are counted).
    Channel {
        Web => "web", MobileApp => "mobile_app", ContactCenter => "contact_center", Chat => "chat",
        Chatbot => "chatbot", Email => "email", Sms => "sms", Store => "store", Social => "social",
        Ivr => "ivr", Other => "other",
    }
);

label_enum!(
    /// What the customer did. Unknown labels become `Other` (and are counted).
    Action {
        View => "view", Click => "click", Submit => "submit", Error => "error", Contact => "contact",
        Survey => "survey", Purchase => "purchase", Identify => "identify", Other => "other",
    }
);

label_enum!(
    /// The result of the interaction, when the producer knows it.
    Outcome { Success => "success", Failure => "failure" }
);

label_enum!(
    /// Survey instruments and their score ranges.
    SurveyKind { Nps => "nps", Csat => "csat", Ces => "ces" }
);

impl SurveyKind {
    /// Inclusive score range of the instrument.
    pub fn range(self) -> (i32, i32) {
        match self {
            SurveyKind::Nps => (0, 10),
            SurveyKind::Csat => (1, 5),
            SurveyKind::Ces => (1, 7),
        }
    }
}

impl Channel {
    /// Self-service channels: friction here that is followed by an assisted contact is an escalation.
    pub fn is_digital(self) -> bool {
        matches!(
            self,
            Channel::Web | Channel::MobileApp | Channel::Chatbot | Channel::Ivr
        )
    }

    /// Channels where a person serves the customer.
    pub fn is_assisted(self) -> bool {
        matches!(
            self,
            Channel::ContactCenter | Channel::Chat | Channel::Email | Channel::Store
        )
    }

    /// This channel's bit in a [`ChannelSet`].
    pub fn bit(self) -> u16 {
        1 << (self as u8)
    }
}

/// A small set of channels, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelSet(pub u16);

impl ChannelSet {
    pub fn insert(&mut self, c: Channel) {
        self.0 |= c.bit();
    }
    pub fn has_digital(self) -> bool {
        Channel::ALL
            .iter()
            .any(|c| c.is_digital() && self.0 & c.bit() != 0)
    }
    /// The channels in declaration order, in a vector of exactly their number.
    pub fn to_vec(self) -> Vec<Channel> {
        let mut v = Vec::with_capacity(self.0.count_ones() as usize);
        v.extend(self.iter());
        v
    }
    pub fn iter(self) -> impl Iterator<Item = Channel> {
        Channel::ALL
            .iter()
            .copied()
            .filter(move |c| self.0 & c.bit() != 0)
    }
}

/// An event's other identifiers: inline for the usual one (no allocation per event to make,
/// and none to free when the event is applied, long after, its memory no longer cached).
pub type Identities = smallvec::SmallVec<[(CompactString, CompactString); 1]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Survey {
    pub kind: SurveyKind,
    pub score: i32,
}

/// One validated customer interaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: CompactString,
    pub occurred_at: Millis,
    pub customer_id: Option<CompactString>,
    pub anonymous_id: Option<CompactString>,
    /// Other identifiers as (kind, value), e.g. ("device_id", "d-7").
    pub identities: Identities,
    pub channel: Channel,
    pub touchpoint: CompactString,
    pub action: Action,
    pub outcome: Option<Outcome>,
    pub error_code: Option<CompactString>,
    pub survey: Option<Survey>,
    pub value: Option<f64>,
    pub segment: Option<CompactString>,
    pub tier: Option<CompactString>,
    /// `attributes.element`: the UI element clicked, which rage-click detection groups by.
    /// Other attributes are accepted and not kept: nothing in the engine reads them.
    pub element: Option<CompactString>,
    /// The producer's channel label was not one we know (mapped to `Other`).
    pub unknown_channel: bool,
    /// The producer's action label was not one we know (mapped to `Other`).
    pub unknown_action: bool,
}

impl Event {
    /// An event with the required fields and nothing else: add at least one identifier
    /// (`customer_id`, `anonymous_id` or `identities`) before giving it to the engine.
    pub fn new(
        event_id: &str,
        occurred_at: Millis,
        channel: Channel,
        touchpoint: &str,
        action: Action,
    ) -> Event {
        Event {
            event_id: event_id.into(),
            occurred_at,
            customer_id: None,
            anonymous_id: None,
            identities: Identities::new(),
            channel,
            touchpoint: touchpoint.into(),
            action,
            outcome: None,
            error_code: None,
            survey: None,
            value: None,
            segment: None,
            tier: None,
            element: None,
            unknown_channel: false,
            unknown_action: false,
        }
    }

    /// True when this event counts as an error for `repeated_error`.
    pub fn is_error(&self) -> bool {
        self.action == Action::Error || self.outcome == Some(Outcome::Failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono_formatted(ms: Millis) -> String {
        chrono::DateTime::from_timestamp_millis(ms).map_or(ms.to_string(), |t| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
    }

    #[test]
    fn timestamps_format_as_chrono_does_at_the_edges() {
        assert_eq!(format_millis(1_795_000_003_120), "2026-11-18T11:06:43.120Z");
        for ms in [
            0,
            -1,
            -62_167_219_200_000, // 0000-01-01
            -62_167_219_200_001, // year -1: chrono's own formatting
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000, // year 10000
            Millis::MAX,         // out of chrono's range
        ] {
            assert_eq!(format_millis(ms), chrono_formatted(ms), "{ms}");
        }
    }

    proptest! {
        #[test]
        fn timestamps_format_as_chrono_does(ms in -70_000_000_000_000i64..260_000_000_000_000) {
            prop_assert_eq!(format_millis(ms), chrono_formatted(ms));
        }
    }
}
