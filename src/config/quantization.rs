//! `quantization_config`: the block-scaled FP8 format of DeepSeek-V3/R1's published checkpoints
//! (`quant_method: fp8`, `fmt: e4m3`, `weight_block_size: [128, 128]`, dynamic activations).
//! Other methods are refused by name.

use super::json_keys::Keys;
use crate::error::Result;
use serde_json::Value;
use std::path::Path;

/// Tensors stored as `float8_e4m3fn` with one f32 `weight_scale_inv` per block of `rows × cols`
/// elements, blocks counted from the top-left (the last row and column of blocks partial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8Blocks {
    pub rows: usize,
    pub cols: usize,
}

impl Fp8Blocks {
    /// DeepSeek-V3/R1's 128 × 128 blocks: what `--quantization fp8` makes and the GPU's FP8
    /// GEMM multiplies.
    pub const DEEPSEEK: Fp8Blocks = Fp8Blocks {
        rows: 128,
        cols: 128,
    };
}

/// How activations meet an FP8 weight (`--fp8-activations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Fp8Activations {
    /// `dynamic` where a GPU multiplies FP8 natively (compute capability 8.9+, bf16), else
    /// `exact`.
    #[default]
    Auto,
    /// Activations times the weights' exact values (dequantized at load): what transformers
    /// computes, the CPU engine's oracle.
    Exact,
    /// Activations quantized per token per 128 channels (e4m3, scale amax / 448) and multiplied
    /// FP8 by FP8 with both scales, as DeepSeek's inference code and the GPU's FP8 GEMM do.
    Dynamic,
}

/// The block-scaled FP8 format `keys` (a config.json) declares, if any.
pub fn fp8_blocks(keys: &Keys) -> Result<Option<Fp8Blocks>> {
    let Some(q) = keys.object("quantization_config")? else {
        return Ok(None);
    };
    match q.opt_str("quant_method")? {
        Some("fp8") => {}
        Some(other) => {
            return Err(q.err(
                "quant_method",
                format!("\"{other}\" is not supported (block-scaled \"fp8\" is)"),
            ))
        }
        None => return Err(q.err("quant_method", "missing (required)")),
    }
    if let Some(fmt) = q.opt_str("fmt")? {
        if fmt != "e4m3" {
            return Err(q.err("fmt", format!("\"{fmt}\" is not supported (e4m3 is)")));
        }
    }
    if let Some(scheme) = q.opt_str("activation_scheme")? {
        if scheme != "dynamic" {
            return Err(q.err(
                "activation_scheme",
                format!("\"{scheme}\" is not supported (dynamic is)"),
            ));
        }
    }
    let blocks = match q.get("weight_block_size") {
        None => {
            return Err(q.err(
                "weight_block_size",
                "missing: FP8 with per-tensor scales is not supported (block-scaled is)",
            ))
        }
        Some(Value::Array(sizes)) => match sizes.as_slice() {
            [r, c] => {
                let dim = |v: &Value| v.as_u64().filter(|&n| n > 0 && n <= 1 << 16);
                match (dim(r), dim(c)) {
                    (Some(r), Some(c)) => Fp8Blocks {
                        rows: r as usize,
                        cols: c as usize,
                    },
                    _ => return Err(q.err("weight_block_size", "expected two sizes in 1..=65536")),
                }
            }
            _ => return Err(q.err("weight_block_size", "expected [rows, cols]")),
        },
        Some(_) => return Err(q.err("weight_block_size", "expected [rows, cols]")),
    };
    Ok(Some(blocks))
}

/// [`fp8_blocks`] of the config.json at `path` (for the checkpoint reader).
pub fn fp8_blocks_of_file(path: &Path) -> Result<Option<Fp8Blocks>> {
    let value: Value = crate::error::read_json(path)?;
    match value.as_object() {
        Some(map) => fp8_blocks(&Keys::new(path, map, "")),
        None => Ok(None),
    }
}
