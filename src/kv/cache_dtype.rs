//! What one cache row holds: `--kv-cache-dtype` resolved against a model and a backend.

use super::fp8_layout::{MhaFp8Layout, MlaFp8Layout};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// `--kv-cache-dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KvCacheDtype {
    /// The backend's activation type: f32 on the CPU, the model's dtype on a GPU.
    #[default]
    Auto,
    F32,
    Bf16,
    /// `float8_e4m3fn` with scales: FlashMLA's 656-byte layout for MLA, per-head scales for MHA.
    Fp8,
}

/// An FP8 row layout (see [`super::fp8_layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Layout {
    Mla(MlaFp8Layout),
    Mha(MhaFp8Layout),
}

/// Where an FP8 row keeps what (the GPU kernels' `Fp8RowFormat`, kernels/fp8.cuh): `codes`
/// e4m3 values, one f32 scale per `group` of them from byte `scales_at`, then the rest of the
/// row's values as bf16 from byte `tail_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8RowParts {
    pub row_bytes: usize,
    pub codes: usize,
    pub group: usize,
    pub scales_at: usize,
    pub tail_at: usize,
}

impl Fp8Layout {
    pub fn parts(&self) -> Fp8RowParts {
        match self {
            Fp8Layout::Mla(l) => Fp8RowParts {
                row_bytes: l.bytes_per_token(),
                codes: l.latent,
                group: super::fp8_layout::MLA_TILE,
                scales_at: l.latent,
                tail_at: l.latent + 4 * l.tiles(),
            },
            Fp8Layout::Mha(l) => Fp8RowParts {
                row_bytes: l.bytes_per_token(),
                codes: 2 * l.kv_heads * l.head_dim,
                group: l.head_dim,
                scales_at: 2 * l.kv_heads * l.head_dim,
                tail_at: l.bytes_per_token(),
            },
        }
    }

    pub fn bytes_per_token(&self) -> usize {
        match self {
            Fp8Layout::Mla(l) => l.bytes_per_token(),
            Fp8Layout::Mha(l) => l.bytes_per_token(),
        }
    }

    /// The values one row holds.
    pub fn width(&self) -> usize {
        match self {
            Fp8Layout::Mla(l) => l.latent + l.rope,
            Fp8Layout::Mha(l) => 2 * l.kv_heads * l.head_dim,
        }
    }

    pub fn quantize(&self, values: &[f32], out: &mut [u8]) {
        match self {
            Fp8Layout::Mla(l) => l.quantize(values, out),
            Fp8Layout::Mha(l) => l.quantize(values, out),
        }
    }

    pub fn dequantize(&self, bytes: &[u8], out: &mut [f32]) {
        match self {
            Fp8Layout::Mla(l) => l.dequantize(bytes, out),
            Fp8Layout::Mha(l) => l.dequantize(bytes, out),
        }
    }

    /// The model's FP8 layout: MLA's latent, or K/V of its KV heads.
    pub fn for_model(config: &ModelConfig) -> Fp8Layout {
        match config {
            ModelConfig::DeepSeek(d) => match d.mha_replacement {
                Some(m) => Fp8Layout::Mha(MhaFp8Layout {
                    kv_heads: m.kv_heads,
                    head_dim: m.head_dim,
                }),
                None => Fp8Layout::Mla(MlaFp8Layout {
                    latent: d.kv_lora_rank,
                    rope: d.qk_rope_head_dim,
                }),
            },
            ModelConfig::Llama(l) => Fp8Layout::Mha(MhaFp8Layout {
                kv_heads: l.num_key_value_heads,
                head_dim: l.head_dim,
            }),
        }
    }

    /// An MHA cache of the model's query heads in FP8 (the comparison `mla info` draws).
    pub fn mha_twin(config: &ModelConfig) -> MhaFp8Layout {
        match config {
            ModelConfig::DeepSeek(d) => MhaFp8Layout {
                kv_heads: d.num_attention_heads,
                head_dim: d.v_head_dim,
            },
            ModelConfig::Llama(l) => MhaFp8Layout {
                kv_heads: l.num_attention_heads,
                head_dim: l.head_dim,
            },
        }
    }
}

/// What one cache row of a model holds on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheRows {
    /// `width` values in the backend's activation type.
    Native {
        width: usize,
    },
    /// `width` values as bf16 where the backend computes in f32 (the CPU's bf16 cache).
    Bf16 {
        width: usize,
    },
    Fp8(Fp8Layout),
}

impl CacheRows {
    /// `dtype` for `config` on a backend whose activations take `native_bytes` bytes.
    pub fn resolve(dtype: KvCacheDtype, config: &ModelConfig, native_bytes: u64) -> Result<Self> {
        let width = config.cache_width();
        Ok(match (dtype, native_bytes) {
            (KvCacheDtype::Auto, _) | (KvCacheDtype::F32, 4) | (KvCacheDtype::Bf16, 2) => {
                CacheRows::Native { width }
            }
            (KvCacheDtype::Bf16, _) => CacheRows::Bf16 { width },
            (KvCacheDtype::F32, _) => {
                return Err(Error::InvalidInput(
                    "--kv-cache-dtype f32 needs f32 activations (--dtype f32 on a GPU)".into(),
                ))
            }
            (KvCacheDtype::Fp8, _) => CacheRows::Fp8(Fp8Layout::for_model(config)),
        })
    }

    /// Bytes of one row (one token in one layer).
    pub fn bytes_per_token(&self, native_bytes: u64) -> u64 {
        match self {
            CacheRows::Native { width } => *width as u64 * native_bytes,
            CacheRows::Bf16 { width } => *width as u64 * 2,
            CacheRows::Fp8(l) => l.bytes_per_token() as u64,
        }
    }

    /// Bytes of a row of an MHA cache of the model's query heads in the same dtype.
    pub fn mha_bytes_per_token(&self, config: &ModelConfig, native_bytes: u64) -> u64 {
        let (_, mha_values) = crate::model::params::kv_values_per_token_per_layer(config);
        match self {
            CacheRows::Native { .. } => mha_values * native_bytes,
            CacheRows::Bf16 { .. } => mha_values * 2,
            CacheRows::Fp8(_) => Fp8Layout::mha_twin(config).bytes_per_token() as u64,
        }
    }

    /// `f32`, `bf16` or `fp8`, for messages.
    pub fn describe(&self, native_bytes: u64) -> &'static str {
        match self {
            CacheRows::Native { .. } if native_bytes == 4 => "f32",
            CacheRows::Native { .. } | CacheRows::Bf16 { .. } => "bf16",
            CacheRows::Fp8(_) => "fp8",
        }
    }
}
