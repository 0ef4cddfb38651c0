use super::*;
use serde_json::json;
use std::path::Path;

fn v2_lite() -> Value {
    let mut v = crate::config::presets::deepseek_v2_lite();
    v["tie_word_embeddings"] = json!(false);
    v["torch_dtype"] = json!("bfloat16");
    v
}

fn parse(v: &Value) -> Result<DeepSeekConfig> {
    ModelConfig::from_value(Path::new("config.json"), v)
        .map(|c| c.deepseek().expect("a DeepSeek config").clone())
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v.as_object_mut().unwrap().insert(key.to_string(), value);
    v
}

#[test]
fn published_v2_lite_parses() {
    let c = parse(&v2_lite()).unwrap();
    assert_eq!(c.architecture, Architecture::DeepseekV2);
    assert_eq!(c.latent_cache_width(), 576);
    assert_eq!(c.qk_head_dim(), 192);
    assert!(!c.is_moe_layer(0) && c.is_moe_layer(1) && c.is_moe_layer(26));
    let RopeScaling::Yarn(y) = &c.rope.scaling else {
        panic!("expected yarn")
    };
    assert_eq!((y.factor, y.original_max_position_embeddings), (40.0, 4096));
    assert!(c.rope.interleaved);
    // scale = 192^-0.5 · (0.1·0.707·ln 40 + 1)²
    let m = 0.1 * 0.707 * 40f64.ln() + 1.0;
    assert!((c.softmax_scale() as f64 - m * m / 192f64.sqrt()).abs() < 1e-7);
    assert_eq!(c.eos_token_ids, vec![100001]);
}

#[test]
fn transformers5_rope_parameters_equal_published_rope_scaling() {
    let published = parse(&v2_lite()).unwrap();
    let mut v5 = v2_lite();
    let map = v5.as_object_mut().unwrap();
    map.remove("rope_scaling");
    map.remove("rope_theta");
    map.insert(
        "rope_parameters".into(),
        json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
               "original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
               "mscale": 0.707, "mscale_all_dim": 0.707}),
    );
    assert_eq!(parse(&v5).unwrap(), published);
}

#[test]
fn v3_defaults_and_half_split_pairs() {
    let mut v = with(v2_lite(), "model_type", json!("deepseek_v3"));
    for key in [
        "topk_method",
        "scoring_func",
        "n_group",
        "topk_group",
        "norm_topk_prob",
    ] {
        v.as_object_mut().unwrap().remove(key);
    }
    let v = with(with(v, "n_group", json!(8)), "topk_group", json!(4));
    let c = parse(&with(v, "rope_interleave", json!(false))).unwrap();
    let moe = c.moe.unwrap();
    assert_eq!(moe.topk_method, TopkMethod::NoauxTc);
    assert_eq!(moe.scoring_func, ScoringFunc::Sigmoid);
    assert!(moe.norm_topk_prob);
    assert!(!c.rope.interleaved);
}

#[test]
fn yarn_factor_defaults_to_the_context_extension_and_linear_keeps_mscale() {
    let c = parse(&with(
        v2_lite(),
        "rope_scaling",
        json!({"type": "yarn", "original_max_position_embeddings": 4096, "mscale_all_dim": 1.0}),
    ))
    .unwrap();
    let RopeScaling::Yarn(y) = &c.rope.scaling else {
        panic!("expected yarn")
    };
    assert_eq!(y.factor, 40.0);
    let c = parse(&with(
        v2_lite(),
        "rope_scaling",
        json!({"type": "linear", "factor": 4.0, "mscale_all_dim": 1.0}),
    ))
    .unwrap();
    let m = 0.1 * 4f64.ln() + 1.0;
    assert!((c.softmax_scale() as f64 - m * m / 192f64.sqrt()).abs() < 1e-7);
    let plain = parse(&with(v2_lite(), "rope_scaling", Value::Null)).unwrap();
    assert!((plain.softmax_scale() as f64 - 1.0 / 192f64.sqrt()).abs() < 1e-8);
}

#[test]
fn eos_may_be_a_list() {
    let c = parse(&with(v2_lite(), "eos_token_id", json!([100001, 7]))).unwrap();
    assert_eq!(c.eos_token_ids, vec![100001, 7]);
}

/// Each broken config must be rejected with a message naming the key and the value.
#[test]
fn inconsistent_configs_name_key_and_value() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            with(v2_lite(), "model_type", json!("llama4")),
            "model_type",
            "llama4",
        ),
        (
            with(v2_lite(), "qk_rope_head_dim", json!(63)),
            "qk_rope_head_dim",
            "63",
        ),
        (with(v2_lite(), "hidden_size", json!(0)), "hidden_size", "0"),
        // Sizes no model has are refused before anything is allocated or counted.
        (
            with(v2_lite(), "num_hidden_layers", json!(10_000_000_000u64)),
            "num_hidden_layers",
            "at most 1024, found 10000000000",
        ),
        (
            with(v2_lite(), "num_hidden_layers", json!(1u64 << 53)),
            "num_hidden_layers",
            "9007199254740992",
        ),
        (
            with(v2_lite(), "hidden_size", json!(1u64 << 40)),
            "hidden_size",
            "at most 1048576",
        ),
        (
            with(v2_lite(), "n_routed_experts", json!(1u64 << 40)),
            "n_routed_experts",
            "at most 1048576",
        ),
        (
            with(v2_lite(), "first_k_dense_replace", json!(u64::MAX)),
            "first_k_dense_replace",
            "at most 1048576",
        ),
        (
            with(v2_lite(), "max_position_embeddings", json!(1u64 << 30)),
            "max_position_embeddings",
            "at most 16777216",
        ),
        // An id past u32 would wrap onto token 5.
        (
            with(v2_lite(), "eos_token_id", json!(4_294_967_301u64)),
            "eos_token_id",
            "4294967301",
        ),
        (
            with(v2_lite(), "hidden_size", json!("big")),
            "hidden_size",
            "big",
        ),
        (
            with(v2_lite(), "num_experts_per_tok", json!(65)),
            "num_experts_per_tok",
            "65",
        ),
        (
            with(
                with(v2_lite(), "topk_method", json!("group_limited_greedy")),
                "n_group",
                json!(5),
            ),
            "n_group",
            "5",
        ),
        (
            with(
                with(
                    with(v2_lite(), "topk_method", json!("group_limited_greedy")),
                    "n_group",
                    json!(8),
                ),
                "topk_group",
                json!(9),
            ),
            "topk_group",
            "9",
        ),
        (
            with(v2_lite(), "topk_method", json!("best")),
            "topk_method",
            "best",
        ),
        (
            with(v2_lite(), "scoring_func", json!("sigmoid")),
            "topk_method",
            "sigmoid",
        ),
        (
            with(v2_lite(), "hidden_act", json!("gelu")),
            "hidden_act",
            "gelu",
        ),
        (
            with(v2_lite(), "eos_token_id", json!(200000)),
            "eos_token_id",
            "200000",
        ),
        (with(v2_lite(), "q_lora_rank", json!(0)), "q_lora_rank", "0"),
        (
            with(
                v2_lite(),
                "rope_scaling",
                json!({"type": "dynamic-ntk", "factor": 2}),
            ),
            "rope_scaling.type",
            "dynamic-ntk",
        ),
        (
            with(
                v2_lite(),
                "rope_scaling",
                json!({"type": "yarn", "factor": -1}),
            ),
            "rope_scaling.factor",
            "-1",
        ),
    ];
    for (config, key, value) in cases {
        let err = parse(&config).expect_err(key).to_string();
        assert!(
            err.contains(&format!("`{key}`")) && err.contains(value),
            "{key}: {err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }
    let mut missing = v2_lite();
    missing.as_object_mut().unwrap().remove("kv_lora_rank");
    let err = parse(&missing).unwrap_err().to_string();
    assert!(
        err.contains("`kv_lora_rank`") && err.contains("missing"),
        "{err}"
    );
}
