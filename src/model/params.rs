//! Parameter and KV-cache accounting derived from the config alone.

use crate::config::{ModelConfig, ScoringFunc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    pub total: u64,
    /// Parameters one token passes through: routed experts count only `num_experts_per_tok`.
    pub activated: u64,
    /// The input embedding table, which a token only indexes (DeepSeek's activated figures
    /// leave it out).
    pub embedding: u64,
}

pub fn count_params(c: &ModelConfig) -> ParamCounts {
    let (h, n) = (c.hidden_size as u64, c.num_attention_heads as u64);
    let (dqk, dn, dv, r, dr) = (
        c.qk_head_dim() as u64,
        c.qk_nope_head_dim as u64,
        c.v_head_dim as u64,
        c.kv_lora_rank as u64,
        c.qk_rope_head_dim as u64,
    );
    let q = match c.q_lora_rank {
        None => n * dqk * h,
        Some(rq) => {
            let rq = rq as u64;
            rq * h + rq + n * dqk * rq
        }
    };
    let attention = q + (r + dr) * h + r + n * (dn + dv) * r + h * n * dv;
    let norms = 2 * h;
    let dense_mlp = 3 * h * c.intermediate_size as u64;
    let (mut total, mut activated) = (0u64, 0u64);
    for layer in 0..c.num_hidden_layers {
        let common = attention + norms;
        total += common;
        activated += common;
        match &c.moe {
            Some(moe) if c.is_moe_layer(layer) => {
                let e = moe.n_routed_experts as u64;
                let expert = 3 * h * moe.moe_intermediate_size as u64;
                let router = e * h
                    + if moe.scoring_func == ScoringFunc::Sigmoid {
                        e
                    } else {
                        0
                    };
                let shared = expert * moe.n_shared_experts as u64;
                total += router + shared + e * expert;
                activated += router + shared + moe.num_experts_per_tok as u64 * expert;
            }
            _ => {
                total += dense_mlp;
                activated += dense_mlp;
            }
        }
    }
    let embedding = c.vocab_size as u64 * h;
    let head = if c.tie_word_embeddings { 0 } else { embedding };
    total += embedding + head + h;
    activated += embedding + head + h;
    ParamCounts {
        total,
        activated,
        embedding,
    }
}

/// Values cached per token and layer by MLA (the latent plus the roped key) and by an MHA
/// model with the same heads (`2·heads·v_head_dim`: a K and a V of head width per head).
pub fn kv_values_per_token_per_layer(c: &ModelConfig) -> (u64, u64) {
    (
        c.latent_cache_width() as u64,
        2 * (c.num_attention_heads * c.v_head_dim) as u64,
    )
}
