//! Step buffers: the host-made inputs of a step (token ids, positions' RoPE tables, cache slots,
//! the attention plan and schedule) in device buffers that keep their address from step to
//! step, each named by a key. A new step's values are copied in place (stream-ordered after the
//! work that read the old ones), nothing is copied when they did not change, and a buffer is
//! replaced only when it must grow. So a CUDA graph captured over a step reads the next step's
//! inputs where it read the last one's; `generation` changes whenever an address does.

use super::error::driver_err;
use super::CudaDevice;
use crate::error::Result;
use cudarc::driver::{CudaSlice, DeviceRepr};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;

/// What a step buffer holds: the input's name and an index (the attention plan's entry).
pub type StepKey = (&'static str, usize);

#[derive(Default)]
pub(super) struct StepBuffers {
    buffers: Mutex<HashMap<StepKey, StepBuffer>>,
    generation: std::sync::atomic::AtomicU64,
}

struct StepBuffer {
    /// The bytes last copied in.
    host: Vec<u8>,
    device: CudaSlice<u8>,
}

/// `len` values of type `V` at a step buffer's address: valid until the buffer of its key is
/// replaced (a later step's larger input) or the device closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepValues<V> {
    pub address: u64,
    pub len: usize,
    _values: PhantomData<V>,
}

impl<V> super::launch::KernelArg for StepValues<V> {
    fn to_arg(&self, stream: &cudarc::driver::CudaStream) -> super::launch::Arg {
        self.address.to_arg(stream)
    }
}

impl StepBuffers {
    /// A number that changes whenever a buffer gets a new address.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl CudaDevice {
    /// `values` in the step buffer `key` (see the module doc). Never empty: an empty input gets
    /// one zero value, so kernels always receive a valid address.
    pub fn step_values<V: DeviceRepr + Copy>(
        &self,
        key: StepKey,
        values: &[V],
    ) -> Result<StepValues<V>> {
        let zero = vec![0u8; size_of::<V>()];
        // SAFETY: V is a plain device value (DeviceRepr + Copy); its bytes are read, not
        // reinterpreted as another type.
        let bytes: &[u8] = match values.len() {
            0 => &zero,
            n => unsafe {
                std::slice::from_raw_parts(values.as_ptr() as *const u8, n * size_of::<V>())
            },
        };
        let mut buffers = self
            .step_buffers
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let fits = buffers
            .get(&key)
            .is_some_and(|b| b.device.len() >= bytes.len());
        if !fits && self.recording.capturing() {
            return Err(crate::error::Error::Op {
                op: "step_values",
                message: format!("step input {key:?} grew while a CUDA graph was captured"),
            });
        }
        if !fits {
            // SAFETY: every byte a kernel reads is copied in below before any launch reads it.
            let device = unsafe { self.stream.alloc::<u8>(bytes.len().next_power_of_two()) }
                .map_err(driver_err(format!("allocating the step buffer {key:?}")))?;
            buffers.insert(
                key,
                StepBuffer {
                    host: Vec::new(),
                    device,
                },
            );
            self.step_buffers
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let buffer = buffers.get_mut(&key).expect("inserted above");
        if buffer.host != bytes {
            if self.recording.capturing() {
                // A graph reads its inputs from the step buffers; a copy recorded into it would
                // replay this step's values forever.
                return Err(crate::error::Error::Op {
                    op: "step_values",
                    message: format!("step input {key:?} changed while a CUDA graph was captured"),
                });
            }
            self.counters.upload();
            let mut target = buffer.device.slice_mut(..bytes.len());
            self.stream
                .memcpy_htod(bytes, &mut target)
                .map_err(driver_err(format!("copying the step input {key:?}")))?;
            buffer.host = bytes.to_vec();
        }
        Ok(StepValues {
            address: self.address(&buffer.device),
            len: values.len().max(1),
            _values: PhantomData,
        })
    }
}
