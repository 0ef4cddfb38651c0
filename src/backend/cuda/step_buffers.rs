//! Step buffers: the host-made inputs of a step (token ids, positions' RoPE tables, cache slots,
//! the attention plan and schedule) in device buffers that keep their address from step to
//! step, each named by a key. A new step's values are copied in place (stream-ordered after the
//! work that read the old ones), nothing is copied when they did not change, and a buffer is
//! replaced only when it must grow. So a CUDA graph captured over a step reads the next step's
//! inputs where it read the last one's; `generation` changes whenever an address does. The steps
//! replayed from graphs have buffers of their own (graph.rs, `with_graph_inputs`), with their
//! own generation, so that eager steps (a long prompt) never move what graphs read.

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
    /// By whether they belong to graph-replayed steps, and key.
    buffers: Mutex<HashMap<(bool, StepKey), StepBuffer>>,
    /// Of the eager steps' buffers and of the graph-replayed steps'.
    generations: [std::sync::atomic::AtomicU64; 2],
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
    /// A number that changes whenever a buffer of graph-replayed steps gets a new address.
    pub(super) fn graph_generation(&self) -> u64 {
        self.generations[1].load(std::sync::atomic::Ordering::Relaxed)
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
        // Every byte a kernel reads is copied in below (a new buffer's `host` is empty).
        let buffer = self.fit_step_buffer(&mut buffers, key, bytes.len())?;
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

    /// Makes the step buffer `key` (of the current kind, see the module doc) hold at least
    /// `count` values of `V` without copying any: so that steps' growing inputs (block tables as
    /// contexts grow) never move it.
    pub fn reserve_step_values<V: DeviceRepr>(&self, key: StepKey, count: usize) -> Result<()> {
        let mut buffers = self
            .step_buffers
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // The next step_values copies in whatever a kernel reads (a new buffer's `host` is empty).
        self.fit_step_buffer(&mut buffers, key, count * size_of::<V>())
            .map(|_| ())
    }

    /// The buffer of `key` for the current kind of step, replaced by a larger one where it holds
    /// fewer than `bytes` bytes (an error while a graph is captured, which would keep the old).
    fn fit_step_buffer<'b>(
        &self,
        buffers: &'b mut HashMap<(bool, StepKey), StepBuffer>,
        key: StepKey,
        bytes: usize,
    ) -> Result<&'b mut StepBuffer> {
        let key = (self.recording.graph_inputs(), key);
        let fits = buffers.get(&key).is_some_and(|b| b.device.len() >= bytes);
        if !fits && self.recording.capturing() {
            return Err(crate::error::Error::Op {
                op: "step_values",
                message: format!(
                    "step input {:?} grew while a CUDA graph was captured",
                    key.1
                ),
            });
        }
        if !fits {
            self.new_step_buffer(buffers, key, bytes)?;
        }
        Ok(buffers.get_mut(&key).expect("inserted above"))
    }

    /// Replaces buffer `key` by one of at least `bytes` bytes, contents unset and `host` empty
    /// (so that the next step_values copies its values in), and moves its kind's generation.
    fn new_step_buffer(
        &self,
        buffers: &mut HashMap<(bool, StepKey), StepBuffer>,
        key: (bool, StepKey),
        bytes: usize,
    ) -> Result<()> {
        // SAFETY: nothing reads the buffer before a step_values copies its values in.
        let device = unsafe { self.stream.alloc::<u8>(bytes.next_power_of_two()) }.map_err(
            driver_err(format!("allocating the step buffer {:?}", key.1)),
        )?;
        buffers.insert(
            key,
            StepBuffer {
                host: Vec::new(),
                device,
            },
        );
        self.step_buffers.generations[key.0 as usize]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
