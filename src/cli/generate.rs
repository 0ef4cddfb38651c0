//! `mla generate`: one prompt streamed to stdout, or a JSONL file of requests run as one
//! continuously batched workload.

use super::batch;
use super::engine_args::CacheDemand;
use super::engine_args::EngineArgs;
use super::loading::{LoadedModel, ModelArgs, ModelTask};
use super::output_file::OutputFile;
use clap::Args;
use mla_rt::backend::Backend;
use mla_rt::chat::{ChatTemplate, Message};
use mla_rt::engine::batch_engine::{Engine, NewToken};
use mla_rt::engine::request::Request;
use mla_rt::engine::sampler::SamplingParams;
use mla_rt::error::{Error, Result};
use mla_rt::tokenizer::TextTokenizer;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The prompt text, streamed back as it is generated (BOS is prepended when the tokenizer
    /// config asks for it).
    #[arg(
        long,
        value_name = "TEXT",
        required_unless_present = "prompts",
        conflicts_with = "prompts",
        value_parser = super::Utf8Text
    )]
    pub prompt: Option<String>,

    /// Batch mode: a JSONL file, one request per line: {"id", "prompt"} or {"id", "messages"},
    /// optionally with "max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "ignore_eos".
    #[arg(long, value_name = "FILE.jsonl", requires = "output")]
    pub prompts: Option<PathBuf>,

    /// Batch mode: where to write one JSON result per request, in input order.
    #[arg(long, value_name = "OUT.jsonl", requires = "prompts")]
    pub output: Option<PathBuf>,

    /// Apply the model's chat template (tokenizer_config.json) to the prompt(s), as a user turn.
    #[arg(long)]
    pub chat: bool,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Print a per-op time table at the end (calls, total ms, share of step time).
    #[arg(long)]
    pub profile: bool,
}

/// What `--profile` prints: the per-op table against the engine's step time and, on a device
/// backend (`counted`), the launches and waits of a mean decode step.
pub fn profile_report(stats: &mla_rt::engine::batch_engine::EngineStats, counted: bool) -> String {
    let mut s = profile_table(&mla_rt::profile::take(), stats.step_secs);
    if counted && stats.decode_steps > 0 {
        s += &format!(
            "decode step: {} (mean of {} decode steps)\n",
            stats.decode_counters.per_step(stats.decode_steps),
            stats.decode_steps
        );
    }
    s
}

/// The per-op table, against `step_secs` of engine steps.
fn profile_table(
    profile: &std::collections::BTreeMap<&'static str, mla_rt::profile::OpTime>,
    step_secs: f64,
) -> String {
    let mut s = String::from("| op | calls | total ms | % of step time |\n|---|---:|---:|---:|\n");
    let mut accounted = 0.0;
    for (name, t) in profile {
        accounted += t.secs;
        s += &format!(
            "| {name} | {} | {:.2} | {:.1}% |\n",
            t.calls,
            t.secs * 1e3,
            t.secs / step_secs.max(1e-12) * 100.0
        );
    }
    let other = (step_secs - accounted).max(0.0);
    s += &format!(
        "| other (norms, embedding, scheduling, sampling) | | {:.2} | {:.1}% |\n",
        other * 1e3,
        other / step_secs.max(1e-12) * 100.0
    );
    s
}

/// Sampling defaults (per-request values in a JSONL file override them).
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Stop after this many generated tokens (EOS and stop strings stop earlier).
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

    /// Stop when the generated text contains this string (repeatable); the text ends before it.
    #[arg(long, value_name = "TEXT", value_parser = super::non_empty)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }
}

/// Prompt token ids for a plain prompt or a chat, checked against the context length.
pub fn prompt_ids(
    tokenizer: &TextTokenizer,
    template: Option<&ChatTemplate>,
    prompt: PromptInput,
    max_pos: usize,
    what: &str,
) -> Result<Vec<u32>> {
    let render = |t: &ChatTemplate, messages: &[Message]| {
        t.render(messages)
            .map_err(|e| Error::InvalidInput(format!("{what}: {e}")))
    };
    let ids = match (prompt, template) {
        (PromptInput::Text(text), None) => tokenizer.encode(&text)?,
        (PromptInput::Text(text), Some(t)) => tokenizer.encode_chat(
            &render(
                t,
                &[Message {
                    role: "user".into(),
                    content: text,
                }],
            )?,
            t.bos_token(),
        )?,
        (PromptInput::Messages(messages), Some(t)) => {
            tokenizer.encode_chat(&render(t, &messages)?, t.bos_token())?
        }
        (PromptInput::Messages(_), None) => {
            return Err(Error::InvalidInput(format!(
                "{what}: \"messages\" need the model's chat template"
            )))
        }
    };
    if ids.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{what}: the prompt encodes to no tokens"
        )));
    }
    if ids.len() > max_pos {
        return Err(Error::InvalidInput(format!(
            "{what}: {} tokens exceed max_position_embeddings ({max_pos})",
            ids.len()
        )));
    }
    Ok(ids)
}

pub use mla_rt::chat::PromptInput;

pub fn run(args: GenerateArgs) -> Result<()> {
    args.sampling.params().validate()?;
    if args.sampling.max_new_tokens == 0 {
        return Err(Error::InvalidInput(
            "--max-new-tokens must be at least 1".into(),
        ));
    }
    // Batch mode's output is checked (and its temporary created) before any work.
    let output = match (&args.prompts, &args.output) {
        (Some(prompts), Some(output)) => {
            let mut inputs = args.model.input_files()?;
            inputs.push(prompts.clone());
            Some(OutputFile::create(output, &inputs)?)
        }
        _ => None,
    };
    args.model.run(GenerateTask(&args, output))
}

struct GenerateTask<'a>(&'a GenerateArgs, Option<OutputFile>);

impl ModelTask for GenerateTask<'_> {
    type Output = ();

    fn run<B: Backend>(self, loaded: LoadedModel<B>) -> Result<()> {
        let GenerateTask(args, output) = self;
        if args.profile {
            mla_rt::profile::enable(loaded.backend.sync_fn());
        }
        let tokenizer = TextTokenizer::load(&loaded.dir, &loaded.model.config)?;
        let template = if args.chat {
            Some(ChatTemplate::load(&loaded.dir)?)
        } else {
            None
        };
        match (&args.prompts, output) {
            (Some(prompts), Some(output)) => {
                batch::run(args, &loaded, &tokenizer, template, prompts, output)
            }
            _ => stream_one(args, &loaded, &tokenizer, template.as_ref()),
        }
    }
}

fn stream_one<B: Backend>(
    args: &GenerateArgs,
    loaded: &LoadedModel<B>,
    tokenizer: &TextTokenizer,
    template: Option<&ChatTemplate>,
) -> Result<()> {
    let config = &loaded.model.config;
    let text = args.prompt.clone().unwrap_or_default();
    let prompt = prompt_ids(
        tokenizer,
        template,
        PromptInput::Text(text),
        config.max_position_embeddings(),
        "--prompt",
    )?;
    let max_tokens = args
        .sampling
        .max_new_tokens
        .min(config.max_position_embeddings() + 1 - prompt.len());
    let prompt_len = prompt.len();
    let request = Request {
        id: "prompt".into(),
        prompt,
        sampling: args.sampling.params(),
        max_tokens,
        stop: args.sampling.stop.clone(),
        ignore_eos: false,
    };
    // The same engine flags and checks as batch mode, for one sequence without prefix caching.
    let (mut engine_config, _) = args.engine.engine_config(
        &loaded.backend,
        config,
        args.model.block_size,
        args.model.attention,
        args.model.kv_cache_dtype,
        CacheDemand::Requests(&[prompt_len + max_tokens - 1]),
    )?;
    engine_config.prefix_caching = false;
    engine_config.scheduler.max_num_seqs = 1;
    let mut engine = Engine::new(
        &loaded.model,
        &loaded.backend,
        Some(tokenizer),
        engine_config,
    )?;
    if let Some(capture) = engine.capture_decode_graphs(1)? {
        if args.profile {
            super::output::note!("{capture}");
        }
    }
    engine.add_request(request)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let write_err = Error::stdout;
    // Echo the prompt, as llama.cpp does, so the continuation reads on from it (a chat
    // prompt is the template's business, not the user's text).
    if template.is_none() {
        out.write_all(args.prompt.as_deref().unwrap_or_default().as_bytes())
            .and_then(|_| out.flush())
            .map_err(write_err)?;
    }
    let mut stream = tokenizer.stream();
    let start = Instant::now();
    let mut result = None;
    while engine.has_unfinished() {
        let step = engine.step()?;
        for &NewToken { token, .. } in &step.new_tokens {
            if tokenizer.is_eos(token) {
                continue;
            }
            // With stop strings, text is held back until the request ends (it may be cut).
            if let Some(piece) = stream
                .push(token)?
                .filter(|_| args.sampling.stop.is_empty())
            {
                out.write_all(piece.as_bytes())
                    .and_then(|_| out.flush())
                    .map_err(write_err)?;
            }
        }
        result = step.finished.into_iter().next().or(result);
    }
    let result =
        result.ok_or_else(|| Error::InvalidInput("the request produced no output".into()))?;
    let tail = if args.sampling.stop.is_empty() {
        stream.finish()?.unwrap_or_default()
    } else {
        result.text.clone()
    };
    out.write_all(tail.as_bytes())
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(write_err)?;
    let prefill_secs = result.ttft();
    let total = start.elapsed().as_secs_f64();
    let decoded = result.output_tokens.len().saturating_sub(1);
    let decode_secs = (total - prefill_secs).max(1e-9);
    super::output::note!(
        "prefill: {prompt_len} tokens in {prefill_secs:.3} s ({:.1} tokens/s); decode: {decoded} tokens in {decode_secs:.3} s ({:.1} tokens/s); finish: {}",
        prompt_len as f64 / prefill_secs.max(1e-9),
        decoded as f64 / decode_secs,
        match result.finish_reason {
            mla_rt::engine::request::FinishReason::Stop => "stop (EOS or stop string)",
            mla_rt::engine::request::FinishReason::Length if max_tokens < args.sampling.max_new_tokens => "length (max_position_embeddings)",
            mla_rt::engine::request::FinishReason::Length => "length (--max-new-tokens)",
        }
    );
    if args.profile {
        super::output::note_text(&profile_report(
            &engine.stats,
            loaded.backend.counters().is_some(),
        ));
    }
    Ok(())
}
