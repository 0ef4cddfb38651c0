//! FP8 caches on the GPU against the CPU backend's FP8 caches: the rows the GPU's cache write
//! stores are byte for byte the CPU's (MLA's 656-byte layout with a partial tile, MHA's per-head
//! scales; outliers, zero rows), and attention over FP8 pages — absorbed and materialised MLA,
//! MHA/GQA — on shuffled block tables with NaN (all-ones) free pages, through the FP8 builds of
//! the mma.sync kernels (16- and 64-row) in bf16 and the exact kernel in f32 and for other
//! widths. f32 within 1e-4 relative L2, bf16 within 1e-2: the dequantized values are exact in
//! both, so only the arithmetic differs. Needs an NVIDIA GPU: ignored elsewhere.

mod common;
#[path = "gpu_attention/setup.rs"]
#[allow(dead_code)]
mod setup;

use common::{assert_close, Rng};
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::backend::cuda::attention::layout::{absorbed_layout, mha_layout};
use mla_rt::backend::cuda::{AttentionTuning, CudaBackend, GpuFloat, WideAttention};
use mla_rt::backend::{AttentionBatch, Backend, MhaDims, MlaDims};
use mla_rt::kv::cache_dtype::{CacheRows, Fp8Layout};
use mla_rt::kv::fp8_layout::{MhaFp8Layout, MlaFp8Layout};
use mla_rt::weights::HostTensor;
use setup::*;

const BLOCK: usize = 16;
const SHAPES: &[(usize, usize)] = &[(1, 1), (17, 4), (64, 2), (100, 30), (33, 1), (250, 3)];

fn mla_rows(dims: &MlaDims) -> CacheRows {
    CacheRows::Fp8(Fp8Layout::Mla(MlaFp8Layout {
        latent: dims.kv_lora_rank,
        rope: dims.qk_rope,
    }))
}

/// The kernel the bf16 backend picks for `layout` over `batch`, by name.
fn kernel_name<T: GpuFloat>(
    gpu: &CudaBackend<T>,
    batch: &AttentionBatch,
    layout: &mla_rt::backend::cuda::attention::layout::AttentionLayout,
    tuning: AttentionTuning,
) -> String
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let plan = gpu.device.split_plan(batch, layout, tuning).unwrap();
    plan.shape.kernel().handle.name.to_string()
}

fn cache_pages_match<T: GpuFloat>()
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let gpu = poisoned_gpu::<T>();
    let mut rng = Rng::new(21);
    let layouts = [
        Fp8Layout::Mla(MlaFp8Layout {
            latent: 512,
            rope: 64,
        }),
        // A partial last tile (72 of 128).
        Fp8Layout::Mla(MlaFp8Layout {
            latent: 200,
            rope: 8,
        }),
        Fp8Layout::Mha(MhaFp8Layout {
            kv_heads: 4,
            head_dim: 64,
        }),
        Fp8Layout::Mha(MhaFp8Layout {
            kv_heads: 1,
            head_dim: 24,
        }),
    ];
    for layout in layouts {
        let (batch, num_blocks) = batch(&mut rng, SHAPES, BLOCK);
        let (cpu, gpu_cache) = caches_of(
            &mut rng,
            &gpu,
            &batch,
            num_blocks,
            CacheRows::Fp8(layout),
            0.0,
        );
        let got = gpu.device.fp8_cache_bytes(&gpu_cache, 0).unwrap();
        assert_eq!(got, cpu.layer_bytes(0), "{} {layout:?}", T::SUFFIX);

        // Outliers, a zero row and tiny values, at three slots of a fresh cache.
        let width = layout.width();
        let mut cpu = CpuBackend::EXACT
            .alloc_cache_rows(1, 1, 4, CacheRows::Fp8(layout))
            .unwrap();
        let mut gpu_cache = gpu
            .alloc_cache_rows(1, 1, 4, CacheRows::Fp8(layout))
            .unwrap();
        let mut values = rng.normals(3 * width, 1.0);
        values[5] = 3.0e4;
        values[width + 7] = -1.0e-7;
        values[2 * width..].iter_mut().for_each(|v| *v = 0.0);
        let rows = stored::<T>(HostTensor::new(vec![3, width], values));
        let slots = [2, 0, 3];
        CpuBackend::EXACT
            .write_kv_cache(&mut cpu, 0, &rows, 0, &slots)
            .unwrap();
        let on_gpu = gpu.device.upload(&rows).unwrap();
        gpu.write_kv_cache(&mut gpu_cache, 0, &on_gpu, 0, &slots)
            .unwrap();
        let got = gpu.device.fp8_cache_bytes(&gpu_cache, 0).unwrap();
        assert_eq!(got, cpu.layer_bytes(0), "{} {layout:?} outliers", T::SUFFIX);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_cache_pages_match_the_cpu_bytes_f32() {
    cache_pages_match::<f32>();
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_cache_pages_match_the_cpu_bytes_bf16() {
    cache_pages_match::<half::bf16>();
}

fn mla<T: GpuFloat>(tolerance: f64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let gpu = poisoned_gpu::<T>();
    let mut rng = Rng::new(22);
    for heads in [1, 16, 128] {
        let dims = deepseek_dims(heads);
        let shapes = if heads == 128 { &SHAPES[..3] } else { SHAPES };
        let (batch, num_blocks) = batch(&mut rng, shapes, BLOCK);
        let (cpu_cache, gpu_cache) =
            caches_of(&mut rng, &gpu, &batch, num_blocks, mla_rows(&dims), 0.0);
        let t = batch.num_query_tokens();
        let q = stored::<T>(random(&mut rng, t, heads * dims.qk_head()));
        let q_lat = stored::<T>(random(&mut rng, t, heads * dims.kv_lora_rank));
        let kv_b = stored::<T>(HostTensor::new(
            vec![heads * (dims.qk_nope + dims.v_head), dims.kv_lora_rank],
            rng.normals(heads * 256 * 512, 0.05),
        ));
        let (gq, gq_lat) = (
            gpu.device.upload(&q.clone()).unwrap(),
            gpu.device.upload(&q_lat.clone()).unwrap(),
        );
        // The same step over rows of T first: what the backend prepared for that step must not
        // serve the FP8 cache's (its kernels differ).
        let (_, native) = caches(&mut rng, &gpu, &batch, num_blocks, dims.latent_width(), 0.0);
        gpu.mla_attention_absorbed(&gq_lat, &gq, &native, 0, &batch, &dims)
            .unwrap();
        let want = CpuBackend::EXACT
            .mla_attention_absorbed(&q_lat, &q, &cpu_cache, 0, &batch, &dims)
            .unwrap();
        // The 16-row FP8 build, and from 64 heads the 64-row one.
        let mut tunings = vec![WideAttention::Off];
        if heads >= 64 {
            tunings.push(WideAttention::Mma);
        }
        let layout = absorbed_layout(&dims).with_cache_rows(gpu_cache.fp8);
        for wide in tunings {
            let tuning = AttentionTuning::from(wide);
            if T::BF16 {
                let name = kernel_name(&gpu, &batch, &layout, tuning);
                assert!(name.contains("fp8"), "{heads} heads, {wide:?}: {name}");
            }
            gpu.set_attention_tuning(tuning);
            let got = gpu
                .mla_attention_absorbed(&gq_lat, &gq, &gpu_cache, 0, &batch, &dims)
                .unwrap();
            let what = format!("{} FP8 absorbed, {heads} heads, {wide:?}", T::SUFFIX);
            assert_close(&what, &gpu.to_host(&got).unwrap(), &want, tolerance);
        }
        gpu.set_attention_tuning(AttentionTuning::default());

        let want = CpuBackend::EXACT
            .mla_attention_materialised(&q, &cpu_cache, 0, &batch, &kv_b.clone().into(), &dims)
            .unwrap();
        let g_kv_b = gpu.upload_weight(kv_b).unwrap();
        let got = gpu
            .mla_attention_materialised(&gq, &gpu_cache, 0, &batch, &g_kv_b, &dims)
            .unwrap();
        let what = format!("{} FP8 materialised, {heads} heads", T::SUFFIX);
        assert_close(&what, &gpu.to_host(&got).unwrap(), &want, tolerance);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mla_attention_over_fp8_pages_f32() {
    mla::<f32>(1e-4);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mla_attention_over_fp8_pages_bf16() {
    mla::<half::bf16>(1e-2);
}

fn mha<T: GpuFloat>(tolerance: f64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let gpu = poisoned_gpu::<T>();
    let mut rng = Rng::new(23);
    for (heads, kv_heads, head_dim, window) in [
        (16, 16, 128, None),
        (16, 4, 128, Some(20)),
        (16, 4, 64, None),
        (8, 1, 96, Some(20)),
    ] {
        let dims = MhaDims {
            heads,
            kv_heads,
            head_dim,
            softmax_scale: 1.0 / (head_dim as f32).sqrt(),
            sliding_window: window,
        };
        let (batch, num_blocks) = batch(&mut rng, SHAPES, BLOCK);
        let rows = CacheRows::Fp8(Fp8Layout::Mha(MhaFp8Layout { kv_heads, head_dim }));
        let (cpu_cache, gpu_cache) = caches_of(&mut rng, &gpu, &batch, num_blocks, rows, 0.0);
        let width = 2 * kv_heads * head_dim;
        let q = stored::<T>(random(
            &mut rng,
            batch.num_query_tokens(),
            heads * head_dim + width,
        ));
        let want = CpuBackend::EXACT
            .mha_attention(&q, &cpu_cache, 0, &batch, &dims)
            .unwrap();
        if T::BF16 && head_dim == 128 {
            let layout = mha_layout(&dims, q.shape[1], width).with_cache_rows(gpu_cache.fp8);
            let name = kernel_name(&gpu, &batch, &layout, AttentionTuning::default());
            assert!(name.contains("fp8_head128"), "{dims:?}: {name}");
        }
        let q = gpu.device.upload(&q).unwrap();
        let got = gpu.mha_attention(&q, &gpu_cache, 0, &batch, &dims).unwrap();
        let what = format!(
            "{} FP8 MHA {heads}/{kv_heads} heads × {head_dim}, window {window:?}",
            T::SUFFIX
        );
        assert_close(&what, &gpu.to_host(&got).unwrap(), &want, tolerance);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mha_attention_over_fp8_pages_f32() {
    mha::<f32>(1e-4);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mha_attention_over_fp8_pages_bf16() {
    mha::<half::bf16>(1e-2);
}
