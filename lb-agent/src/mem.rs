//! The agent's own memory: how much is resident, and giving freed memory back.

/// This process's resident memory in MiB (`/proc/self/statm`; 0 when unreadable).
pub fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    (pages * page) as f64 / (1024.0 * 1024.0)
}

/// Returns the allocator's free pages to the kernel. glibc keeps freed heap memory that
/// lies between live allocations; a cold start frees tens of MiB that way (the objects
/// of the first list, the first sync's requests, the first status burst), which would
/// otherwise stay in the agent's RSS. Called after those bursts, and periodically from
/// the neighbour reader's thread (off the loop that applies changes).
pub fn give_back_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
