//! A reader of one partition straight from Kafka (replay with `source=log`, embedded-style
//! consumers): a consumer outside any group, assigned to the partition at an offset.

use super::KafkaConfig;
use super::mapping::{dead_letter_reason, is_control, record_from_message};
use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use strata_proto::{Error, LogReader, Record, Result, StreamName};

pub(crate) struct KafkaReader {
    config: KafkaConfig,
    partition: u32,
    consumer: Option<BaseConsumer>,
    position: u64,
}

impl KafkaReader {
    pub(crate) fn open(
        config: &KafkaConfig,
        stream: &StreamName,
        partition: u32,
        from: u64,
    ) -> Result<Self> {
        let consumer: BaseConsumer = config
            .consumer_config("strata-reader")
            // An offset retention deleted is an error to report, not a jump to the log's start.
            .set("auto.offset.reset", "error")
            .create()
            .map_err(|e| Error::Unavailable(format!("cannot create a Kafka reader: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &config.topic(stream.as_str()),
            partition as i32,
            Offset::Offset(from as i64),
        )
        .map_err(|e| Error::Unavailable(format!("cannot read {stream}: {e}")))?;
        consumer
            .assign(&tpl)
            .map_err(|e| Error::Unavailable(format!("cannot read {stream}: {e}")))?;
        Ok(Self {
            config: config.clone(),
            partition,
            consumer: Some(consumer),
            position: from,
        })
    }
}

#[async_trait]
impl LogReader for KafkaReader {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>> {
        let consumer = self
            .consumer
            .take()
            .ok_or_else(|| Error::Unavailable("the Kafka reader failed earlier".into()))?;
        let config = self.config.clone();
        let (position, partition) = (self.position, self.partition);
        let (consumer, result) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let now = chrono::Utc::now().timestamp_millis();
            let mut out = Vec::new();
            let mut error = None;
            let mut skipped_to = None;
            while out.len() < max {
                let left = if out.is_empty() {
                    wait.saturating_sub(started.elapsed())
                } else {
                    Duration::ZERO
                };
                match consumer.poll(left) {
                    Some(Ok(message)) if is_control(&message) => {
                        skipped_to = Some(u64::try_from(message.offset()).unwrap_or(0) + 1);
                    }
                    Some(Ok(message)) => {
                        // What store nodes set aside is not an event of the stream here either.
                        let consumed = record_from_message(&message, now);
                        if dead_letter_reason(&message, &consumed, &config).is_some() {
                            skipped_to = Some(consumed.record.offset + 1);
                        } else {
                            out.push(consumed.record);
                        }
                    }
                    Some(Err(e))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::error::RDKafkaErrorCode::AutoOffsetReset) =>
                    {
                        error = Some(Error::OffsetGone(format!(
                            "offset {position} of partition {partition} is no longer in the log \
                             (deleted by the log's retention)"
                        )));
                        break;
                    }
                    Some(Err(e)) => {
                        error = Some(super::unavailable("reading the partition failed", &e));
                        break;
                    }
                    None if out.is_empty() && started.elapsed() < wait => {}
                    None => break,
                }
            }
            (consumer, error.map_or(Ok((out, skipped_to)), Err))
        })
        .await
        .map_err(|e| Error::Unavailable(format!("the Kafka reader task failed: {e}")))?;
        self.consumer = Some(consumer);
        let (records, skipped_to) = result?;
        let last = records.last().map(|r| r.offset + 1);
        self.position = self
            .position
            .max(last.unwrap_or(0))
            .max(skipped_to.unwrap_or(0));
        Ok(records)
    }

    fn position(&self) -> u64 {
        self.position
    }
}
