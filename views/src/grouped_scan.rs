//! `GROUP BY` a text column, grouped where each shard is read, by the blocks' dictionaries.
//!
//! Blocks keep a text column with few distinct values (a declared field such as `country`, the
//! key, the type) dictionary-encoded. DataFusion's partial aggregation would get it expanded to
//! string views and hash every row's text to find its group: 36 % of a `GROUP BY country` over
//! 10M events went to its string-view hash table and another 10 % to hashing (BENCHMARKS.md 2b).
//! Here a block's column stays as stored, and each value of its dictionary that rows use is
//! looked up once in DataFusion's own table of group values; each row's group is its key's. The
//! rest is DataFusion's too: each aggregate's `GroupsAccumulator` is given the group of every
//! row, and the output is the partial aggregation's (its schema, its state columns), so the final
//! aggregation above is unchanged. Text that is not a dictionary (the tail, a block column with
//! many distinct values) goes into the same table row by row, as DataFusion's operator would.
//!
//! The rule replaces a partial `AggregateExec` over a [`StreamScanExec`] (directly, or through a
//! `FilterExec` whose predicate does not read the group column, applied here) grouping by one
//! text column of the scan, with plain aggregates (no `DISTINCT`, `ORDER BY` or `FILTER`) that
//! support grouped accumulation and do not read the group column. Only on a node that plans
//! for itself: a plan spread over nodes is left as DataFusion makes it.

use crate::table::StreamScanExec;
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Int32Type, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, evaluate_many};
use datafusion::physical_plan::filter::{FilterExec, batch_filter};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use std::sync::Arc;

/// Replaces a partial aggregation by one text column over a stream scan with a
/// [`ScanAggregateExec`].
#[derive(Debug, Default)]
pub(crate) struct GroupByDictionary;

impl PhysicalOptimizerRule for GroupByDictionary {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            Ok(match ScanAggregateExec::replacing(&node) {
                Some(exec) => Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "strata_group_by_dictionary"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A partial aggregation by one text column, run where each shard of a stream scan is read.
#[derive(Debug)]
pub(crate) struct ScanAggregateExec {
    /// The scan whose shards are read (a [`StreamScanExec`]).
    scan: Arc<dyn ExecutionPlan>,
    /// The group column's index in the aggregated rows (the scan's, or the filter's output).
    group: usize,
    /// The group column's index in the stream's table.
    table_column: usize,
    /// A filter between the scan and the aggregation: its predicate over the scan's rows, and the
    /// columns it keeps.
    filter: Option<Filter>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// The partial aggregation's output: the group column, then each aggregate's state.
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl ScanAggregateExec {
    /// The replacement of `node`, when it is a partial aggregation this operator can run.
    fn replacing(node: &Arc<dyn ExecutionPlan>) -> Option<Self> {
        let aggregate = node.downcast_ref::<AggregateExec>()?;
        let by = aggregate.group_expr();
        if *aggregate.mode() != AggregateMode::Partial
            || aggregate.limit_options().is_some()
            || by.has_grouping_set()
            || !by.null_expr().is_empty()
            || by.expr().len() != 1
            || aggregate.filter_expr().iter().any(Option::is_some)
        {
            return None;
        }
        let group = by.expr().first()?.0.downcast_ref::<Column>()?.index();
        let input = aggregate.input();
        if !matches!(
            input.schema().fields().get(group)?.data_type(),
            DataType::Utf8 | DataType::Utf8View
        ) {
            return None;
        }
        // The scan, under the filter DataFusion applies when the predicate is not the scan's.
        let (scan, filter, scan_group) = match input.downcast_ref::<FilterExec>() {
            Some(exec) => {
                let projection = exec.projection().as_ref().map(|p| p.to_vec());
                let scan_group = match &projection {
                    Some(p) => *p.get(group)?,
                    None => group,
                };
                let reads_group = collect_columns(exec.predicate())
                    .iter()
                    .any(|c| c.index() == scan_group);
                if exec.fetch().is_some() || reads_group {
                    return None;
                }
                let filter = Filter {
                    predicate: exec.predicate().clone(),
                    projection,
                };
                (exec.input().clone(), Some(filter), scan_group)
            }
            None => (input.clone(), None, group),
        };
        let table_column = *scan
            .downcast_ref::<StreamScanExec>()?
            .spec()
            .projection
            .get(scan_group)?;
        let plain = aggregate.aggr_expr().iter().all(|a| {
            !a.is_distinct()
                && a.order_bys().is_empty()
                && a.groups_accumulator_supported()
                && a.expressions()
                    .iter()
                    .all(|e| collect_columns(e).iter().all(|c| c.index() != group))
        });
        plain.then(|| Self {
            scan,
            group,
            table_column,
            filter,
            aggregates: aggregate.aggr_expr().to_vec(),
            schema: aggregate.schema(),
            properties: aggregate.properties().clone(),
        })
    }
}

/// A filter of the scan's rows before they are aggregated.
#[derive(Clone, Debug)]
struct Filter {
    predicate: Arc<dyn PhysicalExpr>,
    projection: Option<Vec<usize>>,
}

impl Filter {
    /// The rows of `batch` the predicate keeps, with the columns the filter keeps.
    fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let kept = batch_filter(batch, &self.predicate)?;
        Ok(match &self.projection {
            Some(columns) => kept.project(columns)?,
            None => kept,
        })
    }
}

impl DisplayAs for ScanAggregateExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let names: Vec<&str> = self.aggregates.iter().map(|a| a.name()).collect();
        write!(
            f,
            "ScanAggregateExec: mode=Partial, gby=[{}] by the blocks' dictionaries, aggr=[{}], ",
            self.schema.field(0).name(),
            names.join(", ")
        )?;
        if let Some(filter) = &self.filter {
            write!(f, "filter={}, ", filter.predicate)?;
        }
        write!(f, "over ")?;
        self.scan.fmt_as(t, f)
    }
}

impl ExecutionPlan for ScanAggregateExec {
    fn name(&self) -> &str {
        "ScanAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    leaf_plan!();

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let scan = self.scan.downcast_ref::<StreamScanExec>().ok_or_else(|| {
            DataFusionError::Internal("ScanAggregateExec reads a StreamScanExec".into())
        })?;
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema.clone(), 2);
        let Some(mut read) = scan.shard_read(partition) else {
            return Ok(builder.build());
        };
        read.request.as_stored = vec![self.table_column];
        let group = Arc::new(Schema::new(vec![self.schema.field(0).clone()]));
        let mut groups = Groups::new(self.group, group, &self.aggregates)?;
        let filter = self.filter.clone();
        let reservation = MemoryConsumer::new(format!("ScanAggregateExec[{partition}]"))
            .register(context.memory_pool());
        let (schema, batch_size) = (self.schema.clone(), context.session_config().batch_size());
        let tx = builder.tx();
        builder.spawn(async move {
            read.wait().await?;
            let run = tokio::task::spawn_blocking(move || {
                for batch in read.batches()? {
                    if tx.is_closed() {
                        // The query was cancelled: stop reading.
                        return Ok(());
                    }
                    let batch = batch?;
                    match &filter {
                        Some(filter) => groups.update(&filter.apply(&batch)?)?,
                        None => groups.update(&batch)?,
                    }
                    if reservation.try_resize(groups.size()).is_err() {
                        // As DataFusion's partial aggregation does when memory runs short: hand
                        // the groups so far on (the final aggregation merges them) and go on.
                        for batch in groups.emit(&schema, batch_size)? {
                            if tx.blocking_send(Ok(batch)).is_err() {
                                return Ok(());
                            }
                        }
                        reservation.try_resize(groups.size())?;
                    }
                }
                for batch in groups.emit(&schema, batch_size)? {
                    if tx.blocking_send(Ok(batch)).is_err() {
                        break;
                    }
                }
                Ok(())
            });
            run.await
                .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?
        });
        Ok(builder.build())
    }
}

/// The groups of one shard, in DataFusion's table of group values, and each aggregate's
/// accumulator over them.
struct Groups {
    /// The group column's index in the batches.
    column: usize,
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    table: Box<dyn GroupValues>,
    /// The group column's type (`Utf8` or `Utf8View`), which the table takes.
    text: DataType,
    /// Each row's group, for the batch at hand.
    rows: Vec<usize>,
    /// Scratch of a dictionary's batch: the groups of its values.
    values: Vec<usize>,
}

impl Groups {
    fn new(
        column: usize,
        group: SchemaRef,
        aggregates: &[Arc<AggregateFunctionExpr>],
    ) -> Result<Self> {
        Ok(Self {
            column,
            arguments: aggregates.iter().map(|a| a.expressions()).collect(),
            accumulators: aggregates
                .iter()
                .map(|a| a.create_groups_accumulator())
                .collect::<Result<_>>()?,
            text: group.field(0).data_type().clone(),
            table: new_group_values(group, &GroupOrdering::None)?,
            rows: Vec::new(),
            values: Vec::new(),
        })
    }

    /// Finds each row's group in `column`: a dictionary's values are looked up once each, and
    /// each row takes its key's group.
    fn sort_rows(&mut self, column: &ArrayRef) -> Result<()> {
        let Some(dictionary) = column.as_dictionary_opt::<Int32Type>() else {
            let column = match column.data_type() == &self.text {
                true => column.clone(),
                false => arrow::compute::cast(column, &self.text)?,
            };
            return self.table.intern(&[column], &mut self.rows);
        };
        let keys = dictionary.keys();
        let values = dictionary.values();
        let nulls = keys.null_count() > 0;
        let out_of_range = || {
            DataFusionError::Internal(format!(
                "a dictionary key outside its {} values",
                values.len()
            ))
        };
        // Which values rows use (a block read in part keeps its whole dictionary, and a value
        // no row has must not become a group), then each used value's group.
        const UNUSED: usize = usize::MAX;
        let mut group_of = vec![UNUSED; values.len()];
        for (row, &key) in keys.values().iter().enumerate() {
            if nulls && keys.is_null(row) {
                continue;
            }
            *usize::try_from(key)
                .ok()
                .and_then(|k| group_of.get_mut(k))
                .ok_or_else(out_of_range)? = 0;
        }
        let used: Vec<usize> = (0..values.len())
            .filter(|&k| group_of[k] != UNUSED)
            .collect();
        // The used values, then a NULL for the rows without a key.
        let indices: UInt32Array = used
            .iter()
            .map(|&k| u32::try_from(k).ok())
            .chain(nulls.then_some(None))
            .collect();
        let texts = arrow::compute::take(values, &indices, None)?;
        let texts = arrow::compute::cast(&texts, &self.text)?;
        self.table.intern(&[texts], &mut self.values)?;
        for (&key, &group) in used.iter().zip(&self.values) {
            group_of[key] = group;
        }
        let null_group = self.values.last().copied().filter(|_| nulls);
        self.rows.clear();
        match null_group {
            None => self
                .rows
                .extend(keys.values().iter().map(|&key| group_of[key as usize])),
            Some(null) => self
                .rows
                .extend(keys.values().iter().enumerate().map(|(row, &key)| {
                    if keys.is_null(row) {
                        null
                    } else {
                        group_of[key as usize]
                    }
                })),
        }
        Ok(())
    }

    /// Adds the rows of `batch`.
    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        self.sort_rows(batch.column(self.column))?;
        let values = evaluate_many(&self.arguments, batch)?;
        let groups = self.table.len();
        for (accumulator, values) in self.accumulators.iter_mut().zip(&values) {
            accumulator.update_batch(values, &self.rows, None, groups)?;
        }
        Ok(())
    }

    /// Memory held, for the query's memory pool.
    fn size(&self) -> usize {
        let accumulators: usize = self.accumulators.iter().map(|a| a.size()).sum();
        accumulators
            + self.table.size()
            + (self.rows.capacity() + self.values.capacity()) * size_of::<usize>()
    }

    /// The partial aggregation's rows: each group's text and each aggregate's state, in batches
    /// of `batch_size` rows. The groups are emptied.
    fn emit(&mut self, schema: &SchemaRef, batch_size: usize) -> Result<Vec<RecordBatch>> {
        if self.table.is_empty() {
            return Ok(Vec::new());
        }
        let mut columns = self.table.emit(EmitTo::All)?;
        for accumulator in &mut self.accumulators {
            columns.extend(accumulator.state(EmitTo::All)?);
        }
        self.table.clear_shrink(0);
        self.rows = Vec::new();
        self.values = Vec::new();
        let all = RecordBatch::try_new(schema.clone(), columns)?;
        let step = batch_size.max(1);
        Ok((0..all.num_rows())
            .step_by(step)
            .map(|at| all.slice(at, step.min(all.num_rows() - at)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::{EngineParts, SqlEngine, runtime_env};
    use crate::materialized_tests::rows_text;
    use futures::TryStreamExt;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use strata_proto::{Event, FieldDef, FieldType, Record, StreamInfo, StreamName};
    use strata_store::{Store, StoreConfig};

    const T0: i64 = 1_700_000_000_000;

    fn field(name: &str, field_type: FieldType) -> FieldDef {
        FieldDef {
            name: name.into(),
            field_type,
            since: vec![],
        }
    }

    /// Two partitions of events whose `country` has three values and NULL (dictionary-encoded in
    /// blocks of 16 rows) and whose `status` differs on every row (not), stored as blocks and a
    /// tail.
    async fn store(dir: &std::path::Path) -> Arc<Store> {
        let store = Store::open(
            dir,
            StoreConfig {
                block_rows: 16,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        let name = StreamName::new("s").unwrap();
        let info = StreamInfo {
            name: name.clone(),
            partitions: 2,
            fields: vec![
                field("country", FieldType::String),
                field("amount", FieldType::Double),
                field("status", FieldType::String),
            ],
        };
        store.set_catalog(Arc::new(BTreeMap::from([(name.clone(), info)])));
        let records = |partition: u32, from: u64, to: u64| -> Vec<Record> {
            (from..to)
                .map(|i| {
                    let country = ["\"NL\"", "\"DE\"", "null", "\"FR\""][(i % 4) as usize];
                    Record {
                        partition,
                        offset: i,
                        event: Event {
                            time_ms: T0 + i as i64,
                            key: Some(format!("k{}", i % 7)),
                            id: None,
                            event_type: (i % 3 != 0).then(|| format!("t{}", i % 2)),
                            data: format!(
                                "{{\"country\": {country}, \"amount\": {}, \"status\": \"s{i}\"}}",
                                i * (u64::from(partition) + 1)
                            ),
                            condition: None,
                        },
                    }
                })
                .collect()
        };
        for p in 0..2 {
            store.commit(&name, p, records(p, 0, 200)).unwrap();
        }
        // Blocks are made in the background: wait until the tails are short.
        for _ in 0..1000 {
            let status = store.status(&name).unwrap();
            if status.iter().all(|s| s.tail_rows < 16) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for p in 0..2 {
            store.commit(&name, p, records(p, 200, 210)).unwrap();
        }
        store
    }

    async fn rows(engine: &SqlEngine, sql: &str) -> Vec<String> {
        let out = engine.query(sql).await.unwrap();
        let batches: Vec<_> = out.batches.try_collect().await.unwrap();
        let mut rows = rows_text(&batches);
        rows.sort();
        rows
    }

    #[tokio::test]
    async fn grouping_by_the_dictionaries_agrees_with_datafusion() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let ours = SqlEngine::new(store.clone(), None).unwrap();
        // A session with a planning hook is left as DataFusion plans it.
        let theirs = SqlEngine::open(EngineParts {
            tables: store.clone(),
            store: Some(store.clone()),
            log: None,
            runtime: runtime_env(None).unwrap(),
            distribute: Some(Arc::new(|builder| builder)),
            explain: None,
        })
        .unwrap();
        let blocks = store
            .status(&StreamName::new("s").unwrap())
            .unwrap()
            .iter()
            .all(|s| s.tail_rows < s.rows);
        assert!(blocks, "no blocks were made");
        // Row 37 of each partition (DE).
        let one_row = "time >= TIMESTAMP '2023-11-14T22:13:20.037Z' AND time <= TIMESTAMP '2023-11-14T22:13:20.037Z'";
        for (sql, grouped) in [
            ("SELECT country, count(*) AS n, sum(amount) AS s, min(amount) AS lo, max(time) AS t, avg(amount) AS a FROM s GROUP BY country".to_string(), true),
            ("SELECT status, count(*) AS n, sum(amount) AS s FROM s GROUP BY status".into(), true),
            ("SELECT DISTINCT country FROM s".into(), true),
            ("SELECT key, count(country) AS n, sum(amount) AS s FROM s GROUP BY key".into(), true),
            ("SELECT type, count(*) AS n FROM s WHERE key IN ('k1', 'k2') GROUP BY type".into(), true),
            // Blocks read in part keep their whole dictionary: only the rows' values are groups.
            (format!("SELECT country, count(*) AS n FROM s WHERE {one_row} GROUP BY country"), true),
            ("SELECT country, count(*) AS n FROM s WHERE \"offset\" BETWEEN 30 AND 41 GROUP BY country".into(), true),
            ("SELECT country, sum(amount) AS s FROM s WHERE key = 'k3' GROUP BY country".into(), true),
            // A filter the scan does not apply is applied before the grouping.
            ("SELECT country, count(*) AS n, sum(amount) AS s FROM s WHERE amount > 50 GROUP BY country".into(), true),
            ("SELECT country, count(*) AS n FROM s WHERE status LIKE 's1%' AND time >= TIMESTAMP '2023-11-14T22:13:20.100Z' GROUP BY country".into(), true),
            // Not replaced: a filter reading the group column, a DISTINCT aggregate, the group
            // column read by an aggregate, two group columns.
            ("SELECT country, count(*) AS n FROM s WHERE country <> 'NL' GROUP BY country".into(), false),
            ("SELECT country, count(DISTINCT amount) AS n FROM s GROUP BY country".into(), false),
            ("SELECT country, count(country) AS n FROM s GROUP BY country".into(), false),
            ("SELECT country, status, count(*) AS n FROM s GROUP BY country, status".into(), false),
        ] {
            let plan = rows(&ours, &format!("EXPLAIN {sql}")).await.join("\n");
            assert_eq!(plan.contains("ScanAggregateExec"), grouped, "{sql}: {plan}");
            let expected = rows(&theirs, &sql).await;
            assert!(!expected.is_empty(), "{sql}");
            assert_eq!(rows(&ours, &sql).await, expected, "{sql}");
        }
        assert_eq!(
            rows(
                &ours,
                &format!("SELECT country, count(*) AS n FROM s WHERE {one_row} GROUP BY country")
            )
            .await,
            vec!["DE|2"]
        );
    }

    /// A pool that lets the operator's groups hold at most 4 KiB, and anything else what it asks.
    #[derive(Debug)]
    struct Tight(datafusion::execution::memory_pool::GreedyMemoryPool);

    impl std::fmt::Display for Tight {
        fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "tight")
        }
    }

    impl datafusion::execution::memory_pool::MemoryPool for Tight {
        fn name(&self) -> &str {
            "tight"
        }

        fn grow(&self, r: &datafusion::execution::memory_pool::MemoryReservation, n: usize) {
            self.0.grow(r, n);
        }

        fn shrink(&self, r: &datafusion::execution::memory_pool::MemoryReservation, n: usize) {
            self.0.shrink(r, n);
        }

        fn try_grow(
            &self,
            r: &datafusion::execution::memory_pool::MemoryReservation,
            n: usize,
        ) -> datafusion::error::Result<()> {
            if r.consumer().name().starts_with("ScanAggregateExec") && r.size() + n > 4 << 10 {
                return Err(datafusion::error::DataFusionError::ResourcesExhausted(
                    "tight".into(),
                ));
            }
            self.0.try_grow(r, n)
        }

        fn reserved(&self) -> usize {
            self.0.reserved()
        }
    }

    #[tokio::test]
    async fn groups_over_the_memory_pool_are_handed_on_early() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let pool = datafusion::execution::memory_pool::GreedyMemoryPool::new(1 << 30);
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(Tight(pool)))
            .build_arc()
            .unwrap();
        let tight = SqlEngine::open(EngineParts {
            tables: store.clone(),
            store: Some(store.clone()),
            log: None,
            runtime,
            distribute: None,
            explain: None,
        })
        .unwrap();
        let plain = SqlEngine::new(store.clone(), None).unwrap();
        // 210 statuses: more than 4 KiB of groups in each shard.
        let sql = "SELECT status, count(*) AS n, sum(amount) AS s FROM s GROUP BY status";
        let expected = rows(&plain, sql).await;
        assert_eq!(expected.len(), 210);
        assert_eq!(rows(&tight, sql).await, expected);
    }
}
