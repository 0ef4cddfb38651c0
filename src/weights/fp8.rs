//! The block dequantization of DeepSeek's FP8 checkpoints:
//! `w[r][c] = e4m3[r][c] · scale_inv[r / block_rows][c / block_cols]`.

use crate::config::quantization::Fp8Blocks;
use crate::util::e4m3::decode_table;

/// The scale grid a `rows × cols` tensor has in `blocks`: `[⌈rows/br⌉, ⌈cols/bc⌉]`.
pub fn scale_grid(rows: usize, cols: usize, blocks: Fp8Blocks) -> [usize; 2] {
    [rows.div_ceil(blocks.rows), cols.div_ceil(blocks.cols)]
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
    use crate::util::e4m3::f32_to_e4m3;

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
