//! Random weights for benchmark presets: any tensor, by name, deterministic for a seed, generated
//! in parallel in seconds. Matrices get N(0, 1/in) so activations stay O(1); norm weights are 1;
//! other vectors (biases, routing bias) are 0.

use super::{HostTensor, TensorSource};
use crate::error::Result;
use crate::util::rng::SplitMix64;
use rayon::prelude::*;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomWeights {
    pub seed: u64,
}

/// How a generated tensor is filled; a backend may produce it where the weights live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RandomFill {
    Constant(f32),
    /// Value `j` is `(u₁ + u₂ + u₃ + u₄ − 2)·√3·std`, its four uniforms the draws `4m + 1 … 4m + 4`
    /// of SplitMix64 seeded with `base ^ (c · 0x9E3779B97F4A7C15)`, where `j = c·CHUNK + m`.
    Normal {
        base: u64,
        std: f32,
    },
}

/// Values per parallel chunk; each chunk has its own generator, so results do not depend on
/// the number of threads (and a GPU can compute any value on its own).
pub const CHUNK: usize = 1 << 16;

impl RandomWeights {
    pub fn fill(&self, name: &str, shape: &[usize]) -> RandomFill {
        match shape {
            [_] if name.ends_with("norm.weight") => RandomFill::Constant(1.0),
            [_] => RandomFill::Constant(0.0),
            _ => {
                let fan_in = *shape.last().expect("a shape");
                let mut h = DefaultHasher::new();
                (self.seed, name).hash(&mut h);
                RandomFill::Normal {
                    base: h.finish(),
                    std: (fan_in as f32).powf(-0.5),
                }
            }
        }
    }
}

impl TensorSource for RandomWeights {
    fn random_fill(&self, name: &str, shape: &[usize]) -> Option<RandomFill> {
        Some(self.fill(name, shape))
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let count: usize = shape.iter().product();
        let data = match self.fill(name, shape) {
            RandomFill::Constant(v) => vec![v; count],
            RandomFill::Normal { base, std } => {
                let mut data = vec![0.0f32; count];
                data.par_chunks_mut(CHUNK)
                    .enumerate()
                    .for_each(|(i, chunk)| {
                        let mut rng =
                            SplitMix64(base ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        // Sum of four uniforms: close enough to normal for benchmarks, and fast.
                        for v in chunk {
                            let s: f64 = (0..4).map(|_| rng.next_f64()).sum::<f64>() - 2.0;
                            *v = (s * 3f64.sqrt()) as f32 * std;
                        }
                    });
                data
            }
        };
        Ok(HostTensor::new(shape.to_vec(), data))
    }

    fn contains(&self, name: &str) -> bool {
        // Fused expert tensors are never generated: the per-expert layout is used.
        !name.ends_with("experts.gate_up_proj") && !name.ends_with("experts.down_proj")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Value `j` computed on its own, as the GPU kernel (random_normal) computes it.
    fn value_at(base: u64, std: f32, j: usize) -> f32 {
        let (c, m) = ((j / CHUNK) as u64, (j % CHUNK) as u64);
        let golden = 0x9E37_79B9_7F4A_7C15u64;
        let state = base ^ c.wrapping_mul(golden);
        let mut sum = 0.0f64;
        for r in 1..=4u64 {
            let mut draw = SplitMix64(state.wrapping_add((4 * m + r - 1).wrapping_mul(golden)));
            sum += draw.next_f64();
        }
        ((sum - 2.0) * 3f64.sqrt()) as f32 * std
    }

    #[test]
    fn any_value_can_be_computed_on_its_own() {
        let w = RandomWeights { seed: 9 };
        let (name, shape) = ("model.layers.1.mlp.experts.0.gate_proj.weight", [40, 4000]);
        let RandomFill::Normal { base, std } = w.fill(name, &shape) else {
            panic!("a matrix is normal");
        };
        let all = w.load(name, &shape).unwrap();
        for j in [0, 1, 2, CHUNK - 1, CHUNK, CHUNK + 7, 2 * CHUNK + 5, 159_999] {
            assert_eq!(
                all.data[j].to_bits(),
                value_at(base, std, j).to_bits(),
                "value {j}"
            );
        }
        assert_eq!(w.fill("model.norm.weight", &[8]), RandomFill::Constant(1.0));
    }
}
