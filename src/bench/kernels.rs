//! `mla bench kernels`: achieved bandwidth of every elementwise and row kernel on tensors of tens
//! of MB, against a device-to-device copy of the same size measured in the same run.

use cudarc::cublas::{CudaBlas, Gemm};
use mla_rt::backend::cuda::{driver_err, CudaBackend, CudaDevice, GpuFloat, GpuTensor};
use mla_rt::backend::Backend;
use mla_rt::config::{RopeConfig, RopeScaling};
use mla_rt::error::Result;
use mla_rt::ops::rope::Rope;
use mla_rt::weights::HostTensor;

/// One kernel's measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelRow {
    pub kernel: String,
    /// Bytes read plus bytes written by one call.
    pub bytes: u64,
    pub micros: f64,
    pub gb_per_s: f64,
    /// `gb_per_s` over the copy's.
    pub of_copy: f64,
}

/// Rows × columns of the activations the kernels run on (DeepSeek-V2-Lite's hidden size).
const ROWS: usize = 16_384;
const COLS: usize = 2048;
const REPS: usize = 20;

/// Milliseconds per call of a timed function.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallTime {
    /// On the GPU: CUDA events around the calls.
    pub gpu_ms: f64,
    /// On the host, to enqueue them: where it is about as long as `gpu_ms`, the GPU waited for
    /// the host's work per call (launches, allocations) rather than the other way round.
    pub host_ms: f64,
}

/// [`CallTime`] of `reps` calls of `f` after one warm-up.
pub(crate) fn time_calls(
    device: &CudaDevice,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<CallTime> {
    let err = || driver_err("timing on the GPU");
    f()?;
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = device.stream.record_event(flags).map_err(err())?;
    let host = std::time::Instant::now();
    for _ in 0..reps {
        f()?;
    }
    let host_ms = host.elapsed().as_secs_f64() * 1e3;
    let end = device.stream.record_event(flags).map_err(err())?;
    let reps = reps.max(1) as f64;
    Ok(CallTime {
        gpu_ms: start.elapsed_ms(&end).map_err(err())? as f64 / reps,
        host_ms: host_ms / reps,
    })
}

/// GPU milliseconds per call of `f` ([`time_calls`]).
pub(crate) fn time_ms(
    device: &CudaDevice,
    reps: usize,
    f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    time_calls(device, reps, f).map(|t| t.gpu_ms)
}

/// Uniform values in [−0.5, 0.5) from a fixed-seed LCG: benchmark inputs only.
pub(crate) fn uniform(rows: usize, cols: usize, seed: u64) -> HostTensor {
    let mut state = seed;
    let data = (0..rows * cols)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    HostTensor::new(vec![rows, cols], data)
}

pub fn run<T: GpuFloat>(gpu: &CudaBackend<T>) -> Result<Vec<KernelRow>>
where
    CudaBlas: Gemm<T>,
{
    let dev = &gpu.device;
    let e = std::mem::size_of::<T>() as u64;
    let n = (ROWS * COLS) as u64;
    let random = |rows: usize, cols: usize, seed: u64| -> Result<GpuTensor<T>> {
        dev.upload(&uniform(rows, cols, seed))
    };
    let x = random(ROWS, COLS, 1)?;
    let y = random(ROWS, COLS, 2)?;
    let w = random(1, COLS, 3)?;
    let mut rows: Vec<(String, u64, f64)> = Vec::new();

    let mut copy = dev.tensor::<T>(ROWS, COLS, None)?;
    let copy_ms = time_ms(dev, REPS, || {
        dev.stream
            .memcpy_dtod(&x.data, &mut copy.data)
            .map_err(driver_err("device-to-device copy"))
    })?;
    rows.push(("copy (cuMemcpyDtoD)".into(), 2 * n * e, copy_ms));

    let mut out = dev.tensor::<T>(ROWS, COLS, None)?;
    let ms = time_ms(dev, REPS, || dev.rms_norm(&mut out, &x, &w, 1e-6))?;
    rows.push(("rms_norm".into(), 2 * n * e, ms));
    let mut acc = random(ROWS, COLS, 4)?;
    let ms = time_ms(dev, REPS, || {
        dev.add_rms_norm(&mut acc, &y, &mut out, &w, 1e-6)
    })?;
    rows.push(("add_rms_norm (fused)".into(), 4 * n * e, ms));
    let ms = time_ms(dev, REPS, || dev.add_assign(&mut acc, &y))?;
    rows.push(("add_assign (residual)".into(), 3 * n * e, ms));
    let ms = time_ms(dev, REPS, || dev.add_bias(&mut acc, &w))?;
    rows.push(("add_bias".into(), 2 * n * e, ms));
    let ms = time_ms(dev, REPS, || dev.silu_mul(&mut acc, &y))?;
    rows.push(("silu_mul".into(), 3 * n * e, ms));
    let ms = time_ms(dev, REPS, || dev.fill(&mut acc.data, 0.0))?;
    rows.push(("fill".into(), n * e, ms));

    // A vocabulary-sized table: the gather reads one row per token.
    let table = random(32_768, COLS, 5)?;
    let ids: Vec<u32> = (0..ROWS as u32).map(|i| (i * 7919) % 32_768).collect();
    let ms = time_ms(dev, REPS, || dev.embedding(&mut out, &table, &ids))?;
    rows.push(("embedding".into(), 2 * n * e, ms));
    let order: Vec<u32> = (0..ROWS as u32).rev().collect();
    let src = x.data.slice(..);
    let ms = time_ms(dev, REPS, || {
        dev.gather_rows(&mut out, &src, COLS, &order, "bench rows")
    })?;
    rows.push(("gather_rows (select / MoE permute)".into(), 2 * n * e, ms));
    let ones = vec![0.5f32; ROWS];
    let ms = time_ms(dev, REPS, || {
        dev.scatter_add_rows(&mut acc, &y, &order, &ones)
    })?;
    rows.push(("scatter_add_rows (MoE combine)".into(), 3 * n * e, ms));
    let ms = time_ms(dev, REPS, || dev.argmax_rows(&x).map(|_| ()))?;
    rows.push(("argmax_rows".into(), n * e, ms));
    // Sampling's shape: 128 sequences' rows of a 102,400-token vocabulary, counted as one read
    // (the radix select reads a row five or six times; L2 serves the repeats).
    let (seqs, vocab) = (128, 102_400);
    let logits = random(seqs, vocab, 9)?;
    let logit_bytes = (seqs * vocab) as u64 * e;
    let ms = time_ms(dev, REPS, || dev.top_k_rows(&logits, 64).map(|_| ()))?;
    rows.push(("top_k_rows (k = 64, 128 × 102,400)".into(), logit_bytes, ms));
    let temperatures = vec![0.8f32; seqs];
    let ms = time_ms(dev, REPS, || {
        dev.softmax_totals(&logits, &temperatures).map(|_| ())
    })?;
    rows.push(("softmax_totals (128 × 102,400)".into(), logit_bytes, ms));

    // MLA shapes: q of 16 heads × 192 with RoPE on the last 64 of each head; kv_a output
    // rows of 512 latent + 64 rope; 576-wide cache rows.
    let tokens = ROWS;
    let rope = Rope::new(
        &RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::None,
            interleaved: true,
            softmax_mscale: None,
        },
        64,
    );
    let positions: Vec<u32> = (0..tokens as u32).map(|p| p % 4096).collect();
    let table_host = rope.table(&positions, &vec![4096; tokens]);
    let cos_sin = dev.rope_table(&table_host)?;
    let mut q = random(tokens, 16 * 192, 6)?;
    let ms = time_ms(dev, REPS, || {
        dev.rope(&mut q, &table_host, &cos_sin, 16, 192, 128)
    })?;
    rows.push((
        "rope (q_pe, 16 heads)".into(),
        (2 * tokens * 16 * 64) as u64 * e,
        ms,
    ));
    let mut ckv = random(tokens, 576, 7)?;
    let norm = random(1, 512, 8)?;
    let ms = time_ms(dev, REPS, || {
        dev.latent_epilogue(&mut ckv, &norm, 1e-6, &table_host, &cos_sin)
    })?;
    rows.push(("latent_epilogue".into(), (2 * tokens * 576) as u64 * e, ms));
    let mut cache = gpu.alloc_kv_cache(1, tokens / 64, 64, 576)?;
    let slots: Vec<u32> = (0..tokens as u32).rev().collect();
    let ms = time_ms(dev, REPS, || {
        gpu.write_kv_cache(&mut cache, 0, &ckv, 0, &slots)
    })?;
    rows.push(("write_kv_cache".into(), (2 * tokens * 576) as u64 * e, ms));

    let copy_gbs = 2.0 * (n * e) as f64 / (copy_ms * 1e6);
    Ok(rows
        .into_iter()
        .map(|(kernel, bytes, ms)| {
            let gb_per_s = bytes as f64 / (ms * 1e6);
            KernelRow {
                kernel,
                bytes,
                micros: ms * 1e3,
                gb_per_s,
                of_copy: gb_per_s / copy_gbs,
            }
        })
        .collect())
}

/// A markdown table of the rows.
pub fn render(device: &str, rows: &[KernelRow]) -> String {
    let mut s = format!(
        "kernels on {device}, {ROWS} × {COLS} activations, mean of {REPS} calls (CUDA events)\n\n| kernel | MB moved | µs | GB/s | of copy |\n|---|---:|---:|---:|---:|\n"
    );
    for r in rows {
        s += &format!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.2} |\n",
            r.kernel,
            r.bytes as f64 / 1e6,
            r.micros,
            r.gb_per_s,
            r.of_copy
        );
    }
    s
}
