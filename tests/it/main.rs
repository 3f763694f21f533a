//! Integration tests: one binary, one shared slapd (started by the harness on loopback), one
//! subtree per test. See tests/it/common.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]
mod ad;
mod apps;
mod check_config;
mod common;
mod daemon;
mod docs;
mod groups;
mod incremental;
mod lifecycle;
mod safety;
mod security;
mod sync;
mod txn;
