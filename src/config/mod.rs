//! The configuration tree, read from TOML, with defaults written once and cross-field
//! validation that reports every problem with its key path.
//!
//! Durations are human-readable ("5s", "30m", "7d"). Unknown keys are errors, so a typo never
//! silently falls back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::alert::AlertType;

mod service;
pub use service::{
    ClientProps, Guarantee, HttpSection, InputSection, KafkaSection, MetricsSection, OutputFormat,
    OutputSection, ProcessingSection, ServiceSection, TopicsSection,
};

/// Environment variables starting with this override config keys, `__` separating the
/// levels: `CXSTREAM__KAFKA__BROKERS=host:9092` sets `kafka.brokers`.
pub const ENV_PREFIX: &str = "CXSTREAM__";

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub identity: IdentitySection,
    #[serde(default)]
    pub journeys: Vec<JourneySpec>,
    #[serde(default)]
    pub friction: FrictionSection,
    #[serde(default)]
    pub scoring: ScoringSection,
    /// The Kafka service (`cxstream run`): brokers, group and client settings.
    #[serde(default)]
    pub kafka: KafkaSection,
    #[serde(default)]
    pub topics: TopicsSection,
    #[serde(default)]
    pub input: InputSection,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default)]
    pub service: ServiceSection,
    #[serde(default)]
    pub processing: ProcessingSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// Event-time handling and state retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// How far out of event-time order events may arrive and still count. Results are held
    /// back by this much: it is the price of order-independent output.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// A repeated `event_id` within this much event time is ignored.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// A profile with no open journey and no event for this long is forgotten (identities too).
    /// Must cover every detector window so that forgetting never changes a result.
    #[serde(with = "humantime_serde")]
    pub profile_ttl: Duration,
    /// A survey answer with no open journey attaches to a journey closed at most this long ago.
    #[serde(with = "humantime_serde")]
    pub survey_attribution: Duration,
    /// Most profiles one shard (partition) holds. Beyond it a long-idle profile (the longest
    /// idle of a sample) is evicted for each new one, its open journeys closed as `expired`:
    /// memory stays bounded whatever the traffic.
    pub max_profiles: usize,
    /// Kafka service: when a partition has had no event for this long (wall clock), its
    /// watermark moves on with the wall clock, so drop-offs still fire when traffic stops.
    #[serde(with = "humantime_serde")]
    pub idle_advance: Duration,
    /// Kafka service: how often each shard commits its outputs, its state changes (to the
    /// changelog topic) and its input offset together. Longer: fewer, larger commits; shorter:
    /// less to redo after a crash and, with `exactly_once`, alerts readable sooner.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            allowed_lateness: Duration::from_secs(5),
            dedup_window: Duration::from_secs(600),
            profile_ttl: Duration::from_secs(7 * 86_400),
            survey_attribution: Duration::from_secs(7 * 86_400),
            idle_advance: Duration::from_secs(10),
            commit_interval: Duration::from_secs(1),
            max_profiles: 1_000_000,
        }
    }
}

/// Identity stitching guardrails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    /// Most identifiers one profile may hold; links beyond it are refused and counted.
    /// Stops a shared device or a bad tag from collapsing thousands of people into one.
    pub max_identifiers: usize,
    /// Identifier values that never link (placeholders producers send for "no value").
    pub never_link: Vec<String>,
}

impl Default for IdentitySection {
    fn default() -> Self {
        IdentitySection {
            max_identifiers: 32,
            never_link: ["", "0", "unknown", "null", "undefined"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// One journey definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneySpec {
    pub name: String,
    /// Ordered steps (touchpoints). Reaching the last one completes the journey.
    pub steps: Vec<String>,
    /// Steps that may open an instance; the first step when not given.
    #[serde(default)]
    pub entry_steps: Option<Vec<String>>,
    /// No activity for this long (event time) abandons the instance at its furthest step.
    #[serde(with = "humantime_serde", default = "default_abandon_after")]
    pub abandon_after: Duration,
    /// Per-step time limit from first entry to reaching a later step (`slow_step`).
    #[serde(default, with = "duration_map")]
    pub step_sla: BTreeMap<String, Duration>,
    /// Key steps ("moments of truth") weigh more in alert scores. 1.0 when not given.
    #[serde(default)]
    pub step_weight: BTreeMap<String, f64>,
}

fn default_abandon_after() -> Duration {
    Duration::from_secs(1800)
}

mod duration_map {
    use super::*;
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        #[derive(Deserialize)]
        struct H(#[serde(with = "humantime_serde")] Duration);
        let m = BTreeMap::<String, H>::deserialize(d)?;
        Ok(m.into_iter().map(|(k, v)| (k, v.0)).collect())
    }
}

/// A detector that fires when `count` qualifying events fall within `within`.
#[derive(Debug, Clone, Copy)]
pub struct CountWithin {
    pub enabled: bool,
    pub count: u32,
    pub within: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct StepLoop {
    pub enabled: bool,
    pub count: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct ChannelEscalation {
    pub enabled: bool,
    pub within: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Toggle {
    pub enabled: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct NegativeFeedback {
    pub enabled: bool,
    pub nps_max: i32,
    pub csat_max: i32,
    pub ces_min: i32,
}

/// A detector's table as written: any subset of its keys, the rest from its defaults
/// (so `rage_click = { count = 5 }` keeps the default window).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialDetector {
    enabled: Option<bool>,
    count: Option<u32>,
    #[serde(default, with = "humantime_serde::option")]
    within: Option<Duration>,
    nps_max: Option<i32>,
    csat_max: Option<i32>,
    ces_min: Option<i32>,
}

impl PartialDetector {
    /// Errors if a key that this detector does not have was given.
    fn only(&self, name: &str, keys: &[&str]) -> Result<(), String> {
        let given = [
            ("count", self.count.is_some()),
            ("within", self.within.is_some()),
            ("nps_max", self.nps_max.is_some()),
            ("csat_max", self.csat_max.is_some()),
            ("ces_min", self.ces_min.is_some()),
        ];
        for (k, set) in given {
            if set && !keys.contains(&k) {
                let mut all = vec!["enabled"];
                all.extend_from_slice(keys);
                return Err(format!(
                    "friction.{name}: `{k}` does not apply to this detector (its keys: {})",
                    all.join(", ")
                ));
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFriction {
    repeated_error: Option<PartialDetector>,
    step_loop: Option<PartialDetector>,
    channel_escalation: Option<PartialDetector>,
    repeat_contact: Option<PartialDetector>,
    slow_step: Option<PartialDetector>,
    negative_feedback: Option<PartialDetector>,
    rage_click: Option<PartialDetector>,
    #[serde(default, with = "humantime_serde::option")]
    outside_journey_cooldown: Option<Duration>,
}

impl<'de> Deserialize<'de> for FrictionSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = RawFriction::deserialize(d)?;
        let mut f = FrictionSection::default();
        let count_within = |name: &str,
                            p: Option<PartialDetector>,
                            dflt: CountWithin|
         -> Result<CountWithin, D::Error> {
            let p = p.unwrap_or_default();
            p.only(name, &["count", "within"])
                .map_err(D::Error::custom)?;
            Ok(CountWithin {
                enabled: p.enabled.unwrap_or(dflt.enabled),
                count: p.count.unwrap_or(dflt.count),
                within: p.within.unwrap_or(dflt.within),
            })
        };
        f.repeated_error = count_within("repeated_error", raw.repeated_error, f.repeated_error)?;
        f.repeat_contact = count_within("repeat_contact", raw.repeat_contact, f.repeat_contact)?;
        f.rage_click = count_within("rage_click", raw.rage_click, f.rage_click)?;
        if let Some(p) = raw.step_loop {
            p.only("step_loop", &["count"]).map_err(D::Error::custom)?;
            f.step_loop = StepLoop {
                enabled: p.enabled.unwrap_or(true),
                count: p.count.unwrap_or(f.step_loop.count),
            };
        }
        if let Some(p) = raw.channel_escalation {
            p.only("channel_escalation", &["within"])
                .map_err(D::Error::custom)?;
            f.channel_escalation = ChannelEscalation {
                enabled: p.enabled.unwrap_or(true),
                within: p.within.unwrap_or(f.channel_escalation.within),
            };
        }
        if let Some(p) = raw.slow_step {
            p.only("slow_step", &[]).map_err(D::Error::custom)?;
            f.slow_step = Toggle {
                enabled: p.enabled.unwrap_or(true),
            };
        }
        if let Some(p) = raw.negative_feedback {
            p.only("negative_feedback", &["nps_max", "csat_max", "ces_min"])
                .map_err(D::Error::custom)?;
            let n = f.negative_feedback;
            f.negative_feedback = NegativeFeedback {
                enabled: p.enabled.unwrap_or(true),
                nps_max: p.nps_max.unwrap_or(n.nps_max),
                csat_max: p.csat_max.unwrap_or(n.csat_max),
                ces_min: p.ces_min.unwrap_or(n.ces_min),
            };
        }
        if let Some(c) = raw.outside_journey_cooldown {
            f.outside_journey_cooldown = c;
        }
        Ok(f)
    }
}

/// The friction detectors, each on by default with the thresholds shown in the README.
#[derive(Debug, Clone)]
pub struct FrictionSection {
    pub repeated_error: CountWithin,
    pub step_loop: StepLoop,
    pub channel_escalation: ChannelEscalation,
    pub repeat_contact: CountWithin,
    pub slow_step: Toggle,
    pub negative_feedback: NegativeFeedback,
    pub rage_click: CountWithin,
    /// Friction outside any journey alerts at most once per profile, type and touchpoint per this.
    pub outside_journey_cooldown: Duration,
}

impl Default for FrictionSection {
    fn default() -> Self {
        let secs = Duration::from_secs;
        FrictionSection {
            repeated_error: CountWithin {
                enabled: true,
                count: 3,
                within: secs(600),
            },
            step_loop: StepLoop {
                enabled: true,
                count: 3,
            },
            channel_escalation: ChannelEscalation {
                enabled: true,
                within: secs(1800),
            },
            repeat_contact: CountWithin {
                enabled: true,
                count: 3,
                within: secs(7 * 86_400),
            },
            slow_step: Toggle { enabled: true },
            negative_feedback: NegativeFeedback {
                enabled: true,
                nps_max: 6,
                csat_max: 2,
                ces_min: 5,
            },
            rage_click: CountWithin {
                enabled: true,
                count: 4,
                within: secs(3),
            },
            outside_journey_cooldown: secs(3600),
        }
    }
}

/// How alert scores and severities are computed: score = type weight x step weight x tier multiplier.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringSection {
    /// Weight per alert type (`drop_off` or a detector name); types not listed use the defaults.
    pub type_weight: BTreeMap<String, f64>,
    /// Multiplier per customer tier (e.g. gold = 1.5); 1.0 for tiers not listed.
    pub tier_multiplier: BTreeMap<String, f64>,
    /// Lowest score of each severity; below `medium` is `low`.
    pub severity: SeverityThresholds,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeverityThresholds {
    pub medium: f64,
    pub high: f64,
    pub critical: f64,
}

impl Default for SeverityThresholds {
    fn default() -> Self {
        SeverityThresholds {
            medium: 1.5,
            high: 3.0,
            critical: 6.0,
        }
    }
}

/// One problem in a configuration, with the key path it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a configuration (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// Where the configuration came from (a file path, or empty).
    pub source_name: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        let place = if self.source_name.is_empty() {
            String::new()
        } else {
            format!(" in {}", self.source_name)
        };
        writeln!(
            f,
            "{n} configuration error{}{place}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

/// The example configuration shipped in `examples/cxstream.toml` (checkout, delivery and
/// support journeys): what the simulator's traffic is written for.
pub const EXAMPLE_TOML: &str = include_str!("../../examples/cxstream.toml");

impl Config {
    /// The parsed [`EXAMPLE_TOML`].
    pub fn example() -> Config {
        Config::from_toml(EXAMPLE_TOML).expect("the shipped example config is valid (tested)")
    }

    /// Parses and validates a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source_name: String::new(),
            errors,
        };
        let config: Config = toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            let path = match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                }
                None => String::new(),
            };
            fail(vec![ConfigError { path, message }])
        })?;
        let errors = config.validate();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(fail(errors))
        }
    }

    /// Reads, parses and validates a configuration file, with overrides from the
    /// environment (see [`ENV_PREFIX`]).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source_name: name.clone(),
            errors: vec![ConfigError {
                path: String::new(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Config::from_toml_and_env(&text).map_err(|mut e| {
            e.source_name = name;
            e
        })
    }

    /// Parses `text`, applies the `CXSTREAM__*` environment overrides and validates. Without
    /// overrides this is [`Config::from_toml`] (whose errors carry line numbers).
    pub fn from_toml_and_env(text: &str) -> Result<Config, ConfigErrors> {
        use figment::providers::{Env, Serialized};
        let env = Env::prefixed(ENV_PREFIX).split("__");
        if env.iter().next().is_none() {
            return Config::from_toml(text);
        }
        let fail = |errors| ConfigErrors {
            source_name: String::new(),
            errors,
        };
        // Syntax first (with line numbers), then the merged tree.
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            fail(vec![ConfigError {
                path: String::new(),
                message: e.to_string(),
            }])
        })?;
        let config: Config = figment::Figment::from(Serialized::defaults(table))
            .merge(env)
            .extract()
            .map_err(|e| {
                fail(
                    e.into_iter()
                        .map(|e| ConfigError {
                            path: e.path.join("."),
                            message: match e.metadata.as_ref() {
                                Some(m) if m.name.contains("environment") => {
                                    format!("{} (from the {ENV_PREFIX}* environment)", e.kind)
                                }
                                _ => e.kind.to_string(),
                            },
                        })
                        .collect(),
                )
            })?;
        let errors = config.validate();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(fail(errors))
        }
    }

    /// Cross-field checks. Returns every problem, not just the first.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let mut err = |path: String, message: String| errs.push(ConfigError { path, message });
        let positive = |d: Duration| !d.is_zero();

        let e = &self.engine;
        if e.max_profiles < 1 {
            err("engine.max_profiles".into(), "must be at least 1".into());
        }
        if !positive(e.dedup_window) {
            err(
                "engine.dedup_window".into(),
                "must be greater than zero".into(),
            );
        }
        let f = &self.friction;
        let windows = [
            ("friction.repeat_contact.within", f.repeat_contact.within),
            ("engine.survey_attribution", e.survey_attribution),
            (
                "friction.outside_journey_cooldown",
                f.outside_journey_cooldown,
            ),
            (
                "friction.channel_escalation.within",
                f.channel_escalation.within,
            ),
        ];
        for (name, w) in windows {
            if w > e.profile_ttl {
                err(
                    "engine.profile_ttl".into(),
                    format!(
                        "is {} but {name} is {}: profiles must be kept at least as long as every window that looks back over them",
                        humantime::format_duration(e.profile_ttl),
                        humantime::format_duration(w)
                    ),
                );
            }
        }
        if self.identity.max_identifiers < 1 {
            err(
                "identity.max_identifiers".into(),
                "must be at least 1".into(),
            );
        }

        for (name, c) in [
            ("repeated_error", f.repeated_error),
            ("repeat_contact", f.repeat_contact),
            ("rage_click", f.rage_click),
        ] {
            if c.count < 1 {
                err(
                    format!("friction.{name}.count"),
                    "must be at least 1".into(),
                );
            }
            if c.count > 64 {
                err(
                    format!("friction.{name}.count"),
                    "must be at most 64".into(),
                );
            }
            if !positive(c.within) {
                err(
                    format!("friction.{name}.within"),
                    "must be greater than zero".into(),
                );
            }
        }
        if !(2..=255).contains(&f.step_loop.count) {
            err(
                "friction.step_loop.count".into(),
                "must be between 2 and 255 (entries of one step)".into(),
            );
        }
        if !positive(f.channel_escalation.within) {
            err(
                "friction.channel_escalation.within".into(),
                "must be greater than zero".into(),
            );
        }
        let nf = f.negative_feedback;
        for (k, v, kind) in [
            ("nps_max", nf.nps_max, "nps"),
            ("csat_max", nf.csat_max, "csat"),
            ("ces_min", nf.ces_min, "ces"),
        ] {
            let (lo, hi) = crate::event::SurveyKind::parse(kind)
                .map(|k| k.range())
                .unwrap_or((0, 0));
            if v < lo || v > hi {
                err(
                    format!("friction.negative_feedback.{k}"),
                    format!("{v} is outside the {kind} scale ({lo}-{hi})"),
                );
            }
        }

        let s = &self.scoring;
        for (k, w) in &s.type_weight {
            if AlertType::parse(k).is_none() {
                let known: Vec<_> = AlertType::ALL.iter().map(|t| t.as_str()).collect();
                err(
                    format!("scoring.type_weight.{k}"),
                    format!("unknown alert type; expected one of {}", known.join(", ")),
                );
            }
            if !(w.is_finite() && *w > 0.0) {
                err(
                    format!("scoring.type_weight.{k}"),
                    "must be a positive number".into(),
                );
            }
        }
        for (k, w) in &s.tier_multiplier {
            if !(w.is_finite() && *w > 0.0) {
                err(
                    format!("scoring.tier_multiplier.{k}"),
                    "must be a positive number".into(),
                );
            }
        }
        let t = s.severity;
        if !(t.medium.is_finite()
            && t.high.is_finite()
            && t.critical.is_finite()
            && 0.0 < t.medium
            && t.medium <= t.high
            && t.high <= t.critical)
        {
            err(
                "scoring.severity".into(),
                "thresholds must be positive and ascending: medium <= high <= critical".into(),
            );
        }

        let mut names = std::collections::HashSet::new();
        for (i, j) in self.journeys.iter().enumerate() {
            let at = format!("journeys[{i}]");
            if j.name.is_empty()
                || !j
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                err(
                    format!("{at}.name"),
                    format!(
                        "{:?} must be non-empty and use only letters, digits, '_', '-' and '.'",
                        j.name
                    ),
                );
            } else if !names.insert(j.name.as_str()) {
                err(
                    format!("{at}.name"),
                    format!("journey {:?} is defined twice", j.name),
                );
            }
            let at = format!("journeys[{i}] ({})", j.name);
            if j.steps.is_empty() {
                err(format!("{at}.steps"), "needs at least one step".into());
            }
            if j.steps.len() > 64 {
                err(
                    format!("{at}.steps"),
                    format!("has {} steps; at most 64 are supported", j.steps.len()),
                );
            }
            let mut seen = std::collections::HashSet::new();
            for st in &j.steps {
                if st.is_empty() {
                    err(format!("{at}.steps"), "a step name is empty".into());
                } else if !seen.insert(st.as_str()) {
                    err(
                        format!("{at}.steps"),
                        format!("step {st:?} is listed twice"),
                    );
                }
            }
            let is_step = |s: &str| j.steps.iter().any(|x| x == s);
            for st in j.entry_steps.iter().flatten() {
                if !is_step(st) {
                    err(
                        format!("{at}.entry_steps"),
                        format!("{st:?} is not one of this journey's steps"),
                    );
                }
            }
            if j.entry_steps.as_ref().is_some_and(|e| e.is_empty()) {
                err(
                    format!("{at}.entry_steps"),
                    "is empty: no event could open this journey".into(),
                );
            }
            if !positive(j.abandon_after) {
                err(
                    format!("{at}.abandon_after"),
                    "must be greater than zero".into(),
                );
            }
            for (st, d) in &j.step_sla {
                if !is_step(st) {
                    err(
                        format!("{at}.step_sla.{st:?}"),
                        "is not one of this journey's steps".into(),
                    );
                }
                if !positive(*d) {
                    err(
                        format!("{at}.step_sla.{st:?}"),
                        "must be greater than zero".into(),
                    );
                }
            }
            for (st, w) in &j.step_weight {
                if !is_step(st) {
                    err(
                        format!("{at}.step_weight.{st:?}"),
                        "is not one of this journey's steps".into(),
                    );
                }
                if !(w.is_finite() && *w > 0.0) {
                    err(
                        format!("{at}.step_weight.{st:?}"),
                        "must be a positive number".into(),
                    );
                }
            }
        }
        if self.journeys.len() > usize::from(u16::MAX) {
            err("journeys".into(), "too many journeys".into());
        }
        service::validate(self, &mut err);
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_valid() {
        assert_eq!(
            Config::from_toml(EXAMPLE_TOML).map(|c| c.journeys.len()),
            Ok(3)
        );
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.engine.allowed_lateness, Duration::from_secs(5));
        assert_eq!(
            c.friction.repeat_contact.within,
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(c.identity.never_link.len(), 5);
    }

    #[test]
    fn parses_the_documented_journey() {
        let c = Config::from_toml(
            r#"
[engine]
allowed_lateness = "5s"
dedup_window = "10m"
[[journeys]]
name = "online_checkout"
steps = ["cart.view", "checkout.start", "checkout.shipping", "checkout.payment", "order.confirmed"]
abandon_after = "30m"
step_sla = { "checkout.payment" = "5m" }
step_weight = { "checkout.payment" = 3.0 }
[friction]
rage_click = { count = 5, within = "2s" }
slow_step = { enabled = false }
repeated_error = { enabled = false }
repeat_contact = { count = 5 }
"#,
        )
        .unwrap();
        assert!(!c.friction.repeated_error.enabled);
        assert_eq!(c.friction.repeat_contact.count, 5);
        assert_eq!(
            c.friction.repeat_contact.within,
            Duration::from_secs(7 * 86400),
            "unset keys keep their defaults"
        );
        let e = Config::from_toml("[friction]\nrage_click = { nps_max = 3 }\n").unwrap_err();
        assert!(e.to_string().contains("`nps_max` does not apply"), "{e}");
        assert_eq!(
            c.journeys[0].step_sla["checkout.payment"],
            Duration::from_secs(300)
        );
        assert_eq!(c.friction.rage_click.count, 5);
        assert!(!c.friction.slow_step.enabled);
        assert!(c.friction.step_loop.enabled);
    }

    #[test]
    fn reports_every_error_with_its_path() {
        let e = Config::from_toml(
            r#"
[[journeys]]
name = "a"
steps = ["x", "y", "x"]
entry_steps = ["z"]
step_sla = { "q" = "5m" }
[[journeys]]
name = "a"
steps = ["p"]
step_weight = { "p" = -1.0 }
[scoring]
type_weight = { bogus = 1.0 }
"#,
        )
        .unwrap_err();
        let text = e.to_string();
        for needle in [
            "journeys[0] (a).steps: step \"x\" is listed twice",
            "journeys[0] (a).entry_steps: \"z\" is not",
            "journeys[0] (a).step_sla.\"q\"",
            "journeys[1].name: journey \"a\" is defined twice",
            "journeys[1] (a).step_weight.\"p\": must be a positive number",
            "scoring.type_weight.bogus: unknown alert type",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(e.errors.len(), 6, "{text}");
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors_with_a_line() {
        let e = Config::from_toml("[engine]\nallowed_latenes = \"5s\"\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(e.to_string().contains("allowed_latenes"), "{e}");
        let e = Config::from_toml("[engine]\n\ndedup_window = \"ten minutes\"\n").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
    }

    #[test]
    fn service_sections_have_defaults_and_pass_client_settings_through() {
        let c = Config::from_toml(
            "[kafka]\nbrokers = \"b:9092\"\n[kafka.common]\n\"security.protocol\" = \"ssl\"\n\
             [kafka.producer]\nlinger.ms = 5\n\"enable.idempotence\" = true\n",
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "b:9092");
        assert_eq!(c.kafka.group_id, "cxstream");
        assert_eq!(c.kafka.common.0["security.protocol"], "ssl");
        // An unquoted dotted key is a TOML table: joined back into the librdkafka name.
        assert_eq!(c.kafka.producer.0["linger.ms"], "5");
        assert_eq!(c.kafka.producer.0["enable.idempotence"], "true");
        assert_eq!(c.topics.input, ["cx.interactions"]);
        assert_eq!(c.topics.dead_letter, "cx.dead-letter");
        assert_eq!(c.input.format, crate::decode::Format::Auto);
        assert_eq!(c.output.format, OutputFormat::Json);
        assert_eq!(c.engine.idle_advance, Duration::from_secs(10));
        assert_eq!(c.service.shutdown_timeout, Duration::from_secs(30));
    }

    #[test]
    fn service_settings_that_would_break_delivery_are_refused() {
        let e = Config::from_toml(
            "[kafka.consumer]\n\"enable.auto.offset.store\" = true\n\
             [topics]\ninput = [\"cx.alerts\", \"bad topic\"]\n[service]\nshutdown_timeout = \"0s\"\n",
        )
        .unwrap_err();
        let text = e.to_string();
        for needle in [
            "kafka.consumer.\"enable.auto.offset.store\": is set by cxstream",
            "topics.alerts: \"cx.alerts\" is also an input topic",
            "topics.input[1]: \"bad topic\" is not a valid topic name",
            "service.shutdown_timeout: must be greater than zero",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn the_example_shows_the_service_defaults() {
        let (e, d) = (Config::example(), Config::default());
        assert_eq!(e.kafka.brokers, d.kafka.brokers);
        assert_eq!(e.kafka.group_id, d.kafka.group_id);
        assert_eq!(e.topics.input, d.topics.input);
        assert_eq!(
            [&e.topics.alerts, &e.topics.journeys, &e.topics.dead_letter],
            [&d.topics.alerts, &d.topics.journeys, &d.topics.dead_letter]
        );
        assert_eq!(e.input.format, d.input.format);
        assert_eq!(e.input.max_ahead, d.input.max_ahead);
        assert_eq!(e.output.format, d.output.format);
        assert_eq!(e.service.shutdown_timeout, d.service.shutdown_timeout);
        assert_eq!(e.service.max_in_flight, d.service.max_in_flight);
        assert_eq!(e.service.shard_queue, d.service.shard_queue);
        assert_eq!(e.service.checkpoint_step, d.service.checkpoint_step);
        assert_eq!(e.http.listen, d.http.listen);
        assert_eq!(e.metrics.segments, d.metrics.segments);
        assert_eq!(e.engine.idle_advance, d.engine.idle_advance);
        assert_eq!(e.engine.commit_interval, d.engine.commit_interval);
        assert_eq!(e.processing.guarantee, d.processing.guarantee);
        assert_eq!(e.engine.max_profiles, d.engine.max_profiles);
    }
}
