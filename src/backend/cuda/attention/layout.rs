//! What the paged attention kernel reads, as plain host data: the step plan (block tables, each
//! query row's sequence and position) and, for each attention form, where its query, key and
//! value segments sit in which buffer. Kept free of device types so that [`emulate`] — the
//! kernel's indexing in Rust — can check every form against the CPU backend on any machine.

use crate::backend::cuda::tuning;
use crate::backend::{AttentionBatch, MhaDims, MlaDims};
use crate::error::Result;
use crate::kv::cache_dtype::{Fp8Layout, Fp8RowParts};

/// The buffer a segment reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The query tensor `[T, heads·…]`.
    Q,
    /// MLA's absorbed query `q_nope·W_UK`, `[T, heads·r]`.
    QLat,
    /// One layer of the paged cache, `[slots, width]`.
    Cache,
    /// Materialised MLA: the gathered context latents, `[Σ context, r + d_rope]`.
    Context,
    /// Materialised MLA: K_nope and V of every head, `[Σ context, heads·(nope + v)]`.
    Expanded,
}

/// Row `i` of a segment starts at `i·width + offset + head·head_stride` of its buffer, where
/// `head` is the query head (queries) or the KV head (keys, values), and holds `len` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub source: Source,
    pub width: usize,
    pub offset: usize,
    pub head_stride: usize,
    pub len: usize,
}

/// A score is `q1·k1 + q2·k2`; query head `h` reads KV head `h / group`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionLayout {
    pub q1: Segment,
    pub q2: Segment,
    pub k1: Segment,
    pub k2: Segment,
    pub v: Segment,
    pub heads: usize,
    pub group: usize,
    /// Attend to at most this many of the most recent tokens (0: all).
    pub window: usize,
    pub scale: f32,
    /// The cache's FP8 rows, where its rows are FP8: the cache segments then count values of
    /// those rows (their widths unused).
    pub cache_fp8: Option<Fp8RowParts>,
}

impl AttentionLayout {
    /// The layout over a cache of FP8 rows `fp8` (None: rows of values).
    pub fn with_cache_rows(self, fp8: Option<Fp8Layout>) -> Self {
        AttentionLayout {
            cache_fp8: fp8.map(|l| l.parts()),
            ..self
        }
    }
}

const fn seg(
    source: Source,
    width: usize,
    offset: usize,
    head_stride: usize,
    len: usize,
) -> Segment {
    Segment {
        source,
        width,
        offset,
        head_stride,
        len,
    }
}

/// MHA/GQA over `[K of every KV head | V of every KV head]` cache rows; `q_cols` wide queries
/// (possibly a fused qkv tensor) with the query heads first.
pub fn mha_layout(dims: &MhaDims, q_cols: usize, cache_width: usize) -> AttentionLayout {
    let (d, kvh) = (dims.head_dim, dims.kv_heads);
    AttentionLayout {
        q1: seg(Source::Q, q_cols, 0, d, d),
        q2: seg(Source::Q, q_cols, 0, 0, 0),
        k1: seg(Source::Cache, cache_width, 0, d, d),
        k2: seg(Source::Cache, cache_width, 0, 0, 0),
        v: seg(Source::Cache, cache_width, kvh * d, d, d),
        heads: dims.heads,
        group: dims.heads / kvh.max(1),
        window: dims.sliding_window.unwrap_or(0),
        scale: dims.softmax_scale,
        cache_fp8: None,
    }
}

/// Absorbed MLA: one shared key per token (every head reads KV head 0), the latent — whose
/// first r values are also the value — then the roped k_pe.
pub fn absorbed_layout(dims: &MlaDims) -> AttentionLayout {
    let (n, r, dr, dq) = (dims.heads, dims.kv_lora_rank, dims.qk_rope, dims.qk_head());
    let w = dims.latent_width();
    AttentionLayout {
        q1: seg(Source::QLat, n * r, 0, r, r),
        q2: seg(Source::Q, n * dq, dims.qk_nope, dq, dr),
        k1: seg(Source::Cache, w, 0, 0, r),
        k2: seg(Source::Cache, w, r, 0, dr),
        v: seg(Source::Cache, w, 0, 0, r),
        heads: n,
        group: n,
        window: 0,
        scale: dims.softmax_scale,
        cache_fp8: None,
    }
}

/// Materialised MLA: K_nope and V per head from the expanded context, k_pe from the gathered
/// latents.
pub fn materialised_layout(dims: &MlaDims) -> AttentionLayout {
    let (n, r, dn, dv, dr, dq) = (
        dims.heads,
        dims.kv_lora_rank,
        dims.qk_nope,
        dims.v_head,
        dims.qk_rope,
        dims.qk_head(),
    );
    let kv_width = n * (dn + dv);
    AttentionLayout {
        q1: seg(Source::Q, n * dq, 0, dq, dn),
        q2: seg(Source::Q, n * dq, dn, dq, dr),
        k1: seg(Source::Expanded, kv_width, 0, dn + dv, dn),
        k2: seg(Source::Context, dims.latent_width(), r, 0, dr),
        v: seg(Source::Expanded, kv_width, dn, dn + dv, dv),
        heads: n,
        group: 1,
        window: 0,
        scale: dims.softmax_scale,
        cache_fp8: None,
    }
}

/// A step as the kernel reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    /// Every sequence's table, back to back (plus one 0 so the buffer is never empty).
    pub block_tables: Vec<u32>,
    pub table_start: Vec<u32>,
    /// Per query row: its sequence and its position.
    pub row_seq: Vec<u32>,
    pub row_pos: Vec<u32>,
    pub block_size: usize,
    /// One past the highest buffer row any query row reads.
    pub rows_read: usize,
}

impl HostPlan {
    pub fn rows(&self) -> usize {
        self.row_seq.len()
    }

    /// Tokens the longest row sees (its position + 1).
    pub fn longest(&self) -> usize {
        self.row_pos
            .iter()
            .map(|&p| p as usize + 1)
            .max()
            .unwrap_or(1)
    }

    fn new(
        batch: &AttentionBatch,
        tables: &[Vec<u32>],
        block_size: usize,
        rows_read: usize,
    ) -> Self {
        let mut table_start = Vec::with_capacity(tables.len() + 1);
        let mut block_tables = Vec::new();
        for t in tables {
            table_start.push(block_tables.len() as u32);
            block_tables.extend_from_slice(t);
        }
        block_tables.push(0);
        table_start.push(0);
        let (mut row_seq, mut row_pos) = (Vec::new(), Vec::new());
        for (s, seq) in batch.seqs.iter().enumerate() {
            for p in seq.context_len - seq.query_len..seq.context_len {
                row_seq.push(s as u32);
                row_pos.push(p as u32);
            }
        }
        HostPlan {
            block_tables,
            table_start,
            row_seq,
            row_pos,
            block_size,
            rows_read,
        }
    }

    /// Keys read through the paged cache's block tables.
    pub fn paged(batch: &AttentionBatch, num_blocks: usize, block_size: usize) -> Result<Self> {
        batch.check_blocks(num_blocks, block_size)?;
        let tables: Vec<Vec<u32>> = batch
            .seqs
            .iter()
            .map(|s| s.block_table[..s.context_len.div_ceil(block_size)].to_vec())
            .collect();
        let rows_read = tables.iter().flatten().max().map_or(0, |&b| b as usize + 1) * block_size;
        Ok(Self::new(batch, &tables, block_size, rows_read))
    }

    /// Keys gathered sequence after sequence into one buffer (row `p` of sequence `s` at
    /// `start_s + p`), with the cache slot each gathered row comes from.
    pub fn contiguous(
        batch: &AttentionBatch,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<(Self, Vec<u32>)> {
        batch.check_blocks(num_blocks, block_size)?;
        let mut tables = Vec::with_capacity(batch.seqs.len());
        let mut slots = Vec::new();
        for seq in &batch.seqs {
            let start = slots.len() as u32;
            tables.push((start..start + seq.context_len as u32).collect());
            slots.extend((0..seq.context_len).map(|p| {
                seq.block_table[p / block_size] * block_size as u32 + (p % block_size) as u32
            }));
        }
        let rows = slots.len();
        Ok((Self::new(batch, &tables, 1, rows), slots))
    }
}

/// The exact kernel's tokens per KV split and its grid's splits, so that about `target_warps`
/// warps (one per row, head and split) run: a few long sequences are cut into many splits, a
/// big batch into none. The grid depends on the rows and heads alone (bounded by the
/// `capacity` tokens a context can reach), not on the contexts, so that a decode step's launch,
/// and its CUDA graph, serve the next steps as contexts grow; splits past a row's context see
/// no token.
pub fn exact_splits(
    plan: &HostPlan,
    heads: usize,
    target_warps: usize,
    capacity: usize,
) -> (usize, usize) {
    let longest = plan.longest();
    let jobs = (plan.rows() * heads).max(1);
    let grid = target_warps.div_ceil(jobs).clamp(
        1,
        capacity
            .max(longest)
            .div_ceil(tuning::EXACT_MIN_SPLIT_TOKENS),
    );
    let splits = grid.min(longest.div_ceil(tuning::EXACT_MIN_SPLIT_TOKENS));
    let split_len = longest
        .div_ceil(splits)
        .next_multiple_of(tuning::EXACT_SPLIT_GRANULE);
    (split_len, grid)
}

/// The paged attention kernel and its split combine, index for index, on host buffers: output
/// `[rows, heads·v.len]`. For tests.
pub fn emulate<'a>(
    plan: &HostPlan,
    layout: &AttentionLayout,
    split_len: usize,
    buffer: impl Fn(Source) -> &'a [f32],
) -> Vec<f32> {
    let l = layout;
    let dv = l.v.len;
    let longest = plan.longest();
    let splits = longest.div_ceil(split_len);
    let mut out = vec![f32::NAN; plan.rows() * l.heads * dv];
    let at = |s: &Segment, row: usize, head: usize, i: usize| {
        buffer(s.source)[row * s.width + s.offset + head * s.head_stride + i]
    };
    for row in 0..plan.rows() {
        let table = &plan.block_tables[plan.table_start[plan.row_seq[row] as usize] as usize..];
        let pos = plan.row_pos[row] as usize;
        let window_first = if l.window > 0 {
            (pos + 1).saturating_sub(l.window)
        } else {
            0
        };
        for head in 0..l.heads {
            let kv_head = head / l.group;
            // (normalised output, LSE) of every split, as the kernel writes them.
            let partials: Vec<(Vec<f32>, f32)> = (0..splits)
                .map(|split| {
                    let first = window_first.max(split * split_len);
                    let last = pos.min((split + 1) * split_len - 1);
                    let (mut max, mut denom) = (f32::NEG_INFINITY, 0.0f32);
                    let mut acc = vec![0.0f32; dv];
                    for p in first..=last {
                        let slot = table[p / plan.block_size] as usize * plan.block_size
                            + p % plan.block_size;
                        let mut score = 0.0;
                        for i in 0..l.q1.len {
                            score +=
                                at(&l.q1, row, head, i) * l.scale * at(&l.k1, slot, kv_head, i);
                        }
                        for i in 0..l.q2.len {
                            score +=
                                at(&l.q2, row, head, i) * l.scale * at(&l.k2, slot, kv_head, i);
                        }
                        let new_max = max.max(score);
                        let rescale = (max - new_max).exp();
                        let weight = (score - new_max).exp();
                        denom = denom * rescale + weight;
                        for (c, a) in acc.iter_mut().enumerate() {
                            *a = *a * rescale + weight * at(&l.v, slot, kv_head, c);
                        }
                        max = new_max;
                    }
                    if denom > 0.0 {
                        (acc.iter().map(|a| a / denom).collect(), max + denom.ln())
                    } else {
                        (vec![0.0; dv], f32::NEG_INFINITY)
                    }
                })
                .collect();
            let m = partials
                .iter()
                .map(|p| p.1)
                .fold(f32::NEG_INFINITY, f32::max);
            let weights: Vec<f32> = partials
                .iter()
                .map(|p| {
                    if p.1 == f32::NEG_INFINITY {
                        0.0
                    } else {
                        (p.1 - m).exp()
                    }
                })
                .collect();
            let sum: f32 = weights.iter().sum();
            let o = &mut out[(row * l.heads + head) * dv..][..dv];
            for (c, o) in o.iter_mut().enumerate() {
                *o = partials
                    .iter()
                    .zip(&weights)
                    .map(|(p, w)| w * p.0[c])
                    .sum::<f32>()
                    / sum;
            }
        }
    }
    out
}

/// Shared by the tests of the attention kernels' host halves.
#[cfg(test)]
pub(super) mod test_support {
    use crate::backend::cpu::{CpuBackend, CpuKvCache};
    use crate::backend::{AttentionBatch, Backend, MhaDims, MlaDims, SeqChunk};
    use crate::util::rng::SplitMix64;
    use crate::weights::HostTensor;

    pub fn random(rng: &mut SplitMix64, rows: usize, cols: usize) -> HostTensor {
        let data = (0..rows * cols)
            .map(|_| rng.next_f64() as f32 - 0.5)
            .collect();
        HostTensor::new(vec![rows, cols], data)
    }

    /// Sequences `(context, query)` on blocks handed out in a scrambled order (a permutation of
    /// the pool, three blocks spare and left NaN), random rows cached for every position.
    pub fn paged(
        rng: &mut SplitMix64,
        shapes: &[(usize, usize)],
        block: usize,
        width: usize,
    ) -> (AttentionBatch, CpuKvCache) {
        let num_blocks = shapes.iter().map(|(c, _)| c.div_ceil(block)).sum::<usize>() + 3;
        let gcd = |mut a: usize, mut b: usize| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        let stride = (7..).find(|&k| gcd(k, num_blocks) == 1).expect("a stride");
        let mut order = (0..num_blocks).map(|b| ((b * stride + 3) % num_blocks) as u32);
        let batch = AttentionBatch {
            block_size: block,
            seqs: shapes
                .iter()
                .map(|&(context_len, query_len)| SeqChunk {
                    block_table: order.by_ref().take(context_len.div_ceil(block)).collect(),
                    context_len,
                    query_len,
                })
                .collect(),
        };
        let mut cache = CpuBackend::EXACT
            .alloc_kv_cache(1, num_blocks, block, width)
            .unwrap();
        for seq in &batch.seqs {
            let rows = random(rng, seq.context_len, width);
            let slots: Vec<u32> = (0..seq.context_len)
                .map(|p| seq.block_table[p / block] * block as u32 + (p % block) as u32)
                .collect();
            CpuBackend::EXACT
                .write_kv_cache(&mut cache, 0, &rows, 0, &slots)
                .unwrap();
        }
        (batch, cache)
    }

    /// One MLA layer's attention inputs over a paged cache of `shapes`: queries, absorbed
    /// queries and the `kv_b` expansion, all random.
    pub struct MlaInputs {
        pub batch: AttentionBatch,
        pub cache: CpuKvCache,
        pub q: HostTensor,
        pub q_lat: HostTensor,
        pub kv_b: HostTensor,
    }

    pub fn mla_inputs(
        rng: &mut SplitMix64,
        shapes: &[(usize, usize)],
        block: usize,
        dims: &MlaDims,
    ) -> MlaInputs {
        let (batch, cache) = paged(rng, shapes, block, dims.latent_width());
        let t = batch.num_query_tokens();
        let q = random(rng, t, dims.heads * dims.qk_head());
        let q_lat = random(rng, t, dims.heads * dims.kv_lora_rank);
        let kv_b = random(
            rng,
            dims.heads * (dims.qk_nope + dims.v_head),
            dims.kv_lora_rank,
        );
        MlaInputs {
            batch,
            cache,
            q,
            q_lat,
            kv_b,
        }
    }

    /// An MHA case: `heads` query heads over `kv_heads` of width `d` (attending to the last
    /// `window` tokens, if any), a paged cache of `shapes`, fused qkv rows (the query heads, then
    /// K and V columns the attention ignores), and what the CPU backend computes from them.
    pub struct MhaCase {
        pub dims: MhaDims,
        pub batch: AttentionBatch,
        pub cache: CpuKvCache,
        pub q: HostTensor,
        pub want: HostTensor,
    }

    pub fn mha_case(
        rng: &mut SplitMix64,
        (heads, kv_heads, d, window): (usize, usize, usize, Option<usize>),
        shapes: &[(usize, usize)],
        block: usize,
    ) -> MhaCase {
        let dims = MhaDims {
            heads,
            kv_heads,
            head_dim: d,
            softmax_scale: 0.3,
            sliding_window: window,
        };
        let width = 2 * kv_heads * d;
        let (batch, cache) = paged(rng, shapes, block, width);
        let q = random(rng, batch.num_query_tokens(), heads * d + width);
        let want = CpuBackend::EXACT
            .mha_attention(&q, &cache, 0, &batch, &dims)
            .unwrap();
        MhaCase {
            dims,
            batch,
            cache,
            q,
            want,
        }
    }

    /// What the GPU's materialised form feeds its kernel: the context rows gathered from their
    /// cache `slots`, and their latents expanded by `kv_b` to K_nope and V.
    pub fn materialise(
        cache: &CpuKvCache,
        slots: &[u32],
        dims: &MlaDims,
        kv_b: &HostTensor,
    ) -> (Vec<f32>, HostTensor) {
        let w = dims.latent_width();
        let layer0 = cache.all_rows(0);
        let context: Vec<f32> = slots
            .iter()
            .flat_map(|&s| layer0[s as usize * w..(s as usize + 1) * w].to_vec())
            .collect();
        let latent: Vec<f32> = context
            .chunks_exact(w)
            .flat_map(|row| row[..dims.kv_lora_rank].to_vec())
            .collect();
        let latent = HostTensor::new(vec![slots.len(), dims.kv_lora_rank], latent);
        (
            context,
            CpuBackend::EXACT
                .matmul(&latent, &kv_b.clone().into())
                .unwrap(),
        )
    }

    pub fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tolerance * w.abs().max(1.0),
                "{what}, element {i}: {g} vs {w}"
            );
        }
    }
}

#[cfg(test)]
mod tests;
