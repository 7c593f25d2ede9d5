//! The service's Kafka producer: librdkafka's producer, a thread that serves its delivery
//! reports, and each report handed to the shard that sent the record.
//!
//! Not rdkafka's `FutureProducer`, for two reasons (BENCHMARKS.md, "Producer"):
//! - **A future per record.** Each record cost a boxed future, a oneshot channel and a task in
//!   the shard's `FuturesUnordered`, with their allocations and wake-ups. Here a record
//!   carries one small box ([`Sent`]) and its report goes down the shard's channel.
//! - **A polling thread that spins.** rdkafka's polling thread waits in `poll(100 ms)`, which
//!   polls librdkafka with the time left in whole milliseconds, rounded down: the last
//!   fraction of a millisecond of every 100 ms is polled with no wait at all, in a loop. That
//!   is 1% of a core per producer while idle, and `exactly_once` has a producer per
//!   partition. [`POLL`] ends just past a whole millisecond instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::mpsc::UnboundedSender;

use crate::telemetry;

/// How long the polling thread waits for delivery reports at a time. rdkafka polls
/// librdkafka with the time left rounded down to a millisecond, so a whole number of
/// milliseconds left most of the last one to poll without waiting. With 50 µs over, the last
/// wait ends at most 50 µs before the deadline (usually after it: a timed wait wakes up to the
/// kernel's 50 µs timer slack late), and that is all that is polled without waiting.
const POLL: Duration = Duration::from_micros(100_050);

/// A record on its way: what its delivery report needs to reach its shard.
pub(crate) struct Sent {
    pub(crate) to: UnboundedSender<Delivered>,
    /// The shard's commit epoch the record was sent in.
    pub(crate) epoch: u64,
    /// For an output: when its input was consumed (the latency metric).
    pub(crate) cause: Option<Instant>,
    /// Produced to this partition (a changelog record), not by key.
    pub(crate) partition: Option<i32>,
    /// How long after a failed delivery it is produced again (`at_least_once`).
    pub(crate) backoff: Duration,
}

/// A delivery report: acknowledged (with the epoch and, for an output, how long after its
/// input was consumed), or failed (with the record, to send again or give up on).
pub(crate) type Delivered = Result<Acked, Box<Failed>>;

pub(crate) struct Failed {
    pub(crate) error: KafkaError,
    pub(crate) unsent: Unsent,
}

pub(crate) struct Acked {
    pub(crate) epoch: u64,
    pub(crate) latency: Option<Duration>,
}

/// A record that was not delivered, owned, to produce again.
pub(crate) struct Unsent {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    pub(crate) sent: Box<Sent>,
}

impl Unsent {
    /// What `send` gave back.
    pub(crate) fn from_record(r: BaseRecord<'_, [u8], [u8], Box<Sent>>) -> Unsent {
        Unsent {
            topic: r.topic.to_owned(),
            key: r.key.map(<[u8]>::to_vec),
            payload: r.payload.map(<[u8]>::to_vec),
            headers: r.headers,
            sent: r.delivery_opaque,
        }
    }

    fn from_message(m: &BorrowedMessage<'_>, sent: Box<Sent>) -> Unsent {
        Unsent {
            topic: m.topic().to_owned(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: m.headers().map(|h| h.detach()),
            sent,
        }
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces it again; gives it back if librdkafka refuses it.
    pub(crate) fn send(self, producer: &Producer) -> Result<(), Box<Failed>> {
        let Unsent {
            topic,
            key,
            payload,
            headers,
            sent,
        } = self;
        let partition = sent.partition;
        let mut r = BaseRecord::with_opaque_to(topic.as_str(), sent);
        r.key = key.as_deref();
        r.payload = payload.as_deref();
        r.headers = headers;
        r.partition = partition;
        match producer.inner.send(r) {
            Ok(()) => Ok(()),
            Err((e, r)) => {
                let (headers, sent) = (r.headers, r.delivery_opaque);
                Err(Box::new(Failed {
                    error: e,
                    unsent: Unsent {
                        topic,
                        key,
                        payload,
                        headers,
                        sent,
                    },
                }))
            }
        }
    }
}

/// Hands each delivery report to the shard that sent the record.
pub(crate) struct Reports;

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::client_error(&error, reason);
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        // A shard that is gone no longer waits for its reports.
        match result {
            Ok(_) => {
                let _ = sent.to.send(Ok(Acked {
                    epoch: sent.epoch,
                    latency: sent.cause.map(|c| c.elapsed()),
                }));
            }
            Err((e, m)) => {
                let to = sent.to.clone();
                let _ = to.send(Err(Box::new(Failed {
                    error: e.clone(),
                    unsent: Unsent::from_message(m, sent),
                })));
            }
        }
    }
}

/// The producer, shared by handles; the last one dropped stops its polling thread.
#[derive(Clone)]
pub(crate) struct Producer {
    inner: Arc<BaseProducer<Reports>>,
    _poller: Arc<Poller>,
}

struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Poller {
    /// Stops the polling thread, which may be in a wait of up to [`POLL`]. On a Tokio thread
    /// (a shard dropping its transactional producer) it is joined on a blocking thread:
    /// joined in place, it held up the other shards of that worker thread, up to 100 ms a
    /// producer.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let Some(t) = self.thread.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || t.join())),
            Err(_) => {
                let _ = t.join();
            }
        }
    }
}

impl Producer {
    pub(crate) fn new(cc: &ClientConfig) -> KafkaResult<Producer> {
        let inner: Arc<BaseProducer<Reports>> = Arc::new(cc.create_with_context(Reports)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (inner, stop) = (inner.clone(), stop.clone());
            std::thread::Builder::new()
                .name("cx-producer".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        inner.poll(POLL);
                    }
                })
                .map_err(|e| KafkaError::ClientCreation(e.to_string()))?
        };
        Ok(Producer {
            inner,
            _poller: Arc::new(Poller {
                stop,
                thread: Some(thread),
            }),
        })
    }
}

impl std::ops::Deref for Producer {
    type Target = BaseProducer<Reports>;

    fn deref(&self) -> &BaseProducer<Reports> {
        &self.inner
    }
}
