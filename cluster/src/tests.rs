//! Unit tests of the map, the secret check and the scan codec.

use crate::map::{ClusterMap, LocalNode, node_url};
use crate::worker::{SECRET_HEADER, SecretCheck};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::{Feed, Held, HeldPartition, Membership, NodeStatus, Stall, StreamName};
use tonic::service::Interceptor;

struct Peers(Vec<NodeStatus>);

#[async_trait]
impl Membership for Peers {
    fn peers(&self) -> BTreeMap<String, NodeStatus> {
        self.0.iter().map(|s| (s.node.clone(), s.clone())).collect()
    }
    fn publish_every(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn stale_after(&self) -> Duration {
        Duration::from_secs(10)
    }
    async fn publish(&self, _status: &NodeStatus) -> strata_proto::Result<()> {
        Ok(())
    }
}

struct Holds(Vec<u32>, bool);

#[async_trait]
impl Feed for Holds {
    fn held(&self) -> Option<Vec<Held>> {
        let s = StreamName::new("orders").unwrap();
        Some(self.0.iter().map(|&p| (s.clone(), p, None)).collect())
    }
    fn stalled(&self) -> Vec<Stall> {
        Vec::new()
    }
    fn serving(&self, _stream: &StreamName, _partition: u32) -> bool {
        self.1
    }
    async fn stop(&self, _limit: Duration) {}
}

fn status(node: &str, age_ms: i64, partitions: &[(u32, bool)]) -> NodeStatus {
    NodeStatus {
        node: node.into(),
        role: "store".into(),
        http: "127.0.0.1:1".into(),
        cluster: Some(format!("127.0.0.1:{}", 9000 + node.len())),
        updated_ms: chrono_now() - age_ms,
        partitions: partitions
            .iter()
            .map(|&(partition, serving)| HeldPartition {
                stream: "orders".into(),
                partition,
                stored_offset: 0,
                log_end_offset: None,
                lag: None,
                serving,
            })
            .collect(),
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn map(peers: Vec<NodeStatus>) -> ClusterMap {
    ClusterMap::new(
        LocalNode {
            id: "me".into(),
            url: node_url("127.0.0.1:7000").unwrap(),
        },
        Arc::new(Peers(peers)),
    )
}

#[test]
fn holders_prefer_this_node_then_the_freshest_serving_peer() {
    let map = map(vec![
        status("a", 5000, &[(0, true), (1, true)]),
        status("bb", 100, &[(1, true), (2, false)]),
        // Gone: its status is older than stale_after.
        status("ccc", 60_000, &[(3, true)]),
    ]);
    map.set_feed(Arc::new(Holds(vec![0], true)));
    let holders = map.holders("orders", &[0, 1]).unwrap();
    assert_eq!(
        holders,
        BTreeMap::from([("me".to_owned(), vec![0]), ("bb".to_owned(), vec![1])])
    );
    // Partition 2 is held by a node still catching up, 3 by a node that is gone: no answer.
    for p in [2, 3] {
        let err = map.holders("orders", &[p]).unwrap_err();
        assert!(
            matches!(&err, strata_views::Error::Unavailable(m) if m.contains(&format!("partition {p} of orders")) && m.contains("retry")),
            "{err}"
        );
    }
    assert_eq!(map.url_of("bb").unwrap().as_str(), "http://127.0.0.1:9002/");
    assert!(map.url_of("ccc").is_none());
    // A partition this node holds but has not caught up with is not served from here.
    let map = self::map(vec![status("a", 0, &[(0, true)])]);
    map.set_feed(Arc::new(Holds(vec![0], false)));
    assert_eq!(
        map.holders("orders", &[0]).unwrap(),
        BTreeMap::from([("a".to_owned(), vec![0])])
    );
}

#[test]
fn node_to_node_calls_need_the_secret() {
    let mut check = SecretCheck {
        secret: "s3cret-s3cret-s3cret".into(),
    };
    let refused = check.call(tonic::Request::new(())).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut wrong = tonic::Request::new(());
    wrong
        .metadata_mut()
        .insert(SECRET_HEADER, "s3cret-s3cret-s3creT".parse().unwrap());
    assert!(check.call(wrong).is_err());
    let mut right = tonic::Request::new(());
    right
        .metadata_mut()
        .insert(SECRET_HEADER, "s3cret-s3cret-s3cret".parse().unwrap());
    assert!(check.call(right).is_ok());
}

#[test]
fn a_scan_travels_whole_and_splits_by_holder() {
    use crate::codec::ScanCodec;
    use datafusion::execution::TaskContext;
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion_proto::physical_plan::{DefaultPhysicalProtoConverter, PhysicalExtensionCodec};
    use strata_views::{ScanSpec, ShardSource, StreamScanExec};

    let dir = tempfile::tempdir().unwrap();
    let store =
        strata_store::Store::open(dir.path(), strata_store::StoreConfig::default()).unwrap();
    let name = StreamName::new("orders").unwrap();
    let info = strata_proto::StreamInfo {
        name: name.clone(),
        partitions: 4,
        fields: Vec::new(),
    };
    store.set_catalog(Arc::new([(name, info)].into_iter().collect()));
    let source: Arc<dyn ShardSource> = store;
    let spec = ScanSpec {
        stream: "orders".into(),
        shards: vec![0, 1, 2, 3],
        width: 4,
        projection: vec![1, 3, 6],
        offsets: (5, 90),
        time: Some((10, 20)),
        key: Some("c1".into()),
        limit: Some(7),
        holder: None,
        after: vec![(2, 40)],
        wait_ms: 1500,
    };
    let scan = StreamScanExec::from_spec(source.clone(), spec.clone()).unwrap();
    // A share keeps the rest of the scan, and only the `after` offsets of its own shards.
    let share = scan.share(vec![2], 2, Some("s2".into())).unwrap();
    assert_eq!(share.spec().after, vec![(2, 40)]);
    assert_eq!(share.properties().partitioning.partition_count(), 2);
    assert_eq!(scan.share(vec![1], 1, None).unwrap().spec().after, vec![]);
    assert!(
        scan.share(vec![1, 3], 1, None).is_err(),
        "narrower than its shards"
    );

    let codec = ScanCodec::new(source);
    let converter = DefaultPhysicalProtoConverter {};
    let mut buf = Vec::new();
    codec
        .try_encode(Arc::new(share), &mut buf, &converter)
        .unwrap();
    let decoded = codec
        .try_decode(&buf, &[], &TaskContext::default(), &converter)
        .unwrap();
    let decoded = decoded.downcast_ref::<StreamScanExec>().unwrap();
    assert_eq!(decoded.spec().shards, vec![2]);
    assert_eq!(decoded.spec().holder.as_deref(), Some("s2"));
    assert_eq!(decoded.spec().key.as_deref(), Some("c1"));
    assert_eq!(decoded.schema().fields().len(), 3);
    // Garbage is refused, not decoded into something.
    assert!(
        codec
            .try_decode(b"{", &[], &TaskContext::default(), &converter)
            .is_err()
    );
}

#[test]
fn a_broken_peer_is_retryable_and_other_failures_are_not() {
    use strata_views::Error;
    let broken = crate::unreachable_peer(Error::Execution(
        "Error from worker: transport error: connection reset".into(),
    ));
    assert!(
        matches!(broken, Error::Unavailable(ref m) if m.contains("retry")),
        "{broken}"
    );
    let bad = crate::unreachable_peer(Error::Execution("division by zero".into()));
    assert!(matches!(bad, Error::Execution(_)), "{bad}");
    let invalid = crate::unreachable_peer(Error::Invalid("connection is a column".into()));
    assert!(matches!(invalid, Error::Invalid(_)), "{invalid}");
}
