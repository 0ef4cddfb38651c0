//! `mla bench moe`: one MoE layer at DeepSeek-V2-Lite and V3 shapes (random bf16 weights made
//! on the device, or random FP8 ones in 128 × 128 blocks) for batches of decode tokens, on the grouped path and on the per-expert path:
//! the bytes of weights the layer must read (router, shared experts and every routed expert at
//! least one token chose) over its time, against a device-to-device copy measured in the same
//! run, with the kernel launches and device→host waits of one call.

use super::kernels::{time_calls, uniform};
use cudarc::cublas::{CudaBlas, Gemm};
use mla_rt::backend::cuda::{CudaBackend, GpuFloat, MoePath};
use mla_rt::backend::{Backend, MlpWeights, MoeWeights};
use mla_rt::config::{presets::preset_config, ModelConfig, MoeConfig, TopkMethod};
use mla_rt::error::{Error, Result};
use mla_rt::weights::random::RandomFill;

/// A layer's widths and routing.
#[derive(Debug, Clone)]
pub struct MoeShape {
    pub name: String,
    pub hidden: usize,
    pub moe: MoeConfig,
}

/// `v2-lite` and `v3` from the presets; `tiny` (hidden 64, 16 experts of 48, top-4) for a
/// quick run on cuda-emu.
pub fn shape(name: &str) -> Result<MoeShape> {
    let preset = match name {
        "v2-lite" => "deepseek-v2-lite",
        "v3" => "deepseek-v3-L4",
        "tiny" => {
            let mut moe = moe_of("deepseek-v2-lite")?.1;
            moe.n_routed_experts = 16;
            moe.num_experts_per_tok = 4;
            moe.moe_intermediate_size = 48;
            moe.n_shared_experts = 1;
            return Ok(MoeShape {
                name: name.into(),
                hidden: 64,
                moe,
            });
        }
        _ => {
            return Err(Error::InvalidInput(format!(
                "--shape {name}: expected v2-lite, v3 or tiny"
            )))
        }
    };
    let (hidden, moe) = moe_of(preset)?;
    Ok(MoeShape {
        name: name.into(),
        hidden,
        moe,
    })
}

fn moe_of(preset: &str) -> Result<(usize, MoeConfig)> {
    match preset_config(preset, None)? {
        ModelConfig::DeepSeek(c) => match c.moe {
            Some(moe) => Ok((c.hidden_size, moe)),
            None => Err(Error::InvalidInput(format!("{preset} has no MoE layers"))),
        },
        ModelConfig::Llama(_) => Err(Error::InvalidInput(format!("{preset} is not DeepSeek"))),
    }
}

/// One measured (shape, tokens, path).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeRow {
    pub shape: String,
    pub tokens: usize,
    /// `bf16` or `fp8` (the experts' and shared MLP's weights; the router stays in `T`).
    pub weights: &'static str,
    pub path: MoePath,
    pub micros: f64,
    /// Routed experts at least one token chose.
    pub experts_read: usize,
    /// Bytes of weights the call must read: router, shared experts, routed experts chosen.
    pub weight_bytes: u64,
    pub gb_per_s: f64,
    /// `gb_per_s` over the copy's.
    pub of_copy: f64,
    /// Of one call.
    pub kernel_launches: u64,
    pub host_waits: u64,
}

fn generated<T: GpuFloat>(
    gpu: &CudaBackend<T>,
    shape: [usize; 2],
    base: &mut u64,
) -> Result<mla_rt::backend::cuda::CudaWeight<T>>
where
    CudaBlas: Gemm<T>,
{
    *base += 1;
    let fill = RandomFill::Normal {
        base: *base,
        std: 0.02,
    };
    gpu.generate_weight(&shape, &fill)?
        .ok_or_else(|| Error::InvalidInput("the CUDA backend generates weights".into()))
}

/// Random weights of one MoE layer of `shape`, made on the device (`fp8`: made on the host as
/// FP8 and kept so where the GPU multiplies FP8).
fn layer<T: GpuFloat>(
    gpu: &CudaBackend<T>,
    shape: &MoeShape,
    fp8: bool,
) -> Result<MoeWeights<CudaBackend<T>>>
where
    CudaBlas: Gemm<T>,
{
    let (h, moe) = (shape.hidden, &shape.moe);
    let mut base = 0;
    let mut matrix = |rows: usize, cols: usize| match fp8 {
        true => {
            base += 1;
            gpu.upload_fp8_weight(super::gemm::random_fp8(rows, cols, base))
        }
        false => generated(gpu, [rows, cols], &mut base),
    };
    let mut mlp = |inter: usize| -> Result<MlpWeights<CudaBackend<T>>> {
        Ok(MlpWeights {
            gate: matrix(inter, h)?,
            up: matrix(inter, h)?,
            down: matrix(h, inter)?,
            biases: None,
        })
    };
    let experts = (0..moe.n_routed_experts)
        .map(|_| mlp(moe.moe_intermediate_size))
        .collect::<Result<Vec<_>>>()?;
    let shared = match moe.n_shared_experts {
        0 => None,
        s => Some(mlp(moe.moe_intermediate_size * s)?),
    };
    let bias = (moe.topk_method == TopkMethod::NoauxTc).then(|| vec![0.0; moe.n_routed_experts]);
    Ok(MoeWeights {
        router: generated(gpu, [moe.n_routed_experts, h], &mut base)?,
        experts: gpu.routed_experts(experts, bias.as_deref())?,
        score_bias: bias,
        shared,
    })
}

pub fn run<T: GpuFloat>(
    gpu: &CudaBackend<T>,
    shapes: &[MoeShape],
    tokens: &[usize],
    reps: usize,
    copy_bytes: usize,
    fp8_weights: &[bool],
) -> Result<(Vec<MoeRow>, f64)>
where
    CudaBlas: Gemm<T>,
{
    // Bytes per ms of a device-to-device copy, measured now (the ceiling).
    let copy = gpu.device.copy_bandwidth(copy_bytes, reps)? / 1e3;
    let e = std::mem::size_of::<T>() as u64;
    let mut rows = Vec::new();
    for (shape, &fp8) in shapes
        .iter()
        .flat_map(|s| fp8_weights.iter().map(move |f| (s, f)))
    {
        let (h, moe) = (shape.hidden, &shape.moe);
        let weights = if fp8 { "fp8" } else { "bf16" };
        crate::cli::output::note!(
            "moe {}: generating one layer's {weights} weights",
            shape.name
        );
        let w = layer(gpu, shape, fp8)?;
        if fp8 && !gpu.multiplies_fp8() {
            return Err(Error::InvalidInput(format!(
                "{} keeps no FP8 weights (bf16 on compute capability 8.9+ does)",
                gpu.name()
            )));
        }
        let inter = moe.moe_intermediate_size as u64;
        // An FP8 matrix: a byte per value and an f32 per 128 × 128 block.
        let matrix_bytes = |n: u64, k: u64| match fp8 {
            true => n * k + 4 * n.div_ceil(128) * k.div_ceil(128),
            false => n * k * e,
        };
        let expert_bytes = 2 * matrix_bytes(inter, h as u64) + matrix_bytes(h as u64, inter);
        let shared_bytes = 2 * matrix_bytes(inter * moe.n_shared_experts as u64, h as u64)
            + matrix_bytes(h as u64, inter * moe.n_shared_experts as u64);
        let fixed_bytes = moe.n_routed_experts as u64 * h as u64 * e
            + if moe.n_shared_experts > 0 {
                shared_bytes
            } else {
                0
            };
        for &n in tokens {
            let x = gpu.device.upload(&uniform(n, h, n as u64))?;
            let mut hit = vec![false; moe.n_routed_experts];
            for r in gpu.moe_routes(&x, &w, moe)?.iter().flatten() {
                hit[r.expert] = true;
            }
            let experts_read = hit.iter().filter(|&&h| h).count();
            let weight_bytes = fixed_bytes + experts_read as u64 * expert_bytes;
            // FP8 experts have one grouped GEMM (mma.sync) on every GPU.
            let paths: &[MoePath] = match fp8 {
                true => &[MoePath::Grouped, MoePath::PerExpert],
                false => &[MoePath::Grouped, MoePath::GroupedMma, MoePath::PerExpert],
            };
            for &path in paths {
                gpu.set_moe_path(path);
                let before = gpu.counters().unwrap_or_default();
                gpu.moe(&x, &w, moe)?;
                let used = gpu.counters().unwrap_or_default().since(&before);
                let t = time_calls(&gpu.device, reps, || gpu.moe(&x, &w, moe).map(|_| ()))?;
                let bytes_per_ms = weight_bytes as f64 / t.gpu_ms;
                rows.push(MoeRow {
                    shape: shape.name.clone(),
                    tokens: n,
                    weights,
                    path,
                    micros: t.gpu_ms * 1e3,
                    experts_read,
                    weight_bytes,
                    gb_per_s: bytes_per_ms / 1e6,
                    of_copy: bytes_per_ms / copy,
                    kernel_launches: used.kernel_launches,
                    host_waits: used.host_waits,
                });
                crate::cli::output::note!(
                    "moe {} {n} tokens {weights} {path:?}: {:.1} µs",
                    shape.name,
                    t.gpu_ms * 1e3
                );
            }
        }
        gpu.set_moe_path(MoePath::default());
    }
    Ok((rows, copy / 1e6))
}

/// A markdown table of the rows, with the copy's GB/s they are measured against.
pub fn render(device: &str, reps: usize, copy_gb_per_s: f64, rows: &[MoeRow]) -> String {
    let mut s = format!(
        "one MoE layer on {device}, mean of {reps} calls (CUDA events); copy ceiling {copy_gb_per_s:.0} GB/s\n\n\
         | shape | tokens | weights | path | µs | experts read | MB of weights | GB/s | of copy | launches | waits |\n\
         |---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {:.1} | {} | {:.1} | {:.0} | {:.2} | {} | {} |\n",
            r.shape,
            r.tokens,
            r.weights,
            match r.path {
                MoePath::Grouped => "grouped",
                MoePath::GroupedMma => "grouped, mma.sync only",
                MoePath::PerExpert => "per-expert",
            },
            r.micros,
            r.experts_read,
            r.weight_bytes as f64 / 1e6,
            r.gb_per_s,
            r.of_copy,
            r.kernel_launches,
            r.host_waits
        );
    }
    s
}
