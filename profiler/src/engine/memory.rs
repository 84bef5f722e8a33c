//! Our own memory, as far as the caches' budgets need to know it.

/// What symbolizing a binary makes us hold: its parsed state on the heap,
/// and the pages of its debug sections, read through a mapping of the
/// file, in our RSS (`/proc/self/statm`'s resident shared pages). `None`
/// where either cannot be read.
pub fn in_use() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(2)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    heap_in_use()?.checked_add(pages.checked_mul(page)?)
}

/// Bytes handed out by the allocator, in every arena and in blocks it
/// mapped on its own; `None` where glibc is not there to say.
pub fn heap_in_use() -> Option<usize> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 has no preconditions; it only reads the
        // allocator's statistics under its locks.
        let m = unsafe { libc::mallinfo2() };
        Some(m.uordblks.saturating_add(m.hblkhd))
    }
    #[cfg(not(target_env = "gnu"))]
    {
        None
    }
}

/// Hands freed heap memory back to the system. glibc keeps what a burst of
/// short-lived processes made us allocate (per-thread arenas), so without
/// this a long-running process's RSS would stay at its high-water mark
/// after the burst has aged out.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
