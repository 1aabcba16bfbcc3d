//! The table provider of a stream: one DataFusion partition per store shard.

use crate::filters::ScanBounds;
use crate::source::ShardSource;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Statistics;
use datafusion::common::stats::Precision;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, StatisticsArgs,
};
use std::sync::Arc;
use strata_proto::{StreamInfo, StreamName};
use strata_store::ScanRequest;
use strata_store::schema::stream_schema;

/// A stream as a SQL table.
#[derive(Debug)]
pub struct StreamTable {
    source: Arc<dyn ShardSource>,
    stream: StreamName,
    partitions: u32,
    schema: SchemaRef,
}

impl StreamTable {
    /// The table of `stream` (its shards, and its columns with the declared fields).
    pub fn new(source: Arc<dyn ShardSource>, info: &StreamInfo) -> Self {
        Self {
            source,
            stream: info.name.clone(),
            partitions: info.partitions,
            schema: stream_schema(info),
        }
    }
}

/// The physical scan of a stream: one output partition per shard that may hold matching rows.
#[derive(Debug)]
pub struct StreamScanExec {
    source: Arc<dyn ShardSource>,
    stream: StreamName,
    shards: Vec<u32>,
    request: ScanRequest,
    bounds: ScanBounds,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    /// Exact rows per output partition, when the scan returns every row of its shards.
    rows: Option<Vec<u64>>,
}

impl StreamScanExec {
    fn new(
        source: Arc<dyn ShardSource>,
        stream: StreamName,
        shards: Vec<u32>,
        request: ScanRequest,
        bounds: ScanBounds,
        schema: SchemaRef,
    ) -> Self {
        let unbounded = bounds == ScanBounds::default() && request.limit.is_none();
        let rows = unbounded
            .then(|| source.status(&stream).ok())
            .flatten()
            .map(|status| {
                shards
                    .iter()
                    .map(|&p| status.get(p as usize).map_or(0, |s| s.rows))
                    .collect()
            });
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(shards.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            rows,
            source,
            stream,
            shards,
            request,
            bounds,
            schema,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for StreamScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "StreamScanExec: stream={}, shards={:?}",
            self.stream, self.shards
        )?;
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        write!(f, ", projection=[{}]", names.join(", "))?;
        let b = &self.bounds;
        if b.offsets != (0..u64::MAX) {
            write!(f, ", offsets={}..{}", b.offsets.start, b.offsets.end)?;
        }
        if let Some((lo, hi)) = b.time {
            let show = |ms: i64| match ms {
                i64::MIN | i64::MAX => String::new(),
                ms => strata_proto::format_time_ms(ms),
            };
            write!(f, ", time=[{}, {}]", show(lo), show(hi))?;
        }
        if let Some(key) = &b.key {
            write!(f, ", key={key:?}")?;
        }
        if let Some(limit) = self.request.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for StreamScanExec {
    fn name(&self) -> &str {
        "StreamScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    leaf_plan!();

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let mut stats = Statistics::new_unknown(&self.schema);
        if let Some(rows) = &self.rows {
            let n = match args.partition() {
                Some(i) => rows.get(i).copied().unwrap_or(0),
                None => rows.iter().sum(),
            };
            // Exact: `count(*)` over a whole stream is answered without scanning it.
            stats.num_rows = Precision::Exact(n as usize);
        }
        Ok(Arc::new(stats))
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let shard = *self.shards.get(partition).ok_or_else(|| {
            DataFusionError::Internal(format!("StreamScanExec has no partition {partition}"))
        })?;
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema.clone(), 2);
        let tx = builder.tx();
        let (source, stream, request) = (
            self.source.clone(),
            self.stream.clone(),
            self.request.clone(),
        );
        builder.spawn_blocking(move || {
            let scan = source
                .scan(&stream, shard, request)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            for batch in scan {
                let batch = batch.map_err(|e| DataFusionError::External(Box::new(e)));
                let failed = batch.is_err();
                if tx.blocking_send(batch).is_err() || failed {
                    // The query was cancelled (or this shard failed): stop reading.
                    break;
                }
            }
            Ok(())
        });
        Ok(builder.build())
    }
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if ScanBounds::supports(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&projection)?);
        let bounds = ScanBounds::from_filters(filters);
        let shards: Vec<u32> = (0..self.partitions)
            .filter(|p| bounds.has_partition(*p))
            .collect();
        if shards.is_empty() {
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let request = ScanRequest {
            projection,
            offsets: bounds.offsets.clone(),
            time: bounds.time,
            key: bounds.key.clone(),
            // Every pushed filter is applied exactly, so the limit holds after them.
            limit,
        };
        Ok(Arc::new(StreamScanExec::new(
            self.source.clone(),
            self.stream.clone(),
            shards,
            request,
            bounds,
            schema,
        )))
    }
}
