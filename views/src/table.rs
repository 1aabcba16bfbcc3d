//! The table provider of a stream: one DataFusion partition per store shard.

use crate::filters::ScanBounds;
use crate::source::ShardSource;
use arrow::array::RecordBatch;
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
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
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

/// Offsets a query must see, by stream and partition: a scan of such a partition waits (at most
/// `wait`) until its shard has stored them. Set as a session extension by the query layer.
#[derive(Clone, Debug, Default)]
pub struct ReadAfter {
    /// Per (stream, partition), the next offset that must be stored.
    pub offsets: HashMap<(String, u32), u64>,
    /// How long a scan may wait.
    pub wait: Duration,
}

/// What one stream scan reads — everything a node needs to run it, so that it can travel between
/// nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanSpec {
    /// The stream.
    pub stream: String,
    /// The shards (partitions) read, one output partition each.
    pub shards: Vec<u32>,
    /// Output partitions: at least `shards.len()`; the ones past the shards are empty (so that
    /// the scans of several nodes can have the same width).
    pub width: usize,
    /// Table columns returned (indexes into the stream's schema).
    pub projection: Vec<usize>,
    /// Offsets returned (half-open).
    pub offsets: (u64, u64),
    /// Inclusive event-time bounds in epoch ms.
    pub time: Option<(i64, i64)>,
    /// The one key returned.
    pub key: Option<String>,
    /// Stop after this many rows per shard.
    pub limit: Option<usize>,
    /// The node meant to run this scan (set when a cluster query spreads the shards).
    pub holder: Option<String>,
    /// Per shard, the next offset it must have stored before it is read.
    pub after: Vec<(u32, u64)>,
    /// How long to wait for `after`, in milliseconds.
    pub wait_ms: u64,
}

impl ScanSpec {
    fn request(&self) -> ScanRequest {
        ScanRequest {
            projection: self.projection.clone(),
            offsets: self.offsets.0..self.offsets.1,
            time: self.time,
            key: self.key.clone(),
            limit: self.limit,
            as_stored: Vec::new(),
        }
    }

    /// Whether the scan returns every row of its shards.
    fn unbounded(&self) -> bool {
        self.offsets == (0, u64::MAX)
            && self.time.is_none()
            && self.key.is_none()
            && self.limit.is_none()
    }
}

/// One shard's read of a scan, detached from the plan: what [`StreamScanExec`] runs for an
/// output partition, and what an operator that consumes the rows where they are read runs.
pub(crate) struct ShardRead {
    source: Arc<dyn ShardSource>,
    stream: StreamName,
    shard: u32,
    /// What is read.
    pub(crate) request: ScanRequest,
    /// The offset the shard must have stored first, and how long to wait for it.
    after: Option<(u64, Duration)>,
}

impl ShardRead {
    /// Waits until the shard has stored what the query must see.
    pub(crate) async fn wait(&self) -> Result<()> {
        if let Some((offset, wait)) = self.after {
            crate::source::wait_stored(
                self.source.as_ref(),
                &self.stream,
                self.shard,
                offset,
                wait,
            )
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        }
        Ok(())
    }

    /// The shard's batches. Blocking: run it where blocking is allowed.
    pub(crate) fn batches(self) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
        let scan = self
            .source
            .scan(&self.stream, self.shard, self.request)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(scan.map(|b| b.map_err(|e| DataFusionError::External(Box::new(e)))))
    }
}

/// The physical scan of a stream: one output partition per shard that may hold matching rows.
#[derive(Debug)]
pub struct StreamScanExec {
    source: Arc<dyn ShardSource>,
    spec: ScanSpec,
    stream: StreamName,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    /// Exact rows per output partition, when the scan returns every row of its shards.
    rows: Option<Vec<u64>>,
}

impl StreamScanExec {
    /// The scan `spec` over `source`, whose catalog gives the stream's columns.
    ///
    /// # Errors
    /// An unknown stream, a projection outside its columns, fewer output partitions than shards.
    pub fn from_spec(source: Arc<dyn ShardSource>, spec: ScanSpec) -> Result<Self> {
        let stream =
            StreamName::new(&spec.stream).map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let catalog = source.catalog();
        let info = catalog.get(&stream).ok_or_else(|| {
            DataFusionError::Plan(format!("stream {stream} is not in this node's catalog"))
        })?;
        let schema = Arc::new(stream_schema(info).project(&spec.projection)?);
        Self::new(source, stream, spec, schema)
    }

    fn new(
        source: Arc<dyn ShardSource>,
        stream: StreamName,
        spec: ScanSpec,
        schema: SchemaRef,
    ) -> Result<Self> {
        if spec.width < spec.shards.len() {
            return Err(DataFusionError::Internal(format!(
                "a scan of {} shards cannot have {} partitions",
                spec.shards.len(),
                spec.width
            )));
        }
        let rows = spec
            .unbounded()
            .then(|| source.status(&stream).ok())
            .flatten()
            .map(|status| {
                let mut rows: Vec<u64> = spec
                    .shards
                    .iter()
                    .map(|&p| status.get(p as usize).map_or(0, |s| s.rows))
                    .collect();
                rows.resize(spec.width, 0);
                rows
            });
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(spec.width),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            rows,
            source,
            spec,
            stream,
            schema,
            properties: Arc::new(properties),
        })
    }

    /// What this scan reads.
    pub fn spec(&self) -> &ScanSpec {
        &self.spec
    }

    /// The read of output partition `partition` (`None`: a padding partition, no rows).
    pub(crate) fn shard_read(&self, partition: usize) -> Option<ShardRead> {
        let &shard = self.spec.shards.get(partition)?;
        let after = self
            .spec
            .after
            .iter()
            .find(|(p, _)| *p == shard)
            .map(|&(_, offset)| (offset, Duration::from_millis(self.spec.wait_ms)));
        Some(ShardRead {
            source: self.source.clone(),
            stream: self.stream.clone(),
            shard,
            request: self.spec.request(),
            after,
        })
    }

    /// The same scan over `shards` only, with `width` output partitions, meant for `holder`
    /// (one node's share of a cluster query). Row counts are left unknown.
    pub fn share(&self, shards: Vec<u32>, width: usize, holder: Option<String>) -> Result<Self> {
        let after = self
            .spec
            .after
            .iter()
            .filter(|(p, _)| shards.contains(p))
            .copied()
            .collect();
        let spec = ScanSpec {
            shards,
            width,
            holder,
            after,
            ..self.spec.clone()
        };
        let mut share = Self::new(
            self.source.clone(),
            self.stream.clone(),
            spec,
            self.schema.clone(),
        )?;
        share.rows = None;
        Ok(share)
    }
}

impl DisplayAs for StreamScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let s = &self.spec;
        write!(
            f,
            "StreamScanExec: stream={}, shards={:?}",
            s.stream, s.shards
        )?;
        if let Some(holder) = &s.holder {
            write!(f, ", node={holder}")?;
        }
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        write!(f, ", projection=[{}]", names.join(", "))?;
        if s.offsets != (0, u64::MAX) {
            write!(f, ", offsets={}..{}", s.offsets.0, s.offsets.1)?;
        }
        if let Some((lo, hi)) = s.time {
            let show = |ms: i64| match ms {
                i64::MIN | i64::MAX => String::new(),
                ms => strata_proto::format_time_ms(ms),
            };
            write!(f, ", time=[{}, {}]", show(lo), show(hi))?;
        }
        if let Some(key) = &s.key {
            write!(f, ", key={key:?}")?;
        }
        if let Some(limit) = s.limit {
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
        if partition >= self.spec.width {
            return Err(DataFusionError::Internal(format!(
                "StreamScanExec has no partition {partition}"
            )));
        }
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema.clone(), 2);
        let Some(read) = self.shard_read(partition) else {
            // Padding of a share narrower than the others: no rows.
            return Ok(builder.build());
        };
        let tx = builder.tx();
        builder.spawn(async move {
            read.wait().await?;
            let read = tokio::task::spawn_blocking(move || {
                for batch in read.batches()? {
                    let failed = batch.is_err();
                    if tx.blocking_send(batch).is_err() || failed {
                        // The query was cancelled (or this shard failed): stop reading.
                        break;
                    }
                }
                Ok(())
            });
            read.await
                .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?
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
        state: &dyn Session,
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
        let read_after = state.config().get_extension::<ReadAfter>();
        let after = read_after
            .as_ref()
            .map(|r| {
                shards
                    .iter()
                    .filter_map(|&p| {
                        r.offsets
                            .get(&(self.stream.to_string(), p))
                            .map(|&offset| (p, offset))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let spec = ScanSpec {
            stream: self.stream.to_string(),
            width: shards.len(),
            shards,
            projection,
            offsets: (bounds.offsets.start, bounds.offsets.end),
            time: bounds.time,
            key: bounds.key.clone(),
            // Every pushed filter is applied exactly, so the limit holds after them.
            limit,
            holder: None,
            after,
            wait_ms: read_after.map_or(0, |r| r.wait.as_millis() as u64),
        };
        Ok(Arc::new(StreamScanExec::new(
            self.source.clone(),
            self.stream.clone(),
            spec,
            schema,
        )?))
    }
}
