//! Decode steps replayed from CUDA graphs. A step first runs dry (nothing launched: its inputs
//! go to the graph-replayed steps' step buffers and its attention plans are made); its signature
//! (logits shape, those buffers' generation, the attention launches' by-value shapes) decides
//! the rest: the first step of a signature runs eagerly (a warm-up, as vLLM's before capture),
//! the second is captured, later ones replay the graph. The graph ends by copying the logits
//! into a buffer of its own, from which the caller gets a copy of the rows it wants (a padded
//! batch's first). A signature whose capture fails (an input that changes between its layers)
//! runs eagerly from then on. [`CudaBackend::capture_decode`] captures padded batch sizes ahead
//! of the first step.

use super::backend::CudaBackend;
use super::graph::DeviceGraph;
use super::{GpuFloat, GpuTensor};
use crate::backend::GraphCapture;
use crate::error::Result;
use cudarc::cublas::{CudaBlas, Gemm};
use std::collections::HashMap;
use std::time::Instant;

/// Graphs kept at once; past this the cache starts again (each holds its step's activations).
/// Room for vLLM's default batch sizes up to 512 (1, 2, 4, then every 8th: 67).
const MAX_GRAPHS: usize = 80;

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

impl<T> DecodeGraphs<T> {
    fn captured(&self) -> usize {
        self.steps
            .values()
            .filter(|g| matches!(g, StepGraph::Captured { .. }))
            .count()
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
        rows: usize,
        forward: &mut dyn FnMut() -> Result<GpuTensor<T>>,
    ) -> Result<GpuTensor<T>> {
        let dev = &self.device;
        dev.with_graph_inputs(|| {
            let shape = dev.dry_run(&mut *forward)?;
            let key = format!(
                "[{}, {}] buffers {} attention {}",
                shape.rows,
                shape.cols,
                dev.step_buffers.graph_generation(),
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
                    graphs.insert(key.clone(), StepGraph::Seen);
                }
                Some(StepGraph::Seen) => {
                    let mut logits = dev.tensor::<T>(shape.rows, shape.cols, None)?;
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
                Some(_) => {}
            }
            match &graphs[&key] {
                StepGraph::Captured { graph, logits } => {
                    graph.launch()?;
                    self.first_rows(logits, rows)
                }
                _ => {
                    let y = forward()?;
                    match rows < y.rows {
                        true => self.first_rows(&y, rows),
                        false => Ok(y),
                    }
                }
            }
        })
    }

    /// A new tensor of the first `rows` rows of `y`.
    fn first_rows(&self, y: &GpuTensor<T>, rows: usize) -> Result<GpuTensor<T>> {
        let rows = rows.min(y.rows);
        let mut out = self.device.tensor::<T>(rows, y.cols, None)?;
        self.device
            .copy_on_device(&y.data.slice(..rows * y.cols), &mut out.data.slice_mut(..))?;
        Ok(out)
    }

    /// [`crate::backend::Backend::capture_decode_graphs`] on the GPU: the graph-replayed steps'
    /// block tables made room for `table_values` entries, then each batch size's step, largest
    /// first (its buffers then serve the smaller ones), run once eagerly and captured.
    pub(super) fn capture_decode(
        &self,
        owner: u64,
        batches: &[usize],
        table_values: usize,
        forward: &mut dyn FnMut(usize) -> Result<GpuTensor<T>>,
    ) -> Result<GraphCapture> {
        let start = Instant::now();
        let free_before = self.device.free_memory()?;
        self.device.with_graph_inputs(|| {
            // The entry of a decode step's one attention plan (the first of its step).
            self.device
                .reserve_step_values::<u32>(("block tables", 0), table_values)
        })?;
        let mut sizes = batches.to_vec();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes.dedup();
        for &b in &sizes {
            for _ in 0..2 {
                self.replay_decode(owner, b, &mut || forward(b))?;
            }
        }
        self.device.synchronize()?;
        let free_after = self.device.free_memory()?;
        Ok(GraphCapture {
            graphs: self.decode_graphs.borrow().captured(),
            largest: sizes.first().copied().unwrap_or(0),
            secs: start.elapsed().as_secs_f64(),
            bytes: free_before.saturating_sub(free_after) as u64,
        })
    }
}
