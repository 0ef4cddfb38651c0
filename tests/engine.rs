//! The batching engine on the CPU backend: every request's output in a crowded batch (chunked
//! prefill, preemption under a tiny cache, prefix caching) equals its output when run alone,
//! with the f32 cache and with the FP8 one.

mod common;

use common::{fixtures_dir, Rng};
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::config::ModelConfig;
use mla_rt::engine::batch_engine::{Engine, EngineConfig};
use mla_rt::engine::request::{FinishReason, Request, RequestOutput};
use mla_rt::engine::sampler::SamplingParams;
use mla_rt::engine::scheduler::SchedulerConfig;
use mla_rt::kv::cache_dtype::KvCacheDtype;
use mla_rt::model::AttentionForm;
use mla_rt::model::Model;
use mla_rt::tokenizer::TextTokenizer;
use mla_rt::weights::Checkpoint;

fn load(name: &str) -> (Model<CpuBackend>, TextTokenizer) {
    let dir = fixtures_dir().join(name);
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let tokenizer = TextTokenizer::load(&dir, &config).unwrap();
    (
        Model::load(config, &Checkpoint::open(&dir).unwrap(), &CpuBackend::EXACT).unwrap(),
        tokenizer,
    )
}

fn config(
    num_blocks: usize,
    block_size: usize,
    max_num_seqs: usize,
    max_batched_tokens: usize,
    prefix_caching: bool,
) -> EngineConfig {
    EngineConfig {
        block_size,
        num_blocks,
        prefix_caching,
        scheduler: SchedulerConfig {
            max_num_seqs,
            max_batched_tokens,
        },
        // One form for every step, so that a token's numbers do not depend on how its sequence
        // was batched, chunked or recomputed: the outputs must then be identical, not just close.
        attention: AttentionForm::Absorbed,
        cuda_graphs: false,
        cache_dtype: Default::default(),
    }
}

fn run(
    model: &Model<CpuBackend>,
    tok: &TextTokenizer,
    config: EngineConfig,
    requests: &[Request],
) -> (Vec<RequestOutput>, usize, f64) {
    let mut engine = Engine::new(model, &CpuBackend::EXACT, Some(tok), config).unwrap();
    for r in requests {
        engine.add_request(r.clone()).unwrap();
    }
    let outputs = engine.run_to_completion(|_| {}).unwrap();
    (
        outputs,
        engine.preemptions(),
        engine.prefix_cache_stats().hit_rate(),
    )
}

fn random_requests(n: usize, seed: u64, shared_prefix: &[u32]) -> Vec<Request> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let len = 1 + (rng.uniform() * 40.0) as usize;
            let mut prompt = shared_prefix.to_vec();
            prompt.extend((0..len).map(|_| 2 + (rng.uniform() * 340.0) as u32));
            let sampled = i % 3 == 0;
            // Every fifth request processes its whole row: penalties, min-p, min_tokens and
            // log-probabilities.
            let processed = i % 5 == 1;
            Request {
                id: format!("r{i}"),
                prompt,
                sampling: SamplingParams {
                    temperature: if sampled || i % 10 == 1 { 0.8 } else { 0.0 },
                    // Every other sampled request without a top-k: its best 64 candidates and
                    // row total, or its whole row when the draw lands past them.
                    top_k: if i % 6 == 0 { 0 } else { 50 },
                    top_p: 0.95,
                    seed: i as u64,
                    min_p: if processed { 0.05 } else { 0.0 },
                    presence_penalty: if processed { 0.5 } else { 0.0 },
                    frequency_penalty: if processed { 0.3 } else { 0.0 },
                    repetition_penalty: if processed { 1.2 } else { 1.0 },
                    min_tokens: if processed { 2 } else { 0 },
                    logprobs: processed.then_some(3),
                },
                max_tokens: 1 + (rng.uniform() * 24.0) as usize,
                stop: Vec::new(),
                ignore_eos: false,
            }
        })
        .collect()
}

#[test]
fn batched_outputs_equal_outputs_alone_under_preemption() {
    let (model, tok) = load("v2-lite");
    let requests = random_requests(50, 1, &[]);
    // The FP8 cache quantizes each token's row on its own: batching changes nothing there either.
    for dtype in [KvCacheDtype::Auto, KvCacheDtype::Fp8] {
        let config = |blocks, seqs, tokens| EngineConfig {
            cache_dtype: dtype,
            ..config(blocks, 4, seqs, tokens, false)
        };
        let alone: Vec<RequestOutput> = requests
            .iter()
            .map(|r| {
                run(&model, &tok, config(64, 1, 512), std::slice::from_ref(r))
                    .0
                    .remove(0)
            })
            .collect();
        // 24 blocks of 4 tokens for 50 requests of up to 63 tokens; 32 tokens per step.
        let (batched, preemptions, _) = run(&model, &tok, config(24, 16, 32), &requests);
        assert!(preemptions > 0, "the cache was meant to be too small");
        assert_eq!(batched.len(), requests.len());
        for (a, b) in alone.iter().zip(&batched) {
            assert_eq!(a.id, b.id);
            assert_eq!(
                a.output_tokens, b.output_tokens,
                "{dtype:?}: request {} differs in a batch",
                a.id
            );
            assert_eq!(a.finish_reason, b.finish_reason);
            assert_eq!(a.text, b.text);
        }
        eprintln!(
            "{dtype:?}: 50 requests, {preemptions} preemptions, all outputs identical to running alone"
        );
    }
}

#[test]
fn prefix_caching_reuses_blocks_and_changes_nothing() {
    let (model, tok) = load("v3");
    let prefix: Vec<u32> = (0..24).map(|i| 2 + (i * 7) % 300).collect();
    let requests = random_requests(20, 2, &prefix);
    for dtype in [KvCacheDtype::Auto, KvCacheDtype::Fp8] {
        let config = |caching| EngineConfig {
            cache_dtype: dtype,
            ..config(128, 4, 8, 64, caching)
        };
        let (without, _, rate) = run(&model, &tok, config(false), &requests);
        assert_eq!(rate, 0.0);
        let (with, _, rate) = run(&model, &tok, config(true), &requests);
        for (a, b) in without.iter().zip(&with) {
            assert_eq!(
                a.output_tokens, b.output_tokens,
                "{dtype:?}: request {}",
                a.id
            );
        }
        assert!(
            with.iter().skip(8).all(|o| o.cached_prompt_tokens >= 24),
            "later requests reuse the shared prefix"
        );
        assert!(rate > 0.2, "prefix cache hit rate {rate}");
        eprintln!("{dtype:?}: prefix cache hit rate {:.1}%", rate * 100.0);
    }
}

#[test]
fn stop_conditions() {
    let (model, tok) = load("v2-grouped");
    let exp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("v2-grouped/expected.json")).unwrap(),
    )
    .unwrap();
    let prompt = tok.encode(exp["prompt"].as_str().unwrap()).unwrap();
    let greedy: Vec<u32> = exp["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let base = Request {
        id: "a".into(),
        prompt,
        sampling: SamplingParams::default(),
        max_tokens: 8,
        stop: Vec::new(),
        ignore_eos: false,
    };
    let (out, _, _) = run(
        &model,
        &tok,
        config(64, 4, 4, 64, false),
        std::slice::from_ref(&base),
    );
    assert_eq!(
        out[0].output_tokens, greedy,
        "matches transformers' greedy ids"
    );
    assert_eq!(out[0].finish_reason, FinishReason::Length);
    assert_eq!(out[0].text, tok.decode(&greedy).unwrap());
    assert_eq!(out[0].token_times.len(), 8);

    // A stop string taken from the middle of the greedy text ends generation there.
    let full = tok.decode(&greedy).unwrap();
    let stop = full[full.len() / 2..].chars().take(2).collect::<String>();
    let request = Request {
        stop: vec![stop.clone()],
        ..base.clone()
    };
    let (out, _, _) = run(&model, &tok, config(64, 4, 4, 64, false), &[request]);
    assert_eq!(out[0].finish_reason, FinishReason::Stop);
    assert!(
        !out[0].text.contains(&stop) && full.starts_with(&out[0].text),
        "{:?} / {stop:?}",
        out[0].text
    );
    assert!(out[0].output_tokens.len() < 8);
}

#[test]
fn requests_that_cannot_fit_are_refused_up_front() {
    let (model, tok) = load("v2-lite");
    let mut engine = Engine::new(
        &model,
        &CpuBackend::EXACT,
        Some(&tok),
        config(4, 4, 4, 64, false),
    )
    .unwrap();
    let request = Request {
        id: "big".into(),
        prompt: vec![5; 20],
        sampling: SamplingParams::default(),
        max_tokens: 4,
        stop: Vec::new(),
        ignore_eos: false,
    };
    let err = engine.add_request(request.clone()).unwrap_err().to_string();
    assert!(
        err.contains("request big") && err.contains("cache blocks"),
        "{err}"
    );
    let err = engine
        .add_request(Request {
            prompt: vec![400],
            ..request.clone()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("400") && err.contains("vocab"), "{err}");
    let err = engine
        .add_request(Request {
            prompt: vec![5; 129],
            ..request
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
}

#[test]
fn penalties_min_tokens_and_logprobs() {
    let (model, tok) = load("v2-lite");
    let base = Request {
        id: "p".into(),
        prompt: vec![5, 9, 9, 17, 5, 33],
        sampling: SamplingParams::default(),
        max_tokens: 12,
        stop: Vec::new(),
        ignore_eos: true,
    };
    let cfg = config(64, 4, 4, 64, false);
    let plain = run(&model, &tok, cfg, std::slice::from_ref(&base))
        .0
        .remove(0);
    assert!(plain.logprobs.is_empty());
    // Log-probabilities do not change the greedy choice; each is the chosen token's and the
    // best alternatives', most likely first, the chosen one the best (greedy).
    let with_logprobs = Request {
        sampling: SamplingParams {
            logprobs: Some(4),
            ..SamplingParams::default()
        },
        ..base.clone()
    };
    let out = run(&model, &tok, cfg, &[with_logprobs]).0.remove(0);
    assert_eq!(out.output_tokens, plain.output_tokens);
    assert_eq!(out.logprobs.len(), out.output_tokens.len());
    for (lp, &t) in out.logprobs.iter().zip(&out.output_tokens) {
        assert_eq!((lp.token, lp.top.len(), lp.top[0].0), (t, 4, t));
        assert!(lp.logprob <= 0.0 && lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }
    // A strong repetition penalty never repeats a greedy choice that a plain run repeats.
    let repeats = |ids: &[u32]| (1..ids.len()).any(|i| ids[..i].contains(&ids[i]));
    if repeats(&plain.output_tokens) {
        let penalised = Request {
            sampling: SamplingParams {
                frequency_penalty: 2.0,
                presence_penalty: 2.0,
                repetition_penalty: 100.0,
                ..SamplingParams::default()
            },
            ..base.clone()
        };
        let out = run(&model, &tok, cfg, &[penalised]).0.remove(0);
        assert_ne!(out.output_tokens, plain.output_tokens);
    }
    // min_tokens: the first EOS the plain run produces is masked before that many tokens.
    let eos = tok.eos_ids().to_vec();
    let stops_early = Request {
        ignore_eos: false,
        max_tokens: 40,
        ..base.clone()
    };
    let natural = run(&model, &tok, cfg, std::slice::from_ref(&stops_early))
        .0
        .remove(0);
    let min_tokens = natural.output_tokens.len() + 3;
    let forced = Request {
        sampling: SamplingParams {
            min_tokens,
            ..SamplingParams::default()
        },
        max_tokens: min_tokens + 10,
        ..stops_early
    };
    let out = run(&model, &tok, cfg, &[forced]).0.remove(0);
    assert!(
        out.output_tokens.len() >= min_tokens,
        "{:?}",
        out.output_tokens
    );
    assert!(
        out.output_tokens[..min_tokens]
            .iter()
            .all(|t| !eos.contains(t)),
        "no EOS before min_tokens: {:?}",
        out.output_tokens
    );
}

#[test]
fn an_aborted_request_frees_its_blocks_and_leaves_the_others_alone() {
    let (model, tok) = load("v2-lite");
    let requests = random_requests(6, 3, &[]);
    let (alone, _, _) = run(&model, &tok, config(64, 4, 8, 64, false), &requests);
    let mut engine = Engine::new(
        &model,
        &CpuBackend::EXACT,
        Some(&tok),
        config(64, 4, 8, 64, false),
    )
    .unwrap();
    let indices: Vec<usize> = requests
        .iter()
        .map(|r| engine.add_request(r.clone()).unwrap())
        .collect();
    // One request aborted while waiting, one while running.
    assert!(engine.abort(indices[5]));
    engine.step().unwrap();
    assert!(engine.abort(indices[2]));
    assert!(!engine.abort(indices[2]), "already gone");
    let (waiting, running) = engine.queue_lengths();
    assert_eq!(waiting + running, 4);
    let outputs = engine.run_to_completion(|_| {}).unwrap();
    assert_eq!(outputs.len(), 4);
    for o in &outputs {
        assert_eq!(o.output_tokens, alone[o.index].output_tokens, "{}", o.id);
    }
    assert_eq!(engine.cache_blocks().0, 0, "every block back in the pool");
}
