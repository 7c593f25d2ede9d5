use cxstream::config::Config;
use cxstream::engine::Engine;
use cxstream::sim::{SimConfig, Simulator};
use std::time::Instant;
fn main() {
    let customers: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let config = Config::from_toml(include_str!("../examples/cxstream.toml")).unwrap();
    let mut engine = Engine::from_config(&config);
    let mut sim = Simulator::new(SimConfig {
        seed: 42,
        customers,
        disorder: 2000,
        ..SimConfig::default()
    });
    let mut out = Vec::new();
    while engine.profile_count() < customers as usize * 9 / 10 {
        for e in sim.by_ref().take(10_000) {
            engine.ingest(e, &mut out);
        }
        out.clear();
    }
    let evs: Vec<_> = sim.take(n).collect();
    let t = Instant::now();
    let mut outs = 0;
    for e in evs {
        engine.ingest(e, &mut out);
        outs += out.len();
        out.clear();
    }
    println!(
        "{:.0} ns/event, {outs} outputs, {} profiles, {} open",
        t.elapsed().as_nanos() as f64 / n as f64,
        engine.profile_count(),
        engine.open_journeys()
    );
}
