//! The capture's clock: CLOCK_MONOTONIC, what `bpf_ktime_get_ns` reads,
//! and its relation to wall-clock time for profile headers.

/// CLOCK_MONOTONIC now, in ns.
pub fn mono_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock ns since the epoch of a monotonic instant.
pub fn mono_to_unix_ns(mono: u64) -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    unix - (mono_now() as i64 - mono as i64)
}
