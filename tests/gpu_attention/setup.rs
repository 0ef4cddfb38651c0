//! What the GPU attention tests share: random inputs rounded as the GPU stores them, batches
//! over shuffled block tables, the same rows in a CPU and a GPU cache, the poisoned backend,
//! the kernels that serve the latent, and an f64 reference for the rows' log-sum-exp.

use super::common::Rng;
use mla_rt::backend::cpu::{CpuBackend, CpuKvCache};
use mla_rt::backend::cuda::attention::launch::ScheduleShape;
use mla_rt::backend::cuda::attention::layout::absorbed_layout;
#[cfg(feature = "experimental-kernels")]
use mla_rt::backend::cuda::attention::layout::AttentionLayout;
#[cfg(feature = "experimental-kernels")]
use mla_rt::backend::cuda::NarrowAttention;
use mla_rt::backend::cuda::{AttentionTuning, CudaBackend, GpuFloat, SplitCombine, WideAttention};
use mla_rt::backend::{AttentionBatch, Backend, MlaDims, SeqChunk};
use mla_rt::kv::cache_dtype::CacheRows;
use mla_rt::weights::HostTensor;

pub fn random(rng: &mut Rng, rows: usize, cols: usize) -> HostTensor {
    biased(rng, rows, cols, 0.0)
}

/// Normal values of unit variance around `mean`.
pub fn biased(rng: &mut Rng, rows: usize, cols: usize, mean: f32) -> HostTensor {
    let data = rng.normals(rows * cols, 1.0);
    HostTensor::new(
        vec![rows, cols],
        data.into_iter().map(|v| v + mean).collect(),
    )
}

/// Rounds through the storage type, so that the CPU sees the values the GPU stores.
pub fn stored<T: GpuFloat>(t: HostTensor) -> HostTensor {
    let data = t.data.iter().map(|&v| T::from_f32(v).to_f32()).collect();
    HostTensor::new(t.shape, data)
}

/// Sequences `(context, query)` with block tables drawn from a shuffled pool of blocks of
/// `block` tokens.
pub fn batch(rng: &mut Rng, shapes: &[(usize, usize)], block: usize) -> (AttentionBatch, usize) {
    let needed: usize = shapes.iter().map(|(c, _)| c.div_ceil(block)).sum();
    let num_blocks = needed + 5; // spare blocks stay NaN
    let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..pool.len()).rev() {
        let j = (rng.uniform() * (i + 1) as f32) as usize % (i + 1);
        pool.swap(i, j);
    }
    let mut next = pool.into_iter();
    let seqs = shapes
        .iter()
        .map(|&(context_len, query_len)| SeqChunk {
            block_table: next.by_ref().take(context_len.div_ceil(block)).collect(),
            context_len,
            query_len,
        })
        .collect();
    (
        AttentionBatch {
            block_size: block,
            seqs,
        },
        num_blocks,
    )
}

/// The same random rows (unit variance around `mean`) written into a CPU and a GPU cache for
/// every cached position.
pub fn caches<T: GpuFloat>(
    rng: &mut Rng,
    gpu: &CudaBackend<T>,
    batch: &AttentionBatch,
    num_blocks: usize,
    width: usize,
    mean: f32,
) -> (
    <CpuBackend as Backend>::KvCache,
    <CudaBackend<T> as Backend>::KvCache,
)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let rows = CacheRows::Native { width };
    caches_of(rng, gpu, batch, num_blocks, rows, mean)
}

/// [`caches`] with rows of `rows` on both sides (the CPU's f32 for native rows).
pub fn caches_of<T: GpuFloat>(
    rng: &mut Rng,
    gpu: &CudaBackend<T>,
    batch: &AttentionBatch,
    num_blocks: usize,
    rows: CacheRows,
    mean: f32,
) -> (
    <CpuBackend as Backend>::KvCache,
    <CudaBackend<T> as Backend>::KvCache,
)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let block = batch.block_size;
    let mut cpu_cache = CpuBackend::EXACT
        .alloc_cache_rows(1, num_blocks, block, rows)
        .unwrap();
    let mut gpu_cache = gpu.alloc_cache_rows(1, num_blocks, block, rows).unwrap();
    let width = gpu_cache.width;
    for seq in &batch.seqs {
        let rows = stored::<T>(biased(rng, seq.context_len, width, mean));
        let slots: Vec<u32> = (0..seq.context_len)
            .map(|p| seq.block_table[p / block] * block as u32 + (p % block) as u32)
            .collect();
        CpuBackend::EXACT
            .write_kv_cache(&mut cpu_cache, 0, &rows, 0, &slots)
            .unwrap();
        let rows_gpu = gpu.device.upload(&rows).unwrap();
        gpu.write_kv_cache(&mut gpu_cache, 0, &rows_gpu, 0, &slots)
            .unwrap();
    }
    (cpu_cache, gpu_cache)
}

/// The GPU backend with every op output poisoned (NaN) before its kernel writes it.
pub fn poisoned_gpu<T: GpuFloat>() -> CudaBackend<T>
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    CudaBackend::<T>::open(0)
        .expect("an NVIDIA GPU with kernels in this build")
        .with_poisoned_outputs()
}

/// DeepSeek-V2/V3 attention widths with `heads` heads.
pub fn deepseek_dims(heads: usize) -> MlaDims {
    MlaDims::deepseek(heads, 0.07)
}

/// The kernels that serve the latent for `heads` heads when forced (these tests' contexts are
/// too short for them to pay): the 64-row ones from 64 heads (wgmma on Hopper, mma.sync
/// everywhere), else the 16-row one; with `experimental-kernels`, the experimental ones too.
pub fn latent_kernels<T: GpuFloat>(gpu: &CudaBackend<T>, heads: usize) -> Vec<AttentionTuning>
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let hopper = gpu.device.info.hopper();
    let wide = match heads {
        ..64 => vec![WideAttention::Off],
        _ if hopper => vec![WideAttention::Mma, WideAttention::Wgmma],
        _ => vec![WideAttention::Mma],
    };
    let tunings: Vec<AttentionTuning> = wide.into_iter().map(AttentionTuning::from).collect();
    #[cfg(feature = "experimental-kernels")]
    let tunings = [tunings, experimental_latent_kernels(heads, hopper)].concat();
    tunings
}

/// The experimental kernels that serve the latent for `heads` heads: the deep 16-row build
/// below 64 heads; on Hopper the rs and persistent wgmma kernels from 64 heads and both builds
/// of the seesaw kernel (cp.async, tensor map) for any.
#[cfg(feature = "experimental-kernels")]
fn experimental_latent_kernels(heads: usize, hopper: bool) -> Vec<AttentionTuning> {
    let mut tunings = Vec::new();
    if heads < 64 {
        tunings.push(AttentionTuning {
            wide: WideAttention::Off,
            narrow: NarrowAttention::Deep,
            ..AttentionTuning::default()
        });
    }
    if hopper {
        if heads >= 64 {
            tunings.push(WideAttention::WgmmaRs.into());
            tunings.push(WideAttention::WgmmaPersistent.into());
        }
        tunings.push(WideAttention::WgmmaSeesaw.into());
        tunings.push(WideAttention::WgmmaSeesawTma.into());
    }
    tunings
}

/// Runs `check` once per kernel that serves the latent for `heads` heads ([`latent_kernels`])
/// with the backend forced to it, then gives the runtime its own choice back.
pub fn for_each_latent_kernel<T: GpuFloat>(
    gpu: &CudaBackend<T>,
    heads: usize,
    mut check: impl FnMut(AttentionTuning),
) where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    for tuning in latent_kernels(gpu, heads) {
        gpu.set_attention_tuning(tuning);
        check(tuning);
    }
    gpu.set_attention_tuning(AttentionTuning::default());
}

/// Runs `check` with the splits of row groups merged by the combine kernel, then (with
/// `experimental-kernels`) by the attention kernels' last CTA of each group (the tensor-core
/// kernels of every form: 16-row builds of other widths and the WMMA one too), then gives the
/// runtime its own choice back.
pub fn for_each_combine<T: GpuFloat>(gpu: &CudaBackend<T>, mut check: impl FnMut(SplitCombine))
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let combines = [
        SplitCombine::Kernel,
        #[cfg(feature = "experimental-kernels")]
        SplitCombine::LastCta,
    ];
    for combine in combines {
        gpu.set_attention_tuning(AttentionTuning {
            combine,
            ..AttentionTuning::default()
        });
        check(combine);
    }
    gpu.set_attention_tuning(AttentionTuning::default());
}

/// That [`for_each_combine`]'s second pass merged splits in the kernel for `batch` and
/// `layout`, where bf16 runs them on tensor cores (f32 runs the exact kernel: no splits).
#[cfg(feature = "experimental-kernels")]
pub fn assert_last_cta_ran<T: GpuFloat>(
    gpu: &CudaBackend<T>,
    batch: &AttentionBatch,
    layout: &AttentionLayout,
) where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    if T::SUFFIX != "bf16" {
        return;
    }
    let tuning = AttentionTuning {
        combine: SplitCombine::LastCta,
        ..AttentionTuning::default()
    };
    let shape = gpu.device.split_plan(batch, layout, tuning).unwrap().shape;
    assert!(
        shape.combine() == SplitCombine::LastCta,
        "{layout:?}: {} splits, {:?}",
        shape.max_splits(),
        shape.kernel()
    );
}

/// The kernel and split-KV schedule the GPU picks for `batch` at `heads` heads under `tuning`.
pub fn tc_shape<T: GpuFloat>(
    gpu: &CudaBackend<T>,
    batch: &AttentionBatch,
    heads: usize,
    tuning: AttentionTuning,
) -> ScheduleShape
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    gpu.device
        .split_plan(batch, &absorbed_layout(&deepseek_dims(heads)), tuning)
        .unwrap()
        .shape
}

/// Each (token, head) row's log-sum-exp (natural log) of its scaled absorbed scores,
/// `scale·(q_lat·c + q_pe·k_pe)` over the cached tokens it sees, in f64 from the CPU cache.
pub fn absorbed_lse(
    q_lat: &HostTensor,
    q: &HostTensor,
    cache: &CpuKvCache,
    batch: &AttentionBatch,
    dims: &MlaDims,
) -> Vec<f64> {
    let (n, r, dq) = (dims.heads, dims.kv_lora_rank, dims.qk_head());
    let width = cache.width;
    let layer0 = cache.all_rows(0);
    let mut lse = Vec::new();
    let mut token = 0;
    for seq in &batch.seqs {
        for i in 0..seq.query_len {
            let pos = seq.context_len - seq.query_len + i;
            for h in 0..n {
                let lat = &q_lat.data[(token * n + h) * r..][..r];
                let pe = &q.data[token * n * dq + h * dq + dims.qk_nope..][..dims.qk_rope];
                let scores: Vec<f64> = (0..=pos)
                    .map(|p| {
                        let slot = seq.block_table[p / batch.block_size] as usize
                            * batch.block_size
                            + p % batch.block_size;
                        let row = &layer0[slot * width..][..width];
                        let dot = lat.iter().chain(pe).zip(row);
                        dims.softmax_scale as f64
                            * dot.map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                lse.push(max + scores.iter().map(|x| (x - max).exp()).sum::<f64>().ln());
            }
            token += 1;
        }
    }
    lse
}
