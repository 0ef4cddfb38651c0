//! `mla bench attention`: the absorbed MLA decode kernel on DeepSeek shapes (one query token per
//! sequence, bf16), over a bf16 or an FP8 cache (656-byte rows), its achieved bandwidth (over
//! the bytes it must read) and TFLOPS against a device-to-device copy measured in the same run,
//! and the materialised path (latents → per-head K/V with cuBLAS, then attention over them) on
//! the shapes where its K/V fit.

use super::kernels::{time_calls, time_ms, uniform};
use half::bf16;
use mla_rt::backend::cuda::attention::layout::absorbed_layout;
use mla_rt::backend::cuda::{
    driver_err, AttentionTuning, CudaBackend, NarrowAttention, SplitCombine, WideAttention,
};
use mla_rt::backend::{AttentionBatch, Backend, MlaDims, SeqChunk};
use mla_rt::config::presets::preset_config;
use mla_rt::error::Result;
use mla_rt::kv::cache_dtype::{CacheRows, KvCacheDtype};

#[derive(Debug, Clone, PartialEq)]
pub struct AttentionRow {
    pub heads: usize,
    /// The tensor-core kernel that served the shape (its [`AttentionKernel::label`]: entry point, and
    /// whether launched persistent; "+ last-CTA combine" where the kernel merged the splits
    /// itself), its CTAs and the most splits of a row group (1: no combine).
    ///
    /// [`AttentionKernel::label`]: mla_rt::backend::cuda::attention::kernel_choice::AttentionKernel::label
    pub kernel: String,
    /// CTAs the split-KV schedule aimed for, in waves of the CTAs the GPU holds at once.
    pub waves: f32,
    /// The cache's type: bf16 or fp8.
    pub cache: &'static str,
    pub ctas: usize,
    pub splits: usize,
    pub batch: usize,
    pub context: usize,
    pub micros: f64,
    /// The host's time to enqueue one call: about `micros` where the row is bound by the
    /// host's work per call (launches, allocations), not by the kernels.
    pub host_micros: f64,
    pub gb_per_s: f64,
    pub tflops: f64,
    /// Achieved GB/s over the copy's.
    pub of_copy: f64,
    /// Time of the materialised path, where its expanded K/V fit.
    pub materialised_micros: Option<f64>,
}

const BLOCK: usize = 64;
/// Largest expanded K/V the materialised path may allocate.
const MATERIALISED_LIMIT_BYTES: usize = 8 << 30;

/// GB/s of a device-to-device copy of 1 GiB (read + write).
fn copy_gb_per_s(gpu: &CudaBackend<bf16>) -> Result<f64> {
    let n = 1 << 29;
    let src = gpu.device.tensor::<bf16>(1, n, Some(0.0))?;
    let mut dst = gpu.device.tensor::<bf16>(1, n, None)?;
    let ms = time_ms(&gpu.device, 10, || {
        gpu.device
            .stream
            .memcpy_dtod(&src.data, &mut dst.data)
            .map_err(driver_err("device-to-device copy"))
    })?;
    Ok(2.0 * (n * 2) as f64 / (ms * 1e6))
}

/// The shapes and kernels `mla bench attention` times.
pub struct AttentionShapes<'a> {
    /// Kernel choices (64-row, 16-row build), a row each where they give different kernels.
    pub kernels: &'a [(WideAttention, NarrowAttention)],
    /// CTA targets of the split-KV schedule (see [`AttentionTuning`]), a row each.
    pub waves: &'a [f32],
    /// How the splits are merged (see [`SplitCombine`]), a row each where it differs.
    pub combines: &'a [SplitCombine],
    pub heads: &'a [usize],
    pub batches: &'a [usize],
    pub contexts: &'a [usize],
    /// Timed calls per row (after one warm-up).
    pub reps: usize,
    /// Whether to time the materialised path too.
    pub materialised: bool,
    /// Cache types (bf16 or fp8), a row each.
    pub caches: &'a [KvCacheDtype],
}

/// Times every (heads, batch, context) shape of `shapes` once per kernel choice, and the
/// materialised path once per shape where its K/V fit.
pub fn run(
    gpu: &CudaBackend<bf16>,
    shapes: &AttentionShapes,
    mut progress: impl FnMut(&AttentionRow),
) -> Result<(f64, Vec<AttentionRow>)> {
    let copy = copy_gb_per_s(gpu)?;
    let reps = shapes.reps;
    // The cache layouts depend on the latent widths alone, the same in V2-Lite and V3.
    let config = preset_config("deepseek-v2-lite", Some(1))?;
    let mut rows = Vec::new();
    for &h in shapes.heads {
        let dims = MlaDims::deepseek(h, 192f32.powf(-0.5));
        for &batch in shapes.batches {
            for (&context, &dtype) in shapes
                .contexts
                .iter()
                .flat_map(|c| shapes.caches.iter().map(move |d| (c, d)))
            {
                let per_seq = context.div_ceil(BLOCK);
                let cache_rows = CacheRows::resolve(dtype, &config, 2)?;
                let cache = gpu.alloc_cache_rows(1, batch * per_seq, BLOCK, cache_rows)?;
                // Finite values: 0x3838 is 4.4e-5 in bf16; as FP8, codes of 1.0 with that scale.
                gpu.device.fill_bytes(&cache.data, 0x38)?;
                let row_bytes = cache_rows.bytes_per_token(2) as usize;
                let attention = AttentionBatch {
                    block_size: BLOCK,
                    seqs: (0..batch)
                        .map(|s| SeqChunk {
                            block_table: (0..per_seq).map(|b| (s * per_seq + b) as u32).collect(),
                            context_len: context,
                            query_len: 1,
                        })
                        .collect(),
                };
                let q_lat = gpu.device.upload(&uniform(batch, h * 512, 1))?;
                let q = gpu.device.upload(&uniform(batch, h * 192, 2))?;
                let tokens = batch * context;
                let bytes = tokens * row_bytes + batch * h * (576 + 512) * 2;
                let flops = 2.0 * h as f64 * tokens as f64 * (576.0 + 512.0);
                let materialised_micros =
                    if shapes.materialised && tokens * h * 256 * 2 <= MATERIALISED_LIMIT_BYTES {
                        let kv_b = gpu.upload_weight(uniform(h * 256, 512, 3))?;
                        let ms = time_ms(&gpu.device, reps.min(3), || {
                            gpu.mla_attention_materialised(&q, &cache, 0, &attention, &kv_b, &dims)
                                .map(|_| ())
                        })?;
                        Some(ms * 1e3)
                    } else {
                        None
                    };
                let tunings = shapes.kernels.iter().flat_map(|&(wide, narrow)| {
                    shapes.waves.iter().flat_map(move |&waves| {
                        shapes.combines.iter().map(move |&combine| AttentionTuning {
                            wide,
                            narrow,
                            waves,
                            combine,
                        })
                    })
                });
                // Choices that come to the same kernel (fewer than 64 heads have no 64-row
                // kernel, most shapes no deep build, one split per group or too many no
                // in-kernel combine) are timed once.
                let mut timed: Vec<(String, f32)> = Vec::new();
                let layout = absorbed_layout(&dims).with_cache_rows(cache.fp8);
                for tuning in tunings {
                    let schedule = gpu.device.split_plan(&attention, &layout, tuning)?.shape;
                    let kernel = match schedule.combine() {
                        #[cfg(feature = "experimental-kernels")]
                        SplitCombine::LastCta => {
                            format!("{} + last-CTA combine", schedule.kernel().label())
                        }
                        SplitCombine::Kernel => schedule.kernel().label(),
                    };
                    if timed.contains(&(kernel.clone(), tuning.waves)) {
                        continue;
                    }
                    timed.push((kernel.clone(), tuning.waves));
                    gpu.set_attention_tuning(tuning);
                    let time = time_calls(&gpu.device, reps, || {
                        gpu.mla_attention_absorbed(&q_lat, &q, &cache, 0, &attention, &dims)
                            .map(|_| ())
                    });
                    gpu.set_attention_tuning(AttentionTuning::default());
                    let time = time?;
                    let ms = time.gpu_ms;
                    let gb_per_s = bytes as f64 / (ms * 1e6);
                    let row = AttentionRow {
                        heads: h,
                        kernel,
                        waves: tuning.waves,
                        cache: cache_rows.describe(2),
                        ctas: schedule.ctas(),
                        splits: schedule.max_splits(),
                        batch,
                        context,
                        micros: ms * 1e3,
                        host_micros: time.host_ms * 1e3,
                        gb_per_s,
                        tflops: flops / (ms * 1e9),
                        of_copy: gb_per_s / copy,
                        materialised_micros,
                    };
                    progress(&row);
                    rows.push(row);
                }
            }
        }
    }
    Ok((copy, rows))
}

pub fn render(device: &str, copy: f64, rows: &[AttentionRow]) -> String {
    let mut s = format!(
        "absorbed MLA decode on {device} (bf16, 1 query token, 64-token pages); copy: {copy:.0} GB/s; \
         GB/s over the cache rows and queries read, the output written\n\n\
         | heads | batch | context | cache | kernel | waves | CTAs | splits | µs | host µs | GB/s | of copy | TFLOPS | materialised µs | speed-up |\n\
         |---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let (materialised, speedup) = match r.materialised_micros {
            Some(n) => (format!("{n:.0}"), format!("{:.1}×", n / r.micros)),
            None => ("—".into(), "—".into()),
        };
        s +=
            &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.2} | {:.1} | {materialised} | {speedup} |\n",
            r.heads,
            r.batch,
            r.context,
            r.cache,
            r.kernel,
            r.waves,
            r.ctas,
            r.splits,
            r.micros, r.host_micros, r.gb_per_s, r.of_copy, r.tflops
        );
    }
    s
}
