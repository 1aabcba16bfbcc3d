//! The node's producer and its delivery reports: each record reports through the producer's
//! callback to the [`Pending`] of the send it belongs to (an append, a catalog entry), so there is
//! no future or channel per record.

use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use strata_proto::{Error, OffsetRange};
use tokio::sync::Notify;

/// The delivery reports one append waits for.
pub(crate) struct Pending {
    remaining: AtomicUsize,
    first: AtomicU64,
    last: AtomicU64,
    error: Mutex<Option<KafkaError>>,
    done: Notify,
}

impl Pending {
    /// Waits for `records` reports.
    pub(crate) fn new(records: usize) -> Self {
        Self {
            remaining: AtomicUsize::new(records),
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
            error: Mutex::new(None),
            done: Notify::new(),
        }
    }

    /// Returns once every report has arrived.
    pub(crate) async fn wait(&self) {
        while self.remaining.load(Ordering::Acquire) > 0 {
            self.done.notified().await;
        }
    }

    /// The offsets the records got, or the first failure.
    pub(crate) fn outcome(&self) -> strata_proto::Result<OffsetRange> {
        if let Some(e) = self.error.lock().as_ref() {
            return Err(super::unavailable("the brokers did not take the events", e));
        }
        let (first, last) = (
            self.first.load(Ordering::Acquire),
            self.last.load(Ordering::Acquire),
        );
        if first == u64::MAX {
            return Err(Error::Unavailable("no delivery report".into()));
        }
        Ok(OffsetRange { first, last })
    }

    fn report(&self, result: &DeliveryResult<'_>) {
        match result {
            Ok(message) => {
                let offset = u64::try_from(message.offset()).unwrap_or(0);
                self.first.fetch_min(offset, Ordering::AcqRel);
                self.last.fetch_max(offset, Ordering::AcqRel);
            }
            Err((e, _)) => {
                self.error.lock().get_or_insert_with(|| e.clone());
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }
}

/// The producer context of appends: hands each report to its append's [`Pending`].
pub(crate) struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Arc<Pending>) {
        pending.report(result);
    }
}

/// The producer of a node: every record it sends reports to a [`Pending`].
pub(crate) type EventProducer = ThreadedProducer<DeliveryContext>;

/// Queues `record`, waiting (up to `timeout`) while the producer's queue is full.
pub(crate) async fn queue<'a, K, P>(
    producer: &EventProducer,
    mut record: BaseRecord<'a, K, P, Arc<Pending>>,
    timeout: Duration,
) -> strata_proto::Result<()>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    let mut waited = Duration::ZERO;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if waited < timeout =>
            {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
                waited += Duration::from_millis(5);
            }
            Err((e, _)) => return Err(super::unavailable("cannot queue the events", &e)),
        }
    }
}

/// Waits (bounded) for every report of `pending` and returns the offsets the records got.
/// librdkafka reports each record within `message.timeout.ms`; the bound is for safety.
pub(crate) async fn delivered(
    pending: &Pending,
    timeout: Duration,
) -> strata_proto::Result<OffsetRange> {
    let guard = timeout + Duration::from_secs(10);
    if tokio::time::timeout(guard, pending.wait()).await.is_err() {
        return Err(Error::Unavailable(
            "the brokers' acknowledgements did not arrive in time".into(),
        ));
    }
    pending.outcome()
}

/// Sends one record to `topic`'s `partition` and returns its offset once acknowledged.
pub(crate) async fn send_one(
    producer: &EventProducer,
    topic: &str,
    partition: u32,
    key: Option<&str>,
    value: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
    timeout: Duration,
) -> strata_proto::Result<u64> {
    let pending = Arc::new(Pending::new(1));
    let mut record = BaseRecord::<str, [u8], _>::with_opaque_to(topic, pending.clone())
        .partition(partition as i32);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(value) = value {
        record = record.payload(value);
    }
    if let Some(headers) = headers {
        record = record.headers(headers);
    }
    queue(producer, record, timeout).await?;
    Ok(delivered(&pending, timeout).await?.first)
}
