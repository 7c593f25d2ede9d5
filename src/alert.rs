//! The engine's outputs: alerts and journey summaries, their scoring, ids and wire forms.
//!
//! An alert says what happened (`type`), where (`journey`, `step`, `touchpoint`), to whom
//! (`profile_id`, `customer_id`, `segment`, `tier`), why it matters (`score`, `factors`,
//! `severity`) and shows the `evidence` (event ids). Ids are deterministic hashes of what
//! the alert is about, so replaying the same input gives the same ids.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::config::ScoringSection;
use crate::event::{label_enum, with_millis_formatted, Channel, Millis, SurveyKind};
use crate::proto;

mod json;

label_enum!(
    /// What an alert is about: a drop-off or one of the friction detectors.
    AlertType {
        DropOff => "drop_off", RepeatedError => "repeated_error", StepLoop => "step_loop",
        ChannelEscalation => "channel_escalation", RepeatContact => "repeat_contact",
        SlowStep => "slow_step", NegativeFeedback => "negative_feedback", RageClick => "rage_click",
    }
);

impl AlertType {
    pub fn kind(self) -> AlertKind {
        match self {
            AlertType::DropOff => AlertKind::DropOff,
            _ => AlertKind::Friction,
        }
    }

    /// This type's bit in an instance's "already fired" mask.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Default weight in the alert score: how much this kind of breakdown usually matters.
    fn default_weight(self) -> f64 {
        match self {
            AlertType::DropOff => 2.0,
            AlertType::RepeatedError => 1.5,
            AlertType::StepLoop => 1.0,
            AlertType::ChannelEscalation => 2.0,
            AlertType::RepeatContact => 2.0,
            AlertType::SlowStep => 1.0,
            AlertType::NegativeFeedback => 2.0,
            AlertType::RageClick => 1.0,
        }
    }

    /// The types whose bits are set in `mask`, in declaration order.
    pub fn from_mask(mask: u8) -> Vec<AlertType> {
        let mut v = Vec::with_capacity(mask.count_ones() as usize);
        v.extend(
            AlertType::ALL
                .iter()
                .copied()
                .filter(|t| mask & t.bit() != 0),
        );
        v
    }
}

label_enum!(AlertKind { Friction => "friction", DropOff => "drop_off" });
label_enum!(Severity { Low => "low", Medium => "medium", High => "high", Critical => "critical" });
label_enum!(
    /// How a journey instance ended.
    JourneyOutcome { Completed => "completed", Abandoned => "abandoned", Expired => "expired" }
);

/// Why an alert scored what it did: score = type_weight x step_weight x tier_multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreFactors {
    pub type_weight: f64,
    pub step_weight: f64,
    pub tier_multiplier: f64,
}

/// Turns alert type, step weight and tier into a score and a severity, per `[scoring]`.
#[derive(Debug, Clone)]
pub struct Scorer {
    type_weight: [f64; 8],
    tiers: Vec<(String, f64)>,
    thresholds: crate::config::SeverityThresholds,
}

impl Scorer {
    pub fn new(cfg: &ScoringSection) -> Self {
        let mut type_weight = [0.0; 8];
        for t in AlertType::ALL {
            type_weight[*t as usize] = cfg
                .type_weight
                .get(t.as_str())
                .copied()
                .unwrap_or(t.default_weight());
        }
        Scorer {
            type_weight,
            tiers: cfg
                .tier_multiplier
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            thresholds: cfg.severity,
        }
    }

    pub fn score(
        &self,
        t: AlertType,
        step_weight: f64,
        tier: &str,
    ) -> (f64, ScoreFactors, Severity) {
        let tier_multiplier = self
            .tiers
            .iter()
            .find(|(k, _)| k == tier)
            .map_or(1.0, |(_, v)| *v);
        let factors = ScoreFactors {
            type_weight: self.type_weight[t as usize],
            step_weight,
            tier_multiplier,
        };
        let score = factors.type_weight * factors.step_weight * factors.tier_multiplier;
        let th = &self.thresholds;
        let severity = if score >= th.critical {
            Severity::Critical
        } else if score >= th.high {
            Severity::High
        } else if score >= th.medium {
            Severity::Medium
        } else {
            Severity::Low
        };
        (score, factors, severity)
    }
}

/// A deterministic id from the parts that identify what an output is about.
/// Each part is followed by a 0x1f separator, so part boundaries change the id.
pub fn stable_id(parts: &[&[u8]]) -> CompactString {
    // The same hash as hashing the concatenation: joined on the stack when it fits (ids are
    // made for every alert; the one-shot hash is several times cheaper than streaming),
    // streamed when it does not.
    let mut buf = [0u8; 256];
    let mut len = 0;
    for p in parts {
        match buf.get_mut(len..len + p.len() + 1) {
            Some(dst) => {
                dst[..p.len()].copy_from_slice(p);
                dst[p.len()] = 0x1f;
                len += p.len() + 1;
            }
            None => {
                let mut h = Xxh3::new();
                for p in parts {
                    h.update(p);
                    h.update(&[0x1f]);
                }
                return hex(h.digest128(), 32);
            }
        }
    }
    hex(xxh3_128(&buf[..len]), 32)
}

/// The low `digits` hex digits of `v`, zero-padded (ids are on the hot path: no formatter).
pub fn hex(v: u128, digits: usize) -> CompactString {
    let digits = digits.min(32);
    let mut buf = [0u8; 32];
    buf[..16].copy_from_slice(&hex_word((v >> 64) as u64));
    buf[16..].copy_from_slice(&hex_word(v as u64));
    // Only ASCII hex digits were written.
    std::str::from_utf8(&buf[32 - digits..])
        .map_or_else(|_| CompactString::default(), CompactString::new)
}

/// The 16 hex digits of `w`, all at once: its nibbles spread one to a byte of a `u128`
/// (halves, then quarters, and so on), then each turned into its digit.
fn hex_word(w: u64) -> [u8; 16] {
    const fn lanes(b: u8) -> u128 {
        u128::from_ne_bytes([b; 16])
    }
    let mut x = u128::from(w);
    x = (x | x << 32) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    x = (x | x << 16) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    x = (x | x << 4) & lanes(0x0f);
    // Nibbles above 9 carry into bit 4 when 6 is added: those become 'a'..'f'.
    let letters = ((x + lanes(6)) >> 4) & lanes(1);
    (x + lanes(b'0') + letters * u128::from(b'a' - b'0' - 10)).to_be_bytes()
}

mod rfc3339 {
    use super::*;
    pub(super) fn serialize<S: serde::Serializer>(t: &Millis, s: S) -> Result<S::Ok, S::Error> {
        with_millis_formatted(*t, |v| s.serialize_str(v))
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        let s = String::deserialize(d)?;
        crate::decode::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// A friction or drop-off alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: CompactString,
    pub kind: AlertKind,
    #[serde(rename = "type")]
    pub alert_type: AlertType,
    pub severity: Severity,
    pub score: f64,
    pub factors: ScoreFactors,
    pub profile_id: CompactString,
    /// Empty while the profile is anonymous.
    pub customer_id: CompactString,
    /// Empty for repeat_contact and for friction outside any journey.
    pub journey: CompactString,
    pub journey_instance_id: CompactString,
    /// drop_off: the furthest step; slow_step: the step over its SLA; otherwise the triggering
    /// touchpoint when it is a step of the journey, else empty.
    pub step: CompactString,
    /// The touchpoint of the triggering event (for timers: the step).
    pub touchpoint: CompactString,
    pub channels: Vec<Channel>,
    #[serde(with = "rfc3339")]
    pub occurred_at: Millis,
    pub evidence: Vec<CompactString>,
    pub segment: CompactString,
    pub tier: CompactString,
}

/// Time spent on one step of a journey instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    pub step: CompactString,
    #[serde(with = "rfc3339")]
    pub first_entered_at: Millis,
    pub entries: u32,
    /// From first entry to the first entry of the next step reached, when there is one.
    pub seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurveyScore {
    pub kind: SurveyKind,
    pub score: i32,
    pub event_id: CompactString,
}

/// The record of one journey instance, emitted when it completes or is abandoned (and again,
/// with `revision` + 1, when a survey answer attaches to it afterwards).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JourneySummary {
    pub journey_instance_id: CompactString,
    pub journey: CompactString,
    pub profile_id: CompactString,
    pub customer_id: CompactString,
    pub outcome: JourneyOutcome,
    #[serde(with = "rfc3339")]
    pub started_at: Millis,
    #[serde(with = "rfc3339")]
    pub ended_at: Millis,
    pub furthest_step: CompactString,
    pub steps: Vec<StepTiming>,
    pub channels: Vec<Channel>,
    /// The friction detectors (and drop_off) that fired on this instance.
    pub friction: Vec<AlertType>,
    pub surveys: Vec<SurveyScore>,
    /// The latest `value` seen on the instance's activity (e.g. basket or order value).
    pub value: Option<f64>,
    pub segment: CompactString,
    pub tier: CompactString,
    pub revision: u32,
}

/// Everything the engine emits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Output {
    Alert(Alert),
    Journey(JourneySummary),
}

fn ts(ms: Millis) -> Option<prost_types::Timestamp> {
    Some(crate::event::timestamp(ms))
}

fn labels(c: &[Channel]) -> Vec<String> {
    c.iter().map(|c| c.as_str().to_string()).collect()
}

impl Alert {
    pub fn to_proto(&self) -> proto::Alert {
        proto::Alert {
            alert_id: self.alert_id.to_string(),
            kind: self.kind.as_str().into(),
            r#type: self.alert_type.as_str().into(),
            severity: self.severity.as_str().into(),
            score: self.score,
            factors: Some(proto::ScoreFactors {
                type_weight: self.factors.type_weight,
                step_weight: self.factors.step_weight,
                tier_multiplier: self.factors.tier_multiplier,
            }),
            profile_id: self.profile_id.to_string(),
            customer_id: self.customer_id.to_string(),
            journey: self.journey.to_string(),
            journey_instance_id: self.journey_instance_id.to_string(),
            step: self.step.to_string(),
            channels: labels(&self.channels),
            occurred_at: ts(self.occurred_at),
            evidence: self.evidence.iter().map(|e| e.to_string()).collect(),
            segment: self.segment.to_string(),
            tier: self.tier.to_string(),
            touchpoint: self.touchpoint.to_string(),
        }
    }
}

impl JourneySummary {
    pub fn to_proto(&self) -> proto::JourneySummary {
        proto::JourneySummary {
            journey_instance_id: self.journey_instance_id.to_string(),
            journey: self.journey.to_string(),
            profile_id: self.profile_id.to_string(),
            customer_id: self.customer_id.to_string(),
            outcome: self.outcome.as_str().into(),
            started_at: ts(self.started_at),
            ended_at: ts(self.ended_at),
            furthest_step: self.furthest_step.to_string(),
            steps: self
                .steps
                .iter()
                .map(|s| proto::StepTiming {
                    step: s.step.to_string(),
                    first_entered_at: ts(s.first_entered_at),
                    entries: s.entries,
                    seconds: s.seconds,
                })
                .collect(),
            channels: labels(&self.channels),
            friction: self
                .friction
                .iter()
                .map(|f| f.as_str().to_string())
                .collect(),
            surveys: self
                .surveys
                .iter()
                .map(|s| proto::SurveyScore {
                    kind: s.kind.as_str().into(),
                    score: s.score,
                    event_id: s.event_id.to_string(),
                })
                .collect(),
            value: self.value.unwrap_or(0.0),
            segment: self.segment.to_string(),
            tier: self.tier.to_string(),
            revision: self.revision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_multiplies_factors_and_maps_to_severity() {
        let mut cfg = ScoringSection::default();
        cfg.tier_multiplier.insert("gold".into(), 1.5);
        let s = Scorer::new(&cfg);
        let (score, f, sev) = s.score(AlertType::DropOff, 3.0, "gold");
        assert_eq!(
            (f.type_weight, f.step_weight, f.tier_multiplier),
            (2.0, 3.0, 1.5)
        );
        assert_eq!(score, 9.0);
        assert_eq!(sev, Severity::Critical);
        assert_eq!(s.score(AlertType::RageClick, 1.0, "").2, Severity::Low);
        assert_eq!(
            s.score(AlertType::RepeatedError, 1.0, "").2,
            Severity::Medium
        );
        assert_eq!(
            s.score(AlertType::DropOff, 1.0, "silver").2,
            Severity::Medium
        );
        assert_eq!(s.score(AlertType::DropOff, 1.5, "").2, Severity::High);
    }

    #[test]
    fn stable_ids_depend_on_parts_and_their_boundaries() {
        assert_eq!(stable_id(&[b"a", b"bc"]), stable_id(&[b"a", b"bc"]));
        assert_ne!(stable_id(&[b"a", b"bc"]), stable_id(&[b"ab", b"c"]));
        assert_eq!(stable_id(&[b"x"]).len(), 32);
        // Ids published by earlier versions stay valid: same as hashing the joined parts.
        let joined = xxhash_rust::xxh3::xxh3_128(b"drop_off\x1fabc\x1f");
        assert_eq!(stable_id(&[b"drop_off", b"abc"]), hex(joined, 32));
        assert_eq!(hex(0xab, 4), "00ab");
        assert_eq!(hex(u128::from(u64::MAX), 16), format!("{:016x}", u64::MAX));
        for v in [0, u128::MAX, 0x9a9a_0f0f_f0f0_a9a9_1234_5678_9abc_def0] {
            assert_eq!(hex(v, 32), format!("{v:032x}"));
        }
        let v = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        assert_eq!(hex(v, 32), format!("{v:032x}"));
        assert_eq!(hex(v, 5), "43210");
        // Parts too long for the stack buffer are streamed: the same id as joined.
        let long = [b'z'; 300];
        let mut joined = long.to_vec();
        joined.extend_from_slice(b"\x1fq\x1f");
        assert_eq!(
            stable_id(&[&long, b"q"]),
            hex(xxhash_rust::xxh3::xxh3_128(&joined), 32)
        );
    }

    proptest::proptest! {
        #[test]
        fn hex_writes_what_the_formatter_writes(v: u128, digits in 0..=32usize) {
            let full = format!("{v:032x}");
            proptest::prop_assert_eq!(hex(v, digits), &full[32 - digits..]);
        }
    }
}
