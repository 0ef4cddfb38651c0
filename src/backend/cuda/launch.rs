//! The one way a kernel is launched: [`CudaDevice::launch`] with its arguments by value, or
//! [`CudaDevice::launch_params`] with one `#[repr(C)]` params struct. Both go through
//! `cuLaunchKernelEx`; [`Order::Dependent`] launches the kernel as a programmatic dependent of
//! the stream's previous kernel (compute capability 9.0+), so its launch and start-up overlap
//! that kernel's last CTAs. Every op checks its shapes before it calls here; this file holds the
//! safety argument they share.

use super::error::driver_err;
use super::kernels::Kernel;
use super::CudaDevice;
use crate::error::Result;
use cudarc::driver::sys::{self, CUlaunchAttributeID};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, LaunchConfig};
use std::ffi::c_void;

/// Whether a kernel may start before the stream's previous kernel ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// After the previous kernel, as every plain launch.
    Serial,
    /// As a programmatic dependent where the GPU has that: the kernel must wait for the
    /// previous grid (`wait_for_previous_grid` in kernels/common.cuh) before it reads anything
    /// that grid writes, or writes anything it reads.
    Dependent,
}

/// One kernel argument by value: a scalar, a device address or a small `#[repr(C)]` struct.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(super) struct Arg([u8; 32]);

impl Arg {
    /// `value`'s bytes; `T` must be the kernel parameter's type (at most 32 bytes, alignment
    /// at most 8).
    fn bytes<T: Copy>(value: T) -> Arg {
        const { assert!(size_of::<T>() <= 32 && align_of::<T>() <= 8) };
        let mut arg = Arg([0; 32]);
        // SAFETY: `T` fits the 32 bytes (asserted above) and is Copy, so a bitwise copy is a
        // valid value of it in storage aligned to 8.
        unsafe { std::ptr::write(arg.0.as_mut_ptr() as *mut T, value) };
        arg
    }
}

/// What can be passed to a kernel by value.
pub(super) trait KernelArg {
    fn to_arg(&self, stream: &CudaStream) -> Arg;
}

macro_rules! scalar_args {
    ($($t:ty),*) => {$(
        impl KernelArg for $t {
            fn to_arg(&self, _: &CudaStream) -> Arg {
                Arg::bytes(*self)
            }
        }
    )*};
}
scalar_args!(i32, u32, f32, i64, u64);

impl KernelArg for super::attention::params::Fp8RowFormat {
    fn to_arg(&self, _: &CudaStream) -> Arg {
        Arg::bytes(*self)
    }
}

/// Device buffers go in as their addresses: the guard `device_ptr` returns records nothing, as
/// the context tracks no events (device.rs), so it need not live through the launch.
macro_rules! buffer_args {
    ($($t:ident),*) => {$(
        impl<T> KernelArg for $t<'_, T> {
            fn to_arg(&self, stream: &CudaStream) -> Arg {
                Arg::bytes(self.device_ptr(stream).0)
            }
        }
    )*};
}
buffer_args!(CudaView, CudaViewMut);

impl<T> KernelArg for CudaSlice<T> {
    fn to_arg(&self, stream: &CudaStream) -> Arg {
        Arg::bytes(self.device_ptr(stream).0)
    }
}

/// A `#[repr(C)]` struct that mirrors a kernel family's params struct field for field.
///
/// # Safety
/// The type's size, alignment and field offsets must equal the C++ struct's (both sides
/// assert them), and every device address in it must be a valid argument as [`CudaDevice::launch`]
/// describes.
pub(super) unsafe trait KernelParams: Copy {}

impl CudaDevice {
    /// The device address of `buffer` (for a params struct).
    pub(super) fn address<T>(&self, buffer: &impl DevicePtr<T>) -> u64 {
        buffer.device_ptr(&self.stream).0
    }

    /// The argument list of a launch: `args(&[&out.data, &x.data, &cols])`.
    pub(super) fn args(&self, values: &[&dyn KernelArg]) -> Vec<Arg> {
        values.iter().map(|v| v.to_arg(&self.stream)).collect()
    }

    /// Launches `kernel` over `cfg` with `args` (see [`Self::args`]), in `order`.
    ///
    /// # Safety
    /// As any kernel launch: `args` must match the kernel's parameters in number, order and
    /// type; every buffer they name must hold each element the kernel reads or writes for this
    /// grid (the op's shape checks establish that), and no buffer it writes may be read or
    /// written by the host until the stream has passed the kernel. With [`Order::Dependent`],
    /// the kernel must wait for the previous grid before it touches memory that grid uses.
    pub(super) unsafe fn launch(
        &self,
        kernel: Kernel,
        cfg: LaunchConfig,
        order: Order,
        args: &[Arg],
    ) -> Result<()> {
        let mut pointers: Vec<*mut c_void> = args
            .iter()
            .map(|a| a as *const Arg as *mut c_void)
            .collect();
        // SAFETY: the caller's contract; the pointers address `args`, which outlive the call.
        unsafe { self.launch_raw(kernel, cfg, order, &mut pointers) }
    }

    /// Launches `kernel` with its one params struct `params` (`__grid_constant__` on the device).
    ///
    /// # Safety
    /// As [`Self::launch`], for the buffers `params` addresses.
    pub(super) unsafe fn launch_params<P: KernelParams>(
        &self,
        kernel: Kernel,
        cfg: LaunchConfig,
        order: Order,
        params: &P,
    ) -> Result<()> {
        let mut pointers = [params as *const P as *mut c_void];
        // SAFETY: the caller's contract; P mirrors the kernel's one parameter (KernelParams).
        unsafe { self.launch_raw(kernel, cfg, order, &mut pointers) }
    }

    /// # Safety
    /// As [`Self::launch`]; `params` points to each argument's value.
    unsafe fn launch_raw(
        &self,
        kernel: Kernel,
        cfg: LaunchConfig,
        order: Order,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        let f = self.function(kernel, cfg.shared_mem_bytes as usize)?;
        if self.recording.dry_run() {
            return Ok(());
        }
        let what = || format!("launching {}", kernel.name);
        self.stream
            .context()
            .bind_to_thread()
            .map_err(driver_err(what()))?;
        // SAFETY: a zeroed attribute is a valid value of this plain C struct.
        let mut attribute: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attribute.id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attribute.value.programmaticStreamSerializationAllowed = 1;
        let dependent = order == Order::Dependent && self.info.compute_capability >= (9, 0);
        // Recorded into a graph, a kernel is launched by the graph's launches.
        if !self.recording.capturing() {
            self.counters.kernel_launch();
        }
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
            numAttrs: dependent as u32,
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
        .map_err(driver_err(what()))
    }
}
