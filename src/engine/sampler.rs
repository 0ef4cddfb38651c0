//! Next-token choice from a row of logits: greedy, or temperature with top-k and top-p.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
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
        Ok(())
    }
}

/// SplitMix64: small, fast, and the same stream on every platform for a given seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: SplitMix64(params.seed),
        })
    }

    /// Greedy decoding: the choice is the argmax and draws no random number, so it can be made
    /// where the logits are (on the GPU) without changing any later draw.
    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.params.top_k > 0 {
            candidates.truncate(self.params.top_k);
        }
        let max = candidates[0].1;
        let weights: Vec<f64> = candidates
            .iter()
            .map(|&(_, l)| (((l - max) / self.params.temperature) as f64).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut keep = weights.len();
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, w) in weights.iter().enumerate() {
                cumulative += w / total;
                if cumulative >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept_total: f64 = weights[..keep].iter().sum();
        let mut target = self.rng.next_f64() * kept_total;
        for (i, w) in weights[..keep].iter().enumerate() {
            if target < *w {
                return candidates[i].0;
            }
            target -= w;
        }
        candidates[keep - 1].0
    }
}

/// Index of the largest logit; the first one on ties. NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

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
