//! Writes a profile's changelog record, `cx.state.v1.ProfileState`, straight from the engine's
//! structures in the protobuf wire format.
//!
//! Building prost's owned message first copied every event id, name and label into its own
//! `String` (about thirty allocations for a profile with closed journeys) and was most of a
//! checkpoint's cost: 25-30 ms per shard every commit at 100,000 events/s, in which the shard
//! processes nothing. The bytes are prost's, field for field (a test compares them against the
//! owned message prost encodes); reading stays with prost.

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

use super::Rules;
use crate::event::Millis;
use crate::identity::Symbols;
use crate::journey::Instance;
use crate::profile::Profile;

/// Appends `p`'s `ProfileState` to `buf`.
pub(super) fn profile(buf: &mut Vec<u8>, p: &Profile, rules: &Rules, symbols: &Symbols) {
    p.id.with_str(|id| string(buf, 1, id));
    if p.has_customer {
        uint(buf, 2, 1);
    }
    string(buf, 3, symbols.name(p.segment));
    string(buf, 4, symbols.name(p.tier));
    int64(buf, 5, p.last_seen);
    if !p.keys.is_empty() {
        encode_key(6, WireType::LengthDelimited, buf);
        varint(8 * p.keys.len() as u64, buf);
        for k in &p.keys {
            buf.extend_from_slice(&k.to_le_bytes());
        }
    }
    for i in &p.open {
        message(buf, 7, |buf| instance(buf, i, rules));
    }
    let Some(e) = &p.extra else {
        return;
    };
    for c in &e.closed {
        message(buf, 8, |buf| {
            message(buf, 1, |buf| instance(buf, &c.inst, rules));
            uint(buf, 2, c.outcome as u64);
            int64(buf, 3, c.ended);
            uint(buf, 4, u64::from(c.revision));
        });
    }
    let Some(h) = &e.history else {
        return;
    };
    for (t, id) in &h.contacts {
        stamp(buf, 9, 0, *t, id);
    }
    for (field, list) in [(10, &h.clicks), (11, &h.loose_errors)] {
        for (k, t, id) in list {
            stamp(buf, field, *k, *t, id);
        }
    }
    for (k, until) in &h.cooldowns {
        stamp(buf, 12, *k, *until, "");
    }
}

fn instance(buf: &mut Vec<u8>, i: &Instance, rules: &Rules) {
    fixed64(buf, 1, i.id);
    string(buf, 2, &rules.catalog.journeys[usize::from(i.journey)].name);
    uint(buf, 3, u64::from(i.current));
    uint(buf, 4, u64::from(i.furthest));
    uint(buf, 5, u64::from(i.channels.0));
    uint(buf, 6, u64::from(i.fired));
    int64(buf, 7, i.started);
    int64(buf, 8, i.last);
    if !i.steps.is_empty() {
        encode_key(9, WireType::LengthDelimited, buf);
        let len: usize = i
            .steps
            .iter()
            .map(|s| encoded_len_varint(u64::from(s.first)))
            .sum();
        varint(len as u64, buf);
        for s in &i.steps {
            varint(u64::from(s.first), buf);
        }
        encode_key(10, WireType::LengthDelimited, buf);
        varint(i.steps.len() as u64, buf);
        buf.extend(i.steps.iter().map(|s| s.entries));
    }
    for (_, id) in i.recent.iter() {
        id.with_str(|id| {
            encode_key(11, WireType::LengthDelimited, buf);
            varint(id.len() as u64, buf);
            buf.extend_from_slice(id.as_bytes());
        });
    }
    let recent = i.recent.iter().count();
    if recent > 0 {
        encode_key(12, WireType::LengthDelimited, buf);
        varint(recent as u64, buf);
        buf.extend(i.recent.iter().map(|(s, _)| s));
    }
    if !i.value.is_nan() {
        encode_key(13, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&i.value.to_le_bytes());
    }
    let Some(e) = &i.extra else {
        return;
    };
    for (t, id) in &e.errors {
        stamp(buf, 14, 0, *t, id);
    }
    for (v, id) in &e.surveys {
        message(buf, 15, |buf| {
            uint(buf, 1, v.kind as u64);
            int64(buf, 2, i64::from(v.score));
            string(buf, 3, id);
        });
    }
}

fn stamp(buf: &mut Vec<u8>, field: u32, key: u64, time: Millis, id: &str) {
    message(buf, field, |buf| {
        fixed64(buf, 1, key);
        int64(buf, 2, time);
        string(buf, 3, id);
    });
}

/// An embedded message: its length is only known once written, so one byte is set aside for
/// it (enough below 128 bytes, the usual case) and the message moved along when it needs more.
fn message(buf: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    encode_key(field, WireType::LengthDelimited, buf);
    let at = buf.len();
    buf.push(0);
    write(buf);
    let end = buf.len();
    let len = end - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
    } else {
        // Moved along in place: a `splice` cost ~160 instructions and an allocation.
        let mut prefix = [0u8; 10];
        let mut rest = &mut prefix[..];
        encode_varint(len as u64, &mut rest);
        let n = 10 - rest.len();
        buf.resize(end + n - 1, 0);
        buf.copy_within(at + 1..end, at + n);
        buf[at..at + n].copy_from_slice(&prefix[..n]);
    }
}

/// prost's `encode_varint`, with a one-byte value (lengths, counts, small numbers: most of a
/// record's) pushed here, inline: the call alone, not inlined at so many sites, was ~20
/// instructions (`examples/checkpoint_speed.rs`).
#[inline(always)]
fn varint(v: u64, buf: &mut Vec<u8>) {
    if v < 0x80 {
        buf.push(v as u8);
    } else {
        encode_varint(v, buf);
    }
}

// Singular proto3 fields: a default value (0, empty) is not written.

fn string(buf: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        encode_key(field, WireType::LengthDelimited, buf);
        varint(s.len() as u64, buf);
        buf.extend_from_slice(s.as_bytes());
    }
}

fn uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        encode_key(field, WireType::Varint, buf);
        varint(v, buf);
    }
}

/// `int64` and `int32`: negative values as their 64-bit two's complement, as protobuf says.
fn int64(buf: &mut Vec<u8>, field: u32, v: i64) {
    uint(buf, field, v as u64);
}

fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        encode_key(field, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use crate::proto::state as pb;

    #[test]
    fn a_message_of_128_bytes_or_more_gets_a_longer_length() {
        for len in [0, 1, 113, 114, 200, 16_360, 16_361, 20_000, 2_100_000] {
            let id = "x".repeat(len);
            let mut buf = Vec::new();
            super::stamp(&mut buf, 9, 7, -3, &id);
            let expected = pb::ProfileState {
                contacts: vec![pb::Stamp {
                    key: 7,
                    time: -3,
                    event_id: id,
                }],
                ..Default::default()
            };
            assert_eq!(buf, expected.encode_to_vec(), "{len}");
        }
    }
}
