//! Batch mode of `mla generate`: JSONL requests in, JSONL results out in input order, written
//! as requests finish (each result waits only for those before it), a progress bar, and the
//! throughput and latency summary `vllm bench throughput` users read. SIGINT or SIGTERM stops
//! the run between steps and keeps every finished result.

use super::engine_args::CacheDemand;
use super::generate::{prompt_ids, GenerateArgs};
use super::interrupt::{signal_name, Interrupt};
use super::loading::LoadedModel;
use super::output_file::OutputFile;
use mla_rt::backend::Backend;
use mla_rt::chat::{ChatTemplate, PromptInput};
use mla_rt::engine::batch_engine::Engine;
use mla_rt::engine::logits::TokenLogprobs;
use mla_rt::engine::request::{Request, RequestOutput};
use mla_rt::engine::request_line::RequestLine;
use mla_rt::error::{Error, Result};
use mla_rt::tokenizer::TextTokenizer;
use mla_rt::util::summary::mean_median_p99;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

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
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let (mut ids, mut requests) = (Vec::new(), Vec::new());
    for (n, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = format!("{}:{}", path.display(), n + 1);
        let line = std::str::from_utf8(raw).map_err(|e| {
            Error::InvalidInput(format!(
                "{at}: invalid UTF-8 at byte {} of the line",
                e.valid_up_to() + 1
            ))
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let input =
            RequestLine::parse(line).map_err(|e| Error::InvalidInput(format!("{at}: {e}")))?;
        let sampling = input
            .sampling
            .apply(args.sampling.params())
            .map_err(|e| Error::InvalidInput(format!("{at}: {e}")))?;
        let is_chat = matches!(input.prompt, PromptInput::Messages(_));
        // "messages" lines use the chat template with or without --chat.
        if is_chat && template.is_none() {
            template = Some(
                ChatTemplate::load(model_dir)
                    .map_err(|e| Error::InvalidInput(format!("{at}: \"messages\": {e}")))?,
            );
        }
        let chat = template.as_ref().filter(|_| args.chat || is_chat);
        let prompt = prompt_ids(tokenizer, chat, input.prompt, max_pos, &at)?;
        let max_tokens = input
            .max_tokens
            .unwrap_or(args.sampling.max_new_tokens)
            .min(max_pos + 1 - prompt.len());
        requests.push(Request {
            id: input.id.to_string(),
            prompt,
            sampling,
            max_tokens,
            stop: input.stop.unwrap_or_else(|| args.sampling.stop.clone()),
            ignore_eos: input.ignore_eos,
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

/// Result lines waiting for the requests before them, written in input order.
struct InOrderWriter {
    output: OutputFile,
    ids: Vec<Value>,
    /// Finished results not yet written, as lines, by request index.
    held: BTreeMap<usize, String>,
    next: usize,
    written: usize,
}

impl InOrderWriter {
    /// Takes `finished`'s line; writes it and every held line it unblocks.
    fn push(&mut self, finished: &RequestOutput) -> Result<()> {
        let line = self.line(finished)?;
        self.held.insert(finished.index, line);
        while let Some(line) = self.held.remove(&self.next) {
            self.write(&line)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Writes every held line in input order, gaps and all, and commits the file.
    fn finish(mut self) -> Result<usize> {
        for line in std::mem::take(&mut self.held).into_values() {
            self.write(&line)?;
        }
        self.output.commit()?;
        Ok(self.written)
    }

    fn write(&mut self, line: &str) -> Result<()> {
        self.output.write(line.as_bytes())?;
        self.written += 1;
        Ok(())
    }

    fn line(&self, o: &RequestOutput) -> Result<String> {
        let itl = o.inter_token_latencies();
        let line = OutputLine {
            id: &self.ids[o.index],
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
        let mut text = serde_json::to_string(&line).map_err(|source| Error::Json {
            path: self.output.shown().to_path_buf(),
            source,
        })?;
        text.push('\n');
        Ok(text)
    }
}

/// Why a run ended before every request finished.
enum Stop {
    Signal(i32),
    Failed(Error),
}

pub fn run<B: Backend>(
    args: &GenerateArgs,
    loaded: &LoadedModel<B>,
    tokenizer: &TextTokenizer,
    template: Option<ChatTemplate>,
    prompts: &Path,
    output: OutputFile,
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
    let lengths: Vec<usize> = requests
        .iter()
        .map(|r| r.prompt.len() + r.max_tokens - 1)
        .collect();
    let (engine_config, plan) = args.engine.engine_config(
        &loaded.backend,
        config,
        args.model.block_size,
        args.model.attention,
        args.model.kv_cache_dtype,
        CacheDemand::Requests(&lengths),
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
    let interrupt = Interrupt::watch()?;
    let progress = indicatif::ProgressBar::new(total as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} requests [{elapsed_precise}] {msg}",
        )
        .expect("static progress template"),
    );
    let shown = output.shown().display().to_string();
    let mut writer = InOrderWriter {
        output,
        ids,
        held: BTreeMap::new(),
        next: 0,
        written: 0,
    };
    let start = Instant::now();
    let (mut generated, mut outputs) = (0usize, Vec::with_capacity(total));
    let mut stopped = None;
    while engine.has_unfinished() {
        if let Some(signal) = interrupt.received() {
            stopped = Some(Stop::Signal(signal));
            break;
        }
        let step = match engine.step() {
            Ok(step) => step,
            Err(e) => {
                stopped = Some(Stop::Failed(e));
                break;
            }
        };
        generated += step.new_tokens.len();
        progress.inc(step.finished.len() as u64);
        progress.set_message(format!(
            "{:.1} output tokens/s",
            generated as f64 / start.elapsed().as_secs_f64()
        ));
        for mut finished in step.finished {
            writer.push(&finished)?;
            // The summary needs the counts and times only.
            finished.text = String::new();
            finished.logprobs = Vec::new();
            outputs.push(finished);
        }
    }
    progress.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();
    let written = writer.finish()?;
    match stopped {
        Some(Stop::Signal(signal)) => Err(Error::Interrupted {
            signal,
            what: format!(
                "interrupted by {}: {written} of {total} requests finished; their results are in {shown}",
                signal_name(signal)
            ),
        }),
        Some(Stop::Failed(e)) => {
            super::output::note!(
                "{written} of {total} requests finished before the error; their results are in {shown}"
            );
            Err(e)
        }
        None => {
            super::output::note_text(&summary(&outputs, elapsed, &engine));
            super::output::note!("wrote {written} results to {shown}");
            if args.profile {
                super::output::note_text(&super::generate::profile_report(
                    &engine.stats,
                    loaded.backend.counters().is_some(),
                ));
            }
            Ok(())
        }
    }
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
