//! Llama-family models with multi-head or grouped-query attention (`llama`, `mistral`,
//! `qwen2`): the comparison baseline for MLA. Defaults follow transformers' config classes.

use super::json_keys::Keys;
use super::rope::{parse_rope, RopeConfig};
use super::Architecture;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub rope: RopeConfig,
    /// Biases on the q, k and v projections (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama with `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per layer: attend to at most this many of the most recent tokens (itself included).
    pub sliding_windows: Vec<Option<usize>>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub dtype: Option<String>,
}

impl LlamaConfig {
    pub(super) fn from_keys(keys: &Keys, architecture: Architecture) -> Result<Self> {
        keys.require_silu()?;
        let hidden_size = keys.dim("hidden_size")?;
        let num_attention_heads = keys.dim("num_attention_heads")?;
        let num_key_value_heads = keys.usize_or("num_key_value_heads", num_attention_heads)?;
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(keys.err(
                "num_key_value_heads",
                format!("must divide num_attention_heads ({num_attention_heads}), found {num_key_value_heads}"),
            ));
        }
        let head_dim = keys
            .opt_usize("head_dim")?
            .unwrap_or(hidden_size / num_attention_heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(keys.err(
                "head_dim",
                format!("must be even and positive (RoPE rotates pairs), found {head_dim}"),
            ));
        }
        let num_hidden_layers = keys.dim("num_hidden_layers")?;
        let default_max_pos = match architecture {
            Architecture::Mistral => 4096 * 32,
            Architecture::Qwen2 => 32768,
            _ => 2048,
        };
        let max_position_embeddings = keys.usize_or("max_position_embeddings", default_max_pos)?;
        let attention_bias = keys.bool_or("attention_bias", false)?;
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            Architecture::Mistral => (false, false),
            _ => (attention_bias, attention_bias),
        };
        let config = LlamaConfig {
            architecture,
            vocab_size: keys.dim("vocab_size")?,
            hidden_size,
            intermediate_size: keys.dim("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: keys.f64_or("rms_norm_eps", 1e-6)?,
            max_position_embeddings,
            rope: parse_rope(keys, max_position_embeddings, false)?,
            qkv_bias,
            o_bias,
            mlp_bias: architecture == Architecture::Llama && keys.bool_or("mlp_bias", false)?,
            sliding_windows: sliding_windows(keys, architecture, num_hidden_layers)?,
            tie_word_embeddings: keys.bool_or("tie_word_embeddings", false)?,
            bos_token_id: keys.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: keys.token_ids("eos_token_id")?,
            dtype: match keys.opt_str("dtype")? {
                Some(d) => Some(d.to_string()),
                None => keys.opt_str("torch_dtype")?.map(str::to_string),
            },
        };
        keys.check_special_tokens(
            config.bos_token_id,
            &config.eos_token_ids,
            config.vocab_size,
        )?;
        Ok(config)
    }

    /// Values cached per token and layer: K and V of every KV head.
    pub fn kv_width(&self) -> usize {
        2 * self.num_key_value_heads * self.head_dim
    }
}

/// Which layers use sliding-window attention, as transformers decides it: Mistral's
/// `sliding_window` applies to every layer; Qwen2 uses it only with `use_sliding_window`, from
/// layer `max_window_layers` on; an explicit `layer_types` list wins.
fn sliding_windows(
    keys: &Keys,
    architecture: Architecture,
    layers: usize,
) -> Result<Vec<Option<usize>>> {
    let window = match architecture {
        Architecture::Mistral => match keys.get("sliding_window") {
            None if !keys.map.contains_key("sliding_window") => Some(4096),
            _ => keys.opt_usize("sliding_window")?,
        },
        Architecture::Qwen2 if keys.bool_or("use_sliding_window", false)? => {
            Some(keys.usize_or("sliding_window", 4096)?)
        }
        _ => None,
    };
    let Some(window) = window.filter(|&w| w > 0) else {
        return Ok(vec![None; layers]);
    };
    if let Some(types) = keys.get("layer_types").and_then(|v| v.as_array()) {
        if types.len() != layers {
            return Err(keys.err(
                "layer_types",
                format!(
                    "lists {} layers, num_hidden_layers is {layers}",
                    types.len()
                ),
            ));
        }
        return Ok(types
            .iter()
            .map(|t| (t.as_str() == Some("sliding_attention")).then_some(window))
            .collect());
    }
    let first = match architecture {
        Architecture::Qwen2 => keys.usize_or("max_window_layers", 28)?,
        _ => 0,
    };
    Ok((0..layers)
        .map(|l| (l >= first).then_some(window))
        .collect())
}
