//! Model definitions, written once against [`crate::backend::Backend`].

pub mod deepseek;
pub mod llama;
mod loader;
pub mod params;

use crate::backend::{AttentionBatch, Backend};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::TensorSource;
use deepseek::DeepSeek;
use llama::Llama;

/// Which MLA form a forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttentionForm {
    /// Per step, the form with fewer multiply-adds: absorbed for decode and short chunks over
    /// long contexts, materialised for prefill.
    #[default]
    Auto,
    /// Expand K and V from the latent with kv_b_proj and run standard attention.
    Materialised,
    /// Fold W_UK into the query and W_UV into the output; attend over the latent cache.
    Absorbed,
}

/// One forward step: the new tokens of every sequence and where they go in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub token_ids: Vec<u32>,
    pub positions: Vec<u32>,
    /// Cache slot of each new token.
    pub slots: Vec<u32>,
    pub batch: AttentionBatch,
}

/// Which rows of the step get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    All,
    /// The last new token of each sequence (what sampling needs).
    LastPerSequence,
}

impl Step {
    /// For each row, the length of its sequence after this step.
    pub fn row_seq_lens(&self) -> Vec<usize> {
        self.batch
            .seqs
            .iter()
            .flat_map(|s| std::iter::repeat_n(s.context_len, s.query_len))
            .collect()
    }

    /// The row of each sequence's last new token.
    pub fn last_rows(&self) -> Vec<usize> {
        let mut end = 0;
        self.batch
            .seqs
            .iter()
            .map(|s| {
                end += s.query_len;
                end - 1
            })
            .collect()
    }
}

/// The end of every forward pass: keep the rows that need logits, final RMSNorm, lm_head (the
/// embedding table when tied).
pub(crate) fn logits_head<B: Backend>(
    backend: &B,
    x: B::Tensor,
    step: &Step,
    logit_rows: LogitRows,
    (norm, eps): (&B::Weight, f32),
    lm_head: &B::Weight,
) -> Result<B::Tensor> {
    let x = match logit_rows {
        LogitRows::All => x,
        LogitRows::LastPerSequence => backend.select_rows(&x, &step.last_rows())?,
    };
    let _span = crate::profile::span("lm_head");
    backend.matmul(&backend.rms_norm(&x, norm, eps)?, lm_head)
}

enum Architecture<B: Backend> {
    DeepSeek(Box<DeepSeek<B>>),
    Llama(Box<Llama<B>>),
}

/// A loaded model of any supported architecture.
pub struct Model<B: Backend> {
    pub config: ModelConfig,
    arch: Architecture<B>,
}

impl<B: Backend> Model<B> {
    pub fn load(config: ModelConfig, checkpoint: &dyn TensorSource, backend: &B) -> Result<Self> {
        let arch = match &config {
            ModelConfig::DeepSeek(c) => {
                Architecture::DeepSeek(Box::new(DeepSeek::load(c.clone(), checkpoint, backend)?))
            }
            ModelConfig::Llama(c) => {
                Architecture::Llama(Box::new(Llama::load(c.clone(), checkpoint, backend)?))
            }
        };
        Ok(Model { config, arch })
    }

    /// The DeepSeek model inside, if this is one.
    pub fn deepseek(&self) -> Option<&DeepSeek<B>> {
        match &self.arch {
            Architecture::DeepSeek(m) => Some(m),
            Architecture::Llama(_) => None,
        }
    }

    /// Runs one step: writes the new tokens into `cache` and returns logits `[rows, vocab]` for
    /// the rows `logit_rows` asks for. `form` only matters to MLA models.
    pub fn forward(
        &self,
        backend: &B,
        cache: &mut B::KvCache,
        step: &Step,
        form: AttentionForm,
        logit_rows: LogitRows,
    ) -> Result<B::Tensor> {
        check_step(&self.config, step)?;
        let _range = crate::profile::range(|| {
            let decode = step.batch.seqs.iter().all(|s| s.query_len == 1);
            if decode { "decode" } else { "prefill" }.to_string()
        });
        match &self.arch {
            Architecture::DeepSeek(m) => m.forward(backend, cache, step, form, logit_rows),
            Architecture::Llama(m) => m.forward(backend, cache, step, logit_rows),
        }
    }
}

/// Rows, positions, slots and query counts must agree, and positions fit the model.
fn check_step(config: &ModelConfig, step: &Step) -> Result<()> {
    let t = step.token_ids.len();
    if step.positions.len() != t || step.slots.len() != t || step.batch.num_query_tokens() != t {
        return Err(crate::Error::Op {
            op: "forward",
            message: format!(
                "{t} tokens, {} positions, {} slots, {} query rows",
                step.positions.len(),
                step.slots.len(),
                step.batch.num_query_tokens()
            ),
        });
    }
    let max = config.max_position_embeddings();
    if let Some(&p) = step.positions.iter().find(|&&p| p as usize >= max) {
        return Err(crate::Error::InvalidInput(format!(
            "position {p} is beyond max_position_embeddings ({max})"
        )));
    }
    Ok(())
}
