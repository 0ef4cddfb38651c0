//! A DeepSeek-V2-Lite-shaped random model for the CPU benchmarks: the published head and latent
//! widths (16 heads, kv_lora_rank 512, rope 64, nope/v 128), shrunk in hidden size, layers,
//! experts and vocabulary so it loads in seconds on a laptop.
#![allow(dead_code)]

#[path = "../../tests/common/mod.rs"]
pub mod common;

use mla_rt::backend::cpu::CpuBackend;
use mla_rt::config::ModelConfig;
use mla_rt::model::params::{count_params, ParamCounts};
use mla_rt::model::Model;
use mla_rt::weights::Checkpoint;
use serde_json::json;
use std::time::Instant;

pub struct BenchModel {
    /// Keeps the checkpoint folder alive.
    pub dir: tempfile::TempDir,
    pub model: Model<CpuBackend>,
    pub params: ParamCounts,
}

pub fn v2_lite_shaped(layers: usize) -> BenchModel {
    let config = common::tiny_config(
        "deepseek_v2",
        json!({"vocab_size": 8192, "hidden_size": 1024, "intermediate_size": 2816,
               "moe_intermediate_size": 512, "num_hidden_layers": layers, "num_attention_heads": 16,
               "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
               "n_routed_experts": 16, "num_experts_per_tok": 4, "n_shared_experts": 2,
               "max_position_embeddings": 4096}),
    );
    let dir = common::write_model(&config, &common::random_weights(&config, 1));
    let model_config = ModelConfig::from_file(&dir.path().join("config.json")).unwrap();
    let params = count_params(&model_config);
    let model = Model::load(
        model_config,
        &Checkpoint::open(dir.path()).unwrap(),
        &CpuBackend::EXACT,
    )
    .unwrap();
    BenchModel { dir, model, params }
}

/// The fastest of `reps` runs of `f`, in seconds.
pub fn best_of<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
