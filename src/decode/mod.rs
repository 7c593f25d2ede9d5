//! Decoding interaction events from JSON or binary protobuf, with validation.
//!
//! Decoding never panics: any input bytes give either an [`Event`] or a [`Reject`] that says
//! what was wrong and where. Unknown JSON fields are ignored; unknown channel and action
//! labels map to `other` and are flagged on the event so they can be counted.

use std::borrow::Cow;
use std::fmt;

use compact_str::CompactString;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::event::{Action, Channel, Event, Identities, Millis, Outcome, Survey, SurveyKind};
use crate::proto;

/// Longest accepted id (event, customer, anonymous, identity value).
pub const MAX_ID_BYTES: usize = 256;
/// Longest accepted free-text field (touchpoint, error code, segment, tier, attribute).
pub const MAX_TEXT_BYTES: usize = 1024;
/// Most entries accepted in `identities`.
pub const MAX_IDENTITIES: usize = 16;
/// Most entries accepted in `attributes`.
pub const MAX_ATTRIBUTES: usize = 64;
/// Largest accepted encoded event.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// The wire format of an input message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Json,
    Protobuf,
    /// Per message: JSON when the first non-blank byte is `{`, protobuf otherwise.
    /// (`{` would be a protobuf group tag, which no producer of ours writes.)
    Auto,
}

/// Why an input was rejected: a small, stable set of labels (safe as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    InvalidJson,
    InvalidProtobuf,
    MissingField,
    InvalidTimestamp,
    InvalidValue,
    Oversized,
    NoIdentifier,
    /// Event time too far after the time its Kafka record was written (see [`check_ahead`]).
    FutureTimestamp,
}

impl RejectReason {
    pub const ALL: &'static [RejectReason] = &[
        RejectReason::InvalidJson,
        RejectReason::InvalidProtobuf,
        RejectReason::MissingField,
        RejectReason::InvalidTimestamp,
        RejectReason::InvalidValue,
        RejectReason::Oversized,
        RejectReason::NoIdentifier,
        RejectReason::FutureTimestamp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::InvalidProtobuf => "invalid_protobuf",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::Oversized => "oversized",
            RejectReason::NoIdentifier => "no_identifier",
            RejectReason::FutureTimestamp => "future_timestamp",
        }
    }
}

/// A rejected input: a bounded reason label plus a precise, human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
}

impl Reject {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Reject {
            reason,
            detail: detail.into(),
        }
    }
}

/// Decodes one message in the given format.
pub fn decode(bytes: &[u8], format: Format) -> Result<Event, Reject> {
    match format {
        Format::Json => decode_json(bytes),
        Format::Protobuf => decode_protobuf(bytes),
        Format::Auto => match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => decode_json(bytes),
            _ => decode_protobuf(bytes),
        },
    }
}

mod wire;

/// The fields of an event as they arrive, before validation (shared by both formats). The
/// protobuf reader's strings are all borrowed (`&str`, so that a `Raw` has nothing to drop);
/// JSON's are `Cow`s, owned where the text had escapes.
#[derive(Default)]
struct Raw<S> {
    event_id: S,
    occurred_at: Option<Result<Millis, Reject>>,
    customer_id: S,
    anonymous_id: S,
    /// Inline for the usual one or two (a temporary: no allocation just to pass them on).
    identities: smallvec::SmallVec<[(S, S); 2]>,
    channel: S,
    touchpoint: S,
    action: S,
    outcome: S,
    error_code: S,
    survey: Option<(S, i64)>,
    value: Option<f64>,
    segment: S,
    tier: S,
    element: S,
    attribute_count: usize,
}

// The checks below are inlined into `validate`, once per field; their errors are built out
// of line to keep them small (as in the wire reader).
#[inline(always)]
fn check_len(field: &str, value: &str, max: usize) -> Result<(), Reject> {
    if value.len() > max {
        return Err(oversized(field, value.len(), max));
    }
    Ok(())
}

#[cold]
#[inline(never)]
fn oversized(field: &str, len: usize, max: usize) -> Reject {
    Reject::new(
        RejectReason::Oversized,
        format!("field `{field}` is {len} bytes, the limit is {max}"),
    )
}

#[cold]
#[inline(never)]
fn missing(field: &str) -> Reject {
    Reject::new(
        RejectReason::MissingField,
        format!("required field `{field}` is missing or empty"),
    )
}

#[inline(always)]
fn required(field: &str, value: &str, max: usize) -> Result<CompactString, Reject> {
    if value.is_empty() {
        return Err(missing(field));
    }
    check_len(field, value, max)?;
    Ok(to_compact(value))
}

/// A required label that is only parsed (into an enum), never kept: no copy.
#[inline(always)]
fn required_label<'s>(field: &str, value: &'s str) -> Result<&'s str, Reject> {
    if value.is_empty() {
        return Err(missing(field));
    }
    check_len(field, value, MAX_TEXT_BYTES)?;
    Ok(value)
}

#[inline(always)]
fn optional(field: &str, value: &str, max: usize) -> Result<Option<CompactString>, Reject> {
    if value.is_empty() {
        return Ok(None);
    }
    check_len(field, value, max)?;
    Ok(Some(to_compact(value)))
}

#[inline(always)]
fn to_compact(value: &str) -> CompactString {
    CompactString::new(value)
}

impl<S: std::ops::Deref<Target = str>> Raw<S> {
    fn validate(&mut self) -> Result<Event, Reject> {
        let event_id = required("event_id", &self.event_id, MAX_ID_BYTES)?;
        let occurred_at = self.occurred_at.take().unwrap_or_else(|| {
            Err(Reject::new(
                RejectReason::MissingField,
                "required field `occurred_at` is missing",
            ))
        })?;
        let channel_label = required_label("channel", &self.channel)?;
        let touchpoint = required("touchpoint", &self.touchpoint, MAX_TEXT_BYTES)?;
        let action_label = required_label("action", &self.action)?;
        let customer_id = optional("customer_id", &self.customer_id, MAX_ID_BYTES)?;
        let anonymous_id = optional("anonymous_id", &self.anonymous_id, MAX_ID_BYTES)?;
        if self.identities.len() > MAX_IDENTITIES {
            return Err(Reject::new(
                RejectReason::Oversized,
                format!(
                    "`identities` has {} entries, the limit is {MAX_IDENTITIES}",
                    self.identities.len()
                ),
            ));
        }
        if self.attribute_count > MAX_ATTRIBUTES {
            return Err(Reject::new(
                RejectReason::Oversized,
                format!(
                    "`attributes` has {} entries, the limit is {MAX_ATTRIBUTES}",
                    self.attribute_count
                ),
            ));
        }
        let mut identities = Identities::with_capacity(self.identities.len());
        for (kind, value) in &self.identities {
            let (kind, value): (&str, &str) = (kind, value);
            check_len("identities key", kind, MAX_TEXT_BYTES)?;
            if value.len() > MAX_ID_BYTES {
                check_len(&format!("identities.{kind}"), value, MAX_ID_BYTES)?;
            }
            if !value.is_empty() {
                identities.push((to_compact(kind), to_compact(value)));
            }
        }
        // Deterministic order whatever the producer's map order was.
        identities.sort();
        if customer_id.is_none() && anonymous_id.is_none() && identities.is_empty() {
            return Err(Reject::new(
                RejectReason::NoIdentifier,
                "no identifier: need `customer_id`, `anonymous_id` or an entry of `identities`",
            ));
        }
        let outcome = match &*self.outcome {
            "" => None,
            s => Some(Outcome::parse(s).ok_or_else(|| {
                Reject::new(
                    RejectReason::InvalidValue,
                    format!("`outcome` is {s:?}; expected \"success\" or \"failure\""),
                )
            })?),
        };
        let survey = match &self.survey {
            None => None,
            Some((kind, score)) => {
                let kind: &str = kind;
                let kind = SurveyKind::parse(kind).ok_or_else(|| {
                    Reject::new(
                        RejectReason::InvalidValue,
                        format!("`survey.kind` is {kind:?}; expected nps, csat or ces"),
                    )
                })?;
                let (lo, hi) = kind.range();
                let score = *score;
                if score < i64::from(lo) || score > i64::from(hi) {
                    return Err(Reject::new(
                        RejectReason::InvalidValue,
                        format!("`survey.score` {score} is out of range for {kind} ({lo}-{hi})"),
                    ));
                }
                Some(Survey {
                    kind,
                    score: score as i32,
                })
            }
        };
        if let Some(v) = self.value {
            if !v.is_finite() {
                return Err(Reject::new(
                    RejectReason::InvalidValue,
                    "`value` must be a finite number",
                ));
            }
        }
        let channel = Channel::parse(channel_label);
        let action = Action::parse(action_label);
        Ok(Event {
            event_id,
            occurred_at,
            customer_id,
            anonymous_id,
            identities,
            channel: channel.unwrap_or(Channel::Other),
            touchpoint,
            action: action.unwrap_or(Action::Other),
            outcome,
            error_code: optional("error_code", &self.error_code, MAX_TEXT_BYTES)?,
            survey,
            value: self.value,
            segment: optional("segment", &self.segment, MAX_TEXT_BYTES)?,
            tier: optional("tier", &self.tier, MAX_TEXT_BYTES)?,
            element: optional("attributes.element", &self.element, MAX_TEXT_BYTES)?,
            unknown_channel: channel.is_none(),
            unknown_action: action.is_none(),
        })
    }
}

/// Earliest and latest accepted event times: years 1970 to 9999.
const MIN_TIME: Millis = 0;
const MAX_TIME: Millis = 253_402_300_799_999;

fn check_time_range(ms: Millis, shown: &dyn fmt::Display) -> Result<Millis, Reject> {
    if !(MIN_TIME..=MAX_TIME).contains(&ms) {
        return Err(Reject::new(
            RejectReason::InvalidTimestamp,
            format!("`occurred_at` {shown} is outside 1970-01-01..9999-12-31"),
        ));
    }
    Ok(ms)
}

/// Rejects an event time more than `max_ahead` after `written`, when the event's record was
/// written (its Kafka timestamp). The watermark follows the latest event time, so one event
/// from a device whose clock is years ahead (or a local time sent as UTC) would move it that
/// far: every open journey would be abandoned at once, and every later event would be late.
/// Kafka brokers can hold record timestamps to a like bound (`message.timestamp.after.max.ms`,
/// an hour by default on recent brokers).
pub fn check_ahead(
    occurred_at: Millis,
    written: Millis,
    max_ahead: std::time::Duration,
) -> Result<(), Reject> {
    if occurred_at.saturating_sub(written) <= crate::event::millis(max_ahead) {
        return Ok(());
    }
    Err(Reject::new(
        RejectReason::FutureTimestamp,
        format!(
            "`occurred_at` {} is more than {} after its record's timestamp {} (input.max_ahead)",
            crate::event::format_millis(occurred_at),
            humantime::format_duration(max_ahead),
            crate::event::format_millis(written),
        ),
    ))
}

/// Parses an RFC 3339 timestamp to milliseconds.
pub fn parse_rfc3339(s: &str) -> Result<Millis, Reject> {
    let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| {
        Reject::new(
            RejectReason::InvalidTimestamp,
            format!("`occurred_at` {s:?} is not RFC 3339: {e}"),
        )
    })?;
    check_time_range(t.timestamp_millis(), &format_args!("{s:?}"))
}

// ---------------------------------------------------------------- JSON

/// The fields of a JSON event.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    EventId,
    OccurredAt,
    CustomerId,
    AnonymousId,
    Identities,
    Channel,
    Touchpoint,
    Action,
    Outcome,
    ErrorCode,
    Survey,
    Value,
    Segment,
    Tier,
    Attributes,
    /// Not ours: ignored.
    Unknown,
}

impl Field {
    const ALL: [(Field, &'static str); 15] = [
        (Field::EventId, "event_id"),
        (Field::OccurredAt, "occurred_at"),
        (Field::CustomerId, "customer_id"),
        (Field::AnonymousId, "anonymous_id"),
        (Field::Identities, "identities"),
        (Field::Channel, "channel"),
        (Field::Touchpoint, "touchpoint"),
        (Field::Action, "action"),
        (Field::Outcome, "outcome"),
        (Field::ErrorCode, "error_code"),
        (Field::Survey, "survey"),
        (Field::Value, "value"),
        (Field::Segment, "segment"),
        (Field::Tier, "tier"),
        (Field::Attributes, "attributes"),
    ];
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Field, E> {
                Ok(Field::ALL
                    .iter()
                    .find(|(_, name)| *name == s)
                    .map_or(Field::Unknown, |(f, _)| *f))
            }
        }
        d.deserialize_identifier(V)
    }
}

/// Reads a JSON event's fields straight into a [`Raw`]. serde's derived struct was built,
/// then moved through the deserializer's layers and into the `Raw`: five copies of ~450 bytes
/// an event, ~380 instructions.
struct Fields<'r, 'a>(&'r mut Raw<Cow<'a, str>>);

impl<'de: 'a, 'a> Visitor<'de> for Fields<'_, 'a> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an interaction event (a JSON object)")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<(), M::Error> {
        let raw = self.0;
        let mut seen = 0u32;
        while let Some(field) = m.next_key::<Field>()? {
            if field != Field::Unknown {
                // As serde's derived structs do: a field given twice is an error.
                let bit = 1 << field as u32;
                if seen & bit != 0 {
                    let name = Field::ALL[field as usize].1;
                    return Err(serde::de::Error::duplicate_field(name));
                }
                seen |= bit;
            }
            let text = match field {
                Field::EventId => &mut raw.event_id,
                Field::CustomerId => &mut raw.customer_id,
                Field::AnonymousId => &mut raw.anonymous_id,
                Field::Channel => &mut raw.channel,
                Field::Touchpoint => &mut raw.touchpoint,
                Field::Action => &mut raw.action,
                Field::Outcome => &mut raw.outcome,
                Field::ErrorCode => &mut raw.error_code,
                Field::Segment => &mut raw.segment,
                Field::Tier => &mut raw.tier,
                Field::OccurredAt => {
                    // Absent (or null) stays `None`: `validate` says it is missing.
                    raw.occurred_at = match m.next_value::<Option<Text<'a>>>()? {
                        None => None,
                        Some(Text(s)) if s.is_empty() => Some(Err(Reject::new(
                            RejectReason::MissingField,
                            "required field `occurred_at` is empty",
                        ))),
                        Some(Text(s)) => Some(parse_rfc3339(&s)),
                    };
                    continue;
                }
                Field::Identities => {
                    raw.identities = m
                        .next_value::<Option<Pairs<'a>>>()?
                        .map_or_else(Default::default, |p| p.0);
                    continue;
                }
                Field::Attributes => {
                    let mut attributes = m
                        .next_value::<Option<Pairs<'a>>>()?
                        .map_or_else(Default::default, |p| p.0);
                    raw.attribute_count = attributes.len();
                    if let Some(i) = attributes.iter().position(|(k, _)| k == "element") {
                        raw.element = attributes.swap_remove(i).1;
                    }
                    continue;
                }
                Field::Survey => {
                    raw.survey = m
                        .next_value::<Option<JsonSurvey<'a>>>()?
                        .map(|s| (s.kind.0, s.score));
                    continue;
                }
                Field::Value => {
                    raw.value = m.next_value()?;
                    continue;
                }
                Field::Unknown => {
                    m.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            *text = or_empty(m.next_value()?);
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct JsonSurvey<'a> {
    #[serde(borrow)]
    kind: Text<'a>,
    score: i64,
}

/// A JSON string, borrowed from the message unless it has escapes to undo. (serde's own
/// `Cow<str>` always copies, and `#[serde(borrow)]` only changes a bare `Cow` field, not one
/// inside an `Option`: that was a heap allocation per string field.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                s: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(s))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s))
            }
        }
        d.deserialize_str(V).map(Text)
    }
}

/// Optional text as the validator takes it: absent (or `null`) is empty.
fn or_empty(t: Option<Text<'_>>) -> Cow<'_, str> {
    t.map_or(Cow::Borrowed(""), |t| t.0)
}

/// A JSON object of string values, kept as pairs in arrival order (no map allocation, and
/// inline for the usual one or two).
struct Pairs<'a>(smallvec::SmallVec<[(Cow<'a, str>, Cow<'a, str>); 2]>);

impl<'de: 'a, 'a> Deserialize<'de> for Pairs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Pairs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Pairs<'a>, M::Error> {
                let mut out = smallvec::SmallVec::new();
                while let Some((k, v)) = m.next_entry::<Text<'a>, Option<Text<'a>>>()? {
                    if out.len() > MAX_ATTRIBUTES.max(MAX_IDENTITIES) {
                        // Keep counting without keeping: the validator reports the size.
                        out.push((Cow::Borrowed(""), Cow::Borrowed("")));
                        continue;
                    }
                    out.push((k.0, or_empty(v)));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Decodes one JSON event.
pub fn decode_json(bytes: &[u8]) -> Result<Event, Reject> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(Reject::new(
            RejectReason::Oversized,
            format!(
                "event is {} bytes, the limit is {MAX_EVENT_BYTES}",
                bytes.len()
            ),
        ));
    }
    // JSON text is UTF-8 (RFC 8259): validated once for the whole message, so the parser can
    // borrow its strings without validating each one again (a fifth of decoding time).
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Reject::new(
            RejectReason::InvalidJson,
            format!("not valid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    let mut raw = Raw::default();
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Fields(&mut raw))
        .and_then(|()| de.end())
        .map_err(|e| Reject::new(RejectReason::InvalidJson, e.to_string()))?;
    raw.validate()
}

// ---------------------------------------------------------------- protobuf

/// Decodes one binary protobuf `cx.v1.InteractionEvent`, zero-copy: strings are borrowed
/// from `bytes` (our own wire reader, checked against prost by a property test).
pub fn decode_protobuf(bytes: &[u8]) -> Result<Event, Reject> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(Reject::new(
            RejectReason::Oversized,
            format!(
                "event is {} bytes, the limit is {MAX_EVENT_BYTES}",
                bytes.len()
            ),
        ));
    }
    let mut raw = Raw::default();
    wire::parse_event(bytes, &mut raw)?;
    raw.validate()
}

// ---------------------------------------------------------------- encoding (for producers, tests, simulator)

/// Encodes an event as protobuf (the inverse of [`decode_protobuf`]).
pub fn to_proto(e: &Event) -> proto::InteractionEvent {
    let s = |o: &Option<CompactString>| o.as_deref().unwrap_or_default().to_string();
    proto::InteractionEvent {
        event_id: e.event_id.to_string(),
        occurred_at: Some(crate::event::timestamp(e.occurred_at)),
        customer_id: s(&e.customer_id),
        anonymous_id: s(&e.anonymous_id),
        identities: e
            .identities
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        channel: e.channel.as_str().to_string(),
        touchpoint: e.touchpoint.to_string(),
        action: e.action.as_str().to_string(),
        outcome: e
            .outcome
            .map(|o| o.as_str().to_string())
            .unwrap_or_default(),
        error_code: s(&e.error_code),
        survey: e.survey.map(|v| proto::Survey {
            kind: v.kind.as_str().to_string(),
            score: v.score,
        }),
        value: e.value,
        segment: s(&e.segment),
        tier: s(&e.tier),
        attributes: e
            .element
            .iter()
            .map(|v| ("element".to_string(), v.to_string()))
            .collect(),
    }
}

/// Encodes an event as one JSON object (the inverse of [`decode_json`]).
pub fn to_json(e: &Event) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("event_id".into(), e.event_id.as_str().into());
    m.insert(
        "occurred_at".into(),
        crate::event::format_millis(e.occurred_at).into(),
    );
    let mut opt = |k: &str, v: &Option<CompactString>| {
        if let Some(v) = v {
            m.insert(k.into(), v.as_str().into());
        }
    };
    opt("customer_id", &e.customer_id);
    opt("anonymous_id", &e.anonymous_id);
    opt("error_code", &e.error_code);
    opt("segment", &e.segment);
    opt("tier", &e.tier);
    if !e.identities.is_empty() {
        let ids: serde_json::Map<_, _> = e
            .identities
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_str())))
            .collect();
        m.insert("identities".into(), ids.into());
    }
    m.insert("channel".into(), e.channel.as_str().into());
    m.insert("touchpoint".into(), e.touchpoint.as_str().into());
    m.insert("action".into(), e.action.as_str().into());
    if let Some(o) = e.outcome {
        m.insert("outcome".into(), o.as_str().into());
    }
    if let Some(s) = e.survey {
        m.insert(
            "survey".into(),
            serde_json::json!({"kind": s.kind.as_str(), "score": s.score}),
        );
    }
    if let Some(v) = e.value {
        m.insert("value".into(), v.into());
    }
    if let Some(el) = &e.element {
        m.insert(
            "attributes".into(),
            serde_json::json!({"element": el.as_str()}),
        );
    }
    m.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const SAMPLE: &str = r#"{"event_id": "e-1001", "occurred_at": "2026-11-22T10:00:03.120Z",
 "customer_id": "c-42", "anonymous_id": "a-9f3", "identities": {"device_id": "d-7"},
 "channel": "web", "touchpoint": "checkout.payment", "action": "error",
 "outcome": "failure", "error_code": "card_declined",
 "survey": {"kind": "nps", "score": 3}, "value": 129.90,
 "segment": "consumer", "tier": "gold", "attributes": {"element": "pay-button"}, "extra": [1,2]}"#;

    #[test]
    fn an_event_too_far_after_its_record_is_rejected_with_both_times() {
        let written = parse_rfc3339("2026-11-24T10:00:00Z").unwrap();
        let (hour, hour_ms) = (std::time::Duration::from_secs(3600), 3_600_000);
        assert_eq!(check_ahead(written + hour_ms, written, hour), Ok(()));
        assert_eq!(check_ahead(written - 86_400_000, written, hour), Ok(()));
        let r = check_ahead(written + hour_ms + 1, written, hour).unwrap_err();
        assert_eq!(r.reason, RejectReason::FutureTimestamp);
        assert_eq!(
            r.detail,
            "`occurred_at` 2026-11-24T11:00:00.001Z is more than 1h after its record's \
             timestamp 2026-11-24T10:00:00.000Z (input.max_ahead)"
        );
        // Extreme record times neither overflow nor let an event through.
        assert!(check_ahead(MAX_TIME, Millis::MIN, hour).is_err());
        assert_eq!(check_ahead(MIN_TIME, Millis::MAX, hour), Ok(()));
    }

    #[test]
    fn json_strings_are_borrowed_unless_escaped() {
        let t: Text<'_> = serde_json::from_str(r#""checkout.payment""#).unwrap();
        assert!(matches!(t.0, Cow::Borrowed("checkout.payment")));
        let t: Text<'_> = serde_json::from_str(r#""checkout.\u0070ay\"ment""#).unwrap();
        assert!(matches!(&t.0, Cow::Owned(s) if s == "checkout.pay\"ment"));
        let pairs: Pairs<'_> =
            serde_json::from_str(r#"{"device_id": "d-7", "e\u006cement": null}"#).unwrap();
        assert!(matches!(
            pairs.0[0],
            (Cow::Borrowed("device_id"), Cow::Borrowed("d-7"))
        ));
        assert_eq!(pairs.0[1], (Cow::Borrowed("element"), Cow::Borrowed("")));
        // Escapes undone in every kind of field, through the whole decoder.
        let e = decode_json(
            br#"{"event_id": "e\u002d1", "occurred_at": "2026-11-22T10:00:03\u002e120Z",
                 "customer_id": "c\\42", "channel": "w\u0065b", "touchpoint": "a\/b",
                 "action": "click", "attributes": {"\u0065lement": "x\ty"},
                 "survey": {"kind": "n\u0070s", "score": 9}}"#,
        )
        .unwrap();
        assert_eq!(e.event_id, "e-1");
        assert_eq!(e.occurred_at % 1000, 120);
        assert_eq!(e.customer_id.as_deref(), Some("c\\42"));
        assert_eq!(e.channel, Channel::Web);
        assert_eq!(e.touchpoint, "a/b");
        assert_eq!(e.element.as_deref(), Some("x\ty"));
        assert_eq!(e.survey.map(|s| s.kind), Some(SurveyKind::Nps));
        // A non-string where a string belongs is still a precise rejection.
        let r = decode_json(br#"{"event_id": 7}"#).unwrap_err();
        assert_eq!(r.reason, RejectReason::InvalidJson);
        assert!(r.detail.contains("expected a string"), "{}", r.detail);
    }

    #[test]
    fn decodes_the_documented_example() {
        let e = decode_json(SAMPLE.as_bytes()).unwrap();
        assert_eq!(e.event_id, "e-1001");
        assert_eq!(
            e.occurred_at,
            parse_rfc3339("2026-11-22T10:00:03.120Z").unwrap()
        );
        assert_eq!(e.occurred_at % 1000, 120);
        assert_eq!(e.customer_id.as_deref(), Some("c-42"));
        assert_eq!(
            e.identities.to_vec(),
            vec![("device_id".into(), "d-7".into())]
        );
        assert_eq!(e.channel, Channel::Web);
        assert_eq!(e.action, Action::Error);
        assert_eq!(e.outcome, Some(Outcome::Failure));
        assert_eq!(
            e.survey,
            Some(Survey {
                kind: SurveyKind::Nps,
                score: 3
            })
        );
        assert_eq!(e.value, Some(129.90));
        assert_eq!(e.element.as_deref(), Some("pay-button"));
        assert!(e.is_error());
    }

    #[test]
    fn protobuf_and_json_round_trip_to_the_same_event() {
        let e = decode_json(SAMPLE.as_bytes()).unwrap();
        let bytes = to_proto(&e).encode_to_vec();
        assert_eq!(decode_protobuf(&bytes).unwrap(), e);
        assert_eq!(decode(&bytes, Format::Auto).unwrap(), e);
        let json = serde_json::to_vec(&to_json(&e)).unwrap();
        assert_eq!(decode(&json, Format::Auto).unwrap(), e);
    }

    #[test]
    fn a_repeated_identity_kind_keeps_its_last_value() {
        // Concatenated protobuf messages merge: map entries of both arrive, the last wins.
        let with = |pairs: &[(String, &str)]| {
            let mut e = decode_json(SAMPLE.as_bytes()).unwrap();
            e.identities = pairs
                .iter()
                .map(|(k, v)| (k.as_str().into(), (*v).into()))
                .collect();
            to_proto(&e).encode_to_vec()
        };
        let kinds: Vec<String> = (0..MAX_IDENTITIES).map(|i| format!("k{i:02}")).collect();
        // A few entries (compared pairwise) and more than a few (through a set).
        for n in [2, MAX_IDENTITIES] {
            let first: Vec<_> = kinds[..n].iter().map(|k| (k.clone(), "old")).collect();
            let mut bytes = with(&first);
            bytes.extend(with(&[(kinds[0].clone(), "new")]));
            let e = decode_protobuf(&bytes).unwrap();
            assert_eq!(e.identities.len(), n);
            assert_eq!(e.identities[0], (kinds[0].as_str().into(), "new".into()));
            assert!(e.identities[1..].iter().all(|(_, v)| v == "old"));
        }
    }

    #[test]
    fn unknown_labels_map_to_other_and_are_flagged() {
        let e = decode_json(
            br#"{"event_id":"e","occurred_at":"2026-01-01T00:00:00+01:00","anonymous_id":"a","channel":"carrier-pigeon","touchpoint":"t","action":"wave"}"#,
        )
        .unwrap();
        assert_eq!((e.channel, e.unknown_channel), (Channel::Other, true));
        assert_eq!((e.action, e.unknown_action), (Action::Other, true));
        assert_eq!(
            e.occurred_at,
            parse_rfc3339("2025-12-31T23:00:00Z").unwrap()
        );
    }

    fn reason(json: &str) -> RejectReason {
        decode_json(json.as_bytes()).unwrap_err().reason
    }

    #[test]
    fn a_json_event_is_an_object_with_each_field_once_and_nulls_as_absent() {
        let base = r#""event_id":"e","occurred_at":"2026-01-01T00:00:00Z","channel":"web","touchpoint":"t","action":"view","customer_id":"c""#;
        // The field table is in the enum's order (a duplicate is named by its index).
        for (i, (f, _)) in Field::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
        }
        let twice =
            decode_json(format!(r#"{{{base},"tier":"a","tier":"b"}}"#).as_bytes()).unwrap_err();
        assert!(
            twice.detail.contains("duplicate field `tier`"),
            "{}",
            twice.detail
        );
        let twice = decode_json(format!(r#"{{{base},"event_id":"f"}}"#).as_bytes()).unwrap_err();
        assert_eq!(twice.reason, RejectReason::InvalidJson);
        assert!(
            twice.detail.contains("duplicate field `event_id`"),
            "{}",
            twice.detail
        );
        // Unknown fields may repeat: they are not ours.
        let e = decode_json(format!(r#"{{{base},"x":1,"x":{{"y":[2]}}}}"#).as_bytes()).unwrap();
        assert_eq!(e.event_id, "e");
        for not_an_object in [r#"["e"]"#, r#""e""#, "7", "null"] {
            assert_eq!(
                reason(not_an_object),
                RejectReason::InvalidJson,
                "{not_an_object}"
            );
        }
        assert_eq!(
            reason(&format!("{{{base}}} {{}}")),
            RejectReason::InvalidJson
        );
        let nulls = r#","anonymous_id":null,"identities":null,"outcome":null,"error_code":null,"survey":null,"value":null,"segment":null,"tier":null,"attributes":null"#;
        let e = decode_json(format!("{{{base}{nulls}}}").as_bytes()).unwrap();
        let plain = decode_json(format!("{{{base}}}").as_bytes()).unwrap();
        assert_eq!(e, plain);
        assert_eq!(
            reason(
                r#"{"event_id":null,"occurred_at":"2026-01-01T00:00:00Z","channel":"web","touchpoint":"t","action":"view","customer_id":"c"}"#
            ),
            RejectReason::MissingField
        );
    }

    #[test]
    fn rejects_with_precise_reasons() {
        let base = r#""event_id":"e","occurred_at":"2026-01-01T00:00:00Z","channel":"web","touchpoint":"t","action":"view""#;
        assert_eq!(reason("{nope"), RejectReason::InvalidJson);
        let mut bad_utf8 = format!(r#"{{{base},"customer_id":"c-"#).into_bytes();
        bad_utf8.extend_from_slice(b"\xff\"}");
        let err = decode_json(&bad_utf8).unwrap_err();
        assert_eq!(err.reason, RejectReason::InvalidJson);
        assert!(err.detail.contains("UTF-8"), "{}", err.detail);
        assert_eq!(reason(r#"{"event_id":"e"}"#), RejectReason::MissingField);
        assert_eq!(reason(&format!("{{{base}}}")), RejectReason::NoIdentifier);
        assert_eq!(
            reason(
                r#"{"event_id":"e","occurred_at":"yesterday","customer_id":"c","channel":"web","touchpoint":"t","action":"view"}"#
            ),
            RejectReason::InvalidTimestamp
        );
        assert_eq!(
            reason(&format!(
                r#"{{{base},"customer_id":"c","survey":{{"kind":"nps","score":11}}}}"#
            )),
            RejectReason::InvalidValue
        );
        assert_eq!(
            reason(&format!(
                r#"{{{base},"customer_id":"c","survey":{{"kind":"ces","score":0}}}}"#
            )),
            RejectReason::InvalidValue
        );
        assert_eq!(
            reason(&format!(r#"{{{base},"customer_id":"c","outcome":"meh"}}"#)),
            RejectReason::InvalidValue
        );
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let err =
            decode_json(format!(r#"{{{base},"customer_id":"{long}"}}"#).as_bytes()).unwrap_err();
        assert_eq!(err.reason, RejectReason::Oversized);
        assert!(err.detail.contains("customer_id"), "{}", err.detail);
        assert_eq!(
            decode_protobuf(&[0xff, 0xff, 0xff]).unwrap_err().reason,
            RejectReason::InvalidProtobuf
        );
    }
}
