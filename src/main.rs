//! The `mla` binary: parses the command line and dispatches to one subcommand.

mod bench;
mod cli;
mod server;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`mla info | head -1`): nothing left to say.
        Err(mla_rt::error::Error::ClosedOutput) => ExitCode::SUCCESS,
        Err(e @ mla_rt::error::Error::Interrupted { signal, .. }) => {
            cli::output::note!("{e}");
            ExitCode::from(128u8.saturating_add(u8::try_from(signal).unwrap_or(0)))
        }
        Err(e) => {
            cli::output::note!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
