//! Random weights for benchmark presets: any tensor, by name, deterministic for a seed, generated
//! in parallel in seconds. Matrices get N(0, 1/in) so activations stay O(1); norm weights are 1;
//! other vectors (biases, routing bias) are 0.

use super::{HostTensor, TensorSource};
use crate::engine::sampler::SplitMix64;
use crate::error::Result;
use rayon::prelude::*;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomWeights {
    pub seed: u64,
}

/// Values per parallel chunk; each chunk has its own generator, so results do not depend on
/// the number of threads.
const CHUNK: usize = 1 << 16;

impl TensorSource for RandomWeights {
    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let count: usize = shape.iter().product();
        let data = match shape {
            [_] if name.ends_with("norm.weight") => vec![1.0; count],
            [_] => vec![0.0; count],
            _ => {
                let fan_in = *shape.last().expect("a shape");
                let std = (fan_in as f32).powf(-0.5);
                let mut h = DefaultHasher::new();
                (self.seed, name).hash(&mut h);
                let base = h.finish();
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
