//! Internal events: every log line the service writes about its own operation is emitted here,
//! not sprinkled through the pipeline code. Each function is one event with bounded fields
//! (topic, partition, reason labels): never a customer or event id.

use std::time::Duration;

use rdkafka::error::KafkaError;
use tracing::{debug, error, info, warn};

pub fn service_starting(brokers: &str, group: &str, topics: &[String]) {
    info!(%brokers, %group, ?topics, "cxstream service starting");
}

pub fn partition_assigned(topic: &str, partition: i32) {
    info!(%topic, partition, "partition assigned: shard started");
}

pub fn partition_revoked(topic: &str, partition: i32, commit: Option<i64>) {
    info!(%topic, partition, ?commit, "partition revoked: shard flushed and dropped");
}

pub fn shard_stop_timed_out(topic: &str, partition: i32) {
    warn!(%topic, partition, "shard did not finish in time: its uncommitted input will be read again");
}

pub fn rejected(topic: &str, partition: i32, offset: i64, reason: &str, detail: &str) {
    debug!(%topic, partition, offset, %reason, %detail, "input rejected: sent to the dead-letter topic");
}

pub fn consumer_error(e: &KafkaError) {
    warn!(error = %e, "consumer error (librdkafka retries with backoff)");
}

pub fn produce_failed(topic: &str, e: &KafkaError, retry_in: Duration) {
    warn!(%topic, error = %e, ?retry_in, "produce failed: retrying (the input offset stays uncommitted)");
}

pub fn commit_failed(e: &KafkaError) {
    warn!(error = %e, "offset commit failed: the next commit will include these offsets");
}

pub fn backpressure(topic: &str, partition: i32, paused: bool) {
    debug!(%topic, partition, paused, "shard queue full: partition paused until it drains");
}

pub fn idle_advance(topic: &str, partition: i32, watermark: i64) {
    debug!(%topic, partition, watermark, "partition quiet: watermark advanced with the wall clock");
}

pub fn shutting_down(timeout: Duration) {
    info!(
        ?timeout,
        "shutdown requested: finishing in-flight work, flushing, committing"
    );
}

pub fn stopped(clean: bool, took: Duration) {
    if clean {
        info!(
            ?took,
            "stopped: every output acknowledged and its input committed"
        );
    } else {
        error!(?took, "stopped before everything was acknowledged: uncommitted input will be read again on restart");
    }
}
