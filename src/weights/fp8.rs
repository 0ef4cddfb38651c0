//! The block dequantization of DeepSeek's FP8 checkpoints:
//! `w[r][c] = e4m3[r][c] · scale_inv[r / block_rows][c / block_cols]`.

use super::HostTensor;
use crate::config::quantization::Fp8Blocks;
use crate::util::e4m3::{decode_table, f32_to_e4m3, E4M3_MAX};

/// The scale grid a `rows × cols` tensor has in `blocks`: `[⌈rows/br⌉, ⌈cols/bc⌉]`.
pub fn scale_grid(rows: usize, cols: usize, blocks: Fp8Blocks) -> [usize; 2] {
    [rows.div_ceil(blocks.rows), cols.div_ceil(blocks.cols)]
}

/// A block-scaled FP8 matrix as DeepSeek's checkpoints store it: `rows × cols` e4m3fn codes
/// (row-major) and one f32 scale per block ([`scale_grid`], row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Matrix {
    pub rows: usize,
    pub cols: usize,
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
    pub blocks: Fp8Blocks,
}

impl Fp8Matrix {
    /// The matrix's values in f32, exactly (what the CPU computes with).
    pub fn dequantize(&self) -> HostTensor {
        let data = dequantize(&self.codes, self.cols, &self.scales, self.blocks);
        HostTensor::new(vec![self.rows, self.cols], data)
    }

    /// Whether the FP8 GEMM takes this matrix (128 × 128 blocks, rows of whole 16-byte pieces):
    /// only such weights meet quantized activations under [`Fp8Activations::Dynamic`]; others
    /// multiply by their exact values on every backend.
    ///
    /// [`Fp8Activations::Dynamic`]: crate::config::quantization::Fp8Activations::Dynamic
    pub fn fits_fp8_gemm(&self) -> bool {
        self.blocks == Fp8Blocks::DEEPSEEK && self.cols % 16 == 0 && self.rows > 0
    }

    /// `w` (`rows × cols`) in FP8 with one scale per block: block amax / 448 (1 for an all-zero
    /// block), the quotient in f64 as DeepSeek's reference quantizer divides, then each value's
    /// nearest e4m3fn code of `w / scale` (also divided in f64).
    pub fn quantize(w: &[f32], rows: usize, cols: usize, blocks: Fp8Blocks) -> Fp8Matrix {
        use rayon::prelude::*;
        debug_assert_eq!(w.len(), rows * cols);
        let [grid_rows, grid_cols] = scale_grid(rows, cols, blocks);
        let mut scales = vec![1.0f32; grid_rows * grid_cols];
        let mut codes = vec![0u8; rows * cols];
        // One row of blocks at a time, spread over the cores (billions of weights at load).
        let band = (blocks.rows * cols).max(1);
        codes
            .par_chunks_mut(band)
            .zip(scales.par_chunks_mut(grid_cols.max(1)))
            .zip(w.par_chunks(band))
            .for_each(|((codes, scales), w)| {
                let band_rows = w.len() / cols.max(1);
                for (bc, c0) in (0..cols).step_by(blocks.cols).enumerate() {
                    let c1 = (c0 + blocks.cols).min(cols);
                    let amax = (0..band_rows)
                        .flat_map(|r| w[r * cols + c0..r * cols + c1].iter())
                        .fold(0.0f32, |m, v| m.max(v.abs()));
                    let scale = if amax > 0.0 {
                        (amax as f64 / E4M3_MAX as f64) as f32
                    } else {
                        1.0
                    };
                    scales[bc] = scale;
                    for r in 0..band_rows {
                        for c in c0..c1 {
                            let q = (w[r * cols + c] as f64 / scale as f64) as f32;
                            codes[r * cols + c] = f32_to_e4m3(q);
                        }
                    }
                }
            });
        Fp8Matrix {
            rows,
            cols,
            codes,
            scales,
            blocks,
        }
    }
}

/// Dequantizes a `rows × cols` e4m3fn tensor with its block scales (row-major, [`scale_grid`]).
pub fn dequantize(bytes: &[u8], cols: usize, scales: &[f32], blocks: Fp8Blocks) -> Vec<f32> {
    let table = decode_table();
    let grid_cols = cols.div_ceil(blocks.cols);
    bytes
        .chunks_exact(cols.max(1))
        .enumerate()
        .flat_map(|(r, row)| {
            let scale_row = &scales[(r / blocks.rows) * grid_cols..][..grid_cols];
            row.iter()
                .enumerate()
                .map(move |(c, &b)| table[b as usize] * scale_row[c / blocks.cols])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_count_from_the_top_left_with_partial_last_blocks() {
        // 3 × 5 with 2 × 2 blocks: a 2 × 3 grid, the last row and column of blocks partial.
        let blocks = Fp8Blocks { rows: 2, cols: 2 };
        assert_eq!(scale_grid(3, 5, blocks), [2, 3]);
        let one = f32_to_e4m3(1.0);
        let bytes = vec![one; 15];
        let scales = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = dequantize(&bytes, 5, &scales, blocks);
        assert_eq!(
            w,
            [
                1.0, 1.0, 2.0, 2.0, 3.0, //
                1.0, 1.0, 2.0, 2.0, 3.0, //
                4.0, 4.0, 5.0, 5.0, 6.0,
            ]
        );
    }
}
