//! `mla logits`: logits of every input token, prefill then token-by-token decode.

use super::loading::{LoadedModel, ModelArgs, ModelTask};
use clap::Args;
use mla_rt::backend::Backend;
use mla_rt::engine::session::Session;
use mla_rt::error::{Error, Result};
use std::path::{Path, PathBuf};

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
    args.model.run(LogitsTask(&args))
}

struct LogitsTask<'a>(&'a LogitsArgs);

impl ModelTask for LogitsTask<'_> {
    type Output = ();

    fn run<B: Backend>(self, loaded: LoadedModel<B>) -> Result<()> {
        let args = self.0;
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
        let mut session = Session::new(
            &loaded.model,
            &loaded.backend,
            n,
            args.model.block_size,
            args.model.attention,
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
        write_atomically(&args.output, json.as_bytes())?;
        super::output::note!(
            "wrote {n} × {} logits to {}",
            config.vocab_size(),
            args.output.display()
        );
        Ok(())
    }
}

/// Writes through a temporary file in the same folder and renames it, so a failure never
/// leaves a half-written output behind.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{}: not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.partial", file_name.to_string_lossy()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
