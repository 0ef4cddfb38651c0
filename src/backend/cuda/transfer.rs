//! Device → host copies through one page-locked staging buffer: the DMA engine writes it
//! directly (a pageable destination makes the driver copy through a bounce buffer of its own),
//! then the values are moved out into a `Vec`. Host → device copies stay on cudarc's pageable
//! path: an asynchronous upload from a reused pinned buffer would need a fence per copy.

use super::error::driver_err;
use super::CudaDevice;
use crate::error::{Error, Result};
use cudarc::driver::{DevicePtr, DeviceRepr, PinnedHostSlice, ValidAsZeroBits};

/// The staging buffer, grown to the largest copy so far.
#[derive(Default)]
pub(super) struct Staging(std::sync::Mutex<Option<PinnedHostSlice<u8>>>);

impl CudaDevice {
    /// Copies `src` to the host; `what` names the values in an error.
    pub fn fetch<T, S>(&self, src: &S, what: &str) -> Result<Vec<T>>
    where
        T: DeviceRepr + ValidAsZeroBits + Copy,
        S: DevicePtr<T>,
    {
        let (len, bytes) = (src.len(), src.len() * size_of::<T>());
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut staging = self.staging.0.lock().unwrap_or_else(|e| e.into_inner());
        if staging.as_ref().is_none_or(|s| s.len() < bytes) {
            // The old buffer goes back before the larger one is taken.
            *staging = None;
            // SAFETY: page-locked memory without write-combining (the host reads it); its
            // contents are only read after a copy has filled them.
            let fresh = unsafe {
                self.stream
                    .context()
                    .alloc_pinned_with_flags::<u8>(bytes.next_power_of_two(), 0)
            }
            .map_err(driver_err("allocating a pinned staging buffer"))?;
            *staging = Some(fresh);
        }
        let buffer = staging.as_mut().expect("allocated above");
        let base = buffer
            .as_mut_ptr()
            .map_err(driver_err("waiting for the staging buffer"))?;
        if base as usize % std::mem::align_of::<T>() != 0 {
            return Err(Error::Op {
                op: "fetch",
                message: format!("the pinned staging buffer is not aligned for {what}"),
            });
        }
        // SAFETY: the buffer holds at least `bytes` bytes from `base`, aligned for T (checked
        // above), and nothing else refers to it while the lock is held.
        let host = unsafe { std::slice::from_raw_parts_mut(base as *mut T, len) };
        self.stream
            .memcpy_dtoh(src, host)
            .map_err(driver_err(format!("copying {what} from the device")))?;
        // The copy into page-locked memory is asynchronous: wait for it before reading.
        self.synchronize()?;
        Ok(host.to_vec())
    }

    /// Bytes per second a device-to-device copy of `bytes` moves (read plus written), timed
    /// with CUDA events over `reps` copies after one: the ceiling benchmarks measure against.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64> {
        let err = || driver_err("timing a device-to-device copy");
        let src = self.uninit::<u8>(bytes, "a copy's source")?;
        let mut dst = self.uninit::<u8>(bytes, "a copy's destination")?;
        let mut copy = || self.stream.memcpy_dtod(&src, &mut dst).map_err(err());
        copy()?;
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(flags).map_err(err())?;
        for _ in 0..reps.max(1) {
            copy()?;
        }
        let end = self.stream.record_event(flags).map_err(err())?;
        let ms = start.elapsed_ms(&end).map_err(err())? as f64 / reps.max(1) as f64;
        Ok(2.0 * bytes as f64 / (ms.max(1e-6) * 1e-3))
    }
}
