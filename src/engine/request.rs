//! What a caller asks the engine for, and what it gets back.

use super::logits::TokenLogprobs;
use super::sampler::SamplingParams;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The caller's id, echoed back.
    pub id: String,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Most tokens to generate (EOS and stop strings end earlier).
    pub max_tokens: usize,
    /// Generation ends when the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` or the model's context length.
    Length,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    pub id: String,
    /// Index of the request in the order it was added.
    pub index: usize,
    pub prompt_tokens: usize,
    /// Prompt tokens whose cache blocks came from the prefix cache (at first admission).
    pub cached_prompt_tokens: usize,
    /// Generated ids, EOS included when it ended the request.
    pub output_tokens: Vec<u32>,
    /// Generated text (empty without a tokenizer), cut before a stop string.
    pub text: String,
    /// Each generated token's log-probabilities, where the request asked for them.
    pub logprobs: Vec<TokenLogprobs>,
    pub finish_reason: FinishReason,
    pub arrival: Instant,
    /// When each output token was sampled.
    pub token_times: Vec<Instant>,
    pub finished: Instant,
    pub preemptions: usize,
}

impl RequestOutput {
    /// Time to first token, in seconds.
    pub fn ttft(&self) -> f64 {
        self.token_times
            .first()
            .map_or(0.0, |t| t.duration_since(self.arrival).as_secs_f64())
    }

    /// Gaps between consecutive output tokens, in seconds.
    pub fn inter_token_latencies(&self) -> Vec<f64> {
        self.token_times
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).as_secs_f64())
            .collect()
    }

    pub fn latency(&self) -> f64 {
        self.finished.duration_since(self.arrival).as_secs_f64()
    }
}
