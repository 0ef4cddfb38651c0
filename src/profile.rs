//! A per-op wall-clock profile for the CPU backend (whose ops finish before they return):
//! model code opens named spans, and while profiling is on their times add up per thread.
//! Off by default, when a span costs one thread-local check.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpTime {
    pub calls: u64,
    pub secs: f64,
}

thread_local! {
    static PROFILE: RefCell<Option<BTreeMap<&'static str, OpTime>>> = const { RefCell::new(None) };
}

/// Starts (or restarts) collecting on this thread.
pub fn enable() {
    PROFILE.with(|p| *p.borrow_mut() = Some(BTreeMap::new()));
}

/// Stops collecting and returns what was collected since [`enable`].
pub fn take() -> BTreeMap<&'static str, OpTime> {
    PROFILE.with(|p| p.borrow_mut().take()).unwrap_or_default()
}

/// Times the scope it lives in under `name`, when profiling is on.
pub struct Span {
    name: &'static str,
    start: Option<Instant>,
}

pub fn span(name: &'static str) -> Span {
    let on = PROFILE.with(|p| p.borrow().is_some());
    Span {
        name,
        start: on.then(Instant::now),
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(start) = self.start {
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
        super::enable();
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
