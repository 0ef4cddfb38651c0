//! Sizing the paged latent cache from a memory budget.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kv::cache_dtype::CacheRows;
use crate::util::host_memory::available_host_bytes;

/// Refuses, before loading anything, a model whose f32 weights would not fit in the host memory
/// that is free (the CPU backend keeps every weight as f32).
pub fn check_weights_fit_host(config: &ModelConfig, what: &str) -> Result<()> {
    check_weights_fit(config, what, available_host_bytes())
}

fn check_weights_fit(config: &ModelConfig, what: &str, free: Option<u64>) -> Result<()> {
    let bytes = crate::model::params::count_params(config)
        .total
        .saturating_mul(4);
    match free {
        Some(free) if bytes > free => Err(Error::InvalidInput(format!(
            "{what}: {:.1} GiB of f32 weights do not fit in the {:.1} GiB of free memory (try fewer layers, or a GPU)",
            bytes as f64 / (1u64 << 30) as f64,
            free as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(()),
    }
}

/// Parses `12345`, `512MiB`, `2GiB`, `1.5GB`, `800M` into bytes.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("\"{text}\" is not a size (examples: 4GiB, 512MB, 1000000)"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit \"{other}\" in \"{text}\" (B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("\"{text}\" must be a positive size"));
    }
    Ok((value * scale) as u64)
}

/// How big the cache is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvCachePlan {
    pub num_blocks: usize,
    pub block_size: usize,
    pub bytes: u64,
    /// Tokens an MHA cache (K and V of every query head, in the same dtype) of the same bytes
    /// would hold.
    pub mha_tokens: u64,
    /// `f32`, `bf16` or `fp8`.
    pub dtype: &'static str,
}

impl KvCachePlan {
    /// Blocks of `rows` (on a backend whose activations take `native_bytes`) that fit `budget`
    /// bytes, but no more than `max_useful`.
    pub fn new(
        config: &ModelConfig,
        block_size: usize,
        rows: &CacheRows,
        native_bytes: u64,
        budget: u64,
        max_useful: usize,
    ) -> Result<Self> {
        let layers = config.num_hidden_layers() as u64;
        let row_bytes = rows.bytes_per_token(native_bytes);
        let block_bytes = row_bytes * block_size as u64 * layers;
        let num_blocks = ((budget / block_bytes) as usize).min(max_useful);
        if num_blocks == 0 {
            return Err(Error::InvalidInput(format!(
                "a KV cache budget of {budget} bytes does not hold one block ({block_bytes} bytes); raise --kv-cache-memory"
            )));
        }
        let bytes = num_blocks as u64 * block_bytes;
        Ok(KvCachePlan {
            num_blocks,
            block_size,
            bytes,
            mha_tokens: bytes / (rows.mha_bytes_per_token(config, native_bytes) * layers).max(1),
            dtype: rows.describe(native_bytes),
        })
    }

    pub fn tokens(&self) -> u64 {
        (self.num_blocks * self.block_size) as u64
    }

    /// `KV cache: 12,800 blocks × 64 tokens = 819,200 tokens (9.4 GiB); an MHA cache of this model would hold 91,022`.
    pub fn summary(&self) -> String {
        format!(
            "KV cache: {} blocks × {} tokens = {} tokens ({:.2} GiB, {}); an MHA cache of this model would hold {}",
            thousands(self.num_blocks as u64),
            self.block_size,
            thousands(self.tokens()),
            self.bytes as f64 / (1u64 << 30) as f64,
            self.dtype,
            thousands(self.mha_tokens)
        )
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_bytes("0").is_err());
    }

    #[test]
    fn models_too_big_for_free_memory_are_refused() {
        let v3 = crate::config::presets::preset_config("deepseek-v3-L4", None).unwrap();
        let err = check_weights_fit(&v3, "deepseek-v3-L4", Some(16 << 30))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("deepseek-v3-L4: 56.3 GiB of f32 weights do not fit in the 16.0 GiB"),
            "{err}"
        );
        check_weights_fit(&v3, "v3", Some(64 << 30)).unwrap();
        check_weights_fit(&v3, "v3", None).unwrap();
    }

    #[test]
    fn an_fp8_cache_holds_1_75_times_the_tokens_of_bf16() {
        use crate::kv::cache_dtype::{CacheRows, KvCacheDtype};
        let plan = |name: &str, dtype| {
            let c = crate::config::presets::preset_config(name, None).unwrap();
            let rows = CacheRows::resolve(dtype, &c, 2).unwrap();
            KvCachePlan::new(&c, 64, &rows, 2, 60 << 30, usize::MAX).unwrap()
        };
        let bf16 = plan("deepseek-v2-lite", KvCacheDtype::Auto);
        let fp8 = plan("deepseek-v2-lite", KvCacheDtype::Fp8);
        let mha_fp8 = plan("deepseek-v2-lite-mha", KvCacheDtype::Fp8);
        assert_eq!((bf16.dtype, fp8.dtype), ("bf16", "fp8"));
        // 1,152 bytes per token and layer against 656.
        let ratio = fp8.tokens() as f64 / bf16.tokens() as f64;
        assert!((ratio - 1152.0 / 656.0).abs() < 1e-3, "{ratio}");
        // MLA in FP8 against its MHA twin in FP8: the same bytes (up to a block), the twin's rows.
        assert!((fp8.mha_tokens as i64 - mha_fp8.tokens() as i64).abs() < 128);
        // 656 bytes against 2·16·(128 + 4): 6.4×.
        assert!(fp8.tokens() > 6 * mha_fp8.tokens(), "{fp8:?} {mha_fp8:?}");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(819200), "819,200");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
