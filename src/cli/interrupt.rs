//! SIGINT and SIGTERM during long work (batch `generate`): the first one is recorded for the work
//! loop to see between steps; a second one of the same kind ends the program at once.

use mla_rt::error::{Error, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Interrupt {
    /// The signal received, 0 before any.
    signal: Arc<AtomicUsize>,
}

impl Interrupt {
    /// Starts watching for SIGINT and SIGTERM.
    pub fn watch() -> Result<Interrupt> {
        let signal = Arc::new(AtomicUsize::new(0));
        for sig in [SIGINT, SIGTERM] {
            let seen = Arc::new(AtomicBool::new(false));
            // Registered first, so it sees `seen` before this signal sets it: a second
            // signal exits with the shell's code for it.
            let registered =
                signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&seen))
                    .and_then(|_| signal_hook::flag::register(sig, seen))
                    .and_then(|_| {
                        signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)
                    });
            registered
                .map_err(|e| Error::InvalidInput(format!("cannot watch signal {sig}: {e}")))?;
        }
        Ok(Interrupt { signal })
    }

    /// The signal received so far, if any.
    pub fn received(&self) -> Option<i32> {
        match self.signal.load(Ordering::Relaxed) {
            0 => None,
            sig => i32::try_from(sig).ok(),
        }
    }
}

/// SIGINT's or SIGTERM's name, for messages.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
