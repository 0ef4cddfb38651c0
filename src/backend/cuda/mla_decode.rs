//! Rust side of `kernels/mla_decode.cu`: the split-KV schedule (pure host code, tested on any
//! machine) and the launches of the tensor-core absorbed attention and its combine.

use super::{CudaDevice, GpuFloat, GpuTensor};
use crate::backend::{AttentionBatch, MlaDims};
use crate::error::{Error, Result};
use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};

/// Query rows ((token, head) pairs) per CTA and cached tokens per shared-memory tile; they match
/// `ROWS` and `KV_TILE` in mla_decode.cu.
pub const ROWS: usize = 16;
pub const KV_TILE: usize = 32;
/// Fewest tokens a split gets: below that, loading the queries costs more than the split saves.
const MIN_SPLIT: usize = 2 * KV_TILE;

/// One CTA's job: rows `[row_begin, row_begin + row_count)` of the step's (token, head) pairs,
/// all in sequence `seq`, over its cached tokens `[kv_begin, kv_end)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkItem {
    pub seq: u32,
    pub row_begin: u32,
    pub row_count: u32,
    pub kv_begin: u32,
    pub kv_end: u32,
}

/// The splits of one group of rows: items `[item_first, item_first + items)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowGroup {
    pub item_first: u32,
    pub items: u32,
    pub row_begin: u32,
    pub row_count: u32,
}

// SAFETY: #[repr(C)] structs of u32 only, laid out as the kernel's `WorkItem` and `RowGroup`.
unsafe impl DeviceRepr for WorkItem {}
// SAFETY: as above.
unsafe impl DeviceRepr for RowGroup {}

/// Cuts every group of 16 rows of every sequence into splits of one common length (a multiple
/// of the tile), chosen so that about `target_ctas` items cover the step: long sequences get
/// many splits and short ones few, so every CTA has about the same work. A group reads only the
/// tokens its last row may see.
pub fn schedule(
    batch: &AttentionBatch,
    heads: usize,
    target_ctas: usize,
) -> (Vec<WorkItem>, Vec<RowGroup>) {
    // (seq, first row, rows, tokens visible to the group's last row)
    let mut groups = Vec::new();
    let mut token = 0;
    for (s, seq) in batch.seqs.iter().enumerate() {
        let first_pos = seq.context_len - seq.query_len;
        let pairs = seq.query_len * heads;
        for begin in (0..pairs).step_by(ROWS) {
            let count = ROWS.min(pairs - begin);
            let last_token = (begin + count - 1) / heads;
            groups.push((s, token * heads + begin, count, first_pos + last_token + 1));
        }
        token += seq.query_len;
    }
    let work: usize = groups.iter().map(|g| g.3).sum();
    let chunk = work
        .div_ceil(target_ctas.max(1))
        .max(MIN_SPLIT)
        .next_multiple_of(KV_TILE);
    let mut items = Vec::new();
    let mut row_groups = Vec::with_capacity(groups.len());
    for (s, row_begin, row_count, visible) in groups {
        let first = items.len() as u32;
        for kv_begin in (0..visible).step_by(chunk) {
            items.push(WorkItem {
                seq: s as u32,
                row_begin: row_begin as u32,
                row_count: row_count as u32,
                kv_begin: kv_begin as u32,
                kv_end: (kv_begin + chunk).min(visible) as u32,
            });
        }
        row_groups.push(RowGroup {
            item_first: first,
            items: items.len() as u32 - first,
            row_begin: row_begin as u32,
            row_count: row_count as u32,
        });
    }
    (items, row_groups)
}

/// Dynamic shared memory of one CTA, laid out as in mla_decode.cu.
pub fn shared_bytes(dims: &MlaDims) -> usize {
    let d = dims.latent_width();
    ROWS * d * 2
        + KV_TILE * d * 2
        + 2 * ROWS * KV_TILE * 4
        + ROWS * KV_TILE * 2
        + ROWS * dims.kv_lora_rank * 4
        + 4 * ROWS * 4
}

impl CudaDevice {
    /// Whether the tensor-core kernel serves these dims in element type `T` on this device.
    pub fn mla_decode_supports<T: GpuFloat>(&self, dims: &MlaDims) -> bool {
        T::SUFFIX == "bf16"
            && dims.kv_lora_rank % 16 == 0
            && dims.qk_rope % 16 == 0
            && shared_bytes(dims) <= self.info.max_shared_per_block
    }

    /// Absorbed attention for `batch` over one layer of the latent cache (`[slots, r + d_rope]`):
    /// the latent output `[T, heads·r]` and each (token, head) row's log-sum-exp of its scaled
    /// scores (natural log). Call only where [`Self::mla_decode_supports`] holds.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_decode<T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        q_lat: &GpuTensor<T>,
        q: &GpuTensor<T>,
        cache_layer: &CudaView<'_, T>,
        tables: (&CudaSlice<u32>, &CudaSlice<u32>),
        batch: &AttentionBatch,
        dims: &MlaDims,
    ) -> Result<CudaSlice<f32>> {
        let (heads, r) = (dims.heads, dims.kv_lora_rank);
        let t = batch.num_query_tokens();
        if !self.mla_decode_supports::<T>(dims)
            || q_lat.rows != t
            || q_lat.cols != heads * r
            || q.rows != t
            || q.cols != heads * dims.qk_head()
            || out.rows != t
            || out.cols != heads * r
        {
            return Err(Error::Op {
                op: "mla_decode",
                message: format!(
                    "{dims:?} in {} for {t} tokens: q_lat [{}, {}], q [{}, {}], out [{}, {}]",
                    T::SUFFIX,
                    q_lat.rows,
                    q_lat.cols,
                    q.rows,
                    q.cols,
                    out.rows,
                    out.cols
                ),
            });
        }
        let (items, groups) = schedule(batch, heads, 2 * self.info.multiprocessors);
        let mut lse = self.tensor::<f32>(1, t * heads, None)?;
        if items.is_empty() {
            return Ok(lse.data);
        }
        let positions: Vec<u32> = batch
            .seqs
            .iter()
            .flat_map(|s| (s.context_len - s.query_len..s.context_len).map(|p| p as u32))
            .collect();
        let err = |what: &'static str| move |e| Error::Device(format!("mla_decode {what}: {e}"));
        let items_dev = self.stream.clone_htod(&items).map_err(err("schedule"))?;
        let groups_dev = self.stream.clone_htod(&groups).map_err(err("schedule"))?;
        let positions = self.upload_u32(&positions)?;
        let partial_o = self.tensor::<f32>(items.len() * ROWS, r, None)?;
        let partial_lse = self.tensor::<f32>(items.len(), ROWS, None)?;
        let (mut partial_o, mut partial_lse) = (partial_o.data, partial_lse.data);

        let smem = shared_bytes(dims);
        let f = self.function("mla_decode", "mla_decode_bf16")?;
        f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
            .map_err(err("shared memory opt-in"))?;
        let (heads_i, r_i, rope_i, dq_i, dn_i, bs_i) = (
            heads as i32,
            r as i32,
            dims.qk_rope as i32,
            dims.qk_head() as i32,
            dims.qk_nope as i32,
            batch.block_size as i32,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(&q_lat.data)
            .arg(&q.data)
            .arg(cache_layer)
            .arg(&items_dev)
            .arg(tables.0)
            .arg(tables.1)
            .arg(&positions)
            .arg(&mut partial_o)
            .arg(&mut partial_lse)
            .arg(&heads_i)
            .arg(&r_i)
            .arg(&rope_i)
            .arg(&dq_i)
            .arg(&dn_i)
            .arg(&bs_i)
            .arg(&dims.softmax_scale);
        let cfg = LaunchConfig {
            grid_dim: (items.len() as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // SAFETY: the arguments match mla_decode_bf16 in order and type and T is bf16 (checked by
        // mla_decode_supports); the caller's plan checked every block table entry against the
        // cache, the schedule keeps rows and tokens within the batch, and the partial buffers
        // hold ROWS rows per item.
        unsafe { b.launch(cfg) }.map_err(err("launch"))?;

        let f = self.function("mla_decode", "mla_combine_bf16")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&partial_o)
            .arg(&partial_lse)
            .arg(&groups_dev)
            .arg(&mut out.data)
            .arg(&mut lse.data)
            .arg(&r_i);
        let cfg = LaunchConfig {
            grid_dim: (groups.len() as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match mla_combine_bf16 in order and type; each group's items and
        // rows come from the same schedule as the partial buffers, and `out`/`lse` hold every
        // (token, head) row of the step.
        unsafe { b.launch(cfg) }.map_err(err("combine"))?;
        Ok(lse.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SeqChunk;

    fn batch(shapes: &[(usize, usize)]) -> AttentionBatch {
        AttentionBatch {
            block_size: 64,
            seqs: shapes
                .iter()
                .map(|&(context_len, query_len)| SeqChunk {
                    block_table: (0..context_len.div_ceil(64) as u32).collect(),
                    context_len,
                    query_len,
                })
                .collect(),
        }
    }

    /// mla_decode_bf16 and mla_combine_bf16 step by step on host f32 buffers: the schedule, the
    /// row → (token, head) mapping, the tile loop with its masks, base-2 softmax and the LSE
    /// merge. `cache` is one layer, `[slots, r + d_rope]`.
    fn emulate(
        batch: &AttentionBatch,
        dims: &MlaDims,
        q_lat: &[f32],
        q: &[f32],
        cache: &[f32],
        target_ctas: usize,
    ) -> Vec<f32> {
        let (heads, r, d) = (dims.heads, dims.kv_lora_rank, dims.latent_width());
        let (items, groups) = schedule(batch, heads, target_ctas);
        let positions: Vec<usize> = batch
            .seqs
            .iter()
            .flat_map(|s| s.context_len - s.query_len..s.context_len)
            .collect();
        let scale_log2 = dims.softmax_scale * std::f32::consts::LOG2_E;
        let mut partial_o = vec![0.0f32; items.len() * ROWS * r];
        let mut partial_lse = vec![f32::NEG_INFINITY; items.len() * ROWS];
        for (x, item) in items.iter().enumerate() {
            let table = &batch.seqs[item.seq as usize].block_table;
            for i in 0..item.row_count as usize {
                let pair = item.row_begin as usize + i;
                let (t, h) = (pair / heads, pair % heads);
                let query: Vec<f32> = (0..d)
                    .map(|c| {
                        if c < r {
                            q_lat[(t * heads + h) * r + c]
                        } else {
                            q[(t * heads + h) * dims.qk_head() + dims.qk_nope + c - r]
                        }
                    })
                    .collect();
                let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
                let mut o = vec![0.0f32; r];
                for tile in (item.kv_begin as usize..item.kv_end as usize).step_by(KV_TILE) {
                    let keys: Vec<usize> = (tile..tile + KV_TILE)
                        .filter(|&p| p < item.kv_end as usize && p <= positions[t])
                        .collect();
                    let rows: Vec<&[f32]> = keys
                        .iter()
                        .map(|&p| {
                            let slot = table[p / batch.block_size] as usize * batch.block_size
                                + p % batch.block_size;
                            &cache[slot * d..(slot + 1) * d]
                        })
                        .collect();
                    let s: Vec<f32> = rows
                        .iter()
                        .map(|k| k.iter().zip(&query).map(|(a, b)| a * b).sum::<f32>() * scale_log2)
                        .collect();
                    let m_new = s.iter().copied().fold(m, f32::max);
                    let (alpha, p): (f32, Vec<f32>) = if m_new == f32::NEG_INFINITY {
                        (1.0, vec![0.0; s.len()])
                    } else {
                        (
                            (m - m_new).exp2(),
                            s.iter().map(|v| (v - m_new).exp2()).collect(),
                        )
                    };
                    l = l * alpha + p.iter().sum::<f32>();
                    for (c, o) in o.iter_mut().enumerate() {
                        *o = *o * alpha + p.iter().zip(&rows).map(|(p, k)| p * k[c]).sum::<f32>();
                    }
                    m = m_new;
                }
                let at = x * ROWS + i;
                for c in 0..r {
                    partial_o[at * r + c] = if l > 0.0 { o[c] / l } else { 0.0 };
                }
                partial_lse[at] = if l > 0.0 {
                    m + l.log2()
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
        let mut out = vec![f32::NAN; positions.len() * heads * r];
        for g in &groups {
            for i in 0..g.row_count as usize {
                let splits: Vec<usize> = (g.item_first..g.item_first + g.items)
                    .map(|x| x as usize * ROWS + i)
                    .collect();
                let m = splits
                    .iter()
                    .map(|&a| partial_lse[a])
                    .fold(f32::NEG_INFINITY, f32::max);
                let w: Vec<f32> = splits
                    .iter()
                    .map(|&a| (partial_lse[a] - m).exp2())
                    .collect();
                let sum: f32 = w.iter().sum();
                let row = g.row_begin as usize + i;
                for c in 0..r {
                    out[row * r + c] = splits
                        .iter()
                        .zip(&w)
                        .map(|(&a, w)| w * partial_o[a * r + c])
                        .sum::<f32>()
                        / sum;
                }
            }
        }
        out
    }

    #[test]
    fn the_split_kv_algorithm_matches_the_cpu_backend() {
        use crate::backend::cpu::CpuBackend;
        use crate::backend::Backend;
        use crate::engine::sampler::SplitMix64;
        use crate::weights::HostTensor;
        let mut rng = SplitMix64(3);
        let mut random =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect() };
        let dims = MlaDims {
            heads: 5,
            qk_nope: 8,
            qk_rope: 16,
            v_head: 8,
            kv_lora_rank: 32,
            softmax_scale: 0.3,
        };
        let b = AttentionBatch {
            block_size: 16,
            seqs: [(1usize, 1usize), (150, 1), (40, 4), (300, 2)]
                .iter()
                .scan(0u32, |next, &(context_len, query_len)| {
                    let blocks = context_len.div_ceil(16) as u32;
                    // Blocks in reverse order: a shuffled table.
                    let table = (*next..*next + blocks).rev().collect();
                    *next += blocks;
                    Some(SeqChunk {
                        block_table: table,
                        context_len,
                        query_len,
                    })
                })
                .collect(),
        };
        let blocks: usize = b.seqs.iter().map(|s| s.block_table.len()).sum();
        let d = dims.latent_width();
        let mut cache = CpuBackend.alloc_kv_cache(1, blocks, 16, d).unwrap();
        for seq in &b.seqs {
            let rows = HostTensor::new(vec![seq.context_len, d], random(seq.context_len * d));
            let slots: Vec<u32> = (0..seq.context_len)
                .map(|p| seq.block_table[p / 16] * 16 + (p % 16) as u32)
                .collect();
            CpuBackend
                .write_kv_cache(&mut cache, 0, &rows, 0, &slots)
                .unwrap();
        }
        let t = b.num_query_tokens();
        let q_lat = HostTensor::new(vec![t, 5 * 32], random(t * 5 * 32));
        let q = HostTensor::new(vec![t, 5 * 24], random(t * 5 * 24));
        let want = CpuBackend
            .mla_attention_absorbed(&q_lat, &q, &cache, 0, &b, &dims)
            .unwrap();
        for target in [1, 10, 264] {
            let got = emulate(&b, &dims, &q_lat.data, &q.data, &cache.layers[0], target);
            for (i, (g, w)) in got.iter().zip(&want.data).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5,
                    "target {target}, element {i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn every_row_sees_every_visible_token_exactly_once() {
        let b = batch(&[(1, 1), (5000, 1), (130, 4), (64, 64), (20_000, 2)]);
        for heads in [1, 16, 20, 128] {
            for target in [1, 7, 264, 10_000] {
                let (items, groups) = schedule(&b, heads, target);
                let total_rows: usize = b.seqs.iter().map(|s| s.query_len * heads).sum();
                let mut covered = vec![0usize; total_rows];
                for g in &groups {
                    let mine = &items[g.item_first as usize..(g.item_first + g.items) as usize];
                    // Splits tile [0, visible) in order, each a multiple of the tile but the last.
                    let mut next = 0;
                    for it in mine {
                        assert_eq!((it.row_begin, it.row_count), (g.row_begin, g.row_count));
                        assert_eq!(it.kv_begin, next);
                        assert!(it.kv_end > it.kv_begin);
                        next = it.kv_end;
                    }
                    let seq = &b.seqs[mine[0].seq as usize];
                    let first_token = (g.row_begin as usize) / heads;
                    let last_token = (g.row_begin + g.row_count - 1) as usize / heads;
                    let seq_start: usize = b.seqs[..mine[0].seq as usize]
                        .iter()
                        .map(|s| s.query_len)
                        .sum();
                    assert!(first_token >= seq_start && last_token < seq_start + seq.query_len);
                    let last_pos = seq.context_len - seq.query_len + (last_token - seq_start);
                    assert_eq!(
                        next as usize,
                        last_pos + 1,
                        "the last row sees its whole prefix"
                    );
                    assert!(g.row_count as usize <= ROWS);
                    for r in g.row_begin..g.row_begin + g.row_count {
                        covered[r as usize] += 1;
                    }
                }
                assert!(
                    covered.iter().all(|&c| c == 1),
                    "heads {heads}, target {target}"
                );
                if target == 264 {
                    // Balanced: no split is longer than the common chunk.
                    let longest = items.iter().map(|i| i.kv_end - i.kv_begin).max().unwrap();
                    let work: usize = items.iter().map(|i| (i.kv_end - i.kv_begin) as usize).sum();
                    assert!(longest as usize <= (work / 264).max(MIN_SPLIT) + KV_TILE);
                }
            }
        }
    }
}
