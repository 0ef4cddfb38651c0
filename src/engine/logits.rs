//! What a sampler does to a whole row of logits before it draws, for requests that ask for more
//! than temperature, top-k and top-p: log-probabilities of the model's own distribution,
//! repetition, frequency and presence penalties, no end of sequence before `min_tokens`, and
//! min-p. The order is vLLM's: penalties, then temperature, min-p, top-k and top-p (the latter
//! three in the sampler).

use serde::Serialize;

/// The tokens a row's penalties look at.
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    pub prompt: &'a [u32],
    pub generated: &'a [u32],
    /// The model's end-of-sequence ids, masked before `min_tokens`.
    pub eos: &'a [u32],
}

/// A sampled token's log-probability and the row's most likely tokens', under the model's own
/// distribution (log-softmax of the raw logits, before penalties and temperature, as vLLM
/// reports them by default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// The `n` most likely `(token, logprob)`, most likely first, ties by lower id.
    pub top: Vec<(u32, f32)>,
}

/// `log_softmax(row)` at `token`, and the `n` most likely entries.
pub fn token_logprobs(row: &[f32], token: u32, n: usize) -> TokenLogprobs {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let logprob = |l: f32| (l as f64 - log_z) as f32;
    let top = crate::ops::sampling::sorted_candidates(row, n.max(1))
        .into_iter()
        .take(n)
        .map(|(id, l)| (id, logprob(l)))
        .collect();
    TokenLogprobs {
        token,
        logprob: logprob(row[token as usize]),
        top,
    }
}

/// The penalties of one request: repetition (multiplicative, over prompt and output: a positive
/// logit divided by it, a negative one multiplied), then frequency and presence (subtracted per
/// occurrence in the output, and once if it occurs), and `-inf` for end-of-sequence ids while
/// fewer than `min_tokens` tokens are generated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalties {
    pub repetition: f32,
    pub frequency: f32,
    pub presence: f32,
    pub min_tokens: usize,
}

impl Penalties {
    /// Whether applying them changes nothing.
    pub fn are_none(&self) -> bool {
        self.repetition == 1.0
            && self.frequency == 0.0
            && self.presence == 0.0
            && self.min_tokens == 0
    }

    /// Applies them to `row` in place.
    pub fn apply(&self, row: &mut [f32], history: History) {
        if self.repetition != 1.0 {
            let mut seen = vec![false; row.len()];
            for &t in history.prompt.iter().chain(history.generated) {
                if let Some(s) = seen.get_mut(t as usize) {
                    *s = true;
                }
            }
            for (l, _) in row.iter_mut().zip(&seen).filter(|(_, &s)| s) {
                *l = if *l > 0.0 {
                    *l / self.repetition
                } else {
                    *l * self.repetition
                };
            }
        }
        if self.frequency != 0.0 || self.presence != 0.0 {
            let mut counts = std::collections::HashMap::<u32, u32>::new();
            for &t in history.generated {
                *counts.entry(t).or_default() += 1;
            }
            for (t, count) in counts {
                if let Some(l) = row.get_mut(t as usize) {
                    *l -= self.frequency * count as f32 + self.presence;
                }
            }
        }
        if history.generated.len() < self.min_tokens {
            for &t in history.eos {
                if let Some(l) = row.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// How many of the sorted candidates min-p keeps: those whose probability (at `temperature`) is
/// at least `min_p` times the most likely one's, i.e. whose scaled logit is within `ln(min_p)`
/// of the best. For greedy sampling (temperature 0) only the best survives anyway.
pub fn min_p_keep(sorted: &[(u32, f32)], min_p: f32, temperature: f32) -> usize {
    if min_p <= 0.0 || sorted.is_empty() || temperature == 0.0 {
        return sorted.len();
    }
    let floor = sorted[0].1 + temperature * min_p.ln();
    sorted.iter().take_while(|c| c.1 >= floor).count().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_EOS: &[u32] = &[];

    #[test]
    fn logprobs_are_the_log_softmax_of_the_raw_row() {
        let row = [1.0f32, 3.0, 2.0, 3.0];
        let lp = token_logprobs(&row, 2, 2);
        let z: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
        assert!((lp.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        // The two most likely, ties by lower id.
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!((lp.top[0].1 - lp.top[1].1).abs() < 1e-7);
        assert!(token_logprobs(&row, 0, 0).top.is_empty());
    }

    #[test]
    fn penalties_follow_vllm() {
        let history = History {
            prompt: &[0],
            generated: &[1, 1, 2],
            eos: &[3],
        };
        let p = Penalties {
            repetition: 2.0,
            frequency: 0.5,
            presence: 1.0,
            min_tokens: 4,
        };
        let mut row = [4.0f32, -4.0, 1.0, 9.0, 5.0];
        p.apply(&mut row, history);
        // 0: prompt only (repetition); 1: negative, twice generated; 2: once; 3: EOS masked.
        assert_eq!(
            row,
            [
                2.0,
                -8.0 - 1.0 - 1.0,
                0.5 - 0.5 - 1.0,
                f32::NEG_INFINITY,
                5.0
            ]
        );
        // Enough tokens: EOS allowed again.
        let mut row = [0.0f32; 5];
        let long = History {
            generated: &[4, 4, 4, 4],
            ..history
        };
        Penalties { min_tokens: 4, ..p }.apply(&mut row, long);
        assert_eq!(row[3], 0.0);
        let none = Penalties {
            repetition: 1.0,
            frequency: 0.0,
            presence: 0.0,
            min_tokens: 0,
        };
        assert!(none.are_none());
        let mut row = [1.0f32, 2.0];
        none.apply(
            &mut row,
            History {
                eos: NO_EOS,
                ..history
            },
        );
        assert_eq!(row, [1.0, 2.0]);
    }

    #[test]
    fn min_p_keeps_what_is_likely_enough() {
        // Probabilities at temperature 1: e^0, e^-1, e^-3 relative to the best.
        let sorted = [(5, 0.0f32), (2, -1.0), (7, -3.0)];
        assert_eq!(min_p_keep(&sorted, 0.0, 1.0), 3);
        assert_eq!(min_p_keep(&sorted, 0.3, 1.0), 2); // e^-1 ≈ 0.37 ≥ 0.3 > e^-3
        assert_eq!(min_p_keep(&sorted, 0.5, 1.0), 1);
        // At temperature 2 the gaps halve: e^-1.5 ≈ 0.22.
        assert_eq!(min_p_keep(&sorted, 0.2, 2.0), 3);
    }
}
