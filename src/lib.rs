//! dirbridge: a directory synchronization daemon. HR export → SQLite mirror → mapping → plan →
//! safety gates → appliers → audit. The decision logic (mapping, plan, gates) is pure; I/O lives in
//! `source`, `mirror` and `target`.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod ad;
pub mod apps;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dn;
pub mod exit;
pub mod explain;
pub mod filter;
pub mod lifecycle;
pub mod mapping;
pub mod mirror;
pub mod model;
pub mod names;
pub mod plan;
pub mod posix;
pub mod run;
pub mod secret;
pub mod source;
#[cfg(test)]
mod story_tests;
pub mod target;
