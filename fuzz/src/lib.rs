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

/// Inputs of the chat_template target that hit an open finding (docs/testing.md, "Fuzzing"),
/// skipped so that the run explores the rest. Each makes minijinja do unbounded work in one
/// template instruction, which neither the fuel nor the output limit sees:
/// - a string joined more than once (`messages | map(attribute='role') | join(s) | join(s)`)
///   grows by the separator's length at each join, to gigabytes (out of memory);
/// - a format width of 7 digits or more (`'%99999999999s' | format(3)`) allocates that many
///   bytes at once (an abort where the allocation fails);
/// - a list repeated a huge number of times and printed (`{{ 444444444444 * [1] }}`) is written
///   item by item after the output limit has refused the rest (a hang).
///
/// The last two are skipped as any number of 7 digits or more.
pub fn chat_template_known_open(data: &[u8]) -> bool {
    let joins = data.windows(5).filter(|w| w == b"join(").count();
    let long_number = data
        .split(|b| !b.is_ascii_digit())
        .any(|digits| digits.len() >= 7);
    joins >= 2 || long_number
}
