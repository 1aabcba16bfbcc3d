//! Expected-version appends: the write path puts a conditional batch in the log, the store node
//! holding its partition decides it (see `strata_proto::condition`), and the append answers with
//! that decision — `200` with each key's new version, or `409` naming each key's expected and
//! actual version.

use super::{Error, Parts, Result};
use std::time::Duration;
use strata_ingest::AppendOutcome;
use strata_proto::{BatchDecision, StreamName};

/// How long an append waits for the store's decision before answering `408` (the batch is
/// durable and will be decided; a retry with the same ids learns how).
const DECISION_WAIT: Duration = Duration::from_secs(30);

/// How often a cluster node asks again for a decision while the partition has no holder.
const MOVING_RETRY: Duration = Duration::from_millis(250);

/// Waits for the decision on the conditional batch `outcome` appended to `stream` and turns it
/// into the answer. `ids` are the batch's event ids, forgotten by the write path on a rejection
/// so that a retry is not taken for a duplicate.
///
/// # Errors
/// [`Error::VersionConflict`] when the batch was rejected; a timeout or an unreachable holder.
pub(super) async fn decided(
    parts: &Parts,
    stream: &StreamName,
    mut outcome: AppendOutcome,
    ids: Vec<String>,
) -> Result<AppendOutcome> {
    // Every event was a duplicate of a stored one (a retry of an accepted batch): nothing to
    // decide.
    let Some(part) = outcome.partitions.first().cloned() else {
        return Ok(outcome);
    };
    let through = part.last_offset + 1;
    let decision = match (&parts.cluster, &parts.store) {
        (Some(cluster), _) => {
            // A partition changing hands has no holder for a moment: ask again until one
            // answers (the batch is durable; whoever holds the partition next decides it alike).
            let deadline = tokio::time::Instant::now() + DECISION_WAIT;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let asked = cluster
                    .decision(stream, part.partition, part.first_offset, through, left)
                    .await;
                match asked {
                    Err(strata_views::Error::Unavailable(_)) if !left.is_zero() => {
                        tokio::time::sleep(MOVING_RETRY.min(left)).await;
                    }
                    Err(strata_views::Error::Unavailable(_)) => {
                        return Err(undecided(stream, part.partition, part.first_offset));
                    }
                    answer => break answer?,
                }
            }
        }
        (None, Some(store)) => {
            strata_views::wait_stored(
                store.as_ref(),
                stream,
                part.partition,
                through,
                DECISION_WAIT,
            )
            .await
            .map_err(|e| match e {
                strata_views::Error::Timeout(_) => {
                    undecided(stream, part.partition, part.first_offset)
                }
                e => e.into(),
            })?;
            store.decision(stream, part.partition, part.first_offset)?
        }
        (None, None) => return Err(cannot_decide()),
    };
    let decision = decision.ok_or_else(|| undecided(stream, part.partition, part.first_offset))?;
    if decision.accepted {
        outcome.versions = decision
            .keys
            .into_iter()
            .map(|k| (k.key, k.version))
            .collect();
        metrics::counter!("strata_conditional_appends_total", "stream" => stream.to_string(), "decision" => "accepted").increment(1);
        return Ok(outcome);
    }
    metrics::counter!("strata_conditional_appends_total", "stream" => stream.to_string(), "decision" => "rejected").increment(1);
    if let Ok(ingest) = parts.ingest() {
        ingest.forget_ids(stream, part.partition, &ids).await;
    }
    Err(conflict(decision))
}

/// Refuses, before anything is appended, a conditional append this node could not learn the
/// outcome of (a node with neither shards nor a cluster to ask).
///
/// # Errors
/// [`Error::WrongRole`].
pub(super) fn check_can_decide(parts: &Parts) -> Result<()> {
    if parts.cluster.is_none() && parts.store.is_none() {
        return Err(cannot_decide());
    }
    Ok(())
}

fn cannot_decide() -> Error {
    Error::WrongRole(
        "this node neither keeps shards nor takes part in a cluster, so it cannot learn whether \
         expected versions held; send appends with expected versions to a node with a store or \
         a cluster port"
            .into(),
    )
}

fn undecided(stream: &StreamName, partition: u32, first: u64) -> Error {
    Error::Timeout(format!(
        "the append is durable at offset {first} of partition {partition} of {stream}, but its \
         expected versions were not decided within {} s; retry it with the same event ids to \
         learn the outcome",
        DECISION_WAIT.as_secs()
    ))
}

fn conflict(decision: BatchDecision) -> Error {
    let reason = decision.reason.unwrap_or_default();
    Error::VersionConflict {
        message: format!("expected versions did not hold, nothing was appended: {reason}"),
        keys: decision.keys,
    }
}
