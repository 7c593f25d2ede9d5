//! What the service writes to Kafka, as plain data: the destination, key, payload and headers
//! of each alert, journey summary and dead letter. Pure, so the exact bytes and headers are
//! unit-tested without a broker.

use std::borrow::Cow;

use prost::Message;

use crate::alert::Output;
use crate::config::OutputFormat;

/// Where a record goes (resolved to a topic name by the service's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Alerts,
    Journeys,
    DeadLetter,
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    pub dest: Dest,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Fixed labels are borrowed: no allocation per record for them.
    pub headers: Vec<(&'static str, Cow<'static, [u8]>)>,
}

fn content_type(f: OutputFormat) -> &'static [u8] {
    match f {
        OutputFormat::Json => b"application/json",
        OutputFormat::Protobuf => b"application/x-protobuf",
    }
}

/// An alert or journey summary, keyed by profile id, with headers that let consumers filter
/// without decoding: `kind` (friction | drop_off | journey), `type` (alert type) and
/// `severity` for alerts, `journey` and `outcome` for summaries.
pub fn output_record(o: &Output, format: OutputFormat) -> OutRecord {
    match o {
        Output::Alert(a) => OutRecord {
            dest: Dest::Alerts,
            key: Some(a.profile_id.as_bytes().to_vec()),
            payload: match format {
                OutputFormat::Json => to_json(o),
                OutputFormat::Protobuf => a.to_proto().encode_to_vec(),
            },
            headers: vec![
                ("kind", a.kind.as_str().as_bytes().into()),
                ("type", a.alert_type.as_str().as_bytes().into()),
                ("severity", a.severity.as_str().as_bytes().into()),
                ("content-type", content_type(format).into()),
                ("schema", b"cx.v1.Alert".as_slice().into()),
            ],
        },
        Output::Journey(j) => OutRecord {
            dest: Dest::Journeys,
            key: Some(j.profile_id.as_bytes().to_vec()),
            payload: match format {
                OutputFormat::Json => to_json(o),
                OutputFormat::Protobuf => j.to_proto().encode_to_vec(),
            },
            headers: vec![
                ("kind", b"journey".as_slice().into()),
                ("journey", j.journey.as_bytes().to_vec().into()),
                ("outcome", j.outcome.as_str().as_bytes().into()),
                ("content-type", content_type(format).into()),
                ("schema", b"cx.v1.JourneySummary".as_slice().into()),
            ],
        },
    }
}

/// Where a rejected message came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// Bytes of a record that are not its key, payload or the headers written here: the
/// `source.commit` header the shard adds (~60 bytes) and librdkafka's own accounting of each
/// header (a few bytes), with room to spare.
const RECORD_OVERHEAD: usize = 1024;

/// A rejected input message: its original key and bytes unchanged, with why and where from.
///
/// The input topic may take larger messages than the producer may send (librdkafka's
/// `message.max.bytes`, `max_bytes` here, is 1,000,000 by default; a broker's limit is
/// 1,048,588). A dead letter that would not fit keeps the start of its payload and of its key,
/// as much as fits: each gets half of the room, and what one does not need goes to the other.
/// Its `payload.truncated_from` and `key.truncated_from` headers give the original sizes. Sent
/// whole, it was refused every time: with `exactly_once` the shard failed, and again after every
/// restart; with `at_least_once` it was retried forever, and its partition's input was never
/// committed again.
pub fn dead_letter(
    key: Option<&[u8]>,
    payload: &[u8],
    reason: &str,
    detail: &str,
    from: Origin<'_>,
    max_bytes: usize,
) -> OutRecord {
    let mut headers: Vec<(&'static str, Cow<'static, [u8]>)> = vec![
        ("reason", reason.as_bytes().to_vec().into()),
        ("detail", detail.as_bytes().to_vec().into()),
        ("source.topic", from.topic.as_bytes().to_vec().into()),
        (
            "source.partition",
            from.partition.to_string().into_bytes().into(),
        ),
        ("source.offset", from.offset.to_string().into_bytes().into()),
    ];
    let key_len = key.map_or(0, <[u8]>::len);
    let (mut kept_key, mut kept) = (key_len, payload.len());
    // Each cut adds a header, which takes room: cut again until nothing more needs cutting
    // (at most once more per part).
    loop {
        let named: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let room = max_bytes.saturating_sub(named + RECORD_OVERHEAD);
        if key_len + payload.len() <= room {
            break;
        }
        kept_key = key_len.min((room / 2).max(room.saturating_sub(payload.len())));
        kept = payload.len().min(room - kept_key);
        let mut added = false;
        for (cut, name, whole) in [
            (kept_key < key_len, "key.truncated_from", key_len),
            (
                kept < payload.len(),
                "payload.truncated_from",
                payload.len(),
            ),
        ] {
            if cut && !headers.iter().any(|(k, _)| *k == name) {
                headers.push((name, whole.to_string().into_bytes().into()));
                added = true;
            }
        }
        if !added {
            break;
        }
    }
    OutRecord {
        dest: Dest::DeadLetter,
        key: key.map(|k| k[..kept_key].to_vec()),
        payload: payload[..kept].to_vec(),
        headers,
    }
}

/// JSON encoding of our own output types, which cannot fail.
fn to_json(o: &Output) -> Vec<u8> {
    // Sized for a typical output (~650 bytes): no regrowing on the way.
    let mut out = Vec::with_capacity(1024);
    o.write_json(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Alert;
    use crate::config::Config;
    use crate::engine::Engine;

    fn some_outputs() -> Vec<Output> {
        let text = include_str!("../../examples/events.jsonl");
        let mut engine = Engine::from_config(&Config::example());
        let mut out = Vec::new();
        for line in text.lines().take(800) {
            let e = crate::decode::decode_json(line.as_bytes()).unwrap();
            engine.ingest(e, &mut out);
        }
        engine.drain(&mut out);
        out
    }

    fn header<'a>(r: &'a OutRecord, name: &str) -> &'a [u8] {
        &r.headers.iter().find(|h| h.0 == name).unwrap().1
    }

    #[test]
    fn alerts_and_summaries_are_keyed_by_profile_with_filter_headers() {
        let outs = some_outputs();
        let alert = outs
            .iter()
            .find_map(|o| match o {
                Output::Alert(a) => Some(a),
                _ => None,
            })
            .unwrap();
        let r = output_record(&Output::Alert(alert.clone()), OutputFormat::Json);
        assert_eq!(r.dest, Dest::Alerts);
        assert_eq!(r.key.as_deref(), Some(alert.profile_id.as_bytes()));
        assert_eq!(header(&r, "type"), alert.alert_type.as_str().as_bytes());
        assert_eq!(header(&r, "severity"), alert.severity.as_str().as_bytes());
        let back: Alert = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(&back, alert);

        let p = output_record(&Output::Alert(alert.clone()), OutputFormat::Protobuf);
        let decoded = crate::proto::Alert::decode(p.payload.as_slice()).unwrap();
        assert_eq!(decoded, alert.to_proto());
        assert_eq!(header(&p, "content-type"), b"application/x-protobuf");

        let j = outs
            .iter()
            .find(|o| matches!(o, Output::Journey(_)))
            .unwrap();
        let r = output_record(j, OutputFormat::Json);
        assert_eq!(r.dest, Dest::Journeys);
        assert_eq!(header(&r, "kind"), b"journey");
    }

    #[test]
    fn a_dead_letter_keeps_the_original_bytes_and_says_why_and_where_from() {
        let from = Origin {
            topic: "cx.interactions",
            partition: 3,
            offset: 42,
        };
        let r = dead_letter(
            Some(b"k"),
            b"\xff not json",
            "malformed",
            "bad byte",
            from,
            1_000_000,
        );
        assert_eq!(r.dest, Dest::DeadLetter);
        assert_eq!(r.payload, b"\xff not json");
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(header(&r, "reason"), b"malformed");
        assert_eq!(header(&r, "source.topic"), b"cx.interactions");
        assert_eq!(header(&r, "source.partition"), b"3");
        assert_eq!(header(&r, "source.offset"), b"42");
        assert!(r
            .headers
            .iter()
            .all(|(k, _)| *k != "payload.truncated_from"));
    }

    /// What librdkafka counts against `message.max.bytes`, roughly: key, payload, headers.
    fn counted(r: &OutRecord) -> usize {
        let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        r.key.as_ref().map_or(0, Vec::len) + r.payload.len() + headers
    }

    #[test]
    fn a_dead_letter_too_large_for_the_producer_keeps_what_fits_and_says_so() {
        let from = Origin {
            topic: "cx.interactions",
            partition: 0,
            offset: 7,
        };
        let payload: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        let r = dead_letter(Some(b"key"), &payload, "oversized", "too big", from, 20_000);
        assert_eq!(header(&r, "payload.truncated_from"), b"50000");
        assert!(payload.starts_with(&r.payload), "the start of the original");
        assert!(counted(&r) + RECORD_OVERHEAD <= 20_000);
        assert!(
            counted(&r) + RECORD_OVERHEAD > 20_000 - 10,
            "as much as fits"
        );
        // What fits is sent whole, to the byte.
        let whole = 20_000
            - RECORD_OVERHEAD
            - counted(&dead_letter(
                Some(b"key"),
                b"",
                "oversized",
                "too big",
                from,
                20_000,
            ));
        let r = dead_letter(
            Some(b"key"),
            &payload[..whole],
            "oversized",
            "too big",
            from,
            20_000,
        );
        assert_eq!(r.payload, &payload[..whole]);
        let r = dead_letter(
            Some(b"key"),
            &payload[..whole + 1],
            "oversized",
            "too big",
            from,
            20_000,
        );
        assert_eq!(
            header(&r, "payload.truncated_from"),
            (whole + 1).to_string().as_bytes()
        );
        // A limit smaller than the headers themselves: nothing of the payload, still sent.
        let r = dead_letter(Some(b"key"), &payload, "oversized", "too big", from, 100);
        assert!(r.payload.is_empty());
    }

    #[test]
    fn a_dead_letter_with_a_key_too_large_for_the_producer_keeps_the_start_of_both() {
        let from = Origin {
            topic: "cx.interactions",
            partition: 0,
            offset: 7,
        };
        let big: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
        let fits = |r: &OutRecord| counted(r) + RECORD_OVERHEAD <= 20_000;
        // A huge key and a small payload: the payload whole, the key cut to the rest.
        let r = dead_letter(Some(&big), b"{bad", "invalid_json", "x", from, 20_000);
        assert!(fits(&r));
        assert!(
            counted(&r) + RECORD_OVERHEAD > 20_000 - 10,
            "as much as fits"
        );
        assert_eq!(r.payload, b"{bad");
        assert!(big.starts_with(r.key.as_deref().unwrap()));
        assert_eq!(header(&r, "key.truncated_from"), b"50000");
        assert!(r
            .headers
            .iter()
            .all(|(k, _)| *k != "payload.truncated_from"));
        // Both huge: half of the room each.
        let r = dead_letter(Some(&big), &big, "invalid_json", "x", from, 20_000);
        assert!(fits(&r) && counted(&r) + RECORD_OVERHEAD > 20_000 - 10);
        let (k, p) = (r.key.as_ref().unwrap().len(), r.payload.len());
        assert!(k.abs_diff(p) <= 1, "key {k}, payload {p}");
        assert_eq!(header(&r, "key.truncated_from"), b"50000");
        assert_eq!(header(&r, "payload.truncated_from"), b"50000");
        // A small key stays whole while the payload is cut.
        let r = dead_letter(Some(b"key"), &big, "invalid_json", "x", from, 20_000);
        assert_eq!(r.key.as_deref(), Some(b"key".as_slice()));
        assert!(r.headers.iter().all(|(k, _)| *k != "key.truncated_from"));
    }
}
