//! The engine: requests in, a scheduler and a block pool deciding each step, one batched
//! forward pass per step over the paged latent cache, sampled tokens out.

use super::logits::{History, TokenLogprobs};
use super::request::{FinishReason, Request, RequestOutput};
use super::sampler::{Needs, Sampler, SAMPLING_HEAD};
use super::scheduler::{Scheduler, SchedulerConfig, Sequence};
use crate::backend::{host_argmax_rows, host_softmax_totals, host_top_k_rows};
use crate::backend::{AttentionBatch, Backend, DeviceCounters, GraphCapture, SeqChunk};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kv::cache_dtype::{CacheRows, KvCacheDtype};
use crate::kv::{slot, BlockManager, PrefixCacheStats};
use crate::model::Model;
use crate::model::{AttentionForm, LogitRows, Step};
use crate::tokenizer::TextTokenizer;
use crate::weights::HostTensor;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    pub block_size: usize,
    pub num_blocks: usize,
    pub prefix_caching: bool,
    pub scheduler: SchedulerConfig,
    pub attention: AttentionForm,
    /// Replay decode steps from CUDA graphs where the backend has them (`--enforce-eager`
    /// turns this off).
    pub cuda_graphs: bool,
    /// What the cache stores (`--kv-cache-dtype`).
    pub cache_dtype: KvCacheDtype,
}

/// Where step time goes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    pub steps: usize,
    /// Time inside the model's forward pass (kernels, on a GPU).
    pub forward_secs: f64,
    /// Whole steps: scheduling, batch building, forward, sampling, bookkeeping.
    pub step_secs: f64,
    pub max_batch_seqs: usize,
    /// Steps in which every sequence computed one token (decode steps).
    pub decode_steps: usize,
    /// What the device backend counted over the decode steps, sampling included (zeros on the
    /// CPU).
    pub decode_counters: DeviceCounters,
}

impl EngineStats {
    /// Share of step time spent outside the forward pass.
    pub fn overhead_fraction(&self) -> f64 {
        if self.step_secs == 0.0 {
            0.0
        } else {
            (self.step_secs - self.forward_secs) / self.step_secs
        }
    }
}

/// One token sampled in a step.
#[derive(Debug, Clone, PartialEq)]
pub struct NewToken {
    /// The request's index (what [`Engine::add_request`] returned).
    pub index: usize,
    pub token: u32,
    /// Its log-probabilities, where the request asked for them.
    pub logprobs: Option<TokenLogprobs>,
}

/// What one step produced.
#[derive(Debug, Default)]
pub struct StepOutput {
    /// Every token sampled this step, in the order of the batch.
    pub new_tokens: Vec<NewToken>,
    pub finished: Vec<RequestOutput>,
}

pub struct Engine<'m, B: Backend> {
    model: &'m Model<B>,
    backend: &'m B,
    tokenizer: Option<&'m TextTokenizer>,
    cache: B::KvCache,
    blocks: BlockManager,
    scheduler: Scheduler,
    config: EngineConfig,
    next_index: usize,
    pub stats: EngineStats,
    /// Tells this engine's CUDA graphs from another's (they read its cache and model).
    id: u64,
    /// Where decode steps replay from CUDA graphs: the cache block past the pool that padded
    /// batches' filler sequences write and read, and the batch sizes steps are padded to.
    padding: Option<(u32, Vec<usize>)>,
}

impl<'m, B: Backend> Engine<'m, B> {
    pub fn new(
        model: &'m Model<B>,
        backend: &'m B,
        tokenizer: Option<&'m TextTokenizer>,
        config: EngineConfig,
    ) -> Result<Self> {
        if config.block_size == 0 || config.num_blocks == 0 {
            return Err(Error::InvalidInput(
                "the KV cache needs at least one block of at least one token".into(),
            ));
        }
        if config.scheduler.max_num_seqs == 0 || config.scheduler.max_batched_tokens == 0 {
            return Err(Error::InvalidInput(
                "--max-num-seqs and --max-batched-tokens must be at least 1".into(),
            ));
        }
        let c = &model.config;
        let padding = (config.cuda_graphs && backend.replays_decode_graphs()).then(|| {
            (
                config.num_blocks as u32,
                crate::backend::decode_batch_sizes(config.scheduler.max_num_seqs),
            )
        });
        let rows = CacheRows::resolve(config.cache_dtype, c, backend.cache_value_bytes())?;
        let cache = backend.alloc_cache_rows(
            c.num_hidden_layers(),
            config.num_blocks + padding.is_some() as usize,
            config.block_size,
            rows,
        )?;
        Ok(Engine {
            model,
            backend,
            tokenizer,
            cache,
            blocks: BlockManager::new(config.num_blocks, config.block_size, config.prefix_caching),
            scheduler: Scheduler::new(config.scheduler),
            config,
            next_index: 0,
            stats: EngineStats::default(),
            id: crate::backend::graph_owner(),
            padding,
        })
    }

    /// Captures the CUDA graphs of decode steps of up to `max_seqs` sequences (each padded batch
    /// size, see [`crate::backend::decode_batch_sizes`]) before the first step, where the
    /// backend replays decode steps from graphs and the engine's config asks for them (None
    /// otherwise); later sizes and shapes are captured as steps meet them.
    pub fn capture_decode_graphs(&mut self, max_seqs: usize) -> Result<Option<GraphCapture>> {
        let Some((scratch, sizes)) = &self.padding else {
            return Ok(None);
        };
        let largest = sizes
            .iter()
            .copied()
            .find(|&b| b >= max_seqs.min(self.config.scheduler.max_num_seqs))
            .unwrap_or(1);
        let sizes: Vec<usize> = sizes.iter().copied().filter(|&b| b <= largest).collect();
        let c = &self.model.config;
        let bs = self.config.block_size;
        let longest = c.max_position_embeddings().min(self.config.num_blocks * bs);
        let table_values = largest * longest.div_ceil(bs);
        let (model, backend, cache, scratch) =
            (self.model, self.backend, &mut self.cache, *scratch);
        let attention = self.config.attention;
        backend.capture_decode_graphs(self.id, &sizes, table_values, &mut |b| {
            let mut step = empty_step(bs, b);
            pad_decode_step(&mut step, b, scratch);
            model.forward(backend, cache, &step, attention, LogitRows::LastPerSequence)
        })
    }

    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.blocks.stats
    }

    pub fn preemptions(&self) -> usize {
        self.scheduler.total_preemptions
    }

    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_unfinished()
    }

    /// Requests waiting for their first step, and requests running.
    pub fn queue_lengths(&self) -> (usize, usize) {
        (self.scheduler.waiting.len(), self.scheduler.running.len())
    }

    /// Cache blocks in use (held by a sequence or kept for the prefix cache but not free) and
    /// in all.
    pub fn cache_blocks(&self) -> (usize, usize) {
        (
            self.config.num_blocks - self.blocks.num_free(),
            self.config.num_blocks,
        )
    }

    /// Drops request `index` wherever it is, freeing its blocks for the next step; false if it
    /// is not (or no longer) in the engine.
    pub fn abort(&mut self, index: usize) -> bool {
        match self.scheduler.remove(index) {
            Some(mut seq) => {
                self.blocks.free(&mut seq.blocks);
                true
            }
            None => false,
        }
    }

    /// Queues a request; returns its index (the order outputs can be sorted back into).
    pub fn add_request(&mut self, request: Request) -> Result<usize> {
        let c = &self.model.config;
        let id = &request.id;
        if request.prompt.is_empty() {
            return Err(Error::InvalidInput(format!(
                "request {id}: the prompt has no tokens"
            )));
        }
        if let Some(bad) = request
            .prompt
            .iter()
            .find(|&&t| t as usize >= c.vocab_size())
        {
            return Err(Error::InvalidInput(format!(
                "request {id}: token id {bad} is outside the vocabulary (vocab_size {})",
                c.vocab_size()
            )));
        }
        let max_pos = c.max_position_embeddings();
        if request.prompt.len() > max_pos {
            return Err(Error::InvalidInput(format!(
                "request {id}: {} prompt tokens exceed max_position_embeddings ({max_pos})",
                request.prompt.len()
            )));
        }
        if request.max_tokens == 0 {
            return Err(Error::InvalidInput(format!(
                "request {id}: max_tokens must be at least 1"
            )));
        }
        // The last sampled token is never fed back, so it takes no cache slot.
        let longest = (request.prompt.len() + request.max_tokens - 1).min(max_pos);
        let needed = longest.div_ceil(self.config.block_size);
        if needed > self.config.num_blocks {
            return Err(Error::InvalidInput(format!(
                "request {id}: up to {longest} tokens need {needed} cache blocks, the cache has {}",
                self.config.num_blocks
            )));
        }
        let sampler = Sampler::new(request.sampling)
            .map_err(|e| Error::InvalidInput(format!("request {id}: {e}")))?;
        let index = self.next_index;
        self.next_index += 1;
        self.scheduler.add(Sequence::new(index, request, sampler));
        Ok(index)
    }

    /// What the step's samplers need from the logits, with one wait for the device: one id per
    /// row when all are greedy, else each row's best candidates (as many as the largest need)
    /// and, for rows sampled without a top-k, the row's total weight at its temperature; taken
    /// from `whole_rows` where the step brought every logit back anyway (penalties, min-p,
    /// log-probabilities), from the device otherwise.
    fn bring_back(
        &self,
        logits: &B::Tensor,
        whole_rows: Option<&HostTensor>,
        needs: &[(Needs, f32)],
    ) -> Result<Choice> {
        // Rows sampled from the whole row (see `step`) need nothing here.
        if needs
            .iter()
            .all(|(n, _)| matches!(n, Needs::Argmax | Needs::Row))
        {
            return Ok(Choice::Greedy(match whole_rows {
                Some(host) => host_argmax_rows(host),
                None => self.backend.argmax_rows(logits)?,
            }));
        }
        let vocab = self.model.config.vocab_size();
        let k = needs
            .iter()
            .map(|(n, _)| match n {
                Needs::Argmax | Needs::Row => 1,
                Needs::TopK(k) => *k,
                Needs::Head => SAMPLING_HEAD,
            })
            .max()
            .unwrap_or(1)
            .min(vocab);
        // Rows that need no total get temperature 1 (greedy rows have 0).
        let temperatures: Option<Vec<f32>> =
            needs.iter().any(|(n, _)| *n == Needs::Head).then(|| {
                needs
                    .iter()
                    .map(|&(n, t)| if n == Needs::Head { t } else { 1.0 })
                    .collect()
            });
        let (rows, totals) = match (whole_rows, &temperatures) {
            (Some(host), t) => (
                host_top_k_rows(host, k),
                match t {
                    Some(t) => host_softmax_totals(host, t)?,
                    None => Vec::new(),
                },
            ),
            (None, Some(t)) => self.backend.top_k_and_totals(logits, k, t)?,
            (None, None) => (self.backend.top_k_rows(logits, k)?, Vec::new()),
        };
        let totals = match temperatures {
            Some(_) => needs
                .iter()
                .zip(totals)
                .map(|((n, _), t)| (*n == Needs::Head).then_some(t))
                .collect(),
            None => Vec::new(),
        };
        Ok(Choice::Candidates { rows, totals })
    }

    /// Runs one scheduled step.
    pub fn step(&mut self) -> Result<StepOutput> {
        let start = Instant::now();
        let plan = self.scheduler.schedule(&mut self.blocks);
        let mut output = StepOutput::default();
        if plan.scheduled.is_empty() {
            if self.scheduler.has_unfinished() && plan.preempted == 0 {
                return Err(Error::CacheFull {
                    needed: 1,
                    free: self.blocks.num_free(),
                });
            }
            return Ok(output);
        }
        let counters_before = self.backend.counters();
        let decode_step = plan.scheduled.iter().all(|s| {
            s.num_tokens == 1
                && self.scheduler.running[s.running_index].computed + 1
                    == self.scheduler.running[s.running_index].tokens.len()
        });
        self.backend.copy_blocks(&mut self.cache, &plan.copies)?;
        let bs = self.config.block_size;
        let mut step = empty_step(bs, plan.scheduled.len());
        for s in &plan.scheduled {
            let seq = &self.scheduler.running[s.running_index];
            let range = seq.computed..seq.computed + s.num_tokens;
            step.token_ids.extend_from_slice(&seq.tokens[range.clone()]);
            step.positions.extend(range.clone().map(|p| p as u32));
            step.slots
                .extend(range.clone().map(|p| slot(&seq.blocks.table, p, bs)));
            step.batch.seqs.push(SeqChunk {
                block_table: seq.blocks.table.clone(),
                context_len: range.end,
                query_len: s.num_tokens,
            });
        }
        if let (true, Some((scratch, sizes))) =
            (decode_step && self.config.cuda_graphs, &self.padding)
        {
            let n = step.batch.seqs.len();
            if let Some(&b) = sizes.iter().find(|&&b| b >= n) {
                pad_decode_step(&mut step, b, *scratch);
            }
        }
        let forward_start = Instant::now();
        let (model, backend, cache) = (self.model, self.backend, &mut self.cache);
        let mut forward = || {
            model.forward(
                backend,
                cache,
                &step,
                self.config.attention,
                LogitRows::LastPerSequence,
            )
        };
        let logits = match decode_step && self.config.cuda_graphs {
            true => backend.forward_replayed(self.id, plan.scheduled.len(), &mut forward)?,
            false => forward()?,
        };
        let needs: Vec<(Needs, f32)> = plan
            .scheduled
            .iter()
            .map(|s| {
                let sampler = &self.scheduler.running[s.running_index].sampler;
                (sampler.needs(), sampler.temperature())
            })
            .collect();
        // Rows that need every logit (penalties, min-p, log-probabilities): the whole batch's
        // rows, once per step, which then serve the other rows too.
        let host_rows = match needs.iter().any(|(n, _)| *n == Needs::Row) {
            true => Some(self.backend.to_host(&logits)?),
            false => None,
        };
        let choice = self.bring_back(&logits, host_rows.as_ref(), &needs)?;
        let mut whole_rows: Option<Vec<f32>> = host_rows.map(|h| h.data);
        self.stats.forward_secs += forward_start.elapsed().as_secs_f64();

        let vocab = self.model.config.vocab_size();
        if let Some(i) = (0..plan.scheduled.len())
            .find(|&i| !choice.row_is_finite(i) || !whole_row_is_finite(&whole_rows, i, vocab))
        {
            let s = &plan.scheduled[i];
            let seq = &self.scheduler.running[s.running_index];
            return Err(Error::NonFinite(format!(
                "request {}: the logits at position {} are not finite (NaN or infinity)",
                seq.request.id,
                seq.computed + s.num_tokens - 1
            )));
        }
        let now = Instant::now();
        let mut done = Vec::new();
        let eos = match self.tokenizer {
            Some(t) => t.eos_ids(),
            None => self.model.config.eos_token_ids(),
        };
        for (i, s) in plan.scheduled.iter().enumerate() {
            let seq = &mut self.scheduler.running[s.running_index];
            seq.computed += s.num_tokens;
            self.blocks
                .commit_full_blocks(&mut seq.blocks, &seq.tokens, seq.computed);
            if seq.computed < seq.tokens.len() {
                continue; // a prefill chunk with more of the prompt to come
            }
            let mut logprobs = None;
            let token = match &choice {
                _ if needs[i].0 == Needs::Row => {
                    let all = whole_rows.as_deref().unwrap_or_default();
                    let history = History {
                        prompt: &seq.request.prompt,
                        generated: &seq.tokens[seq.request.prompt.len()..],
                        eos,
                    };
                    let (token, lp) = seq
                        .sampler
                        .sample_row(&all[i * vocab..(i + 1) * vocab], history);
                    logprobs = lp;
                    token
                }
                Choice::Greedy(ids) => ids[i],
                Choice::Candidates { rows, totals } => match totals.get(i).copied().flatten() {
                    Some(total) => match seq.sampler.sample_head(&rows[i], total) {
                        Some(token) => token,
                        // The draw lies past the best candidates: the whole row, once per step.
                        None => {
                            if whole_rows.is_none() {
                                whole_rows = Some(self.backend.to_host(&logits)?.data);
                            }
                            let all = whole_rows.as_deref().unwrap_or_default();
                            seq.sampler.sample(&all[i * vocab..(i + 1) * vocab])
                        }
                    },
                    None => seq.sampler.sample_sorted(&rows[i]),
                },
            };
            seq.tokens.push(token);
            seq.token_times.push(now);
            if let Some(lp) = &logprobs {
                seq.logprobs.push(lp.clone());
            }
            output.new_tokens.push(NewToken {
                index: seq.index,
                token,
                logprobs,
            });
            if let Some(reason) = finish_reason(seq, &self.model.config, self.tokenizer) {
                done.push((s.running_index, reason));
            }
        }
        if decode_step {
            self.stats.decode_steps += 1;
            if let (Some(before), Some(after)) = (counters_before, self.backend.counters()) {
                self.stats.decode_counters.add(&after.since(&before));
            }
        }
        done.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, reason) in done {
            let mut seq = self.scheduler.running.remove(i);
            self.blocks.free(&mut seq.blocks);
            output.finished.push(self.output(seq, reason)?);
        }
        self.stats.steps += 1;
        self.stats.max_batch_seqs = self.stats.max_batch_seqs.max(plan.scheduled.len());
        self.stats.step_secs += start.elapsed().as_secs_f64();
        Ok(output)
    }

    fn output(&self, seq: Sequence, finish_reason: FinishReason) -> Result<RequestOutput> {
        let mut text = match self.tokenizer {
            Some(t) => t.decode(seq.generated())?,
            None => String::new(),
        };
        if let Some(cut) = seq
            .request
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(cut);
        }
        Ok(RequestOutput {
            index: seq.index,
            prompt_tokens: seq.request.prompt.len(),
            cached_prompt_tokens: seq.cached_prompt_tokens.unwrap_or(0),
            output_tokens: seq.generated().to_vec(),
            text,
            logprobs: seq.logprobs,
            finish_reason,
            arrival: seq.arrival,
            token_times: seq.token_times,
            finished: Instant::now(),
            preemptions: seq.preemptions,
            id: seq.request.id,
        })
    }

    /// Steps until every request is done; outputs in the order the requests were added.
    pub fn run_to_completion(
        &mut self,
        mut on_step: impl FnMut(&StepOutput),
    ) -> Result<Vec<RequestOutput>> {
        let mut outputs = Vec::new();
        while self.has_unfinished() {
            let mut out = self.step()?;
            on_step(&out);
            outputs.append(&mut out.finished);
        }
        outputs.sort_by_key(|o| o.index);
        Ok(outputs)
    }
}

/// Why `seq` is done after its newest token, if it is.
fn finish_reason(
    seq: &Sequence,
    config: &ModelConfig,
    tokenizer: Option<&TextTokenizer>,
) -> Option<FinishReason> {
    let last = *seq.tokens.last()?;
    let generated = seq.tokens.len() - seq.request.prompt.len();
    // Before min_tokens, EOS is masked from the draw (logits.rs) and stop strings do not count.
    let early = generated < seq.request.sampling.min_tokens;
    let eos = !seq.request.ignore_eos
        && !early
        && (config.eos_token_ids().contains(&last) || tokenizer.is_some_and(|t| t.is_eos(last)));
    if eos {
        return Some(FinishReason::Stop);
    }
    if !seq.request.stop.is_empty() && !early {
        if let Some(text) = tokenizer.and_then(|t| t.decode(seq.generated()).ok()) {
            if seq.request.stop.iter().any(|s| text.contains(s.as_str())) {
                return Some(FinishReason::Stop);
            }
        }
    }
    (generated >= seq.request.max_tokens || seq.tokens.len() > config.max_position_embeddings())
        .then_some(FinishReason::Length)
}

/// What a step brings back from the device to choose each sequence's next token.
enum Choice {
    Greedy(Vec<u32>),
    Candidates {
        /// Each row's best `(id, logit)`, sorted.
        rows: Vec<Vec<(u32, f32)>>,
        /// Each row's total weight at its sampler's temperature, for rows sampled without a
        /// top-k (empty when there are none).
        totals: Vec<Option<f64>>,
    },
}

impl Choice {
    /// Whether row `i`'s logits were finite, as the backend marks them (see
    /// [`Backend::argmax_rows`] and [`Backend::top_k_rows`]).
    fn row_is_finite(&self, i: usize) -> bool {
        match self {
            Choice::Greedy(ids) => ids[i] != crate::backend::NON_FINITE_ROW,
            Choice::Candidates { rows, totals } => {
                rows[i]
                    .first()
                    .is_none_or(|&(_, v)| crate::backend::row_is_finite(&[v]))
                    && totals.get(i).copied().flatten().is_none_or(f64::is_finite)
            }
        }
    }
}

/// Whether row `i` of the whole rows brought back (if any) is finite.
fn whole_row_is_finite(rows: &Option<Vec<f32>>, i: usize, vocab: usize) -> bool {
    rows.as_deref()
        .is_none_or(|all| crate::backend::row_is_finite(&all[i * vocab..(i + 1) * vocab]))
}

/// A step of no tokens yet, with room for `seqs` sequences.
fn empty_step(block_size: usize, seqs: usize) -> Step {
    Step {
        token_ids: Vec::new(),
        positions: Vec::new(),
        slots: Vec::new(),
        batch: AttentionBatch {
            block_size,
            seqs: Vec::with_capacity(seqs),
        },
    }
}

/// Fills a decode step up to `size` sequences with filler ones: token 0 at position 0, written
/// to and read from the first slot of cache block `scratch` (no sequence's), so that the step
/// has a batch size a CUDA graph was captured for. Their logits rows come last and are dropped.
fn pad_decode_step(step: &mut Step, size: usize, scratch: u32) {
    let bs = step.batch.block_size;
    while step.batch.seqs.len() < size {
        step.token_ids.push(0);
        step.positions.push(0);
        step.slots.push(scratch * bs as u32);
        step.batch.seqs.push(SeqChunk {
            block_table: vec![scratch],
            context_len: 1,
            query_len: 1,
        });
    }
}
