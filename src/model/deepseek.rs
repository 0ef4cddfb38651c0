//! DeepSeek-V2 / V3: MLA attention over the paged latent cache, dense MLP or MoE per layer.

use super::llama::MhaAttention;
use super::loader::Loader;
use super::{logits_head, AttentionForm, LogitRows, Step};
use crate::backend::{Backend, MhaDims, MlaDims, MlpWeights, MoeWeights};
use crate::config::DeepSeekConfig;
use crate::error::Result;
use crate::ops::rope::{Rope, RopeTable};
use crate::weights::TensorSource;

/// The q and kv latent RMSNorms use RMSNorm's default eps in DeepSeek's code and in
/// transformers, not `rms_norm_eps`.
const LATENT_NORM_EPS: f32 = 1e-6;

enum QueryProjection<B: Backend> {
    Full(B::Weight),
    LowRank {
        down: B::Weight,
        norm: B::Weight,
        up: B::Weight,
    },
}

struct Attention<B: Backend> {
    q: QueryProjection<B>,
    kv_a: B::Weight,
    kv_a_norm: B::Weight,
    kv_b: B::Weight,
    /// `W_UK_hᵀ` per head, `[kv_lora_rank, qk_nope]`: turns `q_nope` into a latent query.
    w_uk: B::HeadWeight,
    /// `W_UV_h` per head, `[v_head, kv_lora_rank]`: turns the latent output into values.
    w_uv: B::HeadWeight,
    o: B::Weight,
}

enum FeedForward<B: Backend> {
    Dense(MlpWeights<B>),
    Moe(MoeWeights<B>),
}

/// MLA, or (in benchmark presets) plain attention in its place.
enum LayerAttention<B: Backend> {
    Mla(Attention<B>),
    Mha(MhaAttention<B>),
}

struct Layer<B: Backend> {
    input_norm: B::Weight,
    attention: LayerAttention<B>,
    post_attention_norm: B::Weight,
    ffn: FeedForward<B>,
}

pub struct DeepSeek<B: Backend> {
    pub config: DeepSeekConfig,
    pub dims: MlaDims,
    pub rope: Rope,
    /// RoPE over the whole head under an MHA replacement.
    mha_rope: Option<Rope>,
    embed: B::Weight,
    layers: Vec<Layer<B>>,
    norm: B::Weight,
    /// `None` when the embedding is tied.
    lm_head: Option<B::Weight>,
}

/// Multiply-adds per head of the step's attention in each form: materialised expands every
/// context latent to K_nope and V and attends with `nope + rope` keys and `v` values; absorbed
/// folds `W_UK`/`W_UV` into each query row and attends with `r + rope` keys and `r` values.
/// Absorbed wins for decode and for short chunks over long contexts (about q < 170 for
/// DeepSeek's dims), materialised for prefill. A step of one token per sequence is always
/// absorbed (it is cheaper from two cached tokens on), so that a decode stream keeps one form,
/// and one CUDA graph, whatever its contexts, and a padded batch's one-token filler sequences
/// do not change it.
pub fn absorbed_is_cheaper(dims: &MlaDims, batch: &crate::backend::AttentionBatch) -> bool {
    if batch.seqs.iter().all(|s| s.query_len == 1) {
        return true;
    }
    let (r, dn, dr, dv) = (
        dims.kv_lora_rank as f64,
        dims.qk_nope as f64,
        dims.qk_rope as f64,
        dims.v_head as f64,
    );
    let (mut absorbed, mut materialised) = (0.0, 0.0);
    for s in &batch.seqs {
        let (q, ctx) = (s.query_len as f64, s.context_len as f64);
        // Causal: the chunk's rows see the prefix and part of the chunk.
        let attended = q * (ctx - q) + q * (q + 1.0) / 2.0;
        materialised += ctx * r * (dn + dv) + attended * (dn + dr + dv);
        absorbed += q * r * (dn + dv) + attended * (r + dr + r);
    }
    absorbed <= materialised
}

/// Splits `kv_b_proj` `[heads·(nope + v), r_kv]` into the per-head absorption weights:
/// `W_UK_hᵀ` `[r_kv, nope]` and `W_UV_h` `[v, r_kv]`.
pub fn absorption_weights(kv_b: &[f32], dims: &MlaDims) -> (Vec<f32>, Vec<f32>) {
    let (r, dn, dv) = (dims.kv_lora_rank, dims.qk_nope, dims.v_head);
    let mut w_uk_t = Vec::with_capacity(dims.heads * r * dn);
    let mut w_uv = Vec::with_capacity(dims.heads * dv * r);
    for h in 0..dims.heads {
        let head = &kv_b[h * (dn + dv) * r..(h + 1) * (dn + dv) * r];
        for c in 0..r {
            w_uk_t.extend((0..dn).map(|i| head[i * r + c]));
        }
        w_uv.extend_from_slice(&head[dn * r..]);
    }
    (w_uk_t, w_uv)
}

impl<B: Backend> DeepSeek<B> {
    pub fn load(
        config: DeepSeekConfig,
        checkpoint: &dyn TensorSource,
        backend: &B,
    ) -> Result<Self> {
        let c = &config;
        let dims = MlaDims {
            heads: c.num_attention_heads,
            qk_nope: c.qk_nope_head_dim,
            qk_rope: c.qk_rope_head_dim,
            v_head: c.v_head_dim,
            kv_lora_rank: c.kv_lora_rank,
            softmax_scale: c.softmax_scale(),
        };
        let ld = Loader {
            checkpoint,
            backend,
        };
        let (h, n) = (c.hidden_size, c.num_attention_heads);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let attention = match c.mha_replacement {
                Some(m) => {
                    let dims = MhaDims {
                        heads: n,
                        kv_heads: m.kv_heads,
                        head_dim: m.head_dim,
                        softmax_scale: (m.head_dim as f32).powf(-0.5),
                        sliding_window: None,
                    };
                    LayerAttention::Mha(MhaAttention::load(
                        &ld,
                        &format!("{p}.self_attn"),
                        h,
                        dims,
                        (false, false),
                    )?)
                }
                None => {
                    let q = match c.q_lora_rank {
                        None => QueryProjection::Full(ld.weight(
                            &format!("{p}.self_attn.q_proj.weight"),
                            &[n * dims.qk_head(), h],
                        )?),
                        Some(rq) => QueryProjection::LowRank {
                            down: ld.weight(&format!("{p}.self_attn.q_a_proj.weight"), &[rq, h])?,
                            norm: ld
                                .weight(&format!("{p}.self_attn.q_a_layernorm.weight"), &[rq])?,
                            up: ld.weight(
                                &format!("{p}.self_attn.q_b_proj.weight"),
                                &[n * dims.qk_head(), rq],
                            )?,
                        },
                    };
                    let kv_b = ld.host(
                        &format!("{p}.self_attn.kv_b_proj.weight"),
                        &[n * (dims.qk_nope + dims.v_head), dims.kv_lora_rank],
                    )?;
                    let (w_uk_t, w_uv) = absorption_weights(&kv_b.data, &dims);
                    LayerAttention::Mla(Attention {
                        q,
                        kv_a: ld.weight(
                            &format!("{p}.self_attn.kv_a_proj_with_mqa.weight"),
                            &[dims.latent_width(), h],
                        )?,
                        kv_a_norm: ld.weight(
                            &format!("{p}.self_attn.kv_a_layernorm.weight"),
                            &[dims.kv_lora_rank],
                        )?,
                        w_uk: backend.upload_head_weight(
                            n,
                            dims.kv_lora_rank,
                            dims.qk_nope,
                            w_uk_t,
                        )?,
                        w_uv: backend.upload_head_weight(
                            n,
                            dims.v_head,
                            dims.kv_lora_rank,
                            w_uv,
                        )?,
                        kv_b: backend.upload_weight(kv_b)?,
                        o: ld.weight(
                            &format!("{p}.self_attn.o_proj.weight"),
                            &[h, n * dims.v_head],
                        )?,
                    })
                }
            };
            let ffn = match (&c.moe, c.is_moe_layer(l)) {
                (Some(moe), true) => {
                    let e = moe.n_routed_experts;
                    let bias_name = format!("{p}.mlp.gate.e_score_correction_bias");
                    let score_bias = if checkpoint.contains(&bias_name)
                        || moe.scoring_func == crate::config::ScoringFunc::Sigmoid
                    {
                        Some(ld.host(&bias_name, &[e])?.data)
                    } else {
                        None
                    };
                    let experts =
                        ld.experts(&format!("{p}.mlp.experts"), e, h, moe.moe_intermediate_size)?;
                    FeedForward::Moe(MoeWeights {
                        router: ld.weight(&format!("{p}.mlp.gate.weight"), &[e, h])?,
                        experts: backend.routed_experts(experts, score_bias.as_deref())?,
                        score_bias,
                        shared: match moe.n_shared_experts {
                            0 => None,
                            s => Some(ld.mlp(
                                &format!("{p}.mlp.shared_experts"),
                                h,
                                moe.moe_intermediate_size * s,
                            )?),
                        },
                    })
                }
                _ => FeedForward::Dense(ld.mlp(&format!("{p}.mlp"), h, c.intermediate_size)?),
            };
            layers.push(Layer {
                input_norm: ld.weight(&format!("{p}.input_layernorm.weight"), &[h])?,
                attention,
                post_attention_norm: ld
                    .weight(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                ffn,
            });
        }
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(ld.weight("lm_head.weight", &[c.vocab_size, h])?)
        };
        Ok(DeepSeek {
            rope: Rope::new(&c.rope, c.qk_rope_head_dim),
            mha_rope: c.mha_replacement.map(|m| Rope::new(&c.rope, m.head_dim)),
            embed: ld.weight("model.embed_tokens.weight", &[c.vocab_size, h])?,
            norm: ld.weight("model.norm.weight", &[h])?,
            lm_head,
            layers,
            dims,
            config,
        })
    }

    /// Runs one step: writes the new tokens' latents into `cache` and returns logits
    /// `[rows, vocab]` for the rows `logit_rows` asks for.
    pub fn forward(
        &self,
        backend: &B,
        cache: &mut B::KvCache,
        step: &Step,
        form: AttentionForm,
        logit_rows: LogitRows,
    ) -> Result<B::Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        let absorbed = match form {
            AttentionForm::Auto => absorbed_is_cheaper(&self.dims, &step.batch),
            AttentionForm::Absorbed => true,
            AttentionForm::Materialised => false,
        };
        let rope = self
            .mha_rope
            .as_ref()
            .unwrap_or(&self.rope)
            .table(&step.positions, &step.row_seq_lens());
        let mut x = backend.embedding(&self.embed, &step.token_ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let _range = crate::profile::range(|| format!("layer.{l:02}"));
            let h = backend.rms_norm(&x, &layer.input_norm, eps)?;
            let attn = match &layer.attention {
                LayerAttention::Mla(w) => {
                    self.attention(backend, w, &h, cache, l, step, &rope, absorbed)?
                }
                LayerAttention::Mha(w) => w.forward(backend, &h, cache, l, step, &rope)?,
            };
            let h = backend.add_rms_norm(&mut x, &attn, &layer.post_attention_norm, eps)?;
            let span = crate::profile::span(match layer.ffn {
                FeedForward::Dense(_) => "mlp",
                FeedForward::Moe(_) => "moe",
            });
            let y = match &layer.ffn {
                FeedForward::Dense(mlp) => backend.mlp(&h, mlp)?,
                FeedForward::Moe(moe) => backend.moe(
                    &h,
                    moe,
                    self.config
                        .moe
                        .as_ref()
                        .expect("MoE layer has a MoE config"),
                )?,
            };
            drop(span);
            backend.add_assign(&mut x, &y)?;
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        logits_head(backend, x, step, logit_rows, (&self.norm, eps), head)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        backend: &B,
        w: &Attention<B>,
        h: &B::Tensor,
        cache: &mut B::KvCache,
        layer: usize,
        step: &Step,
        rope: &RopeTable,
        absorbed: bool,
    ) -> Result<B::Tensor> {
        let _span = crate::profile::span("attention");
        let d = &self.dims;
        let mut q = match &w.q {
            QueryProjection::Full(proj) => backend.matmul(h, proj)?,
            QueryProjection::LowRank { down, norm, up } => {
                let q_a = backend.rms_norm(&backend.matmul(h, down)?, norm, LATENT_NORM_EPS)?;
                backend.matmul(&q_a, up)?
            }
        };
        backend.rope(&mut q, rope, d.heads, d.qk_head(), d.qk_nope)?;
        let mut latent = backend.matmul(h, &w.kv_a)?;
        backend.latent_epilogue(&mut latent, &w.kv_a_norm, LATENT_NORM_EPS, rope)?;
        backend.write_kv_cache(cache, layer, &latent, 0, &step.slots)?;
        let out = if absorbed {
            let q_lat = backend.head_matmul(&q, d.qk_head(), 0, &w.w_uk)?;
            let o_lat = backend.mla_attention_absorbed(&q_lat, &q, cache, layer, &step.batch, d)?;
            backend.head_matmul(&o_lat, d.kv_lora_rank, 0, &w.w_uv)?
        } else {
            backend.mla_attention_materialised(&q, cache, layer, &step.batch, &w.kv_b, d)?
        };
        backend.matmul(&out, &w.o)
    }
}

#[cfg(test)]
mod form_tests {
    use super::*;
    use crate::backend::{AttentionBatch, SeqChunk};

    fn batch(chunks: &[(usize, usize)]) -> AttentionBatch {
        AttentionBatch {
            block_size: 64,
            seqs: chunks
                .iter()
                .map(|&(context_len, query_len)| SeqChunk {
                    block_table: Vec::new(),
                    context_len,
                    query_len,
                })
                .collect(),
        }
    }

    #[test]
    fn auto_absorbs_decode_and_short_chunks_and_materialises_prefill() {
        let dims = MlaDims::deepseek(16, 0.1);
        assert!(absorbed_is_cheaper(&dims, &batch(&[(5000, 1), (20, 1)])));
        assert!(absorbed_is_cheaper(&dims, &batch(&[(8000, 64)])));
        assert!(!absorbed_is_cheaper(&dims, &batch(&[(512, 512)])));
        assert!(!absorbed_is_cheaper(&dims, &batch(&[(4096, 2048)])));
        // One token per sequence: absorbed, even a lone first token (whose own latent is the
        // whole context either way), so that decode steps keep one form.
        assert!(absorbed_is_cheaper(&dims, &batch(&[(1, 1)])));
        assert!(absorbed_is_cheaper(&dims, &batch(&[(2, 1)])));
        assert!(!absorbed_is_cheaper(&dims, &batch(&[(1, 1), (512, 512)])));
    }
}
