//! The shipped demo models (models/demo-mla and its MHA twin models/demo-mha) against
//! transformers, and the
//! out-of-the-box `mla generate` that uses the MLA one by default.

mod common;

use common::rel_l2;
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::config::ModelConfig;
use mla_rt::engine::batch_engine::{Engine, EngineConfig};
use mla_rt::engine::request::Request;
use mla_rt::engine::sampler::SamplingParams;
use mla_rt::engine::scheduler::SchedulerConfig;
use mla_rt::engine::session::Session;
use mla_rt::model::{AttentionForm, Model};
use mla_rt::tokenizer::TextTokenizer;
use mla_rt::weights::Checkpoint;
use std::path::Path;

#[derive(serde::Deserialize)]
struct Greedy {
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

/// What scripts/demo/train_demo.py recorded from transformers (float64 on the bf16 weights).
#[derive(serde::Deserialize)]
struct Reference {
    token_ids: Vec<u32>,
    positions: usize,
    logits: Vec<Vec<f64>>,
    greedy: Vec<Greedy>,
}

const MODELS: [&str; 2] = ["demo-mla", "demo-mha"];

fn check(name: &str) {
    let dir = Path::new("models").join(name);
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let model = Model::load(config, &Checkpoint::open(&dir).unwrap(), &CpuBackend::EXACT).unwrap();
    let tokenizer = TextTokenizer::load(&dir, &model.config).unwrap();
    let vocab = model.config.vocab_size();

    // Logits of the first positions, prefilled and decoded token by token.
    let ids = &reference.token_ids[..reference.positions];
    for prefill in [ids.len(), 1] {
        let mut session = Session::new(
            &model,
            &CpuBackend::EXACT,
            ids.len(),
            16,
            AttentionForm::Auto,
        )
        .unwrap();
        let logits = session.logits(ids, prefill).unwrap();
        for (p, (got, want)) in logits.chunks(vocab).zip(&reference.logits).enumerate() {
            let err = rel_l2(got, want);
            assert!(
                err <= 1e-4,
                "{name}: prefill {prefill}, position {p}: relative L2 {err:e}"
            );
        }
    }

    // transformers' greedy continuations, token for token.
    for g in &reference.greedy {
        let prompt = tokenizer.encode(&g.prompt).unwrap();
        assert_eq!(
            prompt, g.prompt_ids,
            "{name}: tokenization of {:?}",
            g.prompt
        );
        let config = EngineConfig {
            block_size: 16,
            num_blocks: 8,
            prefix_caching: false,
            scheduler: SchedulerConfig::default(),
            attention: AttentionForm::Auto,
            cuda_graphs: false,
            cache_dtype: Default::default(),
        };
        let mut engine = Engine::new(&model, &CpuBackend::EXACT, Some(&tokenizer), config).unwrap();
        let request = Request {
            id: g.prompt.clone(),
            prompt,
            sampling: SamplingParams::default(),
            max_tokens: g.greedy_ids.len(),
            stop: Vec::new(),
            ignore_eos: true,
        };
        engine.add_request(request).unwrap();
        let out = engine.run_to_completion(|_| {}).unwrap().remove(0);
        assert_eq!(
            out.output_tokens, g.greedy_ids,
            "{name}: greedy continuation of {:?}",
            g.prompt
        );
    }
}

#[test]
fn demo_mla_matches_transformers() {
    check(MODELS[0]);
}

#[test]
fn demo_mha_matches_transformers() {
    check(MODELS[1]);
}

#[test]
fn generate_uses_the_demo_model_by_default_and_writes_english() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mla"))
        .args(["generate", "--prompt", "The", "--max-new-tokens", "30"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() >= 10, "{text:?}");
    let wordlike = words
        .iter()
        .filter(|w| {
            w.trim_matches(|c: char| c.is_ascii_punctuation())
                .chars()
                .all(|c| c.is_ascii_alphabetic())
        })
        .count();
    assert!(
        wordlike * 10 >= words.len() * 9,
        "mostly plain words: {text:?}"
    );
}
