//! Subscriptions: a replay from the shards that catches up and then follows the stream, delivering
//! each event once it is stored, with a cursor to resume from.
//!
//! A cursor is every followed partition's next offset, written like a consistency token
//! (`v1.orders.0-18.1-7`): resuming from it starts each partition right after the last event the
//! client saw, on any node, because offsets are the log's and every node's shards agree on them.
//! A subscription reads its partitions in turn, at most [`READ_ROWS`] events at a time, and sends
//! each read only when the client has taken the one before (a bounded channel), so a slow reader
//! holds no more than a few reads of server memory. Once caught up it waits for the store's next
//! commit (this node's shards), or for the holders to answer that one of their partitions has
//! stored past it (a cluster; `strata_cluster::Cluster::stored_past`).

use super::{Error, Kind, Parts, Result, stream_name, streams::stored_position};
use crate::auth::{Operation, Principal};
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use futures::TryStreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_proto::{ConsistencyToken, StreamInfo, StreamName, partition_for_key};
use strata_store::{ScanRequest, Store, schema};
use strata_views::EventFilter;
use tokio::sync::{mpsc, watch};

/// The most events one read of one partition returns.
pub const READ_ROWS: usize = 2048;
/// How often a subscription served from other nodes' shards asks them for new events while they
/// cannot be asked to tell it (a holder unreachable); view change feeds poll at 5× this.
pub const CLUSTER_POLL: Duration = Duration::from_millis(50);
/// How often a subscription asks again for a partition that no live node serves (it moved).
pub const MOVING_RETRY: Duration = Duration::from_millis(250);
/// How soon after its last delivery a subscription that is caught up past events its filters
/// dropped sends their cursor in a heartbeat (at most one such heartbeat per this interval).
pub const SETTLE: Duration = Duration::from_millis(100);
/// The longest a subscription stays silent: a heartbeat carries the cursor at least this often.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(10);

/// A subscription's position: every followed partition's next offset.
pub type Cursor = ConsistencyToken;

/// Where a subscription starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// Every partition's first event.
    #[default]
    Beginning,
    /// This offset (of one partition).
    Offset(u64),
    /// Each partition's first event at or after this time (epoch ms).
    Time(i64),
    /// What is stored from now on.
    End,
    /// Right after the events a cursor covers.
    Cursor(String),
}

/// What a subscription asks for.
#[derive(Clone, Debug)]
pub struct FollowRequest {
    /// The stream.
    pub stream: String,
    /// One partition (default: every partition).
    pub partition: Option<u32>,
    /// Only events with this key (and, without `partition`, only the key's partition).
    pub key: Option<String>,
    /// Where to start.
    pub start: Start,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events for which this SQL boolean expression over the stream's columns is true.
    pub filter: Option<String>,
    /// Longest silence before a heartbeat (at most [`MAX_HEARTBEAT`]).
    pub heartbeat: Duration,
}

/// What a subscription delivers.
#[derive(Debug)]
pub enum Delivery {
    /// Stored events (the stream's base columns), in offset order per partition, with the cursor
    /// as it was before the first of them: advanced past each event, it is that event's cursor.
    Events {
        /// The events.
        batch: RecordBatch,
        /// The cursor before them.
        cursor: Cursor,
    },
    /// No event for a while, or only events the filters dropped: the current cursor.
    Heartbeat(Cursor),
}

/// A subscription's deliveries as the client takes them; an error ends them.
pub type Deliveries = mpsc::Receiver<Result<Delivery>>;

/// Follows streams.
#[derive(Clone)]
pub struct SubscribeService {
    parts: Arc<Parts>,
}

impl SubscribeService {
    pub(super) fn new(parts: Arc<Parts>) -> Self {
        Self { parts }
    }

    /// Starts following a stream. Everything that can be refused (rights, names, parameters, the
    /// cursor, the filter) is refused here, before the first delivery.
    ///
    /// # Errors
    /// Forbidden, a bad name, partition, cursor or filter, `from` without `partition`, an unknown
    /// stream, a node that can read no shards, `from=end` while no live node holds a partition.
    pub async fn follow(&self, who: &Principal, r: FollowRequest) -> Result<Deliveries> {
        let prepared = self.prepare(who, &r).await?;
        let watchers = match &prepared.reader {
            Reader::Local(store) => prepared
                .partitions
                .iter()
                .map(|&p| store.subscribe(&prepared.info.name, p))
                .collect::<std::result::Result<_, _>>()?,
            Reader::Cluster(_) => Vec::new(),
        };
        let follow = Follow {
            fields: prepared.filter.is_some() && !prepared.info.fields.is_empty(),
            reader: prepared.reader,
            partitions: prepared.partitions,
            key: r.key,
            filter: prepared.filter,
            cursor: prepared.cursor,
            heartbeat: r.heartbeat.clamp(Duration::from_millis(100), MAX_HEARTBEAT),
            watchers,
            seen: std::collections::BTreeMap::new(),
        };
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(follow.run(tx));
        Ok(rx)
    }

    /// The cursor `r` would start from, after the checks of [`SubscribeService::follow`].
    ///
    /// # Errors
    /// As [`SubscribeService::follow`].
    pub(super) async fn starting_cursor(
        &self,
        who: &Principal,
        r: &FollowRequest,
    ) -> Result<Cursor> {
        Ok(self.prepare(who, r).await?.cursor)
    }

    /// Checks `r` and works out where it reads and starts.
    async fn prepare(&self, who: &Principal, r: &FollowRequest) -> Result<Prepared> {
        who.authorize(Operation::Read(&r.stream))?;
        let name = stream_name(&r.stream)?;
        let parts = &self.parts;
        let (reader, info) = match (&parts.cluster, &parts.store) {
            (Some(cluster), _) => (Reader::Cluster(cluster.clone()), parts.stream_info(&name)?),
            (None, Some(store)) => (Reader::Local(store.clone()), store.stream(&name)?),
            (None, None) => {
                return Err(Error::WrongRole(format!(
                    "this node has role {} and keeps no shards; subscribe on a store node",
                    parts.node.role.name()
                )));
            }
        };
        let partitions = partitions(r, &info)?;
        let filter = match (&r.event_type, &r.filter) {
            (None, None) => None,
            (event_type, filter) => parts.sql()?.event_filter(
                schema::stream_schema(&info),
                event_type.as_deref(),
                filter.as_deref(),
            )?,
        };
        let cursor = self
            .start(&reader, &info, &partitions, &r.start, r.key.as_deref())
            .await?;
        Ok(Prepared {
            reader,
            info,
            partitions,
            filter,
            cursor,
        })
    }

    /// The cursor a subscription starts from.
    async fn start(
        &self,
        reader: &Reader,
        info: &StreamInfo,
        partitions: &[u32],
        start: &Start,
        key: Option<&str>,
    ) -> Result<Cursor> {
        let mut cursor = Cursor {
            stream: info.name.clone(),
            offsets: partitions.iter().map(|&p| (p, 0)).collect(),
        };
        match start {
            Start::Beginning => {}
            Start::Offset(o) => cursor.offsets.values_mut().for_each(|v| *v = *o),
            Start::Cursor(text) => {
                let given: Cursor = text.parse()?;
                if given.stream != info.name {
                    return Err(Error::BadRequest(format!(
                        "the cursor is a position in stream {}, not {}",
                        given.stream, info.name
                    )));
                }
                if let Some(p) = given.offsets.keys().find(|&&p| p >= info.partitions) {
                    return Err(Error::BadRequest(format!(
                        "the cursor names partition {p}, but {} has {} partitions",
                        info.name, info.partitions
                    )));
                }
                for (p, o) in cursor.offsets.iter_mut() {
                    *o = given.offsets.get(p).copied().unwrap_or(0);
                }
            }
            Start::End => {
                cursor = stored_position(&self.parts, info, partitions.iter().copied())?;
            }
            Start::Time(t) => {
                for (&p, o) in cursor.offsets.iter_mut() {
                    *o = reader
                        .offset_for_time(&self.parts, info, p, *t, key)
                        .await?;
                }
            }
        }
        Ok(cursor)
    }
}

/// The partitions a subscription follows.
fn partitions(r: &FollowRequest, info: &StreamInfo) -> Result<Vec<u32>> {
    Ok(match (r.partition, &r.key) {
        (Some(p), _) => {
            info.check_partition(p)?;
            vec![p]
        }
        (None, Some(k)) => vec![partition_for_key(k.as_bytes(), info.partitions)],
        (None, None) if matches!(r.start, Start::Offset(_)) && info.partitions > 1 => {
            return Err(Error::BadRequest(format!(
                "`from` is an offset within one partition; add `partition` (the stream has {} partitions), or resume with `cursor`",
                info.partitions
            )));
        }
        (None, None) => (0..info.partitions).collect(),
    })
}

/// A checked subscription, ready to run.
struct Prepared {
    reader: Reader,
    info: StreamInfo,
    partitions: Vec<u32>,
    filter: Option<EventFilter>,
    cursor: Cursor,
}

/// Where a subscription reads: this node's shards, or the holders' across the cluster.
enum Reader {
    Local(Arc<Store>),
    Cluster(strata_cluster::Cluster),
}

impl Reader {
    /// Up to [`READ_ROWS`] stored events of partition `p` from offset `from` (every column of the
    /// stream with `fields`, otherwise the base columns).
    async fn read(
        &self,
        name: &StreamName,
        p: u32,
        from: u64,
        key: Option<&str>,
        fields: bool,
    ) -> Result<Vec<RecordBatch>> {
        metrics::counter!("strata_subscription_reads_total", "stream" => name.to_string())
            .increment(1);
        match self {
            Reader::Local(store) => {
                let (store, name, key) = (store.clone(), name.clone(), key.map(str::to_owned));
                tokio::task::spawn_blocking(move || {
                    let mut request = ScanRequest {
                        offsets: from..u64::MAX,
                        key,
                        limit: Some(READ_ROWS),
                        ..ScanRequest::all()
                    };
                    if fields {
                        let columns = schema::stream_schema(&store.stream(&name)?);
                        request.projection = (0..columns.fields().len()).collect();
                    }
                    Ok(store
                        .scan(&name, p, request)?
                        .collect::<std::result::Result<Vec<_>, _>>()?)
                })
                .await
                .map_err(|e| strata_views::Error::Execution(format!("a read failed: {e}")))?
            }
            Reader::Cluster(cluster) => {
                let ticket = strata_cluster::ReplayTicket {
                    stream: name.to_string(),
                    partition: p,
                    from,
                    from_time: None,
                    key: key.map(str::to_owned),
                    limit: READ_ROWS,
                    fields,
                };
                Ok(cluster.replay(ticket).await?.try_collect().await?)
            }
        }
    }

    /// The first offset of partition `p` whose event is at or after `time_ms` (the partition's
    /// end when there is none).
    async fn offset_for_time(
        &self,
        parts: &Parts,
        info: &StreamInfo,
        p: u32,
        time_ms: i64,
        key: Option<&str>,
    ) -> Result<u64> {
        match self {
            Reader::Local(store) => {
                let (store, name) = (store.clone(), info.name.clone());
                tokio::task::spawn_blocking(move || store.offset_for_time(&name, p, time_ms))
                    .await
                    .map_err(|e| strata_views::Error::Execution(format!("a read failed: {e}")))?
                    .map_err(Error::from)
            }
            Reader::Cluster(cluster) => {
                let ticket = strata_cluster::ReplayTicket {
                    stream: info.name.to_string(),
                    partition: p,
                    from: 0,
                    from_time: Some(time_ms),
                    key: key.map(str::to_owned),
                    limit: 1,
                    fields: false,
                };
                let first: Vec<RecordBatch> = cluster.replay(ticket).await?.try_collect().await?;
                match first.iter().find(|b| b.num_rows() > 0) {
                    Some(b) => Ok(b
                        .column(schema::OFFSET)
                        .as_primitive::<Int64Type>()
                        .value(0) as u64),
                    None => Ok(stored_position(parts, info, [p])?
                        .offsets
                        .get(&p)
                        .copied()
                        .unwrap_or(0)),
                }
            }
        }
    }
}

/// A running subscription.
struct Follow {
    reader: Reader,
    partitions: Vec<u32>,
    key: Option<String>,
    filter: Option<EventFilter>,
    /// Read the stream's declared fields too (the filter uses them).
    fields: bool,
    cursor: Cursor,
    heartbeat: Duration,
    /// This node's shards' progress, one per followed partition (empty in a cluster).
    watchers: Vec<watch::Receiver<u64>>,
    /// In a cluster: each partition's next offset as its holder last reported it (every event
    /// below it has been read), so that waiting for new events skips those the key or filter
    /// left out.
    seen: std::collections::BTreeMap<u32, u64>,
}

impl Follow {
    async fn run(mut self, tx: mpsc::Sender<Result<Delivery>>) {
        let stream = self.cursor.stream.to_string();
        let gauge = metrics::gauge!("strata_subscriptions", "stream" => stream);
        gauge.increment(1.0);
        if let Err(e) = self.deliver(&tx).await {
            let _ = tx.send(Err(e)).await;
        }
        gauge.decrement(1.0);
    }

    /// Delivers until the client goes away (`Ok`) or a read fails.
    async fn deliver(&mut self, tx: &mpsc::Sender<Result<Delivery>>) -> Result<()> {
        let base: Vec<usize> = schema::base_columns();
        let mut last_sent = Instant::now();
        let mut silent = false;
        loop {
            for w in &mut self.watchers {
                w.borrow_and_update();
            }
            let (mut read_any, mut moving) = (false, false);
            for i in 0..self.partitions.len() {
                let p = self.partitions[i];
                let from = self.cursor.offsets.get(&p).copied().unwrap_or(0);
                // This node's shard has stored nothing past the cursor (or, in a cluster, the
                // holder said so when last asked): no read needed.
                let stored = match self.watchers.get(i) {
                    Some(w) => Some(*w.borrow()),
                    None => self.seen.get(&p).copied(),
                };
                if stored.is_some_and(|stored| stored <= from) {
                    continue;
                }
                let read = self
                    .reader
                    .read(
                        &self.cursor.stream,
                        p,
                        from,
                        self.key.as_deref(),
                        self.fields,
                    )
                    .await;
                let batches = match read {
                    Ok(batches) => batches,
                    // The partition is changing hands (a node died or joined): the subscription
                    // waits for its next holder, with heartbeats meanwhile.
                    Err(e) if e.kind() == Kind::Unavailable => {
                        tracing::debug!(error = %e, "a subscription waits for a partition");
                        moving = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                // Nothing for this subscription below what the shard had stored when the read
                // began (other keys, records that are not events): the cursor moves past it.
                if let Some(stored) = stored
                    && batches.iter().all(|b| b.num_rows() == 0)
                {
                    self.cursor.offsets.insert(p, stored);
                    continue;
                }
                for batch in batches.into_iter().filter(|b| b.num_rows() > 0) {
                    read_any = true;
                    let offsets = batch.column(schema::OFFSET).as_primitive::<Int64Type>();
                    let next = offsets.value(batch.num_rows() - 1) as u64 + 1;
                    let kept = match &self.filter {
                        Some(f) => f.apply(&batch)?,
                        None => batch,
                    };
                    let kept_last = (kept.num_rows() > 0).then(|| {
                        kept.column(schema::OFFSET)
                            .as_primitive::<Int64Type>()
                            .value(kept.num_rows() - 1) as u64
                    });
                    // Events the filters dropped after the last one delivered.
                    silent |= kept_last.is_none_or(|last| last + 1 < next);
                    if kept.num_rows() > 0 {
                        let events = Delivery::Events {
                            batch: kept.project(&base).map_err(strata_views::Error::from)?,
                            cursor: self.cursor.clone(),
                        };
                        if tx.send(Ok(events)).await.is_err() {
                            return Ok(());
                        }
                        last_sent = Instant::now();
                    }
                    self.cursor.offsets.insert(p, next);
                }
            }
            // A heartbeat when quiet for its interval, and soon (`SETTLE`) when caught up past
            // events the filters dropped, so that the client's cursor covers them.
            let settled = silent && !read_any && last_sent.elapsed() >= SETTLE;
            if last_sent.elapsed() >= self.heartbeat || settled {
                silent = false;
                if tx
                    .send(Ok(Delivery::Heartbeat(self.cursor.clone())))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                last_sent = Instant::now();
            }
            if read_any {
                continue;
            }
            let mut quiet = self.heartbeat.saturating_sub(last_sent.elapsed());
            if silent {
                quiet = quiet.min(SETTLE.saturating_sub(last_sent.elapsed()));
            }
            tokio::select! {
                _ = tx.closed() => return Ok(()),
                _ = tokio::time::sleep(quiet.min(MOVING_RETRY)), if moving => {}
                () = self.wait_for_events(quiet), if !moving => {}
            }
        }
    }

    /// Waits until a followed partition may hold events past the cursor, or `quiet` has passed:
    /// this node's shards' commits, or (a cluster) the holders' answer once one of theirs has
    /// stored past what this subscription has seen — polling every [`CLUSTER_POLL`] only while
    /// a holder cannot be asked.
    async fn wait_for_events(&mut self, quiet: Duration) {
        let Reader::Cluster(cluster) = &self.reader else {
            return changed(&mut self.watchers, quiet, CLUSTER_POLL).await;
        };
        wait_for_holders(
            cluster,
            &self.cursor,
            self.partitions.iter().copied(),
            &mut self.seen,
            quiet,
            CLUSTER_POLL,
        )
        .await;
    }
}

/// Waits at most `quiet` until one of `partitions` of `cursor`'s stream has stored an event at or
/// past where the caller is (its `cursor`, or what the holders reported before, in `reported`),
/// asking the partitions' holders (`stored_past`), and notes in `reported` what they answered.
/// While a holder cannot be asked, it sleeps `poll` at most instead.
pub(super) async fn wait_for_holders(
    cluster: &strata_cluster::Cluster,
    cursor: &Cursor,
    partitions: impl IntoIterator<Item = u32>,
    reported: &mut std::collections::BTreeMap<u32, u64>,
    quiet: Duration,
    poll: Duration,
) {
    let from: Vec<(u32, u64)> = partitions
        .into_iter()
        .map(|p| {
            let at = cursor.offsets.get(&p).copied().unwrap_or(0);
            (p, at.max(reported.get(&p).copied().unwrap_or(0)))
        })
        .collect();
    match cluster.stored_past(&cursor.stream, &from, quiet).await {
        Ok(stored) => {
            for (p, next) in stored {
                let at = reported.entry(p).or_default();
                *at = (*at).max(next);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "a follower polls: its partitions' holders cannot be asked");
            tokio::time::sleep(quiet.min(poll)).await;
        }
    }
}

/// Waits until one of `watchers` moves, or `quiet` has passed; without watchers (a cluster),
/// `poll` at most.
pub(super) async fn changed(
    watchers: &mut [watch::Receiver<u64>],
    quiet: Duration,
    poll: Duration,
) {
    if watchers.is_empty() {
        tokio::time::sleep(quiet.min(poll)).await;
        return;
    }
    let any = futures::future::select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
    // A shard that went away (the node is stopping): do not spin.
    if let Ok((Err(_), _, _)) = tokio::time::timeout(quiet, any).await {
        tokio::time::sleep(quiet.min(poll)).await;
    }
}
