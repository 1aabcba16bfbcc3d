//! The dead-letter topic: records the store cannot take are copied there, with why, before the
//! shard moves past them.

use super::GroupContext;
use crate::kafka::mapping::dead_letter_headers;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use strata_proto::{Error, StreamName};

/// Counts dead-letter copies the brokers did not take.
#[derive(Default)]
pub(super) struct DeadLetterContext {
    failed: AtomicU64,
}

impl ClientContext for DeadLetterContext {}

impl ProducerContext for DeadLetterContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl GroupContext {
    /// Copies `dead` to the dead-letter topic and waits until the brokers have them all, so that
    /// the shard may move past them.
    pub(super) fn send_dead_letters(
        &self,
        stream: &StreamName,
        dead: &[(OwnedMessage, &'static str)],
    ) -> strata_proto::Result<()> {
        let failed_before = self.dead_letters.context().failed.load(Ordering::Relaxed);
        let topic = self.config.dead_letter_topic();
        for (message, reason) in dead {
            let headers = dead_letter_headers(message, reason);
            let mut record = BaseRecord::<[u8], [u8]>::to(&topic).headers(headers);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(value) = message.payload() {
                record = record.payload(value);
            }
            let mut full_for = 0;
            loop {
                match self.dead_letters.send(record) {
                    Ok(()) => break,
                    Err((e, r))
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                            && full_for < 100 =>
                    {
                        // The queue drains as the brokers acknowledge; wait (bounded) for room.
                        full_for += 1;
                        self.dead_letters.poll(Duration::from_millis(50));
                        record = r;
                    }
                    Err((e, _)) => {
                        return Err(crate::kafka::unavailable(
                            "cannot write to the dead-letter topic",
                            &e,
                        ));
                    }
                }
            }
        }
        self.dead_letters
            .flush(self.config.timeout())
            .map_err(|e| {
                crate::kafka::unavailable("the dead-letter topic did not take its records", &e)
            })?;
        if self.dead_letters.context().failed.load(Ordering::Relaxed) != failed_before {
            return Err(Error::Unavailable(
                "the brokers refused a dead-letter record".into(),
            ));
        }
        for (message, reason) in dead {
            tracing::warn!(%stream, partition = message.partition(), offset = message.offset(), reason,
                "record set aside in the dead-letter topic {topic}");
            metrics::counter!("strata_kafka_dead_letters_total", "stream" => stream.to_string(), "reason" => *reason)
                .increment(1);
        }
        Ok(())
    }
}
