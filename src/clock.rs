//! The wall clock, for the stamps in backup names (`FILE.bak-STAMP`), journals, plans and
//! migration records. A clock before 1970 gives 0 rather than an error: a stamp is a label,
//! and nothing depends on its value beyond ordering the records of one host.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
