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

/// Turn transparent huge pages off for this process; the binary and the planner example call it
/// first thing. mimalloc asks for them on its arenas (madvise), so every 2 MiB its heap grows
/// into is faulted and zeroed at once: a 10,000-person churn run peaked at 78 MiB resident
/// instead of 45 and spent 0.14-0.22 s of its 0.40-0.46 s in the kernel zeroing pages (0.05-0.10
/// s without); at 100,000 people 1.1 s against 0.5 s (docs/performance.md). The flag is
/// inherited by the programs a run starts (password delivery, command applications), which only
/// matters to their speed. A kernel that refuses it only costs speed (logging is not set up yet).
pub fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// Lower the calling thread's scheduling priority (Linux: the nice value is each thread's own):
/// for work done beside the directory writes, which should take the CPU that the server and the
/// writing thread leave, not theirs. A refusal only costs speed.
pub fn background_thread() {
    #[cfg(target_os = "linux")]
    let _ = rustix::process::nice(19);
}
