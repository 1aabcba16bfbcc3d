//! The error type of the store crate.

/// Errors of store nodes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The fjall database failed.
    #[error("store i/o error: {0}")]
    Storage(#[from] fjall::Error),
    /// Encoding or decoding a columnar block failed.
    #[error("store block error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The log (or its catalog) failed or refused.
    #[error(transparent)]
    Log(#[from] strata_proto::Error),
    /// Stored bytes that do not decode, with where they are.
    #[error("corrupt shard data at {location}: {reason}")]
    Corrupt {
        /// Shard and key.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// A view or stream of that name exists.
    #[error("a view named {0} exists already")]
    ViewExists(String),
    /// No view of that name.
    #[error("no materialized view named {0}")]
    UnknownView(String),
    /// A view's maintenance failed.
    #[error("view maintenance failed: {0}")]
    View(String),
    /// A state the store's own logic should never reach (a bug), with what was found.
    #[error("store invariant broken: {0}")]
    Invariant(String),
}

impl Error {
    /// A failed read of `keyspace` (the shard `shard`, reading `what`): damage that fjall found
    /// by checksum, or a block that does not decode, becomes [`Error::Corrupt`] naming the shard,
    /// what was read and the keyspace's directory; other failures stay [`Error::Storage`].
    pub(crate) fn reading(
        e: fjall::Error,
        shard: &str,
        keyspace: &fjall::Keyspace,
        what: impl FnOnce() -> String,
    ) -> Self {
        use fjall::Error as F;
        use fjall::LsmError as L;
        let damaged = match &e {
            F::Storage(l) => matches!(
                l,
                L::ChecksumMismatch { .. }
                    | L::Decompress(_)
                    | L::InvalidHeader(_)
                    | L::InvalidTrailer
                    | L::InvalidTag(_)
                    | L::Unrecoverable
            ),
            F::Decompress(_) | F::InvalidTrailer | F::InvalidTag(_) => true,
            _ => false,
        };
        if damaged {
            metrics::counter!("strata_store_corruption_total").increment(1);
            Error::Corrupt {
                location: format!(
                    "shard {shard}, {} (files under {})",
                    what(),
                    keyspace.path().display()
                ),
                reason: format!("{e:?}; the shard can be rebuilt from the log (see the README)"),
            }
        } else {
            Error::Storage(e)
        }
    }
}

impl From<Error> for strata_proto::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Log(e) => e,
            other => strata_proto::Error::Store(other.to_string()),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
