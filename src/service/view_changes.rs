//! A materialized view's changes, followed: its rows first, then each row that changed after a
//! store commit touched its group, with the cursor (the stream position the rows reflect).
//!
//! Each refresh reads the view through SQL (so grants, limits and the cluster's merge of the
//! partitions' states apply as for `/v1/sql`) once its stream has moved, waiting with `after` until
//! the view has applied that position, and sends the rows whose content is new. Only a hash of
//! each row is kept between refreshes, so a follower holds 8 bytes per group of server memory.
//! A follower waits for its stream's shards to store more: this node's own shards tell it; in a
//! cluster it asks the partitions' holders directly (`stored_past`), whose published statuses
//! would tell it only every `refresh_ms`.

use super::subscribe::{
    CLUSTER_POLL, Cursor, MAX_HEARTBEAT, MOVING_RETRY, changed, wait_for_holders,
};
use super::{Error, Kind, Parts, QueryRequest, QueryService, Result, streams::stored_position};
use crate::auth::{Operation, Principal};
use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::row::{RowConverter, SortField};
use futures::TryStreamExt;
use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_proto::StreamInfo;
use tokio::sync::mpsc;

/// The most rows a followed view may have.
pub const MAX_VIEW_ROWS: usize = 1_000_000;
/// The least time between two refreshes of a followed view.
pub const MIN_REFRESH: Duration = Duration::from_millis(50);

/// How often a follower looks again while nothing tells it of new events (no local shard to
/// watch, no holder that can be asked).
const VIEW_POLL: Duration = CLUSTER_POLL.saturating_mul(5);
/// A follower waits this many times its last refresh's duration before the next, so that
/// following a big view takes at most about a tenth of a core.
pub const REFRESH_IDLE_FACTOR: u32 = 9;

/// What following a view delivers.
#[derive(Debug)]
pub enum ViewDelivery {
    /// Rows that are new or changed since the last delivery, as of `cursor`.
    Rows {
        /// The rows (the view's columns).
        batch: RecordBatch,
        /// The stream position they reflect (at least).
        cursor: Cursor,
    },
    /// Nothing changed for a while: the current position.
    Heartbeat(Cursor),
}

/// A view's changes as the client takes them; an error ends them.
pub type ViewDeliveries = mpsc::Receiver<Result<ViewDelivery>>;

/// Follows materialized views.
#[derive(Clone)]
pub struct ViewChangesService {
    parts: Arc<Parts>,
    query: QueryService,
}

impl ViewChangesService {
    pub(super) fn new(parts: Arc<Parts>, query: QueryService) -> Self {
        Self { parts, query }
    }

    /// Follows view `name`: its rows now, then the rows that change.
    ///
    /// # Errors
    /// Unknown view, forbidden (reading its stream, as SQL), the wrong role, and the first
    /// read's failure.
    pub async fn follow(
        &self,
        who: &Principal,
        name: &str,
        heartbeat: Duration,
    ) -> Result<ViewDeliveries> {
        let engine = self.parts.sql()?;
        let stream = engine
            .view_stream(name)
            .ok_or_else(|| strata_store::Error::UnknownView(name.to_owned()))?;
        who.authorize(Operation::Read(stream.as_str()))?;
        let info = self.parts.stream_info(&stream)?;
        let mut follower = ViewFollower {
            parts: self.parts.clone(),
            query: self.query.clone(),
            who: who.clone(),
            sql: format!("SELECT * FROM \"{name}\""),
            info,
            seen: HashSet::new(),
            stored: BTreeMap::new(),
            heartbeat: heartbeat.clamp(Duration::from_millis(100), MAX_HEARTBEAT),
        };
        // The first read happens here, so that what would fail it is the request's status;
        // only a partition changing hands (retried by the follower) is not a failure.
        let (cursor, first) = match follower.refresh().await {
            Ok(read) => read,
            Err(e) if e.kind() == Kind::Unavailable => (
                Cursor {
                    stream: follower.info.name.clone(),
                    offsets: Default::default(),
                },
                None,
            ),
            Err(e) => return Err(e),
        };
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            if let Err(e) = follower.run(cursor, first, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }
}

struct ViewFollower {
    parts: Arc<Parts>,
    query: QueryService,
    who: Principal,
    sql: String,
    info: StreamInfo,
    /// Hashes of the rows delivered last.
    seen: HashSet<u64>,
    /// In a cluster: each partition's next offset as its holder reported it since the last
    /// refresh, ahead of the status it publishes (taken into the next refresh's position, then
    /// forgotten, so that a partition changing hands meanwhile is not waited for past its new
    /// holder's store).
    stored: BTreeMap<u32, u64>,
    heartbeat: Duration,
}

impl ViewFollower {
    /// The stream's stored position now (every partition).
    fn position(&self) -> Result<Cursor> {
        let mut cursor = stored_position(&self.parts, &self.info, 0..self.info.partitions)?;
        for (p, offset) in &mut cursor.offsets {
            if let Some(&reported) = self.stored.get(p) {
                *offset = (*offset).max(reported);
            }
        }
        Ok(cursor)
    }

    /// Waits until a partition may have stored past `cursor`, or `quiet` has passed: this node's
    /// shards tell `watchers`; in a cluster the holders are asked, and polled every 250 ms only
    /// while they cannot be.
    async fn wait_for_changes(
        &mut self,
        watchers: &mut [tokio::sync::watch::Receiver<u64>],
        cursor: &Cursor,
        quiet: Duration,
    ) {
        let Some(cluster) = &self.parts.cluster else {
            return changed(watchers, quiet, VIEW_POLL).await;
        };
        wait_for_holders(
            cluster,
            cursor,
            0..self.info.partitions,
            &mut self.stored,
            quiet,
            VIEW_POLL,
        )
        .await;
    }

    /// Reads the view as of (at least) the stream's position now; returns the position and the
    /// rows not delivered before.
    async fn refresh(&mut self) -> Result<(Cursor, Option<RecordBatch>)> {
        let cursor = self.position()?;
        let result = self
            .query
            .query(
                &self.who,
                QueryRequest {
                    sql: self.sql.clone(),
                    after: vec![cursor.to_string()],
                    ..QueryRequest::default()
                },
            )
            .await?;
        let schema = result.schema.clone();
        let batches: Vec<RecordBatch> = result.batches.try_collect().await?;
        let batch =
            arrow::compute::concat_batches(&schema, &batches).map_err(strata_views::Error::from)?;
        if batch.num_rows() > MAX_VIEW_ROWS {
            return Err(Error::BadRequest(format!(
                "the view has {} rows, more than the {MAX_VIEW_ROWS} a follower may watch; follow its stream instead",
                batch.num_rows()
            )));
        }
        let hashes = row_hashes(&batch)?;
        let changed: BooleanArray = hashes
            .iter()
            .map(|h| Some(!self.seen.contains(h)))
            .collect();
        self.seen = hashes.into_iter().collect();
        let changed = filter_record_batch(&batch, &changed).map_err(strata_views::Error::from)?;
        Ok((cursor, (changed.num_rows() > 0).then_some(changed)))
    }

    async fn run(
        &mut self,
        mut cursor: Cursor,
        mut rows: Option<RecordBatch>,
        tx: &mpsc::Sender<Result<ViewDelivery>>,
    ) -> Result<()> {
        let mut last_sent = Instant::now();
        // The first delivery goes out at once: the rows, or a heartbeat with the position
        // (none while the first read waits for a partition's holder).
        let first = match rows.take() {
            Some(batch) => Some(ViewDelivery::Rows {
                batch,
                cursor: cursor.clone(),
            }),
            None if cursor.offsets.is_empty() => None,
            None => Some(ViewDelivery::Heartbeat(cursor.clone())),
        };
        if let Some(first) = first
            && tx.send(Ok(first)).await.is_err()
        {
            return Ok(());
        }
        let mut watchers = self.watchers();
        let mut moving = cursor.offsets.is_empty();
        let mut cost = Duration::ZERO;
        loop {
            let quiet = self.heartbeat.saturating_sub(last_sent.elapsed());
            tokio::select! {
                _ = tx.closed() => return Ok(()),
                _ = tokio::time::sleep(quiet.min(MOVING_RETRY)), if moving => {}
                () = self.wait_for_changes(&mut watchers, &cursor, quiet), if !moving => {}
            }
            // A partition changing hands is waited out, with heartbeats meanwhile.
            let read = match self.position() {
                Ok(now) if now == cursor => Ok(None),
                Ok(_) => {
                    tokio::time::sleep(MIN_REFRESH.max(cost * REFRESH_IDLE_FACTOR)).await;
                    let started = Instant::now();
                    let reported = !self.stored.is_empty();
                    let read = self.refresh().await.map(Some);
                    self.stored.clear();
                    cost = started.elapsed();
                    match read {
                        // A holder's report outran its partition moving to another node.
                        Err(e) if reported && e.kind() == Kind::Timeout => {
                            Err(strata_views::Error::Unavailable(e.to_string()).into())
                        }
                        read => read,
                    }
                }
                Err(e) => Err(e),
            };
            let delivery = match read {
                Ok(None) => None,
                Ok(Some((at, changed))) => {
                    moving = false;
                    cursor = at;
                    changed.map(|batch| ViewDelivery::Rows {
                        batch,
                        cursor: cursor.clone(),
                    })
                }
                Err(e) if e.kind() == Kind::Unavailable => {
                    moving = true;
                    None
                }
                Err(e) => return Err(e),
            };
            let delivery = match delivery {
                Some(d) => Some(d),
                None if last_sent.elapsed() >= self.heartbeat && !cursor.offsets.is_empty() => {
                    Some(ViewDelivery::Heartbeat(cursor.clone()))
                }
                None => None,
            };
            if let Some(d) = delivery {
                if tx.send(Ok(d)).await.is_err() {
                    return Ok(());
                }
                last_sent = Instant::now();
            }
        }
    }

    /// This node's shards' progress for the stream (none in a cluster: it polls).
    fn watchers(&self) -> Vec<tokio::sync::watch::Receiver<u64>> {
        match (&self.parts.cluster, &self.parts.store) {
            (None, Some(store)) => (0..self.info.partitions)
                .filter_map(|p| store.subscribe(&self.info.name, p).ok())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A hash of each row's content.
fn row_hashes(batch: &RecordBatch) -> Result<Vec<u64>> {
    let fields = batch
        .schema()
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).map_err(strata_views::Error::from)?;
    let rows = converter
        .convert_columns(batch.columns())
        .map_err(strata_views::Error::from)?;
    let state = ahash::RandomState::with_seeds(1, 2, 3, 4);
    Ok(rows
        .iter()
        .map(|row| {
            let mut h = state.build_hasher();
            h.write(row.as_ref());
            h.finish()
        })
        .collect())
}
