//! Programmatic dependent launch (compute capability 9.0+): a kernel that consumes what the
//! previous kernel of the stream writes may be launched before that kernel ends, so that its
//! launch and start-up overlap the previous kernel's last CTAs instead of following them.

use super::CudaDevice;
use crate::error::{Error, Result};
use cudarc::driver::sys::{self, CUlaunchAttributeID};
use cudarc::driver::{CudaFunction, LaunchConfig};
use std::ffi::c_void;

impl CudaDevice {
    /// Whether this GPU launches kernels as programmatic dependents (compute capability 9.0+).
    fn dependent_launches(&self) -> bool {
        self.info.compute_capability >= (9, 0)
    }

    /// Launches `f` with `params` (a pointer to each argument's value, in the kernel's order) as
    /// a programmatic dependent of the stream's previous kernel where the GPU has that, else as
    /// a plain launch. `what` names the launch in errors.
    ///
    /// # Safety
    /// As any kernel launch: `params` must match `f`'s arguments in number, order and type, and
    /// every buffer they point to must hold what the kernel reads and writes. Besides, `f` must
    /// wait for the previous kernel (griddepcontrol.wait: `wait_for_previous_grid` in
    /// kernels/common.cuh) before it reads anything that kernel writes, or writes anything it
    /// reads.
    pub(super) unsafe fn launch_dependent(
        &self,
        what: &str,
        f: &CudaFunction,
        cfg: LaunchConfig,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        let err = |e| Error::Device(format!("{what}: {e}"));
        self.stream.context().bind_to_thread().map_err(err)?;
        // SAFETY: a zeroed attribute is a valid value of this plain C struct.
        let mut attribute: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attribute.id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attribute.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attribute,
            numAttrs: self.dependent_launches() as u32,
        };
        // SAFETY: the config and the attribute it points to live through the call; the function
        // belongs to this context (bound above); the caller vouches for `params`.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(err)
    }
}

/// A kernel parameter for [`CudaDevice::launch_dependent`]: the address of its value, which
/// must outlive the launch call. Device buffers go in as their addresses, taken with
/// `device_ptr(stream).0`: the guard that comes with one records nothing, as the context tracks
/// no events (mod.rs), so it need not live through the launch.
pub(super) fn param<T>(value: &T) -> *mut c_void {
    value as *const T as *mut c_void
}
