//! Process-level settings that make candle faster: on the CPU, and on an NVIDIA GPU.

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

/// Stops cudarc's per-buffer stream-synchronisation events on `device` (an NVIDIA GPU; any other
/// device: a no-op). candle runs a device's ops on a stream of its own, which puts cudarc in its
/// multi-stream mode: every buffer then gets CUDA events at allocation and every kernel launch
/// records and waits on an event per operand, host work of the order of the small kernels
/// themselves. Nothing here uses a second stream on a device (data-parallel ranks each have their
/// own device and exchange through host copies, which wait for the stream), so the events order
/// nothing. Buffers allocated before the call keep theirs: call it before building the model.
/// The trainer and the throughput bench call it with `Kernels::device_ops` (on an NVIDIA GPU by
/// default; docs/gpu.md measures the two together).
pub fn single_stream(device: &candle_core::Device) {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        // SAFETY: cudarc's conditions (no buffer freed or used on another stream before its
        // work on the first finishes, no concurrent writes from two streams) hold trivially
        // with one stream per device, as above.
        unsafe { d.disable_event_tracking() };
    }
    let _ = device;
}
