//! The CPU engine against transformers: float64 reference logits made by
//! `scripts/fixtures/make_fixtures.py` for tiny random DeepSeek-V2/V3 checkpoints (see each fixture's
//! `expected.json` description for the branches it covers).

mod common;

use common::{fixtures_dir, rel_l2};
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::config::ModelConfig;
use mla_rt::engine::batch_engine::{Engine, EngineConfig};
use mla_rt::engine::request::Request;
use mla_rt::engine::sampler::SamplingParams;
use mla_rt::engine::scheduler::SchedulerConfig;
use mla_rt::engine::session::Session;
use mla_rt::model::AttentionForm;
use mla_rt::model::Model;
use mla_rt::tokenizer::TextTokenizer;
use mla_rt::weights::Checkpoint;
use std::path::{Path, PathBuf};

/// The tolerance of the project for f32 against a float64 reference.
const TOLERANCE: f64 = 1e-4;

#[derive(serde::Deserialize)]
struct Expected {
    token_ids: Vec<u32>,
    /// One causal forward over all of `token_ids`.
    logits: Vec<Vec<f64>>,
    /// transformers' own incremental path: one token at a time through its KV cache.
    decode_logits: Vec<Vec<f64>>,
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    perplexity: PerplexityReference,
}

#[derive(serde::Deserialize)]
struct PerplexityReference {
    ids: Vec<u32>,
    context: usize,
    stride: usize,
    tokens_evaluated: usize,
    nll: f64,
}

fn fixtures() -> Vec<(PathBuf, Expected)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists (run from the crate root)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 4,
        "expected at least 4 fixtures, found {dirs:?}"
    );
    dirs.into_iter()
        .map(|d| {
            let expected =
                serde_json::from_str(&std::fs::read_to_string(d.join("expected.json")).unwrap())
                    .unwrap();
            (d, expected)
        })
        .collect()
}

fn load(dir: &Path) -> Model<CpuBackend> {
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    Model::load(config, &Checkpoint::open(dir).unwrap(), &CpuBackend::EXACT).unwrap()
}

fn check(
    dir: &Path,
    expected: &Expected,
    reference: &[Vec<f64>],
    prefill: usize,
    form: AttentionForm,
    block_size: usize,
) {
    let model = load(dir);
    let vocab = model.config.vocab_size();
    let ids = &expected.token_ids;
    let mut session =
        Session::new(&model, &CpuBackend::EXACT, ids.len(), block_size, form).unwrap();
    let logits = session.logits(ids, prefill).unwrap();
    assert_eq!(logits.len(), ids.len() * vocab);
    let mut worst = 0.0f64;
    for (p, (got, want)) in logits.chunks(vocab).zip(reference).enumerate() {
        let err = rel_l2(got, want);
        assert!(
            err <= TOLERANCE,
            "{}: prefill {prefill}, {form:?}: position {p} has relative L2 error {err:e}",
            dir.display()
        );
        worst = worst.max(err);
    }
    eprintln!(
        "{}: prefill {prefill} {form:?} block {block_size}: worst relative L2 {worst:.2e}",
        dir.display()
    );
}

#[test]
fn prefill_matches_transformers() {
    for (dir, expected) in fixtures() {
        check(
            &dir,
            &expected,
            &expected.logits,
            expected.token_ids.len(),
            AttentionForm::Auto,
            64,
        );
    }
}

#[test]
fn absorbed_prefill_matches_transformers() {
    for (dir, expected) in fixtures() {
        check(
            &dir,
            &expected,
            &expected.logits,
            expected.token_ids.len(),
            AttentionForm::Absorbed,
            16,
        );
    }
}

#[test]
fn token_by_token_decode_matches_transformers() {
    for (dir, expected) in fixtures() {
        // BOS alone, then every token through the cache (the absorbed form for MLA); small
        // blocks so the sequence spans several pages.
        check(
            &dir,
            &expected,
            &expected.decode_logits,
            1,
            AttentionForm::Auto,
            4,
        );
        let half = expected.token_ids.len() / 2;
        check(
            &dir,
            &expected,
            &expected.decode_logits,
            half,
            AttentionForm::Auto,
            64,
        );
    }
}

#[test]
fn tokenizer_and_greedy_generation_match_transformers() {
    for (dir, expected) in fixtures() {
        let model = load(&dir);
        let tokenizer = TextTokenizer::load(&dir, &model.config).unwrap();
        let prompt = tokenizer.encode(&expected.prompt).unwrap();
        assert_eq!(
            prompt[0],
            model.config.bos_token_id().unwrap(),
            "{}: BOS first",
            dir.display()
        );
        assert_eq!(
            prompt[1..],
            expected.prompt_ids[..],
            "{}: tokenization",
            dir.display()
        );
        let max_new = expected.greedy_ids.len();
        let config = EngineConfig {
            block_size: 4,
            num_blocks: 16,
            prefix_caching: false,
            scheduler: SchedulerConfig::default(),
            attention: AttentionForm::Auto,
            cuda_graphs: false,
            cache_dtype: Default::default(),
        };
        let mut engine = Engine::new(&model, &CpuBackend::EXACT, Some(&tokenizer), config).unwrap();
        let request = Request {
            id: "greedy".into(),
            prompt,
            sampling: SamplingParams::default(),
            max_tokens: max_new,
            stop: Vec::new(),
            ignore_eos: true,
        };
        engine.add_request(request).unwrap();
        let output = engine.run_to_completion(|_| {}).unwrap().remove(0);
        assert_eq!(
            output.output_tokens,
            expected.greedy_ids,
            "{}: greedy ids",
            dir.display()
        );
    }
}

#[test]
fn sliding_window_perplexity_matches_transformers() {
    for (dir, expected) in fixtures() {
        let model = load(&dir);
        let reference = &expected.perplexity;
        let result = mla_rt::engine::perplexity::sliding_window(
            &model,
            &CpuBackend::EXACT,
            &reference.ids,
            mla_rt::engine::perplexity::Windows {
                context: reference.context,
                stride: reference.stride,
            },
            (16, AttentionForm::Auto, Default::default()),
            |_, _| {},
        )
        .unwrap();
        assert_eq!(
            result.tokens_evaluated,
            reference.tokens_evaluated,
            "{}",
            dir.display()
        );
        let err = (result.mean_nll() - reference.nll).abs() / reference.nll;
        assert!(
            err <= 1e-4,
            "{}: mean NLL {} vs transformers {} (relative {err:e})",
            dir.display(),
            result.mean_nll(),
            reference.nll
        );
        eprintln!(
            "{}: perplexity {:.4}, mean NLL relative error {err:.1e}",
            dir.display(),
            result.ppl()
        );
    }
}

/// Top-1 agreement and relative L2 errors (sorted) of every fixture's token-by-token logits
/// with a cache of `dtype` against transformers' float64 ones.
fn cache_quality(dtype: mla_rt::kv::cache_dtype::KvCacheDtype) -> (usize, usize, Vec<f64>) {
    let (mut agree, mut positions, mut errors) = (0usize, 0usize, Vec::new());
    let top = |x: &mut dyn Iterator<Item = f64>| {
        x.enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    };
    for (dir, expected) in fixtures() {
        let model = load(&dir);
        let vocab = model.config.vocab_size();
        let ids = &expected.token_ids;
        let mut session = Session::with_cache_dtype(
            &model,
            &CpuBackend::EXACT,
            ids.len(),
            4,
            AttentionForm::Auto,
            dtype,
        )
        .unwrap();
        // BOS alone, then token by token: every position reads its context from the cache.
        let logits = session.logits(ids, 1).unwrap();
        for (got, want) in logits.chunks(vocab).zip(&expected.decode_logits) {
            let err = rel_l2(got, want);
            assert!(err.is_finite(), "{}", dir.display());
            errors.push(err);
            agree += (top(&mut got.iter().map(|&v| v as f64)) == top(&mut want.iter().copied()))
                as usize;
            positions += 1;
        }
    }
    errors.sort_by(f64::total_cmp);
    (agree, positions, errors)
}

/// The quality `--kv-cache-dtype` costs against transformers, on every fixture (the README's
/// table). The fixtures' random weights give flat logits, so a small error can move the top
/// token: the bounds are what FP8 reaches with room, far from what a wrong scale would give.
#[test]
fn bf16_and_fp8_caches_keep_the_top_token() {
    use mla_rt::kv::cache_dtype::KvCacheDtype;
    for (dtype, min_agree, max_median) in [
        (KvCacheDtype::Bf16, 97, 5e-3),
        (KvCacheDtype::Fp8, 85, 5e-2),
    ] {
        let (agree, positions, errors) = cache_quality(dtype);
        let median = errors[errors.len() / 2];
        eprintln!(
            "{dtype:?} cache: top-1 agreement {agree}/{positions}, relative L2 median {median:.2e}, worst {:.2e}",
            errors[errors.len() - 1]
        );
        assert!(
            agree * 100 >= positions * min_agree,
            "{dtype:?}: top-1 agreement {agree}/{positions}"
        );
        assert!(
            median <= max_median,
            "{dtype:?}: median relative L2 {median:e}"
        );
    }
}

/// `--quantization fp8` rounds a checkpoint's weights as DeepSeek's FP8 checkpoints store them:
/// v2-lite and v3-halfsplit quantized online in 32 × 16 blocks give the logits transformers
/// computes for v2-fp8 and v3-fp8 (the same bases quantized by `make_fp8_fixtures.py`).
#[test]
fn online_fp8_weights_match_the_fp8_fixtures() {
    use mla_rt::config::quantization::Fp8Blocks;
    use mla_rt::weights::online_fp8::OnlineFp8;
    for (base, quantized) in [("v2-lite", "v2-fp8"), ("v3-halfsplit", "v3-fp8")] {
        let dir = common::fixtures_dir().join(quantized);
        let expected: Expected =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let description = std::fs::read_to_string(dir.join("expected.json")).unwrap();
        assert!(
            description.contains(&format!("{base} with")),
            "{quantized} comes from {base}"
        );
        let base_dir = common::fixtures_dir().join(base);
        let config = ModelConfig::from_file(&base_dir.join("config.json")).unwrap();
        let checkpoint = Checkpoint::open(&base_dir).unwrap();
        let source = OnlineFp8 {
            inner: &checkpoint,
            blocks: Fp8Blocks { rows: 32, cols: 16 },
        };
        let model = Model::load(config, &source, &CpuBackend::EXACT).unwrap();
        let ids = &expected.token_ids;
        let vocab = model.config.vocab_size();
        let mut session = Session::new(
            &model,
            &CpuBackend::EXACT,
            ids.len(),
            64,
            AttentionForm::Auto,
        )
        .unwrap();
        let logits = session.logits(ids, ids.len()).unwrap();
        for (p, (got, want)) in logits.chunks(vocab).zip(&expected.logits).enumerate() {
            let err = rel_l2(got, want);
            assert!(err <= TOLERANCE, "{base} online fp8, position {p}: {err:e}");
        }
    }
}
