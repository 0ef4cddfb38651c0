//! Device → host copies through one page-locked staging buffer: the DMA engine writes it
//! directly (a pageable destination makes the driver copy through a bounce buffer of its own),
//! then the values are moved out into a `Vec`. Host → device copies stay on cudarc's pageable
//! path: an asynchronous upload from a reused pinned buffer would need a fence per copy.

use super::error::driver_err;
use super::CudaDevice;
use crate::error::Result;
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
        let bytes = src.len() * size_of::<T>();
        self.fetch_parts(&[(self.address(src), bytes)], what, |parts| {
            host_values(parts[0])
        })
    }

    /// Copies each device range of `parts` (address, bytes) to the host with one wait for the
    /// device, and gives their bytes, in order, to `read`; `what` names them in an error. The
    /// ranges must lie in live allocations of this device (the caller's buffers).
    pub fn fetch_parts<R>(
        &self,
        parts: &[(u64, usize)],
        what: &str,
        read: impl FnOnce(&[&[u8]]) -> R,
    ) -> Result<R> {
        // Each part from a 16-byte boundary of the staging buffer.
        let offsets: Vec<usize> = parts
            .iter()
            .scan(0, |end, &(_, bytes)| {
                let at = *end;
                *end += bytes.next_multiple_of(16);
                Some(at)
            })
            .collect();
        let total = parts
            .iter()
            .map(|&(_, b)| b.next_multiple_of(16))
            .sum::<usize>();
        if total == 0 {
            return Ok(read(&vec![&[][..]; parts.len()]));
        }
        let mut staging = self.staging.0.lock().unwrap_or_else(|e| e.into_inner());
        if staging.as_ref().is_none_or(|s| s.len() < total) {
            // The old buffer goes back before the larger one is taken.
            *staging = None;
            // SAFETY: page-locked memory without write-combining (the host reads it); its
            // contents are only read after a copy has filled them.
            let fresh = unsafe {
                self.stream
                    .context()
                    .alloc_pinned_with_flags::<u8>(total.next_power_of_two(), 0)
            }
            .map_err(driver_err("allocating a pinned staging buffer"))?;
            *staging = Some(fresh);
        }
        let buffer = staging.as_mut().expect("allocated above");
        let base = buffer
            .as_mut_ptr()
            .map_err(driver_err("waiting for the staging buffer"))?;
        // SAFETY: the buffer holds at least `total` bytes from `base`, and nothing else refers
        // to it while the lock is held.
        let host = unsafe { std::slice::from_raw_parts_mut(base, total) };
        for (&(address, bytes), &at) in parts.iter().zip(&offsets) {
            // SAFETY: the range is the caller's live device memory (this function's contract),
            // copied in stream order after the work that wrote it; the destination lies in
            // the staging buffer, which outlives the wait below.
            unsafe {
                cudarc::driver::result::memcpy_dtoh_async(
                    &mut host[at..at + bytes],
                    address,
                    self.stream.cu_stream(),
                )
            }
            .map_err(driver_err(format!("copying {what} from the device")))?;
        }
        // The copies into page-locked memory are asynchronous: wait for them before reading.
        self.synchronize()?;
        let views: Vec<&[u8]> = parts
            .iter()
            .zip(&offsets)
            .map(|(&(_, bytes), &at)| &host[at..at + bytes])
            .collect();
        Ok(read(&views))
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

/// The values of type `T` whose bytes `bytes` holds (whole values only).
pub(super) fn host_values<T: ValidAsZeroBits + Copy>(bytes: &[u8]) -> Vec<T> {
    bytes
        .chunks_exact(size_of::<T>())
        // SAFETY: each chunk holds size_of::<T>() bytes, read unaligned; T is valid for any bits
        // (ValidAsZeroBits types here are plain numbers).
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr() as *const T) })
        .collect()
}
