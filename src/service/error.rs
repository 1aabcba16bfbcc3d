//! The one error type of the service layer, and the category of each error that every front end
//! maps to its own status (HTTP code, SQLSTATE, gRPC code) in one place.

/// Errors of a service call: refused input or rights, and the failures of the parts below.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The write path refused or failed.
    #[error(transparent)]
    Ingest(#[from] strata_ingest::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] strata_store::Error),
    /// SQL refused or failed.
    #[error(transparent)]
    Sql(#[from] strata_views::Error),
    /// The log or the catalog refused or failed.
    #[error(transparent)]
    Log(#[from] strata_proto::Error),
    /// A parameter or body that does not make sense.
    #[error("{0}")]
    BadRequest(String),
    /// No such resource (or endpoint).
    #[error("{0}")]
    NotFound(String),
    /// It conflicts with what exists (a subscription consumed elsewhere, defined otherwise).
    #[error("{0}")]
    Conflict(String),
    /// A conditional append whose expected versions did not hold: nothing of it was stored.
    #[error("{message}")]
    VersionConflict {
        /// What did not hold, in words.
        message: String,
        /// Each key of the request: expected and actual version.
        keys: Vec<strata_proto::KeyDecision>,
    },
    /// A request over a configured size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A read waited for a consistency token longer than it may.
    #[error("{0}")]
    Timeout(String),
    /// The request needs a role this node does not have (e.g. SQL on an ingest node).
    #[error("{0}")]
    WrongRole(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the right to do this.
    #[error("{0}")]
    Forbidden(String),
    /// Too many requests at once; retry shortly.
    #[error("{0}")]
    Busy(String),
    /// A query ran longer than its time limit.
    #[error("query over its resource limit: {0}")]
    TimeLimit(String),
}

/// What kind of failure an [`Error`] is, whatever protocol reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request does not make sense (parameters, names, types).
    Invalid,
    /// SQL that does not parse.
    Syntax,
    /// SQL naming a table that does not exist.
    UnknownTable,
    /// SQL naming a column that does not exist.
    UnknownColumn,
    /// A statement that would write or reach server files (strata SQL is read-only).
    ReadOnly,
    /// Something it names does not exist.
    NotFound,
    /// It conflicts with what exists (a name taken, another partition count, a rebuild running).
    Conflict,
    /// Over a size limit (body, batch, event).
    TooLarge,
    /// Waiting for a consistency token took too long.
    Timeout,
    /// Another node role serves this.
    WrongRole,
    /// No valid credentials.
    Unauthenticated,
    /// Not allowed for these credentials.
    Forbidden,
    /// Too many requests at once.
    Busy,
    /// A part the request needs cannot be reached now (brokers, a partition's holder).
    Unavailable,
    /// Offsets the log's retention deleted.
    Gone,
    /// The log's disk is full.
    StorageFull,
    /// The query needed more memory than allowed.
    ResourcesExhausted,
    /// The query ran longer than its time limit.
    TimeLimit,
    /// A failure of the server, not of the request.
    Internal,
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> Kind {
        match self {
            Error::BadRequest(_) => Kind::Invalid,
            Error::NotFound(_) => Kind::NotFound,
            Error::Conflict(_) | Error::VersionConflict { .. } => Kind::Conflict,
            Error::PayloadTooLarge(_) => Kind::TooLarge,
            Error::Timeout(_) => Kind::Timeout,
            Error::WrongRole(_) => Kind::WrongRole,
            Error::Unauthorized(_) => Kind::Unauthenticated,
            Error::Forbidden(_) => Kind::Forbidden,
            Error::Busy(_) => Kind::Busy,
            Error::TimeLimit(_) => Kind::TimeLimit,
            Error::Log(e) => log_kind(e),
            Error::Ingest(e) => match e {
                strata_ingest::Error::Log(e) => log_kind(e),
                strata_ingest::Error::TooManyEvents { .. }
                | strata_ingest::Error::EventTooLarge { .. } => Kind::TooLarge,
                strata_ingest::Error::BadEvent { .. } | strata_ingest::Error::EmptyBatch => {
                    Kind::Invalid
                }
            },
            Error::Store(e) => store_kind(e),
            Error::Sql(e) => match e {
                strata_views::Error::ReadOnly(_) => Kind::ReadOnly,
                strata_views::Error::Invalid(_) => Kind::Invalid,
                strata_views::Error::Syntax(_) => Kind::Syntax,
                strata_views::Error::UnknownTable(_) => Kind::UnknownTable,
                strata_views::Error::UnknownColumn(_) => Kind::UnknownColumn,
                strata_views::Error::ResourcesExhausted(_) => Kind::ResourcesExhausted,
                strata_views::Error::Forbidden(_) => Kind::Forbidden,
                strata_views::Error::Conflict(_) => Kind::Conflict,
                strata_views::Error::Unavailable(_) => Kind::Unavailable,
                strata_views::Error::Timeout(_) => Kind::Timeout,
                strata_views::Error::WrongRole(_) => Kind::WrongRole,
                strata_views::Error::Execution(_) | strata_views::Error::Corrupt(_) => {
                    Kind::Internal
                }
                strata_views::Error::Store(e) => store_kind(e),
            },
        }
    }
}

fn store_kind(e: &strata_store::Error) -> Kind {
    match e {
        strata_store::Error::Log(e) => log_kind(e),
        strata_store::Error::ViewExists(_) => Kind::Conflict,
        strata_store::Error::UnknownView(_) => Kind::NotFound,
        _ => Kind::Internal,
    }
}

fn log_kind(e: &strata_proto::Error) -> Kind {
    use strata_proto::Error as E;
    match e {
        E::InvalidName { .. }
        | E::InvalidToken(_)
        | E::InvalidCondition(_)
        | E::InvalidField { .. }
        | E::InvalidPartitions(_)
        | E::UnknownPartition { .. } => Kind::Invalid,
        E::UnknownStream(_) => Kind::NotFound,
        E::PartitionMismatch { .. } | E::FieldConflict { .. } => Kind::Conflict,
        E::Unavailable(_) => Kind::Unavailable,
        E::OffsetGone(_) => Kind::Gone,
        E::StorageFull(_) => Kind::StorageFull,
        E::Corrupt(_) | E::Io { .. } | E::Store(_) => Kind::Internal,
    }
}

/// Result alias of the service layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
