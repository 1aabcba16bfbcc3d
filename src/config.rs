//! Node configuration: defaults, then a TOML file, then `STRATA_*` environment variables and
//! command-line flags (clap reads both; a flag wins over its variable).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use strata_ingest::{EmbeddedLogConfig, KafkaConfig};
use strata_store::StoreConfig;

/// Which log a node appends to and consumes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    /// Segment files under the data directory (the default, single node).
    #[default]
    Embedded,
    /// Apache Kafka (or any Kafka-protocol broker): topics hold the partitioned log.
    Kafka,
}

/// What a node does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Appends, stores, and answers SQL and replay (the default).
    #[default]
    All,
    /// Appends only; stateless (Kafka only).
    Ingest,
    /// Consumes partitions into shards and answers SQL and replay for them (Kafka only).
    Store,
}

impl Role {
    /// Whether the node takes appends.
    pub fn ingests(self) -> bool {
        matches!(self, Role::All | Role::Ingest)
    }

    /// Whether the node keeps shards.
    pub fn stores(self) -> bool {
        matches!(self, Role::All | Role::Store)
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Ingest => "ingest",
            Role::Store => "store",
        }
    }
}

/// Settings of the log.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// The backend.
    pub backend: LogBackend,
    /// Settings of the embedded log.
    pub embedded: EmbeddedLogConfig,
    /// Settings of the Kafka log.
    pub kafka: KafkaConfig,
}

/// Request limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body in bytes (appends and SQL); larger gets 413.
    pub max_body_bytes: usize,
    /// Largest single event in bytes.
    pub max_event_bytes: usize,
    /// Most events in one append request.
    pub max_batch_events: usize,
    /// Requests served at once; more get 503 with `Retry-After` (`/healthz`, `/metrics` exempt).
    pub max_concurrent_requests: usize,
    /// Longest a SQL query may run, planning and streaming its answer included, in milliseconds.
    pub query_timeout_ms: u64,
    /// Memory all running SQL queries may hold together (sorts, joins, aggregations), in bytes.
    pub query_memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            max_event_bytes: 1 << 20,
            max_batch_events: 100_000,
            max_concurrent_requests: 512,
            query_timeout_ms: 60_000,
            query_memory_bytes: 2 << 30,
        }
    }
}

/// TLS for the HTTP listener: a PEM certificate chain and its PEM private key.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// Both files, when TLS is on.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        Some((self.cert.as_deref()?, self.key.as_deref()?))
    }
}

/// Cluster-wide queries (Kafka): where this node takes node-to-node calls, and their secret.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Address of the node-to-node listener (`127.0.0.1:0` picks a free port); unset: this node
    /// answers SQL from its own partitions only.
    pub listen: Option<String>,
    /// `host:port` other nodes reach that listener at [default: the listener's address].
    pub advertise: Option<String>,
    /// Shared by every node; node-to-node calls without it are refused.
    pub secret: Option<String>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("secret", &self.secret.as_ref().map(|_| "…"))
            .finish()
    }
}

/// The PostgreSQL wire protocol front end.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgConfig {
    /// Where PostgreSQL clients connect (`off`: nowhere; `127.0.0.1:0` picks a free port).
    pub listen: String,
    /// The most client connections at once; more are refused with SQLSTATE 53300.
    pub max_connections: usize,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5433".to_owned(),
            max_connections: 100,
        }
    }
}

/// The Arrow Flight SQL front end.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlightConfig {
    /// Where Flight SQL clients connect (`off`: nowhere; `127.0.0.1:0` picks a free port).
    pub listen: String,
}

impl Default for FlightConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".to_owned(),
        }
    }
}

/// An address setting, or `None` for `off`.
pub fn listen_address(value: &str) -> Option<&str> {
    let value = value.trim();
    (!value.is_empty() && !value.eq_ignore_ascii_case("off")).then_some(value)
}

/// Everything a node needs to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the log and the store keep their files.
    pub data_dir: PathBuf,
    /// Address of the HTTP API (`127.0.0.1:0` picks a free port).
    pub http: String,
    /// What this node does.
    pub role: Role,
    /// This node's id in `/v1/cluster` [default: host name and HTTP address].
    pub node_id: Option<String>,
    /// Partition count of streams created by a first append.
    pub default_partitions: u32,
    /// Request limits.
    pub limits: Limits,
    /// Bearer tokens and what each may do (none: authentication off).
    pub auth: crate::auth::AuthConfig,
    /// TLS for the HTTP listener (off unless both files are given).
    pub tls: TlsConfig,
    /// Cluster-wide queries.
    pub cluster: ClusterConfig,
    /// PostgreSQL clients.
    pub pg: PgConfig,
    /// Arrow Flight SQL clients.
    pub flight: FlightConfig,
    /// The log.
    pub log: LogSettings,
    /// The store.
    pub store: StoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./strata-data"),
            http: "127.0.0.1:7070".to_owned(),
            role: Role::All,
            node_id: None,
            default_partitions: 4,
            limits: Limits::default(),
            auth: crate::auth::AuthConfig::default(),
            tls: TlsConfig::default(),
            cluster: ClusterConfig::default(),
            pg: PgConfig::default(),
            flight: FlightConfig::default(),
            log: LogSettings::default(),
            store: StoreConfig::default(),
        }
    }
}

/// Values from the command line or the environment; each one set overrides the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "STRATA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./strata-data].
    #[arg(long, env = "STRATA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:7070].
    #[arg(long, env = "STRATA_HTTP")]
    pub http: Option<String>,
    /// Partitions of streams created by a first append [default: 4].
    #[arg(long, env = "STRATA_DEFAULT_PARTITIONS")]
    pub default_partitions: Option<u32>,
    /// The log backend [default: embedded].
    #[arg(long, env = "STRATA_LOG", value_enum)]
    pub log: Option<LogBackend>,
    /// Largest request body in bytes [default: 33554432].
    #[arg(long, env = "STRATA_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// TLS certificate chain (PEM) for the HTTP listener; with --tls-key turns TLS on.
    #[arg(long, env = "STRATA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the HTTP listener.
    #[arg(long, env = "STRATA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// What this node does: all, ingest or store [default: all].
    #[arg(long, env = "STRATA_ROLE", value_enum)]
    pub role: Option<Role>,
    /// This node's id in the cluster view [default: host name and HTTP address].
    #[arg(long, env = "STRATA_NODE_ID")]
    pub node_id: Option<String>,
    /// Node-to-node listen address for cluster-wide SQL (with --log kafka).
    #[arg(long, env = "STRATA_CLUSTER_LISTEN")]
    pub cluster_listen: Option<String>,
    /// HOST:PORT other nodes reach the node-to-node listener at [default: its address].
    #[arg(long, env = "STRATA_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// Secret shared by the nodes of a cluster (node-to-node calls without it are refused).
    #[arg(long, env = "STRATA_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// PostgreSQL wire protocol listen address, or `off` [default: 127.0.0.1:5433].
    #[arg(long, env = "STRATA_PG")]
    pub pg: Option<String>,
    /// Arrow Flight SQL listen address, or `off` [default: 127.0.0.1:50051].
    #[arg(long, env = "STRATA_FLIGHT")]
    pub flight: Option<String>,
    /// Kafka bootstrap brokers, HOST:PORT[,…] (with --log kafka).
    #[arg(long, env = "STRATA_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Prefix of the topics of streams [default: strata.].
    #[arg(long, env = "STRATA_KAFKA_TOPIC_PREFIX")]
    pub kafka_topic_prefix: Option<String>,
    /// Consumer group of store nodes [default: strata-store].
    #[arg(long, env = "STRATA_KAFKA_GROUP_ID")]
    pub kafka_group_id: Option<String>,
    /// Replication factor of topics strata creates [default: 3].
    #[arg(long, env = "STRATA_KAFKA_REPLICATION_FACTOR")]
    pub kafka_replication_factor: Option<i32>,
    /// min.insync.replicas of topics strata creates [default: 2].
    #[arg(long, env = "STRATA_KAFKA_MIN_INSYNC_REPLICAS")]
    pub kafka_min_insync_replicas: Option<u32>,
}

impl Config {
    /// Reads a TOML configuration file.
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::Error::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| crate::Error::Config(format!("{}: {e}", path.display())))
    }

    /// Defaults, overlaid by the file named in `overrides` (if any), overlaid by the rest of
    /// `overrides`; then checked.
    pub fn load(overrides: &Overrides) -> crate::Result<Self> {
        let mut config = match &overrides.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        if let Some(v) = &overrides.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &overrides.http {
            config.http = v.clone();
        }
        if let Some(v) = overrides.default_partitions {
            config.default_partitions = v;
        }
        if let Some(v) = overrides.log {
            config.log.backend = v;
        }
        if let Some(v) = overrides.max_body_bytes {
            config.limits.max_body_bytes = v;
        }
        if let Some(v) = &overrides.tls_cert {
            config.tls.cert = Some(v.clone());
        }
        if let Some(v) = &overrides.tls_key {
            config.tls.key = Some(v.clone());
        }
        if let Some(v) = overrides.role {
            config.role = v;
        }
        if let Some(v) = &overrides.node_id {
            config.node_id = Some(v.clone());
        }
        if let Some(v) = &overrides.cluster_listen {
            config.cluster.listen = Some(v.clone());
        }
        if let Some(v) = &overrides.cluster_advertise {
            config.cluster.advertise = Some(v.clone());
        }
        if let Some(v) = &overrides.cluster_secret {
            config.cluster.secret = Some(v.clone());
        }
        if let Some(v) = &overrides.pg {
            config.pg.listen = v.clone();
        }
        if let Some(v) = &overrides.flight {
            config.flight.listen = v.clone();
        }
        let kafka = &mut config.log.kafka;
        if let Some(v) = &overrides.kafka_brokers {
            kafka.brokers = v.clone();
        }
        if let Some(v) = &overrides.kafka_topic_prefix {
            kafka.topic_prefix = v.clone();
        }
        if let Some(v) = &overrides.kafka_group_id {
            kafka.group_id = v.clone();
        }
        if let Some(v) = overrides.kafka_replication_factor {
            kafka.replication_factor = v;
        }
        if let Some(v) = overrides.kafka_min_insync_replicas {
            kafka.min_insync_replicas = v;
        }
        config.check()?;
        Ok(config)
    }

    /// Refuses settings that cannot work.
    pub fn check(&self) -> crate::Result<()> {
        strata_proto::StreamInfo::check_partitions(self.default_partitions)
            .map_err(|e| crate::Error::Config(format!("default_partitions: {e}")))?;
        if self.pg.max_connections == 0 {
            return Err(crate::Error::Config(
                "pg.max_connections must be positive".into(),
            ));
        }
        if self.store.block_rows == 0 || self.store.commit_max_events == 0 {
            return Err(crate::Error::Config(
                "store.block_rows and store.commit_max_events must be positive".into(),
            ));
        }
        if self.store.decisions_keep_ms < 30_000 {
            return Err(crate::Error::Config(format!(
                "store.decisions_keep_ms is {}: at least 30000 (an expected-version append waits up to 30 s for its decision)",
                self.store.decisions_keep_ms
            )));
        }
        if self.role != Role::All && self.log.backend != LogBackend::Kafka {
            return Err(crate::Error::Config(format!(
                "role {} needs the Kafka log (--log kafka): the embedded log lives in one process",
                self.role.name()
            )));
        }
        if self.log.backend == LogBackend::Kafka {
            let k = &self.log.kafka;
            if k.brokers.trim().is_empty() {
                return Err(crate::Error::Config("log.kafka.brokers is empty".into()));
            }
            let prefix_ok = !k.topic_prefix.is_empty()
                && k.topic_prefix.len() <= 100
                && k.topic_prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !prefix_ok {
                return Err(crate::Error::Config(format!(
                    "log.kafka.topic_prefix {:?} must be 1–100 of [a-zA-Z0-9._-]",
                    k.topic_prefix
                )));
            }
            if k.replication_factor < 1 && k.replication_factor != -1 {
                return Err(crate::Error::Config(
                    "log.kafka.replication_factor must be ≥ 1 (or -1 for the broker default)"
                        .into(),
                ));
            }
        }
        let l = &self.limits;
        if l.max_body_bytes == 0
            || l.max_event_bytes == 0
            || l.max_batch_events == 0
            || l.max_concurrent_requests == 0
            || l.query_timeout_ms == 0
            || l.query_memory_bytes == 0
        {
            return Err(crate::Error::Config("limits must be positive".into()));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(crate::Error::Config(
                "tls needs both `cert` and `key` (or neither)".into(),
            ));
        }
        if self.cluster.listen.is_some() {
            if self.log.backend != LogBackend::Kafka {
                return Err(crate::Error::Config(
                    "cluster.listen needs the Kafka log (--log kafka): an embedded node holds every partition itself".into(),
                ));
            }
            if self.cluster.secret.as_deref().is_none_or(|s| s.len() < 16) {
                return Err(crate::Error::Config(
                    "cluster.listen needs cluster.secret (STRATA_CLUSTER_SECRET), at least 16 characters, the same on every node".into(),
                ));
            }
        }
        crate::auth::Auth::new(&self.auth)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(&path, "data_dir = \"/x\"\nhttp = \"0.0.0.0:1\"\n[store]\nblock_rows = 10\n[log.embedded]\nsegment_bytes = 1000\n").unwrap();
        let o = Overrides {
            config: Some(path.clone()),
            http: Some("127.0.0.1:9".into()),
            ..Overrides::default()
        };
        let c = Config::load(&o).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        assert_eq!(c.http, "127.0.0.1:9");
        assert_eq!(c.store.block_rows, 10);
        assert_eq!(c.log.embedded.segment_bytes, 1000);
        assert_eq!(c.default_partitions, 4);

        std::fs::write(&path, "dat_dir = \"/x\"").unwrap();
        let err = Config::load(&o).unwrap_err().to_string();
        assert!(err.contains("unknown field `dat_dir`"), "{err}");
        let bad = Overrides {
            default_partitions: Some(0),
            ..Overrides::default()
        };
        assert!(Config::load(&bad).is_err());

        // Decisions are kept at least as long as an append waits for one.
        std::fs::write(&path, "[store]\ndecisions_keep_ms = 1000\n").unwrap();
        let err = Config::load(&o).unwrap_err().to_string();
        assert!(err.contains("store.decisions_keep_ms is 1000"), "{err}");
        std::fs::write(&path, "[store]\ndecisions_keep_ms = 60000\n").unwrap();
        assert_eq!(Config::load(&o).unwrap().store.decisions_keep_ms, 60_000);
    }

    #[test]
    fn kafka_settings_roles_and_pass_through_properties() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(
            &path,
            "role = \"store\"\n[log]\nbackend = \"kafka\"\n[log.kafka]\nbrokers = \"b1:9092,b2:9092\"\n\
             [log.kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"PLAIN\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(path.clone()),
            kafka_group_id: Some("g2".into()),
            ..Overrides::default()
        };
        let c = Config::load(&o).unwrap();
        assert_eq!(c.role, Role::Store);
        assert_eq!(c.log.backend, LogBackend::Kafka);
        assert_eq!(c.log.kafka.group_id, "g2");
        let client = c.log.kafka.client_config();
        assert_eq!(client.get("bootstrap.servers"), Some("b1:9092,b2:9092"));
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(client.get("sasl.mechanisms"), Some("PLAIN"));

        // Roles other than `all` need Kafka; a bad topic prefix is refused.
        let ingest_embedded = Overrides {
            role: Some(Role::Ingest),
            ..Overrides::default()
        };
        let err = Config::load(&ingest_embedded).unwrap_err().to_string();
        assert!(err.contains("needs the Kafka log"), "{err}");
        let bad_prefix = Overrides {
            config: Some(path),
            kafka_topic_prefix: Some("no spaces".into()),
            ..Overrides::default()
        };
        assert!(Config::load(&bad_prefix).is_err());
    }
}
