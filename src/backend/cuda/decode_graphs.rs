//! Decode steps replayed from CUDA graphs. A step first runs dry (nothing launched: its inputs
//! go to their step buffers and its attention plans are made); if a graph was captured from a
//! step with the same signature (logits shape, step-buffer addresses, the attention launches'
//! by-value shapes), it is replayed, else the step is captured first. The graph ends by copying
//! the logits into a buffer of its own, from which the caller gets a copy. A step that cannot be
//! captured (an input that changes between its layers) runs eagerly.

use super::backend::CudaBackend;
use super::graph::DeviceGraph;
use super::{GpuFloat, GpuTensor};
use crate::error::Result;
use cudarc::cublas::{CudaBlas, Gemm};
use std::collections::HashMap;

/// Graphs kept at once; past this the cache starts again (each holds its step's activations).
const MAX_GRAPHS: usize = 32;

/// A captured decode step and the buffer its logits land in.
pub(super) struct CapturedStep<T> {
    graph: DeviceGraph,
    logits: GpuTensor<T>,
}

/// The captured steps of one owner (an engine), by signature.
pub(super) struct DecodeGraphs<T> {
    owner: Option<u64>,
    steps: HashMap<String, Option<CapturedStep<T>>>,
}

impl<T> Default for DecodeGraphs<T> {
    fn default() -> Self {
        DecodeGraphs {
            owner: None,
            steps: HashMap::new(),
        }
    }
}

impl<T: GpuFloat> CudaBackend<T>
where
    CudaBlas: Gemm<T>,
{
    /// [`crate::backend::Backend::forward_replayed`] on the GPU. Graphs are kept for one owner
    /// at a time: another owner's steps start a new set.
    pub(super) fn replay_decode(
        &self,
        owner: u64,
        forward: &mut dyn FnMut() -> Result<GpuTensor<T>>,
    ) -> Result<GpuTensor<T>> {
        let dev = &self.device;
        let shape = dev.dry_run(&mut *forward)?;
        let key = format!(
            "[{}, {}] buffers {} attention {}",
            shape.rows,
            shape.cols,
            dev.step_buffers.generation(),
            self.step_signature()
        );
        let mut cached = self.decode_graphs.borrow_mut();
        if cached.owner != Some(owner) {
            *cached = DecodeGraphs {
                owner: Some(owner),
                steps: HashMap::new(),
            };
        }
        let graphs = &mut cached.steps;
        if !graphs.contains_key(&key) {
            if graphs.len() >= MAX_GRAPHS {
                graphs.clear();
            }
            let mut logits = self.device.tensor::<T>(shape.rows, shape.cols, None)?;
            let captured = dev.capture(|| {
                let y = forward()?;
                dev.copy_on_device(&y.data.slice(..), &mut logits.data.slice_mut(..))
            });
            // Not capturable (None): this signature runs eagerly from now on.
            let entry = captured.ok().map(|graph| CapturedStep { graph, logits });
            graphs.insert(key.clone(), entry);
        }
        match &graphs[&key] {
            Some(step) => {
                step.graph.launch()?;
                let mut out = self.device.tensor::<T>(shape.rows, shape.cols, None)?;
                dev.copy_on_device(&step.logits.data.slice(..), &mut out.data.slice_mut(..))?;
                Ok(out)
            }
            None => forward(),
        }
    }
}
