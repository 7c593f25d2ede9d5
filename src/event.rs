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
/// usual years 0 to 9999 (see [`rfc3339_millis`]).
pub fn with_millis_formatted<R>(ms: Millis, f: impl FnOnce(&str) -> R) -> R {
    match rfc3339_millis(ms) {
        // Only ASCII digits and separators were written.
        Some(text) => f(std::str::from_utf8(&text).unwrap_or_default()),
        None => match chrono::DateTime::from_timestamp_millis(ms) {
            Some(t) => f(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            None => f(&ms.to_string()),
        },
    }
}

/// Event time as [`format_millis`] writes it, for years 0 to 9999 (`None` for others).
///
/// Outputs carry several timestamps each, and formatting them was a fifth of encoding an
/// output as JSON: the calendar (chrono's) is now worked out once per day, the time of day
/// by arithmetic.
pub fn rfc3339_millis(ms: Millis) -> Option<[u8; 24]> {
    const DAY: Millis = 86_400_000;
    let (day, in_day) = (ms.div_euclid(DAY), ms.rem_euclid(DAY));
    let mut text = *b"0000-00-00T00:00:00.000Z";
    text[..10].copy_from_slice(&date_of(day)?);
    write_digits(&mut text[11..13], in_day / 3_600_000);
    write_digits(&mut text[14..16], in_day / 60_000 % 60);
    write_digits(&mut text[17..19], in_day / 1000 % 60);
    write_digits(&mut text[20..23], in_day % 1000);
    Some(text)
}

/// A day since the Unix epoch as `YYYY-MM-DD`, for years 0 to 9999. The last day asked for
/// is kept (per thread): an output's timestamps, and those of the outputs around it, mostly
/// fall on one day.
fn date_of(day: Millis) -> Option<[u8; 10]> {
    use chrono::Datelike;
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<(Millis, [u8; 10])> = const { Cell::new((Millis::MIN, [0; 10])) };
    }
    if let Some(text) = LAST.with(|last| Some(last.get()).filter(|l| l.0 == day)) {
        return Some(text.1);
    }
    let date = chrono::DateTime::from_timestamp(day.checked_mul(86_400)?, 0)?.date_naive();
    let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let mut text = *b"0000-00-00";
    write_digits(&mut text[0..4], Millis::from(year));
    write_digits(&mut text[5..7], Millis::from(date.month()));
    write_digits(&mut text[8..10], Millis::from(date.day()));
    LAST.with(|last| last.set((day, text)));
    Some(text)
}

/// Writes the last `to.len()` decimal digits of `v` (not negative), zero-padded.
fn write_digits(to: &mut [u8], mut v: Millis) {
    for b in to.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
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

        /// Runs of nearby times, as outputs carry them: the day kept is reused within a day
        /// and replaced across midnight, forwards and backwards.
        #[test]
        fn nearby_timestamps_format_as_chrono_does(
            base in -62_167_219_200_000i64..253_402_300_799_999,
            steps in prop::collection::vec(-90_000_000i64..90_000_000, 1..20),
        ) {
            let mut ms = base;
            for step in steps {
                ms = ms.saturating_add(step);
                prop_assert_eq!(format_millis(ms), chrono_formatted(ms), "{}", ms);
            }
        }
    }
}
