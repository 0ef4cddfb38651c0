//! `mla generate`: tokenize a prompt, prefill, then decode token by token, streaming text.

use super::loading::ModelArgs;
use crate::backend::Backend;
use crate::engine::sampler::{Sampler, SamplingParams};
use crate::engine::session::Session;
use crate::error::{Error, Result};
use crate::model::LogitRows;
use crate::tokenizer::TextTokenizer;
use clap::Args;
use std::io::Write;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The prompt text (BOS is prepended when the tokenizer config asks for it).
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,

    /// Stop after this many generated tokens (EOS stops earlier).
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_new_tokens: usize,

    /// Sampling temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub temperature: f32,

    /// Sample only from the K most likely tokens; 0 disables the cut.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,

    /// Sample only from the smallest set of tokens whose probabilities reach P, in (0, 1].
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,

    /// Random seed for sampling.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
}

/// Ids and timings of one generation.
pub struct Generation {
    pub tokens: Vec<u32>,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    pub hit_eos: bool,
}

/// Generates up to `max_new` tokens after `prompt`, handing each new id to `on_token`.
pub fn generate_ids<B: Backend>(
    session: &mut Session<'_, B>,
    backend: &B,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    is_eos: impl Fn(u32) -> bool,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    let start = Instant::now();
    let mut logits = backend.to_host(&session.feed(prompt, LogitRows::LastPerSequence)?)?;
    let prefill_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut generation = Generation {
        tokens: Vec::new(),
        prefill_secs,
        decode_secs: 0.0,
        hit_eos: false,
    };
    while generation.tokens.len() < max_new {
        let next = sampler.sample(&logits.data);
        generation.tokens.push(next);
        if is_eos(next) {
            generation.hit_eos = true;
            break;
        }
        on_token(next)?;
        if generation.tokens.len() == max_new {
            break;
        }
        logits = backend.to_host(&session.feed(&[next], LogitRows::LastPerSequence)?)?;
    }
    generation.decode_secs = start.elapsed().as_secs_f64();
    Ok(generation)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let mut sampler = Sampler::new(sampling)?;
    let loaded = args.model.load()?;
    let config = &loaded.model.config;
    let tokenizer = TextTokenizer::load(&args.model.model, config)?;
    let prompt = tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        return Err(Error::InvalidInput(
            "--prompt: the prompt encodes to no tokens".into(),
        ));
    }
    let max_pos = config.max_position_embeddings;
    if prompt.len() > max_pos {
        return Err(Error::InvalidInput(format!(
            "--prompt: {} tokens exceed max_position_embeddings ({max_pos})",
            prompt.len()
        )));
    }
    // The last sampled token is never fed back, so it needs no cache room.
    let max_new = args.max_new_tokens.min(max_pos + 1 - prompt.len());
    let mut session = Session::new(
        &loaded.model,
        &loaded.backend,
        prompt.len() + max_new.saturating_sub(1),
        args.model.block_size,
        args.model.attention,
    )?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let write_err = |e| Error::io("<stdout>", e);
    let mut stream = tokenizer.stream();
    let generation = generate_ids(
        &mut session,
        &loaded.backend,
        &prompt,
        max_new,
        &mut sampler,
        |t| tokenizer.is_eos(t),
        |t| {
            if let Some(text) = stream.push(t)? {
                out.write_all(text.as_bytes())
                    .and_then(|_| out.flush())
                    .map_err(write_err)?;
            }
            Ok(())
        },
    )?;
    if let Some(text) = stream.finish()? {
        out.write_all(text.as_bytes()).map_err(write_err)?;
    }
    out.write_all(b"\n")
        .and_then(|_| out.flush())
        .map_err(write_err)?;
    let decoded = generation.tokens.len().saturating_sub(1);
    eprintln!(
        "prefill: {} tokens in {:.3} s ({:.1} tokens/s); decode: {} tokens in {:.3} s ({:.1} tokens/s){}",
        prompt.len(),
        generation.prefill_secs,
        prompt.len() as f64 / generation.prefill_secs.max(1e-9),
        decoded,
        generation.decode_secs,
        decoded as f64 / generation.decode_secs.max(1e-9),
        match (generation.hit_eos, max_new < args.max_new_tokens) {
            (true, _) => "; stopped at EOS",
            (false, true) => "; stopped at max_position_embeddings",
            _ => "",
        }
    );
    Ok(())
}
