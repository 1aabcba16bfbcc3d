//! The `strata` binary package: configuration, the service layer and its front ends, node wiring
//! and the CLI clients.
//!
//! The crates below do the work (`strata-ingest`, `strata-store`, `strata-views`); this package
//! parses configuration, builds the parts, puts the [`service`] layer over them and serves it
//! through its front ends ([`http`]). [`node::run`] runs a node until its shutdown token is
//! cancelled; `main.rs` only parses the command line and handles signals.

pub mod allocator;
pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod flight;
pub mod http;
pub mod node;
pub mod pg;
pub mod service;

pub use config::Config;
pub use error::{Error, Result};
