//! CPU an idle service uses: `cxstream run` on librdkafka's mock cluster, owning all
//! partitions of an input topic that receives nothing. Measures the whole process (service,
//! librdkafka's threads and the mock broker) over ten seconds once it is settled.
//!
//! `cargo run --release --example idle_cpu -- [partitions] [exactly_once|at_least_once]`
//!
//! Then it stops the service and prints how long the stop took (every shard stopped and
//! committed, the group left, the producer flushed).

mod common;

use std::time::Duration;

use rdkafka::mocking::MockCluster;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU seconds this process has used (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    let after_name = stat.rsplit(')').next().expect("stat line");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ
}

#[tokio::main]
async fn main() {
    let partitions: i32 = common::arg(1, 16);
    let guarantee: String = common::arg(2, "exactly_once".to_string());
    let mock = MockCluster::new(1).unwrap();
    let mut c = cxstream::config::Config::example();
    c.kafka.brokers = mock.bootstrap_servers();
    c.http.listen = "127.0.0.1:0".into();
    if guarantee == "at_least_once" {
        c.processing.guarantee = cxstream::config::Guarantee::AtLeastOnce;
    }
    for t in c
        .topics
        .input
        .iter()
        .chain([&c.topics.changelog(&c.kafka.group_id)])
    {
        mock.create_topic(t, partitions, 1).unwrap();
    }
    for t in [&c.topics.alerts, &c.topics.journeys, &c.topics.dead_letter] {
        mock.create_topic(t, 1, 1).unwrap();
    }
    let service = cxstream::service::Service::start(&c).await.unwrap();
    service
        .status()
        .wait_for(|s| s.assigned.len() == partitions as usize)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (before, span) = (cpu_seconds(), Duration::from_secs(10));
    tokio::time::sleep(span).await;
    let used = cpu_seconds() - before;
    println!(
        "idle service, {partitions} partitions, {guarantee}: {:.1}% of a core",
        100.0 * used / span.as_secs_f64()
    );
    let report = service.stop().await;
    println!("stopped in {:?} (clean: {})", report.took, report.clean);
}
