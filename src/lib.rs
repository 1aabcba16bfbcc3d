//! The `strata` binary package: configuration, the HTTP API, node wiring and the CLI clients.
//!
//! The crates below do the work (`strata-ingest`, `strata-store`, `strata-views`); this package
//! parses configuration, builds the parts and serves them. [`node::run`] runs a node until its
//! shutdown token is cancelled; `main.rs` only parses the command line and handles signals.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod node;

pub use config::Config;
pub use error::{Error, Result};
