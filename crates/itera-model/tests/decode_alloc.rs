//! A decode step allocates nothing: every heap allocation of the process is counted (a global
//! allocator) while the decoder reads tokens. Its own binary without the test harness, so that no
//! other thread allocates meanwhile.

use candle_core::Device;
use itera_model::decode::Decoder;
use itera_model::{Config, Model, ModelKind, Preset};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() -> candle_core::Result<()> {
    for kind in [ModelKind::Baseline, ModelKind::IteraLite] {
        let cfg = Config::preset(kind, Preset::Tiny, 97);
        let (_, model) = Model::init(&cfg, 7, &Device::Cpu)?;
        let mut dec = Decoder::new(&model)?;
        dec.reserve(200);
        dec.step(3)?; // first use
        let before = ALLOCATIONS.load(Relaxed);
        let mut sum = 0f32;
        for t in 0..150u32 {
            sum += dec.step(t % 97)?[0];
        }
        let allocations = ALLOCATIONS.load(Relaxed) - before;
        std::hint::black_box(sum);
        println!("{kind:?}: {allocations} allocations in 150 decode steps");
        assert_eq!(allocations, 0, "{kind:?}: a decode step allocates");
    }
    println!("test decode_alloc ... ok");
    Ok(())
}
