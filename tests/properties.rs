//! Property tests: order independence within the lateness bound, determinism, and no panic
//! on arbitrary input bytes.

use cxstream::alert::Output;
use cxstream::config::Config;
use cxstream::decode::{decode, Format};
use cxstream::engine::Engine;
use cxstream::event::{Action, Channel, Event, Millis, Outcome, Survey, SurveyKind};
use proptest::prelude::*;

/// Short windows, so that small random streams exercise every detector and timer.
const CONFIG: &str = r#"
[engine]
allowed_lateness = "3s"
dedup_window = "10m"
profile_ttl = "1h"
survey_attribution = "10m"
[identity]
max_identifiers = 3
[[journeys]]
name = "checkout"
steps = ["a", "b", "c", "d"]
abandon_after = "60s"
step_sla = { c = "20s" }
step_weight = { c = 2.0 }
[[journeys]]
name = "support"
steps = ["h", "k", "r"]
entry_steps = ["h", "k"]
abandon_after = "2m"
[friction]
repeated_error = { count = 2, within = "30s" }
step_loop = { count = 2 }
channel_escalation = { within = "60s" }
repeat_contact = { count = 2, within = "5m" }
rage_click = { count = 3, within = "3s" }
outside_journey_cooldown = "1m"
"#;

const TOUCHPOINTS: [&str; 9] = ["a", "b", "c", "d", "h", "k", "r", "home", "login"];
const ACTIONS: [Action; 5] = [
    Action::View,
    Action::Click,
    Action::Error,
    Action::Contact,
    Action::Survey,
];
const CHANNELS: [Channel; 4] = [
    Channel::Web,
    Channel::MobileApp,
    Channel::ContactCenter,
    Channel::Chat,
];

#[derive(Debug, Clone)]
struct Spec {
    who: u8,
    customer: Option<u8>,
    gap_ms: u32,
    touchpoint: usize,
    action: usize,
    channel: usize,
    failure: bool,
    score: Option<i32>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..4,
        prop::option::weighted(0.3, 0u8..3),
        prop_oneof![Just(0u32), (0u32..24).prop_map(|k| k * 500)],
        0..TOUCHPOINTS.len(),
        0..ACTIONS.len(),
        0..CHANNELS.len(),
        any::<bool>(),
        prop::option::of(0i32..11),
    )
        .prop_map(
            |(who, customer, gap_ms, touchpoint, action, channel, failure, score)| Spec {
                who,
                customer,
                gap_ms,
                touchpoint,
                action,
                channel,
                failure,
                score,
            },
        )
}

fn build(specs: &[Spec]) -> Vec<Event> {
    let mut t: Millis = 1_800_000_000_000;
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            t += Millis::from(s.gap_ms);
            let action = ACTIONS[s.action];
            let mut e = Event::new(
                &format!("e{i}"),
                t,
                CHANNELS[s.channel],
                TOUCHPOINTS[s.touchpoint],
                action,
            );
            e.customer_id = s.customer.map(|c| format!("c{c}").into());
            e.anonymous_id = Some(format!("a{}", s.who).into());
            e.outcome = s.failure.then_some(Outcome::Failure);
            e.survey = (action == Action::Survey).then(|| Survey {
                kind: SurveyKind::Nps,
                score: s.score.unwrap_or(3),
            });
            e.element = Some("btn".into());
            e
        })
        .collect()
}

fn run(events: impl IntoIterator<Item = Event>) -> (Vec<Output>, Engine) {
    let mut engine = Engine::from_config(&Config::from_toml(CONFIG).unwrap());
    let mut out = Vec::new();
    for e in events {
        engine.ingest(e, &mut out);
    }
    engine.drain(&mut out);
    (out, engine)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any arrival order in which no event comes more than `allowed_lateness` after a later
    /// one gives exactly the same alerts and summaries as event-time order.
    #[test]
    fn order_within_lateness_does_not_change_outputs(
        specs in prop::collection::vec(spec(), 1..80),
        jitter in prop::collection::vec(0i64..=3000, 80),
    ) {
        let events = build(&specs);
        let (ordered, _) = run(events.clone());
        let mut arrival: Vec<(Millis, usize, Event)> =
            events.into_iter().enumerate().map(|(i, e)| (e.occurred_at + jitter[i], i, e)).collect();
        arrival.sort_by_key(|(at, i, _)| (*at, *i));
        let (shuffled, engine) = run(arrival.into_iter().map(|(_, _, e)| e));
        prop_assert_eq!(engine.stats().late, 0, "the arrival order respects the bound");
        prop_assert_eq!(ordered, shuffled);
    }

    /// The same input twice gives the same outputs, ids included.
    #[test]
    fn deterministic(specs in prop::collection::vec(spec(), 1..60)) {
        let events = build(&specs);
        prop_assert_eq!(run(events.clone()).0, run(events).0);
    }

    /// Decoding arbitrary bytes never panics, whatever the format.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for f in [Format::Json, Format::Protobuf, Format::Auto] {
            let _ = decode(&bytes, f);
        }
    }

    /// JSON-shaped garbage never panics the decoder, and whatever decodes never panics the engine.
    #[test]
    fn json_shaped_garbage_never_panics(
        s in r#"\{("(event_id|occurred_at|customer_id|anonymous_id|channel|touchpoint|action|outcome|survey|value|identities|attributes)": ?("[a-zA-Z0-9:.+-]{0,30}"|-?[0-9.e]{1,12}|null|true|\{"(kind|score|element|x)":("nps"|[0-9-]{1,3}|"")\}|\[\]),? ?){0,12}\}"#
    ) {
        if let Ok(e) = decode(s.as_bytes(), Format::Auto) {
            let _ = run([e]);
        }
    }
}

#[test]
fn timestamps_in_json_garbage_can_be_valid() {
    // Guards the generator above: it can produce an event that decodes.
    let ok = r#"{"event_id":"e","occurred_at":"2026-01-01T00:00:00Z","anonymous_id":"x","channel":"web","touchpoint":"a","action":"view"}"#;
    assert!(decode(ok.as_bytes(), Format::Auto).is_ok());
}

mod wire {
    //! The zero-copy protobuf reader against prost, the reference implementation.
    use super::*;
    use cxstream::decode::{decode_json, decode_protobuf, RejectReason};
    use cxstream::proto;
    use prost::Message;
    use std::collections::HashMap;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9._-]{1,12}",
            Just("unknown".to_string()),
            Just("web".to_string()),
            "\\PC{0,30}"
        ]
    }

    fn message() -> impl Strategy<Value = proto::InteractionEvent> {
        (
            (
                text(),
                prop::option::of((0i64..4_000_000_000, 0i32..1_000_000_000)),
                text(),
                text(),
                prop::collection::hash_map(text(), text(), 0..3),
            ),
            (
                prop_oneof![Just("web".to_string()), text()],
                text(),
                prop_oneof![Just("click".to_string()), text()],
                prop_oneof![Just("failure".to_string()), text()],
            ),
            (
                prop::option::of((prop_oneof![Just("nps".to_string()), text()], -2i32..12)),
                prop::option::of(-1e6f64..1e6),
                text(),
                prop::collection::hash_map(text(), text(), 0..3),
            ),
        )
            .prop_map(
                |(
                    (event_id, ts, customer_id, anonymous_id, identities),
                    (channel, touchpoint, action, outcome),
                    (survey, value, tier, attributes),
                )| {
                    proto::InteractionEvent {
                        event_id,
                        occurred_at: ts
                            .map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                        customer_id,
                        anonymous_id,
                        identities,
                        channel,
                        touchpoint,
                        action,
                        outcome,
                        error_code: String::new(),
                        survey: survey.map(|(kind, score)| proto::Survey { kind, score }),
                        value,
                        segment: "consumer".into(),
                        tier,
                        attributes,
                    }
                },
            )
    }

    /// The same event as JSON, to decode through the other path.
    fn as_json(m: &proto::InteractionEvent) -> Vec<u8> {
        let mut j = serde_json::json!({
            "event_id": m.event_id, "customer_id": m.customer_id, "anonymous_id": m.anonymous_id,
            "identities": m.identities, "channel": m.channel, "touchpoint": m.touchpoint, "action": m.action,
            "outcome": m.outcome, "segment": m.segment, "tier": m.tier, "attributes": m.attributes,
        });
        if let Some(t) = m.occurred_at {
            let ms = t.seconds * 1000 + i64::from(t.nanos / 1_000_000);
            j["occurred_at"] = cxstream::event::format_millis(ms).into();
        }
        if let Some(s) = &m.survey {
            j["survey"] = serde_json::json!({"kind": s.kind, "score": s.score});
        }
        if let Some(v) = m.value {
            j["value"] = v.into();
        }
        serde_json::to_vec(&j).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Well-formed messages: the wire reader gives what prost + the JSON path give.
        #[test]
        fn reader_agrees_with_prost_and_json(m in message(), junk in prop::option::of((16u32..1000, prop::collection::vec(any::<u8>(), 0..8)))) {
            let mut bytes = m.encode_to_vec();
            if let Some((field, payload)) = junk {
                // An unknown length-delimited field must be skipped.
                prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut bytes);
                prost::encoding::encode_varint(payload.len() as u64, &mut bytes);
                bytes.extend_from_slice(&payload);
            }
            prop_assert_eq!(proto::InteractionEvent::decode(bytes.as_slice()).unwrap(), m.clone());
            let ours = decode_protobuf(&bytes);
            let theirs = decode_json(&as_json(&m));
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(a), Err(b)) => prop_assert_eq!(a.reason, b.reason, "{} vs {}", a.detail, b.detail),
                _ => prop_assert!(false, "protobuf {:?} but JSON {:?}", ours, theirs),
            }
        }

        /// Arbitrary bytes: we call the wire malformed exactly when prost does.
        #[test]
        fn reader_rejects_what_prost_rejects(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let prost_ok = proto::InteractionEvent::decode(bytes.as_slice()).is_ok();
            let ours = decode_protobuf(&bytes);
            let ours_wire_ok = !matches!(&ours, Err(r) if r.reason == RejectReason::InvalidProtobuf);
            prop_assert_eq!(prost_ok, ours_wire_ok, "{:?}", ours);
        }
    }

    /// A string field's key is one byte as every encoder writes it, and the reader matches
    /// that byte whole; a key written in more bytes (valid protobuf) must read the same.
    #[test]
    fn string_fields_with_overlong_keys_read_as_prost_reads_them() {
        let m = proto::InteractionEvent {
            event_id: "e-1".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_795_000_000,
                nanos: 0,
            }),
            customer_id: "c-1".into(),
            channel: "web".into(),
            touchpoint: "home".into(),
            action: "view".into(),
            ..Default::default()
        };
        let canonical = m.encode_to_vec();
        // Rewrite each one-byte key k as the two-byte varint [k | 0x80, 0x00].
        let mut overlong = Vec::new();
        let mut rest = canonical.as_slice();
        while let Some((&k, tail)) = rest.split_first() {
            overlong.extend_from_slice(&[k | 0x80, 0x00]);
            let (len, body) = tail.split_first().unwrap();
            overlong.push(*len);
            overlong.extend_from_slice(&body[..usize::from(*len)]);
            rest = &body[usize::from(*len)..];
        }
        assert_ne!(overlong, canonical);
        assert_eq!(
            proto::InteractionEvent::decode(overlong.as_slice()).unwrap(),
            m
        );
        assert_eq!(
            decode_protobuf(&overlong).unwrap(),
            decode_protobuf(&canonical).unwrap()
        );
    }

    #[test]
    fn map_keys_repeat_last_wins() {
        let mut m = proto::InteractionEvent {
            event_id: "e".into(),
            customer_id: "c".into(),
            ..Default::default()
        };
        m.identities = HashMap::from([("device_id".to_string(), "d1".to_string())]);
        let mut bytes = m.encode_to_vec();
        m.identities = HashMap::from([("device_id".to_string(), "d2".to_string())]);
        m.encode(&mut bytes).unwrap();
        let theirs = proto::InteractionEvent::decode(bytes.as_slice()).unwrap();
        assert_eq!(theirs.identities["device_id"], "d2");
        let err = decode_protobuf(&bytes).unwrap_err();
        assert_eq!(
            err.reason,
            RejectReason::MissingField,
            "no time, but the maps decoded: {}",
            err.detail
        );
    }
}
