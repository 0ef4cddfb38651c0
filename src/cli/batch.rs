//! Batch mode of `mla generate`: JSONL requests in, JSONL results out (input order), a progress
//! bar, and the throughput and latency summary `vllm bench throughput` users read.

use super::generate::{prompt_ids, GenerateArgs, PromptInput};
use super::loading::LoadedModel;
use super::logits::write_atomically;
use mla_rt::backend::Backend;
use mla_rt::chat::{ChatTemplate, Message};
use mla_rt::engine::batch_engine::Engine;
use mla_rt::engine::logits::TokenLogprobs;
use mla_rt::engine::request::{Request, RequestOutput};
use mla_rt::engine::sampler::SamplingParams;
use mla_rt::error::{Error, Result};
use mla_rt::tokenizer::TextTokenizer;
use mla_rt::util::summary::mean_median_p99;
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

/// One line of the input file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    id: Value,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<StopField>,
    ignore_eos: Option<bool>,
    min_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    min_tokens: Option<usize>,
    logprobs: Option<usize>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(serde::Serialize)]
struct OutputLine<'a> {
    id: &'a Value,
    text: &'a str,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_prompt_tokens: usize,
    finish_reason: mla_rt::engine::request::FinishReason,
    preemptions: usize,
    ttft_s: f64,
    mean_itl_s: f64,
    latency_s: f64,
    /// Each generated token's log-probabilities, where the line asked for them.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    logprobs: &'a [TokenLogprobs],
}

fn read_requests(
    path: &Path,
    args: &GenerateArgs,
    tokenizer: &TextTokenizer,
    mut template: Option<ChatTemplate>,
    model_dir: &Path,
    max_pos: usize,
) -> Result<(Vec<Value>, Vec<Request>)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let (mut ids, mut requests) = (Vec::new(), Vec::new());
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = format!("{}:{}", path.display(), n + 1);
        let input: InputLine =
            serde_json::from_str(line).map_err(|e| Error::InvalidInput(format!("{at}: {e}")))?;
        let prompt = match (input.prompt, input.messages) {
            (Some(p), None) => PromptInput::Text(p),
            (None, Some(m)) => PromptInput::Messages(m),
            _ => {
                return Err(Error::InvalidInput(format!(
                    "{at}: give exactly one of \"prompt\" and \"messages\""
                )))
            }
        };
        let defaults = args.sampling.params();
        let sampling = SamplingParams {
            temperature: input.temperature.unwrap_or(defaults.temperature),
            top_k: input.top_k.unwrap_or(defaults.top_k),
            top_p: input.top_p.unwrap_or(defaults.top_p),
            seed: input.seed.unwrap_or(defaults.seed),
            min_p: input.min_p.unwrap_or(defaults.min_p),
            presence_penalty: input.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: input
                .frequency_penalty
                .unwrap_or(defaults.frequency_penalty),
            repetition_penalty: input
                .repetition_penalty
                .unwrap_or(defaults.repetition_penalty),
            min_tokens: input.min_tokens.unwrap_or(defaults.min_tokens),
            logprobs: input.logprobs.or(defaults.logprobs),
        };
        sampling
            .validate()
            .map_err(|e| Error::InvalidInput(format!("{at}: {e}")))?;
        // "messages" lines use the chat template with or without --chat.
        if matches!(prompt, PromptInput::Messages(_)) && template.is_none() {
            template = Some(
                ChatTemplate::load(model_dir)
                    .map_err(|e| Error::InvalidInput(format!("{at}: \"messages\": {e}")))?,
            );
        }
        let chat = if args.chat || matches!(prompt, PromptInput::Messages(_)) {
            template.as_ref()
        } else {
            None
        };
        let prompt = prompt_ids(tokenizer, chat, prompt, max_pos, &at)?;
        let max_tokens = input
            .max_tokens
            .unwrap_or(args.sampling.max_new_tokens)
            .min(max_pos + 1 - prompt.len());
        if max_tokens == 0 {
            return Err(Error::InvalidInput(format!(
                "{at}: max_tokens must be at least 1"
            )));
        }
        requests.push(Request {
            id: input.id.to_string(),
            prompt,
            sampling,
            max_tokens,
            stop: match input.stop {
                None => args.sampling.stop.clone(),
                Some(StopField::One(s)) => vec![s],
                Some(StopField::Many(v)) => v,
            },
            ignore_eos: input.ignore_eos.unwrap_or(false),
        });
        ids.push(input.id);
    }
    if requests.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no requests in the file",
            path.display()
        )));
    }
    Ok((ids, requests))
}

pub fn run<B: Backend>(
    args: &GenerateArgs,
    loaded: &LoadedModel<B>,
    tokenizer: &TextTokenizer,
    template: Option<ChatTemplate>,
    prompts: &Path,
    output: &Path,
) -> Result<()> {
    let config = &loaded.model.config;
    let (ids, requests) = read_requests(
        prompts,
        args,
        tokenizer,
        template,
        &loaded.dir,
        config.max_position_embeddings(),
    )?;
    let longest = requests
        .iter()
        .map(|r| r.prompt.len() + r.max_tokens - 1)
        .max()
        .unwrap_or(1);
    let (engine_config, plan) = args.engine.engine_config(
        &loaded.backend,
        config,
        args.model.block_size,
        args.model.attention,
        longest,
    )?;
    super::output::note!("{}", plan.summary());
    let mut engine = Engine::new(
        &loaded.model,
        &loaded.backend,
        Some(tokenizer),
        engine_config,
    )?;
    if let Some(capture) = engine.capture_decode_graphs(requests.len())? {
        super::output::note!("{capture}");
    }
    let total = requests.len();
    for request in requests {
        engine.add_request(request)?;
    }
    let progress = indicatif::ProgressBar::new(total as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} requests [{elapsed_precise}] {msg}",
        )
        .expect("static progress template"),
    );
    let start = Instant::now();
    let mut generated = 0usize;
    let outputs = engine.run_to_completion(|step| {
        generated += step.new_tokens.len();
        progress.inc(step.finished.len() as u64);
        progress.set_message(format!(
            "{:.1} output tokens/s",
            generated as f64 / start.elapsed().as_secs_f64()
        ));
    })?;
    progress.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();

    let mut lines = String::new();
    for (id, o) in ids.iter().zip(&outputs) {
        let itl = o.inter_token_latencies();
        let line = OutputLine {
            id,
            text: &o.text,
            prompt_tokens: o.prompt_tokens,
            completion_tokens: o.output_tokens.len(),
            cached_prompt_tokens: o.cached_prompt_tokens,
            finish_reason: o.finish_reason,
            preemptions: o.preemptions,
            ttft_s: o.ttft(),
            mean_itl_s: if itl.is_empty() {
                0.0
            } else {
                itl.iter().sum::<f64>() / itl.len() as f64
            },
            latency_s: o.latency(),
            logprobs: &o.logprobs,
        };
        lines.push_str(&serde_json::to_string(&line).map_err(|source| Error::Json {
            path: output.to_path_buf(),
            source,
        })?);
        lines.push('\n');
    }
    write_atomically(output, lines.as_bytes())?;
    super::output::note_text(&summary(&outputs, elapsed, &engine));
    super::output::note!("wrote {} results to {}", outputs.len(), output.display());
    if args.profile {
        super::output::note_text(&super::generate::profile_report(
            &engine.stats,
            loaded.backend.counters().is_some(),
        ));
    }
    Ok(())
}

fn summary<B: mla_rt::backend::Backend>(
    outputs: &[RequestOutput],
    elapsed: f64,
    engine: &Engine<'_, B>,
) -> String {
    let prompt: usize = outputs.iter().map(|o| o.prompt_tokens).sum();
    let generated: usize = outputs.iter().map(|o| o.output_tokens.len()).sum();
    let [ttft_mean, ttft_median, ttft_p99] =
        mean_median_p99(outputs.iter().map(|o| o.ttft()).collect());
    let [itl_mean, itl_median, itl_p99] = mean_median_p99(
        outputs
            .iter()
            .flat_map(|o| o.inter_token_latencies())
            .collect(),
    );
    let s = engine.stats;
    format!(
        "Throughput: {:.2} requests/s, {:.1} output tokens/s, {:.1} total tokens/s ({} requests, {prompt} prompt + {generated} output tokens in {elapsed:.2} s)\n\
         TTFT (ms): mean {:.1}, median {:.1}, p99 {:.1}\n\
         ITL (ms): mean {:.2}, median {:.2}, p99 {:.2}\n\
         Engine: {} steps, up to {} sequences per step, {} preemptions, prefix cache hit rate {:.1}%, time outside the forward pass {:.1}% of step time\n",
        outputs.len() as f64 / elapsed,
        generated as f64 / elapsed,
        (prompt + generated) as f64 / elapsed,
        outputs.len(),
        ttft_mean * 1e3,
        ttft_median * 1e3,
        ttft_p99 * 1e3,
        itl_mean * 1e3,
        itl_median * 1e3,
        itl_p99 * 1e3,
        s.steps,
        s.max_batch_seqs,
        engine.preemptions(),
        engine.prefix_cache_stats().hit_rate() * 100.0,
        s.overhead_fraction() * 100.0,
    )
}
