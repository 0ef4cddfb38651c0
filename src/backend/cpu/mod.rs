//! The reference backend: f32 on the host, multi-threaded with rayon.

mod attention;
mod kv_cache;
pub mod matmul;
mod weight;

pub use kv_cache::CpuKvCache;
pub use weight::CpuWeight;

use super::{AttentionBatch, Backend, MhaDims, MlaDims, MlpWeights, MoeWeights};
use crate::config::quantization::Fp8Activations;
use crate::config::MoeConfig;
use crate::error::{Error, Result};
use crate::kv::cache_dtype::CacheRows;
use crate::ops::rope::{rotate, RopeTable};
use crate::ops::routing::route;
use crate::weights::fp8::Fp8Matrix;
use crate::weights::HostTensor;
use matmul::axpy;
use rayon::prelude::*;

/// The reference backend. FP8 weights multiply by their exact values ([`Self::EXACT`], the
/// default: the transformers oracle), or by activations quantized as the GPU's FP8 GEMM
/// quantizes them ([`Self::DYNAMIC_FP8`]: the oracle of the GPU's FP8 paths).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CpuBackend {
    quantizes_fp8_activations: bool,
}

impl CpuBackend {
    pub const EXACT: CpuBackend = CpuBackend {
        quantizes_fp8_activations: false,
    };
    pub const DYNAMIC_FP8: CpuBackend = CpuBackend {
        quantizes_fp8_activations: true,
    };

    /// The backend `--fp8-activations` asks for (`auto` is exact here: the CPU has no FP8 GEMM).
    pub fn new(fp8_activations: Fp8Activations) -> CpuBackend {
        match fp8_activations {
            Fp8Activations::Dynamic => CpuBackend::DYNAMIC_FP8,
            Fp8Activations::Auto | Fp8Activations::Exact => CpuBackend::EXACT,
        }
    }
}

/// `heads` row-major `[out, input]` matrices back to back.
pub struct CpuHeadWeight {
    pub heads: usize,
    pub out: usize,
    pub input: usize,
    pub data: Vec<f32>,
}

fn op_err(op: &'static str, message: String) -> Error {
    Error::Op { op, message }
}

/// `(rows, cols)` of a 2-D tensor.
fn dims2(op: &'static str, t: &HostTensor) -> Result<(usize, usize)> {
    match t.shape[..] {
        [r, c] => Ok((r, c)),
        _ => Err(op_err(
            op,
            format!("expected a 2-D tensor, found shape {:?}", t.shape),
        )),
    }
}

fn rms_norm_row(x: &mut [f32], w: &[f32], eps: f32) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for (v, w) in x.iter_mut().zip(w) {
        *v = *v * inv * w;
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl Backend for CpuBackend {
    type Tensor = HostTensor;
    type Weight = CpuWeight;
    type HeadWeight = CpuHeadWeight;
    type KvCache = CpuKvCache;
    type RoutedExperts = Vec<MlpWeights<Self>>;

    fn name(&self) -> String {
        let fp8 = match self.quantizes_fp8_activations {
            true => ", FP8 activations",
            false => "",
        };
        format!("cpu ({} threads{fp8})", rayon::current_num_threads())
    }

    fn free_memory(&self) -> Option<u64> {
        crate::util::host_memory::available_host_bytes()
    }

    fn cache_value_bytes(&self) -> u64 {
        4
    }

    fn sync_fn(&self) -> Option<crate::profile::SyncFn> {
        None
    }

    fn upload_weight(&self, host: HostTensor) -> Result<CpuWeight> {
        Ok(host.into())
    }

    fn upload_fp8_weight(&self, w: Fp8Matrix) -> Result<CpuWeight> {
        Ok(CpuWeight {
            quantizes_input: self.quantizes_fp8_activations && w.fits_fp8_gemm(),
            values: w.dequantize(),
        })
    }

    fn upload_head_weight(
        &self,
        heads: usize,
        out: usize,
        input: usize,
        data: Vec<f32>,
    ) -> Result<CpuHeadWeight> {
        if data.len() != heads * out * input {
            return Err(op_err(
                "upload_head_weight",
                format!("{} values for {heads}×{out}×{input}", data.len()),
            ));
        }
        Ok(CpuHeadWeight {
            heads,
            out,
            input,
            data,
        })
    }

    fn routed_experts(
        &self,
        experts: Vec<MlpWeights<Self>>,
        _score_bias: Option<&[f32]>,
    ) -> Result<Vec<MlpWeights<Self>>> {
        Ok(experts)
    }

    fn to_host(&self, x: &HostTensor) -> Result<HostTensor> {
        Ok(x.clone())
    }

    fn argmax_rows(&self, x: &HostTensor) -> Result<Vec<u32>> {
        dims2("argmax_rows", x)?;
        Ok(crate::backend::host_argmax_rows(x))
    }

    fn embedding(&self, table: &CpuWeight, ids: &[u32]) -> Result<HostTensor> {
        let (vocab, hidden) = dims2("embedding", table)?;
        let mut data = Vec::with_capacity(ids.len() * hidden);
        for &id in ids {
            let id = id as usize;
            if id >= vocab {
                return Err(Error::InvalidInput(format!(
                    "token id {id} is outside the vocabulary (size {vocab})"
                )));
            }
            data.extend_from_slice(&table.data[id * hidden..(id + 1) * hidden]);
        }
        Ok(HostTensor::new(vec![ids.len(), hidden], data))
    }

    fn matmul(&self, x: &HostTensor, w: &CpuWeight) -> Result<HostTensor> {
        let (m, k) = dims2("matmul", x)?;
        let (n, kw) = dims2("matmul", w)?;
        if k != kw {
            return Err(op_err(
                "matmul",
                format!("x is [{m}, {k}] but w is [{n}, {kw}]"),
            ));
        }
        Ok(HostTensor::new(vec![m, n], w.product(&x.data, m, k, n)))
    }

    fn head_matmul(
        &self,
        x: &HostTensor,
        head_stride: usize,
        offset: usize,
        w: &CpuHeadWeight,
    ) -> Result<HostTensor> {
        let (m, cols) = dims2("head_matmul", x)?;
        if cols != w.heads * head_stride || offset + w.input > head_stride {
            return Err(op_err(
                "head_matmul",
                format!(
                    "x has {cols} columns; {} heads of stride {head_stride} reading [{offset}, {})",
                    w.heads,
                    offset + w.input
                ),
            ));
        }
        let (n_out, k) = (w.out, w.input);
        let mut y = vec![0.0f32; m * w.heads * n_out];
        y.par_chunks_mut(n_out).enumerate().for_each(|(job, out)| {
            let (t, h) = (job / w.heads, job % w.heads);
            let xh = &x.data[t * cols + h * head_stride + offset..][..k];
            let wh = &w.data[h * n_out * k..(h + 1) * n_out * k];
            for (o, wrow) in out.iter_mut().zip(wh.chunks_exact(k)) {
                *o = matmul::dot(xh, wrow);
            }
        });
        Ok(HostTensor::new(vec![m, w.heads * n_out], y))
    }

    fn rms_norm(&self, x: &HostTensor, weight: &CpuWeight, eps: f32) -> Result<HostTensor> {
        let (_, cols) = dims2("rms_norm", x)?;
        if weight.data.len() != cols {
            return Err(op_err(
                "rms_norm",
                format!("{cols} columns but a weight of {}", weight.data.len()),
            ));
        }
        let mut y = x.clone();
        y.data
            .par_chunks_mut(cols)
            .for_each(|row| rms_norm_row(row, &weight.data, eps));
        Ok(y)
    }

    fn add_bias(&self, x: &mut HostTensor, bias: &CpuWeight) -> Result<()> {
        let (_, cols) = dims2("add_bias", x)?;
        if bias.data.len() != cols {
            return Err(op_err(
                "add_bias",
                format!("{cols} columns but {} biases", bias.data.len()),
            ));
        }
        for row in x.data.chunks_exact_mut(cols) {
            row.iter_mut().zip(&bias.data).for_each(|(v, b)| *v += b);
        }
        Ok(())
    }

    fn add_assign(&self, x: &mut HostTensor, y: &HostTensor) -> Result<()> {
        if x.shape != y.shape {
            return Err(op_err(
                "add_assign",
                format!("{:?} += {:?}", x.shape, y.shape),
            ));
        }
        x.data.iter_mut().zip(&y.data).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn select_rows(&self, x: &HostTensor, rows: &[usize]) -> Result<HostTensor> {
        let (m, cols) = dims2("select_rows", x)?;
        let mut data = Vec::with_capacity(rows.len() * cols);
        for &r in rows {
            if r >= m {
                return Err(op_err("select_rows", format!("row {r} of {m}")));
            }
            data.extend_from_slice(&x.data[r * cols..(r + 1) * cols]);
        }
        Ok(HostTensor::new(vec![rows.len(), cols], data))
    }

    fn rope(
        &self,
        x: &mut HostTensor,
        table: &RopeTable,
        heads: usize,
        head_stride: usize,
        offset: usize,
    ) -> Result<()> {
        let (m, cols) = dims2("rope", x)?;
        let d = 2 * table.half;
        if table.rows() != m || heads * head_stride > cols || offset + d > head_stride {
            return Err(op_err(
                "rope",
                format!(
                    "[{m}, {cols}] with {} table rows, {heads} heads of stride {head_stride}, rope at [{offset}, {})",
                    table.rows(),
                    offset + d
                ),
            ));
        }
        x.data
            .par_chunks_mut(cols)
            .enumerate()
            .for_each(|(i, row)| {
                let (cos, sin) = table.row(i);
                for head in row[..heads * head_stride].chunks_exact_mut(head_stride) {
                    rotate(&mut head[offset..offset + d], cos, sin, table.interleaved);
                }
            });
        Ok(())
    }

    fn latent_epilogue(
        &self,
        ckv: &mut HostTensor,
        norm: &CpuWeight,
        eps: f32,
        table: &RopeTable,
    ) -> Result<()> {
        let (m, cols) = dims2("latent_epilogue", ckv)?;
        let r = norm.data.len();
        if r + 2 * table.half != cols || table.rows() != m {
            return Err(op_err(
                "latent_epilogue",
                format!(
                    "[{m}, {cols}] is not latent {r} + rope {} for {} rows",
                    2 * table.half,
                    table.rows()
                ),
            ));
        }
        ckv.data
            .par_chunks_mut(cols)
            .enumerate()
            .for_each(|(i, row)| {
                let (latent, k_pe) = row.split_at_mut(r);
                rms_norm_row(latent, &norm.data, eps);
                let (cos, sin) = table.row(i);
                rotate(k_pe, cos, sin, table.interleaved);
            });
        Ok(())
    }

    fn alloc_kv_cache(
        &self,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        width: usize,
    ) -> Result<CpuKvCache> {
        self.alloc_cache_rows(layers, num_blocks, block_size, CacheRows::Native { width })
    }

    fn alloc_cache_rows(
        &self,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        rows: CacheRows,
    ) -> Result<CpuKvCache> {
        let bytes = layers as u128
            * num_blocks as u128
            * block_size as u128
            * rows.bytes_per_token(4) as u128;
        let ram = crate::util::host_memory::available_host_bytes();
        if ram.is_some_and(|ram| bytes > ram as u128) {
            return Err(Error::InvalidInput(format!(
                "a latent cache of {num_blocks} blocks × {block_size} tokens needs {bytes} bytes, more than the {} bytes of free memory",
                ram.unwrap_or(0)
            )));
        }
        Ok(CpuKvCache::new(layers, num_blocks, block_size, rows))
    }

    fn copy_blocks(&self, cache: &mut CpuKvCache, pairs: &[(u32, u32)]) -> Result<()> {
        for &(from, to) in pairs {
            if from as usize >= cache.num_blocks || to as usize >= cache.num_blocks {
                return Err(op_err(
                    "copy_blocks",
                    format!("block {from} → {to} of {}", cache.num_blocks),
                ));
            }
            cache.copy_block(from as usize, to as usize);
        }
        Ok(())
    }

    fn write_kv_cache(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        x: &HostTensor,
        offset: usize,
        slots: &[u32],
    ) -> Result<()> {
        let (m, cols) = dims2("write_kv_cache", x)?;
        let width = cache.width;
        if offset + width > cols || slots.len() != m || layer >= cache.num_layers() {
            return Err(op_err(
                "write_kv_cache",
                format!(
                    "columns [{offset}, {}) of [{m}, {cols}] for {} slots in layer {layer}",
                    offset + width,
                    slots.len()
                ),
            ));
        }
        let capacity = cache.slots();
        for (row, &slot) in x.data.chunks_exact(cols).zip(slots) {
            let slot = slot as usize;
            if slot >= capacity {
                return Err(op_err(
                    "write_kv_cache",
                    format!("slot {slot} of {capacity}"),
                ));
            }
            cache.write_row(layer, slot, &row[offset..offset + width]);
        }
        Ok(())
    }

    fn mha_attention(
        &self,
        q: &HostTensor,
        cache: &CpuKvCache,
        layer: usize,
        batch: &AttentionBatch,
        dims: &MhaDims,
    ) -> Result<HostTensor> {
        let (t, cols) = dims2("mha_attention", q)?;
        let ok = t == batch.num_query_tokens()
            && cols >= dims.heads * dims.head_dim
            && dims.kv_heads > 0
            && dims.heads % dims.kv_heads == 0
            && cache.width == 2 * dims.kv_heads * dims.head_dim;
        if !ok {
            return Err(op_err(
                "mha_attention",
                format!(
                    "q [{t}, {cols}], {} query rows, {dims:?}, cache width {}",
                    batch.num_query_tokens(),
                    cache.width
                ),
            ));
        }
        let out = attention::mha(&q.data, cols, cache, layer, batch, dims)?;
        Ok(HostTensor::new(vec![t, dims.heads * dims.head_dim], out))
    }

    fn mla_attention_materialised(
        &self,
        q: &HostTensor,
        cache: &CpuKvCache,
        layer: usize,
        batch: &AttentionBatch,
        kv_b: &CpuWeight,
        dims: &MlaDims,
    ) -> Result<HostTensor> {
        let t = batch.num_query_tokens();
        check_shape(
            "mla_attention_materialised",
            q,
            &[t, dims.heads * dims.qk_head()],
        )?;
        check_shape(
            "mla_attention_materialised",
            kv_b,
            &[dims.heads * (dims.qk_nope + dims.v_head), dims.kv_lora_rank],
        )?;
        let out = attention::materialised(&q.data, cache, layer, batch, &kv_b.data, dims)?;
        Ok(HostTensor::new(vec![t, dims.heads * dims.v_head], out))
    }

    fn mla_attention_absorbed(
        &self,
        q_lat: &HostTensor,
        q: &HostTensor,
        cache: &CpuKvCache,
        layer: usize,
        batch: &AttentionBatch,
        dims: &MlaDims,
    ) -> Result<HostTensor> {
        let t = batch.num_query_tokens();
        check_shape(
            "mla_attention_absorbed",
            q,
            &[t, dims.heads * dims.qk_head()],
        )?;
        check_shape(
            "mla_attention_absorbed",
            q_lat,
            &[t, dims.heads * dims.kv_lora_rank],
        )?;
        let out = attention::absorbed(&q_lat.data, &q.data, cache, layer, batch, dims)?;
        Ok(HostTensor::new(
            vec![t, dims.heads * dims.kv_lora_rank],
            out,
        ))
    }

    fn mlp(&self, x: &HostTensor, w: &MlpWeights<Self>) -> Result<HostTensor> {
        let mut gate = self.matmul(x, &w.gate)?;
        let mut up = self.matmul(x, &w.up)?;
        if let Some([g, u, _]) = &w.biases {
            self.add_bias(&mut gate, g)?;
            self.add_bias(&mut up, u)?;
        }
        gate.data
            .iter_mut()
            .zip(&up.data)
            .for_each(|(g, u)| *g = silu(*g) * u);
        let mut down = self.matmul(&gate, &w.down)?;
        if let Some([_, _, d]) = &w.biases {
            self.add_bias(&mut down, d)?;
        }
        Ok(down)
    }

    fn moe(&self, x: &HostTensor, w: &MoeWeights<Self>, config: &MoeConfig) -> Result<HostTensor> {
        let (m, hidden) = dims2("moe", x)?;
        let logits = self.matmul(x, &w.router)?;
        let e = logits.shape[1];
        // Tokens grouped per expert, so each expert runs one matmul over all its tokens.
        let mut assigned: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e];
        for (t, row) in logits.data.chunks_exact(e).enumerate() {
            for r in route(row, w.score_bias.as_deref(), config) {
                assigned[r.expert].push((t, r.weight));
            }
        }
        let mut out = match &w.shared {
            Some(shared) => self.mlp(x, shared)?,
            None => HostTensor::new(vec![m, hidden], vec![0.0; m * hidden]),
        };
        for (expert, tokens) in assigned.iter().enumerate().filter(|(_, t)| !t.is_empty()) {
            let rows: Vec<usize> = tokens.iter().map(|(t, _)| *t).collect();
            let y = self.mlp(&self.select_rows(x, &rows)?, &w.experts[expert])?;
            for ((t, weight), y_row) in tokens.iter().zip(y.data.chunks_exact(hidden)) {
                axpy(&mut out.data[t * hidden..(t + 1) * hidden], *weight, y_row);
            }
        }
        Ok(out)
    }
}

fn check_shape(op: &'static str, t: &HostTensor, expected: &[usize]) -> Result<()> {
    if t.shape != expected {
        return Err(op_err(
            op,
            format!("expected shape {expected:?}, found {:?}", t.shape),
        ));
    }
    Ok(())
}
