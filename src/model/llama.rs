//! Llama-family models (Llama, Mistral, Qwen2): multi-head or grouped-query attention over a
//! paged K/V cache, SwiGLU MLP. The MHA baseline that MLA is compared against.

use super::loader::Loader;
use super::rope::{Rope, RopeTable};
use super::{logits_head, LogitRows, Step};
use crate::backend::{Backend, MhaDims, MlpWeights};
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::weights::{Checkpoint, HostTensor};

struct Layer<B: Backend> {
    input_norm: B::Weight,
    /// q, k and v projections stacked into one `[(heads + 2·kv_heads)·head_dim, hidden]`
    /// matrix, so one matmul yields a row whose K|V tail is exactly the cache row.
    qkv: B::Weight,
    qkv_bias: Option<B::Weight>,
    o: B::Weight,
    o_bias: Option<B::Weight>,
    post_attention_norm: B::Weight,
    mlp: MlpWeights<B>,
    dims: MhaDims,
}

pub struct Llama<B: Backend> {
    pub config: LlamaConfig,
    pub rope: Rope,
    embed: B::Weight,
    layers: Vec<Layer<B>>,
    norm: B::Weight,
    lm_head: Option<B::Weight>,
}

/// Concatenates tensors along their first axis.
fn stack(parts: Vec<HostTensor>) -> HostTensor {
    let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
    let mut shape = parts[0].shape.clone();
    shape[0] = rows;
    HostTensor::new(shape, parts.into_iter().flat_map(|p| p.data).collect())
}

impl<B: Backend> Llama<B> {
    pub fn load(config: LlamaConfig, checkpoint: &Checkpoint, backend: &B) -> Result<Self> {
        let c = &config;
        let ld = Loader {
            checkpoint,
            backend,
        };
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_rows, kv_rows) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let proj = |name: &str, rows: usize| {
                ld.host(&format!("{p}.self_attn.{name}.weight"), &[rows, h])
            };
            let qkv = stack(vec![
                proj("q_proj", q_rows)?,
                proj("k_proj", kv_rows)?,
                proj("v_proj", kv_rows)?,
            ]);
            let qkv_bias = if c.qkv_bias {
                let bias = |name: &str, rows: usize| {
                    ld.host(&format!("{p}.self_attn.{name}.bias"), &[rows])
                };
                Some(backend.upload_weight(stack(vec![
                    bias("q_proj", q_rows)?,
                    bias("k_proj", kv_rows)?,
                    bias("v_proj", kv_rows)?,
                ]))?)
            } else {
                None
            };
            let mut mlp = ld.mlp(&format!("{p}.mlp"), h, c.intermediate_size)?;
            if c.mlp_bias {
                let bias =
                    |name: &str, len: usize| ld.weight(&format!("{p}.mlp.{name}.bias"), &[len]);
                mlp.biases = Some([
                    bias("gate_proj", c.intermediate_size)?,
                    bias("up_proj", c.intermediate_size)?,
                    bias("down_proj", h)?,
                ]);
            }
            layers.push(Layer {
                input_norm: ld.weight(&format!("{p}.input_layernorm.weight"), &[h])?,
                qkv: backend.upload_weight(qkv)?,
                qkv_bias,
                o: ld.weight(&format!("{p}.self_attn.o_proj.weight"), &[h, q_rows])?,
                o_bias: if c.o_bias {
                    Some(ld.weight(&format!("{p}.self_attn.o_proj.bias"), &[h])?)
                } else {
                    None
                },
                post_attention_norm: ld
                    .weight(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                mlp,
                dims: MhaDims {
                    heads: c.num_attention_heads,
                    kv_heads: c.num_key_value_heads,
                    head_dim: hd,
                    softmax_scale: (hd as f32).powf(-0.5),
                    sliding_window: c.sliding_windows[l],
                },
            });
        }
        Ok(Llama {
            rope: Rope::new(&c.rope, hd),
            embed: ld.weight("model.embed_tokens.weight", &[c.vocab_size, h])?,
            norm: ld.weight("model.norm.weight", &[h])?,
            lm_head: if c.tie_word_embeddings {
                None
            } else {
                Some(ld.weight("lm_head.weight", &[c.vocab_size, h])?)
            },
            layers,
            config,
        })
    }

    /// One step: writes the new tokens' K and V into `cache`, returns logits for `logit_rows`.
    pub fn forward(
        &self,
        backend: &B,
        cache: &mut B::KvCache,
        step: &Step,
        logit_rows: LogitRows,
    ) -> Result<B::Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        let rope = self.rope.table(&step.positions, &step.row_seq_lens());
        let mut x = backend.embedding(&self.embed, &step.token_ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = backend.rms_norm(&x, &layer.input_norm, eps)?;
            let attn = self.attention(backend, layer, &h, cache, l, step, &rope)?;
            backend.add_assign(&mut x, &attn)?;
            let h = backend.rms_norm(&x, &layer.post_attention_norm, eps)?;
            backend.add_assign(&mut x, &backend.mlp(&h, &layer.mlp)?)?;
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        logits_head(backend, x, step, logit_rows, (&self.norm, eps), head)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        backend: &B,
        w: &Layer<B>,
        h: &B::Tensor,
        cache: &mut B::KvCache,
        layer: usize,
        step: &Step,
        rope: &RopeTable,
    ) -> Result<B::Tensor> {
        let d = &w.dims;
        let mut qkv = backend.matmul(h, &w.qkv)?;
        if let Some(bias) = &w.qkv_bias {
            backend.add_bias(&mut qkv, bias)?;
        }
        // Query and key heads sit side by side at the front of each row: one rotation covers both.
        backend.rope(&mut qkv, rope, d.heads + d.kv_heads, d.head_dim, 0)?;
        backend.write_kv_cache(cache, layer, &qkv, d.heads * d.head_dim, &step.slots)?;
        let attn = backend.mha_attention(&qkv, cache, layer, &step.batch, d)?;
        let mut out = backend.matmul(&attn, &w.o)?;
        if let Some(bias) = &w.o_bias {
            backend.add_bias(&mut out, bias)?;
        }
        Ok(out)
    }
}
