//! `--quantization fp8`: a bf16/f16/f32 checkpoint's linear weights rounded at load to the
//! format of DeepSeek's FP8 checkpoints — `float8_e4m3fn` with one scale per block (block amax /
//! 448, as DeepSeek's reference quantizer and `scripts/fixtures/make_fp8_fixtures.py`) — and
//! handed out dequantized, so every backend computes with exactly the FP8 weights' values.

use super::fp8::Fp8Matrix;
use super::{HostTensor, TensorSource};
use crate::config::quantization::Fp8Blocks;
use crate::error::Result;

/// The tensors an FP8 checkpoint stores in FP8: the linear layers' weight matrices, per-expert
/// (`…_proj.weight`, `kv_a_proj_with_mqa.weight`) or fused (`experts.gate_up_proj`,
/// `experts.down_proj`, one matrix per expert); not the embedding, the head, the norms or the
/// router.
pub fn is_fp8_linear(name: &str) -> bool {
    name.ends_with("_proj.weight")
        || name.ends_with("_proj_with_mqa.weight")
        || name.ends_with("experts.gate_up_proj")
        || name.ends_with("experts.down_proj")
}

/// How many matrices each expert's slice of fused stack `name` holds: gate and up for
/// `experts.gate_up_proj`, one otherwise. Each is rounded on its own, as in the per-expert
/// layout, so that both layouts give the same FP8 weights.
pub fn fused_parts(name: &str) -> usize {
    match name.ends_with("experts.gate_up_proj") {
        true => 2,
        false => 1,
    }
}

/// `--quantization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Quantization {
    /// The checkpoint's weights as they are (an FP8 checkpoint is dequantized at load).
    #[default]
    None,
    /// Linear weights rounded to FP8 in 128 × 128 blocks at load (DeepSeek-V3's format).
    Fp8,
}

/// A [`TensorSource`] whose FP8-able weights come out rounded through FP8.
pub struct OnlineFp8<'a, S: TensorSource> {
    pub inner: &'a S,
    pub blocks: Fp8Blocks,
}

impl<S: TensorSource> TensorSource for OnlineFp8<'_, S> {
    /// A matrix comes out as [`Self::load_fp8`]'s values (an FP8 checkpoint's own, not rounded
    /// twice), a fused stack of expert matrices as [`Self::load_fp8_stack`]'s (gate and up
    /// apart).
    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        if shape.len() == 2 {
            return match self.load_fp8(name, shape)? {
                Some(m) => Ok(m.dequantize()),
                None => self.inner.load(name, shape),
            };
        }
        match self.load_fp8_stack(name, shape)? {
            Some(stack) => {
                let data = stack.iter().flat_map(|m| m.dequantize().data).collect();
                Ok(HostTensor::new(shape.to_vec(), data))
            }
            None => self.inner.load(name, shape),
        }
    }

    fn load_fp8_stack(&self, name: &str, shape: &[usize]) -> Result<Option<Vec<Fp8Matrix>>> {
        let (parts, &[_, rows, cols]) = (fused_parts(name), shape) else {
            return Ok(None);
        };
        if !is_fp8_linear(name) || rows % parts != 0 {
            return Ok(None);
        }
        let t = self.inner.load(name, shape)?;
        let rows = rows / parts;
        Ok(Some(
            t.data
                .chunks(rows * cols)
                .map(|m| Fp8Matrix::quantize(m, rows, cols, self.blocks))
                .collect(),
        ))
    }

    fn load_fp8(&self, name: &str, shape: &[usize]) -> Result<Option<Fp8Matrix>> {
        if let Some(m) = self.inner.load_fp8(name, shape)? {
            return Ok(Some(m));
        }
        match (is_fp8_linear(name), shape) {
            (true, &[rows, cols]) => {
                let t = self.inner.load(name, shape)?;
                Ok(Some(Fp8Matrix::quantize(&t.data, rows, cols, self.blocks)))
            }
            _ => Ok(None),
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    /// Generated weights stay generated in place, but for the matrices made FP8 here.
    fn random_fill(&self, name: &str, shape: &[usize]) -> Option<super::random::RandomFill> {
        match is_fp8_linear(name) && shape.len() >= 2 {
            true => None,
            false => self.inner.random_fill(name, shape),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_by_block_and_only_the_linear_ones() {
        assert!(is_fp8_linear(
            "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"
        ));
        assert!(is_fp8_linear("model.layers.0.self_attn.o_proj.weight"));
        assert!(is_fp8_linear("model.layers.1.mlp.experts.gate_up_proj"));
        assert!(!is_fp8_linear("model.layers.1.mlp.gate.weight"));
        assert!(!is_fp8_linear("lm_head.weight"));
        // Two blocks of 2 × 2: each scaled by its own amax (2.2 and 300).
        let original = [1.0f32, 1.1, 100.0, 0.001, 2.0, 2.2, 300.0, 0.002];
        let w = Fp8Matrix::quantize(&original, 2, 4, Fp8Blocks { rows: 2, cols: 2 })
            .dequantize()
            .data;
        for i in [0, 1, 2, 4, 5, 6] {
            let err = (w[i] - original[i]).abs() / original[i];
            assert!(err <= 1.0 / 16.0, "{i}: {} → {}", original[i], w[i]);
        }
        // The amax maps to 448, which e4m3 holds exactly.
        assert!(
            (w[6] - 300.0).abs() < 1e-4 && (w[5] - 2.2).abs() < 1e-6,
            "{w:?}"
        );
        // 0.001 lies below the second block's smallest step (300 / 448 · 2⁻⁹).
        assert!((w[3] - 0.001).abs() > 1e-4, "{}", w[3]);
    }
}
