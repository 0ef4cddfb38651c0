//! Next-token choice from a row of logits: greedy, or temperature with top-k and top-p; with
//! penalties, min-p, `min_tokens` or log-probabilities, from the whole row (logits.rs).

use super::logits::{min_p_keep, token_logprobs, History, Penalties, TokenLogprobs};
use crate::error::{Error, Result};
use crate::ops::sampling::{argmax, sorted_candidates};
use crate::util::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    pub seed: u64,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Subtracted from a logit once if its token was generated before (OpenAI's range −2…2).
    pub presence_penalty: f32,
    /// Subtracted from a logit per time its token was generated before (−2…2).
    pub frequency_penalty: f32,
    /// Divides positive logits and multiplies negative ones of the prompt's and output's tokens;
    /// 1 changes nothing.
    pub repetition_penalty: f32,
    /// No end of sequence (nor stop string) before this many generated tokens.
    pub min_tokens: usize,
    /// Report each sampled token's log-probability and this many most likely ones (at most
    /// [`MAX_LOGPROBS`]); None reports none.
    pub logprobs: Option<usize>,
}

/// Most alternatives a request may ask log-probabilities for (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            min_tokens: 0,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::InvalidInput(format!(
                "--temperature must be 0 or positive, found {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidInput(format!(
                "--top-p must be in (0, 1], found {}",
                self.top_p
            )));
        }
        let bad = |what: &str, range: &str, v: f32| {
            Err(Error::InvalidInput(format!(
                "{what} must be in {range}, found {v}"
            )))
        };
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "[0, 1]", self.min_p);
        }
        for (what, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(what, "[-2, 2]", v);
            }
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", "(0, inf)", self.repetition_penalty);
        }
        if let Some(n) = self.logprobs.filter(|&n| n > MAX_LOGPROBS) {
            return Err(Error::InvalidInput(format!(
                "logprobs must be at most {MAX_LOGPROBS}, found {n}"
            )));
        }
        Ok(())
    }

    fn penalties(&self) -> Penalties {
        Penalties {
            repetition: self.repetition_penalty,
            frequency: self.frequency_penalty,
            presence: self.presence_penalty,
            min_tokens: self.min_tokens,
        }
    }

    /// Whether the choice needs the whole row on the host (logits.rs's processing).
    pub fn needs_whole_row(&self) -> bool {
        self.min_p > 0.0 || self.logprobs.is_some() || !self.penalties().are_none()
    }
}

/// How many of a row's best candidates a step brings back for a sampler with no top-k: with the
/// row's total weight they settle almost every draw (see [`Sampler::sample_head`]).
pub const SAMPLING_HEAD: usize = 64;

/// What a step must bring back from the device for one sequence's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Greedy: the row's argmax.
    Argmax,
    /// The row's best `k` `(id, logit)`, sorted.
    TopK(usize),
    /// The row's best [`SAMPLING_HEAD`] candidates and its total weight at the temperature.
    Head,
    /// The whole row ([`Sampler::sample_row`]).
    Row,
}

#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// A draw [`Sampler::sample_head`] could not settle, for the whole-row call that follows.
    pending: Option<f64>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: SplitMix64(params.seed),
            pending: None,
        })
    }

    /// Greedy decoding: the choice is the argmax and draws no random number, so it can be made
    /// where the logits are (on the GPU) without changing any later draw.
    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0
    }

    /// What a step must bring back for this sampler.
    pub fn needs(&self) -> Needs {
        if self.params.needs_whole_row() {
            return Needs::Row;
        }
        match (self.is_greedy(), self.params.top_k) {
            (true, _) => Needs::Argmax,
            (false, 0) => Needs::Head,
            (false, k) => Needs::TopK(k),
        }
    }

    pub fn temperature(&self) -> f32 {
        self.params.temperature
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        self.sample_sorted(&sorted_candidates(logits, self.params.top_k))
    }

    /// The choice from a whole row with every processing the request asks for: penalties over
    /// `history`, then greedy or temperature with min-p, top-k and top-p; and the token's
    /// log-probabilities where asked for.
    pub fn sample_row(&mut self, logits: &[f32], history: History) -> (u32, Option<TokenLogprobs>) {
        let p = &self.params;
        let mut row = logits.to_vec();
        p.penalties().apply(&mut row, history);
        let token = if self.is_greedy() {
            argmax(&row)
        } else {
            let mut sorted = sorted_candidates(&row, p.top_k);
            sorted.truncate(min_p_keep(&sorted, p.min_p, p.temperature));
            self.sample_sorted_all(&sorted)
        };
        let logprobs = self
            .params
            .logprobs
            .map(|n| token_logprobs(logits, token, n));
        (token, logprobs)
    }

    /// [`Self::sample_sorted`] over every candidate given (already cut to top-k).
    fn sample_sorted_all(&mut self, sorted: &[(u32, f32)]) -> u32 {
        let weights = self.weights(sorted);
        let total: f64 = weights.iter().sum();
        let keep = self.nucleus(&weights, total).unwrap_or(weights.len());
        let kept_total: f64 = weights[..keep].iter().sum();
        let draw = self.draw();
        walk(&sorted[..keep], &weights[..keep], draw * kept_total).unwrap_or(sorted[keep - 1].0)
    }

    /// Samples from `(id, logit)` candidates sorted by logit, largest first, ties by lower id:
    /// the row's best `top_k` or more (its whole sorted row when `top_k` is 0).
    pub fn sample_sorted(&mut self, sorted: &[(u32, f32)]) -> u32 {
        if self.is_greedy() {
            return sorted[0].0;
        }
        let candidates = match self.params.top_k {
            0 => sorted,
            k => &sorted[..k.min(sorted.len())],
        };
        self.sample_sorted_all(candidates)
    }

    /// Samples (top-k 0) from the row's best candidates, sorted, and `total`, the sum of every
    /// token's weight `exp((logit − max) / temperature)`, choosing what
    /// [`Sampler::sample_sorted`] chooses from the whole sorted row. `None` when the choice lies
    /// beyond the candidates (the nucleus or the draw reaches past them, which the 64 best
    /// make rare): then the draw is kept for the whole-row call that must follow.
    pub fn sample_head(&mut self, head: &[(u32, f32)], total: f64) -> Option<u32> {
        let weights = self.weights(head);
        let draw = self.draw();
        let chosen = if self.params.top_p < 1.0 {
            self.nucleus(&weights, total).map(|keep| {
                let kept_total: f64 = weights[..keep].iter().sum();
                walk(&head[..keep], &weights[..keep], draw * kept_total).unwrap_or(head[keep - 1].0)
            })
        } else {
            walk(head, &weights, draw * total)
        };
        if chosen.is_none() {
            self.pending = Some(draw);
        }
        chosen
    }

    /// `exp((logit − max) / temperature)` of sorted candidates, `max` being the first.
    fn weights(&self, sorted: &[(u32, f32)]) -> Vec<f64> {
        let max = sorted[0].1;
        sorted
            .iter()
            .map(|&(_, l)| (((l - max) / self.params.temperature) as f64).exp())
            .collect()
    }

    /// How many of the sorted candidates the top-p nucleus keeps, `total` being the weight of
    /// all of them; `None` when it keeps them all (top-p 1) or reaches past them.
    fn nucleus(&self, weights: &[f64], total: f64) -> Option<usize> {
        if self.params.top_p >= 1.0 {
            return None;
        }
        let mut cumulative = 0.0;
        for (i, w) in weights.iter().enumerate() {
            cumulative += w / total;
            if cumulative >= self.params.top_p as f64 {
                return Some(i + 1);
            }
        }
        None
    }

    fn draw(&mut self) -> f64 {
        self.pending.take().unwrap_or_else(|| self.rng.next_f64())
    }
}

/// The candidate at which `target` runs out walking the weights in order, if it does.
fn walk(candidates: &[(u32, f32)], weights: &[f64], mut target: f64) -> Option<u32> {
    for (c, w) in candidates.iter().zip(weights) {
        if target < *w {
            return Some(c.0);
        }
        target -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::sampling::softmax_total;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, 3.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.1, 3.0, 2.0, -1.0]), 1);
        }
    }

    #[test]
    fn top_p_cuts_the_tail_and_seed_is_reproducible() {
        let logits = [2.0, 1.9, -6.0, -7.0];
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            seed: 7,
            ..Default::default()
        };
        let mut a = Sampler::new(params).unwrap();
        let mut b = Sampler::new(params).unwrap();
        let draws: Vec<u32> = (0..200).map(|_| a.sample(&logits)).collect();
        assert!(
            draws.iter().all(|&t| t < 2),
            "tokens 2 and 3 are outside the top-p set"
        );
        assert!(draws.contains(&0) && draws.contains(&1));
        assert_eq!(
            draws,
            (0..200).map(|_| b.sample(&logits)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_top_k_list_from_the_device_samples_exactly_like_the_whole_row() {
        let logits: Vec<f32> = (0..500)
            .map(|i| ((i * 37 % 101) as f32 * 0.05).sin() * 3.0)
            .collect();
        for (top_k, top_p, temperature) in
            [(5, 1.0, 0.7), (40, 0.8, 1.3), (1, 1.0, 2.0), (64, 0.5, 0.0)]
        {
            let params = SamplingParams {
                temperature,
                top_k,
                top_p,
                seed: 11,
                ..SamplingParams::default()
            };
            let (mut whole, mut listed) =
                (Sampler::new(params).unwrap(), Sampler::new(params).unwrap());
            let needed = match listed.needs() {
                Needs::TopK(k) => k,
                Needs::Argmax => 1,
                Needs::Head | Needs::Row => {
                    unreachable!("every case here has a top-k or is greedy")
                }
            };
            // A step brings back the largest k any sequence needs: more than this one's.
            let list = sorted_candidates(&logits, needed + 3);
            for _ in 0..100 {
                assert_eq!(
                    listed.sample_sorted(&list),
                    whole.sample(&logits),
                    "{params:?}"
                );
            }
        }
        let no_top_k = Sampler::new(SamplingParams {
            temperature: 1.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(no_top_k.needs(), Needs::Head);
    }

    #[test]
    fn the_head_and_the_row_total_sample_exactly_like_the_whole_row() {
        // A flat row (the draw often lands past the 64 best) and a peaked one (it rarely does).
        let flat: Vec<f32> = (0..300)
            .map(|i| ((i * 37 % 101) as f32 * 0.05).sin() * 0.3)
            .collect();
        let peaked: Vec<f32> = (0..300).map(|i| -(i as f32 * 0.9 % 17.0)).collect();
        let mut fell_back = 0;
        for logits in [&flat, &peaked] {
            for (top_p, temperature) in [(1.0, 1.0), (0.9, 0.7), (0.3, 1.5), (0.999, 2.0)] {
                let params = SamplingParams {
                    temperature,
                    top_k: 0,
                    top_p,
                    seed: 5,
                    ..SamplingParams::default()
                };
                let (mut whole, mut head) =
                    (Sampler::new(params).unwrap(), Sampler::new(params).unwrap());
                let best = sorted_candidates(logits, SAMPLING_HEAD);
                let total = softmax_total(logits, temperature);
                for _ in 0..200 {
                    let token = head.sample_head(&best, total).unwrap_or_else(|| {
                        fell_back += 1;
                        head.sample(logits)
                    });
                    assert_eq!(token, whole.sample(logits), "{params:?}");
                }
            }
        }
        assert!(fell_back > 0, "the flat row's tail was never reached");
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        for p in [0.0, -0.5, 1.5, f32::NAN] {
            let err = Sampler::new(SamplingParams {
                top_p: p,
                ..Default::default()
            })
            .unwrap_err();
            assert!(err.to_string().contains("--top-p"), "{err}");
        }
        assert!(Sampler::new(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        })
        .is_err());
    }
}
