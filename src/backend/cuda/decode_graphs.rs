//! Decode steps replayed from CUDA graphs. A step first runs dry (nothing launched: its inputs
//! go to their step buffers and its attention plans are made); its signature (logits shape,
//! step-buffer addresses, the attention launches' by-value shapes) decides the rest: the first
//! step of a signature runs eagerly (a warm-up, as vLLM's before capture), the second is
//! captured, later ones replay the graph. The graph ends by copying the logits into a buffer of
//! its own, from which the caller gets a copy. A signature whose capture fails (an input that
//! changes between its layers) runs eagerly from then on.

use super::backend::CudaBackend;
use super::graph::DeviceGraph;
use super::{GpuFloat, GpuTensor};
use crate::error::Result;
use cudarc::cublas::{CudaBlas, Gemm};
use std::collections::HashMap;

/// Graphs kept at once; past this the cache starts again (each holds its step's activations).
const MAX_GRAPHS: usize = 32;

/// What is known of a signature's steps.
pub(super) enum StepGraph<T> {
    /// Run once eagerly (a warm-up: cuBLAS sets up for the step's shapes outside a capture).
    Seen,
    /// Captured: the graph and the buffer its logits land in.
    Captured {
        graph: DeviceGraph,
        logits: GpuTensor<T>,
    },
    /// Could not be captured: runs eagerly.
    Eager,
}

/// The captured steps of one owner (an engine), by signature.
pub(super) struct DecodeGraphs<T> {
    owner: Option<u64>,
    steps: HashMap<String, StepGraph<T>>,
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
        if graphs.len() >= MAX_GRAPHS && !graphs.contains_key(&key) {
            graphs.clear();
        }
        match graphs.get(&key) {
            None => {
                graphs.insert(key, StepGraph::Seen);
                return forward();
            }
            Some(StepGraph::Eager) => return forward(),
            Some(StepGraph::Seen) => {
                let mut logits = self.device.tensor::<T>(shape.rows, shape.cols, None)?;
                let captured = dev.capture(|| {
                    let y = forward()?;
                    dev.copy_on_device(&y.data.slice(..), &mut logits.data.slice_mut(..))
                });
                let entry = match captured {
                    Ok(graph) => StepGraph::Captured { graph, logits },
                    Err(_) => StepGraph::Eager,
                };
                graphs.insert(key.clone(), entry);
            }
            Some(StepGraph::Captured { .. }) => {}
        }
        match &graphs[&key] {
            StepGraph::Captured { graph, logits } => {
                graph.launch()?;
                let mut out = self.device.tensor::<T>(shape.rows, shape.cols, None)?;
                dev.copy_on_device(&logits.data.slice(..), &mut out.data.slice_mut(..))?;
                Ok(out)
            }
            _ => forward(),
        }
    }
}
