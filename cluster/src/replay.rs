//! Replay of a partition from the node holding it: an Arrow Flight `DoGet` on the node-to-node
//! port (behind the cluster secret, see [`crate::flight`]), whose ticket says what to read. The
//! holder reads its shard exactly as a local replay does; the asking node writes the batches out
//! as NDJSON.

use crate::source::ClusterSource;
use arrow::array::RecordBatch;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use strata_views::Error;

/// What a replay of one partition reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplayTicket {
    /// The stream.
    pub stream: String,
    /// The partition.
    pub partition: u32,
    /// The first offset.
    pub from: u64,
    /// Start at the first event at or after this time (epoch ms) instead, if later.
    pub from_time: Option<i64>,
    /// Only events with this key.
    pub key: Option<String>,
    /// At most this many events.
    pub limit: usize,
    /// Every column of the stream (its declared fields after the base columns), for a filter
    /// over them; otherwise the base columns only.
    #[serde(default)]
    pub fields: bool,
}

/// Batches of a replay, as they arrive.
pub type ReplayBatches = BoxStream<'static, Result<RecordBatch, Error>>;

/// The batches of a replay read here, as a stream.
pub(crate) async fn local(
    source: Arc<ClusterSource>,
    ticket: ReplayTicket,
) -> Result<ReplayBatches, Error> {
    let scan = tokio::task::spawn_blocking(move || source.replay(&ticket))
        .await
        .map_err(|e| Error::Execution(e.to_string()))??;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        for batch in scan {
            let failed = batch.is_err();
            if tx.blocking_send(batch).is_err() || failed {
                break;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}
