//! Parameter and KV-cache accounting derived from the config alone.

use crate::config::{DeepSeekConfig, LlamaConfig, ModelConfig, ScoringFunc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    pub total: u64,
    /// Parameters one token passes through: routed experts count only `num_experts_per_tok`.
    pub activated: u64,
    /// The input embedding table, which a token only indexes (DeepSeek's activated figures
    /// leave it out).
    pub embedding: u64,
    /// The output head (0 when tied to the embedding).
    pub head: u64,
}

pub fn count_params(config: &ModelConfig) -> ParamCounts {
    match config {
        ModelConfig::DeepSeek(c) => count_deepseek(c),
        ModelConfig::Llama(c) => count_llama(c),
    }
}

fn count_deepseek(c: &DeepSeekConfig) -> ParamCounts {
    let (h, n) = (c.hidden_size as u128, c.num_attention_heads as u128);
    let (dqk, dn, dv, r, dr) = (
        c.qk_head_dim() as u128,
        c.qk_nope_head_dim as u128,
        c.v_head_dim as u128,
        c.kv_lora_rank as u128,
        c.qk_rope_head_dim as u128,
    );
    let q = match c.q_lora_rank {
        None => n * dqk * h,
        Some(rq) => {
            let rq = rq as u128;
            rq * h + rq + n * dqk * rq
        }
    };
    let attention = match c.mha_replacement {
        Some(m) => {
            let (q, kv) = (
                n * m.head_dim as u128,
                m.kv_heads as u128 * m.head_dim as u128,
            );
            h * (q + 2 * kv) + q * h
        }
        None => q + (r + dr) * h + r + n * (dn + dv) * r + h * n * dv,
    };
    let norms = 2 * h;
    let dense_mlp = 3 * h * c.intermediate_size as u128;
    let (mut total, mut activated) = (0u128, 0u128);
    for layer in 0..c.num_hidden_layers {
        let common = attention + norms;
        total += common;
        activated += common;
        match &c.moe {
            Some(moe) if c.is_moe_layer(layer) => {
                let e = moe.n_routed_experts as u128;
                let expert = 3 * h * moe.moe_intermediate_size as u128;
                let router = e * h
                    + if moe.scoring_func == ScoringFunc::Sigmoid {
                        e
                    } else {
                        0
                    };
                let shared = expert * moe.n_shared_experts as u128;
                total += router + shared + e * expert;
                activated += router + shared + moe.num_experts_per_tok as u128 * expert;
            }
            _ => {
                total += dense_mlp;
                activated += dense_mlp;
            }
        }
    }
    let embedding = c.vocab_size as u128 * h;
    let head = if c.tie_word_embeddings { 0 } else { embedding };
    total += embedding + head + h;
    activated += embedding + head + h;
    ParamCounts {
        total: saturate(total),
        activated: saturate(activated),
        embedding: saturate(embedding),
        head: saturate(head),
    }
}

fn count_llama(c: &LlamaConfig) -> ParamCounts {
    let (h, hd) = (c.hidden_size as u128, c.head_dim as u128);
    let (q, kv) = (
        c.num_attention_heads as u128 * hd,
        c.num_key_value_heads as u128 * hd,
    );
    let inter = c.intermediate_size as u128;
    let bias = |on: bool, n: u128| if on { n } else { 0 };
    let attention = h * (q + 2 * kv) + q * h + bias(c.qkv_bias, q + 2 * kv) + bias(c.o_bias, h);
    let mlp = 3 * h * inter + bias(c.mlp_bias, 2 * inter + h);
    let layers = c.num_hidden_layers as u128 * (attention + mlp + 2 * h);
    let embedding = c.vocab_size as u128 * h;
    let head = if c.tie_word_embeddings { 0 } else { embedding };
    let total = layers + embedding + head + h;
    ParamCounts {
        total: saturate(total),
        activated: saturate(total),
        embedding: saturate(embedding),
        head: saturate(head),
    }
}

/// The counts are summed in u128, where no config within the limits of `config` can overflow
/// (each dimension is at most 2^20, layers 2^10, expert counts 2^64: every term stays under
/// 2^120); a count past u64 reads as u64::MAX.
fn saturate(count: u128) -> u64 {
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// Values cached per token and layer, and what a plain MHA cache of the same heads would hold
/// (`2·heads·head width`): MLA's latent against `2·heads·v_head_dim`; GQA's K/V of the KV heads
/// against K/V of every query head.
pub fn kv_values_per_token_per_layer(config: &ModelConfig) -> (u64, u64) {
    match config {
        ModelConfig::DeepSeek(c) => (
            c.cache_width() as u64,
            2 * (c.num_attention_heads * c.v_head_dim) as u64,
        ),
        ModelConfig::Llama(c) => (
            c.kv_width() as u64,
            2 * (c.num_attention_heads * c.head_dim) as u64,
        ),
    }
}

/// Weights one decode step of `batch` sequences reads: all but the input embedding (a step reads
/// `batch` of its rows), each MoE layer's routed experts counted by how many `batch` tokens
/// choose on average if the router spreads them evenly: `E·(1 − (1 − k/E)^batch)`. An estimate
/// for the memory roofline of `mla bench`, not a count of what a given batch reads.
pub fn decode_step_weight_params(config: &ModelConfig, batch: usize) -> f64 {
    let p = count_params(config);
    let all = (p.total - p.embedding) as f64;
    let ModelConfig::DeepSeek(c) = config else {
        return all;
    };
    let Some(moe) = &c.moe else {
        return all;
    };
    let (e, k) = (moe.n_routed_experts as f64, moe.num_experts_per_tok as f64);
    let expert = 3.0 * (c.hidden_size * moe.moe_intermediate_size) as f64;
    let chosen = e * (1.0 - (1.0 - k / e.max(1.0)).powi(batch as i32));
    let moe_layers = (0..c.num_hidden_layers)
        .filter(|&l| c.is_moe_layer(l))
        .count() as f64;
    all - moe_layers * (e - chosen) * expert
}

/// Bytes of the weights one decode step of `batch` sequences reads
/// ([`decode_step_weight_params`]) at `value_bytes` per weight, or with `fp8` linear layers at a
/// byte per weight (the head stays at `value_bytes`; the norms and routers, a few thousandths
/// of a percent, are counted with the linear layers).
pub fn decode_step_weight_bytes(
    config: &ModelConfig,
    batch: usize,
    value_bytes: u64,
    fp8: bool,
) -> f64 {
    let params = decode_step_weight_params(config, batch);
    match fp8 {
        true => {
            let head = count_params(config).head as f64;
            params - head + head * value_bytes as f64
        }
        false => params * value_bytes as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decode_step_reads_the_experts_its_tokens_choose() {
        let config = crate::config::presets::preset_config("deepseek-v2-lite", None).unwrap();
        let p = count_params(&config);
        let one = decode_step_weight_params(&config, 1);
        // One token: the activated weights without the embedding (6 of 64 experts per layer).
        assert!(
            (one - (p.activated - p.embedding) as f64).abs() < 1.0,
            "{one}"
        );
        // Many tokens: every expert, or all but a fraction of one.
        let all = (p.total - p.embedding) as f64;
        let many = decode_step_weight_params(&config, 512);
        assert!(many <= all && many > 0.999 * all, "{many} of {all}");
        assert!(decode_step_weight_params(&config, 8) > one);
    }
}
