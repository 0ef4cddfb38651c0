//! Attention over the paged cache on the host: MLA in its two forms, and MHA/GQA. Each
//! sequence's context is read once per call as f32 rows ([`CpuKvCache::context`]).

use super::kv_cache::CpuKvCache;
use super::matmul::{axpy, dot, matmul_nt};
use crate::backend::{AttentionBatch, MhaDims, MlaDims};
use crate::error::Result;
use rayon::prelude::*;

/// One query row's job: which sequence, its position, and its output row.
fn query_rows(batch: &AttentionBatch) -> Vec<(usize, usize)> {
    batch
        .seqs
        .iter()
        .enumerate()
        .flat_map(|(s, seq)| {
            (seq.context_len - seq.query_len..seq.context_len).map(move |p| (s, p))
        })
        .collect()
}

/// Each sequence's context as f32 rows.
fn contexts(cache: &CpuKvCache, layer: usize, batch: &AttentionBatch) -> Vec<Vec<f32>> {
    batch
        .seqs
        .iter()
        .map(|seq| cache.context(layer, &seq.block_table, seq.context_len))
        .collect()
}

/// Softmax-weighted sum over `len` keys: `scores` are overwritten with probabilities.
fn softmax_in_place(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    scores.iter_mut().for_each(|s| *s /= sum);
}

pub fn materialised(
    q: &[f32],
    cache: &CpuKvCache,
    layer: usize,
    batch: &AttentionBatch,
    kv_b: &[f32],
    dims: &MlaDims,
) -> Result<Vec<f32>> {
    cache.check_batch(batch)?;
    let (n, r, dq, dn, dv) = (
        dims.heads,
        dims.kv_lora_rank,
        dims.qk_head(),
        dims.qk_nope,
        dims.v_head,
    );
    let kv_width = n * (dn + dv);
    // Expand each sequence's whole context once: K_nope and V per head from the latent.
    let expanded: Vec<(Vec<f32>, Vec<f32>)> = batch
        .seqs
        .iter()
        .map(|seq| {
            let rows = cache.context(layer, &seq.block_table, seq.context_len);
            let mut latent = Vec::with_capacity(seq.context_len * r);
            let mut k_pe = Vec::with_capacity(seq.context_len * dims.qk_rope);
            for row in rows.chunks_exact(cache.width) {
                latent.extend_from_slice(&row[..r]);
                k_pe.extend_from_slice(&row[r..]);
            }
            (matmul_nt(&latent, kv_b, seq.context_len, r, kv_width), k_pe)
        })
        .collect();
    let rows = query_rows(batch);
    let mut out = vec![0.0f32; rows.len() * n * dv];
    out.par_chunks_mut(dv).enumerate().for_each(|(job, o)| {
        let (t, h) = (job / n, job % n);
        let (s, pos) = rows[t];
        let (kv, k_pe) = &expanded[s];
        let qh = &q[(t * n + h) * dq..(t * n + h + 1) * dq];
        let mut scores: Vec<f32> = (0..=pos)
            .map(|j| {
                let k_nope = &kv[j * kv_width + h * (dn + dv)..][..dn];
                let kp = &k_pe[j * dims.qk_rope..(j + 1) * dims.qk_rope];
                dims.softmax_scale * (dot(&qh[..dn], k_nope) + dot(&qh[dn..], kp))
            })
            .collect();
        softmax_in_place(&mut scores);
        for (j, p) in scores.iter().enumerate() {
            axpy(o, *p, &kv[j * kv_width + h * (dn + dv) + dn..][..dv]);
        }
    });
    Ok(out)
}

pub fn absorbed(
    q_lat: &[f32],
    q: &[f32],
    cache: &CpuKvCache,
    layer: usize,
    batch: &AttentionBatch,
    dims: &MlaDims,
) -> Result<Vec<f32>> {
    cache.check_batch(batch)?;
    let (n, r, dq, dn) = (dims.heads, dims.kv_lora_rank, dims.qk_head(), dims.qk_nope);
    let contexts = contexts(cache, layer, batch);
    let width = cache.width;
    let rows = query_rows(batch);
    let mut out = vec![0.0f32; rows.len() * n * r];
    out.par_chunks_mut(r).enumerate().for_each(|(job, o)| {
        let (t, h) = (job / n, job % n);
        let (s, pos) = rows[t];
        let row = |j: usize| &contexts[s][j * width..(j + 1) * width];
        let ql = &q_lat[(t * n + h) * r..(t * n + h + 1) * r];
        let q_pe = &q[(t * n + h) * dq + dn..(t * n + h + 1) * dq];
        // One shared 576-wide key per token; its first r_kv values are also the value.
        let mut scores: Vec<f32> = (0..=pos)
            .map(|j| dims.softmax_scale * (dot(ql, &row(j)[..r]) + dot(q_pe, &row(j)[r..])))
            .collect();
        softmax_in_place(&mut scores);
        for (j, p) in scores.iter().enumerate() {
            axpy(o, *p, &row(j)[..r]);
        }
    });
    Ok(out)
}

/// Causal attention over `[K | V]` cache rows; query head `h` reads KV head
/// `h / (heads / kv_heads)`. `q` rows are `q_stride` wide with the query heads first.
pub fn mha(
    q: &[f32],
    q_stride: usize,
    cache: &CpuKvCache,
    layer: usize,
    batch: &AttentionBatch,
    dims: &MhaDims,
) -> Result<Vec<f32>> {
    cache.check_batch(batch)?;
    let (n, d) = (dims.heads, dims.head_dim);
    let contexts = contexts(cache, layer, batch);
    let width = cache.width;
    let group = n / dims.kv_heads;
    let v_offset = dims.kv_heads * d;
    let rows = query_rows(batch);
    let mut out = vec![0.0f32; rows.len() * n * d];
    out.par_chunks_mut(d).enumerate().for_each(|(job, o)| {
        let (t, h) = (job / n, job % n);
        let (s, pos) = rows[t];
        let row = |j: usize| &contexts[s][j * width..(j + 1) * width];
        let qh = &q[t * q_stride + h * d..t * q_stride + (h + 1) * d];
        let k = (h / group) * d;
        let first = dims
            .sliding_window
            .map_or(0, |w| (pos + 1).saturating_sub(w));
        let mut scores: Vec<f32> = (first..=pos)
            .map(|j| dims.softmax_scale * dot(qh, &row(j)[k..k + d]))
            .collect();
        softmax_in_place(&mut scores);
        for (j, p) in (first..=pos).zip(&scores) {
            axpy(o, *p, &row(j)[v_offset + k..v_offset + k + d]);
        }
    });
    Ok(out)
}
