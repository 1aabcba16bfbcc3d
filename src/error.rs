//! The error type of a node's start-up, run and shutdown (request errors are the service
//! layer's, [`crate::service::Error`]).

/// Errors of starting, running and stopping a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration that cannot be used.
    #[error("configuration error: {0}")]
    Config(String),
    /// An I/O failure while starting or serving.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A part of the node (log, store, SQL engine) failed to open or to close.
    #[error(transparent)]
    Part(#[from] crate::service::Error),
    /// The node-to-node service of cluster queries failed to start or to serve.
    #[error(transparent)]
    Cluster(#[from] strata_cluster::Error),
    /// The node had to stop: a part of it can no longer work until it is started again.
    #[error("the node stopped: {0}")]
    Fatal(String),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

macro_rules! part_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Part(e.into())
            }
        }
    )*};
}

part_error!(
    strata_ingest::Error,
    strata_store::Error,
    strata_views::Error,
    strata_proto::Error
);

/// Result alias of this package.
pub type Result<T, E = Error> = std::result::Result<T, E>;
