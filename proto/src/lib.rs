//! Wire and storage types shared by every strata crate.
//!
//! This crate holds no I/O: the event envelope ([`Event`], [`Record`]), validated stream names
//! ([`StreamName`]), Kafka-compatible key partitioning ([`partition_for_key`]), the binary record
//! encoding used by the embedded log and the store's tail ([`codec`]), and the [`Log`] contract that
//! the write path (ingest) and the store nodes (store) share.

pub mod cluster;
pub mod codec;
pub mod condition;
mod error;
mod event;
pub mod fields;
#[cfg(test)]
mod fuzz;
mod line;
mod log;
mod name;
mod partition;
mod token;

pub use cluster::{Feed, Held, HeldPartition, Membership, NodeStatus, Stall};
pub use condition::{BatchDecision, Condition, Expect, KeyDecision};
pub use error::{Error, Result};
pub use event::{Event, Record};
pub use fields::{FieldDef, FieldSpec, FieldType, FieldValue};
pub use line::{Line, civil_from_days, format_time_ms, needs_escape, put_digits, write_time_ms};
pub use log::{
    Catalog, IdLookup, Log, LogReader, OffsetRange, ShardSink, SharedView, StreamInfo,
    SubscriptionCatalog, SubscriptionConsumer, SubscriptionState, ViewCatalog,
};
pub use name::StreamName;
pub use partition::{murmur2, partition_for_key};
pub use token::ConsistencyToken;
