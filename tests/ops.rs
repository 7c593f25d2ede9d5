//! Operations: the metrics a running service exposes, the metric catalogue, the Grafana
//! dashboard and the Prometheus alert rules, checked with the real tools (promtool and a
//! Prometheus server, which `scripts/test.sh` installs). Without them on PATH these tests say
//! so and pass, unless `CXSTREAM_REQUIRE_TOOLS=1` (set by the test script, so CI runs them).
//!
//! One test binary, one service: the metrics recorder is process-wide, so counts here are
//! exactly this run's.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use compact_str::CompactString;
use cxstream::alert::Output;
use cxstream::config::Config;
use cxstream::engine::Engine;
use cxstream::event::{Action, Channel, Event};
use cxstream::loadgen::encode;
use cxstream::service::Service;
use cxstream::sim::{person_key, SimConfig, Simulator};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tool's path, or `None` (and a note) when it is missing and not required.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let required = std::env::var("CXSTREAM_REQUIRE_TOOLS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{name} is required (scripts/test.sh installs it)"
        );
        eprintln!("NOTE: {name} not on PATH: skipped (./scripts/test.sh installs it)");
    }
    found
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_and_unit_tests_every_alert_rule() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = root().join("deploy/prometheus");
    run_ok(
        Command::new(&promtool)
            .args(["check", "rules", "rules.yml"])
            .current_dir(&dir),
    );
    run_ok(
        Command::new(&promtool)
            .args(["check", "config", "prometheus.yml"])
            .current_dir(&dir),
    );
    let out = run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "rules.test.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    // Every rule has a test that fires it.
    let rules = std::fs::read_to_string(dir.join("rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("rules.test.yml")).unwrap();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!(
                    "alertname: {name}\n        exp_alerts:\n          - exp_labels"
                )),
                "no firing test for {name}"
            );
        }
    }
}

#[test]
fn the_dashboard_loads_in_grafana() {
    let path = root().join("deploy/grafana/dashboards/cxstream.json");
    let d: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 30);
    assert!(!d["uid"].as_str().unwrap().is_empty());
    let panels = d["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for v in ["datasource", "journey", "segment", "channel"] {
        assert!(vars.contains(&v), "template variable {v}");
    }
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {}",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
            assert!(!t["expr"].as_str().unwrap().is_empty());
        }
    }
}

/// Metric names in the catalogue table of docs/metrics.md.
fn catalogue() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    text.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_string(), cells.get(2)?.to_string()))
        })
        .collect()
}

/// `cx_` metric names used in a file (histogram series suffixes removed).
fn referenced(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("cx_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            let name = &text[start..end];
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        i = end;
    }
    out
}

/// Sum of the samples of `name` whose labels include every `(key, value)`.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn names_in(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let n = l.split(['{', ' ']).next().unwrap();
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect()
}

fn get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_service_exposes_the_catalogue_with_the_engine_s_numbers() {
    // The traffic and what the pure engine makes of it.
    let mut events: Vec<Event> = Simulator::new(SimConfig {
        seed: 7,
        customers: 200,
        disorder: 1_000,
        ..SimConfig::default()
    })
    .take(4_000)
    .collect();
    let mut sentinel = Event::new(
        "sentinel",
        1_900_000_000_000,
        Channel::Web,
        "home",
        Action::View,
    );
    sentinel.customer_id = Some(CompactString::const_new("sentinel"));
    events.push(sentinel);
    let config = {
        let mut c = Config::example();
        c.engine.idle_advance = Duration::from_secs(3600);
        // The sentinel is years ahead of its record's timestamp.
        c.input.max_ahead = Duration::from_secs(100 * 365 * 86_400);
        c.http.listen = "127.0.0.1:0".into();
        c.kafka.group_id = "ops".into();
        c.kafka
            .consumer
            .0
            .insert("auto.commit.interval.ms".into(), "100".into());
        c.kafka
            .consumer
            .0
            .insert("statistics.interval.ms".into(), "500".into());
        c
    };
    let mut engine = Engine::from_config(&config);
    let mut outs = Vec::new();
    for e in &events {
        engine.ingest(e.clone(), &mut outs);
    }

    let mock = MockCluster::new(1).unwrap();
    let mut config = config;
    config.kafka.brokers = mock.bootstrap_servers();
    // Progress is read from the group's committed offsets (the mock does not return offsets
    // committed in transactions).
    config.processing.guarantee = cxstream::config::Guarantee::AtLeastOnce;
    let t = config.topics.clone();
    for (topic, n) in [
        (&t.input[0], 1),
        (&t.alerts, 1),
        (&t.journeys, 1),
        (&t.dead_letter, 1),
    ] {
        mock.create_topic(topic, n, 1).unwrap();
    }
    mock.create_topic(&t.changelog(&config.kafka.group_id), 1, 1)
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .create()
        .unwrap();
    let bad = producer
        .send_result(FutureRecord::<[u8], [u8]>::to(&t.input[0]).payload(b"{not json"))
        .map_err(|e| e.0)
        .unwrap();
    bad.await.unwrap().unwrap();
    let mut deliveries = Vec::new();
    for e in &events {
        let payload = encode(e, cxstream::config::OutputFormat::Json);
        let key = person_key(e);
        let r = FutureRecord::to(&t.input[0])
            .key(key.as_bytes())
            .payload(&payload);
        deliveries.push(producer.send_result(r).map_err(|e| e.0).unwrap());
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }

    let service = Service::start(&config).await.unwrap();
    let base = format!("http://{}", service.http_addr());
    assert_eq!(get(&format!("{base}/healthz")), "ok\n");

    // Wait until everything before the sentinel is committed (offset: bad message + events).
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", "ops")
        .create()
        .unwrap();
    let want = events.len() as i64; // the bad message shifts offsets by one: sentinel at len
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&t.input[0], 0);
        let got = group
            .committed_offsets(tpl, Duration::from_secs(5))
            .unwrap();
        if matches!(got.find_partition(&t.input[0], 0).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= want)
        {
            break;
        }
        assert!(Instant::now() < deadline, "not committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&format!("{base}/readyz")), "ready\n");

    // Scrape until the once-a-second engine counters and librdkafka statistics are in.
    let stats = engine.stats();
    let catalogue = catalogue();
    let scrape = loop {
        let s = get(&format!("{base}/metrics"));
        let started: f64 = sample(&s, "cx_journeys_started_total", &[]);
        let missing: Vec<_> = catalogue
            .keys()
            .filter(|m| !names_in(&s).contains(*m))
            .collect();
        if started == stats.journeys_started as f64 && missing.is_empty() {
            break s;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "scrape incomplete: started {started}, missing {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The key counters moved by exactly what the engine did.
    let catalog = &engine.rules().catalog;
    for (j, def) in catalog.journeys.iter().enumerate() {
        let journey = def.name.as_str();
        assert_eq!(
            sample(
                &scrape,
                "cx_journeys_started_total",
                &[("journey", journey)]
            ),
            stats.started_by_journey[j] as f64,
            "{journey} started"
        );
        for (k, step) in def.steps.iter().enumerate() {
            assert_eq!(
                sample(
                    &scrape,
                    "cx_journey_steps_reached_total",
                    &[("journey", journey), ("step", step)]
                ),
                stats.steps_reached[j][k] as f64,
                "{journey} funnel at {step}"
            );
        }
    }
    let mut alerts_by_type: BTreeMap<&str, f64> = BTreeMap::new();
    let mut ended: BTreeMap<(String, &str), f64> = BTreeMap::new();
    for o in &outs {
        match o {
            Output::Alert(a) => *alerts_by_type.entry(a.alert_type.as_str()).or_default() += 1.0,
            Output::Journey(s) if s.revision == 1 => {
                *ended
                    .entry((s.journey.to_string(), s.outcome.as_str()))
                    .or_default() += 1.0
            }
            Output::Journey(_) => {}
        }
    }
    assert!(alerts_by_type.len() >= 6, "{alerts_by_type:?}");
    for (ty, n) in &alerts_by_type {
        assert_eq!(
            sample(&scrape, "cx_alerts_total", &[("type", ty)]),
            *n,
            "{ty} alerts"
        );
    }
    for ((journey, outcome), n) in &ended {
        assert_eq!(
            sample(
                &scrape,
                "cx_journeys_ended_total",
                &[("journey", journey), ("outcome", outcome)]
            ),
            *n,
            "{journey} {outcome}"
        );
    }
    assert_eq!(sample(&scrape, "cx_events_total", &[]), events.len() as f64);
    assert_eq!(
        sample(&scrape, "cx_messages_consumed_total", &[]),
        events.len() as f64 + 1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "cx_events_rejected_total",
            &[("reason", "invalid_json")]
        ),
        1.0
    );
    assert_eq!(sample(&scrape, "cx_dead_letters_total", &[]), 1.0);
    assert_eq!(
        sample(&scrape, "cx_identity_merges_total", &[]),
        stats.identity_merges as f64
    );
    assert_eq!(sample(&scrape, "cx_shards", &[]), 1.0);
    assert_eq!(sample(&scrape, "cx_journeys_active", &[]), {
        let s = stats;
        let open: u64 = (0..catalog.journeys.len())
            .map(|j| s.started_by_journey[j] - s.merged_by_journey[j] - s.ended_by_journey[j])
            .sum();
        open as f64
    });

    // The catalogue, the scrape, the dashboard and the rules agree.
    let scraped = names_in(&scrape);
    for name in scraped.iter().filter(|n| n.starts_with("cx_")) {
        assert!(
            catalogue.contains_key(name),
            "{name} is scraped but not in docs/metrics.md"
        );
    }
    for file in [
        "deploy/grafana/dashboards/cxstream.json",
        "deploy/prometheus/rules.yml",
    ] {
        for name in referenced(&root().join(file)) {
            assert!(
                catalogue.contains_key(&name),
                "{file} uses {name}, not in docs/metrics.md"
            );
            assert!(
                scraped.contains(&name),
                "{file} uses {name}, not in a real scrape"
            );
        }
    }

    // The exposition passes promtool's lint.
    if let Some(promtool) = tool("promtool") {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A real Prometheus server scrapes it and answers the dashboard's questions.
    if let Some(prometheus) = tool("prometheus") {
        let dir = std::env::temp_dir().join(format!("cxstream-prom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: cxstream\n    static_configs:\n      - targets: [\"{}\"]\n",
                service.http_addr()
            ),
        )
        .unwrap();
        let port = free_port();
        let mut server = Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let api = format!("http://127.0.0.1:{port}/api/v1/query");
        let query = |q: &str| -> Vec<(BTreeMap<String, String>, f64)> {
            let Ok(mut resp) = ureq::get(&api).query("query", q).call() else {
                return Vec::new();
            };
            let v: serde_json::Value =
                serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
            v["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    let labels = r["metric"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect();
                    (labels, r["value"][1].as_str().unwrap().parse().unwrap())
                })
                .collect()
        };
        let funnel_q =
            "sum by (step) (cx_journey_steps_reached_total{journey=\"online_checkout\"})";
        let deadline = Instant::now() + Duration::from_secs(60);
        let funnel = loop {
            let r = query(funnel_q);
            if r.len() == 5 {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus has no funnel yet: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let j = catalog
            .journeys
            .iter()
            .position(|d| d.name == "online_checkout")
            .unwrap();
        for (labels, value) in &funnel {
            let k = catalog.journeys[j]
                .steps
                .iter()
                .position(|s| *s == labels["step"])
                .unwrap();
            assert_eq!(
                *value, stats.steps_reached[j][k] as f64,
                "funnel at {}",
                labels["step"]
            );
        }
        let ratio = query(
            "sum(cx_journeys_ended_total{journey=\"online_checkout\",outcome=\"abandoned\"}) / sum(cx_journeys_ended_total{journey=\"online_checkout\"})",
        );
        let abandoned = ended
            .get(&("online_checkout".to_string(), "abandoned"))
            .copied()
            .unwrap_or(0.0);
        let all: f64 = ended
            .iter()
            .filter(|((j, _), _)| j == "online_checkout")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(ratio.len(), 1, "{ratio:?}");
        assert!(
            (ratio[0].1 - abandoned / all).abs() < 1e-9,
            "drop-off ratio {} vs {}",
            ratio[0].1,
            abandoned / all
        );
        let _ = server.kill();
        let _ = server.wait();
        std::fs::remove_dir_all(&dir).ok();
    }

    assert!(service.stop().await.clean);
    drop(producer);
    drop(group);
    drop(mock);
}
