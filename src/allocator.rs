//! mimalloc's settings, made first thing by the binary and by the planner example (which
//! includes this file: the library itself has no unsafe code).

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v3: the 16th option; libmimalloc-sys names no
/// constant for it). The test below checks that this number is the purge delay.
#[cfg(not(feature = "system-alloc"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Give freed memory back to the system at once, as the shipped units do with
/// `MIMALLOC_PURGE_DELAY=0`, unless that variable says otherwise: mimalloc 3 keeps the pages a
/// run frees for a second, and a run frees large buffers (the mirror's rows once decoded, the
/// export's bytes once parsed) while its live data still grows. A 100,000-person churn `sync`
/// peaks at 260 instead of 280–286 MiB in the same time (docs/performance.md). mimalloc read its
/// variables when the process was loaded, so the variable, when set, already took effect.
#[cfg(not(feature = "system-alloc"))]
#[allow(unsafe_code)]
pub fn defaults() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores a value in mimalloc's option table (no pointer is
        // passed); the option and the value are valid for this mimalloc (test below).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
    }
}

#[cfg(feature = "system-alloc")]
pub fn defaults() {}

#[cfg(all(test, not(feature = "system-alloc")))]
mod tests {
    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_is_the_option_set_at_start_up() {
        // SAFETY: reading and setting an option of the allocator in use, by its number.
        let read = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        // (the test harness does not run main: what mimalloc starts with is its default or the
        // variable; 1000 ms is mimalloc 3's default purge delay, and no other option's)
        let at_load = read();
        match std::env::var("MIMALLOC_PURGE_DELAY") {
            Ok(v) => assert_eq!(at_load.to_string(), v.trim()),
            Err(_) => {
                assert_eq!(at_load, 1000, "option 15 is not mimalloc's purge delay");
                super::defaults();
                assert_eq!(read(), 0);
            }
        }
    }
}
