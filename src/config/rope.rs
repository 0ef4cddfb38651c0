//! RoPE settings of a config.json, shared by every architecture.

use super::json_keys::Keys;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3: low frequencies divided by `factor`, high ones kept, smooth in between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Dynamic NTK: theta grows with the sequence once it passes the original length.
    Dynamic {
        factor: f64,
        original_max_position_embeddings: usize,
    },
    Yarn(YarnParams),
}

#[derive(Debug, Clone, PartialEq)]
pub struct YarnParams {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    pub attention_factor: Option<f64>,
    /// transformers' `truncate`: floor/ceil the correction range (true unless stated otherwise).
    pub truncate: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// Rotate `(x[2i], x[2i+1])` pairs (true) or `(x[i], x[i+d/2])` pairs (false).
    pub interleaved: bool,
    /// `get_m(factor, mscale_all_dim)` when a scaled RoPE sets `mscale_all_dim`: the softmax
    /// scale is multiplied by its square.
    pub softmax_mscale: Option<f64>,
}

/// `0.1·m·ln(s) + 1` for `s > 1`, else 1: YaRN's attention temperature.
pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// The RoPE keys of a config.json: `rope_theta` + `rope_scaling` (published) or
/// `rope_parameters` (transformers 5). `interleaved` is the architecture's pair layout.
pub(super) fn parse_rope(
    keys: &Keys,
    max_position_embeddings: usize,
    interleaved: bool,
) -> Result<RopeConfig> {
    // transformers 5 nests theta inside `rope_parameters`; published files keep it top-level.
    let (params, type_key) = match keys.object("rope_parameters")? {
        Some(p) => (Some(p), "rope_type"),
        None => (keys.object("rope_scaling")?, "type"),
    };
    let mut theta = keys.opt_f64("rope_theta")?;
    let mut scaling = RopeScaling::None;
    let mut softmax_mscale = None;
    if let Some(p) = &params {
        if let Some(t) = p.opt_f64("rope_theta")? {
            theta = Some(t);
        }
        // Either spelling of the type key is accepted in either object.
        let kind = match p.opt_str(type_key)? {
            Some(k) => Some(k),
            None => p.opt_str(if type_key == "type" {
                "rope_type"
            } else {
                "type"
            })?,
        };
        scaling = match kind.unwrap_or("default") {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: positive(p, "factor", p.opt_f64("factor")?)?,
            },
            "yarn" => {
                let original =
                    p.usize_or("original_max_position_embeddings", max_position_embeddings)?;
                if original == 0 {
                    return Err(p.err(
                        "original_max_position_embeddings",
                        "must be at least 1, found 0",
                    ));
                }
                // transformers infers a missing factor from the context extension.
                let implied = p
                    .get("original_max_position_embeddings")
                    .map(|_| max_position_embeddings as f64 / original as f64);
                let factor = positive(p, "factor", p.opt_f64("factor")?.or(implied))?;
                RopeScaling::Yarn(YarnParams {
                    factor,
                    original_max_position_embeddings: original,
                    beta_fast: p.f64_or("beta_fast", 32.0)?,
                    beta_slow: p.f64_or("beta_slow", 1.0)?,
                    mscale: p.opt_f64("mscale")?,
                    mscale_all_dim: p.opt_f64("mscale_all_dim")?,
                    attention_factor: p.opt_f64("attention_factor")?,
                    truncate: p.bool_or("truncate", true)?,
                })
            }
            "llama3" => RopeScaling::Llama3 {
                factor: positive(p, "factor", p.opt_f64("factor")?)?,
                low_freq_factor: p.f64_or("low_freq_factor", 1.0)?,
                high_freq_factor: p.f64_or("high_freq_factor", 4.0)?,
                original_max_position_embeddings: p.usize_or("original_max_position_embeddings", 8192)?,
            },
            // transformers measures growth from max_position_embeddings, whatever the key says,
            // so within the model's positions dynamic NTK leaves RoPE unscaled.
            "dynamic" => RopeScaling::Dynamic {
                factor: positive(p, "factor", p.opt_f64("factor")?)?,
                original_max_position_embeddings: max_position_embeddings,
            },
            other => {
                return Err(p.err(
                    type_key,
                    format!("unsupported RoPE type \"{other}\" (supported: default, linear, dynamic, yarn, llama3)"),
                ))
            }
        };
        // DeepSeek's attention applies mscale_all_dim for any scaled RoPE, not only YaRN.
        let factor = match &scaling {
            RopeScaling::None => None,
            RopeScaling::Linear { factor }
            | RopeScaling::Dynamic { factor, .. }
            | RopeScaling::Llama3 { factor, .. } => Some(*factor),
            RopeScaling::Yarn(y) => Some(y.factor),
        };
        if let (Some(factor), Some(all)) =
            (factor, p.opt_f64("mscale_all_dim")?.filter(|m| *m != 0.0))
        {
            softmax_mscale = Some(yarn_get_mscale(factor, all));
        }
    }
    let theta = theta.unwrap_or(10000.0);
    if theta <= 1.0 {
        return Err(keys.err(
            "rope_theta",
            format!("must be greater than 1, found {theta}"),
        ));
    }
    Ok(RopeConfig {
        theta,
        scaling,
        interleaved,
        softmax_mscale,
    })
}

fn positive(keys: &Keys, key: &str, value: Option<f64>) -> Result<f64> {
    match value {
        None => Err(keys.err(key, "missing (required)")),
        Some(v) if v > 0.0 => Ok(v),
        Some(v) => Err(keys.err(key, format!("must be positive, found {v}"))),
    }
}
