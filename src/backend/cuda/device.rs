//! The CUDA device: driver context, one stream, the kernel modules build.rs embedded and the
//! functions looked up in them (cached by handle index).
//!
//! Everything that can fail on a machine without a GPU (no kernels in this build, no driver
//! library, no device) is checked here first and reported as one sentence, before cudarc gets
//! a chance to panic.

use super::counters::CounterCells;
use super::error::{driver_err, unavailable};
use super::graph::Recording;
use super::kernels::{Kernel, KERNEL_COUNT, MODULES};
use super::step_buffers::StepBuffers;
use super::transfer::Staging;
use crate::error::{CudaError, Result};
use cudarc::driver::sys::CUdevice_attribute::{
    CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
};
use cudarc::driver::sys::CUfunction_attribute::{
    CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
    CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
};
use cudarc::driver::sys::CUshared_carveout::CU_SHAREDMEM_CARVEOUT_MAX_SHARED;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    pub multiprocessors: usize,
    /// Most dynamic shared memory one block may opt in to, in bytes.
    pub max_shared_per_block: usize,
}

impl DeviceInfo {
    /// Whether this is a Hopper GPU (compute capability 9.0), the only one that loads the
    /// sm_90a kernels (wgmma).
    pub fn hopper(&self) -> bool {
        self.compute_capability == (9, 0)
    }
}

pub struct CudaDevice {
    pub info: DeviceInfo,
    pub stream: Arc<CudaStream>,
    /// The loaded modules, by [`Kernel::module`]; None for one this GPU cannot load.
    modules: Vec<Option<Arc<CudaModule>>>,
    /// Functions already looked up, by [`Kernel::index`], with the dynamic shared memory they
    /// were set up for.
    functions: Mutex<Vec<Option<LoadedFunction>>>,
    pub(super) staging: Staging,
    /// Launches and waits so far (shared with cuBLAS's wrapper).
    pub(super) counters: Arc<CounterCells>,
    /// The step's inputs at stable addresses (step_buffers.rs).
    pub(super) step_buffers: StepBuffers,
    /// Whether work runs, is dropped or is recorded (graph.rs); shared with cuBLAS's wrapper.
    pub(super) recording: Arc<Recording>,
}

/// A kernel looked up in its module, and the most dynamic shared memory it has been allowed.
struct LoadedFunction {
    function: CudaFunction,
    shared_bytes: usize,
}

/// The device's default memory pool, which stream-ordered allocations come from; None where the
/// device has no memory pools (cudarc then falls back to plain cuMemAlloc).
fn default_pool(ctx: &CudaContext) -> Result<Option<cudarc::driver::sys::CUmemoryPool>> {
    use cudarc::driver::sys;
    let pools = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)
        .map_err(driver_err("asking for memory pool support"))?;
    if pools != 1 {
        return Ok(None);
    }
    let mut pool = std::mem::MaybeUninit::<sys::CUmemoryPool>::uninit();
    // SAFETY: the pointer is valid for the call's duration; the device handle comes from a live
    // context and the pool is only read after the call reports success.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), ctx.cu_device())
            .result()
            .map_err(driver_err("reading the device's memory pool"))?;
        Ok(Some(pool.assume_init()))
    }
}

/// Freed blocks stay in the pool for the next allocation instead of going back to the driver
/// at every synchronisation (the default release threshold is 0): stream-ordered allocations
/// (`cuMemAllocAsync`) come from this pool, which then is the caching allocator the per-op
/// temporaries need.
fn keep_freed_memory_cached(ctx: &CudaContext) -> Result<()> {
    let Some(pool) = default_pool(ctx)? else {
        return Ok(());
    };
    let mut threshold = u64::MAX;
    // SAFETY: the pool comes from the live context and the value pointer is valid for the call.
    unsafe {
        cudarc::driver::sys::cuMemPoolSetAttribute(
            pool,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
        .map_err(driver_err("setting the memory pool's release threshold"))?;
    }
    Ok(())
}

impl CudaDevice {
    /// Opens GPU `ordinal` and loads every kernel module.
    pub fn open(ordinal: usize) -> Result<Self> {
        if MODULES.iter().any(|m| m.fatbin.is_none()) {
            return Err(unavailable(
                "this build has no CUDA kernels (nvcc was not found when it was compiled): run \
                 scripts/cuda-toolchain.sh, then cargo build again",
            ));
        }
        // SAFETY: only asks the dynamic loader whether libcuda can be opened; no CUDA call is made.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(unavailable(
                "the NVIDIA driver library (libcuda.so) was not found on this machine",
            ));
        }
        let count = CudaContext::device_count().map_err(driver_err("counting CUDA devices"))?;
        if ordinal >= count.max(0) as usize {
            return Err(unavailable(format!(
                "cuda:{ordinal} was requested but this machine has {count} CUDA device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err("creating the CUDA context"))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(driver_err("reading the device name"))?,
            compute_capability: ctx
                .compute_capability()
                .map_err(driver_err("reading the compute capability"))?,
            total_memory: ctx
                .total_mem()
                .map_err(driver_err("reading the device memory size"))?,
            multiprocessors: ctx
                .attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(driver_err("reading the multiprocessor count"))?
                as usize,
            max_shared_per_block: ctx
                .attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
                .map_err(driver_err("reading the shared memory limit"))?
                as usize,
        };
        if info.compute_capability.0 < 8 {
            return Err(unavailable(format!(
                "{} has compute capability {}.{}; the kernels need 8.0 or newer",
                info.name, info.compute_capability.0, info.compute_capability.1
            )));
        }
        // SAFETY: every allocation, copy, kernel and cuBLAS call of the runtime goes to the one
        // stream created below, so stream order alone keeps uses and frees apart; cudarc's
        // per-use cross-stream events would only add host overhead to every launch.
        unsafe { ctx.disable_event_tracking() };
        keep_freed_memory_cached(&ctx)?;
        let stream = ctx.new_stream().map_err(driver_err("creating a stream"))?;
        // A module built for one architecture only (sm_90a: wgmma) is left out elsewhere; the
        // kernel choice asks `info.compute_capability` before using it.
        let mut modules = Vec::with_capacity(MODULES.len());
        for m in MODULES {
            let fatbin = m.fatbin.expect("checked above");
            if m.only_on.is_some_and(|cc| cc != info.compute_capability) {
                modules.push(None);
                continue;
            }
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(fatbin.to_vec()))
                .map_err(driver_err(format!("loading kernel module {}", m.name)))?;
            modules.push(Some(module));
        }
        Ok(CudaDevice {
            info,
            stream,
            modules,
            functions: Mutex::new((0..KERNEL_COUNT).map(|_| None).collect()),
            staging: Staging::default(),
            counters: Arc::default(),
            step_buffers: StepBuffers::default(),
            recording: Arc::default(),
        })
    }

    /// `kernel`'s function, set up for launches with `shared_bytes` of dynamic shared memory:
    /// looked up in its module once and kept by index, so a launch pays neither the driver's
    /// lookup by name nor a map of strings. The first launch that needs more shared memory than
    /// any before opts the kernel in to it (required above the default 48 KiB) and asks for the
    /// SM's largest shared-memory carveout (as many CTAs per SM as the schedule assumes), once.
    pub fn function(&self, kernel: Kernel, shared_bytes: usize) -> Result<CudaFunction> {
        let missing = |reason: String| CudaError::MissingKernel {
            kernel: kernel.name,
            reason,
        };
        // A panic elsewhere while the lock was held leaves the table as valid as before.
        let mut functions = self
            .functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let slot = &mut functions[kernel.index];
        let loaded = match slot {
            Some(loaded) => loaded,
            None => {
                let spec = &MODULES[kernel.module];
                let module = self.modules[kernel.module].as_ref().ok_or_else(|| {
                    missing(format!(
                        "module {} needs compute capability {:?}, not {:?}",
                        spec.name, spec.only_on, self.info.compute_capability
                    ))
                })?;
                let function = module
                    .load_function(kernel.name)
                    .map_err(|e| missing(format!("not in module {}: {e}", spec.name)))?;
                slot.insert(LoadedFunction {
                    function,
                    shared_bytes: 0,
                })
            }
        };
        if shared_bytes > loaded.shared_bytes {
            let what = |step: &str| format!("kernel {}: {step}", kernel.name);
            let f = &loaded.function;
            f.set_attribute(
                CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared_bytes as i32,
            )
            .map_err(driver_err(what("shared memory opt-in")))?;
            f.set_attribute(
                CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                CU_SHAREDMEM_CARVEOUT_MAX_SHARED as i32,
            )
            .map_err(driver_err(what("shared memory carveout")))?;
            loaded.shared_bytes = shared_bytes;
        }
        Ok(loaded.function.clone())
    }

    /// Bytes of device memory free for a new allocation: the driver's free memory once the pool
    /// has handed back the blocks it keeps cached (a model or cache dropped earlier in the
    /// process, e.g. the previous preset of `mla bench`, would otherwise count as used).
    pub fn free_memory(&self) -> Result<usize> {
        self.synchronize()?;
        if let Some(pool) = default_pool(self.stream.context())? {
            // SAFETY: the pool belongs to this live context; after the synchronisation above no
            // freed block is still in use by the stream.
            unsafe { cudarc::driver::sys::cuMemPoolTrimTo(pool, 0) }
                .result()
                .map_err(driver_err("releasing the memory pool's cached blocks"))?;
        }
        self.stream
            .context()
            .mem_get_info()
            .map(|(free, _)| free)
            .map_err(driver_err("reading free device memory"))
    }

    /// Waits for the stream (counted as a device→host wait).
    pub fn synchronize(&self) -> Result<()> {
        self.counters.host_wait();
        self.stream
            .synchronize()
            .map_err(driver_err("synchronizing the stream"))
    }
}
