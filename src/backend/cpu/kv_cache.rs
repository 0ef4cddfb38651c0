//! The CPU's paged cache: per layer `[num_blocks, block_size]` rows of f32, bf16 or FP8
//! ([`CacheRows`]). Attention reads a sequence's context as f32 rows through
//! [`CpuKvCache::context`]. Fresh blocks are all-ones bytes, NaN in every format, so a read of a
//! slot nobody wrote poisons the result instead of passing silently.

use crate::backend::AttentionBatch;
use crate::error::Result;
use crate::kv::cache_dtype::CacheRows;
use half::bf16;

pub struct CpuKvCache {
    pub num_blocks: usize,
    pub block_size: usize,
    /// Values per row.
    pub width: usize,
    pub rows: CacheRows,
    layers: Vec<Vec<u8>>,
}

impl CpuKvCache {
    pub fn new(layers: usize, num_blocks: usize, block_size: usize, rows: CacheRows) -> Self {
        let width = match rows {
            CacheRows::Native { width } | CacheRows::Bf16 { width } => width,
            CacheRows::Fp8(l) => l.width(),
        };
        let row_bytes = rows.bytes_per_token(4) as usize;
        CpuKvCache {
            num_blocks,
            block_size,
            width,
            rows,
            layers: (0..layers)
                .map(|_| vec![0xff; num_blocks * block_size * row_bytes])
                .collect(),
        }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn row_bytes(&self) -> usize {
        self.rows.bytes_per_token(4) as usize
    }

    pub fn slots(&self) -> usize {
        self.num_blocks * self.block_size
    }

    pub fn check_batch(&self, batch: &AttentionBatch) -> Result<()> {
        batch.check_blocks(self.num_blocks, self.block_size)
    }

    /// Stores `values` (one row) at `slot` of `layer`; the caller checked both.
    pub fn write_row(&mut self, layer: usize, slot: usize, values: &[f32]) {
        let n = self.row_bytes();
        let out = &mut self.layers[layer][slot * n..(slot + 1) * n];
        match self.rows {
            CacheRows::Native { .. } => {
                for (o, v) in out.chunks_exact_mut(4).zip(values) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            CacheRows::Bf16 { .. } => {
                for (o, v) in out.chunks_exact_mut(2).zip(values) {
                    o.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
                }
            }
            CacheRows::Fp8(layout) => layout.quantize(values, out),
        }
    }

    /// Copies block `from` to block `to` in every layer; the caller checked both.
    pub fn copy_block(&mut self, from: usize, to: usize) {
        let block = self.block_size * self.row_bytes();
        for layer in &mut self.layers {
            layer.copy_within(from * block..(from + 1) * block, to * block);
        }
    }

    /// The stored bytes of every slot of `layer` (`[slots, row bytes]`), for tests that compare
    /// them with a GPU's.
    pub fn layer_bytes(&self, layer: usize) -> &[u8] {
        &self.layers[layer]
    }

    /// Every slot's row of `layer`, as f32 (`[slots, width]`), for tests that read the cache
    /// as the GPU lays it out.
    pub fn all_rows(&self, layer: usize) -> Vec<f32> {
        let slots: Vec<u32> = (0..self.slots() as u32).collect();
        self.context(layer, &slots, self.slots())
    }

    /// The first `len` rows of the sequence with `block_table` in `layer`, as f32
    /// (`[len, width]`).
    pub fn context(&self, layer: usize, block_table: &[u32], len: usize) -> Vec<f32> {
        let n = self.row_bytes();
        let mut out = vec![0.0f32; len * self.width];
        for (p, row) in out.chunks_exact_mut(self.width.max(1)).enumerate() {
            let slot =
                block_table[p / self.block_size] as usize * self.block_size + p % self.block_size;
            let bytes = &self.layers[layer][slot * n..(slot + 1) * n];
            match self.rows {
                CacheRows::Native { .. } => {
                    for (o, b) in row.iter_mut().zip(bytes.chunks_exact(4)) {
                        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                CacheRows::Bf16 { .. } => {
                    for (o, b) in row.iter_mut().zip(bytes.chunks_exact(2)) {
                        *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }
                CacheRows::Fp8(layout) => layout.dequantize(bytes, row),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::{Backend, HostTensor, MhaDims, MlaDims, SeqChunk};
    use crate::kv::cache_dtype::Fp8Layout;
    use crate::kv::fp8_layout::{MhaFp8Layout, MlaFp8Layout};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::util::rng::SplitMix64(seed);
        (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect()
    }

    /// An FP8 cache and an f32 cache holding its dequantized rows, written at shuffled slots
    /// (two sequences of 13 and 6 tokens in blocks of 4), and the batch that reads them.
    fn caches(rows: CacheRows, width: usize) -> (CpuKvCache, CpuKvCache, AttentionBatch) {
        let (blocks, bs) = (6, 4);
        let tables = [vec![5u32, 0, 3, 1], vec![4, 2]];
        let lens = [13, 6];
        let mut fp8 = CpuKvCache::new(1, blocks, bs, rows);
        let mut f32s = CpuKvCache::new(1, blocks, bs, CacheRows::Native { width });
        for (s, (table, &len)) in tables.iter().zip(&lens).enumerate() {
            for p in 0..len {
                let slot = table[p / bs] as usize * bs + p % bs;
                let row = values(width, (s * 100 + p) as u64);
                fp8.write_row(0, slot, &row);
                let back = fp8.context(0, table, p + 1)[p * width..].to_vec();
                f32s.write_row(0, slot, &back);
            }
        }
        let batch = AttentionBatch {
            block_size: bs,
            seqs: tables
                .iter()
                .zip(&lens)
                .map(|(t, &len)| SeqChunk {
                    block_table: t.clone(),
                    context_len: len,
                    query_len: 3,
                })
                .collect(),
        };
        (fp8, f32s, batch)
    }

    #[test]
    fn attention_over_fp8_rows_is_attention_over_their_values() {
        let dims = MlaDims {
            heads: 2,
            qk_nope: 8,
            qk_rope: 4,
            v_head: 8,
            kv_lora_rank: 136, // a partial second tile
            softmax_scale: 0.3,
        };
        let layout = Fp8Layout::Mla(MlaFp8Layout {
            latent: 136,
            rope: 4,
        });
        let (fp8, f32s, batch) = caches(CacheRows::Fp8(layout), 140);
        let t = batch.num_query_tokens();
        let q_lat = HostTensor::new(vec![t, 2 * 136], values(t * 2 * 136, 1));
        let q = HostTensor::new(vec![t, 2 * 12], values(t * 2 * 12, 2));
        let absorbed = |c: &CpuKvCache| {
            CpuBackend::EXACT
                .mla_attention_absorbed(&q_lat, &q, c, 0, &batch, &dims)
                .unwrap()
                .data
        };
        assert_eq!(absorbed(&fp8), absorbed(&f32s));
        let kv_b = CpuBackend::EXACT
            .upload_weight(HostTensor::new(vec![2 * 16, 136], values(32 * 136, 3)))
            .unwrap();
        let materialised = |c: &CpuKvCache| {
            CpuBackend::EXACT
                .mla_attention_materialised(&q, c, 0, &batch, &kv_b, &dims)
                .unwrap()
                .data
        };
        assert_eq!(materialised(&fp8), materialised(&f32s));
        // The FP8 rows differ from the values written (or this test would prove nothing).
        let original = values(140, 0);
        assert_ne!(fp8.context(0, &[5], 1), original);

        let dims = MhaDims {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            softmax_scale: 0.35,
            sliding_window: None,
        };
        let layout = Fp8Layout::Mha(MhaFp8Layout {
            kv_heads: 2,
            head_dim: 8,
        });
        let (fp8, f32s, batch) = caches(CacheRows::Fp8(layout), 32);
        let q = HostTensor::new(vec![t, 32], values(t * 32, 4));
        let mha = |c: &CpuKvCache| {
            CpuBackend::EXACT
                .mha_attention(&q, c, 0, &batch, &dims)
                .unwrap()
                .data
        };
        assert_eq!(mha(&fp8), mha(&f32s));
    }

    #[test]
    fn unwritten_slots_read_as_nan_in_every_format() {
        for rows in [
            CacheRows::Native { width: 8 },
            CacheRows::Bf16 { width: 8 },
            CacheRows::Fp8(Fp8Layout::Mha(MhaFp8Layout {
                kv_heads: 1,
                head_dim: 4,
            })),
        ] {
            let cache = CpuKvCache::new(1, 2, 4, rows);
            assert!(cache.all_rows(0).iter().all(|v| v.is_nan()), "{rows:?}");
        }
    }
}
