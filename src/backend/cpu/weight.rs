//! The CPU's weights: f32 values, and for an FP8 weight under `--fp8-activations dynamic`, the
//! mark that activations are quantized before they meet it (as the GPU's FP8 GEMM quantizes them).

use super::matmul::matmul_nt;
use crate::ops::fp8_matmul::quantize_rows;
use crate::weights::HostTensor;

/// A weight of [`super::CpuBackend`]. It reads as its values (`Deref`), so every op that only
/// needs numbers (norms, biases, the embedding) treats it as the tensor it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuWeight {
    pub values: HostTensor,
    /// Rows of activations are quantized per 128 columns (e4m3, scale amax / 448) before they
    /// are multiplied by this weight: set only for FP8 weights the GPU's FP8 GEMM would take.
    pub quantizes_input: bool,
}

impl From<HostTensor> for CpuWeight {
    fn from(values: HostTensor) -> Self {
        CpuWeight {
            values,
            quantizes_input: false,
        }
    }
}

impl std::ops::Deref for CpuWeight {
    type Target = HostTensor;
    fn deref(&self) -> &HostTensor {
        &self.values
    }
}

impl CpuWeight {
    /// `x · wᵀ` for `x` `[m, k]` and this `[n, k]` weight (shapes checked by the caller), with
    /// `x`'s rows quantized first where [`Self::quantizes_input`].
    pub(super) fn product(&self, x: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        if !self.quantizes_input {
            return matmul_nt(x, &self.values.data, m, k, n);
        }
        let quantized = quantize_rows(x, k).dequantize();
        matmul_nt(&quantized, &self.values.data, m, k, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;
    use crate::config::quantization::Fp8Blocks;
    use crate::ops::fp8_matmul::fp8_matmul;
    use crate::weights::fp8::Fp8Matrix;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn dynamic_fp8_weights_multiply_quantized_activations_as_the_gpu_does() {
        let (m, k, n) = (3, 272, 144);
        let w = Fp8Matrix::quantize(&values(n * k, 7), n, k, Fp8Blocks::DEEPSEEK);
        let x = HostTensor::new(vec![m, k], values(m * k, 11));
        let want = fp8_matmul(&quantize_rows(&x.data, k), &w);
        let dynamic = CpuBackend::DYNAMIC_FP8
            .upload_fp8_weight(w.clone())
            .unwrap();
        assert!(dynamic.quantizes_input);
        let got = CpuBackend::DYNAMIC_FP8.matmul(&x, &dynamic).unwrap();
        for (g, w) in got.data.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{g} vs {w}"
            );
        }
        // Exact: the dequantized weight's product, which differs from the quantized one.
        let exact = CpuBackend::EXACT.upload_fp8_weight(w.clone()).unwrap();
        assert!(!exact.quantizes_input);
        let exact = CpuBackend::EXACT.matmul(&x, &exact).unwrap();
        let plain = CpuBackend::EXACT
            .matmul(&x, &w.dequantize().into())
            .unwrap();
        assert_eq!(exact, plain);
        assert_ne!(exact.data, got.data);
    }

    #[test]
    fn only_weights_the_fp8_gemm_takes_quantize_their_input() {
        let blocks = Fp8Blocks { rows: 32, cols: 16 };
        let other = Fp8Matrix::quantize(&values(64 * 64, 3), 64, 64, blocks);
        let odd = Fp8Matrix::quantize(&values(64 * 40, 3), 64, 40, Fp8Blocks::DEEPSEEK);
        for m in [other, odd] {
            assert!(!m.fits_fp8_gemm());
            let w = CpuBackend::DYNAMIC_FP8.upload_fp8_weight(m).unwrap();
            assert!(!w.quantizes_input);
        }
    }
}
