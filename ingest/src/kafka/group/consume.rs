//! The consumer loop of the store group.

use super::*;

/// The consumer loop: poll, group the records by partition, commit each partition's share to
/// its shard, then signal progress to Kafka.
pub(super) fn consume(consumer: BaseConsumer<GroupContext>, max_batch: usize, stop: &AtomicBool) {
    let mut failures = 0u32;
    let mut last_error_log = Instant::now() - Duration::from_secs(60);
    let shared = consumer.context().shared.clone();
    let mut last_gap_log = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if last_gap_log.elapsed() > Duration::from_secs(30) {
            last_gap_log = Instant::now();
            for gap in shared.gaps.lock().values() {
                tracing::error!(stream = %gap.stream, partition = gap.partition, "still stalled: {}", gap.message());
            }
        }
        let mut read = 0usize;
        let mut wait = Duration::from_millis(100);
        let now = chrono::Utc::now().timestamp_millis();
        while read < max_batch {
            let Some(message) = consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            match message {
                Ok(m) => {
                    let mut buffers = shared.buffers.lock();
                    let batch = buffers
                        .entry((m.topic().to_owned(), m.partition()))
                        .or_default();
                    if batch.add(&m, now, &consumer.context().config) {
                        read += 1;
                    }
                }
                Err(e) if no_topic_yet(&e) => break,
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) => {
                    consumer.context().check_gaps(&consumer);
                    break;
                }
                Err(e) => {
                    if last_error_log.elapsed() > Duration::from_secs(10) {
                        tracing::warn!(error = %e, "the store consumer cannot read from Kafka");
                        last_error_log = Instant::now();
                    }
                    break;
                }
            }
        }
        let buffers = std::mem::take(&mut *shared.buffers.lock());
        if buffers.is_empty() {
            continue;
        }
        let context = consumer.context();
        let mut progress = TopicPartitionList::new();
        for ((topic, partition), batch) in buffers {
            let Some((stream, p)) = context.stream_partition(&topic, partition) else {
                continue;
            };
            let first = batch.first.unwrap_or(0);
            let stored = if batch.dead.is_empty() {
                Ok(())
            } else {
                context.send_dead_letters(&stream, &batch.dead)
            }
            .and_then(|()| context.store(&stream, p, batch));
            match stored {
                Ok(next) => {
                    failures = 0;
                    context.note_progress(&stream, p, None);
                    let _ = progress.add_partition_offset(
                        &topic,
                        partition,
                        Offset::Offset(next as i64),
                    );
                }
                Err(e) => {
                    // Not stored: read the same records again (a stream the catalog does not
                    // list yet is retried until it does).
                    failures += 1;
                    if !matches!(e, Error::UnknownStream(_)) || failures > 50 {
                        tracing::error!(%stream, partition = p, error = %e, "store commit failed; retrying");
                    }
                    if let Err(e) = consumer.seek(
                        &topic,
                        partition,
                        Offset::Offset(first as i64),
                        Duration::from_secs(5),
                    ) {
                        tracing::warn!(%stream, partition = p, error = %e, "cannot rewind the partition");
                    }
                }
            }
        }
        if progress.count() > 0
            && let Err(e) = consumer.commit(&progress, CommitMode::Async)
        {
            tracing::debug!(error = %e, "cannot commit progress to Kafka");
        }
        if failures > 0 {
            std::thread::sleep(Duration::from_millis(100 * u64::from(failures.min(20))));
        }
    }
    // Leaving: progress for lag tools, then the group (a revoke runs in `unsubscribe`'s poll).
    if let Ok(assignment) = consumer.assignment() {
        consumer
            .context()
            .commit_progress(&consumer, &assignment, CommitMode::Sync);
    }
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
}
