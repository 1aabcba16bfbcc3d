//! SQL: read-your-writes (`after` tokens), the query's time limit, grants checked on the plan.

use super::{Error, Parts, Result};
use crate::auth::{Operation, Principal};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::ParamValues;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_proto::ConsistencyToken;
use strata_views::{Described, Flavor, ReadAfter, ShardSource, TableInfo};

/// The most tokens one query may wait for.
const MAX_TOKENS: usize = 1000;
/// How long a query waits for its tokens by default.
const DEFAULT_AFTER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a query may ask to wait for its tokens.
const MAX_AFTER_TIMEOUT: Duration = Duration::from_secs(300);

/// A query and what it waits for.
#[derive(Clone, Debug, Default)]
pub struct QueryRequest {
    /// The SQL text.
    pub sql: String,
    /// Consistency tokens from appends: the query runs once the store has applied them.
    pub after: Vec<String>,
    /// How long to wait for `after`, in milliseconds (default 10 s, at most 5 min).
    pub timeout_ms: Option<u64>,
    /// Values of the statement's placeholders (`$1`, …).
    pub params: Option<ParamValues>,
    /// Which session plans it (PostgreSQL clients get `pg_catalog` and its functions).
    pub flavor: Flavor,
    /// A time limit of the caller's session (PostgreSQL's `statement_timeout`), in milliseconds;
    /// the node's `limits.query_timeout_ms` applies when it is lower.
    pub time_limit_ms: Option<u64>,
}

/// A running query: its columns and its rows as they are computed. The first batch has been
/// computed already, so a query that fails early fails in [`QueryService::query`]; the stream
/// ends with an error if the query fails or runs out of time later.
pub struct QueryResult {
    /// Columns of the result.
    pub schema: SchemaRef,
    /// The rows.
    pub batches: BoxStream<'static, Result<RecordBatch>>,
}

/// Records a query's duration when its result has been consumed (or dropped), and hands the
/// memory a failed query freed back to the OS (see [`crate::allocator::release_freed`]).
struct QueryTimer {
    started: Instant,
    failed: bool,
}

impl Drop for QueryTimer {
    fn drop(&mut self) {
        metrics::histogram!("strata_query_seconds").record(self.started.elapsed().as_secs_f64());
        if self.failed {
            crate::allocator::release_freed();
        }
    }
}

/// Answers SQL.
#[derive(Clone)]
pub struct QueryService {
    parts: Arc<Parts>,
}

impl QueryService {
    pub(super) fn new(parts: Arc<Parts>) -> Self {
        Self { parts }
    }

    /// The largest request body a front end should read for a query.
    pub fn max_body_bytes(&self) -> usize {
        self.parts.limits.max_body_bytes
    }

    /// Plans and starts `request.sql` for `who` (read-only SQL and view DDL; every table the plan
    /// reads must be granted), once the tokens of `request.after` are applied. The time limit
    /// (`limits.query_timeout_ms`) covers planning, the first batch and the rest of the rows.
    ///
    /// # Errors
    /// Forbidden, bad SQL or tokens, a timeout waiting for the tokens, a query over its time or
    /// memory limit, the wrong role.
    pub async fn query(&self, who: &Principal, request: QueryRequest) -> Result<QueryResult> {
        who.authorize(Operation::Browse)?;
        let mut timer = QueryTimer {
            started: Instant::now(),
            failed: false,
        };
        let engine = self.parts.sql()?;
        let access = who.access();
        let clustered = self.parts.node.cluster.is_some();
        let mut after = None;
        if !request.after.is_empty() {
            let tokens = parse_tokens(&request.after)?;
            let timeout = request
                .timeout_ms
                .map_or(DEFAULT_AFTER_TIMEOUT, Duration::from_millis)
                .min(MAX_AFTER_TIMEOUT);
            if clustered {
                // Each holder waits for its own partitions as the scans start there.
                after = Some(read_after(&tokens, timeout));
            } else {
                wait_applied(self.parts.store()?.as_ref(), &tokens, timeout).await?;
            }
        }
        let node_limit = self.parts.limits.query_timeout_ms;
        let (limit_ms, setting) = match request.time_limit_ms {
            Some(ms) if ms > 0 && ms < node_limit => (ms, "statement_timeout"),
            _ => (node_limit, "limits.query_timeout_ms"),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(limit_ms);
        let too_long = move || {
            metrics::counter!("strata_queries_refused_total", "reason" => "time").increment(1);
            Error::TimeLimit(format!(
                "the query ran longer than its limit of {limit_ms} ms ({setting})"
            ))
        };
        // A cluster query whose partitions moved is planned again once, on a fresh map.
        let attempts = if clustered { 2 } else { 1 };
        let mut attempt = 0;
        let (schema, batches, first) = loop {
            attempt += 1;
            let started = async {
                let output = engine
                    .run(strata_views::Query {
                        sql: &request.sql,
                        access: &access,
                        after: after.clone(),
                        params: request.params.clone(),
                        flavor: request.flavor,
                    })
                    .await?;
                let mut batches = output.batches;
                // Run the query up to its first batch before answering, so that a failing query
                // gets an error status rather than a broken answer.
                let first = batches
                    .next()
                    .await
                    .transpose()
                    .map_err(strata_views::Error::from)?;
                Ok::<_, strata_views::Error>((output.schema, batches, first))
            };
            let started = tokio::time::timeout_at(deadline, started).await;
            timer.failed = !matches!(started, Ok(Ok(_)));
            match started {
                Err(_) => return Err(too_long()),
                Ok(Ok(started)) => break started,
                Ok(Err(e)) => {
                    let e = if clustered {
                        strata_cluster::unreachable_peer(e)
                    } else {
                        e
                    };
                    if matches!(e, strata_views::Error::Unavailable(_)) && attempt < attempts {
                        metrics::counter!("strata_cluster_query_retries_total").increment(1);
                        tracing::info!(error = %e, "retrying a cluster query on a fresh map");
                        continue;
                    }
                    return Err(e.into());
                }
            }
        };
        let rest = futures::stream::unfold(
            (batches, false, timer),
            move |(mut batches, failed, mut timer)| async move {
                if failed {
                    return None;
                }
                let next = match tokio::time::timeout_at(deadline, batches.next()).await {
                    Ok(Some(batch)) => batch.map_err(|e| {
                        let e = strata_views::Error::from(e);
                        Error::Sql(if clustered {
                            strata_cluster::unreachable_peer(e)
                        } else {
                            e
                        })
                    }),
                    Ok(None) => return None,
                    Err(_) => Err(too_long()),
                };
                let failed = next.is_err();
                timer.failed |= failed;
                Some((next, (batches, failed, timer)))
            },
        );
        Ok(QueryResult {
            schema,
            batches: futures::stream::iter(first.map(Ok)).chain(rest).boxed(),
        })
    }
}

impl QueryService {
    /// The streams and views `who` may read, with their columns (for catalog browsers).
    ///
    /// # Errors
    /// Forbidden without `read`; the wrong role.
    pub async fn tables(&self, who: &Principal) -> Result<Vec<TableInfo>> {
        who.authorize(Operation::Browse)?;
        Ok(self.parts.sql()?.tables(&who.access()).await?)
    }

    /// The columns `sql` returns and the types of its placeholders, checked as
    /// [`QueryService::query`] checks it, without running it (a client's `Describe`).
    ///
    /// # Errors
    /// As [`QueryService::query`] before the query starts.
    pub async fn describe(&self, who: &Principal, sql: &str, flavor: Flavor) -> Result<Described> {
        who.authorize(Operation::Browse)?;
        let engine = self.parts.sql()?;
        let limit = Duration::from_millis(self.parts.limits.query_timeout_ms);
        match tokio::time::timeout(limit, engine.describe(sql, &who.access(), flavor)).await {
            Ok(described) => Ok(described?),
            Err(_) => Err(Error::TimeLimit(format!(
                "planning took longer than the limit of {} ms (limits.query_timeout_ms)",
                limit.as_millis()
            ))),
        }
    }
}

/// The offsets of `tokens` as the scans of a cluster query wait for them.
fn read_after(tokens: &[ConsistencyToken], wait: Duration) -> ReadAfter {
    let mut offsets = HashMap::new();
    for token in tokens {
        for (&partition, &offset) in &token.offsets {
            let slot = offsets
                .entry((token.stream.to_string(), partition))
                .or_insert(0);
            *slot = offset.max(*slot);
        }
    }
    ReadAfter { offsets, wait }
}

fn parse_tokens(list: &[String]) -> Result<Vec<ConsistencyToken>> {
    if list.len() > MAX_TOKENS {
        return Err(Error::BadRequest(format!(
            "`after` holds more than {MAX_TOKENS} tokens"
        )));
    }
    list.iter()
        .map(|t| t.parse::<ConsistencyToken>().map_err(Error::from))
        .collect()
}

/// Waits until the shards of `source` (and the views of the tokens' streams) have applied every
/// offset of `tokens`, for at most `timeout`.
///
/// # Errors
/// [`Error::Timeout`] naming the partition (or view) that is behind; an unknown stream.
pub async fn wait_applied(
    source: &dyn ShardSource,
    tokens: &[ConsistencyToken],
    timeout: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for token in tokens {
        for (&partition, &offset) in &token.offsets {
            let mut progress = source.progress(&token.stream, partition)?;
            let reached = tokio::time::timeout_at(deadline, progress.wait_for(|n| *n >= offset));
            if !matches!(reached.await, Ok(Ok(_))) {
                let applied = *progress.borrow();
                return Err(Error::Timeout(format!(
                    "waited {} ms for `after`: partition {partition} of {} is applied up to offset {applied}, not yet {offset} (is this node holding that partition? see /v1/cluster)",
                    timeout.as_millis(),
                    token.stream
                )));
            }
            // Views caught up with the shard move in its commits; one catching up gets there
            // by itself.
            let mut poll = Duration::from_millis(1);
            while let Some((view, applied)) = source.views_behind(&token.stream, partition, offset)
            {
                if tokio::time::Instant::now() + poll > deadline {
                    return Err(Error::Timeout(format!(
                        "waited {} ms for `after`: view {view} has applied partition {partition} of {} up to offset {applied}, not yet {offset} (see SHOW VIEWS)",
                        timeout.as_millis(),
                        token.stream
                    )));
                }
                tokio::time::sleep(poll).await;
                poll = (poll * 2).min(Duration::from_millis(50));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::{Record, ShardSink, StreamInfo, StreamName};
    use strata_store::{Store, StoreConfig};

    fn record(offset: u64) -> Record {
        Record {
            partition: 1,
            offset,
            event: strata_proto::Event {
                time_ms: 1,
                key: None,
                id: Some(format!("e-{offset}")),
                event_type: None,
                data: "{}".into(),
                condition: None,
            },
        }
    }

    #[tokio::test]
    async fn after_waits_for_the_store_and_times_out_naming_the_partition() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let name = StreamName::new("orders").unwrap();
        let info = StreamInfo {
            name: name.clone(),
            partitions: 2,
            fields: Vec::new(),
        };
        store.set_catalog(Arc::new([(name.clone(), info)].into_iter().collect()));
        let token: ConsistencyToken = "v1.orders.1-3".parse().unwrap();
        // Nothing applied yet: a short wait times out, naming partition 1 and its progress.
        let err = wait_applied(
            store.as_ref(),
            std::slice::from_ref(&token),
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, Error::Timeout(m) if m.contains("partition 1 of orders is applied up to offset 0, not yet 3")),
            "{err}"
        );
        // A commit that arrives while waiting releases the wait.
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let sink: &dyn ShardSink = store.as_ref();
                sink.commit(
                    &StreamName::new("orders").unwrap(),
                    1,
                    (0..3).map(record).collect(),
                )
                .unwrap();
            })
        };
        wait_applied(store.as_ref(), &[token], Duration::from_secs(10))
            .await
            .unwrap();
        writer.await.unwrap();
        // Too many tokens are refused before any wait.
        let many = vec!["v1.orders.0-1".to_owned(); MAX_TOKENS + 1];
        assert!(matches!(parse_tokens(&many), Err(Error::BadRequest(_))));
    }
}
