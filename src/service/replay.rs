//! Replay: stored events from the shards (columnar scans), or straight from the log, as NDJSON.

use super::{Error, Parts, Result, stream_name};
use crate::auth::{Operation, Principal};
use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::{Log, StreamInfo, StreamName, partition_for_key};
use strata_store::{ScanRequest, Store};
use tokio::sync::mpsc;

/// Where a replay reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// The store's shards (what SQL sees).
    #[default]
    Store,
    /// The log itself.
    Log,
}

/// What a replay asks for.
#[derive(Clone, Debug, Default)]
pub struct ReplayRequest {
    /// The stream.
    pub stream: String,
    /// One partition (default: every partition, one after the other).
    pub partition: Option<u32>,
    /// The first offset (needs `partition` on a stream with several partitions).
    pub from: Option<u64>,
    /// Start at the first event at or after this time (epoch ms).
    pub from_time: Option<i64>,
    /// Only events with this key (and, without `partition`, only the key's partition).
    pub key: Option<String>,
    /// At most this many events.
    pub limit: Option<usize>,
    /// Where to read.
    pub source: Source,
}

/// NDJSON chunks of replayed events, as they are read; an error ends the stream.
pub type Chunks = mpsc::Receiver<std::io::Result<Bytes>>;

/// A checked replay: the partitions to read, in order, and from where.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    name: StreamName,
    partitions: Vec<u32>,
    from: u64,
    from_time: Option<i64>,
    key: Option<String>,
    limit: usize,
}

impl Plan {
    /// Checks `r` against the stream it names.
    fn new(r: ReplayRequest, name: StreamName, info: &StreamInfo) -> Result<Self> {
        let partitions: Vec<u32> = match (r.partition, &r.key) {
            (Some(p), _) => {
                info.check_partition(p)?;
                vec![p]
            }
            (None, Some(k)) => vec![partition_for_key(k.as_bytes(), info.partitions)],
            (None, None) if r.from.is_some() && info.partitions > 1 => {
                return Err(Error::BadRequest(format!(
                    "`from` is an offset within one partition; add `partition` (the stream has {} partitions)",
                    info.partitions
                )));
            }
            (None, None) => (0..info.partitions).collect(),
        };
        Ok(Self {
            name,
            partitions,
            from: r.from.unwrap_or(0),
            from_time: r.from_time,
            key: r.key,
            limit: r.limit.unwrap_or(usize::MAX),
        })
    }
}

/// Replays events.
#[derive(Clone)]
pub struct ReplayService {
    parts: Arc<Parts>,
}

impl ReplayService {
    pub(super) fn new(parts: Arc<Parts>) -> Self {
        Self { parts }
    }

    /// Starts a replay. Errors that can be known before the first event (a bad request, offsets
    /// the log's retention deleted, a log that cannot be read) are returned here, not in the
    /// stream.
    ///
    /// # Errors
    /// Forbidden, a bad name or partition, `from` without `partition`, an unknown stream,
    /// [`strata_proto::Error::OffsetGone`] for deleted offsets, the wrong role.
    pub async fn replay(&self, who: &Principal, r: ReplayRequest) -> Result<Chunks> {
        who.authorize(Operation::Read(&r.stream))?;
        let name = stream_name(&r.stream)?;
        let source = r.source;
        let cluster = self.parts.cluster.as_ref();
        let info = match (source, cluster) {
            (Source::Log, _) | (Source::Store, Some(_)) => self.parts.stream_info(&name)?,
            (Source::Store, None) => self.parts.store()?.stream(&name)?,
        };
        let plan = Plan::new(r, name, &info)?;
        match (source, cluster) {
            (Source::Log, _) => replay_log(self.parts.log.clone(), plan).await,
            (Source::Store, Some(cluster)) => replay_cluster(cluster.clone(), plan).await,
            (Source::Store, None) => replay_store(self.parts.store()?.clone(), plan).await,
        }
    }
}

/// Replays from the shards: columnar scans, written as NDJSON.
async fn replay_store(store: Arc<Store>, r: Plan) -> Result<Chunks> {
    let mut starts = Vec::with_capacity(r.partitions.len());
    for &p in &r.partitions {
        let mut start = r.from;
        if let Some(t) = r.from_time {
            let (store, name) = (store.clone(), r.name.clone());
            let at = tokio::task::spawn_blocking(move || store.offset_for_time(&name, p, t))
                .await
                .map_err(|e| Error::BadRequest(format!("replay failed: {e}")))??;
            start = start.max(at);
        }
        starts.push((p, start));
    }
    let (tx, rx) = mpsc::channel::<Scanned>(ENCODERS);
    tokio::task::spawn_blocking(move || {
        let mut remaining = r.limit;
        for (p, start) in starts {
            if remaining == 0 {
                break;
            }
            let request = ScanRequest {
                offsets: start..u64::MAX,
                key: r.key.clone(),
                limit: Some(remaining),
                ..ScanRequest::all()
            };
            let scan = match store.scan(&r.name, p, request) {
                Ok(scan) => scan,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.to_string()));
                    return;
                }
            };
            for batch in scan {
                let batch = batch.map_err(|e| e.to_string());
                let failed = batch.is_err();
                if let Ok(b) = &batch {
                    remaining = remaining.saturating_sub(b.num_rows());
                }
                if tx.blocking_send(batch).is_err() || failed {
                    return;
                }
            }
        }
    });
    Ok(ndjson(rx))
}

/// A batch of stored events read for a replay, or why the read failed.
type Scanned = std::result::Result<RecordBatch, String>;

/// How many batches are encoded as NDJSON at once (one per core of a small node; the reading
/// and the socket writes take the rest).
const ENCODERS: usize = 2;

/// Writes batches as NDJSON chunks, in their order, encoding up to [`ENCODERS`] at once on the
/// blocking pool (encoding is most of a replay's CPU). The first error ends the chunks.
fn ndjson(mut batches: mpsc::Receiver<Scanned>) -> Chunks {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(ENCODERS);
    let buffers = Buffers::new();
    tokio::spawn(async move {
        let mut chunks = futures::stream::poll_fn(move |cx| batches.poll_recv(cx))
            .map(|batch| {
                let buffers = buffers.clone();
                async move {
                    let batch = batch.map_err(std::io::Error::other)?;
                    tokio::task::spawn_blocking(move || {
                        let mut out = buffers.take(batch.num_rows() * 384);
                        strata_store::ndjson::write_batch(&batch, &mut out);
                        buffers.chunk(out)
                    })
                    .await
                    .map_err(std::io::Error::other)
                }
            })
            .buffered(ENCODERS);
        while let Some(chunk) = chunks.next().await {
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// The chunk buffers of one replay, handed back once the connection has written them: a replay
/// reuses a few buffers instead of a fresh one per batch, whose pages the allocator has returned
/// to the OS since and the kernel must fault in and zero again (a quarter of the server's CPU in
/// a replay of 10M events before this).
#[derive(Clone)]
struct Buffers(Arc<parking_lot::Mutex<Vec<Vec<u8>>>>);

/// Buffers a replay keeps: the ones being encoded, queued and written, and one spare.
const KEPT_BUFFERS: usize = 2 * ENCODERS + 2;

impl Buffers {
    fn new() -> Self {
        Self(Arc::new(parking_lot::Mutex::new(Vec::new())))
    }

    /// An empty buffer with room for `bytes`.
    fn take(&self, bytes: usize) -> Vec<u8> {
        let mut buffer = self.0.lock().pop().unwrap_or_default();
        buffer.reserve(bytes);
        buffer
    }

    /// `buffer` as a chunk that returns it here when dropped.
    fn chunk(&self, buffer: Vec<u8>) -> Bytes {
        Bytes::from_owner(Returned {
            buffer,
            home: self.clone(),
        })
    }
}

/// A written chunk's buffer on its way back to its [`Buffers`].
struct Returned {
    buffer: Vec<u8>,
    home: Buffers,
}

impl AsRef<[u8]> for Returned {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        let mut kept = self.home.0.lock();
        if kept.len() < KEPT_BUFFERS {
            kept.push(buffer);
        }
    }
}

/// Replays from the shards of whichever nodes hold the partitions (this one, or a peer over the
/// node-to-node port), one partition after the other.
async fn replay_cluster(cluster: strata_cluster::Cluster, r: Plan) -> Result<Chunks> {
    let ticket = move |partition: u32, limit: usize| strata_cluster::ReplayTicket {
        stream: r.name.to_string(),
        partition,
        from: r.from,
        from_time: r.from_time,
        key: r.key.clone(),
        limit,
        fields: false,
    };
    let (tx, rx) = mpsc::channel::<Scanned>(ENCODERS);
    let mut partitions = r.partitions.into_iter();
    let Some(first) = partitions.next() else {
        return Ok(ndjson(rx));
    };
    // A partition nobody serves now is an error status, not a broken answer.
    let mut batches = cluster.replay(ticket(first, r.limit)).await?;
    tokio::spawn(async move {
        let mut remaining = r.limit;
        loop {
            while let Some(batch) = batches.next().await {
                let batch = batch.map_err(|e| e.to_string());
                let failed = batch.is_err();
                if let Ok(b) = &batch {
                    remaining = remaining.saturating_sub(b.num_rows());
                }
                if tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
            let Some(p) = partitions.next().filter(|_| remaining > 0) else {
                return;
            };
            batches = match cluster.replay(ticket(p, remaining)).await {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                    return;
                }
            };
        }
    });
    Ok(ndjson(rx))
}

/// A partition being replayed from the log: its end (where the log can say), its reader, and a
/// batch read ahead.
struct LogReplay {
    end: Option<u64>,
    reader: Box<dyn strata_proto::LogReader>,
    ahead: Option<Vec<strata_proto::Record>>,
}

async fn open_log_replay(
    log: &Arc<dyn Log>,
    r: &Plan,
    partition: u32,
    exact_ends: bool,
) -> strata_proto::Result<LogReplay> {
    let end = if exact_ends {
        Some(log.end_offset(&r.name, partition).await?)
    } else {
        None
    };
    let reader = log.open_reader(&r.name, partition, r.from).await?;
    Ok(LogReplay {
        end,
        reader,
        ahead: None,
    })
}

/// Replays straight from the log: up to the partition's end offset where the log's answer is
/// exact, otherwise (Kafka) until the partition has been idle for a second.
/// `from_time` starts at the first record at or after it; `key` keeps that key's records.
async fn replay_log(log: Arc<dyn Log>, r: Plan) -> Result<Chunks> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let exact_ends = log.end_offsets_are_exact();
    let first_wait = Duration::from_secs(if exact_ends { 1 } else { 5 });
    // The first partition is opened and its first batch read before answering, so that offsets
    // the log no longer holds (410) or a log that cannot be read (503) get their status instead
    // of a broken body.
    let mut first = match r.partitions.first() {
        Some(&p) if r.limit > 0 => {
            let mut opened = open_log_replay(&log, &r, p, exact_ends).await?;
            if opened.end.is_none_or(|end| opened.reader.position() < end) {
                let batch = opened
                    .reader
                    .next_batch(r.limit.min(10_000), first_wait)
                    .await?;
                opened.ahead = Some(batch);
            }
            Some(opened)
        }
        _ => None,
    };
    tokio::spawn(async move {
        let fail = |e: String| Err(std::io::Error::other(e));
        let mut remaining = r.limit;
        for &p in &r.partitions {
            if remaining == 0 {
                break;
            }
            let opened = match first.take() {
                Some(opened) => Ok(opened),
                None => open_log_replay(&log, &r, p, exact_ends).await,
            };
            let LogReplay {
                end,
                mut reader,
                mut ahead,
            } = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    let _ = tx.send(fail(e.to_string())).await;
                    return;
                }
            };
            let mut started = r.from_time.is_none();
            let mut wait = first_wait;
            loop {
                let batch = match ahead.take() {
                    Some(batch) => batch,
                    None if remaining > 0 && end.is_none_or(|end| reader.position() < end) => {
                        match reader.next_batch(remaining.min(10_000), wait).await {
                            Ok(batch) => batch,
                            Err(e) => {
                                let _ = tx.send(fail(e.to_string())).await;
                                return;
                            }
                        }
                    }
                    None => break,
                };
                if batch.is_empty() {
                    break;
                }
                wait = Duration::from_secs(1);
                let mut out = Vec::with_capacity(batch.len() * 256);
                for record in batch {
                    if end.is_some_and(|end| record.offset >= end) || remaining == 0 {
                        break;
                    }
                    if !started {
                        match r.from_time {
                            Some(t) if record.event.time_ms < t => continue,
                            _ => started = true,
                        }
                    }
                    if r.key.is_some() && record.event.key != r.key {
                        continue;
                    }
                    record.write_ndjson(&mut out);
                    remaining -= 1;
                }
                if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(partitions: u32) -> StreamInfo {
        StreamInfo {
            name: StreamName::new("orders").unwrap(),
            partitions,
            fields: Vec::new(),
        }
    }

    #[test]
    fn a_written_chunk_hands_its_buffer_back_and_few_are_kept() {
        let buffers = Buffers::new();
        let mut out = buffers.take(1 << 20);
        out.extend_from_slice(b"{\"offset\":0}\n");
        let address = out.as_ptr();
        let chunk = buffers.chunk(out);
        assert_eq!(&chunk[..], b"{\"offset\":0}\n");
        // A clone (hyper may hold one) keeps the buffer out until the last is dropped.
        let clone = chunk.clone();
        drop(chunk);
        assert!(buffers.0.lock().is_empty());
        drop(clone);
        let again = buffers.take(10);
        assert!(again.is_empty() && again.capacity() >= 1 << 20);
        assert_eq!(again.as_ptr(), address, "the same buffer, not a new one");
        let chunks: Vec<Bytes> = (0..KEPT_BUFFERS + 3)
            .map(|_| buffers.chunk(buffers.take(64)))
            .collect();
        drop(chunks);
        assert_eq!(buffers.0.lock().len(), KEPT_BUFFERS);
    }

    fn plan(r: ReplayRequest, partitions: u32) -> Result<Plan> {
        Plan::new(r, StreamName::new("orders").unwrap(), &info(partitions))
    }

    #[test]
    fn offsets_and_partitions_are_checked() {
        // Every partition in order, from the start, without a limit.
        let all = plan(ReplayRequest::default(), 3).unwrap();
        assert_eq!(
            (all.partitions, all.from, all.limit),
            (vec![0, 1, 2], 0, usize::MAX)
        );
        // `from` is an offset within one partition.
        let err = plan(
            ReplayRequest {
                from: Some(5),
                ..ReplayRequest::default()
            },
            3,
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::BadRequest(m) if m.contains("add `partition`")),
            "{err}"
        );
        // ... which a single-partition stream does not need.
        assert_eq!(
            plan(
                ReplayRequest {
                    from: Some(5),
                    ..ReplayRequest::default()
                },
                1
            )
            .unwrap()
            .from,
            5
        );
        // A partition the stream does not have.
        let err = plan(
            ReplayRequest {
                partition: Some(3),
                ..ReplayRequest::default()
            },
            3,
        )
        .unwrap_err();
        assert_eq!(err.kind(), super::super::Kind::Invalid, "{err}");
        // A key reads its own partition only; an explicit partition wins.
        let keyed = plan(
            ReplayRequest {
                key: Some("c-17".into()),
                ..ReplayRequest::default()
            },
            4,
        )
        .unwrap();
        assert_eq!(keyed.partitions, vec![partition_for_key(b"c-17", 4)]);
        let both = plan(
            ReplayRequest {
                key: Some("c-17".into()),
                partition: Some(0),
                from: Some(2),
                limit: Some(10),
                ..ReplayRequest::default()
            },
            4,
        )
        .unwrap();
        assert_eq!((both.partitions, both.from, both.limit), (vec![0], 2, 10));
    }
}
