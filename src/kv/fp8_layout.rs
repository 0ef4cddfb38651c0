//! The FP8 cache's bytes per token: one definition of the quantizer, for the CPU reference and
//! (mirrored) the GPU's cache write.
//!
//! - **MLA** (FlashMLA's and vLLM's `fp8_ds_mla` layout): the `r` latent values as `float8_e4m3fn`
//!   in tiles of 128, then one f32 scale per tile, then the RoPE values as bf16 — for DeepSeek's
//!   512 + 64 values, 512 + 4·4 + 64·2 = 656 bytes instead of 1,152 in bf16. A latent that is not
//!   a multiple of 128 has a partial last tile.
//! - **MHA/GQA**: K and V of each KV head as `float8_e4m3fn`, then one f32 scale per head for K
//!   and one for V.
//!
//! A scale is the group's amax / 448 rounded up to a power of two (at least 2⁻¹³), as FlashMLA's
//! reference quantizer computes it, so dividing by it is exact and every value fits e4m3.

use crate::util::e4m3::{decode_table, f32_to_e4m3, E4M3_MAX};
use half::bf16;

/// Latent values per scale in the MLA layout (FlashMLA's tile).
pub const MLA_TILE: usize = 128;

/// The scale of a group of values whose largest magnitude is `amax`.
pub fn group_scale(amax: f32) -> f32 {
    let s = (amax / E4M3_MAX).max(1e-4);
    2f32.powi(s.log2().ceil() as i32)
}

/// Quantizes `values` with one scale into `out` (one byte each); returns the scale.
fn quantize_group(values: &[f32], out: &mut [u8]) -> f32 {
    let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = group_scale(amax);
    for (o, &v) in out.iter_mut().zip(values) {
        *o = f32_to_e4m3(v / scale);
    }
    scale
}

fn dequantize_group(bytes: &[u8], scale: f32, out: &mut [f32]) {
    let table = decode_table();
    for (o, &b) in out.iter_mut().zip(bytes) {
        *o = table[b as usize] * scale;
    }
}

/// FlashMLA's FP8 layout of one token's `latent + rope` cached values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaFp8Layout {
    /// `kv_lora_rank`.
    pub latent: usize,
    /// `qk_rope_head_dim`.
    pub rope: usize,
}

impl MlaFp8Layout {
    pub fn tiles(&self) -> usize {
        self.latent.div_ceil(MLA_TILE)
    }

    pub fn bytes_per_token(&self) -> usize {
        self.latent + 4 * self.tiles() + 2 * self.rope
    }

    /// Writes one token's `latent + rope` values (`values`) as [`Self::bytes_per_token`] bytes.
    pub fn quantize(&self, values: &[f32], out: &mut [u8]) {
        let (latent, rope) = values.split_at(self.latent);
        let (codes, rest) = out.split_at_mut(self.latent);
        let (scales, rope_out) = rest.split_at_mut(4 * self.tiles());
        for (t, tile) in latent.chunks(MLA_TILE).enumerate() {
            let scale = quantize_group(tile, &mut codes[t * MLA_TILE..][..tile.len()]);
            scales[4 * t..4 * t + 4].copy_from_slice(&scale.to_le_bytes());
        }
        for (o, &v) in rope_out.chunks_exact_mut(2).zip(rope) {
            o.copy_from_slice(&bf16::from_f32(v).to_le_bytes());
        }
    }

    /// The values [`Self::quantize`] stored, as f32.
    pub fn dequantize(&self, bytes: &[u8], out: &mut [f32]) {
        let (codes, rest) = bytes.split_at(self.latent);
        let (scales, rope) = rest.split_at(4 * self.tiles());
        let (latent_out, rope_out) = out.split_at_mut(self.latent);
        for (t, tile) in latent_out.chunks_mut(MLA_TILE).enumerate() {
            let scale = f32::from_le_bytes(scales[4 * t..4 * t + 4].try_into().expect("4 bytes"));
            dequantize_group(&codes[t * MLA_TILE..], scale, tile);
        }
        for (o, b) in rope_out.iter_mut().zip(rope.chunks_exact(2)) {
            *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
        }
    }
}

/// The FP8 layout of one token's K and V (`[K of every KV head | V of every KV head]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MhaFp8Layout {
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl MhaFp8Layout {
    /// Groups of one scale: K then V of each head.
    fn groups(&self) -> usize {
        2 * self.kv_heads
    }

    pub fn bytes_per_token(&self) -> usize {
        self.groups() * (self.head_dim + 4)
    }

    /// Writes one token's `[K | V]` values as [`Self::bytes_per_token`] bytes: the codes of
    /// every group, then the groups' scales.
    pub fn quantize(&self, values: &[f32], out: &mut [u8]) {
        let (codes, scales) = out.split_at_mut(self.groups() * self.head_dim);
        for (g, group) in values.chunks(self.head_dim).enumerate() {
            let scale = quantize_group(group, &mut codes[g * self.head_dim..][..self.head_dim]);
            scales[4 * g..4 * g + 4].copy_from_slice(&scale.to_le_bytes());
        }
    }

    pub fn dequantize(&self, bytes: &[u8], out: &mut [f32]) {
        let (codes, scales) = bytes.split_at(self.groups() * self.head_dim);
        for (g, group) in out.chunks_mut(self.head_dim).enumerate() {
            let scale = f32::from_le_bytes(scales[4 * g..4 * g + 4].try_into().expect("4 bytes"));
            dequantize_group(&codes[g * self.head_dim..], scale, group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(n: usize, amplitude: f32) -> Vec<f32> {
        (0..n)
            .map(|i| amplitude * ((i * 37 % 101) as f32 / 50.0 - 1.0))
            .collect()
    }

    #[test]
    fn deepseeks_layout_is_656_bytes() {
        let layout = MlaFp8Layout {
            latent: 512,
            rope: 64,
        };
        assert_eq!(layout.bytes_per_token(), 656);
        let mha = MhaFp8Layout {
            kv_heads: 8,
            head_dim: 128,
        };
        assert_eq!(mha.bytes_per_token(), 2 * 8 * 132);
    }

    #[test]
    fn scales_are_powers_of_two_covering_the_amax() {
        assert_eq!(group_scale(448.0), 1.0);
        assert_eq!(group_scale(449.0), 2.0);
        assert_eq!(group_scale(1.0), 2f32.powi(-8)); // 1/448 → 2⁻⁸
        assert_eq!(group_scale(0.0), 2f32.powi(-13)); // clamped at 1e-4
    }

    #[test]
    fn a_token_round_trips_within_e4m3_precision() {
        // A partial last tile (200 = 128 + 72) and tiles of very different magnitudes.
        let layout = MlaFp8Layout {
            latent: 200,
            rope: 8,
        };
        let mut values = wave(128, 0.01);
        values.extend(wave(72, 30.0));
        values.extend(wave(8, 2.0));
        let mut bytes = vec![0u8; layout.bytes_per_token()];
        layout.quantize(&values, &mut bytes);
        let mut back = vec![f32::NAN; 208];
        layout.dequantize(&bytes, &mut back);
        for (i, (&v, &b)) in values.iter().zip(&back).enumerate() {
            // e4m3 keeps 3 mantissa bits (relative error ≤ 1/16) above its subnormals; the
            // smallest values of a tile fall into them (absolute error ≤ scale · 2⁻¹⁰).
            let scale = group_scale(if i < 128 {
                0.01
            } else if i < 200 {
                30.0
            } else {
                0.0
            });
            let bound = if i < 200 {
                v.abs() / 16.0 + scale * 2f32.powi(-10)
            } else {
                v.abs() / 256.0 // bf16
            };
            assert!((v - b).abs() <= bound, "{i}: {v} → {b}");
        }
        let mha = MhaFp8Layout {
            kv_heads: 2,
            head_dim: 4,
        };
        let values = wave(16, 5.0);
        let mut bytes = vec![0u8; mha.bytes_per_token()];
        mha.quantize(&values, &mut bytes);
        let mut back = vec![f32::NAN; 16];
        mha.dequantize(&bytes, &mut back);
        for (&v, &b) in values.iter().zip(&back) {
            assert!(
                (v - b).abs() <= v.abs() / 16.0 + 5.0 / 448.0 * 2f32.powi(-9),
                "{v} → {b}"
            );
        }
    }
}
