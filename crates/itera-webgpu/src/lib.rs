//! Both models on the GPU through `wgpu` and WGSL compute kernels: natively (Vulkan, Metal, DX12;
//! lavapipe, Mesa's software Vulkan, in the tests) and in the browser (WebGPU). A second forward
//! pass beside `itera_model::Model`'s, kept honest by golden-logit tests against it
//! (`tests/parity.rs`), not by sharing code.
//!
//! - [`Gpu`]: the adapter, the device and every compiled kernel (`src/kernels/*.wgsl`, dispatched
//!   from `src/ops.rs`).
//! - [`GpuModel`]: one model's weights, uploaded once from the same tensors (and Hugging Face
//!   names) the exporter writes, its decoding state (the baseline's KV cache, Itera-Lite's conv
//!   windows and SSM states) kept on the GPU, and one recorded plan of dispatches per number of
//!   new tokens, reused from token to token (buffers and bind groups included). Only the logits
//!   asked for are read back.
//!
//! f32 throughout. Batch 1 (the page generates one sequence per model). Limits: head dim ≤ 256,
//! state size ≤ 64, experts ≤ 64; each KV cache and every tensor but the matrices within the
//! adapter's storage-binding limit (matrices larger than it are uploaded in chunks of rows). Any of
//! these, a missing adapter or a lost device is a [`GpuError`], so that the caller falls back to
//! the CPU path.

mod model;
mod ops;

pub use model::GpuModel;

use std::sync::{Arc, Mutex};

/// Everything that can go wrong on the GPU path, by cause: the page shows it and falls back to
/// the CPU.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// (The adapter request's own words are kept for the debug form: a list of backends.)
    #[error("no GPU adapter is available (this browser or machine offers none)")]
    NoAdapter(String),
    #[error("the GPU device could not be opened: {0}")]
    Device(String),
    #[error("this model does not fit this GPU: {0}")]
    Unsupported(String),
    #[error("the GPU failed: {0}")]
    Runtime(String),
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, GpuError>;

/// An opened GPU: adapter, device, queue and the compiled kernels. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    pub(crate) kernels: Arc<ops::Kernels>,
    /// Validation and out-of-memory errors raised by the device since the last check.
    errors: Arc<Mutex<Vec<String>>>,
    /// Why the device was lost, once it is.
    lost: Arc<Mutex<Option<String>>>,
}

impl Gpu {
    /// Opens the default adapter (high performance where there is a choice). `WGPU_BACKEND`
    /// (e.g. `vulkan`, `gl`) narrows the native backends.
    pub async fn new() -> Result<Gpu> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        // Everything the adapter allows: the weights need large storage bindings, not features.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("itera-webgpu"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::Device(e.to_string()))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = sink.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        let kernels = Arc::new(ops::Kernels::compile(&device));
        let gpu = Gpu { device, queue, info, limits, kernels, errors, lost };
        gpu.check("compiling the kernels")?;
        Ok(gpu)
    }

    /// The adapter's name and backend, as the page's badge shows them (e.g. "llvmpipe (Vulkan)").
    /// A browser may keep the adapter's name to itself: then it reads "unnamed adapter".
    pub fn adapter_name(&self) -> String {
        let name = if self.info.name.trim().is_empty() { "unnamed adapter" } else { self.info.name.trim() };
        format!("{name} ({:?})", self.info.backend)
    }

    /// Whether the adapter is a software one (lavapipe, SwiftShader): its speed means nothing.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The largest storage buffer one kernel may bind, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// This GPU with a lower binding limit than the adapter's, as a device with smaller limits
    /// would have: models uploaded through it split their large weights into more chunks (the
    /// tests use it to exercise the split on any adapter). Never raises the limit.
    pub fn with_binding_limit(&self, bytes: u64) -> Gpu {
        let mut gpu = self.clone();
        let bytes = bytes.min(self.max_binding_bytes());
        gpu.limits.max_storage_buffer_binding_size = bytes;
        gpu.limits.max_buffer_size = bytes;
        gpu
    }

    /// Gives the device up at once: its memory is freed and every model on it fails from then on
    /// with a lost-device error (what the browser does to a page's device under memory pressure;
    /// the tests use it to check the fallback to the CPU).
    pub fn destroy(&self) {
        self.device.destroy();
    }

    /// Errors raised since the last call, or a lost device, as one [`GpuError`].
    pub(crate) fn check(&self, doing: &str) -> Result<()> {
        if let Some(why) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(GpuError::Runtime(format!("the device was lost while {doing} ({why})")));
        }
        let errs: Vec<String> = self.errors.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
        if let Some(first) = errs.first() {
            return Err(GpuError::Runtime(format!("{doing}: {first}")));
        }
        Ok(())
    }
}
