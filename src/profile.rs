//! A per-op wall-clock profile: model code opens named spans, and while profiling is on their
//! times add up per thread. A GPU backend's ops return before they finish, so profiling takes
//! the backend's "wait for the device" and calls it at both ends of every span.
//! Off by default, when a span costs one thread-local check.

use std::cell::RefCell;
use std::collections::BTreeMap;
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
}

pub fn span(name: &'static str) -> Span {
    let on = PROFILE.with(|p| p.borrow().is_some());
    if on {
        sync();
    }
    Span {
        name,
        start: on.then(Instant::now),
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
