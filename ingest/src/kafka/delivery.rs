//! Delivery reports of one append, gathered by the producer's callback: no future or channel per
//! record, one shared counter per append.

use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
