//! The CLI's terminal output. Results go to stdout through [`say`]: a closed pipe (`mla info |
//! head -1`) becomes [`Error::ClosedOutput`], on which `main` exits quietly, and any other
//! failure (a full disk) one error naming stdout. Notes go to stderr through [`note_text`] and
//! [`note!`], which never fail or panic: a closed stderr has no one left to tell.

use mla_rt::error::{Error, Result};
use std::io::Write;

/// Writes `text` to stdout and flushes it.
pub fn say(text: &str) -> Result<()> {
    say_bytes(text.as_bytes())
}

/// [`say`] for bytes.
pub fn say_bytes(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(Error::stdout)
}

/// Lines of a report, written to stdout at once by [`Report::say`].
#[derive(Debug, Default)]
pub struct Report(String);

impl Report {
    pub fn line(&mut self, text: std::fmt::Arguments<'_>) {
        use std::fmt::Write as _;
        // Formatting into a String cannot fail.
        let _ = self.0.write_fmt(text);
        self.0.push('\n');
    }

    pub fn say(&self) -> Result<()> {
        say(&self.0)
    }
}

/// Writes `text` to stderr as it is; a failed write is dropped.
pub fn note_text(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
}

/// `eprintln!` without its panic (see [`note_text`]).
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::cli::output::note_text(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use note;
