//! The ring buffer's size: what the front ends default to and what
//! `--ring-size` accepts, in one place for the recorder and the agent.

/// The ring buffer size that holds half a second of samples from every CPU
/// at `frequency`: the reader drains it every 200 ms and is woken at a
/// quarter full, so that leaves room for a busy moment without mapping
/// megabytes nobody uses. A power of two between 256 KiB and 64 MiB.
pub fn default_ring_bytes(frequency: u64) -> u32 {
    ring_bytes_for(frequency, 500)
}

/// The ring buffer size that holds `millis` ms of samples from every CPU
/// at `frequency`, as a power of two between 256 KiB and 64 MiB. Its
/// pages are mapped twice into our address space (so a record can be read
/// across the wrap), so each byte counts twice in our RSS once written.
pub fn ring_bytes_for(frequency: u64, millis: u64) -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let record = std::mem::size_of::<profiler_ebpf::abi::Sample>() as u64 + 8;
    let want = cpus * frequency.max(1) * record * millis / 1000;
    want.clamp(256 << 10, 64 << 20)
        .next_power_of_two()
        .min(64 << 20) as u32
}

/// `--ring-size KIB`: a power of two between 4 KiB and 1 GiB, as the
/// kernel's BPF ring buffer requires (a multiple of the page size, a power
/// of two).
pub fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let kib: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err("the ring size must be a power of two between 4 and 1048576 KiB".into());
    }
    Ok(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_kib("4"), Ok(4));
        assert_eq!(parse_ring_kib("1048576"), Ok(1 << 20));
        for bad in ["0", "2", "6", "2097152", "x", "-4"] {
            assert!(parse_ring_kib(bad).is_err(), "{bad}");
        }
        let b = default_ring_bytes(100);
        assert!(b.is_power_of_two() && (256 << 10..=64 << 20).contains(&b));
        assert_eq!(ring_bytes_for(1_000_000, 10_000), 64 << 20);
    }
}
