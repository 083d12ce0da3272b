//! Process-level settings that make candle faster on the CPU.

/// Keeps freed tensor buffers in the heap instead of returning them to the kernel.
///
/// candle allocates a fresh buffer for every op's output. glibc serves large allocations with
/// mmap and gives them back with munmap, so each op pays page faults and page clearing for its
/// output: about a quarter of a training step (docs/candle.md). Raising the mmap and trim
/// thresholds keeps those pages mapped and reused (measured here: 1033 → 1791 train tok/s for the
/// baseline demo at 1 thread). The same as `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:
/// glibc.malloc.trim_threshold=4294967296`, but set from inside the process. Call it once, early,
/// in a binary. A no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
