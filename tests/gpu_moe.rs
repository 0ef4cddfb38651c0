//! The CUDA backend's MoE layer (grouped GEMMs and the per-expert path) against the CPU
//! reference over the routing patterns that matter: every token to one expert, experts with no
//! tokens, k = 1 and 8, 256 experts, 1 and 512 tokens, widths the tensor cores take and widths
//! they do not. Outputs are poisoned with NaN first. Needs an NVIDIA GPU: ignored elsewhere.

mod common;

use common::Rng;
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::backend::cuda::{CudaBackend, GpuFloat, MoePath};
use mla_rt::backend::{Backend, MlpWeights, MoeWeights};
use mla_rt::config::{MoeConfig, ScoringFunc, TopkMethod};
use mla_rt::weights::HostTensor;

/// Values representable in `T`, so that both backends start from the same numbers.
fn random<T: GpuFloat>(rng: &mut Rng, shape: [usize; 2], std: f32) -> HostTensor {
    let data = rng
        .normals(shape[0] * shape[1], std)
        .into_iter()
        .map(|v| T::from_f32(v).to_f32())
        .collect();
    HostTensor::new(shape.to_vec(), data)
}

struct Case {
    name: &'static str,
    tokens: usize,
    experts: usize,
    k: usize,
    hidden: usize,
    inter: usize,
    shared: bool,
    /// Every token's logits favour this expert (then the lowest ids, by the ties).
    one_expert: Option<usize>,
    method: TopkMethod,
}

fn config(c: &Case) -> MoeConfig {
    let grouped = c.method != TopkMethod::Greedy;
    MoeConfig {
        n_routed_experts: c.experts,
        n_shared_experts: c.shared as usize,
        num_experts_per_tok: c.k,
        moe_intermediate_size: c.inter,
        first_k_dense_replace: 0,
        moe_layer_freq: 1,
        routed_scaling_factor: if grouped { 2.5 } else { 1.0 },
        topk_method: c.method,
        n_group: if grouped { 8 } else { 1 },
        topk_group: if grouped { 4 } else { 1 },
        norm_topk_prob: grouped,
        scoring_func: if grouped {
            ScoringFunc::Sigmoid
        } else {
            ScoringFunc::Softmax
        },
    }
}

/// The layer's host weights: router, bias (noaux_tc), experts (gate, up, down), shared MLP.
struct HostMoe {
    router: HostTensor,
    bias: Option<Vec<f32>>,
    experts: Vec<[HostTensor; 3]>,
    shared: Option<[HostTensor; 3]>,
}

fn host_moe<T: GpuFloat>(rng: &mut Rng, c: &Case) -> HostMoe {
    let (h, i) = (c.hidden, c.inter);
    let mut mlp = |width: usize| {
        [
            random::<T>(rng, [width, h], 0.3),
            random::<T>(rng, [width, h], 0.3),
            random::<T>(rng, [h, width], 0.3),
        ]
    };
    let experts = (0..c.experts).map(|_| mlp(i)).collect();
    let shared = c.shared.then(|| mlp(i));
    let mut router = random::<T>(rng, [c.experts, h], 0.5);
    if let Some(e) = c.one_expert {
        // x's column 0 is 1 (see `inputs`): expert e's logit is 8, every other one 0.
        router.data.iter_mut().for_each(|v| *v = 0.0);
        router.data[e * h] = 8.0;
    }
    let bias = (c.method == TopkMethod::NoauxTc).then(|| rng.normals(c.experts, 0.1));
    HostMoe {
        router,
        bias,
        experts,
        shared,
    }
}

fn weights<B: Backend>(b: &B, m: &HostMoe) -> MoeWeights<B> {
    let mlp = |w: &[HostTensor; 3]| MlpWeights {
        gate: b.upload_weight(w[0].clone()).unwrap(),
        up: b.upload_weight(w[1].clone()).unwrap(),
        down: b.upload_weight(w[2].clone()).unwrap(),
        biases: None,
    };
    let experts = m.experts.iter().map(mlp).collect();
    MoeWeights {
        router: b.upload_weight(m.router.clone()).unwrap(),
        experts: b.routed_experts(experts, m.bias.as_deref()).unwrap(),
        score_bias: m.bias.clone(),
        shared: m.shared.as_ref().map(mlp),
    }
}

fn inputs<T: GpuFloat>(rng: &mut Rng, c: &Case) -> HostTensor {
    let mut x = random::<T>(rng, [c.tokens, c.hidden], 1.0);
    if c.one_expert.is_some() {
        x.data
            .chunks_exact_mut(c.hidden)
            .for_each(|row| row[0] = 1.0);
    }
    x
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        d += (*x as f64 - *y as f64).powi(2);
        n += (*y as f64).powi(2);
    }
    (d / n.max(1e-30)).sqrt()
}

/// Every token's output within `tolerance` of `want` (a NaN never passes).
fn assert_rows_close(got: &HostTensor, want: &HostTensor, tolerance: f64, what: &str) {
    let cols = want.shape[1];
    for (t, (g, w)) in got
        .data
        .chunks_exact(cols)
        .zip(want.data.chunks_exact(cols))
        .enumerate()
    {
        let e = rel_l2(g, w);
        assert!(e <= tolerance, "{what}: token {t}: relative L2 {e:.2e}");
    }
}

fn cases() -> Vec<Case> {
    let case = |name, tokens, experts, k, hidden, inter| Case {
        name,
        tokens,
        experts,
        k,
        hidden,
        inter,
        shared: true,
        one_expert: None,
        method: TopkMethod::Greedy,
    };
    vec![
        case("batch 1, k 6 of 64", 1, 64, 6, 64, 48),
        case("37 tokens, k 1 of 16", 37, 16, 1, 64, 48),
        Case {
            shared: false,
            ..case("37 tokens, k 1 of 16, no shared", 37, 16, 1, 64, 48)
        },
        Case {
            one_expert: Some(5),
            ..case("every token to expert 5, k 1", 70, 16, 1, 64, 48)
        },
        Case {
            one_expert: Some(5),
            ..case(
                "every token to expert 5 (then 0, 1), k 3",
                70,
                16,
                3,
                64,
                48,
            )
        },
        Case {
            method: TopkMethod::NoauxTc,
            ..case("512 tokens, k 8 of 256 (V3 routing)", 512, 256, 8, 64, 32)
        },
        case("80 tokens, 64-row blocks", 80, 4, 2, 64, 48),
        case("widths the tensor cores do not take", 19, 8, 2, 40, 20),
    ]
}

fn moe_matches_the_cpu<T: GpuFloat>(tolerance: f64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let gpu = CudaBackend::<T>::open(0)
        .expect("an NVIDIA GPU with kernels in this build")
        .with_poisoned_outputs();
    let mut rng = Rng::new(11);
    for c in cases() {
        let moe = config(&c);
        let host = host_moe::<T>(&mut rng, &c);
        let x = inputs::<T>(&mut rng, &c);
        let want = CpuBackend::EXACT
            .moe(&x, &weights(&CpuBackend::EXACT, &host), &moe)
            .unwrap();
        let (w, x_gpu) = (weights(&gpu, &host), gpu.device.upload(&x).unwrap());
        let what = |path: &str| format!("{} {}: {path}", T::SUFFIX, c.name);
        let mut outputs = Vec::new();
        let paths = [
            MoePath::Grouped,
            MoePath::PerExpert,
            MoePath::Grouped,
            MoePath::GroupedMma,
        ];
        for path in paths {
            gpu.set_moe_path(path);
            let got = gpu.to_host(&gpu.moe(&x_gpu, &w, &moe).unwrap()).unwrap();
            assert_rows_close(&got, &want, tolerance, &what(&format!("{path:?}")));
            outputs.push(got);
        }
        // The grouped path gives the same bits every run, and the per-expert path's numbers;
        // its wgmma GEMMs (64-row blocks on Hopper) those of its mma.sync ones.
        assert_eq!(outputs[0].data, outputs[2].data, "{}", what("run to run"));
        assert_rows_close(
            &outputs[0],
            &outputs[3],
            tolerance,
            &what("wgmma vs mma.sync"),
        );
        assert_rows_close(
            &outputs[0],
            &outputs[1],
            tolerance,
            &what("grouped vs per-expert"),
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn moe_layer_matches_the_cpu_f32() {
    moe_matches_the_cpu::<f32>(1e-4);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn moe_layer_matches_the_cpu_bf16() {
    moe_matches_the_cpu::<half::bf16>(2e-2);
}

/// V2-Lite's MoE structure (64 routed experts, 6 per token, a shared MLP) at small widths: what
/// the launch counts depend on.
fn v2_lite_shaped() -> Case {
    Case {
        name: "V2-Lite-shaped",
        tokens: 1,
        experts: 64,
        k: 6,
        hidden: 64,
        inter: 48,
        shared: true,
        one_expert: None,
        method: TopkMethod::Greedy,
    }
}

/// On the grouped path an MoE layer is at most 12 launches (router, routing, align, two grouped
/// GEMMs, combine and the shared MLP's four) and never waits for the device; the per-expert path
/// waits to size its GEMMs.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn an_moe_layer_launches_a_few_kernels_and_never_waits() {
    let gpu = CudaBackend::<half::bf16>::open(0).expect("an NVIDIA GPU with kernels in this build");
    let mut rng = Rng::new(3);
    for tokens in [1, 64] {
        let c = Case {
            tokens,
            ..v2_lite_shaped()
        };
        let moe = config(&c);
        let w = weights(&gpu, &host_moe::<half::bf16>(&mut rng, &c));
        let x = gpu
            .device
            .upload(&inputs::<half::bf16>(&mut rng, &c))
            .unwrap();
        for (path, max_launches, waits) in
            [(MoePath::Grouped, 12, 0), (MoePath::PerExpert, u64::MAX, 2)]
        {
            gpu.set_moe_path(path);
            let before = gpu.counters().unwrap();
            gpu.moe(&x, &w, &moe).unwrap();
            let used = gpu.counters().unwrap().since(&before);
            assert!(
                used.kernel_launches <= max_launches && used.host_waits == waits,
                "{path:?}, {tokens} tokens: {}",
                used.per_step(1)
            );
        }
    }
}

/// A V2-Lite-shaped model (4 layers, 3 of them MoE) on the GPU in bf16.
fn v2_lite_shaped_model(
    gpu: &CudaBackend<half::bf16>,
) -> (
    tempfile::TempDir,
    mla_rt::model::Model<CudaBackend<half::bf16>>,
) {
    use mla_rt::config::ModelConfig;
    use mla_rt::model::Model;
    use mla_rt::weights::Checkpoint;
    let config = common::tiny_config(
        "deepseek_v2",
        serde_json::json!({
            "num_hidden_layers": 4, "n_routed_experts": 64, "num_experts_per_tok": 6,
            "n_shared_experts": 2, "hidden_size": 64, "moe_intermediate_size": 48,
        }),
    );
    let dir = common::write_model(&config, &common::random_weights(&config, 7));
    let model_config = ModelConfig::from_file(&dir.path().join("config.json")).unwrap();
    let model = Model::load(model_config, &Checkpoint::open(dir.path()).unwrap(), gpu).unwrap();
    (dir, model)
}

/// Three requests through the engine, greedy or (`sampled`) greedy, seeded top-k sampling and
/// greedy with log-probabilities (whole logit rows), twice; the second round's outputs and
/// decode statistics. With `capture_first`, the engine captures its decode graphs before the
/// first round, which then replays from its first decode step.
fn run_engine(
    gpu: &CudaBackend<half::bf16>,
    model: &mla_rt::model::Model<CudaBackend<half::bf16>>,
    cuda_graphs: bool,
    sampled: bool,
    capture_first: bool,
) -> (
    Vec<mla_rt::engine::request::RequestOutput>,
    mla_rt::engine::batch_engine::EngineStats,
) {
    use mla_rt::engine::batch_engine::{Engine, EngineConfig};
    use mla_rt::engine::request::Request;
    use mla_rt::engine::sampler::SamplingParams;
    use mla_rt::engine::scheduler::SchedulerConfig;
    use mla_rt::model::AttentionForm;
    let engine_config = EngineConfig {
        block_size: 16,
        num_blocks: 32,
        prefix_caching: false,
        scheduler: SchedulerConfig {
            max_num_seqs: 4,
            max_batched_tokens: 64,
        },
        attention: AttentionForm::Auto,
        cuda_graphs,
        cache_dtype: Default::default(),
    };
    let mut engine = Engine::new(model, gpu, None, engine_config).unwrap();
    if capture_first {
        let capture = engine.capture_decode_graphs(4).unwrap().unwrap();
        // Batch sizes 1, 2 and 4 (three sequences are padded to four).
        assert_eq!((capture.graphs, capture.largest), (3, 4), "{capture}");
    }
    let samplings = match sampled {
        false => [SamplingParams::default(); 3],
        true => [
            SamplingParams::default(),
            SamplingParams {
                temperature: 0.9,
                top_k: 20,
                seed: 5,
                ..SamplingParams::default()
            },
            SamplingParams {
                logprobs: Some(3),
                ..SamplingParams::default()
            },
        ],
    };
    // Two rounds of the same requests: the first warms up and captures each batch shape's
    // graph, the second (whose outputs and statistics are returned) replays them.
    let mut rounds = Vec::new();
    for _ in 0..2 - capture_first as usize {
        let before = engine.stats;
        for (i, sampling) in samplings.iter().enumerate() {
            let i = i as u32;
            engine
                .add_request(Request {
                    id: i.to_string(),
                    prompt: vec![3 + i, 5, 7, 11 + i],
                    sampling: *sampling,
                    max_tokens: 6 + 2 * i as usize,
                    stop: Vec::new(),
                    ignore_eos: true,
                })
                .unwrap();
        }
        let outputs = engine.run_to_completion(|_| {}).unwrap();
        let mut stats = engine.stats;
        stats.decode_steps -= before.decode_steps;
        stats.decode_counters = stats.decode_counters.since(&before.decode_counters);
        rounds.push((outputs, stats));
    }
    let tokens = |o: &[mla_rt::engine::request::RequestOutput]| {
        o.iter()
            .map(|r| r.output_tokens.clone())
            .collect::<Vec<_>>()
    };
    if let [first, second] = &rounds[..] {
        assert_eq!(tokens(&first.0), tokens(&second.0), "round to round");
    }
    rounds.pop().unwrap()
}

/// A V2-Lite-shaped model decoding greedily through the engine, eagerly and from CUDA graphs:
/// one device→host wait per decode step (the sampled ids), as `mla generate --profile` reports
/// it; with graphs one graph launch and one kernel launch (the argmax) per step.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_decode_step_waits_for_the_device_once() {
    let gpu = CudaBackend::<half::bf16>::open(0).expect("an NVIDIA GPU with kernels in this build");
    let (_dir, model) = v2_lite_shaped_model(&gpu);
    for graphs in [false, true] {
        let (_, stats) = run_engine(&gpu, &model, graphs, false, false);
        assert!(stats.decode_steps >= 5, "{stats:?}");
        let (c, steps) = (stats.decode_counters, stats.decode_steps as u64);
        let per_step = c.per_step(stats.decode_steps);
        assert_eq!(
            c.host_waits, steps,
            "graphs {graphs}: decode step: {per_step}"
        );
        match graphs {
            true => assert_eq!(
                (c.graph_launches, c.kernel_launches),
                (steps, steps),
                "{per_step}"
            ),
            false => assert_eq!(c.graph_launches, 0, "{per_step}"),
        }
    }
}

/// Greedy, seeded and log-probability requests with decode steps replayed from CUDA graphs,
/// captured as steps meet them or when the engine starts (batch sizes 1, 2 and 4: three
/// sequences are padded with a filler one): the eager run's tokens and log-probabilities to the
/// bit, one graph launch and one wait per decode step, and no kernel of the forward launched one
/// by one.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn decode_steps_replayed_from_cuda_graphs_match_eager_ones() {
    let gpu = CudaBackend::<half::bf16>::open(0).expect("an NVIDIA GPU with kernels in this build");
    let (_dir, model) = v2_lite_shaped_model(&gpu);
    let (eager, eager_stats) = run_engine(&gpu, &model, false, true, false);
    let tokens = |o: &[mla_rt::engine::request::RequestOutput]| {
        o.iter()
            .map(|r| (r.output_tokens.clone(), r.logprobs.clone()))
            .collect::<Vec<_>>()
    };
    for capture_first in [false, true] {
        let (graphs, stats) = run_engine(&gpu, &model, true, true, capture_first);
        assert_eq!(tokens(&graphs), tokens(&eager), "{capture_first}");
        let c = stats.decode_counters;
        let per_step = c.per_step(stats.decode_steps);
        assert!(stats.decode_steps >= 5, "{stats:?}");
        assert_eq!(c.graph_launches, stats.decode_steps as u64, "{per_step}");
        // One wait per step, sampled or not: the candidates and totals come back together, and
        // a step that brings whole rows back (log-probabilities) takes everything from them.
        assert_eq!(c.host_waits, stats.decode_steps as u64, "{per_step}");
        assert_eq!(
            c.host_waits, eager_stats.decode_counters.host_waits,
            "{per_step}"
        );
        // Sampling launches a few kernels (argmax, top-k candidates, totals); the forward none.
        assert!(
            c.kernel_launches <= 4 * stats.decode_steps as u64,
            "{per_step}"
        );
    }
}

/// The grouped MoE layer captured in a CUDA graph: capture succeeds (no wait inside), and each
/// replay gives the eager path's bits, also after its input is rewritten in place; the
/// per-expert path, which waits, cannot be captured.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn the_moe_layer_replays_in_a_cuda_graph() {
    let gpu = CudaBackend::<half::bf16>::open(0).expect("an NVIDIA GPU with kernels in this build");
    let mut rng = Rng::new(17);
    let c = Case {
        tokens: 24,
        ..v2_lite_shaped()
    };
    let moe = config(&c);
    let w = weights(&gpu, &host_moe::<half::bf16>(&mut rng, &c));
    let inputs: Vec<HostTensor> = (0..2).map(|_| inputs::<half::bf16>(&mut rng, &c)).collect();
    let eager: Vec<Vec<f32>> = inputs
        .iter()
        .map(|x| {
            let x = gpu.device.upload(&x.clone()).unwrap();
            gpu.to_host(&gpu.moe(&x, &w, &moe).unwrap()).unwrap().data
        })
        .collect();
    // Static input and output buffers: the graph reads and writes these addresses.
    let mut x = gpu.device.upload(&inputs[0].clone()).unwrap();
    let mut out = gpu
        .device
        .tensor::<half::bf16>(c.tokens, c.hidden, Some(0.0))
        .unwrap();
    let before = gpu.counters().unwrap();
    let graph = gpu
        .device
        .capture(|| {
            let y = gpu.moe(&x, &w, &moe)?;
            gpu.device
                .stream
                .memcpy_dtod(&y.data, &mut out.data)
                .map_err(mla_rt::backend::cuda::driver_err("copying the output"))
        })
        .unwrap();
    assert_eq!(gpu.counters().unwrap().since(&before).host_waits, 0);
    for (i, host) in inputs.iter().enumerate() {
        let values: Vec<half::bf16> = host.data.iter().map(|&v| half::bf16::from_f32(v)).collect();
        gpu.device.stream.memcpy_htod(&values, &mut x.data).unwrap();
        let launches = gpu.counters().unwrap();
        graph.launch().unwrap();
        let used = gpu.counters().unwrap().since(&launches);
        assert_eq!((used.graph_launches, used.kernel_launches), (1, 0));
        assert_eq!(gpu.to_host(&out).unwrap().data, eager[i], "input {i}");
    }
    // The per-expert path waits for its routes: it cannot be captured.
    gpu.set_moe_path(MoePath::PerExpert);
    let waits = gpu.device.capture(|| gpu.moe(&x, &w, &moe).map(|_| ()));
    gpu.set_moe_path(MoePath::Grouped);
    assert!(waits.is_err());
}
