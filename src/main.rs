//! The `dirbridge` binary: a thin shell over the library.

// mimalloc: a large sync allocates and frees millions of small strings; glibc's malloc spent a
// third of the planner's time consolidating and unlinking free chunks (perf, 100,000 records).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod allocator;

fn main() {
    allocator::defaults();
    dirbridge::no_transparent_huge_pages();
    std::process::exit(dirbridge::cli::main());
}
