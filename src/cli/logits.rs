//! `mla logits`: logits of every input token, prefill then token-by-token decode.

use super::loading::{LoadedModel, ModelArgs, ModelTask};
use super::output_file::OutputFile;
use clap::Args;
use mla_rt::backend::Backend;
use mla_rt::engine::session::Session;
use mla_rt::error::{Error, Result};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Comma-separated input token ids, e.g. 5,17,42.
    #[arg(long, value_delimiter = ',', required = true, value_name = "IDS")]
    pub token_ids: Vec<u32>,

    /// How many leading tokens go through one prefill pass; the rest are decoded one at a time
    /// through the cache (default: all tokens in one prefill).
    #[arg(long, value_name = "N")]
    pub prefill: Option<usize>,

    /// JSON file to write: {"token_ids": [...], "logits": [[...], ...]}, one vocab-size row per token.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
}

#[derive(serde::Serialize)]
struct LogitsFile<'a> {
    token_ids: &'a [u32],
    logits: Vec<&'a [f32]>,
}

pub fn run(args: LogitsArgs) -> Result<()> {
    let n = args.token_ids.len();
    let prefill = args.prefill.unwrap_or(n);
    if prefill == 0 || prefill > n {
        return Err(Error::InvalidInput(format!(
            "--prefill must be between 1 and the {n} token ids, found {prefill}"
        )));
    }
    let output = OutputFile::create(&args.output, &args.model.input_files()?)?;
    args.model.run(LogitsTask(&args, output))
}

struct LogitsTask<'a>(&'a LogitsArgs, OutputFile);

impl ModelTask for LogitsTask<'_> {
    type Output = ();

    fn run<B: Backend>(self, loaded: LoadedModel<B>) -> Result<()> {
        let LogitsTask(args, mut output) = self;
        let (n, prefill) = (
            args.token_ids.len(),
            args.prefill.unwrap_or(args.token_ids.len()),
        );
        let config = &loaded.model.config;
        if let Some(bad) = args
            .token_ids
            .iter()
            .find(|&&t| t as usize >= config.vocab_size())
        {
            return Err(Error::InvalidInput(format!(
                "--token-ids: id {bad} is outside the vocabulary (vocab_size {})",
                config.vocab_size()
            )));
        }
        if n > config.max_position_embeddings() {
            return Err(Error::InvalidInput(format!(
                "--token-ids: {n} tokens exceed max_position_embeddings ({})",
                config.max_position_embeddings()
            )));
        }
        let mut session = Session::with_cache_dtype(
            &loaded.model,
            &loaded.backend,
            n,
            args.model.block_size,
            args.model.attention,
            args.model.kv_cache_dtype,
        )?;
        let logits = session.logits(&args.token_ids, prefill)?;
        let file = LogitsFile {
            token_ids: &args.token_ids,
            logits: logits.chunks(config.vocab_size()).collect(),
        };
        let json = serde_json::to_string(&file).map_err(|source| Error::Json {
            path: args.output.clone(),
            source,
        })?;
        output.write(json.as_bytes())?;
        output.write(b"\n")?;
        let shown = output.shown().display().to_string();
        output.commit()?;
        super::output::note!("wrote {n} × {} logits to {shown}", config.vocab_size());
        Ok(())
    }
}
