//! Streams: list them, describe one, create one or declare more of its fields.

use super::{Parts, Result, stream_name};
use crate::auth::{Operation, Principal};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use strata_proto::{FieldSpec, StreamInfo};

/// One partition's offsets as a listing shows them.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionOffsets {
    /// The partition.
    pub partition: u32,
    /// The log's end: the offset the next appended event gets (`null` if the log cannot say).
    pub next_offset: Option<u64>,
    /// The store's progress: events below it are visible to SQL and replay (`null` without a
    /// store).
    pub stored_offset: Option<u64>,
    /// Why this node stopped consuming the partition (the log no longer holds its next offset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled: Option<String>,
}

/// A stream as listings show it.
#[derive(Clone, Debug, Serialize)]
pub struct StreamView {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: u32,
    /// Its declared fields (`{"name", "type"}`).
    pub fields: Vec<serde_json::Value>,
    /// Offsets per partition.
    pub offsets: Vec<PartitionOffsets>,
}

/// What creating a stream asks for.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStream {
    /// Its partition count (default: the existing count, or the node's default).
    pub partitions: Option<u32>,
    /// Fields to declare.
    #[serde(default)]
    pub fields: Vec<FieldSpec>,
}

/// A stream after [`StreamService::create`].
#[derive(Clone, Debug, Serialize)]
pub struct CreatedStream {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: u32,
    /// Its declared fields.
    pub fields: Vec<serde_json::Value>,
    /// Whether it was created (`false`: it existed).
    pub created: bool,
}

/// Lists, describes and creates streams.
#[derive(Clone)]
pub struct StreamService {
    parts: Arc<Parts>,
}

fn field_list(info: &StreamInfo) -> Vec<serde_json::Value> {
    info.fields
        .iter()
        .map(|f| serde_json::json!({ "name": f.name, "type": f.field_type }))
        .collect()
}

impl StreamService {
    pub(super) fn new(parts: Arc<Parts>) -> Self {
        Self { parts }
    }

    /// Every stream `who` may use, with its offsets.
    ///
    /// # Errors
    /// Forbidden without the `read` scope; store failures.
    pub async fn list(&self, who: &Principal) -> Result<Vec<StreamView>> {
        who.authorize(Operation::Browse)?;
        let catalog = self.parts.log.catalog().borrow().clone();
        let mut out = Vec::with_capacity(catalog.len());
        for info in catalog.values().filter(|i| who.may_use(i.name.as_str())) {
            out.push(self.view(info).await?);
        }
        Ok(out)
    }

    /// One stream.
    ///
    /// # Errors
    /// A bad name, no grant, an unknown stream.
    pub async fn get(&self, who: &Principal, name: &str) -> Result<StreamView> {
        who.authorize(Operation::Read(name))?;
        let name = stream_name(name)?;
        let info = self.parts.stream_info(&name)?;
        self.view(&info).await
    }

    /// Creates stream `name`, or declares more fields on it if it exists.
    ///
    /// # Errors
    /// A bad name or field, no `admin` grant, another partition count or a field's type changed.
    pub async fn create(
        &self,
        who: &Principal,
        name: &str,
        request: CreateStream,
    ) -> Result<CreatedStream> {
        who.authorize(Operation::Admin(name))?;
        let name = stream_name(name)?;
        let log = &self.parts.log;
        let existing = log
            .catalog()
            .borrow()
            .get(&name)
            .map(|info| info.partitions);
        let partitions = request
            .partitions
            .or(existing)
            .unwrap_or(self.parts.default_partitions);
        let (mut info, created) = log
            .create_stream(&name, partitions, &request.fields)
            .await?;
        if !created && !request.fields.is_empty() {
            info = log.add_fields(&name, &request.fields).await?;
        }
        Ok(CreatedStream {
            name: info.name.to_string(),
            partitions: info.partitions,
            fields: field_list(&info),
            created,
        })
    }

    /// The stream with, per partition, the log's end, how far the store has applied it (in a
    /// cluster: as the partition's holder reports it) and whether it is stalled.
    async fn view(&self, info: &StreamInfo) -> Result<StreamView> {
        let parts = &self.parts;
        let stored = stored_offsets(parts, info)?;
        // The log's end as shown, `null` when the log cannot say (brokers unreachable).
        let ends = futures::future::join_all(
            (0..info.partitions).map(|p| parts.log.end_offset(&info.name, p)),
        )
        .await;
        let stalls: Vec<strata_proto::Stall> = parts
            .node
            .feed
            .as_ref()
            .map(|f| f.stalled())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.stream == info.name)
            .collect();
        let offsets = (0..)
            .zip(stored)
            .zip(ends)
            .map(|((partition, stored_offset), end)| PartitionOffsets {
                partition,
                next_offset: end
                    .inspect_err(|e| tracing::debug!(error = %e, "no end offset"))
                    .ok(),
                stored_offset,
                stalled: stalls
                    .iter()
                    .find(|s| s.partition == partition)
                    .map(|s| s.reason.clone()),
            })
            .collect();
        Ok(StreamView {
            name: info.name.to_string(),
            partitions: info.partitions,
            fields: field_list(info),
            offsets,
        })
    }
}

/// Each partition's stored offset (the next offset its shard will store): this node's own shards,
/// or in a cluster as each holder reports it (`None` when no live node holds the partition).
pub(super) fn stored_offsets(parts: &Parts, info: &StreamInfo) -> Result<Vec<Option<u64>>> {
    let stored: Vec<Option<u64>> = match &parts.store {
        Some(store) => store
            .status(&info.name)?
            .into_iter()
            .map(|s| Some(s.stored_offset))
            .collect(),
        None => vec![None; info.partitions as usize],
    };
    Ok(match parts.node.cluster {
        Some(_) => from_holders(parts, info, stored),
        None => stored,
    })
}

/// The stored offsets of `partitions` of the stream (as [`stored_offsets`] knows them), as a
/// position.
///
/// # Errors
/// Unavailable while no live node holds one of them; the store's failures.
pub(super) fn stored_position(
    parts: &Parts,
    info: &StreamInfo,
    partitions: impl IntoIterator<Item = u32>,
) -> Result<strata_proto::ConsistencyToken> {
    let stored = stored_offsets(parts, info)?;
    let offsets = partitions
        .into_iter()
        .map(|p| {
            let o = stored.get(p as usize).copied().flatten().ok_or_else(|| {
                strata_views::Error::Unavailable(format!(
                    "no live node holds partition {p} of {} now; retry shortly",
                    info.name
                ))
            })?;
            Ok((p, o))
        })
        .collect::<Result<_>>()?;
    Ok(strata_proto::ConsistencyToken {
        stream: info.name.clone(),
        offsets,
    })
}

/// In a cluster, each partition's stored offset as its holder reports it: this node's own shard
/// for the partitions it holds, otherwise the status the holder last published (`null` when no
/// live node holds it).
fn from_holders(parts: &Parts, info: &StreamInfo, local: Vec<Option<u64>>) -> Vec<Option<u64>> {
    let held_here = |p: u32| {
        parts.node.feed.as_ref().is_some_and(|f| {
            f.held()
                .is_none_or(|h| h.iter().any(|(s, q, _)| *s == info.name && *q == p))
        })
    };
    let mut reported: std::collections::HashMap<u32, (i64, u64)> = Default::default();
    if let Some(membership) = &parts.node.membership {
        let oldest =
            chrono::Utc::now().timestamp_millis() - membership.stale_after().as_millis() as i64;
        for status in membership.peers().into_values() {
            if status.node == parts.node.id || status.updated_ms < oldest {
                continue;
            }
            for h in status
                .partitions
                .iter()
                .filter(|h| h.stream == info.name.as_str())
            {
                let slot = reported.entry(h.partition).or_insert((i64::MIN, 0));
                if slot.0 < status.updated_ms {
                    *slot = (status.updated_ms, h.stored_offset);
                }
            }
        }
    }
    (0..info.partitions)
        .zip(local)
        .map(|(p, own)| match held_here(p) {
            true => own,
            false => reported.get(&p).map(|&(_, stored)| stored),
        })
        .collect()
}
