//! End-to-end tests of the `strata` binary: one test binary, one module per area.

mod common;

mod analysts;
mod api;
mod bench;
mod cli;
mod cluster;
mod cluster_views;
mod columnar;
mod compose;
mod corruption;
mod crash;
mod determinism;
mod disk;
mod durable;
mod faults;
mod kafka;
mod kafka_faults;
mod limits;
mod retention;
mod schema;
mod security;
mod subscriptions;
mod versions;
mod views;
