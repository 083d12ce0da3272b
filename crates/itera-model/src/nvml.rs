//! A small reader of NVIDIA's NVML (native only): the GPU's name, its power draw, and its energy
//! counter, for measured energy per token on a GPU (the estimates of [`crate::energy`] are what
//! the page shows where nothing can be read).
//!
//! The library is loaded at run time (`libnvidia-ml.so.1`, which the NVIDIA driver installs;
//! `libnvidia-ml.so` as a fallback), so nothing links to NVIDIA at build time and machines without
//! the driver get an [`NvmlError`] naming the file tried, never a failed start.
//!
//! The energy counter (`nvmlDeviceGetTotalEnergyConsumption`, Volta and later) counts millijoules
//! since the driver was loaded and is refreshed only every few to tens of milliseconds: measure
//! windows of a second or more.

use libloading::Library;
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr};

/// The library names tried, in order.
#[cfg(windows)]
const LIBRARIES: [&str; 1] = ["nvml.dll"];
#[cfg(not(windows))]
const LIBRARIES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

/// NVML_DEVICE_NAME_V2_BUFFER_SIZE: the longest name NVML writes, its NUL included.
const NAME_BUFFER: usize = 96;

/// `nvmlReturn_t`: 0 is NVML_SUCCESS.
type NvmlReturn = c_int;
/// `nvmlDevice_t`: an opaque handle.
type Device = *mut c_void;

/// What went wrong, with what was tried.
#[derive(Debug, thiserror::Error)]
pub enum NvmlError {
    #[error("NVML not found: could not load {tried} ({reason})")]
    NotFound { tried: String, reason: String },
    #[error("NVML symbol {symbol} missing from {library} ({reason})")]
    Symbol { symbol: &'static str, library: &'static str, reason: String },
    #[error("NVML call {function} failed ({library}): {message} (NVML error {code})")]
    Call { function: &'static str, library: &'static str, code: i32, message: String },
}

/// One GPU, read through NVML. NVML is initialised by [`Nvml::open`] and shut down on drop.
pub struct Nvml {
    device: Device,
    library: &'static str,
    shutdown: unsafe extern "C" fn() -> NvmlReturn,
    error_string: unsafe extern "C" fn(NvmlReturn) -> *const c_char,
    total_energy: unsafe extern "C" fn(Device, *mut c_ulonglong) -> NvmlReturn,
    power_usage: unsafe extern "C" fn(Device, *mut c_uint) -> NvmlReturn,
    get_name: unsafe extern "C" fn(Device, *mut c_char, c_uint) -> NvmlReturn,
    // Last: the function pointers above point into it.
    _lib: Library,
}

impl Nvml {
    /// Loads NVML, initialises it and takes GPU `index` (NVML's order: `nvidia-smi`'s indices,
    /// which need not be the order of a graphics API's adapters on a machine of several GPUs).
    pub fn open(index: u32) -> Result<Nvml, NvmlError> {
        let mut failures = Vec::new();
        let mut loaded = None;
        for name in LIBRARIES {
            // SAFETY: loading NVIDIA's NVML runs its initialisers, which have no preconditions.
            match unsafe { Library::new(name) } {
                Ok(lib) => {
                    loaded = Some((lib, name));
                    break;
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        let Some((lib, library)) = loaded else {
            return Err(NvmlError::NotFound { tried: LIBRARIES.join(", then "), reason: failures.join("; ") });
        };
        // SAFETY (every `sym` below): the types are the C signatures of NVML's headers
        // (nvml.h): `nvmlReturn_t` is a C enum (int), `nvmlDevice_t` a pointer.
        fn sym<T: Copy>(lib: &Library, library: &'static str, symbol: &'static str) -> Result<T, NvmlError> {
            let mut name = symbol.as_bytes().to_vec();
            name.push(0);
            unsafe { lib.get::<T>(&name) }.map(|s| *s).map_err(|e| NvmlError::Symbol {
                symbol,
                library,
                reason: e.to_string(),
            })
        }
        let init: unsafe extern "C" fn() -> NvmlReturn = sym(&lib, library, "nvmlInit_v2")?;
        let shutdown: unsafe extern "C" fn() -> NvmlReturn = sym(&lib, library, "nvmlShutdown")?;
        let error_string: unsafe extern "C" fn(NvmlReturn) -> *const c_char = sym(&lib, library, "nvmlErrorString")?;
        let by_index: unsafe extern "C" fn(c_uint, *mut Device) -> NvmlReturn =
            sym(&lib, library, "nvmlDeviceGetHandleByIndex_v2")?;
        let total_energy = sym(&lib, library, "nvmlDeviceGetTotalEnergyConsumption")?;
        let power_usage = sym(&lib, library, "nvmlDeviceGetPowerUsage")?;
        let get_name = sym(&lib, library, "nvmlDeviceGetName")?;
        // SAFETY: no arguments. On failure NVML is not initialised, and there is nothing to shut down.
        let ret = unsafe { init() };
        failed(error_string, library, "nvmlInit_v2", ret)?;
        // From here on, drop shuts NVML down.
        let mut nvml = Nvml {
            device: std::ptr::null_mut(),
            library,
            shutdown,
            error_string,
            total_energy,
            power_usage,
            get_name,
            _lib: lib,
        };
        let mut device: Device = std::ptr::null_mut();
        // SAFETY: `device` is a valid place for the handle. On failure, drop shuts NVML down.
        let ret = unsafe { by_index(index, &mut device) };
        nvml.check("nvmlDeviceGetHandleByIndex_v2", ret)?;
        nvml.device = device;
        Ok(nvml)
    }

    /// The GPU's energy counter: millijoules since the driver was loaded.
    pub fn energy_mj(&self) -> Result<u64, NvmlError> {
        let mut mj: c_ulonglong = 0;
        // SAFETY: a handle from `nvmlDeviceGetHandleByIndex_v2`, a valid place for the count.
        let ret = unsafe { (self.total_energy)(self.device, &mut mj) };
        self.check("nvmlDeviceGetTotalEnergyConsumption", ret)?;
        Ok(mj)
    }

    /// The GPU's power draw in milliwatts (NVML's own average over a short window, about a second
    /// on recent GPUs).
    pub fn power_mw(&self) -> Result<u32, NvmlError> {
        let mut mw: c_uint = 0;
        // SAFETY: as in `energy_mj`.
        let ret = unsafe { (self.power_usage)(self.device, &mut mw) };
        self.check("nvmlDeviceGetPowerUsage", ret)?;
        Ok(mw)
    }

    /// The GPU's product name ("NVIDIA H100 80GB HBM3").
    pub fn name(&self) -> Result<String, NvmlError> {
        let mut buf = [0 as c_char; NAME_BUFFER];
        // SAFETY: the buffer holds `NAME_BUFFER` bytes, the length passed.
        let ret = unsafe { (self.get_name)(self.device, buf.as_mut_ptr(), NAME_BUFFER as c_uint) };
        self.check("nvmlDeviceGetName", ret)?;
        // NVML NUL-terminates on success; the last byte is forced to NUL all the same.
        buf[NAME_BUFFER - 1] = 0;
        // SAFETY: a NUL-terminated string inside `buf`.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
    }

    fn check(&self, function: &'static str, ret: NvmlReturn) -> Result<(), NvmlError> {
        failed(self.error_string, self.library, function, ret)
    }
}

/// `Err` with NVML's description of `ret` unless it is NVML_SUCCESS.
fn failed(
    error_string: unsafe extern "C" fn(NvmlReturn) -> *const c_char,
    library: &'static str,
    function: &'static str,
    ret: NvmlReturn,
) -> Result<(), NvmlError> {
    if ret == 0 {
        return Ok(());
    }
    // SAFETY: `nvmlErrorString` takes any code and returns a static string (null is handled).
    let p = unsafe { error_string(ret) };
    let message = if p.is_null() {
        "no description".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated and static per NVML's documentation.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    Err(NvmlError::Call { function, library, code: ret, message })
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: NVML was initialised by `open` (a failed init never reaches drop). The return
        // code is ignored: nothing can be done about a failed shutdown.
        unsafe {
            (self.shutdown)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the NVIDIA driver (this machine, CI) the error names the library tried; with it,
    /// the counter does not go backwards over a window longer than its refresh, and the GPU draws
    /// power.
    #[test]
    fn open_names_the_library_or_reads_the_gpu() {
        match Nvml::open(0) {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("libnvidia-ml") || msg.contains("nvml.dll"), "{msg}");
            }
            Ok(nvml) => {
                let name = nvml.name().expect("name");
                assert!(!name.is_empty());
                let a = nvml.energy_mj().expect("energy");
                std::thread::sleep(std::time::Duration::from_millis(300));
                let b = nvml.energy_mj().expect("energy");
                assert!(b >= a, "energy counter went from {a} to {b} mJ");
                let p = nvml.power_mw().expect("power");
                assert!(p > 0, "{name} draws {p} mW");
                eprintln!("{name}: {p} mW, {} mJ in 300 ms", b - a);
            }
        }
    }

    /// Where NVML opens: a GPU index past the last is an error naming the call, not a handle.
    #[test]
    fn out_of_range_device_is_an_error() {
        if Nvml::open(0).is_err() {
            return;
        }
        match Nvml::open(u32::MAX) {
            Ok(_) => panic!("GPU index {} opened", u32::MAX),
            Err(e) => assert!(e.to_string().contains("nvmlDeviceGetHandleByIndex_v2"), "{e}"),
        }
    }
}
