//! The `dirbridge` binary: a thin shell over the library.

// mimalloc: a large sync allocates and frees millions of small strings; glibc's malloc spent a
// third of the planner's time consolidating and unlinking free chunks (perf, 100,000 records).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // No transparent huge pages for this process. mimalloc asks for them on its arenas
    // (madvise), so every 2 MiB its heap grows into is faulted and zeroed at once: a
    // 10,000-person churn run peaked at 78 MiB resident instead of 45 and spent 0.14-0.22 s of
    // its 0.40-0.46 s in the kernel zeroing pages (0.05-0.10 s without); at 100,000 people
    // 1.1 s against 0.5 s (docs/performance.md). The flag is inherited by the programs a run
    // starts (password delivery, command applications), which only matters to their speed.
    // A kernel that refuses it only costs speed (and logging is not set up yet).
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    std::process::exit(dirbridge::cli::main());
}
