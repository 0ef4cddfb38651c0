//! Continuous batching: which sequences run in the next step and how many of their tokens.
//!
//! FCFS. Every step first continues the running sequences (one token each when decoding, a
//! chunk of the prompt when prefilling), then admits waiting ones while the sequence and token
//! budgets and the free blocks allow. When a running sequence needs a block and none is free,
//! the newest running sequence is preempted: its blocks are freed and it goes back to the front
//! of the queue, to be recomputed later.

use super::logits::TokenLogprobs;
use super::request::Request;
use super::sampler::Sampler;
use crate::kv::{BlockManager, SeqBlocks};
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerConfig {
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Most tokens (prefill chunks plus decode tokens) in one step.
    pub max_batched_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_num_seqs: 256,
            max_batched_tokens: 2048,
        }
    }
}

/// A request on its way through the engine.
pub struct Sequence {
    /// Arrival order; also the id the scheduler knows it by.
    pub index: usize,
    pub request: Request,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    /// Tokens whose latents are in the cache.
    pub computed: usize,
    pub blocks: SeqBlocks,
    pub sampler: Sampler,
    pub arrival: Instant,
    pub token_times: Vec<Instant>,
    pub preemptions: usize,
    /// Prompt tokens served by the prefix cache at first admission.
    pub cached_prompt_tokens: Option<usize>,
    /// Each generated token's log-probabilities, where the request asks for them.
    pub logprobs: Vec<TokenLogprobs>,
}

impl Sequence {
    pub fn new(index: usize, request: Request, sampler: Sampler) -> Self {
        Sequence {
            index,
            tokens: request.prompt.clone(),
            request,
            computed: 0,
            blocks: SeqBlocks::default(),
            sampler,
            arrival: Instant::now(),
            token_times: Vec::new(),
            preemptions: 0,
            cached_prompt_tokens: None,
            logprobs: Vec::new(),
        }
    }

    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.request.prompt.len()..]
    }
}

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    /// Position of the sequence in [`Scheduler::running`].
    pub running_index: usize,
    pub num_tokens: usize,
}

#[derive(Debug, Default)]
pub struct StepPlan {
    pub scheduled: Vec<Scheduled>,
    /// Cache block copies to do before the step (copy-on-write).
    pub copies: Vec<(u32, u32)>,
    pub preempted: usize,
}

pub struct Scheduler {
    pub config: SchedulerConfig,
    pub waiting: VecDeque<Sequence>,
    /// Running sequences, oldest first.
    pub running: Vec<Sequence>,
    pub total_preemptions: usize,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            total_preemptions: 0,
        }
    }

    pub fn add(&mut self, seq: Sequence) {
        self.waiting.push_back(seq);
    }

    pub fn has_unfinished(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Takes sequence `index` out, waiting or running (its blocks are the caller's to free).
    pub fn remove(&mut self, index: usize) -> Option<Sequence> {
        if let Some(at) = self.waiting.iter().position(|s| s.index == index) {
            return self.waiting.remove(at);
        }
        let at = self.running.iter().position(|s| s.index == index)?;
        Some(self.running.remove(at))
    }

    fn preempt_newest(&mut self, blocks: &mut BlockManager) {
        let mut victim = self.running.pop().expect("a running sequence to preempt");
        blocks.free(&mut victim.blocks);
        victim.computed = 0;
        victim.preemptions += 1;
        self.total_preemptions += 1;
        self.waiting.push_front(victim);
    }

    /// Plans the next step and reserves its cache blocks.
    pub fn schedule(&mut self, blocks: &mut BlockManager) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.config.max_batched_tokens;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &mut self.running[i];
            let n = (seq.tokens.len() - seq.computed).min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            match blocks.reserve(&mut seq.blocks, seq.computed, seq.computed + n) {
                Ok(copies) => {
                    plan.copies.extend(copies);
                    plan.scheduled.push(Scheduled {
                        running_index: i,
                        num_tokens: n,
                    });
                    budget -= n;
                    i += 1;
                }
                Err(_) => {
                    // Newer sequences give way to older ones; if this one is the newest, it waits.
                    self.preempt_newest(blocks);
                    plan.preempted += 1;
                }
            }
        }
        // Admitting while sequences are being preempted would only thrash the cache.
        if plan.preempted > 0 {
            return plan;
        }
        while budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(seq) = self.waiting.front_mut() else {
                break;
            };
            if seq.computed == 0 {
                seq.blocks = blocks.match_prefix(&seq.tokens);
                seq.computed = seq.blocks.table.len() * blocks.block_size();
                seq.cached_prompt_tokens.get_or_insert(seq.computed);
            }
            let n = (seq.tokens.len() - seq.computed).min(budget);
            match blocks.reserve(&mut seq.blocks, seq.computed, seq.computed + n) {
                Ok(copies) => {
                    plan.copies.extend(copies);
                    budget -= n;
                    let seq = self.waiting.pop_front().expect("front exists");
                    // Keep arrival order, so the newest is always last (a preempted sequence
                    // comes back older than the ones that kept running).
                    let at = self.running.partition_point(|s| s.index < seq.index);
                    for s in &mut plan.scheduled {
                        if s.running_index >= at {
                            s.running_index += 1;
                        }
                    }
                    plan.scheduled.push(Scheduled {
                        running_index: at,
                        num_tokens: n,
                    });
                    self.running.insert(at, seq);
                }
                Err(_) => {
                    blocks.free(&mut seq.blocks);
                    seq.computed = 0;
                    break;
                }
            }
        }
        plan
    }
}
