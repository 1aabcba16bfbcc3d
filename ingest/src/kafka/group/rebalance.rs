//! Rebalances of the store group, incremental: a partition given to this node is sought to its
//! shard's next offset and caught up before it is served; a partition taken away has its
//! in-flight batch stored and its progress committed first. The partitions that stay are not
//! touched, so with cooperative-sticky assignment they are served throughout a rebalance.
//!
//! The same handlers serve the eager protocol (every partition revoked, then the new set
//! assigned): a partition the node keeps through an eager rebalance stays ready, since nobody
//! else read it meanwhile.

use super::*;
use rdkafka::consumer::RebalanceProtocol;

impl GroupContext {
    /// Takes the partitions of `tpl` (added to what the node holds), each from its shard's next
    /// offset.
    fn take(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        // The group's consumer starts where the warm-restart one ended. (An empty assignment,
        // which a member can get while the group waits for one that died, takes nothing.)
        if tpl.count() > 0 {
            let warm = self.bridge.lock().take();
            if let Some(warm) = warm {
                warm.stop();
            }
        }
        let elements: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let mut taken = Vec::new();
        for (topic, partition) in elements {
            let Some((stream, p)) = self.stream_partition(&topic, partition) else {
                continue;
            };
            // A shard not written yet (or a stream not in the catalog yet) starts at offset 0, so
            // that a log whose retention already deleted its start is noticed (see
            // `check_gaps`) rather than skipped.
            let next = self.sink.stored_next_offset(&stream, p).unwrap_or(0);
            let offset = Offset::Offset(next as i64);
            if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                tracing::warn!(%topic, partition, error = %e, "cannot set the start offset");
            }
            tracing::info!(%stream, partition = p, ?offset, "partition assigned");
            self.shared.buffers.lock().remove(&(topic, partition));
            taken.push((stream, p));
        }
        {
            let mut assigned = self.shared.assigned.lock();
            let mut ready = self.shared.ready.lock();
            let mut catching_up = self.shared.catching_up.lock();
            for key in taken {
                if !ready.contains(&key) {
                    catching_up.insert(key.clone(), None);
                }
                assigned.insert(key, None);
            }
            // An eager assignment is the whole set: a partition ready before but not given back
            // was read by another member meanwhile and must catch up again if it returns.
            ready.retain(|k| assigned.contains_key(k));
            let mut noted = self.noted.lock();
            noted.extend(assigned.keys().cloned());
            bridge::save_held(&self.held_file, &noted);
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot take the assigned partitions");
        }
    }

    /// Gives up the partitions of `tpl`: stores their in-flight batches, commits their progress
    /// (unless the group already gave them to another member) and forgets them.
    fn give_up(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let lost = consumer.assignment_lost();
        let in_flight: Vec<((String, i32), Batch)> = {
            let mut buffers = self.shared.buffers.lock();
            tpl.elements()
                .iter()
                .filter_map(|e| {
                    let key = (e.topic().to_owned(), e.partition());
                    buffers.remove(&key).map(|batch| (key, batch))
                })
                .collect()
        };
        // Storing a read batch is right even when the partition was lost: the shard is this
        // node's own and follows the log's order.
        for ((topic, partition), batch) in in_flight {
            if let Some((stream, p)) = self.stream_partition(&topic, partition)
                && let Err(e) = self.store(&stream, p, batch)
            {
                tracing::warn!(%stream, partition = p, error = %e,
                    "cannot store the last batch of a revoked partition; its next holder reads it");
            }
        }
        if !lost {
            self.commit_progress(consumer, tpl, CommitMode::Sync);
        }
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        {
            let mut assigned = self.shared.assigned.lock();
            let mut ready = self.shared.ready.lock();
            let mut catching_up = self.shared.catching_up.lock();
            let mut gaps = self.shared.gaps.lock();
            for e in tpl.elements() {
                let Some(key) = self.stream_partition(e.topic(), e.partition()) else {
                    continue;
                };
                tracing::info!(stream = %key.0, partition = key.1, lost, "partition revoked");
                assigned.remove(&key);
                catching_up.remove(&key);
                // Under the eager protocol the partition may come straight back, unread by
                // anyone else; under the cooperative one it goes to another member.
                if cooperative || lost {
                    ready.remove(&key);
                }
                if gaps.remove(&key).is_some() {
                    metrics::gauge!("strata_store_stalled_partitions", "stream" => key.0.to_string(), "partition" => key.1.to_string())
                        .set(0.0);
                }
            }
        }
        // Leaving the group on a shutdown keeps the note: the next start catches them up.
        if !self.stopping.load(Ordering::Relaxed) {
            let mut noted = self.noted.lock();
            for e in tpl.elements() {
                if let Some(key) = self.stream_partition(e.topic(), e.partition()) {
                    noted.remove(&key);
                }
            }
            bridge::save_held(&self.held_file, &noted);
        }
        let result = if cooperative {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot give up the revoked partitions");
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.take(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.give_up(consumer, tpl),
            other => {
                tracing::error!(error = ?other, "consumer group rebalance failed");
                self.shared.assigned.lock().clear();
                self.shared.ready.lock().clear();
                self.shared.catching_up.lock().clear();
                self.clear_gaps();
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "progress commit to Kafka failed");
        }
    }
}
