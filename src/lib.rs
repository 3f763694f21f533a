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
/// first thing. With huge pages, every 2 MiB the heap grows into is faulted and zeroed at once:
/// a 10,000-person churn run peaked at 78 MiB resident instead of 45 and spent 0.14-0.22 s of
/// its 0.40-0.46 s in the kernel zeroing pages (0.05-0.10 s without); at 100,000 people 1.1 s
/// against 0.5 s (docs/performance.md). mimalloc asked for them on its arenas (madvise) until
/// it was built with `no_thp` (Cargo.toml); this still covers a kernel set to `always`. The flag is
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

/// Drop `x` on a thread of its own, at low priority: a run's large structures (at 100,000 people
/// ~250 MB in millions of allocations, 0.07-0.1 s to free and hand back) are freed after the run
/// has returned rather than before it; a command that exits meanwhile does not wait for them, and
/// the daemon gets the memory back while it is idle. Where no thread can be started, the closure
/// and `x` with it are dropped here.
pub(crate) fn drop_beside<T: Send + 'static>(x: T) {
    let _ = std::thread::Builder::new()
        .name("drop-beside".into())
        .spawn(move || {
            background_thread();
            drop(x);
        });
}

/// From this many items on, [`in_two_halves`] uses a second thread.
pub(crate) const TWO_THREADS_FROM: usize = 4096;

/// `f` over `items` in two halves, the second on another thread when there are enough items to
/// be worth it; the results in the items' order. For the CPU-bound steps of a large run that
/// have the second core to themselves (decoding the mirror's snapshot, digesting the export's
/// records against it).
pub(crate) fn in_two_halves<T: Send, R: Send>(
    mut items: Vec<T>,
    f: impl Fn(Vec<T>) -> Vec<R> + Sync,
) -> Vec<R> {
    if items.len() < TWO_THREADS_FROM {
        return f(items);
    }
    let second = items.split_off(items.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| f(second));
        let mut out = f(items);
        match other.join() {
            Ok(rest) => out.extend(rest),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        out
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_halves_keep_the_items_order_below_and_above_the_threshold() {
        for n in [
            0,
            7,
            super::TWO_THREADS_FROM - 1,
            super::TWO_THREADS_FROM * 3 + 1,
        ] {
            let items: Vec<usize> = (0..n).collect();
            let doubled = super::in_two_halves(items, |half| {
                half.into_iter().map(|i| i * 2).collect::<Vec<_>>()
            });
            assert_eq!(
                doubled,
                (0..n).map(|i| i * 2).collect::<Vec<_>>(),
                "{n} items"
            );
        }
    }

    #[test]
    fn drop_beside_frees_the_value_on_another_thread() {
        struct Tell(std::sync::mpsc::Sender<Option<String>>);
        impl Drop for Tell {
            fn drop(&mut self) {
                let _ = self
                    .0
                    .send(std::thread::current().name().map(str::to_string));
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        super::drop_beside(Tell(tx));
        let by = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the value is dropped");
        assert_eq!(by.as_deref(), Some("drop-beside"));
    }
}
