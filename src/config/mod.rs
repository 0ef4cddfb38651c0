//! `config.json` → a validated [`ModelConfig`].
//!
//! DeepSeek-V2/V3 (MLA) and the Llama family (MHA/GQA). Both the published key style
//! (`rope_scaling` with `type`, `rope_theta` at top level) and the transformers-5 style
//! (`rope_parameters` with `rope_type`) are accepted.

mod deepseek;
mod json_keys;
mod llama;
pub mod presets;
pub mod quantization;
mod rope;

pub use deepseek::{DeepSeekConfig, MhaReplacement, MoeConfig, ScoringFunc, TopkMethod};
pub use llama::LlamaConfig;
pub use rope::{yarn_get_mscale, RopeConfig, RopeScaling, YarnParams};

use crate::error::{read_json, Result};
use json_keys::Keys;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    DeepseekV2,
    DeepseekV3,
    Llama,
    Mistral,
    Qwen2,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::DeepseekV2 => "deepseek_v2",
            Architecture::DeepseekV3 => "deepseek_v3",
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    DeepSeek(DeepSeekConfig),
    Llama(LlamaConfig),
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let value: Value = read_json(path)?;
        Self::from_value(path, &value)
    }

    pub fn from_value(path: &Path, value: &Value) -> Result<Self> {
        let map = value
            .as_object()
            .ok_or_else(|| crate::Error::config(path, "(top level)", "expected a JSON object"))?;
        let keys = Keys::new(path, map, "");
        // Checked here so a format the loader cannot read fails first; the checkpoint reader
        // reads the block size itself.
        quantization::fp8_blocks(&keys)?;
        let architecture = match keys.opt_str("model_type")? {
            Some("deepseek_v2") => Architecture::DeepseekV2,
            Some("deepseek_v3") => Architecture::DeepseekV3,
            Some("llama") => Architecture::Llama,
            Some("mistral") => Architecture::Mistral,
            Some("qwen2") => Architecture::Qwen2,
            Some(other) => {
                return Err(keys.err(
                    "model_type",
                    format!("unknown model_type \"{other}\" (supported: deepseek_v2, deepseek_v3, llama, mistral, qwen2)"),
                ))
            }
            None => return Err(keys.err("model_type", "missing (required)")),
        };
        Ok(match architecture {
            Architecture::DeepseekV2 | Architecture::DeepseekV3 => {
                ModelConfig::DeepSeek(DeepSeekConfig::from_keys(&keys, architecture)?)
            }
            _ => ModelConfig::Llama(LlamaConfig::from_keys(&keys, architecture)?),
        })
    }

    pub fn architecture(&self) -> Architecture {
        match self {
            ModelConfig::DeepSeek(c) => c.architecture,
            ModelConfig::Llama(c) => c.architecture,
        }
    }

    pub fn deepseek(&self) -> Option<&DeepSeekConfig> {
        match self {
            ModelConfig::DeepSeek(c) => Some(c),
            ModelConfig::Llama(_) => None,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::DeepSeek(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
        }
    }

    pub fn max_position_embeddings(&self) -> usize {
        match self {
            ModelConfig::DeepSeek(c) => c.max_position_embeddings,
            ModelConfig::Llama(c) => c.max_position_embeddings,
        }
    }

    pub fn num_hidden_layers(&self) -> usize {
        match self {
            ModelConfig::DeepSeek(c) => c.num_hidden_layers,
            ModelConfig::Llama(c) => c.num_hidden_layers,
        }
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        match self {
            ModelConfig::DeepSeek(c) => c.bos_token_id,
            ModelConfig::Llama(c) => c.bos_token_id,
        }
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        match self {
            ModelConfig::DeepSeek(c) => &c.eos_token_ids,
            ModelConfig::Llama(c) => &c.eos_token_ids,
        }
    }

    /// Values the paged cache stores per token and layer: MLA's latent plus roped key, or
    /// K and V of every KV head.
    pub fn cache_width(&self) -> usize {
        match self {
            ModelConfig::DeepSeek(c) => c.cache_width(),
            ModelConfig::Llama(c) => c.kv_width(),
        }
    }
}

#[cfg(test)]
mod tests;
