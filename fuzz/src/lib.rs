//! What the fuzz targets share: the scratch folder the file-reading targets write their input
//! into, and panics that unwind.

use std::path::PathBuf;
use std::sync::{Once, OnceLock};

/// `$MLA_FUZZ_SCRATCH` (scripts/fuzz/run.sh makes one per run and removes it), else a folder
/// of this process under the system's temporary folder, left there when libFuzzer exits.
pub fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = match std::env::var_os("MLA_FUZZ_SCRATCH") {
            Some(dir) => PathBuf::from(dir).join(std::process::id().to_string()),
            None => std::env::temp_dir().join(format!("mla-fuzz-{}", std::process::id())),
        };
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch folder");
        dir
    })
}

/// Puts back Rust's own panic hook in place of libfuzzer-sys's, which aborts at the panic: the
/// runtime catches the panics of a dependency where it must (`ChatTemplate::render` those of
/// minijinja), and a panic nobody catches still reaches libfuzzer-sys's `catch_unwind` around
/// the target, which aborts: a finding.
pub fn panics_unwind() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| drop(std::panic::take_hook()));
}

