//! Whole models on the CUDA backend against the CPU backend (the GPU's oracle): every fixture
//! checkpoint (transformers-verified on the CPU) and both demo models, in f32 (≤ 1e-4 relative
//! L2 per position) and bf16 (≤ 2e-2, top-1 agreement ≥ 95%), for one causal prefill and
//! token-by-token decode in both MLA forms, and greedy generation through the batching engine.
//! Needs an NVIDIA GPU: ignored elsewhere. Run from the crate root (fixtures are found there).

mod common;

use common::fixtures_dir;
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::backend::cuda::{CudaBackend, GpuFloat};
use mla_rt::backend::Backend;
use mla_rt::cli::logits::compute_logits;
use mla_rt::config::ModelConfig;
use mla_rt::engine::batch_engine::{Engine, EngineConfig};
use mla_rt::engine::request::Request;
use mla_rt::engine::sampler::SamplingParams;
use mla_rt::engine::scheduler::SchedulerConfig;
use mla_rt::engine::session::Session;
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

fn load<B: Backend>(dir: &Path, backend: &B) -> Model<B> {
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    Model::load(config, &Checkpoint::open(dir).unwrap(), backend).unwrap()
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
    block_size: usize,
) -> Vec<Vec<f32>> {
    let mut session = Session::new(model, backend, ids.len(), block_size, form).unwrap();
    let flat = compute_logits(&mut session, backend, ids, prefill).unwrap();
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

/// Compares the GPU in element type `T` with the CPU on every model, prefill and decode, in
/// each MLA form; returns the worst error and the top-1 agreement.
fn compare_models<T: GpuFloat>(tolerance: f64, min_top1: f64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let gpu = CudaBackend::<T>::open(0)
        .expect("an NVIDIA GPU with kernels in this build")
        .with_poisoned_outputs();
    let mut report = Vec::new();
    for dir in model_dirs() {
        let (cpu_model, gpu_model) = (load(&dir, &CpuBackend), load(&dir, &gpu));
        let vocab = cpu_model.config.vocab_size();
        let n = cpu_model.config.max_position_embeddings().min(40);
        let ids = token_ids(vocab, n);
        for form in [AttentionForm::Materialised, AttentionForm::Absorbed] {
            // Block size 16 with 40 tokens: several pages and a partial last one.
            for prefill in [n, n / 2] {
                let want = logits(&cpu_model, &CpuBackend, &ids, prefill, form, 16);
                let got = logits(&gpu_model, &gpu, &ids, prefill, form, 16);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| rel_l2(g, w))
                    .fold(0.0, f64::max);
                let top1 = got
                    .iter()
                    .zip(&want)
                    .filter(|(g, w)| argmax(g) == argmax(w))
                    .count() as f64
                    / want.len() as f64;
                report.push(format!(
                    "{} {form:?} prefill {prefill}/{n}: worst rel L2 {worst:.2e}, top-1 {:.1}%",
                    dir.display(),
                    top1 * 100.0
                ));
                assert!(
                    worst <= tolerance && top1 >= min_top1,
                    "{} ({}): {}",
                    T::SUFFIX,
                    gpu.name(),
                    report.last().unwrap()
                );
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn f32_models_match_the_cpu() {
    compare_models::<f32>(1e-4, 0.95);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn bf16_models_match_the_cpu() {
    compare_models::<half::bf16>(2e-2, 0.95);
}

/// Greedy generation of a few prompts batched together through the engine, on both devices.
fn greedy<B: Backend>(model: &Model<B>, backend: &B, prompts: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let config = EngineConfig {
        block_size: 16,
        num_blocks: 64,
        prefix_caching: true,
        scheduler: SchedulerConfig {
            max_num_seqs: 8,
            max_batched_tokens: 64,
        },
        attention: AttentionForm::Auto,
    };
    let mut engine = Engine::new(model, backend, None, config).unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        engine
            .add_request(Request {
                id: i.to_string(),
                prompt: prompt.clone(),
                sampling: SamplingParams::default(),
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

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn greedy_generation_matches_the_cpu() {
    let gpu = CudaBackend::<f32>::open(0).expect("an NVIDIA GPU with kernels in this build");
    for dir in model_dirs() {
        let (cpu_model, gpu_model) = (load(&dir, &CpuBackend), load(&dir, &gpu));
        let vocab = cpu_model.config.vocab_size();
        let limit = cpu_model.config.max_position_embeddings() - 16;
        let prompts: Vec<Vec<u32>> = [3, 9, 20, 9]
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                token_ids(vocab, len.min(limit))
                    .iter()
                    .map(|t| (t + i as u32) % vocab as u32)
                    .collect()
            })
            .collect();
        let want = greedy(&cpu_model, &CpuBackend, &prompts);
        let got = greedy(&gpu_model, &gpu, &prompts);
        assert_eq!(
            got,
            want,
            "{}: greedy ids on {} vs the CPU",
            dir.display(),
            gpu.name()
        );
    }
}
