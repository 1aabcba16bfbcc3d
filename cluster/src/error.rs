//! The error type of the cluster crate.

/// Errors of setting up the cluster's node-to-node service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot be used (an address, a URL).
    #[error("{0}")]
    Config(String),
    /// The node-to-node listener failed.
    #[error("cluster listener: {0}")]
    Io(#[from] std::io::Error),
    /// The node-to-node server failed.
    #[error("cluster server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
