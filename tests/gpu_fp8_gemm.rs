//! The GPU's FP8 GEMM (block-scaled FP8 weights kept as FP8, activations quantized per row per
//! 128 columns) against its host reference `mla_rt::ops::fp8_matmul`: the quantized activations
//! bit for bit, products within bf16 rounding, on shapes with partial row, column and k blocks;
//! the fused gate+up of an MLP; grouped FP8 experts, eagerly and replayed from a CUDA graph; the
//! shapes that stay dense; `--fp8-activations` (exact stays dense, dynamic in f32 equals the CPU's
//! dynamic product); the ops that take no FP8 weight. Outputs are poisoned with NaN first.
//! Needs an NVIDIA GPU (compute capability 8.9+ for the FP8 builds): ignored elsewhere.

mod common;

use common::{rel_l2, Rng};
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::backend::cuda::{CudaBackend, CudaWeight, MoePath};
use mla_rt::backend::{Backend, MlpWeights, MoeWeights};
use mla_rt::config::quantization::{Fp8Activations, Fp8Blocks};
use mla_rt::config::{MoeConfig, ScoringFunc, TopkMethod};
use mla_rt::ops::fp8_matmul::{fp8_matmul, quantize_rows};
use mla_rt::weights::fp8::Fp8Matrix;
use mla_rt::weights::HostTensor;

type Bf16 = half::bf16;

const BLOCKS: Fp8Blocks = Fp8Blocks::DEEPSEEK;

fn gpu() -> CudaBackend<Bf16> {
    let gpu = CudaBackend::<Bf16>::open(0)
        .expect("an NVIDIA GPU with kernels in this build")
        .with_poisoned_outputs();
    assert!(
        gpu.multiplies_fp8(),
        "the FP8 GEMM needs compute capability 8.9+"
    );
    gpu
}

/// bf16 values, one large outlier per row (the per-128 scales must absorb it).
fn activations(rng: &mut Rng, rows: usize, cols: usize) -> HostTensor {
    let mut data = rng.normals(rows * cols, 1.0);
    for (r, row) in data.chunks_exact_mut(cols).enumerate() {
        row[(r * 37) % cols] = 40.0;
    }
    let data = data
        .into_iter()
        .map(|v| Bf16::from_f32(v).to_f32())
        .collect();
    HostTensor::new(vec![rows, cols], data)
}

fn weight(rng: &mut Rng, rows: usize, cols: usize) -> Fp8Matrix {
    Fp8Matrix::quantize(&rng.normals(rows * cols, 0.05), rows, cols, BLOCKS)
}

/// Every row of `got` within `tolerance` of `want` (row-major, `cols` wide).
fn assert_rows_close(what: &str, got: &[f32], want: &[f64], cols: usize, tolerance: f64) {
    let worst = got
        .chunks_exact(cols)
        .zip(want.chunks_exact(cols))
        .map(|(g, w)| rel_l2(g, w))
        .fold(0.0f64, f64::max);
    assert!(
        worst <= tolerance,
        "{what}: worst row {worst:.3e} > {tolerance:e}"
    );
    eprintln!("{what}: worst row {worst:.2e}");
}

/// Rows within 1e-5 of `want`, but for a tenth at most within 2e-2: a second quantization (the
/// MLP's hidden rows) sees values the devices summed in different orders, and one that lies at
/// a code midpoint rounds to the neighbouring code on one of them (a step of 6% of that value,
/// ~1e-3 of its row's output), as the same product computed twice in different orders may.
fn assert_rows_close_but_flips(what: &str, got: &[f32], want: &[f64], cols: usize) {
    let errors: Vec<f64> = got
        .chunks_exact(cols)
        .zip(want.chunks_exact(cols))
        .map(|(g, w)| rel_l2(g, w))
        .collect();
    let flipped = errors.iter().filter(|&&e| e > 1e-5).count();
    let worst = errors.iter().cloned().fold(0.0f64, f64::max);
    assert!(
        worst <= 2e-2 && flipped * 10 <= errors.len(),
        "{what}: {flipped} of {} rows over 1e-5, worst {worst:.3e}",
        errors.len()
    );
    eprintln!("{what}: worst row {worst:.2e}, {flipped} rows over 1e-5");
}

fn bf16_round(v: f64) -> f64 {
    Bf16::from_f64(v).to_f64()
}

/// Dense projections: 1, 3 and 5 rows (16-row build), 64 and 70 (64-row build: on a Hopper GPU
/// the wgmma one, and the mma.sync one); k with a partial 128 block (208, 576) or none; n with a
/// partial 64-column CTA and a partial 128-row scale block. With fewer tiles than SMs k is split
/// (2 to 16 ways here), but for one k block (128 × 200) and for 8,500 columns (133 tiles).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_matmul_matches_its_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(26);
    let shapes = [
        (1, 256, 192),
        (5, 208, 200),
        (70, 576, 130),
        (64, 2048, 64),
        (3, 128, 200),
        (2, 256, 8500),
    ];
    for (m, k, n) in shapes {
        let what = format!("fp8 matmul {m}×{k}×{n}");
        let x = activations(&mut rng, m, k);
        let w = weight(&mut rng, n, k);
        let x_gpu = gpu.device.upload::<Bf16>(&x).unwrap();
        assert_eq!(
            gpu.quantized_rows(&x_gpu).unwrap(),
            quantize_rows(&x.data, k),
            "{what}: quantized activations"
        );
        let w_gpu = gpu.upload_fp8_weight(w.clone()).unwrap();
        assert!(matches!(w_gpu, CudaWeight::Fp8(_)), "{what}: kept as FP8");
        let got = gpu.to_host(&gpu.matmul(&x_gpu, &w_gpu).unwrap()).unwrap();
        let want: Vec<f64> = fp8_matmul(&quantize_rows(&x.data, k), &w)
            .into_iter()
            .map(bf16_round)
            .collect();
        assert_rows_close(&what, &got.data, &want, n, 4e-3);
        // 64+ rows on a Hopper GPU took the wgmma build: the mma.sync one too.
        if m >= 64 && gpu.device.info.hopper() {
            gpu.set_fp8_wgmma(false);
            let mma = gpu.to_host(&gpu.matmul(&x_gpu, &w_gpu).unwrap()).unwrap();
            gpu.set_fp8_wgmma(true);
            assert_rows_close(&format!("{what} mma.sync"), &mma.data, &want, n, 4e-3);
        }
        // Against the CPU engine's exact product (dequantized weights, unquantized x): the
        // activations' quantization is the whole difference.
        let exact = CpuBackend::EXACT
            .matmul(&x, &w.dequantize().into())
            .unwrap();
        let exact: Vec<f64> = exact.data.iter().map(|&v| v as f64).collect();
        assert_rows_close(
            &format!("{what} vs unquantized x"),
            &got.data,
            &exact,
            n,
            6e-2,
        );
    }
}

/// A SwiGLU MLP of FP8 weights: gate and up in one fused GEMM, its output quantized again for
/// down.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_mlp_matches_its_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(7);
    for (m, hidden, inter) in [(3, 256, 176), (80, 192, 320)] {
        let what = format!("fp8 mlp {m}×{hidden}→{inter}");
        let x = activations(&mut rng, m, hidden);
        let [gate, up, down] = [
            weight(&mut rng, inter, hidden),
            weight(&mut rng, inter, hidden),
            weight(&mut rng, hidden, inter),
        ];
        let upload = |w: &Fp8Matrix| gpu.upload_fp8_weight(w.clone()).unwrap();
        let mlp = MlpWeights {
            gate: upload(&gate),
            up: upload(&up),
            down: upload(&down),
            biases: None,
        };
        let x_gpu = gpu.device.upload::<Bf16>(&x).unwrap();
        let got = gpu.to_host(&gpu.mlp(&x_gpu, &mlp).unwrap()).unwrap();
        gpu.set_fp8_wgmma(false);
        let mma = gpu.to_host(&gpu.mlp(&x_gpu, &mlp).unwrap()).unwrap();
        gpu.set_fp8_wgmma(true);
        let xq = quantize_rows(&x.data, hidden);
        let (g, u) = (fp8_matmul(&xq, &gate), fp8_matmul(&xq, &up));
        let h: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| bf16_round(g / (1.0 + (-g).exp()) * u) as f32)
            .collect();
        let want = fp8_matmul(&quantize_rows(&h, inter), &down);
        assert_rows_close(&what, &got.data, &want, hidden, 1e-2);
        assert_rows_close(&format!("{what} mma.sync"), &mma.data, &want, hidden, 1e-2);
    }
}

/// What the FP8 GEMM does not take stays dense, with the FP8 weight's exact values: rows that
/// are not whole 16-byte pieces, blocks other than 128 × 128, and f32 activations.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn other_fp8_weights_are_dequantized_at_load() {
    let gpu = gpu();
    let mut rng = Rng::new(3);
    let odd = Fp8Matrix::quantize(&rng.normals(40 * 100, 0.05), 40, 100, BLOCKS);
    let small_blocks = Fp8Blocks { rows: 64, cols: 64 };
    let other = Fp8Matrix::quantize(&rng.normals(40 * 128, 0.05), 40, 128, small_blocks);
    for (what, w) in [("100 columns", odd), ("64 × 64 blocks", other)] {
        let x = activations(&mut rng, 3, w.cols);
        let w_gpu = gpu.upload_fp8_weight(w.clone()).unwrap();
        assert!(matches!(w_gpu, CudaWeight::Dense(_)), "{what}");
        let x_gpu = gpu.device.upload::<Bf16>(&x).unwrap();
        let got = gpu.to_host(&gpu.matmul(&x_gpu, &w_gpu).unwrap()).unwrap();
        let want = CpuBackend::EXACT
            .matmul(&x, &w.dequantize().into())
            .unwrap();
        let want: Vec<f64> = want.data.iter().map(|&v| v as f64).collect();
        assert_rows_close(what, &got.data, &want, w.rows, 1e-2);
    }
    let f32_gpu = CudaBackend::<f32>::open(0).unwrap();
    let w = weight(&mut rng, 64, 128);
    assert!(!f32_gpu.multiplies_fp8());
    assert!(matches!(
        f32_gpu.upload_fp8_weight(w).unwrap(),
        CudaWeight::Dense(_)
    ));
}

fn mlp_of<B: Backend>(gate: B::Weight, up: B::Weight, down: B::Weight) -> MlpWeights<B> {
    MlpWeights {
        gate,
        up,
        down,
        biases: None,
    }
}

/// `--fp8-activations`: `exact` keeps even a bf16 GPU's FP8 weights dense; `dynamic` in f32
/// runs the f32 builds of the FP8 GEMM (split and unsplit, 16- and 64-row), the fused MLP and
/// the grouped experts, each equal to the CPU's `dynamic` product to f32 rounding (the CPU
/// dequantizes the codes it quantized and multiplies in f32), but for codes a second
/// quantization may tip.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_activations_choose_the_product() {
    let exact = gpu();
    exact.set_fp8_activations(Fp8Activations::Exact).unwrap();
    let mut rng = Rng::new(17);
    assert!(matches!(
        exact.upload_fp8_weight(weight(&mut rng, 64, 128)).unwrap(),
        CudaWeight::Dense(_)
    ));
    let f32_gpu = CudaBackend::<f32>::open(0).unwrap().with_poisoned_outputs();
    f32_gpu
        .set_fp8_activations(Fp8Activations::Dynamic)
        .unwrap();
    let cpu = CpuBackend::DYNAMIC_FP8;
    let upload = |w: &Fp8Matrix| {
        let got = f32_gpu.upload_fp8_weight(w.clone()).unwrap();
        assert!(matches!(got, CudaWeight::Fp8(_)));
        (got, cpu.upload_fp8_weight(w.clone()).unwrap())
    };
    let as_f64 = |t: HostTensor| t.data.iter().map(|&v| v as f64).collect::<Vec<_>>();
    for (m, k, n) in [(1, 256, 192), (70, 576, 130), (2, 256, 8500)] {
        let what = format!("f32 fp8 matmul {m}×{k}×{n}");
        let x = activations(&mut rng, m, k);
        let (w_gpu, w_cpu) = upload(&weight(&mut rng, n, k));
        let x_gpu = f32_gpu.device.upload::<f32>(&x).unwrap();
        let got = f32_gpu
            .to_host(&f32_gpu.matmul(&x_gpu, &w_gpu).unwrap())
            .unwrap();
        let want = as_f64(cpu.matmul(&x, &w_cpu).unwrap());
        assert_rows_close(&what, &got.data, &want, n, 1e-6);
    }
    let (m, hidden, inter) = (5, 256, 176);
    let x = activations(&mut rng, m, hidden);
    let [(gate, gate_cpu), (up, up_cpu), (down, down_cpu)] = [
        upload(&weight(&mut rng, inter, hidden)),
        upload(&weight(&mut rng, inter, hidden)),
        upload(&weight(&mut rng, hidden, inter)),
    ];
    let x_gpu = f32_gpu.device.upload::<f32>(&x).unwrap();
    let got = f32_gpu.mlp(&x_gpu, &mlp_of(gate, up, down)).unwrap();
    let want = as_f64(cpu.mlp(&x, &mlp_of(gate_cpu, up_cpu, down_cpu)).unwrap());
    let got = f32_gpu.to_host(&got).unwrap();
    assert_rows_close_but_flips("f32 fp8 mlp", &got.data, &want, hidden);
    let layer = fp8_moe(&mut rng, 16, 4, hidden, inter);
    let x = activations(&mut rng, 40, hidden);
    let want = cpu
        .moe(&x, &moe_weights(&cpu, &layer), &layer.config)
        .unwrap();
    let x_gpu = f32_gpu.device.upload::<f32>(&x).unwrap();
    let w = moe_weights(&f32_gpu, &layer);
    let got = f32_gpu.moe(&x_gpu, &w, &layer.config).unwrap();
    let got = f32_gpu.to_host(&got).unwrap();
    assert_rows_close_but_flips("f32 fp8 experts", &got.data, &as_f64(want), hidden);
}

/// A layer of FP8 experts: `experts` routed experts of `hidden → inter` and one shared MLP
/// alike, greedy top-`k` softmax routing.
struct Fp8Moe {
    config: MoeConfig,
    routed: Vec<[Fp8Matrix; 3]>,
    shared: [Fp8Matrix; 3],
    router: HostTensor,
}

fn fp8_moe(rng: &mut Rng, experts: usize, k: usize, hidden: usize, inter: usize) -> Fp8Moe {
    let config = MoeConfig {
        n_routed_experts: experts,
        n_shared_experts: 1,
        num_experts_per_tok: k,
        moe_intermediate_size: inter,
        first_k_dense_replace: 0,
        moe_layer_freq: 1,
        routed_scaling_factor: 1.0,
        topk_method: TopkMethod::Greedy,
        n_group: 1,
        topk_group: 1,
        norm_topk_prob: false,
        scoring_func: ScoringFunc::Softmax,
    };
    let mut mlp = || {
        [
            weight(rng, inter, hidden),
            weight(rng, inter, hidden),
            weight(rng, hidden, inter),
        ]
    };
    let routed = (0..experts).map(|_| mlp()).collect();
    let shared = mlp();
    let router = rng.normals(experts * hidden, 0.5);
    let router = router.iter().map(|&v| Bf16::from_f32(v).to_f32()).collect();
    Fp8Moe {
        config,
        routed,
        shared,
        router: HostTensor::new(vec![experts, hidden], router),
    }
}

/// The layer's weights on backend `b` (FP8 where `b` keeps FP8 weights).
fn moe_weights<B: Backend>(b: &B, m: &Fp8Moe) -> MoeWeights<B> {
    let mlp = |[g, u, d]: &[Fp8Matrix; 3]| MlpWeights {
        gate: b.upload_fp8_weight(g.clone()).unwrap(),
        up: b.upload_fp8_weight(u.clone()).unwrap(),
        down: b.upload_fp8_weight(d.clone()).unwrap(),
        biases: None,
    };
    MoeWeights {
        router: b.upload_weight(m.router.clone()).unwrap(),
        experts: b
            .routed_experts(m.routed.iter().map(mlp).collect(), None)
            .unwrap(),
        score_bias: None,
        shared: Some(mlp(&m.shared)),
    }
}

/// Routed experts of FP8 weights on the grouped path (16-row blocks for a decode token over 64
/// experts, 64-row blocks for 80 tokens over 4: on a Hopper GPU the wgmma builds, checked against
/// the mma.sync ones) against the per-expert path, which runs the dense FP8 GEMMs on each
/// expert's rows, and the CPU's layer over the dequantized weights.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_experts_match_the_per_expert_path() {
    let gpu = gpu();
    let mut rng = Rng::new(11);
    for (tokens, experts, k, hidden, inter) in [(1, 64, 6, 256, 176), (80, 4, 2, 256, 192)] {
        let what = format!("{tokens} tokens, k {k} of {experts}, {hidden}→{inter}");
        let layer = fp8_moe(&mut rng, experts, k, hidden, inter);
        let config = &layer.config;
        let x = activations(&mut rng, tokens, hidden);
        let want = CpuBackend::EXACT
            .moe(&x, &moe_weights(&CpuBackend::EXACT, &layer), config)
            .unwrap();
        let want: Vec<f64> = want.data.iter().map(|&v| v as f64).collect();
        let w = moe_weights(&gpu, &layer);
        let x_gpu = gpu.device.upload::<Bf16>(&x).unwrap();
        let run = |path| {
            gpu.set_moe_path(path);
            let y = gpu.to_host(&gpu.moe(&x_gpu, &w, config).unwrap()).unwrap();
            y.data
        };
        let (grouped, again, per_expert, mma) = (
            run(MoePath::Grouped),
            run(MoePath::Grouped),
            run(MoePath::PerExpert),
            run(MoePath::GroupedMma),
        );
        gpu.set_moe_path(MoePath::Grouped);
        assert_eq!(grouped, again, "{what}: run to run");
        // 64-row blocks on a Hopper GPU: the wgmma builds, and GroupedMma's mma.sync ones.
        let mma: Vec<f64> = mma.iter().map(|&v| v as f64).collect();
        assert_rows_close(
            &format!("{what}: grouped vs grouped mma.sync"),
            &grouped,
            &mma,
            hidden,
            1e-2,
        );
        // Router, routing, align, two quantizations, two grouped GEMMs, combine; the shared
        // MLP's two quantizations and two GEMMs, each with its split-k reduce where split. No
        // wait for the device.
        let plain = CudaBackend::<Bf16>::open(0).unwrap();
        let w = moe_weights(&plain, &layer);
        let x_plain = plain.device.upload::<Bf16>(&x).unwrap();
        let before = plain.counters().unwrap();
        plain.moe(&x_plain, &w, config).unwrap();
        let used = plain.counters().unwrap().since(&before);
        assert!(
            used.kernel_launches <= 14 && used.host_waits == 0,
            "{what}: {}",
            used.per_step(1)
        );
        let per_expert: Vec<f64> = per_expert.iter().map(|&v| v as f64).collect();
        assert_rows_close(
            &format!("{what}: grouped vs per-expert"),
            &grouped,
            &per_expert,
            hidden,
            1e-2,
        );
        assert_rows_close(
            &format!("{what}: grouped vs CPU"),
            &grouped,
            &want,
            hidden,
            8e-2,
        );
    }
}

/// The FP8 MoE layer (grouped experts, the shared MLP's split GEMMs) captured in a CUDA graph,
/// as decode steps are: replayed over two inputs written into the captured buffer, it gives
/// the eager bits, with one graph launch and no kernel launched one by one.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_experts_replay_from_a_cuda_graph() {
    let gpu = gpu();
    let mut rng = Rng::new(19);
    let layer = fp8_moe(&mut rng, 64, 6, 256, 176);
    let w = moe_weights(&gpu, &layer);
    let inputs: Vec<HostTensor> = (0..2).map(|_| activations(&mut rng, 3, 256)).collect();
    let eager: Vec<Vec<f32>> = inputs
        .iter()
        .map(|x| {
            let x = gpu.device.upload::<Bf16>(x).unwrap();
            let y = gpu.moe(&x, &w, &layer.config).unwrap();
            gpu.to_host(&y).unwrap().data
        })
        .collect();
    let mut x = gpu.device.upload::<Bf16>(&inputs[0]).unwrap();
    let mut out = gpu.device.tensor::<Bf16>(3, 256, Some(0.0)).unwrap();
    let graph = gpu
        .device
        .capture(|| {
            let y = gpu.moe(&x, &w, &layer.config)?;
            gpu.device
                .stream
                .memcpy_dtod(&y.data, &mut out.data)
                .map_err(mla_rt::backend::cuda::driver_err("copying the output"))
        })
        .unwrap();
    for (i, host) in inputs.iter().enumerate() {
        let values: Vec<Bf16> = host.data.iter().map(|&v| Bf16::from_f32(v)).collect();
        gpu.device.stream.memcpy_htod(&values, &mut x.data).unwrap();
        let before = gpu.counters().unwrap();
        graph.launch().unwrap();
        let used = gpu.counters().unwrap().since(&before);
        assert_eq!((used.graph_launches, used.kernel_launches), (1, 0));
        assert_eq!(gpu.to_host(&out).unwrap().data, eager[i], "input {i}");
    }
}

/// An op that takes no FP8 weight (a norm, the embedding, a bias) refuses one by name rather
/// than reading its codes as values.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn ops_that_take_no_fp8_weight_refuse_one() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    let w = gpu.upload_fp8_weight(weight(&mut rng, 64, 128)).unwrap();
    let mut x = gpu
        .device
        .upload::<Bf16>(&activations(&mut rng, 2, 128))
        .unwrap();
    let norm = gpu.rms_norm(&x, &w, 1e-6).err().unwrap().to_string();
    assert!(
        norm.contains("rms_norm") && norm.contains("takes no FP8 weight"),
        "{norm}"
    );
    let embedding = gpu.embedding(&w, &[1]).err().unwrap().to_string();
    assert!(embedding.contains("embedding"), "{embedding}");
    let bias = gpu.add_bias(&mut x, &w).err().unwrap().to_string();
    assert!(bias.contains("add_bias"), "{bias}");
}
