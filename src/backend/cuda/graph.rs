//! CUDA graphs: work queued on the device's stream recorded once (stream capture) and replayed
//! with one launch. A replay reads the same addresses as the captured work did: inputs must sit
//! in buffers that outlive the graph and be rewritten in place between replays; memory the
//! captured work allocates belongs to the graph (freed at each new launch). A wait for the
//! device inside the captured work is an error (the capture is then invalid), so code that
//! captures cleanly is code that never waits.

use super::counters::CounterCells;
use super::error::driver_err;
use super::CudaDevice;
use crate::error::Result;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;
use std::sync::Arc;

/// A captured graph, launched on the stream it was captured from.
pub struct DeviceGraph {
    graph: CudaGraph,
    counters: Arc<CounterCells>,
}

impl DeviceGraph {
    /// Replays the graph (counted as one graph launch).
    pub fn launch(&self) -> Result<()> {
        self.counters.graph_launch();
        self.graph
            .launch()
            .map_err(driver_err("launching a CUDA graph"))
    }
}

impl CudaDevice {
    /// Records what `f` queues on the stream as a graph, without running it. Capture is local to
    /// this thread (other threads' allocations and waits are unaffected); the graph frees its
    /// own allocations at each launch. If `f` fails, the capture is ended and discarded.
    pub fn capture(&self, f: impl FnOnce() -> Result<()>) -> Result<DeviceGraph> {
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(driver_err("beginning a stream capture"))?;
        let recorded = f();
        let ended = self
            .stream
            .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
        recorded?;
        let graph = ended
            .map_err(driver_err(
                "ending a stream capture (did the captured work wait?)",
            ))?
            .ok_or_else(|| {
                super::error::unavailable("the stream capture recorded no work to replay")
            })?;
        Ok(DeviceGraph {
            graph,
            counters: self.counters.clone(),
        })
    }
}
