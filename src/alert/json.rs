//! The JSON form of alerts and journey summaries, written straight into a buffer.
//!
//! Byte for byte what `serde_json` writes for the same value (the tests hold it to that, so a
//! field added to [`Alert`] or [`JourneySummary`] and not here fails them), at a fraction of
//! the cost. `serde_json` looks at every byte of every string, keys included, one at a time
//! (`format_escaped_str` was ~45% of an output's encoding, `examples/output_speed`). Here the
//! keys are constants, and a value is checked for characters that need escaping in one pass
//! with no branch per byte, then copied whole: ids, steps and labels never need escaping.
//! A string that does, and every number, is still written by `serde_json`.

use super::{Alert, JourneySummary, Output};
use crate::event::{rfc3339_millis, with_millis_formatted, Millis};

impl Output {
    /// Appends this output's JSON form to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Output::Alert(a) => a.write_json(out),
            Output::Journey(j) => j.write_json(out),
        }
    }
}

impl Alert {
    /// Appends this alert's JSON form to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.text("{\"alert_id\":");
        w.str(&self.alert_id);
        w.text(",\"kind\":");
        w.str(self.kind.as_str());
        w.text(",\"type\":");
        w.str(self.alert_type.as_str());
        w.text(",\"severity\":");
        w.str(self.severity.as_str());
        w.text(",\"score\":");
        w.via_serde_json(self.score);
        w.text(",\"factors\":{\"type_weight\":");
        w.via_serde_json(self.factors.type_weight);
        w.text(",\"step_weight\":");
        w.via_serde_json(self.factors.step_weight);
        w.text(",\"tier_multiplier\":");
        w.via_serde_json(self.factors.tier_multiplier);
        w.text("},\"profile_id\":");
        w.str(&self.profile_id);
        w.text(",\"customer_id\":");
        w.str(&self.customer_id);
        w.text(",\"journey\":");
        w.str(&self.journey);
        w.text(",\"journey_instance_id\":");
        w.str(&self.journey_instance_id);
        w.text(",\"step\":");
        w.str(&self.step);
        w.text(",\"touchpoint\":");
        w.str(&self.touchpoint);
        w.text(",\"channels\":");
        w.list(&self.channels, |w, c| w.str(c.as_str()));
        w.text(",\"occurred_at\":");
        w.time(self.occurred_at);
        w.text(",\"evidence\":");
        w.list(&self.evidence, |w, e| w.str(e));
        w.text(",\"segment\":");
        w.str(&self.segment);
        w.text(",\"tier\":");
        w.str(&self.tier);
        w.text("}");
    }
}

impl JourneySummary {
    /// Appends this summary's JSON form to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.text("{\"journey_instance_id\":");
        w.str(&self.journey_instance_id);
        w.text(",\"journey\":");
        w.str(&self.journey);
        w.text(",\"profile_id\":");
        w.str(&self.profile_id);
        w.text(",\"customer_id\":");
        w.str(&self.customer_id);
        w.text(",\"outcome\":");
        w.str(self.outcome.as_str());
        w.text(",\"started_at\":");
        w.time(self.started_at);
        w.text(",\"ended_at\":");
        w.time(self.ended_at);
        w.text(",\"furthest_step\":");
        w.str(&self.furthest_step);
        w.text(",\"steps\":");
        w.list(&self.steps, |w, s| {
            w.text("{\"step\":");
            w.str(&s.step);
            w.text(",\"first_entered_at\":");
            w.time(s.first_entered_at);
            w.text(",\"entries\":");
            w.via_serde_json(s.entries);
            w.text(",\"seconds\":");
            w.via_serde_json(s.seconds);
            w.text("}");
        });
        w.text(",\"channels\":");
        w.list(&self.channels, |w, c| w.str(c.as_str()));
        w.text(",\"friction\":");
        w.list(&self.friction, |w, f| w.str(f.as_str()));
        w.text(",\"surveys\":");
        w.list(&self.surveys, |w, s| {
            w.text("{\"kind\":");
            w.str(s.kind.as_str());
            w.text(",\"score\":");
            w.via_serde_json(s.score);
            w.text(",\"event_id\":");
            w.str(&s.event_id);
            w.text("}");
        });
        w.text(",\"value\":");
        w.via_serde_json(self.value);
        w.text(",\"segment\":");
        w.str(&self.segment);
        w.text(",\"tier\":");
        w.str(&self.tier);
        w.text(",\"revision\":");
        w.via_serde_json(self.revision);
        w.text("}");
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    /// JSON text that needs no escaping: keys and punctuation.
    fn text(&mut self, s: &'static str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn str(&mut self, s: &str) {
        if needs_escaping(s.as_bytes()) {
            self.via_serde_json(s);
        } else {
            self.quoted(s);
        }
    }

    /// A string known to need no escaping.
    fn quoted(&mut self, s: &str) {
        self.0.reserve(s.len() + 2);
        self.0.push(b'"');
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(b'"');
    }

    /// What `serde_json` writes for `v`: numbers (and `null` for `None`), and strings that
    /// need escaping.
    fn via_serde_json<T: serde::Serialize>(&mut self, v: T) {
        serde_json::to_writer(&mut *self.0, &v).expect("writing to a Vec cannot fail");
    }

    /// A timestamp: digits and separators only, so never escaped.
    fn time(&mut self, t: Millis) {
        match rfc3339_millis(t) {
            Some(text) => {
                self.0.push(b'"');
                self.0.extend_from_slice(&text);
                self.0.push(b'"');
            }
            None => with_millis_formatted(t, |s| self.quoted(s)),
        }
    }

    fn list<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) {
        self.0.push(b'[');
        for (i, x) in items.iter().enumerate() {
            if i > 0 {
                self.0.push(b',');
            }
            item(self, x);
        }
        self.0.push(b']');
    }
}

/// Whether `s` holds a character JSON strings escape: a control character, `"` or `\`.
/// Eight bytes at a time, with no branch per byte (values are short, and almost never do):
/// a byte at a time this was ~500 instructions an output (`examples/output_speed.rs`).
fn needs_escaping(s: &[u8]) -> bool {
    const ONES: u64 = u64::MAX / 255;
    // The top bit of each byte of the result is set where `x`'s byte is below `n` (for
    // `n` <= 128; other bytes' top bits may be set too only when one of those is).
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & (ONES << 7);
    let chunks = s.chunks_exact(8);
    let tail = chunks.remainder();
    let any = chunks.fold(0, |any, c| {
        let x = u64::from_le_bytes(c.try_into().expect("eight bytes"));
        any | below(x, 0x20)
            | below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
    });
    any != 0
        || tail.iter().fold(0u8, |any, &b| {
            any | u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\')
        }) != 0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::alert::{AlertKind, AlertType, JourneyOutcome, ScoreFactors, Severity};
    use crate::alert::{StepTiming, SurveyScore};
    use crate::config::Config;
    use crate::engine::Engine;
    use crate::event::{Channel, SurveyKind};

    fn ours(o: &Output) -> String {
        let mut out = Vec::new();
        o.write_json(&mut out);
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    #[test]
    fn every_output_of_the_example_data_is_written_as_serde_json_writes_it() {
        let mut engine = Engine::from_config(&Config::example());
        let mut out = Vec::new();
        for line in include_str!("../../examples/events.jsonl").lines() {
            let e = crate::decode::decode_json(line.as_bytes()).expect("valid example");
            engine.ingest(e, &mut out);
        }
        engine.drain(&mut out);
        let (mut alerts, mut journeys, mut surveys, mut steps) = (0, 0, 0, 0);
        for o in &out {
            assert_eq!(ours(o), serde_json::to_string(o).unwrap());
            match o {
                Output::Alert(_) => alerts += 1,
                Output::Journey(j) => {
                    journeys += 1;
                    surveys += j.surveys.len();
                    steps += j.steps.iter().filter(|s| s.seconds.is_some()).count();
                }
            }
        }
        // The data reaches every part of both forms.
        assert!(alerts > 50 && journeys > 50 && surveys > 0 && steps > 0);
    }

    fn any_text() -> impl Strategy<Value = compact_str::CompactString> {
        // Any characters, with quotes, backslashes and control characters often.
        prop_oneof![
            any::<String>(),
            proptest::collection::vec(
                prop_oneof![
                    Just('"'),
                    Just('\\'),
                    Just('\n'),
                    Just('\u{1}'),
                    Just('é'),
                    Just('a')
                ],
                0..12
            )
            .prop_map(|c| c.into_iter().collect()),
        ]
        .prop_map(Into::into)
    }

    fn number() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(0.1),
            Just(1e21)
        ]
    }

    #[test]
    fn a_character_to_escape_is_found_wherever_it_is() {
        for len in 0..20 {
            for at in 0..len {
                for b in (0u8..0x20).chain([b'"', b'\\']) {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert!(needs_escaping(&s), "{len} {at} {b}");
                }
                for b in (0x20u8..=0xff).filter(|b| ![b'"', b'\\'].contains(b)) {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert!(!needs_escaping(&s), "{len} {at} {b}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_alert_is_written_as_serde_json_writes_it(
            s in proptest::collection::vec(any_text(), 12),
            f in proptest::collection::vec(number(), 4),
            t in any::<i64>(),
            channels in 0..3usize,
        ) {
            let a = Output::Alert(Alert {
                alert_id: s[0].clone(),
                kind: AlertKind::Friction,
                alert_type: AlertType::RageClick,
                severity: Severity::High,
                score: f[0],
                factors: ScoreFactors { type_weight: f[1], step_weight: f[2], tier_multiplier: f[3] },
                profile_id: s[1].clone(),
                customer_id: s[2].clone(),
                journey: s[3].clone(),
                journey_instance_id: s[4].clone(),
                step: s[5].clone(),
                touchpoint: s[6].clone(),
                channels: [Channel::Web, Channel::ContactCenter][..channels.min(2)].to_vec(),
                occurred_at: t,
                evidence: s[7..7 + channels].to_vec(),
                segment: s[10].clone(),
                tier: s[11].clone(),
            });
            prop_assert_eq!(ours(&a), serde_json::to_string(&a).unwrap());
        }

        #[test]
        fn any_journey_summary_is_written_as_serde_json_writes_it(
            s in proptest::collection::vec(any_text(), 10),
            f in proptest::collection::vec(proptest::option::of(number()), 2),
            t in proptest::collection::vec(any::<i64>(), 3),
            n in any::<(u32, i32, u32)>(),
            items in 0..3usize,
        ) {
            let j = Output::Journey(JourneySummary {
                journey_instance_id: s[0].clone(),
                journey: s[1].clone(),
                profile_id: s[2].clone(),
                customer_id: s[3].clone(),
                outcome: JourneyOutcome::Abandoned,
                started_at: t[0],
                ended_at: t[1],
                furthest_step: s[4].clone(),
                steps: (0..items)
                    .map(|i| StepTiming { step: s[5 + i].clone(), first_entered_at: t[2], entries: n.0, seconds: f[1] })
                    .collect(),
                channels: [Channel::Sms, Channel::Store][..items.min(2)].to_vec(),
                friction: AlertType::ALL[..items].to_vec(),
                surveys: (0..items)
                    .map(|i| SurveyScore { kind: SurveyKind::Nps, score: n.1, event_id: s[7 + i].clone() })
                    .collect(),
                value: f[0],
                segment: s[8].clone(),
                tier: s[9].clone(),
                revision: n.2,
            });
            prop_assert_eq!(ours(&j), serde_json::to_string(&j).unwrap());
        }
    }
}
