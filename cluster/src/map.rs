//! Which node holds which partition, and where each node takes node-to-node calls: read from the
//! statuses the nodes publish (`<prefix>__nodes`) and this node's own feed.

use datafusion::error::DataFusionError;
use datafusion_distributed::WorkerResolver;
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use strata_proto::{Feed, Membership, StreamName};
use url::Url;

/// A live peer: its node-to-node URL, when it published its status, and the partitions it serves.
type Peer = (Url, i64, Vec<(String, u32)>);

/// This node: its id and the URL other nodes reach it at.
#[derive(Clone, Debug)]
pub struct LocalNode {
    /// The node id (as it publishes it).
    pub id: String,
    /// Its node-to-node URL (`http://host:port`).
    pub url: Url,
}

/// The cluster as this node sees it now: the live nodes' node-to-node URLs and, per partition, the
/// node holding it. Every read is a fresh snapshot of the published statuses.
pub struct ClusterMap {
    local: LocalNode,
    membership: Arc<dyn Membership>,
    feed: RwLock<Option<Arc<dyn Feed>>>,
}

impl std::fmt::Debug for ClusterMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterMap")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// The URL of a node-to-node address (`host:port` or a URL).
///
/// # Errors
/// An address that is not a URL.
pub fn node_url(address: &str) -> crate::Result<Url> {
    let text = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    Url::parse(&text)
        .map_err(|e| crate::Error::Config(format!("bad cluster address {address:?}: {e}")))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl ClusterMap {
    /// The map of a node `local` in the cluster of `membership`.
    pub fn new(local: LocalNode, membership: Arc<dyn Membership>) -> Self {
        Self {
            local,
            membership,
            feed: RwLock::new(None),
        }
    }

    /// Sets the feed of this node's store (store nodes, once it runs).
    pub fn set_feed(&self, feed: Arc<dyn Feed>) {
        *self.feed.write() = Some(feed);
    }

    /// This node.
    pub fn local(&self) -> &LocalNode {
        &self.local
    }

    /// Whether this node's store holds `partition` of `stream` now.
    pub fn holds_locally(&self, stream: &StreamName, partition: u32) -> bool {
        let feed = self.feed.read();
        let Some(feed) = feed.as_ref() else {
            return false;
        };
        let held = match feed.held() {
            None => true,
            Some(held) => held.iter().any(|(s, p, _)| s == stream && *p == partition),
        };
        held && feed.serving(stream, partition)
    }

    /// The live nodes other than this one, with their URL and last status time, by id.
    fn peers(&self) -> BTreeMap<String, Peer> {
        let oldest = now_ms() - self.stale_after().as_millis() as i64;
        self.membership
            .peers()
            .into_values()
            .filter(|s| s.node != self.local.id && s.updated_ms >= oldest)
            .filter_map(|s| {
                let url = node_url(s.cluster.as_deref()?).ok()?;
                let held = s
                    .partitions
                    .into_iter()
                    .filter(|p| p.serving)
                    .map(|p| (p.stream, p.partition))
                    .collect();
                Some((s.node, (url, s.updated_ms, held)))
            })
            .collect()
    }

    fn stale_after(&self) -> Duration {
        self.membership.stale_after()
    }

    /// The node holding each of `partitions` of `stream`: this node when it holds one, otherwise
    /// the live node that most recently said it does.
    ///
    /// # Errors
    /// [`strata_views::Error::Unavailable`] naming the first partition no live node holds.
    pub fn holders(
        &self,
        stream: &str,
        partitions: &[u32],
    ) -> strata_views::Result<BTreeMap<String, Vec<u32>>> {
        let name =
            StreamName::new(stream).map_err(|e| strata_views::Error::Invalid(e.to_string()))?;
        let peers = self.peers();
        let mut claims: HashMap<u32, (&str, i64)> = HashMap::new();
        for (id, (_, updated, held)) in &peers {
            for (s, p) in held {
                if s == stream && claims.get(p).is_none_or(|(_, t)| *t < *updated) {
                    claims.insert(*p, (id.as_str(), *updated));
                }
            }
        }
        let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for &p in partitions {
            let node = if self.holds_locally(&name, p) {
                self.local.id.as_str()
            } else {
                match claims.get(&p) {
                    Some((id, _)) => id,
                    None => {
                        return Err(strata_views::Error::Unavailable(format!(
                            "partition {p} of {stream} has no live holder ready to serve it (a store node is down, or the partitions are moving and catching up); retry shortly"
                        )));
                    }
                }
            };
            out.entry(node.to_owned()).or_default().push(p);
        }
        Ok(out)
    }

    /// The live peers that keep shards (role `store` or `all`) and take node-to-node calls, with
    /// their URL, by id.
    pub fn store_peers(&self) -> BTreeMap<String, Url> {
        let oldest = now_ms() - self.stale_after().as_millis() as i64;
        self.membership
            .peers()
            .into_values()
            .filter(|s| s.node != self.local.id && s.updated_ms >= oldest)
            .filter(|s| s.role == "store" || s.role == "all")
            .filter_map(|s| Some((s.node, node_url(s.cluster.as_deref()?).ok()?)))
            .collect()
    }

    /// The node-to-node URL of node `id`, if it is this node or live.
    pub fn url_of(&self, id: &str) -> Option<Url> {
        if id == self.local.id {
            return Some(self.local.url.clone());
        }
        self.peers().remove(id).map(|(url, _, _)| url)
    }
}

/// A shared [`ClusterMap`] as the planner's worker resolver: this node and every live peer.
#[derive(Clone, Debug)]
pub(crate) struct Resolver(pub(crate) Arc<ClusterMap>);

impl WorkerResolver for Resolver {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        let mut urls = vec![self.0.local.url.clone()];
        urls.extend(self.0.peers().into_values().map(|(url, _, _)| url));
        Ok(urls)
    }
}
