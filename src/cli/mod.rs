//! The `mla` command line: argument definitions here, one file per subcommand.

mod batch;
mod bench;
mod bench_suites;
pub mod engine_args;
pub mod generate;
mod info;
mod interrupt;
pub mod loading;
pub mod logits;
pub mod output;
pub mod output_file;
mod perplexity;

use clap::{Parser, Subcommand};
use mla_rt::error::Result;

#[derive(Debug, Parser)]
#[command(
    name = "mla",
    version,
    about = "Inference runtime for Multi-head Latent Attention (DeepSeek-V2/V3) models",
    long_about = "Inference runtime for Multi-head Latent Attention (DeepSeek-V2/V3) models.\n\n\
        Loads Hugging Face checkpoint folders (config.json, safetensors, tokenizer.json) and runs \
        them through a paged latent KV cache: prefill in the materialised form, decode in the \
        absorbed form."
)]
pub struct Cli {
    /// Worker threads for the CPU backend, 1 to 1024 (default: one per core).
    #[arg(long, global = true, value_name = "N", value_parser = threads)]
    pub threads: Option<usize>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text: one prompt streamed to stdout, or a JSONL file of requests batched together.
    Generate(generate::GenerateArgs),
    /// Write the logits of every input token to a JSON file.
    Logits(logits::LogitsArgs),
    /// Describe a model: architecture, parameters, KV cache size per token.
    Info(info::InfoArgs),
    /// Sliding-window perplexity of a model on a text file.
    Perplexity(perplexity::PerplexityArgs),
    /// Prefill and decode throughput of random-weight presets (llama-bench style).
    Bench(bench::BenchArgs),
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(crate::server::ServeArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(threads) = cli.threads {
        // Only fails if a pool already exists, which cannot happen before the first command.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
    }
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Logits(args) => logits::run(args),
        Command::Info(args) => info::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Bench(args) => bench::run_bench(args),
        Command::Serve(args) => crate::server::run(args),
    }
}

/// A count that must be at least 1 (`--stride`, `--reps`): 0 is refused, not bent to 1.
pub(crate) fn at_least_one(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `--threads`: 1 to 1024 (more threads than that only cost time to start).
fn threads(text: &str) -> std::result::Result<usize, String> {
    match at_least_one(text)? {
        n if n > 1024 => Err(format!("{n} threads: at most 1024")),
        n => Ok(n),
    }
}

/// `--block-size`: 1 to [`MAX_BLOCK_SIZE`] tokens.
pub(crate) fn block_size(text: &str) -> std::result::Result<usize, String> {
    use mla_rt::kv::MAX_BLOCK_SIZE;
    match at_least_one(text)? {
        n if n > MAX_BLOCK_SIZE => Err(format!("{n} tokens: at most {MAX_BLOCK_SIZE}")),
        n => Ok(n),
    }
}

/// Text that must be UTF-8, refused with the flag and the byte where it is not (clap's own
/// message names neither).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Utf8Text;

impl clap::builder::TypedValueParser for Utf8Text {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<String, clap::Error> {
        use std::os::unix::ffi::OsStrExt;
        std::str::from_utf8(value.as_bytes())
            .map(str::to_string)
            .map_err(|e| {
                let flag = arg.and_then(|a| a.get_long()).unwrap_or("argument");
                clap::Error::raw(
                    clap::error::ErrorKind::InvalidUtf8,
                    format!("--{flag}: invalid UTF-8 at byte {}\n", e.valid_up_to() + 1),
                )
                .with_cmd(cmd)
            })
    }
}

/// A string that must not be empty (`--stop ""` would stop before any output).
fn non_empty(text: &str) -> std::result::Result<String, String> {
    match text.is_empty() {
        true => Err("must not be empty".into()),
        false => Ok(text.to_string()),
    }
}
