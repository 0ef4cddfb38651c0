//! The CUDA backend's GEMM and row ops against the CPU backend on random inputs of odd sizes,
//! outputs poisoned with NaN first. Needs an NVIDIA GPU: ignored elsewhere.

mod common;

use common::{assert_close, Rng};
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::backend::cuda::{CudaBackend, GpuFloat};
use mla_rt::backend::{Backend, NON_FINITE_ROW};
use mla_rt::weights::HostTensor;

fn random<T: GpuFloat>(rng: &mut Rng, rows: usize, cols: usize) -> HostTensor {
    let data = rng
        .normals(rows * cols, 1.0)
        .into_iter()
        .map(|v| T::from_f32(v).to_f32())
        .collect();
    HostTensor::new(vec![rows, cols], data)
}

fn ops<T: GpuFloat>(tolerance: f64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let gpu = CudaBackend::<T>::open(0)
        .expect("an NVIDIA GPU with kernels in this build")
        .with_poisoned_outputs();
    let mut rng = Rng::new(5);
    let s = T::SUFFIX;
    // A bf16 cache under f32 activations, and FP8 rows the kernels cannot address (14 bytes:
    // scales off a 4-byte boundary), are refused by name.
    use mla_rt::kv::cache_dtype::{CacheRows, Fp8Layout};
    let refused = |rows| {
        gpu.alloc_cache_rows(1, 2, 64, rows)
            .err()
            .unwrap()
            .to_string()
    };
    assert!(refused(CacheRows::Bf16 { width: 576 }).contains("needs bf16 activations"));
    let odd = Fp8Layout::Mha(mla_rt::kv::fp8_layout::MhaFp8Layout {
        kv_heads: 1,
        head_dim: 3,
    });
    assert!(refused(CacheRows::Fp8(odd)).contains("multiple of 4 bytes"));
    for (m, k, n) in [(1, 333, 129), (37, 333, 129), (300, 64, 1000)] {
        let (x, w) = (random::<T>(&mut rng, m, k), random::<T>(&mut rng, n, k));
        let want = CpuBackend::EXACT.matmul(&x, &w.clone().into()).unwrap();
        let got = gpu
            .matmul(
                &gpu.device.upload(&x).unwrap(),
                &gpu.upload_weight(w).unwrap(),
            )
            .unwrap();
        assert_close(
            &format!("{s} matmul {m}×{k}×{n}"),
            &gpu.to_host(&got).unwrap(),
            &want,
            tolerance,
        );
    }
    // Three heads of stride 200, reading columns [72, 200) of each into 50 outputs.
    let (heads, stride, offset, input, out) = (3, 200, 72, 128, 50);
    let x = random::<T>(&mut rng, 7, heads * stride);
    let w = random::<T>(&mut rng, heads * out, input);
    let want = CpuBackend::EXACT
        .head_matmul(
            &x,
            stride,
            offset,
            &CpuBackend::EXACT
                .upload_head_weight(heads, out, input, w.data.clone())
                .unwrap(),
        )
        .unwrap();
    let gw = gpu.upload_head_weight(heads, out, input, w.data).unwrap();
    let got = gpu
        .head_matmul(&gpu.device.upload(&x.clone()).unwrap(), stride, offset, &gw)
        .unwrap();
    assert_close(
        &format!("{s} head_matmul"),
        &gpu.to_host(&got).unwrap(),
        &want,
        tolerance,
    );

    // Greedy sampling on the device: vocabulary-sized rows, one with a tie for the largest value.
    let mut logits = random::<T>(&mut rng, 4, 102_400);
    logits.data[2 * 102_400 + 7] = 50.0;
    logits.data[2 * 102_400 + 99_999] = 50.0;
    let want = CpuBackend::EXACT.argmax_rows(&logits).unwrap();
    let got = gpu
        .argmax_rows(&gpu.device.upload(&logits).unwrap())
        .unwrap();
    assert_eq!(got, want, "{s} argmax_rows");
    assert_eq!(got[2], 7, "{s} argmax_rows: ties go to the lowest index");
    // A row holding a NaN or +inf is marked, on the device as on the host; -inf is a mask.
    let mut logits = random::<T>(&mut rng, 4, 102_400);
    logits.data[102_400 + 50_000] = f32::NAN;
    logits.data[2 * 102_400 + 3] = f32::NEG_INFINITY;
    logits.data[3 * 102_400 + 102_399] = f32::INFINITY;
    let on_gpu = gpu.device.upload(&logits.clone()).unwrap();
    let got = gpu.argmax_rows(&on_gpu).unwrap();
    assert_eq!(got, CpuBackend::EXACT.argmax_rows(&logits).unwrap(), "{s}");
    assert_eq!(
        got.iter().map(|&i| i == NON_FINITE_ROW).collect::<Vec<_>>(),
        [false, true, false, true],
        "{s} argmax_rows of non-finite rows"
    );
    for rows in [
        gpu.top_k_rows(&on_gpu, 8).unwrap(),
        CpuBackend::EXACT.top_k_rows(&logits, 8).unwrap(),
    ] {
        let first_is_nan: Vec<bool> = rows.iter().map(|r| r[0].1.is_nan()).collect();
        assert_eq!(
            first_is_nan,
            [false, true, false, true],
            "{s} top_k_rows of non-finite rows"
        );
    }
    // Top-k candidates for sampling, in the host's order (ties to the lower id), with rows where
    // the k-th value is shared by many columns (the constant row, and bf16's coarse values).
    let mut logits = random::<T>(&mut rng, 4, 50_000);
    logits.data[11] = 9.0;
    logits.data[40_000] = 9.0;
    for (c, v) in logits.data[3 * 50_000..].iter_mut().enumerate() {
        *v = if c % 5_000 == 17 { 1.0 } else { 0.5 };
    }
    let on_gpu = gpu.device.upload(&logits.clone()).unwrap();
    for k in [1, 7, 40, 64] {
        let want = CpuBackend::EXACT.top_k_rows(&logits, k).unwrap();
        let got = gpu.top_k_rows(&on_gpu, k).unwrap();
        assert_eq!(got, want, "{s} top_k_rows, k = {k}");
    }
    let got = gpu.top_k_rows(&on_gpu, 40).unwrap();
    assert_eq!((got[0][0].0, got[0][1].0), (11, 40_000));
    assert_eq!(
        got[3][10],
        (0, 0.5),
        "{s}: the lowest column of the tied values comes first"
    );
    // Each row's total weight at its temperature, for sampling without a top-k.
    let temperatures = [0.7, 1.0, 2.5, 0.3];
    let want = CpuBackend::EXACT
        .softmax_totals(&logits, &temperatures)
        .unwrap();
    let got = gpu.softmax_totals(&on_gpu, &temperatures).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 1e-9 * w,
            "{s} softmax_totals: {got:?} vs {want:?}"
        );
    }
    // Both at once, with one wait for the device: the same candidates and totals.
    let waits = gpu.counters().unwrap().host_waits;
    let (rows_got, totals_got) = gpu.top_k_and_totals(&on_gpu, 40, &temperatures).unwrap();
    assert_eq!(gpu.counters().unwrap().host_waits, waits + 1, "{s}");
    assert_eq!(rows_got, gpu.top_k_rows(&on_gpu, 40).unwrap(), "{s}");
    assert_eq!(totals_got, got, "{s} top_k_and_totals");

    let rows = [5, 0, 5, 6, 2];
    let want = CpuBackend::EXACT.select_rows(&x, &rows).unwrap();
    let got = gpu
        .select_rows(&gpu.device.upload(&x).unwrap(), &rows)
        .unwrap();
    assert_close(
        &format!("{s} select_rows"),
        &gpu.to_host(&got).unwrap(),
        &want,
        0.0,
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemm_and_row_ops_f32() {
    ops::<f32>(1e-5);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemm_and_row_ops_bf16() {
    ops::<half::bf16>(1e-2);
}

/// V2-Lite, V2 and V3 routing on the device against the host's `route` on the same logits.
fn routing<T: GpuFloat>()
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    use mla_rt::config::{MoeConfig, ScoringFunc, TopkMethod};
    use mla_rt::ops::routing::route;
    let gpu = CudaBackend::<T>::open(0).expect("an NVIDIA GPU with kernels in this build");
    let mut rng = Rng::new(9);
    let moe = |experts, k, method, groups, keep, scoring, norm, scale| MoeConfig {
        n_routed_experts: experts,
        n_shared_experts: 1,
        num_experts_per_tok: k,
        moe_intermediate_size: 8,
        first_k_dense_replace: 0,
        moe_layer_freq: 1,
        routed_scaling_factor: scale,
        topk_method: method,
        n_group: groups,
        topk_group: keep,
        norm_topk_prob: norm,
        scoring_func: scoring,
    };
    let cases = [
        moe(
            64,
            6,
            TopkMethod::Greedy,
            1,
            1,
            ScoringFunc::Softmax,
            false,
            1.0,
        ),
        moe(
            160,
            6,
            TopkMethod::GroupLimitedGreedy,
            8,
            3,
            ScoringFunc::Softmax,
            false,
            16.0,
        ),
        moe(
            256,
            8,
            TopkMethod::NoauxTc,
            8,
            4,
            ScoringFunc::Sigmoid,
            true,
            2.5,
        ),
        moe(
            256,
            8,
            TopkMethod::NoauxTc,
            8,
            4,
            ScoringFunc::Sigmoid,
            false,
            1.0,
        ),
    ];
    for (i, config) in cases.iter().enumerate() {
        let e = config.n_routed_experts;
        let logits = random::<T>(&mut rng, 37, e);
        let bias = (config.topk_method == TopkMethod::NoauxTc).then(|| rng.normals(e, 0.1));
        let got = gpu
            .device
            .moe_route(
                &gpu.device.upload::<T>(&logits).unwrap(),
                bias.as_deref(),
                config,
            )
            .unwrap();
        for (t, row) in logits.data.chunks_exact(e).enumerate() {
            let want = route(row, bias.as_deref(), config);
            let ids =
                |r: &[mla_rt::ops::routing::Route]| r.iter().map(|r| r.expert).collect::<Vec<_>>();
            assert_eq!(ids(&got[t]), ids(&want), "{} case {i} token {t}", T::SUFFIX);
            for (g, w) in got[t].iter().zip(&want) {
                assert!(
                    (g.weight - w.weight).abs() <= 1e-5 * w.weight.abs().max(1.0),
                    "{} case {i} token {t}: weight {} vs {}",
                    T::SUFFIX,
                    g.weight,
                    w.weight
                );
            }
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn moe_routing_matches_the_host_f32() {
    routing::<f32>();
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn moe_routing_matches_the_host_bf16() {
    routing::<half::bf16>();
}

/// Benchmark weights generated on the device equal the host's, bit for bit (f32).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn generated_weights_match_the_host() {
    use mla_rt::weights::{RandomWeights, TensorSource};
    let gpu = CudaBackend::<f32>::open(0).expect("an NVIDIA GPU with kernels in this build");
    let source = RandomWeights { seed: 3 };
    for (name, shape) in [
        (
            "model.layers.0.mlp.experts.3.up_proj.weight",
            vec![1408, 2048],
        ),
        ("model.embed_tokens.weight", vec![1000, 333]),
        ("model.layers.0.input_layernorm.weight", vec![2048]),
        ("model.layers.0.self_attn.q_proj.bias", vec![77]),
    ] {
        let fill = source.random_fill(name, &shape).unwrap();
        let got = gpu.generate_weight(&shape, &fill).unwrap().unwrap();
        let want = source.load(name, &shape).unwrap();
        let got = gpu.to_host(got.dense("test").unwrap()).unwrap();
        assert_eq!(got.data, want.data, "{name}");
    }
}

/// `mla info --device cuda --kv-cache-dtype`: the tokens that fit follow the cache's bytes
/// (demo-mla: 960 bytes per token in bf16, 600 in FP8).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn info_counts_the_tokens_of_the_chosen_cache_dtype() {
    let fit = |dtype: &str| -> u64 {
        let out = common::mla(&["info", "--device", "cuda", "--kv-cache-dtype", dtype]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text.lines().find(|l| l.starts_with("device:")).unwrap();
        let before = line.split(" tokens of KV cache fit").next().unwrap();
        before.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (bf16, fp8) = (fit("bf16"), fit("fp8"));
    assert!(bf16 > 0);
    assert!(
        (fp8 as f64 - bf16 as f64 * 1.6).abs() <= 2.0,
        "{bf16} {fp8}"
    );
}
