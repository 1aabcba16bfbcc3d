//! How a stream scan travels to the node that runs it: its [`ScanSpec`] as JSON. The receiving
//! node rebuilds it over its own shards ([`crate::ClusterSource`]), which check on execute that
//! the node still holds them.

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use std::sync::Arc;
use strata_views::{ScanSpec, ShardSource, StreamScanExec};

/// The codec of strata's scans, decoding them over `source`.
#[derive(Debug)]
pub struct ScanCodec {
    source: Arc<dyn ShardSource>,
}

impl ScanCodec {
    /// A codec whose decoded scans read `source`.
    pub fn new(source: Arc<dyn ShardSource>) -> Self {
        Self { source }
    }
}

impl PhysicalExtensionCodec for ScanCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(DataFusionError::Internal(
                "a stream scan has no inputs".into(),
            ));
        }
        let spec: ScanSpec = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Internal(format!("undecodable stream scan: {e}")))?;
        Ok(Arc::new(StreamScanExec::from_spec(
            self.source.clone(),
            spec,
        )?))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(scan) = node.downcast_ref::<StreamScanExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot run on another node",
                node.name()
            )));
        };
        serde_json::to_writer(buf, scan.spec())
            .map_err(|e| DataFusionError::Internal(format!("cannot encode a stream scan: {e}")))
    }
}
