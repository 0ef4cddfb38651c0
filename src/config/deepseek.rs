//! DeepSeek-V2 / V3 (`deepseek_v2`, `deepseek_v3`): MLA dims, MoE routing keys.
//!
//! Keys that only change behaviour default to what transformers' config classes default to;
//! shape keys are required.

use super::json_keys::Keys;
use super::rope::{parse_rope, RopeConfig};
use super::Architecture;
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoringFunc {
    Softmax,
    Sigmoid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopkMethod {
    Greedy,
    GroupLimitedGreedy,
    NoauxTc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
    pub routed_scaling_factor: f64,
    pub topk_method: TopkMethod,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub scoring_func: ScoringFunc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeepSeekConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub rope: RopeConfig,
    pub moe: Option<MoeConfig>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` as written in the file, for display only.
    pub dtype: Option<String>,
    /// Benchmark presets only, never read from a file: plain attention instead of MLA, as in
    /// the DeepSeek-V2 paper's comparison (same model otherwise).
    pub mha_replacement: Option<MhaReplacement>,
}

/// Multi-head (or grouped-query) attention standing in for MLA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MhaReplacement {
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl DeepSeekConfig {
    pub(super) fn from_keys(keys: &Keys, architecture: Architecture) -> Result<Self> {
        let v3 = architecture == Architecture::DeepseekV3;

        keys.require_silu()?;

        let q_lora_rank = keys.opt_usize("q_lora_rank")?;
        if q_lora_rank == Some(0) {
            return Err(keys.err("q_lora_rank", "must be null or at least 1, found 0"));
        }
        let max_position_embeddings =
            keys.usize_or("max_position_embeddings", if v3 { 4096 } else { 2048 })?;
        let config = DeepSeekConfig {
            architecture,
            vocab_size: keys.dim("vocab_size")?,
            hidden_size: keys.dim("hidden_size")?,
            intermediate_size: keys.dim("intermediate_size")?,
            num_hidden_layers: keys.dim("num_hidden_layers")?,
            num_attention_heads: keys.dim("num_attention_heads")?,
            q_lora_rank,
            kv_lora_rank: keys.dim("kv_lora_rank")?,
            qk_nope_head_dim: keys.dim("qk_nope_head_dim")?,
            qk_rope_head_dim: keys.dim("qk_rope_head_dim")?,
            v_head_dim: keys.dim("v_head_dim")?,
            rms_norm_eps: keys.f64_or("rms_norm_eps", 1e-6)?,
            max_position_embeddings,
            // DeepSeek-V2 always rotates interleaved pairs; V3 makes it a key.
            rope: parse_rope(
                keys,
                max_position_embeddings,
                !v3 || keys.bool_or("rope_interleave", true)?,
            )?,
            moe: parse_moe(keys, v3)?,
            tie_word_embeddings: keys.bool_or("tie_word_embeddings", false)?,
            bos_token_id: keys.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: keys.token_ids("eos_token_id")?,
            dtype: match keys.opt_str("dtype")? {
                Some(d) => Some(d.to_string()),
                None => keys.opt_str("torch_dtype")?.map(str::to_string),
            },
            mha_replacement: None,
        };
        config.validate(keys)?;
        Ok(config)
    }

    fn validate(&self, keys: &Keys) -> Result<()> {
        if self.qk_rope_head_dim % 2 != 0 {
            return Err(keys.err(
                "qk_rope_head_dim",
                format!(
                    "must be even (RoPE rotates pairs), found {}",
                    self.qk_rope_head_dim
                ),
            ));
        }
        if self.rms_norm_eps <= 0.0 {
            return Err(keys.err(
                "rms_norm_eps",
                format!("must be positive, found {}", self.rms_norm_eps),
            ));
        }
        keys.check_special_tokens(self.bos_token_id, &self.eos_token_ids, self.vocab_size)?;
        if let Some(moe) = &self.moe {
            let e = moe.n_routed_experts;
            if moe.num_experts_per_tok == 0 || moe.num_experts_per_tok > e {
                return Err(keys.err(
                    "num_experts_per_tok",
                    format!(
                        "must be between 1 and n_routed_experts ({e}), found {}",
                        moe.num_experts_per_tok
                    ),
                ));
            }
            if moe.moe_layer_freq == 0 {
                return Err(keys.err("moe_layer_freq", "must be at least 1, found 0"));
            }
            if moe.topk_method != TopkMethod::Greedy {
                if moe.n_group == 0 || e % moe.n_group != 0 {
                    return Err(keys.err(
                        "n_group",
                        format!("must divide n_routed_experts ({e}), found {}", moe.n_group),
                    ));
                }
                if moe.topk_group == 0 || moe.topk_group > moe.n_group {
                    return Err(keys.err(
                        "topk_group",
                        format!(
                            "must be between 1 and n_group ({}), found {}",
                            moe.n_group, moe.topk_group
                        ),
                    ));
                }
                let reachable = moe.topk_group * (e / moe.n_group);
                if moe.num_experts_per_tok > reachable {
                    return Err(keys.err(
                        "num_experts_per_tok",
                        format!(
                            "{} experts cannot be chosen from topk_group × experts per group = {reachable}",
                            moe.num_experts_per_tok
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Query/key head width: the non-positional part plus the decoupled RoPE part.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Values stored per token and layer in the latent cache: the latent plus the roped key.
    pub fn latent_cache_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    /// Values the paged cache stores per token and layer: the MLA latent, or K and V of every
    /// KV head under an MHA replacement.
    pub fn cache_width(&self) -> usize {
        match self.mha_replacement {
            Some(m) => 2 * m.kv_heads * m.head_dim,
            None => self.latent_cache_width(),
        }
    }

    /// Whether layer `layer` uses the routed-expert MLP.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|m| layer >= m.first_k_dense_replace && layer % m.moe_layer_freq == 0)
    }

    /// The attention softmax scale: `d_qk^-0.5`, times `m²` under YaRN with `mscale_all_dim`.
    pub fn softmax_scale(&self) -> f32 {
        let m = self.rope.softmax_mscale.unwrap_or(1.0);
        ((self.qk_head_dim() as f64).powf(-0.5) * m * m) as f32
    }
}

fn parse_moe(keys: &Keys, v3: bool) -> Result<Option<MoeConfig>> {
    let Some(n_routed_experts) = keys.opt_usize("n_routed_experts")?.filter(|&e| e > 0) else {
        return Ok(None);
    };
    let topk_name = keys
        .opt_str("topk_method")?
        .unwrap_or(if v3 { "noaux_tc" } else { "greedy" });
    let topk_method = match topk_name {
        "greedy" => TopkMethod::Greedy,
        "group_limited_greedy" => TopkMethod::GroupLimitedGreedy,
        "noaux_tc" => TopkMethod::NoauxTc,
        other => {
            return Err(keys.err(
                "topk_method",
                format!("unknown topk_method \"{other}\" (supported: greedy, group_limited_greedy, noaux_tc)"),
            ))
        }
    };
    let scoring_name =
        keys.opt_str("scoring_func")?
            .unwrap_or(if v3 { "sigmoid" } else { "softmax" });
    let scoring_func = match scoring_name {
        "softmax" => ScoringFunc::Softmax,
        "sigmoid" => ScoringFunc::Sigmoid,
        other => {
            return Err(keys.err(
                "scoring_func",
                format!("unknown scoring_func \"{other}\" (supported: softmax, sigmoid)"),
            ))
        }
    };
    // The spec pairs noaux_tc with sigmoid scores (V3) and the greedy methods with softmax (V2).
    if (topk_method == TopkMethod::NoauxTc) != (scoring_func == ScoringFunc::Sigmoid) {
        return Err(keys.err(
            "topk_method",
            format!("\"{topk_name}\" cannot be combined with scoring_func \"{scoring_name}\""),
        ));
    }
    Ok(Some(MoeConfig {
        n_routed_experts,
        n_shared_experts: keys.usize_or("n_shared_experts", 0)?,
        num_experts_per_tok: keys.usize_or("num_experts_per_tok", if v3 { 8 } else { 0 })?,
        moe_intermediate_size: keys.dim("moe_intermediate_size")?,
        first_k_dense_replace: keys.usize_or("first_k_dense_replace", if v3 { 3 } else { 0 })?,
        moe_layer_freq: keys.usize_or("moe_layer_freq", 1)?,
        routed_scaling_factor: keys.f64_or("routed_scaling_factor", if v3 { 2.5 } else { 1.0 })?,
        topk_method,
        n_group: keys.usize_or("n_group", if v3 { 8 } else { 1 })?,
        topk_group: keys.usize_or("topk_group", if v3 { 4 } else { 1 })?,
        norm_topk_prob: keys.bool_or("norm_topk_prob", v3)?,
        scoring_func,
    }))
}
