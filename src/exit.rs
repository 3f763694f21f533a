//! Exit codes (design §4), the first that applies wins.

/// Configuration error (EX_CONFIG).
pub const CONFIG: i32 = 78;
/// Usage error (clap's own code).
pub const USAGE: i32 = 2;
/// The HR export could not be read at all (EX_NOINPUT): nothing was written.
pub const NO_INPUT: i32 = 66;
/// Another run holds the mirror's lock (EX_TEMPFAIL).
pub const LOCKED: i32 = 75;
/// A safety gate refused the plan: nothing was written.
pub const REFUSED: i32 = 4;
/// A target was unreachable (EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
/// Finished, but some records or entries were quarantined.
pub const QUARANTINED: i32 = 3;
/// An internal or local I/O error (EX_SOFTWARE / EX_IOERR).
pub const SOFTWARE: i32 = 70;
/// Done.
pub const OK: i32 = 0;
