//! Llama-family models (Llama, Mistral, Qwen2): multi-head or grouped-query attention over a
//! paged K/V cache, SwiGLU MLP. The MHA baseline that MLA is compared against.

use super::loader::Loader;
use super::{logits_head, LogitRows, Step};
use crate::backend::{Backend, MhaDims, MlpWeights};
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::ops::rope::{Rope, RopeTable};
use crate::weights::{HostTensor, TensorSource};

/// One MHA/GQA attention block with its cache layer.
pub(crate) struct MhaAttention<B: Backend> {
    /// q, k and v projections stacked into one `[(heads + 2·kv_heads)·head_dim, hidden]`
    /// matrix, so one matmul yields a row whose K|V tail is exactly the cache row.
    qkv: B::Weight,
    qkv_bias: Option<B::Weight>,
    o: B::Weight,
    o_bias: Option<B::Weight>,
    pub dims: MhaDims,
}

/// Concatenates tensors along their first axis.
fn stack(parts: Vec<HostTensor>) -> HostTensor {
    let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
    let mut shape = parts[0].shape.clone();
    shape[0] = rows;
    HostTensor::new(shape, parts.into_iter().flat_map(|p| p.data).collect())
}

impl<B: Backend> MhaAttention<B> {
    /// Loads `{prefix}.{q,k,v,o}_proj` (and their biases when asked).
    pub fn load(
        ld: &Loader<'_, B>,
        prefix: &str,
        hidden: usize,
        dims: MhaDims,
        (qkv_bias, o_bias): (bool, bool),
    ) -> Result<Self> {
        let (q_rows, kv_rows) = (dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim);
        let proj =
            |name: &str, rows: usize| ld.host(&format!("{prefix}.{name}.weight"), &[rows, hidden]);
        let qkv = stack(vec![
            proj("q_proj", q_rows)?,
            proj("k_proj", kv_rows)?,
            proj("v_proj", kv_rows)?,
        ]);
        let bias = |name: &str, rows: usize| ld.host(&format!("{prefix}.{name}.bias"), &[rows]);
        Ok(MhaAttention {
            qkv: ld.backend.upload_weight(qkv)?,
            qkv_bias: if qkv_bias {
                Some(ld.backend.upload_weight(stack(vec![
                    bias("q_proj", q_rows)?,
                    bias("k_proj", kv_rows)?,
                    bias("v_proj", kv_rows)?,
                ]))?)
            } else {
                None
            },
            o: ld.weight(&format!("{prefix}.o_proj.weight"), &[hidden, q_rows])?,
            o_bias: if o_bias {
                Some(ld.weight(&format!("{prefix}.o_proj.bias"), &[hidden])?)
            } else {
                None
            },
            dims,
        })
    }

    pub fn forward(
        &self,
        backend: &B,
        h: &B::Tensor,
        cache: &mut B::KvCache,
        layer: usize,
        step: &Step,
        rope: &RopeTable,
    ) -> Result<B::Tensor> {
        let _span = crate::profile::span("attention");
        let d = &self.dims;
        let mut qkv = backend.matmul(h, &self.qkv)?;
        if let Some(bias) = &self.qkv_bias {
            backend.add_bias(&mut qkv, bias)?;
        }
        // Query and key heads sit side by side at the front of each row: one rotation covers both.
        backend.rope(&mut qkv, rope, d.heads + d.kv_heads, d.head_dim, 0)?;
        backend.write_kv_cache(cache, layer, &qkv, d.heads * d.head_dim, &step.slots)?;
        let attn = backend.mha_attention(&qkv, cache, layer, &step.batch, d)?;
        let mut out = backend.matmul(&attn, &self.o)?;
        if let Some(bias) = &self.o_bias {
            backend.add_bias(&mut out, bias)?;
        }
        Ok(out)
    }
}

struct Layer<B: Backend> {
    input_norm: B::Weight,
    attention: MhaAttention<B>,
    post_attention_norm: B::Weight,
    mlp: MlpWeights<B>,
}

pub struct Llama<B: Backend> {
    pub config: LlamaConfig,
    pub rope: Rope,
    embed: B::Weight,
    layers: Vec<Layer<B>>,
    norm: B::Weight,
    lm_head: Option<B::Weight>,
}

impl<B: Backend> Llama<B> {
    pub fn load(config: LlamaConfig, checkpoint: &dyn TensorSource, backend: &B) -> Result<Self> {
        let c = &config;
        let ld = Loader {
            checkpoint,
            backend,
        };
        let h = c.hidden_size;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let dims = MhaDims {
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                softmax_scale: (c.head_dim as f32).powf(-0.5),
                sliding_window: c.sliding_windows[l],
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
                attention: MhaAttention::load(
                    &ld,
                    &format!("{p}.self_attn"),
                    h,
                    dims,
                    (c.qkv_bias, c.o_bias),
                )?,
                post_attention_norm: ld
                    .weight(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                mlp,
            });
        }
        Ok(Llama {
            rope: Rope::new(&c.rope, c.head_dim),
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
            let _range = crate::profile::range(|| format!("layer.{l:02}"));
            let h = backend.rms_norm(&x, &layer.input_norm, eps)?;
            let attn = layer
                .attention
                .forward(backend, &h, cache, l, step, &rope)?;
            let h = backend.add_rms_norm(&mut x, &attn, &layer.post_attention_norm, eps)?;
            let y = {
                let _span = crate::profile::span("mlp");
                backend.mlp(&h, &layer.mlp)?
            };
            backend.add_assign(&mut x, &y)?;
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        logits_head(backend, x, step, logit_rows, (&self.norm, eps), head)
    }
}
