//! A counting global allocator: [`System`] plus the largest single request made since the last
//! [`begin`], so the runner can check that a parser allocates no more than its input justifies.
//!
//! The fuzz binary and the smoke tests install it with
//! `#[global_allocator] static A: itera_fuzz::alloc::Counting = itera_fuzz::alloc::Counting;`.
//! Without it installed, [`largest`] stays 0 and the allocation check passes vacuously
//! ([`installed`] says which).
//!
//! A request past [`HARD_CAP`] is refused (null, so the process aborts unless the caller used
//! `try_reserve`), after writing the current input to stderr: the machine must not swap itself to
//! death on a parser that trusts a length field, and the finding must still name its input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// Requests larger than this are refused outright (see the module docs).
pub const HARD_CAP: usize = 1 << 30;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);
static INPUT_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static INPUT_LEN: AtomicUsize = AtomicUsize::new(0);

pub struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Records a request; false when it is past [`HARD_CAP`] (reported, then refused).
#[inline]
fn note(size: usize) -> bool {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    LARGEST.fetch_max(size, Ordering::Relaxed);
    if size > HARD_CAP {
        report_refusal(size);
        return false;
    }
    true
}

/// Writes the refused size and the current input (hex, first 256 bytes) to stderr without
/// allocating: we are inside the allocator.
#[cold]
fn report_refusal(size: usize) {
    let mut buf = [0u8; 1024];
    let mut w = &mut buf[..];
    let (ptr, len) = (INPUT_PTR.load(Ordering::SeqCst), INPUT_LEN.load(Ordering::SeqCst));
    let _ = write!(w, "\nitera-fuzz: refused an allocation of {size} bytes (input of {len} bytes): ");
    if !ptr.is_null() {
        // SAFETY: `begin` stored a slice that the runner keeps alive until `end`.
        let input = unsafe { std::slice::from_raw_parts(ptr, len) };
        for b in input.iter().take(256) {
            let _ = write!(w, "{b:02x}");
        }
    }
    let _ = writeln!(w);
    let used = 1024 - w.len();
    let _ = std::io::stderr().write_all(&buf[..used]);
}

/// Starts one execution on `input`: resets the largest request.
pub fn begin(input: &[u8]) {
    INPUT_PTR.store(input.as_ptr() as *mut u8, Ordering::SeqCst);
    INPUT_LEN.store(input.len(), Ordering::SeqCst);
    LARGEST.store(0, Ordering::SeqCst);
}

/// Ends the execution begun by [`begin`]; returns the largest single request made during it.
pub fn end() -> usize {
    INPUT_PTR.store(std::ptr::null_mut(), Ordering::SeqCst);
    INPUT_LEN.store(0, Ordering::SeqCst);
    LARGEST.load(Ordering::SeqCst)
}

/// Whether [`Counting`] is this process's global allocator (it has seen an allocation).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// The most one execution may allocate at once: 64 MiB plus 64 bytes per input byte.
pub fn limit(input_len: usize) -> usize {
    (64 << 20) + 64 * input_len
}
