//! The GPU's FP8 GEMM (`kernels/fp8_gemm.cu`) on the host, as its tests' reference: activations
//! quantized per row per 128 columns — scale `amax / 448` in f32 (1 for an all-zero block), code
//! the e4m3fn byte nearest `x / scale` in f32, as DeepSeek's inference code quantizes them — times
//! a block-scaled FP8 weight, summed in f64. The CPU engine itself multiplies by the weights'
//! exact values without quantizing activations; this is what the GPU computes instead.

use crate::util::e4m3::{decode_table, f32_to_e4m3, E4M3_MAX};
use crate::weights::fp8::Fp8Matrix;

/// Columns per activation scale (and the weights' block side the GPU kernels take).
pub const ACTIVATION_BLOCK: usize = 128;

/// `rows × cols` activations as e4m3fn codes with one scale per row per 128 columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Rows {
    pub rows: usize,
    pub cols: usize,
    pub codes: Vec<u8>,
    /// `[rows, ⌈cols / 128⌉]`.
    pub scales: Vec<f32>,
}

impl Fp8Rows {
    /// The quantized values, `code · scale` in f32: what the CPU engine multiplies under
    /// `--fp8-activations dynamic`.
    pub fn dequantize(&self) -> Vec<f32> {
        let table = decode_table();
        let k_blocks = self.cols.div_ceil(ACTIVATION_BLOCK);
        let mut out = Vec::with_capacity(self.codes.len());
        for (r, row) in self.codes.chunks_exact(self.cols.max(1)).enumerate() {
            for (c, &code) in row.iter().enumerate() {
                out.push(table[code as usize] * self.scales[r * k_blocks + c / ACTIVATION_BLOCK]);
            }
        }
        out
    }
}

/// Quantizes the rows of `x` (`cols` values each) as the GPU does, bit for bit.
pub fn quantize_rows(x: &[f32], cols: usize) -> Fp8Rows {
    let rows = x.len() / cols.max(1);
    let k_blocks = cols.div_ceil(ACTIVATION_BLOCK);
    let mut codes = vec![0u8; rows * cols];
    let mut scales = vec![0f32; rows * k_blocks];
    for r in 0..rows {
        for b in 0..k_blocks {
            let range =
                r * cols + b * ACTIVATION_BLOCK..r * cols + ((b + 1) * ACTIVATION_BLOCK).min(cols);
            let amax = x[range.clone()].iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = if amax > 0.0 { amax / E4M3_MAX } else { 1.0 };
            scales[r * k_blocks + b] = scale;
            for i in range {
                codes[i] = f32_to_e4m3(x[i] / scale);
            }
        }
    }
    Fp8Rows {
        rows,
        cols,
        codes,
        scales,
    }
}

/// `x · wᵀ` (`[x.rows, w.rows]`, row-major) of quantized activations and an FP8 weight with
/// 128 × 128 blocks, each 128-wide k block's sum scaled by its activation and weight scales.
pub fn fp8_matmul(x: &Fp8Rows, w: &Fp8Matrix) -> Vec<f64> {
    assert_eq!(x.cols, w.cols, "fp8_matmul: x and w columns");
    assert_eq!(
        (w.blocks.rows, w.blocks.cols),
        (ACTIVATION_BLOCK, ACTIVATION_BLOCK)
    );
    let table = decode_table();
    let k_blocks = w.cols.div_ceil(ACTIVATION_BLOCK);
    let mut out = vec![0f64; x.rows * w.rows];
    for r in 0..x.rows {
        let a = &x.codes[r * x.cols..(r + 1) * x.cols];
        for n in 0..w.rows {
            let b = &w.codes[n * w.cols..(n + 1) * w.cols];
            let mut total = 0f64;
            for kb in 0..k_blocks {
                let ks = kb * ACTIVATION_BLOCK..((kb + 1) * ACTIVATION_BLOCK).min(w.cols);
                let sum: f64 = ks
                    .map(|k| table[a[k] as usize] as f64 * table[b[k] as usize] as f64)
                    .sum();
                let w_scale = w.scales[(n / ACTIVATION_BLOCK) * k_blocks + kb] as f64;
                total += sum * x.scales[r * k_blocks + kb] as f64 * w_scale;
            }
            out[r * w.rows + n] = total;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::quantization::Fp8Blocks;

    #[test]
    fn quantized_rows_scale_by_block_amax_and_multiply_back() {
        // Two blocks: 128 values up to 2.0, then 72 up to 0.5; a zero row keeps scale 1.
        let cols = 200;
        let mut x: Vec<f32> = (0..cols)
            .map(|c| {
                if c < 128 {
                    2.0 * c as f32 / 127.0
                } else {
                    -0.5
                }
            })
            .collect();
        x.extend(std::iter::repeat_n(0.0, cols));
        let q = quantize_rows(&x, cols);
        assert_eq!(q.scales, [2.0 / 448.0, 0.5 / 448.0, 1.0, 1.0]);
        assert_eq!(q.codes[127], f32_to_e4m3(448.0));
        assert_eq!(q.codes[150], f32_to_e4m3(-448.0));
        assert!(q.codes[cols..].iter().all(|&c| c == 0));
        // One weight row of ones: the product is the sum of the quantized row, near the exact.
        let w = Fp8Matrix::quantize(&vec![1.0; cols], 1, cols, Fp8Blocks::DEEPSEEK);
        let y = fp8_matmul(&q, &w);
        let exact: f64 = x[..cols].iter().map(|&v| v as f64).sum();
        assert!(
            (y[0] - exact).abs() < 0.02 * exact.abs(),
            "{} vs {exact}",
            y[0]
        );
        assert_eq!(y[1], 0.0);
    }
}
