//! What the CUDA backend counts as it runs, so that launch and wait overheads are measured the
//! same way on a GPU and on cuda-emu: kernels launched (ours and cuBLAS calls), CUDA graphs
//! launched, host→device copies, and waits of the host for the device (a synchronisation before
//! results are read). The profiler's own waits (`Backend::sync_fn`) are not counted.

use crate::backend::DeviceCounters;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(super) struct CounterCells {
    kernel_launches: AtomicU64,
    graph_launches: AtomicU64,
    uploads: AtomicU64,
    host_waits: AtomicU64,
}

impl CounterCells {
    pub(super) fn kernel_launch(&self) {
        self.kernel_launches.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn graph_launch(&self) {
        self.graph_launches.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn upload(&self) {
        self.uploads.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn host_wait(&self) {
        self.host_waits.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> DeviceCounters {
        DeviceCounters {
            kernel_launches: self.kernel_launches.load(Ordering::Relaxed),
            graph_launches: self.graph_launches.load(Ordering::Relaxed),
            uploads: self.uploads.load(Ordering::Relaxed),
            host_waits: self.host_waits.load(Ordering::Relaxed),
        }
    }
}
