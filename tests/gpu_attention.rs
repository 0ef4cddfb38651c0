//! The CUDA backend's attention ops against the CPU backend's on random paged caches: batches
//! of sequences of different lengths (not multiples of the block size), shuffled block tables,
//! unused slots left NaN (a stray read shows), 1–4 query tokens per sequence plus a prefill
//! chunk, 1/16/128 heads, decode batches of 64 sequences of up to 8192 tokens, blocks of 16
//! tokens and (absorbed, bf16) of 32, 64 and 128, queries opposed to every cached row (a key
//! seen by mistake dominates), more 64-row units than SMs (CTAs that serve several in turn);
//! f32 (≤ 1e-4 relative L2) and bf16 (≤ 1e-2), and in bf16 each row's log-sum-exp (≤ 1e-3 of an
//! f64 reference) and, for small steps, the same output bits without it.
//! Needs an NVIDIA GPU: ignored elsewhere.

mod common;
#[path = "gpu_attention/setup.rs"]
mod setup;

use common::{assert_close, Rng};
use mla_rt::backend::cpu::CpuBackend;
#[cfg(feature = "experimental-kernels")]
use mla_rt::backend::cuda::attention::layout::{materialised_layout, mha_layout};
use mla_rt::backend::cuda::{AttentionTuning, CudaBackend, GpuFloat};
#[cfg(feature = "experimental-kernels")]
use mla_rt::backend::cuda::{SplitCombine, WideAttention};
use mla_rt::backend::{AttentionBatch, Backend, MhaDims};
use mla_rt::weights::HostTensor;
use setup::*;

/// The block size of most tests: the smallest, so that a tile of tokens crosses the most pages.
const BLOCK: usize = 16;
/// (token, head) rows of the steps that check_absorbed also runs without the LSE (the large
/// ones would double the tests' time on cuda-emu).
const SMALL_STEP_ROWS: usize = 1024;

const SHAPES: &[(usize, usize)] = &[(1, 1), (17, 4), (64, 2), (100, 30), (33, 1), (250, 3)];

fn mla<T: GpuFloat>(tolerance: f64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let gpu = poisoned_gpu::<T>();
    let mut rng = Rng::new(11);
    for heads in [1, 16, 128] {
        let dims = deepseek_dims(heads);
        let shapes = if heads == 128 { &SHAPES[..3] } else { SHAPES };
        let (batch, num_blocks) = batch(&mut rng, shapes, BLOCK);
        let (cpu_cache, gpu_cache) =
            caches(&mut rng, &gpu, &batch, num_blocks, dims.latent_width(), 0.0);
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
        let want = CpuBackend::EXACT
            .mla_attention_absorbed(&q_lat, &q, &cpu_cache, 0, &batch, &dims)
            .unwrap();
        for_each_latent_kernel(&gpu, heads, |tuning| {
            let got = gpu
                .mla_attention_absorbed(&gq_lat, &gq, &gpu_cache, 0, &batch, &dims)
                .unwrap();
            let what = format!("{} absorbed, {heads} heads, {tuning:?}", T::SUFFIX);
            assert_close(&what, &gpu.to_host(&got).unwrap(), &want, tolerance);
        });

        let want = CpuBackend::EXACT
            .mla_attention_materialised(&q, &cpu_cache, 0, &batch, &kv_b.clone().into(), &dims)
            .unwrap();
        let g_kv_b = gpu.upload_weight(kv_b).unwrap();
        for_each_combine(&gpu, |combine| {
            let got = gpu
                .mla_attention_materialised(&gq, &gpu_cache, 0, &batch, &g_kv_b, &dims)
                .unwrap();
            let what = format!("{} materialised, {heads} heads, {combine:?}", T::SUFFIX);
            assert_close(&what, &gpu.to_host(&got).unwrap(), &want, tolerance);
        });
        #[cfg(feature = "experimental-kernels")]
        if shapes.iter().any(|&(context, _)| context > 128) {
            // Longer than one split's minimum: some row group has several.
            assert_last_cta_ran(&gpu, &batch, &materialised_layout(&dims));
        }
        // The same with every sequence expanded on its own (the grouping of big batches).
        gpu.set_materialised_bytes(1);
        let got = gpu
            .mla_attention_materialised(&gq, &gpu_cache, 0, &batch, &g_kv_b, &dims)
            .unwrap();
        gpu.set_materialised_bytes(usize::MAX);
        let what = format!(
            "{} materialised one sequence at a time, {heads} heads",
            T::SUFFIX
        );
        assert_close(&what, &gpu.to_host(&got).unwrap(), &want, tolerance);
    }
}

/// The absorbed form on the GPU against the CPU for `heads` heads and sequences `shapes`
/// (context, query tokens) in blocks of `block` tokens, and in bf16 (the tensor-core kernels)
/// the rows' log-sum-exp against the f64 reference; returns the batch.
fn check_absorbed<T: GpuFloat>(
    gpu: &CudaBackend<T>,
    rng: &mut Rng,
    heads: usize,
    shapes: &[(usize, usize)],
    block: usize,
    tolerance: f64,
) -> AttentionBatch
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    check_absorbed_opposed(gpu, rng, heads, shapes, block, tolerance, 0.0)
}

/// [`check_absorbed`] with the cached rows around `bias` and the queries around `-bias`: from
/// a bias of 1, every real score is about −40 (scaled), so a key the kernel should not see but
/// scores anyway (a zero row past a split's end, a padded tile) outweighs them all.
fn check_absorbed_opposed<T: GpuFloat>(
    gpu: &CudaBackend<T>,
    rng: &mut Rng,
    heads: usize,
    shapes: &[(usize, usize)],
    block: usize,
    tolerance: f64,
    bias: f32,
) -> AttentionBatch
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let dims = deepseek_dims(heads);
    let (batch, num_blocks) = batch(rng, shapes, block);
    let (cpu_cache, gpu_cache) = caches(rng, gpu, &batch, num_blocks, dims.latent_width(), bias);
    let t = batch.num_query_tokens();
    let q = stored::<T>(biased(rng, t, heads * dims.qk_head(), -bias));
    let q_lat = stored::<T>(biased(rng, t, heads * dims.kv_lora_rank, -bias));
    let want = CpuBackend::EXACT
        .mla_attention_absorbed(&q_lat, &q, &cpu_cache, 0, &batch, &dims)
        .unwrap();
    let (gq_lat, gq) = (
        gpu.device.upload(&q_lat.clone()).unwrap(),
        gpu.device.upload(&q.clone()).unwrap(),
    );
    let (got, lse) = gpu
        .mla_attention_absorbed_lse(&gq_lat, &gq, &gpu_cache, 0, &batch, &dims)
        .unwrap();
    let what = format!(
        "{} absorbed, {heads} heads × {} sequences, bias {bias}",
        T::SUFFIX,
        shapes.len()
    );
    let got = gpu.to_host(&got).unwrap();
    assert_close(&what, &got, &want, tolerance);
    if t * heads <= SMALL_STEP_ROWS {
        // As the model asks for it, without the LSE (no buffer; the kernels and the combine
        // skip its writes): the same kernels on the same schedule, so the same bits.
        let without_lse = gpu
            .mla_attention_absorbed(&gq_lat, &gq, &gpu_cache, 0, &batch, &dims)
            .unwrap();
        assert_eq!(
            gpu.to_host(&without_lse).unwrap().data,
            got.data,
            "{what}: the output without the LSE"
        );
    }
    let Some(lse) = lse else {
        assert_ne!(
            T::SUFFIX,
            "bf16",
            "{what}: the tensor-core path gave no LSE"
        );
        return batch;
    };
    assert_eq!((lse.rows, lse.cols), (t, heads), "{what}: LSE shape");
    let lse = gpu.device.download(&lse).unwrap();
    let want_lse = absorbed_lse(&q_lat, &q, &cpu_cache, &batch, &dims);
    for (row, (&got, &want)) in lse.data.iter().zip(&want_lse).enumerate() {
        // Scores in f32 from the same bf16 inputs: only summation order and exp2/log2
        // differ. A NaN fails.
        assert!(
            (got as f64 - want).abs() <= 1e-3 * want.abs().max(1.0),
            "{what}: LSE of row {row} (token {}, head {}): {got} against {want}",
            row / heads,
            row % heads
        );
    }
    batch
}

/// Decode-sized batches: 64 sequences of 1..8192 cached tokens (16 heads) and 8 of them with
/// 128 heads, 1–4 query tokens each, through the absorbed form (the tensor-core kernel in bf16).
fn mla_decode_batches<T: GpuFloat>(tolerance: f64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let gpu = poisoned_gpu::<T>();
    let mut rng = Rng::new(13);
    for (heads, sequences) in [(16, 64), (128, 8)] {
        let shapes: Vec<(usize, usize)> = (0..sequences)
            .map(|i| {
                let context = 1 + (i * 2654435761usize) % 8192;
                (context, (1 + i % 4).min(context))
            })
            .collect();
        check_absorbed(&gpu, &mut rng, heads, &shapes, BLOCK, tolerance);
    }
}

/// Enough short sequences that every row group gets one split: the tensor-core kernels write
/// the output themselves (no combine), for each kernel that serves the heads.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mla_one_split_per_row_group_bf16() {
    let gpu = poisoned_gpu::<half::bf16>();
    let mut rng = Rng::new(14);
    for (heads, sequences) in [(16, 300), (128, 70)] {
        let shapes: Vec<(usize, usize)> = (0..sequences).map(|i| (20 + i % 50, 1)).collect();
        for_each_latent_kernel(&gpu, heads, |tuning| {
            let batch = check_absorbed(&gpu, &mut rng, heads, &shapes, BLOCK, 1e-2);
            let schedule = tc_shape(&gpu, &batch, heads, tuning);
            assert!(
                schedule.direct(),
                "{heads} heads, {tuning:?}: {:?}",
                schedule.kernel()
            );
        });
    }
}

/// More 64-row units than the GPU holds CTAs at once, through the persistent wgmma kernel: CTAs
/// that serve several units in turn, each loading the next one's queries and first tile while
/// finishing one, across sequences of different lengths and query tokens, with and without
/// splits. Hopper only (elsewhere there is no wgmma kernel to run).
#[cfg(feature = "experimental-kernels")]
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mla_persistent_ctas_bf16() {
    let gpu = poisoned_gpu::<half::bf16>();
    if !gpu.device.info.hopper() {
        eprintln!("{}: no wgmma kernels on this GPU", gpu.device.info.name);
        return;
    }
    let mut rng = Rng::new(17);
    let ctas = gpu.device.info.multiprocessors;
    // Units of one query token (2 per sequence at 128 heads) and of several; two long contexts
    // take several splits, so that some units write partial rows for the combine.
    let mut shapes: Vec<(usize, usize)> = (0..ctas * 3 / 4)
        .map(|i| (3 + (i * 2654435761usize) % 200, 1 + i % 3))
        .collect();
    shapes.extend([(5000, 1), (3000, 2)]);
    // The splits merged by the combine kernel, then by the last CTA of each row group (a CTA
    // that merges a group before it serves its next unit).
    for combine in [SplitCombine::Kernel, SplitCombine::LastCta] {
        let tuning = AttentionTuning {
            combine,
            ..AttentionTuning::from(WideAttention::WgmmaPersistent)
        };
        gpu.set_attention_tuning(tuning);
        let batch = check_absorbed(&gpu, &mut rng, 128, &shapes, 64, 1e-2);
        gpu.set_attention_tuning(AttentionTuning::default());
        let shape = tc_shape(&gpu, &batch, 128, tuning);
        assert_eq!(shape.ctas(), ctas, "{:?}", shape.kernel());
        assert!(
            shape.units() > ctas && shape.max_splits() > 1 && shape.combine() == combine,
            "{} units, {} splits, {:?}",
            shape.units(),
            shape.max_splits(),
            shape.combine()
        );
    }
}

/// Schedules of few CTAs (a fiftieth of a wave): every row group's split spans many tiles, in
/// odd and even counts, the last one partial, with rows at different positions, through each
/// kernel that serves the latent.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mla_long_splits_bf16() {
    let gpu = poisoned_gpu::<half::bf16>();
    let mut rng = Rng::new(18);
    let shapes = [(900, 1), (333, 2), (197, 1)];
    for heads in [16, 128] {
        for tuning in latent_kernels(&gpu, heads) {
            let tuning = AttentionTuning {
                waves: 0.02,
                ..tuning
            };
            gpu.set_attention_tuning(tuning);
            let batch = check_absorbed(&gpu, &mut rng, heads, &shapes, BLOCK, 1e-2);
            let schedule = tc_shape(&gpu, &batch, heads, tuning);
            // At most three splits per row group: every split has 100+ tokens, most of them
            // several tiles.
            assert!(schedule.max_splits() <= 3, "{heads} heads, {tuning:?}");
        }
    }
    gpu.set_attention_tuning(AttentionTuning::default());
}

/// The splits merged inside the attention kernel by the CTA that finishes each row group's
/// last one (a dozen splits; groups of one split too, and the empty runs that fill the
/// seesaw kernels' 64-row units at 16 heads), through each kernel that serves the latent:
/// a split's rows read before another CTA has stored them, or a counter left nonzero for the
/// next launch (each case runs twice), shows.
#[cfg(feature = "experimental-kernels")]
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mla_last_cta_combine_bf16() {
    let gpu = poisoned_gpu::<half::bf16>();
    let mut rng = Rng::new(19);
    let cases: [(usize, &[(usize, usize)]); 2] = [
        (16, &[(1500, 1), (700, 3), (90, 2)]),
        (128, &[(1500, 2), (800, 1), (64, 1)]),
    ];
    for (heads, shapes) in cases {
        for tuning in latent_kernels(&gpu, heads) {
            let tuning = AttentionTuning {
                combine: SplitCombine::LastCta,
                ..tuning
            };
            gpu.set_attention_tuning(tuning);
            let batch = check_absorbed(&gpu, &mut rng, heads, shapes, BLOCK, 1e-2);
            let schedule = tc_shape(&gpu, &batch, heads, tuning);
            assert!(
                schedule.combine() == SplitCombine::LastCta && schedule.max_splits() > 2,
                "{heads} heads, {tuning:?}: {} splits, {:?}",
                schedule.max_splits(),
                schedule.combine()
            );
        }
    }
    gpu.set_attention_tuning(AttentionTuning::default());
}

/// The other block sizes a cache may have (32, 64: the default, 128), with one long sequence
/// alone — dozens of splits of one row group, more than the combine's eight warps load in one
/// batch of eight splits each — and a ragged batch, through each kernel that serves the heads.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mla_block_sizes_bf16() {
    let gpu = poisoned_gpu::<half::bf16>();
    let mut rng = Rng::new(15);
    let cases: [(usize, &[(usize, usize)]); 3] = [
        (16, &[(8500, 1)]),
        (16, &[(300, 1), (129, 2), (1000, 4), (64, 1), (7, 3)]),
        (128, &[(900, 1), (200, 2)]),
    ];
    for block in [32, 64, 128] {
        for (heads, shapes) in cases {
            for_each_latent_kernel(&gpu, heads, |tuning| {
                let batch = check_absorbed(&gpu, &mut rng, heads, shapes, block, 1e-2);
                if shapes.len() == 1 {
                    let schedule = tc_shape(&gpu, &batch, heads, tuning);
                    assert!(schedule.max_splits() > 64, "{:?}", schedule.kernel());
                }
            });
        }
    }
}

/// Queries opposed to every cached row (all real scores about −40): a key scored past a split's
/// end or a tile's last token would dominate the softmax and the LSE. Lengths end anywhere in
/// a tile, one long sequence has many splits (of multiples of 32 tokens: mid-tile for the
/// 64-token tiles, but for the tensor-map build's multiples of 64), and some sequences have
/// several query tokens, through each latent kernel.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mla_opposed_queries_bf16() {
    let gpu = poisoned_gpu::<half::bf16>();
    let mut rng = Rng::new(16);
    let cases: [(usize, &[(usize, usize)]); 5] = [
        (16, &[(3000, 1)]),
        (16, &[(95, 1), (33, 2), (161, 4), (1, 1), (500, 3)]),
        (16, &[(95, 1), (33, 2), (1, 1), (127, 3)]), // one split each: no combine
        (128, &[(2000, 1)]),
        (128, &[(95, 1), (161, 2), (31, 1)]),
    ];
    for block in [16, 64] {
        for (heads, shapes) in cases {
            for_each_latent_kernel(&gpu, heads, |tuning| {
                let batch = check_absorbed_opposed(&gpu, &mut rng, heads, shapes, block, 1e-2, 1.0);
                if shapes.iter().all(|&(context, _)| context < 128) {
                    let schedule = tc_shape(&gpu, &batch, heads, tuning);
                    assert!(schedule.direct(), "{heads} heads, {tuning:?}: splits");
                }
            });
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mla_decode_batches_f32() {
    mla_decode_batches::<f32>(1e-4);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mla_decode_batches_bf16() {
    mla_decode_batches::<half::bf16>(1e-2);
}

fn mha<T: GpuFloat>(tolerance: f64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let gpu = poisoned_gpu::<T>();
    let mut rng = Rng::new(12);
    for (heads, kv_heads, head_dim, window) in [
        (16, 16, 128, None),
        (16, 4, 64, None),
        (8, 1, 96, Some(20)),
        (1, 1, 32, None),
    ] {
        let dims = MhaDims {
            heads,
            kv_heads,
            head_dim,
            softmax_scale: 1.0 / (head_dim as f32).sqrt(),
            sliding_window: window,
        };
        let (batch, num_blocks) = batch(&mut rng, SHAPES, BLOCK);
        let width = 2 * kv_heads * head_dim;
        let (cpu_cache, gpu_cache) = caches(&mut rng, &gpu, &batch, num_blocks, width, 0.0);
        // A fused qkv tensor: the query heads come first, K and V columns follow.
        let q = stored::<T>(random(
            &mut rng,
            batch.num_query_tokens(),
            heads * head_dim + width,
        ));
        let want = CpuBackend::EXACT
            .mha_attention(&q, &cpu_cache, 0, &batch, &dims)
            .unwrap();
        let q = gpu.device.upload(&q).unwrap();
        for_each_combine(&gpu, |combine| {
            let got = gpu.mha_attention(&q, &gpu_cache, 0, &batch, &dims).unwrap();
            let what = format!(
                "{} MHA {heads}/{kv_heads} heads × {head_dim}, window {window:?}, {combine:?}",
                T::SUFFIX
            );
            assert_close(&what, &gpu.to_host(&got).unwrap(), &want, tolerance);
        });
        #[cfg(feature = "experimental-kernels")]
        if window.is_none() {
            // (A window of 20 tokens leaves every row group one split.)
            assert_last_cta_ran(&gpu, &batch, &mha_layout(&dims, q.cols, width));
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mla_attention_f32() {
    mla::<f32>(1e-4);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mla_attention_bf16() {
    mla::<half::bf16>(1e-2);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mha_attention_f32() {
    mha::<f32>(1e-4);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn mha_attention_bf16() {
    mha::<half::bf16>(1e-2);
}
