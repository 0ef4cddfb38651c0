//! `mla bench gemm`: one projection `x·wᵀ` with bf16 weights (cuBLAS) and with FP8 weights (the
//! FP8 GEMM, its activation quantization included) on DeepSeek's projection shapes, in TFLOPS and
//! in weight bytes read per second against a device-to-device copy measured in the same run.

use super::kernels::{time_calls, uniform};
use cudarc::cublas::{CudaBlas, Gemm};
use mla_rt::backend::cuda::{CudaBackend, CudaWeight};
use mla_rt::backend::Backend;
use mla_rt::config::quantization::Fp8Blocks;
use mla_rt::error::{Error, Result};
use mla_rt::weights::fp8::Fp8Matrix;
use mla_rt::weights::random::RandomFill;

/// One weight matrix `[n, k]` of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmShape {
    pub name: String,
    pub n: usize,
    pub k: usize,
}

/// The projections of a preset: `v2-lite`, `v3` or `tiny` (for cuda-emu).
pub fn shapes(preset: &str) -> Result<Vec<GemmShape>> {
    let list: &[(&str, usize, usize)] = match preset {
        "v2-lite" => &[
            ("v2-lite q_proj", 3072, 2048),
            ("v2-lite o_proj", 2048, 2048),
            ("v2-lite expert gate", 1408, 2048),
            ("v2-lite expert down", 2048, 1408),
        ],
        "v3" => &[
            ("v3 q_b_proj", 24_576, 1536),
            ("v3 o_proj", 7168, 16_384),
            ("v3 expert gate", 2048, 7168),
            ("v3 expert down", 7168, 2048),
        ],
        "tiny" => &[("tiny", 192, 256)],
        other => {
            return Err(Error::InvalidInput(format!(
                "unknown --shape {other:?} (v2-lite, v3 or tiny)"
            )))
        }
    };
    Ok(list
        .iter()
        .map(|&(name, n, k)| GemmShape {
            name: name.into(),
            n,
            k,
        })
        .collect())
}

/// One timed projection.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmRow {
    pub shape: GemmShape,
    pub tokens: usize,
    /// `bf16` or `fp8`.
    pub weights: &'static str,
    pub micros: f64,
    pub tflops: f64,
    /// Weight bytes (codes and scales for FP8) over the time.
    pub gb_per_s: f64,
    pub of_copy: f64,
    /// The bf16 row's time over this row's.
    pub speedup: f64,
}

/// A random `[rows, cols]` FP8 matrix in 128 × 128 blocks (finite codes from an LCG; scales that
/// keep products small): benchmark weights only.
pub fn random_fp8(rows: usize, cols: usize, seed: u64) -> Fp8Matrix {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let codes = (0..rows * cols)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let b = (state >> 56) as u8;
            if b & 0x7f == 0x7f {
                b ^ 1
            } else {
                b
            }
        })
        .collect();
    let blocks = Fp8Blocks::DEEPSEEK;
    let [grid_rows, grid_cols] = mla_rt::weights::fp8::scale_grid(rows, cols, blocks);
    Fp8Matrix {
        rows,
        cols,
        codes,
        scales: vec![1e-4; grid_rows * grid_cols],
        blocks,
    }
}

pub fn run(
    gpu: &CudaBackend<half::bf16>,
    shapes: &[GemmShape],
    tokens: &[usize],
    reps: usize,
    copy_bytes: usize,
) -> Result<(Vec<GemmRow>, f64)>
where
    CudaBlas: Gemm<half::bf16>,
{
    if !gpu.multiplies_fp8() {
        return Err(Error::InvalidInput(format!(
            "{} has no FP8 GEMM (it needs compute capability 8.9 or newer)",
            gpu.name()
        )));
    }
    let copy = gpu.device.copy_bandwidth(copy_bytes, reps)? / 1e3;
    let mut rows = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        let (n, k) = (shape.n, shape.k);
        crate::cli::output::note!("gemm {}: generating {n} × {k} weights", shape.name);
        let fill = RandomFill::Normal {
            base: i as u64 + 1,
            std: 0.02,
        };
        let bf16 = gpu
            .generate_weight(&[n, k], &fill)?
            .ok_or_else(|| Error::InvalidInput("the CUDA backend generates weights".into()))?;
        let fp8 = gpu.upload_fp8_weight(random_fp8(n, k, i as u64 + 1))?;
        let fp8_bytes = match &fp8 {
            CudaWeight::Fp8(w) => w.bytes() as f64,
            CudaWeight::Dense(_) => {
                return Err(Error::InvalidInput(format!(
                    "{}: {n} × {k} is not a shape the FP8 GEMM takes",
                    shape.name
                )))
            }
        };
        for &m in tokens {
            let x = gpu.device.upload(&uniform(m, k, m as u64))?;
            let mut bf16_ms = 0.0;
            // On a Hopper GPU, 64+ rows take the wgmma build; its mma.sync build (f16 rates
            // there) is timed too, as `fp8 mma.sync`.
            let mut variants = vec![
                ("bf16", &bf16, (2 * n * k) as f64, true),
                ("fp8", &fp8, fp8_bytes, true),
            ];
            if gpu.device.info.hopper() && m >= 64 {
                variants.push(("fp8 mma.sync", &fp8, fp8_bytes, false));
            }
            for (weights, w, bytes, wgmma) in variants {
                gpu.set_fp8_wgmma(wgmma);
                let t = time_calls(&gpu.device, reps, || gpu.matmul(&x, w).map(|_| ()))?;
                gpu.set_fp8_wgmma(true);
                if weights == "bf16" {
                    bf16_ms = t.gpu_ms;
                }
                let bytes_per_ms = bytes / t.gpu_ms;
                rows.push(GemmRow {
                    shape: shape.clone(),
                    tokens: m,
                    weights,
                    micros: t.gpu_ms * 1e3,
                    tflops: 2.0 * (m * n * k) as f64 / (t.gpu_ms * 1e9),
                    gb_per_s: bytes_per_ms / 1e6,
                    of_copy: bytes_per_ms / copy,
                    speedup: bf16_ms / t.gpu_ms,
                });
                crate::cli::output::note!(
                    "gemm {} {m} tokens {weights}: {:.1} µs",
                    shape.name,
                    t.gpu_ms * 1e3
                );
            }
        }
    }
    Ok((rows, copy / 1e6))
}

/// A markdown table of the rows, with the copy's GB/s they are measured against.
pub fn render(device: &str, reps: usize, copy_gb_per_s: f64, rows: &[GemmRow]) -> String {
    let mut s = format!(
        "x·wᵀ on {device}, mean of {reps} calls (CUDA events); copy ceiling {copy_gb_per_s:.0} GB/s; \
         fp8 includes quantizing x\n\n\
         | projection | n × k | tokens | weights | µs | TFLOPS | weight GB/s | of copy | vs bf16 |\n\
         |---|---|---:|---|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        s += &format!(
            "| {} | {} × {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.2} | {:.2}× |\n",
            r.shape.name,
            r.shape.n,
            r.shape.k,
            r.tokens,
            r.weights,
            r.micros,
            r.tflops,
            r.gb_per_s,
            r.of_copy,
            r.speedup
        );
    }
    s
}
