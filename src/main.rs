use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = mla_rt::cli::Cli::parse();
    match mla_rt::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
