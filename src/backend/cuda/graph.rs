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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How queued work is treated right now: run (the default), dropped (a dry run, which only
/// fills the step buffers) or recorded into a graph; and whether the step's inputs go to the
/// step buffers of graph-replayed steps (kept apart from the eager steps', so that a long
/// prompt's buffers do not move those that captured graphs read).
#[derive(Debug, Default)]
pub(super) struct Recording {
    dry_run: AtomicBool,
    capturing: AtomicBool,
    graph_inputs: AtomicBool,
}

impl Recording {
    /// Whether launches are dropped (a dry run).
    pub(super) fn dry_run(&self) -> bool {
        self.dry_run.load(Ordering::Relaxed)
    }

    /// Whether work is being recorded into a graph.
    pub(super) fn capturing(&self) -> bool {
        self.capturing.load(Ordering::Relaxed)
    }

    /// Whether step inputs go to the graph-replayed steps' buffers.
    pub(super) fn graph_inputs(&self) -> bool {
        self.graph_inputs.load(Ordering::Relaxed)
    }
}

/// Sets a flag for the life of the guard.
struct Flag<'a>(&'a AtomicBool);

impl<'a> Flag<'a> {
    fn set(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Relaxed);
        Flag(flag)
    }
}

impl Drop for Flag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

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
        let recorded = {
            let _capturing = Flag::set(&self.recording.capturing);
            f()
        };
        let ended = self
            .stream
            .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
        if recorded.is_err() || ended.is_err() {
            // Buffers of a failed capture fail to free when dropped; that error, recorded by
            // the context, belongs to the capture, not to the next call that checks it.
            let _ = self.stream.context().check_err();
        }
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

    /// Copies `src` to `dst` on the stream (dropped in a dry run).
    pub fn copy_on_device<T: cudarc::driver::DeviceRepr>(
        &self,
        src: &cudarc::driver::CudaView<'_, T>,
        dst: &mut cudarc::driver::CudaViewMut<'_, T>,
    ) -> Result<()> {
        if self.recording.dry_run() {
            return Ok(());
        }
        self.stream
            .memcpy_dtod(src, dst)
            .map_err(driver_err("copying on the device"))
    }

    /// Runs `f` with its step inputs in the graph-replayed steps' step buffers.
    pub fn with_graph_inputs<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let _graph_inputs = Flag::set(&self.recording.graph_inputs);
        f()
    }

    /// Runs `f` with every kernel launch, cuBLAS call and device copy dropped: what it leaves
    /// is the host's side of the work (the step buffers filled, the plans made).
    pub fn dry_run<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let _dry = Flag::set(&self.recording.dry_run);
        f()
    }
}
