//! End to end: the `cxstream` binary's replay, check-config and simulate commands on real files.

use std::path::{Path, PathBuf};
use std::process::Command;

use cxstream::alert::{Alert, AlertType, JourneySummary};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cxstream"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cxstream-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn lines<T: serde::de::DeserializeOwned>(p: &Path) -> Vec<T> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn replay(input: &Path, extra: &[&str], tag: &str) -> (Vec<Alert>, Vec<JourneySummary>, String) {
    let (alerts, journeys) = (
        tmp(&format!("{tag}-alerts.jsonl")),
        tmp(&format!("{tag}-journeys.jsonl")),
    );
    let out = bin()
        .args(["replay", "--config"])
        .arg(root().join("examples/cxstream.toml"))
        .arg("--input")
        .arg(input)
        .arg("--alerts")
        .arg(&alerts)
        .arg("--journeys")
        .arg(&journeys)
        .args(extra)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{report}");
    (lines(&alerts), lines(&journeys), report)
}

#[test]
fn replay_of_the_sample_finds_every_kind_of_alert_and_is_repeatable() {
    let sample = root().join("examples/events.jsonl");
    let (alerts, journeys, report) = replay(&sample, &["--drain"], "sample");
    for t in AlertType::ALL {
        assert!(
            alerts.iter().any(|a| a.alert_type == *t),
            "no {t} alert in the sample; report:\n{report}"
        );
    }
    assert!(report.contains("records read:     2000"), "{report}");
    assert!(report.contains("late:             0"), "{report}");
    // Every drop-off has its abandoned summary, with the same instance id.
    let drops: Vec<_> = alerts
        .iter()
        .filter(|a| a.alert_type == AlertType::DropOff)
        .collect();
    for d in &drops {
        assert!(journeys
            .iter()
            .any(|j| j.journey_instance_id == d.journey_instance_id
                && j.outcome.as_str() == "abandoned"));
        assert_eq!(
            d.step,
            journeys
                .iter()
                .find(|j| j.journey_instance_id == d.journey_instance_id)
                .unwrap()
                .furthest_step
        );
    }
    // A second process gives byte-identical ids and outputs (no per-process randomness).
    let (again, journeys_again, _) = replay(&sample, &["--drain"], "sample-again");
    assert_eq!(alerts, again);
    assert_eq!(journeys, journeys_again);
    // Without --drain, journeys still open at the end are not closed.
    let (undrained, _, _) = replay(&sample, &[], "undrained");
    assert!(undrained.len() < alerts.len());
}

#[test]
fn protobuf_input_gives_the_same_results_as_json() {
    let (json, pb) = (tmp("sim.jsonl"), tmp("sim.pb"));
    for (path, format) in [(&json, "json"), (&pb, "protobuf")] {
        let st = bin()
            .args([
                "simulate",
                "--events",
                "3000",
                "--customers",
                "300",
                "--seed",
                "3",
                "--disorder",
                "2s",
                "--format",
                format,
                "--output",
            ])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let (a1, j1, _) = replay(&json, &["--drain"], "json");
    let (a2, j2, _) = replay(&pb, &["--drain", "--format", "protobuf"], "pb");
    assert!(!a1.is_empty());
    assert_eq!(a1, a2);
    assert_eq!(j1, j2);
}

#[test]
fn bad_records_are_reported_with_reasons_and_record_numbers() {
    let input = tmp("bad.jsonl");
    let good = r#"{"event_id":"g1","occurred_at":"2026-11-22T10:00:00Z","customer_id":"c1","channel":"web","touchpoint":"cart.view","action":"view"}"#;
    let text = [
        good,
        "{not json",
        r#"{"event_id":"x","occurred_at":"2026-11-22T10:00:00Z","channel":"web","touchpoint":"t","action":"view"}"#,
        r#"{"event_id":"y","occurred_at":"2026-13-40T10:00:00Z","customer_id":"c","channel":"web","touchpoint":"t","action":"view"}"#,
        "",
        r#"{"event_id":"z","occurred_at":"2026-11-22T10:00:01Z","customer_id":"c","channel":"web","touchpoint":"t","action":"survey","survey":{"kind":"nps","score":42}}"#,
        good,
        r#"{"event_id":"g0","occurred_at":"2026-11-22T09:00:00Z","customer_id":"c1","channel":"fax","touchpoint":"cart.view","action":"view"}"#,
    ]
    .join("\n");
    std::fs::write(&input, text).unwrap();
    let (_, journeys, report) = replay(&input, &["--drain"], "bad");
    for needle in [
        "records read:     7",
        "invalid_json              1  (records 2)",
        "no_identifier             1  (records 3)",
        "invalid_timestamp         1  (records 4)",
        "invalid_value             1  (records 5)",
        "duplicates:       1",
        "late:             1",
        "accepted:         1",
    ] {
        assert!(report.contains(needle), "missing {needle:?} in:\n{report}");
    }
    assert_eq!(
        journeys.len(),
        1,
        "the one good event opened a journey, drained as abandoned"
    );
}

#[test]
fn check_config_lists_every_error_and_fails() {
    let bad = tmp("bad.toml");
    std::fs::write(&bad, "[[journeys]]\nname = \"j\"\nsteps = []\nabandon_after = \"0s\"\n[friction]\nstep_loop = { count = 1 }\n").unwrap();
    let out = bin().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("3 configuration errors"), "{text}");
    assert!(
        text.contains("journeys[0] (j).steps: needs at least one step"),
        "{text}"
    );
    assert!(text.contains("journeys[0] (j).abandon_after"), "{text}");
    assert!(text.contains("friction.step_loop.count"), "{text}");
    let ok = bin()
        .arg("check-config")
        .arg(root().join("examples/cxstream.toml"))
        .output()
        .unwrap();
    assert!(ok.status.success());
}

#[test]
fn environment_variables_override_config_keys() {
    let example = root().join("examples/cxstream.toml");
    let out = bin()
        .arg("check-config")
        .arg(&example)
        .env("CXSTREAM__ENGINE__DEDUP_WINDOW", "0s")
        .env("CXSTREAM__KAFKA__GROUP_ID", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("engine.dedup_window: must be greater than zero"),
        "{text}"
    );
    assert!(text.contains("kafka.group_id: must not be empty"), "{text}");
    let out = bin()
        .arg("check-config")
        .arg(&example)
        .env("CXSTREAM__ENGINE__DEDUP_WINDOW", "ten")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("engine.dedup_window"), "{text}");
    assert!(
        text.contains("CXSTREAM__"),
        "names the environment as the source: {text}"
    );
    let out = bin()
        .arg("check-config")
        .arg(&example)
        .env("CXSTREAM__KAFKA__BROKERS", "kafka-1:9092")
        .env("CXSTREAM__KAFKA__COMMON__SECURITY.PROTOCOL", "ssl")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
