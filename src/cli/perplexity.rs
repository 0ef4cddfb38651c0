//! `mla perplexity`: sliding-window perplexity of a model on a text file.

use super::loading::{LoadedModel, ModelArgs, ModelTask};
use clap::Args;
use mla_rt::backend::Backend;
use mla_rt::engine::perplexity::{sliding_window, Windows};
use mla_rt::error::{Error, Result};
use mla_rt::tokenizer::TextTokenizer;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The text to score (UTF-8). BOS is prepended as the tokenizer config says.
    #[arg(long, value_name = "TEXT_FILE")]
    pub file: PathBuf,

    /// Tokens per window (default: max_position_embeddings, at most 1024).
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,

    /// Tokens between window starts; each window scores only tokens no earlier window reached
    /// (default: half the context).
    #[arg(long, value_name = "S", value_parser = super::at_least_one)]
    pub stride: Option<usize>,
}

pub fn run(args: PerplexityArgs) -> Result<()> {
    mla_rt::util::files::require_regular_file(&args.file)?;
    let bytes = std::fs::read(&args.file).map_err(|e| Error::io(&args.file, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::InvalidInput(format!(
            "{}:{line}: invalid UTF-8 at byte {} of the file",
            args.file.display(),
            at + 1
        ))
    })?;
    let text = mla_rt::util::files::without_bom(&text).to_string();
    args.model.run(PerplexityTask { args: &args, text })
}

struct PerplexityTask<'a> {
    args: &'a PerplexityArgs,
    text: String,
}

impl ModelTask for PerplexityTask<'_> {
    type Output = ();

    fn run<B: Backend>(self, loaded: LoadedModel<B>) -> Result<()> {
        let (args, text) = (self.args, self.text);
        let tokenizer = TextTokenizer::load(&loaded.dir, &loaded.model.config)?;
        let ids = tokenizer.encode(&text)?;
        let context = args
            .context
            .unwrap_or(loaded.model.config.max_position_embeddings().min(1024));
        let stride = args.stride.unwrap_or(context / 2).max(1);
        let progress = indicatif::ProgressBar::new(ids.len() as u64);
        progress.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} tokens [{elapsed_precise}] {msg}",
            )
            .expect("static progress template"),
        );
        let result = sliding_window(
            &loaded.model,
            &loaded.backend,
            &ids,
            Windows { context, stride },
            (
                args.model.block_size,
                args.model.attention,
                args.model.kv_cache_dtype,
            ),
            |done, so_far| {
                progress.set_position(done as u64);
                progress.set_message(format!("PPL so far {:.4}", so_far.ppl()));
            },
        )?;
        progress.finish_and_clear();
        super::output::say(&format!(
            "tokens evaluated: {}\nmean NLL:         {:.6}\nperplexity:       {:.4}\n",
            result.tokens_evaluated,
            result.mean_nll(),
            result.ppl()
        ))?;
        super::output::note!("({} tokens, context {context}, stride {stride})", ids.len());
        Ok(())
    }
}
