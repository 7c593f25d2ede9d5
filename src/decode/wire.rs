//! A zero-copy reader for the protobuf wire format of `cx.v1.InteractionEvent`.
//!
//! prost decodes every string into its own `String` and every map into a `HashMap`: a dozen
//! allocations per event, on the hottest path we have. This reader borrows strings from the
//! input instead (short ones then live inline in `CompactString`, with no allocation at all).
//! It follows the protobuf rules prost does: unknown fields are skipped, the last value of a
//! scalar field wins, embedded messages merge. A property test checks it against prost.

use super::{check_time_range, Raw, Reject, RejectReason};

fn bad(detail: impl Into<String>) -> Reject {
    Reject::new(RejectReason::InvalidProtobuf, detail)
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

#[inline]
fn varint(buf: &mut &[u8]) -> Result<u64, Reject> {
    // Tags and lengths are almost always one byte.
    if let Some((&b, rest)) = buf.split_first() {
        if b < 0x80 {
            *buf = rest;
            return Ok(u64::from(b));
        }
    }
    varint_slow(buf)
}

fn varint_slow(buf: &mut &[u8]) -> Result<u64, Reject> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(bad("truncated varint"));
        };
        *buf = rest;
        if i == 9 && b > 1 {
            return Err(bad("varint overflows 64 bits"));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("varint longer than 10 bytes"))
}

/// A field key: (field number, wire type).
#[inline]
fn key(buf: &mut &[u8]) -> Result<(u64, u8), Reject> {
    let k = varint(buf)?;
    let field = k >> 3;
    if field == 0 || field > u64::from(u32::MAX >> 3) {
        return Err(bad(format!("invalid field number {field}")));
    }
    Ok((field, (k & 7) as u8))
}

#[inline]
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], Reject> {
    if n > buf.len() {
        return Err(past_end(n));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

#[inline]
fn bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], Reject> {
    let n = varint(buf)?;
    take(
        buf,
        usize::try_from(n).map_err(|_| bad("length overflows"))?,
    )
}

#[inline(always)]
fn string<'a>(buf: &mut &'a [u8], field: &str) -> Result<&'a str, Reject> {
    let b = bytes(buf)?;
    utf8(b).map_err(|_| not_utf8(field))
}

/// `std::str::from_utf8`, with a fast path for ASCII. std's validation walks short strings a
/// byte at a time (~940 instructions an event, a third of decoding); `is_ascii` reads them a
/// word at a time, and nearly every identifier, touchpoint and label is ASCII.
#[inline(always)]
fn utf8(b: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if b.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        #[allow(unsafe_code)]
        Ok(unsafe { std::str::from_utf8_unchecked(b) })
    } else {
        std::str::from_utf8(b)
    }
}

// The errors are built out of line, so that the readers above stay small where they are
// inlined: `string` inlined into the parse loop took decoding from ~418 to ~362 ns an event
// (a call per string field, and its result passed through memory).
#[cold]
#[inline(never)]
fn past_end(n: usize) -> Reject {
    bad(format!(
        "field of {n} bytes runs past the end of the message"
    ))
}

#[cold]
#[inline(never)]
fn not_utf8(field: &str) -> Reject {
    bad(format!("field `{field}` is not valid UTF-8"))
}

const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
/// Deepest nesting of (deprecated) groups in an unknown field that is skipped.
const MAX_GROUP_DEPTH: u32 = 64;

fn skip(buf: &mut &[u8], wire: u8, field: u64) -> Result<(), Reject> {
    skip_at(buf, wire, field, 0)
}

fn skip_at(buf: &mut &[u8], wire: u8, field: u64, depth: u32) -> Result<(), Reject> {
    match wire {
        VARINT => varint(buf).map(drop),
        FIXED64 => take(buf, 8).map(drop),
        LEN => bytes(buf).map(drop),
        FIXED32 => take(buf, 4).map(drop),
        START_GROUP => {
            if depth >= MAX_GROUP_DEPTH {
                return Err(bad("groups nested too deep"));
            }
            loop {
                let (f, w) = key(buf)?;
                if w == END_GROUP {
                    return if f == field {
                        Ok(())
                    } else {
                        Err(bad(format!("group {field} closed by {f}")))
                    };
                }
                skip_at(buf, w, f, depth + 1)?;
            }
        }
        w => Err(bad(format!("field {field} has invalid wire type {w}"))),
    }
}

fn expect(wire: u8, want: u8, name: &str) -> Result<(), Reject> {
    if wire != want {
        return Err(bad(format!(
            "field `{name}` has wire type {wire}, expected {want}"
        )));
    }
    Ok(())
}

/// A `map<string, string>` entry: (key, value).
fn map_entry<'a>(mut buf: &'a [u8], name: &str) -> Result<(&'a str, &'a str), Reject> {
    let (mut k, mut v) = ("", "");
    while !buf.is_empty() {
        match key(&mut buf)? {
            (1, w) => {
                expect(w, LEN, name)?;
                k = string(&mut buf, name)?;
            }
            (2, w) => {
                expect(w, LEN, name)?;
                v = string(&mut buf, name)?;
            }
            (f, w) => skip(&mut buf, w, f)?,
        }
    }
    Ok((k, v))
}

/// A field's name (for error messages), `None` for a field we do not read.
fn field_name(field: u64) -> Option<&'static str> {
    Some(match field {
        1 => "event_id",
        2 => "occurred_at",
        3 => "customer_id",
        4 => "anonymous_id",
        5 => "identities",
        6 => "channel",
        7 => "touchpoint",
        8 => "action",
        9 => "outcome",
        10 => "error_code",
        11 => "survey",
        12 => "value",
        13 => "segment",
        14 => "tier",
        15 => "attributes",
        _ => return None,
    })
}

/// Parses the wire bytes into `raw` (in place: returned by value, the raw fields, a few
/// hundred bytes, were copied on the way out); validation is shared with JSON.
pub(super) fn parse_event<'a>(mut buf: &'a [u8], raw: &mut Raw<&'a str>) -> Result<(), Reject> {
    let mut ts: Option<(i64, i32)> = None;
    while let Some((&tag, rest)) = buf.split_first() {
        // A string field's key, as every encoder writes it, is one byte (field number << 3 |
        // length-delimited): matched whole, it needs no key decoding, naming or wire-type
        // check. Any other key (other fields, or a key written in more bytes) goes below.
        let text = match tag {
            0x0a => Some(&mut raw.event_id),
            0x1a => Some(&mut raw.customer_id),
            0x22 => Some(&mut raw.anonymous_id),
            0x32 => Some(&mut raw.channel),
            0x3a => Some(&mut raw.touchpoint),
            0x42 => Some(&mut raw.action),
            0x4a => Some(&mut raw.outcome),
            0x52 => Some(&mut raw.error_code),
            0x6a => Some(&mut raw.segment),
            0x72 => Some(&mut raw.tier),
            _ => None,
        };
        if let Some(slot) = text {
            buf = rest;
            *slot = string(
                &mut buf,
                field_name(u64::from(tag >> 3)).unwrap_or_default(),
            )?;
            continue;
        }
        let (field, w) = key(&mut buf)?;
        let Some(name) = field_name(field) else {
            skip(&mut buf, w, field)?;
            continue;
        };
        if field == 12 {
            expect(w, FIXED64, name)?;
            let b = take(&mut buf, 8)?;
            raw.value = Some(f64::from_le_bytes(
                b.try_into().map_err(|_| bad("short double"))?,
            ));
            continue;
        }
        expect(w, LEN, name)?;
        match field {
            2 => {
                let mut m = bytes(&mut buf)?;
                let (mut secs, mut nanos) = ts.unwrap_or((0, 0));
                while !m.is_empty() {
                    match key(&mut m)? {
                        (1, VARINT) => secs = varint(&mut m)? as i64,
                        (2, VARINT) => nanos = varint(&mut m)? as i32,
                        (f, w) if f > 2 => skip(&mut m, w, f)?,
                        (f, w) => {
                            return Err(bad(format!("occurred_at field {f} has wire type {w}")))
                        }
                    }
                }
                ts = Some((secs, nanos));
            }
            5 => raw.identities.push(map_entry(bytes(&mut buf)?, name)?),
            15 => {
                let (k, v) = map_entry(bytes(&mut buf)?, name)?;
                raw.attribute_count += 1;
                if k == "element" {
                    raw.element = v;
                }
            }
            11 => {
                let mut m = bytes(&mut buf)?;
                let (mut kind, mut score) = raw.survey.take().unwrap_or(("", 0));
                while !m.is_empty() {
                    match key(&mut m)? {
                        (1, LEN) => kind = string(&mut m, "survey.kind")?,
                        (2, VARINT) => score = i64::from(varint(&mut m)? as i32),
                        (f, w) if f > 2 => skip(&mut m, w, f)?,
                        (f, w) => return Err(bad(format!("survey field {f} has wire type {w}"))),
                    }
                }
                raw.survey = Some((kind, score));
            }
            _ => {
                let s = string(&mut buf, name)?;
                let slot = match field {
                    1 => &mut raw.event_id,
                    3 => &mut raw.customer_id,
                    4 => &mut raw.anonymous_id,
                    6 => &mut raw.channel,
                    7 => &mut raw.touchpoint,
                    8 => &mut raw.action,
                    9 => &mut raw.outcome,
                    10 => &mut raw.error_code,
                    13 => &mut raw.segment,
                    _ => &mut raw.tier,
                };
                *slot = s;
            }
        }
    }
    // Map keys are unique: a repeated key's last value wins, as in prost's HashMap.
    // A few entries (the usual case) are compared pairwise, without a set.
    let ids = &mut raw.identities;
    if ids.len() > 16 {
        let mut seen = std::collections::HashSet::new();
        let mut deduped: Vec<_> = ids
            .drain(..)
            .rev()
            .filter(|(k, _)| seen.insert(*k))
            .collect();
        deduped.reverse();
        *ids = deduped.into();
    } else {
        let mut i = 0;
        while i < ids.len() {
            if ids[i + 1..].iter().any(|(k, _)| *k == ids[i].0) {
                ids.remove(i);
            } else {
                i += 1;
            }
        }
    }
    raw.occurred_at = ts.map(|(secs, nanos)| {
        if !(0..1_000_000_000).contains(&nanos) {
            return Err(Reject::new(
                RejectReason::InvalidTimestamp,
                format!("`occurred_at.nanos` {nanos} is out of range"),
            ));
        }
        match secs.checked_mul(1000) {
            Some(ms) => {
                check_time_range(ms + i64::from(nanos / 1_000_000), &format_args!("{secs}s"))
            }
            None => Err(Reject::new(
                RejectReason::InvalidTimestamp,
                "`occurred_at.seconds` overflows",
            )),
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// The ASCII fast path accepts and rejects exactly what std does.
        #[test]
        fn utf8_agrees_with_std(b in prop::collection::vec(any::<u8>(), 0..40), ascii in any::<bool>()) {
            let b: Vec<u8> = if ascii { b.into_iter().map(|c| c & 0x7f).collect() } else { b };
            prop_assert_eq!(super::utf8(&b).ok(), std::str::from_utf8(&b).ok());
        }
    }

    proptest! {
        /// Varints read as prost reads them: value, bytes taken, and what it rejects.
        #[test]
        fn varints_read_as_prost_reads_them(
            v in any::<u64>(),
            bits in 0u32..64,
            tail in prop::collection::vec(any::<u8>(), 0..12),
            raw in prop::collection::vec(any::<u8>(), 0..14),
        ) {
            // Values of every length (the shift spreads them over 1 to 10 bytes), followed by
            // more bytes or not; then arbitrary bytes.
            let mut valid = Vec::new();
            prost::encoding::encode_varint(v >> bits, &mut valid);
            valid.extend_from_slice(&tail);
            for bytes in [valid, raw] {
                let mut ours = bytes.as_slice();
                let mut theirs = bytes.as_slice();
                let got = super::varint(&mut ours).ok();
                let want = prost::encoding::decode_varint(&mut theirs).ok();
                prop_assert_eq!(got, want);
                if want.is_some() {
                    prop_assert_eq!(ours.len(), theirs.len());
                }
            }
        }
    }

    #[test]
    fn utf8_reads_ascii_and_beyond() {
        assert_eq!(super::utf8(b"checkout.payment"), Ok("checkout.payment"));
        assert_eq!(
            super::utf8("caf\u{e9}-\u{1f600}".as_bytes()),
            Ok("caf\u{e9}-\u{1f600}")
        );
        assert!(super::utf8(b"caf\xe9").is_err());
    }
}
