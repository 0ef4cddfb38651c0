//! Whole models on the CUDA backend against the CPU backend (the GPU's oracle): every fixture
//! checkpoint (transformers-verified on the CPU) and both demo models, in f32 (≤ 1e-4 relative
//! L2 at every position) and bf16 (median position ≤ 2e-2, top-1 agreement ≥ 95% of the decisive positions; both
//! devices on the same bf16-rounded weights), then both with FP8 caches, then FP8 weights (the
//! GPU's FP8 GEMM against the CPU quantizing activations as it does) in f32 (top-1 ≥ 99%) and in
//! bf16 without and with FP8 caches, for one causal prefill and
//! token-by-token decode in both MLA forms, and greedy and sampled generation through the batching
//! engine.
//! Needs an NVIDIA GPU: ignored elsewhere. Run from the crate root (fixtures are found there).

mod common;

use common::fixtures_dir;
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::backend::cuda::{CudaBackend, GpuFloat};
use mla_rt::backend::Backend;
use mla_rt::config::quantization::Fp8Activations;
use mla_rt::config::ModelConfig;
use mla_rt::engine::batch_engine::{Engine, EngineConfig};
use mla_rt::engine::request::Request;
use mla_rt::engine::sampler::SamplingParams;
use mla_rt::engine::scheduler::SchedulerConfig;
use mla_rt::engine::session::Session;
use mla_rt::kv::cache_dtype::KvCacheDtype;
use mla_rt::model::{AttentionForm, Model};
use mla_rt::weights::Checkpoint;
use std::path::{Path, PathBuf};

fn model_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists (run from the crate root)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    dirs.extend(["models/demo-mla", "models/demo-mha"].map(PathBuf::from));
    assert!(dirs.len() >= 6, "fixtures and demo models: {dirs:?}");
    dirs
}

/// A copy of the checkpoint in `dir` with every weight rounded to bf16 (stored as f32, whatever
/// the checkpoint's dtype), so that the CPU reference and the bf16 GPU model compute with the
/// same weights.
fn bf16_rounded_copy(dir: &Path) -> tempfile::TempDir {
    let checkpoint = Checkpoint::open(dir).unwrap();
    let weights = checkpoint
        .tensor_sizes()
        .map(|(name, _)| {
            let shape = checkpoint.shape(name).unwrap().to_vec();
            let values = checkpoint.load(name, &shape).unwrap().data;
            let rounded = values
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect();
            (name.to_string(), (shape, rounded))
        })
        .collect();
    let config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    common::write_model(&config, &weights)
}

/// Which weights both devices compute with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Weights {
    /// The checkpoint's, rounded to bf16 for a bf16 GPU (the CPU then gets the same values).
    AsStored,
    /// As `--quantization fp8` loads them: FP8 checkpoints as they are, the others quantized to
    /// FP8 in 128 × 128 blocks (which a GPU of compute capability 8.9+ multiplies as FP8).
    Fp8,
}

fn load<B: Backend>(dir: &Path, backend: &B, weights: Weights) -> Model<B> {
    use mla_rt::config::quantization::Fp8Blocks;
    use mla_rt::weights::online_fp8::OnlineFp8;
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let checkpoint = Checkpoint::open(dir).unwrap();
    match weights {
        Weights::AsStored => Model::load(config, &checkpoint, backend).unwrap(),
        Weights::Fp8 => {
            let source = OnlineFp8 {
                inner: &checkpoint,
                blocks: Fp8Blocks::DEEPSEEK,
            };
            Model::load(config, &source, backend).unwrap()
        }
    }
}

/// Token ids for a model: a fixed pseudo-random walk over its vocabulary.
fn token_ids(vocab: usize, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + 13) % vocab.max(1)) as u32)
        .collect()
}

/// `[positions][vocab]` logits of prefilling `prefill` tokens, then decoding the rest one by one.
fn logits<B: Backend>(
    model: &Model<B>,
    backend: &B,
    ids: &[u32],
    prefill: usize,
    form: AttentionForm,
    cache: KvCacheDtype,
) -> Vec<Vec<f32>> {
    // Block size 16 with 40 tokens: several pages and a partial last one.
    let mut session =
        Session::with_cache_dtype(model, backend, ids.len(), 16, form, cache).unwrap();
    let flat = session.logits(ids, prefill).unwrap();
    flat.chunks(model.config.vocab_size())
        .map(<[f32]>::to_vec)
        .collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    common::rel_l2(a, &b64)
}

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// How far the largest value of `x` leads the second largest.
fn top1_margin(x: &[f32]) -> f64 {
    let best = argmax(x);
    let second = x
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &v)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    (x[best] - second) as f64
}

fn max_abs(x: &[f32]) -> f64 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64
}

/// Which per-position errors of a run must be within the tolerance.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Within {
    /// Every position (f32: the GPU computes what the CPU computes, up to summation order).
    Every,
    /// The typical (median) position (bf16: where rounding a hidden state moves an MoE token to
    /// another expert, that position's logits differ by far more than rounding, as they would
    /// between any two bf16 runtimes; the kernels themselves are held to tight bounds by
    /// gpu_attention and gpu_kernels).
    Median,
}

/// Compares the GPU in element type `T` with the CPU on every model, prefill and decode, in
/// each MLA form, both with `cache` caches: per-position relative L2 within `tolerance` (as
/// `within` says; a NaN never passes) and top-1 agreement over each model's decisive positions
/// ≥ `min_top1`. In bf16 both devices run the checkpoint's weights rounded to bf16, so the
/// difference is the runtime's alone.
fn compare_models<T: GpuFloat>(
    tolerance: f64,
    within: Within,
    min_top1: f64,
    cache: KvCacheDtype,
    weights: Weights,
) where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let gpu = CudaBackend::<T>::open(0)
        .expect("an NVIDIA GPU with kernels in this build")
        .with_poisoned_outputs();
    // FP8 weights: the GPU's FP8 GEMM (in f32 too) against the CPU quantizing its activations
    // the same way.
    let cpu = match weights {
        Weights::AsStored => CpuBackend::EXACT,
        Weights::Fp8 => {
            gpu.set_fp8_activations(Fp8Activations::Dynamic).unwrap();
            CpuBackend::DYNAMIC_FP8
        }
    };
    let mut report = Vec::new();
    for dir in model_dirs() {
        let rounded =
            (T::SUFFIX == "bf16" && weights == Weights::AsStored).then(|| bf16_rounded_copy(&dir));
        let path = rounded.as_ref().map_or(dir.as_path(), |t| t.path());
        let (cpu_model, gpu_model) = (load(path, &cpu, weights), load(path, &gpu, weights));
        let vocab = cpu_model.config.vocab_size();
        let n = cpu_model.config.max_position_embeddings().min(40);
        let ids = token_ids(vocab, n);
        let (mut agree, mut positions) = (0, 0);
        for form in [AttentionForm::Materialised, AttentionForm::Absorbed] {
            for prefill in [n, n / 2] {
                let want = logits(&cpu_model, &cpu, &ids, prefill, form, cache);
                let got = logits(&gpu_model, &gpu, &ids, prefill, form, cache);
                let mut errors: Vec<f64> = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| rel_l2(g, w))
                    .map(|e| if e.is_nan() { f64::INFINITY } else { e })
                    .collect();
                errors.sort_by(f64::total_cmp);
                // Top-1 is asked of decisive positions only: where the reference's best logit
                // leads the next by more than `tolerance` of its size, which the rounding the
                // tolerance allows cannot overturn.
                let decisive: Vec<_> = got
                    .iter()
                    .zip(&want)
                    .filter(|(_, w)| top1_margin(w) > tolerance * max_abs(w))
                    .collect();
                agree += decisive
                    .iter()
                    .filter(|(g, w)| argmax(g) == argmax(w))
                    .count();
                positions += decisive.len();
                let (median, worst) = (errors[errors.len() / 2], errors[errors.len() - 1]);
                report.push(format!(
                    "{} {weights:?} weights, {cache:?} cache, {form:?} prefill {prefill}/{n}: rel L2 median {median:.2e}, worst {worst:.2e}, {} of {} over {tolerance:.0e}",
                    dir.display(),
                    errors.iter().filter(|&&e| e > tolerance).count(),
                    errors.len()
                ));
                let checked = if within == Within::Every {
                    worst
                } else {
                    median
                };
                assert!(
                    checked <= tolerance && worst.is_finite(),
                    "{} ({}): {}",
                    T::SUFFIX,
                    gpu.name(),
                    report.last().unwrap()
                );
            }
        }
        let top1 = agree as f64 / positions as f64;
        report.push(format!(
            "{}: top-1 {:.1}% of {positions} decisive positions",
            dir.display(),
            top1 * 100.0
        ));
        assert!(
            top1 >= min_top1,
            "{} ({}): {}",
            T::SUFFIX,
            gpu.name(),
            report.last().unwrap()
        );
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn f32_models_match_the_cpu() {
    compare_models::<f32>(
        1e-4,
        Within::Every,
        0.95,
        KvCacheDtype::Auto,
        Weights::AsStored,
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn bf16_models_match_the_cpu() {
    compare_models::<half::bf16>(
        2e-2,
        Within::Median,
        0.95,
        KvCacheDtype::Auto,
        Weights::AsStored,
    );
}

/// With FP8 caches on both devices (the same quantizer): in f32 a cached value whose rounding
/// the summation order tips lands on the neighbouring code, so the median position is held to
/// 1e-4 and top-1 to 99%, as the issue asks of FP8 paths.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_cache_models_match_the_cpu_f32() {
    compare_models::<f32>(
        1e-4,
        Within::Median,
        0.99,
        KvCacheDtype::Fp8,
        Weights::AsStored,
    );
}

/// In bf16 the cached values differ between the devices by bf16 rounding, and where that tips
/// a value across the midpoint of two e4m3 codes it differs by a code step (6%): the fixtures'
/// median positions measured 0.6–3.1e-2 on cuda-emu (2.5–3× the bf16 cache's), so 5e-2.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_cache_models_match_the_cpu_bf16() {
    compare_models::<half::bf16>(
        5e-2,
        Within::Median,
        0.95,
        KvCacheDtype::Fp8,
        Weights::AsStored,
    );
}

/// FP8 weights multiplied as FP8 on the GPU (activations quantized per token per 128 columns,
/// as DeepSeek's inference code does) against the CPU quantizing its activations the same way
/// (`--fp8-activations dynamic`), in f32: the top-1 ≥ 99%. The two agree to f32 rounding
/// until an activation that lies at a code midpoint rounds to the neighbouring code on one
/// device; from there each later quantization tips more, as in any two summation orders (the
/// CPU's own two MLA forms over 256 demo-mla tokens: worst position 1.9e-1, against 2e-6 without
/// FP8 activations). So the bounds allow flips (median 1e-2, top-1 over the positions whose
/// lead exceeds 1e-2); the GEMMs themselves are held to 1e-6 in gpu_fp8_gemm. Measured on
/// cuda-emu: medians 2–6e-7 (demo-mha 5e-5, where codes tipped), top-1 100%.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_weight_models_match_the_cpu_f32() {
    compare_models::<f32>(1e-2, Within::Median, 0.99, KvCacheDtype::Auto, Weights::Fp8);
}

/// The same in bf16, without and with FP8 caches. Here the devices' activations differ by bf16
/// rounding before they are quantized, and where that tips a value across the midpoint of two
/// e4m3 codes it moves by a code step (6%); on the small random fixtures that also moves MoE
/// tokens to other experts. Measured on cuda-emu: medians 1.1–9.3e-2, top-1 83–100% of the
/// decisive positions (the demo models 92–100%); the same as against the CPU's exact product,
/// and rounding the weights to bf16 for both devices does not help. The bounds catch a broken
/// bf16 build (a wrong scale or fragment gives errors near 1); f32 above holds the path tight.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_weight_models_match_the_cpu_bf16() {
    for cache in [KvCacheDtype::Auto, KvCacheDtype::Fp8] {
        compare_models::<half::bf16>(1.2e-1, Within::Median, 0.75, cache, Weights::Fp8);
    }
}

/// Generation of a few prompts batched together through the engine, each with its sampling;
/// decode steps replayed from CUDA graphs where `cuda_graphs` and the backend has them.
fn generate<B: Backend>(
    model: &Model<B>,
    backend: &B,
    prompts: &[(Vec<u32>, SamplingParams)],
    cuda_graphs: bool,
) -> Vec<Vec<u32>> {
    let config = EngineConfig {
        block_size: 16,
        num_blocks: 64,
        prefix_caching: true,
        scheduler: SchedulerConfig {
            max_num_seqs: 8,
            max_batched_tokens: 64,
        },
        attention: AttentionForm::Auto,
        cuda_graphs,
        cache_dtype: Default::default(),
    };
    let mut engine = Engine::new(model, backend, None, config).unwrap();
    for (i, (prompt, sampling)) in prompts.iter().enumerate() {
        engine
            .add_request(Request {
                id: i.to_string(),
                prompt: prompt.clone(),
                sampling: *sampling,
                max_tokens: 16,
                stop: Vec::new(),
                ignore_eos: true,
            })
            .unwrap();
    }
    let mut outputs = engine.run_to_completion(|_| {}).unwrap();
    outputs.sort_by_key(|o| o.index);
    outputs.into_iter().map(|o| o.output_tokens).collect()
}

/// Greedy and seeded sampling in one batch (a top-k list, and no top-k: the best candidates with
/// the row totals, or whole rows when a draw reaches past them) give the CPU's tokens, with
/// decode steps launched eagerly and replayed from CUDA graphs.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn generation_matches_the_cpu() {
    let gpu = CudaBackend::<f32>::open(0).expect("an NVIDIA GPU with kernels in this build");
    let sampled = |temperature, top_k, top_p, seed| SamplingParams {
        temperature,
        top_k,
        top_p,
        seed,
        ..SamplingParams::default()
    };
    let samplings = [
        SamplingParams::default(),
        SamplingParams::default(),
        sampled(1.0, 0, 1.0, 1),
        sampled(0.8, 0, 0.9, 2),
        sampled(1.2, 20, 0.95, 3),
    ];
    for dir in model_dirs() {
        let (cpu_model, gpu_model) = (
            load(&dir, &CpuBackend::EXACT, Weights::AsStored),
            load(&dir, &gpu, Weights::AsStored),
        );
        let vocab = cpu_model.config.vocab_size();
        let limit = cpu_model.config.max_position_embeddings() - 16;
        let prompts: Vec<(Vec<u32>, SamplingParams)> = [3, 9, 20, 9, 5]
            .iter()
            .zip(samplings)
            .enumerate()
            .map(|(i, (&len, sampling))| {
                let ids = token_ids(vocab, len.min(limit))
                    .iter()
                    .map(|t| (t + i as u32) % vocab as u32)
                    .collect();
                (ids, sampling)
            })
            .collect();
        let want = generate(&cpu_model, &CpuBackend::EXACT, &prompts, false);
        for graphs in [false, true] {
            let got = generate(&gpu_model, &gpu, &prompts, graphs);
            assert_eq!(
                got,
                want,
                "{}: generated ids on {} (CUDA graphs: {graphs}) vs the CPU",
                dir.display(),
                gpu.name()
            );
        }
    }
}
