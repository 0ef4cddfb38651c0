//! Rotary position embedding for the decoupled RoPE part of MLA: plain, linear and YaRN
//! frequencies, interleaved or half-split pairs.
//!
//! Frequencies and angles are computed in f32 like transformers does (even in its float64 runs),
//! so positions far out rotate by the same rounded angle as the reference.

use crate::config::{yarn_get_mscale, RopeConfig, RopeScaling, YarnParams};

#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// One frequency per rotated pair, `dim / 2` of them.
    pub inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    pub attention_factor: f32,
    pub interleaved: bool,
    /// Dynamic NTK scaling: `(factor, original length, theta)`; frequencies then depend on how
    /// long the sequence is.
    pub dynamic: Option<(f64, usize, f64)>,
}

impl Rope {
    pub fn new(config: &RopeConfig, dim: usize) -> Self {
        let base = plain_frequencies(config.theta, dim);
        let (inv_freq, attention_factor) = match &config.scaling {
            RopeScaling::None | RopeScaling::Dynamic { .. } => (base, 1.0),
            RopeScaling::Linear { factor } => (base.iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => (
                llama3_frequencies(
                    &base,
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_max_position_embeddings,
                ),
                1.0,
            ),
            RopeScaling::Yarn(y) => yarn_frequencies(y, &base, dim, config.theta),
        };
        Rope {
            inv_freq: inv_freq.into_iter().map(|f| f as f32).collect(),
            attention_factor: attention_factor as f32,
            interleaved: config.interleaved,
            dynamic: match config.scaling {
                RopeScaling::Dynamic {
                    factor,
                    original_max_position_embeddings,
                } => Some((factor, original_max_position_embeddings, config.theta)),
                _ => None,
            },
        }
    }

    pub fn dim(&self) -> usize {
        self.inv_freq.len() * 2
    }

    /// `(cos, sin)` of every pair's angle at `position`, already scaled by the attention factor.
    pub fn cos_sin(&self, position: usize) -> (Vec<f32>, Vec<f32>) {
        let p = position as f32;
        self.inv_freq
            .iter()
            .map(|&f| {
                let angle = (p * f) as f64;
                (
                    (angle.cos() as f32) * self.attention_factor,
                    (angle.sin() as f32) * self.attention_factor,
                )
            })
            .unzip()
    }

    /// Rotates `x` (length `dim`) in place with precomputed `cos`/`sin` of one position.
    pub fn rotate(&self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        rotate(x, cos, sin, self.interleaved);
    }

    /// cos/sin of every row of a step: row `i` is at `positions[i]` of a sequence that is
    /// `seq_lens[i]` tokens long after the step (only dynamic NTK scaling looks at that).
    pub fn table(&self, positions: &[u32], seq_lens: &[usize]) -> RopeTable {
        let half = self.inv_freq.len();
        let mut table = RopeTable {
            half,
            interleaved: self.interleaved,
            cos: Vec::with_capacity(positions.len() * half),
            sin: Vec::with_capacity(positions.len() * half),
        };
        let mut scaled: Option<(usize, Rope)> = None;
        for (&p, &len) in positions.iter().zip(seq_lens) {
            let rope = match self.dynamic {
                Some((factor, original, theta)) if len > original => {
                    if scaled.as_ref().is_none_or(|(l, _)| *l != len) {
                        // theta grows so the longest wavelength still spans the sequence.
                        let d = self.dim() as f64;
                        let theta = theta
                            * ((factor * len as f64 / original as f64) - (factor - 1.0))
                                .powf(d / (d - 2.0));
                        let inv_freq = plain_frequencies(theta, self.dim())
                            .into_iter()
                            .map(|f| f as f32)
                            .collect();
                        scaled = Some((
                            len,
                            Rope {
                                inv_freq,
                                dynamic: None,
                                ..self.clone()
                            },
                        ));
                    }
                    &scaled.as_ref().expect("just set").1
                }
                _ => self,
            };
            let (c, s) = rope.cos_sin(p as usize);
            table.cos.extend(c);
            table.sin.extend(s);
        }
        table
    }
}

/// `theta^(-2i/dim)` for every pair `i`.
fn plain_frequencies(theta: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| theta.powf(-((2 * i) as f64) / dim as f64))
        .collect()
}

/// Llama 3: wavelengths longer than `original / low_freq_factor` are interpolated by `factor`,
/// shorter than `original / high_freq_factor` kept, and the band between blended smoothly.
fn llama3_frequencies(
    base: &[f64],
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original: usize,
) -> Vec<f64> {
    let original = original as f64;
    let (low_freq_wavelen, high_freq_wavelen) =
        (original / low_freq_factor, original / high_freq_factor);
    base.iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen > low_freq_wavelen {
                f / factor
            } else if wavelen < high_freq_wavelen {
                f
            } else {
                let smooth =
                    (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// cos and sin per row and rotated pair for one forward step: built once on the host, used by
/// every layer (and uploaded as is by device backends).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable {
    /// Rotated pairs per head: the rotated width is `2·half`.
    pub half: usize,
    pub interleaved: bool,
    /// `[rows, half]`.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    pub fn rows(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    pub fn row(&self, i: usize) -> (&[f32], &[f32]) {
        let r = i * self.half..(i + 1) * self.half;
        (&self.cos[r.clone()], &self.sin[r])
    }
}

/// Rotates the pairs of `x` (length `2·cos.len()`): `(x[2i], x[2i+1])` when interleaved,
/// `(x[i], x[i + half])` otherwise.
pub fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = cos.len();
    debug_assert_eq!(x.len(), 2 * half);
    for i in 0..half {
        let (a, b) = if interleaved {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + half)
        };
        let (xa, xb) = (x[a], x[b]);
        x[a] = xa * cos[i] - xb * sin[i];
        x[b] = xb * cos[i] + xa * sin[i];
    }
}
/// YaRN: interpolate low frequencies by `factor`, keep high ones, ramp in between.
fn yarn_frequencies(y: &YarnParams, base: &[f64], dim: usize, theta: f64) -> (Vec<f64>, f64) {
    let correction_dim = |rotations: f64| {
        dim as f64
            * (y.original_max_position_embeddings as f64 / (rotations * 2.0 * std::f64::consts::PI))
                .ln()
            / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
    if y.truncate {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0);
    let high = high.min(dim as f64 - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    let inv_freq = base
        .iter()
        .enumerate()
        .map(|(i, &f)| {
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let extrapolation = 1.0 - ramp;
            (f / y.factor) * (1.0 - extrapolation) + f * extrapolation
        })
        .collect();
    let attention_factor =
        y.attention_factor
            .unwrap_or_else(|| match (y.mscale, y.mscale_all_dim) {
                (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                    yarn_get_mscale(y.factor, m) / yarn_get_mscale(y.factor, all)
                }
                _ => yarn_get_mscale(y.factor, 1.0),
            });
    (inv_freq, attention_factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yarn(mscale: Option<f64>, all: Option<f64>) -> RopeConfig {
        RopeConfig {
            theta: 10000.0,
            scaling: RopeScaling::Yarn(YarnParams {
                factor: 40.0,
                original_max_position_embeddings: 4096,
                beta_fast: 32.0,
                beta_slow: 1.0,
                mscale,
                mscale_all_dim: all,
                attention_factor: None,
                truncate: true,
            }),
            interleaved: true,
            softmax_mscale: None,
        }
    }

    #[test]
    fn dynamic_ntk_only_scales_sequences_past_the_original_length() {
        let config = RopeConfig {
            theta: 10000.0,
            scaling: RopeScaling::Dynamic {
                factor: 2.0,
                original_max_position_embeddings: 16,
            },
            interleaved: false,
            softmax_mscale: None,
        };
        let dynamic = Rope::new(&config, 8);
        let plain = Rope::new(
            &RopeConfig {
                scaling: RopeScaling::None,
                ..config
            },
            8,
        );
        assert_eq!(
            dynamic.table(&[3, 15], &[16, 16]),
            plain.table(&[3, 15], &[16, 16])
        );
        // 32 tokens: theta' = theta·(2·32/16 − 1)^(8/6).
        let theta = 10000.0 * 3f64.powf(8.0 / 6.0);
        let scaled = Rope::new(
            &RopeConfig {
                theta,
                scaling: RopeScaling::None,
                ..config
            },
            8,
        );
        let got = dynamic.table(&[3, 31], &[32, 32]);
        let want = scaled.table(&[3, 31], &[32, 32]);
        for (a, b) in got
            .cos
            .iter()
            .zip(&want.cos)
            .chain(got.sin.iter().zip(&want.sin))
        {
            assert!((a - b).abs() < 1e-6);
        }
        assert_ne!(got, plain.table(&[3, 31], &[32, 32]));
    }

    #[test]
    fn llama3_keeps_short_wavelengths_and_divides_long_ones() {
        let config = RopeConfig {
            theta: 10000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 32,
            },
            interleaved: false,
            softmax_mscale: None,
        };
        let rope = Rope::new(&config, 16);
        let plain = Rope::new(
            &RopeConfig {
                scaling: RopeScaling::None,
                ..config
            },
            16,
        );
        // Wavelength 2π < 32/4: kept. Pair 1 (wavelength ≈ 19.9) is blended. Pairs ≥ 2: ÷ 8.
        assert_eq!(rope.inv_freq[0], plain.inv_freq[0]);
        assert!(rope.inv_freq[1] < plain.inv_freq[1] && rope.inv_freq[1] > plain.inv_freq[1] / 8.0);
        for i in 2..8 {
            assert!((rope.inv_freq[i] - plain.inv_freq[i] / 8.0).abs() <= plain.inv_freq[i] * 1e-6);
        }
    }

    #[test]
    fn plain_frequencies_follow_theta() {
        let rope = Rope::new(
            &RopeConfig {
                theta: 10000.0,
                scaling: RopeScaling::None,
                interleaved: true,
                softmax_mscale: None,
            },
            64,
        );
        assert_eq!(rope.inv_freq.len(), 32);
        assert_eq!(rope.inv_freq[0], 1.0);
        assert!((rope.inv_freq[16] - 0.01).abs() < 1e-8);
        assert_eq!(rope.attention_factor, 1.0);
    }

    #[test]
    fn yarn_keeps_high_and_interpolates_low_frequencies() {
        // V2-Lite: d_rope 64, theta 10000, original 4096, factor 40 → ramp from pair 10 to 23.
        let plain = Rope::new(
            &RopeConfig {
                scaling: RopeScaling::None,
                ..yarn(None, None)
            },
            64,
        );
        let rope = Rope::new(&yarn(Some(0.707), Some(0.707)), 64);
        for i in 0..=10 {
            assert_eq!(
                rope.inv_freq[i], plain.inv_freq[i],
                "pair {i} must be extrapolated"
            );
        }
        for i in 23..32 {
            let expected = plain.inv_freq[i] / 40.0;
            assert!(
                (rope.inv_freq[i] - expected).abs() <= expected * 1e-6,
                "pair {i} must be interpolated"
            );
        }
        let mid = rope.inv_freq[16] / plain.inv_freq[16];
        assert!(mid > 1.0 / 40.0 && mid < 1.0);
        // mscale == mscale_all_dim → attention factor exactly 1.
        assert_eq!(rope.attention_factor, 1.0);
    }

    #[test]
    fn yarn_attention_factor_without_mscale_keys() {
        let rope = Rope::new(&yarn(None, None), 64);
        let expected = 0.1 * 40f64.ln() + 1.0;
        assert!((rope.attention_factor as f64 - expected).abs() < 1e-6);
        let rope = Rope::new(&yarn(Some(1.0), Some(0.8)), 64);
        let expected = (0.1 * 40f64.ln() + 1.0) / (0.08 * 40f64.ln() + 1.0);
        assert!((rope.attention_factor as f64 - expected).abs() < 1e-6);
    }

    #[test]
    fn rotation_preserves_norm_and_layouts_agree_on_dot_products() {
        let base = RopeConfig {
            theta: 10000.0,
            scaling: RopeScaling::None,
            interleaved: true,
            softmax_mscale: None,
        };
        let inter = Rope::new(&base, 8);
        let split = Rope::new(
            &RopeConfig {
                interleaved: false,
                ..base
            },
            8,
        );
        let q: Vec<f32> = (0..8).map(|i| (i as f32 * 0.37).sin()).collect();
        let k: Vec<f32> = (0..8).map(|i| (i as f32 * 0.91).cos()).collect();
        // The same pairs in the two layouts: interleaved (2i, 2i+1) ↔ half-split (i, i+4).
        let to_split = |x: &[f32]| -> Vec<f32> {
            (0..4)
                .map(|i| x[2 * i])
                .chain((0..4).map(|i| x[2 * i + 1]))
                .collect()
        };
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let (cq, sq) = inter.cos_sin(7);
        let (ck, sk) = inter.cos_sin(3);
        let (mut qi, mut ki) = (q.clone(), k.clone());
        inter.rotate(&mut qi, &cq, &sq);
        inter.rotate(&mut ki, &ck, &sk);
        let (mut qs, mut ks) = (to_split(&q), to_split(&k));
        split.rotate(&mut qs, &cq, &sq);
        split.rotate(&mut ks, &ck, &sk);
        assert!((dot(&qi, &ki) - dot(&qs, &ks)).abs() < 1e-5);
        assert!((dot(&qi, &qi) - dot(&q, &q)).abs() < 1e-5);
        // Relative position only: shifting both positions keeps the score.
        let (cq2, sq2) = inter.cos_sin(107);
        let (ck2, sk2) = inter.cos_sin(103);
        let (mut q2, mut k2) = (q.clone(), k.clone());
        inter.rotate(&mut q2, &cq2, &sq2);
        inter.rotate(&mut k2, &ck2, &sk2);
        assert!((dot(&q2, &k2) - dot(&qi, &ki)).abs() < 1e-4);
    }
}
