//! Node configuration: defaults, then a TOML file, then `STRATA_*` environment variables and
//! command-line flags (clap reads both; a flag wins over its variable).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use strata_ingest::EmbeddedLogConfig;
use strata_store::StoreConfig;

/// Which log a node appends to and consumes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    /// Segment files under the data directory (the default, single node).
    #[default]
    Embedded,
}

/// Settings of the log.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// The backend.
    pub backend: LogBackend,
    /// Settings of the embedded log.
    pub embedded: EmbeddedLogConfig,
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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            max_event_bytes: 1 << 20,
            max_batch_events: 100_000,
        }
    }
}

/// Everything a node needs to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the log and the store keep their files.
    pub data_dir: PathBuf,
    /// Address of the HTTP API (`127.0.0.1:0` picks a free port).
    pub http: String,
    /// Partition count of streams created by a first append.
    pub default_partitions: u32,
    /// Request limits.
    pub limits: Limits,
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
            default_partitions: 4,
            limits: Limits::default(),
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
        config.check()?;
        Ok(config)
    }

    /// Refuses settings that cannot work.
    pub fn check(&self) -> crate::Result<()> {
        strata_proto::StreamInfo::check_partitions(self.default_partitions)
            .map_err(|e| crate::Error::Config(format!("default_partitions: {e}")))?;
        if self.store.block_rows == 0 || self.store.commit_max_events == 0 {
            return Err(crate::Error::Config(
                "store.block_rows and store.commit_max_events must be positive".into(),
            ));
        }
        if self.limits.max_body_bytes == 0
            || self.limits.max_event_bytes == 0
            || self.limits.max_batch_events == 0
        {
            return Err(crate::Error::Config("limits must be positive".into()));
        }
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
    }
}
