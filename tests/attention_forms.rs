//! The two MLA forms, prefill vs decode, block sizes and checkpoint layouts must all give the
//! same logits on random tiny models.

mod common;

use common::{fuse_experts, random_weights, rel_l2, tiny_config, write_model};
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::backend::Backend;
use mla_rt::config::ModelConfig;
use mla_rt::engine::session::Session;
use mla_rt::model::AttentionForm;
use mla_rt::model::Model;
use mla_rt::weights::Checkpoint;
use serde_json::{json, Value};
use std::path::Path;

fn load(dir: &Path) -> Model<CpuBackend> {
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    Model::load(config, &Checkpoint::open(dir).unwrap(), &CpuBackend::EXACT).unwrap()
}

fn logits(
    model: &Model<CpuBackend>,
    tokens: &[u32],
    prefill: usize,
    block_size: usize,
    form: AttentionForm,
) -> Vec<f32> {
    let mut session =
        Session::new(model, &CpuBackend::EXACT, tokens.len(), block_size, form).unwrap();
    session.logits(tokens, prefill).unwrap()
}

fn tokens(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % vocab).collect()
}

fn assert_close(got: &[f32], reference: &[f32], vocab: usize, what: &str) {
    for (p, (g, r)) in got.chunks(vocab).zip(reference.chunks(vocab)).enumerate() {
        let r: Vec<f64> = r.iter().map(|&v| v as f64).collect();
        let err = rel_l2(g, &r);
        assert!(
            err <= 1e-5,
            "{what}: position {p} differs by {err:e} (relative L2)"
        );
    }
}

fn configs() -> Vec<(&'static str, Value)> {
    vec![
        (
            "v2 yarn, q full rank",
            tiny_config("deepseek_v2", json!({})),
        ),
        (
            "v2 q low-rank, grouped routing",
            tiny_config(
                "deepseek_v2",
                json!({"q_lora_rank": 16, "topk_method": "group_limited_greedy", "norm_topk_prob": true, "rope_scaling": null}),
            ),
        ),
        (
            "v3 interleaved",
            tiny_config("deepseek_v3", json!({"q_lora_rank": 16})),
        ),
        (
            "v3 half-split",
            tiny_config("deepseek_v3", json!({"rope_interleave": false})),
        ),
    ]
}

#[test]
fn absorbed_form_equals_materialised_form() {
    for (name, config) in configs() {
        let dir = write_model(&config, &random_weights(&config, 1));
        let model = load(dir.path());
        let ids = tokens(40, 97);
        let materialised = logits(&model, &ids, ids.len(), 16, AttentionForm::Materialised);
        assert!(
            materialised.iter().all(|v| v.is_finite()),
            "{name}: non-finite logits"
        );
        let absorbed = logits(&model, &ids, ids.len(), 16, AttentionForm::Absorbed);
        assert_close(&absorbed, &materialised, 97, name);
    }
}

#[test]
fn decode_through_the_paged_cache_equals_one_prefill_at_any_block_size() {
    for (name, config) in configs() {
        let dir = write_model(&config, &random_weights(&config, 2));
        let model = load(dir.path());
        let ids = tokens(37, 97);
        let reference = logits(&model, &ids, ids.len(), 64, AttentionForm::Materialised);
        for (prefill, block_size) in [(1, 1), (5, 3), (17, 16), (36, 64)] {
            let got = logits(&model, &ids, prefill, block_size, AttentionForm::Auto);
            assert_close(
                &got,
                &reference,
                97,
                &format!("{name}, prefill {prefill}, block size {block_size}"),
            );
        }
    }
}

#[test]
fn fused_expert_layout_equals_per_expert_layout() {
    let config = tiny_config("deepseek_v3", json!({}));
    let weights = random_weights(&config, 3);
    let per_expert = load(write_model(&config, &weights).path());
    let mut fused = weights.clone();
    fuse_experts(&mut fused, &config);
    assert!(fused.contains_key("model.layers.1.mlp.experts.gate_up_proj"));
    let fused = load(write_model(&config, &fused).path());
    let ids = tokens(12, 97);
    let a = logits(&per_expert, &ids, 12, 64, AttentionForm::Auto);
    let b = logits(&fused, &ids, 12, 64, AttentionForm::Auto);
    assert_eq!(a, b);
}

/// `--quantization fp8` rounds fused experts as the per-expert layout (gate and up apart) and
/// hands them out as FP8 weights: with activations quantized before FP8 weights
/// (`CpuBackend::DYNAMIC_FP8`), an expert loaded dequantized would give other logits.
#[test]
fn fused_experts_become_the_same_fp8_weights() {
    use mla_rt::config::quantization::Fp8Blocks;
    use mla_rt::weights::online_fp8::OnlineFp8;
    let config = tiny_config("deepseek_v3", json!({}));
    let weights = random_weights(&config, 3);
    let mut fused = weights.clone();
    fuse_experts(&mut fused, &config);
    let ids = tokens(12, 97);
    let mut runs = Vec::new();
    for backend in [CpuBackend::EXACT, CpuBackend::DYNAMIC_FP8] {
        let mut layouts = [&weights, &fused].map(|w| {
            let dir = write_model(&config, w);
            let checkpoint = Checkpoint::open(dir.path()).unwrap();
            let source = OnlineFp8 {
                inner: &checkpoint,
                blocks: Fp8Blocks::DEEPSEEK,
            };
            let model_config = ModelConfig::from_file(&dir.path().join("config.json")).unwrap();
            let model = Model::load(model_config, &source, &backend).unwrap();
            let mut session =
                Session::new(&model, &backend, ids.len(), 64, AttentionForm::Auto).unwrap();
            session.logits(&ids, 12).unwrap()
        });
        assert!(
            layouts[0] == layouts[1],
            "{}: the layouts differ",
            backend.name()
        );
        runs.push(std::mem::take(&mut layouts[0]));
    }
    assert!(runs[0] != runs[1], "dynamic quantized no activation");
}

#[test]
fn tied_embeddings_reuse_the_embedding_table_as_lm_head() {
    let config = tiny_config("deepseek_v2", json!({"tie_word_embeddings": true}));
    let mut weights = random_weights(&config, 4);
    assert!(!weights.contains_key("lm_head.weight"));
    let tied = load(write_model(&config, &weights).path());
    let embed = weights["model.embed_tokens.weight"].clone();
    weights.insert("lm_head.weight".into(), embed);
    let untied_config = tiny_config("deepseek_v2", json!({"tie_word_embeddings": false}));
    let untied = load(write_model(&untied_config, &weights).path());
    let ids = tokens(9, 97);
    assert_eq!(
        logits(&tied, &ids, 9, 64, AttentionForm::Auto),
        logits(&untied, &ids, 9, 64, AttentionForm::Auto)
    );
}

/// Pages in any order: attention through a shuffled block table equals attention through a
/// contiguous one, and unwritten (NaN) pages are never read.
#[test]
fn attention_reads_only_the_pages_of_its_block_table() {
    use mla_rt::backend::{AttentionBatch, Backend, MlaDims, SeqChunk};
    use mla_rt::weights::HostTensor;
    let dims = MlaDims {
        heads: 3,
        qk_nope: 8,
        qk_rope: 4,
        v_head: 6,
        kv_lora_rank: 16,
        softmax_scale: 0.3,
    };
    let (len, block_size, width) = (23, 4, dims.latent_width());
    let mut rng = common::Rng::new(11);
    let latent = HostTensor::new(vec![len, width], rng.normals(len * width, 1.0));
    let q = HostTensor::new(
        vec![len, dims.heads * dims.qk_head()],
        rng.normals(len * dims.heads * dims.qk_head(), 1.0),
    );
    let kv_b = HostTensor::new(
        vec![dims.heads * (dims.qk_nope + dims.v_head), dims.kv_lora_rank],
        rng.normals(3 * 14 * 16, 0.3),
    );
    let w_uk = CpuBackend::EXACT
        .upload_head_weight(
            3,
            16,
            8,
            mla_rt::model::deepseek::absorption_weights(&kv_b.data, &dims).0,
        )
        .unwrap();
    let run = |table: Vec<u32>, num_blocks: usize| {
        let mut cache = CpuBackend::EXACT
            .alloc_kv_cache(1, num_blocks, block_size, width)
            .unwrap();
        let slots: Vec<u32> = (0..len)
            .map(|p| table[p / block_size] * block_size as u32 + (p % block_size) as u32)
            .collect();
        CpuBackend::EXACT
            .write_kv_cache(&mut cache, 0, &latent, 0, &slots)
            .unwrap();
        let batch = AttentionBatch {
            block_size,
            seqs: vec![SeqChunk {
                block_table: table,
                context_len: len,
                query_len: len,
            }],
        };
        let m = CpuBackend::EXACT
            .mla_attention_materialised(&q, &cache, 0, &batch, &kv_b.clone().into(), &dims)
            .unwrap();
        let q_lat = CpuBackend::EXACT
            .head_matmul(&q, dims.qk_head(), 0, &w_uk)
            .unwrap();
        let a = CpuBackend::EXACT
            .mla_attention_absorbed(&q_lat, &q, &cache, 0, &batch, &dims)
            .unwrap();
        (m.data, a.data)
    };
    let (m_contiguous, a_contiguous) = run((0..6).collect(), 6);
    // 6 pages scattered over 13, the other 7 left as NaN.
    let (m_shuffled, a_shuffled) = run(vec![12, 3, 7, 0, 9, 5], 13);
    assert!(m_shuffled.iter().chain(&a_shuffled).all(|v| v.is_finite()));
    assert_eq!(m_contiguous, m_shuffled);
    assert_eq!(a_contiguous, a_shuffled);
}
