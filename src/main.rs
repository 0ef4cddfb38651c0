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
        Err(e) => {
            cli::output::note!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
