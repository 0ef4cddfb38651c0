//! A per-op wall-clock profile: model code opens named spans, and while profiling is on their
//! times add up per thread. A GPU backend's ops return before they finish, so profiling takes
//! the backend's "wait for the device" and calls it at both ends of every span.
//! Off by default, when a span costs one thread-local check.
//!
//! The same spans, plus [`range`]s around each forward pass and layer, become NVTX ranges named
//! by their nesting (`decode/layer.07/attention`) once [`enable_nvtx`] found the NVTX library,
//! so that an `nsys profile -t cuda,nvtx` timeline reads at a glance.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpTime {
    pub calls: u64,
    pub secs: f64,
}

/// Waits until the device has finished the work queued so far.
pub type SyncFn = Box<dyn Fn()>;

thread_local! {
    static PROFILE: RefCell<Option<BTreeMap<&'static str, OpTime>>> = const { RefCell::new(None) };
    static SYNC: RefCell<Option<SyncFn>> = const { RefCell::new(None) };
    /// Names of the NVTX ranges open on this thread, outermost first.
    static NVTX_PATH: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

static NVTX: AtomicBool = AtomicBool::new(false);

/// Emits NVTX ranges from now on if the NVTX library (libnvToolsExt) loads; says whether it did.
pub fn enable_nvtx() -> bool {
    // SAFETY: only asks the dynamic loader whether libnvToolsExt can be opened.
    let present = unsafe { cudarc::nvtx::sys::is_culib_present() };
    NVTX.store(present, Ordering::Relaxed);
    present
}

/// An NVTX range, open until dropped; nothing (one atomic load) while NVTX is off.
pub struct Range {
    range: Option<cudarc::nvtx::Range>,
}

/// Opens an NVTX range named `name()` inside the ranges already open on this thread.
pub fn range(name: impl FnOnce() -> String) -> Range {
    if !NVTX.load(Ordering::Relaxed) {
        return Range { range: None };
    }
    let path = NVTX_PATH.with(|p| {
        let mut p = p.borrow_mut();
        p.push(name());
        p.join("/")
    });
    Range {
        range: Some(cudarc::nvtx::scoped_range(path)),
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        if let Some(range) = self.range.take() {
            drop(range);
            NVTX_PATH.with(|p| p.borrow_mut().pop());
        }
    }
}

/// Starts (or restarts) collecting on this thread; `sync` (if any) runs at both ends of spans.
pub fn enable(sync: Option<SyncFn>) {
    PROFILE.with(|p| *p.borrow_mut() = Some(BTreeMap::new()));
    SYNC.with(|s| *s.borrow_mut() = sync);
}

/// Stops collecting and returns what was collected since [`enable`].
pub fn take() -> BTreeMap<&'static str, OpTime> {
    SYNC.with(|s| s.borrow_mut().take());
    PROFILE.with(|p| p.borrow_mut().take()).unwrap_or_default()
}

fn sync() {
    SYNC.with(|s| {
        if let Some(f) = s.borrow().as_ref() {
            f()
        }
    });
}

/// Times the scope it lives in under `name`, when profiling is on.
pub struct Span {
    name: &'static str,
    start: Option<Instant>,
    // Closed after the timing in `drop`, as fields drop after it.
    _range: Range,
}

pub fn span(name: &'static str) -> Span {
    let on = PROFILE.with(|p| p.borrow().is_some());
    if on {
        sync();
    }
    Span {
        name,
        start: on.then(Instant::now),
        _range: range(|| name.to_string()),
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            sync();
            let secs = start.elapsed().as_secs_f64();
            PROFILE.with(|p| {
                if let Some(map) = p.borrow_mut().as_mut() {
                    let t = map.entry(self.name).or_default();
                    t.calls += 1;
                    t.secs += secs;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans_add_up_only_while_enabled() {
        drop(super::span("ignored"));
        super::enable(None);
        for _ in 0..3 {
            let _s = super::span("op");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let profile = super::take();
        assert_eq!(profile.len(), 1);
        assert_eq!(profile["op"].calls, 3);
        assert!(profile["op"].secs >= 0.006);
        assert!(super::take().is_empty(), "take stops collecting");
    }
}
