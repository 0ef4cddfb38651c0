//! Random-weight model presets, so benchmarks need no download: published dimensions, weights
//! generated from a fixed seed.

use crate::config::{MhaReplacement, ModelConfig};
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::path::Path;

pub const PRESETS: &[&str] = &[
    "deepseek-v2-lite",
    "deepseek-v2-lite-mha",
    "deepseek-v2-lite-gqa4",
    "llama2-7b",
    "llama3-8b",
    "deepseek-v3-L4",
];

/// DeepSeek-V2-Lite's published config.json (the keys that shape the model).
pub fn deepseek_v2_lite() -> Value {
    json!({
        "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048,
        "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
        "num_attention_heads": 16, "q_lora_rank": null, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
        "first_k_dense_replace": 1, "moe_layer_freq": 1, "routed_scaling_factor": 1.0,
        "topk_method": "greedy", "n_group": 1, "topk_group": 1, "norm_topk_prob": false,
        "scoring_func": "softmax", "max_position_embeddings": 163840, "rms_norm_eps": 1e-6,
        "rope_theta": 10000,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
        "bos_token_id": 100000, "eos_token_id": 100001
    })
}

fn preset_json(name: &str) -> Option<(Value, Option<MhaReplacement>)> {
    Some(match name {
        "deepseek-v2-lite" => (deepseek_v2_lite(), None),
        // The DeepSeek-V2 paper's comparison: the same model with MHA (16 heads × 128 for K and V).
        "deepseek-v2-lite-mha" => (
            deepseek_v2_lite(),
            Some(MhaReplacement {
                kv_heads: 16,
                head_dim: 128,
            }),
        ),
        "deepseek-v2-lite-gqa4" => (
            deepseek_v2_lite(),
            Some(MhaReplacement {
                kv_heads: 4,
                head_dim: 128,
            }),
        ),
        "llama2-7b" => (
            json!({
                "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
                "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2
            }),
            None,
        ),
        "llama3-8b" => (
            json!({
                "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
                "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0,
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                "bos_token_id": 128000, "eos_token_id": 128001
            }),
            None,
        ),
        // DeepSeek-V3's dimensions, first 4 layers (3 dense + 1 MoE), so it fits one GPU.
        "deepseek-v3-L4" => (
            json!({
                "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168,
                "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 4,
                "num_attention_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
                "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
                "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
                "first_k_dense_replace": 3, "n_group": 8, "topk_group": 4,
                "routed_scaling_factor": 2.5, "norm_topk_prob": true,
                "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000,
                "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                 "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
                "bos_token_id": 0, "eos_token_id": 1
            }),
            None,
        ),
        _ => return None,
    })
}

/// The config of preset `name`, optionally cut to its first `layers` layers.
pub fn preset_config(name: &str, layers: Option<usize>) -> Result<ModelConfig> {
    let (mut json, mha) = preset_json(name).ok_or_else(|| {
        Error::InvalidInput(format!(
            "unknown preset \"{name}\" (available: {})",
            PRESETS.join(", ")
        ))
    })?;
    if let Some(layers) = layers {
        if layers == 0 {
            return Err(Error::InvalidInput("--layers must be at least 1".into()));
        }
        json["num_hidden_layers"] = json!(layers);
    }
    let mut config = ModelConfig::from_value(Path::new(&format!("preset:{name}")), &json)?;
    if let ModelConfig::DeepSeek(c) = &mut config {
        c.mha_replacement = mha;
    }
    Ok(config)
}
